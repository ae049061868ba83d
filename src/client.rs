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
//! idle connections are closed after [`IDLE_TIMEOUT`].

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
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

/// Why a request to a target failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Keep-alive connections to one target, for the worker thread that owns the pool.
/// Cloning is shallow.
pub struct Pool<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B> {
    /// `scheme://authority`, what the connector dials.
    origin: Uri,
    connector: HttpsConnector<HttpConnector>,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle<B>>>,
    /// [`IDLE_TIMEOUT`], shorter in tests.
    idle_timeout: Duration,
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
    pub fn new(target: &TargetUrl, tls: &Arc<rustls::ClientConfig>) -> Self {
        Self::with_idle_timeout(target, tls, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(
        target: &TargetUrl,
        tls: &Arc<rustls::ClientConfig>,
        idle_timeout: Duration,
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
                reaper_started: AtomicBool::new(false),
            }),
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one.
    ///
    /// # Errors
    /// The target cannot be reached, or the exchange failed.
    pub async fn send(&self, mut request: Request<B>) -> Result<Response<Pooled<B>>, Error> {
        loop {
            let (mut sender, reused) = match self.inner.checkout() {
                Some(sender) => (sender, true),
                // Boxed: connecting holds the TLS state, which would otherwise make this
                // future (and every future awaiting it) ~2.4 KB larger, moved on every spawn.
                None => (Box::pin(self.connect()).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // After `101` the connection belongs to the upgraded stream.
                    let slot = (response.status() != StatusCode::SWITCHING_PROTOCOLS)
                        .then(|| (sender, self.inner.clone()));
                    return Ok(response.map(|body| Pooled { body, slot }));
                }
                Err(mut err) => match err.take_message() {
                    // The pooled connection closed before a byte of the request was
                    // written (the target timed it out): retry on another one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, Error> {
        let io = self
            .inner
            .connector
            .clone()
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
        let period = self.inner.idle_timeout / 2;
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

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if entry.sender.is_ready() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }
}

impl<B: Send + 'static> Inner<B> {
    /// Takes a connection back once its response has been read to the end.
    fn put(self: Arc<Self>, mut sender: SendRequest<B>) {
        if sender.is_ready() {
            self.lock().push(Idle {
                sender,
                since: Instant::now(),
            });
        } else if !sender.is_closed() {
            // The connection task has not yet seen the end of the response it just
            // delivered; it is ready as soon as it runs.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    self.lock().push(Idle {
                        sender,
                        since: Instant::now(),
                    });
                }
            });
        }
    }
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
                            head.clear();
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            stream.write_all(reply).await.unwrap();
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
        let pool = Pool::with_idle_timeout(&url, &tls(), Duration::from_millis(200));
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
    async fn a_body_dropped_before_its_end_does_not_return_the_connection() {
        let (url, mut closed, _) = target().await;
        let pool = Pool::with_idle_timeout(&url, &tls(), IDLE_TIMEOUT);
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
}
