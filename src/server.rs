//! Listeners and connections: binding (with a listen backlog of at least 1024), the
//! accept loops (errors logged at most once a second), HTTP/1.0, HTTP/1.1 and h2c on
//! every connection, or TLS with ALPN `h2` and `http/1.1` on the main listener with
//! `--tls-cert` (docs/security.md, "TLS on the listener"), the `Host` checks every
//! request passes first, routing between the admin endpoint and the proxy, and the
//! graceful drain on shutdown with its closing report (docs/operations.md, "Shutdown";
//! docs/security.md, "Limits"). What a request does once routed belongs to
//! [`crate::proxy`] and [`crate::admin`]; the parts served are built by [`crate::app`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, warn};

use crate::admin::Admin;
use crate::app::App;
use crate::body::{self, BoxBody};
use crate::idle::{Activity, InFlight, Tracked};
use crate::mirror::Status;
use crate::proxy::{Peer, Proxy, own_answer};
use crate::ratelimit::LogLimiter;
use crate::registry::Registry;
use crate::tls::listener::ListenerTls;
use crate::workers::{LoadGuard, Workers};

/// Where to listen (`--listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:PORT`: every interface.
    AnyHost(u16),
    /// `HOST:PORT`, `1.2.3.4:PORT` or `[::1]:PORT`; names are resolved at bind time.
    Host(String, u16),
}

impl ListenAddr {
    /// Parses `:PORT`, `HOST:PORT` or `[V6]:PORT`.
    ///
    /// # Errors
    /// A message naming the value when there is no port or it is not a number.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = || format!("{value:?} is not :PORT, HOST:PORT or [IPv6]:PORT");
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Ok(Self::AnyHost(port));
        }
        let host = match host.strip_prefix('[') {
            // `[]` names no host, and a bracket inside would not survive Display.
            Some(v6) => v6
                .strip_suffix(']')
                .filter(|h| !h.is_empty() && !h.contains(['[', ']']))
                .ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        Ok(Self::Host(host.to_owned(), port))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AnyHost(port) => write!(f, ":{port}"),
            Self::Host(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// What the listeners and their connections need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--listen`.
    pub listen: ListenAddr,
    /// `--targets-address`: when set, the admin endpoint is served only here.
    pub admin_address: Option<ListenAddr>,
    /// `--tls-cert` and `--tls-key`: the listener speaks TLS (the admin endpoint too,
    /// unless it has its own address).
    pub tls: Option<ListenerTls>,
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    /// Worker threads (`--threads`, else one per CPU core).
    pub threads: usize,
    /// `--shutdown-timeout`: the longest drain.
    pub shutdown_timeout: Duration,
}

/// Bound sockets, handed to [`crate::run`] so that tests can bind port 0 themselves.
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
    pub async fn bind(settings: &Settings) -> Result<Self, BindError> {
        let main = bind(&settings.listen).await?;
        let admin = match &settings.admin_address {
            Some(addr) => bind(addr).await?,
            None => Vec::new(),
        };
        Ok(Self { main, admin })
    }
}

/// The smallest listen backlog used: tokio's default of 128 overflows in a burst of new
/// connections (the kernel then drops SYNs and clients retry after a second).
const MIN_BACKLOG: u32 = 1024;

/// Binds every address `addr` stands for: `:PORT` is all interfaces (IPv6 and IPv4 where
/// the host has IPv6, else IPv4), a name is every address it resolves to.
async fn bind(addr: &ListenAddr) -> Result<Vec<TcpListener>, BindError> {
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let backlog = backlog();
    match addr {
        ListenAddr::AnyHost(port) => {
            // `[::]` is dual-stack on Linux by default; fall back where IPv6 is off.
            let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, *port));
            match listen(any6, backlog) {
                Ok(l) => Ok(vec![l]),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(err(e)),
                Err(_) => {
                    let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, *port));
                    Ok(vec![listen(any4, backlog).map_err(err)?])
                }
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
                match listen(a, backlog) {
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

/// The listen backlog: [`MIN_BACKLOG`], or the system's `net.core.somaxconn` where that
/// is larger (the kernel caps any backlog at somaxconn).
fn backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(MIN_BACKLOG, |system| system.max(MIN_BACKLOG))
}

/// A listening socket on `addr` with `backlog`; `SO_REUSEADDR` as `TcpListener::bind`
/// sets it, so a restart binds while the old process's connections are in TIME_WAIT.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// How often a failed TLS handshake may be logged: a scanner or a client speaking plain
/// HTTP to the TLS port fails at connection rate.
const HANDSHAKE_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

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

/// Serves `app` until `shutdown` resolves, then drains: stops accepting, lets requests
/// in flight finish and queued mirror copies go out, for at most `--shutdown-timeout`.
/// The listeners are served from the caller's runtime; the connections from
/// `--threads` worker threads.
///
/// # Errors
/// The worker threads cannot be started (nothing has been served then).
pub(crate) async fn run(
    app: App,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let App {
        listener: settings,
        proxy,
        admin,
        tls,
        registry,
        token,
        pruning,
    } = app;
    // Shared: each request clones the `Arc` (the admin side holds strings and several
    // `Arc`s that a deep clone per request would copy).
    let handlers = Arc::new(Handlers {
        proxy,
        admin,
        tls,
        handshake_errors: LogLimiter::new(HANDSHAKE_ERROR_LOG_INTERVAL),
        header_read_timeout: settings.header_read_timeout,
    });
    let connections = TaskTracker::new();
    let workers = Arc::new(start_workers(&settings, handlers, &token)?);
    let accepting = accept_all(listeners, &workers, &token, &connections);

    shutdown.await;
    // One deadline for every part of the shutdown, counted from the signal: a supervisor
    // whose grace period is `--shutdown-timeout` must not have to kill us.
    let timeout = settings.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    info!(
        ?timeout,
        "shutting down: draining requests and mirror copies"
    );
    token.cancel();
    accepting.close();
    connections.close();
    drain((deadline, timeout), &accepting, &connections, &registry).await;
    pruning.abort();
    stop_workers(workers, deadline).await;
    Ok(())
}

/// Starts the worker threads that serve the accepted connections.
fn start_workers(
    settings: &Settings,
    handlers: Arc<Handlers>,
    token: &CancellationToken,
) -> std::io::Result<Workers<Accepted>> {
    let builder = Arc::new(connection_builder(settings));
    let token = token.clone();
    Workers::start(
        settings.threads,
        move |(stream, peer, role, tracked): Accepted, guard: LoadGuard| {
            serve_connection(
                stream,
                peer,
                role,
                handlers.clone(),
                builder.clone(),
                token.clone(),
                (guard, tracked),
            )
        },
    )
}

/// Starts one accept loop per listener; the returned tracker counts them.
fn accept_all(
    listeners: Listeners,
    workers: &Arc<Workers<Accepted>>,
    token: &CancellationToken,
    connections: &TaskTracker,
) -> TaskTracker {
    let accepting = TaskTracker::new();
    // Shared by every listener: out of file descriptors, they all fail at once.
    let accept_errors = Arc::new(LogLimiter::new(ACCEPT_ERROR_LOG_INTERVAL));
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
            accept_errors.clone(),
        ));
    }
    accepting
}

/// The share of `--shutdown-timeout` kept at its end to spill the copies of `spill=`
/// mirrors still queued or in flight: a quarter, at most 2 s.
fn spill_reserve(timeout: Duration) -> Duration {
    (timeout / 4).min(Duration::from_secs(2))
}

/// Waits, until `deadline` (`timeout` after the signal), for the accept loops, the
/// open connections and the mirror copies to finish, and logs how it went. Near the
/// deadline the copies of `spill=` mirrors still under way are spilled instead.
async fn drain(
    (deadline, timeout): (tokio::time::Instant, Duration),
    accepting: &TaskTracker,
    connections: &TaskTracker,
    registry: &Registry,
) {
    let drained = async {
        accepting.wait().await;
        connections.wait().await;
        registry.close();
        registry.drained().await;
    };
    tokio::pin!(drained);
    let spill_at = deadline - spill_reserve(timeout);
    let finished = match tokio::time::timeout_at(spill_at, &mut drained).await {
        Ok(()) => Ok(()),
        Err(_) => {
            registry.spill_now();
            tokio::time::timeout_at(deadline, &mut drained).await
        }
    };
    // One line at the default level whatever happens, so that after a deploy an operator
    // can tell whether shadow traffic was lost.
    match finished {
        Ok(()) => warn!(
            undelivered = 0,
            mirrors = ?mirror_summary(&registry.statuses()),
            "shutdown complete"
        ),
        Err(_) => warn!(
            undelivered = registry.outstanding(),
            open_connections = connections.len(),
            mirrors = ?mirror_summary(&registry.statuses()),
            "shutdown timeout reached: giving up on the rest"
        ),
    }
}

/// Stops the worker threads once the accept loops, which held the other references,
/// have ended (unless the deadline cut their wait short: dropping the last handle stops
/// the workers then).
async fn stop_workers(workers: Arc<Workers<Accepted>>, deadline: tokio::time::Instant) {
    if let Ok(workers) = Arc::try_unwrap(workers) {
        // A worker sees the stop between two tasks' polls; one busy in synchronous work
        // (a large comparison) sees it only when that is done. The wait is bounded: the
        // process exits without it, and in a test the thread ends on its own later.
        let stop_by = deadline.max(tokio::time::Instant::now() + WORKER_STOP_GRACE);
        if tokio::time::timeout_at(stop_by, workers.stop())
            .await
            .is_err()
        {
            debug!("a worker thread did not stop in time: left behind");
        }
    }
}

/// How long stopping the worker threads may take past the shutdown deadline: they
/// normally stop within a millisecond.
const WORKER_STOP_GRACE: Duration = Duration::from_millis(50);

/// Each mirror's copies for the shutdown line: `URL sent=N delivered=N failed=N
/// dropped=N undelivered=N spilled=N`, comma-separated; `none` without mirrors.
/// `delivered` is an answer that was not a `5xx`; `undelivered` is what was still
/// queued or in flight; `spilled` what went to the `spill=` file.
fn mirror_summary(statuses: &[Status]) -> String {
    if statuses.is_empty() {
        return "none".to_owned();
    }
    statuses
        .iter()
        .map(|m| {
            let c = &m.counters;
            format!(
                "{} sent={} delivered={} failed={} dropped={} undelivered={} spilled={}",
                m.url, c.sent, c.succeeded, c.failed, c.dropped, c.queued, c.spilled
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long a connection being closed (idle, or at shutdown) may take to close by
/// itself once it has nothing in flight.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go unanswered
/// before the connection is dropped (dead peers otherwise hold their streams for ever).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

fn connection_builder(config: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // `--header-read-timeout` is the idle watch's (crate::idle): hyper's own would
        // arm a timer for every request head.
        .header_read_timeout(None)
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

/// How often "accept failed" may be logged; the lines held back are counted.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Pause after a failed accept: the error (e.g. out of file descriptors) persists while
/// the connection waits in the backlog, so accepting again at once would spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

async fn accept_loop(
    listener: TcpListener,
    role: Role,
    workers: Arc<Workers<Accepted>>,
    token: CancellationToken,
    connections: TaskTracker,
    errors: Arc<LogLimiter>,
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
                if let Some(held_back) = errors.admit() {
                    warn!(error = %err, held_back, "accept failed");
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    role: Role,
    handlers: Arc<Handlers>,
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
    // Cancelled at shutdown (from the parent), when the connection is idle too long (see
    // `Activity`), or when it ends (which stops the watch).
    let close = token.child_token();
    let _stop_watch = close.clone().drop_guard();
    let activity = Activity::watch(close.clone(), handlers.header_read_timeout);
    // The admin-only listener keeps its own address and stays cleartext.
    let tls = match role {
        Role::Proxy { .. } => handlers.tls.clone(),
        Role::Admin => None,
    };
    let Some(tls) = tls else {
        let io = TokioIo::new(stream);
        let client = Peer::new(peer, false);
        return serve_http(io, client, role, handlers, &builder, close, activity).await;
    };
    // The idle watch closes a connection that has sent no request head within
    // --header-read-timeout, so a handshake cannot hold the socket longer either.
    let handshake = tokio::select! {
        handshake = tls.accept(stream) => handshake,
        () = close.cancelled() => {
            if !token.is_cancelled() {
                handshake_failed(&handlers, peer, &"no handshake within --header-read-timeout");
            }
            return;
        }
    };
    match handshake {
        Ok(stream) => {
            let io = TokioIo::new(stream);
            let client = Peer::new(peer, true);
            serve_http(io, client, role, handlers, &builder, close, activity).await;
        }
        Err(err) => handshake_failed(&handlers, peer, &err),
    }
}

/// Logs a failed TLS handshake, at most once per [`HANDSHAKE_ERROR_LOG_INTERVAL`].
fn handshake_failed(handlers: &Handlers, peer: SocketAddr, err: &dyn std::fmt::Display) {
    if let Some(held_back) = handlers.handshake_errors.admit() {
        warn!(client = %peer, error = %err, held_back, "TLS handshake failed");
    }
}

/// Serves HTTP/1 or HTTP/2 on an accepted connection (cleartext or after the TLS
/// handshake: hyper-util tells them apart by the HTTP/2 preface, which a client that
/// negotiated `h2` sends first) until it ends or `close` is cancelled.
async fn serve_http<I>(
    io: I,
    client: Peer,
    role: Role,
    handlers: Arc<Handlers>,
    builder: &auto::Builder<TokioExecutor>,
    close: CancellationToken,
    activity: Arc<Activity>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = client.addr;
    let watched = activity.clone();
    // Shared by the connection's requests: one count to raise each, not a copy.
    let client = Arc::new(client);
    let service = service_fn(move |req: Request<Incoming>| {
        let request = activity.request_started();
        handlers.clone().route(req, client.clone(), role, request)
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // `close` cancelled (shutdown, or idle) ends the wait, through the watch.
    let result = match watched.unless_closing(conn.as_mut()).await {
        Some(result) => result,
        None => {
            // Finish the request in flight, then close (no more keep-alive). hyper closes
            // an HTTP/2 connection only once the peer acknowledges the PING sent with the
            // GOAWAY; a peer that never does is dropped after a grace period, unless it
            // still has a request in flight.
            conn.as_mut().graceful_shutdown();
            loop {
                match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                    Ok(result) => break result,
                    Err(_) if watched.quiet() => {
                        debug!(client = %peer, "peer did not close after GOAWAY: connection dropped");
                        break Ok(());
                    }
                    Err(_) => {}
                }
            }
        }
    };
    close.cancel();
    if let Err(err) = result {
        debug!(client = %peer, error = %err, "connection ended with an error");
    }
}

/// What a routed request goes to.
struct Handlers {
    proxy: Proxy,
    admin: Admin,
    /// `--tls-cert`: the main listener's connections start with a TLS handshake.
    tls: Option<TlsAcceptor>,
    handshake_errors: LogLimiter,
    /// `--header-read-timeout`, also the longest a connection may stay idle.
    header_read_timeout: Duration,
}

impl Handlers {
    /// The answer to `req` from `peer`, which stays in flight (`request`) until its body
    /// is done with. One `async` block for the whole request: each level of them holds
    /// the request once more (rust-lang/rust#62958), in a future hyper moves twice.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn copies its arguments into a second slot of its future (rust-lang/rust#62958)"
    )]
    fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
        role: Role,
        request: InFlight,
    ) -> impl Future<Output = Result<Response<Tracked<BoxBody>>, Infallible>> + Send {
        async move {
            let response = if let Some(problem) = host_problem(&req) {
                debug!(client = %peer.addr, problem, "bad Host header");
                let grpc = crate::headers::is_grpc(req.headers());
                let message = format!("bad request: {problem}");
                own_answer(StatusCode::BAD_REQUEST, &message, grpc)
            } else {
                // Only where the admin endpoint is served: not on a proxy-only listener.
                let admin_path = |req: &Request<Incoming>| self.admin.serves(req.uri().path());
                match role {
                    Role::Proxy { admin: true } | Role::Admin if admin_path(&req) => {
                        self.admin.handle(req, peer.addr).await
                    }
                    Role::Admin => body::text(
                        StatusCode::NOT_FOUND,
                        "not found: this address serves only the admin endpoint\n",
                    ),
                    Role::Proxy { .. } => self.proxy.forward(req, &peer).await,
                }
            };
            Ok(response.map(|body| Tracked::new(body, request)))
        }
    }
}

/// Why a request's `Host` header makes it malformed (RFC 9112 §3.2: an HTTP/1.1 request
/// without one, any request with more than one, or one that is not a valid authority),
/// or `None`. hyper checks none of these.
fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match first {
        None if req.version() == Version::HTTP_11 => Some("HTTP/1.1 request without Host"),
        // An empty value is allowed: the target URI may have no authority.
        Some(host) if !host.is_empty() && !valid_authority(host.as_bytes()) => {
            Some("Host is not a valid host[:port]")
        }
        _ => None,
    }
}

/// Whether `http`'s `Authority` takes `host`. The usual name or address with an optional
/// port is told at once; anything else goes to `Authority`, whose `&[u8]` conversion
/// copies the bytes into a new buffer (an allocation and ~0.2k instructions per request
/// under callgrind).
fn valid_authority(host: &[u8]) -> bool {
    // Unreserved characters (RFC 3986 §2.3) and at most one colon: always an authority.
    const USUAL: [u8; 256] = {
        let mut table = [0; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~') {
                table[b] = 1;
            }
            b += 1;
        }
        table[b':' as usize] = 2;
        table
    };
    let mut colons = 0;
    for &b in host {
        match USUAL[usize::from(b)] {
            1 => {}
            2 => colons += 1,
            _ => return http::uri::Authority::try_from(host).is_ok(),
        }
    }
    (!host.is_empty() && colons <= 1) || http::uri::Authority::try_from(host).is_ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(ListenAddr::parse(":8080"), Ok(ListenAddr::AnyHost(8080)));
        assert_eq!(
            ListenAddr::parse("localhost:1234"),
            Ok(ListenAddr::Host("localhost".into(), 1234))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:9000"),
            Ok(ListenAddr::Host("::1".into(), 9000))
        );
        for bad in [
            "8080",
            "host:",
            "host:99999",
            "::1:80",
            "[::1:80",
            "[]:80",
            "[[::1]:80",
        ] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }

    fn request(version: Version, hosts: &[&str]) -> Request<()> {
        let mut req = Request::builder().version(version).uri("/");
        for host in hosts {
            req = req.header(http::header::HOST, *host);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn host_header_rules() {
        let ok = [
            (Version::HTTP_11, &["example.com"][..]),
            (Version::HTTP_11, &["example.com:8080"]),
            (Version::HTTP_11, &["[::1]:80"]),
            (Version::HTTP_11, &[""]),
            (Version::HTTP_10, &[]),
            (Version::HTTP_2, &[]),
        ];
        for (version, hosts) in ok {
            assert_eq!(
                host_problem(&request(version, hosts)),
                None,
                "{version:?} {hosts:?}"
            );
        }
        let bad = [
            (Version::HTTP_11, &[][..]),
            (Version::HTTP_11, &["a", "b"]),
            (Version::HTTP_11, &["a", "a"]),
            (Version::HTTP_10, &["a", "b"]),
            (Version::HTTP_11, &["a b"]),
            (Version::HTTP_11, &["a/b"]),
        ];
        for (version, hosts) in bad {
            assert!(
                host_problem(&request(version, hosts)).is_some(),
                "{version:?} {hosts:?}"
            );
        }
    }

    #[tokio::test]
    async fn listeners_have_a_backlog_of_at_least_1024() {
        // Enough descriptors for the client sockets (the soft limit is often 1024).
        let _ = rlimit::increase_nofile_limit(4096);
        let addr = ListenAddr::Host("127.0.0.1".to_owned(), 0);
        let listener = bind(&addr).await.unwrap().pop().unwrap();
        let target = listener.local_addr().unwrap();
        // Nothing is accepted: every connection waits in the backlog. Beyond it the
        // kernel drops the SYN, and the client would retry only after a second.
        let mut open = Vec::new();
        for i in 0..1000 {
            let connect = tokio::net::TcpStream::connect(target);
            let stream = tokio::time::timeout(Duration::from_millis(500), connect)
                .await
                .unwrap_or_else(|_| panic!("connection {i} waited for room in the backlog"))
                .unwrap();
            open.push(stream);
        }
        assert!(backlog() >= MIN_BACKLOG);
        drop(listener);
    }

    /// Listen addresses as users write them, and near misses.
    fn listen_like() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            2 => Just(String::new()),
            2 => "[a-z][a-z0-9.-]{0,12}",
            1 => any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
            2 => any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]")),
            1 => any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
            2 => "[\\[\\]:a-z0-9 ]{0,8}",
            2 => "\\[[\\[\\]:a-f0-9]{0,6}\\]",
        ];
        let port = prop_oneof![
            3 => any::<u16>().prop_map(|p| p.to_string()),
            1 => "[0-9+-]{0,7}",
        ];
        (host, prop_oneof![4 => Just(":"), 1 => Just("")], port)
            .prop_map(|(host, colon, port)| format!("{host}{colon}{port}"))
    }

    proptest! {
        /// The quick check of a Host value decides exactly as `Authority` does.
        #[test]
        fn a_host_is_valid_exactly_when_authority_takes_it(
            host in prop_oneof![
                "[a-zA-Z0-9._~-]{0,12}(:[0-9]{0,6})?",
                "[a-zA-Z0-9._~:@%\\[\\]/?# -]{0,16}",
                proptest::collection::vec(any::<u8>(), 0..16)
                    .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            ]
        ) {
            prop_assert_eq!(
                valid_authority(host.as_bytes()),
                http::uri::Authority::try_from(host.as_bytes()).is_ok(),
                "{:?}", host
            );
        }

        #[test]
        fn listen_parse_never_panics(s in "\\PC*") {
            let _ = ListenAddr::parse(&s);
        }

        #[test]
        fn listen_display_parses_back(s in prop_oneof![listen_like(), "\\PC*"]) {
            if let Ok(addr) = ListenAddr::parse(&s) {
                prop_assert_eq!(ListenAddr::parse(&addr.to_string()), Ok(addr.clone()), "from {:?}", s);
            }
        }

        #[test]
        fn listen_values_round_trip(
            addr in prop_oneof![
                any::<u16>().prop_map(ListenAddr::AnyHost),
                ("[a-z][a-z0-9.-]{0,12}", any::<u16>()).prop_map(|(h, p)| ListenAddr::Host(h, p)),
                (any::<std::net::IpAddr>(), any::<u16>())
                    .prop_map(|(ip, p)| ListenAddr::Host(ip.to_string(), p)),
            ],
        ) {
            prop_assert_eq!(ListenAddr::parse(&addr.to_string()), Ok(addr));
        }
    }
}
