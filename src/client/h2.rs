//! The HTTP/2 connections of a [`Pool`](super::Pool): `h2c://` targets, and `https://`
//! ones whose server picked `h2` (docs/shadowing.md, "Target URLs").
//!
//! A connection carries many requests at once, one stream each, up to the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2). A request takes the first open
//! connection with a free stream; when none has one, the pool opens another within its
//! share of `--max-connections-per-target`, or the request waits for a stream to end,
//! exactly as an HTTP/1.1 request waits for a connection.
//!
//! Until the server's SETTINGS are known a new connection carries one stream and no
//! other connection is opened: a server refuses streams beyond its limit that were
//! opened before its SETTINGS arrived (`REFUSED_STREAM`), and a burst of requests to a
//! fresh target would otherwise open a connection each. hyper does not say when the
//! SETTINGS arrive, so [`Watched`] reads the limit from the server's connection preface
//! (a SETTINGS frame, RFC 9113 §3.4) as it passes. A later change of the limit is
//! followed as the connection's task sees it; h2 itself never opens more streams than
//! the server allows and queues the rest, so a stale figure only delays.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::{Connection, SendRequest};
use hyper::rt::{Read, ReadBuf, ReadBufCursor, Write};
use hyper_util::rt::TokioExecutor;
use tokio::sync::OwnedSemaphorePermit;
use tracing::debug;

use crate::body::BoxError;

/// The streams a connection may carry before the server's SETTINGS say otherwise (h2's
/// and hyper's default); a figure read back that differs is the server's.
pub(super) const INITIAL_MAX_STREAMS: usize = 100;

/// The largest response header block accepted from an HTTP/2 target: what hyper's
/// HTTP/1 client accepts (its read buffer limit), so a target answers alike in both.
pub(super) const MAX_HEADER_LIST_SIZE: u32 = 8192 + 4096 * 100;

/// The HTTP/2 connections of one pool.
pub(super) struct Conns<B> {
    list: Mutex<Vec<Conn<B>>>,
    /// HTTP/2 connections being opened (see [`Connecting`]).
    connecting: AtomicUsize,
    /// The origin of the connections' idle times.
    epoch: Instant,
}

struct Conn<B> {
    sender: SendRequest<H2Body<B>>,
    state: Arc<State>,
}

/// A request body on its way to an HTTP/2 connection. A type of its own so that hyper's
/// request dispatch is compiled separately for HTTP/2 and HTTP/1.1: shared, its hot
/// functions were no longer inlined into the HTTP/1.1 path, which then cost ~1 % more
/// instructions per request (bench/instructions).
pub(super) struct H2Body<B>(pub B);

impl<B: hyper::body::Body + Unpin> hyper::body::Body for H2Body<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

/// Called when a connection's stream limit becomes known or the connection ends, so
/// that requests waiting for a stream look again.
pub(super) type Wake = Box<dyn Fn() + Send + Sync>;

/// What the pool and the connection's task share about one connection.
pub(super) struct State {
    /// Streams in flight: a request sent and its answer not yet read to the end.
    streams: AtomicUsize,
    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, as the connection last saw it.
    max_streams: AtomicUsize,
    /// Whether `max_streams` is known to be the server's: it changed, or an answer came
    /// (a server sends its SETTINGS first).
    settled: AtomicBool,
    /// When the last stream ended, in milliseconds since [`Conns::epoch`].
    idle_since: AtomicU64,
    wake: Wake,
}

impl State {
    fn new(wake: Wake) -> Self {
        Self {
            streams: AtomicUsize::new(1),
            max_streams: AtomicUsize::new(INITIAL_MAX_STREAMS),
            settled: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            wake,
        }
    }

    /// The server's limit is known: `max`, or h2's default when it sent none.
    fn settle(&self, max: Option<usize>) {
        if let Some(max) = max {
            self.max_streams.store(max, Ordering::Release);
        }
        if !self.settled.swap(true, Ordering::AcqRel) {
            (self.wake)();
        }
    }

    fn capacity(&self) -> usize {
        if self.settled.load(Ordering::Acquire) {
            self.max_streams.load(Ordering::Acquire)
        } else {
            1
        }
    }

    /// An answer arrived on this connection: its server's SETTINGS were read before.
    pub(super) fn answered(&self) {
        if !self.settled.load(Ordering::Acquire) {
            self.settle(None);
        }
    }
}

/// An HTTP/2 connection being opened, counted while it lasts: a request that finds no
/// free stream meanwhile waits for it rather than open one more. Wakes a waiter when
/// done (the connection is then listed, or failed).
pub(super) struct Connecting<'a> {
    count: &'a AtomicUsize,
    wake: &'a (dyn Fn() + Send + Sync),
}

impl<'a> Connecting<'a> {
    pub(super) fn count<B>(conns: &'a Conns<B>, wake: &'a (dyn Fn() + Send + Sync)) -> Self {
        conns.connecting.fetch_add(1, Ordering::AcqRel);
        Self {
            count: &conns.connecting,
            wake,
        }
    }
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        (self.wake)();
    }
}

/// What a look for a stream found.
pub(super) enum Take<B> {
    Stream(Reserved<B>),
    /// No free stream, and a connection whose limit is not known yet: wait for it
    /// rather than open another.
    Warming,
    /// No free stream.
    Full,
}

/// A stream reserved on a connection: the sender to use, the shared state, and how long
/// the connection had been idle when `Some`.
pub(super) struct Reserved<B> {
    pub sender: SendRequest<H2Body<B>>,
    pub state: Arc<State>,
    pub idle: Option<Duration>,
}

impl<B> Conns<B> {
    pub(super) fn new() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
            connecting: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn<B>>> {
        // Only plain list updates happen under this lock; poisoning would be a bug.
        self.list
            .lock()
            .expect("HTTP/2 connection list lock poisoned")
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A free stream on an open connection, reserved; closed connections are dropped
    /// on the way.
    pub(super) fn take(&self) -> Take<B> {
        let mut list = self.lock();
        list.retain(|conn| !conn.sender.is_closed());
        let found = list.iter().find_map(|conn| {
            // Streams only grow under this lock, so the free one seen stays free.
            let streams = conn.state.streams.load(Ordering::Acquire);
            (streams < conn.state.capacity()).then(|| {
                conn.state.streams.fetch_add(1, Ordering::AcqRel);
                let idle = (streams == 0).then(|| {
                    let since = conn.state.idle_since.load(Ordering::Acquire);
                    Duration::from_millis(self.now().saturating_sub(since))
                });
                Reserved {
                    sender: conn.sender.clone(),
                    state: conn.state.clone(),
                    idle,
                }
            })
        });
        match found {
            Some(reserved) => Take::Stream(reserved),
            None if self.connecting.load(Ordering::Acquire) > 0
                || list
                    .iter()
                    .any(|conn| !conn.state.settled.load(Ordering::Acquire)) =>
            {
                Take::Warming
            }
            None => Take::Full,
        }
    }

    /// Adds a new connection whose first stream is already reserved.
    fn add(&self, sender: SendRequest<H2Body<B>>, state: Arc<State>) {
        self.lock().push(Conn { sender, state });
    }

    /// Ends a stream; true when it was the connection's last.
    pub(super) fn release(&self, state: &State) -> bool {
        let last = state.streams.fetch_sub(1, Ordering::AcqRel) == 1;
        if last {
            state.idle_since.store(self.now(), Ordering::Release);
        }
        last
    }

    /// Closes the connections without a stream in flight that have been idle for
    /// `limit` or longer (all of them with `Duration::ZERO`), and the closed ones.
    pub(super) fn close_idle(&self, limit: Duration) {
        let now = self.now();
        let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let closing: Vec<Conn<B>> = {
            let mut list = self.lock();
            let (keep, close) = std::mem::take(&mut *list).into_iter().partition(|conn| {
                let idle = conn.state.streams.load(Ordering::Acquire) == 0
                    && now.saturating_sub(conn.state.idle_since.load(Ordering::Acquire)) >= limit;
                !conn.sender.is_closed() && !idle
            });
            *list = keep;
            close
        };
        // Dropped outside the lock: dropping the last sender ends the connection.
        drop(closing);
    }

    /// Open connections, for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<B> Conns<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The HTTP/2 handshake on `io`; the connection is driven by a task that holds
    /// `permit` until it ends. Returns the sender and its first stream's state.
    pub(super) async fn handshake<T>(
        &self,
        io: T,
        permit: OwnedSemaphorePermit,
        wake: Wake,
    ) -> Result<(SendRequest<H2Body<B>>, Arc<State>), hyper::Error>
    where
        T: Read + Write + Unpin + Send + 'static,
    {
        let state = Arc::new(State::new(wake));
        let io = Watched {
            io,
            preface: Some(Preface::default()),
            state: state.clone(),
        };
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .handshake(io)
            .await?;
        tokio::spawn(drive(connection, state.clone(), permit));
        self.add(sender.clone(), state.clone());
        Ok((sender, state))
    }
}

/// Runs a connection to its end, publishing the server's stream limit as it changes.
async fn drive<T, B>(
    mut connection: Connection<T, H2Body<B>, TokioExecutor>,
    state: Arc<State>,
    permit: OwnedSemaphorePermit,
) where
    T: Read + Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let ended = std::future::poll_fn(|cx| {
        let polled = Pin::new(&mut connection).poll(cx);
        // A limit the server changed after its preface, once h2 has applied it.
        let max = connection.current_max_send_streams();
        if max != INITIAL_MAX_STREAMS && state.settled.load(Ordering::Acquire) {
            state.max_streams.store(max, Ordering::Release);
        }
        polled
    })
    .await;
    if let Err(err) = ended {
        debug!(error = %err, "upstream HTTP/2 connection ended with an error");
    }
    drop(permit);
    // A request waiting for this connection's limit looks again (and opens another).
    (state.wake)();
}

/// A connection's transport, watched until the server's first frame has been read.
struct Watched<T> {
    io: T,
    /// Until the server's first frame is complete.
    preface: Option<Preface>,
    state: Arc<State>,
}

/// The server's first frame, read as it arrives: a SETTINGS frame (RFC 9113 §3.4, §6.5).
#[derive(Default)]
struct Preface {
    /// The 9-byte frame header, then one 6-byte setting at a time.
    buf: [u8; 9],
    len: usize,
    /// Payload bytes still to come, once the header is complete.
    payload: Option<usize>,
    max_streams: Option<usize>,
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS: u8 = 0x4;

impl Preface {
    /// Takes bytes from the server; `Some` with the limit (if the server gave one) once
    /// the first frame is complete, or as soon as it is not a SETTINGS frame.
    fn feed(&mut self, mut bytes: &[u8]) -> Option<Option<usize>> {
        while !bytes.is_empty() {
            let want = if self.payload.is_none() { 9 } else { 6 };
            let n = (want - self.len).min(bytes.len());
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len < want {
                break;
            }
            self.len = 0;
            match self.payload {
                None => {
                    if self.buf[3] != SETTINGS {
                        return Some(None);
                    }
                    let length = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]);
                    self.payload = Some(usize::try_from(length).unwrap_or(usize::MAX));
                }
                Some(ref mut left) => {
                    let id = u16::from_be_bytes([self.buf[0], self.buf[1]]);
                    if id == MAX_CONCURRENT_STREAMS {
                        let value = u32::from_be_bytes([
                            self.buf[2],
                            self.buf[3],
                            self.buf[4],
                            self.buf[5],
                        ]);
                        self.max_streams = Some(usize::try_from(value).unwrap_or(usize::MAX));
                    }
                    *left = left.saturating_sub(6);
                }
            }
            if self.payload.is_some_and(|left| left < 6) {
                return Some(self.max_streams);
            }
        }
        None
    }
}

impl<T: Read + Unpin> Read for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let Some(preface) = &mut this.preface else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        // Read through a buffer of our own to see the bytes, while the preface lasts.
        let mut bytes = [0; 512];
        let room = buf.remaining().min(bytes.len());
        let mut seen = ReadBuf::new(&mut bytes[..room]);
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, seen.unfilled()))?;
        let filled = seen.filled();
        if let Some(max) = preface.feed(filled) {
            this.preface = None;
            this.state.settle(max);
        }
        buf.put_slice(filled);
        Poll::Ready(Ok(()))
    }
}

impl<T: Write + Unpin> Write for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SETTINGS frame with these (id, value) pairs.
    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let len = u32::try_from(pairs.len() * 6).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], SETTINGS, 0, 0, 0, 0, 0];
        for (id, value) in pairs {
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&value.to_be_bytes());
        }
        frame
    }

    #[test]
    fn the_stream_limit_is_read_from_the_preface_in_any_pieces() {
        let frame = settings(&[(0x1, 4096), (MAX_CONCURRENT_STREAMS, 7), (0x4, 65535)]);
        for piece in 1..=frame.len() {
            let mut preface = Preface::default();
            let mut result = None;
            for (i, chunk) in frame.chunks(piece).enumerate() {
                assert!(result.is_none(), "done before chunk {i}");
                result = preface.feed(chunk);
            }
            assert_eq!(result, Some(Some(7)), "pieces of {piece}");
        }
    }

    #[test]
    fn no_stream_while_a_connection_is_being_opened_means_wait() {
        let conns = Conns::<http_body_util::Empty<bytes::Bytes>>::new();
        assert!(matches!(conns.take(), Take::Full));
        let woken = AtomicUsize::new(0);
        let wake = || {
            woken.fetch_add(1, Ordering::SeqCst);
        };
        let connecting = Connecting::count(&conns, &wake);
        assert!(matches!(conns.take(), Take::Warming));
        drop(connecting);
        assert_eq!(woken.load(Ordering::SeqCst), 1, "a waiter looks again");
        assert!(matches!(conns.take(), Take::Full));
    }

    #[test]
    fn a_preface_without_a_limit_or_not_settings_ends_without_one() {
        let mut preface = Preface::default();
        assert_eq!(preface.feed(&settings(&[(0x4, 65535)])), Some(None));
        let mut empty = Preface::default();
        assert_eq!(empty.feed(&settings(&[])), Some(None));
        // A PING first is a protocol error h2 reports; the watch just ends.
        let mut ping = Preface::default();
        assert_eq!(ping.feed(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]), Some(None));
        let mut partial = Preface::default();
        assert_eq!(
            partial.feed(&settings(&[(MAX_CONCURRENT_STREAMS, 1)])[..12]),
            None
        );
    }
}
