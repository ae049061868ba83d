//! `trafficmirror replay SOURCE... --to URL` (docs/record-replay.md, "Replaying"): reads
//! recordings (its own and GoReplay's, plain or `.gz`, files or globs), merges them by
//! timestamp, and sends each request to a target keeping the recorded gaps scaled by
//! `--speed`, at most `--concurrency` at a time.
//!
//! A thread reads and merges the files (blocking reads, one record per file held) and
//! hands requests over a bounded channel; the async side waits for each one's moment,
//! sends it and tallies the answer. At the end one summary line goes to stdout.

mod compare;
mod nats;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::client::{self, Pool};
use crate::mirror::compare::grpc::Descriptors;
use crate::mirror::compare::verdict::{self, Answer, Capture, Rules};
use crate::record::format::{self, ParsedRequest, ParsedResponse, REQUEST, RESPONSE, Reader};
use crate::record::writer::Writer;
use crate::target_url::TargetUrl;

/// Exit status: done.
pub const EXIT_DONE: u8 = 0;
/// Exit status: bad flags or arguments.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: nothing could be replayed (no readable source, target never answered).
pub const EXIT_COULD_NOT_RUN: u8 = 3;

/// What to replay, where, and how fast.
#[derive(Debug, Clone)]
pub struct Options {
    pub sources: Vec<String>,
    pub to: String,
    /// Recorded gaps are divided by this; `0`: no waiting.
    pub speed: f64,
    pub concurrency: usize,
    pub repeat: bool,
    /// At most this many requests per second.
    pub rate: Option<f64>,
    pub paths: Vec<String>,
    pub methods: Vec<Method>,
    pub percent: f64,
    pub timeout: Duration,
    /// Extra CA certificates trusted for an `https://` target and a `tls://` source.
    pub ca_cert: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Compare each answer with the recorded one (type `2` with its request's ID).
    pub compare: bool,
    /// Excluded from comparison: header names and JSON pointers, as a mirror's `ignore`.
    pub ignore: Vec<String>,
    /// Exit 1 when the share of compared answers that differ is above this.
    pub max_mismatch_rate: f64,
    /// Bytes of each body compared; past it, length and digest.
    pub max_compare_size: usize,
    /// With `--compare`: the services whose gRPC messages are compared as JSON.
    pub grpc_descriptors: Option<PathBuf>,
    /// With `--compare`: endpoint patterns (`/users/:id/orders`), as `endpoint=`.
    pub endpoints: Vec<String>,
    /// Record the replay's own requests and answers here (a recording mirror's path,
    /// pattern and `.gz` included), for the next run.
    pub output: Option<String>,
    /// A `nats://` source's durable consumer (docs/fleet.md).
    pub durable: Option<String>,
    /// A `nats://` source ends once no message came for this long.
    pub exit_when_idle: Option<Duration>,
    /// A `nats://` source's acknowledgement wait, set when its durable is created.
    pub ack_wait: Duration,
}

/// `--output` files: the recording mirror's defaults.
const OUTPUT_LIMITS: crate::record::writer::Limits = crate::record::writer::Limits {
    max_file_size: crate::record::writer::DEFAULT_MAX_FILE_SIZE,
    max_total_size: crate::record::writer::DEFAULT_MAX_TOTAL_SIZE,
};

/// Exit status: more answers differed than `--max-mismatch-rate` allows.
pub const EXIT_MISMATCH: u8 = 1;

/// Parses `--max-mismatch-rate`: `0.5%` or `0.005`.
///
/// # Errors
/// Not a share between 0 and 1 (0 % and 100 %).
pub fn parse_rate_share(value: &str) -> Result<f64, String> {
    let v = value.trim();
    let parsed = match v.strip_suffix('%') {
        Some(n) => n.trim().parse::<f64>().map(|n| n / 100.0),
        None => v.parse::<f64>(),
    };
    match parsed {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "invalid rate {value:?} (a share: 0.5% or 0.005, between 0 and 1)"
        )),
    }
}

/// Parses `--speed`: `2`, `0.5`, `200%`; `0` for no waiting.
///
/// # Errors
/// Not a finite number `>= 0`.
pub fn parse_speed(value: &str) -> Result<f64, String> {
    let v = value.trim();
    let (number, scale) = match v.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (v, 1.0),
    };
    match number.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n / scale),
        _ => Err(format!(
            "invalid speed {value:?} (use e.g. 2, 0.5, 200%, or 0 for no waiting)"
        )),
    }
}

/// The files the sources name: globs expanded, in order, each once.
fn expand(sources: &[String]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for source in sources {
        if source.contains(['*', '?', '[']) {
            match glob::glob(source) {
                Ok(paths) => {
                    let before = files.len();
                    for path in paths.flatten() {
                        if !files.contains(&path) {
                            files.push(path);
                        }
                    }
                    if files.len() == before {
                        errors.push(format!("{source}: no file matches"));
                    }
                }
                Err(err) => errors.push(format!("{source}: {err}")),
            }
        } else {
            let path = PathBuf::from(source);
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    (files, errors)
}

fn open(path: &PathBuf) -> std::io::Result<Box<dyn Read + Send>> {
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a file"));
    }
    let reader = BufReader::new(file);
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// What the reading thread hands over.
enum Item {
    Request {
        /// Which pass over the sources (`--loop`); gaps restart at each.
        round: u64,
        timestamp_ns: i128,
        request: Box<ParsedRequest>,
        /// The recorded answer, with `--compare`.
        recorded: Option<Box<ParsedResponse>>,
        /// A NATS message's acknowledgement, once the target answered (docs/fleet.md).
        ack: Option<nats::Ack>,
    },
    Skipped(String),
}

/// One source being merged: its next request record.
struct Source {
    name: String,
    reader: Reader<Box<dyn Read + Send>>,
    head: Option<Head>,
    /// Records read ahead while looking for an answer, in file order.
    ahead: VecDeque<format::Item>,
    /// Bytes of the messages in `ahead`.
    ahead_bytes: usize,
    /// Look for each request's answer (`--compare`).
    answers: bool,
}

/// A source's next request: timestamp, request, recorded answer.
type Head = (i128, ParsedRequest, Option<ParsedResponse>);

impl Source {
    /// Reads up to the next request record, reporting skipped records.
    fn advance(&mut self, skipped: &mut dyn FnMut(String) -> bool) -> bool {
        self.head = None;
        while let Some(item) = self.next_item() {
            match item {
                Err(skip) => {
                    if !skipped(format!(
                        "{} record {}: {}",
                        self.name, skip.index, skip.reason
                    )) {
                        return false;
                    }
                }
                // Answers (2) and GoReplay's replayed answers (3) are not sent.
                Ok(record) if record.kind != REQUEST => {}
                Ok(record) => match format::parse_request(&record.message) {
                    Ok(request) => {
                        let answer = if self.answers {
                            self.answer_to(&record.id)
                                .and_then(|a| format::parse_response(&a.message).ok())
                        } else {
                            None
                        };
                        self.head = Some((record.timestamp_ns, request, answer));
                        return true;
                    }
                    Err(reason) => {
                        if !skipped(format!("{} record {}: {reason}", self.name, record.id)) {
                            return false;
                        }
                    }
                },
            }
        }
        true
    }
}

/// How far a source is read ahead for a request's answer: a recording mirror writes it
/// right after its request, GoReplay once the answer is complete, other requests'
/// records between.
const AHEAD_RECORDS: usize = 4096;
/// Bytes of messages read ahead at most (besides [`AHEAD_RECORDS`]).
const AHEAD_BYTES: usize = 64 << 20;

impl Source {
    fn new(name: String, reader: Box<dyn Read + Send>, answers: bool) -> Self {
        Self {
            name,
            reader: Reader::new(reader),
            head: None,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
            answers,
        }
    }

    /// The next record: one read ahead, else the file's next.
    fn next_item(&mut self) -> Option<format::Item> {
        match self.ahead.pop_front() {
            Some(item) => {
                if let Ok(record) = &item {
                    self.ahead_bytes -= record.message.len();
                }
                Some(item)
            }
            None => self.reader.next_record(),
        }
    }

    /// The answer (type `2`) recorded with this ID: among the records read ahead, else
    /// reading on within [`AHEAD_RECORDS`] and [`AHEAD_BYTES`].
    fn answer_to(&mut self, id: &str) -> Option<format::RawRecord> {
        let is_answer =
            |item: &format::Item| matches!(item, Ok(r) if r.kind == RESPONSE && r.id == id);
        if let Some(at) = self.ahead.iter().position(is_answer) {
            let record = self.ahead.remove(at)?.ok()?;
            self.ahead_bytes -= record.message.len();
            return Some(record);
        }
        while self.ahead.len() < AHEAD_RECORDS && self.ahead_bytes < AHEAD_BYTES {
            let item = self.reader.next_record()?;
            if is_answer(&item) {
                return item.ok();
            }
            if let Ok(record) = &item {
                self.ahead_bytes += record.message.len();
            }
            self.ahead.push_back(item);
        }
        None
    }
}

/// Whether the filters keep a request.
fn selected(options: &Options, request: &ParsedRequest) -> bool {
    let path = request.path_and_query.as_str();
    (options.methods.is_empty() || options.methods.contains(&request.method))
        && (options.paths.is_empty() || options.paths.iter().any(|p| path.starts_with(p)))
        && (options.percent >= 100.0 || fastrand::f64() * 100.0 < options.percent)
}

/// Reads and merges the sources, once or for ever (`--loop`), until the receiver goes.
fn read_all(files: Vec<PathBuf>, options: Options, tx: mpsc::Sender<Item>) {
    let mut round = 0;
    loop {
        let mut sources: Vec<Source> = Vec::new();
        for path in &files {
            // Unreadable sources were named at the start; one that vanished since is
            // named once more.
            match open(path) {
                Ok(reader) => sources.push(Source::new(
                    path.display().to_string(),
                    reader,
                    options.compare,
                )),
                Err(err) => {
                    let gone = format!("{}: {err}", path.display());
                    if tx.blocking_send(Item::Skipped(gone)).is_err() {
                        return;
                    }
                }
            }
        }
        let mut report = |line: String| tx.blocking_send(Item::Skipped(line)).is_ok();
        for source in &mut sources {
            if !source.advance(&mut report) {
                return;
            }
        }
        let mut any = false;
        loop {
            let next = sources
                .iter_mut()
                .filter(|s| s.head.is_some())
                .min_by_key(|s| s.head.as_ref().map_or(i128::MAX, |h| h.0));
            let Some(source) = next else { break };
            let Some((timestamp_ns, request, recorded)) = source.head.take() else {
                break;
            };
            any = true;
            if selected(&options, &request) {
                let item = Item::Request {
                    round,
                    timestamp_ns,
                    request: Box::new(request),
                    recorded: recorded.map(Box::new),
                    ack: None,
                };
                if tx.blocking_send(item).is_err() {
                    return;
                }
            }
            let mut report = |line: String| tx.blocking_send(Item::Skipped(line)).is_ok();
            if !source.advance(&mut report) {
                return;
            }
        }
        // A loop over sources that hold no request would spin.
        if !options.repeat || !any {
            return;
        }
        round += 1;
    }
}

/// The tally of a replay.
#[derive(Debug)]
pub struct Summary {
    pub sent: u64,
    pub answered: u64,
    /// 2xx, 3xx, 4xx, 5xx (an informational or unknown class counts as answered only).
    pub classes: [u64; 4],
    pub failed: u64,
    pub failed_connect: u64,
    pub failed_timeout: u64,
    pub skipped: Vec<String>,
    latencies: hdrhistogram::Histogram<u64>,
    /// With `--compare`: answers compared with their recorded one, and those differing.
    pub compared: u64,
    pub mismatched: u64,
}

impl Summary {
    fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            classes: [0; 4],
            failed: 0,
            failed_connect: 0,
            failed_timeout: 0,
            skipped: Vec::new(),
            // Microseconds up to an hour, 3 significant digits.
            latencies: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant, valid histogram bounds"),
            compared: 0,
            mismatched: 0,
        }
    }

    /// Counts one comparison.
    fn count_verdict(&mut self, mismatched: bool) {
        self.compared += 1;
        self.mismatched += u64::from(mismatched);
    }

    /// Counts one request's outcome: answered (class, latency) or failed (cause).
    fn count_result(&mut self, result: Sent, elapsed: Duration) {
        match result {
            Ok(Ok((status, _))) => {
                self.answered += 1;
                let class = status.as_u16() / 100;
                if (2..=5).contains(&class) {
                    self.classes[usize::from(class - 2)] += 1;
                }
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                let _ = self.latencies.record(micros.max(1));
            }
            Ok(Err(err)) => {
                self.failed += 1;
                if matches!(err, client::Error::Connect(_)) {
                    self.failed_connect += 1;
                }
            }
            Err(_) => {
                self.failed += 1;
                self.failed_timeout += 1;
            }
        }
    }

    /// With `--compare`: the totals line.
    fn compared_line(&self, rate: Option<f64>, allowed: f64) -> String {
        format!(
            "replay: compared {}, mismatched {} ({:.2}%), allowed {:.2}%",
            self.compared,
            self.mismatched,
            rate.unwrap_or(0.0) * 100.0,
            allowed * 100.0
        )
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.value_at_quantile(q) as f64 / 1000.0
    }

    /// The summary line.
    pub fn line(&self) -> String {
        let [c2, c3, c4, c5] = self.classes;
        format!(
            "replay: sent {}, answered {} (2xx {c2}, 3xx {c3}, 4xx {c4}, 5xx {c5}), failed {}, skipped {}, p50 {:.1} ms, p99 {:.1} ms",
            self.sent,
            self.answered,
            self.failed,
            self.skipped.len(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
        )
    }
}

/// Turns a recorded request into one for `target`.
fn build(target: &TargetUrl, recorded: ParsedRequest) -> Request<Full<Bytes>> {
    // A proxy's recording may hold the absolute form (RFC 9112 §3.2.2).
    let pq = if recorded.path_and_query.starts_with('/') {
        PathAndQuery::try_from(recorded.path_and_query.as_str()).ok()
    } else {
        recorded
            .path_and_query
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.path_and_query().cloned())
    };
    if recorded.trailers.as_ref().is_some_and(|t| !t.is_empty()) {
        // Request trailers are kept in the recording but not sent: requests with
        // trailers are rare (gRPC sends none), and the pool's bodies carry none.
        tracing::debug!(path = %recorded.path_and_query, "request trailers not replayed");
    }
    let mut request = Request::new(Full::new(recorded.body));
    *request.method_mut() = recorded.method;
    *request.uri_mut() = target.request_target(pq.as_ref());
    let mut headers = recorded.headers;
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::HOST,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    let trailers_te = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !trailers_te {
        headers.remove(header::TE);
    }
    headers.insert(header::HOST, target.host_header().clone());
    *request.headers_mut() = headers;
    request
}

/// Sends one request and reads its answer to the end; with `capture`, keeps the answer
/// (its body up to that many bytes, then a digest) for comparing.
async fn send_one(
    pool: &Pool<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    capture: Option<usize>,
) -> Result<(http::StatusCode, Option<Answer>), client::Error> {
    let response = pool.send(request).await?;
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut kept = capture.map(Capture::new);
    let mut trailers = http::HeaderMap::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let (Some(kept), Some(data)) = (kept.as_mut(), frame.data_ref()) {
                    kept.push(data);
                }
                if let (true, Some(sent)) = (kept.is_some(), frame.trailers_ref()) {
                    trailers.extend(sent.clone());
                }
            }
            Err(_) => break,
        }
    }
    let answer = kept.map(|kept| Answer {
        status,
        headers: parts.headers,
        body: kept.finish(),
        trailers,
    });
    Ok((status, answer))
}

/// A recorded answer as the comparison takes it.
fn recorded_answer(recorded: ParsedResponse, limit: usize) -> Answer {
    let mut capture = Capture::new(limit);
    capture.push(&recorded.body);
    Answer {
        status: recorded.status,
        headers: recorded.headers,
        body: capture.finish(),
        trailers: recorded.trailers.unwrap_or_default(),
    }
}

/// Runs a replay; returns the exit status.
pub async fn run(options: Options) -> u8 {
    // Made once for the target and a `tls://` source; a bad `--ca-cert` is named
    // before anything is read or sent.
    let tls = match client_tls(&options) {
        Ok(tls) => tls,
        Err(status) => return status,
    };
    let source = match nats::Source::open(&options, &tls).await {
        Ok(source) => source,
        Err(status) => return status,
    };
    let (replay, rx) = match Replay::start(options, source, &tls) {
        Ok(started) => started,
        Err(status) => return status,
    };
    replay.send_all(rx).await;
    replay.progress.finish_and_clear();
    replay.finish()
}

/// The target `--to` names, or the usage status.
fn parse_target(options: &Options) -> Result<TargetUrl, u8> {
    TargetUrl::parse_main(&options.to).map_err(|err| {
        eprintln!("replay: invalid value for --to: {err}");
        EXIT_USAGE
    })
}

/// The sources that can be read now, naming the others; none is a failure to run.
fn readable_sources(sources: &[String]) -> Result<Vec<PathBuf>, u8> {
    let (files, errors) = expand(sources);
    let mut readable = Vec::new();
    for error in errors {
        eprintln!("replay: {error}");
    }
    for path in files {
        match open(&path) {
            Ok(_) => readable.push(path),
            Err(err) => eprintln!("replay: cannot read {}: {err}", path.display()),
        }
    }
    if readable.is_empty() {
        eprintln!("replay: no readable source");
        return Err(EXIT_COULD_NOT_RUN);
    }
    Ok(readable)
}

/// The TLS settings for an `https://` target and a `tls://` source.
fn client_tls(options: &Options) -> Result<Arc<rustls::ClientConfig>, u8> {
    crate::tls::client_config(options.ca_cert.as_deref(), options.insecure_skip_verify).map_err(
        |err| {
            eprintln!("replay: {err}");
            EXIT_COULD_NOT_RUN
        },
    )
}

/// With `--compare`, the comparison: its rules (`--ignore` included) and the
/// `--grpc-descriptors` set.
fn comparison(options: &Options) -> Result<Option<Arc<compare::Comparison>>, u8> {
    if !options.compare {
        return Ok(None);
    }
    let rules = match Rules::new(
        &crate::mirror::options::DEFAULT_COMPARE_HEADERS,
        &options.ignore,
    ) {
        Ok(rules) => rules,
        Err(err) => {
            eprintln!("replay: invalid value for --ignore: {err}");
            return Err(EXIT_USAGE);
        }
    };
    let descriptors = match &options.grpc_descriptors {
        Some(path) => match Descriptors::load(path) {
            Ok(descriptors) => Some(descriptors),
            Err(err) => {
                eprintln!("replay: {err}");
                return Err(EXIT_USAGE);
            }
        },
        None => None,
    };
    Ok(Some(Arc::new(compare::Comparison::new(
        (rules, descriptors, options.endpoints.clone()),
        options.max_compare_size,
        options.concurrency,
    ))))
}

/// With `--output`, the writer of the replay's own recording.
fn output_writer(options: &Options) -> Result<Option<Arc<Writer>>, u8> {
    let Some(path) = &options.output else {
        return Ok(None);
    };
    match Writer::start(path) {
        Ok(writer) => Ok(Some(Arc::new(writer))),
        Err(err) => {
            eprintln!("replay: cannot write --output {path}: {err}");
            Err(EXIT_COULD_NOT_RUN)
        }
    }
}

/// Starts the thread that reads and merges the sources; its requests come on the channel.
fn start_reader(readable: Vec<PathBuf>, options: &Options) -> Result<mpsc::Receiver<Item>, u8> {
    let (tx, rx) = mpsc::channel(1024);
    let reader_options = options.clone();
    let reader = std::thread::Builder::new()
        .name("trafficmirror-replay-read".into())
        .spawn(move || read_all(readable, reader_options, tx));
    if let Err(err) = reader {
        eprintln!("replay: cannot start the reading thread: {err}");
        return Err(EXIT_COULD_NOT_RUN);
    }
    Ok(rx)
}

/// A replay under way: what its loop and its sending tasks share.
struct Replay {
    options: Options,
    target: TargetUrl,
    pool: Arc<Pool<Full<Bytes>>>,
    comparison: Option<Arc<compare::Comparison>>,
    output: Option<Arc<Writer>>,
    summary: Arc<Mutex<Summary>>,
    progress: indicatif::ProgressBar,
    permits: Arc<Semaphore>,
}

/// When each request is due on the recorded clock.
#[derive(Default)]
struct Clock {
    /// (round, first timestamp, when it was sent): the recorded clock's origin.
    origin: Option<(u64, i128, Instant)>,
    last_sent: Option<Instant>,
}

impl Clock {
    /// When the request recorded at `timestamp_ns` in `round` is due: its gap from the
    /// round's first scaled by `--speed`, and no sooner than `--rate` allows.
    fn due(&mut self, round: u64, timestamp_ns: i128, options: &Options) -> Instant {
        let now = Instant::now();
        let (first, start) = match self.origin {
            Some((r, first, start)) if r == round => (first, start),
            _ => {
                self.origin = Some((round, timestamp_ns, now));
                (timestamp_ns, now)
            }
        };
        let mut due = now;
        // A record older than the first is sent at once (files merged are each in order,
        // answers may be written late).
        if options.speed > 0.0 && timestamp_ns > first {
            let gap_ns = (timestamp_ns - first) as f64 / options.speed;
            due = start + Duration::from_secs_f64((gap_ns / 1e9).min(1e9));
        }
        if let (Some(rate), Some(last)) = (options.rate, self.last_sent) {
            due = due.max(last + Duration::from_secs_f64(1.0 / rate));
        }
        due
    }
}

impl Replay {
    /// Checks the options, opens what the replay needs and starts reading; on failure,
    /// the exit status.
    fn start(
        options: Options,
        source: Option<nats::Source>,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(Self, mpsc::Receiver<Item>), u8> {
        let target = parse_target(&options)?;
        let readable = match source {
            Some(_) => Vec::new(),
            None => readable_sources(&options.sources)?,
        };
        let comparison = comparison(&options)?;
        let output = output_writer(&options)?;
        let concurrency = options.concurrency.max(1);
        let pool = Arc::new(Pool::<Full<Bytes>>::new(&target, tls, concurrency));
        let rx = match source {
            Some(source) => source.start(&options),
            None => start_reader(readable, &options)?,
        };
        let replay = Self {
            options,
            target,
            pool,
            comparison,
            output,
            summary: Arc::new(Mutex::new(Summary::new())),
            progress: progress_bar(),
            permits: Arc::new(Semaphore::new(concurrency)),
        };
        Ok((replay, rx))
    }

    /// Sends each request the reader hands over at its moment, until the sources end
    /// or Ctrl-C; then waits for the answers under way.
    async fn send_all(&self, mut rx: mpsc::Receiver<Item>) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut clock = Clock::default();
        let interrupted = nats::stop_signal();
        tokio::pin!(interrupted);
        let mut stopped = false;
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                () = &mut interrupted => { stopped = true; break },
            };
            let Some(item) = item else { break };
            let (round, timestamp_ns, request, recorded, ack) = match item {
                Item::Skipped(line) => {
                    lock(&self.summary).skipped.push(line);
                    continue;
                }
                Item::Request {
                    round,
                    timestamp_ns,
                    request,
                    recorded,
                    ack,
                } => (round, timestamp_ns, request, recorded, ack),
            };
            let due = clock.due(round, timestamp_ns, &self.options);
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = &mut interrupted => { stopped = true; break },
            }
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit,
                () = &mut interrupted => { stopped = true; break },
            };
            let Ok(permit) = permit else { break };
            clock.last_sent = Some(Instant::now());
            tasks.spawn(self.job(*request, recorded, ack).run(permit));
            // Finished tasks are collected as we go, so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        drop(rx);
        if stopped {
            // Stopped by a signal: answers under way get a moment, then are abandoned
            // (a NATS message left unacknowledged is delivered again later).
            let drained = async { while tasks.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(nats::STOP_GRACE, drained).await;
        } else {
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Counts a request as sent and prepares its task: the request for the target, what
    /// to compare its answer with, and its own record for `--output`.
    fn job(
        &self,
        request: ParsedRequest,
        recorded: Option<Box<ParsedResponse>>,
        ack: Option<nats::Ack>,
    ) -> Job {
        lock(&self.summary).sent += 1;
        let compare = match (&self.comparison, recorded) {
            (Some(comparison), Some(recorded)) => Some(Compare {
                comparison: comparison.clone(),
                recorded: recorded_answer(*recorded, self.options.max_compare_size),
                method: request.method.clone(),
                path_and_query: request.path_and_query.clone(),
            }),
            _ => None,
        };
        let capture =
            (compare.is_some() || self.output.is_some()).then_some(self.options.max_compare_size);
        let own = self
            .output
            .as_ref()
            .map(|writer| OwnRecord::of(writer.clone(), &request));
        Job {
            request: build(&self.target, request),
            capture,
            compare,
            own,
            ack,
            pool: self.pool.clone(),
            summary: self.summary.clone(),
            timeout: self.options.timeout,
            progress: self.progress.clone(),
        }
    }

    /// Reports the tally and returns the exit status.
    fn finish(&self) -> u8 {
        let summary = lock(&self.summary);
        for line in &summary.skipped {
            eprintln!("replay: skipped {line}");
        }
        if summary.failed > 0 {
            eprintln!(
                "replay: failed by cause: connect {}, timeout {}, other {}",
                summary.failed_connect,
                summary.failed_timeout,
                summary.failed - summary.failed_connect - summary.failed_timeout
            );
        }
        let rate =
            (summary.compared > 0).then(|| summary.mismatched as f64 / summary.compared as f64);
        println!("{}", summary.line());
        if let Some(comparison) = &self.comparison {
            for line in comparison.endpoint_lines() {
                println!("{line}");
            }
            println!(
                "{}",
                summary.compared_line(rate, self.options.max_mismatch_rate)
            );
        }
        if summary.sent > 0 && summary.answered == 0 {
            eprintln!("replay: the target never answered");
            return EXIT_COULD_NOT_RUN;
        }
        if rate.is_some_and(|rate| rate > self.options.max_mismatch_rate) {
            return EXIT_MISMATCH;
        }
        EXIT_DONE
    }
}

/// What sending one request gave: its status and kept answer, a client error, or the
/// timeout.
type Sent =
    Result<Result<(http::StatusCode, Option<Answer>), client::Error>, tokio::time::error::Elapsed>;

/// The replay's own record of one request (`--output`): the request as sent, its
/// answer added once it comes.
struct OwnRecord {
    writer: Arc<Writer>,
    id: String,
    timestamp: i128,
    records: Vec<u8>,
}

impl OwnRecord {
    /// The record of `request`, stamped now.
    fn of(writer: Arc<Writer>, request: &ParsedRequest) -> Self {
        let id = format::new_id();
        let timestamp = crate::record::unix_ns(std::time::SystemTime::now());
        let records = format::encode_request(
            &id,
            timestamp,
            &request.method,
            &request.path_and_query,
            &request.headers,
            &request.body,
            request.trailers.as_ref(),
        );
        Self {
            writer,
            id,
            timestamp,
            records,
        }
    }

    /// Adds the answer when it was kept whole, and writes both; a write error is logged.
    async fn write(mut self, result: &Sent, elapsed: Duration) {
        if let Ok(Ok((_, Some(answer)))) = result {
            if let verdict::CapturedBody::Whole(body) = &answer.body {
                self.records.extend(format::encode_response(
                    &self.id,
                    self.timestamp,
                    i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX),
                    answer.status,
                    &answer.headers,
                    body,
                    Some(&answer.trailers),
                ));
            }
        }
        if let crate::record::writer::Outcome::Failed(err) =
            self.writer.write(self.records, OUTPUT_LIMITS).await
        {
            tracing::warn!(%err, "replay: cannot write --output");
        }
    }
}

/// With `--compare`: what a replayed answer is compared with, and where it is counted.
struct Compare {
    comparison: Arc<compare::Comparison>,
    recorded: Answer,
    method: Method,
    path_and_query: String,
}

/// One request's task: what it sends, and where its outcome goes.
struct Job {
    request: Request<Full<Bytes>>,
    /// Keep the answer, its body up to this many bytes.
    capture: Option<usize>,
    compare: Option<Compare>,
    own: Option<OwnRecord>,
    ack: Option<nats::Ack>,
    pool: Arc<Pool<Full<Bytes>>>,
    summary: Arc<Mutex<Summary>>,
    timeout: Duration,
    progress: indicatif::ProgressBar,
}

impl Job {
    /// Sends the request, records and compares its answer, and tallies the outcome;
    /// the permit is given back at the end.
    async fn run(self, permit: tokio::sync::OwnedSemaphorePermit) {
        let started = Instant::now();
        let result = tokio::time::timeout(
            self.timeout,
            send_one(&self.pool, self.request, self.capture),
        )
        .await;
        let elapsed = started.elapsed();
        if let Some(ack) = self.ack {
            ack.settle(&result).await;
        }
        if let Some(own) = self.own {
            own.write(&result, elapsed).await;
        }
        // Compared outside the lock: a large JSON body takes a while.
        let mut result = result;
        let replayed = match &mut result {
            Ok(Ok((_, answer))) => answer.take(),
            _ => None,
        };
        let mismatched = match (replayed, self.compare) {
            (Some(replayed), Some(c)) => {
                c.comparison
                    .judge(&c.method, &c.path_and_query, c.recorded, replayed, elapsed)
            }
            _ => None,
        };
        let mut summary = lock(&self.summary);
        if let Some(mismatched) = mismatched {
            summary.count_verdict(mismatched);
        }
        summary.count_result(result, elapsed);
        self.progress.set_message(format!(
            "sent {}, answered {}, failed {}",
            summary.sent, summary.answered, summary.failed
        ));
        drop(permit);
    }
}

fn lock(summary: &Mutex<Summary>) -> std::sync::MutexGuard<'_, Summary> {
    // Only counters change under this lock; a poisoned one still holds them.
    summary
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spinner with the counts on stderr when it is a terminal; hidden otherwise.
fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn speed_takes_factors_and_percentages() {
        assert_eq!(parse_speed("2"), Ok(2.0));
        assert_eq!(parse_speed("200%"), Ok(2.0));
        assert_eq!(parse_speed("0"), Ok(0.0));
        assert_eq!(parse_speed("50 %"), Ok(0.5));
        assert!(parse_speed("-1").is_err());
        assert!(parse_speed("fast").is_err());
        assert!(parse_speed("inf").is_err());
    }

    #[test]
    fn a_recorded_request_goes_to_the_target_without_hop_by_hop_headers() {
        let target = TargetUrl::parse("http://candidate:8080/base").unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("prod.example"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        let request = build(
            &target,
            ParsedRequest {
                method: Method::POST,
                path_and_query: "http://prod.example/x?y=1".into(),
                headers,
                body: Bytes::from_static(b"hi"),
                trailers: None,
            },
        );
        assert_eq!(request.uri(), "/base/x?y=1");
        assert_eq!(request.headers()[header::HOST], "candidate:8080");
        assert_eq!(request.headers()["x-kept"], "1");
        assert!(!request.headers().contains_key(header::CONNECTION));
        assert!(!request.headers().contains_key(header::CONTENT_LENGTH));
    }
}
