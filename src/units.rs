//! Parsing of the duration and size values that flags take (README, "Flags").
//!
//! Durations accept a bare number, meaning minutes (the Go tool's `-retry-after 1`), or a
//! number with a unit (`500ms`, `30s`, `2m`, `1h`, and anything `humantime` reads, such as
//! `1m30s`). Sizes accept bare bytes or a decimal (`KB`, `MB`, `GB`) or binary (`KiB`,
//! `MiB`, `GiB`) suffix.

use std::time::Duration;

/// Parses a flag duration. A bare number (integer or decimal) means minutes.
///
/// # Errors
/// Returns a message naming the bad value when it is empty, negative or has an unknown unit.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("empty duration".to_owned());
    }
    if let Ok(minutes) = v.parse::<f64>() {
        // As in the Go tool, a bare number means minutes (`1` = 1 minute).
        if !minutes.is_finite() || minutes < 0.0 {
            return Err(format!("invalid duration {value:?}"));
        }
        return Duration::try_from_secs_f64(minutes * 60.0)
            .map_err(|_| format!("invalid duration {value:?}"));
    }
    humantime::parse_duration(v).map_err(|_| {
        format!(
            "invalid duration {value:?} (use e.g. 500ms, 30s, 2m, 1h, or a bare number of minutes)"
        )
    })
}

/// Parses a byte size: bare bytes, `KB`/`MB`/`GB` (×1000) or `KiB`/`MiB`/`GiB` (×1024).
/// Suffixes are case-insensitive, and a space between number and unit is allowed.
///
/// # Errors
/// Returns a message naming the bad value when the number or the unit is not understood.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let bad = || format!("invalid size {value:?} (use e.g. 1048576, 512KB, 10MiB)");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(multiplier).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_number_is_minutes() {
        assert_eq!(parse_duration("1"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn durations_with_units() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("200ms", Duration::from_millis(200)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_the_value() {
        for input in ["", "abc", "-1", "10 parsecs", "1x"] {
            let err = parse_duration(input).unwrap_err();
            assert!(err.contains("duration"), "{input}: {err}");
        }
        assert!(parse_duration("abc").unwrap_err().contains("\"abc\""));
    }

    #[test]
    fn sizes() {
        let cases = [
            ("0", 0),
            ("1048576", 1_048_576),
            ("10MiB", 10 * 1024 * 1024),
            ("10mib", 10 * 1024 * 1024),
            ("1KiB", 1024),
            ("1GiB", 1 << 30),
            ("512KB", 512_000),
            ("2MB", 2_000_000),
            ("1GB", 1_000_000_000),
            ("10 MiB", 10 << 20),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for input in ["", "MiB", "10XB", "-5", "1.5MiB", "99999999999999999999GiB"] {
            assert!(parse_size(input).is_err(), "{input}");
        }
    }
}
