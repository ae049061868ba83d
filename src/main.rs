//! The `trafficmirror` binary: parse flags (and the config file), bind, announce, serve
//! until a signal; or print shell completions or the man page.
//! Every start-up error is one line on stderr and exit status 2 (bad flags, values or
//! config file) or 1 (the system refused: port in use, state file locked by another
//! instance, no runtime).

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use trafficmirror::cli::{self, AppliedFile, Cli, Command, LogFormat, StartError};
use trafficmirror::config::ConfigError;
use trafficmirror::shutdown::Signals;
use trafficmirror::{Config, Listeners};

fn main() -> ExitCode {
    let (cli, file) =
        match Cli::try_parse_with_config(std::env::args_os(), &cli::default_config_files()) {
            Ok(parsed) => parsed,
            Err(StartError::Flags(err)) => return flag_error(&err),
            Err(StartError::File(err)) => return fail(2, &err),
        };
    match &cli.command {
        Some(Command::Completions { shell }) => return completions(*shell),
        Some(Command::Man) => return man_page(),
        Some(Command::Demo { listen, rate }) => return demo(&cli, listen, *rate),
        Some(Command::Replay(args)) => return replay(&cli, args),
        Some(Command::Verdict(args)) => return verdict(args),
        None => {}
    }
    init_tracing(cli.verbose, cli.log_format);
    let config = match build(&cli, file.as_ref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    raise_open_files_limit();
    // This runtime only accepts connections and waits for signals; the connections are
    // served by the worker threads (`--threads`, see `workers`).
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let shutdown_timeout = config.listener.shutdown_timeout;
    let signalled = Arc::new(OnceLock::new());
    let code = runtime.block_on(serve(config, signalled.clone()));
    // Dropping the runtime would wait, without limit, for its blocking tasks (a read of
    // the targets file on a hung mount, say): they get what is left of the shutdown's
    // deadline and are abandoned after it (docs/operations.md, "Shutdown").
    let left = signalled.get().map_or(Duration::ZERO, |at: &Instant| {
        (*at + shutdown_timeout).saturating_duration_since(Instant::now())
    });
    runtime.shutdown_timeout(left);
    code
}

/// Validates the flags (logging which config file gave some) and logs the warnings;
/// an invalid value is one line on stderr and the exit status.
fn build(cli: &Cli, file: Option<&AppliedFile>) -> Result<Config, ExitCode> {
    if let Some(file) = file {
        tracing::info!(
            file = %file.path.display(),
            applied = %file.applied.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>().join(","),
            overridden = %file.overridden.join(","),
            "config file read"
        );
    }
    let config = match Config::from_cli(cli) {
        Ok(config) => config,
        // Like a port in use: the system refused, the value is fine.
        Err(err) if err.is_refusal() => return Err(fail(1, &err)),
        Err(err) => return Err(fail(2, &with_file_key(&err, file))),
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

/// The single-threaded runtime of `main` and `demo`.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| fail(1, &format!("cannot start the async runtime: {err}")))
}

/// `trafficmirror demo`: everything in one process until Ctrl-C.
/// `trafficmirror verdict`: one request to the admin endpoint.
fn verdict(args: &trafficmirror::cli::verdict::VerdictArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => ExitCode::from(rt.block_on(trafficmirror::cli::verdict::run(args))),
        Err(err) => fail(4, &format!("cannot start the runtime: {err}")),
    }
}

fn demo(cli: &Cli, listen: &str, rate: u32) -> ExitCode {
    // Info by default: the demo is there to be watched.
    init_tracing(cli.verbose.max(1), cli.log_format);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(err) => return fail(1, &format!("cannot install signal handlers: {err}")),
        };
        match trafficmirror::demo(listen, rate, signals.recv()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(1, &err),
        }
    })
}

/// `trafficmirror replay`: its exit status is the replay's (docs/record-replay.md).
fn replay(cli: &Cli, args: &cli::ReplayArgs) -> ExitCode {
    init_tracing(cli.verbose, cli.log_format);
    let mut methods = Vec::new();
    for method in &args.methods {
        match http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => return fail(2, &format!("invalid value for --method: {method:?}")),
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(1, &format!("cannot start the async runtime: {err}")),
    };
    let options = trafficmirror::replay::Options {
        sources: args.sources.clone(),
        to: args.to.clone(),
        speed: args.speed,
        concurrency: args.concurrency as usize,
        repeat: args.repeat,
        rate: args.rate,
        paths: args.paths.clone(),
        methods,
        percent: args.percent,
        timeout: args.timeout,
        ca_cert: args.ca_cert.clone(),
        insecure_skip_verify: args.insecure_skip_verify,
        compare: args.compare,
        ignore: args.ignore.clone(),
        max_mismatch_rate: args.max_mismatch_rate,
        max_compare_size: usize::try_from(cli.max_compare_size).unwrap_or(usize::MAX),
        grpc_descriptors: args.grpc_descriptors.clone(),
        endpoints: args.endpoints.clone(),
        output: args.output.clone(),
        durable: args.durable.clone(),
        exit_when_idle: args.exit_when_idle,
        ack_wait: args.ack_wait,
    };
    ExitCode::from(runtime.block_on(trafficmirror::replay::run(options)))
}

/// Serves until a signal; `signalled` receives the moment it came.
async fn serve(config: Config, signalled: Arc<OnceLock<Instant>>) -> ExitCode {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(err) => return fail(1, &format!("cannot install signal handlers: {err}")),
    };
    let listeners = match Listeners::bind(&config.listener).await {
        Ok(l) => l,
        Err(err) => return fail(1, &err),
    };
    announce(&config, &listeners);
    let shutdown = async move {
        signals.recv().await;
        let _ = signalled.set(Instant::now());
    };
    match trafficmirror::run(config, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(1, &format!("cannot start the worker threads: {err}")),
    }
}

/// Raises the soft open-files limit to the hard limit, as Go programs do at start-up: a
/// proxy holds a client socket and an upstream socket per request in flight, plus one
/// per mirror copy, and the usual soft limit of 1024 runs out at a few hundred
/// concurrent requests.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
}

/// Prints where the proxy and the admin endpoint are, and how to use the latter.
/// Write errors are ignored: a closed stdout (`| head -1`) must not stop the proxy.
fn announce(config: &Config, listeners: &Listeners) {
    let addrs = |ls: &[tokio::net::TcpListener]| -> Vec<SocketAddr> {
        ls.iter().filter_map(|l| l.local_addr().ok()).collect()
    };
    let main = addrs(&listeners.main);
    let admin = if listeners.admin.is_empty() {
        main.clone()
    } else {
        addrs(&listeners.admin)
    };
    let shown = |a: &[SocketAddr]| {
        a.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tls = config.listener.tls.is_some();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "trafficmirror: listening on {}{} -> main {}",
        shown(&main),
        if tls { " (https)" } else { "" },
        config.proxy.main
    );
    let Some(first) = admin.first() else { return };
    // A wildcard address is reachable locally as loopback.
    let host = match first.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    // The admin endpoint shares the main listener's TLS, unless it has its own address.
    let scheme = if tls && listeners.admin.is_empty() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{host}:{}{}", first.port(), config.admin.path);
    let auth = if config.admin.users.is_some() {
        "-u USER:PASSWORD "
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "trafficmirror: admin endpoint at {url} ({})\n  \
         list mirrors:  curl {auth}{url}\n  \
         add a mirror:  curl {auth}-X PUT '{url}?url=http://mirror:8080'\n  \
         remove it:     curl {auth}-X DELETE '{url}?url=http://mirror:8080'",
        shown(&admin)
    );
}

/// Logs go to stderr: text lines, or one JSON object per line (tracing-subscriber's
/// JSON layout: `timestamp`, `level`, `fields` holding `message` and the event's fields,
/// `target`).
fn init_tracing(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "info,trafficmirror=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// A validation error for a value that came from the config file also names the file
/// and the key, so the user knows where to look.
fn with_file_key(err: &ConfigError, file: Option<&AppliedFile>) -> String {
    let flag = match err {
        ConfigError::Invalid { flag, .. } | ConfigError::Url { flag, .. } => Some(*flag),
        ConfigError::PasswordFile(_) => Some("password"),
        ConfigError::Tls(_) => Some("ca-cert"),
        ConfigError::ListenerTls(err) => Some(err.flag()),
        ConfigError::MirrorLine(_) => Some("mirror"),
        ConfigError::GrpcDescriptors(_) => Some("grpc-descriptors"),
        // Names the state or targets file itself.
        ConfigError::File(_) => None,
    };
    match file.zip(flag).and_then(|(file, flag)| {
        file.key_for_flag(flag)
            .map(|key| (file.path.display(), key))
    }) {
        Some((path, key)) => format!("{err} (set in config file {path}, key {key:?})"),
        None => err.to_string(),
    }
}

/// Prints the completion script. Generated into memory first: the generator panics on
/// a write error, and a closed stdout (`| head`) must end quietly instead.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "trafficmirror", &mut script);
    print_stdout(&script)
}

/// Prints the man page: clap_mangen's sections plus where settings come from.
fn man_page() -> ExitCode {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    let mut extra = clap_mangen::roff::Roff::default();
    man_subcommands(&cmd, &mut extra);
    man_files_and_environment(&mut extra);
    let rendered = man
        .render_title(&mut page)
        .and_then(|()| man.render_name_section(&mut page))
        .and_then(|()| man.render_synopsis_section(&mut page))
        .and_then(|()| man.render_description_section(&mut page))
        .and_then(|()| man.render_options_section(&mut page))
        .and_then(|()| extra.to_writer(&mut page))
        .and_then(|()| man.render_version_section(&mut page));
    match rendered {
        Ok(()) => print_stdout(&page),
        Err(err) => fail(1, &format!("cannot render the man page: {err}")),
    }
}

/// The man page's SUBCOMMANDS section: clap_mangen's own list points to one page per
/// subcommand, which is not shipped.
fn man_subcommands(cmd: &clap::Command, extra: &mut clap_mangen::roff::Roff) {
    use clap_mangen::roff::{bold, italic, roman};
    extra.control("SH", ["SUBCOMMANDS"]);
    for sub in cmd.get_subcommands() {
        let mut usage = vec![bold(format!("trafficmirror {}", sub.get_name()))];
        for arg in sub.get_positionals() {
            usage.push(roman(" "));
            usage.push(italic(arg.get_id().as_str().to_uppercase()));
        }
        extra.control("TP", []).text(usage);
        let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
        let values: Vec<String> = sub
            .get_positionals()
            .flat_map(|arg| arg.get_possible_values())
            .map(|v| v.get_name().to_owned())
            .collect();
        let text = if values.is_empty() {
            about
        } else {
            format!("{about} ({})", values.join(", "))
        };
        extra.text([roman(text)]);
    }
}

/// The man page's FILES and ENVIRONMENT sections: where settings come from.
fn man_files_and_environment(extra: &mut clap_mangen::roff::Roff) {
    use clap_mangen::roff::{bold, italic, roman};
    extra.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "./trafficmirror.yaml",
            "Config file read when --config is not given.",
        ),
        (
            "~/.trafficmirror/trafficmirror.yaml",
            "Read when there is no ./trafficmirror.yaml.",
        ),
    ] {
        extra
            .control("TP", [])
            .text([italic(path)])
            .text([roman(what)]);
    }
    extra.control("PP", []).text([roman(
        "The config file is YAML: keys are long flag names (or their aliases), values \
             are plain values or, for --mirror, a list. A flag wins over its environment \
             variable, which wins over the file, which wins over the default.",
    )]);
    extra.control("SH", ["ENVIRONMENT"]);
    extra
        .control("TP", [])
        .text([bold("TRAFFICMIRROR_*")])
        .text([roman(
            "Every flag reads the variable named after it, e.g. TRAFFICMIRROR_TARGETS_ADDRESS.",
        )]);
    extra
        .control("TP", [])
        .text([bold("RUST_LOG")])
        .text([roman("Overrides the log filter chosen by -v.")]);
}

fn print_stdout(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => fail(1, &format!("cannot write to stdout: {err}")),
    }
}

/// Help and version go to stdout with status 0; any other flag error is one line.
fn flag_error(err: &clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ErrorKind};
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::SUCCESS
        }
        ErrorKind::UnknownArgument => {
            // clap reads `-bogus` as the short-flag cluster `-b -o …` and names only `-b`;
            // name the argument as the user typed it.
            let invalid = err.get(ContextKind::InvalidArg).map(ToString::to_string);
            let typed = invalid.as_deref().and_then(|inv| {
                std::env::args()
                    .skip(1)
                    .find(|a| a.starts_with(inv) && a.len() > inv.len())
            });
            match typed.or(invalid) {
                Some(arg) => fail(2, &format!("unknown flag '{arg}' (see --help)")),
                None => fail(2, &"unknown flag (see --help)"),
            }
        }
        _ => {
            let rendered = err.to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            fail(2, &format!("{first} (see --help)"))
        }
    }
}

fn fail(code: u8, message: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("trafficmirror: {message}");
    ExitCode::from(code)
}
