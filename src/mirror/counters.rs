//! Per-mirror counters (the JSON listing, docs/shadowing.md, "The admin endpoint", and the
//! Prometheus scrape, [`crate::observe::metrics`]). Atomics read only for reporting;
//! the four that describe a copy's way through the queue (`sent`, `queued`,
//! `succeeded`, `failed`) are written and read in an order that keeps every reading
//! consistent (see [`Counters::snapshot`]), the others are independent and relaxed.

use std::fmt;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::histogram::Histogram;

/// Counters for one mirror. `sent` counts copies handed to the mirror's queue; every
/// one of them ends as exactly one of `succeeded` or `failed` (or is still queued), or
/// as `dropped` when this process had no file descriptor left to connect with.
///
/// `sent`, `queued`, `succeeded` and `failed` change only through
/// [`Counters::enter_queue`] and [`Counters::leave_queue`].
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    /// Copies counted in `sent` whose outcome is not counted yet (waiting or in flight).
    queued: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Not sent: queue full, mirror failing or retrying, shutting down, or out of file
    /// descriptors.
    pub dropped: AtomicU64,
    /// Not sent by rule: body too large, upgrade request, or a loop.
    pub skipped: AtomicU64,
    /// Left out by the mirror's options (method, path, share, rate).
    pub filtered: AtomicU64,
    /// Tries of a copy beyond its first (`retry=N`); the copy itself is still one of
    /// `succeeded` or `failed`.
    pub retried: AtomicU64,
    /// Copies written to the mirror's `spill=` file, besides being `failed` or
    /// `dropped`.
    pub spilled: AtomicU64,
}

/// A plain copy of [`Counters`] for reporting. Every snapshot, also one taken while
/// copies come and go, has `succeeded + failed + queued <= sent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub filtered: u64,
    pub retried: u64,
    pub spilled: u64,
    pub queued: u64,
}

impl Counters {
    /// Counts one of the independent outcomes (`dropped`, `skipped`, `filtered`) or a
    /// further try (`retried`).
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// A copy enters the queue: `sent`, then `queued`. Call it before the copy can
    /// reach [`Counters::leave_queue`] (before its task is spawned).
    pub fn enter_queue(&self) {
        self.sent.fetch_add(1, Relaxed);
        // Release: a reader that sees this copy in `queued` sees it in `sent` too.
        self.queued.fetch_add(1, Release);
    }

    /// A copy leaves the queue with its outcome (`succeeded`, `failed`, or `dropped`
    /// when no file descriptor was left): out of `queued` first, then into the outcome,
    /// so that no reading counts it in both.
    pub fn leave_queue(&self, outcome: &AtomicU64) {
        self.queued.fetch_sub(1, Relaxed);
        // Release: a reader that sees this outcome sees the copy out of `queued`.
        outcome.fetch_add(1, Release);
    }

    /// Reads the counters so that `succeeded + failed + queued <= sent` in every
    /// snapshot, equal when no copy is between two steps.
    ///
    /// The order is the writers' in reverse: the outcomes first, then `queued`, then
    /// `sent`, each an acquire load. A copy counted in an outcome was out of `queued`
    /// before (so it is not read there again) and in `sent` before that; a copy read
    /// in `queued` was in `sent` before. Read in another order, a copy finishing
    /// between two loads could be counted twice (in `queued`, then in `succeeded`).
    pub fn snapshot(&self) -> Snapshot {
        let succeeded = self.succeeded.load(Acquire);
        let failed = self.failed.load(Acquire);
        let queued = self.queued.load(Acquire);
        let sent = self.sent.load(Acquire);
        Snapshot {
            sent,
            succeeded,
            failed,
            dropped: self.dropped.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
            retried: self.retried.load(Relaxed),
            spilled: self.spilled.load(Relaxed),
            queued,
        }
    }
}

/// Upper bounds, in seconds, of the latency histograms' buckets: the Prometheus client
/// defaults (5 ms to 10 s), plus 1 ms and 2.5 ms for targets on the same network and
/// 30 s for mirror requests that run into the default 20 s `--mirror-timeout`.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram in seconds, with [`LATENCY_BUCKETS`]. Cloning is shallow.
#[derive(Debug, Clone)]
pub struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new(LATENCY_BUCKETS))
    }
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }

    /// The histogram itself, to register it (shares the buckets with this handle).
    pub(crate) fn histogram(&self) -> Histogram {
        self.0.clone()
    }

    pub(crate) fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        self.0.encode(encoder)
    }
}
