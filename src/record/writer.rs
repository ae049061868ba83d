//! The writing thread of a recording mirror (docs/record-replay.md, "Files"): copies
//! arrive as whole records on a channel (bounded by the mirror's queue permits, which
//! each copy holds until its record is written), are written in batches, and every
//! batch is flushed before its copies are told: `succeeded` means on disk. A slow disk
//! delays only this thread and the copies waiting for it, never a request.
//!
//! A `.gz` pattern writes one gzip member per batch, so after a crash a file is readable
//! up to its last flush. A file is full at `max_file_size` bytes on disk (a `.gz` file
//! may pass it by its last batch, whose compressed size is known only once written);
//! past `max_total_size` across every file of the pattern, records are dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::SystemTime;

use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::sync::oneshot;

use super::path::{Pattern, size_of};

/// Default `max_file_size`: 256 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 256 << 20;
/// Default `max_total_size`: 10 GiB.
pub const DEFAULT_MAX_TOTAL_SIZE: u64 = 10 << 30;

/// A recording mirror's size limits (its options, read at each copy).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_file_size: u64,
    pub max_total_size: u64,
}

/// What became of one copy's records.
#[derive(Debug)]
pub enum Outcome {
    /// Written and flushed.
    Written,
    /// Not written: `max_total_size` reached.
    Dropped,
    /// A write error (named).
    Failed(io::Error),
}

struct Job {
    records: Vec<u8>,
    limits: Limits,
    reply: oneshot::Sender<Outcome>,
}

/// The handle copies write through; the thread ends when the last handle is dropped,
/// after writing and flushing what it was given.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writing thread for `pattern` (an absolute path, maybe with fields).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(pattern: &str) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut state = State::new(Pattern::new(pattern));
        std::thread::Builder::new()
            .name("trafficmirror-record".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    state.write_batch(batch);
                }
            })?;
        Ok(Self { tx })
    }

    /// Writes one copy's records (whole records only) and waits until they are flushed.
    pub async fn write(&self, records: Vec<u8>, limits: Limits) -> Outcome {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Job {
                records,
                limits,
                reply,
            })
            .is_err()
        {
            return Outcome::Failed(io::Error::other("the recording thread has ended"));
        }
        answer
            .await
            .unwrap_or_else(|_| Outcome::Failed(io::Error::other("the recording thread ended")))
    }
}

/// The file being written.
struct Current {
    expanded: (String, String),
    index: u32,
    path: PathBuf,
    file: File,
    /// Its size on disk.
    len: u64,
}

struct State {
    pattern: Pattern,
    current: Option<Current>,
    /// Bytes on disk across the pattern's files; scanned when a file is opened.
    total: u64,
    /// Records accepted into this batch for the current file, not yet written.
    pending: Vec<u8>,
}

impl State {
    fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            current: None,
            total: 0,
            pending: Vec::new(),
        }
    }

    fn write_batch(&mut self, batch: Vec<Job>) {
        let mut outcomes: Vec<(oneshot::Sender<Outcome>, Result<bool, io::Error>)> =
            Vec::with_capacity(batch.len());
        // Copies whose records sit in `pending` until it is written.
        let mut waiting: Vec<oneshot::Sender<Outcome>> = Vec::new();
        for job in batch {
            match self.place(&job.records, job.limits) {
                Ok(true) => {
                    self.pending.extend_from_slice(&job.records);
                    waiting.push(job.reply);
                }
                Ok(false) => outcomes.push((job.reply, Ok(false))),
                Err(err) => {
                    // Rotating flushed (or lost, with this error) what was pending.
                    for reply in waiting.drain(..) {
                        outcomes.push((reply, Err(io::Error::new(err.kind(), err.to_string()))));
                    }
                    outcomes.push((job.reply, Err(err)));
                }
            }
        }
        let flushed = self.flush();
        for reply in waiting {
            let result = match &flushed {
                Ok(()) => Ok(true),
                Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
            };
            outcomes.push((reply, result));
        }
        for (reply, result) in outcomes {
            let outcome = match result {
                Ok(true) => Outcome::Written,
                Ok(false) => Outcome::Dropped,
                Err(err) => Outcome::Failed(err),
            };
            let _ = reply.send(outcome);
        }
    }

    /// Makes the current file the right one for a record of `len` bytes: `Ok(false)`
    /// when it would pass `max_total_size`.
    fn place(&mut self, records: &[u8], limits: Limits) -> io::Result<bool> {
        let expanded = self.pattern.expand(SystemTime::now());
        let gzip = self.pattern.gzip();
        let pending = self.pending.len() as u64;
        let needs_new = match &self.current {
            None => true,
            Some(current) if current.expanded != expanded => true,
            Some(current) => {
                let would_be = if gzip {
                    current.len
                } else {
                    current.len + pending + records.len() as u64
                };
                current.len + pending > 0 && would_be > limits.max_file_size
                    || gzip && current.len >= limits.max_file_size
            }
        };
        if needs_new {
            self.flush()?;
            self.open(expanded, limits)?;
        }
        // Uncompressed sizes for what is not yet written: an upper bound for gzip.
        let total = self.total + self.pending.len() as u64 + records.len() as u64;
        Ok(total <= limits.max_total_size)
    }

    /// Opens the next file: index 0 for a new expansion, else the one after the
    /// current; a file already full is passed over, one under the limit appended to.
    fn open(&mut self, expanded: (String, String), limits: Limits) -> io::Result<()> {
        let mut index = match &self.current {
            Some(current) if current.expanded == expanded => current.index + 1,
            _ => 0,
        };
        self.current = None;
        let mut path = Pattern::file(&expanded, index);
        while size_of(&path) >= limits.max_file_size {
            index += 1;
            path = Pattern::file(&expanded, index);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        // Old files count too, and files removed since the last look no longer do.
        self.total = self.pattern.existing().1.max(len);
        self.current = Some(Current {
            expanded,
            index,
            path,
            file,
            len,
        });
        Ok(())
    }

    /// Writes `pending` to the current file (one gzip member for `.gz`) and flushes it.
    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let Some(current) = self.current.as_mut() else {
            return Err(io::Error::other("no file open"));
        };
        let bytes = if self.pattern.gzip() {
            let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
            gz.write_all(&pending)?;
            gz.finish()?
        } else {
            pending
        };
        let result = current
            .file
            .write_all(&bytes)
            .and_then(|()| current.file.flush());
        match result {
            Ok(()) => {
                current.len += bytes.len() as u64;
                self.total += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Reopened (and measured) for the next batch.
                let path = current.path.display().to_string();
                self.current = None;
                Err(io::Error::new(err.kind(), format!("{path}: {err}")))
            }
        }
    }
}
