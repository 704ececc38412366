//! Storage engines behind the cache.
//!
//! A backend stores opaque byte values under string keys with a time to live,
//! the same small surface as Django's cache API. Everything memo knows about
//! values (envelopes, chunking, encryption) lives above this trait, so a
//! backend never needs to understand what it stores and may be as dumb, or as
//! broken, as a real cache server: memo checks every byte it reads back.
//!
//! Shipped engines: [`MemoryBackend`] (the embedded default), and behind cargo
//! features `MemcachedBackend` (`memcached`) and `RedisBackend` (`redis`),
//! both of which speak TLS with the feature `tls` (`TlsConfig`).
//! Implement [`Backend`] to bring your own.
//!
//! # Durations
//!
//! A caller may pass any `Duration` as a time to live, from zero to
//! `Duration::MAX`, and the shipped engines accept every one without a
//! panic and without an error: each clamps it to what it can hold, because
//! a TTL longer than the engine's limit means "as long as you can", never
//! "refuse" or, worse, "store it already expired". memcached keeps values
//! until January 2038 at most (its absolute expirations are 32-bit), Redis
//! for about 146 million years (its `PX` must not overflow a signed 64-bit
//! millisecond clock), and the memory backend for a century (so that its
//! expiry stays an instant the clock can represent). The network backends' timeouts and
//! back-off are clamped to a year likewise, so that no deadline computation
//! can overflow.
//!
//! # Deadlines
//!
//! A network backend's `timeout` bounds a whole call, not each socket read:
//! a server trickling its reply a byte at a time, or claiming a huge value,
//! is cut off when the call's time is up, however many reads that took.
//! Connecting (name resolution and handshake included) is bounded by
//! `connect_timeout` likewise, and a stale pooled connection replaced
//! during the call is replaced within the same deadlines. So a call to a
//! misbehaving server costs at most `connect_timeout + timeout`.

use std::time::Duration;

mod asynchronous;
pub mod memory;
#[cfg(any(feature = "memcached", feature = "redis"))]
mod net;
pub(crate) mod world;

#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;

pub use crate::common::error::{BackendError, BackendErrorKind};
// The async trait exists in every build because the policy is written once,
// as async code over it (see `drive`); it is public with feature `async`.
#[cfg(not(feature = "async"))]
pub(crate) use asynchronous::{AsyncBackend, BackendFuture};
#[cfg(feature = "async")]
pub use asynchronous::{AsyncBackend, BackendFuture};
pub use memory::MemoryBackend;
#[cfg(all(feature = "tls", any(feature = "memcached", feature = "redis")))]
pub use net::tls::TlsConfig;

/// A cache engine storing byte values under string keys.
///
/// Keys handed to a backend are at most 250 bytes of printable ASCII or
/// UTF-8 without control characters or spaces (memcached's rules), and values
/// are at most the configured `chunk_size` plus a few hundred bytes of
/// envelope. memo passes the expiration the caller asked for, which is
/// never zero when it stores; an engine must still accept any `ttl`
/// without panicking:
///
/// - a `ttl` beyond what the engine can hold is clamped to the longest it
///   can (see [the module docs](self)), and the entry is kept;
/// - a `ttl` shorter than the engine's resolution, zero included, is the
///   shortest expiry the engine has (one second on memcached, one
///   millisecond on Redis, at once in the memory backend): the entry goes
///   away almost immediately, which is what asking for no lifetime means.
///
/// `get_many`, `set_many`, `delete_if_value` and `touch_if_value` have
/// default bodies built on the single-key methods; engines that can do
/// better (one round trip, an atomic compare-and-delete) override them.
///
/// The invalidation barrier across processes (version tokens, tags) asks
/// nothing more of an engine: a lookup reads an entry and its tokens with
/// `get_many`, a missing token is written with `add`, and an invalidation
/// writes a new one with `set`. `add` must be atomic (set only if absent)
/// for concurrent callers to agree on a token; where it is not, a caller
/// may store behind a token that is not current, which costs a
/// recomputation, never a stale value. A `get_many` that answers in one
/// round trip keeps a hit at one round trip.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use std::time::Duration;
/// use memo_runtime::{Backend, BackendError};
///
/// /// A toy engine that ignores expiry.
/// #[derive(Default)]
/// struct MapBackend(Mutex<HashMap<String, Vec<u8>>>);
///
/// impl Backend for MapBackend {
///     fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
///         Ok(self.0.lock().unwrap().get(key).cloned())
///     }
///     fn set(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<(), BackendError> {
///         self.0.lock().unwrap().insert(key.to_owned(), value.to_vec());
///         Ok(())
///     }
///     fn add(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<bool, BackendError> {
///         let mut map = self.0.lock().unwrap();
///         if map.contains_key(key) {
///             return Ok(false);
///         }
///         map.insert(key.to_owned(), value.to_vec());
///         Ok(true)
///     }
///     fn touch(&self, key: &str, _ttl: Duration) -> Result<bool, BackendError> {
///         Ok(self.0.lock().unwrap().contains_key(key))
///     }
///     fn delete(&self, key: &str) -> Result<bool, BackendError> {
///         Ok(self.0.lock().unwrap().remove(key).is_some())
///     }
/// }
///
/// let backend = MapBackend::default();
/// backend.set("k", b"v", Duration::from_secs(60)).unwrap();
/// assert_eq!(backend.get_many(&["k", "missing"]).unwrap(), vec![Some(b"v".to_vec()), None]);
/// ```
pub trait Backend: Send + Sync + 'static {
    /// The value stored under `key`, or `None` when absent or expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;

    /// The values stored under `keys`, in the same order.
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().map(|key| self.get(key)).collect()
    }

    /// Stores `value` under `key` for `ttl`, replacing any value there.
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError>;

    /// Stores every `(key, value)` pair for `ttl`.
    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        items
            .iter()
            .try_for_each(|(key, value)| self.set(key, value, ttl))
    }

    /// Stores `value` under `key` only if nothing is stored there; `Ok(true)`
    /// when it was stored. Locks are built on this, so it must be atomic.
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError>;

    /// Gives the value under `key` a new `ttl`; `Ok(false)` when absent.
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError>;

    /// Removes `key`; `Ok(true)` when something was removed.
    fn delete(&self, key: &str) -> Result<bool, BackendError>;

    /// Removes `key` only if it holds exactly `expected`; `Ok(true)` when
    /// removed. Lock release uses this so that a holder whose lock expired
    /// cannot delete the next holder's token.
    ///
    /// The default body reads, compares and deletes, which leaves a small
    /// window between the read and the delete; engines with an atomic
    /// compare-and-delete (Redis with a script, the memory backend) override
    /// it.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        match self.get(key)? {
            Some(value) if value == expected => self.delete(key),
            _ => Ok(false),
        }
    }

    /// Gives the value under `key` a new `ttl` only if it holds exactly
    /// `expected`; `Ok(true)` when extended. A lock holder renews its lock
    /// with this, so that it never extends a lock that expired and was
    /// taken by someone else.
    ///
    /// The default body reads, compares and touches, which leaves a small
    /// window between the read and the touch in which another caller's
    /// value could be extended; the shipped engines override it with an
    /// atomic version (a Lua script on Redis, `gets` then `cas` on
    /// memcached, an atomic compute in the memory backend).
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        match self.get(key)? {
            Some(value) if value == expected => self.touch(key, ttl),
            _ => Ok(false),
        }
    }

    /// The same engine's non-blocking client, if it has one: how one
    /// `configure` serves async callers natively for the shipped engines.
    /// A user's engine keeps the default (`None`), and async calls then run
    /// its blocking methods off the executor.
    #[cfg(feature = "async")]
    #[doc(hidden)]
    fn __async(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn AsyncBackend>> {
        None
    }

    /// The engine's channel for telling other processes which entries to
    /// drop from their local copies (`Options::local`): Redis pub/sub for
    /// the shipped Redis engine. A user's engine keeps the default
    /// (`None`), and other processes' copies then live out their duration.
    #[doc(hidden)]
    fn __invalidations(&self) -> Option<&dyn Invalidations> {
        None
    }
}

/// See [`Backend::__invalidations`]. Not a public API.
#[doc(hidden)]
pub trait Invalidations: Send + Sync {
    /// Sends `message` to every subscriber of `channel`, at most once.
    fn publish(&self, channel: &str, message: &[u8]) -> Result<(), BackendError>;

    /// Starts a background subscriber of `channel` that hands each message
    /// to `deliver`, reconnecting after failures, until `deliver` returns
    /// `false`.
    fn subscribe(&self, channel: &str, deliver: Deliver);
}

/// What a subscriber hands each message to; `false` ends the subscription.
#[doc(hidden)]
pub type Deliver = Box<dyn FnMut(&[u8]) -> bool + Send>;

impl<B: Backend + ?Sized> Backend for std::sync::Arc<B>
where
    std::sync::Arc<B>: Send + Sync + 'static,
{
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        (**self).get(key)
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        (**self).get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        (**self).set(key, value, ttl)
    }
    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        (**self).set_many(items, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        (**self).add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        (**self).touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        (**self).delete(key)
    }
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        (**self).delete_if_value(key, expected)
    }
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        (**self).touch_if_value(key, expected, ttl)
    }
    #[cfg(feature = "async")]
    fn __async(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn AsyncBackend>> {
        B::__async(std::sync::Arc::clone(&self))
    }
    fn __invalidations(&self) -> Option<&dyn Invalidations> {
        (**self).__invalidations()
    }
}
