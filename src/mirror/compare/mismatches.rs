//! The latest mismatches of one comparing mirror, for `GET <admin path>/mismatches?url=U`.
//!
//! This module owns the bounded list and the JSON shape of one record. It does not
//! decide what is a mismatch ([`super::verdict`]) nor serve HTTP.
//!
//! Memory is bounded per mirror: at most [`RECENT_MISMATCHES`] records, and every string
//! of a record is cut when it is pushed: the method to [`MAX_METHOD_CHARS`], the path
//! and query to [`MAX_PATH_CHARS`], a JSON pointer to
//! [`super::verdict::MAX_POINTER_CHARS`], a header name to
//! [`super::verdict::MAX_HEADER_NAME_CHARS`] and each value to
//! [`super::verdict::MAX_VALUE_CHARS`] characters, and at most
//! [`super::verdict::MAX_FIELDS`] fields of [`super::verdict::MAX_FIELD_CHARS`]
//! characters. At 4 bytes per character at worst that is under 26.5 KiB per record, so
//! under 1.3 MiB per mirror whatever the traffic (typically a few KiB in all).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use super::verdict::{Difference, MAX_FIELD_CHARS, MAX_FIELDS, Mismatch, cut_in_place};

/// How many mismatches each comparing mirror keeps (the newest).
pub const RECENT_MISMATCHES: usize = 50;

/// Longest path and query kept in a [`Record`], in characters.
pub const MAX_PATH_CHARS: usize = 1000;

/// Longest method kept in a [`Record`], in characters.
pub const MAX_METHOD_CHARS: usize = 100;

/// One mismatch as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// When the comparison was made; RFC 3339 UTC with milliseconds in JSON.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub method: String,
    pub path_and_query: String,
    pub main_status: u16,
    pub mirror_status: u16,
    pub differs: Differs,
    /// The first difference (kept beside `fields` for readers of the earlier shape).
    pub difference: Difference,
    /// Every differing field, up to [`MAX_FIELDS`], each cut to [`MAX_FIELD_CHARS`].
    pub fields: Vec<String>,
}

/// Which parts of the answers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Differs {
    pub status: bool,
    pub headers: bool,
    pub body: bool,
}

impl Record {
    /// A record of `mismatch` for the request `method path_and_query`.
    pub fn new(
        time: SystemTime,
        method: &Method,
        path_and_query: &str,
        main_status: StatusCode,
        mirror_status: StatusCode,
        mismatch: Mismatch,
    ) -> Self {
        let mut record = Self {
            time,
            method: method.as_str().to_owned(),
            path_and_query: path_and_query.to_owned(),
            main_status: main_status.as_u16(),
            mirror_status: mirror_status.as_u16(),
            differs: Differs {
                status: mismatch.status,
                headers: mismatch.headers,
                body: mismatch.body,
            },
            difference: mismatch.difference,
            fields: mismatch.fields,
        };
        record.bound();
        record
    }

    /// Cuts every string to its bound.
    fn bound(&mut self) {
        cut_in_place(&mut self.method, MAX_METHOD_CHARS);
        cut_in_place(&mut self.path_and_query, MAX_PATH_CHARS);
        self.difference.bound();
        self.fields.truncate(MAX_FIELDS);
        for field in &mut self.fields {
            cut_in_place(field, MAX_FIELD_CHARS);
        }
    }
}

/// The latest [`RECENT_MISMATCHES`] mismatches of one mirror.
#[derive(Debug, Default)]
pub struct Mismatches {
    records: Mutex<VecDeque<Record>>,
}

impl Mismatches {
    /// Adds `record` (its strings cut to their bounds), forgetting the oldest beyond
    /// [`RECENT_MISMATCHES`].
    pub fn push(&self, mut record: Record) {
        record.bound();
        let mut records = self.lock();
        if records.len() == RECENT_MISMATCHES {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The records kept, newest first.
    pub fn latest(&self) -> Vec<Record> {
        self.lock().iter().rev().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Record>> {
        // Only whole-record pushes and pops happen under the lock: a panic elsewhere
        // cannot leave the list half-updated, so a poisoned lock is still usable.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// RFC 3339 with milliseconds, clamped to what humantime can print (1970 to 9999):
/// a clock set before 1970 must not break the listing.
fn rfc3339<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST);
    let text = humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string();
    serializer.serialize_str(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::compare::verdict::MAX_VALUE_CHARS;

    fn record(n: u16) -> Record {
        Record::new(
            UNIX_EPOCH + Duration::from_secs(u64::from(n)),
            &Method::GET,
            &format!("/item/{n}?q=1"),
            StatusCode::OK,
            StatusCode::from_u16(500).unwrap(),
            Mismatch {
                status: true,
                headers: false,
                body: true,
                difference: Difference::Status {
                    main: 200,
                    mirror: 500,
                },
                fields: vec!["status".to_owned(), "/a/*/b".to_owned()],
                field_count: 2,
            },
        )
    }

    #[test]
    fn keeps_the_latest_fifty_newest_first() {
        let list = Mismatches::default();
        assert!(list.latest().is_empty());
        for n in 0..70 {
            list.push(record(n));
        }
        let latest = list.latest();
        assert_eq!(latest.len(), RECENT_MISMATCHES);
        let paths: Vec<&str> = latest.iter().map(|r| r.path_and_query.as_str()).collect();
        let expected: Vec<String> = (20..70).rev().map(|n| format!("/item/{n}?q=1")).collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn long_strings_are_cut_when_pushed() {
        let list = Mismatches::default();
        let mut r = record(1);
        r.path_and_query = format!("/{}", "é".repeat(5000));
        r.method = "M".repeat(500);
        r.difference = Difference::JsonPointer {
            pointer: "/k".repeat(2000),
            main: Some("x".repeat(1000)),
            mirror: None,
        };
        list.push(r);
        let got = list.latest().remove(0);
        assert_eq!(got.path_and_query.chars().count(), MAX_PATH_CHARS);
        assert!(got.path_and_query.ends_with('é'));
        assert_eq!(got.method.len(), MAX_METHOD_CHARS);
        let Difference::JsonPointer { pointer, main, .. } = got.difference else {
            panic!("difference changed kind");
        };
        assert_eq!(pointer.len(), super::super::verdict::MAX_POINTER_CHARS);
        assert_eq!(main.map(|m| m.len()), Some(MAX_VALUE_CHARS));
    }

    #[test]
    fn record_serialises_with_an_rfc3339_time() {
        let mut r = record(0);
        r.time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.123Z",
                "method": "GET",
                "path_and_query": "/item/0?q=1",
                "main_status": 200,
                "mirror_status": 500,
                "differs": {"status": true, "headers": false, "body": true},
                "difference": {"kind": "status", "main": 200, "mirror": 500},
                "fields": ["status", "/a/*/b"],
            })
        );
    }

    #[test]
    fn times_humantime_cannot_print_are_clamped() {
        let mut r = record(0);
        r.time = UNIX_EPOCH - Duration::from_secs(10);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000Z");
        r.time = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["time"], "9999-12-31T23:59:59.000Z");
    }
}
