//! Validated configuration, built once from [`Cli`] (ripgrep's low-args → high-args
//! split). Everything a user can get wrong is reported here as a one-line
//! [`ConfigError`], before anything is bound or spawned.
//!
//! [`Config`] is split by the part that uses it: the listener ([`server::Settings`]),
//! the proxy ([`proxy::Settings`], with the mirrors' [`mirror::Settings`]), the admin
//! endpoint ([`admin::Settings`]), and the data loaded at start ([`Initial`]). The
//! application ([`crate::app`]) hands each part its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin;
use crate::auth::{PasswordFileError, Users};
use crate::cli::Cli;
use crate::mirror;
use crate::mirror::options::{MirrorLine, MirrorLineError};
use crate::proxy;
use crate::server::{self, ListenAddr};
use crate::sources::state_file::StateFile;
use crate::target_url::{TargetUrl, UrlError};
use crate::tls::listener::ListenerTls;

/// A start-up error. Display is the whole one-line message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for --{flag}: {message}")]
    Invalid { flag: &'static str, message: String },
    #[error("invalid value for --{flag}: {source}")]
    Url {
        flag: &'static str,
        source: UrlError,
    },
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    ListenerTls(#[from] crate::tls::listener::CertError),
    #[error("invalid value for --mirror: {0}")]
    MirrorLine(#[from] MirrorLineError),
    #[error(transparent)]
    File(#[from] crate::sources::FileError),
    #[error(transparent)]
    GrpcDescriptors(#[from] mirror::compare::grpc::DescriptorsError),
}

impl ConfigError {
    /// The values are fine but the system refused them: the state file is locked by
    /// another instance.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::File(crate::sources::FileError::InUse { .. }))
    }
}

/// `--mirror` values: a mirror line with options (it has spaces), or plain URLs that
/// may be comma-separated as in the Go tool.
fn mirror_lines(values: &[String]) -> Result<Vec<MirrorLine>, ConfigError> {
    let mut lines = Vec::new();
    for value in values {
        let value = value.trim();
        if value.contains(char::is_whitespace) {
            lines.push(MirrorLine::parse(value)?);
            continue;
        }
        for url in value.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            lines.push(MirrorLine::parse(url)?);
        }
    }
    Ok(lines)
}
/// Everything the program needs, validated, by the part that uses it.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: server::Settings,
    pub proxy: proxy::Settings,
    pub admin: admin::Settings,
    /// `--max-buffered-bytes`: all request bodies held for mirrors at once.
    pub max_buffered_bytes: u64,
    pub initial: Initial,
    /// Things worth a warning at start-up that are not errors.
    pub warnings: Vec<String>,
}

/// The data read at start: the mirrors to begin with, and the files that keep them.
#[derive(Debug, Clone)]
pub struct Initial {
    /// Mirrors from `--mirror`, persistent.
    pub mirrors: Vec<MirrorLine>,
    /// `--state-file` (opened and locked), and the mirrors it held at start.
    pub state_file: Option<Arc<StateFile>>,
    pub restored: Vec<MirrorLine>,
    /// How often a state file whose last save failed is written again (not a flag;
    /// tests shorten it).
    pub state_file_retry: Duration,
    /// `--targets-file`, and its mirrors at start.
    pub targets_file: Option<(PathBuf, Vec<MirrorLine>)>,
}

/// How often an unsaved state file is retried: a change whose save failed is on disk
/// within this once the disk takes writes again.
const STATE_FILE_RETRY: Duration = Duration::from_secs(5);

/// hyper cannot read a request head into a smaller buffer than this.
const MIN_HEADER_SIZE: u64 = 8 * 1024;

impl Config {
    /// Validates raw flags and reads the password, state and targets files, in the
    /// order the checks below are written (the first invalid value is the one named).
    ///
    /// # Errors
    /// The first invalid value, naming its flag.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let (listen, admin_address) = addresses(cli)?;
        let main = TargetUrl::parse_main(&cli.main).map_err(|source| ConfigError::Url {
            flag: "main",
            source,
        })?;
        let initial = Initial::load(cli)?;
        let mut warnings = Vec::new();
        let admin = admin_settings(cli, admin_address.is_some(), &mut warnings)?;
        check_limits(cli)?;
        let threads = cli.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            usize::from,
        );
        let tls = crate::tls::client_config(cli.ca_cert.as_deref(), cli.insecure_skip_verify)?;
        let listener_tls =
            ListenerTls::from_flags(cli.tls_cert.as_deref(), cli.tls_key.as_deref())?;
        if cli.insecure_skip_verify {
            warnings.push(
                "--insecure-skip-verify: certificates of https:// targets are not verified"
                    .to_owned(),
            );
        }
        Ok(Self {
            listener: server::Settings {
                listen,
                admin_address,
                tls: listener_tls,
                header_read_timeout: cli.header_read_timeout,
                max_header_size: usize::try_from(cli.max_header_size).unwrap_or(usize::MAX),
                threads,
                shutdown_timeout: cli.shutdown_timeout,
            },
            proxy: proxy_settings(cli, main, mirror_settings(cli, tls, threads)?),
            admin,
            max_buffered_bytes: cli.max_buffered_bytes,
            initial,
            warnings,
        })
    }
}

/// `--listen`, and `--targets-address` when it names one.
fn addresses(cli: &Cli) -> Result<(ListenAddr, Option<ListenAddr>), ConfigError> {
    let parse = |flag, value| {
        ListenAddr::parse(value).map_err(|message| ConfigError::Invalid { flag, message })
    };
    let listen = parse("listen", &cli.listen)?;
    let admin_address = match cli.targets_address.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(addr) => Some(parse("targets-address", addr)?),
    };
    Ok((listen, admin_address))
}

impl Initial {
    /// `--mirror`, and the state and targets files (the state file is locked here).
    fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let mirrors = mirror_lines(&cli.mirror)?;
        let (state_file, restored) = match &cli.state_file {
            Some(path) => {
                let (file, lines) = StateFile::open(path)?;
                (Some(Arc::new(file)), lines)
            }
            None => (None, Vec::new()),
        };
        let targets_file = match &cli.targets_file {
            Some(path) => Some((path.clone(), crate::sources::targets_file::load(path)?)),
            None => None,
        };
        Ok(Self {
            mirrors,
            state_file,
            restored,
            state_file_retry: STATE_FILE_RETRY,
            targets_file,
        })
    }
}

/// `--targets` and `--password`; `own_listener` with `--targets-address`.
fn admin_settings(
    cli: &Cli,
    own_listener: bool,
    warnings: &mut Vec<String>,
) -> Result<admin::Settings, ConfigError> {
    let path = cli.targets.trim().trim_start_matches('/');
    if path.is_empty() || path.contains(['?', '#', ' ']) {
        return Err(ConfigError::Invalid {
            flag: "targets",
            message: format!("{:?} is not a path", cli.targets),
        });
    }
    let users = match cli.password.as_deref() {
        None => None,
        Some(path) => {
            let (users, warning) = Users::load(path)?;
            warnings.extend(warning);
            Some(users)
        }
    };
    Ok(admin::Settings {
        path: format!("/{path}"),
        users,
        own_listener,
    })
}

/// Timeouts that must not be zero, and the smallest header buffer hyper takes.
fn check_limits(cli: &Cli) -> Result<(), ConfigError> {
    let positive = [
        // Would cut every connection before its first byte.
        ("header-read-timeout", cli.header_read_timeout),
        ("body-read-timeout", cli.body_read_timeout),
        // Would fail every copy (or some, at random) and make healthy mirrors failing.
        ("mirror-timeout", cli.mirror_timeout),
    ];
    if let Some((flag, _)) = positive.iter().find(|(_, value)| value.is_zero()) {
        return Err(ConfigError::Invalid {
            flag,
            message: "must be greater than 0".to_owned(),
        });
    }
    if cli.max_header_size < MIN_HEADER_SIZE {
        return Err(ConfigError::Invalid {
            flag: "max-header-size",
            message: format!("must be at least {MIN_HEADER_SIZE} bytes"),
        });
    }
    Ok(())
}

/// The mirrors' settings; `threads` pools per mirror.
/// # Errors
/// The `--grpc-descriptors` file cannot be read or is no descriptor set.
fn mirror_settings(
    cli: &Cli,
    tls: Arc<rustls::ClientConfig>,
    threads: usize,
) -> Result<mirror::Settings, ConfigError> {
    let grpc_descriptors = match &cli.grpc_descriptors {
        Some(path) => Some(Arc::new(mirror::compare::grpc::Descriptors::load(path)?)),
        None => None,
    };
    Ok(mirror::Settings {
        retry_after: cli.retry_after,
        fail_after: cli.fail_after,
        max_queued: cli.max_queued_requests as usize,
        timeout: cli.mirror_timeout,
        tls,
        pools: threads,
        max_connections: cli.max_connections_per_target as usize,
        max_compare_size: usize::try_from(cli.max_compare_size).unwrap_or(usize::MAX),
        grpc_descriptors,
    })
}

fn proxy_settings(cli: &Cli, main: TargetUrl, mirror: mirror::Settings) -> proxy::Settings {
    proxy::Settings {
        main,
        preserve_host: cli.preserve_host,
        main_timeout: cli.main_timeout.0,
        body_read_timeout: cli.body_read_timeout,
        max_body_size: cli.max_body_size,
        mirror,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["trafficmirror"];
        all.extend_from_slice(args);
        Config::from_cli(&Cli::try_parse_args(all).unwrap())
    }

    #[test]
    fn admin_path_gets_one_leading_slash() {
        assert_eq!(config(&[]).unwrap().admin.path, "/targets");
        assert_eq!(
            config(&["--targets", "/admin/t"]).unwrap().admin.path,
            "/admin/t"
        );
    }

    #[test]
    fn zero_header_read_timeout_is_refused() {
        let err = config(&["--header-read-timeout", "0s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--header-read-timeout"), "{err}");
        assert!(config(&["--header-read-timeout", "1ms"]).is_ok());
    }

    #[test]
    fn zero_mirror_timeout_is_refused() {
        for zero in ["0", "0s", "0ms"] {
            let err = config(&["--mirror-timeout", zero]).unwrap_err().to_string();
            assert!(err.contains("--mirror-timeout"), "{zero}: {err}");
        }
        assert!(config(&["--mirror-timeout", "1ms"]).is_ok());
    }

    #[test]
    fn bad_main_names_the_flag() {
        let err = config(&["--main", "ftp://x"]).unwrap_err().to_string();
        assert!(err.contains("--main") && err.contains("ftp://x"), "{err}");
        let err = config(&["--main", "not a url"]).unwrap_err().to_string();
        assert!(err.contains("--main"), "{err}");
    }

    #[test]
    fn empty_targets_address_means_none() {
        assert_eq!(
            config(&["--targets-address", ""])
                .unwrap()
                .listener
                .admin_address,
            None
        );
    }
}
