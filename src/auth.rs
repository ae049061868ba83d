//! HTTP Basic authentication for the admin endpoint (docs/shadowing.md, "The admin
//! endpoint"; `--password FILE`).
//!
//! The file holds one `user:password` per line, where the password is plain text or a
//! bcrypt hash as written by `htpasswd -B` (`$2y$…`); blank lines and lines starting
//! with `#` are ignored. User names and plain passwords are compared in constant time
//! against every entry, and when the file holds bcrypt hashes an unknown user costs one
//! bcrypt check too, so the answer's timing does not tell which part was wrong.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Why a password file could not be used. Display is the one-line start-up message.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("cannot read password file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("password file {path} line {line}: expected user:password")]
    Malformed { path: String, line: usize },
    #[error("password file {path} holds no user:password line")]
    Empty { path: String },
}

/// A stored password.
#[derive(Clone)]
enum Secret {
    Plain(String),
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`).
    Bcrypt(String),
}

impl Secret {
    fn new(stored: &str) -> Self {
        let is_bcrypt = ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| stored.starts_with(p));
        if is_bcrypt {
            Secret::Bcrypt(stored.to_owned())
        } else {
            Secret::Plain(stored.to_owned())
        }
    }
}

/// Hash checked when the user is unknown, so that an unknown user costs as much time
/// as a known one with a bcrypt password (cost 5 = `htpasswd -B` default).
const DUMMY_BCRYPT: &str = "$2y$05$CYl5GDo2MiF7yVqOiJ5wIOMwMWCRN8ULzDeIdPKF1VyE/Ka6TrAiy";

/// The users allowed on the admin endpoint. Cloning is shallow.
#[derive(Clone)]
pub struct Users {
    entries: Arc<[(String, Secret)]>,
    /// Some entry is a bcrypt hash: checks then cost a hash, even for unknown users.
    has_bcrypt: bool,
    /// One bcrypt check at a time: a flood of logins then costs at most one core and
    /// one blocking thread, never the proxy's CPU (the waiting ones stay cancellable).
    bcrypt_slot: Arc<Semaphore>,
    lockouts: Arc<Lockouts>,
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or wrong credentials.
    Unauthorized,
    /// Too many failed logins from this client address; retry after this long.
    Locked(Duration),
}

/// Failed logins allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// After [`MAX_FAILURES`] failed logins in this window, the address is refused (`429`)
/// without a password check until the window ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond that new addresses are not tracked (a flood from
/// many addresses still gets one password check at a time).
const MAX_TRACKED: usize = 10_000;

/// Failed logins per client address (time passed in, for tests).
#[derive(Default)]
struct Lockouts {
    by_client: Mutex<HashMap<IpAddr, Strikes>>,
}

#[derive(Clone, Copy)]
struct Strikes {
    count: u32,
    since: Instant,
}

impl Lockouts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Strikes>> {
        // Only map updates happen under this lock; poisoning would be a bug.
        self.by_client.lock().expect("lockout lock poisoned")
    }

    /// How long `client` must still wait, if it is locked out.
    fn retry_after(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let strikes = *self.lock().get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(now.saturating_duration_since(strikes.since))?;
        (strikes.count >= MAX_FAILURES && !left.is_zero()).then_some(left)
    }

    fn failed(&self, client: IpAddr, now: Instant) {
        let mut map = self.lock();
        let expired = |s: &Strikes| now.saturating_duration_since(s.since) >= FAILURE_WINDOW;
        if map.len() >= MAX_TRACKED && !map.contains_key(&client) {
            map.retain(|_, s| !expired(s));
            if map.len() >= MAX_TRACKED {
                return;
            }
        }
        let fresh = Strikes {
            count: 0,
            since: now,
        };
        let strikes = map.entry(client).or_insert(fresh);
        if expired(strikes) {
            *strikes = fresh;
        }
        strikes.count += 1;
    }

    fn succeeded(&self, client: IpAddr) {
        self.lock().remove(&client);
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print passwords.
        f.debug_struct("Users")
            .field("count", &self.entries.len())
            .finish()
    }
}

impl Users {
    /// Reads a password file. The second value is a warning to log, e.g. when other
    /// users of the machine can read the file.
    ///
    /// # Errors
    /// The file cannot be read, a line has no `:` or an empty user, or no user is listed.
    pub fn load(path: &Path) -> Result<(Self, Option<String>), PasswordFileError> {
        let shown = path.display().to_string();
        let warning = world_readable(path).then(|| {
            format!(
                "password file {shown} is readable by every user of this machine (chmod 600 it)"
            )
        });
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let users = Self::parse(&text).map_err(|e| match e {
            ParseError::Malformed(line) => PasswordFileError::Malformed { path: shown, line },
            ParseError::Empty => PasswordFileError::Empty { path: shown },
        })?;
        Ok((users, warning))
    }

    /// [`Users::parse`] for the fuzz targets (its error type stays private).
    #[cfg(any(fuzzing, test))]
    pub(crate) fn parse_text(text: &str) -> Option<Self> {
        Self::parse(text).ok()
    }

    fn parse(text: &str) -> Result<Self, ParseError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            match line.split_once(':') {
                Some((user, password)) if !user.is_empty() => {
                    entries.push((user.to_owned(), Secret::new(password)));
                }
                _ => return Err(ParseError::Malformed(i + 1)),
            }
        }
        if entries.is_empty() {
            return Err(ParseError::Empty);
        }
        let has_bcrypt = entries.iter().any(|(_, s)| matches!(s, Secret::Bcrypt(_)));
        Ok(Self {
            entries: entries.into(),
            has_bcrypt,
            bcrypt_slot: Arc::new(Semaphore::new(1)),
            lockouts: Arc::default(),
        })
    }

    /// Authenticates a request from `client`: [`Users::check`], off the async threads
    /// when a bcrypt hash may be computed (tens of milliseconds of CPU: a worker thread
    /// blocked on it would stall every proxied connection it serves). An address with
    /// [`MAX_FAILURES`] failed logins in [`FAILURE_WINDOW`] is refused without a check;
    /// a request without credentials (the usual first step of a client) is no failure.
    ///
    /// # Errors
    /// [`Denied::Unauthorized`] for missing or wrong credentials, [`Denied::Locked`] for
    /// a locked-out address.
    pub async fn verify(
        &self,
        authorization: Option<&[u8]>,
        client: IpAddr,
    ) -> Result<String, Denied> {
        if let Some(wait) = self.lockouts.retry_after(client, Instant::now()) {
            return Err(Denied::Locked(wait));
        }
        if !self.has_bcrypt {
            return self.check_and_count(authorization, client);
        }
        // The permit moves into the blocking task: it is held until the hash is done
        // and counted, even if the request is dropped meanwhile.
        let slot = self.bcrypt_slot.clone().acquire_owned().await;
        let slot = slot.map_err(|_| Denied::Unauthorized)?;
        // Logins queued behind others from the same address may be locked out now.
        if let Some(wait) = self.lockouts.retry_after(client, Instant::now()) {
            return Err(Denied::Locked(wait));
        }
        let users = self.clone();
        let authorization = authorization.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            users.check_and_count(authorization.as_deref(), client)
        })
        .await
        .unwrap_or(Err(Denied::Unauthorized))
    }

    /// [`Users::check`], then counts the outcome for `client`.
    fn check_and_count(
        &self,
        authorization: Option<&[u8]>,
        client: IpAddr,
    ) -> Result<String, Denied> {
        match self.check(authorization) {
            Some(user) => {
                self.lockouts.succeeded(client);
                Ok(user.to_owned())
            }
            None => {
                if authorization.is_some() {
                    self.lockouts.failed(client, Instant::now());
                }
                Err(Denied::Unauthorized)
            }
        }
    }

    /// Checks an `Authorization` header value; returns the user name when it is valid.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<&str> {
        let encoded = authorization.and_then(|v| {
            let (scheme, rest) = v.split_at_checked(6)?;
            scheme.eq_ignore_ascii_case(b"basic ").then_some(rest)
        })?;
        let decoded = STANDARD.decode(encoded.trim_ascii()).ok()?;
        let split = decoded.iter().position(|&b| b == b':')?;
        let (user, password) = (&decoded[..split], &decoded[split + 1..]);
        // Compare against every entry without stopping early.
        let mut found = None;
        let mut plain_ok = subtle::Choice::from(0);
        for (u, secret) in self.entries.iter() {
            let user_ok = u.as_bytes().ct_eq(user);
            if bool::from(user_ok) {
                found = Some((u.as_str(), secret));
            }
            if let Secret::Plain(p) = secret {
                plain_ok |= user_ok & p.as_bytes().ct_eq(password);
            }
        }
        match found {
            Some((u, Secret::Plain(_))) => bool::from(plain_ok).then_some(u),
            Some((u, Secret::Bcrypt(hash))) => {
                bcrypt::verify(password, hash).unwrap_or(false).then_some(u)
            }
            None => {
                if self.has_bcrypt {
                    let _ = bcrypt::verify(password, DUMMY_BCRYPT);
                }
                None
            }
        }
    }
}

#[cfg(unix)]
fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

#[cfg(not(unix))]
fn world_readable(_: &Path) -> bool {
    false
}

#[derive(Debug)]
enum ParseError {
    Malformed(usize),
    Empty,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn basic(creds: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(creds)).into_bytes()
    }

    #[test]
    fn parses_users_and_skips_comments_and_blanks() {
        let users = Users::parse("# admins\nuser:password\n\nops:s3:cret\r\n").unwrap();
        assert_eq!(users.check(Some(&basic("user:password"))), Some("user"));
        // A password may contain ':'; only the first one separates.
        assert_eq!(users.check(Some(&basic("ops:s3:cret"))), Some("ops"));
    }

    #[test]
    fn wrong_or_missing_credentials_fail() {
        let users = Users::parse("user:password\n").unwrap();
        assert_eq!(users.check(None), None);
        assert_eq!(users.check(Some(&basic("user:wrong"))), None);
        assert_eq!(users.check(Some(&basic("other:password"))), None);
        assert_eq!(users.check(Some(b"Bearer abc")), None);
        assert_eq!(users.check(Some(b"Basic !!!notbase64")), None);
        assert_eq!(users.check(Some(&basic("nocolon"))), None);
        assert_eq!(
            users.check(Some(b"basic dXNlcjpwYXNzd29yZA==")),
            Some("user")
        );
    }

    #[test]
    fn bcrypt_hashes_as_written_by_htpasswd() {
        // `htpasswd -nbB admin secret`
        let hash = bcrypt::hash("secret", 5)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        let users = Users::parse(&format!("admin:{hash}\nplain:pw\n")).unwrap();
        assert_eq!(users.check(Some(&basic("admin:secret"))), Some("admin"));
        assert_eq!(users.check(Some(&basic("admin:wrong"))), None);
        assert_eq!(users.check(Some(&basic("plain:pw"))), Some("plain"));
        assert_eq!(users.check(Some(&basic(&format!("plain:{hash}")))), None);
        assert_eq!(users.check(Some(&basic("ghost:secret"))), None);
    }

    #[test]
    fn an_address_is_locked_out_after_max_failures_for_the_window() {
        let lockouts = Lockouts::default();
        let (client, other): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(lockouts.retry_after(client, t0), None, "after {i} failures");
            lockouts.failed(client, t0);
        }
        let later = t0 + Duration::from_secs(15);
        assert_eq!(
            lockouts.retry_after(client, later),
            Some(FAILURE_WINDOW - Duration::from_secs(15))
        );
        assert_eq!(lockouts.retry_after(other, later), None, "per address");
        // The window ends: a fresh count.
        let after = t0 + FAILURE_WINDOW;
        assert_eq!(lockouts.retry_after(client, after), None);
        lockouts.failed(client, after);
        assert_eq!(lockouts.retry_after(client, after), None);
        // A success clears the count.
        for _ in 0..MAX_FAILURES - 2 {
            lockouts.failed(client, after);
        }
        lockouts.succeeded(client);
        lockouts.failed(client, after);
        assert_eq!(lockouts.retry_after(client, after), None);
    }

    #[tokio::test]
    async fn verify_counts_wrong_credentials_but_not_missing_ones() {
        let users = Users::parse("user:password\n").unwrap();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..MAX_FAILURES * 2 {
            assert_eq!(users.verify(None, client).await, Err(Denied::Unauthorized));
        }
        for _ in 0..MAX_FAILURES {
            let wrong = basic("user:wrong");
            assert_eq!(
                users.verify(Some(&wrong), client).await,
                Err(Denied::Unauthorized)
            );
        }
        // Locked: even the right password is refused, without a check.
        let right = basic("user:password");
        assert!(matches!(
            users.verify(Some(&right), client).await,
            Err(Denied::Locked(_))
        ));
        let elsewhere: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(
            users.verify(Some(&right), elsewhere).await,
            Ok("user".to_owned())
        );
    }

    #[tokio::test]
    async fn logins_queued_behind_a_lockout_are_refused_without_a_check() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let users = Users::parse(&format!("admin:{hash}\n")).unwrap();
        let client: IpAddr = "192.0.2.9".parse().unwrap();
        // All start together and pass the first look; the bcrypt slot serialises them.
        let mut tries = tokio::task::JoinSet::new();
        for _ in 0..MAX_FAILURES + 5 {
            let users = users.clone();
            tries.spawn(async move { users.verify(Some(&basic("admin:wrong")), client).await });
        }
        let outcomes = tries.join_all().await;
        let checked = outcomes
            .iter()
            .filter(|o| **o == Err(Denied::Unauthorized))
            .count();
        let locked = outcomes
            .iter()
            .filter(|o| matches!(o, Err(Denied::Locked(_))))
            .count();
        assert_eq!((checked, locked), (MAX_FAILURES as usize, 5));
    }

    #[test]
    fn dummy_hash_is_a_valid_bcrypt_hash() {
        assert!(bcrypt::verify("x", DUMMY_BCRYPT).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("tm-users-{}", std::process::id()));
        std::fs::write(&path, "u:p\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Users::load(&path).unwrap().1.unwrap().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Users::load(&path).unwrap().1.is_none());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn malformed_files_are_rejected_with_the_line() {
        assert!(matches!(
            Users::parse("user:pw\njustaname\n"),
            Err(ParseError::Malformed(2))
        ));
        assert!(matches!(
            Users::parse(":pw\n"),
            Err(ParseError::Malformed(1))
        ));
        assert!(matches!(
            Users::parse("# only a comment\n\n"),
            Err(ParseError::Empty)
        ));
    }

    /// A user name as a password file may hold it: no `:` (the first one separates), no
    /// line break, and not a comment once leading blanks are skipped.
    fn user_name() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-zA-Z0-9._-]{1,12}",
            1 => "[^:\r\n#\\s][^:\r\n]{0,12}",
            1 => "[ \t]{1,2}[^:\r\n#\\s][^:\r\n]{0,6}",
        ]
    }

    /// A plain password: anything on one line (`:`, `#`, blanks and non-ASCII too),
    /// except a bcrypt prefix, which makes it a hash.
    fn plain_password() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[ -~]{0,16}",
            1 => "[^\r\n]{0,16}",
            1 => ":[^\r\n]{0,8}:",
        ]
        .prop_filter("a bcrypt prefix makes it a hash", |p| {
            Secret::new(p.trim_end_matches('\r')).is_plain()
        })
        // A `\r` at the end of a line is its line ending.
        .prop_filter("no trailing carriage return", |p| !p.ends_with('\r'))
    }

    impl Secret {
        fn is_plain(&self) -> bool {
            matches!(self, Secret::Plain(_))
        }
    }

    /// What may stand between entries: blank lines and comments.
    fn filler() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[ \t]{1,4}",
            "[ \t]{0,2}#[^\r\n]{0,20}",
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = Users::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_line_shaped_text(
            lines in prop::collection::vec("[^\n]{0,20}(:[^\n]{0,20})?", 0..6),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            if let Ok(users) = Users::parse(&text) {
                prop_assert!(!users.entries.is_empty());
            }
        }

        #[test]
        fn every_line_is_accepted_with_its_password(
            entries in prop::collection::btree_map(user_name(), plain_password(), 1..6),
            fillers in prop::collection::vec(filler(), 7),
            crlf in any::<bool>(),
            final_newline in any::<bool>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            for (i, (user, password)) in entries.iter().enumerate() {
                text.push_str(&fillers[i]);
                text.push_str(eol);
                text.push_str(&format!("{user}:{password}"));
                text.push_str(eol);
            }
            text.push_str(&fillers[6]);
            if final_newline {
                text.push_str(eol);
            }
            let users = Users::parse(&text);
            prop_assert!(users.is_ok(), "{:?}: {:?}", text, users.err());
            let users = users.unwrap();
            prop_assert_eq!(users.entries.len(), entries.len());
            for (user, password) in &entries {
                let right = basic(&format!("{user}:{password}"));
                prop_assert_eq!(users.check(Some(&right)), Some(user.as_str()), "{:?}", text);
                let wrong = basic(&format!("{user}:{password}x"));
                prop_assert_eq!(users.check(Some(&wrong)), None);
            }
        }

        #[test]
        fn check_never_panics(
            users in prop::collection::btree_map(user_name(), plain_password(), 1..3),
            header in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..40),
                "[bB][aA][sS][iI][cC] [ -~]{0,30}".prop_map(String::into_bytes),
                "[^:]{0,10}:[^:]{0,10}".prop_map(|c| basic(&c)),
            ],
        ) {
            let text: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
            let users = Users::parse(&text).unwrap();
            let _ = users.check(Some(&header));
        }
    }
}
