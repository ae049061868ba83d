//! GoReplay's file format (docs/record-replay.md, "The file format"): each record is a
//! meta line `TYPE SP ID SP TIMESTAMP_NS SP LATENCY_NS LF`, an HTTP/1.1 message, and the
//! separator `LF 🐵🙈🙉 LF`, whose first `LF` is not part of the message.
//!
//! [`encode_request`] writes a record; [`Reader`] reads them back from any byte stream,
//! GoReplay's own included (meta lines of 3 or more fields, any latency), skipping a
//! torn or unparsable record with a reason instead of failing.

use std::io::Read;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

/// Ends every record; the first `LF` belongs to the separator, not to the message.
pub const SEPARATOR: &[u8] = "\n🐵🙈🙉\n".as_bytes();

/// A request record (type `1`).
pub const REQUEST: u8 = b'1';
/// A recorded answer (type `2`).
pub const RESPONSE: u8 = b'2';

/// A random record ID: 24 hex characters (96 bits), unique across instances without
/// coordination.
pub fn new_id() -> String {
    format!(
        "{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..) // 64 + 32 bits
    )
}

/// Appends the meta line of a record.
pub fn meta(out: &mut Vec<u8>, kind: u8, id: &str, timestamp_ns: i128, latency_ns: i128) {
    out.push(kind);
    out.push(b' ');
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(format!(" {timestamp_ns} {latency_ns}\n").as_bytes());
}

fn header_lines(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        // The framing is written from the body below; an empty `Host` is the slot a
        // copy fills with its target's authority, so no client sent it.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || (name == header::HOST && value.is_empty())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends an HTTP/1.1 message body: with `Content-Length` without trailers, chunked
/// with a trailer section when there are (RFC 9112 §7.1.2), so a gRPC status survives.
fn body(out: &mut Vec<u8>, body: &[u8], trailers: Option<&HeaderMap>, always_length: bool) {
    match trailers {
        Some(trailers) if !trailers.is_empty() => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if !body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers {
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
        }
        _ => {
            if always_length || !body.is_empty() {
                out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
        }
    }
}

/// A whole request record: meta line, the request as HTTP/1.1, separator.
pub fn encode_request(
    id: &str,
    timestamp_ns: i128,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    payload: &[u8],
    trailers: Option<&HeaderMap>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + payload.len());
    meta(&mut out, REQUEST, id, timestamp_ns, -1);
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header_lines(&mut out, headers);
    let had_length = headers.contains_key(header::CONTENT_LENGTH);
    body(&mut out, payload, trailers, had_length);
    out.extend_from_slice(SEPARATOR);
    out
}

/// A whole answer record (type `2`): same ID and timestamp as its request, main's
/// latency.
pub fn encode_response(
    id: &str,
    timestamp_ns: i128,
    latency_ns: i128,
    status: http::StatusCode,
    headers: &HeaderMap,
    payload: &[u8],
    trailers: Option<&HeaderMap>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + payload.len());
    meta(&mut out, RESPONSE, id, timestamp_ns, latency_ns);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    header_lines(&mut out, headers);
    body(&mut out, payload, trailers, true);
    out.extend_from_slice(SEPARATOR);
    out
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub kind: u8,
    pub id: String,
    pub timestamp_ns: i128,
    /// `-1` for requests; GoReplay's older 3-field meta lines have none.
    pub latency_ns: Option<i128>,
    /// The HTTP/1.1 message.
    pub message: Bytes,
}

/// A record that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The record's index in its source, counting from 0.
    pub index: usize,
    pub reason: String,
}

/// Parses one record's bytes (without the separator).
pub fn parse_record(bytes: &[u8]) -> Result<RawRecord, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no meta line")?;
    let meta = std::str::from_utf8(&bytes[..newline]).map_err(|_| "meta line is not text")?;
    let fields: Vec<&str> = meta.split(' ').collect();
    if fields.len() < 3 {
        return Err(format!("meta line {meta:?} has fewer than 3 fields"));
    }
    let kind = match fields[0].as_bytes() {
        [k] if k.is_ascii_digit() => *k,
        _ => return Err(format!("meta line {meta:?}: bad type")),
    };
    if fields[1].is_empty() {
        return Err(format!("meta line {meta:?}: empty id"));
    }
    let timestamp_ns: i128 = fields[2]
        .parse()
        .map_err(|_| format!("meta line {meta:?}: bad timestamp"))?;
    let latency_ns = match fields.get(3) {
        Some(l) => Some(
            l.parse()
                .map_err(|_| format!("meta line {meta:?}: bad latency"))?,
        ),
        None => None,
    };
    Ok(RawRecord {
        kind,
        id: fields[1].to_owned(),
        timestamp_ns,
        latency_ns,
        message: Bytes::copy_from_slice(&bytes[newline + 1..]),
    })
}

/// A request read back from a record.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// A recorded answer read back.
#[derive(Debug, Clone)]
pub struct ParsedResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

const MAX_HEADERS: usize = 256;

fn to_header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("bad value of header {:?}", h.name))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The body after a head of `head_len` bytes: chunked, by `Content-Length`, or the rest.
fn message_body(
    message: &[u8],
    head_len: usize,
    headers: &HeaderMap,
) -> Result<(Bytes, Option<HeaderMap>), String> {
    let rest = &message[head_len..];
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        return dechunk(rest);
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        let length: usize = length
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("bad Content-Length")?;
        if rest.len() < length {
            return Err(format!(
                "body shorter ({} bytes) than its Content-Length ({length})",
                rest.len()
            ));
        }
        return Ok((Bytes::copy_from_slice(&rest[..length]), None));
    }
    Ok((Bytes::copy_from_slice(rest), None))
}

/// Decodes a chunked body (RFC 9112 §7.1) and its trailer section.
fn dechunk(mut rest: &[u8]) -> Result<(Bytes, Option<HeaderMap>), String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("torn chunk size line")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 {
            return Err("torn chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    // The trailer section: header lines up to an empty line.
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let trailers = match httparse::parse_headers(rest, &mut parsed) {
        Ok(httparse::Status::Complete((_, lines))) => to_header_map(lines)?,
        Ok(httparse::Status::Partial) => return Err("torn trailer section".into()),
        Err(err) => return Err(format!("bad trailer section: {err}")),
    };
    Ok((Bytes::from(body), Some(trailers)))
}

/// Parses a request record's message.
pub fn parse_request(message: &[u8]) -> Result<ParsedRequest, String> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let head_len = match request.parse(message) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err("torn request head".into()),
        Err(err) => return Err(format!("bad request head: {err}")),
    };
    let method =
        Method::from_bytes(request.method.unwrap_or("").as_bytes()).map_err(|_| "bad method")?;
    let path_and_query = request.path.unwrap_or("/").to_owned();
    let headers = to_header_map(request.headers)?;
    let (body, trailers) = message_body(message, head_len, &headers)?;
    Ok(ParsedRequest {
        method,
        path_and_query,
        headers,
        body,
        trailers,
    })
}

/// Parses a response record's message.
pub fn parse_response(message: &[u8]) -> Result<ParsedResponse, String> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut parsed);
    let head_len = match response.parse(message) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err("torn response head".into()),
        Err(err) => return Err(format!("bad response head: {err}")),
    };
    let status =
        http::StatusCode::from_u16(response.code.unwrap_or(0)).map_err(|_| "bad status")?;
    let headers = to_header_map(response.headers)?;
    let (body, trailers) = message_body(message, head_len, &headers)?;
    Ok(ParsedResponse {
        status,
        headers,
        body,
        trailers,
    })
}

/// Records longer than this are skipped, so a file that is not a recording (or holds a
/// huge body) cannot make a reader hold it whole.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Reads records one by one from a byte stream, holding at most one record (and one
/// read buffer) in memory: at most [`MAX_RECORD_BYTES`] and a read's worth.
pub struct Reader<R> {
    source: R,
    buffer: Vec<u8>,
    /// Where the next separator search starts (the bytes before it hold none).
    searched: usize,
    index: usize,
    eof: bool,
    max_record: usize,
    /// The current record passed `max_record`: its bytes are being thrown away.
    oversized: bool,
}

/// What [`Reader::next_record`] yields.
pub type Item = Result<RawRecord, Skipped>;

impl<R: Read> Reader<R> {
    pub fn new(source: R) -> Self {
        Self::with_limit(source, MAX_RECORD_BYTES)
    }

    /// A reader that skips records longer than `max_record` bytes.
    pub fn with_limit(source: R, max_record: usize) -> Self {
        Self {
            source,
            buffer: Vec::new(),
            searched: 0,
            index: 0,
            eof: false,
            max_record,
            oversized: false,
        }
    }

    fn skipped(&mut self, reason: String) -> Item {
        let index = self.index;
        self.index += 1;
        Err(Skipped { index, reason })
    }

    /// The next record, or a skipped one, or `None` at the end. A read error ends the
    /// stream like its end (a gzip file cut by a crash ends in one).
    pub fn next_record(&mut self) -> Option<Item> {
        loop {
            let from = self.searched;
            if let Some(at) = self.buffer[from..]
                .windows(SEPARATOR.len())
                .position(|w| w == SEPARATOR)
            {
                let mut end = from + at;
                // A body may hold the separator (a client sent it): the record's own
                // framing says where it ends, so it is neither cut short nor read
                // as a further record nobody sent.
                if !self.oversized {
                    match framed_end(&self.buffer, self.max_record) {
                        Framing::End(framed) => end = end.max(framed),
                        Framing::NeedMore if !self.eof => {
                            self.fill();
                            continue;
                        }
                        Framing::NeedMore | Framing::Unknown => {}
                    }
                }
                let record: Vec<u8> = self.buffer.drain(..end + SEPARATOR.len()).collect();
                self.searched = 0;
                if std::mem::take(&mut self.oversized) || end > self.max_record {
                    let limit = self.max_record;
                    return Some(self.skipped(format!("record longer than {limit} bytes")));
                }
                let bytes = &record[..end];
                let result = parse_record(bytes);
                return Some(match result {
                    Ok(record) => {
                        self.index += 1;
                        Ok(record)
                    }
                    Err(reason) => self.skipped(reason),
                });
            }
            self.searched = self.buffer.len().saturating_sub(SEPARATOR.len() - 1);
            if self.buffer.len() > self.max_record {
                // Keep only what may start a separator.
                self.buffer.drain(..self.searched);
                self.searched = 0;
                self.oversized = true;
            }
            if self.eof {
                if self.buffer.is_empty() {
                    return None;
                }
                // What is left never got its separator: a record torn by a crash.
                let len = self.buffer.len();
                self.buffer.clear();
                self.searched = 0;
                return Some(self.skipped(format!("torn record ({len} bytes at the end)")));
            }
            self.fill();
        }
    }

    /// Reads what the source has next; its end, or an error, sets `eof`.
    fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        match self.source.read(&mut chunk) {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where a record ends by its message's own framing.
enum Framing {
    /// At this offset, followed by the separator.
    End(usize),
    /// Past what is read so far (and within the record limit).
    NeedMore,
    /// No framing (no body, or read to the separator), or one that is wrong: the
    /// first separator ends the record.
    Unknown,
}

/// Where the record at the start of `bytes` ends, by its `Content-Length` or its
/// chunks (read as [`message_body`] reads them).
fn framed_end(bytes: &[u8], max_record: usize) -> Framing {
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Framing::Unknown;
    };
    let start = newline + 1;
    let Some((head_len, body)) = body_framing(bytes[0], &bytes[start..]) else {
        return Framing::Unknown;
    };
    let body_start = start + head_len;
    let len = match body {
        BodyFraming::Length(len) => len,
        BodyFraming::Chunked => match chunked_len(&bytes[body_start..]) {
            Some(Ok(len)) => len,
            Some(Err(())) => return Framing::Unknown,
            None if bytes.len() <= max_record => return Framing::NeedMore,
            None => return Framing::Unknown,
        },
    };
    let Some(end) = body_start.checked_add(len).filter(|&end| end <= max_record) else {
        return Framing::Unknown;
    };
    match bytes.get(end..end + SEPARATOR.len()) {
        Some(after) if after == SEPARATOR => Framing::End(end),
        Some(_) => Framing::Unknown,
        None => Framing::NeedMore,
    }
}

enum BodyFraming {
    Length(usize),
    Chunked,
}

/// A message's head length and how its body is framed; `None` without a framed body
/// or a whole head.
fn body_framing(kind: u8, message: &[u8]) -> Option<(usize, BodyFraming)> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (head_len, headers) = if kind == RESPONSE {
        let mut response = httparse::Response::new(&mut parsed);
        let httparse::Status::Complete(len) = response.parse(message).ok()? else {
            return None;
        };
        (len, response.headers)
    } else {
        let mut request = httparse::Request::new(&mut parsed);
        let httparse::Status::Complete(len) = request.parse(message).ok()? else {
            return None;
        };
        (len, request.headers)
    };
    let chunked = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked")
    });
    if chunked {
        return Some((head_len, BodyFraming::Chunked));
    }
    let length = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))?;
    let length = std::str::from_utf8(length.value)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some((head_len, BodyFraming::Length(length)))
}

/// The length of a chunked body with its trailer section (as [`dechunk`] reads it):
/// `None` when cut short, an error when malformed.
fn chunked_len(body: &[u8]) -> Option<Result<usize, ()>> {
    let mut at = 0;
    loop {
        let line_end = at + body.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[at..line_end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok());
        let Some(size) = size else {
            return Some(Err(()));
        };
        at = line_end + 2;
        if size == 0 {
            // The trailer section: header lines up to an empty line.
            let rest = body.get(at..)?;
            if rest.starts_with(b"\r\n") {
                return Some(Ok(at + 2));
            }
            let blank = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
            return Some(Ok(at + blank + 4));
        }
        let Some(next) = at.checked_add(size).and_then(|n| n.checked_add(2)) else {
            return Some(Err(()));
        };
        if next > body.len() {
            return None;
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(bytes: &[u8]) -> Vec<Item> {
        let mut reader = Reader::new(bytes);
        std::iter::from_fn(|| reader.next_record()).collect()
    }

    fn sample(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut headers = HeaderMap::new();
            headers.insert("x-i", HeaderValue::from(i));
            out.extend(encode_request(
                &format!("{i:024x}"),
                1_000 + i as i128,
                &Method::POST,
                &format!("/p/{i}?q=1"),
                &headers,
                format!("body {i}").as_bytes(),
                None,
            ));
        }
        out
    }

    #[test]
    fn a_request_record_is_goreplays_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example.test"));
        let bytes = encode_request("abc", 17, &Method::POST, "/x?y=1", &headers, b"hi", None);
        assert_eq!(
            bytes,
            "1 abc 17 -1\nPOST /x?y=1 HTTP/1.1\r\nhost: example.test\r\nContent-Length: 2\r\n\r\nhi\n🐵🙈🙉\n"
                .as_bytes()
        );
    }

    #[test]
    fn trailers_are_written_chunked_and_read_back() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let bytes = encode_request(
            "id1",
            5,
            &Method::POST,
            "/pkg.Svc/Call",
            &HeaderMap::new(),
            b"\0\0\0\0\x01z",
            Some(&trailers),
        );
        let record = all(&bytes).remove(0).unwrap();
        let request = parse_request(&record.message).unwrap();
        assert_eq!(&request.body[..], b"\0\0\0\0\x01z");
        assert_eq!(request.trailers.unwrap()["grpc-status"], "0");
    }

    #[test]
    fn an_answer_record_reads_back_with_status_headers_body_and_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        for trailers in [None, Some(&trailers)] {
            let bytes = encode_response(
                "id",
                9,
                1_500,
                http::StatusCode::NOT_FOUND,
                &headers,
                b"nope",
                trailers,
            );
            let record = all(&bytes).remove(0).unwrap();
            assert_eq!((record.kind, record.latency_ns), (RESPONSE, Some(1_500)));
            let answer = parse_response(&record.message).unwrap();
            assert_eq!(answer.status, http::StatusCode::NOT_FOUND);
            assert_eq!(answer.headers["content-type"], "application/grpc");
            assert_eq!(&answer.body[..], b"nope");
            assert_eq!(
                answer.trailers.map(|t| t["grpc-status"].clone()),
                trailers.map(|t| t["grpc-status"].clone())
            );
        }
    }

    #[test]
    fn a_record_past_the_limit_is_skipped_and_the_next_one_read() {
        let records = sample(3);
        let one = sample(1).len();
        // The second record made too long for a reader that takes `one` bytes.
        let mut bytes = sample(1);
        let mut long = sample(2)[one..].to_vec();
        long.splice(40..40, std::iter::repeat_n(b'z', 3 * one));
        bytes.extend(long);
        bytes.extend(&records[2 * one..]);
        // Read at once, and 7 bytes at a time (the long record then never fits).
        let whole: Box<dyn Read> = Box::new(&bytes[..]);
        let trickle: Box<dyn Read> = Box::new(Trickle(&bytes[..]));
        for source in [whole, trickle] {
            let mut reader = Reader::with_limit(source, one + 10);
            let items: Vec<Item> = std::iter::from_fn(|| reader.next_record()).collect();
            assert_eq!(items.len(), 3, "{items:?}");
            assert!(items[0].is_ok());
            assert_eq!(
                items[1].as_ref().unwrap_err().reason,
                format!("record longer than {} bytes", one + 10)
            );
            assert_eq!(items[2].as_ref().unwrap().id, format!("{:024x}", 2));
            assert!(reader.buffer.capacity() < 64 * 1024 + one + 10);
        }
    }

    /// Gives its bytes 7 at a time.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(7).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A client controls the body: one holding the separator and a record after it is
    /// read as the one request it was (by its `Content-Length`, or its chunks), not as
    /// a torn one and a request nobody sent.
    #[test]
    fn a_body_holding_the_separator_and_a_record_is_one_request() {
        let sep = std::str::from_utf8(SEPARATOR).unwrap();
        let forged = format!("x{sep}1 f 1 -1\nDELETE /admin HTTP/1.1\r\n\r\n");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        for trailers in [None, Some(&trailers)] {
            let mut bytes = encode_request(
                "a",
                1,
                &Method::POST,
                "/p",
                &HeaderMap::new(),
                forged.as_bytes(),
                trailers,
            );
            bytes.extend(sample(1));
            let items = all(&bytes);
            assert_eq!(items.len(), 2, "{items:?}");
            let request = parse_request(&items[0].as_ref().unwrap().message).unwrap();
            assert_eq!(
                (&request.method, &request.body[..]),
                (&Method::POST, forged.as_bytes())
            );
            assert_eq!(items[1].as_ref().unwrap().id, format!("{:024x}", 0));
        }
    }

    #[test]
    fn goreplay_three_field_meta_lines_are_read() {
        let bytes = "1 d7a8 1500000000000000000\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\n🐵🙈🙉\n";
        let record = all(bytes.as_bytes()).remove(0).unwrap();
        assert_eq!(record.latency_ns, None);
        assert_eq!(record.timestamp_ns, 1_500_000_000_000_000_000);
        assert_eq!(parse_request(&record.message).unwrap().method, Method::GET);
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for record in all(&bytes).into_iter().flatten() {
                let _ = parse_request(&record.message);
                let _ = parse_response(&record.message);
            }
        }

        #[test]
        fn a_file_cut_inside_its_last_record_keeps_every_whole_one(n in 1usize..5, cut in 0.0f64..1.0) {
            let whole = sample(n);
            let before_last = sample(n - 1).len();
            // Every offset inside the last record, the separator's bytes included.
            let at = before_last + ((whole.len() - before_last) as f64 * cut) as usize;
            let items = all(&whole[..at]);
            let ok: Vec<_> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
            prop_assert_eq!(ok.len(), n - 1);
            for (i, record) in ok.iter().enumerate() {
                let request = parse_request(&record.message).unwrap();
                prop_assert_eq!(request.path_and_query, format!("/p/{i}?q=1"));
            }
            // At most one skipped record: the torn one.
            prop_assert!(items.len() - ok.len() <= 1);
        }
    }

    #[test]
    fn every_cut_of_the_last_record_is_skipped_as_torn() {
        let whole = sample(3);
        let before_last = sample(2).len();
        for at in before_last..=whole.len() {
            let items = all(&whole[..at]);
            let ok = items.iter().filter(|i| i.is_ok()).count();
            let want = if at == whole.len() { 3 } else { 2 };
            assert_eq!(ok, want, "cut at {at}");
            if at > before_last && at < whole.len() {
                assert!(items.last().unwrap().is_err(), "cut at {at}");
            }
        }
    }

    /// A header section as a list: names a recording writes as given (not the framing,
    /// not an empty `Host`), values as `httparse` reads them (no surrounding blanks).
    fn fields() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
        let name = prop_oneof![
            "x-[a-z0-9-]{1,10}",
            Just("content-type".to_owned()),
            Just("host".to_owned()),
            Just("grpc-status".to_owned()),
        ];
        let value = proptest::collection::vec(
            prop_oneof![0x21u8..0x7f, 0x80u8..=0xff, Just(b' '), Just(b'\t')],
            1..16,
        )
        .prop_filter_map("no surrounding blanks", |v| {
            let v = v.trim_ascii().to_vec();
            (!v.is_empty())
                .then(|| HeaderValue::from_bytes(&v).ok())
                .flatten()
        });
        proptest::collection::vec(
            (
                name.prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
                value,
            ),
            0..5,
        )
    }

    fn map(fields: &[(HeaderName, HeaderValue)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in fields {
            map.append(n.clone(), v.clone());
        }
        map
    }

    /// Name and value pairs in order, for comparing maps exactly.
    fn pairs(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = map
            .iter()
            .filter(|(n, _)| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        out.sort();
        out
    }

    /// Any body, the separator and things that look like records inside it included.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            Just(SEPARATOR.to_vec()),
            Just(SEPARATOR[..SEPARATOR.len() - 1].to_vec()),
            Just(b"1 f 1 -1\nDELETE /x HTTP/1.1\r\n\r\n".to_vec()),
            Just(b"0\r\n\r\n".to_vec()),
        ];
        proptest::collection::vec(piece, 0..5).prop_map(|p| p.concat())
    }

    /// One record of either kind, as written, and what reading it back must give.
    #[derive(Debug, Clone)]
    struct Written {
        kind: u8,
        id: String,
        timestamp_ns: i128,
        latency_ns: i128,
        method: Method,
        path: String,
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Vec<u8>,
        trailers: Vec<(HeaderName, HeaderValue)>,
    }

    fn written() -> impl Strategy<Value = Written> {
        (
            (
                any::<bool>(),
                "[0-9a-zA-Z_.-]{1,24}",
                any::<i128>(),
                any::<i128>(),
            ),
            (
                "[A-Z]{1,8}",
                "/[a-zA-Z0-9/._~%?=&:@!$'()*+,;-]{0,24}",
                100u16..1000,
            ),
            (fields(), payload(), fields()),
        )
            .prop_map(
                |(
                    (answer, id, timestamp_ns, latency_ns),
                    (method, path, status),
                    (headers, body, trailers),
                )| Written {
                    kind: if answer { RESPONSE } else { REQUEST },
                    id,
                    timestamp_ns,
                    latency_ns: if answer { latency_ns } else { -1 },
                    method: Method::from_bytes(method.as_bytes()).unwrap(),
                    path,
                    status,
                    headers: headers
                        .into_iter()
                        .filter(|(n, v)| !(n == header::HOST && v.is_empty()))
                        .collect(),
                    body,
                    trailers,
                },
            )
    }

    impl Written {
        fn encode(&self) -> Vec<u8> {
            let trailers = map(&self.trailers);
            let trailers = (!trailers.is_empty()).then_some(&trailers);
            if self.kind == REQUEST {
                encode_request(
                    &self.id,
                    self.timestamp_ns,
                    &self.method,
                    &self.path,
                    &map(&self.headers),
                    &self.body,
                    trailers,
                )
            } else {
                let status = http::StatusCode::from_u16(self.status).unwrap();
                encode_response(
                    &self.id,
                    self.timestamp_ns,
                    self.latency_ns,
                    status,
                    &map(&self.headers),
                    &self.body,
                    trailers,
                )
            }
        }

        /// Whether `read` is this record, field by field.
        fn check(&self, read: &RawRecord) -> Result<(), TestCaseError> {
            prop_assert_eq!(read.kind, self.kind);
            prop_assert_eq!(&read.id, &self.id);
            prop_assert_eq!(read.timestamp_ns, self.timestamp_ns);
            prop_assert_eq!(read.latency_ns, Some(self.latency_ns));
            let (headers, body, trailers) = if self.kind == REQUEST {
                let r = parse_request(&read.message).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&r.method, &self.method);
                prop_assert_eq!(&r.path_and_query, &self.path);
                (r.headers, r.body, r.trailers)
            } else {
                let r = parse_response(&read.message).map_err(TestCaseError::fail)?;
                prop_assert_eq!(r.status.as_u16(), self.status);
                (r.headers, r.body, r.trailers)
            };
            prop_assert_eq!(pairs(&headers), pairs(&map(&self.headers)));
            prop_assert_eq!(&body[..], &self.body[..]);
            let trailers = trailers.map(|t| pairs(&t)).unwrap_or_default();
            prop_assert_eq!(trailers, pairs(&map(&self.trailers)));
            Ok(())
        }
    }

    /// Gives its bytes in the sizes it is told, in turn.
    struct Pieces<'a>(&'a [u8], Vec<usize>, usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let size = self.1[self.2 % self.1.len()];
            self.2 += 1;
            let n = self.0.len().min(size).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    proptest! {
        /// Records of both kinds written one after the other and read back in pieces
        /// of any size: the same records, every field (type, ID, timestamp, latency,
        /// method, path, status, headers, body, trailers).
        #[test]
        fn written_records_read_back_the_same(
            records in proptest::collection::vec(written(), 1..5),
            sizes in proptest::collection::vec(1usize..300, 1..4),
        ) {
            let bytes: Vec<u8> = records.iter().flat_map(Written::encode).collect();
            let mut reader = Reader::new(Pieces(&bytes, sizes, 0));
            let read: Vec<Item> = std::iter::from_fn(|| reader.next_record()).collect();
            prop_assert_eq!(read.len(), records.len());
            for (record, item) in records.iter().zip(&read) {
                let item = item.as_ref().map_err(|s| TestCaseError::fail(s.reason.clone()))?;
                record.check(item)?;
            }
        }

        /// Bytes that look like records (meta lines, heads, chunked bodies, separators
        /// in any order): never a panic, whatever parses re-encodes to itself.
        #[test]
        fn record_shaped_bytes_never_panic(
            parts in proptest::collection::vec(prop_oneof![
                Just(&b"1 a 1 -1\n"[..]),
                Just(&b"2 a 1 5\n"[..]),
                Just(&b"GET / HTTP/1.1\r\n"[..]),
                Just(&b"HTTP/1.1 200 OK\r\n"[..]),
                Just(&b"Transfer-Encoding: chunked\r\n"[..]),
                Just(&b"Content-Length: 3\r\n"[..]),
                Just(&b"x: y\r\n"[..]),
                Just(&b"\r\n"[..]),
                Just(&b"3\r\nabc\r\n"[..]),
                Just(&b"0\r\n"[..]),
                Just(&b"ffffffffffffffffff\r\n"[..]),
                Just(SEPARATOR),
                Just(&b"\xff\n"[..]),
            ], 0..24),
        ) {
            crate::fuzz::record_file(&parts.concat());
        }
    }
}
