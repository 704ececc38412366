//! How the layers above reach a backend from either world, so that each of
//! their algorithms (the memoize policy, the lock loop) is written once, as
//! async code generic over a [`World`]:
//!
//! - [`Blocking`], the synchronous world: a [`Backend`] whose futures
//!   complete on their first poll (the blocking call runs inside it) and
//!   whose sleeps are `thread::sleep`, driven by [`block_on`] on the
//!   caller's own thread;
//! - `Tokio` (feature `async`): an [`AsyncBackend`] and tokio timers, for
//!   callers on an executor.
//!
//! And the two bridges between the worlds (feature `async`):
//! `SpawnBlocking` serves async calls from a synchronous engine by running
//! each call on tokio's blocking pool, and `OnBackground` serves
//! synchronous calls from an async-only engine by running each call on one
//! shared background runtime thread, never on a caller's executor.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

#[cfg(feature = "async")]
use super::BackendError;
use super::{AsyncBackend, Backend, BackendFuture};

/// What an algorithm above the backends needs from its world: the engine,
/// and a way to wait.
pub(crate) trait World: Send + Sync {
    /// The engine, as futures.
    fn backend(&self) -> &dyn AsyncBackend;

    /// Waits `duration` without holding anything.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The synchronous world: a blocking engine behind the async interface.
#[derive(Clone)]
pub(crate) struct Blocking(pub(crate) Arc<dyn Backend>);

impl World for Blocking {
    fn backend(&self) -> &dyn AsyncBackend {
        self
    }

    async fn sleep(&self, duration: Duration) {
        thread::sleep(duration);
    }
}

/// Each call runs when the future is made, so the future is ready on its
/// first poll: no waker, no executor, just the blocking call.
impl AsyncBackend for Blocking {
    fn get<'a>(&'a self, key: &'a str) -> BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(self.0.get(key)))
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BackendFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(std::future::ready(self.0.get_many(keys)))
    }
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> BackendFuture<'a, ()> {
        Box::pin(std::future::ready(self.0.set(key, value, ttl)))
    }
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        ttl: Duration,
    ) -> BackendFuture<'a, ()> {
        Box::pin(std::future::ready(self.0.set_many(items, ttl)))
    }
    fn add<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(self.0.add(key, value, ttl)))
    }
    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(self.0.touch(key, ttl)))
    }
    fn delete<'a>(&'a self, key: &'a str) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(self.0.delete(key)))
    }
    fn delete_if_value<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(self.0.delete_if_value(key, expected)))
    }
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> BackendFuture<'a, bool> {
        Box::pin(std::future::ready(
            self.0.touch_if_value(key, expected, ttl),
        ))
    }
}

/// Wakes a thread parked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future of the synchronous world on the caller's thread. Such a
/// future completes on its first poll; should one ever return `Pending`,
/// the thread parks until woken rather than spin.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        // Made once per thread: a hit costs no allocation for it.
        static WAKER: Waker = Waker::from(Arc::new(Unpark(thread::current())));
    }
    let mut future = pin!(future);
    // Borrowed rather than cloned: a clone and a drop per call are two
    // atomic operations on the hit path. A nested `block_on` (a memoized
    // call inside a computation) borrows the same waker, which is fine for
    // a shared borrow; only during the thread's teardown is there none.
    if let Ok(output) = WAKER.try_with(|waker| run(future.as_mut(), waker)) {
        return output;
    }
    run(future, &Waker::from(Arc::new(Unpark(thread::current()))))
}

/// Polls `future` until it is ready, parking the thread in between.
fn run<F: Future>(mut future: Pin<&mut F>, waker: &Waker) -> F::Output {
    let mut cx = Context::from_waker(waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

#[cfg(feature = "async")]
pub(crate) use bridges::{OnBackground, SpawnBlocking, Tokio, off_executor};

#[cfg(feature = "async")]
mod bridges {
    use std::sync::OnceLock;

    use super::*;

    /// The async world: an async engine and tokio's timers. The async API
    /// needs a tokio runtime with its time driver (`enable_time`, part of
    /// `enable_all` and of `#[tokio::main]`/`#[tokio::test]`).
    #[derive(Clone)]
    pub(crate) struct Tokio(pub(crate) Arc<dyn AsyncBackend>);

    impl World for Tokio {
        fn backend(&self) -> &dyn AsyncBackend {
            &*self.0
        }

        fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
            tokio::time::sleep(duration)
        }
    }

    /// Runs `work` on tokio's blocking pool, off the executor; inline when
    /// there is no runtime to run it on (a caller polling memo's futures
    /// with another executor). `Err` when the work panicked.
    pub(crate) async fn off_executor<R, W>(work: W) -> Result<R, BackendError>
    where
        R: Send + 'static,
        W: FnOnce() -> R + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(work());
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| BackendError::new(format!("a blocking backend call failed: {err}")))
    }

    /// A synchronous engine serving async calls: each call runs on tokio's
    /// blocking pool, so a slow or blocking engine never stalls an
    /// executor thread. Arguments are copied, as the pool needs owned data.
    pub(crate) struct SpawnBlocking(pub(crate) Arc<dyn Backend>);

    impl SpawnBlocking {
        fn run<'a, R, W>(&'a self, work: W) -> BackendFuture<'a, R>
        where
            R: Send + 'static,
            W: FnOnce(&dyn Backend) -> Result<R, BackendError> + Send + 'static,
        {
            let backend = Arc::clone(&self.0);
            Box::pin(async move { off_executor(move || work(&*backend)).await? })
        }
    }

    fn owned(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|key| (*key).to_owned()).collect()
    }

    impl AsyncBackend for SpawnBlocking {
        fn get<'a>(&'a self, key: &'a str) -> BackendFuture<'a, Option<Vec<u8>>> {
            let key = key.to_owned();
            self.run(move |b| b.get(&key))
        }
        fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BackendFuture<'a, Vec<Option<Vec<u8>>>> {
            let keys = owned(keys);
            self.run(move |b| b.get_many(&keys.iter().map(String::as_str).collect::<Vec<_>>()))
        }
        fn set<'a>(
            &'a self,
            key: &'a str,
            value: &'a [u8],
            ttl: Duration,
        ) -> BackendFuture<'a, ()> {
            let (key, value) = (key.to_owned(), value.to_vec());
            self.run(move |b| b.set(&key, &value, ttl))
        }
        fn set_many<'a>(
            &'a self,
            items: &'a [(&'a str, &'a [u8])],
            ttl: Duration,
        ) -> BackendFuture<'a, ()> {
            let items: Vec<(String, Vec<u8>)> = items
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.to_vec()))
                .collect();
            self.run(move |b| {
                let items: Vec<(&str, &[u8])> = items
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_slice()))
                    .collect();
                b.set_many(&items, ttl)
            })
        }
        fn add<'a>(
            &'a self,
            key: &'a str,
            value: &'a [u8],
            ttl: Duration,
        ) -> BackendFuture<'a, bool> {
            let (key, value) = (key.to_owned(), value.to_vec());
            self.run(move |b| b.add(&key, &value, ttl))
        }
        fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> BackendFuture<'a, bool> {
            let key = key.to_owned();
            self.run(move |b| b.touch(&key, ttl))
        }
        fn delete<'a>(&'a self, key: &'a str) -> BackendFuture<'a, bool> {
            let key = key.to_owned();
            self.run(move |b| b.delete(&key))
        }
        fn delete_if_value<'a>(
            &'a self,
            key: &'a str,
            expected: &'a [u8],
        ) -> BackendFuture<'a, bool> {
            let (key, expected) = (key.to_owned(), expected.to_vec());
            self.run(move |b| b.delete_if_value(&key, &expected))
        }
        fn touch_if_value<'a>(
            &'a self,
            key: &'a str,
            expected: &'a [u8],
            ttl: Duration,
        ) -> BackendFuture<'a, bool> {
            let (key, expected) = (key.to_owned(), expected.to_vec());
            self.run(move |b| b.touch_if_value(&key, &expected, ttl))
        }
    }

    /// The runtime behind [`OnBackground`]: one current-thread runtime on a
    /// thread of its own, started on first use and shared by every such
    /// engine. `None` when it could not be started.
    fn background() -> Option<&'static tokio::runtime::Handle> {
        static HANDLE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
        HANDLE
            .get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| {
                        crate::common::diag::error!("memo: cannot start a runtime: {err}");
                    })
                    .ok()?;
                let handle = runtime.handle().clone();
                thread::Builder::new()
                    .name("memo-async-backend".into())
                    .spawn(move || runtime.block_on(std::future::pending::<()>()))
                    .map_err(|err| {
                        crate::common::diag::error!("memo: cannot start a thread: {err}");
                    })
                    .ok()?;
                Some(handle)
            })
            .as_ref()
    }

    /// An async-only engine serving synchronous calls: each call is spawned
    /// on the shared background runtime and the calling thread waits for
    /// it. The caller's own executor (if the call comes from one) is never
    /// asked to run it, so a sync call made inside async code cannot
    /// deadlock on its own thread.
    pub(crate) struct OnBackground(pub(crate) Arc<dyn AsyncBackend>);

    impl OnBackground {
        fn run<R, W, F>(&self, work: W) -> Result<R, BackendError>
        where
            R: Send + 'static,
            W: FnOnce(Arc<dyn AsyncBackend>) -> F,
            F: Future<Output = Result<R, BackendError>> + Send + 'static,
        {
            let handle =
                background().ok_or_else(|| BackendError::new("no background runtime for memo"))?;
            let future = work(Arc::clone(&self.0));
            let (sender, receiver) = std::sync::mpsc::sync_channel(1);
            handle.spawn(async move {
                // The receiver waits for this; it only goes away with its
                // thread.
                let _ = sender.send(future.await);
            });
            receiver
                .recv()
                .map_err(|_| BackendError::new("the async backend call panicked"))?
        }
    }

    impl Backend for OnBackground {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
            let key = key.to_owned();
            self.run(|b| async move { b.get(&key).await })
        }
        fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
            let keys = owned(keys);
            self.run(|b| async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                b.get_many(&keys).await
            })
        }
        fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
            let (key, value) = (key.to_owned(), value.to_vec());
            self.run(|b| async move { b.set(&key, &value, ttl).await })
        }
        fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
            let items: Vec<(String, Vec<u8>)> = items
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.to_vec()))
                .collect();
            self.run(|b| async move {
                let items: Vec<(&str, &[u8])> = items
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_slice()))
                    .collect();
                b.set_many(&items, ttl).await
            })
        }
        fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
            let (key, value) = (key.to_owned(), value.to_vec());
            self.run(|b| async move { b.add(&key, &value, ttl).await })
        }
        fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
            let key = key.to_owned();
            self.run(|b| async move { b.touch(&key, ttl).await })
        }
        fn delete(&self, key: &str) -> Result<bool, BackendError> {
            let key = key.to_owned();
            self.run(|b| async move { b.delete(&key).await })
        }
        fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
            let (key, expected) = (key.to_owned(), expected.to_vec());
            self.run(|b| async move { b.delete_if_value(&key, &expected).await })
        }
        fn touch_if_value(
            &self,
            key: &str,
            expected: &[u8],
            ttl: Duration,
        ) -> Result<bool, BackendError> {
            let (key, expected) = (key.to_owned(), expected.to_vec());
            self.run(|b| async move { b.touch_if_value(&key, &expected, ttl).await })
        }
        fn __async(self: Arc<Self>) -> Option<Arc<dyn AsyncBackend>> {
            Some(Arc::clone(&self.0))
        }
    }
}
