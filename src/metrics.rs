//! Per-mirror counters (the JSON listing, docs/shadowing.md, "The admin endpoint", and the
//! Prometheus scrape, [`crate::observe::metrics`]). Relaxed atomics: each counter is
//! independent and only ever read for reporting.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::histogram::Histogram;

/// Counters for one mirror. `sent` counts copies handed to the mirror's queue; every
/// one of them ends as exactly one of `succeeded` or `failed` (or is still queued), or
/// as `dropped` when this process had no file descriptor left to connect with.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Not sent: queue full, mirror failing or retrying, shutting down, or out of file
    /// descriptors.
    pub dropped: AtomicU64,
    /// Not sent by rule: body too large, upgrade request, or a loop.
    pub skipped: AtomicU64,
    /// Left out by the mirror's options (method, path, share, rate).
    pub filtered: AtomicU64,
}

/// A plain copy of [`Counters`] for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub sent: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub filtered: u64,
}

impl Counters {
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            filtered: self.filtered.load(Relaxed),
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
