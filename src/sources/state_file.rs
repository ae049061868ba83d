//! The `--state-file`: mirrors added through the admin endpoint, with their options,
//! saved on every change and restored at start.
//!
//! The file is a `#` comment line followed by one mirror line per mirror. [`save`]
//! writes a temporary file beside it, syncs it, renames it over the old one and syncs
//! the directory, so a crash leaves the old file or the new one, never half of one.
//! [`load`] treats a missing file as no mirrors, and an unreadable or corrupt one as an
//! error: the caller must refuse to start rather than silently forget mirrors.
//!
//! This module does not decide when to save or which mirrors belong in the file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{FileError, MAX_FILE_BYTES, parse_lines, read_limited};
use crate::mirror::options::MirrorLine;

const KIND: &str = "state file";

/// The first line of every saved file.
const HEADER: &str =
    "# trafficmirror state file: mirrors added at run time, rewritten on every change\n";

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

/// Replaces the file with `lines`, atomically (see the module doc). A new file is
/// created readable by its owner only, as options may carry credentials
/// (`set_header=Authorization:...`); an existing file's permissions are kept.
///
/// # Errors
/// Any failure to write, sync or rename; the temporary file is removed and the old
/// file is left as it was.
pub fn save(path: &Path, lines: &[MirrorLine]) -> io::Result<()> {
    let mut text = String::from(HEADER);
    for line in lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
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
    let (mut file, temp) = create_temp(dir, &name.to_string_lossy())?;
    let written = (|| {
        if let Ok(meta) = fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp.0, path)
    })();
    match written {
        Ok(()) => {
            temp.disarm();
            sync_dir(dir)
        }
        Err(err) => Err(err),
    }
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
