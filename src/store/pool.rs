//! A small process-wide pool of threads for chunk crypto and its I/O.
//!
//! One open file can then use more than one core: while the caller fills the
//! next chunk, a worker encrypts and writes the previous one; while the
//! caller copies a chunk out, a worker reads and decrypts the next. Jobs
//! never take locks of the store, so waiting for one while holding a file's
//! lock cannot deadlock.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// The job queue; `None` if no worker thread could be started, in which
/// case jobs run on the caller's thread.
static QUEUE: LazyLock<Option<Sender<Job>>> = LazyLock::new(start_workers);

/// Worker threads the pool starts: one per core.
fn workers() -> usize {
    static WORKERS: LazyLock<usize> =
        LazyLock::new(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    *WORKERS
}

fn start_workers() -> Option<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    let workers = workers();
    let mut started = 0;
    for i in 0..workers {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dropzone-crypto-{i}"))
            .spawn(move || {
                loop {
                    let Some(job) = next_job(&rx) else { return };
                    // A panicking job must not take the worker with it; its
                    // result channel is dropped, which the waiter sees.
                    let _ = catch_unwind(AssertUnwindSafe(job));
                }
            });
        if spawned.is_ok() {
            started += 1;
        }
    }
    (started > 0).then_some(tx)
}

/// A process-wide cap on the jobs of one kind in flight, in proportion to
/// the pool's workers. A job holds its buffers (chunks and records) from
/// the moment it is handed over until its owner takes the result back, so
/// jobs beyond what the workers can run only cost memory: with more open
/// files than cores, every core already has work, and a file that finds
/// no place does its crypto on its own thread instead of queueing more.
pub(crate) struct Places {
    used: AtomicUsize,
    per_worker: usize,
}

impl Places {
    /// `per_worker` places for each worker of the pool.
    pub(crate) const fn per_worker(per_worker: usize) -> Self {
        Places {
            used: AtomicUsize::new(0),
            per_worker,
        }
    }

    fn cap(&self) -> usize {
        self.per_worker.saturating_mul(workers())
    }

    /// A place, given back when dropped; `None` while all are taken.
    pub(crate) fn take(&'static self) -> Option<Place> {
        let cap = self.cap();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self))
    }

    /// Places taken now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One job's place under a [`Places`] cap.
pub(crate) struct Place(&'static Places);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a thread polls before it sleeps, in nanoseconds. Waking a
/// sleeping thread costs an inter-processor interrupt, which in a VM is tens
/// of microseconds, as long as encrypting a few KiB; chunk jobs come every
/// ~50-130 us during a transfer, so a short poll usually catches the next
/// one awake. See [`set_polling`] for when not to poll.
static SPIN_NANOS: AtomicU64 = AtomicU64::new(50_000);

/// Sets how long crypto workers and waiters poll before they sleep
/// (`Duration::ZERO`: never). The default, 50 us, suits one process moving
/// one file as fast as it can. A server wants zero: its cores are shared
/// with the transport's encryption and with other sessions, and polling
/// took ~11% of its profile samples during a download (docs/PERFORMANCE.md).
pub fn set_polling(spin: Duration) {
    let nanos = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
    SPIN_NANOS.store(nanos, Ordering::Relaxed);
}

fn spin() -> Duration {
    Duration::from_nanos(SPIN_NANOS.load(Ordering::Relaxed))
}

/// Polls `poll` until it gives an answer or `spin` has passed. The clock is
/// read only every 64 tries: reading it costs more than a try.
fn poll_for<T>(spin: Duration, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    if spin.is_zero() {
        return None;
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if let Some(v) = poll() {
                return Some(v);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= spin {
            return None;
        }
    }
}

/// Takes the next job: polls for a while (see [`SPIN_NANOS`]), then sleeps
/// until one comes; `None` when the queue is closed.
fn next_job(rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    let lock = || crate::sync::lock(rx);
    let polled = poll_for(spin(), || match lock().try_recv() {
        Ok(job) => Some(Some(job)),
        Err(TryRecvError::Disconnected) => Some(None),
        Err(TryRecvError::Empty) => None,
    });
    match polled {
        Some(job) => job,
        // Hold the queue lock only while taking one job.
        None => lock().recv().ok(),
    }
}

/// The result of a job, to be waited for.
pub(crate) struct Pending<T>(Receiver<T>);

impl<T> Pending<T> {
    /// Waits for the job; `None` if it panicked.
    pub(crate) fn wait(self) -> Option<T> {
        self.0.recv().ok()
    }

    /// Waits for a job that is expected to finish soon, polling first (see
    /// [`SPIN_NANOS`]) so that the waiter is not put to sleep and woken again.
    pub(crate) fn wait_soon(self) -> Option<T> {
        let polled = poll_for(spin(), || match self.0.try_recv() {
            Ok(v) => Some(Some(v)),
            Err(TryRecvError::Disconnected) => Some(None),
            Err(TryRecvError::Empty) => None,
        });
        match polled {
            Some(v) => v,
            None => self.0.recv().ok(),
        }
    }
}

/// Runs `f` on a worker thread.
pub(crate) fn spawn<T, F>(f: F) -> Pending<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    match QUEUE.as_ref() {
        Some(queue) => {
            if let Err(mpsc::SendError(job)) = queue.send(job) {
                job();
            }
        }
        None => job(),
    }
    Pending(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_and_return() {
        let jobs: Vec<_> = (0..16u64).map(|i| spawn(move || i * i)).collect();
        let results: Vec<_> = jobs.into_iter().map(|p| p.wait().unwrap()).collect();
        assert_eq!(results, (0..16u64).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn jobs_complete_without_polling_too() {
        set_polling(Duration::ZERO);
        let jobs: Vec<_> = (0..8u64).map(|i| spawn(move || i + 1)).collect();
        let sum: u64 = jobs.into_iter().map(|p| p.wait_soon().unwrap()).sum();
        set_polling(Duration::from_micros(50));
        assert_eq!(sum, 36);
    }

    #[test]
    fn places_are_capped_per_worker_and_given_back() {
        static PLACES: Places = Places::per_worker(2);
        let cap = 2 * workers();
        let held: Vec<Place> = (0..cap).map_while(|_| PLACES.take()).collect();
        assert_eq!(held.len(), cap);
        assert!(PLACES.take().is_none(), "no place beyond the cap");
        drop(held);
        assert_eq!(PLACES.used(), 0);
        assert!(PLACES.take().is_some());
    }

    #[test]
    fn a_panicking_job_is_reported_and_the_pool_survives() {
        let p = spawn(|| -> u32 { panic!("boom") });
        assert_eq!(p.wait(), None);
        assert_eq!(spawn(|| 7).wait(), Some(7));
    }
}
