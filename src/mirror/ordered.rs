//! Ordered replay (`ordered=true`; docs/mirror-options.md, "Ordered replay"): when
//! request B arrived after main's answer to request A was complete, the copy of B reaches
//! the mirror only after the mirror answered the copy of A. Requests that overlapped at
//! main may overlap at the mirror, as they did at main.
//!
//! Every request selected for an ordered mirror gets an id on arrival and two halves:
//! the main half says when main's answer is complete (or will never be), the mirror half
//! when the mirror's copy is done (answered, failed, or never sent). Ids whose main
//! answer completed form the *main-done order*; the mirror has caught up to position `k`
//! of it when the copies of its first `k` entries are done. A request that arrived when
//! `k` answers were complete waits until the mirror has caught up to `k`. Both halves
//! report on drop, so no path (a dropped copy, a client gone) can leave a waiter stuck.
//!
//! The waiting happens in the copy's own delivery task, inside the mirror's queue bound:
//! a slow ordered mirror delays only itself, never main nor another mirror.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Happens-before bookkeeping for one ordered mirror.
#[derive(Debug)]
pub struct Order {
    state: Mutex<State>,
    /// How far the mirror has caught up with the main-done order.
    caught_up: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Entries ever appended to the main-done order.
    main_done: u64,
    /// Leading entries of the main-done order whose copies are done.
    caught_up: u64,
    /// Entries after `caught_up`: (id, its copy is done).
    pending: VecDeque<(u64, bool)>,
    /// Ids with one of their two reports so far.
    half: HashMap<u64, Half>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    MirrorDone,
    MainAbandoned,
}

impl Default for Order {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            caught_up: watch::channel(0).0,
        }
    }
}

impl Order {
    /// Registers a request that arrives now.
    pub fn arrive(self: &Arc<Self>) -> (MainHalf, MirrorHalf) {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let barrier = state.main_done;
        drop(state);
        (
            MainHalf {
                order: self.clone(),
                id,
                reported: false,
            },
            MirrorHalf {
                order: self.clone(),
                id,
                barrier,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only plain field updates happen under this lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn main_done(&self, id: u64) {
        let mut state = self.lock();
        let copy_done = state.half.remove(&id) == Some(Half::MirrorDone);
        state.pending.push_back((id, copy_done));
        state.main_done += 1;
        self.advance(&mut state);
    }

    fn main_abandoned(&self, id: u64) {
        let mut state = self.lock();
        if state.half.remove(&id) != Some(Half::MirrorDone) {
            state.half.insert(id, Half::MainAbandoned);
        }
    }

    fn mirror_done(&self, id: u64) {
        let mut state = self.lock();
        if let Some(entry) = state.pending.iter_mut().find(|(i, _)| *i == id) {
            entry.1 = true;
            self.advance(&mut state);
        } else if state.half.remove(&id) != Some(Half::MainAbandoned) {
            state.half.insert(id, Half::MirrorDone);
        }
    }

    fn advance(&self, state: &mut State) {
        let before = state.caught_up;
        while state.pending.front().is_some_and(|(_, done)| *done) {
            state.pending.pop_front();
            state.caught_up += 1;
        }
        if state.caught_up != before {
            self.caught_up.send_replace(state.caught_up);
        }
    }
}

/// Reports when main's answer to the request is complete; dropped unreported, that it
/// never will be.
#[derive(Debug)]
pub struct MainHalf {
    order: Arc<Order>,
    id: u64,
    reported: bool,
}

impl MainHalf {
    /// Main's answer is complete.
    pub fn done(mut self) {
        self.reported = true;
        self.order.main_done(self.id);
    }
}

impl Drop for MainHalf {
    fn drop(&mut self) {
        if !self.reported {
            self.order.main_abandoned(self.id);
        }
    }
}

/// Travels with the mirror's copy: waits for the copies it must follow, and reports the
/// copy done when dropped.
#[derive(Debug)]
pub struct MirrorHalf {
    order: Arc<Order>,
    id: u64,
    /// Main answers complete when the request arrived.
    barrier: u64,
}

impl MirrorHalf {
    /// Resolves once the mirror has answered every copy this one must follow.
    pub async fn wait_turn(&self) {
        let mut caught_up = self.order.caught_up.subscribe();
        let _ = caught_up.wait_for(|&k| k >= self.barrier).await;
    }
}

impl Drop for MirrorHalf {
    fn drop(&mut self) {
        self.order.mirror_done(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn turn_comes(half: &MirrorHalf) -> bool {
        tokio::time::timeout(Duration::from_millis(50), half.wait_turn())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_request_after_a_complete_answer_waits_for_that_copy() {
        let order = Arc::new(Order::default());
        let (main_a, mirror_a) = order.arrive();
        main_a.done();
        let (_main_b, mirror_b) = order.arrive();
        assert!(turn_comes(&mirror_a).await);
        assert!(!turn_comes(&mirror_b).await, "B waits for A's copy");
        drop(mirror_a);
        assert!(turn_comes(&mirror_b).await);
    }

    #[tokio::test]
    async fn overlapping_requests_do_not_wait_for_each_other() {
        let order = Arc::new(Order::default());
        let (main_a, mirror_a) = order.arrive();
        let (main_b, mirror_b) = order.arrive();
        assert!(turn_comes(&mirror_a).await);
        assert!(turn_comes(&mirror_b).await);
        main_a.done();
        main_b.done();
        drop((mirror_a, mirror_b));
        let (_m, mirror_c) = order.arrive();
        assert!(turn_comes(&mirror_c).await);
        assert!(order.lock().half.is_empty());
    }

    #[tokio::test]
    async fn copies_done_before_main_and_abandoned_answers_leave_nothing_behind() {
        let order = Arc::new(Order::default());
        let (main_a, mirror_a) = order.arrive();
        drop(mirror_a); // the copy finished (or was dropped) first
        main_a.done();
        let (main_b, mirror_b) = order.arrive();
        drop(main_b); // the client went away: main's answer never completes
        drop(mirror_b);
        let (_m, mirror_c) = order.arrive();
        assert!(turn_comes(&mirror_c).await);
        let state = order.lock();
        assert!(state.half.is_empty() && state.pending.is_empty());
        assert_eq!(state.caught_up, 1);
    }
}
