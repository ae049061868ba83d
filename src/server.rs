//! Listeners and connections: binding, the accept loops, HTTP/1.0, HTTP/1.1 and h2c on
//! every connection, routing between the admin endpoint and the proxy, and the graceful
//! drain on shutdown (README, "Shutdown"). What a request does once routed belongs to
//! [`crate::proxy`] and [`crate::admin`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
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

use crate::admin::Admin;
use crate::body::{self, BoxBody};
use crate::config::{Config, ListenAddr};
use crate::idle::Activity;
use crate::observe::metrics::Metrics;
use crate::proxy::{Peer, Proxy};
use crate::sources::targets_file;
use crate::workers::{LoadGuard, Workers};

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

/// How often the targets file is read for changes (they apply within twice this).
const TARGETS_FILE_POLL: Duration = Duration::from_secs(1);

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

/// Serves until `shutdown` resolves, then drains: stops accepting, lets
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
    let proxy = Proxy::new(config);
    let metrics = Metrics::new(
        proxy.main_stats(),
        proxy.registry().clone(),
        proxy.budget().clone(),
    );
    let admin = Admin::new(
        proxy.registry().clone(),
        proxy.budget().clone(),
        proxy.config(),
        metrics,
    );
    let pruning = tokio::spawn({
        let (registry, admin) = (proxy.registry().clone(), admin.clone());
        async move {
            // A mirror that expired is gone from the saved set too, or a restart
            // would bring it back.
            let on_removed = || admin.save_after_change();
            registry.prune_expired(on_removed).await;
        }
    });
    let token = CancellationToken::new();
    if let Some((path, _)) = &proxy.config().targets_file {
        let registry = proxy.registry().clone();
        let shown = path.display().to_string();
        let admin = admin.clone();
        tokio::spawn(targets_file::watch(
            path.clone(),
            TARGETS_FILE_POLL,
            move |lines| {
                let change = registry.reconcile_file(&lines);
                if !change.is_empty() {
                    info!(file = %shown, added = ?change.added, updated = ?change.updated, removed = ?change.removed, "targets file applied");
                    // A URL the file took over from the admin endpoint leaves the state
                    // file.
                    let admin = admin.clone();
                    tokio::spawn(async move { admin.save_after_change().await });
                }
            },
            token.clone(),
        ));
    }
    let handlers = Handlers { proxy, admin };
    let connections = TaskTracker::new();
    let builder = Arc::new(connection_builder(handlers.proxy.config()));
    let workers = {
        let (handlers, token) = (handlers.clone(), token.clone());
        Workers::start(
            handlers.proxy.config().threads,
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
    let registry = handlers.proxy.registry().clone();
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
    pruning.abort();
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
    handlers: Handlers,
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
    let activity = Activity::watch(close.clone(), handlers.proxy.config().header_read_timeout);
    let service = service_fn(move |req: Request<Incoming>| {
        let handlers = handlers.clone();
        let client = client.clone();
        let h2_request = activity.request_started(req.version() == Version::HTTP_2);
        async move {
            let response = handlers.route(req, &client, role).await;
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

/// What a routed request goes to. Cloning is shallow.
#[derive(Clone)]
struct Handlers {
    proxy: Proxy,
    admin: Admin,
}

impl Handlers {
    async fn route(&self, req: Request<Incoming>, peer: &Peer, role: Role) -> Response<BoxBody> {
        let is_admin_path = self.admin.serves(req.uri().path());
        match role {
            Role::Proxy { admin: true } | Role::Admin if is_admin_path => {
                self.admin.handle(req, peer.addr).await
            }
            Role::Admin => body::text(
                StatusCode::NOT_FOUND,
                "not found: this address serves only the admin endpoint\n",
            ),
            Role::Proxy { .. } => self.proxy.forward(req, peer).await,
        }
    }
}
