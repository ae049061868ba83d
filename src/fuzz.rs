//! Entry points for the `cargo fuzz` targets in `fuzz/` (built only with `--cfg fuzzing`,
//! which cargo-fuzz sets; see fuzz/README.md). Each takes untrusted input the way the
//! program receives it, must never panic, and checks what the property tests check:
//! what is written back parses to the same thing.

use std::path::Path;

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::mirror::compare::verdict::CapturedBody;
use crate::mirror::compare::{self, Answer, Rules, Verdict};
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

/// What peers send.
///
/// Two answer bodies (the input split at its first NUL byte; without one, the input
/// twice) compared as JSON answers, with no rule and with an ignore rule: never a
/// panic, and a body always matches itself.
pub fn compare_bodies(data: &[u8]) {
    let (a, b) = data
        .iter()
        .position(|&x| x == 0)
        .map_or((data, data), |i| (&data[..i], &data[i + 1..]));
    let answer = |body: &[u8]| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Answer {
            status: StatusCode::OK,
            headers,
            body: CapturedBody::Whole(Bytes::copy_from_slice(body)),
            trailers: HeaderMap::new(),
        }
    };
    let ignoring = Rules::new(&[], &["/items/*/id".to_owned()]).expect("a valid rule");
    for rules in [Rules::default(), ignoring] {
        let _ = compare::compare(&rules, None, &answer(a), &answer(b));
        let same = compare::compare(&rules, None, &answer(a), &answer(a));
        assert_eq!(
            same,
            Verdict::Match,
            "{:?} differs from itself",
            String::from_utf8_lossy(a)
        );
    }
}

/// An `Authorization` header value checked against a password file.
pub fn basic_auth(data: &[u8]) {
    let users = crate::auth::Users::parse_text("alice:secret\n").expect("a valid file");
    let _ = users.check(Some(data));
    assert_eq!(users.check(Some(b"Basic YWxpY2U6c2VjcmV0")), Some("alice"));
}

/// Request headers (`name: value` lines) through the forwarding rewrite: hop-by-hop
/// removal, the `Via` loop check and `X-Forwarded-*`. Never a panic, and no
/// `Connection` header is left.
pub fn forwarding_headers(text: &str) {
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let _ = crate::headers::via_contains(&headers, "trafficmirror-1");
    let host = headers.get(header::HOST).cloned();
    crate::headers::strip_hop_by_hop(&mut headers);
    assert!(!headers.contains_key(header::CONNECTION));
    let client = crate::headers::client_ip(std::net::Ipv6Addr::LOCALHOST.into());
    crate::headers::set_forwarded(&mut headers, &client, host.as_ref(), false);
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
        for data in [
            &b"{\"a\":1}\0{\"a\": 1.0}"[..],
            b"{\"items\":[{\"id\":1}]}",
            b"\xff\0",
            b"",
        ] {
            super::compare_bodies(data);
        }
        for data in [&b"Basic YWxpY2U6d3Jvbmc="[..], b"Basic !!", b"basic", b""] {
            super::basic_auth(data);
        }
        super::forwarding_headers(
            "connection: close, x-a\nx-a: 1\nvia: 1.1 trafficmirror-1\nhost: h\nte: trailers",
        );
    }
}
