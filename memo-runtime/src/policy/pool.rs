//! Where a job detached from its caller runs: the synchronous world's
//! small background pool, or (feature `async`) the caller's tokio runtime.
//! Used for refreshes won by owned calls (`detach`).
//!
//! The pool is bounded: [`POOL_THREADS`] threads, started on first use, and
//! [`POOL_QUEUE`] jobs waiting; a caller finding no place runs its job
//! itself. A job that panics is caught on its thread, which goes on with
//! the next one.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread;

/// Room, in one world, to run a job detached from its caller.
pub(crate) trait Detached {
    /// Runs `job` to completion without the caller.
    fn run(self, job: impl Future<Output = ()> + Send + 'static);
}

/// Threads of the synchronous background pool.
pub(crate) const POOL_THREADS: usize = 4;

/// Jobs that may wait for a thread of the synchronous pool; a refresh won
/// beyond that runs in the foreground.
pub(crate) const POOL_QUEUE: usize = 12;

type Job = Box<dyn FnOnce() + Send>;

/// The synchronous world's background pool: a few threads, started on
/// first use, behind a bounded queue.
struct Pool {
    /// Jobs queued or running: at most `POOL_THREADS + POOL_QUEUE`.
    taken: AtomicUsize,
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            taken: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }));
        for n in 0..POOL_THREADS {
            let spawned = thread::Builder::new()
                .name(format!("memo-refresh-{n}"))
                .spawn(move || pool.work());
            if let Err(err) = spawned {
                // Fewer threads only means queued jobs wait longer; with
                // none at all, `slot` below finds no room.
                crate::common::diag::warning!(
                    "memo: cannot start a background refresh thread: {err}"
                );
                if n == 0 {
                    pool.taken.store(usize::MAX, Ordering::Relaxed);
                }
            }
        }
        pool
    })
}

impl Pool {
    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    match queue.pop_front() {
                        Some(job) => break job,
                        None => {
                            queue = self
                                .ready
                                .wait(queue)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    }
                }
            };
            // The job's own guards count the panic and let go of what it
            // held as it unwinds; the thread goes on with the next job.
            let _ = catch_unwind(AssertUnwindSafe(job));
            self.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A place taken in the synchronous pool, given back if unused.
pub(crate) struct Slot(());

/// A place in the synchronous pool, if it has one free.
pub(crate) fn slot() -> Option<Slot> {
    let pool = pool();
    pool.taken
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
            (taken < POOL_THREADS + POOL_QUEUE).then_some(taken + 1)
        })
        .ok()
        .map(|_| Slot(()))
}

impl Detached for Slot {
    fn run(self, job: impl Future<Output = ()> + Send + 'static) {
        // The place passes to the job, which gives it back when it ends.
        std::mem::forget(self);
        let pool = pool();
        pool.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Box::new(move || crate::backend::world::block_on(job)));
        pool.ready.notify_one();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        pool().taken.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(feature = "async")]
impl Detached for tokio::runtime::Handle {
    fn run(self, job: impl Future<Output = ()> + Send + 'static) {
        // A task ended by its runtime's shutdown drops its guards: the
        // refresh flight ends, and the lock is let go or expires.
        drop(self.spawn(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn the_pool_is_bounded_and_survives_a_panicking_job() {
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let mut taken = 0;
        while let Some(slot) = slot() {
            let gate = Arc::clone(&gate);
            slot.run(async move {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
            });
            taken += 1;
            assert!(taken <= POOL_THREADS + POOL_QUEUE);
        }
        assert_eq!(taken, POOL_THREADS + POOL_QUEUE);
        for _ in 0..taken {
            release.send(()).unwrap();
        }
        let (done, finished) = mpsc::channel();
        // Room again once the jobs ended, and a panicking job frees its place.
        let mut attempts = 0;
        let first = loop {
            if let Some(slot) = slot() {
                break slot;
            }
            attempts += 1;
            assert!(attempts < 1_000, "the pool never freed a place");
            thread::sleep(Duration::from_millis(10));
        };
        first.run(async { panic!("a refresh panics") });
        let after = loop {
            if let Some(slot) = slot() {
                break slot;
            }
            thread::sleep(Duration::from_millis(10));
        };
        after.run(async move { done.send(()).unwrap() });
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
