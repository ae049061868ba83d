//! Forwarding to main (SPEC §4) and handing each request's copy to the mirrors (SPEC §5).
//!
//! Request flow: rewrite headers once → if any mirror may receive a copy, read the body
//! (up to `--max-body-size`) into one `Bytes` and offer an `Arc` of the request to every
//! mirror without waiting → send to main → stream main's response back as it arrives.
//! When there are no mirrors the body is streamed to main untouched.
//!
//! Upgrade requests (WebSocket and others, RFC 9110 §7.8) are tunnelled to main both
//! ways and never mirrored: a copy cannot take part in the conversation.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::body::{self, BoxBody, BoxError, Buffered, Replay};
use crate::client;
use crate::headers;
use crate::mirror::MirrorRequest;
use crate::registry::Mirrors;
use crate::server::AppState;

/// The client of one connection, with its address already formatted for
/// `X-Forwarded-For` (once per connection, not per request).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            ip_header: headers::client_ip(addr.ip()),
        }
    }
}

/// Proxies one request to main and mirrors it. Never fails: upstream problems become
/// `502`/`504` responses.
pub async fn forward<B>(state: &AppState, mut req: Request<B>, peer: &Peer) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if req.method() == Method::CONNECT {
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported: trafficmirror is a reverse proxy",
        );
    }
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
        let authority = parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let looped = headers::via_contains(&parts.headers, state.via_token());
    headers::strip_hop_by_hop(&mut parts.headers);
    // `Host` becomes each target's authority (SPEC §4), set per target below.
    parts.headers.remove(header::HOST);
    headers::set_forwarded(&mut parts.headers, &peer.ip_header, host.as_ref());
    headers::append_via(&mut parts.headers, state.via_entry(parts.version));
    if state.config().preserve_host {
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

    let mirrors = state.registry().snapshot();
    let upstream_body = if mirrors.is_empty() {
        body::boxed(body)
    } else if looped || upgrade.is_some() {
        if looped && state.first_loop() {
            // SPEC §5 "Loops": this instance already handled this request once.
            warn!(
                path = parts.uri.path(),
                "request already carries this proxy's Via entry (a mirror points back here): \
                 proxied but not mirrored; further loops are only counted as skipped"
            );
        }
        skip_all(&mirrors);
        body::boxed(body)
    } else if body.size_hint().lower() > state.config().max_body_size {
        skip_all(&mirrors);
        body::boxed(body)
    } else {
        match body::read_up_to(body, state.config().max_body_size).await {
            Ok(Buffered::Complete(bytes, trailers)) => {
                let copy = Arc::new(MirrorRequest {
                    method: parts.method.clone(),
                    path_and_query: parts.uri.path_and_query().cloned(),
                    headers: parts.headers.clone(),
                    body: bytes.clone(),
                });
                for mirror in mirrors.iter() {
                    mirror.offer(&copy);
                }
                body::boxed(Replay::<B>::complete(bytes, trailers))
            }
            Ok(Buffered::TooLarge(replay)) => {
                skip_all(&mirrors);
                body::boxed(replay)
            }
            Err(err) => {
                let err: BoxError = err.into();
                debug!(error = %err, "failed to read the request body");
                return error_response(StatusCode::BAD_REQUEST, "failed to read the request body");
            }
        }
    };

    let main = &state.config().main;
    parts.uri = main.request_target(parts.uri.path_and_query());
    // With --preserve-host the client's `Host` stays, but an HTTP/1.0 client may have
    // sent none, and HTTP/1.1 to main requires one.
    if !state.config().preserve_host || !parts.headers.contains_key(header::HOST) {
        parts
            .headers
            .insert(header::HOST, main.host_header().clone());
    }
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, upstream_body);
    let pending = state.main_pool().send(upstream);
    let result = match state.config().main_timeout {
        None => pending.await,
        Some(limit) => match tokio::time::timeout(limit, pending).await {
            Ok(result) => result,
            Err(_) => {
                if let Some(held_back) = state.main_timeout_log().admit() {
                    warn!(main = %state.config().main, timeout = ?limit, held_back, "main did not answer in time");
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
                (Some(client), Some(_)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
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
            Response::from_parts(parts, body::boxed(body))
        }
        Err(err) => {
            if let Some(held_back) = state.main_unreachable_log().admit() {
                warn!(main = %state.config().main, error = %client::error_chain(&err), held_back, "main target unreachable");
            }
            error_response(StatusCode::BAD_GATEWAY, "main target unreachable")
        }
    }
}

/// The protocol a request asks to switch to, when it is an HTTP/1.1 upgrade request
/// (`Connection: upgrade` plus `Upgrade: …`).
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

fn skip_all(mirrors: &Mirrors) {
    for mirror in mirrors.iter() {
        mirror.skip();
    }
}

/// A plain-text error answer from the proxy itself.
pub fn error_response(status: StatusCode, message: &str) -> Response<BoxBody> {
    body::text(status, format!("{message}\n"))
}
