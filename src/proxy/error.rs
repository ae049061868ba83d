//! Why the proxy answers a proxied request itself instead of with main's answer
//! ([`MainError`]), and that answer: the one place the proxy's own answers to proxied
//! requests are built (docs/shadowing.md, "How requests are handled"). To a gRPC
//! request they are gRPC answers (docs/shadowing.md, "gRPC and HTTP/2").

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::tee::{BodyFailure, ClientBodyError};
use crate::body::{self, BoxBody};
use crate::client;

/// Why main's answer cannot be forwarded: main failed (`502`, `504`), the client's body
/// did (`400`, `408`), or the request is not one to send (`501`, `508` for one that
/// main keeps sending back, and `502` for a gRPC request to an HTTP/1.1 main).
#[derive(Debug)]
pub enum MainError {
    /// A `CONNECT` request: a reverse proxy does not open tunnels to other hosts.
    Connect,
    /// The request already went through this proxy twice: main leads back here.
    Loop,
    /// Main did not answer within `--main-timeout`.
    Timeout(Duration),
    /// Main could not be reached, or the exchange with it failed.
    Unreachable(client::Error),
    /// The client sent nothing of its body for `--body-read-timeout`.
    BodyStalled(Duration),
    /// The client's body could not be read (malformed framing, a broken connection);
    /// the exchange error, whose chain holds the cause.
    BodyBroken(client::Error),
    /// The client's body ended short of its framing (`Content-Length`, `END_STREAM`).
    BodyUnfinished {
        received: u64,
        expected: &'static str,
    },
    /// A gRPC request while main is an `http://` target: HTTP/1.1 cannot carry gRPC
    /// (it needs trailers, which HTTP/1.1 servers and clients rarely support), so it is
    /// not sent.
    GrpcOverHttp1,
}

impl MainError {
    /// Sorts a failed exchange with main: the client's body failing shows up in its
    /// error chain, or in what the body recorded itself (`body_failure`: hyper's HTTP/2
    /// client resets the stream instead of returning the body's error); anything else
    /// is main's doing.
    pub fn from_exchange(err: client::Error, body_failure: Option<&BodyFailure>) -> Self {
        let recorded = || body_failure.and_then(|failure| failure.get());
        match client_body_error(&err).or_else(recorded) {
            Some(ClientBodyError::Timeout(limit)) => Self::BodyStalled(*limit),
            Some(ClientBodyError::Read(_)) => Self::BodyBroken(err),
            Some(ClientBodyError::Unfinished { received, expected }) => Self::BodyUnfinished {
                received: *received,
                expected,
            },
            None => Self::Unreachable(err),
        }
    }

    /// The cause of a [`MainError::BodyBroken`], for the log.
    pub fn body_cause(err: &client::Error) -> Option<&(dyn std::error::Error + 'static)> {
        match client_body_error(err) {
            Some(ClientBodyError::Read(cause)) => Some(&**cause),
            _ => None,
        }
    }

    /// The proxy's own answer to the client: plain text, or a gRPC answer when the
    /// request is a gRPC call (`grpc`).
    pub fn answer(&self, grpc: bool) -> Response<BoxBody> {
        let (status, message) = match self {
            Self::Connect => (
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported: trafficmirror is a reverse proxy",
            ),
            Self::Loop => (
                StatusCode::LOOP_DETECTED,
                "loop detected: this request already went through this proxy twice \
                 (main leads back to it)",
            ),
            Self::Timeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "main target did not answer within --main-timeout",
            ),
            Self::Unreachable(_) => (StatusCode::BAD_GATEWAY, "main target unreachable"),
            Self::BodyStalled(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within --body-read-timeout",
            ),
            Self::BodyBroken(_) => (StatusCode::BAD_REQUEST, "failed to read the request body"),
            Self::BodyUnfinished { .. } => {
                (StatusCode::BAD_REQUEST, "the request body did not end")
            }
            Self::GrpcOverHttp1 => (
                StatusCode::BAD_GATEWAY,
                "main target is http:// (HTTP/1.1), which cannot carry gRPC: \
                 give main as h2c:// or https://",
            ),
        };
        own_answer(status, message, grpc)
    }
}

/// An answer the proxy writes itself, `status` with one line of text; to a gRPC
/// request (`grpc`) the gRPC answer of the same meaning instead (see [`grpc_answer`]).
pub fn own_answer(status: StatusCode, message: &str, grpc: bool) -> Response<BoxBody> {
    if grpc {
        grpc_answer(grpc_code(status), message)
    } else {
        body::text(status, format!("{message}\n"))
    }
}

/// The gRPC status code of the proxy's own HTTP status: unreachable `14` UNAVAILABLE,
/// out of time `4` DEADLINE_EXCEEDED, malformed `13` INTERNAL, too large `8`
/// RESOURCE_EXHAUSTED, refused `12` UNIMPLEMENTED.
fn grpc_code(status: StatusCode) -> u8 {
    match status {
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => 4,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::NOT_IMPLEMENTED => 12,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 13,
    }
}

/// A gRPC error answer in the Trailers-Only form (gRPC over HTTP/2, "Responses"):
/// HTTP `200`, `content-type: application/grpc`, `grpc-status` and the percent-encoded
/// `grpc-message` in the head, no body. gRPC clients read the status from there; a
/// bare HTTP error status would reach them only as a generic "unavailable".
pub fn grpc_answer(code: u8, message: &str) -> Response<BoxBody> {
    let mut response = Response::new(body::full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    let message = HeaderValue::from_str(&percent_encode(message))
        .expect("percent-encoded text is a valid header value");
    headers.insert("grpc-message", message);
    response
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper::body::Body;

    /// A failed exchange whose chain holds `cause`, as hyper reports a body error.
    fn exchange_failed(cause: ClientBodyError) -> client::Error {
        client::Error::Connect(Box::new(cause))
    }

    async fn status_and_text(err: MainError) -> (StatusCode, String) {
        let response = err.answer(false);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn a_body_failure_recorded_beside_the_chain_is_found_too() {
        let recorded = BodyFailure::default();
        let reset = || client::Error::Connect(Box::new(std::io::Error::other("stream reset")));
        assert!(matches!(
            MainError::from_exchange(reset(), Some(&recorded)),
            MainError::Unreachable(_)
        ));
        let second = Duration::from_secs(1);
        recorded.set(ClientBodyError::Timeout(second)).unwrap();
        let stalled = MainError::from_exchange(reset(), Some(&recorded));
        assert!(
            matches!(stalled, MainError::BodyStalled(d) if d == second),
            "{stalled:?}"
        );
    }

    #[test]
    fn a_client_body_failure_is_told_apart_from_main_failing() {
        let second = Duration::from_secs(1);
        let stalled =
            MainError::from_exchange(exchange_failed(ClientBodyError::Timeout(second)), None);
        assert!(
            matches!(stalled, MainError::BodyStalled(d) if d == second),
            "{stalled:?}"
        );
        let broken =
            MainError::from_exchange(exchange_failed(ClientBodyError::Read("bad".into())), None);
        let MainError::BodyBroken(err) = &broken else {
            panic!("{broken:?}")
        };
        assert_eq!(MainError::body_cause(err).unwrap().to_string(), "bad");
        let unfinished = MainError::from_exchange(
            exchange_failed(ClientBodyError::Unfinished {
                received: 3,
                expected: "content-length",
            }),
            None,
        );
        assert!(
            matches!(
                unfinished,
                MainError::BodyUnfinished {
                    received: 3,
                    expected: "content-length"
                }
            ),
            "{unfinished:?}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unreachable = MainError::from_exchange(client::Error::Connect(Box::new(refused)), None);
        let MainError::Unreachable(err) = &unreachable else {
            panic!("{unreachable:?}")
        };
        assert!(MainError::body_cause(err).is_none());
    }

    #[tokio::test]
    async fn each_failure_has_its_status_and_one_line_of_text() {
        let second = Duration::from_secs(1);
        let refused = || client::Error::Connect(Box::new(std::io::Error::other("refused")));
        for (err, status, text) in [
            (
                MainError::Connect,
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported: trafficmirror is a reverse proxy\n",
            ),
            (
                MainError::Timeout(second),
                StatusCode::GATEWAY_TIMEOUT,
                "main target did not answer within --main-timeout\n",
            ),
            (
                MainError::Unreachable(refused()),
                StatusCode::BAD_GATEWAY,
                "main target unreachable\n",
            ),
            (
                MainError::BodyStalled(second),
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within --body-read-timeout\n",
            ),
            (
                MainError::BodyBroken(refused()),
                StatusCode::BAD_REQUEST,
                "failed to read the request body\n",
            ),
            (
                MainError::BodyUnfinished {
                    received: 0,
                    expected: "END_STREAM",
                },
                StatusCode::BAD_REQUEST,
                "the request body did not end\n",
            ),
        ] {
            assert_eq!(status_and_text(err).await, (status, text.to_owned()));
        }
    }

    #[test]
    fn answers_are_plain_text() {
        let response = MainError::Connect.answer(false);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn to_a_grpc_request_each_failure_is_a_trailers_only_grpc_answer() {
        let second = Duration::from_secs(1);
        let refused = || client::Error::Connect(Box::new(std::io::Error::other("refused")));
        for (err, code) in [
            (MainError::Timeout(second), "4"),
            (MainError::Unreachable(refused()), "14"),
            (MainError::BodyStalled(second), "4"),
            (MainError::BodyBroken(refused()), "13"),
            (
                MainError::BodyUnfinished {
                    received: 0,
                    expected: "END_STREAM",
                },
                "13",
            ),
            (MainError::GrpcOverHttp1, "14"),
            (MainError::Connect, "12"),
        ] {
            let plain = err.answer(false).into_body().collect().await.unwrap();
            let text = String::from_utf8(plain.to_bytes().to_vec()).unwrap();
            let response = err.answer(true);
            assert_eq!(response.status(), StatusCode::OK, "{err:?}");
            let headers = response.headers().clone();
            assert_eq!(headers[CONTENT_TYPE], "application/grpc", "{err:?}");
            assert_eq!(headers["grpc-status"], code, "{err:?}");
            assert_eq!(
                headers["grpc-message"].to_str().unwrap(),
                text.trim_end(),
                "{err:?}"
            );
            assert!(response.body().is_end_stream(), "{err:?}: no body");
        }
    }

    #[test]
    fn the_http1_main_refusal_names_the_schemes_grpc_needs() {
        let answer = MainError::GrpcOverHttp1.answer(true);
        let message = answer.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("h2c://"), "{message}");
        assert!(message.contains("https://"), "{message}");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("plain text: ok"), "plain text: ok");
        assert_eq!(percent_encode("100% sure\n"), "100%25 sure%0A");
        assert_eq!(percent_encode("caf\u{e9}"), "caf%C3%A9");
    }

    #[test]
    fn each_own_status_has_its_grpc_code() {
        for (status, code) in [
            (StatusCode::BAD_GATEWAY, 14),
            (StatusCode::GATEWAY_TIMEOUT, 4),
            (StatusCode::BAD_REQUEST, 13),
            (StatusCode::REQUEST_TIMEOUT, 4),
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, 8),
        ] {
            assert_eq!(grpc_code(status), code, "{status}");
        }
    }
}
