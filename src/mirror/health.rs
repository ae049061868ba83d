//! The per-mirror health state machine (docs/shadowing.md, "Health"), as plain code with
//! time passed in so every transition is unit-tested without sockets or sleeps.
//!
//! ```text
//!   alive --5 consecutive failures--> failing --retry-after elapsed, one trial--> retrying
//!     ^                                  ^                                           |
//!     |                                  +------------- trial failed ----------------+
//!     +------------------------------------------------ trial succeeded -------------+
//! ```
//!
//! Outcomes are matched to the state they were admitted in by an *epoch* that changes on
//! every transition: a copy admitted while alive that finishes after the mirror went
//! failing is counted by the caller but does not move the state machine, and while
//! retrying the only copy of the current epoch is the trial itself.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Consecutive failures after which an alive mirror becomes failing.
pub const FAILURES_BEFORE_FAILING: u32 = 5;

/// A mirror's health, named as in docs/shadowing.md ("Health") and the JSON listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Receives every copy.
    Alive,
    /// Receives nothing until `retry_after` has passed.
    Failing,
    /// One trial copy is in flight; everything else is dropped.
    Retrying,
}

/// Settings that drive the transitions.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub retry_after: Duration,
    pub fail_after: Duration,
    /// Persistent mirrors are never removed.
    pub persistent: bool,
}

/// Proof that a copy was admitted, handed back with its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
}

/// What the caller must log or do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Changed {
        from: State,
        to: State,
    },
    /// Failing continuously for `fail_after`: take the mirror out of the set.
    Remove,
}

/// Health of one mirror. Small and `Copy`-cheap; kept behind a `std::sync::Mutex`.
#[derive(Debug)]
pub struct Health {
    state: State,
    epoch: u64,
    consecutive_failures: u32,
    /// First failure of the current streak (monotonic, for `fail_after`).
    streak_started: Option<Instant>,
    /// The same moment on the wall clock, for `failing_since` in the JSON listing.
    streak_started_wall: Option<SystemTime>,
    /// While failing: when a trial may be sent.
    retry_at: Option<Instant>,
    /// While retrying: the trial has been admitted and not abandoned.
    trial_out: bool,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            state: State::Alive,
            epoch: 0,
            consecutive_failures: 0,
            streak_started: None,
            streak_started_wall: None,
            retry_at: None,
            trial_out: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Start of the current failure streak while the mirror is not alive.
    pub fn failing_since(&self) -> Option<SystemTime> {
        match self.state {
            State::Alive => None,
            State::Failing | State::Retrying => self.streak_started_wall,
        }
    }

    /// Decides whether one more copy may be sent now. A failing mirror whose
    /// `retry_after` has passed turns retrying and gets exactly this one copy.
    pub fn admit(&mut self, now: Instant) -> (Option<Ticket>, Option<Event>) {
        match self.state {
            State::Alive => (Some(self.ticket()), None),
            State::Retrying if self.trial_out => (None, None),
            State::Retrying => {
                // The first trial was abandoned: this copy is the trial.
                self.trial_out = true;
                (Some(self.ticket()), None)
            }
            State::Failing => {
                if self.retry_at.is_some_and(|at| now >= at) {
                    let event = self.transition(State::Retrying);
                    self.trial_out = true;
                    (Some(self.ticket()), Some(event))
                } else {
                    (None, None)
                }
            }
        }
    }

    /// Records the outcome of an admitted copy.
    pub fn record(
        &mut self,
        ticket: Ticket,
        success: bool,
        now: Instant,
        policy: &Policy,
    ) -> Option<Event> {
        if ticket.epoch != self.epoch {
            return None; // admitted under an earlier state: stale
        }
        match (self.state, success) {
            (State::Alive, true) => {
                self.reset_streak();
                None
            }
            (State::Alive, false) => {
                self.note_failure(now);
                if self.consecutive_failures >= FAILURES_BEFORE_FAILING {
                    self.retry_at = Some(now + policy.retry_after);
                    Some(self.transition(State::Failing))
                } else {
                    None
                }
            }
            (State::Retrying, true) => {
                self.reset_streak();
                Some(self.transition(State::Alive))
            }
            (State::Retrying, false) => {
                self.note_failure(now);
                let streak = self.streak_started.map_or(Duration::ZERO, |s| now - s);
                self.retry_at = Some(now + policy.retry_after);
                let event = self.transition(State::Failing);
                // The fail-after check runs whenever a trial fails.
                if !policy.persistent && streak >= policy.fail_after {
                    Some(Event::Remove)
                } else {
                    Some(event)
                }
            }
            // Nothing is admitted while failing, so no current-epoch ticket exists.
            (State::Failing, _) => None,
        }
    }

    /// Takes back an admitted copy that was never tried (this process could not open a
    /// connection: no file descriptor left), so it says nothing about the mirror. No
    /// outcome is recorded; an abandoned trial lets the next copy be the trial.
    pub fn abandon(&mut self, ticket: Ticket) {
        if ticket.epoch == self.epoch && self.state == State::Retrying {
            self.trial_out = false;
        }
    }

    fn ticket(&self) -> Ticket {
        Ticket { epoch: self.epoch }
    }

    fn note_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.streak_started.is_none() {
            self.streak_started = Some(now);
            self.streak_started_wall = Some(SystemTime::now());
        }
    }

    fn reset_streak(&mut self) {
        self.consecutive_failures = 0;
        self.streak_started = None;
        self.streak_started_wall = None;
        self.retry_at = None;
    }

    fn transition(&mut self, to: State) -> Event {
        let from = self.state;
        self.state = to;
        self.epoch += 1;
        Event::Changed { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(60);
    const FAIL: Duration = Duration::from_secs(30 * 60);

    fn policy(persistent: bool) -> Policy {
        Policy {
            retry_after: RETRY,
            fail_after: FAIL,
            persistent,
        }
    }

    fn changed(from: State, to: State) -> Option<Event> {
        Some(Event::Changed { from, to })
    }

    /// Records `n` failed copies at `t` (below five: the mirror stays alive).
    fn fail(h: &mut Health, n: u32, t: Instant) {
        for _ in 0..n {
            let (ticket, _) = h.admit(t);
            h.record(ticket.unwrap(), false, t, &policy(false));
        }
    }

    /// Drives an alive mirror to failing with five failures at `t`.
    fn fail_five(h: &mut Health, t: Instant) {
        for i in 0..FAILURES_BEFORE_FAILING {
            let (ticket, ev) = h.admit(t);
            assert_eq!(ev, None);
            let ev = h.record(ticket.unwrap(), false, t, &policy(false));
            if i + 1 < FAILURES_BEFORE_FAILING {
                assert_eq!(ev, None, "failure {i}");
            } else {
                assert_eq!(ev, changed(State::Alive, State::Failing));
            }
        }
    }

    #[test]
    fn fifth_consecutive_failure_marks_mirror_failing() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        assert_eq!(h.state(), State::Failing);
        assert!(h.failing_since().is_some());
        assert_eq!(
            h.admit(t + RETRY / 2),
            (None, None),
            "failing gets no traffic"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let t = Instant::now();
        let mut h = Health::new();
        fail(&mut h, 4, t);
        let (ticket, _) = h.admit(t);
        assert_eq!(h.record(ticket.unwrap(), true, t, &policy(false)), None);
        for _ in 0..4 {
            let (ticket, _) = h.admit(t);
            assert_eq!(h.record(ticket.unwrap(), false, t, &policy(false)), None);
        }
        assert_eq!(h.state(), State::Alive);
    }

    #[test]
    fn after_retry_after_exactly_one_trial_is_admitted() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        let (trial, ev) = h.admit(t + RETRY);
        assert!(trial.is_some());
        assert_eq!(ev, changed(State::Failing, State::Retrying));
        assert_eq!(h.admit(t + RETRY), (None, None), "only one trial");
        assert_eq!(h.state(), State::Retrying);
    }

    #[test]
    fn successful_trial_makes_mirror_alive() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        let (trial, _) = h.admit(t + RETRY);
        let ev = h.record(trial.unwrap(), true, t + RETRY, &policy(false));
        assert_eq!(ev, changed(State::Retrying, State::Alive));
        assert_eq!(h.failing_since(), None);
        assert!(h.admit(t + RETRY).0.is_some());
    }

    #[test]
    fn failed_trial_makes_mirror_failing_for_another_retry_after() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        let t1 = t + RETRY;
        let (trial, _) = h.admit(t1);
        let ev = h.record(trial.unwrap(), false, t1, &policy(false));
        assert_eq!(ev, changed(State::Retrying, State::Failing));
        assert_eq!(h.admit(t1 + RETRY / 2).0, None);
        assert!(h.admit(t1 + RETRY).0.is_some());
    }

    #[test]
    fn stale_outcomes_do_not_move_the_state() {
        let t = Instant::now();
        let mut h = Health::new();
        let (old, _) = h.admit(t);
        fail_five(&mut h, t);
        // A copy admitted while alive succeeds after the mirror went failing.
        assert_eq!(h.record(old.unwrap(), true, t, &policy(false)), None);
        assert_eq!(h.state(), State::Failing);
        let (_trial, _) = h.admit(t + RETRY);
        assert_eq!(h.record(old.unwrap(), true, t, &policy(false)), None);
        assert_eq!(h.state(), State::Retrying);
    }

    #[test]
    fn non_persistent_mirror_failing_for_fail_after_is_removed_on_failed_trial() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        let mut now = t;
        loop {
            now += RETRY;
            let (trial, _) = h.admit(now);
            let ev = h.record(trial.unwrap(), false, now, &policy(false));
            if now - t >= FAIL {
                assert_eq!(ev, Some(Event::Remove));
                break;
            }
            assert_eq!(
                ev,
                changed(State::Retrying, State::Failing),
                "at {:?}",
                now - t
            );
        }
        assert_eq!(
            now - t,
            FAIL,
            "removed at the first failed trial past fail-after"
        );
    }

    #[test]
    fn persistent_mirror_is_never_removed() {
        let t = Instant::now();
        let mut h = Health::new();
        fail_five(&mut h, t);
        let now = t + FAIL * 10;
        let (trial, _) = h.admit(now);
        let ev = h.record(trial.unwrap(), false, now, &policy(true));
        assert_eq!(ev, changed(State::Retrying, State::Failing));
    }

    #[test]
    fn fail_after_counts_from_the_first_failure_of_the_streak() {
        let t = Instant::now();
        let mut h = Health::new();
        let p = policy(false);
        // First failure long before the fifth: the streak starts at the first.
        let (ticket, _) = h.admit(t);
        h.record(ticket.unwrap(), false, t, &p);
        let later = t + FAIL;
        for _ in 0..4 {
            let (ticket, _) = h.admit(later);
            h.record(ticket.unwrap(), false, later, &p);
        }
        assert_eq!(h.state(), State::Failing);
        let (trial, _) = h.admit(later + RETRY);
        assert_eq!(
            h.record(trial.unwrap(), false, later + RETRY, &p),
            Some(Event::Remove)
        );
    }

    #[test]
    fn an_abandoned_copy_moves_nothing_and_an_abandoned_trial_is_replaced() {
        let t = Instant::now();
        let mut h = Health::new();
        // Alive: four failures, an abandoned copy, then one more failure is the fifth.
        fail(&mut h, 4, t);
        let (ticket, _) = h.admit(t);
        h.abandon(ticket.unwrap());
        assert_eq!(h.state(), State::Alive);
        let (ticket, _) = h.admit(t);
        let ev = h.record(ticket.unwrap(), false, t, &policy(false));
        assert_eq!(ev, changed(State::Alive, State::Failing));
        // Retrying: the trial is abandoned, so the next copy is admitted as the trial.
        let (trial, _) = h.admit(t + RETRY);
        h.abandon(trial.unwrap());
        assert_eq!(h.state(), State::Retrying);
        let (again, ev) = h.admit(t + RETRY);
        assert!(again.is_some());
        assert_eq!(ev, None);
        assert_eq!(
            h.admit(t + RETRY),
            (None, None),
            "still one trial at a time"
        );
        let ev = h.record(again.unwrap(), true, t + RETRY, &policy(false));
        assert_eq!(ev, changed(State::Retrying, State::Alive));
    }
}
