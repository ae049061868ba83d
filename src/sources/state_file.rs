//! The `--state-file`: mirrors added through the admin endpoint, with their options,
//! saved on every change and restored at start (docs/operations.md, "State file and targets file").
//!
//! The file is a `#` comment line followed by one mirror line per mirror. [`save`]
//! writes a temporary file beside it, syncs it, renames it over the old one and syncs
//! the directory, so a crash leaves the old file or the new one, never half of one. A
//! path that is a symbolic link is followed: the link's target is replaced, the link
//! stays (state kept on a mounted volume through a link). [`load`] treats a missing
//! file as no mirrors, and an unreadable or corrupt one as an error: the caller must
//! refuse to start rather than silently forget mirrors. Both refuse a file larger than
//! [`MAX_FILE_BYTES`], so whatever is saved can be loaded again.
//!
//! [`StateFile`] is the file of a running process: opened at start-up (the directory
//! must exist, and an advisory lock keeps a second instance off the same file), it
//! remembers whether the mirrors as they are now have been written, and saves again
//! until they have. It does not decide which mirrors belong in the file: [`Saver`]
//! does, saving the registry's admin mirrors after every change, whoever made it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{FileError, MAX_FILE_BYTES, parse_lines, read_limited};
use crate::mirror::options::MirrorLine;
use crate::registry::Registry;

const KIND: &str = "state file";

/// The first line of every saved file.
const HEADER: &str =
    "# trafficmirror state file: mirrors added at run time, rewritten on every change\n";

/// Symbolic links followed from the given path before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Reads the saved mirrors. A missing file holds none.
///
/// # Errors
/// The file exists but cannot be read, is not UTF-8, is larger than
/// [`MAX_FILE_BYTES`], or has a bad line (named with its number).
pub fn load(path: &Path) -> Result<Vec<MirrorLine>, FileError> {
    let text = match read_limited(path, MAX_FILE_BYTES) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FileError::Read {
                kind: KIND,
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_lines(&text).map_err(|source| FileError::Parse {
        kind: KIND,
        path: path.to_owned(),
        source,
    })
}

/// The file's content for `lines`.
fn render(lines: &[MirrorLine]) -> String {
    let mut text = String::from(HEADER);
    for line in lines {
        text.push_str(&line.saved());
        text.push('\n');
    }
    text
}

/// Whether a file holding `lines` stays within [`MAX_FILE_BYTES`], the size [`load`]
/// accepts.
pub fn fits(lines: &[MirrorLine]) -> bool {
    let mut size = HEADER.len() as u64;
    for line in lines {
        size += line.saved().len() as u64 + 1;
        if size > MAX_FILE_BYTES {
            return false;
        }
    }
    true
}

/// Why a save did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {size} bytes would pass the limit of {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf, size: usize },
}

/// Replaces the file with `lines`, atomically (see the module doc). When `path` is a
/// symbolic link, its target is replaced and the link kept. A new file is created
/// readable by its owner only, as options may carry credentials
/// (`set_header=Authorization:...`); an existing file's permissions are kept.
///
/// # Errors
/// The content would be larger than [`MAX_FILE_BYTES`] (nothing is written), or any
/// failure to write, sync or rename; the temporary file is removed and the old file is
/// left as it was.
pub fn save(path: &Path, lines: &[MirrorLine]) -> Result<(), SaveError> {
    let text = render(lines);
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(SaveError::TooLarge {
            path: path.to_owned(),
            size: text.len(),
        });
    }
    write_through(path, text.as_bytes()).map_err(|source| SaveError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to the file `path` leads to, through a temporary file in the same
/// directory renamed over it.
fn write_through(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let target = resolve(path)?;
    let (dir, name) = split(&target)?;
    let (mut file, temp) = create_temp(dir, &name.to_string_lossy())?;
    if let Ok(meta) = fs::metadata(&target) {
        file.set_permissions(meta.permissions())?;
    }
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp.0, &target)?;
    temp.disarm();
    sync_dir(dir)
}

/// The path a chain of symbolic links at `path` ends at; `path` itself when it is not a
/// link. The end need not exist (a link to a file not written yet). Only the last
/// component is followed: a rename through linked directories lands in their target.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_owned();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                // A relative target is relative to the link's directory; joining an
                // absolute one gives it unchanged.
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            // Nothing there (or a file where a directory should be, which the caller
            // reports): not a link.
            Err(err)
                if !matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(err);
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("more than {MAX_LINKS} symbolic links"),
    ))
}

/// The directory of `path` (`.` for a bare name) and its file name.
fn split(path: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    Ok((dir, name))
}

/// The `--state-file` of the running process (see the module doc). Shared between the
/// admin endpoint, which saves after each change, and the tasks that retry.
pub struct StateFile {
    /// As given on the command line, for messages and for each save.
    path: PathBuf,
    /// The lock file beside the file, locked for as long as this lives.
    _lock: File,
    /// Changes to the saved mirrors so far (see [`StateFile::changed`]).
    changes: AtomicU64,
    /// The value of `changes` that the file on disk holds.
    written: AtomicU64,
    /// One save at a time, each with the set as it is when its turn comes; holds the
    /// error last logged, so a lasting failure is logged once, not at every retry.
    turn: tokio::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .field("saved", &self.saved())
            .finish_non_exhaustive()
    }
}

impl StateFile {
    /// Opens the file at start-up: checks that its directory exists, takes the lock
    /// (`NAME.lock` beside the file, held until this is dropped), then reads the saved
    /// mirrors as [`load`] does.
    ///
    /// # Errors
    /// The directory does not exist, the lock cannot be taken (another process holds
    /// it, or the lock file cannot be created), or [`load`] fails.
    pub fn open(path: &Path) -> Result<(Self, Vec<MirrorLine>), FileError> {
        let read_error = |source| FileError::Read {
            kind: KIND,
            path: path.to_owned(),
            source,
        };
        let target = resolve(path).map_err(read_error)?;
        let (dir, name) = split(&target).map_err(read_error)?;
        let missing = |reason| FileError::NoDirectory {
            kind: KIND,
            path: path.to_owned(),
            dir: dir.to_owned(),
            reason,
        };
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(missing("is not a directory")),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(missing("does not exist"));
            }
            Err(err) => return Err(read_error(err)),
        }
        let lock_path = dir.join(format!("{}.lock", name.to_string_lossy()));
        let lock = lock(&lock_path).map_err(|err| match err {
            LockError::Held(pid) => FileError::InUse {
                kind: KIND,
                path: path.to_owned(),
                lock: lock_path.clone(),
                pid,
            },
            LockError::Io(source) => FileError::Lock {
                kind: KIND,
                path: path.to_owned(),
                lock: lock_path.clone(),
                source,
            },
        })?;
        let lines = load(path)?;
        let file = Self {
            path: path.to_owned(),
            _lock: lock,
            changes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            turn: tokio::sync::Mutex::new(None),
        };
        Ok((file, lines))
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that the mirrors to save changed: the file is out of date until a save
    /// that starts after this succeeds. Call it after the change is applied.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// True when the file holds the mirrors as of the last change (false from a change
    /// until a save succeeds, so also after a failed save).
    pub fn saved(&self) -> bool {
        self.written.load(Ordering::SeqCst) == self.changes.load(Ordering::SeqCst)
    }

    /// Writes `lines()` to the file when a change is not saved yet; does nothing
    /// otherwise. One save at a time: `lines` is called when this save's turn comes, so
    /// the set written is never older than the change that asked for it. A failure is
    /// logged (once while it lasts) and the file stays out of date.
    ///
    /// # Errors
    /// The save failed; the next call tries again.
    pub async fn save(&self, lines: impl FnOnce() -> Vec<MirrorLine>) -> Result<(), SaveError> {
        let mut last_error = self.turn.lock().await;
        let wanted = self.changes.load(Ordering::SeqCst);
        if self.written.load(Ordering::SeqCst) == wanted {
            return Ok(());
        }
        let lines = lines();
        let path = self.path.clone();
        let result = tokio::task::spawn_blocking(move || save(&path, &lines))
            .await
            .unwrap_or_else(|join| {
                Err(SaveError::Io {
                    path: self.path.clone(),
                    source: io::Error::other(join.to_string()),
                })
            });
        match result {
            Ok(()) => {
                self.written.store(wanted, Ordering::SeqCst);
                if last_error.take().is_some() {
                    info!(file = %self.path.display(), "state file written again");
                }
                Ok(())
            }
            Err(err) => {
                let shown = err.to_string();
                if last_error.as_deref() != Some(shown.as_str()) {
                    error!(error = %shown, "cannot write the state file; retrying until it can be written");
                    *last_error = Some(shown);
                }
                Err(err)
            }
        }
    }

    /// Retries an unsaved file every `every` until `stop` is cancelled, and once more
    /// then: a failed save is not left for the next admin change to repair.
    pub async fn keep_saving(
        self: std::sync::Arc<Self>,
        every: Duration,
        lines: impl Fn() -> Vec<MirrorLine>,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; the file was just opened.
        ticks.tick().await;
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = ticks.tick() => false,
            };
            if !self.saved() {
                let _ = self.save(&lines).await;
            }
            if stopping {
                return;
            }
        }
    }
}

/// Why the lock could not be taken.
enum LockError {
    /// Another open file holds it; the pid it wrote, if readable.
    Held(Option<u32>),
    Io(io::Error),
}

/// Opens (creating it `0600`) and locks the lock file without waiting, then writes the
/// process id into it for whoever finds it locked. The lock is `flock(2)`-style:
/// advisory, released when the file is closed, also when the process dies.
fn lock(path: &Path) -> Result<File, LockError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(LockError::Io)?;
    // Named in full: std's `File::try_lock` (Rust 1.89) is newer than this crate's
    // minimum Rust version.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(LockError::Held(pid));
        }
        Err(fs4::TryLockError::Error(err)) => return Err(LockError::Io(err)),
    }
    // Only a hint for the message above: a failure to write it does not matter.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// Removes the temporary file when dropped, unless disarmed after the rename.
struct TempGuard(PathBuf);

impl TempGuard {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A new, empty file `.NAME.tmp.PID.N` in `dir`, created exclusively.
fn create_temp(dir: &Path, name: &str) -> io::Result<(File, TempGuard)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&temp) {
            Ok(file) => return Ok((file, TempGuard(temp))),
            // Left by a crashed run with the same pid: try the next name.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
}

/// Makes the rename durable (on Unix a directory can be opened and synced).
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The state file kept in step with the registry's admin mirrors (those added through
/// the admin endpoint): saved after each change, whether an admin request, the removal
/// of a mirror that failed for too long or the targets file made it. Cloning is shallow.
#[derive(Clone)]
pub struct Saver {
    file: Arc<StateFile>,
    registry: Registry,
}

impl Saver {
    pub fn new(file: Arc<StateFile>, registry: Registry) -> Self {
        Self { file, registry }
    }

    /// See [`StateFile::saved`].
    pub fn saved(&self) -> bool {
        self.file.saved()
    }

    /// Writes the admin mirrors after a change (`changed`), or when an earlier save
    /// failed: a request that changes nothing still repairs the file.
    ///
    /// # Errors
    /// The save failed; it is retried at the next call and by [`Saver::keep_saving`].
    pub async fn save(&self, changed: bool) -> Result<(), SaveError> {
        if changed {
            self.file.changed();
        }
        self.file.save(|| self.registry.admin_lines()).await
    }

    /// Saves after a change that no admin request made. A failure is logged by the
    /// save; there is no client to tell.
    pub async fn save_after_change(&self) {
        let _ = self.save(true).await;
    }

    /// See [`StateFile::keep_saving`].
    pub async fn keep_saving(self, every: Duration, stop: CancellationToken) {
        let registry = self.registry;
        self.file
            .keep_saving(every, move || registry.admin_lines(), stop)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::mirror::options::tests::options;
    use crate::sources::BadLineReason;
    use crate::target_url::TargetUrl;

    fn line(text: &str) -> MirrorLine {
        MirrorLine::parse(text).unwrap()
    }

    fn dir_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn missing_file_holds_no_mirrors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("state")).unwrap(), []);
    }

    #[test]
    fn save_then_load_gives_the_same_lines_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let lines = vec![
            line("http://a:1 percent=5 persistent"),
            line("https://b/x set_header=X-Note:a%20b compare ignore=/items/*/id"),
        ];
        save(&path, &lines).unwrap();
        assert_eq!(load(&path).unwrap(), lines);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# trafficmirror state file"), "{text}");
        assert!(
            text.ends_with(
                "http://a:1 percent=5 persistent=true\n\
             https://b/x set_header=x-note:a%20b compare=true ignore=/items/*/id\n"
            ),
            "{text}"
        );
        // Saving again replaces the file whole.
        save(&path, &lines[1..]).unwrap();
        assert_eq!(load(&path).unwrap(), lines[1..]);
        save(&path, &[]).unwrap();
        assert_eq!(load(&path).unwrap(), []);
        assert_eq!(dir_entries(dir.path()), ["state"]);
    }

    #[test]
    fn a_nats_mirrors_password_is_saved_so_that_it_logs_in_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let lines = vec![line("nats://copier:s%40cret@n:4222/tm.copies stream=TM")];
        assert_eq!(
            lines[0].to_string(),
            "nats://copier:***@n:4222/tm.copies stream=TM"
        );
        save(&path, &lines).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with("nats://copier:s%40cret@n:4222/tm.copies stream=TM\n"),
            "{text}"
        );
        let loaded = load(&path).unwrap();
        let nats = loaded[0].url.nats().unwrap();
        assert_eq!(nats.credentials.unwrap().1.as_deref(), Some("s@cret"));
    }

    #[cfg(unix)]
    #[test]
    fn new_file_is_private_and_existing_permissions_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        save(&path, &[line("http://a:1")]).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        save(&path, &[line("http://b:1")]).unwrap();
        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn failed_save_leaves_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename over it fails.
        let path = dir.path().join("state");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), "x").unwrap();
        assert!(save(&path, &[line("http://a:1")]).is_err());
        assert_eq!(dir_entries(dir.path()), ["state"]);
        assert_eq!(dir_entries(&path), ["keep"]);
        // A directory that does not exist: nothing is created.
        let missing = dir.path().join("nowhere").join("state");
        assert!(save(&missing, &[]).is_err());
        assert_eq!(dir_entries(dir.path()), ["state"]);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        fs::write(&path, "# header\nhttp://a:1\nhttp://b:1 percent=nope\n").unwrap();
        let err = load(&path).unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(&err, FileError::Parse { source, .. } if source.line == 3),
            "{err:?}"
        );
        assert!(
            shown.starts_with(&format!("state file {}: line 3: ", path.display())),
            "{shown}"
        );
        assert!(shown.contains("nope"), "{shown}");

        fs::write(&path, "http://a:1\nhttp://a:1/\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(&err, FileError::Parse { source, .. }
                if source.line == 2 && matches!(source.reason, BadLineReason::Duplicate { first_line: 1, .. })),
            "{err:?}"
        );

        fs::write(&path, b"http://a:1\n\xff\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unreadable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, FileError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "cannot read state file {}: ",
                dir.path().display()
            )),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_path_through_symlinks_replaces_the_target_and_keeps_the_links() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("volume")).unwrap();
        let target = root.join("volume/state");
        fs::write(&target, "http://old:1\n").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        // state -> link2 (relative) -> /abs/volume/state.
        symlink(&target, root.join("link2")).unwrap();
        symlink("link2", root.join("state")).unwrap();
        let path = root.join("state");
        save(&path, &[line("http://a:1")]).unwrap();
        let is_link = |p: &Path| fs::symlink_metadata(p).unwrap().file_type().is_symlink();
        assert!(is_link(&path) && is_link(&root.join("link2")));
        assert_eq!(load(&target).unwrap(), [line("http://a:1")]);
        assert_eq!(load(&path).unwrap(), [line("http://a:1")]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), 0o640, "the target's mode is kept");
        assert_eq!(dir_entries(root), ["link2", "state", "volume"]);
        assert_eq!(dir_entries(&root.join("volume")), ["state"]);

        // A link to a file not written yet: the file is created there, private.
        let dangling = root.join("new");
        symlink("volume/fresh", &dangling).unwrap();
        save(&dangling, &[line("http://b:1")]).unwrap();
        assert!(is_link(&dangling));
        assert_eq!(
            load(&root.join("volume/fresh")).unwrap(),
            [line("http://b:1")]
        );
        assert_eq!(mode(&root.join("volume/fresh")), 0o600);

        // A loop is an error, not a hang.
        symlink("loop", root.join("loop")).unwrap();
        assert!(save(&root.join("loop"), &[]).is_err());
    }

    #[test]
    fn what_save_writes_stays_within_what_load_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let long = "x".repeat(1000);
        let lines: Vec<MirrorLine> = (0..1100)
            .map(|i| line(&format!("http://h{i}:1/{long}")))
            .collect();
        // The largest prefix that fits is saved and loads back; one more line is refused
        // and leaves the file as it was.
        let n = (0..lines.len()).rev().find(|&n| fits(&lines[..n])).unwrap();
        assert!(n > 1000 && n < lines.len(), "{n}");
        assert!(render(&lines[..n]).len() as u64 <= MAX_FILE_BYTES);
        assert!(render(&lines[..=n]).len() as u64 > MAX_FILE_BYTES);
        save(&path, &lines[..n]).unwrap();
        assert_eq!(load(&path).unwrap().len(), n);
        let err = save(&path, &lines[..=n]).unwrap_err();
        assert!(matches!(err, SaveError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("1048576"), "{err}");
        assert_eq!(load(&path).unwrap().len(), n);
        assert_eq!(dir_entries(dir.path()), ["state"]);
    }

    #[test]
    fn open_refuses_a_missing_directory_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        let err = StateFile::open(&missing.join("state")).unwrap_err();
        assert!(matches!(err, FileError::NoDirectory { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("directory {} does not exist", missing.display())),
            "{shown}"
        );
        fs::write(&missing, "a file").unwrap();
        let err = StateFile::open(&missing.join("state")).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let (first, lines) = StateFile::open(&path).unwrap();
        assert_eq!(lines, []);
        let err = StateFile::open(&path).unwrap_err();
        let shown = err.to_string();
        assert!(
            matches!(&err, FileError::InUse { pid: Some(pid), .. } if *pid == std::process::id()),
            "{err:?}"
        );
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains("another trafficmirror instance"), "{shown}");
        #[cfg(unix)]
        {
            // The same file through a link is the same lock.
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&path, &link).unwrap();
            assert!(matches!(
                StateFile::open(&link),
                Err(FileError::InUse { .. })
            ));
        }
        drop(first);
        let (_again, _) = StateFile::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_failed_save_keeps_the_file_unsaved_until_a_retry_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let (state, _) = StateFile::open(&path).unwrap();
        let state = std::sync::Arc::new(state);
        assert!(state.saved());
        state.changed();
        assert!(!state.saved());
        state.save(|| vec![line("http://a:1")]).await.unwrap();
        assert!(state.saved());
        // Nothing changed: nothing is written.
        fs::remove_file(&path).unwrap();
        state.save(|| unreachable!("no save owed")).await.unwrap();
        assert!(!path.exists());

        // A non-empty directory in the way: the rename fails.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), "x").unwrap();
        state.changed();
        assert!(state.save(|| vec![line("http://b:1")]).await.is_err());
        assert!(!state.saved());
        // The same set again (no new change) is still owed and still fails.
        assert!(state.save(|| vec![line("http://b:1")]).await.is_err());
        assert!(!state.saved());

        // The timer writes it once the way is clear.
        let stop = CancellationToken::new();
        let retry = tokio::spawn(state.clone().keep_saving(
            Duration::from_millis(50),
            || vec![line("http://b:1")],
            stop.clone(),
        ));
        fs::remove_dir_all(&path).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !state.saved() {
            assert!(tokio::time::Instant::now() < deadline, "never saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(load(&path).unwrap(), [line("http://b:1")]);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), retry)
            .await
            .unwrap()
            .unwrap();

        // Stopping saves once more what is owed, long before the next tick.
        let stop = CancellationToken::new();
        let retry = tokio::spawn(state.clone().keep_saving(
            Duration::from_secs(3600),
            || vec![line("http://c:1")],
            stop.clone(),
        ));
        state.changed();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), retry)
            .await
            .unwrap()
            .unwrap();
        assert!(state.saved());
        assert_eq!(load(&path).unwrap(), [line("http://c:1")]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn save_then_load_round_trips(
            entries in proptest::collection::vec((options(), "[a-z]{1,6}", 1u16..), 0..5)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state");
            let mut lines: Vec<MirrorLine> = Vec::new();
            for (options, host, port) in entries {
                let url = TargetUrl::parse(&format!("http://{host}:{port}")).unwrap();
                if lines.iter().all(|l| l.url != url) {
                    lines.push(MirrorLine { url, options });
                }
            }
            save(&path, &lines).unwrap();
            prop_assert_eq!(load(&path).unwrap(), lines);
        }
    }
}
