//! Which build this is: the version, the commit it was built from and the build date,
//! set by `build.rs` at compile time (README, "Install"). `--version`, the status page
//! and the `trafficmirror_build_info` metric all show these same values.

/// The crate version, `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short commit hash, or `unknown` for a build outside git.
pub const COMMIT: &str = env!("TRAFFICMIRROR_BUILD_COMMIT");

/// The build date, `YYYY-MM-DD` in UTC (`SOURCE_DATE_EPOCH` when set).
pub const DATE: &str = env!("TRAFFICMIRROR_BUILD_DATE");

/// `0.1.0 (commit 0123456789ab, built 2026-12-07)`: what `--version` prints after the
/// program name, and the status page after "trafficmirror".
pub const LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TRAFFICMIRROR_BUILD_COMMIT"),
    ", built ",
    env!("TRAFFICMIRROR_BUILD_DATE"),
    ")"
);
