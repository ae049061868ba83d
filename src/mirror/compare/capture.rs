//! The I/O half of comparing answers (docs/comparing.md, "Bodies"): main's answer is
//! captured as it streams to the client, a comparing mirror's answer as the copy reads
//! it, and the pure [`super::verdict`] decides. The client never waits: main's body goes
//! to the client frame by frame and only a copy of its first `--max-compare-size` bytes
//! (plus a digest of the whole) is kept aside.
//!
//! Kept bytes on both sides count against the `--max-buffered-bytes` budget; a capture
//! that does not fit is abandoned and that copy counted `not_compared`, so a hung
//! comparing mirror cannot pin more memory than the budget. So do the decoded bytes of
//! a compressed body ([`for_compare`]), which the comparing copy makes on its own task
//! when it compares: never while main's answer streams to the client.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use super::decode::{self, Coding, Decoded};
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

/// A body being captured within the byte budget.
pub struct BodyCapture {
    capture: Option<Capture>,
    held: Held,
}

impl BodyCapture {
    pub fn new(limit: usize, budget: &Budget) -> Self {
        Self {
            capture: Some(Capture::new(limit)),
            held: budget.hold(),
        }
    }

    /// Adds a chunk; abandons the capture when its kept bytes would pass the budget.
    pub fn push(&mut self, chunk: &[u8]) {
        let Some(capture) = self.capture.as_mut() else {
            return;
        };
        let before = capture.held_bytes();
        capture.push(chunk);
        let after = capture.held_bytes();
        if after > before && !self.held.grow((after - before) as u64) {
            self.capture = None;
        } else if after < before {
            // Past the limit only a digest is kept: the bytes are free again.
            self.held.shrink((before - after) as u64);
        }
    }

    /// The captured body with its share of the budget (keep it as long as the body),
    /// or `None` when the budget ran out.
    pub fn finish(self) -> Option<(CapturedBody, Held)> {
        let held = self.held;
        self.capture.map(|capture| (capture.finish(), held))
    }
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

    pub fn push(&mut self, chunk: &Bytes) {
        self.body.push(chunk);
    }

    /// Main's answer is complete: publish it to the comparing copies.
    pub fn finish(self) {
        let latency = self.started.elapsed();
        let Some((body, held)) = self.body.finish() else {
            return; // over budget: the copies count it as not compared
        };
        let answer = Answer {
            status: self.status,
            headers: self.headers,
            body,
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
/// [`decode`]) into at most `limit` decoded bytes (`--max-compare-size`), reserved in
/// `budget` as they are made.
pub fn for_compare(
    headers: &HeaderMap,
    body: &CapturedBody,
    limit: usize,
    budget: &Budget,
) -> ForCompare {
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
