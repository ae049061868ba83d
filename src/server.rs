//! Listeners and connections: the accept loops, HTTP/1.0, HTTP/1.1 and h2c on every
//! connection (SPEC §4), routing between the admin endpoint and the proxy, and the
//! graceful drain on shutdown (SPEC §6).

use std::convert::Infallible;
use std::future::Future;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, warn};

use crate::body::{self, BoxBody};
use crate::client::{self, Pool};
use crate::config::{Config, ListenAddr};
use crate::proxy::Peer;
use crate::ratelimit::LogLimiter;
use crate::registry::Registry;
use crate::workers::{self, LoadGuard, Workers};
use crate::{admin, proxy};

/// Bound sockets, handed to [`run`] so that tests can bind port 0 themselves.
#[derive(Debug)]
pub struct Listeners {
    /// Proxy listeners (also the admin endpoint unless `admin` is non-empty).
    pub main: Vec<TcpListener>,
    /// Admin-only listeners (`--targets-address`).
    pub admin: Vec<TcpListener>,
}

/// Bind error, naming the address.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: String,
    source: std::io::Error,
}

impl Listeners {
    /// Binds `--listen` and, when given, `--targets-address`.
    ///
    /// # Errors
    /// An address that cannot be resolved or bound (e.g. the port is in use).
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let main = bind(&config.listen).await?;
        let admin = match &config.admin_address {
            Some(addr) => bind(addr).await?,
            None => Vec::new(),
        };
        Ok(Self { main, admin })
    }
}

/// Binds every address `addr` stands for: `:PORT` is all interfaces (IPv6 and IPv4 where
/// the host has IPv6, else IPv4), a name is every address it resolves to.
async fn bind(addr: &ListenAddr) -> Result<Vec<TcpListener>, BindError> {
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    match addr {
        ListenAddr::AnyHost(port) => {
            // `[::]` is dual-stack on Linux by default; fall back where IPv6 is off.
            match TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, *port)).await {
                Ok(l) => Ok(vec![l]),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(err(e)),
                Err(_) => Ok(vec![
                    TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, *port))
                        .await
                        .map_err(err)?,
                ]),
            }
        }
        ListenAddr::Host(host, port) => {
            let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(err)?
                .collect();
            addrs.dedup();
            let mut listeners = Vec::new();
            let mut last_error = None;
            for a in addrs {
                match TcpListener::bind(a).await {
                    Ok(l) => listeners.push(l),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(err(e)),
                    // e.g. `localhost` resolving to ::1 on a host without IPv6
                    Err(e) => last_error = Some(e),
                }
            }
            match (listeners.is_empty(), last_error) {
                (false, _) => Ok(listeners),
                (true, Some(e)) => Err(err(e)),
                (true, None) => Err(err(std::io::Error::other("no address found"))),
            }
        }
    }
}

/// How often a per-request error towards main may be logged.
const MAIN_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Shared state for every connection. Cloning is shallow.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    /// One pool per worker thread (see [`workers::pick`]).
    main_pools: Box<[Pool<BoxBody>]>,
    registry: Registry,
    /// This process's `Via` pseudonym (SPEC §5 "Loops").
    via_token: String,
    /// Ready-made `Via` entries for HTTP/1.0, 1.1 and 2.
    via_entries: [HeaderValue; 3],
    /// Set once the first looped request has been logged (SPEC §5 "Loops").
    loop_logged: AtomicBool,
    /// "main target unreachable" (`502`) log lines, at most one per second.
    main_unreachable_log: LogLimiter,
    /// "main did not answer in time" (`504`) log lines, at most one per second.
    main_timeout_log: LogLimiter,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let registry = Registry::new(config.mirror.clone());
        registry.add(&config.mirrors, true);
        let via_token = format!(
            "trafficmirror-{:016x}",
            std::collections::hash_map::RandomState::new()
                .hash_one((std::process::id(), std::time::SystemTime::now()))
        );
        let entry =
            |v: &str| HeaderValue::from_str(&format!("{v} {via_token}")).expect("token is ASCII");
        let via_entries = [entry("1.0"), entry("1.1"), entry("2")];
        let main_pools = client::per_worker(&config.main, &config.mirror.tls, config.threads);
        Self {
            inner: Arc::new(Inner {
                main_pools,
                config,
                registry,
                via_token,
                via_entries,
                loop_logged: AtomicBool::new(false),
                main_unreachable_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_timeout_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn main_pool(&self) -> &Pool<BoxBody> {
        workers::pick(&self.inner.main_pools)
    }

    pub fn via_token(&self) -> &str {
        &self.inner.via_token
    }

    /// True the first time it is called: log a detected loop once, count it always.
    pub fn first_loop(&self) -> bool {
        !self.inner.loop_logged.swap(true, Ordering::Relaxed)
    }

    pub fn main_unreachable_log(&self) -> &LogLimiter {
        &self.inner.main_unreachable_log
    }

    pub fn main_timeout_log(&self) -> &LogLimiter {
        &self.inner.main_timeout_log
    }

    pub fn via_entry(&self, version: Version) -> &HeaderValue {
        let [v10, v11, v2] = &self.inner.via_entries;
        match version {
            Version::HTTP_10 | Version::HTTP_09 => v10,
            Version::HTTP_2 | Version::HTTP_3 => v2,
            _ => v11,
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The proxy, plus the admin path when there is no separate admin listener.
    Proxy { admin: bool },
    /// Only the admin path (`--targets-address`).
    Admin,
}

/// An accepted connection on its way to a worker. The tracker token counts it as open
/// from the moment it is accepted, so the drain waits for it even while it is queued.
type Accepted = (std::net::TcpStream, SocketAddr, Role, TaskTrackerToken);

/// Serves until `shutdown` resolves, then drains (SPEC §6): stops accepting, lets
/// requests in flight finish and queued mirror copies go out, for at most
/// `--shutdown-timeout`. The listeners are served from the caller's runtime; the
/// connections from `--threads` worker threads.
///
/// # Errors
/// The worker threads cannot be started (nothing has been served then).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shutdown_timeout = config.shutdown_timeout;
    let state = AppState::new(config);
    let token = CancellationToken::new();
    let connections = TaskTracker::new();
    let builder = Arc::new(connection_builder(state.config()));
    let workers = {
        let (state, token) = (state.clone(), token.clone());
        Workers::start(
            state.config().threads,
            move |(stream, peer, role, tracked): Accepted, guard: LoadGuard| {
                serve_connection(
                    stream,
                    peer,
                    role,
                    state.clone(),
                    builder.clone(),
                    token.clone(),
                    (guard, tracked),
                )
            },
        )?
    };
    let workers = Arc::new(workers);
    let accepting = TaskTracker::new();
    let separate_admin = !listeners.admin.is_empty();
    let roles = listeners
        .main
        .into_iter()
        .map(|l| {
            (
                l,
                Role::Proxy {
                    admin: !separate_admin,
                },
            )
        })
        .chain(listeners.admin.into_iter().map(|l| (l, Role::Admin)));
    for (listener, role) in roles {
        accepting.spawn(accept_loop(
            listener,
            role,
            workers.clone(),
            token.clone(),
            connections.clone(),
        ));
    }

    shutdown.await;
    info!(timeout = ?shutdown_timeout, "shutting down: draining requests and mirror copies");
    token.cancel();
    accepting.close();
    accepting.wait().await;
    connections.close();
    let registry = state.registry().clone();
    let drain = async {
        connections.wait().await;
        registry.close();
        registry.drained().await;
    };
    match tokio::time::timeout(shutdown_timeout, drain).await {
        Ok(()) => info!(undelivered = 0, "shutdown complete"),
        Err(_) => warn!(
            undelivered = registry.outstanding(),
            open_connections = connections.len(),
            "shutdown timeout reached: giving up on the rest"
        ),
    }
    // The accept loops, which held the other references, have ended.
    if let Ok(workers) = Arc::try_unwrap(workers) {
        workers.stop().await;
    }
    Ok(())
}

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go unanswered
/// before the connection is dropped (dead peers otherwise hold their streams for ever).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Runs from the moment hyper waits for a request head, so it also closes idle
        // keep-alive connections.
        .header_read_timeout(config.header_read_timeout)
        // A head that does not fit gets `431` (RFC 6585 §5).
        .max_buf_size(config.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    builder
}

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    workers: Arc<Workers<Accepted>>,
    token: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Moves the socket to a worker's runtime (re-registered there).
                match stream.into_std() {
                    Ok(stream) => {
                        let job = (stream, peer, role, connections.token());
                        if workers.dispatch(job).is_err() {
                            warn!(client = %peer, "no worker left: connection closed");
                        }
                    }
                    Err(err) => debug!(client = %peer, error = %err, "accepted socket lost"),
                }
            }
            Err(err) => {
                // e.g. out of file descriptors: back off instead of spinning.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    role: Role,
    state: AppState,
    builder: Arc<auto::Builder<TokioExecutor>>,
    token: CancellationToken,
    _held_until_closed: (LoadGuard, TaskTrackerToken),
) {
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(err) => {
            debug!(client = %peer, error = %err, "cannot register the connection");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let client = Peer::new(peer);
    // Cancelled at shutdown (from the parent), when the connection is idle too long (see
    // `Activity`), or when it ends (which stops the watch).
    let close = token.child_token();
    let activity = Activity::watch(close.clone(), state.config().header_read_timeout);
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let client = client.clone();
        let h2_request = activity.request_started(req.version() == Version::HTTP_2);
        async move {
            let response = route(&state, req, &client, role).await;
            Ok::<_, Infallible>(match h2_request {
                None => response,
                // The closure owns the guard, so the request stays counted until the
                // body is done with (its end or its drop), not just until the head.
                Some(request) => response.map(|body| {
                    body::boxed(body.map_err(move |err| {
                        let _counted = &request;
                        err
                    }))
                }),
            })
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = close.cancelled() => {
            // Finish the request in flight, then close (no more keep-alive).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    close.cancel();
    if let Err(err) = result {
        debug!(client = %peer, error = %err, "connection ended with an error");
    }
}

/// Closes connections that stay idle for `--header-read-timeout`, where hyper does not:
/// a connection that has not sent a request head by then (hyper-util's protocol
/// detection waits for bytes for ever), and an HTTP/2 connection with no request in
/// flight for that long (hyper only pings it, so a client answering pings would keep
/// it, and a file descriptor, for ever). Idle HTTP/1 connections after their first
/// request are left to hyper's own `header_read_timeout`.
struct Activity {
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
struct H2Request(Arc<Activity>);

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
    fn watch(close: CancellationToken, timeout: Duration) -> Arc<Self> {
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
    fn request_started(self: &Arc<Self>, h2: bool) -> Option<H2Request> {
        if h2 {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.h2.store(true, Ordering::Release);
        }
        self.started.store(true, Ordering::Release);
        h2.then(|| H2Request(self.clone()))
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

async fn route(
    state: &AppState,
    req: Request<Incoming>,
    peer: &Peer,
    role: Role,
) -> Response<BoxBody> {
    let is_admin_path = req.uri().path() == state.config().admin_path;
    match role {
        Role::Proxy { admin: true } | Role::Admin if is_admin_path => {
            admin::handle(
                state.registry(),
                state.config().users.as_ref(),
                req,
                peer.addr,
            )
            .await
        }
        Role::Admin => body::text(
            StatusCode::NOT_FOUND,
            "not found: this address serves only the admin endpoint\n",
        ),
        Role::Proxy { .. } => proxy::forward(state, req, peer).await,
    }
}
