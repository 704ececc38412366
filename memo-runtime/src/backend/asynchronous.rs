//! The async face of a storage engine: the [`Backend`](super::Backend)
//! operations as futures, for callers on an executor.
//!
//! The trait is object-safe (memo keeps engines as `Arc<dyn AsyncBackend>`),
//! so each method returns a boxed [`BackendFuture`] rather than being an
//! `async fn`. The semantics, durations and deadlines of every method are
//! those of the synchronous trait, documented there: an async engine clamps
//! any `ttl` the same way, and a call to a misbehaving server costs at most
//! `connect_timeout + timeout`, measured as a deadline for the whole call.
//!
//! Nothing behind this trait may block the executor thread that polls it:
//! no blocking socket, no `thread::sleep`, no `std` lock held across an
//! `.await`.

// Without feature `async` the trait is internal (the policy drives the
// synchronous world through it), so its `pub` items are not exported.
#![cfg_attr(not(feature = "async"), allow(unreachable_pub, dead_code))]

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::BackendError;

/// What every [`AsyncBackend`] method returns: a `Send` future of the
/// operation's outcome, borrowing the engine and the arguments.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// A cache engine storing byte values under string keys, without blocking.
///
/// The same operations as [`Backend`](super::Backend), with the same
/// contract; `get_many`, `set_many`, `delete_if_value` and `touch_if_value`
/// have default bodies built on the single-key methods, which engines that
/// can do better override (one round trip, an atomic compare).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use memo_runtime::{AsyncBackend, BackendError, BackendFuture};
///
/// /// A toy engine that ignores expiry; its lock is never held across an
/// /// `.await`, so it never blocks an executor for long.
/// #[derive(Default)]
/// struct MapBackend(Mutex<HashMap<String, Vec<u8>>>);
///
/// impl AsyncBackend for MapBackend {
///     fn get<'a>(&'a self, key: &'a str) -> BackendFuture<'a, Option<Vec<u8>>> {
///         Box::pin(async move { Ok(self.0.lock().unwrap().get(key).cloned()) })
///     }
///     fn set<'a>(&'a self, key: &'a str, value: &'a [u8], _ttl: Duration) -> BackendFuture<'a, ()> {
///         Box::pin(async move {
///             self.0.lock().unwrap().insert(key.to_owned(), value.to_vec());
///             Ok(())
///         })
///     }
///     fn add<'a>(&'a self, key: &'a str, value: &'a [u8], _ttl: Duration) -> BackendFuture<'a, bool> {
///         Box::pin(async move {
///             let mut map = self.0.lock().unwrap();
///             if map.contains_key(key) {
///                 return Ok(false);
///             }
///             map.insert(key.to_owned(), value.to_vec());
///             Ok(true)
///         })
///     }
///     fn touch<'a>(&'a self, key: &'a str, _ttl: Duration) -> BackendFuture<'a, bool> {
///         Box::pin(async move { Ok(self.0.lock().unwrap().contains_key(key)) })
///     }
///     fn delete<'a>(&'a self, key: &'a str) -> BackendFuture<'a, bool> {
///         Box::pin(async move { Ok(self.0.lock().unwrap().remove(key).is_some()) })
///     }
/// }
/// ```
pub trait AsyncBackend: Send + Sync + 'static {
    /// The value stored under `key`, or `None` when absent or expired.
    fn get<'a>(&'a self, key: &'a str) -> BackendFuture<'a, Option<Vec<u8>>>;

    /// The values stored under `keys`, in the same order.
    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> BackendFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        })
    }

    /// Stores `value` under `key` for `ttl`, replacing any value there.
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> BackendFuture<'a, ()>;

    /// Stores every `(key, value)` pair for `ttl`.
    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        ttl: Duration,
    ) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            for (key, value) in items {
                self.set(key, value, ttl).await?;
            }
            Ok(())
        })
    }

    /// Stores `value` under `key` only if nothing is stored there; `Ok(true)`
    /// when it was stored. Locks are built on this, so it must be atomic.
    fn add<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> BackendFuture<'a, bool>;

    /// Gives the value under `key` a new `ttl`; `Ok(false)` when absent.
    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> BackendFuture<'a, bool>;

    /// Removes `key`; `Ok(true)` when something was removed.
    fn delete<'a>(&'a self, key: &'a str) -> BackendFuture<'a, bool>;

    /// Removes `key` only if it holds exactly `expected`; `Ok(true)` when
    /// removed. The default body reads, compares and deletes, which is not
    /// atomic; see [`Backend::delete_if_value`](super::Backend::delete_if_value).
    fn delete_if_value<'a>(&'a self, key: &'a str, expected: &'a [u8]) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            match self.get(key).await? {
                Some(value) if value == expected => self.delete(key).await,
                _ => Ok(false),
            }
        })
    }

    /// Gives the value under `key` a new `ttl` only if it holds exactly
    /// `expected`; `Ok(true)` when extended. The default body reads,
    /// compares and touches, which is not atomic; see
    /// [`Backend::touch_if_value`](super::Backend::touch_if_value).
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            match self.get(key).await? {
                Some(value) if value == expected => self.touch(key, ttl).await,
                _ => Ok(false),
            }
        })
    }
}
