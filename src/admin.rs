//! The admin endpoint (README, "The admin endpoint"): list, add and remove mirrors.
//!
//! `GET` lists (text, or JSON with `Accept: application/json` or `?format=json`); `PUT`
//! adds and `DELETE` removes the `url` parameters from the query string and an
//! `application/x-www-form-urlencoded` body. Every URL is validated before anything is
//! applied. Authentication, when configured, comes first. `GET <path>/status` answers
//! the proxy-wide figures (bytes held for mirrors). A browser's `GET` (`Accept` with
//! `text/html`, JSON not asked for) gets the status page of `observe::page` instead.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use tracing::info;

use crate::auth::{Denied, Users};
use crate::body::{self, BoxBody, BoxError};
use crate::budget::Budget;
use crate::observe::page;
use crate::registry::Registry;
use crate::target_url::{TargetUrl, UrlError};

/// Largest form body accepted on PUT/DELETE.
const MAX_FORM_BODY: usize = 64 * 1024;

/// Why an admin request was refused; each maps to one status and body.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing url parameter: use ?url=http://host:port")]
    MissingUrl,
    #[error("invalid url parameter: {0}")]
    InvalidUrl(#[from] UrlError),
    #[error("invalid persistent parameter {0:?}: use true or false")]
    InvalidPersistent(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("too many failed logins from this address: retry in {0} s")]
    LockedOut(u64),
    #[error("method not allowed: use GET, PUT or DELETE")]
    MethodNotAllowed,
    #[error("not found")]
    NotFound,
    #[error("request body too large or unreadable")]
    BadBody,
}

impl AdminError {
    fn into_response(self) -> Response<BoxBody> {
        let status = match self {
            Self::MissingUrl | Self::InvalidUrl(_) | Self::InvalidPersistent(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadBody => StatusCode::PAYLOAD_TOO_LARGE,
        };
        let mut response = body::text(status, format!("{self}\n"));
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"trafficmirror\""),
                );
            }
            Self::LockedOut(seconds) => {
                // RFC 9110 §10.2.3, RFC 6585 §4.
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, PUT, DELETE"));
            }
            _ => {}
        }
        response
    }
}

/// The admin endpoint's handler. Cloning is shallow.
#[derive(Clone)]
pub struct Admin {
    /// The admin path with its leading `/`.
    path: String,
    registry: Registry,
    users: Option<Users>,
    budget: Budget,
}

impl Admin {
    pub fn new(path: String, registry: Registry, users: Option<Users>, budget: Budget) -> Self {
        Self {
            path,
            registry,
            users,
            budget,
        }
    }

    /// Whether `path` is served here (the admin path or one of its sub-paths).
    pub fn serves(&self, path: &str) -> bool {
        path.strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest == "/status")
    }

    /// Handles one admin request. Callable without a socket (tests build a `Request`).
    pub async fn handle<B>(&self, req: Request<B>, peer: SocketAddr) -> Response<BoxBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match self.try_handle(req, peer).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    async fn try_handle<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
    ) -> Result<Response<BoxBody>, AdminError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let user = self.authenticate(&req, peer).await?;
        let sub = &req.uri().path()[self.path.len()..];
        match sub {
            "" => self.targets(req, peer, user).await,
            "/status" if req.method() == Method::GET => Ok(self.status()),
            "/status" => Err(AdminError::MethodNotAllowed),
            _ => Err(AdminError::NotFound),
        }
    }

    /// `Ok(user)` (`None` without `--password`), or why not.
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        peer: SocketAddr,
    ) -> Result<Option<String>, AdminError> {
        let Some(users) = &self.users else {
            return Ok(None);
        };
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match users.verify(auth, peer.ip()).await {
            Ok(user) => Ok(Some(user)),
            Err(Denied::Unauthorized) => Err(AdminError::Unauthorized),
            Err(Denied::Locked(wait)) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(AdminError::LockedOut(seconds))
            }
        }
    }

    /// Proxy-wide figures as JSON.
    fn status(&self) -> Response<BoxBody> {
        let body = serde_json::json!({
            "buffered_bytes": self.budget.held(),
            "max_buffered_bytes": self.budget.limit(),
        });
        json_response(body.to_string())
    }

    async fn targets<B>(
        &self,
        req: Request<B>,
        peer: SocketAddr,
        user: Option<String>,
    ) -> Result<Response<BoxBody>, AdminError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let registry = &self.registry;
        let json = wants_json(&req);
        if req.method() == Method::GET && !json && page::wanted(&req) {
            return Ok(page::response());
        }
        let change = match *req.method() {
            Method::GET => None,
            Method::PUT => Some(true),
            Method::DELETE => Some(false),
            _ => return Err(AdminError::MethodNotAllowed),
        };
        if let Some(add) = change {
            let params = Params::read(req).await?;
            if params.urls.is_empty() {
                return Err(AdminError::MissingUrl);
            }
            // Validate everything first: a bad URL applies nothing.
            let urls = params
                .urls
                .iter()
                .map(|u| TargetUrl::parse(u))
                .collect::<Result<Vec<_>, _>>()?;
            let who = user.as_deref().unwrap_or("-");
            if add {
                let added = registry.add(&urls, params.persistent);
                if !added.is_empty() {
                    info!(user = who, client = %peer, ?added, persistent = params.persistent, "mirrors added");
                }
            } else {
                let removed = registry.remove(&urls);
                if !removed.is_empty() {
                    info!(user = who, client = %peer, ?removed, "mirrors removed");
                }
            }
        }
        Ok(listing(registry, json))
    }
}

fn json_response(body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut response = Response::new(body::full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `url`, `persistent` from the query and (PUT/DELETE) a form body.
#[derive(Debug, Default)]
struct Params {
    urls: Vec<String>,
    persistent: bool,
}

impl Params {
    async fn read<B>(req: Request<B>) -> Result<Self, AdminError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut params = Params::default();
        if let Some(query) = req.uri().query() {
            params.extend(query.as_bytes())?;
        }
        let is_form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|m| {
                    m.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
        if is_form {
            let body = Limited::new(req.into_body(), MAX_FORM_BODY)
                .collect()
                .await
                .map_err(|_| AdminError::BadBody)?
                .to_bytes();
            params.extend(&body)?;
        }
        Ok(params)
    }

    fn extend(&mut self, encoded: &[u8]) -> Result<(), AdminError> {
        for (key, value) in url::form_urlencoded::parse(encoded) {
            match key.as_ref() {
                "url" => self.urls.push(value.into_owned()),
                "persistent" => {
                    self.persistent = match value.to_ascii_lowercase().as_str() {
                        "true" | "1" | "yes" | "" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(AdminError::InvalidPersistent(value.into_owned())),
                    };
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn wants_json<B>(req: &Request<B>) -> bool {
    let by_query = req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "format" && v == "json")
    });
    let by_accept = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"));
    by_query || by_accept
}

/// The current set, as text (one normalised URL per line) or JSON.
fn listing(registry: &Registry, json: bool) -> Response<BoxBody> {
    if json {
        let body = serde_json::to_vec(&registry.statuses()).expect("statuses serialise");
        return json_response(body);
    }
    let mut out = String::new();
    for mirror in registry.snapshot().iter() {
        out.push_str(mirror.url().as_str());
        out.push('\n');
    }
    body::text(StatusCode::OK, out)
}
