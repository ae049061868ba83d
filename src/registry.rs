//! The set of mirrors: added and removed by the admin endpoint, read by every proxied
//! request, and pruned of mirrors that failed for longer than `--fail-after`.
//!
//! Readers clone an `Arc` of the current list under a short read lock and never hold the
//! lock across an `.await`; writers replace the list (copy on write). A std lock, not
//! tokio's, because it is never held across an await (as in mini-redis `db.rs`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::mirror::{Mirror, Settings, Shared, Status};
use crate::target_url::TargetUrl;

/// The current list of mirrors, in the order they were added.
pub type Mirrors = Arc<Vec<Arc<Mirror>>>;

/// Handle to the mirror set. Cloning is shallow.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    mirrors: RwLock<Mirrors>,
    shared: Arc<Shared>,
    /// Mirrors that asked to leave (fail-after); taken by [`Registry::prune_expired`].
    expired: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Weak<Mirror>>>>,
}

impl Registry {
    pub fn new(settings: Settings) -> Self {
        let (expired_tx, expired_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                mirrors: RwLock::new(Arc::default()),
                shared: Arc::new(Shared {
                    settings,
                    tracker: TaskTracker::new(),
                    outstanding: Default::default(),
                    expired: expired_tx,
                }),
                expired: std::sync::Mutex::new(Some(expired_rx)),
            }),
        }
    }

    /// Takes out of the set every mirror that failed for longer than `--fail-after`,
    /// as they report it. Runs until the registry is dropped; call once.
    pub async fn prune_expired(&self) {
        let receiver = self
            .inner
            .expired
            .lock()
            .expect("registry lock poisoned")
            .take();
        let Some(mut receiver) = receiver else {
            debug!("expired-mirror pruning already running");
            return;
        };
        let registry = Arc::downgrade(&self.inner);
        while let Some(mirror) = receiver.recv().await {
            let (Some(inner), Some(mirror)) = (registry.upgrade(), mirror.upgrade()) else {
                continue;
            };
            Registry { inner }.remove_mirror(&mirror);
        }
    }

    /// The current mirrors. Cheap: one `Arc` clone under a read lock.
    pub fn snapshot(&self) -> Mirrors {
        self.inner
            .mirrors
            .read()
            .expect("registry lock poisoned")
            .clone()
    }

    /// Adds the URLs that are not present yet; returns those that were added.
    pub fn add(&self, urls: &[TargetUrl], persistent: bool) -> Vec<TargetUrl> {
        let mut guard = self.inner.mirrors.write().expect("registry lock poisoned");
        let mut list: Vec<Arc<Mirror>> = guard.as_ref().clone();
        let mut added = Vec::new();
        for url in urls {
            if list.iter().any(|m| m.url() == url) {
                continue; // already present: no change and no error
            }
            let mirror = Mirror::spawn(url.clone(), persistent, &self.inner.shared);
            list.push(mirror);
            added.push(url.clone());
        }
        if !added.is_empty() {
            *guard = Arc::new(list);
        }
        added
    }

    /// Removes the URLs that are present; returns those that were removed.
    pub fn remove(&self, urls: &[TargetUrl]) -> Vec<TargetUrl> {
        self.retain(|m| !urls.contains(m.url()))
            .iter()
            .map(|m| m.url().clone())
            .collect()
    }

    /// Removes this very mirror (not a re-added one with the same URL).
    fn remove_mirror(&self, mirror: &Arc<Mirror>) {
        self.retain(|m| !Arc::ptr_eq(m, mirror));
    }

    /// Keeps the mirrors for which `keep` is true; closes and returns the others.
    fn retain(&self, keep: impl Fn(&Arc<Mirror>) -> bool) -> Vec<Arc<Mirror>> {
        let mut guard = self.inner.mirrors.write().expect("registry lock poisoned");
        let (kept, removed): (Vec<_>, Vec<_>) = guard.iter().cloned().partition(|m| keep(m));
        if !removed.is_empty() {
            *guard = Arc::new(kept);
        }
        drop(guard);
        for m in &removed {
            m.close();
            m.close_connections();
        }
        removed
    }

    /// Status of every mirror, in order.
    pub fn statuses(&self) -> Vec<Status> {
        self.snapshot().iter().map(|m| m.status()).collect()
    }

    /// Stops every mirror's queue from taking new copies. Queued copies still go out.
    pub fn close(&self) {
        for m in self.snapshot().iter() {
            m.close();
        }
        self.inner.shared.tracker.close();
    }

    /// Resolves when every delivery has finished (after [`close`]).
    ///
    /// [`close`]: Registry::close
    pub async fn drained(&self) {
        self.inner.shared.tracker.wait().await;
    }

    /// Copies admitted to some mirror and not finished yet.
    pub fn outstanding(&self) -> usize {
        self.inner.shared.outstanding.load(Ordering::Relaxed)
    }
}
