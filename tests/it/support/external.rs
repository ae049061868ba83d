//! Outside programs some tests need (Chromium and chromedriver, later others).
//!
//! `cargo test` must pass on a machine with only the Rust toolchain: a test whose
//! program is missing says so in one line on stderr and returns without asserting.
//! `.ci/run` installs the programs and sets `TRAFFICMIRROR_TESTS_REQUIRE_TOOLS=1`,
//! which turns a missing program into a failure, so CI never passes by skipping.

use std::io::Write;
use std::path::PathBuf;

/// Set (to `1`) by `.ci/run`: every outside program a test needs must be installed.
pub const REQUIRE_VAR: &str = "TRAFFICMIRROR_TESTS_REQUIRE_TOOLS";

/// The program `name` found on `PATH`, if any.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Every program in `names`, or `None` after one line saying that `test` did not run.
/// Panics instead when [`REQUIRE_VAR`] is set.
pub fn require(test: &str, names: &[&str], install: &str) -> Option<Vec<PathBuf>> {
    let found: Vec<Option<PathBuf>> = names.iter().map(|name| find_program(name)).collect();
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        return Some(found.into_iter().flatten().collect());
    }
    let line = format!(
        "{test} did not run: {} not installed ({install})",
        missing.join(" and ")
    );
    if std::env::var_os(REQUIRE_VAR).is_some_and(|v| v == "1") {
        panic!("{line}; {REQUIRE_VAR}=1 makes that a failure");
    }
    // Straight to the process's stderr: libtest captures only the print macros, and
    // this line must be seen in a passing run.
    let _ = writeln!(std::io::stderr(), "note: {line}");
    None
}
