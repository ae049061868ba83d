//! What mirroring does differently for a gRPC call (docs/shadowing.md, "How requests
//! are handled"): telling one apart, and the `grpc-timeout` a copy carries. Formats as
//! the gRPC over HTTP/2 protocol gives them (grpc/grpc, doc/PROTOCOL-HTTP2.md):
//! `Timeout → TimeoutValue TimeoutUnit`, at most 8 ASCII digits and one of `H M S m u n`.

use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The header carrying a call's deadline, relative to when it was sent.
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest `TimeoutValue`: 8 digits.
const MAX_VALUE: u64 = 99_999_999;

/// Whether a request is a gRPC call: its `Content-Type` is `application/grpc`, alone or
/// with a `+format` or parameters.
pub fn is_call(headers: &HeaderMap) -> bool {
    crate::headers::is_grpc(headers)
}

/// A `grpc-timeout` value as a duration; `None` when it is not one.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value, in the finest unit that fits 8 digits; rounded
/// down (a copy must never be given longer than the call had), except that a timeout
/// too long for hours is capped at the largest value.
pub fn format_timeout(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (value, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(value, _)| value <= u128::from(MAX_VALUE))
        .unwrap_or((u128::from(MAX_VALUE), b'H'));
    let text = format!("{value}{}", char::from(unit));
    HeaderValue::from_str(&text).expect("digits and a letter")
}

/// A call's deadline as the proxy received it: its `grpc-timeout`, and when the call
/// arrived. Each copy is sent with what is left of it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub timeout: Duration,
    pub since: tokio::time::Instant,
}

impl Deadline {
    /// The deadline of a call whose head is `headers`, received now; `None` without a
    /// (valid) `grpc-timeout`.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let timeout = parse_timeout(headers.get(&GRPC_TIMEOUT)?.as_bytes())?;
        Some(Self {
            timeout,
            since: tokio::time::Instant::now(),
        })
    }

    /// The `grpc-timeout` of a copy sent now: the call's less the time since it arrived
    /// (the wait for the request stream to end, and in the mirror's queue). Zero once
    /// spent: the mirror then answers `DEADLINE_EXCEEDED`, as main would have.
    pub fn remaining(&self) -> HeaderValue {
        format_timeout(self.timeout.saturating_sub(self.since.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_told_apart() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(yes));
            assert!(is_call(&h), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
        ] {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(no));
            assert!(!is_call(&h), "{no}");
        }
        assert!(!is_call(&HeaderMap::new()));
    }

    #[test]
    fn timeouts_parse_in_every_unit() {
        let cases = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("7n", Duration::from_nanos(7)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timeout(text.as_bytes()), Some(want), "{text}");
        }
        for bad in ["", "S", "123456789S", "1s", "-1S", "1.5S", " 1S", "1 S"] {
            assert_eq!(parse_timeout(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_format_in_the_finest_unit_that_fits_and_round_down() {
        assert_eq!(
            format_timeout(Duration::from_nanos(99_999_999)),
            "99999999n"
        );
        assert_eq!(format_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(format_timeout(Duration::new(5, 123_456_789)), "5123456u");
        assert_eq!(format_timeout(Duration::from_secs(200)), "200000m");
        assert_eq!(format_timeout(Duration::from_secs(3 * 3600)), "10800000m");
        assert_eq!(format_timeout(Duration::from_secs(40 * 86400)), "3456000S");
        assert_eq!(format_timeout(Duration::ZERO), "0n");
        assert_eq!(format_timeout(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1234),
            Duration::from_secs(100_000_000),
        ] {
            let back = parse_timeout(format_timeout(d).as_bytes()).unwrap();
            assert!(back <= d && d - back <= d / 1_000_000, "{d:?} {back:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_value_parses_without_panic(value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            let _ = parse_timeout(&value);
        }
    }
}
