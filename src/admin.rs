//! The admin endpoint (docs/shadowing.md, "The admin endpoint"): list, add and remove mirrors.
//!
//! `GET` lists (text, or JSON with `Accept: application/json` or `?format=json`); `PUT`
//! adds and `DELETE` removes the `url` parameters from the query string and an
//! `application/x-www-form-urlencoded` body. Every URL is validated before anything is
//! applied. Authentication, when configured, comes first. `GET <path>/status` answers
//! the proxy-wide figures (bytes held for mirrors, whether the state file is saved);
//! `GET <path>/metrics` the Prometheus scrape ([`crate::observe::metrics`]), also at
//! `/metrics` when the admin endpoint has its own listener (`--targets-address`).
//! Saving the state file after a change is [`Saver`]'s job.
//! A browser's `GET` (`Accept` with `text/html`, JSON not asked for) gets the status
//! page of `observe::page` instead of the listing.

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
use crate::mirror::options::{MirrorOptions, OptionsError};
use crate::observe::metrics::{self, Metrics};
use crate::observe::page;
use crate::proxy::Proxy;
use crate::registry::{Conflict, Registry};
use crate::sources::MAX_FILE_BYTES;
use crate::sources::state_file::{self, Saver};
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
    #[error("invalid option: {0}")]
    InvalidOption(#[from] OptionsError),
    #[error("DELETE takes only url: option {0} is not accepted")]
    DeleteOption(String),
    #[error("{url} comes from the targets file {file}: change it there")]
    Conflict { url: String, file: String },
    #[error("{0} is not a mirror")]
    NotAMirror(String),
    #[error(
        "the change is applied but the state file could not be written: {0} \
         (the save is retried at the next change and every few seconds)"
    )]
    StateFile(String),
    #[error("the state file would grow past its limit of {MAX_FILE_BYTES} bytes: nothing applied")]
    StateFileFull,
    #[error("authentication required")]
    Unauthorized,
    #[error("too many failed logins from this address: retry in {0} s")]
    LockedOut(u64),
    #[error("method not allowed: use GET, PUT or DELETE")]
    MethodNotAllowed,
    #[error("method not allowed: use GET")]
    OnlyGet,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    InvalidThreshold(String),
    #[error("request body too large or unreadable")]
    BadBody,
    #[error("the metrics could not be encoded")]
    Metrics,
}

impl AdminError {
    fn into_response(self) -> Response<BoxBody> {
        let status = match self {
            Self::MissingUrl
            | Self::InvalidUrl(_)
            | Self::InvalidOption(_)
            | Self::DeleteOption(_)
            | Self::InvalidThreshold(_) => StatusCode::BAD_REQUEST,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::NotAMirror(_) => StatusCode::NOT_FOUND,
            Self::StateFile(_) | Self::Metrics => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed | Self::OnlyGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::BadBody | Self::StateFileFull => StatusCode::PAYLOAD_TOO_LARGE,
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
            Self::OnlyGet => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        response
    }
}

/// What the admin endpoint needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The admin path with its leading `/`, e.g. `/targets`.
    pub path: String,
    /// `--password`: the users allowed in, else everyone.
    pub users: Option<Users>,
    /// True with `--targets-address`: the listener is the admin endpoint's alone, so
    /// `/metrics` is served there too (on the main listener that path is main's).
    pub own_listener: bool,
}

/// The admin endpoint's handler. Cloning is shallow.
#[derive(Clone)]
pub struct Admin {
    /// The admin path with its leading `/`.
    path: String,
    registry: Registry,
    users: Option<Users>,
    budget: Budget,
    /// `--state-file`, saved after each change.
    state_file: Option<Saver>,
    /// `--targets-file`, named in `409` answers.
    targets_file: Option<String>,
    metrics: Metrics,
    /// True with `--targets-address`: the listener is the admin endpoint's alone, so
    /// `/metrics` is served there too (on the main listener that path is main's).
    own_listener: bool,
    /// The proxy, for main's URL and protocol in `<path>/status`.
    main: Option<Proxy>,
}

/// What an admin request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    /// The admin path itself: list, add, remove.
    Targets,
    /// `<path>/status`.
    Status,
    /// `<path>/mismatches`.
    Mismatches,
    /// `<path>/endpoints`.
    Endpoints,
    /// `<path>/verdict`.
    Verdict,
    /// `<path>/report`.
    Report,
    /// `<path>/metrics`, or `/metrics` on the admin endpoint's own listener.
    Metrics,
}

impl Admin {
    /// The endpoint for `settings`, changing `registry`. `state_file` is saved after
    /// each change; `targets_file` is named in the answer to a change it forbids.
    pub fn new(
        settings: Settings,
        registry: Registry,
        budget: Budget,
        metrics: Metrics,
        state_file: Option<Saver>,
        targets_file: Option<&std::path::Path>,
    ) -> Self {
        Self {
            path: settings.path,
            registry,
            users: settings.users,
            budget,
            state_file,
            targets_file: targets_file.map(|path| path.display().to_string()),
            metrics,
            own_listener: settings.own_listener,
            main: None,
        }
    }

    /// Shows main's URL and protocol in `<path>/status`.
    #[must_use]
    pub fn with_main(mut self, proxy: Proxy) -> Self {
        self.main = Some(proxy);
        self
    }

    /// Whether `path` is served here (the admin path or one of its sub-paths).
    pub fn serves(&self, path: &str) -> bool {
        self.page(path).is_some()
    }

    fn page(&self, path: &str) -> Option<Page> {
        // `--targets /admin/` serves `/admin/` as given (the Go tool's path) and, as
        // the status page asks for them, `/admin` and the sub-paths below `/admin`.
        let base = self.path.trim_end_matches('/');
        match path.strip_prefix(base) {
            Some("") => Some(Page::Targets),
            Some("/") if self.path.len() > base.len() => Some(Page::Targets),
            Some("/status") => Some(Page::Status),
            Some("/mismatches") => Some(Page::Mismatches),
            Some("/endpoints") => Some(Page::Endpoints),
            Some("/verdict") => Some(Page::Verdict),
            Some("/report") => Some(Page::Report),
            Some("/metrics") => Some(Page::Metrics),
            _ if self.own_listener && path == "/metrics" => Some(Page::Metrics),
            _ => None,
        }
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
        let page = self.page(req.uri().path()).ok_or(AdminError::NotFound)?;
        let get = req.method() == Method::GET;
        match page {
            Page::Targets => self.targets(req, peer, user).await,
            Page::Status
            | Page::Mismatches
            | Page::Endpoints
            | Page::Verdict
            | Page::Report
            | Page::Metrics
                if !get =>
            {
                Err(AdminError::OnlyGet)
            }
            Page::Status => Ok(self.status()),
            Page::Mismatches => self.mismatches(&req),
            Page::Endpoints => self.endpoints(&req),
            Page::Verdict => self.verdict(&req),
            Page::Report => self.report(&req),
            Page::Metrics => self.metrics(),
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
            "state_file_saved": self.state_file.as_ref().map(|state| state.saved()),
            "main": self.main.as_ref().map(|proxy| {
                let (url, protocol) = proxy.main_target();
                serde_json::json!({ "url": url.as_str(), "protocol": protocol })
            }),
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
        let put = match *req.method() {
            Method::GET => return Ok(listing(registry, json)),
            Method::PUT => true,
            Method::DELETE => false,
            _ => return Err(AdminError::MethodNotAllowed),
        };
        let params = Params::read(req).await?;
        if params.urls.is_empty() {
            return Err(AdminError::MissingUrl);
        }
        // Options on DELETE would be silently ignored: refuse them, so a caller who
        // meant something by them learns it did not happen.
        if let (false, Some((key, _))) = (put, params.options.first()) {
            return Err(AdminError::DeleteOption(key.clone()));
        }
        // Validate everything first: a bad URL or option applies nothing.
        let urls = params
            .urls
            .iter()
            .map(|u| TargetUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let who = user.as_deref().unwrap_or("-");
        if put {
            self.put(&urls, &params.options, who, peer).await?;
        } else {
            self.delete(&urls, who, peer).await?;
        }
        Ok(listing(registry, json))
    }

    /// `PUT`: adds `urls` (or changes their options) and saves the state file.
    async fn put(
        &self,
        urls: &[TargetUrl],
        options: &[(String, String)],
        who: &str,
        peer: SocketAddr,
    ) -> Result<(), AdminError> {
        let options = if options.is_empty() {
            None
        } else {
            let pairs = options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            Some(MirrorOptions::parse_pairs(pairs)?)
        };
        // What the state file would hold must stay loadable at the next start.
        let fits = |lines: &[_]| self.state_file.is_none() || state_file::fits(lines);
        let change = self
            .registry
            .put(urls, options.as_ref(), fits)
            .map_err(|c| self.conflict(c))?
            .ok_or(AdminError::StateFileFull)?;
        if !change.is_empty() {
            let options = options.map(|o| o.to_string()).unwrap_or_default();
            info!(user = who, client = %peer, added = ?change.added, updated = ?change.updated, %options, "mirrors added or changed");
        }
        self.save_state(!change.is_empty()).await
    }

    /// `DELETE`: removes `urls` and saves the state file.
    async fn delete(
        &self,
        urls: &[TargetUrl],
        who: &str,
        peer: SocketAddr,
    ) -> Result<(), AdminError> {
        let removed = self.registry.delete(urls).map_err(|c| self.conflict(c))?;
        if !removed.is_empty() {
            info!(user = who, client = %peer, ?removed, "mirrors removed");
        }
        self.save_state(!removed.is_empty()).await
    }

    /// A URL the targets file owns.
    fn conflict(&self, Conflict(url): Conflict) -> AdminError {
        AdminError::Conflict {
            url,
            file: self.targets_file.clone().unwrap_or_default(),
        }
    }

    /// Writes the admin mirrors to `--state-file` after a change (`changed`), or when
    /// an earlier save failed: a request that changes nothing still repairs the file,
    /// and is told (`500`) while it cannot be written.
    async fn save_state(&self, changed: bool) -> Result<(), AdminError> {
        let Some(state) = &self.state_file else {
            return Ok(());
        };
        state
            .save(changed)
            .await
            .map_err(|err| AdminError::StateFile(err.to_string()))
    }

    /// The Prometheus scrape.
    fn metrics(&self) -> Result<Response<BoxBody>, AdminError> {
        let text = self.metrics.encode().map_err(|_| AdminError::Metrics)?;
        let mut response = Response::new(body::full(text));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        Ok(response)
    }

    /// The latest mismatches of one comparing mirror.
    fn mismatches<B>(&self, req: &Request<B>) -> Result<Response<BoxBody>, AdminError> {
        let member = self.member(req)?;
        let body = serde_json::to_vec(&member.mirror.mismatches()).expect("records serialise");
        Ok(json_response(body))
    }

    /// One comparing mirror's results per endpoint.
    fn endpoints<B>(&self, req: &Request<B>) -> Result<Response<BoxBody>, AdminError> {
        let member = self.member(req)?;
        let list = self.weighed_endpoints(&member);
        let body = serde_json::to_vec(&list).expect("endpoints serialise");
        Ok(json_response(body))
    }

    /// The pass/fail/undecided verdict on one comparing mirror, from the thresholds in
    /// the query.
    fn verdict<B>(&self, req: &Request<B>) -> Result<Response<BoxBody>, AdminError> {
        let (_, decision, _) = self.decide(req)?;
        let body = serde_json::to_vec(&decision).expect("a decision serialises");
        Ok(json_response(body))
    }

    /// The report page on one comparing mirror: its verdict (thresholds from the query
    /// as for `/verdict`), endpoints and latest mismatches, written into one HTML page.
    fn report<B>(&self, req: &Request<B>) -> Result<Response<BoxBody>, AdminError> {
        let (member, decision, endpoints) = self.decide(req)?;
        let html = crate::observe::report::render(
            &member.mirror.url().to_string(),
            &decision,
            &endpoints,
            &member.mirror.mismatches(),
        );
        Ok(crate::observe::page::html(html))
    }

    /// The mirror the query names, its decision and its endpoints, weighed against the
    /// baseline if there is one.
    fn decide<B>(
        &self,
        req: &Request<B>,
    ) -> Result<
        (
            crate::mirror::Member,
            crate::mirror::compare::decision::Decision,
            Vec<crate::mirror::compare::endpoints::EndpointSnapshot>,
        ),
        AdminError,
    > {
        use crate::mirror::compare::decision::{ThresholdOptions, decide};
        let query = req.uri().query().unwrap_or_default();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let asked = ThresholdOptions::from_pairs(pairs.iter().map(|(k, v)| (&**k, &**v)))
            .map_err(|e| AdminError::InvalidThreshold(e.to_string()))?;
        let member = self.member(req)?;
        // The query's thresholds win over the mirror's own, one by one.
        let thresholds = asked.over(member.plan.options.thresholds).thresholds();
        let endpoints = self.weighed_endpoints(&member);
        let totals = member.mirror.comparison();
        // A baseline's own differences are all noise: it counts no regressions.
        let weighed = self.baseline_for(&member).is_some() || member.plan.options.baseline;
        let decision = decide(&thresholds, &totals, &endpoints, weighed);
        Ok((member, decision, endpoints))
    }

    /// `member`'s endpoints weighed against the baseline, if there is one, without the
    /// fields its `ignore` rules now cover.
    fn weighed_endpoints(
        &self,
        member: &crate::mirror::Member,
    ) -> Vec<crate::mirror::compare::endpoints::EndpointSnapshot> {
        let baseline = self.baseline_for(member);
        let mut list = member
            .mirror
            .endpoints(baseline.as_ref().map(|b| &*b.mirror));
        crate::mirror::compare::endpoints::drop_ignored(&mut list, &member.plan.options.ignore);
        list
    }

    /// The comparing mirror with `role=baseline` that `member` is weighed against: none
    /// for a baseline itself (it counts no regressions) or when there is none; the
    /// first listed when there are several.
    fn baseline_for(&self, member: &crate::mirror::Member) -> Option<crate::mirror::Member> {
        if member.plan.options.baseline {
            return None;
        }
        self.registry
            .snapshot()
            .iter()
            .find(|m| m.plan.options.baseline && m.plan.compare.is_some())
            .cloned()
    }

    /// The mirror named by the query's `url`.
    fn member<B>(&self, req: &Request<B>) -> Result<crate::mirror::Member, AdminError> {
        let raw = req
            .uri()
            .query()
            .and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v.into_owned())
            })
            .ok_or(AdminError::MissingUrl)?;
        let url = TargetUrl::parse(&raw)?;
        let member = self
            .registry
            .find(&url)
            .ok_or_else(|| AdminError::NotAMirror(url.to_string()))?;
        Ok(member)
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

/// `url` and the options, from the query and (PUT/DELETE) a form body.
#[derive(Debug, Default)]
struct Params {
    urls: Vec<String>,
    /// Every other parameter but `format`, decoded, in order.
    options: Vec<(String, String)>,
}

impl Params {
    async fn read<B>(req: Request<B>) -> Result<Self, AdminError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut params = Params::default();
        if let Some(query) = req.uri().query() {
            params.extend(query.as_bytes());
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
            params.extend(&body);
        }
        Ok(params)
    }

    fn extend(&mut self, encoded: &[u8]) {
        for (key, value) in url::form_urlencoded::parse(encoded) {
            match key.as_ref() {
                "url" => self.urls.push(value.into_owned()),
                "format" => {}
                _ => self.options.push((key.into_owned(), value.into_owned())),
            }
        }
    }
}

/// JSON is asked for by `?format=json`, or by an `Accept` that lists `application/json`
/// with a quality above zero and not below that of `text/plain`, the other answer
/// (RFC 9110 §12.5.1).
fn wants_json<B>(req: &Request<B>) -> bool {
    let by_query = req.uri().query().is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, v)| k == "format" && v == "json")
    });
    let json = page::accept_quality(req, "application/json");
    by_query || (json > 0.0 && json >= page::accept_quality(req, "text/plain"))
}

/// The current set, as text (one normalised URL per line) or JSON.
fn listing(registry: &Registry, json: bool) -> Response<BoxBody> {
    if json {
        let body = serde_json::to_vec(&registry.statuses()).expect("statuses serialise");
        return json_response(body);
    }
    let mut out = String::new();
    for mirror in registry.snapshot().iter() {
        out.push_str(mirror.mirror.url().as_str());
        out.push('\n');
    }
    body::text(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::options::MirrorLine;
    use crate::observe::metrics::MainStats;
    use http_body_util::Full;
    use proptest::prelude::*;

    fn admin() -> Admin {
        admin_with(&[])
    }

    /// An admin endpoint configured by these flags.
    fn admin_with(flags: &[&str]) -> Admin {
        let cli =
            crate::cli::Cli::try_parse_args(std::iter::once("tm").chain(flags.iter().copied()))
                .unwrap();
        let config = crate::config::Config::from_cli(&cli).unwrap();
        let budget = Budget::new(1 << 20);
        let registry = Registry::new(config.proxy.mirror.clone(), budget.clone());
        let metrics = Metrics::new(
            &MainStats::default(),
            registry.clone(),
            budget.clone(),
            None,
            None,
        );
        let targets_file = config.initial.targets_file.as_ref();
        let saver = (config.initial.state_file.clone()).map(|f| Saver::new(f, registry.clone()));
        Admin::new(
            config.admin,
            registry,
            budget,
            metrics,
            saver,
            targets_file.map(|(path, _)| path.as_path()),
        )
    }

    #[test]
    fn json_is_chosen_by_query_or_by_an_accept_that_prefers_it() {
        let asks = |uri: &str, accept: &[&str]| {
            let mut req = Request::get(uri);
            for a in accept {
                req = req.header(header::ACCEPT, *a);
            }
            wants_json(&req.body(()).unwrap())
        };
        assert!(asks("/targets?format=json", &[]));
        assert!(asks("/targets?format=json", &["text/plain"]));
        assert!(asks("/targets", &["application/json"]));
        assert!(asks("/targets", &["text/plain;q=0.5, application/json"]));
        assert!(asks("/targets", &["text/html", "application/json"]));
        assert!(asks("/targets", &["application/json, */*"]));
        assert!(!asks("/targets", &["text/plain, application/json;q=0.5"]));
        assert!(!asks("/targets", &["application/json;q=0"]));
        assert!(!asks("/targets", &["*/*"]));
        assert!(!asks("/targets", &[]));
    }

    #[test]
    fn an_admin_path_with_a_trailing_slash_serves_it_and_the_sub_paths_below_it() {
        let admin_at = |path: &str| admin_with(&["--targets", path]);
        let slash = admin_at("/admin/mirrors/");
        for path in [
            "/admin/mirrors/",
            "/admin/mirrors",
            "/admin/mirrors/status",
            "/admin/mirrors/metrics",
            "/admin/mirrors/mismatches",
        ] {
            assert!(slash.serves(path), "{path}");
        }
        for path in [
            "/admin/mirrors//metrics",
            "/admin/mirrorsx",
            "/admin/mirrors/x",
            "/admin",
        ] {
            assert!(!slash.serves(path), "{path}");
        }
        // Without the slash, `/admin/mirrors/` stays main's.
        let plain = admin_at("/admin/mirrors");
        assert!(plain.serves("/admin/mirrors"));
        assert!(plain.serves("/admin/mirrors/metrics"));
        assert!(!plain.serves("/admin/mirrors/"));
    }

    async fn call(admin: &Admin, method: Method, query: &str) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!("/targets?{query}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let response = admin.handle(req, peer).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }

    /// Option keys (and a few that are not) with values that are often valid.
    fn pair() -> impl Strategy<Value = (String, String)> {
        let key = prop_oneof![
            prop::sample::select(crate::mirror::options::KEYS.to_vec()).prop_map(String::from),
            "[a-z_]{1,12}",
        ];
        let value = prop_oneof![
            Just("true".to_owned()),
            Just("GET,POST".to_owned()),
            Just("/api".to_owned()),
            Just("header:X-User".to_owned()),
            Just("X-Shadow:1".to_owned()),
            "[0-9]{1,3}(\\.[0-9]{1,2})?",
            "\\PC{0,12}",
        ];
        (key, value)
    }

    fn query(url: &str, pairs: &[(String, String)]) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("url", url);
        for (k, v) in pairs {
            query.append_pair(k, v);
        }
        query.finish()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A refused PUT changes nothing; an accepted one lists options that read back
        /// as a mirror line to the same value.
        #[test]
        fn a_refused_put_changes_nothing_and_accepted_options_read_back(
            first in prop::collection::vec(pair(), 0..4),
            second in prop::collection::vec(pair(), 0..4),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let admin = admin();
                call(&admin, Method::PUT, &query("http://a:1", &first)).await;
                let (_, before) = call(&admin, Method::GET, "format=json").await;
                let (status, body) = call(&admin, Method::PUT, &query("http://b:2", &second)).await;
                let (_, after) = call(&admin, Method::GET, "format=json").await;
                if status == StatusCode::OK {
                    for member in admin.registry.snapshot().iter() {
                        let line = MirrorLine {
                            url: member.mirror.url().clone(),
                            options: member.plan.options.clone(),
                        };
                        let back = MirrorLine::parse(&line.to_string()).unwrap();
                        prop_assert_eq!(back, line);
                    }
                } else {
                    prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{:?}", body);
                    prop_assert_eq!(before, after);
                }
                Ok(())
            })?;
        }
    }
}
