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

use crate::budget::Budget;
use crate::mirror::options::{MirrorLine, MirrorOptions};
use crate::mirror::{Member, Mirror, Plan, Settings, Shared, Source, Status};
use crate::target_url::TargetUrl;

/// The current list of mirrors, in the order they were added.
pub type Mirrors = Arc<Vec<Member>>;

/// What a change did, for the log.
#[derive(Debug, Default)]
pub struct Change {
    pub added: Vec<TargetUrl>,
    pub updated: Vec<TargetUrl>,
    pub removed: Vec<TargetUrl>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }
}

/// An admin change to a mirror that the targets file owns.
#[derive(Debug, thiserror::Error)]
#[error("{0} comes from the targets file: change it there")]
pub struct Conflict(pub String);

fn is_file_mirror(list: &[Member], url: &TargetUrl) -> bool {
    list.iter()
        .any(|m| m.mirror.url() == url && m.plan.source == Source::File)
}

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
    pub fn new(settings: Settings, budget: Budget) -> Self {
        let (expired_tx, expired_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                mirrors: RwLock::new(Arc::default()),
                shared: Arc::new(Shared {
                    settings,
                    tracker: TaskTracker::new(),
                    outstanding: Default::default(),
                    expired: expired_tx,
                    budget,
                    spill_now: Default::default(),
                }),
                expired: std::sync::Mutex::new(Some(expired_rx)),
            }),
        }
    }

    /// Takes out of the set every mirror that failed for longer than `--fail-after`,
    /// as they report it, and awaits `on_removed` after each removal (the state file is
    /// saved there). Runs until the registry is dropped; call once.
    pub async fn prune_expired<F, Fut>(&self, mut on_removed: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
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
            let removed = Registry { inner }.remove_mirror(&mirror);
            if removed {
                on_removed().await;
            }
        }
    }

    /// The current mirrors. Cheap: one `Arc` clone under a read lock.
    pub fn snapshot(&self) -> Mirrors {
        self.read().clone()
    }

    /// Applies an admin `PUT`: adds the URLs not present yet; for those present, replaces
    /// their options when `options` is given and leaves them alone otherwise (counters
    /// and health are kept either way). A `--mirror` mirror stays one: persistent, and
    /// not saved in the state file (the flag defines it again at the next start). All or
    /// nothing: a file mirror among them is an error and nothing changes.
    ///
    /// A change is applied only if `accept` agrees with the admin mirrors it would
    /// leave (what the state file would then hold); `Ok(None)` when it does not, and
    /// nothing changed. `accept` is asked only about a real change, under the set's
    /// lock, so no other change slips in between.
    ///
    /// # Errors
    /// One of the URLs belongs to the targets file.
    pub fn put(
        &self,
        urls: &[TargetUrl],
        options: Option<&MirrorOptions>,
        accept: impl FnOnce(&[MirrorLine]) -> bool,
    ) -> Result<Option<Change>, Conflict> {
        let mut guard = self.write();
        let mut list: Vec<Member> = guard.as_ref().clone();
        if let Some(url) = urls.iter().find(|u| is_file_mirror(&list, u)) {
            return Err(Conflict(url.to_string()));
        }
        let mut change = Change::default();
        for url in urls {
            let plan = |source| {
                let options = options.cloned().unwrap_or_default();
                Arc::new(Plan::new(options, source))
            };
            match list.iter_mut().find(|m| m.mirror.url() == url) {
                Some(member) if options.is_some() => {
                    member.plan = plan(member.plan.source);
                    change.updated.push(url.clone());
                }
                Some(_) => {} // present, no options: no change and no error
                None => {
                    list.push(Member {
                        mirror: Mirror::spawn(url.clone(), &self.inner.shared),
                        plan: plan(Source::Admin),
                    });
                    change.added.push(url.clone());
                }
            }
        }
        if !change.is_empty() {
            if !accept(&admin_lines_of(&list)) {
                return Ok(None);
            }
            *guard = Arc::new(list);
        }
        Ok(Some(change))
    }

    /// Adds mirrors that are not present yet, from `--mirror` or the state file; returns
    /// the URLs left out because they were present already.
    pub fn add_lines(&self, lines: &[MirrorLine], source: Source) -> Vec<TargetUrl> {
        let mut guard = self.write();
        let mut list: Vec<Member> = guard.as_ref().clone();
        let mut present = Vec::new();
        for line in lines {
            if list.iter().any(|m| m.mirror.url() == &line.url) {
                present.push(line.url.clone());
                continue;
            }
            list.push(Member {
                mirror: Mirror::spawn(line.url.clone(), &self.inner.shared),
                plan: Arc::new(Plan::new(line.options.clone(), source)),
            });
        }
        *guard = Arc::new(list);
        present
    }

    /// Makes the file mirrors exactly `lines`: adds the new ones, replaces the options of
    /// those that changed, removes those no longer listed. A mirror that stays keeps its
    /// counters, health and connections. A URL present from another source is taken
    /// over by the file.
    pub fn reconcile_file(&self, lines: &[MirrorLine]) -> Change {
        let mut guard = self.write();
        let mut change = Change::default();
        let mut list: Vec<Member> = Vec::with_capacity(lines.len() + guard.len());
        let mut removed = Vec::new();
        for member in guard.iter() {
            let line = lines.iter().find(|l| &l.url == member.mirror.url());
            match line {
                None if member.plan.source == Source::File => removed.push(member.clone()),
                None => list.push(member.clone()),
                Some(line)
                    if member.plan.source == Source::File
                        && member.plan.options == line.options =>
                {
                    list.push(member.clone());
                }
                Some(line) => {
                    change.updated.push(line.url.clone());
                    list.push(Member {
                        mirror: member.mirror.clone(),
                        plan: Arc::new(Plan::new(line.options.clone(), Source::File)),
                    });
                }
            }
        }
        for line in lines {
            if !list.iter().any(|m| m.mirror.url() == &line.url) {
                change.added.push(line.url.clone());
                list.push(Member {
                    mirror: Mirror::spawn(line.url.clone(), &self.inner.shared),
                    plan: Arc::new(Plan::new(line.options.clone(), Source::File)),
                });
            }
        }
        *guard = Arc::new(list);
        drop(guard);
        for member in &removed {
            member.mirror.close();
            change.removed.push(member.mirror.url().clone());
        }
        change
    }

    /// Applies an admin `DELETE`: removes the URLs that are present. All or nothing: a
    /// file mirror among them is an error and nothing changes.
    ///
    /// # Errors
    /// One of the URLs belongs to the targets file.
    pub fn delete(&self, urls: &[TargetUrl]) -> Result<Vec<TargetUrl>, Conflict> {
        let guard = self.read();
        if let Some(url) = urls.iter().find(|u| is_file_mirror(&guard, u)) {
            return Err(Conflict(url.to_string()));
        }
        drop(guard);
        Ok(self
            .retain(|m| !urls.contains(m.mirror.url()))
            .iter()
            .map(|m| m.mirror.url().clone())
            .collect())
    }

    /// The mirrors added through the admin endpoint, as the state file keeps them.
    pub fn admin_lines(&self) -> Vec<MirrorLine> {
        admin_lines_of(&self.snapshot())
    }

    /// The member for `url`, if present.
    pub fn find(&self, url: &TargetUrl) -> Option<Member> {
        self.snapshot()
            .iter()
            .find(|m| m.mirror.url() == url)
            .cloned()
    }

    /// Removes this very mirror (not a re-added one with the same URL); true when it
    /// was still in the set.
    fn remove_mirror(&self, mirror: &Arc<Mirror>) -> bool {
        !self.retain(|m| !Arc::ptr_eq(&m.mirror, mirror)).is_empty()
    }

    /// Keeps the mirrors for which `keep` is true; closes and returns the others.
    fn retain(&self, keep: impl Fn(&Member) -> bool) -> Vec<Member> {
        let mut guard = self.write();
        let (kept, removed): (Vec<_>, Vec<_>) = guard.iter().cloned().partition(|m| keep(m));
        if !removed.is_empty() {
            *guard = Arc::new(kept);
        }
        drop(guard);
        for m in &removed {
            m.mirror.close();
            m.mirror.close_connections();
        }
        removed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirrors> {
        self.inner.mirrors.read().expect("registry lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mirrors> {
        self.inner.mirrors.write().expect("registry lock poisoned")
    }

    /// Status of every mirror, in order.
    pub fn statuses(&self) -> Vec<Status> {
        self.snapshot()
            .iter()
            .map(|m| m.mirror.status(&m.plan))
            .collect()
    }

    /// Stops every mirror's queue from taking new copies. Queued copies still go out.
    pub fn close(&self) {
        for m in self.snapshot().iter() {
            m.mirror.close();
        }
        self.inner.shared.tracker.close();
    }

    /// Stops the copies of `spill=` mirrors still queued or in flight and spills them
    /// (at shutdown, with time left to write them).
    pub fn spill_now(&self) {
        self.inner.shared.spill_now.cancel();
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

/// The admin mirrors of `list`, as the state file keeps them.
fn admin_lines_of(list: &[Member]) -> Vec<MirrorLine> {
    list.iter()
        .filter(|m| m.plan.source == Source::Admin)
        .map(|m| MirrorLine {
            url: m.mirror.url().clone(),
            options: m.plan.options.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registry() -> Registry {
        let settings = Settings {
            retry_after: Duration::from_secs(60),
            fail_after: Duration::from_secs(1800),
            max_queued: 8,
            timeout: Duration::from_secs(20),
            tls: crate::tls::client_config(None, false).expect("default TLS settings"),
            pools: 1,
            max_connections: 4,
            max_compare_size: 1024,
            grpc_descriptors: None,
        };
        Registry::new(settings, Budget::new(1 << 20))
    }

    fn url(s: &str) -> TargetUrl {
        TargetUrl::parse(s).expect("a valid target URL")
    }

    fn line(s: &str) -> MirrorLine {
        MirrorLine::parse(s).expect("a valid mirror line")
    }

    fn urls(registry: &Registry) -> Vec<String> {
        registry
            .snapshot()
            .iter()
            .map(|m| m.mirror.url().to_string())
            .collect()
    }

    fn options(s: &str) -> MirrorOptions {
        line(&format!("http://x {s}")).options
    }

    impl Registry {
        /// `put` with every change accepted.
        fn put_all(
            &self,
            urls: &[TargetUrl],
            options: Option<&MirrorOptions>,
        ) -> Result<Change, Conflict> {
            self.put(urls, options, |_| true)
                .map(|change| change.expect("accepted"))
        }
    }

    #[test]
    fn put_adds_in_order_and_a_present_url_without_options_changes_nothing() {
        let registry = registry();
        let change = registry
            .put_all(&[url("http://b"), url("http://a")], None)
            .unwrap();
        assert_eq!(change.added.len(), 2);
        let again = registry.put_all(&[url("http://b")], None).unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(urls(&registry), ["http://b", "http://a"]);
    }

    #[test]
    fn put_with_options_replaces_them_and_keeps_the_mirror() {
        let registry = registry();
        registry.put_all(&[url("http://a")], None).unwrap();
        let before = registry.find(&url("http://a")).unwrap();
        let change = registry
            .put_all(&[url("http://a")], Some(&options("percent=5")))
            .unwrap();
        assert_eq!(change.updated, [url("http://a")]);
        let after = registry.find(&url("http://a")).unwrap();
        assert!(Arc::ptr_eq(&before.mirror, &after.mirror), "same counters");
        assert_eq!(after.plan.options, options("percent=5"));
        assert_eq!(after.plan.source, Source::Admin);
    }

    #[test]
    fn put_refused_by_accept_changes_nothing() {
        let registry = registry();
        registry.put_all(&[url("http://a")], None).unwrap();
        let refused = registry
            .put(&[url("http://b")], None, |lines| {
                assert_eq!(lines.len(), 2, "asked about the set the change would leave");
                false
            })
            .unwrap();
        assert!(refused.is_none());
        assert_eq!(urls(&registry), ["http://a"]);
    }

    #[test]
    fn delete_removes_only_what_is_present() {
        let registry = registry();
        registry
            .put_all(&[url("http://a"), url("http://b")], None)
            .unwrap();
        let removed = registry
            .delete(&[url("http://a"), url("http://absent")])
            .unwrap();
        assert_eq!(removed, [url("http://a")]);
        assert_eq!(urls(&registry), ["http://b"]);
    }

    #[test]
    fn file_mirrors_refuse_admin_changes_all_or_nothing() {
        let registry = registry();
        registry.reconcile_file(&[line("http://f")]);
        let put = registry.put_all(&[url("http://new"), url("http://f")], None);
        assert!(put.is_err());
        assert!(registry.delete(&[url("http://f")]).is_err());
        assert_eq!(urls(&registry), ["http://f"], "nothing applied");
    }

    #[test]
    fn reconcile_file_adds_updates_and_removes_only_file_mirrors() {
        let registry = registry();
        registry.put_all(&[url("http://admin")], None).unwrap();
        registry.reconcile_file(&[line("http://f1"), line("http://f2")]);
        let kept = registry.find(&url("http://f1")).unwrap();
        let change = registry.reconcile_file(&[line("http://f1 percent=50"), line("http://f3")]);
        assert_eq!(change.updated, [url("http://f1")]);
        assert_eq!(change.added, [url("http://f3")]);
        assert_eq!(change.removed, [url("http://f2")]);
        assert_eq!(urls(&registry), ["http://admin", "http://f1", "http://f3"]);
        let f1 = registry.find(&url("http://f1")).unwrap();
        assert!(
            Arc::ptr_eq(&kept.mirror, &f1.mirror),
            "f1 keeps its counters"
        );
        let unchanged = registry.reconcile_file(&[line("http://f1 percent=50"), line("http://f3")]);
        assert!(unchanged.is_empty(), "{unchanged:?}");
    }

    #[test]
    fn admin_lines_are_what_the_state_file_keeps() {
        let registry = registry();
        registry.add_lines(&[line("http://flag")], Source::Flag);
        registry.reconcile_file(&[line("http://file")]);
        registry
            .put_all(&[url("http://admin")], Some(&options("percent=5")))
            .unwrap();
        let lines: Vec<String> = registry
            .admin_lines()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(lines, ["http://admin percent=5"]);
    }

    #[test]
    fn add_lines_leaves_present_urls_out() {
        let registry = registry();
        registry.put_all(&[url("http://a")], None).unwrap();
        let present = registry.add_lines(&[line("http://a"), line("http://b")], Source::Admin);
        assert_eq!(present, [url("http://a")]);
        assert_eq!(urls(&registry), ["http://a", "http://b"]);
    }

    #[tokio::test]
    async fn close_then_drained_resolves_with_nothing_queued() {
        let registry = registry();
        registry.put_all(&[url("http://a")], None).unwrap();
        registry.close();
        tokio::time::timeout(Duration::from_secs(5), registry.drained())
            .await
            .expect("no delivery in flight: drained at once");
        assert_eq!(registry.outstanding(), 0);
    }
}
