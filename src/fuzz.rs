//! Entry points for the `cargo fuzz` targets in `fuzz/` (built only with `--cfg fuzzing`,
//! which cargo-fuzz sets; see fuzz/README.md). Each takes untrusted input the way the
//! program receives it, must never panic, and checks what the property tests check:
//! what is written back parses to the same thing.

use std::path::Path;

use crate::mirror::options::{MirrorLine, MirrorOptions};
use crate::target_url::TargetUrl;

/// A mirror line (targets file, state file, `--mirror`): parses, and when valid its
/// canonical form parses back to the same line.
pub fn mirror_line(text: &str) {
    if let Ok(line) = MirrorLine::parse(text) {
        let again = MirrorLine::parse(&line.to_string()).expect("a written line parses");
        assert_eq!(line, again, "round trip of {text:?}");
    }
}

/// Admin options as `key=value` pairs (query string or form), then the text form.
pub fn mirror_options(text: &str) {
    let pairs = text
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")));
    if let Ok(options) = MirrorOptions::parse_pairs(pairs) {
        let again: MirrorOptions = options.to_string().parse().expect("written options parse");
        assert_eq!(options, again, "round trip of {text:?}");
    }
    let _ = text.parse::<MirrorOptions>();
}

/// Target URLs: normalisation is idempotent.
pub fn target_url(text: &str) {
    if let Ok(url) = TargetUrl::parse(text) {
        let again = TargetUrl::parse(&url.to_string()).expect("a normalised URL parses");
        assert_eq!(url, again, "normalisation of {text:?} is not idempotent");
    }
}

/// Durations and sizes of flags and options.
pub fn units(text: &str) {
    let _ = crate::units::parse_duration(text);
    let _ = crate::units::parse_size(text);
}

/// A whole targets file.
pub fn targets_file(text: &str) {
    if let Ok(lines) = crate::sources::targets_file::parse(text) {
        for line in lines {
            let again = MirrorLine::parse(&line.to_string()).expect("a written line parses");
            assert_eq!(line, again);
        }
    }
}

/// A password file (`--password-file`).
pub fn password_file(text: &str) {
    let _ = crate::auth::Users::parse_text(text);
}

/// A YAML config file (`--config`).
pub fn config_file(text: &str) {
    let _ = crate::cli::file::FileSettings::parse(Path::new("fuzz.yaml"), text);
}

/// Command-line arguments through the Go-style `-flag` rewriting.
pub fn go_style_args(text: &str) {
    let _ = crate::cli::normalize_args(text.split('\0'));
}

#[cfg(test)]
mod tests {
    /// Keeps the entry points compiled and working in `cargo test`, where `fuzzing` is
    /// not set; the fuzzer itself runs them on generated input (fuzz/README.md).
    #[test]
    fn entry_points_take_valid_and_invalid_input() {
        for text in [
            "",
            "http://127.0.0.1:8080/p percent=5 set_header=X-Shadow:1",
            "http://[::1]/ sticky=header:X-User compare=true ignore=/meta/ts",
            "ftp://x",
            "http://a b=",
        ] {
            super::mirror_line(text);
            super::target_url(text);
            super::targets_file(text);
        }
        for text in [
            "percent=50&method=GET",
            "rate=2.5&ordered=true",
            "percent=abc",
            "=&&",
        ] {
            super::mirror_options(text);
        }
        for text in ["500ms", "2", "10MiB", "-1", "1e400s"] {
            super::units(text);
        }
        super::password_file("alice:secret\n# comment\nbob:");
        super::config_file("listen: 127.0.0.1:0\nmirror: [http://127.0.0.1:9]\n");
        super::config_file(":\n  - [");
        super::go_style_args("trafficmirror\0-main=http://x\0-l\0:8080\0--\0-x");
    }
}
