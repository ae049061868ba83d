//! HTTP Basic authentication for the admin endpoint (SPEC §3, `--password FILE`).
//!
//! The file holds one `user:password` per line; blank lines and lines starting with `#`
//! are ignored. Credentials are compared in constant time against every user, so the
//! answer's timing does not tell which part was wrong.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

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

/// The users allowed on the admin endpoint.
#[derive(Clone)]
pub struct Users {
    entries: Vec<(String, String)>,
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
    /// Reads a password file.
    ///
    /// # Errors
    /// The file cannot be read, a line has no `:` or an empty user, or no user is listed.
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Malformed(line) => PasswordFileError::Malformed { path: shown, line },
            ParseError::Empty => PasswordFileError::Empty { path: shown },
        })
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
                    entries.push((user.to_owned(), password.to_owned()));
                }
                _ => return Err(ParseError::Malformed(i + 1)),
            }
        }
        if entries.is_empty() {
            return Err(ParseError::Empty);
        }
        Ok(Self { entries })
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
        for (u, p) in &self.entries {
            let ok = u.as_bytes().ct_eq(user) & p.as_bytes().ct_eq(password);
            if bool::from(ok) {
                found = Some(u.as_str());
            }
        }
        found
    }
}

#[derive(Debug)]
enum ParseError {
    Malformed(usize),
    Empty,
}

#[cfg(test)]
mod tests {
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
}
