//! The yes/no a pipeline asks of one comparing mirror, for
//! `GET <admin path>/verdict?url=U` (docs/comparing.md, "Deciding with a baseline").
//!
//! This module owns the thresholds, their parsing from query parameters and the rule
//! that turns a mirror's totals and per-endpoint results into a decision. It does not
//! count anything ([`super::stats`], [`super::endpoints`]) nor serve HTTP.

use super::endpoints::EndpointSnapshot;
use super::stats::CompareSnapshot;

/// Below this many compared answers there is no decision, by default.
pub const DEFAULT_MIN_COMPARED: u64 = 100;
/// The share of answers allowed to differ (or to regress, with a baseline), by default.
pub const DEFAULT_MAX_MISMATCH_RATE: f64 = 0.001;

/// What a decision demands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub min_compared: u64,
    /// A share in `[0, 1]`.
    pub max_mismatch_rate: f64,
    /// The mirror's p99 ÷ main's p99; `None`: not checked.
    pub max_p99_ratio: Option<f64>,
    /// The share of compared answers that may be mirror errors in excess of main's;
    /// `None`: not checked.
    pub max_error_rate: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_compared: DEFAULT_MIN_COMPARED,
            max_mismatch_rate: DEFAULT_MAX_MISMATCH_RATE,
            max_p99_ratio: None,
            max_error_rate: None,
        }
    }
}

/// A bad threshold parameter, named with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {key} value {value:?}: {reason}")]
pub struct ThresholdError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

/// A rate written as a share (`0.001`) or a percentage (`0.1%`), within `[0, 1]`.
fn parse_rate(text: &str) -> Option<f64> {
    let text = text.trim();
    let rate = match text.strip_suffix('%') {
        // `0.5%` read as `0.5e-2`: the nearest share to what was written, so that the
        // listing shows `0.005` rather than the rounding error of a division.
        Some(percent) => format!("{}e-2", percent.trim())
            .parse::<f64>()
            .or_else(|_| percent.trim().parse::<f64>().map(|p| p / 100.0))
            .ok()?,
        None => text.parse::<f64>().ok()?,
    };
    (rate.is_finite() && (0.0..=1.0).contains(&rate)).then_some(rate)
}

/// Thresholds as given, each `None` when not: a mirror's options, or a verdict's query
/// parameters, which win over the options they are laid [`ThresholdOptions::over`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ThresholdOptions {
    pub min_compared: Option<u64>,
    /// A share in `[0, 1]`.
    pub max_mismatch_rate: Option<f64>,
    /// A share in `[0, 1]`.
    pub max_error_rate: Option<f64>,
    /// Above 0.
    pub max_p99_ratio: Option<f64>,
}

impl ThresholdOptions {
    /// Sets the threshold `key` from `value`: `Ok(false)` when `key` is no threshold,
    /// `Err` with what a good value looks like when `value` is bad.
    ///
    /// # Errors
    /// A value that does not parse: the reason, to be named with the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, &'static str> {
        const RATE: &str = "a rate such as 0.001 or 0.1%";
        match key {
            "min_compared" => {
                self.min_compared = Some(value.trim().parse().map_err(|_| "not a whole number")?);
            }
            "max_mismatch_rate" => self.max_mismatch_rate = Some(parse_rate(value).ok_or(RATE)?),
            "max_error_rate" => self.max_error_rate = Some(parse_rate(value).ok_or(RATE)?),
            "max_p99_ratio" => {
                let ratio = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .ok_or("a positive number such as 1.5")?;
                self.max_p99_ratio = Some(ratio);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The thresholds among `pairs` (other keys are left to the caller).
    ///
    /// # Errors
    /// A value that does not parse, named.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ThresholdError> {
        let mut given = Self::default();
        for (key, value) in pairs {
            given.set(key, value).map_err(|reason| ThresholdError {
                key: key.to_owned(),
                value: value.to_owned(),
                reason,
            })?;
        }
        Ok(given)
    }

    /// Each threshold given here, else `under`'s.
    pub fn over(self, under: Self) -> Self {
        Self {
            min_compared: self.min_compared.or(under.min_compared),
            max_mismatch_rate: self.max_mismatch_rate.or(under.max_mismatch_rate),
            max_error_rate: self.max_error_rate.or(under.max_error_rate),
            max_p99_ratio: self.max_p99_ratio.or(under.max_p99_ratio),
        }
    }

    /// What a decision demands: the thresholds given, the defaults for the others.
    pub fn thresholds(self) -> Thresholds {
        let d = Thresholds::default();
        Thresholds {
            min_compared: self.min_compared.unwrap_or(d.min_compared),
            max_mismatch_rate: self.max_mismatch_rate.unwrap_or(d.max_mismatch_rate),
            max_p99_ratio: self.max_p99_ratio.or(d.max_p99_ratio),
            max_error_rate: self.max_error_rate.or(d.max_error_rate),
        }
    }
}

impl Thresholds {
    /// The defaults, changed by the threshold pairs of `pairs` (other keys are left to
    /// the caller).
    ///
    /// # Errors
    /// A value that does not parse, named.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ThresholdError> {
        Ok(ThresholdOptions::from_pairs(pairs)?.thresholds())
    }
}

/// `{"pass": true|false|null, "reasons": [...], "compared": N}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    pub pass: Option<bool>,
    pub reasons: Vec<String>,
    pub compared: u64,
}

/// The decision on a mirror with `totals` and `endpoints`. `weighed`: the endpoints'
/// regressions were weighed against a baseline, so only answers with a regression
/// count against `max_mismatch_rate` (per endpoint, its most frequent regressing
/// field's count: a lower bound of the answers with one); otherwise every mismatch.
pub fn decide(
    thresholds: &Thresholds,
    totals: &CompareSnapshot,
    endpoints: &[EndpointSnapshot],
    weighed: bool,
) -> Decision {
    let compared = totals.compared;
    if compared < thresholds.min_compared {
        return Decision {
            pass: None,
            reasons: vec![format!(
                "undecided: {compared} answers compared, fewer than min_compared {}",
                thresholds.min_compared
            )],
            compared,
        };
    }
    let mut reasons = Vec::new();
    let mut pass = check_mismatches(thresholds, totals, endpoints, weighed, &mut reasons);
    if let Some(max) = thresholds.max_error_rate {
        pass &= check_errors(max, totals, &mut reasons);
    }
    if let Some(max) = thresholds.max_p99_ratio {
        pass &= check_p99(max, totals, &mut reasons);
    }
    Decision {
        pass: Some(pass),
        reasons,
        compared,
    }
}

/// `"fail"` when `failed`, else `"ok"`: how each reason starts.
fn outcome(failed: bool) -> &'static str {
    if failed { "fail" } else { "ok" }
}

/// `max_mismatch_rate`, with the regressions listed when weighed against a baseline.
fn check_mismatches(
    thresholds: &Thresholds,
    totals: &CompareSnapshot,
    endpoints: &[EndpointSnapshot],
    weighed: bool,
    reasons: &mut Vec<String>,
) -> bool {
    let compared = totals.compared;
    let (bad, what) = if weighed {
        let regressed: u64 = endpoints
            .iter()
            .map(|e| e.regressions.iter().map(|r| r.count).max().unwrap_or(0))
            .sum();
        (regressed, "answers with a regression")
    } else {
        (totals.mismatched, "mismatched answers")
    };
    let rate = bad as f64 / compared as f64;
    let limit = thresholds.max_mismatch_rate;
    let failed = rate > limit;
    reasons.push(format!(
        "{}: {bad} {what} of {compared} ({:.3} %), max_mismatch_rate {:.3} %",
        outcome(failed),
        rate * 100.0,
        limit * 100.0
    ));
    if weighed {
        for e in endpoints {
            for r in &e.regressions {
                reasons.push(format!(
                    "regression: {} {} {}: {} of {} answers differ, {} on the baseline",
                    e.method, e.template, r.field, r.count, e.compared, r.baseline_count
                ));
            }
        }
    }
    !failed
}

/// `max_error_rate`: mirror errors in excess of main's, per compared answer.
fn check_errors(max: f64, totals: &CompareSnapshot, reasons: &mut Vec<String>) -> bool {
    let errors = totals.errors;
    let excess = errors.mirror.saturating_sub(errors.main);
    let rate = excess as f64 / totals.compared as f64;
    let failed = rate > max;
    reasons.push(format!(
        "{}: {} mirror errors against main's {} ({:.3} % in excess), max_error_rate {:.3} %",
        outcome(failed),
        errors.mirror,
        errors.main,
        rate * 100.0,
        max * 100.0
    ));
    !failed
}

/// `max_p99_ratio`: the mirror's p99 latency over main's.
fn check_p99(max: f64, totals: &CompareSnapshot, reasons: &mut Vec<String>) -> bool {
    let latency = totals.latency_ms;
    let (Some(main), Some(mirror)) = (latency.main.p99, latency.mirror.p99) else {
        reasons.push("ok: no latency recorded yet".to_owned());
        return true;
    };
    // A main p99 of 0 ms (under the histogram's resolution) is taken as 1 µs.
    let ratio = mirror / main.max(0.001);
    let failed = ratio > max;
    reasons.push(format!(
        "{}: p99 {mirror:.3} ms against main's {main:.3} ms (×{ratio:.2}), max_p99_ratio {max}",
        outcome(failed)
    ));
    !failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::compare::endpoints::{Compared, EndpointSnapshot};
    use crate::mirror::compare::stats::{ErrorCounts, Latencies, MismatchCounts, Quantiles};
    use proptest::prelude::*;

    fn totals(compared: u64, mismatched: u64) -> CompareSnapshot {
        let q = Quantiles {
            p50: Some(1.0),
            p99: Some(2.0),
        };
        CompareSnapshot {
            compared,
            matched: compared - mismatched,
            mismatched,
            mismatches: MismatchCounts {
                status: 0,
                headers: 0,
                body: mismatched,
            },
            not_compared: 0,
            errors: ErrorCounts { main: 1, mirror: 3 },
            latency_ms: Latencies {
                main: q,
                mirror: Quantiles {
                    p50: Some(1.0),
                    p99: Some(5.0),
                },
            },
        }
    }

    fn endpoint(compared: u64, regressions: &[u64]) -> EndpointSnapshot {
        let q = Quantiles {
            p50: None,
            p99: None,
        };
        EndpointSnapshot {
            method: "GET".into(),
            template: "/a".into(),
            compared,
            mismatched: compared,
            main_latency_ms: q,
            mirror_latency_ms: q,
            fields: Vec::new(),
            regressions: regressions
                .iter()
                .enumerate()
                .map(|(i, &count)| Compared {
                    field: format!("/f{i}"),
                    count,
                    baseline_count: 0,
                })
                .collect(),
            noise: Vec::new(),
        }
    }

    #[test]
    fn below_min_compared_is_undecided() {
        let d = decide(&Thresholds::default(), &totals(99, 0), &[], false);
        assert_eq!((d.pass, d.compared), (None, 99));
        assert!(d.reasons[0].contains("min_compared 100"), "{:?}", d.reasons);
    }

    #[test]
    fn without_a_baseline_every_mismatch_counts() {
        let t = Thresholds::default();
        assert_eq!(decide(&t, &totals(1000, 1), &[], false).pass, Some(true));
        assert_eq!(decide(&t, &totals(1000, 2), &[], false).pass, Some(false));
    }

    #[test]
    fn with_a_baseline_only_regressions_count() {
        let t = Thresholds::default();
        // Every answer differs (noise), none regresses: a pass.
        assert_eq!(
            decide(&t, &totals(1000, 1000), &[endpoint(1000, &[])], true).pass,
            Some(true)
        );
        let d = decide(&t, &totals(1000, 1000), &[endpoint(1000, &[500, 3])], true);
        assert_eq!(d.pass, Some(false));
        assert!(
            d.reasons.iter().any(|r| r.contains("/f0")),
            "{:?}",
            d.reasons
        );
    }

    #[test]
    fn p99_ratio_is_checked_when_asked() {
        // The mirror's p99 is 5 ms against main's 2 ms: × 2.5.
        let mut t = Thresholds {
            max_p99_ratio: Some(2.4),
            ..Thresholds::default()
        };
        assert_eq!(decide(&t, &totals(1000, 0), &[], false).pass, Some(false));
        t.max_p99_ratio = Some(2.5);
        assert_eq!(decide(&t, &totals(1000, 0), &[], false).pass, Some(true));
    }

    #[test]
    fn errors_count_only_in_excess_of_mains() {
        // 3 mirror errors against main's 1, of 1000: 0.2 % in excess.
        let t = |max| Thresholds {
            max_error_rate: Some(max),
            ..Thresholds::default()
        };
        assert_eq!(
            decide(&t(0.001), &totals(1000, 0), &[], false).pass,
            Some(false)
        );
        assert_eq!(
            decide(&t(0.002), &totals(1000, 0), &[], false).pass,
            Some(true)
        );
        assert_eq!(
            decide(&Thresholds::default(), &totals(1000, 0), &[], false).pass,
            Some(true)
        );
    }

    #[test]
    fn thresholds_parse_from_pairs() {
        let t = Thresholds::from_pairs([
            ("min_compared", "5"),
            ("max_mismatch_rate", "1%"),
            ("max_p99_ratio", "1.5"),
            ("max_error_rate", "0.5%"),
            ("url", "ignored"),
        ])
        .unwrap();
        assert_eq!(
            t,
            Thresholds {
                min_compared: 5,
                max_mismatch_rate: 0.01,
                max_p99_ratio: Some(1.5),
                max_error_rate: Some(0.005),
            }
        );
        assert_eq!(
            Thresholds::from_pairs([("max_mismatch_rate", "0.002")])
                .unwrap()
                .max_mismatch_rate,
            0.002
        );
        for (k, v) in [
            ("min_compared", "-1"),
            ("max_mismatch_rate", "150%"),
            ("max_mismatch_rate", "x"),
            ("max_p99_ratio", "0"),
            ("max_p99_ratio", "inf"),
        ] {
            assert!(Thresholds::from_pairs([(k, v)]).is_err(), "{k}={v}");
        }
    }

    #[test]
    fn query_thresholds_win_over_the_mirrors_each_on_its_own() {
        let options = ThresholdOptions::from_pairs([
            ("min_compared", "5"),
            ("max_mismatch_rate", "0.5%"),
            ("max_p99_ratio", "3"),
        ])
        .unwrap();
        // A percentage is kept as the share it names, not a division's rounding.
        assert_eq!(options.max_mismatch_rate, Some(0.005));
        assert_eq!(
            options.thresholds(),
            Thresholds {
                min_compared: 5,
                max_mismatch_rate: 0.005,
                max_p99_ratio: Some(3.0),
                max_error_rate: None,
            }
        );
        let query = ThresholdOptions::from_pairs([("min_compared", "7"), ("max_error_rate", "1%")])
            .unwrap();
        assert_eq!(
            query.over(options).thresholds(),
            Thresholds {
                min_compared: 7,
                max_mismatch_rate: 0.005,
                max_p99_ratio: Some(3.0),
                max_error_rate: Some(0.01),
            }
        );
        // Nothing given anywhere: the defaults.
        assert_eq!(
            ThresholdOptions::default()
                .over(ThresholdOptions::default())
                .thresholds(),
            Thresholds::default()
        );
        // The mirror's thresholds decide when the query gives none.
        let t = ThresholdOptions::default().over(options).thresholds();
        assert_eq!(decide(&t, &totals(10, 0), &[], false).pass, Some(true));
        assert_eq!(
            decide(&Thresholds::default(), &totals(10, 0), &[], false).pass,
            None
        );
        let mut bad = ThresholdOptions::default();
        assert_eq!(
            bad.set("max_error_rate", "2"),
            Err("a rate such as 0.001 or 0.1%")
        );
        assert_eq!(bad.set("url", "x"), Ok(false));
    }

    /// Totals of `compared` answers, `mismatched` of them differing, with these error
    /// counts and p99 latencies (ms).
    fn totals_with(
        compared: u64,
        mismatched: u64,
        errors: (u64, u64),
        p99: (Option<f64>, Option<f64>),
    ) -> CompareSnapshot {
        let mut t = totals(compared.max(mismatched), mismatched);
        t.compared = compared;
        t.errors = ErrorCounts {
            main: errors.0,
            mirror: errors.1,
        };
        t.latency_ms.main.p99 = p99.0;
        t.latency_ms.mirror.p99 = p99.1;
        t
    }

    /// Any thresholds, every check on or off.
    fn thresholds() -> impl Strategy<Value = Thresholds> {
        (
            0u64..2000,
            0.0f64..=1.0,
            proptest::option::of(0.01f64..100.0),
            proptest::option::of(0.0f64..=1.0),
        )
            .prop_map(
                |(min_compared, max_mismatch_rate, max_p99_ratio, max_error_rate)| Thresholds {
                    min_compared,
                    max_mismatch_rate,
                    max_p99_ratio,
                    max_error_rate,
                },
            )
    }

    /// A mirror's totals: counts, errors and p99s, any of them absent.
    fn any_totals() -> impl Strategy<Value = CompareSnapshot> {
        (
            0u64..5000,
            0u64..5000,
            (0u64..500, 0u64..500),
            (
                proptest::option::of(0.0f64..1000.0),
                proptest::option::of(0.0f64..1000.0),
            ),
        )
            .prop_map(|(compared, mismatched, errors, p99)| {
                totals_with(compared, mismatched.min(compared), errors, p99)
            })
    }

    fn fails(d: &Decision) -> bool {
        d.pass == Some(false)
    }

    proptest! {
        /// Below `min_compared` there is never a decision, whatever else is true.
        #[test]
        fn below_min_compared_is_always_undecided(
            t in thresholds(),
            totals in any_totals(),
            counts in proptest::collection::vec(0u64..1000, 0..4),
            weighed in any::<bool>(),
        ) {
            let d = decide(&t, &totals, &[endpoint(totals.compared, &counts)], weighed);
            prop_assert_eq!(d.pass.is_none(), totals.compared < t.min_compared, "{:?}", d);
            prop_assert_eq!(d.compared, totals.compared);
            prop_assert!(!d.reasons.is_empty());
        }

        /// More mismatches, more mirror errors or a slower mirror never turn a fail into
        /// a pass (nor a decision into none).
        #[test]
        fn worse_results_never_turn_a_fail_into_a_pass(
            t in thresholds(),
            totals in any_totals(),
            more_mismatched in 0u64..5000,
            more_errors in 0u64..500,
            slower in 0.0f64..1000.0,
        ) {
            let before = decide(&t, &totals, &[], false);
            let mut worse = totals;
            worse.mismatched = (worse.mismatched + more_mismatched).min(worse.compared);
            worse.errors.mirror += more_errors;
            worse.latency_ms.mirror.p99 = worse.latency_ms.mirror.p99.map(|p| p + slower);
            let after = decide(&t, &worse, &[], false);
            prop_assert_eq!(after.pass.is_none(), before.pass.is_none());
            if fails(&before) {
                prop_assert!(fails(&after), "{:?} then {:?}", before, after);
            }
        }

        /// Raising a limit (a rate, the p99 ratio, or checking one no more) never turns
        /// a pass into a fail; raising `min_compared` can only leave it undecided.
        #[test]
        fn raising_a_threshold_never_turns_a_pass_into_a_fail(
            t in thresholds(),
            totals in any_totals(),
            counts in proptest::collection::vec(0u64..1000, 0..4),
            weighed in any::<bool>(),
            by in 0.0f64..1.0,
            more_min in 0u64..1000,
        ) {
            let endpoints = [endpoint(totals.compared, &counts)];
            let before = decide(&t, &totals, &endpoints, weighed);
            let raised = [
                Thresholds { max_mismatch_rate: (t.max_mismatch_rate + by).min(1.0), ..t },
                Thresholds { max_error_rate: t.max_error_rate.map(|r| (r + by).min(1.0)), ..t },
                Thresholds { max_error_rate: None, ..t },
                Thresholds { max_p99_ratio: t.max_p99_ratio.map(|r| r * (1.0 + by)), ..t },
                Thresholds { max_p99_ratio: None, ..t },
                Thresholds { min_compared: t.min_compared + more_min, ..t },
            ];
            for looser in raised {
                let after = decide(&looser, &totals, &endpoints, weighed);
                if before.pass == Some(true) {
                    prop_assert!(!fails(&after), "{:?} then {:?} with {:?}", before, after, looser);
                }
            }
        }

        /// More regressions never turn a fail into a pass.
        #[test]
        fn more_regressions_never_turn_a_fail_into_a_pass(
            compared in 100u64..100_000,
            counts in proptest::collection::vec(0u64..1000, 0..5),
            extra in proptest::collection::vec(0u64..1000, 1..5),
            rate in 0.0f64..0.5,
        ) {
            let t = Thresholds { max_mismatch_rate: rate, ..Thresholds::default() };
            let before = decide(&t, &totals(compared, compared), &[endpoint(compared, &counts)], true);
            let mut more = counts.clone();
            more.extend(&extra);
            let mut raised = counts.clone();
            if let Some(first) = raised.first_mut() { *first += extra[0]; }
            for after in [more, raised] {
                let after = decide(&t, &totals(compared, compared), &[endpoint(compared, &after)], true);
                if before.pass == Some(false) {
                    prop_assert_eq!(after.pass, Some(false));
                }
            }
        }
    }
}
