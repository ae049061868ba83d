//! Target URLs: the main target and every mirror (docs/shadowing.md, "The admin endpoint": URLs
//! are compared after normalising; a path prefix is joined to each request path).
//!
//! A [`TargetUrl`] is validated once, when it enters the program (a flag or an admin
//! request); the request path then only joins a prefix onto an already-split URL.

use std::fmt;
use std::sync::Arc;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// Why a URL was refused. The message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is not an absolute URL")]
    NotAbsolute(String),
    #[error(
        "{0:?}: scheme must be http://, https:// or h2c:// (or, for a mirror, file:///, nats:// or tls://)"
    )]
    BadScheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not carry a query string")]
    HasQuery(String),
    #[error("{0:?} must not carry a fragment")]
    HasFragment(String),
    #[error("{0:?} must not carry user info")]
    HasUserInfo(String),
    #[error("{0:?}: a file:// URL names no host: write file:///ABSOLUTE/PATH")]
    FileHost(String),
    #[error("{0:?}: a file:// URL needs an absolute path (file:///ABSOLUTE/PATH)")]
    FileRelative(String),
    #[error("{0:?}: file://, nats:// and tls:// name a mirror, not a main target")]
    FileNotMain(String),
    #[error(
        "{0:?}: a NATS URL names one subject to publish to: nats://[USER:PASS@]HOST:PORT/SUBJECT"
    )]
    NatsSubject(String),
}

/// How a target is spoken to (docs/shadowing.md, "Target URLs").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `http://`: HTTP/1.1 over TCP.
    Http,
    /// `https://`: TLS offering ALPN `h2` and `http/1.1`, speaking the server's pick.
    Https,
    /// `h2c://`: HTTP/2 over TCP with prior knowledge (RFC 9113 §3.3).
    H2c,
    /// `file:///PATH`: a recording mirror, writing copies to disk (docs/record-replay.md).
    File,
    /// `nats://HOST:PORT/SUBJECT` or `tls://…`: copies published to NATS JetStream
    /// (docs/fleet.md).
    Nats,
}

/// A validated, normalised `http://`, `https://` or `h2c://` target with an optional
/// path prefix.
///
/// Normalisation (docs/shadowing.md, "The admin endpoint"): scheme and host lower-cased,
/// default port dropped (80 for `h2c://`, as for `http://`), trailing `/` dropped. Two
/// targets are equal when their normalised forms are.
#[derive(Clone)]
pub struct TargetUrl {
    /// The normalised form, shown in listings and used for comparison.
    normalized: String,
    transport: Transport,
    /// What a connection is dialled with: `http` for `h2c://` too (plain TCP).
    scheme: Scheme,
    authority: Authority,
    /// `authority` as a ready `Host` header value.
    host_header: HeaderValue,
    /// Path prefix without a trailing `/`; empty when the URL has no path. A `file://`
    /// URL's path pattern; a NATS URL's subject.
    prefix: String,
    /// A NATS URL's user and password: never in `normalized`, which shows `***` for the
    /// password, so listings, logs and metrics never carry it.
    credentials: Option<Arc<(String, Option<String>)>>,
}

// Equal when the normalised forms are: two URLs differing only in a password are the
// same mirror (and show the same).
impl PartialEq for TargetUrl {
    fn eq(&self, other: &Self) -> bool {
        self.normalized == other.normalized
    }
}

impl Eq for TargetUrl {}

impl std::hash::Hash for TargetUrl {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.normalized.hash(state);
    }
}

impl TargetUrl {
    /// Parses and validates a target URL.
    ///
    /// # Errors
    /// Any value that is not an absolute `http://`, `https://` or `h2c://` URL with a host,
    /// or that carries a query, fragment or user info.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let owned = || raw.to_owned();
        let trimmed = raw.trim();
        if trimmed
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("file://"))
        {
            return Self::parse_file(raw, &trimmed[7..]);
        }
        if is_nats(trimmed) {
            return Self::parse_nats(raw, trimmed);
        }
        // `h2c` is no special scheme to the WHATWG parser (its host would keep its case
        // and `:80` would stay): it is read as the `http://` URL it is on the wire.
        let h2c = trimmed
            .get(..4)
            .is_some_and(|s| s.eq_ignore_ascii_case("h2c:"));
        let as_http;
        let parsed = if h2c {
            as_http = format!("http:{}", &trimmed[4..]);
            url::Url::parse(&as_http)
        } else {
            url::Url::parse(trimmed)
        };
        let url = parsed.map_err(|_| UrlError::NotAbsolute(owned()))?;
        let (transport, scheme) = match url.scheme() {
            "http" if h2c => (Transport::H2c, Scheme::HTTP),
            "http" => (Transport::Http, Scheme::HTTP),
            "https" => (Transport::Https, Scheme::HTTPS),
            _ => return Err(UrlError::BadScheme(owned())),
        };
        // The WHATWG parser `url` follows reads `http:///x`, `http:/x` and `http:x` as
        // `http://x`; an operator who typed those did not give a host.
        let written_authority = trimmed.split_once("://").map(|(_, rest)| rest);
        if written_authority.is_none_or(|rest| rest.starts_with(['/', '\\'])) {
            return Err(UrlError::NoHost(owned()));
        }
        let host = checked_host(&url, raw)?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::HasUserInfo(owned()));
        }
        // `url` has already lower-cased scheme and host and dropped a default port.
        let authority_str = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority: Authority = authority_str
            .parse()
            .map_err(|_| UrlError::NoHost(owned()))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| UrlError::NoHost(owned()))?;
        let prefix = url.path().trim_end_matches('/').to_owned();
        let shown = match transport {
            Transport::H2c => "h2c",
            Transport::Http | Transport::Https | Transport::File | Transport::Nats => {
                scheme.as_str()
            }
        };
        let normalized = format!("{shown}://{authority}{prefix}");
        Ok(Self {
            normalized,
            transport,
            scheme,
            authority,
            host_header,
            prefix,
            credentials: None,
        })
    }

    /// Parses the main target: as [`Self::parse`], without `file://`.
    ///
    /// # Errors
    /// As [`Self::parse`], and a `file://` URL.
    pub fn parse_main(raw: &str) -> Result<Self, UrlError> {
        let url = Self::parse(raw)?;
        if matches!(url.transport, Transport::File | Transport::Nats) {
            return Err(UrlError::FileNotMain(raw.to_owned()));
        }
        Ok(url)
    }

    /// `file:///ABSOLUTE/PATH` (`rest` is what follows `file://`): the path is kept as
    /// written, its `%Y`-style pattern included, and shown so in listings.
    fn parse_file(raw: &str, rest: &str) -> Result<Self, UrlError> {
        let owned = || raw.to_owned();
        if !rest.starts_with('/') {
            // `file://host/path` or `file://relative`.
            return Err(if rest.contains('/') {
                UrlError::FileHost(owned())
            } else {
                UrlError::FileRelative(owned())
            });
        }
        // Whitespace would split the mirror line the state file writes.
        if rest.len() < 2
            || rest.contains(['?', '#', '\\'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(UrlError::FileRelative(owned()));
        }
        if rest.split('/').any(|segment| segment == "..") {
            return Err(UrlError::FileRelative(owned()));
        }
        Ok(Self {
            normalized: format!("file://{rest}"),
            transport: Transport::File,
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
            host_header: HeaderValue::from_static("localhost"),
            prefix: rest.to_owned(),
            credentials: None,
        })
    }

    /// `nats://[USER:PASS@]HOST[:PORT]/SUBJECT` or `tls://…` (NATS over TLS); the port
    /// defaults to 4222. The password is kept aside and shown as `***`.
    fn parse_nats(raw: &str, trimmed: &str) -> Result<Self, UrlError> {
        let owned = || raw.to_owned();
        let url = url::Url::parse(trimmed).map_err(|_| UrlError::NotAbsolute(owned()))?;
        let scheme = url.scheme().to_owned();
        let host = checked_host(&url, raw)?;
        let host = host.to_ascii_lowercase();
        let subject = percent_decode(url.path().trim_start_matches('/'));
        let subject = subject.as_str();
        // One literal subject: no wildcard, no empty token, nothing a mirror line splits.
        if subject.is_empty()
            || subject
                .split('.')
                .any(|t| t.is_empty() || t == "*" || t == ">")
            || subject
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(UrlError::NatsSubject(owned()));
        }
        let decode = percent_decode;
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, password) => Some(Arc::new((decode(user), password.map(decode)))),
        };
        let authority_str = format!("{host}:{}", url.port().unwrap_or(4222));
        let authority: Authority = authority_str
            .parse()
            .map_err(|_| UrlError::NoHost(owned()))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| UrlError::NoHost(owned()))?;
        let userinfo = match &credentials {
            Some(_) if url.password().is_some() => format!("{}:***@", url.username()),
            // A user alone is a token (NATS's `nats://TOKEN@host`): a secret too.
            Some(_) => "***@".to_owned(),
            None => String::new(),
        };
        Ok(Self {
            normalized: format!("{scheme}://{userinfo}{authority}/{subject}"),
            transport: Transport::Nats,
            scheme: Scheme::HTTP,
            authority,
            host_header,
            prefix: subject.to_owned(),
            credentials,
        })
    }

    /// For a NATS URL: the server to connect to (`nats://HOST:PORT` or `tls://…`,
    /// without credentials), the subject, and the user and password if given.
    pub fn nats(&self) -> Option<NatsAddress<'_>> {
        (self.transport == Transport::Nats).then(|| NatsAddress {
            tls: self.normalized.starts_with("tls://"),
            authority: self.authority.as_str(),
            subject: &self.prefix,
            credentials: self.credentials.as_deref(),
        })
    }

    /// For a `file://` URL, the path pattern it writes to.
    pub fn file_path(&self) -> Option<&str> {
        (self.transport == Transport::File).then_some(self.prefix.as_str())
    }

    /// The normalised URL, e.g. `http://mirror:8080/prefix`.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// How this target is spoken to.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// `http` or `https`: the scheme of the absolute URI an HTTP/2 request to this
    /// target carries (`:scheme`), `http` for `h2c://`.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// `host[:port]`, the value of the `Host` header sent to this target.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header for this target (its authority), built once.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// `scheme://authority`, the address a connection to this target is opened to
    /// (`http://` for an `h2c://` target: the same TCP connection).
    pub fn origin(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("scheme and authority were each validated")
    }

    /// The origin-form request target (RFC 9112 §3.2.1) for a request whose path and
    /// query were `pq`: the prefix followed by the request's path and query.
    pub fn request_target(&self, pq: Option<&PathAndQuery>) -> Uri {
        let pq = match (self.prefix.is_empty(), pq) {
            (true, Some(pq)) => pq.clone(),
            (true, None) => PathAndQuery::from_static("/"),
            (false, pq) => {
                let rest = pq.map_or("/", PathAndQuery::as_str);
                let rest = if rest.starts_with('/') { rest } else { "/" };
                let mut joined = String::with_capacity(self.prefix.len() + rest.len());
                joined.push_str(&self.prefix);
                joined.push_str(rest);
                // Both halves are already valid path characters.
                PathAndQuery::try_from(joined).unwrap_or_else(|_| PathAndQuery::from_static("/"))
            }
        };
        Uri::from(pq)
    }
}

/// The URL's host; an error when it has none, or has a query or a fragment.
fn checked_host<'u>(url: &'u url::Url, raw: &str) -> Result<&'u str, UrlError> {
    if url.query().is_some() {
        return Err(UrlError::HasQuery(raw.to_owned()));
    }
    if url.fragment().is_some() {
        return Err(UrlError::HasFragment(raw.to_owned()));
    }
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(h),
        _ => Err(UrlError::NoHost(raw.to_owned())),
    }
}

/// Whether `url` starts with `nats://` or `tls://`, in any case.
pub fn is_nats(url: &str) -> bool {
    let starts = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    starts("nats://") || starts("tls://")
}

/// `%XX` escapes decoded (as the URL parser wrote them); invalid UTF-8 replaced.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a NATS mirror publishes (see [`TargetUrl::nats`]).
#[derive(Debug, Clone, Copy)]
pub struct NatsAddress<'a> {
    /// `tls://`: NATS over TLS.
    pub tls: bool,
    /// `HOST:PORT`.
    pub authority: &'a str,
    pub subject: &'a str,
    /// User and password, or a token alone, as given (percent-decoded).
    pub credentials: Option<&'a (String, Option<String>)>,
}

impl NatsAddress<'_> {
    /// The server address as the NATS client takes it, without credentials.
    pub fn server(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://{}", self.authority)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.normalized, f)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn norm(s: &str) -> String {
        TargetUrl::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_scheme_host_and_trailing_slash() {
        assert_eq!(norm("http://firstmirror:8080"), "http://firstmirror:8080");
        assert_eq!(norm("HTTP://FirstMirror:8080/"), "http://firstmirror:8080");
        assert_eq!(norm("http://m:8080/api/"), "http://m:8080/api");
        assert_eq!(norm("http://m:80/"), "http://m");
        assert_eq!(norm("http://[::1]:9000"), "http://[::1]:9000");
        assert_eq!(norm("http://127.0.0.1:1/a/b"), "http://127.0.0.1:1/a/b");
        assert_eq!(norm("HTTPS://Secure:443/x/"), "https://secure/x");
        assert_eq!(norm("https://secure:8443"), "https://secure:8443");
    }

    #[test]
    fn h2c_normalises_like_http_with_port_80_by_default() {
        assert_eq!(norm("h2c://grpc:50051"), "h2c://grpc:50051");
        assert_eq!(norm("H2C://GRPC:80/"), "h2c://grpc");
        assert_eq!(
            norm("h2c://Svc.Example:8080/api/"),
            "h2c://svc.example:8080/api"
        );
        assert_eq!(norm("h2c://[::1]:9000"), "h2c://[::1]:9000");
        let t = TargetUrl::parse("h2c://grpc:50051/p").unwrap();
        assert_eq!(t.transport(), Transport::H2c);
        // Dialled over plain TCP, and `:scheme` is `http` (RFC 9113 §8.3.1).
        assert_eq!(t.origin().to_string(), "http://grpc:50051/");
        assert_eq!(t.scheme(), &Scheme::HTTP);
        assert_eq!(t.host_header(), "grpc:50051");
        // Not the same target as the http:// one on the same address.
        assert_ne!(t, TargetUrl::parse("http://grpc:50051/p").unwrap());
        assert_eq!(
            TargetUrl::parse("http://a").unwrap().transport(),
            Transport::Http
        );
        assert_eq!(
            TargetUrl::parse("https://a").unwrap().transport(),
            Transport::Https
        );
    }

    #[test]
    fn h2c_is_refused_for_what_http_is_refused_for() {
        type Check = fn(&UrlError) -> bool;
        let cases: [(&str, Check); 8] = [
            ("h2c://user:pw@host", |e| {
                matches!(e, UrlError::HasUserInfo(_))
            }),
            ("h2c://user@host:50051", |e| {
                matches!(e, UrlError::HasUserInfo(_))
            }),
            ("h2c://host/?q=1", |e| matches!(e, UrlError::HasQuery(_))),
            ("h2c://host/#f", |e| matches!(e, UrlError::HasFragment(_))),
            ("h2c:///x", |e| matches!(e, UrlError::NoHost(_))),
            ("h2c:/x", |e| matches!(e, UrlError::NoHost(_))),
            ("h2c:x", |e| matches!(e, UrlError::NoHost(_))),
            ("h2://host", |e| matches!(e, UrlError::BadScheme(_))),
        ];
        for (input, check) in cases {
            let err = TargetUrl::parse(input).unwrap_err();
            assert!(check(&err), "{input}: {err}");
            assert!(err.to_string().contains(input), "{input}: {err}");
        }
        let err = TargetUrl::parse("ftp://host").unwrap_err();
        assert!(err.to_string().contains("h2c://"), "{err}");
    }

    #[test]
    fn nats_urls_keep_the_password_aside_and_show_it_as_stars() {
        let url = TargetUrl::parse("nats://copier:s%40cret@NATS.local:4333/tm.copies").unwrap();
        assert_eq!(url.as_str(), "nats://copier:***@nats.local:4333/tm.copies");
        assert_eq!(
            format!("{url:?}"),
            "\"nats://copier:***@nats.local:4333/tm.copies\""
        );
        let address = url.nats().unwrap();
        assert_eq!(address.server(), "nats://nats.local:4333");
        assert_eq!(address.subject, "tm.copies");
        assert_eq!(
            address.credentials,
            Some(&("copier".to_owned(), Some("s@cret".to_owned())))
        );
        // The same mirror whatever its password: one entry, shown once.
        assert_eq!(
            url,
            TargetUrl::parse("nats://copier:other@nats.local:4333/tm.copies").unwrap()
        );
        let tls = TargetUrl::parse("tls://nats.local/tm.x").unwrap();
        assert_eq!(tls.as_str(), "tls://nats.local:4222/tm.x");
        assert!(tls.nats().unwrap().tls);
        assert_eq!(tls.nats().unwrap().credentials, None);
        let token = TargetUrl::parse("nats://t0ken@h/s").unwrap();
        assert_eq!(token.as_str(), "nats://***@h:4222/s");
        assert_eq!(
            token.nats().unwrap().credentials,
            Some(&("t0ken".to_owned(), None))
        );
        assert_eq!(
            TargetUrl::parse("http://a")
                .unwrap()
                .nats()
                .map(|a| a.subject),
            None
        );
    }

    #[test]
    fn a_nats_url_names_one_literal_subject_and_is_no_main_target() {
        for bad in [
            "nats://h:4222",
            "nats://h:4222/",
            "nats://h/a.*",
            "nats://h/a.>",
            "nats://h/a..b",
            "nats://h/a/b",
        ] {
            assert!(
                matches!(TargetUrl::parse(bad), Err(UrlError::NatsSubject(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            TargetUrl::parse_main("nats://h/s"),
            Err(UrlError::FileNotMain(_))
        ));
        assert!(matches!(
            TargetUrl::parse("nats:///s"),
            Err(UrlError::NoHost(_))
        ));
    }

    #[test]
    fn file_urls_are_mirrors_with_an_absolute_path_kept_as_written() {
        let url = TargetUrl::parse("file:///var/rec/rec-%Y%m%d.gor.gz").unwrap();
        assert_eq!(url.transport(), Transport::File);
        assert_eq!(url.as_str(), "file:///var/rec/rec-%Y%m%d.gor.gz");
        assert_eq!(url.file_path(), Some("/var/rec/rec-%Y%m%d.gor.gz"));
        assert_eq!(TargetUrl::parse("FILE:///x").unwrap().as_str(), "file:///x");
        assert!(matches!(
            TargetUrl::parse("file://host/x"),
            Err(UrlError::FileHost(_))
        ));
        for relative in [
            "file://rec.gor",
            "file:///",
            "file:///a/../b",
            "file:///a?b",
            "file:///a b",
        ] {
            assert!(
                matches!(TargetUrl::parse(relative), Err(UrlError::FileRelative(_))),
                "{relative}"
            );
        }
        let err = TargetUrl::parse_main("file:///x").unwrap_err();
        assert!(err.to_string().contains("file:///x"), "{err}");
        assert!(TargetUrl::parse_main("http://a:1").is_ok());
        assert_eq!(TargetUrl::parse("http://a").unwrap().file_path(), None);
    }

    #[test]
    fn rejects_urls_the_docs_refuse() {
        type Check = fn(&UrlError) -> bool;
        let cases: [(&str, Check); 11] = [
            ("firstmirror:8080", |e| matches!(e, UrlError::BadScheme(_))),
            ("/just/a/path", |e| matches!(e, UrlError::NotAbsolute(_))),
            ("ftp://host", |e| matches!(e, UrlError::BadScheme(_))),
            ("ws://host", |e| matches!(e, UrlError::BadScheme(_))),
            ("http://host/?q=1", |e| matches!(e, UrlError::HasQuery(_))),
            ("http://host/#frag", |e| {
                matches!(e, UrlError::HasFragment(_))
            }),
            ("http://user:pw@host", |e| {
                matches!(e, UrlError::HasUserInfo(_))
            }),
            ("http://", |e| {
                matches!(e, UrlError::NoHost(_) | UrlError::NotAbsolute(_))
            }),
            // What the WHATWG parser would read as `http://x`.
            ("http:///x", |e| matches!(e, UrlError::NoHost(_))),
            ("http:/x", |e| matches!(e, UrlError::NoHost(_))),
            ("http:x", |e| matches!(e, UrlError::NoHost(_))),
        ];
        for (input, check) in cases {
            let err = TargetUrl::parse(input).unwrap_err();
            assert!(check(&err), "{input}: {err}");
            assert!(err.to_string().contains(input), "{input}: {err}");
        }
        let err = TargetUrl::parse(r"https:\\x").unwrap_err();
        assert!(matches!(err, UrlError::NoHost(_)), "{err}");
    }

    #[test]
    fn request_target_appends_request_path_to_prefix() {
        let pq = PathAndQuery::from_static("/users/1?x=y");
        let plain = TargetUrl::parse("http://m:1").unwrap();
        assert_eq!(plain.request_target(Some(&pq)).to_string(), "/users/1?x=y");
        let prefixed = TargetUrl::parse("http://m:1/api/").unwrap();
        assert_eq!(
            prefixed.request_target(Some(&pq)).to_string(),
            "/api/users/1?x=y"
        );
        assert_eq!(prefixed.request_target(None).to_string(), "/api/");
        assert_eq!(prefixed.origin().to_string(), "http://m:1/");
        let secure = TargetUrl::parse("https://s/x").unwrap();
        assert_eq!(secure.origin().to_string(), "https://s/");
        assert_eq!(plain.authority().as_str(), "m:1");
        assert_eq!(plain.host_header(), "m:1");
    }

    /// Strings shaped like target URLs, valid or not: odd schemes and separators, user
    /// info, names in any case, IPv4, IPv6, non-ASCII names, ports in and out of range,
    /// paths with dot segments, escapes and characters URL parsers treat specially, and
    /// the query or fragment a target must not carry.
    fn url_like() -> impl Strategy<Value = String> {
        let scheme = prop_oneof![
            4 => prop_oneof![Just("http"), Just("https"), Just("h2c")],
            2 => prop_oneof![Just("HTTP"), Just("HtTpS"), Just("Https"), Just("H2C")],
            1 => prop_oneof![Just("ftp"), Just("ws"), Just(""), Just("http+x")],
        ];
        let separator =
            prop_oneof![8 => Just("://"), 1 => Just(":/"), 1 => Just(":"), 1 => Just(":///")];
        let userinfo =
            prop_oneof![8 => Just(""), 1 => Just("u@"), 1 => Just("u:p@"), 1 => Just(":@")];
        let host = prop_oneof![
            4 => "[a-zA-Z0-9][a-zA-Z0-9.-]{0,15}",
            2 => any::<[u8; 4]>().prop_map(|o| format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])),
            2 => any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]")),
            1 => "[a-zé\u{4e2d}\u{00DF}]{1,6}(\\.[a-z]{1,3})?",
            1 => "[!-~]{0,10}",
        ];
        let port = prop_oneof![
            3 => Just(String::new()),
            3 => any::<u16>().prop_map(|p| format!(":{p}")),
            1 => prop_oneof![Just(":80"), Just(":443"), Just(":"), Just(":0"), Just(":65536")]
                .prop_map(str::to_owned),
            1 => "[0-9]{1,7}".prop_map(|p| format!(":{p}")),
        ];
        let segment = prop_oneof![
            4 => "[a-zA-Z0-9._~-]{0,8}",
            1 => prop_oneof![Just("."), Just(".."), Just("%2e"), Just("%2E%2e"), Just("")]
                .prop_map(str::to_owned),
            1 => "[ !$&'()*+,;=:@\\[\\]^|{}<>\"`\\\\%é\t]{1,6}",
            1 => "(%[0-9a-fA-F]{2}){1,3}",
        ];
        let path = (
            prop::collection::vec(segment, 0..5),
            prop_oneof![Just(""), Just("/"), Just("//")],
        )
            .prop_map(|(segments, end)| {
                let mut path: String = segments.iter().map(|s| format!("/{s}")).collect();
                path.push_str(end);
                path
            });
        let suffix = prop_oneof![8 => Just(""), 1 => Just("?"), 1 => Just("?q=1"), 1 => Just("#f"), 1 => Just("#")];
        let space = prop_oneof![4 => Just(""), 1 => Just(" "), 1 => Just("\t\n")];
        (scheme, separator, userinfo, host, port, path, suffix, space).prop_map(
            |(scheme, sep, user, host, port, path, suffix, space)| {
                format!("{space}{scheme}{sep}{user}{host}{port}{path}{suffix}{space}")
            },
        )
    }

    /// Request targets as hyper hands them over: origin-form paths with queries, and
    /// the odd ones (`*`, absolute-form) that may reach a proxy.
    fn request_path() -> impl Strategy<Value = PathAndQuery> {
        prop_oneof![
            6 => "/[a-zA-Z0-9/._~%!$&'()*+,;=:@-]{0,30}(\\?[a-zA-Z0-9/?=&%.-]{0,20})?",
            1 => Just("*".to_owned()),
            1 => "[a-z]{0,5}(\\?[a-z=]{0,5})?",
            1 => "/[!-~]{0,20}",
        ]
        .prop_filter_map("not a valid path and query", |s| {
            PathAndQuery::try_from(s).ok()
        })
    }

    /// Checks everything else a parsed target promises, and that using it never panics.
    fn check_parsed(t: &TargetUrl) -> Result<(), TestCaseError> {
        let s = t.as_str();
        prop_assert_eq!(s, t.to_string());
        prop_assert!(
            s.starts_with("http://") || s.starts_with("https://") || s.starts_with("h2c://"),
            "{}",
            s
        );
        prop_assert!(!s.ends_with('/'), "trailing slash kept: {}", s);
        prop_assert!(!s.contains(['?', '#']), "{}", s);
        prop_assert_eq!(
            t.host_header().as_bytes(),
            t.authority().as_str().as_bytes()
        );
        let origin = t.origin();
        prop_assert_eq!(origin.authority(), Some(t.authority()));
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            if let Ok(t) = TargetUrl::parse(&s) {
                check_parsed(&t)?;
            }
        }

        #[test]
        fn parse_never_panics_on_url_shaped_input(s in url_like()) {
            if let Ok(t) = TargetUrl::parse(&s) {
                check_parsed(&t)?;
            }
        }

        #[test]
        fn normalisation_is_idempotent(s in url_like()) {
            if let Ok(t) = TargetUrl::parse(&s) {
                let again = TargetUrl::parse(t.as_str());
                prop_assert_eq!(again, Ok(t.clone()), "from {:?}", s);
            }
        }

        #[test]
        fn spelling_variants_normalise_alike(
            host in "[a-z][a-z0-9-]{0,10}",
            port in any::<u16>(),
            path in "(/[a-z0-9]{1,5}){0,3}",
            upper in any::<bool>(),
            slashes in 0usize..3,
        ) {
            let plain = format!("http://{host}:{port}{path}");
            let host = if upper { host.to_ascii_uppercase() } else { host };
            let variant = format!("HTTP://{host}:{port}{path}{}", "/".repeat(slashes));
            prop_assert_eq!(TargetUrl::parse(&variant), TargetUrl::parse(&plain));
        }

        #[test]
        fn joining_keeps_the_prefix(s in url_like(), pq in request_path()) {
            if let Ok(t) = TargetUrl::parse(&s) {
                let joined = t.request_target(Some(&pq));
                let joined = joined.path_and_query().map_or("", PathAndQuery::as_str);
                if t.prefix.is_empty() {
                    // Without a prefix the request target goes as it came (even `*`).
                    prop_assert_eq!(joined, pq.as_str());
                } else {
                    prop_assert!(joined.starts_with(&t.prefix), "{} + {} = {}", t, pq, joined);
                    let rest = &joined[t.prefix.len()..];
                    prop_assert!(rest.starts_with('/'), "{} + {} = {}", t, pq, joined);
                    if pq.as_str().starts_with('/') {
                        // The request's path and query follow the prefix unchanged.
                        prop_assert_eq!(rest, pq.as_str());
                    }
                }
                let bare = t.request_target(None);
                prop_assert_eq!(bare.path(), format!("{}/", t.prefix));
            }
        }
    }
}
