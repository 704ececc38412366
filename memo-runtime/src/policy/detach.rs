//! Detached calls: how a won refresh runs, in the caller's stead or
//! detached from it.
//!
//! With `stale_while_revalidate` or `refresh_ahead`, the caller that wins a
//! refresh has a value to serve already. The general API
//! (`cache_memoize(key, FnOnce() -> T, ..)`) lets the compute function
//! borrow from the caller, so the refresh can only run in the caller's own
//! frame: the winner computes in the foreground while every other caller is
//! served at once. The `_detached` calls require `'static` (and `Send`) of
//! the compute function and the value, which lets the refresh run detached: on a small
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
//! The synchronous pool (`pool`) is bounded: a few threads, started on
//! first use, and a bounded queue. When it is full the winner
//! refreshes in the foreground, as a borrowed call would: slower for that
//! caller, never wrong. A job that panics is caught on its thread: the
//! panic counts as a refresh failure, its guards release the lock and end
//! the refresh flight as it unwinds, and the stale value keeps being served
//! until its window ends.

use std::future::Future;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{Borrowed, Encode, Owned};
use super::drive::Driver;
use super::hot::{Keep, Refresh};
use super::observe::Link;
use super::pool::Detached;
use super::{Call, HeldLock, compute_then_store};

/// How long-lived a call's compute function and value are, and so how a
/// refresh it wins runs (see the module docs). `J` is the refresh job.
pub(crate) trait Ownership<J>: Send + Sync {
    /// Runs `job` detached from the caller, or hands it back to run in the
    /// foreground (borrowed call, full pool, no runtime).
    fn detach(&self, job: J) -> Result<(), J>;
}

impl<J> Ownership<J> for Borrowed {
    fn detach(&self, job: J) -> Result<(), J> {
        Err(job)
    }
}

impl<D, T, R, P, C, K> Ownership<RefreshJob<D, T, P, C, K>> for Owned
where
    D: Driver + Encode<T, R, C> + Clone + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    R: Send + 'static,
    P: Compute<Output = R> + Send + 'static,
    P::Fut: Send,
    C: Fn(&R) -> Option<&T> + Send + Sync + 'static,
    K: Keep<T> + Send + 'static,
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
    pub(crate) call: Call<'static>,
    pub(crate) compute: P,
    pub(crate) cacheable: C,
    pub(crate) keep: K,
    pub(crate) refresh: Refresh,
    pub(crate) fp: u64,
    /// The span of the call that won the refresh, to link back to.
    pub(crate) link: Link,
    pub(crate) value: PhantomData<fn() -> T>,
}

impl<D, T, P, C, K> RefreshJob<D, T, P, C, K> {
    /// The refresh, as a future that owns everything it uses.
    async fn run<R>(self)
    where
        D: Driver + Encode<T, R, C>,
        T: Serialize + DeserializeOwned,
        P: Compute<Output = R>,
        C: Fn(&R) -> Option<&T>,
        K: Keep<T>,
    {
        let RefreshJob {
            driver,
            call,
            compute,
            cacheable,
            keep,
            refresh,
            fp,
            link,
            value: _,
        } = self;
        let lock = HeldLock {
            lock: refresh.lock,
            driver: &driver,
        };
        let refreshed = compute_then_store(
            &driver,
            &call,
            compute,
            &cacheable,
            &keep,
            fp,
            None,
            lock,
            Some(refresh.flight),
        );
        // An `Err` was counted as a refresh failure; nobody waits for it.
        drop(link.cover(refreshed).await);
    }
}
