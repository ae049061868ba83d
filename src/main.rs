//! The `trafficmirror` binary: parse flags, bind, announce, serve until a signal.
//! Every start-up error is one line on stderr and exit status 2 (bad flags or values)
//! or 1 (the system refused: port in use, no runtime).

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use trafficmirror::cli::Cli;
use trafficmirror::shutdown::Signals;
use trafficmirror::{Config, Listeners};

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(err) => return flag_error(&err),
    };
    init_tracing(cli.verbose);
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(err) => return fail(2, &err),
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    raise_open_files_limit();
    // This runtime only accepts connections and waits for signals; the connections are
    // served by the worker threads (`--threads`, see `workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(1, &format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(err) => return fail(1, &format!("cannot install signal handlers: {err}")),
    };
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(err) => return fail(1, &err),
    };
    announce(&config, &listeners);
    match trafficmirror::run(config, listeners, signals.recv()).await {
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
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "trafficmirror: listening on {} -> main {}",
        shown(&main),
        config.main
    );
    let Some(first) = admin.first() else { return };
    // A wildcard address is reachable locally as loopback.
    let host = match first.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let url = format!("http://{host}:{}{}", first.port(), config.admin_path);
    let auth = if config.users.is_some() {
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

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "info,trafficmirror=debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
