//! The synchronous entry points: look up, or compute and store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use crate::backend::drive::block_on;
use crate::config::{config, give_back, take_config};
use crate::format::key::{CacheKey, recycle_key};
use crate::policy::hot::{Encoded, Keep, quick_local_hit};
use crate::policy::options::Options;
use crate::policy::{Call, memoize};

/// Runs the policy on the caller's thread.
pub(crate) fn memoize_now<T, R>(
    key: CacheKey,
    options: &Options,
    compute: impl FnOnce() -> R,
    cacheable: impl Fn(&R) -> Option<&T>,
    from_cache: impl Fn(T) -> R,
    keep: impl Keep<T>,
) -> R
where
    T: Serialize + DeserializeOwned,
{
    if let Some(value) = quick_local_hit(&key, options, &keep) {
        recycle_key(key);
        return from_cache(value);
    }
    let (config, generation) = take_config();
    let call = Call::new(config, key, options);
    if let Some(value) = call.local_hit(&keep).or_else(|| call.memory_hit(&keep)) {
        give_back(call.config, generation);
        return from_cache(value);
    }
    // On a local miss, the policy looks again: another lookup in memory,
    // against the backend's lookup that follows.
    let driver = call.blocking();
    block_on(memoize(
        &driver,
        call,
        move || std::future::ready(compute()),
        cacheable,
        from_cache,
        keep,
    ))
}

/// The full key under which `key` is stored: namespaced, then hashed when
/// the call encrypts, else escaped and shortened to memcached's rules (see
/// [`CacheKey`]).
///
/// ```
/// use memo_runtime::{configure, make_cache_key, Config, EncryptionKey, MemoryBackend, Options};
///
/// configure(Config::new(MemoryBackend::new()).namespace("example.com"));
/// assert_eq!(
///     make_cache_key(["%test%", "%1:2:3%"], &Options::new()),
///     "example.com:%25test%25:%251%3A2%3A3%25",
/// );
/// let key = EncryptionKey::new(b"0123456789abcdef").unwrap();
/// assert_eq!(
///     make_cache_key("abc123", &Options::new().encrypt(true).encryption_key(key)),
///     "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9",
/// );
/// ```
pub fn make_cache_key(key: impl Into<CacheKey>, options: &Options) -> String {
    Call::new(config(), key.into(), options)
        .key
        .stored()
        .to_owned()
}

/// Returns the value cached under `key`, or computes it with `compute`,
/// stores it and returns it.
///
/// The value is serialized with serde (postcard) in an envelope that binds
/// it to its key and type; a cached value that does not check out is a
/// miss. The cache never makes this call fail: when the backend is down the
/// value is computed.
///
/// Concurrent calls for the same key in this process share one computation
/// (see [`Options::coalesce`]).
///
/// ```
/// use memo_runtime::{cache_memoize, Options};
///
/// fn expensive(n: u64) -> Vec<u64> {
///     (0..n).map(|i| i * i).collect()
/// }
///
/// let squares: Vec<u64> = cache_memoize(["squares", "10"], || expensive(10), &Options::new());
/// assert_eq!(squares[3], 9);
/// ```
pub fn cache_memoize<K, T, F>(key: K, compute: F, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    memoize_now(
        key.into(),
        options,
        compute,
        |value: &T| Some(value),
        |value| value,
        Encoded,
    )
}

/// Like [`cache_memoize`] for a fallible computation: only `Ok` values are
/// cached; an `Err` is returned as is and nothing is stored. `E` needs no
/// serde.
///
/// ```
/// use memo_runtime::{try_cache_memoize, Options};
///
/// let parsed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize("parse:42", || "42".parse(), &Options::new());
/// assert_eq!(parsed, Ok(42));
/// let failed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize("parse:x", || "x".parse(), &Options::new());
/// assert!(failed.is_err());
/// ```
pub fn try_cache_memoize<K, T, E, F>(key: K, compute: F, options: &Options) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    memoize_now(
        key.into(),
        options,
        compute,
        |result: &Result<T, E>| result.as_ref().ok(),
        Ok,
        Encoded,
    )
}

/// Drops the entry memoized under `key` (and its chunks, if chunked). The
/// next call computes afresh. Removing an entry that is not there is fine.
///
/// ```
/// use memo_runtime::{cache_memoize, invalidate, Options};
///
/// let options = Options::new();
/// let _: u8 = cache_memoize("invalidate-doc", || 1, &options);
/// invalidate("invalidate-doc", &options).unwrap();
/// let again: u8 = cache_memoize("invalidate-doc", || 2, &options);
/// assert_eq!(again, 2);
/// ```
pub fn invalidate(key: impl Into<CacheKey>, options: &Options) -> Result<(), Error> {
    let call = Call::new(config(), key.into(), options);
    block_on(call.invalidate(&call.blocking()))?;
    Ok(())
}
