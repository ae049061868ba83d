//! The shutdown signal (docs/operations.md, "Shutdown"): SIGINT or SIGTERM.
//!
//! Handlers are installed by [`Signals::install`] before the listeners are announced,
//! so a signal sent right after start-up is never lost to the default action.

use tracing::info;

/// Installed SIGINT and SIGTERM handlers.
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The operating system refused to install a handler.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => info!(signal = "SIGINT", "signal received"),
            _ = self.terminate.recv() => info!(signal = "SIGTERM", "signal received"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            info!(signal = "Ctrl-C", "signal received");
        }
    }
}
