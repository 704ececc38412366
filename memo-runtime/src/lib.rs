//! Memoize Rust functions in a shared cache.
//!
//! memo turns "compute this" into "look it up in the cache, or compute it,
//! store it and return it", against memcached, Redis, or an embedded
//! in-memory store when nothing is configured. It follows Djblets'
//! `cache_memoize()` (the toolkit under Review Board): the same key rules,
//! chunking and compression of large values, iterators cached as they
//! stream, encryption of keys and values, and a cache-backed lock against
//! stampedes, with authenticated encryption, bounded memory, and a format
//! that turns anything unexpected in the cache into a miss, never a wrong
//! value.
//!
//! ```
//! use memo_runtime::{cache_memoize, Options};
//!
//! let mut computed = 0;
//! for _ in 0..3 {
//!     let total: u64 = cache_memoize(
//!         ["doc-example", "sum"],
//!         || {
//!             computed += 1;
//!             (1..=100).sum()
//!         },
//!         &Options::new(),
//!     );
//!     assert_eq!(total, 5050);
//! }
//! assert_eq!(computed, 1);
//! ```
//!
//! The [`cache_memoize`](macro@cache_memoize) attribute does the same for a
//! whole function; the functional API here is what it expands to.
//!
//! # Modules
//!
//! - [`key`]: how keys are built, escaped and hashed.
//! - [`codec`]: the envelope every stored value travels in.
//! - [`crypto`]: AES-CBC with HMAC-SHA256, encrypt-then-MAC.
//! - [`chunk`]: splitting large values and iterators over several entries.
//! - [`lock`]: the cache-backed lock.
//! - [`mod@config`]: the global configuration.
//! - [`backend`]: the storage engines.
//! - [`mod@stats`]: counters of what the cache did.
//! - [`memoize`]: the functional API.

#![warn(missing_docs)]

pub mod backend;
pub mod chunk;
#[allow(dead_code)]
mod coalesce;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod key;
pub mod lock;
pub mod memoize;
mod schema;
pub mod stats;

#[doc(hidden)]
pub mod __fuzz;
#[doc(hidden)]
pub mod __private;

#[cfg(feature = "memcached")]
pub use backend::memcached::MemcachedBackend;
#[cfg(feature = "redis")]
pub use backend::redis::RedisBackend;
pub use backend::{Backend, BackendError, MemoryBackend};
pub use config::{CacheUrl, Config, ConfigError, config, configure};
pub use crypto::{EncryptionKey, KeyError};
pub use key::CacheKey;
pub use lock::{CacheLock, CacheLockGuard, LockError, LockOptions};
pub use memo_macros::{cache_memoize, cache_memoize_iter};
pub use memoize::{
    Error, MemoIter, Options, cache_memoize, cache_memoize_iter, invalidate, make_cache_key,
    try_cache_memoize,
};
pub use stats::{Stats, stats};
