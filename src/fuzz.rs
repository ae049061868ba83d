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
use crate::mirror::compare::{decision, endpoints};
use crate::mirror::options::{MirrorLine, MirrorOptions};
use crate::record::format;
use crate::record::path::Pattern;
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
        let _ = compare::verdict::compare(&rules, None, &answer(a), &answer(b));
        let same = compare::verdict::compare(&rules, None, &answer(a), &answer(a));
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
    let _ = crate::headers::via_visits(&headers, "trafficmirror-1");
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

/// A recording (or any file given to `trafficmirror replay`): read record by record,
/// never a panic; a request or answer that parses, written again, reads back the same.
pub fn record_file(data: &[u8]) {
    let mut reader = format::Reader::with_limit(data, 1 << 16);
    while let Some(item) = reader.next_record() {
        let Ok(record) = item else { continue };
        if let Ok(request) = format::parse_request(&record.message) {
            let again = format::encode_request(
                &record.id,
                record.timestamp_ns,
                &request.method,
                &request.path_and_query,
                &request.headers,
                &request.body,
                request.trailers.as_ref(),
            );
            let read = read_back(&again, &record.id);
            let read = format::parse_request(&read.message).expect("a written request parses");
            assert_eq!(read.method, request.method);
            assert_eq!(read.path_and_query, request.path_and_query);
            assert_same_message(
                (&read.headers, &read.body, read.trailers.as_ref()),
                (&request.headers, &request.body, request.trailers.as_ref()),
            );
        }
        if let Ok(answer) = format::parse_response(&record.message) {
            let again = format::encode_response(
                &record.id,
                record.timestamp_ns,
                record.latency_ns.unwrap_or(-1),
                answer.status,
                &answer.headers,
                &answer.body,
                answer.trailers.as_ref(),
            );
            let read = read_back(&again, &record.id);
            let read = format::parse_response(&read.message).expect("a written answer parses");
            assert_eq!(read.status, answer.status);
            assert_same_message(
                (&read.headers, &read.body, read.trailers.as_ref()),
                (&answer.headers, &answer.body, answer.trailers.as_ref()),
            );
        }
    }
}

/// The one record `bytes` holds, read back (a body holding the separator included).
fn read_back(bytes: &[u8], id: &str) -> format::RawRecord {
    let mut reader = format::Reader::new(bytes);
    let read = reader
        .next_record()
        .expect("one record")
        .expect("a written record reads");
    assert!(reader.next_record().is_none(), "one record only");
    assert_eq!(read.id, id);
    read
}

type Message<'a> = (&'a HeaderMap, &'a Bytes, Option<&'a HeaderMap>);

/// The same headers (but the framing, written anew, and an empty `Host`, never
/// written), body and trailers (an empty trailer section reads as none).
fn assert_same_message(read: Message<'_>, written: Message<'_>) {
    let kept = |map: &HeaderMap| -> Vec<(String, Vec<u8>)> {
        map.iter()
            .filter(|(n, v)| {
                *n != header::CONTENT_LENGTH
                    && *n != header::TRANSFER_ENCODING
                    && !(*n == header::HOST && v.is_empty())
            })
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    };
    let trailers = |t: Option<&HeaderMap>| t.filter(|t| !t.is_empty()).map(kept);
    assert_eq!(kept(read.0), kept(written.0));
    assert_eq!(read.1, written.1);
    assert_eq!(trailers(read.2), trailers(written.2));
}

/// A recording mirror's path pattern: never a panic, and every file it names (any
/// index) is one it recognises as its own.
pub fn record_path(text: &str) {
    let pattern = Pattern::new(text);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_765_078_155);
    let expanded = pattern.expand(at);
    for index in [0, 1, 17] {
        let file = Pattern::file(&expanded, index);
        let file = file.to_str().expect("a pattern's file name is text");
        assert!(pattern.matches(file), "{file:?} is not {text:?}'s");
    }
    let _ = pattern.gzip();
}

/// A request path through the per-endpoint templates (the `endpoint` options are its
/// lines after the first): never a panic, at most 300 characters, and a template is its
/// own template.
pub fn endpoint_template(text: &str) {
    let mut lines = text.lines();
    let path = lines.next().unwrap_or_default();
    let patterns: Vec<String> = lines.map(str::to_owned).collect();
    let once = endpoints::template(path);
    assert!(once.chars().count() <= 300);
    assert_eq!(endpoints::template(&once), once, "{path:?}");
    assert!(endpoints::template_for(&patterns, path).chars().count() <= 300);
}

/// `GET /verdict` query pairs (`k=v&k=v`): never a panic; thresholds that parse decide
/// on any totals without one.
pub fn verdict_thresholds(text: &str) {
    let pairs = text
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")));
    if let Ok(thresholds) = decision::Thresholds::from_pairs(pairs) {
        let mut totals = crate::mirror::compare::stats::CompareStats::new().snapshot();
        for compared in [0, 1000] {
            totals.compared = compared;
            totals.mismatched = compared / 100;
            let decided = decision::decide(&thresholds, &totals, &[], false);
            assert_eq!(decided.pass.is_none(), compared < thresholds.min_compared);
        }
    }
}

/// An answer from a mirror to a copy written without hyper, its first byte choosing the
/// size of the reads and whether it answers a `HEAD`: no panic, and read in pieces it is
/// framed as read whole.
pub fn mirror_answer(data: &[u8]) {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let head_request = first & 0x80 != 0;
    let piece = usize::from(first & 0x7f) + 1;
    let whole = crate::client::raw::frame_in_pieces(bytes, &[usize::MAX], head_request);
    let split = crate::client::raw::frame_in_pieces(bytes, &[piece], head_request);
    assert_eq!(whole.is_ok(), split.is_ok(), "{whole:?} / {split:?}");
    assert_eq!(whole.ok(), split.ok());
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
        for data in [
            &b"\x03HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            b"\x85HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\n\r\n",
            b"\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            b"",
        ] {
            super::mirror_answer(data);
        }
        let sep = "\n🐵🙈🙉\n";
        for data in [
            format!(
                "1 a 5 -1\nPOST /p?q HTTP/1.1\r\nHost: \r\nx: y\r\nContent-Length: 2\r\n\r\nhi{sep}"
            ),
            format!(
                "2 b 5 9\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\ngrpc-status: 0\r\n\r\n{sep}"
            ),
            format!("1 c 5 -1\nGET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nx{sep}1 d 5"),
            format!("1 e 5 -1\nPUT / HTTP/1.1\r\n\r\nbody\n🐵🙈🙉 more{sep}"),
            "\u{ff}".to_owned(),
        ] {
            super::record_file(data.as_bytes());
        }
        for text in [
            "/var/rec/%Y/%m%d-%H%M%S.gor.gz",
            "/a.b/rec",
            "%",
            "/.x_1.%Y",
            "",
        ] {
            super::record_path(text);
        }
        for text in [
            "/users/42/orders?x=1",
            &format!("/{}/12345x", "z".repeat(294)),
            "/files/a.txt\n/files/:name",
            "\u{e9}\n:\n/",
        ] {
            super::endpoint_template(text);
        }
        for text in [
            "min_compared=5&max_mismatch_rate=1%",
            "max_p99_ratio=0",
            "max_error_rate=2",
        ] {
            super::verdict_thresholds(text);
        }
    }
}
