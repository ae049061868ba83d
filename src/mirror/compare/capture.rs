//! The I/O half of comparing answers (docs/comparing.md, "Bodies"): main's answer is
//! captured as it streams to the client, a comparing mirror's answer as the copy reads
//! it, and the pure [`super::verdict`] decides. The client never waits: main's body goes
//! to the client frame by frame and only a copy of its first `--max-compare-size` bytes
//! (plus a digest of the whole) is kept aside.
//!
//! Kept bytes on both sides count against the `--max-buffered-bytes` budget; a capture
//! that does not fit is abandoned and that copy counted `not_compared`, so a hung
//! comparing mirror cannot pin more memory than the budget. So do the trailers that end
//! a body (where a gRPC answer sends its status; their size is bounded by the HTTP
//! clients' header block limit, see `client::h2`), and the decoded bytes of a
//! compressed body or of compressed gRPC messages ([`for_compare`]), which the comparing
//! copy makes on its own task when it compares: never while main's answer streams to
//! the client.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Frame;
use tokio::sync::watch;
use tokio::time::Instant;

use super::decode::{self, Coding, Decoded};
use super::grpc::{self, Decompressed};
use super::verdict::{Answer, Capture, CapturedBody};
use crate::budget::{Budget, Held};

/// Main's complete answer, as the comparing copies see it.
#[derive(Debug)]
pub struct MainAnswer {
    pub answer: Answer,
    /// From the request's arrival to the end of main's answer.
    pub latency: Duration,
    /// The kept bytes' share of the budget, given back when the last comparing copy is
    /// done with this answer (not when main's answer ends).
    _held: Held,
}

/// Where main's answer will appear; `None` until it is complete. The sender is dropped
/// unset when it never will be (main unreachable, client gone).
pub type MainAnswerRx = watch::Receiver<Option<std::sync::Arc<MainAnswer>>>;
pub type MainAnswerTx = watch::Sender<Option<std::sync::Arc<MainAnswer>>>;

/// A body being captured within the byte budget, with the trailers that end it.
pub struct BodyCapture {
    capture: Option<Capture>,
    trailers: HeaderMap,
    held: Held,
}

/// What one trailer field is counted in the budget: its name and value, and the 32
/// bytes of overhead HPACK counts per entry (RFC 7541 §4.1) for the map's own memory.
fn field_size(name: &http::HeaderName, value: &http::HeaderValue) -> u64 {
    (name.as_str().len() + value.len() + 32) as u64
}

impl BodyCapture {
    pub fn new(limit: usize, budget: &Budget) -> Self {
        Self {
            capture: Some(Capture::new(limit)),
            trailers: HeaderMap::new(),
            held: budget.hold(),
        }
    }

    /// Adds one frame of the body: a chunk of data, or the trailers that end it.
    pub fn push_frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.push(data);
        } else if let Some(trailers) = frame.trailers_ref() {
            self.push_trailers(trailers);
        }
    }

    /// Keeps the trailers; abandons the capture when they would pass the budget.
    fn push_trailers(&mut self, trailers: &HeaderMap) {
        if self.capture.is_none() {
            return;
        }
        let size = trailers.iter().map(|(n, v)| field_size(n, v)).sum();
        if self.held.grow(size) {
            for (name, value) in trailers {
                self.trailers.append(name, value.clone());
            }
        } else {
            self.capture = None;
        }
    }

    /// Adds a chunk; abandons the capture when its kept bytes would pass the budget.
    pub fn push(&mut self, chunk: &Bytes) {
        let Some(capture) = self.capture.as_mut() else {
            return;
        };
        let before = capture.held_bytes();
        capture.push_bytes(chunk);
        let after = capture.held_bytes();
        if after > before && !self.held.grow((after - before) as u64) {
            self.capture = None;
        } else if after < before {
            // Past the limit only a digest is kept: the bytes are free again.
            self.held.shrink((before - after) as u64);
        }
    }

    /// The captured body and trailers with their share of the budget (keep it as long
    /// as they are), or `None` when the budget ran out.
    pub fn finish(self) -> Option<Captured> {
        let Self {
            capture,
            trailers,
            held,
        } = self;
        capture.map(|capture| Captured {
            body: capture.finish(),
            trailers,
            held,
        })
    }
}

/// What a [`BodyCapture`] kept.
pub struct Captured {
    pub body: CapturedBody,
    pub trailers: HeaderMap,
    /// The share of the budget of both.
    pub held: Held,
}

/// Main's answer on its way to the client, captured for the comparing mirrors.
pub struct MainCapture {
    status: StatusCode,
    headers: HeaderMap,
    body: BodyCapture,
    started: Instant,
    tx: MainAnswerTx,
}

impl MainCapture {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        started: Instant,
        tx: MainAnswerTx,
        limit: usize,
        budget: &Budget,
    ) -> Self {
        Self {
            status,
            headers,
            body: BodyCapture::new(limit, budget),
            started,
            tx,
        }
    }

    /// Adds one frame of main's answer as it goes to the client.
    pub fn push_frame(&mut self, frame: &Frame<Bytes>) {
        self.body.push_frame(frame);
    }

    /// Main's answer is complete: publish it to the comparing copies.
    pub fn finish(self) {
        let latency = self.started.elapsed();
        let Some(Captured {
            body,
            trailers,
            held,
        }) = self.body.finish()
        else {
            return; // over budget: the copies count it as not compared
        };
        let answer = Answer {
            status: self.status,
            headers: self.headers,
            body,
            trailers,
        };
        self.tx.send_replace(Some(std::sync::Arc::new(MainAnswer {
            answer,
            latency,
            _held: held,
        })));
    }
}

/// Waits for main's answer, at most `limit`; `None` when it never completes.
pub async fn main_answer(
    mut rx: MainAnswerRx,
    limit: Duration,
) -> Option<std::sync::Arc<MainAnswer>> {
    let waited = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
    match waited {
        Ok(Ok(answer)) => answer.clone(),
        _ => None,
    }
}

/// A captured body made ready for comparison.
#[derive(Debug)]
pub enum ForCompare {
    /// Compare it as captured: no coding that is decoded, only a digest kept, or bytes
    /// that do not decode as their `Content-Encoding` says.
    AsCaptured,
    /// Compare this instead: the decoded body, with the decoded bytes' share of the
    /// budget (keep it as long as the body); or, when the decoded body would pass the
    /// limit, the captured bytes' length and digest.
    Decoded(CapturedBody, Held),
    /// The decoded bytes did not fit the budget.
    OverBudget,
}

/// Undoes the `Content-Encoding` of a captured body (`gzip`, `deflate`, `br`, see
/// [`decode`]), or for a gRPC answer the `grpc-encoding` of its compressed messages
/// (see [`grpc::decompress`]), into at most `limit` decoded bytes
/// (`--max-compare-size`), reserved in `budget` as they are made.
pub fn for_compare(
    headers: &HeaderMap,
    body: &CapturedBody,
    limit: usize,
    budget: &Budget,
) -> ForCompare {
    for_compare_of(headers, grpc::is_grpc(headers), body, limit, budget)
}

/// [`for_compare`], with whether the answer is gRPC already looked up.
pub fn for_compare_of(
    headers: &HeaderMap,
    grpc: bool,
    body: &CapturedBody,
    limit: usize,
    budget: &Budget,
) -> ForCompare {
    if grpc {
        return grpc_for_compare(headers, body, limit, budget);
    }
    let (Some(coding), CapturedBody::Whole(encoded)) = (Coding::of(headers), body) else {
        return ForCompare::AsCaptured;
    };
    if encoded.is_empty() {
        // A HEAD or a 304 announces the coding of a body it does not send.
        return ForCompare::AsCaptured;
    }
    let mut held = budget.hold();
    let decoded = decode::decode(coding, encoded, limit, &mut |n| held.grow(n as u64));
    match decoded {
        Decoded::Whole(bytes) => ForCompare::Decoded(CapturedBody::Whole(Bytes::from(bytes)), held),
        // As for a body captured past the limit (docs/comparing.md, "Bodies").
        Decoded::TooLarge => ForCompare::Decoded(
            CapturedBody::Digest {
                len: body.len(),
                digest: body.digest(),
            },
            budget.hold(),
        ),
        Decoded::Invalid => ForCompare::AsCaptured,
        Decoded::OverBudget => ForCompare::OverBudget,
    }
}

/// [`for_compare`] for a gRPC answer: its compressed messages made plain.
fn grpc_for_compare(
    headers: &HeaderMap,
    body: &CapturedBody,
    limit: usize,
    budget: &Budget,
) -> ForCompare {
    let (Some(coding), CapturedBody::Whole(sent)) = (grpc::coding(headers), body) else {
        return ForCompare::AsCaptured;
    };
    let mut held = budget.hold();
    let mut reserved = 0;
    let decompressed = grpc::decompress(sent, coding, limit, &mut |n| {
        let granted = held.grow(n as u64);
        if granted {
            reserved += n;
        }
        granted
    });
    match decompressed {
        Decompressed::AsIs => ForCompare::AsCaptured,
        Decompressed::Plain(plain) => {
            // Each message's plain form was held while it was copied; now only the
            // body is.
            held.shrink(reserved.saturating_sub(plain.capacity()) as u64);
            ForCompare::Decoded(CapturedBody::Whole(Bytes::from(plain)), held)
        }
        Decompressed::TooLarge => ForCompare::Decoded(
            CapturedBody::Digest {
                len: body.len(),
                digest: body.digest(),
            },
            budget.hold(),
        ),
        Decompressed::OverBudget => ForCompare::OverBudget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn trailers_are_kept_with_the_body_and_counted_in_the_budget() {
        let budget = Budget::new(1 << 10);
        let mut capture = BodyCapture::new(100, &budget);
        capture.push_frame(&Frame::data(Bytes::from_static(b"abc")));
        let sent = trailers(&[("grpc-status", "5"), ("grpc-message", "gone")]);
        capture.push_frame(&Frame::trailers(sent.clone()));
        let kept = (11 + 1 + 32) + (12 + 4 + 32);
        assert_eq!(budget.held(), 3 + kept);
        let captured = capture.finish().unwrap();
        assert_eq!(
            captured.body,
            CapturedBody::Whole(Bytes::from_static(b"abc"))
        );
        assert_eq!(captured.trailers, sent);
        drop(captured);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn trailers_past_the_budget_abandon_the_capture() {
        let budget = Budget::new(50);
        let mut capture = BodyCapture::new(100, &budget);
        capture.push_frame(&Frame::data(Bytes::from_static(b"abc")));
        capture.push_frame(&Frame::trailers(trailers(&[(
            "grpc-message",
            "a message longer than what is left",
        )])));
        assert!(capture.finish().is_none());
        assert_eq!(budget.held(), 0);
    }
}
