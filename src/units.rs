//! Parsing of the duration and size values that flags take (docs/flags.md, "Flags").
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
    use proptest::prelude::*;

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

    /// Every spelling of `ms` parses back to it.
    fn check_duration_spellings(ms: u64) -> Result<(), TestCaseError> {
        for spelling in duration_spellings(ms) {
            prop_assert_eq!(
                parse_duration(&spelling),
                Ok(Duration::from_millis(ms)),
                "spelling {:?}",
                spelling
            );
        }
        Ok(())
    }

    /// Every way a user may spell `ms` milliseconds: bare minutes (whole and quarter
    /// minutes, exact in binary floating point), each single unit that divides it,
    /// humantime's long unit names, compounds with and without spaces, and what
    /// `humantime::format_duration` prints.
    fn duration_spellings(ms: u64) -> Vec<String> {
        let d = Duration::from_millis(ms);
        let mut out = vec![
            format!("{ms}ms"),
            format!("{ms}msec"),
            format!("  {ms}ms\t"),
            humantime::format_duration(d).to_string(),
        ];
        let (h, m, s, rest) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        out.push(format!("{h}h{m}m{s}s{rest}ms"));
        out.push(format!("{h}h {m}m {s}s {rest}ms"));
        out.push(format!("{h}hours {m}min {s}sec {rest}msec"));
        if ms % 1000 == 0 {
            let secs = ms / 1000;
            out.extend([
                format!("{secs}s"),
                format!("{secs}sec"),
                format!("{secs}seconds"),
            ]);
        }
        if ms % 15_000 == 0 {
            // A bare number is minutes; a quarter minute is exact as an f64.
            let quarters = ms / 15_000;
            let frac = ["0", "25", "5", "75"][(quarters % 4) as usize];
            out.push(format!("{}.{frac}", quarters / 4));
        }
        if ms % 60_000 == 0 {
            let minutes = ms / 60_000;
            out.extend([
                format!("{minutes}"),
                format!(" {minutes} "),
                format!("{minutes}m"),
                format!("{minutes}min"),
                format!("{minutes}minutes"),
            ]);
        }
        if ms % 3_600_000 == 0 {
            let hours = ms / 3_600_000;
            out.extend([
                format!("{hours}h"),
                format!("{hours}hr"),
                format!("{hours}hours"),
            ]);
        }
        out
    }

    /// Every way a user may spell `bytes`: each unit that divides it, in any case, with
    /// or without a space before the unit.
    fn size_spellings(bytes: u64) -> Vec<String> {
        const UNITS: [(&str, u64); 10] = [
            ("", 1),
            ("B", 1),
            ("K", 1_000),
            ("KB", 1_000),
            ("MB", 1_000_000),
            ("M", 1_000_000),
            ("GB", 1_000_000_000),
            ("KiB", 1 << 10),
            ("MiB", 1 << 20),
            ("GiB", 1 << 30),
        ];
        let mut out = Vec::new();
        for (unit, multiplier) in UNITS {
            if bytes % multiplier != 0 {
                continue;
            }
            let n = bytes / multiplier;
            out.push(format!("{n}{unit}"));
            out.push(format!("{n}{}", unit.to_ascii_lowercase()));
            out.push(format!("{n}{}", unit.to_ascii_uppercase()));
            out.push(format!(" {n} {unit} "));
        }
        out
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }

        #[test]
        fn number_and_unit_shaped_input_never_panics(
            s in "[ +\\-]?[0-9]{0,25}(\\.[0-9]{0,20})?(e[+\\-]?[0-9]{1,4})? ?(ms|s|m|h|d|w|y|M|us|ns|KB|KiB|MiB|GiB|GB|inf|NaN)?([0-9]{0,22}(ms|s|m|h))*",
        ) {
            let _ = parse_duration(&s);
            let _ = parse_size(&s);
        }

        #[test]
        fn every_spelling_of_a_duration_parses_back(
            // Up to ten years, in whole milliseconds; and small values more often.
            ms in prop_oneof![0u64..100_000, 0u64..315_360_000_000],
        ) {
            check_duration_spellings(ms)?;
        }

        #[test]
        fn quarter_minutes_scale_to_whole_units(quarters in 0u64..1_000_000) {
            let ms = quarters * 15_000;
            check_duration_spellings(ms)?;
        }

        #[test]
        fn every_spelling_of_a_size_parses_back(
            bytes in prop_oneof![
                0u64..5_000,
                (0u64..1_000_000).prop_map(|n| n * 1_000),
                (0u64..1_000_000).prop_map(|n| n << 20),
                (0u64..1_000_000).prop_map(|n| n * 1_000_000_000),
                any::<u64>(),
            ],
        ) {
            for spelling in size_spellings(bytes) {
                prop_assert_eq!(parse_size(&spelling), Ok(bytes), "spelling {:?}", spelling);
            }
        }

        #[test]
        fn a_size_too_large_for_u64_is_an_error_not_a_wrap(n in any::<u64>()) {
            for (unit, multiplier) in [("KB", 1_000u64), ("KiB", 1 << 10), ("MB", 1_000_000), ("GiB", 1 << 30)] {
                let spelling = format!("{n}{unit}");
                match n.checked_mul(multiplier) {
                    Some(bytes) => prop_assert_eq!(parse_size(&spelling), Ok(bytes)),
                    None => prop_assert!(parse_size(&spelling).is_err(), "{}", spelling),
                }
            }
        }
    }
}
