//! Per-mirror counters (the JSON listing, README "The admin endpoint", and the
//! Prometheus scrape, [`crate::observe::metrics`]). Relaxed atomics: each counter is
//! independent and only ever read for reporting.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
