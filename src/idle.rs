//! The idle-connection watch: closes client connections that stay idle for
//! `--header-read-timeout` where hyper does not. It works around two gaps, and can go
//! when they are closed upstream:
//! - hyper-util's HTTP/1-or-HTTP/2 detection (`server::conn::auto`) reads the first bytes
//!   of a connection with no timeout, so a connection that sends nothing is never
//!   closed (hyper's `header_read_timeout` starts only once HTTP/1 is chosen);
//! - hyper has no idle timeout for HTTP/2 server connections (hyperium/hyper#1628): it
//!   only pings, so a client answering pings keeps a connection, and a file
//!   descriptor, for ever.
//!
//! Idle HTTP/1 connections after their first request are left to hyper's own
//! `header_read_timeout`. [`Activity::quiet`] tells the server when a connection being
//! closed may be dropped without waiting for the peer (hyper waits for the peer to
//! acknowledge the PING sent with an HTTP/2 GOAWAY).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Closes connections that stay idle for `--header-read-timeout`, where hyper does not:
/// a connection that has not sent a request head by then (hyper-util's protocol
/// detection waits for bytes for ever), and an HTTP/2 connection with no request in
/// flight for that long (hyper only pings it, so a client answering pings would keep
/// it, and a file descriptor, for ever). Idle HTTP/1 connections after their first
/// request are left to hyper's own `header_read_timeout`.
pub struct Activity {
    /// A request head has arrived.
    started: AtomicBool,
    /// It was HTTP/2: keep watching.
    h2: AtomicBool,
    /// HTTP/2 requests in flight.
    in_flight: AtomicUsize,
    /// Milliseconds from `since` to the end of the last HTTP/2 request.
    last_end: AtomicU64,
    since: Instant,
    close: CancellationToken,
    timeout: Duration,
}

/// One HTTP/2 request in flight, until its response body is done (or dropped).
pub struct H2Request(Arc<Activity>);

/// What the watch does next.
enum Look {
    /// Idle for the timeout: close the connection.
    Close,
    /// Nothing left to watch (HTTP/1 after its first request head).
    Done,
    /// Look again after this long.
    After(Duration),
}

impl Activity {
    /// Starts watching a new connection (a task that ends with the connection).
    pub fn watch(close: CancellationToken, timeout: Duration) -> Arc<Self> {
        let activity = Arc::new(Self {
            started: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            since: Instant::now(),
            close,
            timeout,
        });
        tokio::spawn(activity.clone().run());
        activity
    }

    /// Notes a request; an HTTP/2 one stays counted until the returned guard is dropped.
    pub fn request_started(self: &Arc<Self>, h2: bool) -> Option<H2Request> {
        if h2 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.h2.store(true, Ordering::Release);
        }
        self.started.store(true, Ordering::Release);
        h2.then(|| H2Request(self.clone()))
    }

    /// Nothing is lost by dropping the connection now: no request head has arrived, or
    /// it speaks HTTP/2 and has no request in flight. (An HTTP/1 connection after its
    /// first request head is never quiet here: hyper closes it itself once the response
    /// in flight is written.)
    pub fn quiet(&self) -> bool {
        !self.started.load(Ordering::Acquire)
            || (self.h2.load(Ordering::Acquire) && self.in_flight.load(Ordering::Acquire) == 0)
    }

    fn next_look(&self) -> Look {
        let elapsed = self.since.elapsed();
        let idle = if !self.started.load(Ordering::Acquire) {
            elapsed // no request head yet
        } else if !self.h2.load(Ordering::Acquire) {
            return Look::Done; // HTTP/1: hyper's header_read_timeout from here on
        } else if self.in_flight.load(Ordering::Acquire) > 0 {
            return Look::After(self.timeout);
        } else {
            let last_end = Duration::from_millis(self.last_end.load(Ordering::Acquire));
            elapsed.saturating_sub(last_end)
        };
        match self.timeout.checked_sub(idle) {
            Some(left) if !left.is_zero() => Look::After(left),
            _ => Look::Close,
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            let wait = match self.next_look() {
                Look::Close => {
                    debug!(timeout = ?self.timeout, "closing an idle connection");
                    self.close.cancel();
                    return;
                }
                Look::Done => return,
                Look::After(wait) => wait,
            };
            tokio::select! {
                () = self.close.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl Drop for H2Request {
    fn drop(&mut self) {
        let activity = &self.0;
        let now = u64::try_from(activity.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
