//! Delivery lanes: one long-lived task per mirror and worker thread that runs that
//! mirror's copies, all at once (a `FuturesUnordered`), instead of a task spawned per
//! copy. A copy then costs a channel send and a node in the set, not a task: tokio's
//! task cell is 128-byte aligned (`posix_memalign`, ~780 instructions under callgrind),
//! is bound to the runtime's task list and scheduled once more. Measured with
//! `bench/instructions` (callgrind, per request, 2 mirrors, two runs each): GET 81.9k →
//! 80.2–80.5k, POST 4 KiB 91.5–92.0k → 90.7k instructions, i.e. 0.7–0.8k less per copy
//! (bench/README.md, "Profile and what each change bought").
//!
//! Copies do not wait on each other: each runs as its own future in the set, polled
//! only when it is woken. A lane starts with the first copy its worker offers and ends
//! when the mirror is closed (or dropped) and its last copy is done; the lane task is in
//! the mirrors' task tracker, so shutdown waits for it as it did for each copy's task.
//! A copy that panicked (a bug) ends alone, as its own task did: the lane goes on.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::task::Poll;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

/// One lane's sender, or why there is none.
enum Slot<T> {
    /// No copy offered on this worker yet.
    Idle,
    Open(mpsc::UnboundedSender<T>),
    /// The mirror is closed: no lane starts again.
    Closed,
}

/// A mirror's lanes, one per worker thread (see [`crate::workers`]).
pub(crate) struct Lanes<T> {
    slots: Box<[Mutex<Slot<T>>]>,
}

impl<T: Send + 'static> Lanes<T> {
    pub fn new(workers: usize) -> Self {
        Self {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Slot::Idle))
                .collect(),
        }
    }

    /// Hands `item` to the current worker's lane; `start` spawns a lane task reading
    /// the receiver it is given when there is none (or its runtime has ended). Gives
    /// `item` back when the lanes are closed.
    pub fn send<S>(&self, item: T, start: S) -> Result<(), T>
    where
        S: FnOnce(mpsc::UnboundedReceiver<T>),
    {
        // Held only for the send: never across an `.await`. Poisoning would be a bug
        // (nothing here panics while holding it).
        let mut slot = crate::workers::pick(&self.slots)
            .lock()
            .expect("mirror lane lock poisoned");
        let item = match &*slot {
            Slot::Open(tx) => match tx.send(item) {
                Ok(()) => return Ok(()),
                // The lane's runtime has ended (a test's, or at exit): start another.
                Err(mpsc::error::SendError(item)) => item,
            },
            Slot::Idle => item,
            Slot::Closed => return Err(item),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        start(rx);
        let sent = tx.send(item).map_err(|mpsc::error::SendError(item)| item);
        *slot = Slot::Open(tx);
        sent
    }

    /// Starts no lane again; each running lane ends once the items already sent to it
    /// are done.
    pub fn close(&self) {
        for slot in &self.slots {
            *slot.lock().expect("mirror lane lock poisoned") = Slot::Closed;
        }
    }
}

/// A lane's task: runs `deliver` for every item received, concurrently, until the
/// senders are gone and every delivery has finished.
pub(crate) async fn run<T, F, Fut>(mut rx: mpsc::UnboundedReceiver<T>, deliver: F)
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut running = FuturesUnordered::new();
    let mut open = true;
    poll_fn(|cx| {
        while open {
            match rx.poll_recv(cx) {
                // Boxed: a copy's future is several KB (`tokio::select!` with the shutdown
                // spill), and the set's node would otherwise take it by value, moved a few
                // times (~16k instructions per copy in memcpy under callgrind). Caught: the
                // panic hook has reported it, and the other copies go on.
                Poll::Ready(Some(item)) => {
                    running.push(AssertUnwindSafe(Box::pin(deliver(item))).catch_unwind());
                }
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        // Ready(None) once the set is empty; Pending with a wake-up when it yields.
        while let Poll::Ready(Some(_)) = running.poll_next_unpin(cx) {}
        if open || !running.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Waits (5 s at most, else fails saying `what`) until `done` reaches `count`.
    async fn until(done: &AtomicUsize, count: usize, what: &str) {
        let reached = async {
            while done.load(Ordering::SeqCst) < count {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn a_lane_runs_its_items_at_once_and_ends_after_close_when_they_are_done() {
        let lanes: Lanes<(u64, Arc<AtomicUsize>)> = Lanes::new(1);
        let tracker = tokio_util::task::TaskTracker::new();
        let started = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        for wait in [1, 0, 0] {
            let (started, gate_rx) = (started.clone(), gate_rx.clone());
            let start = |rx| {
                tracker.spawn(run(rx, move |(wait, done): (u64, Arc<AtomicUsize>)| {
                    let (started, mut gate_rx) = (started.clone(), gate_rx.clone());
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        if wait == 1 {
                            // The first item waits for the gate: the others must not.
                            let _ = gate_rx.wait_for(|open| *open).await;
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            };
            assert!(lanes.send((wait, done.clone()), start).is_ok());
        }
        tracker.close();
        until(&done, 2, "the items after a waiting one ran").await;
        // One lane for all three items.
        assert_eq!(tracker.len(), 1);
        assert_eq!(started.load(Ordering::SeqCst), 3);
        lanes.close();
        assert!(lanes.send((0, done.clone()), |_| unreachable!()).is_err());
        // Closed, but its waiting item keeps the lane running until it is done.
        tokio::task::yield_now().await;
        assert_eq!(tracker.len(), 1);
        gate_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the lane ends once closed and done");
        assert_eq!(done.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_item_that_panics_ends_alone() {
        let lanes: Lanes<bool> = Lanes::new(1);
        let tracker = tokio_util::task::TaskTracker::new();
        let done = Arc::new(AtomicUsize::new(0));
        for panics in [true, false] {
            let done = done.clone();
            let start = |rx| {
                tracker.spawn(run(rx, move |panics: bool| {
                    let done = done.clone();
                    async move {
                        tokio::task::yield_now().await;
                        assert!(!panics, "a copy's bug");
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            };
            assert!(lanes.send(panics, start).is_ok());
        }
        until(&done, 1, "the item beside a panicking one ran").await;
        // Still the one lane, still taking items.
        assert_eq!(tracker.len(), 1);
        assert!(lanes.send(false, |_| unreachable!()).is_ok());
        lanes.close();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the lane ends once closed and done");
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }
}
