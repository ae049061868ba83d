//! At most one log line per interval for events that can repeat at request rate (main
//! unreachable, main too slow): with main down under load, writing a line per request
//! would put logging on the hot path and flood the log. The lines held back are counted
//! in the next one.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Admits one event per interval; counts the others.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds after `start` from which the next line may be logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this event may be logged.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let now_ms = u64::try_from(now.saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        let due = now_ms >= next;
        // One thread wins the slot; the others count as held back.
        if due
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.interval_ms),
                    Relaxed,
                    Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let limiter = LogLimiter::new(Duration::from_secs(1));
        let t0 = limiter.start;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(limiter.admit_at(at(0)), Some(0));
        assert_eq!(limiter.admit_at(at(10)), None);
        assert_eq!(limiter.admit_at(at(500)), None);
        assert_eq!(limiter.admit_at(at(999)), None);
        assert_eq!(limiter.admit_at(at(1000)), Some(3));
        assert_eq!(limiter.admit_at(at(1500)), None);
        assert_eq!(limiter.admit_at(at(5000)), Some(1));
        assert_eq!(limiter.admit_at(at(5001)), None);
    }
}
