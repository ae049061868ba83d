//! Comparing a mirror's answer with main's answer to the same request (shadow testing),
//! as pure functions over plain values.
//!
//! This module owns the comparison rules ([`Rules`]: which headers, which JSON locations
//! to ignore), the incremental capture of a body for comparison ([`Capture`]), and the
//! verdict ([`compare`]). It does not read bodies from the network, keep statistics or
//! remember mismatches: the caller feeds [`Capture`] as the bytes stream past and hands
//! the results to [`compare`], then records the [`Verdict`] elsewhere
//! ([`super::comparison`], [`super::mismatches`]).
//!
//! What is compared, in this order (the first difference found is the one reported):
//! 1. the status code;
//! 2. each header of [`Rules::headers`], in the order given, as the ordered list of its
//!    values, byte for byte;
//! 3. the body: structurally when both bodies parse as JSON, otherwise byte for byte; when
//!    either body passed the capture limit, by length and xxh3-128 digest only.
//!
//! JSON equality: object key order, whitespace and number spelling do not matter
//! (`1`, `1.0` and `1e0` are equal). Two integers are compared exactly; as soon as either
//! side is written as a float both are compared as `f64`. Duplicate object keys keep the
//! last value (as `serde_json` does). The first difference is searched depth first, object
//! keys in byte order, array elements by index, so it is the same on every run.

use std::fmt;
use std::io;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};
use serde_json::{Map, Number, Value};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

/// Longest JSON value or header value kept in a [`Difference`], in characters.
pub const MAX_VALUE_CHARS: usize = 200;

/// Longest JSON pointer kept in a [`Difference`], in characters. A pointer cut here may
/// end inside an escape; it is for reading, not for resolving.
pub const MAX_POINTER_CHARS: usize = 1000;

/// Longest header name kept in a [`Difference`], in characters.
pub const MAX_HEADER_NAME_CHARS: usize = 200;

/// A bad `ignore=` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Neither a valid header name nor a JSON pointer.
    #[error("ignore={0}: not a header name, nor a JSON pointer (a JSON pointer starts with `/`)")]
    InvalidIgnore(String),
    /// A JSON pointer with a `~` not followed by `0` or `1` (RFC 6901 §3).
    #[error("ignore={0}: bad JSON pointer: `~` must be followed by `0` (for ~) or `1` (for /)")]
    InvalidPointer(String),
}

/// What one comparing mirror compares. Built once from the mirror's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Compared headers, without duplicates and without the ignored ones.
    headers: Vec<HeaderName>,
    /// JSON locations whose values are not compared.
    ignored: Vec<Pattern>,
}

/// One segment of an ignored JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `*`: any object key or array index.
    Any,
    /// An object key, or an array index written in decimal.
    Literal(String),
}

/// An ignored JSON pointer, already unescaped. Never empty: it starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(Vec<Segment>);

impl Rules {
    /// Builds the rules of one mirror.
    ///
    /// `compare_headers` empty means `Content-Type` alone; naming headers replaces that
    /// default. Each `ignore` value is a header name (case-insensitive, removed from the
    /// compared headers) or, when it starts with `/`, a JSON pointer (RFC 6901, with the
    /// `~0` and `~1` escapes) in which a segment `*` matches any object key or array
    /// index: values at matching locations are not compared, nor is their presence.
    /// A literal key `*` cannot be named.
    ///
    /// # Errors
    /// A value that is neither a valid header name nor a well-formed JSON pointer.
    pub fn new(compare_headers: &[HeaderName], ignore: &[String]) -> Result<Self, RuleError> {
        let mut ignored_headers = Vec::new();
        let mut ignored = Vec::new();
        for value in ignore {
            if value.starts_with('/') {
                ignored.push(Pattern::parse(value)?);
            } else {
                let name = HeaderName::from_bytes(value.as_bytes())
                    .map_err(|_| RuleError::InvalidIgnore(value.clone()))?;
                ignored_headers.push(name);
            }
        }
        let default = [header::CONTENT_TYPE];
        let wanted = if compare_headers.is_empty() {
            &default[..]
        } else {
            compare_headers
        };
        let mut headers: Vec<HeaderName> = Vec::with_capacity(wanted.len());
        for name in wanted {
            if !headers.contains(name) && !ignored_headers.contains(name) {
                headers.push(name.clone());
            }
        }
        Ok(Self { headers, ignored })
    }

    /// The headers compared, in comparison order.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// The indices of the patterns still alive below a child reached by `step` at
    /// `depth` (the child's own depth is `depth + 1`), or `None` when the child itself
    /// is ignored.
    fn descend(&self, alive: &[usize], depth: usize, step: Step<'_>) -> Option<Vec<usize>> {
        let mut next = Vec::new();
        for &i in alive {
            let Pattern(segments) = &self.ignored[i];
            if segments.get(depth).is_some_and(|s| s.matches(step)) {
                if segments.len() == depth + 1 {
                    return None;
                }
                next.push(i);
            }
        }
        Some(next)
    }
}

impl Default for Rules {
    /// Compares `Content-Type` and ignores nothing.
    fn default() -> Self {
        Self {
            headers: vec![header::CONTENT_TYPE],
            ignored: Vec::new(),
        }
    }
}

impl Pattern {
    /// Parses a JSON pointer that starts with `/` (RFC 6901 §3).
    fn parse(value: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::InvalidPointer(value.to_owned());
        let mut segments = Vec::new();
        // The leading `/` makes the first split piece empty.
        for raw in value.split('/').skip(1) {
            if raw == "*" {
                segments.push(Segment::Any);
                continue;
            }
            let mut key = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => key.push('~'),
                        Some('1') => key.push('/'),
                        _ => return Err(bad()),
                    }
                } else {
                    key.push(c);
                }
            }
            segments.push(Segment::Literal(key));
        }
        Ok(Self(segments))
    }
}

impl Segment {
    fn matches(&self, step: Step<'_>) -> bool {
        match (self, step) {
            (Segment::Any, _) => true,
            (Segment::Literal(s), Step::Key(k)) => s == k,
            // RFC 6901 §4: an array index is decimal without leading zeros.
            (Segment::Literal(s), Step::Index(i)) => {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == "0" || !s.starts_with('0'))
                    && s.parse::<usize>() == Ok(i)
            }
        }
    }
}

/// A body collected for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapturedBody {
    /// The whole body (at most the capture limit).
    Whole(Bytes),
    /// A body longer than the capture limit: only its length and xxh3-128 digest.
    Digest { len: u64, digest: u128 },
}

impl CapturedBody {
    /// The body's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            CapturedBody::Whole(b) => b.len() as u64,
            CapturedBody::Digest { len, .. } => *len,
        }
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The xxh3-128 digest of the body (computed for a [`CapturedBody::Whole`]).
    pub fn digest(&self) -> u128 {
        match self {
            CapturedBody::Whole(b) => xxh3_128(b),
            CapturedBody::Digest { digest, .. } => *digest,
        }
    }
}

/// Collects a body as it streams past: the bytes while they fit in `limit`, then only
/// the length and an xxh3-128 digest of every byte.
///
/// The kept bytes never exceed `limit` (nor does their allocation); once the body passes
/// `limit` they are freed and [`Capture::held_bytes`] drops to 0. The digest is the same
/// as hashing the whole body at once, whatever the chunking.
pub struct Capture {
    limit: usize,
    state: CaptureState,
}

enum CaptureState {
    Keeping(Vec<u8>),
    // Boxed: the hasher carries a few hundred bytes of buffer.
    Hashing { len: u64, hasher: Box<Xxh3Default> },
}

impl Capture {
    /// A capture that keeps up to `limit` bytes (`--max-compare-size`).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: CaptureState::Keeping(Vec::new()),
        }
    }

    /// Adds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        match &mut self.state {
            CaptureState::Keeping(kept) => {
                let needed = kept.len() + chunk.len();
                if needed <= self.limit {
                    if needed > kept.capacity() {
                        // Grow geometrically but never past the limit, so the allocation
                        // is bounded by the limit too.
                        let target = needed.max(kept.capacity().saturating_mul(2));
                        kept.reserve_exact(target.min(self.limit) - kept.len());
                    }
                    kept.extend_from_slice(chunk);
                } else {
                    // Hashing starts only now: small bodies, the common case, never pay
                    // for it. The digest is the same as if every byte had been hashed.
                    let mut hasher = Box::new(Xxh3Default::new());
                    hasher.update(kept);
                    hasher.update(chunk);
                    self.state = CaptureState::Hashing {
                        len: needed as u64,
                        hasher,
                    };
                }
            }
            CaptureState::Hashing { len, hasher } => {
                hasher.update(chunk);
                *len += chunk.len() as u64;
            }
        }
    }

    /// Bytes of body memory this capture holds now (the kept bytes' allocation), for
    /// memory accounting. At most the limit; 0 once the body passed it.
    pub fn held_bytes(&self) -> usize {
        match &self.state {
            CaptureState::Keeping(kept) => kept.capacity(),
            CaptureState::Hashing { .. } => 0,
        }
    }

    /// The body seen: whole if it fit in the limit, else its length and digest.
    pub fn finish(self) -> CapturedBody {
        match self.state {
            CaptureState::Keeping(kept) => CapturedBody::Whole(Bytes::from(kept)),
            CaptureState::Hashing { len, hasher } => CapturedBody::Digest {
                len,
                digest: hasher.digest128(),
            },
        }
    }
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Capture");
        d.field("limit", &self.limit);
        match &self.state {
            CaptureState::Keeping(kept) => d.field("kept", &kept.len()),
            CaptureState::Hashing { len, .. } => d.field("hashed", len),
        };
        d.finish()
    }
}

/// One side's answer, as compared.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: CapturedBody,
}

/// The result of one comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch(Mismatch),
}

/// Which parts differ, and the first difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub status: bool,
    pub headers: bool,
    pub body: bool,
    /// The first difference, in the order status, headers, body.
    pub difference: Difference,
}

/// The first thing that differs between main's and the mirror's answer. Serialised with
/// a `kind` tag: `{"kind":"json_pointer","pointer":"/a/b","main":"1","mirror":"2"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    Status {
        main: u16,
        mirror: u16,
    },
    /// A compared header; its values joined by `, ` (non-UTF-8 bytes replaced), cut to
    /// [`MAX_VALUE_CHARS`]; `None` (JSON `null`) when that side does not send it.
    Header {
        name: String,
        main: Option<String>,
        mirror: Option<String>,
    },
    /// Both bodies are JSON and differ at `pointer` (RFC 6901; `""` is the whole
    /// document). Each value is compact JSON text cut to [`MAX_VALUE_CHARS`], or `None`
    /// (JSON `null`, unlike a JSON null value, which reads `"null"`) when that side has
    /// nothing at `pointer`.
    JsonPointer {
        pointer: String,
        main: Option<String>,
        mirror: Option<String>,
    },
    /// Bodies compared byte for byte: the first differing byte, or the shorter length
    /// when one body is a prefix of the other.
    ByteOffset {
        offset: u64,
    },
    /// A body passed the capture limit and the lengths or digests differ.
    Digest {
        main_len: u64,
        mirror_len: u64,
    },
}

impl Difference {
    /// Cuts every string to its documented bound (a no-op on what [`compare`] made).
    pub(crate) fn bound(&mut self) {
        match self {
            Difference::Header { name, main, mirror } => {
                cut_in_place(name, MAX_HEADER_NAME_CHARS);
                main.iter_mut()
                    .chain(mirror.iter_mut())
                    .for_each(|v| cut_in_place(v, MAX_VALUE_CHARS));
            }
            Difference::JsonPointer {
                pointer,
                main,
                mirror,
            } => {
                cut_in_place(pointer, MAX_POINTER_CHARS);
                main.iter_mut()
                    .chain(mirror.iter_mut())
                    .for_each(|v| cut_in_place(v, MAX_VALUE_CHARS));
            }
            Difference::Status { .. }
            | Difference::ByteOffset { .. }
            | Difference::Digest { .. } => {}
        }
    }
}

/// Compares the mirror's answer with main's under `rules`.
pub fn compare(rules: &Rules, main: &Answer, mirror: &Answer) -> Verdict {
    let status = (main.status != mirror.status).then(|| Difference::Status {
        main: main.status.as_u16(),
        mirror: mirror.status.as_u16(),
    });
    let headers = header_difference(rules, &main.headers, &mirror.headers);
    let body = body_difference(rules, &main.body, &mirror.body);
    let flags = (status.is_some(), headers.is_some(), body.is_some());
    match status.or(headers).or(body) {
        None => Verdict::Match,
        Some(difference) => Verdict::Mismatch(Mismatch {
            status: flags.0,
            headers: flags.1,
            body: flags.2,
            difference,
        }),
    }
}

fn header_difference(rules: &Rules, main: &HeaderMap, mirror: &HeaderMap) -> Option<Difference> {
    rules.headers.iter().find_map(|name| {
        let (a, b) = (main.get_all(name), mirror.get_all(name));
        // HeaderValue equality is byte equality; repeated headers compare as a list.
        (!a.iter().eq(b.iter())).then(|| Difference::Header {
            name: cut(name.as_str(), MAX_HEADER_NAME_CHARS).to_owned(),
            main: header_text(a),
            mirror: header_text(b),
        })
    })
}

fn header_text(values: header::GetAll<'_, http::HeaderValue>) -> Option<String> {
    let mut text: Option<String> = None;
    for value in values {
        let t = text.get_or_insert_with(String::new);
        if !t.is_empty() {
            t.push_str(", ");
        }
        t.push_str(&String::from_utf8_lossy(value.as_bytes()));
        if t.chars().nth(MAX_VALUE_CHARS).is_some() {
            break;
        }
    }
    text.map(|t| cut(&t, MAX_VALUE_CHARS).to_owned())
}

fn body_difference(
    rules: &Rules,
    main: &CapturedBody,
    mirror: &CapturedBody,
) -> Option<Difference> {
    let (CapturedBody::Whole(a), CapturedBody::Whole(b)) = (main, mirror) else {
        let (main_len, mirror_len) = (main.len(), mirror.len());
        return (main_len != mirror_len || main.digest() != mirror.digest()).then_some(
            Difference::Digest {
                main_len,
                mirror_len,
            },
        );
    };
    // Identical bytes are equal whether JSON or not (and covers both empty).
    if a == b {
        return None;
    }
    if let (Ok(x), Ok(y)) = (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        // serde_json refuses nesting deeper than 128, so this recursion is bounded.
        let mut path = Vec::new();
        let alive: Vec<usize> = (0..rules.ignored.len()).collect();
        return json_difference(rules, &x, &y, &mut path, &alive).map(|found| {
            Difference::JsonPointer {
                pointer: pointer_text(&found.path),
                main: found.main.map(value_text),
                mirror: found.mirror.map(value_text),
            }
        });
    }
    let offset = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    Some(Difference::ByteOffset {
        offset: offset as u64,
    })
}

/// One step from a JSON value to a child.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

struct Found<'a> {
    path: Vec<Step<'a>>,
    main: Option<&'a Value>,
    mirror: Option<&'a Value>,
}

/// The first difference below `main`/`mirror` (at `path`), skipping ignored locations.
/// `alive` holds the ignore patterns whose first `path.len()` segments match `path`.
fn json_difference<'a>(
    rules: &Rules,
    main: &'a Value,
    mirror: &'a Value,
    path: &mut Vec<Step<'a>>,
    alive: &[usize],
) -> Option<Found<'a>> {
    match (main, mirror) {
        (Value::Object(a), Value::Object(b)) => {
            for key in sorted_keys(a, b) {
                let step = Step::Key(key);
                let Some(next) = rules.descend(alive, path.len(), step) else {
                    continue;
                };
                let found = child_difference(rules, a.get(key), b.get(key), path, step, &next);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let step = Step::Index(i);
                let Some(next) = rules.descend(alive, path.len(), step) else {
                    continue;
                };
                let found = child_difference(rules, a.get(i), b.get(i), path, step, &next);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ if scalars_equal(main, mirror) => None,
        _ => Some(Found {
            path: path.clone(),
            main: Some(main),
            mirror: Some(mirror),
        }),
    }
}

fn child_difference<'a>(
    rules: &Rules,
    main: Option<&'a Value>,
    mirror: Option<&'a Value>,
    path: &mut Vec<Step<'a>>,
    step: Step<'a>,
    alive: &[usize],
) -> Option<Found<'a>> {
    path.push(step);
    let found = match (main, mirror) {
        (Some(x), Some(y)) => json_difference(rules, x, y, path, alive),
        _ => Some(Found {
            path: path.clone(),
            main,
            mirror,
        }),
    };
    path.pop();
    found
}

/// The union of both objects' keys, in byte order.
fn sorted_keys<'a>(a: &'a Map<String, Value>, b: &'a Map<String, Value>) -> Vec<&'a str> {
    let mut keys: Vec<&str> = a
        .keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Equality of two values that are not both objects or both arrays.
fn scalars_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        _ => false,
    }
}

/// Integers exactly; as `f64` when either is a float (`1` equals `1.0` and `1e0`).
fn numbers_equal(a: &Number, b: &Number) -> bool {
    if a.is_f64() || b.is_f64() {
        return a.as_f64() == b.as_f64();
    }
    let int = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    int(a) == int(b)
}

/// A JSON pointer (RFC 6901 §3) for `path`, cut to [`MAX_POINTER_CHARS`].
fn pointer_text(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        text.push('/');
        match step {
            Step::Key(k) => {
                for c in k.chars() {
                    match c {
                        '~' => text.push_str("~0"),
                        '/' => text.push_str("~1"),
                        c => text.push(c),
                    }
                }
            }
            Step::Index(i) => text.push_str(&i.to_string()),
        }
        if text.len() > MAX_POINTER_CHARS * 4 {
            break;
        }
    }
    cut_in_place(&mut text, MAX_POINTER_CHARS);
    text
}

/// Compact JSON text of `value`, cut to [`MAX_VALUE_CHARS`]. Stops serialising once
/// enough is written, so a huge value costs no more than a small one.
fn value_text(value: &Value) -> String {
    let mut out = Bounded {
        buf: Vec::new(),
        // A char is at most 4 bytes in UTF-8.
        max: MAX_VALUE_CHARS * 4,
    };
    // An error only means the bound was reached; what was written so far is kept.
    let _ = serde_json::to_writer(&mut out, value);
    let text = match std::str::from_utf8(&out.buf) {
        Ok(s) => s,
        // Cut inside a character: keep the valid prefix.
        Err(e) => std::str::from_utf8(&out.buf[..e.valid_up_to()]).unwrap_or_default(),
    };
    cut(text, MAX_VALUE_CHARS).to_owned()
}

/// A writer that keeps at most `max` bytes and then fails.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
}

impl io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.max - self.buf.len();
        if room == 0 {
            return Err(io::Error::other("bound reached"));
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The first `max_chars` characters of `s` (all of it if shorter).
pub(crate) fn cut(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// Cuts `s` to `max_chars` characters, releasing the memory beyond them.
pub(crate) fn cut_in_place(s: &mut String, max_chars: usize) {
    if let Some((end, _)) = s.char_indices().nth(max_chars) {
        s.truncate(end);
        s.shrink_to_fit();
    }
}
