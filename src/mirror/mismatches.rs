//! The latest mismatches of one comparing mirror, for `GET <admin path>/mismatches?url=U`.
//!
//! This module owns the bounded list and the JSON shape of one record. It does not
//! decide what is a mismatch ([`super::compare`]) nor serve HTTP.
//!
//! Memory is bounded per mirror: at most [`RECENT_MISMATCHES`] records, and every string
//! of a record is cut when it is pushed: the method to [`MAX_METHOD_CHARS`], the path
//! and query to [`MAX_PATH_CHARS`], a JSON pointer to
//! [`super::compare::MAX_POINTER_CHARS`], a header name to
//! [`super::compare::MAX_HEADER_NAME_CHARS`] and each value to
//! [`super::compare::MAX_VALUE_CHARS`] characters. At 4 bytes per character at worst
//! that is under 10.5 KiB per record, so under 530 KiB per mirror whatever the traffic
//! (typically a few KiB in all).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};

use super::compare::{Difference, Mismatch, cut_in_place};

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
    pub difference: Difference,
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
        };
        record.bound();
        record
    }

    /// Cuts every string to its bound.
    fn bound(&mut self) {
        cut_in_place(&mut self.method, MAX_METHOD_CHARS);
        cut_in_place(&mut self.path_and_query, MAX_PATH_CHARS);
        self.difference.bound();
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
