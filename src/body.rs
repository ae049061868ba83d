//! Body types and helpers for the answers the proxy writes itself. How a request body
//! is streamed to main and copied for the mirrors is in `proxy::tee`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;

/// Error type for body and stream plumbing that is only logged.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response and upstream request.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body from one buffer.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `text/plain` response, used for every answer the proxy writes itself.
pub fn text(status: http::StatusCode, body: impl Into<Bytes>) -> http::Response<BoxBody> {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Wraps any body into [`BoxBody`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
