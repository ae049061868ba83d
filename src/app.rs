//! The application: every part of a running trafficmirror, built once at start-up
//! from the [`Config`], each part given only the settings it uses. [`App::start`]
//! builds the byte budget, the mirror registry (seeded from `--mirror`, the restored
//! state file and the targets file), the proxy, the metrics, the admin endpoint, and
//! starts the background tasks: pruning expired mirrors, saving the state file,
//! watching the targets file and following the listener's certificate files.
//! [`crate::server`] then serves it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::Admin;
use crate::budget::Budget;
use crate::config::{Config, Initial};
use crate::mirror::Source;
use crate::observe::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry::Registry;
use crate::server::{self, Listeners};
use crate::sources::state_file::Saver;
use crate::sources::targets_file;
use crate::tls::listener::ListenerTls;

/// How often the targets file is read for changes. A change applies once it has
/// settled (`targets_file::SETTLE`), within `SETTLE` + twice this: 1 s, inside the
/// 2 s docs/operations.md promises ("State file and targets file").
const TARGETS_FILE_POLL: Duration = Duration::from_millis(250);

/// How often the listener's certificate and key files are read for changes (a renewal
/// applies within twice this).
const CERT_FILES_POLL: Duration = Duration::from_secs(1);

/// Serves `config` on `listeners` until `shutdown` resolves, then drains (see
/// [`server::run`]).
///
/// # Errors
/// The worker threads cannot be started (nothing has been served then).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    server::run(App::start(config), listeners, shutdown).await
}

/// The running parts, as the server takes them.
pub(crate) struct App {
    pub listener: server::Settings,
    pub proxy: Proxy,
    pub admin: Admin,
    /// `--tls-cert`: the main listener's handshakes, with the certificate followed.
    pub tls: Option<TlsAcceptor>,
    /// The mirrors, drained at shutdown.
    pub registry: Registry,
    /// Cancelled when shutdown begins: stops the state saver, the file watcher and the
    /// certificate follower, and the server's accept loops and connections.
    pub token: CancellationToken,
    /// Removes mirrors that failed for too long; runs until the drain is over.
    pub pruning: JoinHandle<()>,
}

impl App {
    /// Builds every part and starts the background tasks (in the caller's runtime).
    pub fn start(config: Config) -> Self {
        let Config {
            listener,
            proxy,
            admin,
            max_buffered_bytes,
            initial,
            warnings: _,
        } = config;
        let budget = Budget::new(max_buffered_bytes);
        let registry = Registry::new(proxy.mirror.clone(), budget.clone());
        seed(&registry, &initial);
        let proxy = Proxy::new(proxy, registry.clone(), budget.clone());
        let targets_file_valid = initial
            .targets_file
            .as_ref()
            .map(|_| Arc::new(AtomicBool::new(true)));
        let metrics = Metrics::new(
            proxy.main_stats(),
            registry.clone(),
            budget.clone(),
            targets_file_valid.clone(),
            initial.state_file.clone(),
        );
        let targets_file = initial.targets_file.map(|(path, _)| path);
        let saver = initial
            .state_file
            .map(|file| Saver::new(file, registry.clone()));
        let admin = Admin::new(
            admin,
            registry.clone(),
            budget,
            metrics,
            saver.clone(),
            targets_file.as_deref(),
        )
        .with_main(proxy.clone());
        let pruning = prune(&registry, saver.clone());
        let token = CancellationToken::new();
        if let Some(saver) = saver.clone() {
            tokio::spawn(saver.keep_saving(initial.state_file_retry, token.clone()));
        }
        if let (Some(path), Some(valid)) = (targets_file, targets_file_valid) {
            watch_targets_file(path, valid, &registry, saver, &token);
        }
        let tls = listener.tls.clone().map(|tls| follow(tls, &token));
        Self {
            listener,
            proxy,
            admin,
            tls,
            registry,
            token,
            pruning,
        }
    }
}

/// Puts the mirrors of `--mirror`, the state file and the targets file in `registry`.
fn seed(registry: &Registry, initial: &Initial) {
    registry.add_lines(&initial.mirrors, Source::Flag);
    for url in registry.add_lines(&initial.restored, Source::Admin) {
        // The flag defines this mirror; its line in the state file is left out.
        warn!(mirror = %url, "state file entry ignored: --mirror gives this mirror");
    }
    if let Some((_, lines)) = &initial.targets_file {
        registry.reconcile_file(lines);
    }
}

/// Removes mirrors that failed for longer than `--fail-after`.
fn prune(registry: &Registry, saver: Option<Saver>) -> JoinHandle<()> {
    let registry = registry.clone();
    tokio::spawn(async move {
        // A mirror that expired is gone from the saved set too, or a restart would
        // bring it back.
        let on_removed = || save_after_change(saver.clone());
        registry.prune_expired(on_removed).await;
    })
}

/// Saves the state file, if there is one, after a change no admin request made.
async fn save_after_change(saver: Option<Saver>) {
    if let Some(saver) = saver {
        saver.save_after_change().await;
    }
}

/// Applies the targets file's changes to `registry` as they come, until `token`.
fn watch_targets_file(
    path: PathBuf,
    valid: Arc<AtomicBool>,
    registry: &Registry,
    saver: Option<Saver>,
    token: &CancellationToken,
) {
    let registry = registry.clone();
    let shown = path.display().to_string();
    tokio::spawn(targets_file::watch(
        path,
        TARGETS_FILE_POLL,
        move |lines| {
            let change = registry.reconcile_file(&lines);
            if !change.is_empty() {
                info!(file = %shown, added = ?change.added, updated = ?change.updated, removed = ?change.removed, "targets file applied");
                // A URL the file took over from the admin endpoint leaves the state file.
                tokio::spawn(save_after_change(saver.clone()));
            }
        },
        valid,
        token.clone(),
    ));
}

/// The listener's TLS handshakes, with the certificate and key files followed as they
/// are renewed, until `token`.
fn follow(tls: ListenerTls, token: &CancellationToken) -> TlsAcceptor {
    let acceptor = TlsAcceptor::from(tls.config.clone());
    tokio::spawn(tls.follow(CERT_FILES_POLL, token.clone()));
    acceptor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::mirror::options::MirrorLine;

    fn line(s: &str) -> MirrorLine {
        MirrorLine::parse(s).expect("a valid mirror line")
    }

    #[test]
    fn seeding_takes_the_flags_the_restored_lines_and_the_targets_file_and_the_flag_wins() {
        let cli = Cli::try_parse_args(["trafficmirror"]).unwrap();
        let config = Config::from_cli(&cli).unwrap();
        let registry = Registry::new(config.proxy.mirror, Budget::new(1024));
        let initial = Initial {
            mirrors: vec![line("http://flag:1")],
            // The flag's mirror again, as a state file written before the flag was
            // given would hold it.
            restored: vec![line("http://flag:1 percent=50"), line("http://admin:1")],
            targets_file: Some(("targets.txt".into(), vec![line("http://file:1")])),
            ..config.initial
        };
        seed(&registry, &initial);
        let seeded: Vec<(String, Source)> = registry
            .statuses()
            .into_iter()
            .map(|m| (m.url, m.source))
            .collect();
        assert_eq!(
            seeded,
            [
                ("http://flag:1".to_owned(), Source::Flag),
                ("http://admin:1".to_owned(), Source::Admin),
                ("http://file:1".to_owned(), Source::File),
            ]
        );
        let saved: Vec<String> = registry
            .admin_lines()
            .iter()
            .map(|l| l.to_string())
            .collect();
        assert_eq!(saved, ["http://admin:1"]);
    }
}
