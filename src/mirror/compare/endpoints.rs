//! One comparing mirror's results per endpoint (method and path template), for
//! `GET <admin path>/endpoints?url=U` (docs/comparing.md, "Per endpoint").
//!
//! This module owns the path template, the bounded table of endpoints and its JSON
//! shape. It does not compare ([`super::verdict`]) nor serve HTTP.
//!
//! Memory is bounded per mirror: at most [`MAX_ENDPOINTS`] endpoints (the rest under
//! method `*`, template `other`), each with at most [`MAX_FIELDS_PER_ENDPOINT`] field
//! counters (the rest under the field `other`) of names of at most
//! [`super::verdict::MAX_FIELD_CHARS`] characters, and two latency histograms of two
//! significant figures with 32-bit counts (about 7 KiB each while latencies stay under a
//! second, at most about 13 KiB at the [`super::stats::MAX_LATENCY`] cap). Worst case
//! about 500 × (50 × 1 KiB + 26 KiB), under 40 MiB; typically far less.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::stats::{MAX_LATENCY, Quantiles};
use super::verdict::Verdict;

/// Most endpoints kept per mirror; the rest count under method `*`, template `other`.
pub const MAX_ENDPOINTS: usize = 500;

/// Most distinct field counters per endpoint; the rest count under [`OTHER_FIELD`].
pub const MAX_FIELDS_PER_ENDPOINT: usize = 50;

/// How many fields an endpoint reports, the most frequent first.
pub const REPORTED_FIELDS: usize = 20;

/// The field that holds the fields that did not fit in an endpoint.
pub const OTHER_FIELD: &str = "other";

/// Longest method kept, in characters (a longer one is cut).
const MAX_METHOD_CHARS: usize = 20;
/// Longest template kept, in characters (a longer one is cut).
const MAX_TEMPLATE_CHARS: usize = 300;

/// The endpoint of `path`: the first of `patterns` (the `endpoint` options) that
/// matches it, else its [`template`].
#[cfg(test)]
pub fn template_for(patterns: &[String], path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    push_template_for(&mut out, patterns, path);
    out
}

/// The table's key of a request `method` to `path`: the method, a space (no method has
/// one) and the template of [`push_template_for`], each cut to its bound, written into one string, so that
/// counting an answer on a known endpoint takes one allocation and one hash.
pub fn key_for(method: &str, patterns: &[String], path: &str) -> String {
    let method = super::verdict::cut(method, MAX_METHOD_CHARS);
    let mut key = String::with_capacity(method.len() + 1 + path.len());
    key.push_str(method);
    key.push(' ');
    push_template_for(&mut key, patterns, path);
    key
}

/// Appends the endpoint of `path` to `out`: the first of `patterns` (the `endpoint`
/// options) that matches it, else its template (see [`push_template`]).
fn push_template_for(out: &mut String, patterns: &[String], path: &str) {
    let plain = path.split(['?', '#']).next().unwrap_or_default();
    match patterns.iter().find(|p| pattern_matches(p, plain)) {
        Some(pattern) => out.push_str(super::verdict::cut(pattern, MAX_TEMPLATE_CHARS)),
        None => push_template(out, plain),
    }
}

/// Whether `path` has as many segments as `pattern` and each equals the pattern's, a
/// `:name` segment matching any non-empty one.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.split('/');
    let mut path = path.split('/');
    loop {
        match (pattern.next(), path.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.len() > 1 && p.starts_with(':') && !s.is_empty() => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

/// The template of `path` (its query is dropped): each segment that is a number, a UUID
/// or a hex string of 16 characters or more becomes `{id}`.
#[cfg(test)]
pub fn template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut out = String::with_capacity(path.len());
    push_template(&mut out, path);
    out
}

/// Appends the template of `path` (without its query) to `out`: each segment that is a
/// number, a UUID or a hex string of 16 characters or more becomes `{id}`; cut to
/// [`MAX_TEMPLATE_CHARS`].
fn push_template(out: &mut String, path: &str) {
    let start = out.len();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(segment) { "{id}" } else { segment });
    }
    let kept = super::verdict::cut(&out[start..], MAX_TEMPLATE_CHARS).len();
    if start + kept == out.len() {
        return;
    }
    out.truncate(start + kept);
    // A last segment cut short can read as an id (`12345x` cut to `1234`): replaced
    // too, so that a template is its own template. Only that segment can change, and
    // a cut `{id}` is no id.
    let last = out[start..].rfind('/').map_or(start, |i| start + i + 1);
    if is_id(&out[last..]) {
        out.truncate(last);
        out.push_str("{id}");
        let kept = super::verdict::cut(&out[start..], MAX_TEMPLATE_CHARS).len();
        out.truncate(start + kept);
    }
}

fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    let number = !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let hex = b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit);
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    number || hex || uuid
}

/// Whether the `ignore` rules cover `field` (a field as counted: a JSON pointer with
/// indices written `*`, `header:NAME`, `status` or `body`): a header rule names its
/// header; a pointer rule covers the field at its location and everything under it, a
/// `*` segment of the rule matching any one segment.
pub fn ignored(ignore: &[String], field: &str) -> bool {
    if let Some(name) = field.strip_prefix("header:") {
        return ignore.iter().any(|rule| rule.eq_ignore_ascii_case(name));
    }
    if !field.starts_with('/') {
        return false;
    }
    ignore
        .iter()
        .filter(|rule| rule.starts_with('/'))
        .any(|rule| {
            let mut segments = field.split('/');
            rule.split('/')
                .all(|r| segments.next().is_some_and(|s| r == "*" || r == s))
        })
}

/// Leaves out of `list`'s regressions and noise the fields the mirror's `ignore` rules
/// now cover: they are no longer compared, so they are no longer weighed, even though
/// the counts from before the rule stay (in `fields`, and on the baseline).
pub fn drop_ignored(list: &mut [EndpointSnapshot], ignore: &[String]) {
    if ignore.is_empty() {
        return;
    }
    for e in list {
        e.regressions.retain(|c| !ignored(ignore, &c.field));
        e.noise.retain(|c| !ignored(ignore, &c.field));
    }
}

/// A field's relative gap above which a candidate's difference rate is a regression.
pub const MIN_RELATIVE_GAP: f64 = 0.20;
/// A field's absolute gap in difference rate above which it can be a regression.
pub const MIN_ABSOLUTE_GAP: f64 = 0.0003;

/// What a field's differences on a candidate are, weighed against a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Differs more often on the candidate than on the baseline (Diffy's rule).
    Regression,
    /// Differs on the baseline too, and no more often on the candidate.
    Noise,
    /// Neither: differs on the candidate alone, too rarely to count.
    Neither,
}

/// Diffy's rule on difference rates (count ÷ answers compared on the endpoint): with c
/// the candidate's rate and b the baseline's, a regression when c > b,
/// (c − b)/(c + b) > [`MIN_RELATIVE_GAP`] and c − b > [`MIN_ABSOLUTE_GAP`]; noise when
/// the baseline differs too and it is no regression. Rates, not counts: the two
/// mirrors may have compared slightly different numbers of answers.
pub fn classify(count: u64, compared: u64, baseline_count: u64, baseline_compared: u64) -> Class {
    let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let (c, b) = (
        rate(count, compared),
        rate(baseline_count, baseline_compared),
    );
    if c > b && (c - b) / (c + b) > MIN_RELATIVE_GAP && c - b > MIN_ABSOLUTE_GAP {
        Class::Regression
    } else if baseline_count > 0 {
        Class::Noise
    } else {
        Class::Neither
    }
}

/// The key of the endpoint that holds what did not fit: method `*`, template `other`.
const OTHER_KEY: &str = "* other";

/// A key's method and template.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once(' ').unwrap_or((key, ""))
}

/// One endpoint's counts, as weighed against a baseline.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    compared: u64,
    fields: HashMap<String, u64>,
}

/// The results of one endpoint.
#[derive(Debug)]
struct Endpoint {
    compared: u64,
    mismatched: u64,
    fields: HashMap<String, u64>,
    /// Microseconds.
    main_latency: Histogram<u32>,
    /// Microseconds.
    mirror_latency: Histogram<u32>,
}

impl Endpoint {
    fn new() -> Self {
        Self {
            compared: 0,
            mismatched: 0,
            fields: HashMap::new(),
            main_latency: histogram(),
            mirror_latency: histogram(),
        }
    }

    fn record(&mut self, verdict: &Verdict, main: Duration, mirror: Duration) {
        self.compared += 1;
        if let Verdict::Mismatch(m) = verdict {
            self.mismatched += 1;
            for field in &m.fields {
                self.count_field(field);
            }
            // Fields beyond those named are counted, not named.
            let unnamed = m.field_count.saturating_sub(m.fields.len() as u64);
            if unnamed > 0 {
                *self.fields.entry(OTHER_FIELD.to_owned()).or_default() += unnamed;
            }
        }
        record_latency(&mut self.main_latency, main);
        record_latency(&mut self.mirror_latency, mirror);
    }

    fn count_field(&mut self, field: &str) {
        if let Some(n) = self.fields.get_mut(field) {
            *n += 1;
        } else if self.fields.len() < MAX_FIELDS_PER_ENDPOINT {
            self.fields.insert(field.to_owned(), 1);
        } else {
            *self.fields.entry(OTHER_FIELD.to_owned()).or_default() += 1;
        }
    }
}

/// One endpoint as listed:
/// `{"method","template","compared","mismatched","main_latency_ms":{"p50","p99"},
/// "mirror_latency_ms":{"p50","p99"},"fields":[{"field","count"}],"regressions":[],
/// "noise":[]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EndpointSnapshot {
    pub method: String,
    pub template: String,
    pub compared: u64,
    pub mismatched: u64,
    pub main_latency_ms: Quantiles,
    pub mirror_latency_ms: Quantiles,
    /// The [`REPORTED_FIELDS`] most frequent, the most frequent first (ties by name).
    pub fields: Vec<FieldCount>,
    /// Fields that differ more often than on the baseline (empty without one).
    pub regressions: Vec<Compared>,
    /// Fields that differ on the baseline too and are no regression.
    pub noise: Vec<Compared>,
}

/// How many compared answers of an endpoint differed in `field`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldCount {
    pub field: String,
    pub count: u64,
}

/// A field's count on a candidate and on the baseline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Compared {
    pub field: String,
    pub count: u64,
    pub baseline_count: u64,
}

/// The per-endpoint results of one mirror, by [`key_for`].
#[derive(Debug, Default)]
pub struct Endpoints {
    /// Hashed with foldhash, not SipHash: looked up on every comparison, where SipHash
    /// cost ~200 instructions per lookup (bench/README.md, "Comparison and analysis").
    /// Randomly seeded, and bounded by `MAX_ENDPOINTS`, so paths a client picks cannot
    /// be made to collide at will.
    table: Mutex<Table>,
}

type Table = HashMap<String, Endpoint, foldhash::fast::RandomState>;

impl Endpoints {
    /// Counts one comparison of a request `method` to the endpoint `template`.
    #[cfg(test)]
    pub fn record(
        &self,
        method: &str,
        template: &str,
        verdict: &Verdict,
        main_latency: Duration,
        mirror_latency: Duration,
    ) {
        let method = super::verdict::cut(method, MAX_METHOD_CHARS);
        let template = super::verdict::cut(template, MAX_TEMPLATE_CHARS);
        let key = format!("{method} {template}");
        self.record_key(&key, verdict, main_latency, mirror_latency);
    }

    /// Counts one comparison on the endpoint `key` (from [`key_for`]).
    pub fn record_key(
        &self,
        key: &str,
        verdict: &Verdict,
        main_latency: Duration,
        mirror_latency: Duration,
    ) {
        let mut table = self.lock();
        // A known endpoint, the common case: one hash, no allocation.
        if let Some(endpoint) = table.get_mut(key) {
            endpoint.record(verdict, main_latency, mirror_latency);
            return;
        }
        let key = if table.len() < MAX_ENDPOINTS {
            key.to_owned()
        } else {
            OTHER_KEY.to_owned()
        };
        (table.entry(key).or_insert_with(Endpoint::new)).record(
            verdict,
            main_latency,
            mirror_latency,
        );
    }

    /// Every endpoint's counts, to weigh a candidate's against (this is a baseline).
    pub fn counts(&self) -> HashMap<String, Counts> {
        self.lock()
            .iter()
            .map(|(key, e)| {
                let counts = Counts {
                    compared: e.compared,
                    fields: e.fields.clone(),
                };
                (key.clone(), counts)
            })
            .collect()
    }

    /// Every endpoint, the most compared first (ties by method and template); with
    /// `baseline` (its [`Endpoints::counts`]), each field classified against the
    /// baseline's same endpoint (a field or endpoint the baseline has not seen counts 0
    /// there). The regressions and the noise are listed the most frequent first.
    pub fn snapshot(&self, baseline: Option<&HashMap<String, Counts>>) -> Vec<EndpointSnapshot> {
        let empty = Counts::default();
        let table = self.lock();
        let mut list: Vec<EndpointSnapshot> = table
            .iter()
            .map(|(key, e)| {
                let (method, template) = split_key(key);
                let mut fields: Vec<FieldCount> = e
                    .fields
                    .iter()
                    .map(|(field, &count)| FieldCount {
                        field: field.clone(),
                        count,
                    })
                    .collect();
                fields.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.field.cmp(&b.field)));
                let (mut regressions, mut noise) = (Vec::new(), Vec::new());
                if let Some(baseline) = baseline {
                    let base = baseline.get(key).unwrap_or(&empty);
                    let names = fields.iter().map(|f| f.field.as_str()).chain(
                        (base.fields.keys())
                            .map(String::as_str)
                            .filter(|f| !e.fields.contains_key(*f)),
                    );
                    for field in names {
                        let count = e.fields.get(field).copied().unwrap_or(0);
                        let baseline_count = base.fields.get(field).copied().unwrap_or(0);
                        let entry = Compared {
                            field: field.to_owned(),
                            count,
                            baseline_count,
                        };
                        match classify(count, e.compared, baseline_count, base.compared) {
                            Class::Regression => regressions.push(entry),
                            Class::Noise => noise.push(entry),
                            Class::Neither => {}
                        }
                    }
                }
                let by_count = |a: &Compared, b: &Compared| {
                    (b.count, b.baseline_count)
                        .cmp(&(a.count, a.baseline_count))
                        .then_with(|| a.field.cmp(&b.field))
                };
                regressions.sort_by(by_count);
                noise.sort_by(by_count);
                fields.truncate(REPORTED_FIELDS);
                EndpointSnapshot {
                    method: method.to_owned(),
                    template: template.to_owned(),
                    compared: e.compared,
                    mismatched: e.mismatched,
                    main_latency_ms: quantiles(&e.main_latency),
                    mirror_latency_ms: quantiles(&e.mirror_latency),
                    fields,
                    regressions,
                    noise,
                }
            })
            .collect();
        drop(table);
        list.sort_by(|a, b| {
            b.compared
                .cmp(&a.compared)
                .then_with(|| (&a.method, &a.template).cmp(&(&b.method, &b.template)))
        });
        list
    }

    /// How many endpoints are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The bytes the table holds on the heap, counted from what it keeps: its slots,
    /// every string's capacity, every field map's slots and every histogram's counts.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let table = self.lock();
        let slot = size_of::<(String, Endpoint)>() + 1;
        let field_slot = size_of::<(String, u64)>() + 1;
        table.capacity() * slot
            + table
                .iter()
                .map(|(key, e)| {
                    key.capacity()
                        + e.fields.capacity() * field_slot
                        + e.fields.keys().map(String::capacity).sum::<usize>()
                        + (e.main_latency.distinct_values() + e.mirror_latency.distinct_values())
                            * size_of::<u32>()
                })
                .sum::<usize>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every change under the lock is a counter or histogram update that leaves the
        // table usable, so a poisoned lock is still used.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn histogram() -> Histogram<u32> {
    // Two significant figures: p50/p99 within 1 %, a few KiB per histogram.
    Histogram::new(2).expect("2 significant figures is a valid precision")
}

fn record_latency(histogram: &mut Histogram<u32>, latency: Duration) {
    let micros = latency.min(MAX_LATENCY).as_micros() as u64;
    // Fails only for a count past u32::MAX (4 billion answers of one latency on one
    // endpoint); that one is then not counted. The histogram grows to the value.
    let _ = histogram.record(micros);
}

fn quantiles(h: &Histogram<u32>) -> Quantiles {
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

    fn differs(fields: &[&str]) -> Verdict {
        Verdict::Mismatch(Mismatch {
            status: false,
            headers: false,
            body: true,
            difference: Difference::ByteOffset { offset: 0 },
            fields: fields.iter().map(|f| f.to_string()).collect(),
            field_count: fields.len() as u64,
        })
    }

    #[test]
    fn numbers_uuids_and_long_hex_segments_are_ids() {
        assert_eq!(template("/users/42/orders?x=1"), "/users/{id}/orders");
        assert_eq!(
            template("/o/123e4567-e89b-12d3-a456-426614174000/items"),
            "/o/{id}/items"
        );
        assert_eq!(template("/blob/0123456789abcdef"), "/blob/{id}");
        // Shorter hex, words and a near-UUID stay.
        assert_eq!(template("/blob/0123456789abcde"), "/blob/0123456789abcde");
        assert_eq!(template("/v2/users/me"), "/v2/users/me");
        assert_eq!(
            template("/o/123e4567-e89b-12d3-a456-42661417400z"),
            "/o/123e4567-e89b-12d3-a456-42661417400z"
        );
        assert_eq!(template("/"), "/");
        assert_eq!(template(""), "");
    }

    #[test]
    fn a_segment_cut_at_the_bound_is_an_id_when_it_reads_as_one() {
        // 302 characters, cut to 300: `12345x` would read `1234`, a number.
        let words = "z".repeat(MAX_TEMPLATE_CHARS - 6);
        let once = template(&format!("/{words}/12345x"));
        assert_eq!(once, format!("/{words}/{{id}}"));
        assert_eq!(template(&once), once);
        let key = key_for("GET", &[], &format!("/{words}/12345x"));
        assert_eq!(key, format!("GET {once}"));
    }

    #[test]
    fn the_key_is_the_method_and_the_template_each_cut() {
        assert_eq!(split_key(OTHER_KEY), ("*", "other"));
        assert_eq!(key_for("GET", &[], "/users/7?x=1"), "GET /users/{id}");
        let patterns = vec!["/files/:name".to_owned()];
        assert_eq!(key_for("PUT", &patterns, "/files/a#b"), "PUT /files/:name");
        let long = format!("/{}", "é".repeat(400));
        let key = key_for(&"M".repeat(30), &[], &long);
        let (method, template) = split_key(&key);
        assert_eq!(method, "M".repeat(MAX_METHOD_CHARS));
        assert_eq!(template.chars().count(), MAX_TEMPLATE_CHARS);
        assert_eq!(template, template_for(&[], &long));
    }

    #[test]
    fn the_first_matching_endpoint_pattern_is_the_template() {
        let patterns = vec![
            "/users/:id/orders".to_owned(),
            "/files/:name".to_owned(),
            "/files/:any".to_owned(),
        ];
        assert_eq!(
            template_for(&patterns, "/users/me/orders?x=1"),
            "/users/:id/orders"
        );
        assert_eq!(template_for(&patterns, "/files/a.txt"), "/files/:name");
        // Not matching: a segment more, fewer, empty, or another literal.
        assert_eq!(
            template_for(&patterns, "/users/me/orders/7"),
            "/users/me/orders/{id}"
        );
        assert_eq!(template_for(&patterns, "/users/7"), "/users/{id}");
        assert_eq!(template_for(&patterns, "/files/"), "/files/");
        assert_eq!(
            template_for(&patterns, "/user/1/orders"),
            "/user/{id}/orders"
        );
        assert_eq!(template_for(&[], "/users/1/orders"), "/users/{id}/orders");
    }

    #[test]
    fn ignore_rules_cover_headers_pointers_and_what_is_under_them() {
        let rules: Vec<String> = ["x-request-id", "/meta", "/items/*/id"]
            .iter()
            .map(|r| r.to_string())
            .collect();
        for field in [
            "header:x-request-id",
            "header:X-Request-Id",
            "/meta",
            "/meta/generated_at",
            "/items/*/id",
            "/items/*/id/x",
        ] {
            assert!(ignored(&rules, field), "{field}");
        }
        for field in [
            "header:etag",
            "/metadata",
            "/items/*/price",
            "/items",
            "status",
            "body",
            "other",
        ] {
            assert!(!ignored(&rules, field), "{field}");
        }
        let d = Duration::from_millis(1);
        let (baseline, candidate) = (Endpoints::default(), Endpoints::default());
        for _ in 0..10 {
            baseline.record("GET", "/a", &differs(&["/meta/ts"]), d, d);
            candidate.record("GET", "/a", &differs(&["/meta/ts", "/price"]), d, d);
        }
        let mut list = candidate.snapshot(Some(&baseline.counts()));
        assert_eq!(list[0].noise.len(), 1);
        drop_ignored(&mut list, &rules);
        assert!(list[0].noise.is_empty());
        assert_eq!(list[0].regressions[0].field, "/price");
    }

    #[test]
    fn diffys_rule_on_rates() {
        // A timestamp differing on every answer of both: noise.
        assert_eq!(classify(100, 100, 98, 98), Class::Noise);
        // Half the candidate's answers against none of the baseline's: a regression.
        assert_eq!(classify(50, 100, 0, 100), Class::Regression);
        // Rates, not counts: 50/100 against 60/120 is the same rate.
        assert_eq!(classify(50, 100, 60, 120), Class::Noise);
        // A relative gap of 20 % exactly is not enough; just above is.
        assert_eq!(classify(60, 100, 40, 100), Class::Noise);
        assert_eq!(classify(61, 100, 40, 100), Class::Regression);
        // An absolute gap of 0.03 % or less is not enough (1 in 10 000 against 0).
        assert_eq!(classify(3, 10_000, 0, 10_000), Class::Neither);
        assert_eq!(classify(4, 10_000, 0, 10_000), Class::Regression);
        // Never divides by zero.
        assert_eq!(classify(0, 0, 0, 0), Class::Neither);
        assert_eq!(classify(1, 1, 0, 0), Class::Regression);
    }

    proptest::proptest! {
        /// Any path (any characters, any length): no panic, at most the bound, and a
        /// template is its own template, so the same endpoint never splits in two.
        #[test]
        fn the_template_is_bounded_and_idempotent(
            path in proptest::prop_oneof![
                "\\PC{0,40}",
                "(/([0-9]{1,6}|[0-9]{1,6}[g-z]|[a-f0-9]{14,40}|[a-z]{1,3}[0-9x]{0,4}|\\PC{0,3})){0,120}",
            ],
        ) {
            let once = template(&path);
            proptest::prop_assert!(once.chars().count() <= MAX_TEMPLATE_CHARS, "{}", once.len());
            proptest::prop_assert!(!once.contains(['?', '#']), "{}", once);
            proptest::prop_assert_eq!(template(&once), once);
        }

        /// With `endpoint` patterns too: no panic, the bound holds, and a path a pattern
        /// takes gives that pattern.
        #[test]
        fn patterns_never_panic_and_keep_the_bound(
            patterns in proptest::collection::vec("(/(:?[a-z]{1,3}|:)){0,4}|/:[a-z]{300}", 0..4),
            path in "(/[a-z0-9:]{0,4}){0,5}([?#]\\PC{0,5})?",
        ) {
            let got = template_for(&patterns, &path);
            proptest::prop_assert!(got.chars().count() <= MAX_TEMPLATE_CHARS);
            let plain = path.split(['?', '#']).next().unwrap_or_default();
            match patterns.iter().find(|p| pattern_matches(p, plain)) {
                Some(p) => proptest::prop_assert!(p.starts_with(&got)),
                None => proptest::prop_assert_eq!(got, template(&path)),
            }
        }

        /// More differences on the candidate never turn a regression into anything
        /// else; more on the baseline never turn a non-regression into one.
        #[test]
        fn the_rule_is_monotone(
            compared in 1u64..10_000,
            base_compared in 1u64..10_000,
            count in 0u64..10_000,
            base in 0u64..10_000,
            more in 1u64..1000,
        ) {
            let (count, base) = (count.min(compared), base.min(base_compared));
            let regression = |c, b| classify(c, compared, b, base_compared) == Class::Regression;
            if regression(count, base) {
                proptest::prop_assert!(regression((count + more).min(compared), base));
            } else {
                proptest::prop_assert!(!regression(count, base + more));
            }
        }
    }

    #[test]
    fn fields_are_regressions_or_noise_against_the_baseline() {
        let d = Duration::from_millis(1);
        let (baseline, candidate) = (Endpoints::default(), Endpoints::default());
        for i in 0..100 {
            baseline.record("GET", "/a", &differs(&["/ts"]), d, d);
            let fields: &[&str] = if i % 2 == 0 {
                &["/ts", "/price"]
            } else {
                &["/ts"]
            };
            candidate.record("GET", "/a", &differs(fields), d, d);
            candidate.record("GET", "/b", &differs(&["/ts"]), d, d);
            baseline.record("GET", "/b", &differs(&["/ts"]), d, d);
        }
        let list = candidate.snapshot(Some(&baseline.counts()));
        let a = list.iter().find(|e| e.template == "/a").unwrap();
        let compared = |field: &str, count, baseline_count| Compared {
            field: field.to_owned(),
            count,
            baseline_count,
        };
        assert_eq!(a.regressions, [compared("/price", 50, 0)]);
        assert_eq!(a.noise, [compared("/ts", 100, 100)]);
        let b = list.iter().find(|e| e.template == "/b").unwrap();
        assert!(b.regressions.is_empty());
        assert_eq!(b.noise, [compared("/ts", 100, 100)]);
        // Without a baseline, neither is listed.
        assert!(candidate.snapshot(None).iter().all(|e| e.noise.is_empty()));
    }

    #[test]
    fn counts_per_endpoint_with_the_most_frequent_fields_first() {
        let e = Endpoints::default();
        let ms = Duration::from_millis;
        for _ in 0..3 {
            e.record("GET", "/a", &differs(&["/ts"]), ms(10), ms(20));
        }
        e.record("GET", "/a", &differs(&["/ts", "/price"]), ms(10), ms(20));
        e.record("GET", "/a", &Verdict::Match, ms(10), ms(20));
        e.record("POST", "/a", &Verdict::Match, ms(1), ms(1));
        let list = e.snapshot(None);
        assert_eq!(list.len(), 2);
        let a = &list[0];
        assert_eq!((a.method.as_str(), a.template.as_str()), ("GET", "/a"));
        assert_eq!((a.compared, a.mismatched), (5, 4));
        let fields: Vec<(&str, u64)> = a
            .fields
            .iter()
            .map(|f| (f.field.as_str(), f.count))
            .collect();
        assert_eq!(fields, [("/ts", 4), ("/price", 1)]);
        let p50 = a.mirror_latency_ms.p50.unwrap();
        assert!((p50 - 20.0).abs() < 0.2, "{p50}");
        let json = serde_json::to_value(&list[1]).unwrap();
        assert_eq!(json["method"], "POST");
        assert_eq!(json["fields"], serde_json::json!([]));
        assert_eq!(json["regressions"], serde_json::json!([]));
        assert_eq!(json["noise"], serde_json::json!([]));
        assert!(json["main_latency_ms"]["p99"].is_number());
    }

    #[test]
    fn a_hundred_thousand_paths_with_ids_fold_into_their_templates() {
        let e = Endpoints::default();
        let d = Duration::from_millis(1);
        for i in 0..100_000u64 {
            let path = match i % 3 {
                0 => format!("/users/{i}/orders?page={i}"),
                1 => format!("/o/{:08x}-0000-4000-8000-{:012x}", i, i * 31),
                _ => format!("/blob/{:020x}", i * 7919),
            };
            e.record("GET", &template(&path), &differs(&["/ts", "/req"]), d, d);
        }
        let list = e.snapshot(None);
        let templates: Vec<&str> = list.iter().map(|s| s.template.as_str()).collect();
        assert_eq!(templates, ["/users/{id}/orders", "/blob/{id}", "/o/{id}"]);
        assert_eq!(list.iter().map(|s| s.compared).sum::<u64>(), 100_000);
        // Three endpoints: a few KiB each, whatever the number of paths.
        eprintln!("3 templates: {} bytes", e.heap_bytes());
        assert!(e.heap_bytes() < 3 * 16 * 1024, "{} bytes", e.heap_bytes());
    }

    #[test]
    fn a_hundred_thousand_paths_keep_at_most_500_endpoints() {
        let e = Endpoints::default();
        let d = Duration::from_millis(1);
        let mut after_1000 = 0;
        for i in 0..100_000 {
            let path = format!("/page-{i}");
            // Latencies spread over 1-100 ms, as on a real endpoint.
            let latency = Duration::from_micros(1000 + (i * 7919) % 99_000);
            e.record(
                "GET",
                &template(&path),
                &differs(&["/ts", "/req"]),
                d,
                latency,
            );
            if i == 999 {
                after_1000 = e.heap_bytes();
            }
        }
        assert_eq!(e.len(), MAX_ENDPOINTS + 1);
        // The table stops growing at the bound: 100 000 paths hold what 1 000 did (the
        // `other` endpoint's histogram may widen a little), under 10 MiB in all.
        let bytes = e.heap_bytes();
        assert!(
            bytes <= after_1000 + 64 * 1024,
            "{bytes} bytes after 100 000 paths, {after_1000} after 1 000"
        );
        eprintln!("{after_1000} bytes after 1 000 paths, {bytes} after 100 000");
        assert!(bytes < 10 << 20, "{bytes} bytes");
        let list = e.snapshot(None);
        let other = list
            .iter()
            .find(|s| s.template == "other")
            .expect("an `other` endpoint");
        assert_eq!(other.method, "*");
        assert_eq!(other.compared, 100_000 - MAX_ENDPOINTS as u64);
        assert_eq!(list.iter().map(|s| s.compared).sum::<u64>(), 100_000);
    }

    #[test]
    fn fields_per_endpoint_are_bounded_and_the_rest_counted_as_other() {
        let e = Endpoints::default();
        let d = Duration::from_millis(1);
        for i in 0..(MAX_FIELDS_PER_ENDPOINT + 30) {
            e.record("GET", "/a", &differs(&[&format!("/k{i}")]), d, d);
        }
        let mut m = differs(&["/k0"]);
        if let Verdict::Mismatch(m) = &mut m {
            m.field_count = 5;
        }
        e.record("GET", "/a", &m, d, d);
        let list = e.snapshot(None);
        let other = list[0]
            .fields
            .iter()
            .find(|f| f.field == OTHER_FIELD)
            .unwrap();
        // 30 that did not fit, and 4 counted but not named.
        assert_eq!(other.count, 34);
        assert_eq!(list[0].fields.len(), REPORTED_FIELDS);
    }
}
