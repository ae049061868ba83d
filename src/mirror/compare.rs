//! Comparing a comparing mirror's answers with main's (shadow testing; docs/comparing.md),
//! one part per job:
//! - [`verdict`]: whether two complete answers match and, when not, the first difference;
//!   the rules (which headers, which JSON locations to ignore) and the bounded capture of
//!   a body's start and digest. Pure functions over plain values.
//! - [`capture`]: what is kept aside of main's answer while it streams to the client and
//!   of the mirror's as the copy reads it, held in the byte budget, and made ready to
//!   compare (decoded) on the comparing copy's own task.
//! - [`decode`]: undoing a body's `Content-Encoding` within a limit of decoded bytes.
//! - [`grpc`]: what is particular to gRPC answers: their status, their messages, and
//!   the `--grpc-descriptors` set that decodes messages to JSON.
//! - [`stats`]: the counters and latency histograms of one mirror's comparisons.
//! - [`mismatches`]: the latest mismatches of one mirror, for the admin endpoint.
//! - [`endpoints`]: one mirror's results per method and path template.
//! - [`decision`]: the pass/fail/undecided verdict on one mirror, from thresholds.
//!
//! [`super::Mirror`] ties them together: each comparing copy waits for main's captured
//! answer, hands both to [`compare`] and records the [`Verdict`] in its statistics and,
//! for a mismatch, in its list of mismatches.

pub mod capture;
pub mod decision;
pub mod decode;
pub mod endpoints;
pub mod grpc;
pub mod mismatches;
pub mod stats;
pub mod verdict;

pub use verdict::{Answer, Rules, Verdict};
