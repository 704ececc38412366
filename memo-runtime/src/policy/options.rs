//! [`Options`]: how one memoized call uses the cache. Defined here, below
//! the API that re-exports it, because the policy reads every field.

use std::time::Duration;

use crate::format::crypto::EncryptionKey;
use crate::lock::LockOptions;

/// How one memoized call uses the cache.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{LockOptions, Options};
///
/// let options = Options::new()
///     .expiration(Duration::from_secs(3600))
///     .large_data(true)
///     .encrypt(true)
///     .lock(LockOptions::new());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "options do nothing until passed to a memoized call"]
pub struct Options {
    pub(crate) expiration: Option<Duration>,
    pub(crate) force_overwrite: bool,
    pub(crate) large_data: bool,
    pub(crate) compress: bool,
    pub(crate) encrypt: Option<bool>,
    pub(crate) encryption_key: Option<EncryptionKey>,
    pub(crate) lock: Option<LockOptions>,
    pub(crate) coalesce: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            expiration: None,
            force_overwrite: false,
            large_data: false,
            compress: true,
            encrypt: None,
            encryption_key: None,
            lock: None,
            coalesce: true,
        }
    }
}

impl Options {
    /// The defaults: the configuration's expiration, no overwrite, no
    /// chunking, compression for chunked values, encryption as the
    /// configuration says, no lock, coalescing.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the value lives in the cache; without this, the
    /// configuration's default.
    ///
    /// Zero stores nothing, as Django's timeout of 0 does: the call still
    /// looks the key up, but on a miss it computes and returns the value
    /// without storing it (values, large values and iterators alike) and
    /// without taking the call's lock. A huge expiration (up to
    /// `Duration::MAX`) is passed on to the backend, which clamps it to
    /// what it can hold.
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.expiration = Some(expiration);
        self
    }

    /// Computes and stores even when a value is cached (a refresh).
    pub fn force_overwrite(mut self, force: bool) -> Self {
        self.force_overwrite = force;
        self
    }

    /// Stores the value compressed and split into chunks, for values that
    /// may exceed the backend's item limit (memcached's 1 MiB). Reading
    /// back handles either form, so turning this on or off for an existing
    /// key is safe.
    pub fn large_data(mut self, large: bool) -> Self {
        self.large_data = large;
        self
    }

    /// Whether chunked values and iterators are zlib-compressed (default
    /// `true`). Small values are never compressed: it would cost more than
    /// it saves.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Encrypts the key and value. When the configuration forces
    /// encryption, every call is encrypted whatever this says.
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = Some(encrypt);
        self
    }

    /// The key to encrypt this call with, instead of the configuration's.
    /// Setting a key does not by itself turn encryption on.
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// On a miss, takes a cache lock so that concurrent callers (threads or
    /// processes) compute the value once: the others wait, then read it.
    /// A caller whose wait times out computes anyway.
    pub fn lock(mut self, lock: LockOptions) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Whether concurrent calls for the same key in this process (threads
    /// or tasks) share one computation (default `true`). One of them leads:
    /// it looks up, takes the call's lock if any, computes and stores; the
    /// others wait for its value and decode their own copy. A leader that
    /// panics, returns `Err` or whose future is dropped hands over to a
    /// waiter. A waiter waits at most the lock's timeout, or
    /// [`COALESCE_TIMEOUT`](crate::COALESCE_TIMEOUT) without a lock, then
    /// computes (and stores) on its own. A waiter served by its leader
    /// counts as a hit in [`stats`](crate::stats).
    ///
    /// Applies to values (`cache_memoize`, `try_cache_memoize` and their
    /// async twins); iterators and streams each compute. A
    /// [`force_overwrite`](Self::force_overwrite) call is never coalesced:
    /// a refresh always computes.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }
}
