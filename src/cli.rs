//! Command-line flags: clap derive with a `TRAFFICMIRROR_*` environment variable for
//! every flag, plus Go-style single-dash long flags (`-listen :9000`,
//! `-targets-address=localhost:1234`) for scripts written for the Go tool, a YAML config
//! file ([`file`]) for whatever neither sets, and the `completions` and `man`
//! subcommands.
//!
//! This module only describes and parses raw values; [`crate::config`] validates them.
//! Printing completions and the man page is the binary's job.

pub mod file;
pub mod verdict;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

pub use file::{AppliedFile, ConfigFileError};

use crate::units::{parse_duration, parse_size};

/// Mirror HTTP traffic to a main target and a run-time set of mirror targets.
///
/// Every request is proxied to --main and its answer streamed back; a copy is replayed
/// in the background to every healthy mirror. Mirrors are listed, added and removed at
/// run time on the admin endpoint (--targets).
#[derive(Debug, Parser)]
#[command(
    name = "trafficmirror",
    version = crate::observe::build_info::LINE,
    about,
    max_term_width = 100,
    disable_help_subcommand = true,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Run a tool instead of the proxy; without one, trafficmirror proxies.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on: `:PORT` (all interfaces), `HOST:PORT` or `[::1]:PORT`.
    #[arg(
        short,
        long,
        env = "TRAFFICMIRROR_LISTEN",
        default_value = ":8080",
        value_name = "ADDR"
    )]
    pub listen: String,

    /// Main target; its responses go back to the client. May carry a path prefix.
    #[arg(
        short,
        long,
        env = "TRAFFICMIRROR_MAIN",
        default_value = "http://localhost:8888",
        value_name = "URL"
    )]
    pub main: String,

    /// Path of the admin endpoint that lists, adds and removes mirrors.
    #[arg(
        long,
        env = "TRAFFICMIRROR_TARGETS",
        default_value = "targets",
        value_name = "PATH"
    )]
    pub targets: String,

    /// Serve the admin endpoint on this address instead of the main listener.
    #[arg(long, env = "TRAFFICMIRROR_TARGETS_ADDRESS", value_name = "ADDR")]
    pub targets_address: Option<String>,

    /// Protect the admin endpoint with HTTP Basic auth; FILE holds `user:password` lines.
    #[arg(
        long,
        env = "TRAFFICMIRROR_PASSWORD",
        visible_aliases = ["password-file", "passwordFile"],
        value_name = "FILE"
    )]
    pub password: Option<PathBuf>,

    /// Mirror from the start (persistent): a URL, or a mirror line `URL key=value ...`
    /// with options; repeatable; plain URLs may be comma-separated.
    #[arg(long, env = "TRAFFICMIRROR_MIRROR", value_name = "URL")]
    pub mirror: Vec<String>,

    /// Save mirrors added through the admin endpoint here, and restore them at start.
    #[arg(long, env = "TRAFFICMIRROR_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Mirror lines to follow: the file's mirrors track its content (checked every second).
    #[arg(long, env = "TRAFFICMIRROR_TARGETS_FILE", value_name = "FILE")]
    pub targets_file: Option<PathBuf>,

    /// How long a failing mirror rests before one trial request (bare number = minutes).
    #[arg(long, env = "TRAFFICMIRROR_RETRY_AFTER", default_value = "1m", value_parser = parse_duration, value_name = "DUR")]
    pub retry_after: Duration,

    /// A non-persistent mirror failing continuously this long is removed.
    #[arg(long, env = "TRAFFICMIRROR_FAIL_AFTER", default_value = "30m", value_parser = parse_duration, value_name = "DUR")]
    pub fail_after: Duration,

    /// Per mirror: copies waiting or in flight; beyond it new copies are dropped.
    #[arg(long, env = "TRAFFICMIRROR_MAX_QUEUED_REQUESTS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_queued_requests: u32,

    /// Whole-request timeout for one mirror request; a timeout is a failure.
    #[arg(long, env = "TRAFFICMIRROR_MIRROR_TIMEOUT", default_value = "20s", value_parser = parse_duration, value_name = "DUR")]
    pub mirror_timeout: Duration,

    /// Larger request bodies are proxied to main but not mirrored (e.g. 10MiB, 512KB).
    #[arg(long, env = "TRAFFICMIRROR_MAX_BODY_SIZE", default_value = "10MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_body_size: u64,

    /// All request bodies held for mirrors at once (queued or in flight); a copy that does
    /// not fit is dropped and counted.
    #[arg(long, env = "TRAFFICMIRROR_MAX_BUFFERED_BYTES", default_value = "256MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_buffered_bytes: u64,

    /// A client that sends nothing of its request body for this long gets 408.
    #[arg(long, env = "TRAFFICMIRROR_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DUR")]
    pub body_read_timeout: Duration,

    /// Bytes of main's and a mirror's answer kept to compare them (`compare=true`); past
    /// it, status, headers and a digest of the body are compared.
    #[arg(long, env = "TRAFFICMIRROR_MAX_COMPARE_SIZE", default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_compare_size: u64,

    /// A protobuf FileDescriptorSet (`protoc --descriptor_set_out`, `buf build -o`): the
    /// gRPC answers of the services it describes are compared message by message as JSON.
    #[arg(long, env = "TRAFFICMIRROR_GRPC_DESCRIPTORS", value_name = "FILE")]
    pub grpc_descriptors: Option<PathBuf>,

    /// Main must send its response head within this time, else 504 (`off` = no limit).
    #[arg(long, env = "TRAFFICMIRROR_MAIN_TIMEOUT", default_value = "off", value_parser = parse_optional_duration, value_name = "DUR")]
    pub main_timeout: OptionalDuration,

    /// How long shutdown waits for requests in flight and queued mirror copies.
    #[arg(long, env = "TRAFFICMIRROR_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub shutdown_timeout: Duration,

    /// Send the client's Host header to main and mirrors instead of the target's.
    #[arg(long, env = "TRAFFICMIRROR_PRESERVE_HOST", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub preserve_host: bool,

    /// A client must send a request's headers within this time; also how long an idle
    /// keep-alive connection (HTTP/1, or HTTP/2 with no request in flight) is kept open.
    #[arg(long, env = "TRAFFICMIRROR_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub header_read_timeout: Duration,

    /// Largest request head (request line and headers) accepted; larger gets 431.
    #[arg(long, env = "TRAFFICMIRROR_MAX_HEADER_SIZE", default_value = "64KiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_header_size: u64,

    /// PEM file with extra CA certificates trusted for https:// targets.
    #[arg(long, env = "TRAFFICMIRROR_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Do not verify certificates of https:// targets (staging only; logs a warning).
    #[arg(long, env = "TRAFFICMIRROR_INSECURE_SKIP_VERIFY", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub insecure_skip_verify: bool,

    /// PEM certificate chain (leaf first) for TLS on the listener; needs --tls-key.
    /// Re-read when it changes.
    #[arg(long, env = "TRAFFICMIRROR_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert; needs --tls-cert. Re-read when it changes.
    #[arg(long, env = "TRAFFICMIRROR_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Connections open at once to one target (main, and each mirror), split between the
    /// worker threads; a request that finds none free waits for one.
    #[arg(long, env = "TRAFFICMIRROR_MAX_CONNECTIONS_PER_TARGET", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_connections_per_target: u32,

    /// Worker threads serving connections (default: one per CPU core).
    #[arg(long, env = "TRAFFICMIRROR_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// More logging: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, env = "TRAFFICMIRROR_VERBOSE", action = ArgAction::Count)]
    pub verbose: u8,

    /// Log lines on stderr: `text` for people, `json` for one JSON object per line.
    #[arg(long, env = "TRAFFICMIRROR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// YAML file of `flag-name: value` settings, used for what no flag or variable sets.
    /// Without it, ./trafficmirror.yaml or ~/.trafficmirror/trafficmirror.yaml if present.
    #[arg(long, env = "TRAFFICMIRROR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Printed after `--help` (not `-h`) and in the man page.
const AFTER_LONG_HELP: &str = "\
Settings: a flag wins over its TRAFFICMIRROR_* variable, which wins over the config file, \
which wins over the default. The config file is --config FILE, else the first of \
./trafficmirror.yaml and ~/.trafficmirror/trafficmirror.yaml that exists; its keys are the \
long flag names, e.g. `listen: :9000`, `mirror: [http://a:8080, http://b:8080]`.";

/// The tools that run instead of the proxy.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Command {
    /// Print a shell completion script to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout.
    Man,
    /// Run a demo in one process: a main, two comparing mirrors (one that answers like
    /// main, one slower that differs on a share of requests), the proxy, and traffic.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: String,
        /// Requests per second sent through the proxy.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
        rate: u32,
    },
    /// Ask a running proxy whether a comparing mirror is safe to ship; prints the
    /// reasons and exits 0 pass, 1 fail, 3 undecided, 2 usage, 4 admin endpoint
    /// unreadable.
    Verdict(verdict::VerdictArgs),
    /// Replay recordings (a recording mirror's or GoReplay's files) against a target,
    /// keeping the recorded gaps; prints one summary line. Exit status 0 done, 1 more
    /// mismatches than --max-mismatch-rate (with --compare), 2 usage, 3 could not run (no
    /// readable source, the target never answered).
    Replay(ReplayArgs),
}

/// The flags of `trafficmirror replay` (docs/record-replay.md, "Replaying").
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ReplayArgs {
    /// Recording files or globs (`rec-*.gor.gz`); `.gz` files are read as gzip. Or one
    /// NATS JetStream subject, `nats://[USER:PASS@]HOST:PORT/SUBJECT` (or `tls://…`),
    /// consumed with --durable (docs/fleet.md).
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// With a nats:// source: the durable consumer's name; replayers with the same name
    /// share the stream's messages. A new one starts at the stream's first message.
    #[arg(long, value_name = "NAME")]
    pub durable: Option<String>,
    /// With a nats:// source: end once no message came for this long (else run until
    /// SIGTERM or Ctrl-C).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub exit_when_idle: Option<Duration>,
    /// With a nats:// source: how long the server waits for a message's acknowledgement
    /// before delivering it again, set when the durable is created.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub ack_wait: Duration,
    /// Where requests go: http://, https:// or h2c://, with an optional path prefix.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Recorded gaps divided by this: 2 (or 200%) is twice as fast, 0 no waiting.
    #[arg(long, default_value = "1", value_parser = crate::replay::parse_speed, value_name = "FACTOR")]
    pub speed: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536), value_name = "N")]
    pub concurrency: u32,
    /// Start again from the beginning at the end, until interrupted.
    #[arg(long = "loop")]
    pub repeat: bool,
    /// At most N requests per second.
    #[arg(long, value_parser = parse_replay_rate, value_name = "N")]
    pub rate: Option<f64>,
    /// Only requests whose path starts with this (repeatable).
    #[arg(long = "path", value_name = "PREFIX")]
    pub paths: Vec<String>,
    /// Only these methods (repeatable, or comma-separated).
    #[arg(long = "method", value_delimiter = ',', value_name = "METHOD")]
    pub methods: Vec<String>,
    /// Replay this share of the requests, at random (0 < P <= 100).
    #[arg(long, default_value = "100", value_parser = parse_replay_percent, value_name = "P")]
    pub percent: f64,
    /// Time allowed for each request, its answer included.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// PEM file with extra CA certificates trusted for an https:// target and a tls://
    /// (or TLS-requiring nats://) source.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate from an https:// target.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// Compare each answer with the recorded one (a recording with record_answers=true),
    /// by the rules of compare=true mirrors; the mismatches per endpoint after the summary.
    #[arg(long)]
    pub compare: bool,
    /// With --compare: a header name or JSON pointer (`/id`, `/items/*/ts`) not compared
    /// (repeatable).
    #[arg(long, value_name = "NAME|POINTER", requires = "compare")]
    pub ignore: Vec<String>,
    /// With --compare: exit 1 when more than this share of the compared answers differ
    /// (`0.5%` or `0.005`).
    #[arg(long, default_value = "0", value_parser = crate::replay::parse_rate_share, value_name = "RATE")]
    pub max_mismatch_rate: f64,
    /// With --compare: a protobuf FileDescriptorSet; the gRPC answers of the services it
    /// describes are compared message by message as JSON (as the proxy's flag).
    #[arg(
        long = "grpc-descriptors",
        id = "replay_grpc_descriptors",
        value_name = "FILE",
        requires = "compare"
    )]
    pub grpc_descriptors: Option<PathBuf>,
    /// With --compare: an endpoint pattern (`/users/:id/orders`, repeatable) that names
    /// the paths it matches in the per-endpoint lines, as a mirror's `endpoint=`.
    #[arg(long = "endpoint", value_name = "PATTERN", requires = "compare")]
    pub endpoints: Vec<String>,
    /// Record this replay's requests and answers to FILE (an absolute or relative path;
    /// `.gz` for gzip), for the next run.
    #[arg(long, value_name = "FILE")]
    pub output: Option<String>,
}

fn parse_replay_rate(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!(
            "invalid rate {value:?} (requests per second, more than 0)"
        )),
    }
}

fn parse_replay_percent(value: &str) -> Result<f64, String> {
    match value.trim().trim_end_matches('%').parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 100.0 => Ok(n),
        _ => Err(format!("invalid percent {value:?} (0 < P <= 100)")),
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target`.
    Json,
}

/// A duration that may be switched off. A newtype so clap does not treat the flag as
/// optional-valued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

fn parse_optional_duration(value: &str) -> Result<OptionalDuration, String> {
    match value.trim() {
        "off" | "none" | "0" => Ok(OptionalDuration(None)),
        v => parse_duration(v).map(|d| OptionalDuration((!d.is_zero()).then_some(d))),
    }
}

impl Cli {
    /// Parses arguments, accepting Go-style single-dash long flags.
    ///
    /// # Errors
    /// Clap's error for unknown flags or bad values, or a help/version request.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        Self::try_parse_from(normalize_args(args))
    }

    /// Parses arguments like [`Cli::try_parse_args`], then fills every setting that
    /// neither a flag nor its environment variable gave from the config file: the
    /// `--config` file, else the first of `default_files` that exists (see
    /// [`default_config_files`]). With a subcommand no file is read.
    ///
    /// Returns the flags and, when a file was read, which keys it contributed.
    ///
    /// # Errors
    /// [`StartError::Flags`] as from clap (also for help and version requests);
    /// [`StartError::File`] for an unreadable or invalid file, naming the file and key.
    pub fn try_parse_with_config<I, T>(
        args: I,
        default_files: &[PathBuf],
    ) -> Result<(Self, Option<AppliedFile>), StartError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args = normalize_args(args);
        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(&args)?;
        if matches.subcommand().is_some() {
            return Ok((Self::from_arg_matches(&matches)?, None));
        }
        let settings = match matches.get_one::<PathBuf>("config") {
            Some(path) => Some(file::FileSettings::read(path)?),
            None => file::FileSettings::find(default_files)?,
        };
        let Some(settings) = settings else {
            return Ok((Self::from_arg_matches(&matches)?, None));
        };
        let (words, applied) = file::merge(&cmd, &matches, &settings)?;
        // The file's values go before the user's words: they only name arguments the
        // user left unset, so nothing the user typed is overridden or duplicated.
        let mut merged = Vec::with_capacity(args.len() + words.len());
        merged.extend(args.first().cloned());
        merged.extend(words);
        merged.extend(args.into_iter().skip(1));
        Ok((Self::try_parse_from(merged)?, Some(applied)))
    }
}

/// Why [`Cli::try_parse_with_config`] did not produce flags.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A bad flag or value, or a request for help or the version.
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// The config file cannot be read or is invalid.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

/// Where the config file is looked for when `--config` is not given, in order:
/// `./trafficmirror.yaml`, then `$HOME/.trafficmirror/trafficmirror.yaml`.
pub fn default_config_files() -> Vec<PathBuf> {
    file::default_paths(std::env::var_os("HOME").map(PathBuf::from).as_deref())
}

/// Every long flag name and alias this program knows, with `help` and `version`.
fn long_names() -> Vec<String> {
    let cmd = Cli::command();
    let mut longs: Vec<String> = vec!["help".into(), "version".into()];
    for arg in cmd.get_arguments() {
        longs.extend(arg.get_long().map(str::to_owned));
        longs.extend(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(str::to_owned),
        );
    }
    longs
}

/// Rewrites Go-style `-name` and `-name=value` into `--name…` for every long flag name
/// (and alias) this program knows. Short flags (`-v`, `-vv`, `-h`, `-l`, `-m`) and
/// everything after a bare `--` are left alone.
pub fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let longs = long_names();
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        let arg: OsString = arg.into();
        if passthrough {
            out.push(arg);
            continue;
        }
        let rewritten = arg.to_str().and_then(|s| {
            if s == "--" {
                return None;
            }
            let rest = s.strip_prefix('-').filter(|r| !r.starts_with('-'))?;
            let name = rest.split_once('=').map_or(rest, |(n, _)| n);
            longs
                .iter()
                .any(|l| l == name)
                .then(|| OsString::from(format!("-{s}")))
        });
        if arg == "--" {
            passthrough = true;
        }
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().copied())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_long_flags_are_rewritten() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["tm", "-listen", ":9000"], &["tm", "--listen", ":9000"]),
            (
                &["tm", "-targets-address=localhost:1234"],
                &["tm", "--targets-address=localhost:1234"],
            ),
            (
                &["tm", "-password", "users.txt"],
                &["tm", "--password", "users.txt"],
            ),
            (
                &["tm", "-passwordFile", "u"],
                &["tm", "--passwordFile", "u"],
            ),
            (&["tm", "-retry-after", "1"], &["tm", "--retry-after", "1"]),
            (&["tm", "-help"], &["tm", "--help"]),
            // Left alone: short flags, double-dash, unknown names, values, after `--`.
            (&["tm", "-h"], &["tm", "-h"]),
            (
                &["tm", "-vv", "-l", ":1", "-m", "http://x"],
                &["tm", "-vv", "-l", ":1", "-m", "http://x"],
            ),
            (&["tm", "--listen", ":1"], &["tm", "--listen", ":1"]),
            (&["tm", "-bogus"], &["tm", "-bogus"]),
            (&["tm", "--", "-listen"], &["tm", "--", "-listen"]),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), *want, "{input:?}");
        }
    }

    #[test]
    fn defaults_match_the_flags_reference() {
        let cli = Cli::try_parse_args(["tm"]).unwrap();
        assert_eq!(cli.listen, ":8080");
        assert_eq!(cli.main, "http://localhost:8888");
        assert_eq!(cli.targets, "targets");
        assert_eq!(cli.targets_address, None);
        assert_eq!(cli.retry_after, Duration::from_secs(60));
        assert_eq!(cli.fail_after, Duration::from_secs(30 * 60));
        assert_eq!(cli.max_queued_requests, 500);
        assert_eq!(cli.mirror_timeout, Duration::from_secs(20));
        assert_eq!(cli.max_body_size, 10 << 20);
        assert_eq!(cli.max_buffered_bytes, 256 << 20);
        assert_eq!(cli.body_read_timeout, Duration::from_secs(60));
        assert_eq!(cli.main_timeout, OptionalDuration(None));
        assert_eq!(cli.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(cli.verbose, 0);
        assert!(!cli.preserve_host);
        assert_eq!(cli.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cli.max_header_size, 64 << 10);
        assert!(!cli.insecure_skip_verify);
        assert_eq!(cli.threads, None);
        assert_eq!(cli.max_connections_per_target, 256);
        assert_eq!(
            Cli::try_parse_args(["tm", "-threads", "3"])
                .unwrap()
                .threads,
            Some(3)
        );
    }

    #[test]
    fn mirrors_repeat_and_split_on_commas() {
        let cli = Cli::try_parse_args([
            "tm",
            "--mirror",
            "http://a:1,http://b:2",
            "-mirror=http://c:3",
        ])
        .unwrap();
        assert_eq!(cli.mirror, ["http://a:1,http://b:2", "http://c:3"]);
    }

    #[test]
    fn bad_values_are_errors() {
        for args in [
            &["tm", "--retry-after", "soon"][..],
            &["tm", "--max-body-size", "lots"],
            &["tm", "--max-queued-requests", "0"],
            &["tm", "--threads", "0"],
            &["tm", "--max-connections-per-target", "0"],
            &["tm", "-bogus"],
        ] {
            assert!(
                Cli::try_parse_args(args.iter().copied()).is_err(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every long flag name and alias the program knows, as `normalize_args` must.
    fn known_longs() -> Vec<String> {
        long_names()
    }

    #[test]
    fn the_documented_long_flags_are_known() {
        let longs = known_longs();
        for name in [
            "listen",
            "main",
            "targets",
            "targets-address",
            "password",
            "password-file",
            "passwordFile",
            "mirror",
            "retry-after",
            "fail-after",
            "max-queued-requests",
            "mirror-timeout",
            "max-body-size",
            "main-timeout",
            "shutdown-timeout",
            "tls-cert",
            "tls-key",
            "verbose",
            "help",
            "version",
        ] {
            assert!(longs.iter().any(|l| l == name), "{name}");
        }
    }

    /// Arguments as scripts write them: flags of one or two dashes, known or not, with
    /// and without `=value`, bare values, and anything else.
    fn argument() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => (prop::sample::select(known_longs()), prop_oneof![Just(""), Just("-")], "(=\\PC*)?")
                .prop_map(|(name, dash, value)| format!("-{dash}{name}{value}")),
            2 => "-{0,3}[a-zA-Z][a-zA-Z-]{0,15}(=[ -~]{0,10})?",
            1 => prop_oneof![Just("-"), Just("--"), Just("---"), Just("-="), Just("--=x")]
                .prop_map(str::to_owned),
            2 => "\\PC*",
        ]
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_only_adds_a_dash(args in prop::collection::vec(argument(), 0..8)) {
            let out = normalize_args(&args);
            prop_assert_eq!(out.len(), args.len());
            for (before, after) in args.iter().zip(&out) {
                let dashed = format!("-{before}");
                prop_assert!(after == before.as_str() || *after == *dashed, "{:?} -> {:?}", before, after);
            }
            // A second pass changes nothing: a rewritten flag has two dashes.
            prop_assert_eq!(normalize_args(&out), out);
        }

        #[cfg(unix)]
        #[test]
        fn non_utf8_arguments_pass_through(
            raw in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..5),
        ) {
            use std::os::unix::ffi::OsStringExt;
            let args: Vec<OsString> = raw.into_iter().map(OsString::from_vec).collect();
            let out = normalize_args(args.clone());
            prop_assert_eq!(out.len(), args.len());
            for (before, after) in args.iter().zip(&out) {
                if before.to_str().is_none() {
                    prop_assert_eq!(before, after);
                }
            }
        }

        #[test]
        fn go_style_name_equals_value_gets_two_dashes(
            name in prop::sample::select(known_longs()),
            value in "\\PC*",
            before in prop::collection::vec(argument().prop_filter("not --", |a| a != "--"), 0..4),
            after in prop::collection::vec(argument(), 0..4),
        ) {
            let mut args = vec!["tm".to_owned()];
            args.extend(before.iter().cloned());
            args.push(format!("-{name}={value}"));
            args.push(format!("-{name}"));
            args.push("--".to_owned());
            args.extend(after.iter().cloned());
            let out = normalize_args(&args);
            let at = 1 + before.len();
            prop_assert_eq!(&out[at], &OsString::from(format!("--{name}={value}")));
            prop_assert_eq!(&out[at + 1], &OsString::from(format!("--{name}")));
            prop_assert_eq!(&out[at + 2], "--");
            // Everything after `--` is a value, passed through as it came.
            let rest: Vec<OsString> = after.iter().map(OsString::from).collect();
            prop_assert_eq!(&out[at + 3..], &rest[..]);
        }

        #[test]
        fn short_flags_and_values_are_left_alone(
            arg in prop_oneof![
                "-[a-zA-Z]",
                "-v{1,4}",
                "[^-]\\PC*",
            ],
        ) {
            prop_assume!(!known_longs().iter().any(|l| format!("-{l}") == arg));
            prop_assert_eq!(normalize_args([arg.as_str()]), vec![OsString::from(&arg)]);
        }
    }

    #[test]
    fn subcommands_parse_and_plain_flags_still_run_the_proxy() {
        let cli = Cli::try_parse_args(["tm", "completions", "bash"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Completions {
                shell: clap_complete::Shell::Bash
            })
        );
        assert_eq!(
            Cli::try_parse_args(["tm", "man"]).unwrap().command,
            Some(Command::Man)
        );
        let cli = Cli::try_parse_args(["tm", "-listen", ":9", "-vv"]).unwrap();
        assert_eq!(
            (cli.command, cli.listen.as_str(), cli.verbose),
            (None, ":9", 2)
        );
        assert!(Cli::try_parse_args(["tm", "completions", "tcsh"]).is_err());
        assert!(Cli::try_parse_args(["tm", "bogus"]).is_err());
    }

    #[test]
    fn log_format_defaults_to_text() {
        assert_eq!(
            Cli::try_parse_args(["tm"]).unwrap().log_format,
            LogFormat::Text
        );
        assert_eq!(
            Cli::try_parse_args(["tm", "-log-format=json"])
                .unwrap()
                .log_format,
            LogFormat::Json
        );
        assert!(Cli::try_parse_args(["tm", "--log-format", "xml"]).is_err());
    }

    /// A fresh directory for one test's config files.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tm-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn config_file_is_explicit_or_the_first_default_that_exists() {
        let dir = temp_dir("config-search");
        let explicit = dir.join("explicit.yaml");
        let default = dir.join("default.yaml");
        std::fs::write(&explicit, "listen: \":1\"\n").unwrap();
        std::fs::write(&default, "listen: \":2\"\nmain: http://m:2\n").unwrap();
        let defaults = [dir.join("absent.yaml"), default.clone()];

        let (cli, file) = Cli::try_parse_with_config(["tm"], &defaults).unwrap();
        assert_eq!(
            (cli.listen.as_str(), cli.main.as_str()),
            (":2", "http://m:2")
        );
        assert_eq!(file.unwrap().path, default);

        // `--config` replaces the search; it is not merged with the default file.
        let (cli, file) =
            Cli::try_parse_with_config(["tm", "-config", explicit.to_str().unwrap()], &defaults)
                .unwrap();
        assert_eq!(
            (cli.listen.as_str(), cli.main.as_str()),
            (":1", "http://localhost:8888")
        );
        assert_eq!(file.unwrap().path, explicit);

        // No file anywhere is fine.
        let (cli, file) = Cli::try_parse_with_config(["tm"], &[dir.join("absent.yaml")]).unwrap();
        assert_eq!((cli.listen.as_str(), file), (":8080", None));

        // An explicit file must exist.
        let missing = dir.join("missing.yaml");
        let err = Cli::try_parse_with_config(["tm", "--config", missing.to_str().unwrap()], &[])
            .unwrap_err();
        assert!(
            matches!(&err, StartError::File(ConfigFileError::Read { path, .. }) if *path == missing),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn subcommands_and_help_do_not_read_the_config_file() {
        let dir = temp_dir("config-skip");
        let broken = dir.join("broken.yaml");
        std::fs::write(&broken, "bogus: [\n").unwrap();
        let defaults = [broken.clone()];
        let (cli, file) =
            Cli::try_parse_with_config(["tm", "completions", "fish"], &defaults).unwrap();
        assert!(cli.command.is_some() && file.is_none());
        let err = Cli::try_parse_with_config(["tm", "-help"], &defaults).unwrap_err();
        assert!(
            matches!(&err, StartError::Flags(e) if e.kind() == clap::error::ErrorKind::DisplayHelp),
            "{err}"
        );
        assert!(matches!(
            Cli::try_parse_with_config(["tm"], &defaults),
            Err(StartError::File(ConfigFileError::Yaml { .. }))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
