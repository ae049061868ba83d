//! Validated configuration, built once from [`Cli`] (ripgrep's low-args → high-args
//! split). Everything a user can get wrong is reported here as a one-line
//! [`ConfigError`], before anything is bound or spawned.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{PasswordFileError, Users};
use crate::cli::Cli;
use crate::mirror;
use crate::mirror::options::{MirrorLine, MirrorLineError};
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

/// Where to listen (`--listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:PORT`: every interface.
    AnyHost(u16),
    /// `HOST:PORT`, `1.2.3.4:PORT` or `[::1]:PORT`; names are resolved at bind time.
    Host(String, u16),
}

impl ListenAddr {
    /// Parses `:PORT`, `HOST:PORT` or `[V6]:PORT`.
    ///
    /// # Errors
    /// A message naming the value when there is no port or it is not a number.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = || format!("{value:?} is not :PORT, HOST:PORT or [IPv6]:PORT");
        let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Ok(Self::AnyHost(port));
        }
        let host = match host.strip_prefix('[') {
            // `[]` names no host, and a bracket inside would not survive Display.
            Some(v6) => v6
                .strip_suffix(']')
                .filter(|h| !h.is_empty() && !h.contains(['[', ']']))
                .ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        Ok(Self::Host(host.to_owned(), port))
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AnyHost(port) => write!(f, ":{port}"),
            Self::Host(host, port) if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenAddr,
    pub main: TargetUrl,
    /// The admin path with its leading `/`, e.g. `/targets`.
    pub admin_path: String,
    /// When set, the admin endpoint is served only here.
    pub admin_address: Option<ListenAddr>,
    pub users: Option<Users>,
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
    pub mirror: mirror::Settings,
    /// TLS settings for https:// targets, main and mirrors alike.
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// `--tls-cert` and `--tls-key`: the listener speaks TLS (the admin endpoint too,
    /// unless it has its own address).
    pub listener_tls: Option<ListenerTls>,
    pub max_body_size: u64,
    /// `--max-buffered-bytes`: all request bodies held for mirrors at once.
    pub max_buffered_bytes: u64,
    /// `--body-read-timeout`: longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    pub main_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub preserve_host: bool,
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    /// Worker threads (`--threads`, else one per CPU core).
    pub threads: usize,
    /// `--max-connections-per-target`: connections open at once to main (and, through
    /// `mirror`, to each mirror), across all worker threads.
    pub max_connections_per_target: usize,
    /// Things worth a warning at start-up that are not errors.
    pub warnings: Vec<String>,
}

/// How often an unsaved state file is retried: a change whose save failed is on disk
/// within this once the disk takes writes again.
const STATE_FILE_RETRY: Duration = Duration::from_secs(5);

/// hyper cannot read a request head into a smaller buffer than this.
const MIN_HEADER_SIZE: u64 = 8 * 1024;

impl Config {
    /// Validates raw flags and reads the password file.
    ///
    /// # Errors
    /// The first invalid value, naming its flag.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let listen = ListenAddr::parse(&cli.listen).map_err(|message| ConfigError::Invalid {
            flag: "listen",
            message,
        })?;
        let admin_address = match cli.targets_address.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(addr) => {
                Some(
                    ListenAddr::parse(addr).map_err(|message| ConfigError::Invalid {
                        flag: "targets-address",
                        message,
                    })?,
                )
            }
        };
        let main = TargetUrl::parse_main(&cli.main).map_err(|source| ConfigError::Url {
            flag: "main",
            source,
        })?;
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
        let path = cli.targets.trim().trim_start_matches('/');
        if path.is_empty() || path.contains(['?', '#', ' ']) {
            return Err(ConfigError::Invalid {
                flag: "targets",
                message: format!("{:?} is not a path", cli.targets),
            });
        }
        let mut warnings = Vec::new();
        let users = match cli.password.as_deref() {
            None => None,
            Some(path) => {
                let (users, warning) = Users::load(path)?;
                warnings.extend(warning);
                Some(users)
            }
        };
        if cli.header_read_timeout.is_zero() {
            // Would cut every connection before its first byte.
            return Err(ConfigError::Invalid {
                flag: "header-read-timeout",
                message: "must be greater than 0".to_owned(),
            });
        }
        if cli.body_read_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "body-read-timeout",
                message: "must be greater than 0".to_owned(),
            });
        }
        if cli.mirror_timeout.is_zero() {
            // Would fail every copy (or some, at random) and make healthy mirrors failing.
            return Err(ConfigError::Invalid {
                flag: "mirror-timeout",
                message: "must be greater than 0".to_owned(),
            });
        }
        if cli.max_header_size < MIN_HEADER_SIZE {
            return Err(ConfigError::Invalid {
                flag: "max-header-size",
                message: format!("must be at least {MIN_HEADER_SIZE} bytes"),
            });
        }
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
            listen,
            main,
            admin_path: format!("/{path}"),
            admin_address,
            users,
            mirrors,
            state_file,
            restored,
            state_file_retry: STATE_FILE_RETRY,
            targets_file,
            mirror: mirror::Settings {
                retry_after: cli.retry_after,
                fail_after: cli.fail_after,
                max_queued: cli.max_queued_requests as usize,
                timeout: cli.mirror_timeout,
                tls: tls.clone(),
                pools: threads,
                max_connections: cli.max_connections_per_target as usize,
                max_compare_size: usize::try_from(cli.max_compare_size).unwrap_or(usize::MAX),
            },
            tls,
            listener_tls,
            max_body_size: cli.max_body_size,
            max_buffered_bytes: cli.max_buffered_bytes,
            body_read_timeout: cli.body_read_timeout,
            main_timeout: cli.main_timeout.0,
            shutdown_timeout: cli.shutdown_timeout,
            preserve_host: cli.preserve_host,
            header_read_timeout: cli.header_read_timeout,
            max_header_size: usize::try_from(cli.max_header_size).unwrap_or(usize::MAX),
            threads,
            max_connections_per_target: cli.max_connections_per_target as usize,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["trafficmirror"];
        all.extend_from_slice(args);
        Config::from_cli(&Cli::try_parse_args(all).unwrap())
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(ListenAddr::parse(":8080"), Ok(ListenAddr::AnyHost(8080)));
        assert_eq!(
            ListenAddr::parse("localhost:1234"),
            Ok(ListenAddr::Host("localhost".into(), 1234))
        );
        assert_eq!(
            ListenAddr::parse("[::1]:9000"),
            Ok(ListenAddr::Host("::1".into(), 9000))
        );
        for bad in [
            "8080",
            "host:",
            "host:99999",
            "::1:80",
            "[::1:80",
            "[]:80",
            "[[::1]:80",
        ] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_path_gets_one_leading_slash() {
        assert_eq!(config(&[]).unwrap().admin_path, "/targets");
        assert_eq!(
            config(&["--targets", "/admin/t"]).unwrap().admin_path,
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
            config(&["--targets-address", ""]).unwrap().admin_address,
            None
        );
    }

    /// Listen addresses as users write them, and near misses.
    fn listen_like() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            2 => Just(String::new()),
            2 => "[a-z][a-z0-9.-]{0,12}",
            1 => any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
            2 => any::<std::net::Ipv6Addr>().prop_map(|a| format!("[{a}]")),
            1 => any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
            2 => "[\\[\\]:a-z0-9 ]{0,8}",
            2 => "\\[[\\[\\]:a-f0-9]{0,6}\\]",
        ];
        let port = prop_oneof![
            3 => any::<u16>().prop_map(|p| p.to_string()),
            1 => "[0-9+-]{0,7}",
        ];
        (host, prop_oneof![4 => Just(":"), 1 => Just("")], port)
            .prop_map(|(host, colon, port)| format!("{host}{colon}{port}"))
    }

    proptest! {
        #[test]
        fn listen_parse_never_panics(s in "\\PC*") {
            let _ = ListenAddr::parse(&s);
        }

        #[test]
        fn listen_display_parses_back(s in prop_oneof![listen_like(), "\\PC*"]) {
            if let Ok(addr) = ListenAddr::parse(&s) {
                prop_assert_eq!(ListenAddr::parse(&addr.to_string()), Ok(addr.clone()), "from {:?}", s);
            }
        }

        #[test]
        fn listen_values_round_trip(
            addr in prop_oneof![
                any::<u16>().prop_map(ListenAddr::AnyHost),
                ("[a-z][a-z0-9.-]{0,12}", any::<u16>()).prop_map(|(h, p)| ListenAddr::Host(h, p)),
                (any::<std::net::IpAddr>(), any::<u16>())
                    .prop_map(|(ip, p)| ListenAddr::Host(ip.to_string(), p)),
            ],
        ) {
            prop_assert_eq!(ListenAddr::parse(&addr.to_string()), Ok(addr));
        }
    }
}
