//! The idle-connection watch: closes client connections that stay idle for
//! `--header-read-timeout`: no request head within that time of the connection's start
//! or of the end of its last answer, with nothing in flight. One watch per connection,
//! for HTTP/1 and HTTP/2 alike:
//! - hyper-util's HTTP/1-or-HTTP/2 detection (`server::conn::auto`) reads the first bytes
//!   of a connection with no timeout, so a connection that sends nothing would never be
//!   closed;
//! - hyper has no idle timeout for HTTP/2 server connections (hyperium/hyper#1628): it
//!   only pings, so a client answering pings would keep a connection, and a file
//!   descriptor, for ever;
//! - hyper's own HTTP/1 `header_read_timeout` does the job for HTTP/1, but arms a new
//!   timer for every request head (a boxed sleep registered with tokio's timer wheel,
//!   and one more read before each head): ~1.2k instructions per proxied GET under
//!   callgrind (bench/instructions: 32.06k with it, 30.85k without). Here a request
//!   costs two atomic updates and a clock read, and the watch's one timer is re-armed
//!   only when it fires.
//!
//! [`Activity::quiet`] tells the server when a connection being closed may be dropped
//! without waiting for the peer (hyper waits for the peer to acknowledge the PING sent
//! with an HTTP/2 GOAWAY).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Closes a connection that stays idle for `--header-read-timeout`: no request in
/// flight, and no new request head since the connection started or its last answer
/// ended.
pub struct Activity {
    /// Requests in flight: from their head to the end (or drop) of their answer's body.
    in_flight: AtomicUsize,
    /// Milliseconds from `since` to the end of the last request (0: none yet).
    last_end: AtomicU64,
    since: Instant,
    close: CancellationToken,
    timeout: Duration,
    /// `close` was cancelled (shutdown, or idle here): the connection should close.
    closing: AtomicBool,
    /// The connection's task, woken when `closing` is set.
    connection: AtomicWaker,
}

/// One request in flight, until its answer's body is done with (its end or its drop).
pub struct InFlight(Arc<Activity>);

/// An answer's body that keeps its request [`InFlight`] until hyper is done with it: a
/// plain wrapper, not one more box per request.
pub struct Tracked<B> {
    body: B,
    _request: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(body: B, request: InFlight) -> Self {
        Self {
            body,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Activity {
    /// Starts watching a new connection (a task that ends with the connection).
    pub fn watch(close: CancellationToken, timeout: Duration) -> Arc<Self> {
        let activity = Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            since: Instant::now(),
            close,
            timeout,
            closing: AtomicBool::new(false),
            connection: AtomicWaker::new(),
        });
        tokio::spawn(activity.clone().run());
        activity
    }

    /// Notes a request head; the request stays in flight until the guard is dropped.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Nothing is lost by dropping the connection now: no request is in flight (a
    /// request head that is still arriving has not been accepted).
    pub fn quiet(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// How long until the connection has been idle for the timeout; `None` once it has.
    fn left(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(self.timeout);
        }
        let last_end = Duration::from_millis(self.last_end.load(Ordering::Acquire));
        let idle = self.since.elapsed().saturating_sub(last_end);
        self.timeout
            .checked_sub(idle)
            .filter(|left| !left.is_zero())
    }

    /// Runs `connection` until it ends (`Some` of its output) or the connection is to
    /// close (`None`). Polling the cancellation token's own future on every wake of the
    /// connection locked a mutex each time (~0.3k instructions per proxied request
    /// under callgrind); this is an atomic load and a waker comparison.
    pub fn unless_closing<'a, F>(&'a self, connection: Pin<&'a mut F>) -> UnlessClosing<'a, F> {
        UnlessClosing {
            activity: self,
            connection,
        }
    }

    async fn run(self: Arc<Self>) {
        // One timer, re-armed only when it fires: requests never touch it.
        while let Some(wait) = self.left() {
            tokio::select! {
                () = self.close.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if !self.close.is_cancelled() {
            debug!(timeout = ?self.timeout, "closing an idle connection");
            self.close.cancel();
        }
        self.closing.store(true, Ordering::Release);
        self.connection.wake();
    }
}

/// See [`Activity::unless_closing`].
pub struct UnlessClosing<'a, F> {
    activity: &'a Activity,
    connection: Pin<&'a mut F>,
}

impl<F: Future> Future for UnlessClosing<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let activity = self.activity;
        activity.connection.register(cx.waker());
        // After registering: a `closing` set in between has its wake-up.
        if activity.closing.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.connection.as_mut().poll(cx).map(Some)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
