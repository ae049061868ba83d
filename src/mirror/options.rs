//! Per-mirror options and the *mirror line* that writes them after a URL.
//!
//! [`MirrorOptions`] is the one validated value behind every way of configuring a mirror:
//! the admin `PUT` (query string or form body), `--mirror`, the targets file and the
//! state file. It is parsed once, by [`MirrorOptions::parse_pairs`] (already decoded
//! `key`/`value` pairs) or [`MirrorOptions::from_str`] (the space-separated text form),
//! and written back by its `Display` (text form) and `Serialize` (the JSON listing).
//!
//! # The text form
//! `key=value` tokens separated by ASCII whitespace, the non-default options only, in a
//! fixed order (that of [`KEYS`]). A [`MirrorLine`] is a target URL followed by that
//! text: `http://staging:8080 percent=5 method=GET compare=true`.
//!
//! Values are percent-encoded where needed to keep one token one value: every byte
//! outside visible ASCII (`!`..`~`), and `%` and `#`, is written `%XX` (so a space is
//! `%20`, `set_header=X-Note:a%20b`). Reading decodes every `%XX`; a `%` not followed by
//! two hex digits stays as it is, and `+` is a literal plus (not a space, unlike HTML
//! forms). A token without `=` is a key with an empty value (`compare` = `compare=`).
//! Values given to [`MirrorOptions::parse_pairs`] are taken as they are: the admin
//! endpoint has already decoded its query string or form body.
//!
//! This module owns parsing, validation, the text and JSON forms, and the header
//! rewrites of [`MirrorOptions::apply_rewrites`]. Selection (which request goes to a
//! mirror) is in [`super::select`]; comparing answers and ordered replay are elsewhere.

use std::fmt;
use std::str::FromStr;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use serde::ser::{SerializeMap, Serializer};

use super::compare::decision::ThresholdOptions;
use crate::target_url::{TargetUrl, UrlError};

/// Every option key, in the canonical order of the text form and the JSON listing.
pub const KEYS: [&str; 25] = [
    "percent",
    "sample_by",
    "rate",
    "method",
    "path",
    "set_header",
    "remove_header",
    "host",
    "compare",
    "compare_header",
    "ignore",
    "endpoint",
    "role",
    "ordered",
    "retry",
    "persistent",
    "record_answers",
    "max_file_size",
    "max_total_size",
    "spill",
    "stream",
    "min_compared",
    "max_mismatch_rate",
    "max_error_rate",
    "max_p99_ratio",
];

/// The headers compared when `compare_header` is not given.
pub static DEFAULT_COMPARE_HEADERS: [HeaderName; 1] = [header::CONTENT_TYPE];

/// Why a set of options was refused. Display is one line naming the option and value,
/// fit for a `400` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "unknown option {0:?} (known: percent, sample_by, rate, method, path, set_header, remove_header, host, compare, compare_header, ignore, endpoint, role, ordered, retry, persistent, record_answers, max_file_size, max_total_size, spill, stream, min_compared, max_mismatch_rate, max_error_rate, max_p99_ratio)"
    )]
    Unknown(String),
    #[error("invalid {key} value {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("option {0} given more than once")]
    Repeated(&'static str),
    /// Two `set_header` for one header name (compared case-insensitively).
    #[error("set_header given more than once for header {0}: set each header once")]
    RepeatedHeader(String),
}

/// Why a mirror line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorLineError {
    #[error("empty mirror line: expected a URL followed by key=value options")]
    Empty,
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Options(#[from] OptionsError),
}

/// Where the sticky sampling value of `sample_by` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleBy {
    /// `header:NAME`: the first value of that request header.
    Header(HeaderName),
    /// `cookie:NAME`: the value of the first cookie of that name (case-sensitive).
    Cookie(String),
}

impl fmt::Display for SampleBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// The options of one mirror. `Default` is a mirror that gets every request unchanged.
///
/// Every field holds a validated value; lists keep the order given, without repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorOptions {
    /// Share of requests mirrored, `0 < percent <= 100`.
    pub percent: f64,
    /// Decide by a stable hash of this value instead of at random.
    pub sample_by: Option<SampleBy>,
    /// At most this many copies per second (finite, `> 0`, fractions allowed: `0.5` is
    /// one copy every two seconds), bursts up to `max(rate, 1)`.
    pub rate: Option<f64>,
    /// Only these methods (empty: all).
    pub methods: Vec<Method>,
    /// Only request paths starting with one of these (each starts with `/`; empty: all).
    pub paths: Vec<String>,
    /// Set on this mirror's copies, replacing what the request carries; at most one
    /// entry per name.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Dropped from this mirror's copies (before `set_headers` are applied).
    pub remove_headers: Vec<HeaderName>,
    /// The `Host` sent to this mirror instead of its URL's authority.
    pub host: Option<HeaderValue>,
    /// Compare this mirror's answers with main's.
    pub compare: bool,
    /// Headers compared; empty means [`DEFAULT_COMPARE_HEADERS`] (kept empty when not
    /// given, so the text form round-trips exactly).
    pub compare_headers: Vec<HeaderName>,
    /// Excluded from comparison: a lower-cased header name, or a JSON pointer
    /// (RFC 6901) starting with `/` in which a `*` segment matches any key or index.
    pub ignore: Vec<String>,
    /// Path templates for the per-endpoint results, tried in order: `/`-separated
    /// segments where `:name` matches any one segment.
    pub endpoints: Vec<String>,
    /// `role=baseline`: runs the same version as main; its differences are the noise
    /// the other comparing mirrors' are weighed against.
    pub baseline: bool,
    /// Replay in main's order.
    pub ordered: bool,
    /// Further tries of a copy that never reached the mirror, or of any failed copy of
    /// an idempotent method (see `super::retry`).
    pub retry: u32,
    /// Never removed automatically.
    pub persistent: bool,
    /// A recording mirror also writes main's answer (docs/record-replay.md).
    pub record_answers: bool,
    /// A recording mirror's file size (bytes on disk) before it starts the next file;
    /// `None`: the default, 256 MiB.
    pub max_file_size: Option<u64>,
    /// A recording mirror's total size across its files; `None`: the default, 10 GiB.
    pub max_total_size: Option<u64>,
    /// `spill=file:///PATH`: copies that fail, or are dropped because the mirror is
    /// failing or its queue is full, are recorded there (docs/record-replay.md).
    pub spill: Option<String>,
    /// `stream=NAME`: a `nats://` mirror's JetStream stream, created when missing
    /// (docs/fleet.md).
    pub stream: Option<String>,
    /// The verdict's thresholds for this mirror (docs/comparing.md, "Deciding with a
    /// baseline"); a verdict's query parameters win over them.
    pub thresholds: ThresholdOptions,
}

impl Default for MirrorOptions {
    fn default() -> Self {
        Self {
            percent: 100.0,
            sample_by: None,
            rate: None,
            methods: Vec::new(),
            paths: Vec::new(),
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            host: None,
            compare: false,
            compare_headers: Vec::new(),
            ignore: Vec::new(),
            endpoints: Vec::new(),
            baseline: false,
            ordered: false,
            retry: 0,
            persistent: false,
            record_answers: false,
            max_file_size: None,
            max_total_size: None,
            spill: None,
            stream: None,
            thresholds: ThresholdOptions::default(),
        }
    }
}

/// Headers a mirror's options may not set or remove: the message framing, the
/// connection-specific ones (RFC 9110 §7.6.1), `Via` (loop detection depends on it) and
/// `Host` (that is `host=`).
fn protected_header(name: &HeaderName) -> Option<&'static str> {
    let s = name.as_str();
    if *name == header::HOST {
        Some("use the host option to change Host")
    } else if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
        Some("it frames the message and cannot be changed per mirror")
    } else if *name == header::VIA {
        Some("loop detection depends on Via; it cannot be changed per mirror")
    } else if matches!(
        s,
        "connection" | "keep-alive" | "te" | "trailer" | "upgrade"
    ) || s.starts_with("proxy-")
    {
        Some("a hop-by-hop header cannot be changed per mirror")
    } else {
        None
    }
}

/// `token` of RFC 9110 §5.6.2 (also a cookie name, RFC 6265 §4.1.1).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, OptionsError> {
    match value.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, value, "use true or false")),
    }
}

fn invalid(key: &'static str, value: &str, reason: &'static str) -> OptionsError {
    OptionsError::Invalid {
        key,
        value: value.to_owned(),
        reason,
    }
}

/// A finite number, as Rust's `f64` parser reads it (`5`, `0.5`, `1e-3`).
fn parse_number(key: &'static str, value: &str) -> Result<f64, OptionsError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| invalid(key, value, "not a number"))
}

fn parse_header_name(key: &'static str, value: &str) -> Result<HeaderName, OptionsError> {
    HeaderName::from_bytes(value.trim().as_bytes())
        .map_err(|_| invalid(key, value, "not a valid header name"))
}

/// Checks the syntax of a JSON pointer (RFC 6901 §3): `/`-separated segments in which
/// `~` is only ever followed by `0` or `1`.
fn valid_json_pointer(pointer: &str) -> bool {
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// `host[:port]` with a non-empty host, a numeric port if any, and no user info.
fn valid_host_authority(authority: &Authority) -> bool {
    let host = authority.host();
    let rest = authority.as_str().get(host.len()..).unwrap_or("@");
    !host.is_empty()
        && !authority.as_str().contains('@')
        && (rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
}

/// `percent`: above 0 and at most 100.
fn parse_percent(key: &'static str, value: &str) -> Result<f64, OptionsError> {
    let p = parse_number(key, value)?;
    if !(p > 0.0 && p <= 100.0) {
        return Err(invalid(key, value, "must be above 0 and at most 100"));
    }
    Ok(p)
}

/// `stream`: a JetStream stream name (the server refuses spaces, `.`, `*`, `>`, path
/// separators and control characters in one).
fn parse_stream(key: &'static str, value: &str) -> Result<String, OptionsError> {
    let valid = !value.is_empty()
        && value.len() <= 255
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(invalid(
            key,
            value,
            "a stream name (no spaces, '.', '*', '>', '/' or '\\')",
        ))
    }
}

/// `spill`: a `file:///ABSOLUTE/PATH` pattern, as a recording mirror's URL; the path kept.
fn parse_spill(key: &'static str, value: &str) -> Result<String, OptionsError> {
    let url = crate::target_url::TargetUrl::parse(value)
        .map_err(|_| invalid(key, value, "file:///ABSOLUTE/PATH"))?;
    url.file_path()
        .map(str::to_owned)
        .ok_or_else(|| invalid(key, value, "file:///ABSOLUTE/PATH"))
}

/// `retry`: a whole number of further tries.
fn parse_retry(key: &'static str, value: &str) -> Result<u32, OptionsError> {
    value
        .trim()
        .parse::<u32>()
        .map_err(|_| invalid(key, value, "a whole number of further tries, 0 or more"))
}

/// `sample_by`: `header:NAME` or `cookie:NAME`.
fn parse_sample_by(key: &'static str, value: &str) -> Result<SampleBy, OptionsError> {
    let (kind, name) = value
        .split_once(':')
        .ok_or_else(|| invalid(key, value, "use header:NAME or cookie:NAME"))?;
    if kind.eq_ignore_ascii_case("header") {
        let name = parse_header_name(key, name)
            .map_err(|_| invalid(key, value, "not a valid header name after header:"))?;
        Ok(SampleBy::Header(name))
    } else if kind.eq_ignore_ascii_case("cookie") {
        let name = name.trim();
        if !is_token(name) {
            return Err(invalid(key, value, "not a valid cookie name after cookie:"));
        }
        Ok(SampleBy::Cookie(name.to_owned()))
    } else {
        Err(invalid(key, value, "use header:NAME or cookie:NAME"))
    }
}

/// `rate`: copies per second, above 0.
fn parse_rate(key: &'static str, value: &str) -> Result<f64, OptionsError> {
    let r = parse_number(key, value)?;
    if r <= 0.0 {
        return Err(invalid(key, value, "must be above 0 copies per second"));
    }
    Ok(r)
}

/// One method of a `method` value (`value`, named in the error, may list several).
fn parse_method(key: &'static str, value: &str, method: &str) -> Result<Method, OptionsError> {
    let m = method.trim().to_ascii_uppercase();
    Method::from_bytes(m.as_bytes())
        .ok()
        .filter(|_| !m.is_empty())
        .ok_or_else(|| invalid(key, value, "not a method name"))
}

/// `path`: a path prefix.
fn parse_path(key: &'static str, value: &str) -> Result<String, OptionsError> {
    if !value.starts_with('/') {
        return Err(invalid(key, value, "a path prefix starts with /"));
    }
    Ok(value.to_owned())
}

/// `set_header`: `Name:value`, for a header a mirror's options may change.
fn parse_set_header(
    key: &'static str,
    value: &str,
) -> Result<(HeaderName, HeaderValue), OptionsError> {
    let (name, v) = value
        .split_once(':')
        .ok_or_else(|| invalid(key, value, "use Name:value"))?;
    let name = parse_header_name(key, name)
        .map_err(|_| invalid(key, value, "not a valid header name before :"))?;
    if let Some(reason) = protected_header(&name) {
        return Err(invalid(key, value, reason));
    }
    // Surrounding whitespace is not part of a field value (RFC 9110 §5.5).
    let v = HeaderValue::from_str(v.trim_matches([' ', '\t']))
        .map_err(|_| invalid(key, value, "not a valid header value"))?;
    Ok((name, v))
}

/// `remove_header`: a header a mirror's options may change.
fn parse_changeable_header(key: &'static str, value: &str) -> Result<HeaderName, OptionsError> {
    let name = parse_header_name(key, value)?;
    if let Some(reason) = protected_header(&name) {
        return Err(invalid(key, value, reason));
    }
    Ok(name)
}

/// `host`: a `host[:port]` authority, as the `Host` value it becomes.
fn parse_host(key: &'static str, value: &str) -> Result<HeaderValue, OptionsError> {
    let authority = Authority::from_str(value.trim())
        .ok()
        .filter(valid_host_authority)
        .ok_or_else(|| invalid(key, value, "not a host[:port] authority"))?;
    HeaderValue::from_str(authority.as_str())
        .map_err(|_| invalid(key, value, "not a host[:port] authority"))
}

/// `ignore`: a JSON pointer (kept as given) or a header name (lower-cased).
fn parse_ignore(key: &'static str, value: &str) -> Result<String, OptionsError> {
    if value.starts_with('/') {
        if !valid_json_pointer(value) {
            return Err(invalid(
                key,
                value,
                "a JSON pointer escapes ~ as ~0 and / as ~1",
            ));
        }
        return Ok(value.to_owned());
    }
    let name = parse_header_name(key, value)
        .map_err(|_| invalid(key, value, "neither a header name nor a /JSON/pointer"))?;
    Ok(name.as_str().to_owned())
}

fn parse_file_size(key: &'static str, value: &str) -> Result<u64, OptionsError> {
    match crate::units::parse_size(value) {
        Ok(0) => Err(invalid(key, value, "must be more than 0")),
        Ok(size) => Ok(size),
        Err(_) => Err(invalid(key, value, "not a size (e.g. 256MiB)")),
    }
}

/// `endpoint`: a path pattern starting with `/`, without a query.
fn parse_endpoint(key: &'static str, value: &str) -> Result<String, OptionsError> {
    if !value.starts_with('/') || value.contains(['?', '#']) {
        return Err(invalid(
            key,
            value,
            "a path pattern such as /users/:id/orders",
        ));
    }
    if value.len() > 300 {
        return Err(invalid(key, value, "longer than 300 bytes"));
    }
    Ok(value.to_owned())
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

impl MirrorOptions {
    /// Parses already-decoded option pairs (`("percent", "5")`). The caller removes the
    /// keys that are not options (`url`, `format`).
    ///
    /// # Errors
    /// An unknown key, a bad value (both named), or a single-valued key given twice.
    pub fn parse_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<MirrorOptions, OptionsError> {
        let mut options = MirrorOptions::default();
        // Single-valued keys seen so far, to refuse a second one.
        let mut seen = [false; KEYS.len()];
        for (key, value) in pairs {
            let index = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| OptionsError::Unknown(key.to_owned()))?;
            let key = KEYS[index];
            let repeatable = matches!(
                key,
                "method"
                    | "path"
                    | "set_header"
                    | "remove_header"
                    | "compare_header"
                    | "ignore"
                    | "endpoint"
            );
            if !repeatable && std::mem::replace(&mut seen[index], true) {
                return Err(OptionsError::Repeated(key));
            }
            options.set(key, value)?;
        }
        Ok(options)
    }

    /// Applies one validated `key=value` to `self`.
    fn set(&mut self, key: &'static str, value: &str) -> Result<(), OptionsError> {
        match key {
            "percent" => self.percent = parse_percent(key, value)?,
            "sample_by" => self.sample_by = Some(parse_sample_by(key, value)?),
            "rate" => self.rate = Some(parse_rate(key, value)?),
            "method" => {
                for method in value.split(',') {
                    push_unique(&mut self.methods, parse_method(key, value, method)?);
                }
            }
            "path" => push_unique(&mut self.paths, parse_path(key, value)?),
            "set_header" => {
                let (name, v) = parse_set_header(key, value)?;
                // A second value would either replace the first or add a field line,
                // and neither is what every writer of two values means: refuse it.
                if self.set_headers.iter().any(|(n, _)| *n == name) {
                    return Err(OptionsError::RepeatedHeader(name.as_str().to_owned()));
                }
                self.set_headers.push((name, v));
            }
            "remove_header" => {
                push_unique(
                    &mut self.remove_headers,
                    parse_changeable_header(key, value)?,
                );
            }
            "host" => self.host = Some(parse_host(key, value)?),
            "compare" => self.compare = parse_bool(key, value)?,
            "compare_header" => {
                push_unique(&mut self.compare_headers, parse_header_name(key, value)?);
            }
            "ignore" => push_unique(&mut self.ignore, parse_ignore(key, value)?),
            "endpoint" => push_unique(&mut self.endpoints, parse_endpoint(key, value)?),
            "role" => {
                self.baseline = match value {
                    "baseline" => true,
                    "candidate" => false,
                    _ => return Err(invalid(key, value, "baseline or candidate")),
                }
            }
            "ordered" => self.ordered = parse_bool(key, value)?,
            "retry" => self.retry = parse_retry(key, value)?,
            "persistent" => self.persistent = parse_bool(key, value)?,
            "record_answers" => self.record_answers = parse_bool(key, value)?,
            "max_file_size" => self.max_file_size = Some(parse_file_size(key, value)?),
            "max_total_size" => self.max_total_size = Some(parse_file_size(key, value)?),
            "spill" => self.spill = Some(parse_spill(key, value)?),
            "stream" => self.stream = Some(parse_stream(key, value)?),
            "min_compared" | "max_mismatch_rate" | "max_error_rate" | "max_p99_ratio" => {
                self.thresholds
                    .set(key, value)
                    .map_err(|reason| invalid(key, value, reason))?;
            }
            _ => return Err(OptionsError::Unknown(key.to_owned())),
        }
        Ok(())
    }

    /// True when every option has its default value.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// True when no method, path or sampling rule leaves any request out (the rate
    /// limit is separate).
    pub fn selects_all(&self) -> bool {
        self.methods.is_empty() && self.paths.is_empty() && self.percent >= 100.0
    }

    /// The headers to compare: `compare_headers`, or [`DEFAULT_COMPARE_HEADERS`].
    pub fn effective_compare_headers(&self) -> &[HeaderName] {
        if self.compare_headers.is_empty() {
            &DEFAULT_COMPARE_HEADERS
        } else {
            &self.compare_headers
        }
    }

    /// True when [`Self::apply_rewrites`] changes anything.
    pub fn has_rewrites(&self) -> bool {
        !(self.remove_headers.is_empty() && self.set_headers.is_empty() && self.host.is_none())
    }

    /// Rewrites one copy's headers for this mirror: removes `remove_headers`, then sets
    /// `set_headers`, then `host` as `Host`.
    pub fn apply_rewrites(&self, headers: &mut HeaderMap) {
        if !self.has_rewrites() {
            return;
        }
        for name in &self.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
    }
}

impl FromStr for MirrorOptions {
    type Err = OptionsError;

    /// Parses the text form: `key=value` tokens separated by ASCII whitespace, values
    /// percent-decoded (see the module doc).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for token in text.split_ascii_whitespace() {
            let (key, raw) = token.split_once('=').unwrap_or((token, ""));
            let value = percent_decode(raw).ok_or_else(|| OptionsError::Invalid {
                key: KEYS
                    .iter()
                    .find(|k| **k == key)
                    .copied()
                    .unwrap_or("option"),
                value: raw.to_owned(),
                reason: "not UTF-8 once percent-decoded",
            })?;
            pairs.push((key, value));
        }
        Self::parse_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
    }
}

/// Decodes every `%XX`; any other `%` stays. `None` when the result is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                // Two hex digits are at most 0xFF.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `value` with every byte outside visible ASCII, and `%` and `#`, as `%XX`.
fn write_encoded(f: &mut impl fmt::Write, value: &[u8]) -> fmt::Result {
    for &b in value {
        if (0x21..=0x7e).contains(&b) && b != b'%' && b != b'#' {
            f.write_char(char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

impl fmt::Display for MirrorOptions {
    /// The non-default options as space-separated `key=value`, in the order of [`KEYS`];
    /// empty when every option is the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut token = |f: &mut fmt::Formatter<'_>, key: &str, value: &[u8]| {
            write!(f, "{sep}{key}=")?;
            sep = " ";
            write_encoded(f, value)
        };
        let d = Self::default();
        if self.percent != d.percent {
            token(f, "percent", self.percent.to_string().as_bytes())?;
        }
        if let Some(by) = &self.sample_by {
            token(f, "sample_by", by.to_string().as_bytes())?;
        }
        if let Some(rate) = self.rate {
            token(f, "rate", rate.to_string().as_bytes())?;
        }
        if !self.methods.is_empty() {
            let joined: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            token(f, "method", joined.join(",").as_bytes())?;
        }
        for path in &self.paths {
            token(f, "path", path.as_bytes())?;
        }
        for (name, value) in &self.set_headers {
            let mut joined = Vec::with_capacity(name.as_str().len() + 1 + value.len());
            joined.extend_from_slice(name.as_str().as_bytes());
            joined.push(b':');
            joined.extend_from_slice(value.as_bytes());
            token(f, "set_header", &joined)?;
        }
        for name in &self.remove_headers {
            token(f, "remove_header", name.as_str().as_bytes())?;
        }
        if let Some(host) = &self.host {
            token(f, "host", host.as_bytes())?;
        }
        if self.compare {
            token(f, "compare", b"true")?;
        }
        for name in &self.compare_headers {
            token(f, "compare_header", name.as_str().as_bytes())?;
        }
        for rule in &self.ignore {
            token(f, "ignore", rule.as_bytes())?;
        }
        for pattern in &self.endpoints {
            token(f, "endpoint", pattern.as_bytes())?;
        }
        if self.baseline {
            token(f, "role", b"baseline")?;
        }
        if self.ordered {
            token(f, "ordered", b"true")?;
        }
        if self.retry != d.retry {
            token(f, "retry", self.retry.to_string().as_bytes())?;
        }
        if self.persistent {
            token(f, "persistent", b"true")?;
        }
        let recording = recording_tokens(self).into_iter();
        for (key, value) in recording.chain(threshold_tokens(&self.thresholds)) {
            token(f, key, value.as_bytes())?;
        }
        Ok(())
    }
}

/// The recording, spill and NATS options given, as `key` and text value, in the order
/// of [`KEYS`].
fn recording_tokens(o: &MirrorOptions) -> Vec<(&'static str, String)> {
    let mut tokens = Vec::new();
    if o.record_answers {
        tokens.push(("record_answers", "true".to_owned()));
    }
    if let Some(size) = o.max_file_size {
        tokens.push(("max_file_size", size.to_string()));
    }
    if let Some(size) = o.max_total_size {
        tokens.push(("max_total_size", size.to_string()));
    }
    if let Some(path) = &o.spill {
        tokens.push(("spill", format!("file://{path}")));
    }
    if let Some(stream) = &o.stream {
        tokens.push(("stream", stream.clone()));
    }
    tokens
}

/// The thresholds given, as `key` and text value, in the order of [`KEYS`].
fn threshold_tokens(t: &ThresholdOptions) -> Vec<(&'static str, String)> {
    let rates = [
        ("max_mismatch_rate", t.max_mismatch_rate),
        ("max_error_rate", t.max_error_rate),
        ("max_p99_ratio", t.max_p99_ratio),
    ];
    let min = t.min_compared.map(|n| ("min_compared", n.to_string()));
    min.into_iter()
        .chain(
            rates
                .into_iter()
                .filter_map(|(key, v)| v.map(|v| (key, v.to_string()))),
        )
        .collect()
}

fn names(list: &[HeaderName]) -> Vec<&str> {
    list.iter().map(HeaderName::as_str).collect()
}

impl serde::Serialize for MirrorOptions {
    /// Every key of [`KEYS`], defaults included; `compare_header` shows the headers
    /// actually compared (the default `content-type` when none was given).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let lossy = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let mut map = serializer.serialize_map(Some(KEYS.len()))?;
        map.serialize_entry("percent", &self.percent)?;
        map.serialize_entry(
            "sample_by",
            &self.sample_by.as_ref().map(ToString::to_string),
        )?;
        map.serialize_entry("rate", &self.rate)?;
        map.serialize_entry(
            "method",
            &self.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
        )?;
        map.serialize_entry("path", &self.paths)?;
        map.serialize_entry(
            "set_header",
            &self
                .set_headers
                .iter()
                .map(|(n, v)| format!("{n}:{}", lossy(v)))
                .collect::<Vec<_>>(),
        )?;
        map.serialize_entry("remove_header", &names(&self.remove_headers))?;
        map.serialize_entry("host", &self.host.as_ref().map(lossy))?;
        map.serialize_entry("compare", &self.compare)?;
        map.serialize_entry("compare_header", &names(self.effective_compare_headers()))?;
        map.serialize_entry("ignore", &self.ignore)?;
        map.serialize_entry("endpoint", &self.endpoints)?;
        map.serialize_entry(
            "role",
            if self.baseline {
                "baseline"
            } else {
                "candidate"
            },
        )?;
        map.serialize_entry("ordered", &self.ordered)?;
        map.serialize_entry("retry", &self.retry)?;
        map.serialize_entry("persistent", &self.persistent)?;
        map.serialize_entry("record_answers", &self.record_answers)?;
        map.serialize_entry("max_file_size", &self.max_file_size)?;
        map.serialize_entry("max_total_size", &self.max_total_size)?;
        map.serialize_entry(
            "spill",
            &self.spill.as_ref().map(|path| format!("file://{path}")),
        )?;
        map.serialize_entry("stream", &self.stream)?;
        let t = &self.thresholds;
        map.serialize_entry("min_compared", &t.min_compared)?;
        map.serialize_entry("max_mismatch_rate", &t.max_mismatch_rate)?;
        map.serialize_entry("max_error_rate", &t.max_error_rate)?;
        map.serialize_entry("max_p99_ratio", &t.max_p99_ratio)?;
        map.end()
    }
}

/// A target URL and its options: the syntax of `--mirror`, the targets file and the
/// state file (`http://staging:8080 percent=5 method=GET compare=true`).
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorLine {
    pub url: TargetUrl,
    pub options: MirrorOptions,
}

impl MirrorLine {
    /// Parses a line: the first whitespace-separated token is the URL, the rest are
    /// options in the text form.
    ///
    /// # Errors
    /// An empty line, a bad URL or a bad option, each naming the bad value.
    pub fn parse(line: &str) -> Result<MirrorLine, MirrorLineError> {
        let line = line.trim_ascii();
        let (url, rest) = line
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((line, ""));
        if url.is_empty() {
            return Err(MirrorLineError::Empty);
        }
        Ok(MirrorLine {
            url: TargetUrl::parse(url)?,
            options: rest.parse()?,
        })
    }
}

impl FromStr for MirrorLine {
    type Err = MirrorLineError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        Self::parse(line)
    }
}

impl MirrorLine {
    /// The line as the state file keeps it: as [`fmt::Display`] writes it, with a NATS
    /// URL's credentials as given instead of `***`.
    pub fn saved(&self) -> String {
        let mut line = self.url.with_credentials().into_owned();
        if !self.options.is_default() {
            line.push(' ');
            line.push_str(&self.options.to_string());
        }
        line
    }
}

impl fmt::Display for MirrorLine {
    /// The normalised URL, then the non-default options if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())?;
        if !self.options.is_default() {
            write!(f, " {}", self.options)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<MirrorOptions, OptionsError> {
        MirrorOptions::parse_pairs(pairs.iter().copied())
    }

    #[test]
    fn a_nats_mirror_line_takes_a_stream_name() {
        let line = MirrorLine::parse("nats://h:4222/tm.copies stream=TM retry=2").unwrap();
        assert_eq!(line.options.stream.as_deref(), Some("TM"));
        assert_eq!(
            line.to_string(),
            "nats://h:4222/tm.copies retry=2 stream=TM"
        );
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            let err = parse(&[("stream", bad)]).unwrap_err();
            assert!(err.to_string().contains("stream"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_recording_mirror_line_round_trips_with_its_pattern_as_written() {
        let line =
            MirrorLine::parse("file:///rec/%Y%m%d.gor.gz max_file_size=1MiB record_answers=yes")
                .unwrap();
        assert_eq!(line.url.file_path(), Some("/rec/%Y%m%d.gor.gz"));
        assert_eq!(line.options.max_file_size, Some(1 << 20));
        assert!(line.options.record_answers);
        let text = line.to_string();
        assert_eq!(
            text,
            "file:///rec/%Y%m%d.gor.gz record_answers=true max_file_size=1048576"
        );
        assert_eq!(MirrorLine::parse(&text).unwrap().to_string(), text);
        let err = MirrorLine::parse("file:///r max_total_size=0").unwrap_err();
        assert!(err.to_string().contains("max_total_size"), "{err}");
    }

    #[test]
    fn no_options_is_the_default() {
        let options = parse(&[]).unwrap();
        assert!(options.is_default());
        assert!(options.selects_all());
        assert!(!options.has_rewrites());
        assert_eq!(options.to_string(), "");
        assert_eq!(options.effective_compare_headers(), &[header::CONTENT_TYPE]);
    }

    #[test]
    fn every_option_parses_and_writes_back_in_canonical_order() {
        let options = parse(&[
            ("persistent", ""),
            ("ignore", "/meta/generated_at"),
            ("ignore", "/items/*/id"),
            ("ignore", "X-Request-Id"),
            ("compare_header", "ETag"),
            ("compare", "yes"),
            ("host", "Shadow.example:8080"),
            ("remove_header", "Authorization"),
            ("set_header", "X-Shadow: 1"),
            ("path", "/api"),
            ("path", "/v2"),
            ("method", "get, post"),
            ("method", "PUT"),
            ("rate", "2.5"),
            ("sample_by", "cookie:session"),
            ("percent", "12.5"),
            ("ordered", "on"),
            ("retry", "3"),
        ])
        .unwrap();
        assert_eq!(options.percent, 12.5);
        assert_eq!(options.sample_by, Some(SampleBy::Cookie("session".into())));
        assert_eq!(options.rate, Some(2.5));
        assert_eq!(options.methods, [Method::GET, Method::POST, Method::PUT]);
        assert_eq!(options.paths, ["/api", "/v2"]);
        assert_eq!(
            options.set_headers,
            [(
                HeaderName::from_static("x-shadow"),
                HeaderValue::from_static("1")
            )]
        );
        assert_eq!(options.remove_headers, [header::AUTHORIZATION]);
        assert_eq!(options.host.as_ref().unwrap(), "Shadow.example:8080");
        assert_eq!(options.compare_headers, [header::ETAG]);
        assert_eq!(
            options.ignore,
            ["/meta/generated_at", "/items/*/id", "x-request-id"]
        );
        assert!(options.compare && options.ordered && options.persistent);
        assert_eq!(options.retry, 3);
        assert_eq!(
            options.to_string(),
            "percent=12.5 sample_by=cookie:session rate=2.5 method=GET,POST,PUT path=/api \
             path=/v2 set_header=x-shadow:1 remove_header=authorization \
             host=Shadow.example:8080 compare=true compare_header=etag \
             ignore=/meta/generated_at ignore=/items/*/id ignore=x-request-id ordered=true \
             retry=3 persistent=true"
        );
        assert_eq!(
            options.to_string().parse::<MirrorOptions>().unwrap(),
            options
        );
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for (v, want) in [
            ("", true),
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("on", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
        ] {
            assert_eq!(parse(&[("compare", v)]).unwrap().compare, want, "{v:?}");
        }
        let err = parse(&[("persistent", "maybe")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid persistent value \"maybe\": use true or false"
        );
    }

    #[test]
    fn bad_values_are_refused_naming_key_and_value() {
        let cases: &[(&str, &str)] = &[
            ("percent", "0"),
            ("percent", "-1"),
            ("percent", "100.5"),
            ("percent", "NaN"),
            ("percent", "inf"),
            ("percent", "5%"),
            ("percent", ""),
            ("sample_by", "user"),
            ("sample_by", "header:"),
            ("sample_by", "header:bad name"),
            ("sample_by", "cookie:a;b"),
            ("sample_by", "query:x"),
            ("rate", "0"),
            ("rate", "-3"),
            ("rate", "inf"),
            ("rate", "fast"),
            ("method", ""),
            ("method", "GET,"),
            ("method", "G T"),
            ("path", "api"),
            ("path", ""),
            ("set_header", "X-Shadow"),
            ("set_header", ":1"),
            ("set_header", "X-Shadow:a\nb"),
            ("set_header", "Content-Length:5"),
            ("set_header", "Host:x"),
            ("set_header", "Connection:close"),
            ("set_header", "Proxy-Authorization:x"),
            ("remove_header", "Transfer-Encoding"),
            ("remove_header", "Via"),
            ("remove_header", "bad name"),
            ("host", ""),
            ("host", "user@host"),
            ("host", "host/path"),
            ("host", "host:port"),
            ("host", "host:"),
            ("host", "host:70000"),
            ("compare", "2"),
            ("compare_header", ""),
            ("ignore", ""),
            ("ignore", "/a/~2"),
            ("ignore", "/a~"),
            ("ignore", "not a header"),
            ("ordered", "x"),
            ("retry", "-1"),
            ("retry", "1.5"),
            ("retry", "many"),
            ("min_compared", "-1"),
            ("min_compared", "lots"),
            ("max_mismatch_rate", "150%"),
            ("max_mismatch_rate", "x"),
            ("max_error_rate", "1.5"),
            ("max_p99_ratio", "0"),
            ("max_p99_ratio", "inf"),
        ];
        for &(key, value) in cases {
            let err = parse(&[(key, value)]).unwrap_err();
            let shown = err.to_string();
            assert!(
                matches!(&err, OptionsError::Invalid { key: k, value: v, .. } if *k == key && v == value),
                "{key}={value:?}: {err:?}"
            );
            assert!(
                shown.contains(key) && shown.contains(&format!("{value:?}")),
                "{shown}"
            );
            assert!(!shown.contains('\n'), "{shown}");
        }
    }

    #[test]
    fn unknown_and_repeated_keys_are_refused() {
        let err = parse(&[("percnt", "5")]).unwrap_err();
        assert_eq!(err, OptionsError::Unknown("percnt".into()));
        assert!(err.to_string().starts_with("unknown option \"percnt\""));
        assert_eq!(
            parse(&[("url", "http://x")]).unwrap_err(),
            OptionsError::Unknown("url".into())
        );
        for key in [
            "percent",
            "sample_by",
            "rate",
            "host",
            "compare",
            "ordered",
            "retry",
            "persistent",
        ] {
            let value = match key {
                "sample_by" => "header:x",
                "host" => "h",
                "percent" | "rate" | "retry" => "5",
                _ => "true",
            };
            let err = parse(&[(key, value), (key, value)]).unwrap_err();
            assert_eq!(
                err,
                OptionsError::Repeated(KEYS.iter().find(|k| **k == key).unwrap())
            );
            assert_eq!(
                err.to_string(),
                format!("option {key} given more than once")
            );
        }
        // Repeatable keys collect, without repeats.
        let options = parse(&[("path", "/a"), ("path", "/a"), ("method", "get,GET")]).unwrap();
        assert_eq!(options.paths, ["/a"]);
        assert_eq!(options.methods, [Method::GET]);
    }

    #[test]
    fn a_header_set_twice_is_refused_naming_it() {
        for second in ["X-Shadow:2", "x-shadow:1", "X-SHADOW: 1"] {
            let err = parse(&[("set_header", "X-Shadow:1"), ("set_header", second)]).unwrap_err();
            assert_eq!(
                err,
                OptionsError::RepeatedHeader("x-shadow".into()),
                "{second}"
            );
            assert_eq!(
                err.to_string(),
                "set_header given more than once for header x-shadow: set each header once"
            );
        }
        // The text form (mirror lines: --mirror, the targets and state files) too.
        let err = MirrorLine::parse("http://m:1 set_header=A:1 set_header=a:2").unwrap_err();
        assert_eq!(
            err,
            MirrorLineError::Options(OptionsError::RepeatedHeader("a".into()))
        );
        // Different headers are fine.
        let options = parse(&[("set_header", "A:1"), ("set_header", "B:1")]).unwrap();
        assert_eq!(options.set_headers.len(), 2);
    }

    #[test]
    fn text_form_percent_encodes_unsafe_characters() {
        let options = parse(&[
            ("set_header", "X-Note:a b%c#d"),
            ("path", "/caf\u{e9} x"),
            ("host", "h"),
        ])
        .unwrap();
        let text = options.to_string();
        assert_eq!(
            text,
            "path=/caf%C3%A9%20x set_header=x-note:a%20b%25c%23d host=h"
        );
        assert_eq!(text.parse::<MirrorOptions>().unwrap(), options);
        // `+` is a plus, a stray `%` stays, a bare key is an empty value.
        let parsed: MirrorOptions = "path=/a+b%zz%4 compare".parse().unwrap();
        assert_eq!(parsed.paths, ["/a+b%zz%4"]);
        assert!(parsed.compare);
        let err = "path=/%FF".parse::<MirrorOptions>().unwrap_err();
        assert!(
            matches!(err, OptionsError::Invalid { key: "path", .. }),
            "{err}"
        );
    }

    #[test]
    fn host_accepts_an_authority_only() {
        for ok in ["example.com", "example.com:8080", "[::1]:80", "10.0.0.1"] {
            let o = parse(&[("host", ok)]).unwrap();
            assert_eq!(o.host.unwrap(), ok);
        }
    }

    #[test]
    fn rewrites_remove_then_set_then_host() {
        let options = parse(&[
            ("remove_header", "Authorization"),
            ("remove_header", "X-Shadow"),
            ("set_header", "X-Shadow:1"),
            ("set_header", "X-Multi:a"),
            ("host", "shadow:81"),
        ])
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("secret"));
        headers.insert("x-shadow", HeaderValue::from_static("0"));
        headers.insert("x-multi", HeaderValue::from_static("old"));
        headers.insert(header::HOST, HeaderValue::from_static("mirror:80"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        options.apply_rewrites(&mut headers);
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert_eq!(headers["x-shadow"], "1");
        let multi: Vec<_> = headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a"]);
        assert_eq!(headers[header::HOST], "shadow:81");
        assert_eq!(headers[header::ACCEPT], "*/*");

        let mut untouched = headers.clone();
        MirrorOptions::default().apply_rewrites(&mut untouched);
        assert_eq!(untouched, headers);
    }

    #[test]
    fn spill_takes_a_file_url_and_shows_it_as_given() {
        let line = MirrorLine::parse("http://m spill=file:///var/tm/missed-%Y%m%d.gor").unwrap();
        assert_eq!(
            line.options.spill.as_deref(),
            Some("/var/tm/missed-%Y%m%d.gor")
        );
        assert_eq!(MirrorLine::parse(&line.to_string()).unwrap(), line);
        let json = serde_json::to_value(&line.options).unwrap();
        assert_eq!(json["spill"], "file:///var/tm/missed-%Y%m%d.gor");
        for bad in ["http://m/x", "file://missed.gor", "/var/tm/x.gor", ""] {
            let err = MirrorLine::parse(&format!("http://m spill={bad}")).unwrap_err();
            assert!(err.to_string().contains("spill"), "{bad}: {err}");
        }
    }

    #[test]
    fn verdict_thresholds_are_options_that_round_trip() {
        let line = MirrorLine::parse(
            "http://cand:8080 compare=true max_p99_ratio=1.5 max_mismatch_rate=0.5% \
             min_compared=5 max_error_rate=0.001",
        )
        .unwrap();
        let t = line.options.thresholds;
        assert_eq!(
            t,
            ThresholdOptions {
                min_compared: Some(5),
                max_mismatch_rate: Some(0.005),
                max_error_rate: Some(0.001),
                max_p99_ratio: Some(1.5),
            }
        );
        let text = line.to_string();
        assert_eq!(
            text,
            "http://cand:8080 compare=true min_compared=5 max_mismatch_rate=0.005 \
             max_error_rate=0.001 max_p99_ratio=1.5"
        );
        assert_eq!(MirrorLine::parse(&text).unwrap(), line);
        let json = serde_json::to_value(&line.options).unwrap();
        assert_eq!(json["min_compared"], 5);
        assert_eq!(json["max_mismatch_rate"], 0.005);
        assert_eq!(json["max_p99_ratio"], 1.5);
        // The JSON values, given back as pairs (as the status page does), parse to the
        // same thresholds.
        let pairs: Vec<(&str, String)> = ["min_compared", "max_mismatch_rate", "max_error_rate"]
            .into_iter()
            .map(|k| (k, json[k].to_string()))
            .collect();
        let again = MirrorOptions::parse_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(again.unwrap().thresholds.max_mismatch_rate, Some(0.005));
        let err = MirrorLine::parse("http://cand:8080 max_mismatch_rate=2%x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid max_mismatch_rate value \"2%x\": a rate such as 0.001 or 0.1%"
        );
        let err = parse(&[("min_compared", "1"), ("min_compared", "2")]).unwrap_err();
        assert_eq!(err, OptionsError::Repeated("min_compared"));
    }

    #[test]
    fn json_shows_every_key_with_defaults() {
        let json = serde_json::to_value(MirrorOptions::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "percent": 100.0, "sample_by": null, "rate": null, "method": [], "path": [],
                "set_header": [], "remove_header": [], "host": null, "compare": false,
                "compare_header": ["content-type"], "ignore": [], "endpoint": [],
                "role": "candidate", "ordered": false,
                "retry": 0, "persistent": false, "record_answers": false, "max_file_size": null,
                "max_total_size": null, "spill": null, "stream": null, "min_compared": null,
                "max_mismatch_rate": null, "max_error_rate": null, "max_p99_ratio": null
            })
        );
        let keys: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
        let mut want: Vec<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
        want.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, want);

        let options: MirrorOptions = "percent=5 sample_by=header:X-User rate=1 method=GET \
             set_header=X-Shadow:1 host=h:1 compare compare_header=ETag"
            .parse()
            .unwrap();
        let json = serde_json::to_value(&options).unwrap();
        assert_eq!(json["percent"], 5.0);
        assert_eq!(json["sample_by"], "header:x-user");
        assert_eq!(json["rate"], 1.0);
        assert_eq!(json["method"], serde_json::json!(["GET"]));
        assert_eq!(json["set_header"], serde_json::json!(["x-shadow:1"]));
        assert_eq!(json["host"], "h:1");
        assert_eq!(json["compare"], true);
        assert_eq!(json["compare_header"], serde_json::json!(["etag"]));
    }

    #[test]
    fn mirror_line_parses_url_then_options() {
        let line = MirrorLine::parse("  HTTP://Staging:8080/  percent=5 method=GET compare=true ")
            .unwrap();
        assert_eq!(line.url.as_str(), "http://staging:8080");
        assert_eq!(line.options.percent, 5.0);
        assert_eq!(line.options.methods, [Method::GET]);
        assert!(line.options.compare);
        assert_eq!(
            line.to_string(),
            "http://staging:8080 percent=5 method=GET compare=true"
        );
        assert_eq!(MirrorLine::parse(&line.to_string()).unwrap(), line);

        let plain = MirrorLine::parse("http://m:1").unwrap();
        assert!(plain.options.is_default());
        assert_eq!(plain.to_string(), "http://m:1");

        assert_eq!(
            MirrorLine::parse("   ").unwrap_err(),
            MirrorLineError::Empty
        );
        assert!(matches!(
            MirrorLine::parse("ftp://x percent=5").unwrap_err(),
            MirrorLineError::Url(UrlError::BadScheme(_))
        ));
        let err = MirrorLine::parse("http://m:1 percent=500").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid percent value \"500\": must be above 0 and at most 100"
        );
    }

    // === property tests ===

    fn header_name() -> impl Strategy<Value = HeaderName> {
        "x-[a-z0-9]{1,8}".prop_map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap())
    }

    /// Any string a `HeaderValue::from_str` accepts, trimmed as the parser trims.
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        "[ -~\u{a0}-\u{ff}\u{e9}\u{4e2d}\t]{0,12}".prop_filter_map("header value", |s| {
            HeaderValue::from_str(s.trim_matches([' ', '\t'])).ok()
        })
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::DELETE),
            "[A-Z]{1,8}".prop_map(|s| Method::from_bytes(s.as_bytes()).unwrap()),
        ]
    }

    fn unique<T: PartialEq>(list: Vec<T>) -> Vec<T> {
        let mut out = Vec::new();
        for item in list {
            push_unique(&mut out, item);
        }
        out
    }

    /// The first value of each header name.
    fn unique_names(list: Vec<(HeaderName, HeaderValue)>) -> Vec<(HeaderName, HeaderValue)> {
        let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (name, value) in list {
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, value));
            }
        }
        out
    }

    fn percent() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(100.0),
            (1u32..=100).prop_map(f64::from),
            (f64::MIN_POSITIVE..=100.0f64),
        ]
    }

    /// An arbitrary valid set of options, as the parser would build it.
    pub(crate) fn options() -> impl Strategy<Value = MirrorOptions> {
        let selection = (
            percent(),
            proptest::option::of(prop_oneof![
                header_name().prop_map(SampleBy::Header),
                "[A-Za-z0-9_.!#$&'*+^`|~-]{1,10}".prop_map(SampleBy::Cookie),
            ]),
            proptest::option::of(prop_oneof![1e-6f64..1e6, (1u32..1000).prop_map(f64::from)]),
            proptest::collection::vec(method(), 0..3),
            proptest::collection::vec("/[ -~\u{e9}\u{2003}]{0,10}", 0..3),
        );
        let rewrites = (
            proptest::collection::vec((header_name(), header_value()), 0..3),
            proptest::collection::vec(header_name(), 0..3),
            proptest::option::of("[a-z0-9.-]{1,10}(:[0-9]{1,4})?"),
        );
        let comparison = (
            any::<bool>(),
            proptest::collection::vec(header_name(), 0..3),
            proptest::collection::vec(
                prop_oneof![
                    "(/([a-z*% ]|~0|~1){0,5}){1,3}",
                    header_name().prop_map(|n| n.as_str().to_owned()),
                ],
                0..3,
            ),
            (
                proptest::collection::vec("(/(:?[a-z{}]{1,4})){1,3}", 0..3),
                any::<bool>(),
            ),
            any::<bool>(),
            any::<bool>(),
        );
        let recording = (
            any::<bool>(),
            proptest::option::of(1u64..u64::MAX),
            proptest::option::of(1u64..u64::MAX),
            proptest::option::of(file_path()),
        );
        let thresholds = (
            proptest::option::of(any::<u64>()),
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(0.0f64..=1.0),
            proptest::option::of(1e-6f64..1e6),
        )
            .prop_map(
                |(min_compared, max_mismatch_rate, max_error_rate, max_p99_ratio)| {
                    ThresholdOptions {
                        min_compared,
                        max_mismatch_rate,
                        max_error_rate,
                        max_p99_ratio,
                    }
                },
            );
        (
            selection,
            rewrites,
            comparison,
            (0u32..=10, recording, thresholds),
        )
            .prop_map(
                |(
                    (percent, sample_by, rate, methods, paths),
                    (set_headers, remove_headers, host),
                    (compare, compare_headers, ignore, (endpoints, baseline), ordered, persistent),
                    (retry, (record_answers, max_file_size, max_total_size, spill), thresholds),
                )| MirrorOptions {
                    percent,
                    sample_by,
                    rate,
                    methods: unique(methods),
                    paths: unique(paths),
                    set_headers: unique_names(set_headers),
                    remove_headers: unique(remove_headers),
                    host: host.map(|h| HeaderValue::from_str(&h).unwrap()),
                    compare,
                    compare_headers: unique(compare_headers),
                    ignore: unique(ignore),
                    endpoints: unique(endpoints),
                    baseline,
                    ordered,
                    retry,
                    persistent,
                    record_answers,
                    max_file_size,
                    max_total_size,
                    spill,
                    stream: None,
                    thresholds,
                },
            )
    }

    /// An absolute path a `file://` URL accepts: time fields, `%` signs, dots and
    /// non-ASCII letters, never a `..` segment.
    fn file_path() -> impl Strategy<Value = String> {
        "(/[a-z0-9%YmdHMS._\u{e9}-]{1,8}){1,3}"
            .prop_filter("no .. segment", |p| !p.split('/').any(|s| s == ".."))
    }

    /// A target URL of every scheme a mirror line takes.
    fn mirror_url() -> impl Strategy<Value = TargetUrl> {
        let network = (
            prop_oneof![Just("http"), Just("https"), Just("h2c")],
            "[a-z]{1,8}",
            1u16..,
            "(/[a-z0-9]{1,5}){0,2}",
        )
            .prop_map(|(scheme, host, port, prefix)| format!("{scheme}://{host}:{port}{prefix}"));
        prop_oneof![network, file_path().prop_map(|p| format!("file://{p}"))]
            .prop_map(|url| TargetUrl::parse(&url).unwrap())
    }

    proptest! {
        #[test]
        fn parse_pairs_never_panics(pairs in proptest::collection::vec(
            (prop_oneof![proptest::sample::select(KEYS.to_vec()).prop_map(String::from), ".{0,8}"], ".{0,24}"),
            0..6,
        )) {
            let _ = MirrorOptions::parse_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }

        #[test]
        fn mirror_line_parse_never_panics(line in ".{0,80}", tail in "( [a-z_]{1,14}=[^ ]{0,12}){0,4}") {
            let _ = MirrorLine::parse(&line);
            let _ = MirrorLine::parse(&format!("http://m:1{tail}"));
            let _ = line.parse::<MirrorOptions>();
        }

        #[test]
        fn options_round_trip_through_text(options in options()) {
            let text = options.to_string();
            prop_assert!(!text.contains(['\n', '#']), "{}", text);
            let parsed: MirrorOptions = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&parsed, &options, "{}", text);
            prop_assert_eq!(parsed.to_string(), text);
        }

        /// Every scheme (`file://` paths with their time fields too) and every option,
        /// `spill`, `retry`, `role`, `endpoint` and the recording sizes included.
        #[test]
        fn mirror_line_round_trips(options in options(), url in mirror_url()) {
            let line = MirrorLine { url, options };
            let text = line.to_string();
            let parsed = MirrorLine::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(&parsed, &line, "{}", text);
            prop_assert_eq!(parsed.to_string(), text);
        }

        /// A valid line with any of its characters changed: refused or read, never a
        /// panic, and what is read writes back to a line that reads the same.
        #[test]
        fn a_mangled_mirror_line_never_panics(options in options(), url in mirror_url(), at in any::<proptest::sample::Index>(), with in "\\PC") {
            let text = MirrorLine { url, options }.to_string();
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len());
            chars.splice(i..=i, with.chars());
            let mangled: String = chars.into_iter().collect();
            if let Ok(line) = MirrorLine::parse(&mangled) {
                prop_assert_eq!(MirrorLine::parse(&line.to_string()).unwrap(), line);
            }
        }

        #[test]
        fn invalid_values_are_always_refused(
            case in prop_oneof![
                (Just("percent"), prop_oneof![(-1e9f64..=0.0).prop_map(|p| p.to_string()), (100.0001f64..1e9).prop_map(|p| p.to_string()), "[a-z%]{1,5}"]),
                (Just("rate"), prop_oneof![(-1e9f64..=0.0).prop_map(|p| p.to_string()), "[a-z]{1,5}"]),
                (Just("path"), "[^/].{0,8}"),
                (Just("method"), "[A-Z]{0,3}[,;:\"()]"),
                (Just("compare"), "[a-z]{2,6}".prop_filter("not a boolean", |s| !matches!(s.as_str(), "true" | "false" | "yes" | "no" | "on" | "off"))),
                (Just("set_header"), "[a-z]{1,5}"),
                (Just("host"), "[a-z]{1,5}[@/?#][a-z]{0,3}"),
                (Just("ignore"), "/[a-z]{0,3}~[2-9a-z]?"),
                (Just("endpoint"), prop_oneof!["[a-z:]{1,5}", "/[a-z]{0,3}[?#][a-z]{0,3}"]),
                (Just("role"), "[a-z]{0,5}"),
            ]
        ) {
            let (key, value) = case;
            let result = MirrorOptions::parse_pairs([(key, value.as_str())]);
            let is_invalid = matches!(&result, Err(OptionsError::Invalid { key: k, .. }) if *k == key);
            prop_assert!(is_invalid, "{}={:?}: {:?}", key, value, result);
        }
    }
}
