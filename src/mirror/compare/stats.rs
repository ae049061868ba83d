//! Running totals of one comparing mirror's comparisons, for the JSON listing.
//!
//! This module owns the counters and the latency histograms of compared requests and
//! their snapshot. It does not compare ([`super::verdict`]), keep the mismatches
//! themselves ([`super::mismatches`]) or export Prometheus metrics.
//!
//! Memory: two `hdrhistogram` histograms (3 significant figures) that grow with the
//! largest latency seen; latencies are clamped to [`MAX_LATENCY`], which bounds each at
//! about 190 KiB (about 90 KiB while no latency passed a second).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::verdict::Verdict;

/// Latencies above this are recorded as this (keeps each histogram's memory bounded).
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// Precision of the latency histograms.
const SIGNIFICANT_FIGURES: u8 = 3;

/// Comparison counters and latencies of one mirror. Every counter is a relaxed atomic
/// read on its own, so a snapshot taken during a `record` may be off by one between
/// counters (e.g. `compared` already counted, `matched` not yet).
#[derive(Debug)]
pub struct CompareStats {
    compared: AtomicU64,
    matched: AtomicU64,
    mismatched: AtomicU64,
    /// Mismatches by part; one mismatch may count in several.
    status: AtomicU64,
    headers: AtomicU64,
    body: AtomicU64,
    /// Copies whose answer could not be compared because main's answer never
    /// completed (main failed, or the client went away).
    not_compared: AtomicU64,
    /// Compared answers that were errors (5xx, or a gRPC status other than 0), main's
    /// and the mirror's.
    main_errors: AtomicU64,
    mirror_errors: AtomicU64,
    /// Microseconds.
    main_latency: Mutex<Histogram<u64>>,
    /// Microseconds.
    mirror_latency: Mutex<Histogram<u64>>,
}

/// A copy of [`CompareStats`] for the JSON listing:
/// `{"compared":N,"matched":N,"mismatched":N,"mismatches":{"status":N,"headers":N,"body":N},
/// "not_compared":N,"errors":{"main":N,"mirror":N},
/// "latency_ms":{"main":{"p50":x,"p99":y},"mirror":{"p50":x,"p99":y}}}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CompareSnapshot {
    pub compared: u64,
    pub matched: u64,
    pub mismatched: u64,
    pub mismatches: MismatchCounts,
    pub not_compared: u64,
    /// Compared answers that were errors (5xx, or a gRPC status other than 0).
    pub errors: ErrorCounts,
    pub latency_ms: Latencies,
}

/// Compared answers that were errors, by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCounts {
    pub main: u64,
    pub mirror: u64,
}

/// Mismatches by the part that differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MismatchCounts {
    pub status: u64,
    pub headers: u64,
    pub body: u64,
}

/// Main's and the mirror's latency on compared requests.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Latencies {
    pub main: Quantiles,
    pub mirror: Quantiles,
}

/// Latency quantiles in milliseconds (microsecond resolution); `None` (JSON `null`)
/// until something was recorded, so "no data" never reads as "0 ms".
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Default for CompareStats {
    fn default() -> Self {
        Self::new()
    }
}

impl CompareStats {
    pub fn new() -> Self {
        Self {
            compared: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            mismatched: AtomicU64::new(0),
            status: AtomicU64::new(0),
            headers: AtomicU64::new(0),
            body: AtomicU64::new(0),
            not_compared: AtomicU64::new(0),
            main_errors: AtomicU64::new(0),
            mirror_errors: AtomicU64::new(0),
            main_latency: Mutex::new(histogram()),
            mirror_latency: Mutex::new(histogram()),
        }
    }

    /// Counts one comparison and the two latencies (each request's time to main's, or
    /// the mirror's, complete answer).
    pub fn record(&self, verdict: &Verdict, main_latency: Duration, mirror_latency: Duration) {
        match verdict {
            Verdict::Match => {
                self.matched.fetch_add(1, Relaxed);
            }
            Verdict::Mismatch(m) => {
                self.mismatched.fetch_add(1, Relaxed);
                for (differs, counter) in [
                    (m.status, &self.status),
                    (m.headers, &self.headers),
                    (m.body, &self.body),
                ] {
                    if differs {
                        counter.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        self.compared.fetch_add(1, Relaxed);
        record_latency(&self.main_latency, main_latency);
        record_latency(&self.mirror_latency, mirror_latency);
    }

    /// Counts the errors among one compared pair of answers.
    pub fn errors(&self, main: bool, mirror: bool) {
        if main {
            self.main_errors.fetch_add(1, Relaxed);
        }
        if mirror {
            self.mirror_errors.fetch_add(1, Relaxed);
        }
    }

    /// Counts a copy not compared because main's answer never completed.
    pub fn not_compared(&self) {
        self.not_compared.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> CompareSnapshot {
        CompareSnapshot {
            compared: self.compared.load(Relaxed),
            matched: self.matched.load(Relaxed),
            mismatched: self.mismatched.load(Relaxed),
            mismatches: MismatchCounts {
                status: self.status.load(Relaxed),
                headers: self.headers.load(Relaxed),
                body: self.body.load(Relaxed),
            },
            not_compared: self.not_compared.load(Relaxed),
            errors: ErrorCounts {
                main: self.main_errors.load(Relaxed),
                mirror: self.mirror_errors.load(Relaxed),
            },
            latency_ms: Latencies {
                main: quantiles(&self.main_latency),
                mirror: quantiles(&self.mirror_latency),
            },
        }
    }
}

fn histogram() -> Histogram<u64> {
    // Auto-resizing: memory follows the largest latency seen, capped by MAX_LATENCY.
    Histogram::new(SIGNIFICANT_FIGURES).expect("3 significant figures is a valid precision")
}

fn record_latency(histogram: &Mutex<Histogram<u64>>, latency: Duration) {
    let micros = latency.min(MAX_LATENCY).as_micros() as u64;
    // A panic cannot leave a histogram half-updated in a way that matters for
    // reporting, so a poisoned lock is still used.
    let mut h = histogram.lock().unwrap_or_else(PoisonError::into_inner);
    // Only fails for values beyond i64::MAX / 2, far above MAX_LATENCY.
    let _ = h.record(micros);
}

fn quantiles(histogram: &Mutex<Histogram<u64>>) -> Quantiles {
    let h = histogram.lock().unwrap_or_else(PoisonError::into_inner);
    let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0);
    Quantiles {
        p50: at(0.5),
        p99: at(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::compare::verdict::{Difference, Mismatch};

    fn mismatch(status: bool, headers: bool, body: bool) -> Verdict {
        Verdict::Mismatch(Mismatch {
            status,
            headers,
            body,
            difference: Difference::ByteOffset { offset: 0 },
            fields: vec!["body".to_owned()],
            field_count: 1,
        })
    }

    #[test]
    fn empty_stats_report_zero_counts_and_null_latencies() {
        let json = serde_json::to_value(CompareStats::new().snapshot()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "compared": 0, "matched": 0, "mismatched": 0,
                "mismatches": {"status": 0, "headers": 0, "body": 0},
                "not_compared": 0,
                "errors": {"main": 0, "mirror": 0},
                "latency_ms": {
                    "main": {"p50": null, "p99": null},
                    "mirror": {"p50": null, "p99": null},
                },
            })
        );
    }

    #[test]
    fn counts_verdicts_by_part_and_latencies() {
        let stats = CompareStats::new();
        let ms = Duration::from_millis;
        for _ in 0..97 {
            stats.record(&Verdict::Match, ms(10), ms(20));
        }
        stats.record(&mismatch(true, false, true), ms(10), ms(20));
        stats.record(&mismatch(false, true, false), ms(10), ms(20));
        stats.record(&mismatch(false, false, true), ms(500), ms(2000));
        stats.not_compared();
        let s = stats.snapshot();
        assert_eq!((s.compared, s.matched, s.mismatched), (100, 97, 3));
        assert_eq!(
            s.mismatches,
            MismatchCounts {
                status: 1,
                headers: 1,
                body: 2
            }
        );
        assert_eq!(s.not_compared, 1);
        // 3 significant figures: within 0.1 %.
        let near = |got: Option<f64>, want: f64| {
            let got = got.expect("latency recorded");
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        };
        near(s.latency_ms.main.p50, 10.0);
        near(s.latency_ms.main.p99, 10.0);
        near(s.latency_ms.mirror.p50, 20.0);
        near(s.latency_ms.mirror.p99, 20.0);
        for _ in 0..10 {
            stats.record(&Verdict::Match, ms(500), ms(2000));
        }
        let s = stats.snapshot();
        near(s.latency_ms.main.p99, 500.0);
        near(s.latency_ms.mirror.p99, 2000.0);
    }

    #[test]
    fn latencies_beyond_the_cap_are_clamped_and_memory_stays_bounded() {
        let stats = CompareStats::new();
        stats.record(
            &Verdict::Match,
            Duration::from_secs(1_000_000),
            Duration::ZERO,
        );
        let s = stats.snapshot();
        let p99 = s.latency_ms.main.p99.unwrap();
        let cap = MAX_LATENCY.as_millis() as f64;
        assert!(p99 >= cap && p99 <= cap * 1.001, "{p99}");
        assert_eq!(s.latency_ms.mirror.p50, Some(0.0));
        let counts = stats.main_latency.lock().unwrap().distinct_values();
        assert!(counts * 8 < 200 * 1024, "{counts} buckets");
    }
}
