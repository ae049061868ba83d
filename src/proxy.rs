//! Forwarding to main (SPEC §4) and handing each request's copy to the mirrors (SPEC §5).
//!
//! Request flow: rewrite headers once → if any mirror may receive a copy, read the body
//! (up to `--max-body-size`) into one `Bytes` and offer an `Arc` of the request to every
//! mirror without waiting → send to main → stream main's response back as it arrives.
//! When there are no mirrors the body is streamed to main untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Body;
use tracing::{debug, warn};

use crate::body::{self, BoxBody, BoxError, Buffered, Replay};
use crate::headers;
use crate::mirror::MirrorRequest;
use crate::registry::Mirrors;
use crate::server::AppState;

/// Proxies one request to main and mirrors it. Never fails: upstream problems become
/// `502`/`504` responses.
pub async fn forward<B>(state: &AppState, req: Request<B>, peer: SocketAddr) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        // HTTP/2 carries the host in `:authority`, which hyper puts in the URI.
        let authority = parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    let looped = headers::via_contains(&parts.headers, state.via_token());
    headers::strip_hop_by_hop(&mut parts.headers);
    // The client sets `Host` to each target's authority (SPEC §4).
    parts.headers.remove(header::HOST);
    headers::set_forwarded(&mut parts.headers, peer.ip(), host.as_ref());
    headers::append_via(&mut parts.headers, state.via_entry(parts.version));

    let mirrors = state.registry().snapshot();
    let upstream_body = if mirrors.is_empty() {
        body::boxed(body)
    } else if looped {
        // SPEC §5 "Loops": this instance already handled this request once.
        debug!(
            path = parts.uri.path(),
            "request carries our Via token: not mirrored"
        );
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

    parts.uri = state.config().main.join(parts.uri.path_and_query());
    parts.version = Version::HTTP_11;
    let upstream = Request::from_parts(parts, upstream_body);
    let pending = state.main_client().request(upstream);
    let result = match state.config().main_timeout {
        None => pending.await,
        Some(limit) => match tokio::time::timeout(limit, pending).await {
            Ok(result) => result,
            Err(_) => {
                warn!(main = %state.config().main, timeout = ?limit, "main did not answer in time");
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "main target did not answer within --main-timeout",
                );
            }
        },
    };
    match result {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            // Our connection to the client has its own version; hyper picks the wire
            // version from this field, so a main speaking HTTP/1.0 must not leak through.
            parts.version = Version::HTTP_11;
            Response::from_parts(parts, body::boxed(body))
        }
        Err(err) => {
            warn!(main = %state.config().main, error = %error_chain(&err), "main target unreachable");
            error_response(StatusCode::BAD_GATEWAY, "main target unreachable")
        }
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

/// `error: cause: cause`, since hyper's top-level messages are terse.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
