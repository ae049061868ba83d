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
                    state.write_batch(batch, SystemTime::now());
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
    /// When `total` was last looked up while past `max_total_size`.
    scanned: Option<SystemTime>,
}

/// How often a recording past `max_total_size` looks at its files again.
const RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

impl State {
    fn new(pattern: Pattern) -> Self {
        Self {
            pattern,
            current: None,
            total: 0,
            pending: Vec::new(),
            scanned: None,
        }
    }

    fn write_batch(&mut self, batch: Vec<Job>, now: SystemTime) {
        let mut outcomes: Vec<(oneshot::Sender<Outcome>, Result<bool, io::Error>)> =
            Vec::with_capacity(batch.len());
        // Copies whose records sit in `pending` until it is written.
        let mut waiting: Vec<oneshot::Sender<Outcome>> = Vec::new();
        for job in batch {
            match self.place(&job.records, job.limits, now) {
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
    fn place(&mut self, records: &[u8], limits: Limits, now: SystemTime) -> io::Result<bool> {
        let expanded = self.pattern.expand(now);
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
        let unwritten = self.pending.len() as u64 + records.len() as u64;
        let fits = |total: u64| total + unwritten <= limits.max_total_size;
        if fits(self.total) {
            return Ok(true);
        }
        // Dropping opens no file, so files deleted since the last look would never
        // free room: looked up again, at most once a second.
        if self
            .scanned
            .is_none_or(|at| now.duration_since(at).map_or(true, |d| d >= RESCAN))
        {
            self.scanned = Some(now);
            let gone = self.current.as_ref().is_some_and(|c| !c.path.exists());
            if gone && self.pending.is_empty() {
                // The current file was deleted too: what it took now, no one could
                // read. A new one is opened (which looks the total up).
                self.open(self.pattern.expand(now), limits)?;
            } else {
                self.total = self.pattern.existing().1;
            }
        }
        Ok(fits(self.total))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::format::{self, Reader};
    use std::io::Read;
    use std::time::{Duration, UNIX_EPOCH};

    fn record(i: usize, body_len: usize) -> Vec<u8> {
        format::encode_request(
            &format!("{i:024x}"),
            i as i128,
            &http::Method::POST,
            &format!("/r/{i}"),
            &http::HeaderMap::new(),
            &vec![b'x'; body_len],
            None,
        )
    }

    /// Writes `records` one batch each at `at`; the outcomes in order.
    fn write(
        state: &mut State,
        records: &[Vec<u8>],
        limits: Limits,
        at: SystemTime,
    ) -> Vec<Outcome> {
        let mut answers = Vec::new();
        for r in records {
            let (reply, rx) = oneshot::channel();
            state.write_batch(
                vec![Job {
                    records: r.clone(),
                    limits,
                    reply,
                }],
                at,
            );
            answers.push(rx);
        }
        answers
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect()
    }

    fn paths_of(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn ids_in(bytes: &[u8]) -> Vec<String> {
        let mut reader = Reader::new(bytes);
        std::iter::from_fn(|| reader.next_record())
            .map(|r| r.unwrap().id)
            .collect()
    }

    const BIG: Limits = Limits {
        max_file_size: DEFAULT_MAX_FILE_SIZE,
        max_total_size: DEFAULT_MAX_TOTAL_SIZE,
    };

    #[test]
    fn a_full_file_continues_in_the_next_numbered_one() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/rec.gor", dir.path().display());
        let mut state = State::new(Pattern::new(&pattern));
        let records: Vec<_> = (0..5).map(|i| record(i, 100)).collect();
        let one = records[0].len() as u64;
        // Two records fit in a file, a third does not.
        let limits = Limits {
            max_file_size: one * 2,
            ..BIG
        };
        let outcomes = write(&mut state, &records, limits, UNIX_EPOCH);
        assert!(
            outcomes.iter().all(|o| matches!(o, Outcome::Written)),
            "{outcomes:?}"
        );
        assert_eq!(paths_of(dir.path()), ["rec.gor", "rec_1.gor", "rec_2.gor"]);
        let first = std::fs::read(dir.path().join("rec.gor")).unwrap();
        assert_eq!(first.len() as u64, one * 2);
        assert_eq!(
            ids_in(&first),
            [format!("{:024x}", 0), format!("{:024x}", 1)]
        );
        // A new writer (a restart) passes over the full files and appends to the last.
        let mut again = State::new(Pattern::new(&pattern));
        write(&mut again, &records[..1], limits, UNIX_EPOCH);
        assert_eq!(paths_of(dir.path()), ["rec.gor", "rec_1.gor", "rec_2.gor"]);
        let last = std::fs::read(dir.path().join("rec_2.gor")).unwrap();
        assert_eq!(ids_in(&last).len(), 2);
    }

    #[test]
    fn a_changed_time_field_starts_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/%Y/rec-%H%M%S.gor", dir.path().display());
        let mut state = State::new(Pattern::new(&pattern));
        let at = UNIX_EPOCH + Duration::from_secs(1_765_078_155); // 2025-12-07T03:29:15Z
        write(&mut state, &[record(0, 1), record(1, 1)], BIG, at);
        write(
            &mut state,
            &[record(2, 1)],
            BIG,
            at + Duration::from_secs(1),
        );
        assert_eq!(
            paths_of(&dir.path().join("2025")),
            ["rec-032915.gor", "rec-032916.gor"]
        );
        let second = std::fs::read(dir.path().join("2025/rec-032916.gor")).unwrap();
        assert_eq!(ids_in(&second), [format!("{:024x}", 2)]);
    }

    #[test]
    fn past_max_total_size_copies_are_dropped_old_files_included() {
        let dir = tempfile::tempdir().unwrap();
        let one = record(0, 100).len() as u64;
        // An old file of the pattern, from an earlier run, takes most of the budget.
        std::fs::write(
            dir.path().join("rec-200001.gor"),
            vec![b'o'; one as usize * 2],
        )
        .unwrap();
        let pattern = format!("{}/rec-%Y%m.gor", dir.path().display());
        let mut state = State::new(Pattern::new(&pattern));
        let limits = Limits {
            max_total_size: one * 3,
            ..BIG
        };
        let records: Vec<_> = (0..3).map(|i| record(i, 100)).collect();
        let outcomes = write(&mut state, &records, limits, UNIX_EPOCH);
        assert!(matches!(outcomes[0], Outcome::Written), "{outcomes:?}");
        assert!(matches!(outcomes[1], Outcome::Dropped), "{outcomes:?}");
        assert!(matches!(outcomes[2], Outcome::Dropped), "{outcomes:?}");
        let written = std::fs::read(dir.path().join("rec-197001.gor")).unwrap();
        assert_eq!(written.len() as u64, one);
    }

    #[test]
    fn a_gzip_file_is_readable_to_its_last_flush_when_never_closed() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/rec.gor.gz", dir.path().display());
        let mut state = State::new(Pattern::new(&pattern));
        let records: Vec<_> = (0..3).map(|i| record(i, 50)).collect();
        write(&mut state, &records, BIG, UNIX_EPOCH);
        // The writer is still open (as at a crash): what is on disk now is all there is.
        let on_disk = std::fs::read(dir.path().join("rec.gor.gz")).unwrap();
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(&on_disk[..])
            .read_to_end(&mut text)
            .unwrap();
        assert_eq!(ids_in(&text).len(), 3);
        // A torn last member (a crash mid-write) loses only that member.
        let mut torn = on_disk.clone();
        torn.extend_from_slice(&on_disk[..on_disk.len() / 3 / 2]);
        let mut text = Vec::new();
        let _ = flate2::read::MultiGzDecoder::new(&torn[..]).read_to_end(&mut text);
        assert_eq!(ids_in(&text).len(), 3);
        drop(state);
    }

    #[test]
    fn a_write_error_is_a_failure_named_by_its_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        std::fs::create_dir(dir.path().join("rec.gor")).unwrap();
        let pattern = format!("{}/rec.gor", dir.path().display());
        let mut state = State::new(Pattern::new(&pattern));
        let outcomes = write(&mut state, &[record(0, 1)], BIG, UNIX_EPOCH);
        assert!(matches!(outcomes[0], Outcome::Failed(_)), "{outcomes:?}");
    }
}
