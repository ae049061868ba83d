//! Thread-per-core workers. Each worker thread runs its own single-threaded tokio
//! runtime and owns the connections handed to it: the client connection, the pooled
//! connection to main and the mirror copies it spawns all live on the same thread, so
//! a request never hops between threads. On a 2-core host this cut the proxy's CPU per
//! request by ~15% (no mirrors) to ~25% (two mirrors) against one work-stealing runtime
//! (see bench/README.md).

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Load given to a worker whose thread has ended, so that it is never the least loaded.
const DEAD: usize = usize::MAX / 2;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running on this thread (0 on any other thread).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The entry of `per_worker` that belongs to the current worker thread: per-worker
/// connection pools keep a request's upstream connections on its own thread.
pub fn pick<T>(per_worker: &[T]) -> &T {
    &per_worker[current() % per_worker.len()]
}

/// A running set of worker threads that accept jobs (usually accepted connections).
pub struct Workers<J> {
    senders: Vec<mpsc::UnboundedSender<J>>,
    /// Jobs each worker is running, so a new job goes to the least loaded one.
    load: Arc<[AtomicUsize]>,
    stop: CancellationToken,
    done: Vec<oneshot::Receiver<()>>,
}

/// Decrements a worker's load when its job ends (also when the job is dropped).
pub struct LoadGuard {
    load: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl<J: Send + 'static> Workers<J> {
    /// Starts `count` threads. `run` is called on the worker's thread, inside its
    /// runtime, for every job, with a guard to hold until the job is finished.
    ///
    /// # Errors
    /// A runtime or a thread that cannot be created.
    pub fn start<F, Fut>(count: usize, run: F) -> std::io::Result<Self>
    where
        F: Fn(J, LoadGuard) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let count = count.max(1);
        // Built first, so that an error below drops it and stops the threads started.
        let mut workers = Self {
            senders: Vec::with_capacity(count),
            load: (0..count).map(|_| AtomicUsize::new(0)).collect(),
            stop: CancellationToken::new(),
            done: Vec::with_capacity(count),
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<J>();
            let (done_tx, done_rx) = oneshot::channel();
            let (stop, load, run) = (workers.stop.clone(), workers.load.clone(), run.clone());
            std::thread::Builder::new()
                .name(format!("trafficmirror-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async {
                        let accept = async {
                            while let Some(job) = rx.recv().await {
                                let guard = LoadGuard {
                                    load: load.clone(),
                                    index,
                                };
                                tokio::spawn(run(job, guard));
                            }
                        };
                        tokio::select! {
                            () = accept => stop.cancelled().await,
                            () = stop.cancelled() => {}
                        }
                    });
                    // Drops whatever is still running (`stop` is only cancelled once the
                    // drain is over or has timed out) without waiting for blocking tasks
                    // such as a bcrypt check: shutdown stays within its timeout.
                    runtime.shutdown_background();
                    let _ = done_tx.send(());
                })?;
            workers.senders.push(tx);
            workers.done.push(done_rx);
        }
        Ok(workers)
    }

    /// Hands `job` to the least loaded worker that is still running.
    ///
    /// # Errors
    /// The job, when every worker has stopped.
    pub fn dispatch(&self, mut job: J) -> Result<(), J> {
        for _ in 0..self.senders.len() {
            let index = (0..self.load.len())
                .min_by_key(|&i| self.load[i].load(Ordering::Relaxed))
                .unwrap_or(0);
            self.load[index].fetch_add(1, Ordering::Relaxed);
            match self.senders[index].send(job) {
                Ok(()) => return Ok(()),
                Err(returned) => {
                    // That thread has ended (only a bug could do that): never pick it again.
                    self.load[index].store(DEAD, Ordering::Relaxed);
                    job = returned.0;
                }
            }
        }
        Err(job)
    }

    /// Stops every worker, dropping what they still run, and waits for their threads.
    pub async fn stop(mut self) {
        self.senders.clear();
        self.stop.cancel();
        for done in std::mem::take(&mut self.done) {
            let _ = done.await;
        }
    }
}

impl<J> Drop for Workers<J> {
    /// Workers never outlive their handle, even when [`Workers::stop`] is not awaited.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// Says when it is dropped.
    struct Dropped(Option<oneshot::Sender<()>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            let _ = self.0.take().map(|tx| tx.send(()));
        }
    }

    #[tokio::test]
    async fn jobs_run_on_the_least_loaded_worker_thread() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (release_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let release = release_tx.clone();
        let workers = Workers::start(2, move |job: u32, guard: LoadGuard| {
            let seen_tx = seen_tx.clone();
            let mut release = release.subscribe();
            async move {
                let name = std::thread::current().name().map(str::to_owned);
                seen_tx.send((job, current(), name)).unwrap();
                let _ = release.recv().await;
                drop(guard);
            }
        })
        .unwrap();
        let mut on = Vec::new();
        for job in 0..4 {
            workers.dispatch(job).unwrap();
            let (got, index, name) = tokio::time::timeout(WAIT, seen.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, job);
            assert_eq!(name, Some(format!("trafficmirror-{index}")));
            on.push(index);
        }
        // Jobs stay running, so the load alternates between the two workers.
        assert_eq!(on, [0, 1, 0, 1]);
        assert_eq!(workers.load[0].load(Ordering::Relaxed), 2);
        release_tx.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while workers.load.iter().any(|l| l.load(Ordering::Relaxed) != 0) {
            assert!(tokio::time::Instant::now() < deadline, "load never drops");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::timeout(WAIT, workers.stop()).await.unwrap();
    }

    /// One worker running one job that never ends; resolves once the job has started.
    /// The receiver fires when the job is dropped.
    async fn one_pending_job() -> (Workers<()>, oneshot::Receiver<()>) {
        let (dropped_tx, dropped) = oneshot::channel();
        let (started_tx, started) = oneshot::channel();
        let slot = Arc::new(std::sync::Mutex::new(Some((dropped_tx, started_tx))));
        let workers = Workers::start(1, move |(): (), _guard: LoadGuard| {
            let (dropped_tx, started_tx) = slot.lock().unwrap().take().unwrap();
            async move {
                let _dropped = Dropped(Some(dropped_tx));
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
            }
        })
        .unwrap();
        workers.dispatch(()).unwrap();
        tokio::time::timeout(WAIT, started).await.unwrap().unwrap();
        (workers, dropped)
    }

    #[tokio::test]
    async fn stop_drops_jobs_that_are_still_running() {
        let (workers, dropped) = one_pending_job().await;
        tokio::time::timeout(WAIT, workers.stop()).await.unwrap();
        tokio::time::timeout(WAIT, dropped).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_threads() {
        let (workers, dropped) = one_pending_job().await;
        drop(workers);
        // The pending job is dropped only when its runtime is, at the end of the thread.
        tokio::time::timeout(WAIT, dropped).await.unwrap().unwrap();
    }
}
