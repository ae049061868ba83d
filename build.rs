//! Build information for `--version`, the status page and `trafficmirror_build_info`
//! (README, "Install"): the commit the binary was built from and the build date, handed
//! to the compiler as `TRAFFICMIRROR_BUILD_COMMIT` and `TRAFFICMIRROR_BUILD_DATE`.
//!
//! The commit is `TRAFFICMIRROR_BUILD_COMMIT` from the environment when set (the
//! container build, which has no `.git`, gets it as a build argument), else the short
//! hash of `HEAD` when this crate is the top of a git work tree, else `unknown` (a
//! crate from crates.io).
//! The date is `SOURCE_DATE_EPOCH` when set (reproducible builds), else today, in UTC.
//!
//! The script reruns only when `HEAD` (or the branch it points at) moves or one of those
//! variables changes, so an ordinary edit-and-test cycle does not rebuild the crate for
//! it; the date is therefore the day the script last ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=TRAFFICMIRROR_BUILD_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());

    let from_env = std::env::var("TRAFFICMIRROR_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty());
    let commit = from_env
        .or_else(|| git_commit(&manifest_dir))
        .filter(|c| plausible(c))
        .unwrap_or_else(|| "unknown".to_owned());
    // Outside git nothing else is watched, and without any watched file cargo reruns
    // the script (and so rebuilds the crate) whenever any file of the package changes.
    println!("cargo:rerun-if-changed=build.rs");

    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
        });

    println!("cargo:rustc-env=TRAFFICMIRROR_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=TRAFFICMIRROR_BUILD_DATE={}", date(epoch));
}

/// A value fit for a metric label and the page without escaping: letters, digits, `.`,
/// `-`, `_`, and short.
fn plausible(commit: &str) -> bool {
    !commit.is_empty()
        && commit.len() <= 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The short hash of `HEAD`, if `dir` is the top of a git work tree; also tells cargo
/// to rerun this script when `HEAD` moves. A crate unpacked inside some other
/// repository (`cargo package` verifies in `target/package/`) is not its own work tree.
fn git_commit(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // `HEAD` holds a branch name or, detached, the commit; a commit moves the branch's
    // ref, which is a loose file or a line in packed-refs. Worktrees keep `HEAD` and
    // refs in different directories: `--git-path` knows which. Only existing paths are
    // watched: cargo reruns the script every time for a missing one.
    let mut watched = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = git(dir, &["rev-parse", "--git-path", &reference])?;
        if !dir.join(&loose).exists() {
            // A packed branch appears as a loose file at its next commit: watch the
            // directory it will appear in (only then: any branch's commit touches it).
            let parent = Path::new(&loose).parent().map(|p| p.display().to_string());
            watched.extend(parent);
        }
        watched.push(loose);
        watched.push(git(dir, &["rev-parse", "--git-path", "packed-refs"])?);
    }
    for path in watched {
        let path = dir.join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// `YYYY-MM-DD` of a Unix time, UTC (the proleptic Gregorian calendar; Howard Hinnant's
/// `civil_from_days`).
fn date(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
