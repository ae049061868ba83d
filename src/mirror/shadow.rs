//! The I/O half of comparing answers (docs/comparing.md, "Bodies"): main's answer is
//! captured as it streams to the client, a comparing mirror's answer as the copy reads
//! it, and the pure [`super::compare`] decides. The client never waits: main's body goes
//! to the client frame by frame and only a copy of its first `--max-compare-size` bytes
//! (plus a digest of the whole) is kept aside.
//!
//! Kept bytes on both sides count against the `--max-buffered-bytes` budget; a capture
//! that does not fit is abandoned and that copy counted `not_compared`, so a hung
//! comparing mirror cannot pin more memory than the budget.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use super::compare::{Answer, Capture, CapturedBody};
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
