//! Mirroring (docs/shadowing.md, "How requests are handled" and "Health"): one [`Mirror`] per
//! target, each with its own bounded queue, connection pool, counters and health.
//!
//! The request path calls [`Mirror::offer`], which never waits: it takes a queue permit
//! (`--max-queued-requests` counts copies waiting *and* in flight), asks the health state
//! machine, and hands the admitted copy to `Mirror::enqueue`, which delivers it in the
//! background. Every copy starts at once, on its worker's delivery lane ([`lane`]: one
//! long-lived task per mirror and worker thread that runs the mirror's copies side by
//! side). A copy for an ordered mirror (`ordered=true`: main's happens-before order, as
//! the Go tool kept it; see [`ordered`]) first waits there, holding its queue permit,
//! until the copies it follows are done; the permit, health check, counters and
//! delivery are the same for both.

pub mod compare;
pub mod counters;
pub mod grpc;
pub mod health;
mod lane;
pub mod options;
pub mod ordered;
pub mod retry;
pub mod select;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::budget::{Budget, Held};
use crate::client::{self, Pool};
use crate::target_url::{TargetUrl, Transport};
use compare::capture::{self, BodyCapture, Captured, ForCompare, MainAnswer, MainAnswerRx};
use compare::mismatches::{Mismatches, Record};
use compare::stats::{CompareSnapshot, CompareStats};
use compare::{Answer, Rules, Verdict};
use counters::{Counters, Latency, Snapshot};
use health::{Event, Health, Policy, State, Ticket};
use options::MirrorOptions;
use ordered::{MainHalf, MirrorHalf, Order};
use select::RateLimiter;

/// What one copy got back from its mirror ([`Mirror::send`]).
struct Reply {
    status: http::StatusCode,
    /// The answer kept aside for comparing with main's: `None` when this copy is not
    /// compared or its capture did not fit in the byte budget.
    captured: Option<CapturedAnswer>,
}

/// A mirror's answer kept aside for comparing with main's.
struct CapturedAnswer {
    /// Status, headers and the captured start (and digest) of the body.
    answer: Answer,
    /// From the copy setting off to the end of the mirror's answer.
    latency: Duration,
    /// The kept bytes' share of the byte budget, given back when this is dropped.
    held: Held,
}

/// One request as every mirror receives it. Built once per request and shared by all
/// copies through an `Arc`; the body is a single `Bytes`, never a copy per mirror.
#[derive(Debug)]
pub struct MirrorRequest {
    pub method: Method,
    pub path_and_query: Option<PathAndQuery>,
    /// Already rewritten for forwarding: hop-by-hop removed, `X-Forwarded-*` and `Via`
    /// set; `Host` is the client's with `--preserve-host`, else an empty slot (see
    /// `host_slot`).
    pub headers: HeaderMap,
    /// `headers` holds an empty `Host` that each copy sets to its mirror's authority in
    /// place: the copy's clone of the map then never grows.
    pub host_slot: bool,
    pub body: Bytes,
    /// The body's bytes in the `--max-buffered-bytes` budget, given back when the last
    /// copy is done with (this struct is dropped).
    pub(crate) _held: Held,
    /// Main's answer, for the mirrors that compare theirs with it.
    pub main_answer: Option<MainAnswerRx>,
    /// A gRPC call's deadline: each copy's `grpc-timeout` is what is left of it.
    pub deadline: Option<grpc::Deadline>,
    /// When the request arrived; set when a recording mirror selected it.
    pub arrived: Option<std::time::SystemTime>,
    /// Its endpoint in the comparison results of mirrors without `endpoint=` patterns
    /// (docs/comparing.md, "Per endpoint"), made by the first that compares.
    pub endpoint_key: std::sync::OnceLock<String>,
    /// Its head as the copies to `http://` mirrors write it without hyper (see
    /// [`client::raw`]), serialised by the first such copy; `None` inside when hyper
    /// must frame it.
    pub raw_head: std::sync::OnceLock<Option<client::raw::Head>>,
}

/// Settings shared by every mirror.
#[derive(Debug, Clone)]
pub struct Settings {
    pub retry_after: Duration,
    pub fail_after: Duration,
    pub max_queued: usize,
    pub timeout: Duration,
    /// TLS settings for https:// mirrors.
    pub tls: Arc<rustls::ClientConfig>,
    /// Connection pools per mirror: one per worker thread (see [`crate::workers`]).
    pub pools: usize,
    /// Connections open at once to one mirror, across its pools.
    pub max_connections: usize,
    /// `--max-compare-size`: bytes of each answer kept for a comparison.
    pub max_compare_size: usize,
    /// `--grpc-descriptors`: the services whose answers' messages are compared as JSON.
    pub grpc_descriptors: Option<Arc<compare::grpc::Descriptors>>,
}

/// What every mirror needs from the rest of the program.
pub(crate) struct Shared {
    pub settings: Settings,
    /// Every delivery task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Copies admitted and not yet finished, across all mirrors (for the shutdown log).
    pub outstanding: AtomicUsize,
    /// Mirrors that failed for longer than `--fail-after`; the registry takes them out
    /// of the set (a mirror never reaches into the registry itself).
    pub expired: mpsc::UnboundedSender<Weak<Mirror>>,
    /// The `--max-buffered-bytes` budget, also for answers kept for comparison.
    pub budget: Budget,
    /// Cancelled near the end of the shutdown: the copies of `spill=` mirrors still
    /// queued or in flight stop and are spilled (docs/record-replay.md).
    pub spill_now: tokio_util::sync::CancellationToken,
}

/// How sending a copy ended: its outcome, or `--mirror-timeout`.
type SendResult = Result<Result<Reply, crate::body::BoxError>, tokio::time::error::Elapsed>;

/// Where a mirror came from; shown as `source` in the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `--mirror`.
    Flag,
    /// The admin endpoint (and so the state file).
    Admin,
    /// `--targets-file`.
    File,
}

/// What a mirror is configured to do: its options and what is derived from them.
/// Immutable; replacing a mirror's options replaces its plan and keeps the mirror.
#[derive(Debug)]
pub struct Plan {
    pub options: MirrorOptions,
    pub source: Source,
    rate: Option<RateLimiter>,
    /// With `compare=true`: what to compare.
    pub compare: Option<Rules>,
}

impl Plan {
    pub fn new(options: MirrorOptions, source: Source) -> Self {
        // The options parser has validated `ignore` already; the fallback is unreachable
        // for options that parsed.
        let compare = options.compare.then(|| {
            Rules::new(options.effective_compare_headers(), &options.ignore).unwrap_or_default()
        });
        Self {
            rate: options.rate.map(RateLimiter::new),
            compare,
            options,
            source,
        }
    }

    /// Whether this request goes to the mirror (method, path, share, rate). `roll` is
    /// the request's one random draw in `[0, 1)`, shared by every mirror so that
    /// mirrors with the same `percent` get the same requests (a baseline and its
    /// candidates compare the same answers).
    pub fn selects(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
        roll: f64,
    ) -> bool {
        let options = &self.options;
        if !options.selects_all() && !select::select(options, method, path, headers, || roll) {
            return false;
        }
        self.rate
            .as_ref()
            .is_none_or(|rate| rate.try_acquire(Instant::now()))
    }

    /// Never removed by `--fail-after`: marked persistent, or owned by a flag or the
    /// targets file (which would only add it again).
    pub fn persistent(&self) -> bool {
        self.options.persistent || self.source != Source::Admin
    }
}

/// A mirror in the set, with its current plan.
#[derive(Clone)]
pub struct Member {
    pub mirror: Arc<Mirror>,
    pub plan: Arc<Plan>,
}

/// A copy admitted to a mirror.
struct Job {
    request: Arc<MirrorRequest>,
    plan: Arc<Plan>,
    ticket: Ticket,
    /// For an ordered mirror: the copies this one must follow.
    order: Option<MirrorHalf>,
    _slot: Slot,
}

/// Dropped copies of one mirror being written to its `spill=` file at once; past it
/// a dropped copy is not spilled (its body stays in the byte budget meanwhile).
const SPILLS_IN_FLIGHT: usize = 1024;

/// Holds one queue permit and one unit of `outstanding` until the copy is finished.
struct Slot {
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One mirror target. Lives in the registry; each delivery task holds another `Arc`.
pub struct Mirror {
    url: TargetUrl,
    counters: Counters,
    /// Time of each request to this mirror (the Prometheus scrape).
    latency: Latency,
    /// Happens-before bookkeeping, used while the mirror's plan says `ordered`.
    order: Arc<Order>,
    /// Comparison results while the plan says `compare`.
    comparison: CompareStats,
    mismatches: Mismatches,
    endpoints: compare::endpoints::Endpoints,
    health: Mutex<Health>,
    permits: Arc<Semaphore>,
    /// Set when the mirror leaves the set or at shutdown: new copies are dropped, those
    /// already admitted are still delivered.
    closed: AtomicBool,
    /// Set once a gRPC call skipped here (HTTP/1.1 cannot carry one) has been logged.
    grpc_skip_logged: AtomicBool,
    /// One pool per worker thread; each holds keep-alive connections to this mirror.
    /// Empty for a recording (`file://`) mirror.
    pools: Box<[Pool<Full<Bytes>>]>,
    /// For a `file://` mirror: where copies are written instead of sent.
    sink: Option<crate::record::Sink>,
    /// For a `nats://` mirror: where copies are published instead of sent.
    nats: Option<crate::nats::Publisher>,
    /// The writer of the `spill=` file and its pattern, started at the first spill.
    spill: Mutex<Option<(String, Arc<crate::record::Sink>)>>,
    /// Dropped copies being spilled, at most [`SPILLS_IN_FLIGHT`]: a slow disk must not
    /// pile up tasks.
    spill_permits: Arc<Semaphore>,
    /// Where admitted copies are delivered: one lane per worker thread.
    lanes: lane::Lanes<(Arc<Mirror>, Job)>,
    shared: Arc<Shared>,
}

/// The JSON listing entry of one mirror (docs/shadowing.md, "The admin endpoint").
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub url: String,
    /// What the mirror is spoken to in: `http/1.1`, `h2c`, or for `https://` what its
    /// server picked (`h2` or `http/1.1`), null before the first connection.
    pub protocol: Option<&'static str>,
    pub source: Source,
    pub state: State,
    pub persistent: bool,
    pub failing_since: Option<String>,
    pub options: MirrorOptions,
    /// The counters, `queued` (copies waiting or in flight) included.
    #[serde(flatten)]
    pub counters: Snapshot,
    /// Comparison results, for a mirror with `compare=true` (else null).
    pub compare: Option<CompareSnapshot>,
}

impl Mirror {
    /// Creates a mirror. When it has failed for longer than `--fail-after` it is sent
    /// on `shared.expired`.
    pub(crate) fn spawn(url: TargetUrl, shared: &Arc<Shared>) -> Arc<Self> {
        let settings = &shared.settings;
        let sink = url.file_path().map(crate::record::Sink::start);
        let nats = url
            .nats()
            .map(|_| crate::nats::Publisher::new(&url, settings.tls.clone()));
        let pools = if sink.is_some() || nats.is_some() {
            Box::default()
        } else {
            client::per_worker(
                &url,
                &settings.tls,
                settings.pools,
                settings.max_connections,
            )
        };
        Arc::new(Self {
            url,
            counters: Counters::default(),
            latency: Latency::default(),
            order: Arc::default(),
            comparison: CompareStats::new(),
            mismatches: Mismatches::default(),
            endpoints: compare::endpoints::Endpoints::default(),
            health: Mutex::new(Health::new()),
            permits: Arc::new(Semaphore::new(shared.settings.max_queued)),
            closed: AtomicBool::new(false),
            grpc_skip_logged: AtomicBool::new(false),
            pools,
            sink,
            nats,
            spill: Mutex::new(None),
            spill_permits: Arc::new(Semaphore::new(SPILLS_IN_FLIGHT)),
            lanes: lane::Lanes::new(settings.pools),
            shared: shared.clone(),
        })
    }

    pub fn url(&self) -> &TargetUrl {
        &self.url
    }

    /// Time of each request to this mirror, whatever its outcome.
    pub fn latency(&self) -> &Latency {
        &self.latency
    }

    /// Counts a copy that was not sent by rule (too large, upgrade, loop, a body the
    /// client did not finish).
    pub fn skip(&self) {
        Counters::incr(&self.counters.skipped);
    }

    /// Whether this mirror can take a gRPC call: not when it is spoken to in HTTP/1.1
    /// (an `http://` mirror, or an `https://` one whose server picked `http/1.1`).
    pub fn carries_grpc(&self) -> bool {
        self.pools.iter().find_map(Pool::protocol) != Some("http/1.1")
    }

    /// Counts a gRPC call `skipped` because this mirror speaks HTTP/1.1, which cannot
    /// carry it; logged the first time only.
    pub fn skip_grpc(&self) {
        self.skip();
        if !self.grpc_skip_logged.swap(true, Ordering::Relaxed) {
            warn!(
                mirror = %self.url,
                "gRPC calls are not mirrored to this mirror: HTTP/1.1 cannot carry them \
                 (use h2c:// or https://); further calls are only counted as skipped"
            );
        }
    }

    /// Counts a copy that was dropped before it reached the queue (the byte budget).
    pub fn drop_copy(&self) {
        Counters::incr(&self.counters.dropped);
    }

    /// Counts a request that this mirror's options leave out.
    pub fn filter(&self) {
        Counters::incr(&self.counters.filtered);
    }

    /// Registers a request for ordered replay (see [`ordered`]).
    pub fn arrive(&self) -> (MainHalf, MirrorHalf) {
        self.order.arrive()
    }

    /// Offers one copy to this mirror without waiting. Drops (and counts) it when the
    /// queue is full or the mirror is failing.
    pub fn offer(
        self: &Arc<Self>,
        request: &Arc<MirrorRequest>,
        plan: &Arc<Plan>,
        order: Option<MirrorHalf>,
    ) {
        if self.sink.as_ref().is_some_and(|sink| sink.refuses_now()) {
            // A recording found full drops its copies here, before any work is spent.
            Counters::incr(&self.counters.dropped);
            return;
        }
        // Permit first: a trial admitted by the health check must always be sent, or the
        // mirror would stay "retrying" for ever.
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            Counters::incr(&self.counters.dropped);
            self.spill_later(request, plan);
            return;
        };
        let (ticket, event) = self.lock_health().admit(Instant::now());
        if let Some(event) = event {
            self.log_event(event);
        }
        let Some(ticket) = ticket else {
            Counters::incr(&self.counters.dropped);
            self.spill_later(request, plan);
            return;
        };
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            request: request.clone(),
            plan: plan.clone(),
            ticket,
            order,
            _slot: Slot {
                _permit: permit,
                shared: self.shared.clone(),
            },
        };
        if !self.enqueue(job) {
            Counters::incr(&self.counters.dropped);
        }
    }

    /// Spills a dropped copy on its own task, when the mirror's plan says `spill=`.
    fn spill_later(self: &Arc<Self>, request: &Arc<MirrorRequest>, plan: &Arc<Plan>) {
        if plan.options.spill.is_none() {
            return;
        }
        let Ok(permit) = self.spill_permits.clone().try_acquire_owned() else {
            debug!(mirror = %self.url, "dropped copy not spilled: too many being written");
            return;
        };
        let (mirror, request, plan) = (self.clone(), request.clone(), plan.clone());
        self.shared.tracker.spawn(Box::pin(async move {
            mirror.spill(&request, &plan).await;
            drop(permit);
        }));
    }

    /// Writes a failed or dropped copy to the `spill=` file (docs/record-replay.md) and
    /// counts it `spilled`.
    async fn spill(&self, request: &MirrorRequest, plan: &Plan) {
        let Some(pattern) = &plan.options.spill else {
            return;
        };
        let sink = {
            // Poisoning would be a bug: only the slot is replaced under this lock.
            let mut slot = self.spill.lock().expect("mirror spill lock poisoned");
            match &*slot {
                Some((started, sink)) if started == pattern => sink.clone(),
                _ => {
                    let sink = Arc::new(crate::record::Sink::start(pattern));
                    *slot = Some((pattern.clone(), sink.clone()));
                    sink
                }
            }
        };
        let taken = std::time::SystemTime::now();
        match sink.record(request, plan, taken, Duration::ZERO).await {
            Ok(()) => Counters::incr(&self.counters.spilled),
            Err(err) => debug!(mirror = %self.url, %err, "copy not spilled"),
        }
    }

    /// Starts delivering an admitted copy on this worker's lane (where an ordered copy
    /// waits its turn) and counts it `sent`. False when the mirror is closed; the job
    /// (and its permit) is then dropped.
    fn enqueue(self: &Arc<Self>, job: Job) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        // Counted before the lane has it: on another worker thread it may finish (and
        // count its outcome) before `send` returns.
        self.counters.enter_queue();
        let start = |rx| {
            let lane = lane::run(rx, |(mirror, job)| Self::deliver_reporting(mirror, job));
            self.shared.tracker.spawn(lane);
        };
        if let Err((mirror, job)) = self.lanes.send((self.clone(), job), start) {
            // Closed since the check above: admitted all the same, so delivered on a
            // task of its own (boxed: the copy's future is ~2 KB).
            let delivery = Self::deliver_reporting(mirror, job);
            self.shared.tracker.spawn(Box::pin(delivery));
        }
        true
    }

    /// Delivers `job`, then hands the mirror to the registry for removal when it has
    /// failed for longer than `--fail-after`.
    async fn deliver_reporting(mirror: Arc<Self>, job: Job) {
        if mirror.deliver(job).await == Some(Event::Remove) {
            let _ = mirror.shared.expired.send(Arc::downgrade(&mirror));
        }
    }

    /// Stops accepting copies; those already admitted are still delivered.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lanes.close();
    }

    /// Closes the idle connections to a mirror that left the set, without waiting for
    /// the copies still in flight to end.
    pub fn close_connections(&self) {
        for pool in self.pools.iter() {
            pool.close();
        }
    }

    pub fn status(&self, plan: &Plan) -> Status {
        let health = self.lock_health();
        Status {
            url: self.url.to_string(),
            protocol: match (&self.sink, &self.nats) {
                (Some(_), _) => Some("file"),
                (_, Some(_)) => Some("nats"),
                _ => self.pools.iter().find_map(Pool::protocol),
            },
            source: plan.source,
            state: health.state(),
            persistent: plan.persistent(),
            options: plan.options.clone(),
            failing_since: health
                .failing_since()
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            counters: self.counters.snapshot(),
            compare: plan.compare.as_ref().map(|_| self.comparison.snapshot()),
        }
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        // Only plain field updates happen under this lock; poisoning would be a bug.
        self.health.lock().expect("mirror health lock poisoned")
    }

    fn policy(&self, plan: &Plan) -> Policy {
        Policy {
            retry_after: self.shared.settings.retry_after,
            fail_after: self.shared.settings.fail_after,
            persistent: plan.persistent(),
        }
    }

    /// Waits for the copy's turn (an ordered mirror) and sends it within
    /// `--mirror-timeout`, with `retry=N` when set; returns when it set off and the
    /// result.
    async fn send_in_time(&self, job: &Job) -> (Instant, SendResult) {
        if let Some(order) = &job.order {
            // Outside the timeout: waiting for earlier copies is not this copy's failure.
            order.wait_turn().await;
        }
        let timeout = self.shared.settings.timeout;
        let started = Instant::now();
        let retries = job.plan.options.retry;
        let result = if retries == 0 {
            let sent = self.send(&job.request, &job.plan, started);
            tokio::time::timeout(timeout, sent).await
        } else {
            // Boxed, so that a copy without `retry` (the common case) does not carry the
            // retry loop's state in its future.
            let sent = self.send_retrying(&job.request, &job.plan, retries);
            Box::pin(tokio::time::timeout(timeout, sent)).await
        };
        (started, result)
    }

    /// For a copy that ended in an error that is not the mirror's failure (its health
    /// untouched), the counter it ends in.
    fn not_the_mirrors_fault(
        &self,
        err: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Option<&AtomicU64> {
        if crate::record::is_full(err) {
            // `max_total_size` found reached by this queued copy: not written, so
            // `failed` (a `sent` copy ends as one `succeeded` or `failed`), but not the
            // mirror's failure; the copies offered next are `dropped` at once.
            return Some(&self.counters.failed);
        }
        if crate::nats::is_too_large(err) {
            // Over the NATS server's `max_payload`: skipped by rule, logged once.
            return Some(&self.counters.skipped);
        }
        if client::is_fd_exhaustion(err) {
            // Our own limit, not the mirror's fault: `failed` (it was `sent`), health
            // untouched.
            let error = client::error_chain(err);
            debug!(mirror = %self.url, %error, "mirror copy failed: out of file descriptors");
            return Some(&self.counters.failed);
        }
        None
    }

    /// Sends one copy, drains and discards the response, and records the outcome.
    async fn deliver(&self, job: Job) -> Option<Event> {
        let (started, result) = if job.plan.options.spill.is_some() {
            // Boxed: one copy future holds one `send_in_time`, not two of them.
            let sent = Box::pin(self.send_in_time(&job));
            tokio::select! {
                sent = sent => sent,
                () = self.shared.spill_now.cancelled() => {
                    // Cut short by the shutdown: failed, like a timeout, and spilled.
                    self.counters.leave_queue(&self.counters.failed);
                    self.lock_health().abandon(job.ticket);
                    Box::pin(self.spill(&job.request, &job.plan)).await;
                    return None;
                }
            }
        } else {
            self.send_in_time(&job).await
        };
        let timeout = self.shared.settings.timeout;
        if let Ok(Err(err)) = &result {
            if let Some(counter) = self.not_the_mirrors_fault(&**err) {
                self.counters.leave_queue(counter);
                self.lock_health().abandon(job.ticket);
                return None;
            }
        }
        let finished = Instant::now();
        self.latency.observe(finished - started);
        let (success, answer) = match result {
            Ok(Ok(Reply { status, captured })) => {
                if status.is_server_error() {
                    debug!(mirror = %self.url, %status, "mirror answered with a server error");
                }
                (!status.is_server_error(), captured)
            }
            Ok(Err(err)) => {
                let error = client::error_chain(&*err);
                debug!(mirror = %self.url, %error, "mirror request failed");
                (false, None)
            }
            Err(_) => {
                debug!(mirror = %self.url, ?timeout, "mirror request timed out");
                (false, None)
            }
        };
        let counter = if success {
            &self.counters.succeeded
        } else {
            &self.counters.failed
        };
        self.counters.leave_queue(counter);
        if !success && job.plan.options.spill.is_some() {
            Box::pin(self.spill(&job.request, &job.plan)).await;
        }
        let policy = self.policy(&job.plan);
        let event = self
            .lock_health()
            .record(job.ticket, success, finished, &policy);
        if let Some(event) = event {
            self.log_event(event);
        }
        if let (Some(rules), Some(rx)) = (&job.plan.compare, &job.request.main_answer) {
            let endpoints = &job.plan.options.endpoints;
            (self.compare(rules, endpoints, &job.request, rx.clone(), answer)).await;
        }
        event
    }

    /// Compares this copy's answer with main's, once main's is complete.
    async fn compare(
        &self,
        rules: &Rules,
        endpoints: &[String],
        request: &MirrorRequest,
        main: MainAnswerRx,
        mirror: Option<CapturedAnswer>,
    ) {
        // `_held` keeps the mirror's kept bytes in the budget until the comparison is over.
        let Some(CapturedAnswer {
            answer: mirror,
            latency: mirror_latency,
            held: _held,
        }) = mirror
        else {
            self.comparison.not_compared();
            return;
        };
        // Main's answer may still be streaming; wait for it as long as a copy may take.
        let Some(main) = capture::main_answer(main, self.shared.settings.timeout).await else {
            self.comparison.not_compared();
            return;
        };
        self.compare_decoded(rules, endpoints, request, &main, mirror, mirror_latency);
    }

    /// Compares the two answers with compressed bodies decoded (docs/comparing.md,
    /// "What is compared"); past the byte budget, the pair is not compared.
    fn compare_decoded(
        &self,
        rules: &Rules,
        endpoints: &[String],
        request: &MirrorRequest,
        main: &MainAnswer,
        mut mirror: Answer,
        mirror_latency: Duration,
    ) {
        // Main's is decoded here, on this copy's task, never while it streams to the client.
        let limit = self.shared.settings.max_compare_size;
        let budget = &self.shared.budget;
        // Looked up once per answer here, not again by each step below.
        let grpc = (
            compare::grpc::is_grpc(&main.answer.headers),
            compare::grpc::is_grpc(&mirror.headers),
        );
        let _mirror_decoded =
            match capture::for_compare_of(&mirror.headers, grpc.1, &mirror.body, limit, budget) {
                ForCompare::AsCaptured => None,
                ForCompare::Decoded(body, held) => {
                    mirror.body = body;
                    Some(held)
                }
                ForCompare::OverBudget => {
                    self.comparison.not_compared();
                    return;
                }
            };
        let main_decoded;
        let main_answer = match capture::for_compare_of(
            &main.answer.headers,
            grpc.0,
            &main.answer.body,
            limit,
            budget,
        ) {
            ForCompare::AsCaptured => &main.answer,
            ForCompare::Decoded(body, held) => {
                let answer = Answer {
                    status: main.answer.status,
                    headers: main.answer.headers.clone(),
                    body,
                    trailers: main.answer.trailers.clone(),
                };
                main_decoded = (answer, held);
                &main_decoded.0
            }
            ForCompare::OverBudget => {
                self.comparison.not_compared();
                return;
            }
        };
        self.judge(
            (rules, endpoints),
            request,
            (main_answer, &mirror, grpc),
            (main.latency, mirror_latency),
        );
    }

    /// Compares main's answer and the mirror's as they are, counts the verdict and
    /// keeps a mismatch.
    /// `endpoints`: the mirror's `endpoint=` patterns; `latency`: main's and the mirror's.
    fn judge(
        &self,
        (rules, endpoints): (&Rules, &[String]),
        request: &MirrorRequest,
        (main, mirror, grpc): (&Answer, &Answer, (bool, bool)),
        (main_latency, mirror_latency): (Duration, Duration),
    ) {
        let path = request
            .path_and_query
            .as_ref()
            .map_or("/", PathAndQuery::as_str);
        // The called method's output type, for gRPC messages compared as JSON.
        let output = (self.shared.settings.grpc_descriptors.as_ref())
            .and_then(|descriptors| descriptors.output(path));
        let both_grpc = grpc.0 && grpc.1;
        let verdict = compare::verdict::compare_of(rules, output.as_ref(), main, mirror, both_grpc);
        self.comparison
            .record(&verdict, main_latency, mirror_latency);
        self.comparison.errors(
            compare::verdict::is_error(main, grpc.0),
            compare::verdict::is_error(mirror, grpc.1),
        );
        let key;
        let key = if endpoints.is_empty() {
            // The same for every mirror without `endpoint=`: made once per request.
            request
                .endpoint_key
                .get_or_init(|| compare::endpoints::key_for(request.method.as_str(), &[], path))
        } else {
            key = compare::endpoints::key_for(request.method.as_str(), endpoints, path);
            &key
        };
        self.endpoints
            .record_key(key, &verdict, main_latency, mirror_latency);
        if let Verdict::Mismatch(mismatch) = verdict {
            self.mismatches.push(Record::new(
                std::time::SystemTime::now(),
                &request.method,
                path,
                main.status,
                mirror.status,
                mismatch,
            ));
        }
    }

    /// The comparison totals and latencies.
    pub fn comparison(&self) -> CompareSnapshot {
        self.comparison.snapshot()
    }

    /// The results per endpoint, the most compared first; with `baseline`, each field
    /// weighed against that mirror's (regressions and noise).
    pub fn endpoints(
        &self,
        baseline: Option<&Mirror>,
    ) -> Vec<compare::endpoints::EndpointSnapshot> {
        let counts = baseline.map(|b| b.endpoints.counts());
        self.endpoints.snapshot(counts.as_ref())
    }

    /// The latest mismatches, newest first.
    pub fn mismatches(&self) -> Vec<Record> {
        self.mismatches.latest()
    }

    /// Sends one copy with `retry=N` (see [`retry`]): again while it failed and either
    /// never reached the mirror or has an idempotent method; each further try is
    /// counted `retried`.
    async fn send_retrying(
        &self,
        request: &MirrorRequest,
        plan: &Plan,
        retries: u32,
    ) -> Result<Reply, crate::body::BoxError> {
        let idempotent = retry::idempotent(&request.method);
        retry::with_retries(
            retries,
            || self.send(request, plan, Instant::now()),
            |outcome: &Result<Reply, crate::body::BoxError>| match outcome {
                Ok(reply) => idempotent && reply.status.is_server_error(),
                // Out of file descriptors is this process's limit: `deliver` drops it.
                Err(err) if client::is_fd_exhaustion(&**err) => false,
                // Tried again inside, with the same message id.
                Err(err) if crate::nats::is_publish_error(&**err) => false,
                Err(err) => {
                    idempotent
                        || err
                            .downcast_ref::<client::Error>()
                            .is_some_and(client::Error::never_sent)
                }
            },
            || Counters::incr(&self.counters.retried),
        )
        .await
    }

    /// Sends one copy and reads its answer: thrown away, or captured when it is to be
    /// compared with main's.
    /// `started` is when the copy set off, for the captured answer's latency.
    async fn send(
        &self,
        request: &MirrorRequest,
        plan: &Plan,
        started: Instant,
    ) -> Result<Reply, crate::body::BoxError> {
        if let Some(sink) = &self.sink {
            let arrived = request.arrived.unwrap_or_else(std::time::SystemTime::now);
            // Boxed, as the NATS branch below: an HTTP copy's future (the common case)
            // then does not carry their state, which every copy would move around.
            Box::pin(sink.record(request, plan, arrived, self.shared.settings.timeout)).await?;
            return Ok(Reply {
                status: http::StatusCode::OK,
                captured: None,
            });
        }
        let capture = plan.compare.is_some() && request.main_answer.is_some();
        if let Some(nats) = &self.nats {
            let arrived = request.arrived.unwrap_or_else(std::time::SystemTime::now);
            let retried = || Counters::incr(&self.counters.retried);
            Box::pin(nats.publish(
                request,
                plan,
                arrived,
                self.shared.settings.timeout,
                retried,
            ))
            .await?;
            return Ok(Reply {
                status: http::StatusCode::OK,
                captured: None,
            });
        }
        // Only its status is needed: written and read without hyper.
        if !capture && self.url.transport() == Transport::Http {
            if let Some(status) = self.send_raw(request, plan).await {
                return Ok(Reply {
                    status: status?,
                    captured: None,
                });
            }
        }
        let req = self.copy_request(request, plan);
        let response = crate::workers::pick(&self.pools).send(req).await?;
        let status = response.status();
        let (parts, mut body) = response.into_parts();
        let mut capture = capture
            .then(|| BodyCapture::new(self.shared.settings.max_compare_size, &self.shared.budget));
        // Read the answer to its end, so the connection is reused.
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(capture) = capture.as_mut() {
                capture.push_frame(&frame);
            }
        }
        let captured = capture.and_then(BodyCapture::finish).map(
            |Captured {
                 body,
                 trailers,
                 held,
             }| CapturedAnswer {
                answer: Answer {
                    status,
                    headers: parts.headers,
                    body,
                    trailers,
                },
                latency: started.elapsed(),
                held,
            },
        );
        Ok(Reply { status, captured })
    }

    /// Sends one copy without hyper ([`client::raw`]) and reads its answer to the end:
    /// its status. `None` when hyper must frame this request. A copy with its own header
    /// changes (the gRPC deadline, rewrites) writes its own head, the others share one.
    async fn send_raw(
        &self,
        request: &MirrorRequest,
        plan: &Plan,
    ) -> Option<Result<http::StatusCode, client::Error>> {
        let own;
        let head = if request.deadline.is_none() && !plan.options.has_rewrites() {
            let head = &request.raw_head;
            let body_len = request.body.len();
            head.get_or_init(|| {
                client::raw::Head::new(
                    &request.method,
                    &request.headers,
                    request.host_slot,
                    body_len,
                )
            })
        } else {
            let copy = self.copy_request(request, plan);
            own = client::raw::Head::new(copy.method(), copy.headers(), false, request.body.len());
            &own
        };
        let target = self.url.request_target(request.path_and_query.as_ref());
        let line = client::raw::request_line(&request.method, &target);
        let copy = client::raw::Copy {
            method: &request.method,
            line: &line,
            head: head.as_ref()?,
            host: self.url.host_header(),
            body: &request.body,
        };
        Some(crate::workers::pick(&self.pools).send_raw(&copy).await)
    }

    /// The copy as sent to this mirror: its own authority in `Host` unless kept, the
    /// gRPC deadline left, and the mirror's header rewrites.
    fn copy_request(&self, request: &MirrorRequest, plan: &Plan) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(request.body.clone()));
        *req.method_mut() = request.method.clone();
        *req.uri_mut() = self.url.request_target(request.path_and_query.as_ref());
        *req.headers_mut() = request.headers.clone();
        if let Some(deadline) = &request.deadline {
            req.headers_mut()
                .insert(&grpc::GRPC_TIMEOUT, deadline.remaining());
        }
        // After the deadline: a mirror's own `set_header`/`remove_header` has the last word.
        if plan.options.has_rewrites() {
            plan.options.apply_rewrites(req.headers_mut());
        }
        // HTTP/1.1 requires `Host`; each copy carries its mirror's authority unless
        // `--preserve-host` kept the client's or the `host` option set one.
        let headers = req.headers_mut();
        match headers.get_mut(http::header::HOST) {
            Some(host) if request.host_slot && plan.options.host.is_none() => {
                *host = self.url.host_header().clone();
            }
            Some(_) => {}
            None => {
                headers.insert(http::header::HOST, self.url.host_header().clone());
            }
        }
        req
    }

    fn log_event(&self, event: Event) {
        match event {
            Event::Changed { from, to } if to == State::Retrying => {
                info!(mirror = %self.url, ?from, ?to, "mirror state changed: sending one trial request");
            }
            Event::Changed { from, to } => {
                warn!(mirror = %self.url, ?from, ?to, "mirror state changed");
            }
            Event::Remove => {
                warn!(
                    mirror = %self.url,
                    fail_after = ?self.shared.settings.fail_after,
                    "mirror removed: failing for longer than fail-after"
                );
            }
        }
    }
}
