//! Body types and the one place a request body is read into memory for mirroring.
//!
//! A request body is read at most once. When it fits in `--max-body-size` it becomes one
//! [`Bytes`] that main and every mirror share (SPEC §5: no copy per mirror). When it does
//! not, the part already read is replayed to main followed by the rest of the stream,
//! and the request is not mirrored.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};

/// Error type for body and stream plumbing that is only logged.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response and upstream request.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body from one buffer.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `text/plain` response, used for every answer the proxy writes itself.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> http::Response<BoxBody> {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Wraps any body into [`BoxBody`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The result of reading a request body up to a limit.
pub enum Buffered<B> {
    /// The whole body, and its trailers if it had any.
    Complete(Bytes, Option<HeaderMap>),
    /// The body was larger than the limit: what was read, then the unread rest.
    TooLarge(Replay<B>),
}

/// Reads `body` into one buffer if it is at most `limit` bytes long.
///
/// # Errors
/// The client's body stream failed (reset, malformed chunking, …).
pub async fn read_up_to<B>(mut body: B, limit: u64) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len: u64 = 0;
    let mut seen = VecDeque::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                len += data.len() as u64;
                if len > limit {
                    // Give main what was read, in order, then the rest of the stream.
                    if let Some(f) = first.take() {
                        seen.push_back(Frame::data(f));
                    }
                    if !rest.is_empty() {
                        seen.push_back(Frame::data(rest.split().freeze()));
                    }
                    seen.push_back(Frame::data(data));
                    return Ok(Buffered::TooLarge(Replay::new(seen, Some(body))));
                }
                // Most bodies arrive as one chunk: keep it without copying.
                match first.take() {
                    None if rest.is_empty() => first = Some(data),
                    None => rest.extend_from_slice(&data),
                    Some(f) => {
                        rest.reserve(body.size_hint().lower() as usize + f.len() + data.len());
                        rest.extend_from_slice(&f);
                        rest.extend_from_slice(&data);
                    }
                }
            }
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                return Ok(Buffered::Complete(join(first, rest), trailers));
            }
        }
    }
    Ok(Buffered::Complete(join(first, rest), None))
}

fn join(first: Option<Bytes>, rest: BytesMut) -> Bytes {
    first.unwrap_or_else(|| rest.freeze())
}

/// A body that yields already-read frames, then the rest of a stream (if any).
pub struct Replay<B> {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<B>,
}

impl<B> Replay<B> {
    pub fn new(frames: VecDeque<Frame<Bytes>>, rest: Option<B>) -> Self {
        Self { frames, rest }
    }

    /// A complete body from one buffer and optional trailers.
    pub fn complete(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let mut frames = VecDeque::with_capacity(2);
        if !data.is_empty() {
            frames.push_back(Frame::data(data));
        }
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Self::new(frames, None)
    }
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let mut hint = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        // Upper first: `set_lower` asserts lower <= upper.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + buffered);
        }
        hint.set_lower(hint.lower() + buffered);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A body that yields the given chunks one frame each.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(
                self.0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))),
            )
        }
    }

    fn chunks(parts: &[&'static str]) -> Chunks {
        Chunks(parts.iter().copied().collect())
    }

    #[tokio::test]
    async fn small_body_is_one_buffer() {
        match read_up_to(chunks(&["hello ", "world"]), 100).await.unwrap() {
            Buffered::Complete(b, None) => assert_eq!(b, "hello world"),
            _ => panic!("expected a complete body"),
        }
    }

    #[tokio::test]
    async fn body_exactly_at_the_limit_is_complete() {
        match read_up_to(chunks(&["12345", "67890"]), 10).await.unwrap() {
            Buffered::Complete(b, None) => assert_eq!(b, "1234567890"),
            _ => panic!("expected a complete body"),
        }
    }

    #[tokio::test]
    async fn single_chunk_is_not_copied() {
        let data = Bytes::from_static(b"0123456789");
        let ptr = data.as_ptr();
        match read_up_to(Full::new(data), 10).await.unwrap() {
            Buffered::Complete(b, _) => assert_eq!(b.as_ptr(), ptr),
            _ => panic!("expected a complete body"),
        }
    }

    #[tokio::test]
    async fn too_large_body_replays_everything_in_order() {
        let body = chunks(&["aaaa", "bbbb", "cccc", "dddd"]);
        let Buffered::TooLarge(replay) = read_up_to(body, 6).await.unwrap() else {
            panic!("expected too large");
        };
        let all = replay.collect().await.unwrap().to_bytes();
        assert_eq!(all, "aaaabbbbccccdddd");
    }

    #[tokio::test]
    async fn complete_replay_has_exact_size() {
        let r: Replay<Chunks> = Replay::complete(Bytes::from_static(b"abc"), None);
        assert_eq!(r.size_hint().exact(), Some(3));
    }
}
