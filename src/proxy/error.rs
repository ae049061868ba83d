//! Why the proxy answers a proxied request itself instead of with main's answer
//! ([`MainError`]), and that answer: the one place the proxy's own answers to proxied
//! requests are built (docs/shadowing.md, "How requests are handled").

use std::time::Duration;

use http::{Response, StatusCode};

use super::tee::ClientBodyError;
use crate::body::{self, BoxBody};
use crate::client;

/// Why main's answer cannot be forwarded: main failed (`502`, `504`), the client's body
/// did (`400`, `408`), or the request is not one to send (`501`).
#[derive(Debug)]
pub enum MainError {
    /// A `CONNECT` request: a reverse proxy does not open tunnels to other hosts.
    Connect,
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
}

impl MainError {
    /// Sorts a failed exchange with main: the client's body failing shows up in its
    /// error chain, anything else is main's doing.
    pub fn from_exchange(err: client::Error) -> Self {
        match client_body_error(&err) {
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

    /// The proxy's own answer to the client.
    pub fn answer(&self) -> Response<BoxBody> {
        let (status, message) = match self {
            Self::Connect => (
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported: trafficmirror is a reverse proxy",
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
        };
        body::text(status, format!("{message}\n"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A failed exchange whose chain holds `cause`, as hyper reports a body error.
    fn exchange_failed(cause: ClientBodyError) -> client::Error {
        client::Error::Connect(Box::new(cause))
    }

    async fn status_and_text(err: MainError) -> (StatusCode, String) {
        let response = err.answer();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn a_client_body_failure_is_told_apart_from_main_failing() {
        let second = Duration::from_secs(1);
        let stalled = MainError::from_exchange(exchange_failed(ClientBodyError::Timeout(second)));
        assert!(
            matches!(stalled, MainError::BodyStalled(d) if d == second),
            "{stalled:?}"
        );
        let broken = MainError::from_exchange(exchange_failed(ClientBodyError::Read("bad".into())));
        let MainError::BodyBroken(err) = &broken else {
            panic!("{broken:?}")
        };
        assert_eq!(MainError::body_cause(err).unwrap().to_string(), "bad");
        let unfinished = MainError::from_exchange(exchange_failed(ClientBodyError::Unfinished {
            received: 3,
            expected: "content-length",
        }));
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
        let unreachable = MainError::from_exchange(client::Error::Connect(Box::new(refused)));
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
        let response = MainError::Connect.answer();
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
