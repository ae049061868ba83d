//! The byte budget for request bodies held for mirrors (`--max-buffered-bytes`;
//! docs/operations.md, "Request bodies and memory"). Every body collected for mirroring
//! reserves its bytes here *as they are collected*, not once it is complete, and gives
//! them back when the last copy of it is done. A body shared by several mirrors is one
//! reservation. A reservation that would pass the limit fails at once: the caller
//! abandons that copy and counts it.
//!
//! This module only counts; it never waits. Nothing here is on a lock: one atomic add
//! per collected chunk.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The shared budget. Cloning is shallow.
#[derive(Debug, Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    held: AtomicU64,
}

impl Budget {
    pub fn new(limit: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                held: AtomicU64::new(0),
            }),
        }
    }

    /// The configured limit in bytes.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// Bytes held right now, across every body.
    pub fn held(&self) -> u64 {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// An empty reservation that grows with [`Held::grow`].
    pub fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn try_add(&self, n: u64) -> bool {
        let mut current = self.inner.held.load(Ordering::Relaxed);
        loop {
            let Some(next) = current.checked_add(n).filter(|&v| v <= self.inner.limit) else {
                return false;
            };
            match self.inner.held.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Bytes reserved for one body; given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: Budget,
    bytes: u64,
}

impl Held {
    /// Reserves `n` more bytes. False (and nothing reserved) when that would pass the
    /// limit.
    #[must_use]
    pub fn grow(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let ok = self.budget.try_add(n);
        if ok {
            self.bytes += n;
        }
        ok
    }

    /// Gives back `n` of the reserved bytes (at most all of them), for a body that
    /// freed part of what it kept.
    pub fn shrink(&mut self, n: u64) {
        let n = n.min(self.bytes);
        if n > 0 {
            self.budget.inner.held.fetch_sub(n, Ordering::Relaxed);
            self.bytes -= n;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget
                .inner
                .held
                .fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_limit_and_are_given_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = budget.hold();
        assert!(a.grow(60));
        let mut b = budget.hold();
        assert!(!b.grow(41), "would pass the limit");
        assert_eq!(budget.held(), 60);
        assert!(b.grow(40));
        assert_eq!(budget.held(), 100);
        assert!(!a.grow(1));
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn shrinking_gives_back_at_most_what_is_reserved() {
        let budget = Budget::new(100);
        let mut a = budget.hold();
        assert!(a.grow(60));
        a.shrink(20);
        assert_eq!(budget.held(), 40);
        a.shrink(1000);
        assert_eq!(budget.held(), 0);
        assert!(a.grow(10));
        drop(a);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let budget = Budget::new(1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut held = Vec::new();
                    for _ in 0..1000 {
                        let mut h = budget.hold();
                        if h.grow(7) {
                            assert!(budget.held() <= 1000);
                            held.push(h);
                        }
                        if held.len() > 20 {
                            held.clear();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(budget.held(), 0);
    }
}
