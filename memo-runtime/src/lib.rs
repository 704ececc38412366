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
//! # Public surface
//!
//! Everything a user programs against is re-exported here: the functional
//! API, [`Options`], [`Config`], [`CacheKey`], [`CacheLock`], [`Stats`],
//! the error types, and the [`backend`] module with the [`Backend`] trait
//! and the shipped engines. The stored format (envelopes, manifests,
//! chunk keys) is private, so it can change without breaking a user.
//!
//! # Layers
//!
//! The modules are layers, each using only those below it:
//!
//! 1. `api`: the entry points ([`cache_memoize`](fn@cache_memoize) and
//!    friends, [`MemoIter`]; with feature `async`, `cache_memoize_async`
//!    and friends and `MemoStream`), each a few lines handing off to the
//!    policy.
//! 2. `policy`: the one memoize algorithm (coalesce, look up, lock, look
//!    again, compute, store), written once as async code over a driver
//!    that is either the caller's thread or tokio; what a failure means;
//!    the engine that holds its state per configuration (flights, local
//!    copies, the invalidation barrier); and the chunked pipeline that
//!    drives the backend for large values and iterators.
//! 3. `lock`: [`CacheLock`], built on the backend's atomic `add`.
//! 4. `config`: [`Config`], from code, a URL or the environment; the global
//!    slot; and `Config::resolve`, the one rule turning a key into what is
//!    stored, for values and locks alike.
//! 5. `backend`: the [`Backend`] trait (and `AsyncBackend`), the memory
//!    engine, the network clients over one shared connection pool
//!    (`backend::net`), and `backend::world`, how the layers above reach an
//!    engine from either world.
//! 6. `format`: the stored format, pure bytes in and bytes out: keys,
//!    envelope, postcard, zlib, crypto, manifests, type fingerprints.
//! 7. `common`: the parsed cache URL, the shared error types, the counters
//!    behind [`stats`], the fixed hash.
//!
//! `ARCHITECTURE.md`, at the root of the repository, walks through one call
//! and the invalidation barrier.

#![forbid(unsafe_code)]

mod api;
pub mod backend;
mod common;
mod config;
mod format;
mod lock;
mod policy;

#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod __fuzz;
#[doc(hidden)]
pub mod __private;

pub use api::{
    Error, MemoIter, Options, cache_memoize, cache_memoize_detached, cache_memoize_if,
    cache_memoize_iter, invalidate, invalidate_tag, make_cache_key, try_cache_memoize,
    try_cache_memoize_detached, try_cache_memoize_if,
};
#[cfg(feature = "async")]
pub use api::{
    MemoStream, cache_memoize_async, cache_memoize_detached_async, cache_memoize_if_async,
    cache_memoize_stream, invalidate_async, invalidate_tag_async, try_cache_memoize_async,
    try_cache_memoize_detached_async, try_cache_memoize_if_async,
};
pub use api::{cache_memoize_many, try_cache_memoize_many};
#[cfg(feature = "async")]
pub use api::{cache_memoize_many_async, try_cache_memoize_many_async};
#[cfg(all(feature = "tls", any(feature = "memcached", feature = "redis")))]
pub use backend::TlsConfig;
#[cfg(feature = "memcached")]
pub use backend::memcached::MemcachedBackend;
#[cfg(feature = "redis")]
pub use backend::redis::RedisBackend;
#[cfg(feature = "redis")]
pub use backend::redis::cluster::RedisClusterBackend;
#[cfg(feature = "async")]
pub use backend::{AsyncBackend, BackendFuture};
pub use backend::{Backend, BackendError, BackendErrorKind, MemoryBackend};
pub use common::counters::Stats;
pub use common::error::KeyError;
pub use config::{
    CacheUrl, Config, ConfigError, DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_EXPIRATION, DEFAULT_LOCAL_CAPACITY, MIN_CHUNK_SIZE, config, configure, stats,
};
pub use format::crypto::EncryptionKey;
pub use format::key::CacheKey;
pub use format::manifest::MAX_OVERHEAD as MAX_MANIFEST_OVERHEAD;
pub use lock::{
    CacheLock, CacheLockGuard, DEFAULT_LOCK_EXPIRATION, DEFAULT_LOCK_RETRY, DEFAULT_LOCK_TIMEOUT,
    LockError, LockOptions,
};
pub use memo_macros::{cache_memoize, cache_memoize_iter};
pub use policy::COALESCE_TIMEOUT;
pub use policy::observe::Function;
pub use policy::stream::{BATCH_CHUNKS, SUPERSEDED_GRACE};
