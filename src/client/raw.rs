//! A mirror's copy to an `http://` mirror whose answer is only needed for its status:
//! written and read here, over the pool's own keep-alive TCP connections, without
//! hyper's client.
//!
//! Why by hand: such a copy needs nothing of the answer but its status and its end,
//! yet hyper's HTTP/1.1 client spends most of a copy's cost around that. Per copy
//! (bench/instructions, callgrind, GET with 2 mirrors) it cost ~24.7k instructions:
//! ~12.7k in the connection's task (the dispatcher encoding the request, then parsing
//! the answer into a `HeaderMap` of the mirror's headers), ~1k building each copy's own
//! `HeaderMap`, ~1k in the dispatch channel, ~0.5k moving the `Request` through the
//! pool. Here the head of the request is serialised once per request and shared by
//! every mirror's copy ([`Head`]), written with one vectored write (the body is not
//! copied), and the answer is parsed in place with `httparse` and framed as RFC 9112
//! §6.3 says, its body discarded as it arrives ([`Framer`]). That brought a copy to
//! ~11.1k instructions, below the ~19.2k of a copy through bare hyper (`bench/floor`);
//! GET with 2 mirrors 81.4k → 54.0k per request, POST 4 KiB 92.0k → 62.5k
//! (bench/README.md, "Profile and what each change bought").
//!
//! What goes out is byte for byte what hyper writes for the same
//! `Request<Full<Bytes>>` (hyper 1.x `Client::encode`: the request line, the headers
//! lowercase in map order, `content-length` added for a non-empty body that has none);
//! a request hyper would frame otherwise (`Transfer-Encoding`, a `Content-Length` that
//! does not match the body, `Connection`, `CONNECT`), or whose body is over
//! [`MAX_BODY`], is not sent here. The pool's rules
//! stay: bound, idle timeout, resend (src/client.rs); a connection goes back to the
//! pool only once its answer was read to the end and may be reused.

use std::io::IoSlice;
use std::mem::MaybeUninit;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// hyper's default bound on an answer's head (its read buffer, 8 KiB + 100 × 4 KiB).
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// hyper's default bound on an answer's header count, and a chunked body's trailers'.
const MAX_HEADERS: usize = 100;
/// hyper's bounds on a chunked body's extensions (all chunks together) and trailers.
const MAX_EXTENSIONS: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// The read buffer a connection starts with (hyper's too).
const INITIAL_BUFFER: usize = 8192;
/// Bodies up to this size are sent here: the write then fits the socket's buffer, so a
/// mirror that answers before reading the body cannot stall it (hyper reads an early
/// answer while still writing).
pub const MAX_BODY: usize = 64 * 1024;

/// A copy's request head without its request line, serialised once and shared by every
/// mirror's copy: the header lines as hyper writes them, the framing hyper adds, and
/// the blank line; `Host` goes at `host_at` when the copy carries its mirror's.
#[derive(Debug)]
pub struct Head {
    block: Vec<u8>,
    host_at: Option<usize>,
}

impl Head {
    /// The head of a request with `headers` and a body of `body_len` bytes; `host_slot`:
    /// the first `Host` in `headers` is a slot for the mirror's (src/mirror.rs). `None`
    /// when hyper would frame the request in a way not done here.
    pub fn new(
        method: &Method,
        headers: &HeaderMap,
        host_slot: bool,
        body_len: usize,
    ) -> Option<Self> {
        if *method == Method::CONNECT
            || body_len > MAX_BODY
            || headers.contains_key(header::TRANSFER_ENCODING)
            || headers.contains_key(header::CONNECTION)
        {
            return None;
        }
        // hyper keeps a valid `Content-Length` and frames the body by it; an empty body
        // is written as none with the headers as they are.
        let has_length = headers.contains_key(header::CONTENT_LENGTH);
        if body_len > 0 && has_length {
            let values = headers.get_all(header::CONTENT_LENGTH).iter();
            if content_length(values) != Ok(Some(body_len as u64)) {
                return None;
            }
        }
        let mut block = Vec::with_capacity(64 + headers.len() * 32);
        let mut host_at = None;
        for (name, value) in headers {
            if host_slot && host_at.is_none() && name == header::HOST {
                host_at = Some(block.len());
                continue;
            }
            push_line(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
        if !headers.contains_key(header::HOST) {
            host_at = Some(block.len());
        }
        if body_len > 0 && !has_length {
            let len = HeaderValue::from(body_len);
            push_line(&mut block, b"content-length", len.as_bytes());
        }
        block.extend_from_slice(b"\r\n");
        Some(Self { block, host_at })
    }
}

fn push_line(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.extend_from_slice(name);
    block.extend_from_slice(b": ");
    block.extend_from_slice(value);
    block.extend_from_slice(b"\r\n");
}

/// `METHOD SP target SP HTTP/1.1 CRLF`, the target written as hyper writes an
/// origin-form `Uri` (its `Display`).
pub fn request_line(method: &Method, target: &Uri) -> Vec<u8> {
    let path = target.path();
    let query = target.query();
    let mut line = Vec::with_capacity(method.as_str().len() + path.len() + 48);
    line.extend_from_slice(method.as_str().as_bytes());
    line.push(b' ');
    line.extend_from_slice(path.as_bytes());
    if let Some(query) = query {
        line.push(b'?');
        line.extend_from_slice(query.as_bytes());
    }
    line.extend_from_slice(b" HTTP/1.1\r\n");
    line
}

/// One copy as it is written: its request line, the shared head, its mirror's `Host`
/// and the body.
pub struct Copy<'a> {
    pub method: &'a Method,
    pub line: &'a [u8],
    pub head: &'a Head,
    pub host: &'a HeaderValue,
    pub body: &'a [u8],
}

impl Copy<'_> {
    /// Safe and without a body (RFC 9110 §9.2.1): may go once more when a connection
    /// idle for a while closed under it (src/client.rs, `STALE_AFTER`).
    pub(crate) fn replayable(&self) -> bool {
        let safe = matches!(
            *self.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        safe && self.body.is_empty()
    }
}

/// Why a copy sent here failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Not a byte of the request was written: the connection was closed.
    #[error("connection closed before the request was written")]
    Unsent(#[source] std::io::Error),
    #[error("writing the request failed")]
    Write(#[source] std::io::Error),
    /// The connection ended (closed or reset) before a byte of an answer.
    #[error("connection closed before an answer")]
    NoAnswer(#[source] Option<std::io::Error>),
    #[error("reading the answer failed")]
    Read(#[source] std::io::Error),
    #[error("connection closed before the answer was complete")]
    Incomplete,
    #[error("invalid answer")]
    Answer(#[source] AnswerError),
}

impl Failure {
    pub(crate) fn unsent(&self) -> bool {
        matches!(self, Self::Unsent(_))
    }

    /// Closed or reset by the mirror before any answer came.
    pub(crate) fn closed_without_answer(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        match self {
            Self::NoAnswer(None) => true,
            Self::NoAnswer(Some(io)) => {
                matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
            }
            _ => false,
        }
    }
}

/// What is wrong with an answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("malformed head: {0}")]
    Head(httparse::Error),
    #[error("head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("status code below 100")]
    Status,
    #[error("invalid or differing Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 answer")]
    TransferEncoding,
    #[error("malformed chunked body: {0}")]
    Chunk(&'static str),
}

/// How the answer is read: a complete one's status and whether its connection may carry
/// another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub reuse: bool,
}

/// An open connection to the mirror, with its read buffer and its place in the pool's
/// bound (given back when the connection is dropped, which closes it).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    _open: OwnedSemaphorePermit,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, open: OwnedSemaphorePermit) -> Self {
        Self {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            _open: open,
        }
    }

    /// Whether an idle connection can take a request: not closed by the mirror and
    /// nothing unasked-for arrived. Only asks the socket when the reactor saw it ready.
    pub(crate) fn is_usable(&mut self) -> bool {
        let mut probe = [0; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Writes `copy` and reads its answer to the end.
    pub(crate) async fn exchange(&mut self, copy: &Copy<'_>) -> Result<Answer, Failure> {
        self.write(copy).await?;
        let answer = self.read_answer(*copy.method == Method::HEAD).await?;
        if self.buf.len() > INITIAL_BUFFER {
            // Grown for a large head: not kept while the connection idles.
            self.buf = vec![0; INITIAL_BUFFER];
        }
        Ok(answer)
    }

    async fn write(&mut self, copy: &Copy<'_>) -> Result<(), Failure> {
        let block = &copy.head.block;
        let (before, after, host): (&[u8], &[u8], &[u8]) = match copy.head.host_at {
            Some(at) => (&block[..at], &block[at..], copy.host.as_bytes()),
            None => (block, &[], &[]),
        };
        let (host_name, host_end): (&[u8], &[u8]) = if copy.head.host_at.is_some() {
            (b"host: ", b"\r\n")
        } else {
            (&[], &[])
        };
        let mut slices = [
            IoSlice::new(copy.line),
            IoSlice::new(before),
            IoSlice::new(host_name),
            IoSlice::new(host),
            IoSlice::new(host_end),
            IoSlice::new(after),
            IoSlice::new(copy.body),
        ];
        let mut left: &mut [IoSlice<'_>] = &mut slices;
        let mut written = false;
        while !left.is_empty() {
            let n = match self.stream.write_vectored(left).await {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                other => other,
            };
            let n = n.map_err(|e| match written {
                false => Failure::Unsent(e),
                true => Failure::Write(e),
            })?;
            written = true;
            IoSlice::advance_slices(&mut left, n);
        }
        Ok(())
    }

    /// Reads one answer, discarding its body as it comes; the buffer starts empty (a
    /// connection with bytes left over is not reused).
    async fn read_answer(&mut self, head_request: bool) -> Result<Answer, Failure> {
        let mut framer = Framer::new(head_request);
        let (mut start, mut end) = (0, 0);
        let mut received = false;
        loop {
            let used = framer.advance(&self.buf[start..end]);
            start += used.map_err(Failure::Answer)?;
            if let Some(answer) = framer.answer() {
                let reuse = answer.reuse && start == end;
                return Ok(Answer { reuse, ..answer });
            }
            (start, end) = self.make_room(start, end)?;
            let n = self.stream.read(&mut self.buf[end..]).await;
            let n = n.map_err(|e| match received {
                false => Failure::NoAnswer(Some(e)),
                true => Failure::Read(e),
            })?;
            if n == 0 {
                return match (framer.at_eof(), received) {
                    (Some(answer), _) => Ok(answer),
                    (None, false) => Err(Failure::NoAnswer(None)),
                    (None, true) => Err(Failure::Incomplete),
                };
            }
            received = true;
            end += n;
        }
    }

    /// Free space after `end`: what is unread moves to the front, or the buffer grows
    /// (up to just past [`MAX_HEAD`], where the framer refuses the answer).
    fn make_room(&mut self, start: usize, end: usize) -> Result<(usize, usize), Failure> {
        if start == end {
            return Ok((0, 0));
        }
        if end < self.buf.len() {
            return Ok((start, end));
        }
        if start > 0 {
            self.buf.copy_within(start..end, 0);
            return Ok((0, end - start));
        }
        if self.buf.len() > MAX_HEAD {
            return Err(Failure::Answer(AnswerError::TooLarge));
        }
        let grown = (self.buf.len() * 2).min(MAX_HEAD + 1);
        self.buf.resize(grown, 0);
        Ok((start, end))
    }
}

/// Where the reading of an answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before the final answer's head (1xx interim answers are skipped).
    Head,
    /// This many body bytes left.
    Length(u64),
    /// A chunked body (RFC 9112 §7.1).
    Chunked(Chunk),
    /// The body ends when the connection does.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// Frames one answer from the bytes given to it, as RFC 9112 §6.3 says, keeping only
/// its status and whether its connection may be reused. Feeds on any split of the
/// bytes: [`Framer::advance`] says how many it used, the rest is given again with more.
#[derive(Debug)]
pub struct Framer {
    part: Part,
    head_request: bool,
    /// Chunk-extension bytes read so far.
    extensions: usize,
    status: StatusCode,
    reuse: bool,
}

impl Framer {
    /// For the answer to a request; `head_request`: a `HEAD`, whose answer has no body.
    pub fn new(head_request: bool) -> Self {
        Self {
            part: Part::Head,
            head_request,
            extensions: 0,
            status: StatusCode::OK,
            reuse: false,
        }
    }

    /// The answer, once it has ended.
    pub fn answer(&self) -> Option<Answer> {
        (self.part == Part::Done).then_some(Answer {
            status: self.status,
            reuse: self.reuse,
        })
    }

    /// The connection ended: the answer, if that ends it (a body read to the close).
    pub fn at_eof(&mut self) -> Option<Answer> {
        if self.part == Part::UntilClose {
            self.part = Part::Done;
        }
        self.answer()
    }

    /// Reads what it can of `buf`; returns how many bytes it used. Bytes it needs more
    /// of to go on (a partial head or chunk-size line) are left unused.
    ///
    /// # Errors
    /// The answer is malformed or its head too large.
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, AnswerError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let n = match self.part {
                Part::Head => self.head(rest)?,
                Part::Length(left) => {
                    let n = left.min(rest.len() as u64);
                    self.part = if n == left {
                        Part::Done
                    } else {
                        Part::Length(left - n)
                    };
                    // At most `rest.len()`, so it fits.
                    usize::try_from(n).unwrap_or(0)
                }
                Part::Chunked(chunk) => self.chunked(chunk, rest)?,
                Part::UntilClose => rest.len(),
                Part::Done => 0,
            };
            if n == 0 {
                return Ok(used);
            }
            used += n;
        }
    }

    /// Parses a head from the start of `rest`: the bytes used, 0 when incomplete.
    fn head(&mut self, rest: &[u8]) -> Result<usize, AnswerError> {
        if rest.is_empty() {
            return Ok(0);
        }
        let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            rest,
            &mut headers,
        );
        match parsed.map_err(AnswerError::Head)? {
            httparse::Status::Partial if rest.len() >= MAX_HEAD => Err(AnswerError::TooLarge),
            httparse::Status::Partial => Ok(0),
            httparse::Status::Complete(len) if len > MAX_HEAD => Err(AnswerError::TooLarge),
            httparse::Status::Complete(len) => {
                self.on_head(&response)?;
                Ok(len)
            }
        }
    }

    /// Takes a complete head: skips an interim answer, else sets how the body is framed.
    fn on_head(&mut self, response: &httparse::Response<'_, '_>) -> Result<(), AnswerError> {
        let code = response.code.unwrap_or(0);
        self.status = StatusCode::from_u16(code).map_err(|_| AnswerError::Status)?;
        if (100..200).contains(&code) && code != 101 {
            return Ok(()); // interim (RFC 9110 §15.2): the final answer follows
        }
        let http11 = response.version == Some(1);
        let fields = Fields::of(response.headers);
        // An HTTP/1.0 answer's connection is not kept (it would need `keep-alive`, and
        // hyper to speak HTTP/1.0 on it from then on).
        self.reuse = http11 && !fields.close;
        self.part = if code == 101 || code == 204 || code == 304 || self.head_request {
            // After `101` the connection belongs to another protocol.
            self.reuse &= code != 101;
            Part::Done
        } else if let Some(chunked) = fields.chunked {
            if !http11 {
                return Err(AnswerError::TransferEncoding);
            }
            // Framed two ways (RFC 9112 §6.3): read by Transfer-Encoding, not trusted
            // with another request.
            self.reuse &= !fields.length && chunked;
            match chunked {
                true => Part::Chunked(Chunk::Size),
                false => Part::UntilClose,
            }
        } else if fields.length {
            match content_length(response.headers.iter().filter_map(Fields::length_value)) {
                Ok(Some(0)) => Part::Done,
                Ok(Some(len)) => Part::Length(len),
                _ => return Err(AnswerError::ContentLength),
            }
        } else {
            self.reuse = false;
            Part::UntilClose
        };
        Ok(())
    }

    /// Reads what it can of a chunked body at `chunk`: the bytes used, 0 when it needs
    /// more.
    fn chunked(&mut self, chunk: Chunk, rest: &[u8]) -> Result<usize, AnswerError> {
        match chunk {
            Chunk::Size => {
                let lf = rest.iter().position(|&b| b == b'\n');
                // Whatever follows the size counts as extensions (a bound, not exact).
                let line = lf.unwrap_or(rest.len());
                if self.extensions + line.saturating_sub(16) >= MAX_EXTENSIONS {
                    return Err(AnswerError::Chunk("chunk extensions over the bound"));
                }
                let Some(lf) = lf else { return Ok(0) };
                let (size, extensions) = chunk_size(&rest[..lf])?;
                self.extensions += extensions;
                self.part = Part::Chunked(match size {
                    0 => Chunk::Trailers,
                    size => Chunk::Data(size),
                });
                Ok(lf + 1)
            }
            Chunk::Data(left) => {
                let n = left.min(rest.len() as u64);
                self.part = Part::Chunked(match n == left {
                    true => Chunk::DataEnd,
                    false => Chunk::Data(left - n),
                });
                Ok(usize::try_from(n).unwrap_or(0))
            }
            Chunk::DataEnd => match rest {
                [] | [b'\r'] => Ok(0),
                [b'\r', b'\n', ..] => {
                    self.part = Part::Chunked(Chunk::Size);
                    Ok(2)
                }
                _ => Err(AnswerError::Chunk("no CRLF after chunk data")),
            },
            Chunk::Trailers => self.trailers(rest),
        }
    }

    /// The trailer section and the blank line that ends the body.
    fn trailers(&mut self, rest: &[u8]) -> Result<usize, AnswerError> {
        let end = match rest {
            [] | [b'\r'] => return Ok(0),
            [b'\r', b'\n', ..] => 2,
            _ => match rest.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(at) if at + 4 > MAX_TRAILERS => {
                    return Err(AnswerError::Chunk("trailers over the bound"));
                }
                Some(at) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&rest[..at + 4], &mut fields) {
                        Ok(httparse::Status::Complete(_)) => at + 4,
                        _ => return Err(AnswerError::Chunk("malformed trailers")),
                    }
                }
                None if rest.len() >= MAX_TRAILERS => {
                    return Err(AnswerError::Chunk("trailers over the bound"));
                }
                None => return Ok(0),
            },
        };
        self.part = Part::Done;
        Ok(end)
    }
}

/// Frames `bytes` fed in pieces of the given sizes (cycled), as reads would give them,
/// keeping what the framer leaves unused, then the end of the connection: the answer
/// and how many bytes followed it, or what went wrong.
#[cfg(any(fuzzing, test))]
pub fn frame_in_pieces(
    bytes: &[u8],
    pieces: &[usize],
    head_request: bool,
) -> Result<(Answer, usize), String> {
    let mut framer = Framer::new(head_request);
    let mut pending = Vec::new();
    let mut fed = 0;
    let mut sizes = pieces.iter().copied().cycle();
    loop {
        let used = framer.advance(&pending).map_err(|e| e.to_string())?;
        pending.drain(..used);
        if let Some(answer) = framer.answer() {
            return Ok((answer, pending.len() + bytes.len() - fed));
        }
        if fed == bytes.len() {
            return framer
                .at_eof()
                .map(|a| (a, 0))
                .ok_or_else(|| "incomplete".into());
        }
        let n = sizes.next().unwrap_or(1).clamp(1, bytes.len() - fed);
        pending.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
    }
}

/// What an answer's header fields say about its framing and its connection.
struct Fields {
    /// With `Transfer-Encoding`: whether `chunked` is its final coding.
    chunked: Option<bool>,
    /// A `Content-Length` is present.
    length: bool,
    /// `Connection: close`.
    close: bool,
}

impl Fields {
    fn of(headers: &[httparse::Header<'_>]) -> Self {
        let mut fields = Self {
            chunked: None,
            length: false,
            close: false,
        };
        for field in headers {
            let name = field.name;
            if name.eq_ignore_ascii_case("transfer-encoding") {
                // The last line's last coding, as hyper looks at it.
                let last = field.value.rsplit(|&b| b == b',').next().unwrap_or(&[]);
                fields.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                fields.length = true;
            } else if name.eq_ignore_ascii_case("connection") {
                let tokens = field.value.split(|&b| b == b',');
                fields.close |= tokens
                    .into_iter()
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        fields
    }

    fn length_value<'h>(field: &'h httparse::Header<'_>) -> Option<&'h [u8]> {
        field
            .name
            .eq_ignore_ascii_case("content-length")
            .then_some(field.value)
    }
}

/// The length all `Content-Length` values agree on (each may be a comma-separated
/// list, RFC 9110 §8.6); `None` without any, an error when one is invalid or they differ.
fn content_length<'v, V>(values: impl IntoIterator<Item = &'v V>) -> Result<Option<u64>, ()>
where
    V: AsRef<[u8]> + ?Sized + 'v,
{
    let mut length = None;
    for value in values {
        for item in value.as_ref().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = item
                .iter()
                .try_fold(0u64, |n, &d| {
                    n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                })
                .ok_or(())?;
            if length.is_some_and(|l| l != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A chunk-size line without its LF: hex size, optional whitespace and extensions,
/// then CR (RFC 9112 §7.1.1). The size, and how many bytes of extensions it had.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), AnswerError> {
    let Some((b'\r', line)) = line.split_last() else {
        return Err(AnswerError::Chunk("no CR before LF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(AnswerError::Chunk("no chunk size"));
    }
    let mut size: u64 = 0;
    for &digit in &line[..digits] {
        let value = (digit as char).to_digit(16).unwrap_or(0);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(value)))
            .ok_or(AnswerError::Chunk("chunk size too large"))?;
    }
    let rest = trim_start(&line[digits..]);
    match rest.first() {
        None | Some(b';') if !rest.contains(&b'\r') => Ok((size, rest.len())),
        _ => Err(AnswerError::Chunk("invalid chunk size line")),
    }
}

/// Spaces and tabs only (`trim_ascii_start` would also skip a stray CR, which is an error).
fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[skip..]
}

#[cfg(test)]
mod tests;
