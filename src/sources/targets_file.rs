//! The `--targets-file`: mirrors declared by the operator, one mirror line per line,
//! followed while the program runs.
//!
//! [`parse`] and [`load`] read the file once (at start-up the caller can refuse a bad
//! file). [`watch`] follows it: every `interval` it reads the file through its path and,
//! when the content changed and parses into a different set of mirrors, hands the new
//! set to its callback. A file with a bad line is rejected whole and logged with the
//! line number; an unreadable or missing file is logged once per change of state. In
//! both cases the previous set stays.
//!
//! # Why a version must settle first
//! A file rewritten in place (`echo … > file`, `cat > file`, editors that truncate then
//! write) is empty, then partly written, for a moment. Read then, it would remove every
//! mirror (counters, health and queue lost) or add one at a cut-off address. So a read
//! (its content and modification time, or its error) is acted on only once [`SETTLE`]
//! has passed without either changing: a writer that rewrites the file every 100 ms
//! never gets a half-written version applied, and the set follows within
//! `SETTLE + 2 × interval` of the last write.
//!
//! # Why polling the content, not file-system events
//! Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and
//! atomically swapping the `..data` symlink the visible file points through. inotify
//! (and so the `notify` crate) watches inodes: a watch on the file keeps watching the
//! old, now unlinked, target and never fires again, and a watch on the directory sees
//! the swap as events on `..data` that must be told apart from the rest. Editors that
//! write a new file and rename it over the old one defeat a file watch the same way.
//! Reading a small file through its path every second or two costs a few microseconds
//! and follows every one of these cases, a plain rewrite included; comparing the bytes
//! also catches changes that keep the size and modification time. Reconciling is the
//! caller's job: this module only reports the new set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{BadLine, FileError, MAX_FILE_BYTES, parse_lines, read_file_limited, read_limited};
use crate::mirror::options::MirrorLine;

const KIND: &str = "targets file";

/// How long a read of the file must stay the same before it is acted on (see the
/// module doc).
pub const SETTLE: Duration = Duration::from_millis(500);

/// Parses the text of a targets file: one mirror line per line, `#` comments (whole
/// line or after whitespace), blank lines ignored.
///
/// # Errors
/// The first bad line or repeated URL, with its 1-based line number.
pub fn parse(text: &str) -> Result<Vec<MirrorLine>, BadLine> {
    parse_lines(text)
}

/// Reads and parses the targets file.
///
/// # Errors
/// The file cannot be read (missing included), is not UTF-8, is larger than
/// [`MAX_FILE_BYTES`], or has a bad line; each names the file.
pub fn load(path: &Path) -> Result<Vec<MirrorLine>, FileError> {
    let text = read(path)?;
    parse(&text).map_err(|source| FileError::Parse {
        kind: KIND,
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, FileError> {
    read_limited(path, MAX_FILE_BYTES).map_err(|source| FileError::Read {
        kind: KIND,
        path: path.to_owned(),
        source,
    })
}

/// One read of the file as [`watch`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    text: String,
    /// The modification time of the file read (through the open file, so of the same
    /// file as the text): a rewrite with the same content still changes it.
    modified: Option<SystemTime>,
}

fn read_version(path: &Path) -> Result<Version, FileError> {
    let read = || {
        let file = std::fs::File::open(path)?;
        let modified = file.metadata()?.modified().ok();
        let text = read_file_limited(file, MAX_FILE_BYTES)?;
        Ok(Version { text, modified })
    };
    read().map_err(|source| FileError::Read {
        kind: KIND,
        path: path.to_owned(),
        source,
    })
}

/// Follows the targets file until `stop` is cancelled (see the module doc). The first
/// settled read is reported, so the caller can start the watch without loading the
/// file first; after that `on_change` is called only with a set that differs from the
/// last one reported. `valid` tells whether the file as last read is
/// in force (false while it is rejected or unreadable), for the metrics.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    mut on_change: impl FnMut(Vec<MirrorLine>) + Send + 'static,
    valid: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut watcher = Watcher::new(path, SETTLE);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let path = watcher.path.clone();
        // The read is blocking file I/O: keep it off the async worker.
        let Ok(result) = tokio::task::spawn_blocking(move || read_version(&path)).await else {
            continue;
        };
        let report = watcher.observe(result, Instant::now());
        // Before the change is applied: whoever sees the new set sees the gauge too.
        valid.store(watcher.valid, Ordering::Relaxed);
        if let Some(lines) = report {
            on_change(lines);
        }
    }
}

/// What one read saw: the file, or the error.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    File(Version),
    Error(String),
}

/// The state of a watch between two reads, and the decisions taken on each read.
#[derive(Debug)]
struct Watcher {
    path: PathBuf,
    settle: Duration,
    /// What the reads have seen, unchanged, since when.
    pending: Option<(Seen, Instant)>,
    /// The text last acted on, to skip parsing an unchanged file.
    last_text: Option<String>,
    /// The set last reported; `None` before the first report.
    reported: Option<Vec<MirrorLine>>,
    /// The read error last logged, so a lasting error is logged once.
    read_error: Option<String>,
    /// The file as last read is in force: it was read and accepted.
    valid: bool,
}

impl Watcher {
    fn new(path: PathBuf, settle: Duration) -> Self {
        Self {
            path,
            settle,
            pending: None,
            last_text: None,
            reported: None,
            read_error: None,
            valid: true,
        }
    }

    /// Takes one read's result, made at `now`; returns the set to report, if any. A
    /// read is acted on only when the reads have seen the same for `settle`. Logs
    /// rejections.
    fn observe(
        &mut self,
        read: Result<Version, FileError>,
        now: Instant,
    ) -> Option<Vec<MirrorLine>> {
        let seen = match read {
            Ok(version) => Seen::File(version),
            Err(err) => Seen::Error(err.to_string()),
        };
        match &self.pending {
            Some((last, since)) if *last == seen => {
                if now.saturating_duration_since(*since) < self.settle {
                    return None;
                }
            }
            _ => {
                self.pending = Some((seen, now));
                return None;
            }
        }
        self.act(seen)
    }

    /// Acts on a settled read.
    fn act(&mut self, seen: Seen) -> Option<Vec<MirrorLine>> {
        let text = match seen {
            Seen::File(version) => version.text,
            Seen::Error(shown) => {
                if self.read_error.as_deref() != Some(shown.as_str()) {
                    warn!(error = %shown, "targets file unreadable; keeping the current mirrors");
                    self.read_error = Some(shown);
                }
                // Read again in full once it is back, even if unchanged.
                self.last_text = None;
                self.valid = false;
                return None;
            }
        };
        if self.read_error.take().is_some() {
            info!(file = %self.path.display(), "targets file readable again");
        }
        if self.last_text.as_deref() == Some(text.as_str()) {
            return None;
        }
        let parsed = parse(&text);
        self.last_text = Some(text);
        self.valid = parsed.is_ok();
        match parsed {
            Ok(lines) if self.reported.as_ref() == Some(&lines) => None,
            Ok(lines) => {
                self.reported = Some(lines.clone());
                Some(lines)
            }
            Err(bad) => {
                warn!(
                    file = %self.path.display(),
                    line = bad.line,
                    error = %bad.reason,
                    "targets file rejected; keeping the current mirrors"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, io};

    use proptest::prelude::*;
    use tokio::sync::mpsc;

    use super::*;
    use crate::sources::BadLineReason;

    const WAIT: Duration = Duration::from_secs(5);
    const POLL: Duration = Duration::from_millis(50);

    fn urls(lines: &[MirrorLine]) -> Vec<String> {
        lines.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn parse_reads_lines_comments_and_options() {
        let lines = parse(
            "# shadow targets\n\
             http://staging:8080 percent=5 method=GET compare=true  # the usual\n\
             \n\
             https://canary/api   # whole API\n",
        )
        .unwrap();
        assert_eq!(
            urls(&lines),
            [
                "http://staging:8080 percent=5 method=GET compare=true",
                "https://canary/api"
            ]
        );
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(parse("# nothing\n\n").unwrap(), []);
    }

    #[test]
    fn every_error_carries_its_line_number() {
        let cases = [
            ("http://a:1\nnot-a-url\n", 2),
            ("\n\nhttp://a:1 percent=0\n", 3),
            ("http://a:1 bogus=1\n", 1),
            ("http://a:1\n# c\nhttp://a:1 compare\n", 3),
            ("http://a:1 percent=5 percent=6", 1),
        ];
        for (text, line) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("line {line}: ")),
                "{err}"
            );
        }
        assert!(matches!(
            parse("http://a:1\nhttp://A:1/\n").unwrap_err().reason,
            BadLineReason::Duplicate { first_line: 1, .. }
        ));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets");
        let err = load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read targets file {}: ", path.display())),
            "{err}"
        );
        fs::write(&path, "http://a:1\nhttp://b:1 rate=0\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("targets file {}: line 2: ", path.display())),
            "{err}"
        );
        fs::write(&path, "http://a:1\n").unwrap();
        assert_eq!(urls(&load(&path).unwrap()), ["http://a:1"]);
    }

    /// A read of `text`, modified at `at` seconds.
    fn at(text: &str, at: u64) -> Result<Version, FileError> {
        Ok(Version {
            text: text.to_owned(),
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(at)),
        })
    }

    fn missing() -> Result<Version, FileError> {
        Err(FileError::Read {
            kind: KIND,
            path: PathBuf::from("targets"),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    }

    /// A watcher and a clock for it.
    struct Clocked {
        w: Watcher,
        now: Instant,
    }

    impl Clocked {
        fn new() -> Self {
            Self {
                w: Watcher::new(PathBuf::from("targets"), SETTLE),
                now: Instant::now(),
            }
        }

        /// One read, `after` the previous one.
        fn read(
            &mut self,
            after: Duration,
            read: Result<Version, FileError>,
        ) -> Option<Vec<MirrorLine>> {
            self.now += after;
            self.w.observe(read, self.now)
        }

        /// The same read twice, `SETTLE` apart: what a file left alone gives.
        fn settled(
            &mut self,
            read: impl Fn() -> Result<Version, FileError>,
        ) -> Option<Vec<MirrorLine>> {
            assert_eq!(
                self.read(Duration::from_millis(1), read()),
                None,
                "acted before settling"
            );
            self.read(SETTLE, read())
        }
    }

    #[test]
    fn watcher_reports_only_new_valid_sets() {
        let mut c = Clocked::new();
        // The first good read is reported, even when empty.
        assert_eq!(c.settled(|| at("", 1)), Some(vec![]));
        assert_eq!(c.settled(|| at("", 1)), None);
        let a = c.settled(|| at("http://a:1\n", 2)).unwrap();
        assert_eq!(urls(&a), ["http://a:1"]);
        // A comment changes the text, not the set.
        assert_eq!(c.settled(|| at("# hi\nhttp://a:1\n", 3)), None);
        assert!(c.w.valid);
        // A bad file is rejected; the previous set stays (nothing reported).
        assert_eq!(
            c.settled(|| at("http://a:1\nhttp://b:1 percent=x\n", 4)),
            None
        );
        assert!(!c.w.valid);
        assert_eq!(
            c.settled(|| at("http://a:1\nhttp://b:1 percent=x\n", 4)),
            None
        );
        assert!(!c.w.valid, "still the rejected version");
        // Fixing it back to the same set reports nothing; a new set is reported.
        assert_eq!(c.settled(|| at("http://a:1\n", 5)), None);
        assert!(c.w.valid);
        let b = c
            .settled(|| at("http://a:1\nhttp://b:1 percent=5\n", 6))
            .unwrap();
        assert_eq!(urls(&b), ["http://a:1", "http://b:1 percent=5"]);
        // Missing: nothing reported, logged once; back with the same set: nothing.
        assert_eq!(c.settled(missing), None);
        assert!(c.w.read_error.is_some());
        assert!(!c.w.valid);
        assert_eq!(c.settled(missing), None);
        assert_eq!(
            c.settled(|| at("http://a:1\nhttp://b:1 percent=5\n", 6)),
            None
        );
        assert!(c.w.read_error.is_none());
        assert!(c.w.valid);
        // Emptied on purpose: reported as the empty set.
        assert_eq!(c.settled(|| at("# none\n", 7)), Some(vec![]));
    }

    #[test]
    fn a_version_is_acted_on_only_once_unchanged_for_the_settle_time() {
        let ms = Duration::from_millis;
        let mut c = Clocked::new();
        let full = "http://127.0.0.1:19001\nhttp://127.0.0.1:19002\n";
        assert_eq!(c.settled(|| at(full, 1)).unwrap().len(), 2);
        // Rewritten in place every 100 ms, read every 50 ms: empty, cut off, whole, each
        // with a new modification time. Nothing is acted on, however long it goes on.
        let cut = "http://127.0.0.1:19001\nhttp://127.0.0.1:190";
        let mut mtime = 10;
        for _ in 0..40 {
            for text in ["", cut, full] {
                mtime += 1;
                assert_eq!(c.read(ms(50), at(text, mtime)), None, "{text:?}");
            }
            assert_eq!(c.read(ms(50), at(full, mtime)), None);
        }
        assert!(c.w.valid);
        // The same content rewritten (a new modification time) starts the wait again.
        let new = "http://127.0.0.1:19003\n";
        assert_eq!(c.read(ms(50), at(new, 100)), None);
        assert_eq!(c.read(SETTLE - ms(100), at(new, 101)), None);
        assert_eq!(c.read(SETTLE - ms(100), at(new, 101)), None);
        assert_eq!(c.read(ms(100), at(new, 101)).unwrap().len(), 1);
        // A file missing for a moment (deleted, then written again) is not acted on:
        // no warning, the gauge stays.
        assert_eq!(c.read(ms(50), missing()), None);
        assert_eq!(c.read(SETTLE - ms(100), missing()), None);
        assert!(c.w.valid && c.w.read_error.is_none());
        assert_eq!(c.read(ms(50), at(new, 102)), None);
        // Missing for longer is.
        assert_eq!(c.settled(missing), None);
        assert!(!c.w.valid);
    }

    /// Starts a watch whose reports arrive on the returned channel.
    fn start(path: PathBuf) -> (mpsc::UnboundedReceiver<Vec<String>>, CancellationToken) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(watch(
            path,
            POLL,
            move |lines| {
                let _ = tx.send(urls(&lines));
            },
            Arc::new(AtomicBool::new(true)),
            stop.clone(),
        ));
        (rx, stop)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Vec<String>>) -> Vec<String> {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a report within the bounded wait")
            .expect("the watch is running")
    }

    #[tokio::test]
    async fn watch_follows_a_rewrite_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets");
        fs::write(&path, "http://a:1\n").unwrap();
        let (mut rx, stop) = start(path.clone());
        assert_eq!(next(&mut rx).await, ["http://a:1"]);
        fs::write(&path, "http://a:1 percent=5\nhttp://b:2\n").unwrap();
        assert_eq!(next(&mut rx).await, ["http://a:1 percent=5", "http://b:2"]);
        stop.cancel();
    }

    #[tokio::test]
    async fn watch_keeps_the_previous_set_on_a_bad_file_and_takes_the_next_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("targets");
        fs::write(&path, "http://a:1\n").unwrap();
        let (mut rx, stop) = start(path.clone());
        assert_eq!(next(&mut rx).await, ["http://a:1"]);
        fs::write(&path, "http://a:1\nhttp://b:2 method=\n").unwrap();
        // Let the watch see the bad file (several polls) before fixing it; whatever the
        // timing, the next report must be the fixed file, never the bad one.
        tokio::time::sleep(SETTLE + POLL * 2).await;
        fs::remove_file(&path).unwrap();
        tokio::time::sleep(SETTLE + POLL * 2).await;
        fs::write(&path, "http://c:3\n").unwrap();
        assert_eq!(next(&mut rx).await, ["http://c:3"]);
        assert!(rx.try_recv().is_err());
        stop.cancel();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn watch_follows_a_configmap_style_symlink_swap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // The layout Kubernetes mounts: targets -> ..data/targets, ..data -> ..v1.
        fs::create_dir(root.join("..v1")).unwrap();
        fs::write(root.join("..v1/targets"), "http://a:1\n").unwrap();
        symlink("..v1", root.join("..data")).unwrap();
        symlink("..data/targets", root.join("targets")).unwrap();
        let (mut rx, stop) = start(root.join("targets"));
        assert_eq!(next(&mut rx).await, ["http://a:1"]);

        // An update: a new directory, a new link, renamed over `..data` atomically,
        // then the old directory removed.
        fs::create_dir(root.join("..v2")).unwrap();
        fs::write(root.join("..v2/targets"), "http://b:2 compare\n").unwrap();
        symlink("..v2", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        fs::remove_dir_all(root.join("..v1")).unwrap();
        assert_eq!(next(&mut rx).await, ["http://b:2 compare=true"]);

        // And once more, to show the watch did not stay on the first target.
        fs::create_dir(root.join("..v3")).unwrap();
        fs::write(root.join("..v3/targets"), "").unwrap();
        symlink("..v3", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert_eq!(next(&mut rx).await, Vec::<String>::new());
        stop.cancel();
    }

    #[tokio::test]
    async fn watch_ends_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            dir.path().join("targets"),
            POLL,
            |_| {},
            Arc::new(AtomicBool::new(true)),
            stop.clone(),
        ));
        stop.cancel();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "(.{0,40}\n){0,6}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_valid_lines(
            lines in proptest::collection::vec("(#|http://[a-z]{1,3}:[0-9]{1,5}|https?://)?( [a-z_]{1,14}(=[^ \n]{0,10})?){0,3}( #.{0,5})?", 0..6)
        ) {
            let text = lines.join("\n");
            if let Err(err) = parse(&text) {
                prop_assert!(err.line >= 1 && err.line <= lines.len(), "{}", err);
            }
        }
    }
}
