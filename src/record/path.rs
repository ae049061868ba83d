//! A recording mirror's file names (docs/record-replay.md, "Files"): the path pattern's
//! `%Y %m %d %H %M %S` (UTC), and the `_N` a file gets before its extensions when the
//! previous one is full (`rec.gor`, `rec_1.gor`; `rec.gor.gz`, `rec_1.gor.gz`).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The pattern's fields, and how many digits each expands to.
const FIELDS: [(char, usize); 6] = [('Y', 4), ('m', 2), ('d', 2), ('H', 2), ('M', 2), ('S', 2)];

/// A path pattern, split at its file name's first `.` so the `_N` goes before the
/// extensions.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// Everything up to the file name's first `.` (or the whole pattern).
    stem: String,
    /// From that `.` on (`.gor.gz`), or empty.
    extensions: String,
}

impl Pattern {
    pub fn new(pattern: &str) -> Self {
        let name_start = pattern.rfind('/').map_or(0, |i| i + 1);
        let (stem, extensions) = match pattern[name_start..].find('.') {
            // A name starting with `.` keeps it in its stem.
            Some(0) | None => (pattern, ""),
            Some(dot) => pattern.split_at(name_start + dot),
        };
        Self {
            stem: stem.to_owned(),
            extensions: extensions.to_owned(),
        }
    }

    /// Whether the files are gzip.
    pub fn gzip(&self) -> bool {
        self.extensions.ends_with(".gz")
    }

    /// The pattern with its time fields filled for `now` (UTC), without the index.
    pub fn expand(&self, now: SystemTime) -> (String, String) {
        // `2026-12-07T03:29:15Z`: the fields at fixed offsets.
        let stamp = humantime::format_rfc3339_seconds(now).to_string();
        let field = |c: char| -> &str {
            let range = match c {
                'Y' => 0..4,
                'm' => 5..7,
                'd' => 8..10,
                'H' => 11..13,
                'M' => 14..16,
                _ => 17..19,
            };
            stamp.get(range).unwrap_or("00")
        };
        let fill = |text: &str| {
            let mut out = String::with_capacity(text.len() + 8);
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                match chars.peek() {
                    Some(&f) if c == '%' && FIELDS.iter().any(|(k, _)| *k == f) => {
                        out.push_str(field(f));
                        chars.next();
                    }
                    _ => out.push(c),
                }
            }
            out
        };
        (fill(&self.stem), fill(&self.extensions))
    }

    /// The file for an expanded pattern and an index: `_N` before the extensions.
    pub fn file(expanded: &(String, String), index: u32) -> PathBuf {
        if index == 0 {
            PathBuf::from(format!("{}{}", expanded.0, expanded.1))
        } else {
            PathBuf::from(format!("{}_{index}{}", expanded.0, expanded.1))
        }
    }

    /// Whether `path` is a file this pattern produces (any time, any index).
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = match_fields(&self.stem, path) else {
            return false;
        };
        // An optional `_N`, then the extensions.
        let rest = match rest.strip_prefix('_') {
            Some(after) => {
                let digits = after.bytes().take_while(u8::is_ascii_digit).count();
                if digits == 0 {
                    return false;
                }
                &after[digits..]
            }
            None => rest,
        };
        match_fields(&self.extensions, rest).is_some_and(str::is_empty)
    }

    /// Every existing file this pattern has produced, and their total size on disk.
    pub fn existing(&self) -> (Vec<PathBuf>, u64) {
        let mut glob_pattern = glob_of(&self.stem);
        if !glob_pattern.ends_with('*') {
            glob_pattern.push('*');
        }
        let Ok(paths) = glob::glob(&glob_pattern) else {
            return (Vec::new(), 0);
        };
        let mut files = Vec::new();
        let mut total = 0;
        for path in paths.flatten() {
            let Some(text) = path.to_str() else { continue };
            if !self.matches(text) {
                continue;
            }
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.is_file() {
                    total += meta.len();
                    files.push(path);
                }
            }
        }
        (files, total)
    }
}

/// Matches `text` against `pattern` (its `%Y`… as digits); returns what follows.
fn match_fields<'a>(pattern: &str, mut text: &'a str) -> Option<&'a str> {
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            if let Some(&(_, width)) = chars
                .peek()
                .and_then(|f| FIELDS.iter().find(|(k, _)| k == f))
            {
                chars.next();
                let digits = text.get(..width)?;
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text = &text[width..];
                continue;
            }
        }
        text = text.strip_prefix(c)?;
    }
    Some(text)
}

/// A glob for the pattern's files: fields as `*`, glob metacharacters escaped.
fn glob_of(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '%' if chars
                .peek()
                .is_some_and(|f| FIELDS.iter().any(|(k, _)| k == f)) =>
            {
                chars.next();
                // `**` means something else to glob.
                if !out.ends_with('*') {
                    out.push('*');
                }
            }
            '*' | '?' | '[' | ']' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The size of a file on disk, 0 when it does not exist.
pub fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn fields_expand_in_utc_and_the_index_goes_before_the_extensions() {
        let at = UNIX_EPOCH + Duration::from_secs(1_765_078_155); // 2025-12-07T03:29:15Z
        let pattern = Pattern::new("/var/rec/%Y/%m%d-%H%M%S.gor.gz");
        let expanded = pattern.expand(at);
        assert_eq!(
            Pattern::file(&expanded, 0),
            PathBuf::from("/var/rec/2025/1207-032915.gor.gz")
        );
        assert_eq!(
            Pattern::file(&expanded, 2),
            PathBuf::from("/var/rec/2025/1207-032915_2.gor.gz")
        );
        assert!(pattern.gzip());
        assert!(pattern.matches("/var/rec/2025/1207-032915_2.gor.gz"));
        assert!(pattern.matches("/var/rec/2024/0101-000000.gor.gz"));
        assert!(!pattern.matches("/var/rec/2025/1207-032915_x.gor.gz"));
        assert!(!pattern.matches("/var/rec/2025/1207-032915.gor"));
    }

    #[test]
    fn a_pattern_without_extension_numbers_at_the_end() {
        let pattern = Pattern::new("/tmp/a.b/rec");
        let expanded = pattern.expand(UNIX_EPOCH);
        assert_eq!(Pattern::file(&expanded, 1), PathBuf::from("/tmp/a.b/rec_1"));
        assert!(!pattern.gzip());
    }

    /// The civil date (UTC) of a count of days since 1970-01-01 (H. Hinnant's
    /// `civil_from_days`): the reference the expansion is checked against.
    fn civil(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        (yoe + era * 400 + i64::from(month <= 2), month, day)
    }

    /// The pattern with each field replaced, one after the other.
    fn reference(pattern: &str, secs: u64) -> String {
        let (y, mo, d) = civil((secs / 86_400) as i64);
        let in_day = secs % 86_400;
        let (h, mi, s) = (in_day / 3600, in_day / 60 % 60, in_day % 60);
        pattern
            .replace("%Y", &format!("{y:04}"))
            .replace("%m", &format!("{mo:02}"))
            .replace("%d", &format!("{d:02}"))
            .replace("%H", &format!("{h:02}"))
            .replace("%M", &format!("{mi:02}"))
            .replace("%S", &format!("{s:02}"))
    }

    /// `_N` before the file name's first `.` (not a leading one), else at the end.
    fn numbered(path: &str, index: u32) -> String {
        let name_start = path.rfind('/').map_or(0, |i| i + 1);
        match path[name_start..].find('.') {
            Some(dot) if dot > 0 => {
                let at = name_start + dot;
                format!("{}_{index}{}", &path[..at], &path[at..])
            }
            _ => format!("{path}_{index}"),
        }
    }

    /// Seconds up to the last one of year 9999 (what RFC 3339 writes in 4 digits).
    const LAST_SECOND: u64 = 253_402_300_799;

    proptest::proptest! {
        /// Any pattern at any time: no panic; the expansion is the reference's, the
        /// index goes where the reference puts it, and the pattern recognises every
        /// file it names (the rotation's and `max_total_size`'s view of old files).
        #[test]
        fn expansion_and_numbering_match_a_reference(
            pattern in proptest::prop_oneof![
                "[a-z/._%YmdHMS\u{e9}-]{0,24}",
                "\\PC{0,16}",
            ],
            secs in 0u64..=LAST_SECOND,
            index in 0u32..100_000,
        ) {
            let p = Pattern::new(&pattern);
            let expanded = p.expand(UNIX_EPOCH + Duration::from_secs(secs));
            let want = reference(&pattern, secs);
            proptest::prop_assert_eq!(Pattern::file(&expanded, 0), PathBuf::from(&want));
            let file = Pattern::file(&expanded, index);
            if index > 0 {
                proptest::prop_assert_eq!(&file, &PathBuf::from(numbered(&want, index)));
            }
            let text = file.to_str().unwrap();
            proptest::prop_assert!(p.matches(text), "{} does not match {:?}", text, pattern);
            proptest::prop_assert_eq!(p.gzip(), pattern.ends_with(".gz") && want.rsplit('/').next().is_some_and(|n| n.find('.').is_some_and(|d| d > 0)));
        }

        /// Any path against any pattern: no panic, and a match is a name the pattern
        /// could have given (its fields as digits).
        #[test]
        fn matching_any_text_never_panics(pattern in "\\PC{0,12}", text in "\\PC{0,24}") {
            let p = Pattern::new(&pattern);
            let _ = p.matches(&text);
            let _ = glob_of(&pattern);
        }
    }
}
