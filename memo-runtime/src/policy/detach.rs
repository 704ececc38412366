//! Owned calls: how a won refresh runs, in the caller's stead or detached
//! from it.
//!
//! With `stale_while_revalidate` or `refresh_ahead`, the caller that wins a
//! refresh has a value to serve already. The general API
//! (`cache_memoize(key, FnOnce() -> T, ..)`) lets the compute function and
//! the value borrow from the caller, so the refresh can only run in the
//! caller's own frame: the winner computes in the foreground while every
//! other caller is served at once. The `_owned` twins require `'static`
//! (and `Send`) of both, which lets the refresh run detached: on a small
//! background pool in the synchronous world, as a spawned task on the
//! caller's runtime in the async one, and the winner returns the value it
//! found at once.
//!
//! The policy stays one: [`memoize`](super::memoize) takes an
//! [`Ownership`] parameter that either hands a won refresh back to run in
//! the foreground ([`Borrowed`]) or runs it detached ([`Owned`]); both run
//! the same steps after the computation (`compute_then_store`: stamp, keep
//! locally, store, tell other processes, release the lock, drop the refresh
//! flight). The detached job keeps holding the process's refresh flight and,
//! for a stale value, the cross-process lock, so exactly one refresh runs
//! across processes, as in the foreground.
//!
//! The synchronous pool is bounded: [`POOL_THREADS`] threads, started on
//! first use, and [`POOL_QUEUE`] jobs waiting. When it is full the winner
//! refreshes in the foreground, as a borrowed call would: slower for that
//! caller, never wrong. A job that panics is caught on its thread: the
//! panic counts as a refresh failure, its guards release the lock and end
//! the refresh flight as it unwinds, and the stale value keeps being served
//! until its window ends.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::thread;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::Encode;
use super::drive::Driver;
use super::hot::{Keep, Refresh};
use super::{Call, HeldLock, compute_then_store};

/// How long-lived a call's compute function and value are, and so how a
/// refresh it wins runs (see the module docs). `J` is the refresh job.
pub(crate) trait Ownership<J>: Send + Sync {
    /// Runs `job` detached from the caller, or hands it back to run in the
    /// foreground (borrowed call, full pool, no runtime).
    fn detach(&self, job: J) -> Result<(), J>;
}

/// The compute function and value may borrow from the caller: a won
/// refresh runs in the foreground.
pub(crate) struct Borrowed;

impl<J> Ownership<J> for Borrowed {
    fn detach(&self, job: J) -> Result<(), J> {
        Err(job)
    }
}

/// The compute function and value are `'static` and `Send`: a won refresh
/// runs detached.
pub(crate) struct Owned;

impl<D, T, R, P, C, K> Ownership<RefreshJob<D, T, P, C, K>> for Owned
where
    D: Driver + Clone + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    R: Send + 'static,
    P: Compute<Output = R> + Send + 'static,
    P::Fut: Send,
    C: Fn(&R) -> Option<&T> + Send + Sync + 'static,
    K: Keep<T> + Send + 'static,
    Owned: Encode<D, T, R, C>,
{
    fn detach(&self, job: RefreshJob<D, T, P, C, K>) -> Result<(), RefreshJob<D, T, P, C, K>> {
        match job.driver.detached() {
            Some(detached) => {
                detached.run(job.run());
                Ok(())
            }
            None => Err(job),
        }
    }
}

/// A compute function, as the policy runs it: a synchronous one
/// ([`Now`]) or an async one ([`Later`]). A named type rather than a
/// closure, so that the API layer can name the refresh job it makes.
pub(crate) trait Compute {
    /// What the compute function returns.
    type Output;
    /// What the computation is awaited as.
    type Fut: Future<Output = Self::Output>;
    /// Starts the computation.
    fn start(self) -> Self::Fut;
}

/// A synchronous compute function, run when its future is made.
pub(crate) struct Now<F>(pub(crate) F);

impl<R, F: FnOnce() -> R> Compute for Now<F> {
    type Output = R;
    type Fut = std::future::Ready<R>;
    fn start(self) -> Self::Fut {
        std::future::ready((self.0)())
    }
}

/// An async compute function.
#[cfg(feature = "async")]
pub(crate) struct Later<F>(pub(crate) F);

#[cfg(feature = "async")]
impl<F: FnOnce() -> Fut, Fut: Future> Compute for Later<F> {
    type Output = Fut::Output;
    type Fut = Fut;
    fn start(self) -> Fut {
        (self.0)()
    }
}

/// Everything a won refresh needs to run without its caller: the call,
/// its compute function, how to pick the value to store from what it
/// returns, how the local copy keeps it, and what the winner holds (the
/// refresh flight and, for a stale value, the lock).
pub(crate) struct RefreshJob<D, T, P, C, K> {
    pub(crate) driver: D,
    pub(crate) call: Call,
    pub(crate) compute: P,
    pub(crate) cacheable: C,
    pub(crate) keep: K,
    pub(crate) refresh: Refresh,
    pub(crate) fp: u64,
    pub(crate) value: PhantomData<fn() -> T>,
}

impl<D, T, P, C, K> RefreshJob<D, T, P, C, K> {
    /// The refresh, as a future that owns everything it uses.
    async fn run<R>(self)
    where
        D: Driver,
        T: Serialize + DeserializeOwned,
        P: Compute<Output = R>,
        C: Fn(&R) -> Option<&T>,
        K: Keep<T>,
        Owned: Encode<D, T, R, C>,
    {
        let RefreshJob {
            driver,
            call,
            compute,
            cacheable,
            keep,
            refresh,
            fp,
            value: _,
        } = self;
        let lock = HeldLock {
            lock: refresh.lock,
            driver: &driver,
        };
        // An `Err` was counted as a refresh failure; nobody waits for it.
        drop(
            compute_then_store(
                &driver,
                &call,
                compute,
                &cacheable,
                &keep,
                &Owned,
                fp,
                None,
                lock,
                Some(refresh.flight),
            )
            .await,
        );
    }
}

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
                log::warn!("memo: cannot start a background refresh thread: {err}");
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
            .push_back(Box::new(move || crate::backend::drive::block_on(job)));
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
