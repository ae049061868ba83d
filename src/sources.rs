//! Files that hold mirror lines: the `--state-file` (mirrors added through the admin
//! endpoint, saved on every change, restored at start, locked against a second
//! instance) and the `--targets-file`
//! (mirrors declared by the operator, followed while the program runs).
//!
//! Both hold one [`MirrorLine`] per line, with `#` comments and blank lines ignored,
//! and share the line parser and the errors here. Turning their contents into mirrors
//! (reconciling with the registry) is the caller's job.

pub mod state_file;
pub mod targets_file;

use std::io;
use std::path::{Path, PathBuf};

use crate::mirror::options::{MirrorLine, MirrorLineError};

/// A line that could not be used, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: BadLineReason,
}

/// What is wrong with a [`BadLine`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLineReason {
    #[error(transparent)]
    Line(#[from] MirrorLineError),
    #[error("{url} is already on line {first_line}")]
    Duplicate { url: String, first_line: usize },
}

/// A state or targets file that could not be used. Display names the file and, for a
/// bad line, its number.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {kind} {}: {source}", path.display())]
    Read {
        kind: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{kind} {}: {source}", path.display())]
    Parse {
        kind: &'static str,
        path: PathBuf,
        source: BadLine,
    },
    #[error("{kind} {}: the directory {} {reason}", path.display(), dir.display())]
    NoDirectory {
        kind: &'static str,
        path: PathBuf,
        dir: PathBuf,
        reason: &'static str,
    },
    #[error("cannot lock {kind} {} (lock file {}): {source}", path.display(), lock.display())]
    Lock {
        kind: &'static str,
        path: PathBuf,
        lock: PathBuf,
        source: io::Error,
    },
    #[error(
        "{kind} {} is in use by another trafficmirror instance{} holding the lock file {}: \
         give each instance its own file",
        path.display(),
        pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        lock.display()
    )]
    InUse {
        kind: &'static str,
        path: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
    },
}

/// Parses mirror lines: one per line; blank lines, whole-line `#` comments and trailing
/// ` #` comments (a `#` after whitespace) are ignored. The same URL twice is an error.
///
/// # Errors
/// The first bad line, with its number.
pub fn parse_lines(text: &str) -> Result<Vec<MirrorLine>, BadLine> {
    let mut lines: Vec<(usize, MirrorLine)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let content = strip_comment(raw).trim_ascii();
        if content.is_empty() {
            continue;
        }
        let bad = |reason| BadLine {
            line: number,
            reason,
        };
        let line = MirrorLine::parse(content).map_err(|e| bad(BadLineReason::Line(e)))?;
        if let Some((first_line, _)) = lines.iter().find(|(_, l)| l.url == line.url) {
            return Err(bad(BadLineReason::Duplicate {
                url: line.url.to_string(),
                first_line: *first_line,
            }));
        }
        lines.push((number, line));
    }
    Ok(lines.into_iter().map(|(_, line)| line).collect())
}

/// `raw` without its comment: from a `#` at the start or after whitespace. A `#`
/// inside a token is kept (the text form writes `#` in values as `%23`, so this only
/// matters for hand-written lines).
fn strip_comment(raw: &str) -> &str {
    let bytes = raw.as_bytes();
    let start = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()))
        .map_or(raw.len(), |(i, _)| i);
    &raw[..start]
}

/// Reads a small text file, refusing one larger than `limit` bytes (a targets file
/// pointed at a device or a huge file must not eat memory).
fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    read_file_limited(std::fs::File::open(path)?, limit)
}

/// [`read_limited`] of a file already open.
fn read_file_limited(file: std::fs::File, limit: u64) -> io::Result<String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Largest state or targets file read, and largest state file written (1 MiB: thousands
/// of mirror lines), so that a saved state file always loads at the next start.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_numbers() {
        let text = "# mirrors\n\nhttp://a:1 percent=5 # five percent\n  \t\nhttp://b:2\t#x\n";
        let lines = parse_lines(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].to_string(), "http://a:1 percent=5");
        // `#` inside a token is not a comment; here it makes the URL carry a fragment.
        let err = parse_lines("http://a:1\nhttp://b:2/#x\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse_lines("http://a:1\n\nhttp://A:1/ compare\n").unwrap_err();
        assert_eq!(err.to_string(), "line 3: http://a:1 is already on line 1");
        assert_eq!(strip_comment("#all"), "");
        assert_eq!(strip_comment("a b#c d #e"), "a b#c d ");
    }
}
