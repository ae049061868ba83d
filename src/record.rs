//! Recording mirrors (docs/record-replay.md): a mirror whose URL is `file:///PATH`
//! writes its copies to disk in GoReplay's file format instead of sending them. Its
//! options select and rewrite copies as for any mirror (sampling, filters,
//! `remove_header` to redact); [`Sink`] turns a copy into a record and hands it to the
//! mirror's writing thread ([`writer`]).

pub mod format;
pub mod path;
pub mod writer;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::debug;

use http::uri::PathAndQuery;

use crate::mirror::compare::capture::{self, MainAnswerRx};
use crate::mirror::compare::verdict::CapturedBody;
use crate::mirror::options::MirrorOptions;
use crate::mirror::{MirrorRequest, Plan};
use writer::{DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_TOTAL_SIZE, Limits, Outcome, Writer};

/// Why a copy was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// `max_total_size` reached: the copy is `dropped`, not `failed`.
    #[error("max_total_size reached")]
    Full,
    #[error("cannot write the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start the recording thread: {0}")]
    NoThread(String),
}

/// True when `err` is a copy dropped because the recording is full.
pub fn is_full(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(err.downcast_ref::<RecordError>(), Some(RecordError::Full))
}

/// The recording side of a `file://` mirror.
#[derive(Debug)]
pub struct Sink {
    writer: Result<Writer, String>,
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns(at: SystemTime) -> i128 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

impl Sink {
    /// Starts the writing thread for a `file://` pattern.
    pub fn start(pattern: &str) -> Self {
        Self {
            writer: Writer::start(pattern).map_err(|err| err.to_string()),
        }
    }

    /// Records one copy, as its mirror's options rewrite it; returns once it is on disk.
    ///
    /// # Errors
    /// [`RecordError::Full`] past `max_total_size`, else the write error.
    pub async fn record(
        &self,
        request: &MirrorRequest,
        plan: &Plan,
        taken: SystemTime,
        answer_wait: Duration,
    ) -> Result<(), RecordError> {
        let writer = self
            .writer
            .as_ref()
            .map_err(|e| RecordError::NoThread(e.clone()))?;
        let options = &plan.options;
        let (_, records) = encode_copy(request, plan, taken, answer_wait).await;
        let limits = Limits {
            max_file_size: options.max_file_size.unwrap_or(DEFAULT_MAX_FILE_SIZE),
            max_total_size: options.max_total_size.unwrap_or(DEFAULT_MAX_TOTAL_SIZE),
        };
        match writer.write(records, limits).await {
            Outcome::Written => Ok(()),
            Outcome::Dropped => Err(RecordError::Full),
            Outcome::Failed(err) => Err(RecordError::Io(err)),
        }
    }
}

/// One copy as its record(s), its mirror's options rewriting it: the request, and with
/// `record_answers=true` main's answer when it completes within `answer_wait`. Returns
/// the record id (new, unique across instances) and the bytes.
pub async fn encode_copy(
    request: &MirrorRequest,
    plan: &Plan,
    taken: SystemTime,
    answer_wait: Duration,
) -> (String, Vec<u8>) {
    let options = &plan.options;
    let headers = record_headers(request, options);
    let path = request
        .path_and_query
        .as_ref()
        .map_or("/", PathAndQuery::as_str);
    let id = format::new_id();
    let timestamp = unix_ns(taken);
    let mut records = format::encode_request(
        &id,
        timestamp,
        &request.method,
        path,
        &headers,
        &request.body,
        None,
    );
    if let (true, Some(rx)) = (options.record_answers, &request.main_answer) {
        append_main_answer(&mut records, &id, timestamp, rx.clone(), answer_wait).await;
    }
    (id, records)
}

/// The headers a copy is recorded with: its mirror's rewrites applied, and a `Host`.
fn record_headers(request: &MirrorRequest, options: &MirrorOptions) -> http::HeaderMap {
    let mut headers = request.headers.clone();
    if options.has_rewrites() {
        options.apply_rewrites(&mut headers);
    }
    // HTTP/1.1 needs a `Host` (RFC 9112 §3.2): without `--preserve-host` or `host=`
    // the copy's is an empty slot, so the record gets the client's, which this
    // proxy put last in `X-Forwarded-Host`.
    if headers
        .get(http::header::HOST)
        .is_none_or(http::HeaderValue::is_empty)
    {
        match client_host(&headers) {
            Some(host) => {
                headers.insert(http::header::HOST, host);
            }
            None => {
                headers.remove(http::header::HOST);
            }
        }
    }
    headers
}

/// The client's host: the last one in `X-Forwarded-Host`.
fn client_host(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    headers
        .get_all("x-forwarded-host")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| http::HeaderValue::from_str(v.trim()).ok())
}

/// Adds main's answer to the copy's records when it completes in time, whole.
async fn append_main_answer(
    records: &mut Vec<u8>,
    id: &str,
    timestamp: i128,
    rx: MainAnswerRx,
    answer_wait: Duration,
) {
    // Both records are written together, whole; main's answer is waited for
    // within the copy's time, leaving a share of it for the disk.
    let wait = answer_wait.mul_f64(0.75);
    match capture::main_answer(rx, wait).await {
        Some(main) => match &main.answer.body {
            CapturedBody::Whole(body) => records.extend(format::encode_response(
                id,
                timestamp,
                i128::try_from(main.latency.as_nanos()).unwrap_or(i128::MAX),
                main.answer.status,
                &main.answer.headers,
                body,
                // A gRPC answer's status is in its trailers.
                Some(&main.answer.trailers),
            )),
            CapturedBody::Digest { len, .. } => {
                debug!(
                    len,
                    "main's answer is longer than --max-compare-size: not recorded"
                );
            }
        },
        None => debug!("main's answer did not complete: only the request is recorded"),
    }
}
