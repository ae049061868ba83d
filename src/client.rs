//! Outbound requests to one target (main or a mirror): keep-alive connections kept in
//! one pool per worker thread. `http://` targets get HTTP/1.1, `h2c://` targets HTTP/2,
//! `https://` targets what the server picks by ALPN; HTTP/2 connections and their
//! streams are in [`h2`], and everything below about HTTP/1.1 is the `http://` path.
//!
//! Built on hyper's connection API rather than hyper-util's `legacy::Client`, which is
//! made for many origins shared by many threads: per request it hashes an (scheme,
//! authority) key under a lock, clones the connector, rewrites the URI and spawns a task
//! that hands the connection back once the response is read. Here a pool serves one
//! origin from one thread, so it is a stack of idle senders, and a connection goes back
//! when its response body ends. That cut the instructions per proxied request by a
//! fifth, with and without mirrors (bench/README.md, "Profile and what each change
//! bought").
//!
//! It keeps what the legacy client did that matters here: a request refused by a pooled
//! connection that closed before the request was written is sent again on a new one;
//! idle connections are closed after [`IDLE_TIMEOUT`]. It adds what Go's client does
//! and hyper-util's does not: a safe request without a body, written on a connection
//! idle for [`STALE_AFTER`] that the target closed without answering, is sent once more;
//! and the connections a pool opens are bounded (`--max-connections-per-target`, split
//! between the worker pools): a request that finds no idle connection while the bound
//! is reached waits for one to come back or to close, inside its caller's timeout.
//! A request an HTTP/2 target did not process (its stream above a `GOAWAY`'s last stream
//! id, or refused: RFC 9113 §8.7) is sent once more on a new connection when its body
//! can be had again ([`Resend`]).
//!
//! hyper-util's newer `client::pool::cache` was measured against this pool on the same
//! load (`bench/pool-compare`): ~600 instructions per request cheaper (under 2 % of a
//! proxied request) but without the bound, idle timeout or resend above, which would
//! have to be rebuilt around it; bench/README.md has the figures.
//!
//! A mirror's copy to an `http://` target that needs only the answer's status does
//! without hyper ([`raw`], [`Pool::send_raw`]): its connections are this pool's too, in
//! a second idle list under the same bound, idle timeout and resend rules; at the bound
//! an idle connection of the other kind is closed to make room.
//!
//! Answers are framed as RFC 9112 §6.3 says: one that carries both `Transfer-Encoding`
//! and `Content-Length` loses its `Content-Length` (hyper reads the body by the
//! former but leaves both headers in place), and its connection is not reused.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::debug;

use crate::body::BoxError;
use crate::target_url::{TargetUrl, Transport};

mod h2;
pub mod raw;

/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle time after which a target may have closed a connection (keep-alive timeouts are
/// seconds: gunicorn 2 s, Node.js and Apache 5 s), so a safe request sent on it is kept
/// for a second try. Below this no copy is made (the common case under load).
pub const STALE_AFTER: Duration = Duration::from_secs(1);

/// Why a request to a target failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// hyper gave the request back unwritten (`TrySendError::take_message`): its
    /// connection closed before a byte of it went out, and it was not sent again here.
    #[error(transparent)]
    Unsent(hyper::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// A copy written and read without hyper ([`raw`]).
    #[error(transparent)]
    Raw(raw::Failure),
}

impl Error {
    /// Whether the request certainly never reached the target: no connection could be
    /// made (refused, unreachable, TLS handshake failed), or hyper gave the request back
    /// unwritten. Any other error (a reset, an end of stream or a timeout once the
    /// request was handed to the connection, `is_canceled` without the request given
    /// back included) means the target may have received it.
    pub fn never_sent(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Unsent(_) => true,
            Self::Raw(failure) => failure.unsent(),
            Self::Http(_) => false,
        }
    }

    /// The error of a `try_send_request` that is given up: `unsent` when hyper gave the
    /// request back.
    fn given_up(err: hyper::Error, unsent: bool) -> Self {
        if unsent {
            Self::Unsent(err)
        } else {
            Self::Http(err)
        }
    }
}

/// Whether `err` (or one of its causes) is this process running out of file descriptors
/// (`EMFILE`, or `ENFILE` for the whole system): a connect error that says nothing about
/// the target.
pub fn is_fd_exhaustion(err: &(dyn std::error::Error + 'static)) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(EMFILE | ENFILE)) {
                return true;
            }
            // `io::Error::source` skips the error it wraps; look at that one too.
            if io.get_ref().is_some_and(|inner| is_fd_exhaustion(inner)) {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

/// `error: cause: cause`, since hyper's and the connector's top-level messages are terse.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Keep-alive connections to one target, for the worker thread that owns the pool.
pub struct Pool<B> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    /// `scheme://authority`, what the connector dials.
    origin: Uri,
    transport: Transport,
    connector: HttpsConnector<HttpConnector>,
    /// HTTP/2 connections, for `h2c://` and `https://` targets.
    h2: Option<h2::Conns<B>>,
    /// What the last connection to an `https://` target speaks: [`NEGOTIATED_H1`],
    /// [`NEGOTIATED_H2`] or 0 before the first.
    negotiated: AtomicU8,
    /// Idle connections, the most recently used last; at most `max_idle`.
    idle: Mutex<Vec<Idle<SendRequest<B>>>>,
    /// Idle connections of the copies written without hyper ([`raw`]), the same way.
    raw_idle: Mutex<Vec<Idle<raw::Conn>>>,
    /// One permit per open connection (being opened, busy or idle), held by the task
    /// that drives the connection: this pool's share of `--max-connections-per-target`.
    connections: Arc<Semaphore>,
    max_idle: usize,
    /// Wakes a request waiting for a connection when one goes back to `idle`.
    returned: Notify,
    /// Requests waiting for a connection right now.
    waiting: AtomicUsize,
    /// Set by [`Pool::close`]: no connection is kept idle unless a request waits for it.
    closed: AtomicBool,
    /// [`IDLE_TIMEOUT`] and [`STALE_AFTER`], shorter in tests.
    idle_timeout: Duration,
    stale_after: Duration,
    reaper_started: AtomicBool,
    /// Cancelled when the pool is dropped, so the reaper ends with it.
    dropped: CancellationToken,
}

impl<B> Drop for Inner<B> {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// What a request that found no connection waits for.
enum Wait {
    /// A connection to come back or close (then it opens one).
    Full,
    /// A new HTTP/2 connection's stream limit to become known.
    Warming,
}

const NEGOTIATED_H1: u8 = 1;
const NEGOTIATED_H2: u8 = 2;

/// Where a request's connection comes from.
enum Checkout<B: Send + 'static> {
    /// An idle connection, and how long it was idle.
    Idle(SendRequest<B>, Duration),
    /// A free stream on an HTTP/2 connection, and how long that was idle if it was.
    Stream(H2Stream<B>, Option<Duration>),
    /// Room for a new connection.
    New(OwnedSemaphorePermit),
    /// An idle connection for copies written without hyper, and how long it was idle.
    Raw(raw::Conn, Duration),
}

/// A connection just opened, with the HTTP/2 one's first stream reserved.
enum Connected<B: Send + 'static> {
    H1(SendRequest<B>),
    H2(H2Stream<B>),
}

/// One try of an HTTP/2 exchange: done, or to be tried again with this request (and
/// whether it may still be sent once more after that).
enum Attempt<B: Send + 'static> {
    Done(Result<Response<Pooled<B>>, Error>),
    Again(Request<B>, bool),
}

/// A stream reserved on an HTTP/2 connection: the sender to use, and the reservation,
/// given back when dropped (the answer was read, or dropped, or the request failed).
struct H2Stream<B: Send + 'static> {
    sender: http2::SendRequest<h2::H2Body<B>>,
    guard: StreamGuard<B>,
}

struct StreamGuard<B: Send + 'static> {
    state: Arc<h2::State>,
    pool: Arc<Inner<B>>,
}

impl<B: Send + 'static> Drop for StreamGuard<B> {
    fn drop(&mut self) {
        let Some(conns) = &self.pool.h2 else { return };
        let last = conns.release(&self.state);
        let waiting = self.pool.waiting.load(Ordering::Acquire) > 0;
        if last && !waiting && self.pool.closed.load(Ordering::Acquire) {
            conns.close_idle(Duration::ZERO);
        }
        // Only a waiting request needs waking (the common case has none).
        self.pool.wake_waiter();
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// One pool per worker thread, picked with [`crate::workers::pick`]: a request's
/// upstream connections then live on the request's own thread. `max_connections` (the
/// bound for the target) is split between them, at least one each.
pub fn per_worker<B>(
    target: &TargetUrl,
    tls: &Arc<rustls::ClientConfig>,
    workers: usize,
    max_connections: usize,
) -> Box<[Pool<B>]> {
    let workers = workers.max(1);
    (0..workers)
        .map(|index| Pool::new(target, tls, share(max_connections, workers, index)))
        .collect()
}

/// Connections to a target, `TCP_NODELAY` set. TLS to an `https://` target offers ALPN
/// `h2` and `http/1.1` (RFC 7301); without ALPN the server speaks HTTP/1.1.
fn connector(
    tls: &Arc<rustls::ClientConfig>,
    transport: Transport,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false); // the TLS layer handles https://
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(rustls::ClientConfig::clone(tls))
        .https_or_http();
    match transport {
        Transport::Https => builder.enable_all_versions().wrap_connector(http),
        // A file:// or NATS mirror never opens a pool (src/record.rs, src/nats.rs).
        Transport::Http | Transport::H2c | Transport::File | Transport::Nats => {
            builder.enable_http1().wrap_connector(http)
        }
    }
}

/// Worker `index`'s part of `total` connections: an even split, the remainder to the
/// first workers, at least one.
fn share(total: usize, workers: usize, index: usize) -> usize {
    let extra = usize::from(index < total % workers);
    (total / workers + extra).max(1)
}

impl<B> Pool<B> {
    /// A pool for `target` that opens at most `max_connections` connections, empty
    /// until the first request.
    pub fn new(
        target: &TargetUrl,
        tls: &Arc<rustls::ClientConfig>,
        max_connections: usize,
    ) -> Self {
        Self::with_timeouts(target, tls, max_connections, IDLE_TIMEOUT, STALE_AFTER)
    }

    fn with_timeouts(
        target: &TargetUrl,
        tls: &Arc<rustls::ClientConfig>,
        max_connections: usize,
        idle_timeout: Duration,
        stale_after: Duration,
    ) -> Self {
        let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let transport = target.transport();
        let connector = connector(tls, transport);
        let h2 = (transport != Transport::Http).then(h2::Conns::new);
        Self {
            inner: Arc::new(Inner {
                origin: target.origin(),
                transport,
                connector,
                h2,
                negotiated: AtomicU8::new(0),
                idle: Mutex::new(Vec::new()),
                raw_idle: Mutex::new(Vec::new()),
                connections: Arc::new(Semaphore::new(max_connections)),
                max_idle: max_connections,
                returned: Notify::new(),
                waiting: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                idle_timeout,
                stale_after,
                reaper_started: AtomicBool::new(false),
                dropped: CancellationToken::new(),
            }),
        }
    }
}

impl<B> Pool<B> {
    /// Closes the idle connections now (the target was removed), and from now on
    /// every connection that is done, unless a request is waiting for one. Requests
    /// still go out.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.inner.lock());
        drop(idle);
        let idle = std::mem::take(&mut *lock(&self.inner.raw_idle));
        drop(idle);
        if let Some(conns) = &self.inner.h2 {
            conns.close_idle(Duration::ZERO);
        }
    }

    /// The protocol spoken to the target: `http/1.1`, `h2c`, or for `https://` what the
    /// server picked on the latest connection (`h2` or `http/1.1`), `None` before one.
    pub fn protocol(&self) -> Option<&'static str> {
        match self.inner.transport {
            Transport::Http => Some("http/1.1"),
            Transport::H2c => Some("h2c"),
            Transport::File => Some("file"),
            Transport::Nats => Some("nats"),
            Transport::Https => match self.inner.negotiated.load(Ordering::Relaxed) {
                NEGOTIATED_H1 => Some("http/1.1"),
                NEGOTIATED_H2 => Some("h2"),
                _ => None,
            },
        }
    }
}

/// Counts a request waiting for a connection, for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<B> Pool<B>
where
    B: Body + Default + Resend + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one.
    /// To an HTTP/2 target it goes with `Host` as its `:authority` (RFC 9113 §8.3.1).
    ///
    /// # Errors
    /// The target cannot be reached, or the exchange failed.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn copies its arguments into a second slot of its future (rust-lang/rust#62958)"
    )]
    pub fn send(
        &self,
        mut request: Request<B>,
    ) -> impl Future<Output = Result<Response<Pooled<B>>, Error>> + Send + '_ {
        async move {
            let mut may_resend = true;
            loop {
                // A resend goes on a new connection: the other idle ones are likely as stale.
                let checkout = if may_resend {
                    self.checkout(false).await
                } else {
                    Checkout::New(self.room().await)
                };
                let stream = match checkout {
                    Checkout::Idle(sender, idle) => Err((sender, Some(idle))),
                    Checkout::Stream(stream, idle) => Ok((stream, idle, true)),
                    // Boxed: connecting holds the TLS state, which would otherwise make this
                    // future (and every future awaiting it) ~2.4 KB larger, moved on every spawn.
                    Checkout::New(permit) => match Box::pin(self.connect(permit)).await? {
                        Connected::H1(sender) => Err((sender, None)),
                        Connected::H2(stream) => Ok((stream, None, false)),
                    },
                    // Not asked for here (`checkout(false)`).
                    Checkout::Raw(..) => continue,
                };
                let (mut sender, idle) = match stream {
                    Err(h1) => h1,
                    // Boxed, so that the HTTP/1.1 path's future (moved on every spawn) does
                    // not grow by the HTTP/2 exchange's state.
                    Ok((stream, idle, pooled)) => {
                        let exchange = self.exchange_h2(stream, request, idle, pooled, may_resend);
                        match Box::pin(exchange).await {
                            Attempt::Done(result) => return result,
                            Attempt::Again(again, resend) => {
                                (request, may_resend) = (again, resend);
                                continue;
                            }
                        }
                    }
                };
                // A target closes a connection idle for its keep-alive timeout whenever it
                // likes; a request written at that moment fails without a (complete) answer.
                // A safe request without a body may be retried (RFC 9110 §9.2.2), so one sent
                // on a connection idle for a while is kept, to go once more on a new
                // connection. hyper does not tell "no byte came back" from "part of a head
                // came back", so the latter is resent too; for a safe method that is allowed.
                let resend = match idle {
                    Some(idle) if may_resend && idle >= self.inner.stale_after => replica(&request),
                    _ => None,
                };
                match sender.try_send_request(request).await {
                    Ok(mut response) => {
                        // After `101` the connection belongs to the upgraded stream; after an
                        // answer framed two ways (a smuggling or splitting attempt, RFC 9112
                        // §6.3) it is not trusted with another request.
                        let conflicting = remove_conflicting_length(response.headers_mut());
                        let reuse = response.status() != StatusCode::SWITCHING_PROTOCOLS;
                        let slot =
                            (reuse && !conflicting).then(|| Slot::H1(sender, self.inner.clone()));
                        return Ok(response.map(|body| Pooled { body, slot }));
                    }
                    Err(mut err) => match (err.take_message(), resend) {
                        // The pooled connection closed before a byte of the request was
                        // written: retry on another one, nothing reached the target.
                        (Some(unsent), _) if idle.is_some() => request = unsent,
                        (None, Some(again)) if closed_without_answer(err.error()) => {
                            debug!(error = %err.error(), "idle connection closed by the target: request sent again");
                            may_resend = false;
                            request = again;
                        }
                        (unsent, _) => {
                            return Err(Error::given_up(err.into_error(), unsent.is_some()));
                        }
                    },
                }
            }
        }
    }

    /// An idle connection (for a copy written without hyper with `raw`), else room for
    /// a new one; waits for either when every connection the pool may open is busy.
    async fn checkout(&self, raw: bool) -> Checkout<B> {
        let mut woken = false;
        loop {
            // The common case first, without registering as a waiter.
            if let Ok(found) = self.take_or_make_room(raw) {
                if woken {
                    self.pass_on(&found);
                }
                return found;
            }
            // Counted and registered, then looked again: a connection returned after the
            // look sees the count (through the idle list's lock) and wakes us.
            let _waiting = Waiting::count(&self.inner.waiting);
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            // While a new HTTP/2 connection has yet to say how many streams it takes,
            // no other is opened (see `h2`): only a wake-up is waited for.
            let may_open = match self.take_or_make_room(raw) {
                Ok(found) => return found,
                Err(wait) => matches!(wait, Wait::Full),
            };
            tokio::select! {
                () = returned => {}
                permit = self.inner.connections.clone().acquire_owned(), if may_open => {
                    return Checkout::New(permit.expect("the semaphore is never closed"));
                }
            }
            woken = true;
        }
    }

    /// One wake-up may free many HTTP/2 streams (a connection's limit became known): a
    /// woken request that got one wakes the next waiter to look too.
    fn pass_on(&self, found: &Checkout<B>) {
        if matches!(found, Checkout::Stream(..)) && self.inner.waiting.load(Ordering::Acquire) > 0 {
            self.inner.returned.notify_one();
        }
    }

    /// One try of `request` on an HTTP/2 stream: `idle` is how long its connection was
    /// idle, `pooled` whether the connection was open before this request.
    async fn exchange_h2(
        &self,
        stream: H2Stream<B>,
        mut request: Request<B>,
        idle: Option<Duration>,
        pooled: bool,
        may_resend: bool,
    ) -> Attempt<B> {
        let H2Stream { mut sender, guard } = stream;
        // As for HTTP/1.1 above: a safe request on a connection idle for a while is kept
        // to go once more if the target closed that connection under it. Any request
        // whose body can be had again is kept too: the target may refuse its stream
        // unprocessed (`GOAWAY`, `REFUSED_STREAM`), and hyper does not give it back then.
        let stale = matches!(idle, Some(idle) if idle >= self.inner.stale_after);
        let safe = stale && replica(&request).is_some();
        let resend = if may_resend {
            unprocessed_copy(&request)
        } else {
            None
        };
        self.h2_form(&mut request);
        match sender.try_send_request(request.map(h2::H2Body)).await {
            Ok(response) => {
                guard.state.answered();
                let slot = Some(Slot::H2(guard));
                Attempt::Done(Ok(response.map(|body| Pooled { body, slot })))
            }
            Err(mut err) => match (err.take_message(), resend) {
                // The connection closed before the request went out: nothing reached the
                // target, another connection takes it.
                (Some(unsent), _) if pooled => {
                    Attempt::Again(h1_form(unsent.map(|b| b.0)), may_resend)
                }
                // RFC 9113 §8.7: a stream above a GOAWAY's last stream id, or refused,
                // was not processed and may be sent again: once, on a new connection.
                (None, Some(again)) if unprocessed(err.error()) => {
                    debug!(error = %err.error(), "HTTP/2 stream not processed by the target: request sent again");
                    Attempt::Again(again, false)
                }
                (None, Some(again)) if safe && closed_without_answer(err.error()) => {
                    debug!(error = %err.error(), "idle HTTP/2 connection closed by the target: request sent again");
                    Attempt::Again(again, false)
                }
                (unsent, _) => {
                    Attempt::Done(Err(Error::given_up(err.into_error(), unsent.is_some())))
                }
            },
        }
    }

    /// Rewrites a request for HTTP/2: the URI becomes absolute with `Host` (as the
    /// proxy set it: the target's, the client's with `--preserve-host`, or the `host`
    /// option's) as its authority, which hyper sends as `:authority`, and the headers
    /// HTTP/2 has no place for go (RFC 9113 §8.2.2; an upgrade cannot happen here).
    fn h2_form(&self, request: &mut Request<B>) {
        let headers = request.headers_mut();
        let authority = headers
            .remove(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok());
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
        *request.version_mut() = Version::HTTP_2;
        let uri = request.uri();
        let authority = match (authority, uri.authority()) {
            (Some(authority), _) => authority,
            // Sent once already: the URI carries it.
            (None, Some(_)) => return,
            (None, None) => self.inner.origin.authority().cloned().unwrap_or_else(|| {
                Authority::from_static("localhost") // the origin always has one
            }),
        };
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = self.inner.origin.scheme().cloned();
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path each valid: the parts make a URI.
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    }

    /// A free HTTP/2 stream or an idle connection (with `raw`, one for copies written
    /// without hyper), else room for a new one if the bound allows, without waiting;
    /// else what to wait for.
    fn take_or_make_room(&self, raw: bool) -> Result<Checkout<B>, Wait> {
        let mut warming = false;
        if raw {
            if let Some((conn, idle)) = self.inner.checkout_raw() {
                return Ok(Checkout::Raw(conn, idle));
            }
        } else if let Some(conns) = &self.inner.h2 {
            match conns.take() {
                h2::Take::Stream(reserved) => {
                    let stream = H2Stream {
                        sender: reserved.sender,
                        guard: StreamGuard {
                            state: reserved.state,
                            pool: self.inner.clone(),
                        },
                    };
                    return Ok(Checkout::Stream(stream, reserved.idle));
                }
                h2::Take::Warming => warming = true,
                h2::Take::Full => {}
            }
        }
        if !raw {
            if let Some((sender, idle)) = self.inner.checkout() {
                return Ok(Checkout::Idle(sender, idle));
            }
        }
        if warming {
            return Err(Wait::Warming);
        }
        if let Ok(permit) = self.inner.connections.clone().try_acquire_owned() {
            return Ok(Checkout::New(permit));
        }
        // At the bound, an idle connection of the other kind is closed to make room: a
        // raw one gives its permit back at once, hyper's when its task sees it dropped
        // (which wakes the wait for a permit).
        if self.inner.evict_other(raw) {
            if let Ok(permit) = self.inner.connections.clone().try_acquire_owned() {
                return Ok(Checkout::New(permit));
            }
        }
        Err(Wait::Full)
    }

    /// Room for a new connection, waiting for one to close when the bound is reached.
    async fn room(&self) -> OwnedSemaphorePermit {
        self.inner
            .connections
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Opens a connection; `permit` is held until it closes.
    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<Connected<B>, Error> {
        // Counted before the first await, so a request on this thread that comes next
        // sees it: an HTTP/2 connection is expected (h2c://, or an https:// target that
        // picked h2 before).
        let wake = || self.inner.wake_waiter();
        let expect_h2 = match self.inner.transport {
            Transport::Http | Transport::File | Transport::Nats => false,
            Transport::H2c => true,
            Transport::Https => self.inner.negotiated.load(Ordering::Relaxed) == NEGOTIATED_H2,
        };
        let _connecting = match (&self.inner.h2, expect_h2) {
            (Some(conns), true) => Some(h2::Connecting::count(conns, &wake)),
            _ => None,
        };
        let io = self.dial().await?;
        let h2 = match self.inner.transport {
            Transport::Http | Transport::File | Transport::Nats => false,
            Transport::H2c => true,
            Transport::Https => {
                let h2 = io.connected().is_negotiated_h2();
                let negotiated = if h2 { NEGOTIATED_H2 } else { NEGOTIATED_H1 };
                self.inner.negotiated.store(negotiated, Ordering::Relaxed);
                h2
            }
        };
        if let (true, Some(conns)) = (h2, &self.inner.h2) {
            let pool = Arc::downgrade(&self.inner);
            let wake = Box::new(move || {
                if let Some(pool) = pool.upgrade() {
                    pool.wake_waiter();
                }
            });
            let (sender, state) = conns.handshake(io, permit, wake).await?;
            self.start_reaper();
            let guard = StreamGuard {
                state,
                pool: self.inner.clone(),
            };
            return Ok(Connected::H2(H2Stream { sender, guard }));
        }
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            let _open = permit;
            if let Err(err) = connection.with_upgrades().await {
                debug!(error = %err, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(Connected::H1(sender))
    }

    /// A new connection to the target (TLS set up for `https://`).
    async fn dial(&self) -> Result<MaybeHttpsStream<TokioIo<TcpStream>>, Error> {
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Error::Connect)?;
        connector
            .call(self.inner.origin.clone())
            .await
            .map_err(Error::Connect)
    }

    /// Opens a connection for copies written without hyper; `permit` is held until it
    /// closes.
    async fn connect_raw(&self, permit: OwnedSemaphorePermit) -> Result<raw::Conn, Error> {
        match self.dial().await? {
            MaybeHttpsStream::Http(io) => {
                self.start_reaper();
                Ok(raw::Conn::new(io.into_inner(), permit))
            }
            // Only `http://` targets take raw copies (src/mirror.rs).
            MaybeHttpsStream::Https(_) => Err(Error::Connect("not an http:// target".into())),
        }
    }

    /// Sends a copy written without hyper ([`raw`]) on an idle connection or a new one,
    /// and reads its answer to the end: its status. The same resend rules as [`send`].
    ///
    /// # Errors
    /// The target cannot be reached, or the exchange failed.
    pub async fn send_raw(&self, copy: &raw::Copy<'_>) -> Result<StatusCode, Error> {
        let mut may_resend = true;
        loop {
            let checkout = if may_resend {
                self.checkout(true).await
            } else {
                Checkout::New(self.room().await)
            };
            let (mut conn, idle) = match checkout {
                Checkout::Raw(conn, idle) => (conn, Some(idle)),
                Checkout::New(permit) => (Box::pin(self.connect_raw(permit)).await?, None),
                // Not asked for here (`checkout(true)`).
                Checkout::Idle(..) | Checkout::Stream(..) => continue,
            };
            let failure = match conn.exchange(copy).await {
                Ok(answer) => {
                    if answer.reuse {
                        self.inner.put_raw(conn);
                    }
                    return Ok(answer.status);
                }
                Err(failure) => failure,
            };
            // As in `send`: unsent on a pooled connection goes on another; a replayable
            // copy on a connection idle for a while that closed without answering goes
            // once more, on a new one.
            let stale = idle.is_some_and(|idle| idle >= self.inner.stale_after);
            if failure.unsent() && idle.is_some() {
                continue;
            }
            if may_resend && stale && copy.replayable() && failure.closed_without_answer() {
                debug!(error = %failure, "idle connection closed by the target: request sent again");
                may_resend = false;
                continue;
            }
            return Err(Error::Raw(failure));
        }
    }

    /// Closes connections idle for longer than the idle timeout; runs on the pool's
    /// worker thread while the pool exists.
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        let period = self.inner.idle_timeout / 4;
        let dropped = self.inner.dropped.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = dropped.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(pool) = pool.upgrade() else { break };
                let limit = pool.idle_timeout;
                pool.lock()
                    .retain(|idle| idle.since.elapsed() < limit && !idle.conn.is_closed());
                lock(&pool.raw_idle).retain(|idle| idle.since.elapsed() < limit);
                if let Some(conns) = &pool.h2 {
                    conns.close_idle(limit);
                }
            }
        });
    }
}

impl<B> Inner<B> {
    /// Wakes one request waiting for a connection or stream, if any waits.
    fn wake_waiter(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.returned.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<SendRequest<B>>>> {
        lock(&self.idle)
    }

    /// The most recently used idle raw connection that is still usable, and how long
    /// it has been idle.
    fn checkout_raw(&self) -> Option<(raw::Conn, Duration)> {
        let mut idle = lock(&self.raw_idle);
        while let Some(mut entry) = idle.pop() {
            let idle_for = entry.since.elapsed();
            if idle_for < self.idle_timeout && entry.conn.is_usable() {
                return Some((entry.conn, idle_for));
            }
        }
        None
    }

    /// Closes the least recently used idle connection of the kind other than `raw`'s;
    /// false when there is none.
    fn evict_other(&self, raw: bool) -> bool {
        match raw {
            true => evict_oldest(&self.idle),
            false => evict_oldest(&self.raw_idle),
        }
    }

    /// The most recently used idle connection that is still open, and how long it
    /// has been idle.
    // Inlined as it was before the pool learnt HTTP/2 (bench/instructions).
    #[inline(always)]
    fn checkout(&self) -> Option<(SendRequest<B>, Duration)> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            let idle_for = entry.since.elapsed();
            if entry.conn.is_ready() && idle_for < self.idle_timeout {
                return Some((entry.conn, idle_for));
            }
        }
        None
    }
}

impl<B: Send + 'static> Inner<B> {
    /// Takes a connection back once its response has been read to the end.
    fn put(self: Arc<Self>, mut sender: SendRequest<B>) {
        if sender.is_ready() {
            self.push_idle(sender);
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the response it just
            // delivered; it is ready as soon as it runs.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    self.push_idle(sender);
                }
            });
        }
    }

    fn push_idle(&self, sender: SendRequest<B>) {
        self.push_idle_to(&self.idle, sender);
    }

    /// Takes a raw connection back once its answer has been read to the end.
    fn put_raw(&self, conn: raw::Conn) {
        self.push_idle_to(&self.raw_idle, conn);
    }

    fn push_idle_to<C>(&self, list: &Mutex<Vec<Idle<C>>>, conn: C) {
        if self.closed.load(Ordering::Acquire) && self.waiting.load(Ordering::Acquire) == 0 {
            return; // dropped: that closes the connection
        }
        let since = Instant::now();
        let evicted = {
            let mut idle = lock(list);
            // Never more than `max_idle` kept: the least recently used one goes.
            let evicted = (idle.len() >= self.max_idle).then(|| idle.remove(0));
            idle.push(Idle { conn, since });
            evicted
        };
        // Dropped outside the lock: that closes its connection.
        drop(evicted);
        // Only a waiting request needs waking (the common case has none).
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.returned.notify_one();
        }
    }
}

fn lock<C>(list: &Mutex<Vec<Idle<C>>>) -> std::sync::MutexGuard<'_, Vec<Idle<C>>> {
    // Only pushes and pops happen under this lock; poisoning would be a bug.
    list.lock().expect("connection pool lock poisoned")
}

/// Closes the least recently used connection of `list`, outside its lock; false when
/// there is none.
fn evict_oldest<C>(list: &Mutex<Vec<Idle<C>>>) -> bool {
    let mut idle = lock(list);
    let evicted = (!idle.is_empty()).then(|| idle.remove(0));
    drop(idle);
    evicted.is_some()
}

/// Undoes [`Pool::h2_form`] for a request that went unsent, in case the next connection
/// (to an `https://` target) speaks HTTP/1.1: `Host` from the URI's authority, an
/// origin-form URI.
fn h1_form<B>(mut request: Request<B>) -> Request<B> {
    if let Some(host) = request
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    let pq = request.uri().path_and_query().cloned();
    *request.uri_mut() = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
    *request.version_mut() = Version::HTTP_11;
    request
}

/// A copy of a safe request without a body (GET, HEAD, OPTIONS, TRACE: RFC 9110
/// §9.2.1), to send again; `None` for any other.
fn replica<B: Body + Default>(request: &Request<B>) -> Option<Request<B>> {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !safe || !request.body().is_end_stream() {
        return None;
    }
    Some(copy_with(request, B::default()))
}

/// A copy of any request whose body can be had again ([`Resend`]), to send once more
/// if the target did not process it; `None` when the body cannot.
fn unprocessed_copy<B: Resend>(request: &Request<B>) -> Option<Request<B>> {
    request.body().again().map(|body| copy_with(request, body))
}

fn copy_with<B>(request: &Request<B>, body: B) -> Request<B> {
    let mut again = Request::new(body);
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    again
}

/// A request body the pool can send a second time, when the target did not process the
/// first (an HTTP/2 stream refused or above a `GOAWAY`'s last stream id).
pub trait Resend: Sized {
    /// The same body again; `None` when it is not held (a stream passed through).
    fn again(&self) -> Option<Self>;
}

/// A mirror's copy or a replayed request: its body is in memory.
impl Resend for http_body_util::Full<Bytes> {
    fn again(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl Resend for http_body_util::Empty<Bytes> {
    fn again(&self) -> Option<Self> {
        Some(Self::new())
    }
}

/// Main's request: its body is streamed from the client and not kept, so only a
/// request without one can be sent again.
impl Resend for crate::body::BoxBody {
    fn again(&self) -> Option<Self> {
        self.is_end_stream().then(Self::default)
    }
}

/// Whether an HTTP/2 exchange failed because the target did not process its stream
/// (RFC 9113 §8.7): the stream was above the last stream id of a `GOAWAY` the target
/// sent (h2 fails only those, and any opened after, with the remote `GOAWAY`), or the
/// target reset it with `REFUSED_STREAM`.
fn unprocessed(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<::h2::Error>() {
            let refused = h2.is_reset() && h2.reason() == Some(::h2::Reason::REFUSED_STREAM);
            return h2.is_remote() && (h2.is_go_away() || refused);
        }
        source = cause.source();
    }
    false
}

/// Removes `Content-Length` from an answer that also carries `Transfer-Encoding`
/// (RFC 9112 §6.3: the latter wins, and an intermediary must drop the former before
/// forwarding). True when there was such a conflict.
fn remove_conflicting_length(headers: &mut HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        && headers.remove(header::CONTENT_LENGTH).is_some()
}

/// The connection ended before any answer: closed (EOF) or reset by the target.
fn closed_without_answer(err: &hyper::Error) -> bool {
    if err.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            return matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted);
        }
        source = cause.source();
    }
    false
}

/// A response body from a pooled connection: the connection goes back to its pool when
/// the body has been read to the end (and is closed if the body is dropped before). An
/// HTTP/2 stream is given back either way (a dropped one is reset, its connection goes on).
pub struct Pooled<B: Send + 'static> {
    body: Incoming,
    slot: Option<Slot<B>>,
}

/// What a response body gives back at its end.
enum Slot<B: Send + 'static> {
    H1(SendRequest<B>, Arc<Inner<B>>),
    H2(StreamGuard<B>),
}

impl<B: Send + 'static> Pooled<B> {
    #[inline(always)]
    fn release(&mut self) {
        match self.slot.take() {
            Some(Slot::H1(sender, pool)) => pool.put(sender),
            Some(Slot::H2(stream)) => drop(stream),
            None => {}
        }
    }
}

impl<B: Send + 'static> Body for Pooled<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Send + 'static> Drop for Pooled<B> {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream()` is true, so the end is also seen here.
        // A body of unknown length dropped after its last frame but before the end was
        // polled is not seen as ended: its connection closes (rare, costs a reconnect).
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod pool_comparison;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);
    /// Connections a test pool may open.
    const LIMIT: usize = 16;

    /// A target that answers each request on a connection with `200 ok` and reports
    /// the connection's index (in accept order) when the pool closes it.
    async fn target() -> (
        TargetUrl,
        tokio::sync::mpsc::UnboundedReceiver<usize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = TargetUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            for index in 0.. {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut head = Vec::new();
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            let _ = closed.send(index);
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            // An answer to HEAD carries no body (RFC 9110 §9.3.2).
                            let len = if head.starts_with(b"HEAD ") {
                                reply.len() - 2
                            } else {
                                reply.len()
                            };
                            head.clear();
                            stream.write_all(&reply[..len]).await.unwrap();
                        }
                    }
                });
            }
        });
        (url, rx, accepted)
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::tls::client_config(None, false).unwrap()
    }

    async fn get(pool: &Pool<Empty<Bytes>>, url: &TargetUrl) -> Bytes {
        let request = Request::builder()
            .uri(url.request_target(None))
            .header(http::header::HOST, url.host_header())
            .body(Empty::new())
            .unwrap();
        let response = pool.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_then_closed_after_the_idle_timeout() {
        let (url, mut closed, accepted) = target().await;
        let pool =
            Pool::with_timeouts(&url, &tls(), LIMIT, Duration::from_millis(200), STALE_AFTER);
        for _ in 0..3 {
            assert_eq!(get(&pool, &url).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // The pool closes the connection once idle for 200 ms.
        let first_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(first_closed, Some(0));
        assert!(pool.inner.lock().is_empty());
        // The next request opens a new connection.
        assert_eq!(get(&pool, &url).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(pool);
        let next_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(
            next_closed,
            Some(1),
            "dropping the pool closes its connections"
        );
    }

    #[tokio::test]
    async fn an_answer_without_a_body_returns_the_connection_unread() {
        let (url, _closed, accepted) = target().await;
        let pool = Pool::new(&url, &tls(), LIMIT);
        for _ in 0..3 {
            // A HEAD answer has no body, whatever its Content-Length says.
            let response = pool.send(request(&url, Method::HEAD)).await.unwrap();
            assert!(response.body().is_end_stream());
            drop(response);
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_the_connection() {
        let (url, mut closed, _) = target().await;
        let pool = Pool::new(&url, &tls(), LIMIT);
        let request = Request::builder()
            .uri(url.request_target(None))
            .header(http::header::HOST, url.host_header())
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = pool.send(request).await.unwrap();
        drop(response);
        let first_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(first_closed, Some(0));
        assert!(pool.inner.lock().is_empty());
    }

    /// A target on its own thread that answers one request per connection with
    /// `200 ok` and closes the connection 10 ms later, without `Connection: close` (a
    /// keep-alive timeout). Counts the requests it read. Stops after 10 s.
    fn closing_target() -> (
        TargetUrl,
        Arc<std::sync::atomic::AtomicUsize>,
        std::sync::mpsc::Receiver<()>,
    ) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = TargetUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let (counted, closed_tx) = (counted.clone(), closed_tx.clone());
                std::thread::spawn(move || {
                    let mut buf = [0; 4096];
                    if stream.read(&mut buf).unwrap_or(0) > 0 {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        let _ = stream.write_all(ok);
                        std::thread::sleep(Duration::from_millis(10));
                        drop(stream);
                        let _ = closed_tx.send(());
                    }
                });
            }
        });
        (url, seen, closed)
    }

    fn request(url: &TargetUrl, method: Method) -> Request<Empty<Bytes>> {
        Request::builder()
            .method(method)
            .uri(url.request_target(None))
            .header(http::header::HOST, url.host_header())
            .body(Empty::new())
            .unwrap()
    }

    /// Blocks this runtime until the [`closing_target`] has closed the last connection
    /// (on loopback the FIN is in our socket once `close` returns): the close arrives
    /// but the connection's task does not run, so the pool still holds the connection
    /// as ready.
    fn wait_for_close(closed: &std::sync::mpsc::Receiver<()>) {
        closed.recv_timeout(WAIT).expect("the target closes");
    }

    /// Sends ten requests to a [`closing_target`], each after its previous connection
    /// was closed by the target, and checks each reached the target exactly once. With
    /// `let_reactor_run`, one turn lets the reactor see the close before the next
    /// request: hyper refuses it unsent. Without, the request is written into the closed
    /// connection and gets no answer.
    async fn ten_requests_across_closes(stale_after: Duration, let_reactor_run: bool) {
        let (url, seen, closed) = closing_target();
        let pool = Pool::with_timeouts(&url, &tls(), LIMIT, IDLE_TIMEOUT, stale_after);
        for i in 0..10 {
            let response = pool.send(request(&url, Method::GET)).await;
            let response = response.unwrap_or_else(|e| panic!("request {i}: {e}"));
            response.into_body().collect().await.unwrap();
            wait_for_close(&closed);
            if let_reactor_run {
                tokio::task::yield_now().await;
            }
        }
        let seen = seen.load(Ordering::SeqCst);
        assert_eq!(seen, 10, "each request reached the target once");
    }

    #[tokio::test]
    async fn a_connection_the_target_closed_is_not_used_even_if_still_pooled() {
        ten_requests_across_closes(STALE_AFTER, true).await;
    }

    #[tokio::test]
    async fn a_safe_request_written_into_an_idle_close_is_sent_once_more() {
        // Any idle time counts as possibly stale here.
        ten_requests_across_closes(Duration::ZERO, false).await;
    }

    /// The second request of a pair goes into a connection the target has closed; its
    /// outcome, and how many requests the target saw.
    async fn second_request_into_a_close(
        stale_after: Duration,
        second: Method,
    ) -> (Result<StatusCode, Error>, usize) {
        let (url, seen, closed) = closing_target();
        let pool = Pool::with_timeouts(&url, &tls(), LIMIT, IDLE_TIMEOUT, stale_after);
        let first = pool.send(request(&url, Method::GET)).await.unwrap();
        first.into_body().collect().await.unwrap();
        wait_for_close(&closed);
        let outcome = pool.send(request(&url, second)).await;
        (outcome.map(|r| r.status()), seen.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn an_unsafe_request_is_never_sent_twice() {
        // A POST may have had effects: it fails, having reached the target at most once.
        let (outcome, seen) = second_request_into_a_close(Duration::ZERO, Method::POST).await;
        assert!(
            matches!(&outcome, Err(Error::Http(e)) if closed_without_answer(e)),
            "{outcome:?}"
        );
        assert_eq!(seen, 1);
    }

    #[tokio::test]
    async fn a_safe_request_on_a_connection_used_just_now_is_not_resent() {
        // Below STALE_AFTER no copy is kept, so there is nothing to resend.
        let stale_after = Duration::from_secs(3600);
        let (outcome, seen) = second_request_into_a_close(stale_after, Method::GET).await;
        assert!(outcome.is_err(), "{outcome:?}");
        assert_eq!(seen, 1);
    }

    #[test]
    fn only_safe_requests_without_a_body_are_replicated() {
        let url = TargetUrl::parse("http://127.0.0.1:1").unwrap();
        let get = request(&url, Method::GET);
        let again = replica(&get).expect("a GET without a body");
        assert_eq!(
            (again.method(), again.uri(), again.headers()),
            (get.method(), get.uri(), get.headers())
        );
        for method in [Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(replica(&request(&url, method)).is_some());
        }
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(
                replica(&request(&url, method.clone())).is_none(),
                "{method}"
            );
        }
        let with_body = Request::get("/").body(http_body_util::Full::new(Bytes::from("x")));
        assert!(replica(&with_body.unwrap()).is_none());
    }

    #[test]
    fn the_bound_is_split_between_workers_at_least_one_each() {
        let shares = |total, workers| -> Vec<usize> {
            (0..workers).map(|i| share(total, workers, i)).collect()
        };
        assert_eq!(shares(256, 2), [128, 128]);
        assert_eq!(shares(5, 2), [3, 2]);
        assert_eq!(shares(7, 3), [3, 2, 2]);
        assert_eq!(shares(1, 4), [1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn concurrent_requests_wait_for_a_connection_at_the_bound() {
        let (url, _closed, accepted) = target().await;
        let pool = Arc::new(Pool::new(&url, &tls(), 2));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (pool, url) = (pool.clone(), url.clone());
            all.spawn(async move { get(&pool, &url).await });
        }
        let bodies = tokio::time::timeout(WAIT, all.join_all()).await.unwrap();
        assert_eq!(bodies.len(), 20);
        assert!(bodies.iter().all(|b| b == "ok"));
        let opened = accepted.load(Ordering::SeqCst);
        assert!(opened <= 2, "{opened} connections opened");
        assert!(pool.inner.lock().len() <= 2);
    }

    /// An HTTP/2-only target (prior knowledge) answering `200 ok` after `delay`; reports
    /// each connection's index when it closes, and counts accepted connections.
    async fn h2_target(
        delay: Duration,
    ) -> (
        TargetUrl,
        tokio::sync::mpsc::UnboundedReceiver<usize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = TargetUrl::parse(&format!("h2c://{}", listener.local_addr().unwrap())).unwrap();
        let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            for index in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                    let _ = closed.send(index);
                });
            }
        });
        (url, rx, accepted)
    }

    #[tokio::test]
    async fn an_idle_h2_connection_is_closed_after_the_idle_timeout() {
        let (url, mut closed, accepted) = h2_target(Duration::ZERO).await;
        let pool =
            Pool::with_timeouts(&url, &tls(), LIMIT, Duration::from_millis(200), STALE_AFTER);
        for _ in 0..3 {
            assert_eq!(get(&pool, &url).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let first_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(first_closed, Some(0));
        assert_eq!(pool.inner.h2.as_ref().unwrap().len(), 0);
        assert_eq!(get(&pool, &url).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(pool);
        let next_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(
            next_closed,
            Some(1),
            "dropping the pool closes its connections"
        );
    }

    #[tokio::test]
    async fn an_h2_connection_in_use_is_not_closed_and_its_streams_are_counted() {
        let (url, mut closed, accepted) = h2_target(Duration::from_millis(300)).await;
        let pool = Arc::new(Pool::with_timeouts(
            &url,
            &tls(),
            LIMIT,
            Duration::from_millis(100),
            STALE_AFTER,
        ));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (pool, url) = (pool.clone(), url.clone());
            all.spawn(async move { get(&pool, &url).await });
        }
        // Longer than the idle timeout, but the streams are in flight.
        let bodies = tokio::time::timeout(WAIT, all.join_all()).await.unwrap();
        assert!(bodies.iter().all(|b| b == "ok"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let conns = pool.inner.h2.as_ref().unwrap();
        assert!(conns.len() <= 1);
        // Every stream was given back: the connection then goes idle and closes.
        let first_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(first_closed, Some(0));
    }

    #[tokio::test]
    async fn close_ends_idle_h2_connections_at_once() {
        let (url, mut closed, _) = h2_target(Duration::ZERO).await;
        let pool = Pool::new(&url, &tls(), LIMIT);
        assert_eq!(get(&pool, &url).await, "ok");
        assert_eq!(pool.protocol(), Some("h2c"));
        pool.close();
        let first_closed = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(first_closed, Some(0));
    }

    #[test]
    fn an_unsent_h2_request_goes_back_to_what_send_takes() {
        let url = TargetUrl::parse("h2c://target:50051/prefix").unwrap();
        let pool: Pool<Empty<Bytes>> = Pool::new(&url, &tls(), LIMIT);
        let mut request = Request::get("/prefix/a?b=c")
            .header(header::HOST, "client.example:8443")
            .header("x-kept", "1")
            .body(Empty::new())
            .unwrap();
        pool.h2_form(&mut request);
        assert_eq!(request.uri(), "http://client.example:8443/prefix/a?b=c");
        assert!(request.headers().get(header::HOST).is_none());
        assert_eq!(request.version(), Version::HTTP_2);
        let again = h1_form(request);
        assert_eq!(again.uri(), "/prefix/a?b=c");
        assert_eq!(again.headers()[header::HOST], "client.example:8443");
        assert_eq!(again.headers()["x-kept"], "1");
        assert_eq!(again.version(), Version::HTTP_11);
        // Without a usable Host the target's authority is used.
        let mut bare = Request::get("/x").body(Empty::<Bytes>::new()).unwrap();
        pool.h2_form(&mut bare);
        assert_eq!(bare.uri(), "http://target:50051/x");
    }

    #[test]
    fn fd_exhaustion_is_found_anywhere_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("tcp open error")]
        struct Wrapper(#[source] std::io::Error);
        for code in [24, 23] {
            let direct = Error::Connect(Box::new(std::io::Error::from_raw_os_error(code)));
            assert!(is_fd_exhaustion(&direct), "{code}");
            let nested = Error::Connect(Box::new(Wrapper(std::io::Error::from_raw_os_error(code))));
            assert!(is_fd_exhaustion(&nested), "{code}");
            // An io::Error that wraps another (its `source` skips the wrapped one).
            let wrapped = std::io::Error::other(std::io::Error::from_raw_os_error(code));
            assert!(
                is_fd_exhaustion(&Error::Connect(Box::new(wrapped))),
                "{code}"
            );
        }
        for other in [111, 110, 104] {
            // ECONNREFUSED, ETIMEDOUT, ECONNRESET: the target's doing.
            let err = Error::Connect(Box::new(std::io::Error::from_raw_os_error(other)));
            assert!(!is_fd_exhaustion(&err), "{other}");
        }
        assert!(!is_fd_exhaustion(&Error::Connect("no address".into())));
    }

    #[test]
    fn content_length_goes_when_transfer_encoding_is_present() {
        let mut both = HeaderMap::new();
        both.insert(header::CONTENT_LENGTH, "1".parse().unwrap());
        both.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        assert!(remove_conflicting_length(&mut both));
        assert!(both.get(header::CONTENT_LENGTH).is_none());
        assert!(both.get(header::TRANSFER_ENCODING).is_some());
        let mut length_only = HeaderMap::new();
        length_only.insert(header::CONTENT_LENGTH, "1".parse().unwrap());
        assert!(!remove_conflicting_length(&mut length_only));
        assert_eq!(length_only[header::CONTENT_LENGTH], "1");
    }

    #[tokio::test]
    async fn an_answer_framed_two_ways_loses_its_length_and_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = TargetUrl::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    while stream.read(&mut buf).await.unwrap_or(0) > 0 {
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\
                            Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = Pool::new(&url, &tls(), LIMIT);
        for _ in 0..2 {
            let response = pool.send(request(&url, Method::GET)).await.unwrap();
            assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "abc");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the connection is not reused"
        );
    }

    /// Sends a copy of `method` with `body` without hyper ([`raw`]).
    async fn send_raw(
        pool: &Pool<Empty<Bytes>>,
        url: &TargetUrl,
        method: Method,
        body: &[u8],
    ) -> Result<StatusCode, Error> {
        let head = raw::Head::new(&method, &HeaderMap::new(), false, body.len()).unwrap();
        let line = raw::request_line(&method, &url.request_target(None));
        let copy = raw::Copy {
            method: &method,
            line: &line,
            head: &head,
            host: url.host_header(),
            body,
        };
        tokio::time::timeout(WAIT, pool.send_raw(&copy))
            .await
            .expect("the copy ends in time")
    }

    #[tokio::test]
    async fn a_raw_connection_is_reused_then_closed_after_the_idle_timeout() {
        let (url, mut closed, accepted) = target().await;
        let idle_timeout = Duration::from_millis(200);
        let pool = Pool::with_timeouts(&url, &tls(), LIMIT, idle_timeout, STALE_AFTER);
        for method in [Method::GET, Method::HEAD, Method::POST] {
            let status = send_raw(&pool, &url, method, b"").await.unwrap();
            assert_eq!(status, StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let index = tokio::time::timeout(WAIT, closed.recv()).await.unwrap();
        assert_eq!(index, Some(0), "the reaper closed the idle connection");
        assert!(lock(&pool.inner.raw_idle).is_empty());
    }

    /// [`ten_requests_across_closes`] for copies sent without hyper.
    async fn ten_raw_copies_across_closes(stale_after: Duration, let_reactor_run: bool) {
        let (url, seen, closed) = closing_target();
        let pool = Pool::with_timeouts(&url, &tls(), LIMIT, IDLE_TIMEOUT, stale_after);
        for i in 0..10 {
            let status = send_raw(&pool, &url, Method::GET, b"").await;
            assert_eq!(
                status.unwrap_or_else(|e| panic!("copy {i}: {e}")),
                StatusCode::OK
            );
            wait_for_close(&closed);
            if let_reactor_run {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            10,
            "each copy reached the target once"
        );
    }

    #[tokio::test]
    async fn a_raw_connection_the_target_closed_is_not_used_even_if_still_pooled() {
        ten_raw_copies_across_closes(STALE_AFTER, true).await;
    }

    #[tokio::test]
    async fn a_safe_raw_copy_written_into_an_idle_close_is_sent_once_more() {
        ten_raw_copies_across_closes(Duration::ZERO, false).await;
    }

    #[tokio::test]
    async fn an_unsafe_raw_copy_is_never_sent_twice() {
        for (stale_after, method) in [
            (Duration::ZERO, Method::POST),
            (Duration::from_secs(3600), Method::GET),
        ] {
            let (url, seen, closed) = closing_target();
            let pool = Pool::with_timeouts(&url, &tls(), LIMIT, IDLE_TIMEOUT, stale_after);
            send_raw(&pool, &url, Method::GET, b"").await.unwrap();
            wait_for_close(&closed);
            let outcome = send_raw(&pool, &url, method.clone(), b"").await;
            assert!(
                matches!(&outcome, Err(Error::Raw(f)) if f.closed_without_answer()),
                "{method}: {outcome:?}"
            );
            assert!(!outcome.unwrap_err().never_sent(), "it may have arrived");
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{method}");
        }
    }

    #[tokio::test]
    async fn raw_and_hyper_connections_share_the_bound() {
        let (url, _closed, accepted) = target().await;
        let pool = Pool::with_timeouts(&url, &tls(), 1, IDLE_TIMEOUT, STALE_AFTER);
        // Each kind finds the other's idle connection holding the only place, and
        // closes it to open its own.
        get(&pool, &url).await;
        send_raw(&pool, &url, Method::GET, b"").await.unwrap();
        tokio::time::timeout(WAIT, get(&pool, &url)).await.unwrap();
        send_raw(&pool, &url, Method::GET, b"").await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_raw_and_hyper_requests_wait_for_a_connection_at_the_bound() {
        let (url, _closed, _accepted) = target().await;
        let pool = Arc::new(Pool::new(&url, &tls(), 2));
        let mut all = tokio::task::JoinSet::new();
        for i in 0..30 {
            let (pool, url) = (pool.clone(), url.clone());
            all.spawn(async move {
                if i % 3 == 0 {
                    get(&pool, &url).await == "ok"
                } else {
                    send_raw(&pool, &url, Method::POST, b"body").await.unwrap() == StatusCode::OK
                }
            });
        }
        let done = tokio::time::timeout(WAIT, all.join_all()).await.unwrap();
        assert!(done.iter().all(|ok| *ok));
        let idle = pool.inner.lock().len() + lock(&pool.inner.raw_idle).len();
        assert!(idle <= 2, "{idle} idle connections");
        assert!(pool.inner.connections.available_permits() <= 2);
    }

    #[tokio::test]
    async fn a_raw_copy_that_cannot_connect_was_never_sent() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = TargetUrl::parse(&format!("http://{}", closed.local_addr().unwrap())).unwrap();
        drop(closed);
        let pool = Pool::new(&url, &tls(), LIMIT);
        let err = send_raw(&pool, &url, Method::POST, b"x").await.unwrap_err();
        assert!(
            matches!(err, Error::Connect(_)) && err.never_sent(),
            "{err:?}"
        );
    }
}
