//! The Prometheus scrape (docs/operations.md, "Metrics"), registered with `prometheus-client` and
//! written in the classic Prometheus text format, version 0.0.4.
//!
//! Two kinds of figures:
//! - recorded on the request path into metrics this module defines: [`MainStats`]
//!   (requests proxied by status class, gRPC calls by `grpc-status`, time to the
//!   answer head), owned by the proxy, whose per-class counters are looked up once at
//!   start (the gRPC ones at the first call); and one [`Latency`]
//!   histogram per mirror, owned by the mirror;
//! - read at scrape time by a collector: each mirror's counters, queue, state and
//!   comparison results (the very atomics the JSON listing reads, so both always agree,
//!   and a removed mirror leaves the scrape with the mirror), and the byte budget.
//!
//! This module neither serves HTTP (the admin endpoint does) nor counts copies (each
//! [`crate::mirror::Mirror`] does, in [`crate::mirror::counters::Counters`]).

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Unit;

use super::build_info;
use crate::budget::Budget;
use crate::mirror::counters::Latency;
use crate::mirror::health::State;
use crate::mirror::{Member, Status};
use crate::registry::Registry;
use crate::sources::state_file::StateFile;

/// The scrape's `Content-Type`: the classic Prometheus text format, which every
/// Prometheus version scrapes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric name starts with this and `_`.
const PREFIX: &str = "trafficmirror";

/// The `class` label values, indexed by [`class_index`].
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// `{class="2xx"}`.
type ClassLabel = [(&'static str, &'static str); 1];

/// The `grpc_status` label values: the status codes gRPC defines (grpc/grpc,
/// doc/statuscodes.md), indexed by code.
const GRPC_STATUSES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// gRPC's `UNKNOWN`, which a status outside the defined codes counts as.
const GRPC_UNKNOWN: usize = 2;

/// `{version="0.1.0",commit="…",build_date="…"}`.
type BuildLabels = [(&'static str, &'static str); 3];

/// Requests proxied: how many by the status class of the answer the client got, and
/// how long until that answer's head was ready. Owned by the proxy, recorded once per
/// request. Cloning is shallow.
#[derive(Debug, Clone)]
pub struct MainStats {
    requests: Family<ClassLabel, Counter>,
    /// The entries of `requests`, looked up once, indexed by [`class_index`].
    by_class: [Counter; 5],
    duration: Latency,
    /// gRPC calls by the `grpc-status` of main's answer.
    grpc: Family<ClassLabel, Counter>,
    /// The entries of `grpc`, indexed by code; made at the first gRPC call, so that a
    /// proxy that never sees one has no such series.
    by_grpc_status: Arc<OnceLock<[Counter; 17]>>,
}

impl Default for MainStats {
    fn default() -> Self {
        let requests = Family::<ClassLabel, Counter>::default();
        let by_class = CLASSES.map(|class| requests.get_or_create_owned(&[("class", class)]));
        Self {
            requests,
            by_class,
            duration: Latency::default(),
            grpc: Family::default(),
            by_grpc_status: Arc::default(),
        }
    }
}

impl MainStats {
    /// Counts one answer to a proxied request, given `elapsed` after the request arrived.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        self.by_class[class_index(status)].inc();
        self.duration.observe(elapsed);
    }

    /// Counts a gRPC call by the `grpc-status` of its answer: from the head of a
    /// Trailers-Only answer at once, else from the trailers once `body` ends. A status
    /// outside 0–16 counts as `2` (`UNKNOWN`); an answer without one (a broken stream)
    /// is not counted.
    pub fn count_grpc<B>(&self, response: http::Response<B>) -> http::Response<GrpcStatusCount<B>> {
        let (parts, body) = response.into_parts();
        let stats = match parts.headers.get(GRPC_STATUS) {
            Some(status) => {
                self.record_grpc(status.as_bytes());
                None
            }
            None => Some(self.clone()),
        };
        http::Response::from_parts(parts, GrpcStatusCount { body, stats })
    }

    fn record_grpc(&self, status: &[u8]) {
        let code = std::str::from_utf8(status)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&code| code < GRPC_STATUSES.len())
            .unwrap_or(GRPC_UNKNOWN);
        let counters = self.by_grpc_status.get_or_init(|| {
            GRPC_STATUSES.map(|code| self.grpc.get_or_create_owned(&[("grpc_status", code)]))
        });
        counters[code].inc();
    }
}

const GRPC_STATUS: &str = "grpc-status";

/// Main's answer to a gRPC call on its way to the client, counted by the `grpc-status`
/// of its trailers ([`MainStats::count_grpc`]).
pub struct GrpcStatusCount<B> {
    body: B,
    /// Until the status is counted.
    stats: Option<MainStats>,
}

impl<B: Body + Unpin> Body for GrpcStatusCount<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(status) = frame.trailers_ref().and_then(grpc_status) {
                if let Some(stats) = self.stats.take() {
                    stats.record_grpc(status);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn grpc_status(trailers: &HeaderMap) -> Option<&[u8]> {
    trailers.get(GRPC_STATUS).map(|v| v.as_bytes())
}

/// Index of `status`'s class in [`CLASSES`]. A status outside 100–599 counts as a 5xx,
/// as RFC 9110 §15 tells a client to treat it.
fn class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Every metric of the scrape, registered once at start. Cloning is shallow.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<prometheus_client::registry::Registry>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The scrape of `main` (recorded by the proxy), the mirrors in `mirrors` and the
    /// byte budget, all read at scrape time.
    ///
    /// `targets_file` is whether the `--targets-file` as last read is in force (when
    /// there is one); `state_file` the `--state-file`, whose saved state is read.
    pub fn new(
        main: &MainStats,
        mirrors: Registry,
        budget: Budget,
        targets_file: Option<Arc<AtomicBool>>,
        state_file: Option<Arc<StateFile>>,
    ) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix(PREFIX);
        registry.register(
            "requests",
            "Requests proxied, by the status class of the answer the client got \
             (main's, or the proxy's own 4xx/5xx)",
            main.requests.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC calls proxied, by the grpc-status of the answer the client got (from \
             the trailers, or the head of a Trailers-Only answer); no series before the \
             first call",
            main.grpc.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from a proxied request's arrival until the head of its answer was ready",
            Unit::Seconds,
            main.duration.histogram(),
        );
        // The usual `_info` pattern: one series whose labels carry the values, always 1.
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&[
                ("version", build_info::VERSION),
                ("commit", build_info::COMMIT),
                ("build_date", build_info::DATE),
            ])
            .set(1);
        registry.register(
            "build_info",
            "The running build: its version, the commit it was built from and the build \
             date, as --version prints them; always 1",
            build,
        );
        registry.register_collector(Box::new(Live {
            mirrors,
            budget,
            targets_file,
            state_file,
        }));
        Self {
            registry: Arc::new(registry),
        }
    }

    /// The scrape as text.
    ///
    /// # Errors
    /// Only if an encoder refuses a value, which the metrics registered here never give.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The figures read at scrape time: every mirror of the set and the byte budget.
struct Live {
    mirrors: Registry,
    budget: Budget,
    targets_file: Option<Arc<AtomicBool>>,
    state_file: Option<Arc<StateFile>>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// The `state` label values, in order.
const STATES: [(State, &str); 3] = [
    (State::Alive, "alive"),
    (State::Failing, "failing"),
    (State::Retrying, "retrying"),
];

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_mirrors(&mut encoder)?;
        for (name, help, value) in [
            (
                "buffered",
                "Bytes of request bodies held for mirrors now (a body shared by several \
                 mirrors counts once).",
                self.budget.held(),
            ),
            (
                "max_buffered",
                "Limit of the bytes held for mirrors (--max-buffered-bytes).",
                self.budget.limit(),
            ),
        ] {
            let metric = ConstGauge::new(value);
            let descriptor =
                encoder.encode_descriptor(name, help, Some(&Unit::Bytes), metric.metric_type())?;
            metric.encode(descriptor)?;
        }
        if let Some(valid) = &self.targets_file {
            let metric = ConstGauge::new(i64::from(valid.load(Ordering::Relaxed)));
            let descriptor = encoder.encode_descriptor(
                "targets_file_valid",
                "1 when the --targets-file as last read is in force; 0 when its last \
                 version was rejected or it cannot be read (the previous mirrors stay).",
                None,
                metric.metric_type(),
            )?;
            metric.encode(descriptor)?;
        }
        if let Some(state) = &self.state_file {
            let metric = ConstGauge::new(i64::from(state.saved()));
            let descriptor = encoder.encode_descriptor(
                "state_file_saved",
                "1 when the --state-file holds the mirrors as they are; 0 from a change \
                 until it is written (a failed save is retried).",
                None,
                metric.metric_type(),
            )?;
            metric.encode(descriptor)?;
        }
        Ok(())
    }
}

impl Live {
    /// The per-mirror families. A family without a sample is left out, as for an empty
    /// family: no mirror, no per-mirror family; no comparing mirror, no comparison family.
    fn encode_mirrors(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let mirrors = self.mirrors.snapshot();
        if mirrors.is_empty() {
            return Ok(());
        }
        // One status per mirror, read once, so that the families of one scrape agree.
        let statuses: Vec<_> = mirrors.iter().map(|m| m.mirror.status(&m.plan)).collect();
        encode_copies(encoder, &statuses)?;
        encode_queued(encoder, &statuses)?;
        encode_states(encoder, &statuses)?;
        encode_protocols(encoder, &statuses)?;
        encode_durations(encoder, &mirrors, &statuses)?;
        if statuses.iter().all(|s| s.compare.is_none()) {
            return Ok(());
        }
        encode_comparisons(encoder, &statuses)?;
        encode_mismatches(encoder, &statuses)
    }
}

/// `mirror_copies`: each mirror's copies by outcome.
fn encode_copies(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_copies",
        "Copies of requests per mirror, by outcome: sent (handed to the mirror's \
         queue), succeeded, failed, dropped (queue full, mirror failing, byte budget), \
         skipped (body too large, upgrade, loop), filtered (not selected by the \
         mirror's options), retried (tries of a copy beyond its first, retry=N), spilled (failed or \
         dropped copies written to the mirror's spill= file).",
        None,
        MetricType::Counter,
    )?;
    for status in statuses {
        let c = &status.counters;
        for (outcome, value) in [
            ("sent", c.sent),
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("dropped", c.dropped),
            ("skipped", c.skipped),
            ("filtered", c.filtered),
            ("retried", c.retried),
            ("spilled", c.spilled),
        ] {
            let labels = [("mirror", status.url.as_str()), ("outcome", outcome)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `mirror_queued`: copies waiting or in flight per mirror.
fn encode_queued(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_queued",
        "Copies waiting or in flight per mirror now (at most --max-queued-requests).",
        None,
        MetricType::Gauge,
    )?;
    for status in statuses {
        let labels = [("mirror", status.url.as_str())];
        ConstGauge::new(status.counters.queued).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `mirror_protocol`: 1 for the protocol each mirror is spoken to in. Read at scrape
/// time from the mirror's pools: nothing is counted per request.
fn encode_protocols(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_protocol",
        "1 for the protocol each mirror is spoken to in: http/1.1, h2c, or h2 or \
         http/1.1 as an https:// mirror's server picked (none before its first \
         connection).",
        None,
        MetricType::Gauge,
    )?;
    for status in statuses {
        let Some(protocol) = status.protocol else {
            continue;
        };
        let labels = [("mirror", status.url.as_str()), ("protocol", protocol)];
        ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `mirror_state`: one gauge per mirror and health state, 1 for the current one.
fn encode_states(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_state",
        "Health of each mirror: 1 for its current state, 0 for the others.",
        None,
        MetricType::Gauge,
    )?;
    for status in statuses {
        for (state, name) in STATES {
            let labels = [("mirror", status.url.as_str()), ("state", name)];
            let value = i64::from(status.state == state);
            ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `mirror_request_duration`: each mirror's latency histogram (`statuses` in the order
/// of `mirrors`).
fn encode_durations(
    encoder: &mut DescriptorEncoder,
    mirrors: &[Member],
    statuses: &[Status],
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_request_duration",
        "Time of each mirror request, from sending it until its answer was read or \
         it failed (a timeout counts as --mirror-timeout).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    for (member, status) in mirrors.iter().zip(statuses) {
        let labels = [("mirror", status.url.as_str())];
        member
            .mirror
            .latency()
            .encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `mirror_comparisons`: comparing mirrors' answers by result.
fn encode_comparisons(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_comparisons",
        "Answers of comparing mirrors compared with main's, by result: matched, \
         mismatched, not_compared (main's answer never completed, or did not fit the \
         budget).",
        None,
        MetricType::Counter,
    )?;
    for status in statuses {
        let Some(c) = &status.compare else { continue };
        for (result, value) in [
            ("matched", c.matched),
            ("mismatched", c.mismatched),
            ("not_compared", c.not_compared),
        ] {
            let labels = [("mirror", status.url.as_str()), ("result", result)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// `mirror_mismatches`: comparing mirrors' mismatched answers by the part that differed.
fn encode_mismatches(encoder: &mut DescriptorEncoder, statuses: &[Status]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "mirror_mismatches",
        "Mismatched answers of comparing mirrors by the part that differed (status, \
         headers, body); one answer counts under each part that differed.",
        None,
        MetricType::Counter,
    )?;
    for status in statuses {
        let Some(c) = &status.compare else { continue };
        for (part, value) in [
            ("status", c.mismatches.status),
            ("headers", c.mismatches.headers),
            ("body", c.mismatches.body),
        ] {
            let labels = [("mirror", status.url.as_str()), ("part", part)];
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::config::Config;
    use crate::mirror::Source;
    use crate::mirror::options::MirrorLine;

    fn registry() -> Registry {
        let cli = Cli::try_parse_args(["trafficmirror"]).unwrap();
        Registry::new(
            Config::from_cli(&cli).unwrap().proxy.mirror,
            Budget::new(1024),
        )
    }

    /// The sample lines (no comments) of a scrape.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[tokio::test]
    async fn grpc_calls_count_by_the_status_in_the_head_or_the_trailers() {
        use http_body_util::BodyExt;
        let stats = MainStats::default();
        let metrics = Metrics::new(&stats, registry(), Budget::new(1), None, None);
        let text = metrics.encode().unwrap();
        assert!(
            !samples(&text).iter().any(|l| l.contains("grpc_requests")),
            "no series before the first call: {text}"
        );

        // Trailers-Only: the status is in the head.
        let head_only = http::Response::builder()
            .header("grpc-status", "14")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        drop(stats.count_grpc(head_only));
        // A status in the trailers counts once the body has passed them.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        let streamed = http::Response::new(body);
        let counted = stats.count_grpc(streamed);
        let zero = "trafficmirror_grpc_requests_total{grpc_status=\"0\"}";
        assert!(metrics.encode().unwrap().contains(&format!("{zero} 0\n")));
        counted.into_body().collect().await.unwrap();
        // A code outside 0–16 is UNKNOWN (2).
        let odd = http::Response::builder()
            .header("grpc-status", "99")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        drop(stats.count_grpc(odd));

        let text = metrics.encode().unwrap();
        let lines = samples(&text);
        for (code, count) in [("0", 1), ("2", 1), ("14", 1), ("16", 0)] {
            let line =
                format!("trafficmirror_grpc_requests_total{{grpc_status=\"{code}\"}} {count}");
            assert!(lines.contains(&line.as_str()), "{line} in {text}");
        }
        assert_eq!(
            lines.iter().filter(|l| l.contains("grpc_requests")).count(),
            17
        );
    }

    #[test]
    fn statuses_fall_in_their_class_and_invalid_ones_count_as_5xx() {
        for (code, class) in [
            (100, "1xx"),
            (101, "1xx"),
            (200, "2xx"),
            (299, "2xx"),
            (304, "3xx"),
            (400, "4xx"),
            (408, "4xx"),
            (499, "4xx"),
            (502, "5xx"),
            (599, "5xx"),
            (600, "5xx"),
            (999, "5xx"),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(CLASSES[class_index(status)], class, "{code}");
        }
    }

    #[tokio::test]
    async fn every_class_is_exported_from_the_start_and_counts_its_answers() {
        let main = MainStats::default();
        let metrics = Metrics::new(&main, registry(), Budget::new(1024), None, None);
        let text = metrics.encode().unwrap();
        for class in CLASSES {
            let line = format!("trafficmirror_requests_total{{class=\"{class}\"}} 0");
            assert!(samples(&text).contains(&line.as_str()), "{line} in {text}");
        }
        main.record(StatusCode::OK, Duration::from_millis(3));
        main.record(StatusCode::OK, Duration::from_millis(3));
        main.record(StatusCode::BAD_GATEWAY, Duration::from_secs(60));
        let text = metrics.encode().unwrap();
        let lines = samples(&text);
        for line in [
            "trafficmirror_requests_total{class=\"2xx\"} 2",
            "trafficmirror_requests_total{class=\"5xx\"} 1",
            "trafficmirror_requests_total{class=\"4xx\"} 0",
            "trafficmirror_request_duration_seconds_count 3",
            "trafficmirror_request_duration_seconds_bucket{le=\"0.0025\"} 0",
            "trafficmirror_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "trafficmirror_request_duration_seconds_bucket{le=\"30\"} 2",
            "trafficmirror_request_duration_seconds_bucket{le=\"+Inf\"} 3",
        ] {
            assert!(lines.contains(&line), "{line} in {text}");
        }
        assert!(text.contains("# TYPE trafficmirror_requests_total counter\n"));
        assert!(text.contains("# TYPE trafficmirror_request_duration_seconds histogram\n"));
    }

    #[tokio::test]
    async fn budget_gauges_read_the_budget_at_scrape_time() {
        let budget = Budget::new(1000);
        let metrics = Metrics::new(
            &MainStats::default(),
            registry(),
            budget.clone(),
            None,
            None,
        );
        let mut held = budget.hold();
        assert!(held.grow(300));
        let text = metrics.encode().unwrap();
        assert!(samples(&text).contains(&"trafficmirror_buffered_bytes 300"));
        assert!(samples(&text).contains(&"trafficmirror_max_buffered_bytes 1000"));
        assert!(text.contains("# TYPE trafficmirror_buffered_bytes gauge\n"));
        drop(held);
        let text = metrics.encode().unwrap();
        assert!(samples(&text).contains(&"trafficmirror_buffered_bytes 0"));
    }

    #[tokio::test]
    async fn a_mirror_is_in_the_scrape_while_it_is_in_the_set() {
        let mirrors = registry();
        let metrics = Metrics::new(
            &MainStats::default(),
            mirrors.clone(),
            Budget::new(1),
            None,
            None,
        );
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains("trafficmirror_mirror_"),
            "no mirror, no mirror family: {text}"
        );

        let line = MirrorLine::parse("http://Shadow.example:8080/").unwrap();
        mirrors.add_lines(std::slice::from_ref(&line), Source::Admin);
        let text = metrics.encode().unwrap();
        let lines = samples(&text);
        let m = "mirror=\"http://shadow.example:8080\"";
        for outcome in [
            "sent",
            "succeeded",
            "failed",
            "dropped",
            "skipped",
            "filtered",
            "retried",
            "spilled",
        ] {
            let line = format!("trafficmirror_mirror_copies_total{{{m},outcome=\"{outcome}\"}} 0");
            assert!(lines.contains(&line.as_str()), "{line} in {text}");
        }
        for line in [
            format!("trafficmirror_mirror_queued{{{m}}} 0"),
            format!("trafficmirror_mirror_state{{{m},state=\"alive\"}} 1"),
            format!("trafficmirror_mirror_state{{{m},state=\"failing\"}} 0"),
            format!("trafficmirror_mirror_state{{{m},state=\"retrying\"}} 0"),
            format!("trafficmirror_mirror_request_duration_seconds_count{{{m}}} 0"),
        ] {
            assert!(lines.contains(&line.as_str()), "{line} in {text}");
        }
        assert!(text.contains("# TYPE trafficmirror_mirror_copies_total counter\n"));
        assert!(text.contains("# TYPE trafficmirror_mirror_state gauge\n"));
        assert!(text.contains("# TYPE trafficmirror_mirror_request_duration_seconds histogram\n"));

        assert!(
            !text.contains("trafficmirror_mirror_comparisons"),
            "no comparing mirror, no comparisons: {text}"
        );

        mirrors.delete(&[line.url]).unwrap();
        let text = metrics.encode().unwrap();
        assert!(!text.contains("shadow.example"), "{text}");
    }

    /// Series (histograms apart) and histograms in a scrape.
    fn count_series(text: &str) -> (usize, usize) {
        let lines = samples(text);
        let histograms = lines.iter().filter(|l| l.contains("_count")).count();
        let series = lines
            .iter()
            .filter(|l| !["_bucket", "_sum", "_count"].iter().any(|h| l.contains(h)))
            .count();
        (series, histograms)
    }

    #[tokio::test]
    async fn series_counts_are_the_ones_the_docs_give() {
        // docs/operations.md, "Metrics": "... stays fixed: A series and one histogram,
        // plus B series and one histogram per mirror, and C more per comparing mirror."
        let readme = include_str!("../../docs/operations.md");
        let words: Vec<&str> = readme.split_whitespace().collect();
        let start = words
            .windows(2)
            .position(|w| w == ["stays", "fixed:"])
            .expect("the series sentence in docs/operations.md");
        let numbers: Vec<usize> = words[start..]
            .iter()
            .take(20)
            .filter_map(|w| w.parse().ok())
            .collect();
        let [base, per_mirror, per_comparing] = numbers[..] else {
            panic!("three numbers in the series sentence: {numbers:?}");
        };

        let mirrors = registry();
        let metrics = Metrics::new(
            &MainStats::default(),
            mirrors.clone(),
            Budget::new(1),
            None,
            None,
        );
        assert_eq!(count_series(&metrics.encode().unwrap()), (base, 1));
        let plain = MirrorLine::parse("http://plain:1").unwrap();
        mirrors.add_lines(&[plain], Source::Admin);
        assert_eq!(
            count_series(&metrics.encode().unwrap()),
            (base + per_mirror, 2)
        );
        let comparing = MirrorLine::parse("http://shadow:2 compare=true").unwrap();
        mirrors.add_lines(&[comparing], Source::Admin);
        assert_eq!(
            count_series(&metrics.encode().unwrap()),
            (base + 2 * per_mirror + per_comparing, 3)
        );
    }

    #[tokio::test]
    async fn only_comparing_mirrors_have_comparison_series() {
        let mirrors = registry();
        let metrics = Metrics::new(
            &MainStats::default(),
            mirrors.clone(),
            Budget::new(1),
            None,
            None,
        );
        let lines = ["http://plain:1", "http://shadow:2 compare=true"]
            .map(|l| MirrorLine::parse(l).unwrap());
        mirrors.add_lines(&lines, Source::Admin);
        let text = metrics.encode().unwrap();
        let lines = samples(&text);
        for result in ["matched", "mismatched", "not_compared"] {
            let line = format!(
                "trafficmirror_mirror_comparisons_total{{mirror=\"http://shadow:2\",result=\"{result}\"}} 0"
            );
            assert!(lines.contains(&line.as_str()), "{line} in {text}");
        }
        for part in ["status", "headers", "body"] {
            let line = format!(
                "trafficmirror_mirror_mismatches_total{{mirror=\"http://shadow:2\",part=\"{part}\"}} 0"
            );
            assert!(lines.contains(&line.as_str()), "{line} in {text}");
        }
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("trafficmirror_mirror_comparisons")
                    && l.contains("http://plain:1")),
            "{text}"
        );
        assert!(text.contains("# TYPE trafficmirror_mirror_comparisons_total counter\n"));
    }
}
