//! The proxy: forwarding to main and handing each request's copy to the mirrors
//! (docs/shadowing.md, "How requests are handled"). [`Proxy`] owns what forwarding needs: its
//! settings, the keep-alive pools to main, the mirror set, the byte budget for
//! mirrored bodies, and this process's `Via` token.
//!
//! Request flow: rewrite headers once → pick the mirrors that want a copy → send to
//! main with the body streamed as it arrives; a copy of it is collected on the way
//! ([`tee`]) and offered to those mirrors once complete → stream main's response back
//! as it arrives.
//!
//! Upgrade requests (WebSocket and others, RFC 9110 §7.8) are tunnelled to main both
//! ways and never mirrored: a copy cannot take part in the conversation.

mod tee;

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::body::{self, BoxBody, BoxError};
use crate::budget::Budget;
use crate::client::{self, Pool};
use crate::headers;
use crate::mirror;
use crate::mirror::compare::capture::MainCapture;
use crate::mirror::ordered::MainHalf;
use crate::observe::metrics::MainStats;
use crate::ratelimit::LogLimiter;
use crate::registry::{Mirrors, Registry};
use crate::target_url::TargetUrl;
use crate::workers;
use tee::{ClientBodyError, Offer, RequestBody, Selection};

/// How often a per-request error towards main may be logged.
const MAIN_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The client of one connection, with its address already formatted for
/// `X-Forwarded-For` (once per connection, not per request).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
}

impl Peer {
    pub fn new(addr: SocketAddr, https: bool) -> Self {
        Self {
            addr,
            ip_header: headers::client_ip(addr.ip()),
            https,
        }
    }
}

/// The proxy's state, shared by every connection. Cloning is shallow.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// What the proxy needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--main`.
    pub main: TargetUrl,
    /// `--preserve-host`: main and mirrors get the client's `Host`.
    pub preserve_host: bool,
    /// `--main-timeout`: longest wait for main's response head.
    pub main_timeout: Option<Duration>,
    /// `--body-read-timeout`: longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// `--max-body-size`: larger bodies are proxied to main but not mirrored.
    pub max_body_size: u64,
    /// The mirrors' settings: main's answer is kept for a comparison up to their
    /// `max_compare_size`, and main's connection pools follow their TLS settings, pool
    /// count and per-target limit.
    pub mirror: mirror::Settings,
}

struct Inner {
    config: Settings,
    /// One pool per worker thread (see [`workers::pick`]).
    main_pools: Box<[Pool<BoxBody>]>,
    registry: Registry,
    /// Bytes of request bodies held for mirrors (`--max-buffered-bytes`).
    budget: Budget,
    /// This process's `Via` pseudonym (docs/shadowing.md, "Loops and `Via`").
    via_token: String,
    /// Ready-made `Via` entries for HTTP/1.0, 1.1 and 2.
    via_entries: [HeaderValue; 3],
    /// Set once the first looped request has been logged.
    loop_logged: AtomicBool,
    /// "main target unreachable" (`502`) log lines, at most one per second.
    main_unreachable_log: LogLimiter,
    /// "main did not answer in time" (`504`) log lines, at most one per second.
    main_timeout_log: LogLimiter,
    /// Answers by status class and their latency (the Prometheus scrape).
    main_stats: MainStats,
}

impl Proxy {
    /// The proxy for `config`, offering copies to the mirrors in `registry`; request
    /// bodies held for them count against `budget`.
    pub fn new(config: Settings, registry: Registry, budget: Budget) -> Self {
        let via_token = format!(
            "trafficmirror-{:016x}",
            std::collections::hash_map::RandomState::new()
                .hash_one((std::process::id(), std::time::SystemTime::now()))
        );
        let entry =
            |v: &str| HeaderValue::from_str(&format!("{v} {via_token}")).expect("token is ASCII");
        let via_entries = [entry("1.0"), entry("1.1"), entry("2")];
        // Main's connections are made as the mirrors' are: same TLS settings, one pool
        // per worker thread, the same per-target limit.
        let main_pools = client::per_worker(
            &config.main,
            &config.mirror.tls,
            config.mirror.pools,
            config.mirror.max_connections,
        );
        Self {
            inner: Arc::new(Inner {
                main_pools,
                config,
                registry,
                budget,
                via_token,
                via_entries,
                loop_logged: AtomicBool::new(false),
                main_unreachable_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_timeout_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_stats: MainStats::default(),
            }),
        }
    }

    /// This proxy's own settings.
    fn config(&self) -> &Settings {
        &self.inner.config
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn budget(&self) -> &Budget {
        &self.inner.budget
    }

    /// Answers to proxied requests by status class, and their latency.
    pub fn main_stats(&self) -> &MainStats {
        &self.inner.main_stats
    }

    fn main_pool(&self) -> &Pool<BoxBody> {
        workers::pick(&self.inner.main_pools)
    }

    /// True the first time it is called: log a detected loop once, count it always.
    fn first_loop(&self) -> bool {
        !self.inner.loop_logged.swap(true, Ordering::Relaxed)
    }

    fn via_entry(&self, version: Version) -> &HeaderValue {
        let [v10, v11, v2] = &self.inner.via_entries;
        match version {
            Version::HTTP_10 | Version::HTTP_09 => v10,
            Version::HTTP_2 | Version::HTTP_3 => v2,
            _ => v11,
        }
    }

    /// Proxies one request to main and mirrors it. Never fails: upstream problems become
    /// `502`/`504` responses, a client's broken or stalled body `400`/`408`. Counts the
    /// answer's status class and the time until its head was ready.
    pub async fn forward<B>(&self, req: Request<B>, peer: &Peer) -> Response<BoxBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = tokio::time::Instant::now();
        let response = self.answer(req, peer, started).await;
        self.main_stats()
            .record(response.status(), started.elapsed());
        response
    }

    /// [`Proxy::forward`] without the counting.
    async fn answer<B>(
        &self,
        mut req: Request<B>,
        peer: &Peer,
        started: tokio::time::Instant,
    ) -> Response<BoxBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let config = self.config();
        if req.method() == Method::CONNECT {
            // Answered here and never mirrored, yet counted once per mirror as every
            // proxied request is (docs/shadowing.md, "The admin endpoint"): like an upgrade.
            let mirrors = self.registry().snapshot();
            let selected = select(&mirrors, req.method(), req.uri().path(), req.headers());
            skip_all(&mirrors, &selected);
            return error_response(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported: trafficmirror is a reverse proxy",
            );
        }
        let upgrade = upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // `Host` becomes each target's authority, set per target below. (The server
        // answered 400 to a request with more than one.)
        let host = parts.headers.remove(header::HOST).or_else(|| {
            // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        // Room for what is added below (X-Forwarded-*, Via, Host): one growth, not several.
        let _ = parts.headers.try_reserve(5); // only fails past http's size limit
        let looped = headers::via_contains(&parts.headers, &self.inner.via_token);
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::set_forwarded(
            &mut parts.headers,
            &peer.ip_header,
            host.as_ref(),
            peer.https,
        );
        headers::append_via(&mut parts.headers, self.via_entry(parts.version));
        if config.preserve_host {
            if let Some(host) = &host {
                parts.headers.insert(header::HOST, host.clone());
            }
        }
        if let Some(protocol) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }

        let mirrors = self.registry().snapshot();
        let selected = select(&mirrors, &parts.method, parts.uri.path(), &parts.headers);
        let timeout = config.body_read_timeout;
        // An HTTP/2 body ends with END_STREAM, which hyper does not tell apart from a
        // reset (see `tee`).
        let h2 = parts.version == Version::HTTP_2;
        // Ordered mirrors learn when main's answer is complete (see `mirror::ordered`).
        let mut main_halves = Vec::new();
        let mut orders = Vec::new();
        let mut comparing = false;
        for (index, member) in selected.iter(&mirrors) {
            if member.plan.options.ordered {
                let (main_half, mirror_half) = member.mirror.arrive();
                main_halves.push(main_half);
                orders.push((index, mirror_half));
            }
            comparing |= member.plan.compare.is_some();
        }
        let (main_answer_tx, main_answer) = if comparing && !looped && upgrade.is_none() {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let upstream_body = if selected.is_empty() {
            self.streamed(body, h2)
        } else if looped || upgrade.is_some() {
            if looped && self.first_loop() {
                // Already handled by this instance (docs/shadowing.md, "Loops and `Via`").
                warn!(
                    path = parts.uri.path(),
                    "request already carries this proxy's Via entry (a mirror points back here): \
                     proxied but not mirrored; further loops are only counted as skipped"
                );
            }
            skip_all(&mirrors, &selected);
            self.streamed(body, h2)
        } else if body.size_hint().lower() > config.max_body_size {
            skip_all(&mirrors, &selected);
            self.streamed(body, h2)
        } else {
            let mut headers = parts.headers.clone();
            // A slot each copy fills with its mirror's authority in place, so that the
            // per-copy clone of this map never grows (a reallocation per copy).
            let host_slot = !headers.contains_key(header::HOST);
            if host_slot {
                headers.insert(header::HOST, HeaderValue::from_static(""));
            }
            let offer = Offer {
                mirrors,
                selected,
                orders,
                method: parts.method.clone(),
                path_and_query: parts.uri.path_and_query().cloned(),
                headers,
                host_slot,
                main_answer,
            };
            let held = self.budget().hold();
            if body.is_end_stream() {
                // Nothing to collect (a GET): the copy goes out at once.
                offer.deliver(Bytes::new(), held);
                body::boxed(body)
            } else {
                body::boxed(RequestBody::teed(
                    body,
                    timeout,
                    h2,
                    offer,
                    held,
                    config.max_body_size,
                ))
            }
        };

        let main = &config.main;
        parts.uri = main.request_target(parts.uri.path_and_query());
        // With --preserve-host the client's `Host` stays, but an HTTP/1.0 client may have
        // sent none, and HTTP/1.1 to main requires one.
        if !config.preserve_host || !parts.headers.contains_key(header::HOST) {
            parts
                .headers
                .insert(header::HOST, main.host_header().clone());
        }
        parts.version = Version::HTTP_11;
        let upstream = Request::from_parts(parts, upstream_body);
        let pending = self.main_pool().send(upstream);
        let result = match config.main_timeout {
            None => pending.await,
            Some(limit) => match tokio::time::timeout(limit, pending).await {
                Ok(result) => result,
                Err(_) => {
                    if let Some(held_back) = self.inner.main_timeout_log.admit() {
                        warn!(main = %config.main, timeout = ?limit, held_back, "main did not answer in time");
                    }
                    return error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "main target did not answer within --main-timeout",
                    );
                }
            },
        };
        match result {
            Ok(mut response) => {
                let tunnel = match (client_upgrade, &upgrade) {
                    (Some(client), Some(_))
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        let upstream = hyper::upgrade::on(&mut response);
                        tokio::spawn(tunnel(client, upstream));
                        response.headers().get(header::UPGRADE).cloned()
                    }
                    _ => None,
                };
                let (mut parts, body) = response.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                if let Some(protocol) = tunnel {
                    parts
                        .headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    parts.headers.insert(header::UPGRADE, protocol);
                }
                // Our connection to the client has its own version; hyper picks the wire
                // version from this field, so a main speaking HTTP/1.0 must not leak through.
                parts.version = Version::HTTP_11;
                let capture = main_answer_tx.map(|tx| {
                    MainCapture::new(
                        parts.status,
                        parts.headers.clone(),
                        started,
                        tx,
                        config.mirror.max_compare_size,
                        self.budget(),
                    )
                });
                if main_halves.is_empty() && capture.is_none() {
                    Response::from_parts(parts, body::boxed(body))
                } else {
                    let body = OnEnd::new(body, main_halves, capture);
                    Response::from_parts(parts, body::boxed(body))
                }
            }
            Err(err) => match client_body_error(&err) {
                Some(ClientBodyError::Timeout(limit)) => {
                    debug!(client = %peer.addr, timeout = ?limit, "request body stalled");
                    error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive within --body-read-timeout",
                    )
                }
                Some(ClientBodyError::Read(cause)) => {
                    debug!(client = %peer.addr, error = %cause, "malformed or broken request body");
                    error_response(StatusCode::BAD_REQUEST, "failed to read the request body")
                }
                Some(unfinished @ ClientBodyError::Unfinished { .. }) => {
                    debug!(client = %peer.addr, error = %unfinished, "request body not finished");
                    error_response(StatusCode::BAD_REQUEST, "the request body did not end")
                }
                None => {
                    if let Some(held_back) = self.inner.main_unreachable_log.admit() {
                        warn!(main = %config.main, error = %client::error_chain(&err), held_back, "main target unreachable");
                    }
                    error_response(StatusCode::BAD_GATEWAY, "main target unreachable")
                }
            },
        }
    }

    /// A body streamed to main with the stall timeout, and no copy. `h2`: an HTTP/2
    /// request's body.
    fn streamed<B>(&self, body: B, h2: bool) -> BoxBody
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            body::boxed(body)
        } else {
            body::boxed(RequestBody::streamed(
                body,
                self.config().body_read_timeout,
                h2,
            ))
        }
    }
}

/// The protocol a request asks to switch to, when it is an HTTP/1.1 upgrade request
/// (`Connection: upgrade` plus `Upgrade: …`). An offer of `h2c` alone is not one: it
/// concerns the client's connection to this proxy, which answers in HTTP/1.1 as a server
/// ignoring the offer does (RFC 9113 §3.1 deprecates it), so the request goes on, and is
/// mirrored, as an ordinary one without its `Upgrade` header.
fn upgrade_protocol(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
        .filter(|protocol| {
            !protocol
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"h2c")
        })
}

/// Copies bytes both ways between the upgraded client and main connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(err) => {
            debug!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => debug!(up, down, "upgraded connection closed"),
        Err(err) => debug!(error = %err, "upgraded connection ended with an error"),
    }
}

/// The mirrors whose options select this request; the others count it `filtered`.
fn select(mirrors: &Mirrors, method: &Method, path: &str, headers: &http::HeaderMap) -> Selection {
    let mut selected = Selection::default();
    for (index, member) in mirrors.iter().enumerate() {
        if member.plan.selects(method, path, headers) {
            selected.add(index);
        } else {
            member.mirror.filter();
        }
    }
    selected
}

fn skip_all(mirrors: &Mirrors, selected: &Selection) {
    for (_, member) in selected.iter(mirrors) {
        member.mirror.skip();
    }
}

/// Main's response body on its way to the client: captured for comparing mirrors, and
/// reported to ordered mirrors once it has been read to its end.
struct OnEnd<B> {
    body: B,
    halves: Vec<MainHalf>,
    capture: Option<MainCapture>,
}

impl<B: Body<Data = Bytes> + Unpin> OnEnd<B> {
    fn new(body: B, halves: Vec<MainHalf>, capture: Option<MainCapture>) -> Self {
        let mut on_end = Self {
            body,
            halves,
            capture,
        };
        // An empty answer is complete with its head; its body may never be polled.
        if on_end.body.is_end_stream() {
            on_end.report();
        }
        on_end
    }

    fn report(&mut self) {
        for half in self.halves.drain(..) {
            half.done();
        }
        if let Some(capture) = self.capture.take() {
            capture.finish();
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for OnEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let (std::task::Poll::Ready(Some(Ok(frame))), Some(capture)) =
            (&polled, self.capture.as_mut())
        {
            if let Some(data) = frame.data_ref() {
                capture.push(data);
            }
        }
        match &polled {
            std::task::Poll::Ready(None) => self.report(),
            std::task::Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.report(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The client's body failure behind a failed request to main, if that is what it was.
fn client_body_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut source = Some(err);
    while let Some(cause) = source {
        if let Some(found) = cause.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        source = cause.source();
    }
    None
}

/// A plain-text error answer from the proxy itself.
pub fn error_response(status: StatusCode, message: &str) -> Response<BoxBody> {
    body::text(status, format!("{message}\n"))
}
