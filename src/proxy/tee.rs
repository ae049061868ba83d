//! The request body on its way to main: streamed as it arrives, watched for a stalled
//! client (`--body-read-timeout`), and — when mirrors want the request — copied aside
//! as it passes, into one buffer that every mirror copy then shares (docs/operations.md,
//! "Request bodies and memory"). linkerd2-proxy's `ReplayBody` is the model of a body
//! read once and kept for a second use.
//!
//! Main never waits for the copy: each frame goes to main as soon as it is read. The
//! copy is handed to the mirrors when the body is complete. It is abandoned, and main's
//! stream goes on untouched, when the body passes `--max-body-size` (counted `skipped`)
//! or when its bytes would pass `--max-buffered-bytes` (counted `dropped`); a body the
//! client does not finish is not mirrored (`skipped`).
//!
//! A body has ended only when its framing says so (docs/operations.md, "Request bodies
//! and memory"): a length other than its `Content-Length` is unfinished, and so is an
//! HTTP/2 stream that did not end with `END_STREAM`. hyper reads a client's `RST_STREAM(NO_ERROR)` as a clean
//! end of body (RFC 9113 §8.1 lets a server stop reading that way, hence hyper's
//! choice), so the end is checked here: only a stream that received `END_STREAM` says
//! `is_end_stream` once read to its end. An unfinished body is an error to main, whose
//! request is then aborted instead of ending short.
//!
//! When main stops reading early (main unreachable, an early answer, `--main-timeout`),
//! the rest of the body is read in the background for the mirrors, under the same
//! limits: a request is mirrored whatever main does.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::offer::Offer;
use crate::body::BoxError;
use crate::budget::Held;

/// Initial capacity of a copy when the body's length is not known, or large; the
/// buffer grows as bytes arrive, so memory follows what was received, not what was
/// announced.
const INITIAL_COPY_CAPACITY: usize = 64 * 1024;

/// Why the client's side of a request body failed. [`super::MainError::from_exchange`]
/// finds it in the error chain of main's request, to answer `408` or `400` instead of
/// `502`.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent nothing of its request body for {0:?}")]
    Timeout(Duration),
    #[error("cannot read the request body")]
    Read(#[source] BoxError),
    #[error("the request body ended after {received} bytes without its end ({expected})")]
    Unfinished {
        received: u64,
        /// What a finished body would have had: its length, or `END_STREAM`.
        expected: &'static str,
    },
}

impl ClientBodyError {
    /// The same failure, for a second reader ([`BodyFailure`]); a read error keeps its
    /// text.
    fn summary(&self) -> Self {
        match self {
            Self::Timeout(limit) => Self::Timeout(*limit),
            Self::Read(cause) => Self::Read(cause.to_string().into()),
            &Self::Unfinished { received, expected } => Self::Unfinished { received, expected },
        }
    }
}

/// Where a request body records why the client's side failed. hyper's HTTP/1 client
/// returns the body's error in the exchange's error chain, but its HTTP/2 client only
/// resets the stream, so the proxy reads the cause here when the chain has none.
pub type BodyFailure = Arc<OnceLock<ClientBodyError>>;

/// The copy being collected.
struct Copy {
    offer: Offer,
    buf: BytesMut,
    held: Held,
    /// `--max-body-size`.
    limit: u64,
}

impl Copy {
    /// Adds a chunk, or abandons the copy (and counts it) when the chunk does not fit.
    fn push(slot: &mut Option<Copy>, data: &[u8]) {
        let Some(copy) = slot.as_mut() else { return };
        let len = data.len() as u64;
        if copy.buf.len() as u64 + len > copy.limit {
            if let Some(copy) = slot.take() {
                copy.offer.skip();
            }
            return;
        }
        if !copy.held.grow(len) {
            if let Some(copy) = slot.take() {
                copy.offer.drop_copies();
            }
            return;
        }
        copy.buf.extend_from_slice(data);
    }

    fn finish(self) {
        self.offer.deliver(self.buf.freeze(), self.held);
    }
}

/// A request body on its way to main; see the module doc.
pub struct RequestBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    inner: Option<B>,
    timeout: Duration,
    /// Armed the first time the client keeps us waiting.
    sleep: Option<Pin<Box<Sleep>>>,
    copy: Option<Copy>,
    /// The body ended or failed: nothing more to collect or finish.
    done: bool,
    /// Bytes read so far.
    received: u64,
    /// The length the body announced (`Content-Length`), if any.
    declared: Option<u64>,
    /// An HTTP/2 stream: its end must be `END_STREAM`, not a reset (module doc).
    h2: bool,
    /// Told why the body failed, if it does.
    failure: Option<BodyFailure>,
}

impl<B> RequestBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Streams `inner` to main with a stall timeout, and nothing else. `h2`: `inner` is
    /// an HTTP/2 request stream.
    pub fn streamed(inner: B, timeout: Duration, h2: bool) -> Self {
        Self {
            declared: inner.size_hint().exact(),
            inner: Some(inner),
            timeout,
            sleep: None,
            copy: None,
            done: false,
            received: 0,
            h2,
            failure: None,
        }
    }

    /// Records the body's failure in `failure` too.
    pub fn reporting_to(mut self, failure: BodyFailure) -> Self {
        self.failure = Some(failure);
        self
    }

    fn report(&self, err: &ClientBodyError) {
        if let Some(failure) = &self.failure {
            let _ = failure.set(err.summary());
        }
    }

    /// Streams `inner` to main and collects a copy for `offer`'s mirrors, up to
    /// `limit` bytes and within the budget `held` draws from.
    pub fn teed(
        inner: B,
        timeout: Duration,
        h2: bool,
        offer: Offer,
        held: Held,
        limit: u64,
    ) -> Self {
        let hint = inner.size_hint().lower().min(limit);
        let capacity = usize::try_from(hint)
            .unwrap_or(usize::MAX)
            .min(INITIAL_COPY_CAPACITY);
        let mut body = Self::streamed(inner, timeout, h2);
        body.copy = Some(Copy {
            offer,
            buf: BytesMut::with_capacity(capacity),
            held,
            limit,
        });
        body
    }

    fn fail(&mut self) {
        self.done = true;
        if let Some(copy) = self.copy.take() {
            // A body the client did not finish is not mirrored.
            copy.offer.skip();
        }
    }

    fn complete(&mut self) {
        self.done = true;
        if let Some(copy) = self.copy.take() {
            copy.finish();
        }
    }

    /// Why a body that has just returned its last frame did not really end, if so.
    fn unfinished(&self) -> Option<ClientBodyError> {
        let expected = match self.declared {
            Some(length) if length != self.received => "content-length",
            _ if self.h2 && !self.inner.as_ref().is_none_or(Body::is_end_stream) => "END_STREAM",
            _ => return None,
        };
        Some(ClientBodyError::Unfinished {
            received: self.received,
            expected,
        })
    }

    /// Checks the stall timer after the inner body returned `Pending`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<ClientBodyError> {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(ClientBodyError::Timeout(timeout))
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => match this.poll_stall(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(err) => {
                    this.report(&err);
                    this.fail();
                    this.inner = None;
                    Poll::Ready(Some(Err(err)))
                }
            },
            Poll::Ready(None) => match this.unfinished() {
                None => {
                    this.complete();
                    Poll::Ready(None)
                }
                Some(err) => {
                    this.report(&err);
                    this.fail();
                    this.inner = None;
                    Poll::Ready(Some(Err(err)))
                }
            },
            Poll::Ready(Some(Err(err))) => {
                let err = ClientBodyError::Read(err.into());
                this.report(&err);
                this.fail();
                this.inner = None;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + this.timeout);
                }
                match frame.data_ref() {
                    Some(data) => {
                        this.received += data.len() as u64;
                        Copy::push(&mut this.copy, data);
                    }
                    // Trailers end the body.
                    None => this.complete(),
                }
                // hyper stops polling once `is_end_stream` is true: the end is seen here.
                if this.inner.as_ref().is_none_or(Body::is_end_stream) {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for RequestBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    fn drop(&mut self) {
        if self.done || self.copy.is_none() {
            return;
        }
        // Main stopped reading before the end: read the rest for the mirrors.
        let (Some(inner), Some(runtime)) = (
            self.inner.take(),
            tokio::runtime::Handle::try_current().ok(),
        ) else {
            self.fail();
            return;
        };
        let rest = RequestBody {
            inner: Some(inner),
            timeout: self.timeout,
            sleep: None,
            copy: self.copy.take(),
            done: false,
            received: self.received,
            declared: self.declared,
            h2: self.h2,
            // Main no longer reads this body: its failure concerns the mirrors only.
            failure: None,
        };
        self.done = true;
        runtime.spawn(drain(rest));
    }
}

/// Reads what is left of a body; finishing it hands the copy to the mirrors.
async fn drain<B>(mut body: RequestBody<B>)
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    while !body.done {
        match body.frame().await {
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body that yields the given chunks, one frame each.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(
            parts
                .iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn streamed_body_passes_every_byte() {
        let body = RequestBody::streamed(chunks(&["ab", "cd"]), Duration::from_secs(1), false);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
    }

    /// A body of `chunks` that announces `length` and says `end_stream` once empty: an
    /// HTTP/2 stream ended by `END_STREAM` (true) or by a reset hyper reads as an end.
    struct Framed {
        chunks: Chunks,
        length: Option<u64>,
        end_stream: bool,
    }

    impl Body for Framed {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Pin::new(&mut self.chunks).poll_frame(cx)
        }
        fn is_end_stream(&self) -> bool {
            self.end_stream && self.chunks.0.is_empty()
        }
        fn size_hint(&self) -> SizeHint {
            self.length
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    async fn read_all(body: Framed, h2: bool) -> Result<Bytes, ClientBodyError> {
        let body = RequestBody::streamed(body, Duration::from_secs(1), h2);
        body.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_content_length_is_an_error() {
        let framed = |length| Framed {
            chunks: chunks(&["0123456789"]),
            length: Some(length),
            end_stream: false,
        };
        let err = read_all(framed(100), false).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientBodyError::Unfinished {
                    received: 10,
                    expected: "content-length"
                }
            ),
            "{err}"
        );
        assert_eq!(read_all(framed(10), false).await.unwrap(), "0123456789");
    }

    #[tokio::test]
    async fn an_http2_body_ends_only_with_end_stream() {
        let framed = |end_stream| Framed {
            chunks: chunks(&["ab", "cd"]),
            length: None,
            end_stream,
        };
        let err = read_all(framed(false), true).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientBodyError::Unfinished {
                    received: 4,
                    expected: "END_STREAM"
                }
            ),
            "{err}"
        );
        assert_eq!(read_all(framed(true), true).await.unwrap(), "abcd");
        // HTTP/1.1 chunked bodies do not say `is_end_stream` at their end.
        assert_eq!(read_all(framed(false), false).await.unwrap(), "abcd");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_gets_a_timeout_error() {
        let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
        tx.send_data(Bytes::from_static(b"half")).await.unwrap();
        let mut body = RequestBody::streamed(rx, Duration::from_millis(200), false);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "half");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, ClientBodyError::Timeout(_)), "{err}");
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        drop(tx);
    }
}
