//! The proxy: forwarding to main and handing each request's copy to the mirrors
//! (docs/shadowing.md, "How requests are handled"). [`Proxy`] owns what forwarding needs: its
//! settings, the keep-alive pools to main, the mirror set, the byte budget for
//! mirrored bodies, and this process's `Via` token.
//!
//! Request flow, one step each in [`Proxy::prepare`] then [`Proxy::forward`]: rewrite
//! the head once ([`Proxy::rewrite_head`]) → pick the mirrors that want a copy and plan their offer
//! ([`Proxy::offer_copy`], [`offer`]) → send to main with the body streamed as it
//! arrives ([`Proxy::send_to_main`]); a copy of it is collected on the way ([`tee`])
//! and offered to those mirrors once complete → stream main's response back as it
//! arrives ([`Proxy::build_answer`]), or the proxy's own answer when main cannot give
//! one ([`MainError`]).
//!
//! Upgrade requests (WebSocket and others, RFC 9110 §7.8) are tunnelled to main both
//! ways and never mirrored: a copy cannot take part in the conversation.

mod error;
mod offer;
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
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::body::{self, BoxBody, BoxError};
use crate::budget::Budget;
use crate::client::{self, Pool};
use crate::headers;
use crate::mirror;
use crate::mirror::compare::capture::MainCapture;
use crate::mirror::grpc;
use crate::mirror::ordered::MainHalf;
use crate::observe::metrics::MainStats;
use crate::ratelimit::LogLimiter;
use crate::registry::Registry;
use crate::target_url::{TargetUrl, Transport};
use crate::workers;
use error::MainError;
pub use error::own_answer;
use offer::{Fate, Followers, Offer, fate, select, skip_all};
use tee::{BodyFailure, ClientBodyError, RequestBody};

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

/// What [`Proxy::prepare`] makes of a request: the proxy's own answer, or what main's
/// exchange takes (the request, where its body records a failure of the client's side,
/// the client's side of an upgrade, what main's answer owes the mirrors and a gRPC
/// client).
enum Prepared {
    Answered(Response<BoxBody>),
    ToMain {
        request: Request<BoxBody>,
        body_failure: Option<BodyFailure>,
        client_upgrade: Option<OnUpgrade>,
        followers: Followers,
        declare_trailers: bool,
    },
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
    settings: Settings,
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
    /// "main leads back here" (`508`) log lines, at most one per second.
    main_loop_log: LogLimiter,
    /// Answers by status class and their latency (the Prometheus scrape).
    main_stats: MainStats,
}

impl Proxy {
    /// The proxy for `settings`, offering copies to the mirrors in `registry`; request
    /// bodies held for them count against `budget`.
    pub fn new(settings: Settings, registry: Registry, budget: Budget) -> Self {
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
            &settings.main,
            &settings.mirror.tls,
            settings.mirror.pools,
            settings.mirror.max_connections,
        );
        Self {
            inner: Arc::new(Inner {
                main_pools,
                settings,
                registry,
                budget,
                via_token,
                via_entries,
                loop_logged: AtomicBool::new(false),
                main_unreachable_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_timeout_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_loop_log: LogLimiter::new(MAIN_ERROR_LOG_INTERVAL),
                main_stats: MainStats::default(),
            }),
        }
    }

    fn settings(&self) -> &Settings {
        &self.inner.settings
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

    /// Main's URL and the protocol spoken to it (for `https://`, what its server picked
    /// on the latest connection; `None` before one), for the admin endpoint's status.
    pub fn main_target(&self) -> (&TargetUrl, Option<&'static str>) {
        let protocol = self.inner.main_pools.iter().find_map(Pool::protocol);
        (&self.settings().main, protocol)
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
    /// answer's status class and the time until its head was ready. The one `async`
    /// block of the request's way through the proxy: each level of them would hold the
    /// request once more (rust-lang/rust#62958).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn copies its arguments into a second slot of its future (rust-lang/rust#62958)"
    )]
    pub fn forward<B>(
        &self,
        req: Request<B>,
        peer: &Peer,
    ) -> impl Future<Output = Response<BoxBody>> + Send
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            let started = tokio::time::Instant::now();
            // gRPC calls are POSTs: other methods skip the header lookup, done once here.
            let grpc = req.method() == Method::POST && headers::is_grpc(req.headers());
            // Counted by status only over HTTP/2, the protocol gRPC runs on.
            let counted = grpc && req.version() == Version::HTTP_2;
            let response = match self.prepare(req, peer, grpc) {
                Prepared::Answered(answered) => answered,
                Prepared::ToMain {
                    request,
                    body_failure,
                    client_upgrade,
                    followers,
                    declare_trailers,
                } => match self.send_to_main(request, body_failure.as_ref()).await {
                    Ok(response) => self.build_answer(
                        response,
                        client_upgrade,
                        followers,
                        started,
                        declare_trailers,
                    ),
                    Err(err) => {
                        self.log_main_error(&err, peer);
                        err.answer(grpc)
                    }
                },
            };
            self.main_stats()
                .record(response.status(), started.elapsed());
            if counted {
                return self.main_stats().count_grpc(response).map(body::boxed);
            }
            response
        }
    }

    /// The request's steps before main is asked, in order: what to send it, or the
    /// proxy's own answer. `grpc`: a POST whose `Content-Type` is gRPC's.
    fn prepare<B>(&self, mut req: Request<B>, peer: &Peer, grpc: bool) -> Prepared
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        // Answered here, never mirrored: counted once per mirror like an upgrade, logged.
        let refuse = |req: &Request<B>, err: MainError| {
            self.count_unmirrored(req);
            self.log_main_error(&err, peer);
            Prepared::Answered(err.answer(grpc))
        };
        if req.method() == Method::CONNECT {
            return refuse(&req, MainError::Connect);
        }
        // Once through here: a mirror leads back, the copy goes to main but is not
        // mirrored again. Twice: main leads back, and forwarding would never end.
        let seen = headers::Seen::scan(req.headers());
        let visits = if seen.via {
            headers::via_visits(req.headers(), &self.inner.via_token)
        } else {
            0
        };
        if visits >= 2 {
            return refuse(&req, MainError::Loop);
        }
        if grpc && self.settings().main.transport() == Transport::Http {
            return refuse(&req, MainError::GrpcOverHttp1);
        }
        let looped = visits > 0;
        let upgrade = seen
            .connection()
            .then(|| upgrade_protocol(req.headers()))
            .flatten();
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        self.rewrite_head(&mut parts, peer, upgrade, seen);
        // hyper writes an HTTP/1 answer's trailers only to a client that asked for them
        // (`TE: trailers`), and only those its `Trailer` header names.
        let declare_trailers =
            grpc && parts.version < Version::HTTP_2 && headers::te_lists_trailers(&parts.headers);
        let mut body_failure = None;
        let (body, followers) = self.offer_copy(
            &parts,
            body,
            looped,
            client_upgrade.is_some(),
            &mut body_failure,
        );
        main_head(
            &mut parts,
            &self.settings().main,
            self.settings().preserve_host,
        );
        Prepared::ToMain {
            request: Request::from_parts(parts, body),
            body_failure,
            client_upgrade,
            followers,
            declare_trailers,
        }
    }

    /// Counts a request answered here and never mirrored once per mirror, as every
    /// proxied request is (docs/shadowing.md, "The admin endpoint"): like an upgrade.
    fn count_unmirrored<B>(&self, req: &Request<B>) {
        let mirrors = self.registry().snapshot();
        let selected = select(
            &mirrors,
            req.method(),
            req.uri().path(),
            req.headers(),
            false,
        );
        skip_all(&mirrors, &selected);
    }

    /// Rewrites a request's head once, for main and every mirror alike: `Host` leaves
    /// (each target gets its own, see [`main_head`] and the offer's host slot), hop-by-hop
    /// headers go, `X-Forwarded-*` and this proxy's `Via` entry come; an upgrade request
    /// keeps asking for `upgrade`. `seen`: what a scan of the head's names found.
    fn rewrite_head(
        &self,
        parts: &mut http::request::Parts,
        peer: &Peer,
        upgrade: Option<HeaderValue>,
        seen: headers::Seen,
    ) {
        // `Host` becomes each target's authority: its value is left empty, a slot filled
        // in place per target (see [`main_head`] and the offer), cheaper than removing
        // it and adding it again. (The server answered 400 to more than one.)
        let preserve_host = self.settings().preserve_host;
        let sent = parts
            .headers
            .get_mut(header::HOST)
            .map(|host| match preserve_host {
                true => host.clone(),
                false => std::mem::replace(host, HeaderValue::from_static("")),
            });
        let had_host = sent.is_some();
        let host = sent.or_else(|| {
            // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        // Room for what is added below (X-Forwarded-*, Via, Host): one growth, not several.
        let _ = parts.headers.try_reserve(5); // only fails past http's size limit
        headers::strip_seen(&mut parts.headers, seen);
        headers::set_forwarded(
            &mut parts.headers,
            &peer.ip_header,
            host.as_ref(),
            peer.https,
        );
        headers::append_via(&mut parts.headers, self.via_entry(parts.version));
        if preserve_host && !had_host {
            if let Some(host) = host {
                parts.headers.insert(header::HOST, host);
            }
        }
        if let Some(protocol) = upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol);
        }
    }

    /// Plans the mirrors' copy of a request whose head is rewritten: picks the mirrors
    /// that want it, and either skips them all (a loop, an upgrade, a body announced
    /// over `--max-body-size`) or offers them the copy once its body is complete. Returns
    /// the body to send to main (copied on its way when offered) and what main's answer
    /// owes the mirrors.
    fn offer_copy<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
        looped: bool,
        upgrade: bool,
        failure: &mut Option<BodyFailure>,
    ) -> (BoxBody, Followers)
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        // An HTTP/2 body ends with END_STREAM, which hyper does not tell apart from a
        // reset (see `tee`).
        let h2 = parts.version == Version::HTTP_2;
        let mirrors = self.registry().snapshot();
        if mirrors.is_empty() {
            return (self.streamed(body, h2, failure), Followers::default());
        }
        // gRPC runs over HTTP/2 only: an HTTP/1.1 request is never a call.
        let grpc = h2 && grpc::is_call(&parts.headers);
        let selected = select(
            &mirrors,
            &parts.method,
            parts.uri.path(),
            &parts.headers,
            grpc,
        );
        if selected.is_empty() {
            return (self.streamed(body, h2, failure), Followers::default());
        }
        let (followers, awaiting) = Followers::of(&mirrors, &selected, looped || upgrade, grpc);
        let lower = body.size_hint().lower();
        if fate(looped, upgrade, lower, self.settings().max_body_size) == Fate::Skip {
            if looped && self.first_loop() {
                // Already handled by this instance (docs/shadowing.md, "Loops and `Via`").
                warn!(
                    path = parts.uri.path(),
                    "request already carries this proxy's Via entry (a mirror points back here): \
                     proxied but not mirrored; further loops are only counted as skipped"
                );
            }
            skip_all(&mirrors, &selected);
            return (self.streamed(body, h2, failure), followers);
        }
        let host_slot = !self.settings().preserve_host || !parts.headers.contains_key(header::HOST);
        let offer = Offer::new(mirrors, selected, awaiting, parts, grpc, host_slot);
        (self.teed(body, h2, offer, failure), followers)
    }

    /// A body streamed to main while a copy is collected for `offer`, or the copy sent
    /// at once when there is no body to collect (a GET). A streamed body records its
    /// failure in a new `failure`.
    fn teed<B>(&self, body: B, h2: bool, offer: Offer, failure: &mut Option<BodyFailure>) -> BoxBody
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let held = self.budget().hold();
        if body.is_end_stream() {
            offer.deliver(Bytes::new(), held);
            return self.streamed(body, h2, failure);
        }
        let settings = self.settings();
        let teed = RequestBody::teed(
            body,
            settings.body_read_timeout,
            h2,
            offer,
            held,
            settings.max_body_size,
        );
        body::boxed(teed.reporting_to(failure.insert(BodyFailure::default()).clone()))
    }

    /// Sends a request to main within `--main-timeout`. `body_failure`: where its body
    /// records why the client's side failed.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn copies its arguments into a second slot of its future (rust-lang/rust#62958)"
    )]
    fn send_to_main(
        &self,
        request: Request<BoxBody>,
        body_failure: Option<&BodyFailure>,
    ) -> impl Future<Output = Result<Response<client::Pooled<BoxBody>>, MainError>> + Send {
        async move {
            let pending = self.main_pool().send(request);
            let failed = |err| MainError::from_exchange(err, body_failure);
            match self.settings().main_timeout {
                None => pending.await.map_err(failed),
                Some(limit) => match tokio::time::timeout(limit, pending).await {
                    Ok(result) => result.map_err(failed),
                    Err(_) => Err(MainError::Timeout(limit)),
                },
            }
        }
    }

    /// Main's answer as the client gets it: its head rewritten (and a switch of
    /// protocols tunnelled both ways), its body streamed, captured for comparing mirrors
    /// and reported at its end to ordered ones. `declare_trailers`: a gRPC call from an
    /// HTTP/1 client that asked for trailers, so a gRPC answer names them in `Trailer`.
    fn build_answer<R>(
        &self,
        mut response: Response<R>,
        client_upgrade: Option<OnUpgrade>,
        followers: Followers,
        started: tokio::time::Instant,
        declare_trailers: bool,
    ) -> Response<BoxBody>
    where
        R: Body<Data = Bytes> + Send + Unpin + 'static,
        R::Error: Into<BoxError>,
    {
        let switched = match client_upgrade {
            Some(client) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client, upstream));
                response.headers().get(header::UPGRADE).cloned()
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        answer_head(&mut parts, switched);
        if declare_trailers && !body.is_end_stream() {
            declare_grpc_trailers(&mut parts.headers);
        }
        let capture = followers.answer_tx.map(|tx| {
            MainCapture::new(
                parts.status,
                parts.headers.clone(),
                started,
                tx,
                self.settings().mirror.max_compare_size,
                self.budget(),
            )
        });
        if followers.halves.is_empty() && capture.is_none() && followers.main_ended.is_none() {
            Response::from_parts(parts, body::boxed(body))
        } else {
            let body = OnEnd::new(body, followers.halves, capture, followers.main_ended);
            Response::from_parts(parts, body::boxed(body))
        }
    }

    /// Logs why the proxy answers itself: main's failures at `warn`, at most one line
    /// per second each; a client's failing body at `debug`.
    fn log_main_error(&self, err: &MainError, peer: &Peer) {
        let main = &self.settings().main;
        match err {
            MainError::Connect => {}
            MainError::Loop => {
                if let Some(held_back) = self.inner.main_loop_log.admit() {
                    warn!(main = %main, held_back, "request answered 508: it already went through this proxy twice, so main leads back here (directly or through other proxies)");
                }
            }
            MainError::Timeout(limit) => {
                if let Some(held_back) = self.inner.main_timeout_log.admit() {
                    warn!(main = %main, timeout = ?limit, held_back, "main did not answer in time");
                }
            }
            MainError::GrpcOverHttp1 => {
                if let Some(held_back) = self.inner.main_unreachable_log.admit() {
                    warn!(main = %main, held_back, "gRPC request answered UNAVAILABLE: main is http:// (HTTP/1.1 cannot carry gRPC); use h2c:// or https://");
                }
            }
            MainError::Unreachable(err) => {
                if let Some(held_back) = self.inner.main_unreachable_log.admit() {
                    warn!(main = %main, error = %client::error_chain(err), held_back, "main target unreachable");
                }
            }
            MainError::BodyStalled(limit) => {
                debug!(client = %peer.addr, timeout = ?limit, "request body stalled");
            }
            MainError::BodyBroken(err) => {
                if let Some(cause) = MainError::body_cause(err) {
                    debug!(client = %peer.addr, error = %cause, "malformed or broken request body");
                }
            }
            &MainError::BodyUnfinished { received, expected } => {
                let unfinished = ClientBodyError::Unfinished { received, expected };
                debug!(client = %peer.addr, error = %unfinished, "request body not finished");
            }
        }
    }

    /// A body streamed to main with the stall timeout, and no copy. `h2`: an HTTP/2
    /// request's body.
    fn streamed<B>(&self, body: B, h2: bool, failure: &mut Option<BodyFailure>) -> BoxBody
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            // Nothing to read: an `Empty` in its box is no allocation, a body would be.
            body::boxed(http_body_util::Empty::new())
        } else {
            let streamed = RequestBody::streamed(body, self.settings().body_read_timeout, h2);
            body::boxed(streamed.reporting_to(failure.insert(BodyFailure::default()).clone()))
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

/// Points a rewritten request head at main: its path under main's prefix, main's
/// `Host` unless `--preserve-host` kept the client's, HTTP/1.1.
fn main_head(parts: &mut http::request::Parts, main: &TargetUrl, preserve_host: bool) {
    parts.uri = main.request_target(parts.uri.path_and_query());
    // With --preserve-host the client's `Host` stays, but an HTTP/1.0 client may have
    // sent none, and HTTP/1.1 to main requires one.
    if !preserve_host || !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, main.host_header().clone());
    }
    parts.version = Version::HTTP_11;
}

/// Rewrites main's answer head for the client: hop-by-hop headers go, except the
/// `upgrade` of a switch of protocols to `switched`.
fn answer_head(parts: &mut http::response::Parts, switched: Option<HeaderValue>) {
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = switched {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    // Our connection to the client has its own version; hyper picks the wire version
    // from this field, so a main speaking HTTP/1.0 must not leak through.
    parts.version = Version::HTTP_11;
}

/// Names a gRPC answer's trailers in its `Trailer` header, unless main named them
/// itself: HTTP/2 needs no such declaration, so gRPC servers send none, and an HTTP/1
/// client would otherwise never see `grpc-status`.
fn declare_grpc_trailers(headers: &mut http::HeaderMap) {
    if headers::is_grpc(headers) && !headers.contains_key(header::TRAILER) {
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
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

/// Main's response body on its way to the client: captured for comparing mirrors, and
/// reported to ordered mirrors once it has been read to its end.
struct OnEnd<B> {
    body: B,
    halves: Vec<MainHalf>,
    capture: Option<MainCapture>,
    /// A gRPC call's flag of main's answer's end (see `offer::Offer::main_ended`).
    main_ended: Option<Arc<AtomicBool>>,
}

impl<B: Body<Data = Bytes> + Unpin> OnEnd<B> {
    fn new(
        body: B,
        halves: Vec<MainHalf>,
        capture: Option<MainCapture>,
        main_ended: Option<Arc<AtomicBool>>,
    ) -> Self {
        let mut on_end = Self {
            body,
            halves,
            capture,
            main_ended,
        };
        // An empty answer is complete with its head; its body may never be polled.
        if on_end.body.is_end_stream() {
            on_end.report();
        }
        on_end
    }

    fn report(&mut self) {
        if let Some(ended) = self.main_ended.take() {
            ended.store(true, Ordering::Release);
        }
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
            capture.push_frame(frame);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::mirror::counters::Snapshot;
    use http_body_util::{BodyExt, Empty, Full};

    /// A proxy to main at `http://main.test:8080/base`, with `args` added (its
    /// `--mirror` mirrors in the set).
    fn proxy(args: &[&str]) -> Proxy {
        let mut all = vec!["trafficmirror", "--main", "http://main.test:8080/base"];
        all.extend_from_slice(args);
        let config = crate::Config::from_cli(&Cli::try_parse_args(all).unwrap()).unwrap();
        let budget = Budget::new(config.max_buffered_bytes);
        let registry = Registry::new(config.proxy.mirror.clone(), budget.clone());
        registry.add_lines(&config.initial.mirrors, crate::mirror::Source::Flag);
        Proxy::new(config.proxy, registry, budget)
    }

    fn peer() -> Peer {
        Peer::new("10.1.2.3:4567".parse().unwrap(), false)
    }

    fn head(req: http::request::Builder) -> http::request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    /// The counters of each mirror, in the set's order.
    fn counters(proxy: &Proxy) -> Vec<Snapshot> {
        let mirrors = proxy.registry().snapshot();
        mirrors
            .iter()
            .map(|m| m.mirror.status(&m.plan).counters)
            .collect()
    }

    #[test]
    fn the_head_empties_host_loses_hop_by_hop_and_gains_forwarded_and_via() {
        let proxy = proxy(&[]);
        let mut parts = head(
            Request::get("/x?y=1")
                .header(header::HOST, "client.example")
                .header(header::CONNECTION, "keep-alive, x-private")
                .header("x-private", "1")
                .header("x-kept", "2"),
        );
        let seen = headers::Seen::scan(&parts.headers);
        proxy.rewrite_head(&mut parts, &peer(), None, seen);
        let h = &parts.headers;
        assert_eq!(h[header::HOST], "", "a slot for each target's authority");
        assert!(!h.contains_key(header::CONNECTION));
        assert!(!h.contains_key("x-private"));
        assert_eq!(h["x-kept"], "2");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "client.example");
        let via = format!("1.1 {}", proxy.inner.via_token);
        assert_eq!(h[header::VIA], via.as_str());
    }

    #[test]
    fn an_http2_request_forwards_its_authority_as_host() {
        let proxy = proxy(&[]);
        let mut parts = head(Request::get("http://client.example:8443/x").version(Version::HTTP_2));
        let seen = headers::Seen::scan(&parts.headers);
        proxy.rewrite_head(&mut parts, &peer(), None, seen);
        assert_eq!(parts.headers["x-forwarded-host"], "client.example:8443");
        let via = format!("2 {}", proxy.inner.via_token);
        assert_eq!(parts.headers[header::VIA], via.as_str());
    }

    #[tokio::test]
    async fn a_request_through_here_twice_is_answered_508_and_counted_skipped() {
        let proxy = proxy(&["--mirror", "http://127.0.0.1:9"]);
        let token = &proxy.inner.via_token;
        let twice = format!("1.1 {token}, 1.1 other, 1.1 {token}");
        let request = Request::get("/").header(header::VIA, twice);
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        let response = proxy.forward(request, &peer()).await;
        assert_eq!(response.status(), StatusCode::LOOP_DETECTED);
        let grpc = Request::post("/pkg.S/M")
            .version(Version::HTTP_2)
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::VIA, format!("2 {token}, 2 {token}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = proxy.forward(grpc, &peer()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "13");
        assert_eq!(counters(&proxy)[0].skipped, 2);
        assert_eq!(counters(&proxy)[0].sent, 0);
    }

    #[test]
    fn preserve_host_keeps_the_clients_host_and_an_upgrade_keeps_asking() {
        let proxy = proxy(&["--preserve-host"]);
        let mut parts = head(
            Request::get("/chat")
                .header(header::HOST, "client.example")
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket"),
        );
        let upgrade = upgrade_protocol(&parts.headers);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        let seen = headers::Seen::scan(&parts.headers);
        proxy.rewrite_head(&mut parts, &peer(), upgrade, seen);
        assert_eq!(parts.headers[header::HOST], "client.example");
        assert_eq!(parts.headers[header::CONNECTION], "upgrade");
        assert_eq!(parts.headers[header::UPGRADE], "websocket");
    }

    #[test]
    fn an_h2c_offer_alone_is_no_upgrade() {
        let h2c = head(
            Request::get("/")
                .header(header::CONNECTION, "Upgrade, HTTP2-Settings")
                .header(header::UPGRADE, " h2c "),
        );
        assert_eq!(upgrade_protocol(&h2c.headers), None);
        let without_connection = head(Request::get("/").header(header::UPGRADE, "websocket"));
        assert_eq!(upgrade_protocol(&without_connection.headers), None);
    }

    #[test]
    fn the_head_to_main_has_mains_url_host_and_http_1_1() {
        let main = TargetUrl::parse("http://main.test:8080/base").unwrap();
        let mut parts = head(Request::get("/x?y=1").version(Version::HTTP_2));
        main_head(&mut parts, &main, false);
        assert_eq!(parts.uri, "/base/x?y=1");
        assert_eq!(parts.headers[header::HOST], "main.test:8080");
        assert_eq!(parts.version, Version::HTTP_11);

        // --preserve-host keeps a client's Host, and gives main's to a request without.
        let mut kept = head(Request::get("/").header(header::HOST, "client.example"));
        main_head(&mut kept, &main, true);
        assert_eq!(kept.headers[header::HOST], "client.example");
        let mut none = head(Request::get("/").version(Version::HTTP_10));
        main_head(&mut none, &main, true);
        assert_eq!(none.headers[header::HOST], "main.test:8080");
    }

    #[test]
    fn mains_answer_head_loses_hop_by_hop_except_a_switch_of_protocols() {
        let response = Response::builder()
            .version(Version::HTTP_10)
            .header(header::CONNECTION, "close")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "1")
            .body(())
            .unwrap();
        let (mut parts, ()) = response.into_parts();
        answer_head(&mut parts, None);
        assert_eq!(parts.version, Version::HTTP_11);
        assert!(!parts.headers.contains_key(header::CONNECTION));
        assert!(!parts.headers.contains_key("keep-alive"));
        assert_eq!(parts.headers["x-kept"], "1");

        let switched = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(())
            .unwrap();
        let (mut parts, ()) = switched.into_parts();
        answer_head(&mut parts, Some(HeaderValue::from_static("websocket")));
        assert_eq!(parts.headers[header::CONNECTION], "upgrade");
        assert_eq!(parts.headers[header::UPGRADE], "websocket");
    }

    #[tokio::test]
    async fn a_selected_request_is_offered_and_the_others_filtered() {
        let proxy = proxy(&[
            "--mirror",
            "http://m1:1",
            "--mirror",
            "http://m2:2 method=POST",
        ]);
        let parts = head(Request::get("/x"));
        let (body, followers) =
            proxy.offer_copy(&parts, Empty::<Bytes>::new(), false, false, &mut None);
        assert!(body.is_end_stream());
        assert!(followers.halves.is_empty() && followers.answer_tx.is_none());
        let [m1, m2] = &counters(&proxy)[..] else {
            panic!()
        };
        assert_eq!((m1.sent, m1.skipped, m1.filtered), (1, 0, 0));
        assert_eq!((m2.sent, m2.skipped, m2.filtered), (0, 0, 1));
    }

    #[tokio::test]
    async fn loops_upgrades_and_bodies_over_the_limit_are_skipped() {
        let proxy = proxy(&["--mirror", "http://m1:1", "--max-body-size", "4"]);
        let parts = head(Request::post("/x"));
        let small = || Full::new(Bytes::from_static(b"1234"));
        let large = Full::new(Bytes::from_static(b"12345"));
        let (body, _) = proxy.offer_copy(&parts, small(), true, false, &mut None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "1234");
        proxy.offer_copy(&parts, small(), false, true, &mut None);
        let (body, _) = proxy.offer_copy(&parts, large, false, false, &mut None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "12345");
        assert_eq!(counters(&proxy)[0].skipped, 3);
        assert_eq!(counters(&proxy)[0].sent, 0);
        // At the limit the copy is collected on the way, and offered at the body's end.
        let (body, _) = proxy.offer_copy(&parts, small(), false, false, &mut None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "1234");
        assert_eq!(counters(&proxy)[0].sent, 1);
    }

    #[tokio::test]
    async fn ordered_and_comparing_mirrors_follow_mains_answer() {
        let proxy = proxy(&["--mirror", "http://m1:1 ordered=true compare=true"]);
        let parts = head(Request::get("/x"));
        let (_, followers) =
            proxy.offer_copy(&parts, Empty::<Bytes>::new(), false, false, &mut None);
        assert_eq!(followers.halves.len(), 1);
        assert!(followers.answer_tx.is_some());
        // A loop is not compared, but takes its place in the order.
        let (_, looped) = proxy.offer_copy(&parts, Empty::<Bytes>::new(), true, false, &mut None);
        assert_eq!(looped.halves.len(), 1);
        assert!(looped.answer_tx.is_none());
    }

    #[tokio::test]
    async fn mains_answer_is_captured_for_comparing_mirrors_as_it_streams() {
        let proxy = proxy(&[]);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let followers = Followers {
            halves: Vec::new(),
            answer_tx: Some(tx),
            main_ended: None,
        };
        let response = Response::builder()
            .status(StatusCode::CREATED)
            .body(Full::new(Bytes::from_static(b"made")))
            .unwrap();
        let started = tokio::time::Instant::now();
        let answer = proxy.build_answer(response, None, followers, started, false);
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert!(rx.borrow().is_none(), "captured before the client read it");
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "made");
        let main = rx
            .borrow()
            .clone()
            .expect("main's answer published at its end");
        assert_eq!(main.answer.status, StatusCode::CREATED);
        assert_eq!(main.answer.body.len(), 4);
    }

    #[tokio::test]
    async fn a_connect_request_is_counted_skipped_by_the_mirrors_it_selects() {
        let proxy = proxy(&[
            "--mirror",
            "http://m1:1",
            "--mirror",
            "http://m2:2 method=GET",
        ]);
        let req = Request::connect("other.example:443").body(()).unwrap();
        proxy.count_unmirrored(&req);
        let [m1, m2] = &counters(&proxy)[..] else {
            panic!()
        };
        assert_eq!((m1.skipped, m1.filtered), (1, 0));
        assert_eq!((m2.skipped, m2.filtered), (0, 1));
    }
}
