//! `replay --compare` (docs/record-replay.md, "Comparing"): each replayed answer judged
//! against the recorded one by a comparing mirror's own code, and the results kept per
//! endpoint as a comparing mirror keeps them.
//!
//! This module owns the replay's side of it: undoing `Content-Encoding` (or a gRPC
//! answer's `grpc-encoding`) on both answers with [`capture::for_compare`], looking up
//! the called gRPC method's output type in `--grpc-descriptors`, counting the verdicts in
//! an [`Endpoints`] table, and the lines that report them. The rules themselves are the
//! mirror's ([`verdict::compare`]); nothing here compares bytes or JSON.
//!
//! Memory: the decoded bodies are held in a byte budget of two `--max-compare-size` per
//! request in flight (a pair that would pass it is not compared); the endpoint table is
//! bounded by [`Endpoints`] itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::Method;

use crate::budget::Budget;
use crate::mirror::compare::capture::{self, ForCompare};
use crate::mirror::compare::endpoints::{self, EndpointSnapshot, Endpoints};
use crate::mirror::compare::grpc::Descriptors;
use crate::mirror::compare::verdict::{self, Answer, Difference, Rules, Verdict};

/// What `--compare` judges with and what it has counted.
#[derive(Debug)]
pub struct Comparison {
    rules: Rules,
    descriptors: Option<Descriptors>,
    /// `--endpoint` patterns, as a mirror's `endpoint=` options.
    patterns: Vec<String>,
    limit: usize,
    budget: Budget,
    endpoints: Endpoints,
    /// Per endpoint (method, template), the first difference seen, as an example.
    first: Mutex<HashMap<(String, String), Difference>>,
}

impl Comparison {
    /// Rules from `--ignore`, the `--grpc-descriptors` set, the `--endpoint` patterns,
    /// and room for `concurrency` pairs of bodies of `limit` decoded bytes
    /// (`--max-compare-size`).
    pub fn new(
        (rules, descriptors, patterns): (Rules, Option<Descriptors>, Vec<String>),
        limit: usize,
        concurrency: usize,
    ) -> Self {
        let room = (limit as u64)
            .saturating_mul(2)
            .saturating_mul(concurrency.max(1) as u64);
        Self {
            rules,
            descriptors,
            patterns,
            limit,
            budget: Budget::new(room),
            endpoints: Endpoints::default(),
            first: Mutex::new(HashMap::new()),
        }
    }

    /// Compares the replayed answer of `method path_and_query` with the recorded one,
    /// both decoded, and counts the verdict under its endpoint; `None` when the pair
    /// did not fit the byte budget (not compared).
    pub fn judge(
        &self,
        method: &Method,
        path_and_query: &str,
        recorded: Answer,
        replayed: Answer,
        latency: Duration,
    ) -> Option<bool> {
        let (recorded, _held_recorded) = self.decoded(recorded)?;
        let (replayed, _held_replayed) = self.decoded(replayed)?;
        let path = path_and_query.split('?').next().unwrap_or("/");
        let output = (self.descriptors.as_ref()).and_then(|d| d.output(path));
        // The recorded answer is main's, the replayed one the mirror's.
        let verdict = verdict::compare(&self.rules, output.as_ref(), &recorded, &replayed);
        let key = endpoints::key_for(method.as_str(), &self.patterns, path);
        self.endpoints.record_key(
            &key,
            &verdict,
            // Main's latency is not reported by a replay; the table wants one.
            Duration::ZERO,
            latency,
        );
        let Verdict::Mismatch(mismatch) = verdict else {
            return Some(false);
        };
        let (method, template) = endpoints::split_key(&key);
        let key = (method.to_owned(), template.to_owned());
        lock(&self.first).entry(key).or_insert(mismatch.difference);
        Some(true)
    }

    /// The answer with its body decoded, and the decoded bytes' hold on the budget.
    fn decoded(&self, mut answer: Answer) -> Option<(Answer, Option<crate::budget::Held>)> {
        match capture::for_compare(&answer.headers, &answer.body, self.limit, &self.budget) {
            ForCompare::AsCaptured => Some((answer, None)),
            ForCompare::Decoded(body, held) => {
                answer.body = body;
                Some((answer, Some(held)))
            }
            ForCompare::OverBudget => None,
        }
    }

    /// One line per endpoint with mismatches, the most compared first: method and
    /// template, the counts, the most frequent differing fields, the first difference.
    pub fn endpoint_lines(&self) -> Vec<String> {
        let first = lock(&self.first);
        self.endpoints
            .snapshot(None)
            .iter()
            .filter(|e| e.mismatched > 0)
            .map(|e| endpoint_line(e, first.get(&(e.method.clone(), e.template.clone()))))
            .collect()
    }
}

/// `replay: mismatch GET /users/{id}: 3 of 40 differ; fields: /total (3), status (1);
/// first: {...}`.
fn endpoint_line(endpoint: &EndpointSnapshot, first: Option<&Difference>) -> String {
    let fields: Vec<String> = (endpoint.fields.iter())
        .map(|f| format!("{} ({})", f.field, f.count))
        .collect();
    let first = first
        .and_then(|d| serde_json::to_string(d).ok())
        .unwrap_or_default();
    format!(
        "replay: mismatch {} {}: {} of {} differ; fields: {}; first: {first}",
        endpoint.method,
        endpoint.template,
        endpoint.mismatched,
        endpoint.compared,
        fields.join(", ")
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only examples are kept under this lock; a poisoned one still holds them.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::compare::verdict::CapturedBody;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode, header};

    fn json(body: &[u8], gzip: bool) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let body = if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            crate::mirror::compare::grpc::tests::gzip(body)
        } else {
            body.to_vec()
        };
        Answer {
            status: StatusCode::OK,
            headers,
            body: CapturedBody::Whole(Bytes::from(body)),
            trailers: HeaderMap::new(),
        }
    }

    #[test]
    fn a_gzip_answer_is_compared_decoded_and_counted_under_its_template() {
        let c = Comparison::new((Rules::default(), None, Vec::new()), 1 << 20, 1);
        // Same JSON, one side gzip with other spacing: a match; then a mismatch.
        let pairs = [
            (
                "/users/42?x=1",
                json(br#"{ "b": [1, 2], "a": 1 }"#, false),
                Some(false),
            ),
            ("/users/43", json(br#"{"a":2,"b":[1,3]}"#, true), Some(true)),
        ];
        for (path, replayed, mismatched) in pairs {
            let recorded = json(br#"{"a":1,"b":[1,2]}"#, true);
            let judged = c.judge(&Method::GET, path, recorded, replayed, Duration::ZERO);
            assert_eq!(judged, mismatched, "{path}");
        }
        let lines = c.endpoint_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "replay: mismatch GET /users/{id}: 1 of 2 differ; fields: /a (1), /b/* (1); first: "
            ),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(r#""pointer":"/a""#), "{}", lines[0]);
    }
}
