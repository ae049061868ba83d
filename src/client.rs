//! Outbound HTTP/1.1 to one target (main or a mirror): keep-alive connections kept in
//! one pool per worker thread.
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
//! idle for [`STALE_AFTER`] that the target closed without answering, is sent once more.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;
use tracing::debug;

use crate::body::BoxError;
use crate::target_url::TargetUrl;

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
    #[error(transparent)]
    Http(#[from] hyper::Error),
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
    connector: HttpsConnector<HttpConnector>,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    /// [`IDLE_TIMEOUT`] and [`STALE_AFTER`], shorter in tests.
    idle_timeout: Duration,
    stale_after: Duration,
    reaper_started: AtomicBool,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

/// One pool per worker thread, picked with [`crate::workers::pick`]: a request's
/// upstream connections then live on the request's own thread.
pub fn per_worker<B>(
    target: &TargetUrl,
    tls: &Arc<rustls::ClientConfig>,
    workers: usize,
) -> Box<[Pool<B>]> {
    (0..workers.max(1))
        .map(|_| Pool::new(target, tls))
        .collect()
}

impl<B> Pool<B> {
    /// A pool for `target`, empty until the first request.
    pub fn new(target: &TargetUrl, tls: &Arc<rustls::ClientConfig>) -> Self {
        Self::with_timeouts(target, tls, IDLE_TIMEOUT, STALE_AFTER)
    }

    fn with_timeouts(
        target: &TargetUrl,
        tls: &Arc<rustls::ClientConfig>,
        idle_timeout: Duration,
        stale_after: Duration,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false); // the TLS layer handles https://
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(tls))
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            inner: Arc::new(Inner {
                origin: target.origin(),
                connector,
                idle: Mutex::new(Vec::new()),
                idle_timeout,
                stale_after,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Default + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one.
    ///
    /// # Errors
    /// The target cannot be reached, or the exchange failed.
    pub async fn send(&self, mut request: Request<B>) -> Result<Response<Pooled<B>>, Error> {
        let mut may_resend = true;
        loop {
            // A resend goes on a new connection: the other idle ones are likely as stale.
            let pooled = if may_resend {
                self.inner.checkout()
            } else {
                None
            };
            let (mut sender, idle) = match pooled {
                Some((sender, idle)) => (sender, Some(idle)),
                // Boxed: connecting holds the TLS state, which would otherwise make this
                // future (and every future awaiting it) ~2.4 KB larger, moved on every spawn.
                None => (Box::pin(self.connect()).await?, None),
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
                Ok(response) => {
                    // After `101` the connection belongs to the upgraded stream.
                    let slot = (response.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, self.inner.clone()));
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
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, Error> {
        let mut connector = self.inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Error::Connect)?;
        let io = connector
            .call(self.inner.origin.clone())
            .await
            .map_err(Error::Connect)?;
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                debug!(error = %err, "upstream connection ended with an error");
            }
        });
        self.start_reaper();
        Ok(sender)
    }

    /// Closes connections idle for longer than the idle timeout; runs on the pool's
    /// worker thread while the pool exists.
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Inner<B>> = Arc::downgrade(&self.inner);
        let period = self.inner.idle_timeout / 4;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                let limit = pool.idle_timeout;
                pool.lock()
                    .retain(|idle| idle.since.elapsed() < limit && !idle.sender.is_closed());
            }
        });
    }
}

impl<B> Inner<B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        // Only pushes and pops happen under this lock; poisoning would be a bug.
        self.idle.lock().expect("connection pool lock poisoned")
    }

    /// The most recently used idle connection that is still open, and how long it
    /// has been idle.
    fn checkout(&self) -> Option<(SendRequest<B>, Duration)> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            let idle_for = entry.since.elapsed();
            if entry.sender.is_ready() && idle_for < self.idle_timeout {
                return Some((entry.sender, idle_for));
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
        let since = Instant::now();
        self.lock().push(Idle { sender, since });
    }
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
    let mut again = Request::new(B::default());
    *again.method_mut() = request.method().clone();
    *again.uri_mut() = request.uri().clone();
    *again.version_mut() = request.version();
    *again.headers_mut() = request.headers().clone();
    Some(again)
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
/// the body has been read to the end (and is closed if the body is dropped before).
pub struct Pooled<B: Send + 'static> {
    body: Incoming,
    slot: Option<(SendRequest<B>, Arc<Inner<B>>)>,
}

impl<B: Send + 'static> Pooled<B> {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.slot.take() {
            pool.put(sender);
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
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

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
        let pool = Pool::with_timeouts(&url, &tls(), Duration::from_millis(200), STALE_AFTER);
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
        let pool = Pool::new(&url, &tls());
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
        let pool = Pool::new(&url, &tls());
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
        let pool = Pool::with_timeouts(&url, &tls(), IDLE_TIMEOUT, stale_after);
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
        let pool = Pool::with_timeouts(&url, &tls(), IDLE_TIMEOUT, stale_after);
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
}
