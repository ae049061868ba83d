//! The verdict on a mirror's answer against main's answer to the same request (shadow
//! testing): a match, or the first difference and every differing field, as pure
//! functions over plain values.
//!
//! This module owns the comparison rules ([`Rules`]: which headers, which JSON locations
//! to ignore), the incremental capture of a body for comparison ([`Capture`]), and the
//! verdict ([`compare`]). It does not read bodies from the network, keep statistics or
//! remember mismatches: the caller feeds [`Capture`] as the bytes stream past and hands
//! the results to [`compare`], then records the [`Verdict`] elsewhere
//! ([`super::stats`], [`super::mismatches`]).
//!
//! What is compared, in this order (the first difference found is the one reported):
//! 1. the status code;
//! 2. each header of [`Rules::headers`], in the order given, as the ordered list of its
//!    values, byte for byte;
//! 3. the body: structurally when both bodies parse as JSON, otherwise byte for byte; when
//!    either body passed the capture limit, by length and xxh3-128 digest only. Bodies
//!    are compared as given: undoing a `Content-Encoding` first is the caller's
//!    ([`super::capture::for_compare`]).
//!
//! gRPC answers (both `Content-Type: application/grpc…`, see [`super::grpc`]) are
//! compared as gRPC: after the status code, `grpc-status` (from the trailers, or the
//! headers of a Trailers-Only answer; absent is a value of its own), then, when both
//! failed with the same status, `grpc-message` (percent-decoded; absent is empty) —
//! both count as the status —; the compared headers as above; then the messages one by
//! one: as JSON under the same rules when the method's output type is known
//! ([`compare`]) and both decode, otherwise byte for byte. Compressed messages are
//! compared plain: making them so is the caller's, as for a `Content-Encoding`.
//!
//! JSON equality: object key order, whitespace and number spelling do not matter
//! (`1`, `1.0` and `1e0` are equal). Two integers (numbers written without `.`, `e` or
//! `E`) are compared exactly as written, at any size; as soon as either side is written
//! as a float both are compared as `f64`, equal within a few units in the last place
//! (see [`FLOAT_ULPS`]). Duplicate object keys keep the last value (as
//! `serde_json` does). The first difference is searched depth first, object keys in byte
//! order, array elements by index, so it is the same on every run.
//!
//! Besides the first difference, a mismatch names every differing field
//! ([`Mismatch::fields`], the first [`MAX_FIELDS`] of them; [`Mismatch::field_count`]
//! counts all): `status`, `header:NAME` (lower case), a JSON pointer with array indices
//! written `*` (`/items/*/price`: every element is the same field), `body` for bodies
//! compared byte for byte or by digest; for gRPC `grpc-status`, `grpc-message` and the
//! pointers within the messages (messages compared as JSON; otherwise `body`). Nothing
//! is allocated for them when the answers match.

use std::fmt;
use std::io;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, header};
use prost_reflect::MessageDescriptor;
use serde_json::{Map, Number, Value};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

use super::grpc;

/// Longest JSON value or header value kept in a [`Difference`], in characters.
pub const MAX_VALUE_CHARS: usize = 200;

/// Longest JSON pointer kept in a [`Difference`], in characters. A pointer cut here may
/// end inside an escape; it is for reading, not for resolving.
pub const MAX_POINTER_CHARS: usize = 1000;

/// Longest header name kept in a [`Difference`], in characters.
pub const MAX_HEADER_NAME_CHARS: usize = 200;

/// Most differing fields a [`Mismatch`] names (all are counted).
pub const MAX_FIELDS: usize = 20;

/// Longest field name kept, in characters (a longer one is cut, and fields cut alike
/// count as one).
pub const MAX_FIELD_CHARS: usize = 200;

/// The field of a differing status code.
pub const STATUS_FIELD: &str = "status";
/// The field of a body compared byte for byte or by digest.
pub const BODY_FIELD: &str = "body";
/// The field of a differing `grpc-status`.
pub const GRPC_STATUS_FIELD: &str = "grpc-status";
/// The field of a differing `grpc-message`.
pub const GRPC_MESSAGE_FIELD: &str = "grpc-message";

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
    #[cfg(test)]
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
///
/// A first chunk given as [`Bytes`] ([`Capture::push_bytes`]) is kept as it is, without
/// a copy: most answers arrive in one chunk, and copying each into an allocation of its
/// own cost more than comparing them. Such a chunk is a slice of the buffer the answer
/// was read into, the buffer the answer's header values (kept for the comparison too)
/// are slices of as well; a second chunk copies it into a vector as any later one.
pub struct Capture {
    limit: usize,
    state: CaptureState,
}

enum CaptureState {
    Keeping(Vec<u8>),
    /// The first chunk, as it came.
    Shared(Bytes),
    // Boxed: the hasher carries a few hundred bytes of buffer.
    Hashing {
        len: u64,
        hasher: Box<Xxh3Default>,
    },
}

impl Capture {
    /// A capture that keeps up to `limit` bytes (`--max-compare-size`).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: CaptureState::Keeping(Vec::new()),
        }
    }

    /// Adds the next chunk of the body, kept without a copy when it is the first.
    pub fn push_bytes(&mut self, chunk: &Bytes) {
        match &self.state {
            CaptureState::Keeping(kept) if kept.capacity() == 0 && chunk.len() <= self.limit => {
                self.state = CaptureState::Shared(chunk.clone());
            }
            _ => self.push(chunk),
        }
    }

    /// Adds the next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if let CaptureState::Shared(first) = &self.state {
            // A second chunk: from now on the bytes are copied, the first one too.
            let first = first.clone();
            self.state = CaptureState::Keeping(Vec::new());
            self.push(&first);
        }
        match &mut self.state {
            // Made a vector above.
            CaptureState::Shared(_) => {}
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
            CaptureState::Shared(first) => first.len(),
            CaptureState::Hashing { .. } => 0,
        }
    }

    /// The body seen: whole if it fit in the limit, else its length and digest.
    pub fn finish(self) -> CapturedBody {
        match self.state {
            CaptureState::Keeping(kept) => CapturedBody::Whole(Bytes::from(kept)),
            CaptureState::Shared(first) => CapturedBody::Whole(first),
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
            CaptureState::Shared(first) => d.field("kept", &first.len()),
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
    /// The trailers that ended the body (empty when none): where a gRPC answer puts
    /// its status.
    pub trailers: HeaderMap,
}

/// The result of one comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    Mismatch(Mismatch),
}

/// Which parts differ, the first difference and the differing fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub status: bool,
    pub headers: bool,
    pub body: bool,
    /// The first difference, in the order status, headers, body.
    pub difference: Difference,
    /// The first [`MAX_FIELDS`] distinct differing fields, in the order found (status,
    /// headers, body; each cut to [`MAX_FIELD_CHARS`]).
    pub fields: Vec<String>,
    /// How many distinct fields differ (may exceed `fields.len()`).
    pub field_count: u64,
}

/// The distinct differing fields of one comparison, collected as found.
#[derive(Debug, Default)]
struct Fields {
    /// The first [`MAX_FIELDS`], in the order found.
    named: Vec<String>,
    /// Every distinct field; empty (no allocation) while the answers agree.
    seen: std::collections::HashSet<String>,
}

impl Fields {
    fn add(&mut self, field: &str) {
        let field = cut(field, MAX_FIELD_CHARS);
        if self.seen.contains(field) {
            return;
        }
        if self.named.len() < MAX_FIELDS {
            self.named.push(field.to_owned());
        }
        self.seen.insert(field.to_owned());
    }
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
    /// gRPC answers with different `grpc-status` values (as sent, cut to
    /// [`MAX_VALUE_CHARS`]); `None` (JSON `null`) when that side sends none.
    GrpcStatus {
        main: Option<String>,
        mirror: Option<String>,
    },
    /// gRPC answers that both failed with the same status, with different
    /// `grpc-message` texts (percent-decoded, non-UTF-8 bytes replaced, cut to
    /// [`MAX_VALUE_CHARS`]; `""` when absent).
    GrpcMessage {
        main: String,
        mirror: String,
    },
    /// gRPC messages compared as JSON (`--grpc-descriptors`): message `index` (from 0)
    /// differs at `pointer` within it, as [`Difference::JsonPointer`] reads.
    MessageJsonPointer {
        index: u64,
        pointer: String,
        main: Option<String>,
        mirror: Option<String>,
    },
    /// gRPC messages compared byte for byte: message `index` (from 0) differs at
    /// `offset` within it (the shorter length when one is a prefix of the other).
    MessageByteOffset {
        index: u64,
        offset: u64,
    },
    /// gRPC answers with different numbers of messages, all those both sent equal.
    MessageCount {
        main: u64,
        mirror: u64,
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
            }
            | Difference::MessageJsonPointer {
                pointer,
                main,
                mirror,
                ..
            } => {
                cut_in_place(pointer, MAX_POINTER_CHARS);
                main.iter_mut()
                    .chain(mirror.iter_mut())
                    .for_each(|v| cut_in_place(v, MAX_VALUE_CHARS));
            }
            Difference::GrpcStatus { main, mirror } => {
                main.iter_mut()
                    .chain(mirror.iter_mut())
                    .for_each(|v| cut_in_place(v, MAX_VALUE_CHARS));
            }
            Difference::GrpcMessage { main, mirror } => {
                cut_in_place(main, MAX_VALUE_CHARS);
                cut_in_place(mirror, MAX_VALUE_CHARS);
            }
            Difference::Status { .. }
            | Difference::ByteOffset { .. }
            | Difference::Digest { .. }
            | Difference::MessageByteOffset { .. }
            | Difference::MessageCount { .. } => {}
        }
    }
}

/// Whether `answer` is an error: a 5xx status, or a gRPC answer (`grpc`: its
/// `Content-Type` says so) whose `grpc-status` is not `0` (or absent).
pub fn is_error(answer: &Answer, grpc: bool) -> bool {
    if answer.status.is_server_error() {
        return true;
    }
    grpc && grpc::status_field(&answer.headers, &answer.trailers, "grpc-status")
        .is_none_or(|v| v.as_bytes() != b"0")
}

/// Compares the mirror's answer with main's under `rules`. For gRPC answers, messages
/// of the type `grpc_output` (the called method's output, when `--grpc-descriptors`
/// describes it) are compared as JSON, other messages byte for byte.
pub fn compare(
    rules: &Rules,
    grpc_output: Option<&MessageDescriptor>,
    main: &Answer,
    mirror: &Answer,
) -> Verdict {
    let grpc = grpc::is_grpc(&main.headers) && grpc::is_grpc(&mirror.headers);
    compare_of(rules, grpc_output, main, mirror, grpc)
}

/// [`compare`], with whether both answers are gRPC already looked up (a header lookup
/// per answer saved on every comparison).
pub fn compare_of(
    rules: &Rules,
    grpc_output: Option<&MessageDescriptor>,
    main: &Answer,
    mirror: &Answer,
    grpc: bool,
) -> Verdict {
    let mut fields = Fields::default();
    let status = if main.status != mirror.status {
        fields.add(STATUS_FIELD);
        Some(Difference::Status {
            main: main.status.as_u16(),
            mirror: mirror.status.as_u16(),
        })
    } else if grpc {
        grpc_status_difference(main, mirror, &mut fields)
    } else {
        None
    };
    let headers = header_difference(rules, &main.headers, &mirror.headers, &mut fields);
    let body = if grpc {
        grpc_body_difference(rules, grpc_output, &main.body, &mirror.body, &mut fields)
    } else {
        body_difference(rules, &main.body, &mirror.body, &mut fields)
    };
    let flags = (status.is_some(), headers.is_some(), body.is_some());
    match status.or(headers).or(body) {
        None => Verdict::Match,
        Some(difference) => Verdict::Mismatch(Mismatch {
            status: flags.0,
            headers: flags.1,
            body: flags.2,
            difference,
            field_count: fields.seen.len() as u64,
            fields: fields.named,
        }),
    }
}

/// The first differing compared header; every one is added to `fields`.
fn header_difference(
    rules: &Rules,
    main: &HeaderMap,
    mirror: &HeaderMap,
    fields: &mut Fields,
) -> Option<Difference> {
    let mut first = None;
    for name in &rules.headers {
        let (a, b) = (main.get_all(name), mirror.get_all(name));
        // HeaderValue equality is byte equality; repeated headers compare as a list.
        if a.iter().eq(b.iter()) {
            continue;
        }
        fields.add(&format!(
            "header:{}",
            cut(name.as_str(), MAX_HEADER_NAME_CHARS)
        ));
        if first.is_none() {
            first = Some(Difference::Header {
                name: cut(name.as_str(), MAX_HEADER_NAME_CHARS).to_owned(),
                main: header_text(a),
                mirror: header_text(b),
            });
        }
    }
    first
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
    fields: &mut Fields,
) -> Option<Difference> {
    let (a, b) = match whole_bodies(main, mirror) {
        Ok(Some(pair)) => pair,
        Ok(None) => return None,
        Err(difference) => {
            fields.add(BODY_FIELD);
            return Some(difference);
        }
    };
    if let (Ok(x), Ok(y)) = (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        json_fields(rules, &x, &y, fields);
        return value_difference(rules, &x, &y).map(|(pointer, main, mirror)| {
            Difference::JsonPointer {
                pointer,
                main,
                mirror,
            }
        });
    }
    fields.add(BODY_FIELD);
    Some(Difference::ByteOffset {
        offset: first_difference(a, b),
    })
}

/// Two whole bodies that differ, or the verdict without looking inside: `Ok(None)`
/// when the bytes are the same (JSON or not, both empty included), the digest
/// difference when either passed the capture limit.
fn whole_bodies<'a>(
    main: &'a CapturedBody,
    mirror: &'a CapturedBody,
) -> Result<Option<(&'a Bytes, &'a Bytes)>, Difference> {
    let (CapturedBody::Whole(a), CapturedBody::Whole(b)) = (main, mirror) else {
        let (main_len, mirror_len) = (main.len(), mirror.len());
        if main_len != mirror_len || main.digest() != mirror.digest() {
            return Err(Difference::Digest {
                main_len,
                mirror_len,
            });
        }
        return Ok(None);
    };
    Ok((a != b).then_some((a, b)))
}

/// The first differing byte, or the shorter length when one is a prefix of the other.
fn first_difference(a: &[u8], b: &[u8]) -> u64 {
    let offset = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    offset as u64
}

/// The first difference between two JSON documents outside the ignored locations: its
/// pointer and both values, as [`Difference::JsonPointer`] holds them.
fn value_difference(
    rules: &Rules,
    x: &Value,
    y: &Value,
) -> Option<(String, Option<String>, Option<String>)> {
    // serde_json refuses nesting deeper than 128 (and protobuf decoding 100), so this
    // recursion is bounded.
    let mut path = Vec::new();
    let alive: Vec<usize> = (0..rules.ignored.len()).collect();
    json_difference(rules, x, y, &mut path, &alive).map(|found| {
        (
            pointer_text(&found.path),
            found.main.map(value_text),
            found.mirror.map(value_text),
        )
    })
}

/// `grpc-status`, then `grpc-message` when both failed alike.
fn grpc_status_difference(
    main: &Answer,
    mirror: &Answer,
    fields: &mut Fields,
) -> Option<Difference> {
    let field = |answer: &'_ Answer, name| {
        grpc::status_field(&answer.headers, &answer.trailers, name).cloned()
    };
    let (a, b) = (field(main, "grpc-status"), field(mirror, "grpc-status"));
    if a != b {
        let text = |v: Option<http::HeaderValue>| {
            v.map(|v| cut(&String::from_utf8_lossy(v.as_bytes()), MAX_VALUE_CHARS).to_owned())
        };
        fields.add(GRPC_STATUS_FIELD);
        return Some(Difference::GrpcStatus {
            main: text(a),
            mirror: text(b),
        });
    }
    // Both succeeded (`0`): any message is not an error's and is not compared.
    if a.as_ref().is_some_and(|v| v.as_bytes() == b"0") {
        return None;
    }
    let (a, b) = (
        grpc::status_message(field(main, "grpc-message").as_ref()),
        grpc::status_message(field(mirror, "grpc-message").as_ref()),
    );
    let text = |v: &[u8]| cut(&String::from_utf8_lossy(v), MAX_VALUE_CHARS).to_owned();
    (a != b).then(|| {
        fields.add(GRPC_MESSAGE_FIELD);
        Difference::GrpcMessage {
            main: text(&a),
            mirror: text(&b),
        }
    })
}

/// The first difference between the messages of two gRPC bodies; every differing
/// field of every message is added to `fields`. Bodies that are not well-formed
/// messages are compared byte for byte as a whole.
fn grpc_body_difference(
    rules: &Rules,
    output: Option<&MessageDescriptor>,
    main: &CapturedBody,
    mirror: &CapturedBody,
    fields: &mut Fields,
) -> Option<Difference> {
    let (a, b) = match whole_bodies(main, mirror) {
        Ok(Some(pair)) => pair,
        Ok(None) => return None,
        Err(difference) => {
            fields.add(BODY_FIELD);
            return Some(difference);
        }
    };
    let (Some(x), Some(y)) = (grpc::frames(a), grpc::frames(b)) else {
        fields.add(BODY_FIELD);
        return Some(Difference::ByteOffset {
            offset: first_difference(a, b),
        });
    };
    let mut first = None;
    for (index, (x, y)) in x.iter().zip(y.iter()).enumerate() {
        let index = index as u64;
        if x == y {
            continue;
        }
        // A message still compressed (an encoding that is not decoded) is compared
        // as sent.
        if let (Some(output), false, false) = (output, x.compressed, y.compressed) {
            if let (Some(x), Some(y)) = (
                grpc::to_json(output, x.message),
                grpc::to_json(output, y.message),
            ) {
                json_fields(rules, &x, &y, fields);
                if first.is_none() {
                    first = value_difference(rules, &x, &y).map(|(pointer, main, mirror)| {
                        Difference::MessageJsonPointer {
                            index,
                            pointer,
                            main,
                            mirror,
                        }
                    });
                }
                continue;
            }
        }
        fields.add(BODY_FIELD);
        if first.is_none() {
            first = Some(Difference::MessageByteOffset {
                index,
                offset: first_difference(x.message, y.message),
            });
        }
    }
    if first.is_none() && x.len() != y.len() {
        first = Some(Difference::MessageCount {
            main: x.len() as u64,
            mirror: y.len() as u64,
        });
    }
    if x.len() != y.len() {
        fields.add(BODY_FIELD);
    }
    first
}

/// Adds every differing field between two JSON documents, outside the ignored
/// locations, to `fields`.
fn json_fields(rules: &Rules, x: &Value, y: &Value, fields: &mut Fields) {
    // Bounded recursion, as in `value_difference`.
    let alive: Vec<usize> = (0..rules.ignored.len()).collect();
    let mut path = Vec::new();
    let mut pointer = String::new();
    collect_fields(rules, x, y, &mut path, &mut pointer, &alive, fields);
}

/// Walks `main`/`mirror` at `path` (`pointer` is its text with indices written `*`).
fn collect_fields<'a>(
    rules: &Rules,
    main: &'a Value,
    mirror: &'a Value,
    path: &mut Vec<Step<'a>>,
    pointer: &mut String,
    alive: &[usize],
    fields: &mut Fields,
) {
    let mut child = |main: Option<&'a Value>,
                     mirror: Option<&'a Value>,
                     step: Step<'a>,
                     path: &mut Vec<Step<'a>>,
                     pointer: &mut String| {
        let Some(next) = rules.descend(alive, path.len(), step) else {
            return;
        };
        let len = pointer.len();
        pointer.push('/');
        match step {
            Step::Key(k) => push_escaped(pointer, k),
            Step::Index(_) => pointer.push('*'),
        }
        path.push(step);
        match (main, mirror) {
            (Some(x), Some(y)) => collect_fields(rules, x, y, path, pointer, &next, fields),
            _ => fields.add(pointer),
        }
        path.pop();
        pointer.truncate(len);
    };
    match (main, mirror) {
        (Value::Object(a), Value::Object(b)) => {
            for key in sorted_keys(a, b) {
                child(a.get(key), b.get(key), Step::Key(key), path, pointer);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                child(a.get(i), b.get(i), Step::Index(i), path, pointer);
            }
        }
        _ if scalars_equal(main, mirror) => {}
        _ => fields.add(pointer),
    }
}

/// `key` escaped for a JSON pointer (RFC 6901 §3).
fn push_escaped(text: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => text.push_str("~0"),
            '/' => text.push_str("~1"),
            c => text.push(c),
        }
    }
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

/// Integers exactly as written, at any size (serde_json's `arbitrary_precision` keeps
/// each number's text); as `f64` when either is a float (`1` equals `1.0` and `1e0`),
/// within [`FLOAT_ULPS`]. A number beyond the range of `f64` (`1e400`) equals only the
/// same text.
fn numbers_equal(a: &Number, b: &Number) -> bool {
    let (x, y) = (a.as_str(), b.as_str());
    if x == y {
        return true;
    }
    if let (Some(i), Some(j)) = (integer(x), integer(y)) {
        return i == j;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => floats_close(x, y),
        _ => false,
    }
}

/// An integer as JSON writes it (`-`, then digits without a leading zero): whether it is
/// negative, and its digits; `-0` is `0`. `None` for a float.
fn integer(text: &str) -> Option<(bool, &str)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    let is_integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    is_integer.then_some((negative && digits != "0", digits))
}

/// Floats this many representable values apart or closer are equal: a relative
/// difference of about 1e-15 (what a float printed with one digit less, or rounded
/// differently by another JSON library, shows) is no finding for shadow testing.
pub const FLOAT_ULPS: u64 = 4;

fn floats_close(x: f64, y: f64) -> bool {
    if x == y {
        return true; // also 0.0 and -0.0
    }
    if x.is_sign_negative() != y.is_sign_negative() {
        return false;
    }
    // For finite floats of one sign the bit patterns are ordered like the values.
    x.to_bits().abs_diff(y.to_bits()) <= FLOAT_ULPS
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
    // No more bytes than the bound: no more characters either.
    if s.len() <= max_chars {
        return s;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`super::compare`] of answers that are not gRPC, or without descriptors.
    fn compare(rules: &Rules, main: &Answer, mirror: &Answer) -> Verdict {
        super::compare(rules, None, main, mirror)
    }

    fn rules(headers: &[&str], ignore: &[&str]) -> Rules {
        let headers: Vec<HeaderName> = headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap())
            .collect();
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        Rules::new(&headers, &ignore).unwrap()
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: CapturedBody::Whole(Bytes::copy_from_slice(body)),
            trailers: HeaderMap::new(),
        }
    }

    fn json(body: &str) -> Answer {
        answer(
            200,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    }

    fn mismatch(verdict: Verdict) -> Mismatch {
        match verdict {
            Verdict::Mismatch(m) => m,
            Verdict::Match => panic!("expected a mismatch"),
        }
    }

    fn body_only(difference: Difference) -> Verdict {
        let field = only_field(&difference);
        Verdict::Mismatch(Mismatch {
            status: false,
            headers: false,
            body: true,
            difference,
            fields: vec![field],
            field_count: 1,
        })
    }

    /// `verdict` with every differing field listed as `fields`.
    fn with_fields(verdict: Verdict, fields: &[&str]) -> Verdict {
        let mut m = mismatch(verdict);
        m.fields = fields.iter().map(|f| f.to_string()).collect();
        m.field_count = fields.len() as u64;
        Verdict::Mismatch(m)
    }

    /// The one field of a mismatch whose only difference is `difference` (the test
    /// documents have no object keys made of digits).
    fn only_field(difference: &Difference) -> String {
        let star = |pointer: &str| {
            pointer
                .split('/')
                .map(|s| {
                    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                        "*"
                    } else {
                        s
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        };
        match difference {
            Difference::Status { .. } => STATUS_FIELD.to_owned(),
            Difference::Header { name, .. } => format!("header:{name}"),
            Difference::JsonPointer { pointer, .. }
            | Difference::MessageJsonPointer { pointer, .. } => star(pointer),
            Difference::GrpcStatus { .. } => GRPC_STATUS_FIELD.to_owned(),
            Difference::GrpcMessage { .. } => GRPC_MESSAGE_FIELD.to_owned(),
            Difference::ByteOffset { .. }
            | Difference::Digest { .. }
            | Difference::MessageByteOffset { .. }
            | Difference::MessageCount { .. } => BODY_FIELD.to_owned(),
        }
    }

    fn at(pointer: &str, main: Option<&str>, mirror: Option<&str>) -> Difference {
        Difference::JsonPointer {
            pointer: pointer.to_owned(),
            main: main.map(str::to_owned),
            mirror: mirror.map(str::to_owned),
        }
    }

    fn digest_of(body: &[u8], limit: usize) -> CapturedBody {
        let mut capture = Capture::new(limit);
        capture.push(body);
        capture.finish()
    }

    #[test]
    fn same_json_in_another_key_order_and_spacing_matches() {
        let main = json(r#"{"a":{"b":1,"c":[1,2,{"x":"y"}]},"d":null,"e":true}"#);
        let mirror = json(
            "{ \"e\" : true,\n \"d\": null, \"a\": {\"c\": [ 1, 2, {\"x\": \"y\"} ],\t\"b\": 1} }",
        );
        assert_eq!(compare(&Rules::default(), &main, &mirror), Verdict::Match);
    }

    #[test]
    fn number_spellings_are_equal_and_integers_exact() {
        let r = Rules::default();
        for spelling in ["1", "1.0", "1e0", "10e-1", "0.1e1"] {
            let mirror = json(&format!(r#"{{"n":{spelling}}}"#));
            assert_eq!(
                compare(&r, &json(r#"{"n":1}"#), &mirror),
                Verdict::Match,
                "{spelling}"
            );
        }
        // Two integers are compared exactly, even where f64 would round them together.
        let v = compare(
            &r,
            &json(r#"{"n":9007199254740993}"#),
            &json(r#"{"n":9007199254740992}"#),
        );
        assert_eq!(
            v,
            body_only(at("/n", Some("9007199254740993"), Some("9007199254740992")))
        );
        assert_eq!(
            compare(&r, &json("18446744073709551615"), &json("-1")),
            body_only(at("", Some("18446744073709551615"), Some("-1")))
        );
        assert_eq!(compare(&r, &json("-0"), &json("0.0")), Verdict::Match);
        assert_eq!(compare(&r, &json("[-0]"), &json("[0]")), Verdict::Match);
        // Beyond 64 bits, where f64 (and u64) would round them together.
        assert_eq!(
            compare(
                &r,
                &json(r#"{"n":18446744073709551616}"#),
                &json(r#"{"n":18446744073709555000}"#)
            ),
            body_only(at(
                "/n",
                Some("18446744073709551616"),
                Some("18446744073709555000")
            ))
        );
        let huge = "9".repeat(400);
        assert_eq!(
            compare(
                &r,
                &json(&format!("[{huge},1]")),
                &json(&format!("[{huge}, 1]"))
            ),
            Verdict::Match
        );
        assert_eq!(
            compare(&r, &json(&format!("-{huge}")), &json(&huge)),
            body_only(at("", Some(&format!("-{huge}")[..200]), Some(&huge[..200])))
        );
        // Written as a float on either side: compared as f64, spelling apart.
        assert_eq!(
            compare(
                &r,
                &json("18446744073709551616"),
                &json("1.8446744073709551616e19")
            ),
            Verdict::Match
        );
        // Beyond f64: only the same text is equal.
        assert_eq!(
            compare(&r, &json("[1e400,1]"), &json("[1e400,2]")),
            body_only(at("/1", Some("1"), Some("2")))
        );
        assert!(mismatch(compare(&r, &json("1e400"), &json("2e400"))).body);
        // Floats: a long number spelled two ways (which serde_json may round one unit
        // apart) is equal; a difference in the 15th digit is not.
        assert_eq!(
            compare(
                &r,
                &json("183124099570949616"),
                &json("183124099570949616.0")
            ),
            Verdict::Match
        );
        assert_eq!(
            compare(&r, &json("1.0"), &json("1.00000000000001")),
            body_only(at("", Some("1.0"), Some("1.00000000000001")))
        );
        assert_eq!(
            compare(&r, &json("-1.5"), &json("1.5")),
            body_only(at("", Some("-1.5"), Some("1.5")))
        );
    }

    #[test]
    fn different_value_at_a_b_names_the_pointer_and_both_values() {
        let main = json(r#"{"a":{"b":"old","c":1},"z":1}"#);
        let mirror = json(r#"{"z":2,"a":{"c":1,"b":{"new":[1]}}}"#);
        // Depth first, keys in order: /a/b comes before /z.
        assert_eq!(
            compare(&Rules::default(), &main, &mirror),
            with_fields(
                body_only(at("/a/b", Some(r#""old""#), Some(r#"{"new":[1]}"#))),
                &["/a/b", "/z"]
            )
        );
    }

    #[test]
    fn a_key_on_one_side_only_reads_none_on_the_other() {
        let r = Rules::default();
        assert_eq!(
            compare(&r, &json(r#"{"a":1}"#), &json(r#"{"a":1,"b":null}"#)),
            body_only(at("/b", None, Some("null")))
        );
        assert_eq!(
            compare(&r, &json("[1,2,3]"), &json("[1,2]")),
            body_only(at("/2", Some("3"), None))
        );
        assert_eq!(
            compare(&r, &json("[1]"), &json(r#"{"0":1}"#)),
            body_only(at("", Some("[1]"), Some(r#"{"0":1}"#)))
        );
    }

    #[test]
    fn pointer_escapes_tilde_and_slash() {
        let v = compare(
            &Rules::default(),
            &json(r#"{"a/b":{"c~d":1}}"#),
            &json(r#"{"a/b":{"c~d":2}}"#),
        );
        assert_eq!(v, body_only(at("/a~1b/c~0d", Some("1"), Some("2"))));
        let r = rules(&[], &["/a~1b/c~0d"]);
        assert_eq!(
            compare(
                &r,
                &json(r#"{"a/b":{"c~d":1}}"#),
                &json(r#"{"a/b":{"c~d":2}}"#)
            ),
            Verdict::Match
        );
    }

    #[test]
    fn ignored_pointers_are_not_compared() {
        let r = rules(&[], &["/meta/ts", "/items/*/id"]);
        let main = json(r#"{"meta":{"ts":1,"v":1},"items":[{"id":1,"n":"a"},{"id":2,"n":"b"}]}"#);
        let mirror = json(r#"{"meta":{"ts":9,"v":1},"items":[{"id":7,"n":"a"},{"n":"b"}]}"#);
        assert_eq!(compare(&r, &main, &mirror), Verdict::Match);
        // Without the ignores the same bodies differ, first at /items/0/id.
        assert_eq!(
            compare(&Rules::default(), &main, &mirror),
            with_fields(
                body_only(at("/items/0/id", Some("1"), Some("7"))),
                &["/items/*/id", "/meta/ts"]
            )
        );
        // What is not ignored is still compared.
        let mirror = json(r#"{"meta":{"ts":9,"v":2},"items":[{"id":7,"n":"a"},{"n":"b"}]}"#);
        assert_eq!(
            compare(&r, &main, &mirror),
            body_only(at("/meta/v", Some("1"), Some("2")))
        );
        let mirror = json(r#"{"meta":{"ts":9,"v":1},"items":[{"id":7,"n":"a"},{"n":"c"}]}"#);
        assert_eq!(
            compare(&r, &main, &mirror),
            body_only(at("/items/1/n", Some(r#""b""#), Some(r#""c""#)))
        );
    }

    #[test]
    fn wildcard_matches_object_keys_and_literal_indices_match_arrays() {
        let r = rules(&[], &["/*/id"]);
        assert_eq!(
            compare(
                &r,
                &json(r#"{"x":{"id":1},"y":{"id":2}}"#),
                &json(r#"{"x":{"id":3},"y":{}}"#)
            ),
            Verdict::Match
        );
        let r = rules(&[], &["/1"]);
        assert_eq!(
            compare(&r, &json("[0,1,2]"), &json("[0,5,2]")),
            Verdict::Match
        );
        // RFC 6901: no leading zeros in an index, so /01 names no element.
        let r = rules(&[], &["/01"]);
        assert_eq!(
            compare(&r, &json("[0,1]"), &json("[0,5]")),
            body_only(at("/1", Some("1"), Some("5")))
        );
        // An ignored subtree: everything below /meta.
        let r = rules(&[], &["/meta"]);
        assert_eq!(
            compare(
                &r,
                &json(r#"{"meta":{"a":[1]},"v":1}"#),
                &json(r#"{"meta":3,"v":1}"#)
            ),
            Verdict::Match
        );
    }

    #[test]
    fn different_status_is_a_status_mismatch_reported_first() {
        let main = answer(200, &[("content-type", "text/plain")], b"ok");
        let mirror = answer(500, &[("content-type", "text/html")], b"oops");
        assert_eq!(
            compare(&Rules::default(), &main, &mirror),
            Verdict::Mismatch(Mismatch {
                status: true,
                headers: true,
                body: true,
                difference: Difference::Status {
                    main: 200,
                    mirror: 500
                },
                fields: vec!["status".into(), "header:content-type".into(), "body".into()],
                field_count: 3,
            })
        );
        let mirror = answer(404, &[("content-type", "text/plain")], b"ok");
        let m = mismatch(compare(&Rules::default(), &main, &mirror));
        assert_eq!((m.status, m.headers, m.body), (true, false, false));
    }

    #[test]
    fn compare_header_difference_is_a_headers_mismatch() {
        let r = rules(&["X-Version"], &[]);
        let main = answer(200, &[("x-version", "1"), ("content-type", "a")], b"");
        let mirror = answer(200, &[("x-version", "2"), ("content-type", "b")], b"");
        assert_eq!(
            compare(&r, &main, &mirror),
            Verdict::Mismatch(Mismatch {
                status: false,
                headers: true,
                body: false,
                difference: Difference::Header {
                    name: "x-version".into(),
                    main: Some("1".into()),
                    mirror: Some("2".into()),
                },
                fields: vec!["header:x-version".into()],
                field_count: 1,
            })
        );
        // Naming headers replaces the default: Content-Type is then not compared.
        let mirror = answer(200, &[("x-version", "1"), ("content-type", "b")], b"");
        assert_eq!(compare(&r, &main, &mirror), Verdict::Match);
        // A header sent by one side only.
        let mirror = answer(200, &[("content-type", "a")], b"");
        let m = mismatch(compare(&r, &main, &mirror));
        assert_eq!(
            m.difference,
            Difference::Header {
                name: "x-version".into(),
                main: Some("1".into()),
                mirror: None
            }
        );
    }

    #[test]
    fn content_type_is_compared_by_default_unless_ignored() {
        let main = answer(200, &[("content-type", "application/json")], b"{}");
        let mirror = answer(200, &[("content-type", "text/plain")], b"{}");
        let m = mismatch(compare(&Rules::default(), &main, &mirror));
        assert_eq!(
            m.difference,
            Difference::Header {
                name: "content-type".into(),
                main: Some("application/json".into()),
                mirror: Some("text/plain".into()),
            }
        );
        for ignore in ["Content-Type", "content-type", "CONTENT-TYPE"] {
            assert_eq!(
                compare(&rules(&[], &[ignore]), &main, &mirror),
                Verdict::Match,
                "{ignore}"
            );
        }
        assert!(rules(&[], &["Content-Type"]).headers().is_empty());
    }

    #[test]
    fn repeated_headers_compare_as_an_ordered_list() {
        let r = rules(&["Vary"], &[]);
        let main = answer(200, &[("vary", "a"), ("vary", "b")], b"");
        let same = answer(200, &[("vary", "a"), ("vary", "b")], b"");
        let swapped = answer(200, &[("vary", "b"), ("vary", "a")], b"");
        let fewer = answer(200, &[("vary", "a")], b"");
        assert_eq!(compare(&r, &main, &same), Verdict::Match);
        let m = mismatch(compare(&r, &main, &swapped));
        assert_eq!(
            m.difference,
            Difference::Header {
                name: "vary".into(),
                main: Some("a, b".into()),
                mirror: Some("b, a".into())
            }
        );
        assert!(mismatch(compare(&r, &main, &fewer)).headers);
    }

    #[test]
    fn non_json_bodies_compare_byte_for_byte() {
        let r = Rules::default();
        let text = |b: &[u8]| answer(200, &[], b);
        assert_eq!(
            compare(&r, &text(b"hello"), &text(b"hello")),
            Verdict::Match
        );
        assert_eq!(
            compare(&r, &text(b"hello world"), &text(b"hello World")),
            body_only(Difference::ByteOffset { offset: 6 })
        );
        // One is a prefix of the other: the shorter length.
        assert_eq!(
            compare(&r, &text(b"hello"), &text(b"hello world")),
            body_only(Difference::ByteOffset { offset: 5 })
        );
        // JSON on one side only: bytes, and whitespace counts.
        assert_eq!(
            compare(&r, &text(b"{\"a\":1}"), &text(b"{\"a\": 1")),
            body_only(Difference::ByteOffset { offset: 5 })
        );
        assert_eq!(
            compare(&r, &text(b"\xff\xfe"), &text(b"\xff\xff")),
            body_only(Difference::ByteOffset { offset: 1 })
        );
    }

    #[test]
    fn empty_bodies_are_equal() {
        let r = Rules::default();
        assert_eq!(
            compare(&r, &answer(304, &[], b""), &answer(304, &[], b"")),
            Verdict::Match
        );
        assert_eq!(
            compare(&r, &answer(200, &[], b""), &answer(200, &[], b"{}")),
            body_only(Difference::ByteOffset { offset: 0 })
        );
    }

    #[test]
    fn bodies_over_the_limit_compare_by_digest() {
        let r = Rules::default();
        let big = vec![b'x'; 100];
        let with = |body: CapturedBody| Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            trailers: HeaderMap::new(),
        };
        let over = digest_of(&big, 10);
        assert!(matches!(over, CapturedBody::Digest { len: 100, .. }));
        assert_eq!(
            compare(&r, &with(over.clone()), &with(digest_of(&big, 10))),
            Verdict::Match
        );
        // One side under its limit, the other over: the digests still agree.
        assert_eq!(
            compare(&r, &with(over.clone()), &with(digest_of(&big, 1000))),
            Verdict::Match
        );

        let mut other = big.clone();
        other[50] = b'y';
        assert_eq!(
            compare(&r, &with(over.clone()), &with(digest_of(&other, 10))),
            body_only(Difference::Digest {
                main_len: 100,
                mirror_len: 100
            })
        );
        assert_eq!(
            compare(&r, &with(over), &with(digest_of(&big[..99], 10))),
            body_only(Difference::Digest {
                main_len: 100,
                mirror_len: 99
            })
        );
        // Above the limit JSON is not parsed: equal JSON spelled differently differs.
        assert!(
            mismatch(compare(
                &r,
                &with(digest_of(b"{\"a\":1}", 3)),
                &with(digest_of(b"{\"a\": 1}", 3))
            ))
            .body
        );
    }

    #[test]
    fn capture_keeps_up_to_the_limit_then_only_a_digest() {
        let mut c = Capture::new(8);
        c.push(b"1234");
        c.push(b"5678");
        assert_eq!(c.held_bytes(), 8);
        assert_eq!(
            c.finish(),
            CapturedBody::Whole(Bytes::from_static(b"12345678"))
        );

        let mut c = Capture::new(8);
        c.push(b"1234");
        c.push(b"56789");
        assert_eq!(c.held_bytes(), 0);
        c.push(b"0");
        assert_eq!(
            c.finish(),
            CapturedBody::Digest {
                len: 10,
                digest: xxh3_128(b"1234567890")
            }
        );
        assert_eq!(Capture::new(0).finish(), CapturedBody::Whole(Bytes::new()));
    }

    #[test]
    fn a_body_in_one_chunk_is_kept_without_a_copy() {
        let chunk = Bytes::from(vec![7u8; 2048]);
        let mut c = Capture::new(4096);
        c.push_bytes(&chunk);
        assert_eq!(c.held_bytes(), 2048);
        let CapturedBody::Whole(kept) = c.finish() else {
            panic!("kept whole")
        };
        assert_eq!(kept.as_ptr(), chunk.as_ptr());
        // A second chunk copies both; past the limit only the digest stays.
        let mut c = Capture::new(4096);
        c.push_bytes(&chunk);
        c.push_bytes(&Bytes::from_static(b"tail"));
        assert_eq!(c.held_bytes(), 4096);
        let CapturedBody::Whole(kept) = c.finish() else {
            panic!("kept whole")
        };
        assert_ne!(kept.as_ptr(), chunk.as_ptr());
        assert_eq!(kept.len(), 2052);
        let mut c = Capture::new(2047);
        c.push_bytes(&chunk);
        assert_eq!(c.held_bytes(), 0);
        assert!(matches!(c.finish(), CapturedBody::Digest { len: 2048, .. }));
    }

    #[test]
    fn values_are_cut_to_200_chars_on_a_char_boundary() {
        let long = "é".repeat(300);
        let main = json(&format!(r#"{{"s":"{long}"}}"#));
        let mirror = json(r#"{"s":"short"}"#);
        let m = mismatch(compare(&Rules::default(), &main, &mirror));
        let Difference::JsonPointer {
            main: Some(text), ..
        } = m.difference
        else {
            panic!("expected a JSON pointer difference: {m:?}");
        };
        assert_eq!(text.chars().count(), MAX_VALUE_CHARS);
        assert_eq!(text, format!("\"{}", "é".repeat(199)));

        // Four-byte characters and a huge value: still 200 characters.
        let emoji = "🦀".repeat(100_000);
        let main = json(&format!(r#"["{emoji}"]"#));
        let m = mismatch(compare(&Rules::default(), &main, &json("[1]")));
        let Difference::JsonPointer {
            main: Some(text), ..
        } = m.difference
        else {
            panic!("expected a JSON pointer difference: {m:?}");
        };
        assert_eq!(text, format!("\"{}", "🦀".repeat(199)));

        assert_eq!(cut("aéb", 2), "aé");
        assert_eq!(cut("ab", 5), "ab");
        let mut s = "🦀🦀🦀".to_owned();
        cut_in_place(&mut s, 1);
        assert_eq!(s, "🦀");
    }

    #[test]
    fn header_values_are_cut_to_200_chars() {
        let r = rules(&["x-long"], &[]);
        let long = "v".repeat(500);
        let main = answer(200, &[("x-long", &long)], b"");
        let m = mismatch(compare(&r, &main, &answer(200, &[], b"")));
        let Difference::Header {
            main: Some(text),
            mirror: None,
            ..
        } = m.difference
        else {
            panic!("expected a header difference: {m:?}");
        };
        assert_eq!(text, "v".repeat(MAX_VALUE_CHARS));
    }

    #[test]
    fn bad_ignore_values_are_refused_naming_them() {
        for (value, expected) in [
            ("", RuleError::InvalidIgnore(String::new())),
            ("Bad Header", RuleError::InvalidIgnore("Bad Header".into())),
            ("/a~2b", RuleError::InvalidPointer("/a~2b".into())),
            ("/a~", RuleError::InvalidPointer("/a~".into())),
        ] {
            let err = Rules::new(&[], &[value.to_owned()]).unwrap_err();
            assert_eq!(err, expected);
            assert!(
                err.to_string().contains(&format!("ignore={value}")),
                "{err}"
            );
        }
    }

    #[test]
    fn differences_serialise_with_a_kind_tag() {
        let cases = [
            (
                Difference::Status {
                    main: 200,
                    mirror: 500,
                },
                r#"{"kind":"status","main":200,"mirror":500}"#,
            ),
            (
                Difference::Header {
                    name: "x-v".into(),
                    main: Some("1".into()),
                    mirror: None,
                },
                r#"{"kind":"header","name":"x-v","main":"1","mirror":null}"#,
            ),
            (
                at("/a", Some("null"), None),
                r#"{"kind":"json_pointer","pointer":"/a","main":"null","mirror":null}"#,
            ),
            (
                Difference::ByteOffset { offset: 3 },
                r#"{"kind":"byte_offset","offset":3}"#,
            ),
            (
                Difference::Digest {
                    main_len: 1,
                    mirror_len: 2,
                },
                r#"{"kind":"digest","main_len":1,"mirror_len":2}"#,
            ),
            (
                Difference::GrpcStatus {
                    main: Some("0".into()),
                    mirror: None,
                },
                r#"{"kind":"grpc_status","main":"0","mirror":null}"#,
            ),
            (
                Difference::GrpcMessage {
                    main: "a".into(),
                    mirror: "".into(),
                },
                r#"{"kind":"grpc_message","main":"a","mirror":""}"#,
            ),
            (
                Difference::MessageJsonPointer {
                    index: 2,
                    pointer: "/message".into(),
                    main: Some("\"a\"".into()),
                    mirror: None,
                },
                r#"{"kind":"message_json_pointer","index":2,"pointer":"/message","main":"\"a\"","mirror":null}"#,
            ),
            (
                Difference::MessageByteOffset {
                    index: 1,
                    offset: 4,
                },
                r#"{"kind":"message_byte_offset","index":1,"offset":4}"#,
            ),
            (
                Difference::MessageCount { main: 1, mirror: 3 },
                r#"{"kind":"message_count","main":1,"mirror":3}"#,
            ),
        ];
        for (difference, expected) in cases {
            assert_eq!(serde_json::to_string(&difference).unwrap(), expected);
        }
    }

    // === gRPC answers ===

    use super::super::grpc::Descriptors;
    use super::super::grpc::tests::{body as grpc_body, echo_set, gzip, reply};

    /// A gRPC answer (HTTP 200, `application/grpc`, `headers` added) with these messages
    /// and trailers.
    fn grpc(headers: &[(&str, &str)], messages: &[&[u8]], trailers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("content-type", "application/grpc")];
        all.extend_from_slice(headers);
        let framed: Vec<(bool, &[u8])> = messages.iter().map(|m| (false, *m)).collect();
        let mut a = answer(200, &all, &grpc_body(&framed));
        for (name, value) in trailers {
            a.trailers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        a
    }

    /// A unary answer with `grpc-status: 0` in its trailers.
    fn ok(messages: &[&[u8]]) -> Answer {
        grpc(&[], messages, &[("grpc-status", "0")])
    }

    fn status_only(difference: Difference) -> Verdict {
        let field = only_field(&difference);
        Verdict::Mismatch(Mismatch {
            status: true,
            headers: false,
            body: false,
            difference,
            fields: vec![field],
            field_count: 1,
        })
    }

    fn grpc_status(main: Option<&str>, mirror: Option<&str>) -> Difference {
        Difference::GrpcStatus {
            main: main.map(str::to_owned),
            mirror: mirror.map(str::to_owned),
        }
    }

    /// The output type of `/echo.Echo/Say` in the test descriptor set.
    fn echo_output() -> MessageDescriptor {
        Descriptors::decode(&echo_set())
            .unwrap()
            .output("/echo.Echo/Say")
            .unwrap()
    }

    #[test]
    fn grpc_status_from_the_trailers_is_the_status_compared() {
        let r = Rules::default();
        assert_eq!(compare(&r, &ok(&[b"m"]), &ok(&[b"m"])), Verdict::Match);
        let failed = grpc(&[], &[], &[("grpc-status", "5"), ("grpc-message", "gone")]);
        assert_eq!(
            compare(&r, &ok(&[]), &failed),
            status_only(grpc_status(Some("0"), Some("5")))
        );
        // Counted as the status; the messages are still compared and counted as the body.
        let m = mismatch(compare(&r, &ok(&[b"m"]), &failed));
        assert_eq!((m.status, m.headers, m.body), (true, false, true));
        assert_eq!(m.difference, grpc_status(Some("0"), Some("5")));
        // A different HTTP status comes first.
        let mut teapot = failed.clone();
        teapot.status = StatusCode::IM_A_TEAPOT;
        assert_eq!(
            mismatch(compare(&r, &ok(&[]), &teapot)).difference,
            Difference::Status {
                main: 200,
                mirror: 418
            }
        );
    }

    #[test]
    fn a_trailers_only_status_is_read_from_the_headers() {
        let r = Rules::default();
        // Trailers-Only: the status in the one header block, no body, no trailers.
        let only = |status: &str| grpc(&[("grpc-status", status)], &[], &[]);
        let trailing = |status: &str| grpc(&[], &[], &[("grpc-status", status)]);
        assert_eq!(compare(&r, &only("14"), &trailing("14")), Verdict::Match);
        assert_eq!(
            compare(&r, &only("14"), &trailing("4")),
            status_only(grpc_status(Some("14"), Some("4")))
        );
        // The trailers win over a (stray) header.
        let both = grpc(&[("grpc-status", "0")], &[], &[("grpc-status", "14")]);
        assert_eq!(compare(&r, &both, &only("14")), Verdict::Match);
        // Absent is a value of its own: not even 2 (UNKNOWN), which a client reads it as.
        let none = grpc(&[], &[], &[]);
        assert_eq!(compare(&r, &none, &none.clone()), Verdict::Match);
        assert_eq!(
            compare(&r, &none, &only("2")),
            status_only(grpc_status(None, Some("2")))
        );
    }

    #[test]
    fn grpc_message_is_compared_when_both_failed() {
        let r = Rules::default();
        let failed =
            |message: &str| grpc(&[], &[], &[("grpc-status", "5"), ("grpc-message", message)]);
        assert_eq!(
            compare(&r, &failed("user 7 not found"), &failed("user 7 gone")),
            status_only(Difference::GrpcMessage {
                main: "user 7 not found".into(),
                mirror: "user 7 gone".into()
            })
        );
        // Percent-decoded before comparing: the same text encoded two ways matches.
        assert_eq!(
            compare(&r, &failed("not%20found%3A%207"), &failed("not found: 7")),
            Verdict::Match
        );
        assert_eq!(
            compare(&r, &failed("caf%C3%A9"), &failed("bar")),
            status_only(Difference::GrpcMessage {
                main: "café".into(),
                mirror: "bar".into()
            })
        );
        // Absent reads as empty.
        let bare = grpc(&[], &[], &[("grpc-status", "5")]);
        assert_eq!(compare(&r, &bare, &failed("")), Verdict::Match);
        // Both succeeded: a message is not compared.
        let said = grpc(&[], &[], &[("grpc-status", "0"), ("grpc-message", "fine")]);
        assert_eq!(compare(&r, &said, &ok(&[])), Verdict::Match);
    }

    #[test]
    fn grpc_messages_compare_one_by_one_naming_the_index_and_offset() {
        let r = Rules::default();
        let main = ok(&[b"first", b"second", b"third"]);
        assert_eq!(compare(&r, &main, &main.clone()), Verdict::Match);
        assert_eq!(
            compare(&r, &main, &ok(&[b"first", b"secant", b"thirty"])),
            body_only(Difference::MessageByteOffset {
                index: 1,
                offset: 3
            })
        );
        // One a prefix of the other: the shorter length.
        assert_eq!(
            compare(&r, &main, &ok(&[b"first", b"second", b"thir"])),
            body_only(Difference::MessageByteOffset {
                index: 2,
                offset: 4
            })
        );
        assert_eq!(
            compare(&r, &main, &ok(&[b"first"])),
            body_only(Difference::MessageCount { main: 3, mirror: 1 })
        );
        // Not well-formed messages: the whole bodies byte for byte.
        let mut cut = ok(&[b"first"]);
        cut.body = CapturedBody::Whole(Bytes::from_static(b"\x00\x00\x00\x00\x09first"));
        assert_eq!(
            compare(&r, &ok(&[b"first"]), &cut),
            body_only(Difference::ByteOffset { offset: 4 })
        );
        // Over the capture limit: length and digest, the status still from the trailers.
        let mut big = ok(&[b"first"]);
        big.body = digest_of(&grpc_body(&[(false, b"first")]), 3);
        assert_eq!(compare(&r, &big, &big.clone()), Verdict::Match);
        let mut other = grpc(&[], &[], &[("grpc-status", "13")]);
        other.body = digest_of(&grpc_body(&[(false, b"firsT")]), 3);
        let m = mismatch(compare(&r, &big, &other));
        assert_eq!((m.status, m.body), (true, true));
        assert_eq!(m.difference, grpc_status(Some("0"), Some("13")));
    }

    #[test]
    fn answers_not_both_grpc_compare_as_http() {
        let r = Rules::default();
        let plain = answer(
            200,
            &[("content-type", "text/plain")],
            b"\x00\x00\x00\x00\x01m",
        );
        let m = mismatch(compare(&r, &ok(&[b"m"]), &plain));
        assert!(matches!(m.difference, Difference::Header { .. }), "{m:?}");
        assert!(!m.status && !m.body);
        // gRPC-Web keeps its trailers in the body: compared as HTTP.
        let web = |body: &[u8]| answer(200, &[("content-type", "application/grpc-web")], body);
        assert_eq!(
            compare(
                &r,
                &web(b"\x00\x00\x00\x00\x01a"),
                &web(b"\x00\x00\x00\x00\x01b")
            ),
            body_only(Difference::ByteOffset { offset: 5 })
        );
    }

    #[test]
    fn with_descriptors_messages_compare_as_json_with_the_ignored_pointers() {
        let output = echo_output();
        let r = Rules::default();
        let main = ok(&[&reply("hello", 1, &[]), &reply("bye", 2, &[("a", 7)])]);
        let mirror = ok(&[&reply("hello", 1, &[]), &reply("ciao", 2, &[("a", 8)])]);
        assert_eq!(
            super::compare(&r, Some(&output), &main, &mirror),
            with_fields(
                body_only(Difference::MessageJsonPointer {
                    index: 1,
                    pointer: "/items/0/at".into(),
                    main: Some("7".into()),
                    mirror: Some("8".into()),
                }),
                &["/items/*/at", "/message"]
            )
        );
        let ignoring = rules(&[], &["/items/*/at"]);
        assert_eq!(
            super::compare(&ignoring, Some(&output), &main, &mirror),
            body_only(Difference::MessageJsonPointer {
                index: 1,
                pointer: "/message".into(),
                main: Some(r#""bye""#.into()),
                mirror: Some(r#""ciao""#.into()),
            })
        );
        let ignoring = rules(&[], &["/items/*/at", "/message"]);
        assert_eq!(
            super::compare(&ignoring, Some(&output), &main, &mirror),
            Verdict::Match
        );
        // Without descriptors (or for a method they do not describe): bytes. The
        // first byte of "bye" and "ciao" is the second of the message, after the
        // field's tag: their lengths differ already.
        assert_eq!(
            compare(&ignoring, &main, &mirror),
            body_only(Difference::MessageByteOffset {
                index: 1,
                offset: 1
            })
        );
        // 64-bit integers compare exactly.
        let far = |id| ok(&[&reply("x", id, &[])]);
        assert_eq!(
            super::compare(&r, Some(&output), &far(i64::MAX), &far(i64::MAX - 1)),
            body_only(Difference::MessageJsonPointer {
                index: 0,
                pointer: "/id".into(),
                main: Some(i64::MAX.to_string()),
                mirror: Some((i64::MAX - 1).to_string()),
            })
        );
        // Different bytes, same message: a field the descriptors do not know (number
        // 15), or a default value sent explicitly, is no difference.
        let mut extra = reply("hello", 1, &[]);
        extra.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
        assert_eq!(
            super::compare(
                &r,
                Some(&output),
                &ok(&[&reply("hello", 1, &[])]),
                &ok(&[&extra])
            ),
            Verdict::Match
        );
        let explicit_default = [&[0x0a, 0x00][..], &reply("", 1, &[])].concat(); // message = ""
        assert_eq!(
            super::compare(
                &r,
                Some(&output),
                &ok(&[&reply("", 1, &[])]),
                &ok(&[&explicit_default])
            ),
            Verdict::Match
        );
        // Bytes that are not a message of that type: compared as bytes.
        assert_eq!(
            super::compare(
                &r,
                Some(&output),
                &ok(&[&reply("hello", 1, &[])]),
                &ok(&[b"\xff\xff"])
            ),
            body_only(Difference::MessageByteOffset {
                index: 0,
                offset: 0
            })
        );
    }

    #[test]
    fn compressed_messages_compare_plain() {
        use super::super::capture::{ForCompare, for_compare};
        let budget = crate::budget::Budget::new(1 << 20);
        // What the mirror copy does before comparing: compressed messages made plain.
        let prepared = |mut a: Answer| {
            if let ForCompare::Decoded(body, _held) =
                for_compare(&a.headers, &a.body, 4096, &budget)
            {
                a.body = body;
            }
            a
        };
        let gzipped = |messages: &[&[u8]]| {
            let packed: Vec<Vec<u8>> = messages.iter().map(|m| gzip(m)).collect();
            let framed: Vec<(bool, &[u8])> = packed.iter().map(|m| (true, &m[..])).collect();
            let mut a = grpc(&[("grpc-encoding", "gzip")], &[], &[("grpc-status", "0")]);
            a.body = CapturedBody::Whole(Bytes::from(grpc_body(&framed)));
            prepared(a)
        };
        let r = Rules::default();
        let first = reply("hello", 1, &[]);
        let second = reply("hello", 2, &[]);
        assert_eq!(
            compare(&r, &gzipped(&[&first]), &prepared(ok(&[&first]))),
            Verdict::Match
        );
        assert_eq!(
            super::compare(
                &r,
                Some(&echo_output()),
                &gzipped(&[&first, &first]),
                &gzipped(&[&first, &second])
            ),
            body_only(Difference::MessageJsonPointer {
                index: 1,
                pointer: "/id".into(),
                main: Some("1".into()),
                mirror: Some("2".into()),
            })
        );
        // Not prepared (an encoding that is not decoded): compared as sent.
        let mut snappy = grpc(&[("grpc-encoding", "snappy")], &[], &[("grpc-status", "0")]);
        snappy.body = CapturedBody::Whole(Bytes::from(grpc_body(&[(true, b"abc")])));
        let snappy = prepared(snappy);
        assert_eq!(compare(&r, &snappy, &snappy.clone()), Verdict::Match);
        assert_eq!(
            compare(&r, &snappy, &prepared(ok(&[b"abc"]))),
            body_only(Difference::MessageByteOffset {
                index: 0,
                offset: 3
            })
        );
        assert_eq!(budget.held(), 0);
    }

    // === property tests ===

    /// Random JSON values: every kind of scalar, nested arrays and objects whose keys
    /// need escaping in a pointer.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z~/é🦀\"\\\\ ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-c~/é*]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Writes `value` as JSON with object keys shuffled, random whitespace, integers
    /// sometimes spelled as floats and strings sometimes as `\u` escapes.
    fn render(value: &Value, rng: &mut fastrand::Rng, out: &mut String) {
        const SPACE: [&str; 5] = ["", " ", "\n", "\t", "\r\n  "];
        let space = |rng: &mut fastrand::Rng, out: &mut String| {
            out.push_str(SPACE[rng.usize(..SPACE.len())])
        };
        space(rng, out);
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                rng.shuffle(&mut entries);
                out.push('{');
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render_string(k, rng, out);
                    space(rng, out);
                    out.push(':');
                    render(v, rng, out);
                }
                space(rng, out);
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render(v, rng, out);
                }
                space(rng, out);
                out.push(']');
            }
            Value::String(s) => render_string(s, rng, out),
            Value::Number(n) if !n.is_f64() => {
                out.push_str(&n.to_string());
                out.push_str(["", ".0", "e0", ".00E+0"][rng.usize(..4)]);
            }
            other => out.push_str(&other.to_string()),
        }
        space(rng, out);
    }

    fn render_string(s: &str, rng: &mut fastrand::Rng, out: &mut String) {
        if rng.bool() {
            out.push_str(&serde_json::to_string(s).unwrap());
            return;
        }
        out.push('"');
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
    }

    /// Every location of a value that is not a non-empty container, with its pointer.
    fn leaves(value: &Value, pointer: String, out: &mut Vec<String>) {
        let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
        match value {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    leaves(v, format!("{pointer}/{}", escape(k)), out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    leaves(v, format!("{pointer}/{i}"), out);
                }
            }
            _ => out.push(pointer),
        }
    }

    fn body_answer(body: CapturedBody) -> Answer {
        Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            trailers: HeaderMap::new(),
        }
    }

    fn whole(text: String) -> Answer {
        body_answer(CapturedBody::Whole(Bytes::from(text)))
    }

    proptest! {
        #[test]
        fn reordered_and_respaced_json_matches(value in json_value(), seed: u64) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut shuffled = String::new();
            render(&value, &mut rng, &mut shuffled);
            let r = Rules::default();
            let pretty = whole(serde_json::to_string_pretty(&value).unwrap());
            let compact = whole(serde_json::to_string(&value).unwrap());
            prop_assert_eq!(compare(&r, &pretty, &whole(shuffled.clone())), Verdict::Match, "{}", shuffled);
            prop_assert_eq!(compare(&r, &whole(shuffled), &compact), Verdict::Match);
        }

        #[test]
        fn changing_one_leaf_mismatches_at_that_leaf(value in json_value(), pick: prop::sample::Index) {
            let mut paths = Vec::new();
            leaves(&value, String::new(), &mut paths);
            let pointer = pick.get(&paths).clone();
            let main_text = serde_json::to_string(&value).unwrap();
            // What compare sees of the old leaf: its text parsed back, which may round
            // a float differently from the generated one.
            let reparsed: Value = serde_json::from_str(&main_text).unwrap();
            let old = reparsed.pointer(&pointer).unwrap().clone();
            let mut changed = value.clone();
            let leaf = changed.pointer_mut(&pointer).unwrap();
            *leaf = if leaf.is_null() { Value::Bool(true) } else { Value::Null };
            let new = leaf.clone();
            let verdict = compare(
                &Rules::default(),
                &whole(main_text.clone()),
                &whole(serde_json::to_string_pretty(&changed).unwrap()),
            );
            prop_assert_eq!(verdict, body_only(Difference::JsonPointer {
                pointer: cut(&pointer, MAX_POINTER_CHARS).to_owned(),
                main: Some(value_text(&old)),
                mirror: Some(value_text(&new)),
            }));
            // Ignoring that exact location makes them match again.
            if !pointer.is_empty() {
                let r = Rules::new(&[], &[pointer]).unwrap();
                let verdict = compare(
                    &r,
                    &whole(serde_json::to_string(&value).unwrap()),
                    &whole(serde_json::to_string(&changed).unwrap()),
                );
                prop_assert_eq!(verdict, Verdict::Match);
            }
        }

        #[test]
        fn capture_is_the_same_for_any_chunking(
            body in prop::collection::vec(any::<u8>(), 0..3000),
            limit in 0usize..3200,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            shared in prop::collection::vec(any::<bool>(), 13),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
            points.sort_unstable();
            let mut chunked = Capture::new(limit);
            let mut start = 0;
            for (i, end) in points.into_iter().chain([body.len()]).enumerate() {
                // Chunks given as Bytes (kept without a copy when first) or as slices.
                if shared[i] {
                    chunked.push_bytes(&Bytes::copy_from_slice(&body[start..end]));
                } else {
                    chunked.push(&body[start..end]);
                }
                prop_assert!(chunked.held_bytes() <= limit);
                start = end;
            }
            let result = chunked.finish();
            prop_assert_eq!(&result, &digest_of(&body, limit));
            prop_assert_eq!(result.len(), body.len() as u64);
            prop_assert_eq!(result.digest(), xxh3_128(&body));
            prop_assert_eq!(matches!(result, CapturedBody::Whole(_)), body.len() <= limit);
        }

        #[test]
        fn compare_never_panics_and_is_reflexive_and_symmetric(
            a in body_bytes(),
            b in body_bytes(),
            limit in 0usize..64,
            ignore in prop::collection::vec("/[a-c*~01/]{0,6}|[A-Za-z-]{1,8}", 0..4),
        ) {
            let Ok(r) = Rules::new(&[], &ignore) else { return Ok(()) };
            let a = body_answer(digest_of(&a, limit));
            let b = body_answer(digest_of(&b, limit));
            let ab = compare(&r, &a, &b);
            let ba = compare(&r, &b, &a);
            prop_assert_eq!(ab == Verdict::Match, ba == Verdict::Match);
            prop_assert_eq!(compare(&r, &a, &a), Verdict::Match);
        }
    }

    proptest! {
        #[test]
        fn grpc_compare_never_panics_and_is_reflexive_and_symmetric(
            a in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..4),
            b in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..4),
            status in prop::sample::select(vec![None, Some("0"), Some("5")]),
            cut in 0usize..8,
            typed: bool,
        ) {
            let output = typed.then(echo_output);
            let answer = |messages: &[Vec<u8>]| {
                let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                let trailers: Vec<(&str, &str)> =
                    status.iter().map(|s| ("grpc-status", *s)).collect();
                let mut a = grpc(&[], &messages, &trailers);
                // Now and then a body cut short.
                if let CapturedBody::Whole(body) = &a.body {
                    a.body = CapturedBody::Whole(body.slice(..body.len().saturating_sub(cut % 3)));
                }
                a
            };
            let (a, b) = (answer(&a), answer(&b));
            let r = Rules::default();
            let ab = super::compare(&r, output.as_ref(), &a, &b);
            let ba = super::compare(&r, output.as_ref(), &b, &a);
            prop_assert_eq!(ab == Verdict::Match, ba == Verdict::Match);
            prop_assert_eq!(super::compare(&r, output.as_ref(), &a, &a), Verdict::Match);
        }
    }

    /// Arbitrary bytes, or text close enough to JSON to parse now and then.
    fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "[\\[\\]{}\":,0-9a-c .eE+-]{0,40}".prop_map(String::into_bytes),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]
    }

    #[test]
    fn every_differing_field_is_named_with_indices_as_stars() {
        let r = rules(&["content-type", "x-v"], &["/meta/ts"]);
        let main = answer(
            200,
            &[("content-type", "application/json"), ("x-v", "1")],
            br#"{"items":[{"price":1,"n":"a"},{"price":2,"n":"b"},{"price":3}],"meta":{"ts":1},"a~/b":1,"gone":0}"#,
        );
        let mirror = answer(
            200,
            &[("content-type", "application/json"), ("x-v", "2")],
            br#"{"items":[{"price":9,"n":"a"},{"price":8,"n":"c"},{"price":3},{"x":1}],"meta":{"ts":2},"a~/b":2}"#,
        );
        let m = mismatch(compare(&r, &main, &mirror));
        assert_eq!(
            m.fields,
            [
                "header:x-v",
                "/a~0~1b",
                "/gone",
                "/items/*/price",
                "/items/*/n",
                "/items/*"
            ]
        );
        assert_eq!(m.field_count, 6);
        // The first difference is still the one reported first.
        assert!(matches!(m.difference, Difference::Header { .. }), "{m:?}");
        // Status and a non-JSON body.
        let m = mismatch(compare(
            &Rules::default(),
            &answer(200, &[], b"a"),
            &answer(503, &[], b"b"),
        ));
        assert_eq!(
            (m.fields, m.field_count),
            (vec!["status".into(), "body".into()], 2)
        );
    }

    #[test]
    fn at_most_twenty_fields_are_named_and_all_are_counted() {
        let doc = |v: u32| {
            let fields: Vec<String> = (0..30).map(|i| format!("\"k{i:02}\":{v}")).collect();
            json(&format!("{{{}}}", fields.join(",")))
        };
        let m = mismatch(compare(&Rules::default(), &doc(1), &doc(2)));
        assert_eq!(m.fields.len(), MAX_FIELDS);
        assert_eq!(m.fields[0], "/k00");
        assert_eq!(m.field_count, 30);
    }

    #[test]
    fn grpc_fields_are_the_status_the_message_and_the_body() {
        let r = Rules::default();
        let failed = |code: &str, message: &str| {
            grpc(
                &[],
                &[],
                &[("grpc-status", code), ("grpc-message", message)],
            )
        };
        let m = mismatch(compare(&r, &failed("5", "a"), &failed("13", "a")));
        assert_eq!(m.fields, ["grpc-status"]);
        let m = mismatch(compare(&r, &failed("5", "a"), &failed("5", "b")));
        assert_eq!(m.fields, ["grpc-message"]);
        let m = mismatch(compare(&r, &ok(&[b"a", b"b"]), &ok(&[b"x"])));
        assert_eq!((m.fields, m.field_count), (vec!["body".into()], 1));
    }
}
