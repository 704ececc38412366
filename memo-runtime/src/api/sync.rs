//! The synchronous entry points: look up, or compute and store.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use crate::backend::world::{Blocking, block_on};
use crate::format::key::CacheKey;
use crate::policy::codec::{Borrowed, Owned, as_ok, as_value};
use crate::policy::detach::{Now, Ownership, RefreshJob};
use crate::policy::hot::{Encoded, Keep};
use crate::policy::options::Options;
use crate::policy::{Call, engine, memoize};

/// Runs the policy on the caller's thread; a refresh it wins runs as
/// `ownership` says.
pub(crate) fn memoize_now<T, R, F, C, K, O>(
    key: CacheKey,
    options: &Options,
    compute: F,
    cacheable: C,
    from_cache: impl Fn(T) -> R,
    keep: K,
    ownership: O,
) -> R
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> R,
    C: Fn(&R) -> Option<&T>,
    K: Keep<T>,
    O: Ownership<RefreshJob<Blocking, T, Now<F>, C, K>>,
{
    let call = Call::new(engine::current(), key, options);
    if let Some(value) = call.serve_local(&keep) {
        return from_cache(value);
    }
    // The engine's driver, borrowed through this thread's own handle: the
    // call itself moves into the policy.
    let engine = Arc::clone(&call.engine);
    block_on(memoize(
        &engine.blocking,
        call,
        Now(compute),
        cacheable,
        from_cache,
        keep,
        ownership,
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
    Call::new(engine::current(), key.into(), options)
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
        Borrowed,
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
        Borrowed,
    )
}

/// [`cache_memoize`] for an owned computation (`'static` and `Send`, as
/// is the value): the same policy, except that a refresh this caller wins
/// runs in the background while it returns the value it found at once.
///
/// With [`Options::stale_while_revalidate`] a caller that finds the value
/// expired (within the window), or with [`Options::refresh_ahead`] one
/// that draws an early refresh, gets the value it found, and the refresh
/// (one per process, and for a stale value one across processes, through
/// the entry's lock) runs on a small background pool: a few threads and a
/// bounded queue; when that is full, the caller refreshes in the
/// foreground, as [`cache_memoize`] does. A refresh that panics or fails is
/// counted in [`Stats::refresh_failures`](crate::Stats::refresh_failures);
/// the stale value keeps being served until its window ends, after which a
/// caller computes in the foreground. Without either option this is
/// [`cache_memoize`].
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{cache_memoize_detached, Options};
///
/// let options = Options::new()
///     .expiration(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(600));
/// let id = 7;
/// let report: String = cache_memoize_detached(
///     ["report", "7"],
///     move || format!("report {id}"),
///     &options,
/// );
/// assert_eq!(report, "report 7");
/// ```
pub fn cache_memoize_detached<K, T, F>(key: K, compute: F, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    memoize_now(
        key.into(),
        options,
        compute,
        as_value::<T>,
        |value| value,
        Encoded,
        Owned,
    )
}

/// [`try_cache_memoize`] for an owned computation: a refresh this caller
/// wins runs in the background, as with [`cache_memoize_detached`]; a refresh
/// that returns `Err` counts as a refresh failure and stores nothing.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{try_cache_memoize_detached, Options};
///
/// let options = Options::new().refresh_ahead(1.0).expiration(Duration::from_secs(60));
/// let parsed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize_detached("owned-parse:42", || "42".parse(), &options);
/// assert_eq!(parsed, Ok(42));
/// ```
pub fn try_cache_memoize_detached<K, T, E, F>(key: K, compute: F, options: &Options) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    memoize_now(
        key.into(),
        options,
        compute,
        as_ok::<T, E>,
        Ok,
        Encoded,
        Owned,
    )
}

/// Like [`cache_memoize`], storing what `compute` returns only when
/// `predicate` accepts it: a value it refuses (an empty page, a partial
/// report, a placeholder) is returned to the caller and nothing is stored
/// (nor kept as a local copy), so the next call computes again.
///
/// The predicate sees values computed by this call only: a value found in
/// the cache is served as is. A refused value is not handed to concurrent
/// callers waiting on this computation (see [`Options::coalesce`]): one of
/// them computes in turn, as after an `Err` of [`try_cache_memoize`]. A
/// refused refresh ([`Options::force_overwrite`]) leaves the stored entry
/// as it was.
///
/// ```
/// use memo_runtime::{cache_memoize_if, Options};
///
/// let page: Vec<u32> = cache_memoize_if(
///     ["search", "rust"],
///     || Vec::new(),
///     |rows: &Vec<u32>| !rows.is_empty(),
///     &Options::new(),
/// );
/// assert!(page.is_empty());
/// // Not stored: the next call computes again.
/// let page: Vec<u32> = cache_memoize_if(
///     ["search", "rust"],
///     || vec![1, 2],
///     |rows: &Vec<u32>| !rows.is_empty(),
///     &Options::new(),
/// );
/// assert_eq!(page, [1, 2]);
/// ```
pub fn cache_memoize_if<K, T, F, P>(key: K, compute: F, predicate: P, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
    P: Fn(&T) -> bool,
{
    memoize_now(
        key.into(),
        &options.without_fail_safe(),
        compute,
        |value: &T| predicate(value).then_some(value),
        |value| value,
        Encoded,
        Borrowed,
    )
}

/// [`try_cache_memoize`] storing an `Ok` value only when `predicate`
/// accepts it (see [`cache_memoize_if`]); an `Err` is never stored.
///
/// ```
/// use memo_runtime::{try_cache_memoize_if, Options};
///
/// let fetched: Result<String, std::io::Error> = try_cache_memoize_if(
///     "status",
///     || Ok("pending".to_owned()),
///     |status: &String| status != "pending",
///     &Options::new(),
/// );
/// assert_eq!(fetched.unwrap(), "pending");
/// ```
pub fn try_cache_memoize_if<K, T, E, F, P>(
    key: K,
    compute: F,
    predicate: P,
    options: &Options,
) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
    P: Fn(&T) -> bool,
{
    memoize_now(
        key.into(),
        &options.without_fail_safe(),
        compute,
        |result: &Result<T, E>| result.as_ref().ok().filter(|value| predicate(value)),
        Ok,
        Encoded,
        Borrowed,
    )
}

/// `cacheable` narrowed to what `predicate` accepts, for an owned call: a
/// function for the reason given at `as_value`, so that the closure's
/// type holds only the types it uses.
pub(crate) fn cacheable_if<T, R, C, P>(
    cacheable: C,
    predicate: P,
) -> impl Fn(&R) -> Option<&T> + Copy
where
    C: Fn(&R) -> Option<&T> + Copy,
    P: Fn(&T) -> bool + Copy,
{
    move |result| cacheable(result).filter(|value| predicate(value))
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
    let call = Call::new(engine::current(), key.into(), options);
    block_on(call.invalidate(call.blocking()))?;
    Ok(())
}

/// Invalidates every entry stored with `tag` (see [`Options::tags`]): once
/// this returns `Ok`, each is a miss, in every process that shares the
/// cache, on every backend, and no call that starts afterwards is served a
/// value whose computation began before it. `options` give the encryption
/// settings the tag was stored under, as for [`invalidate`].
///
/// It writes one small entry, the tag's new version: no scan, no list of
/// keys. It returns `Err` when the backend cannot take that write (within
/// the backend's timeout), because an `Ok` must mean the barrier holds.
/// This process's local copies are all dropped (a tag's entries cannot be
/// named); other processes' are dropped on the Redis invalidation message,
/// or live out their `local` duration on other backends.
///
/// ```
/// use memo_runtime::{cache_memoize, invalidate_tag, Options};
///
/// let tagged = Options::new().tags(["user:7"]);
/// let _: String = cache_memoize("tag-doc:profile:7", || "ada".into(), &tagged);
/// invalidate_tag("user:7", &Options::new()).unwrap();
/// let again: String = cache_memoize("tag-doc:profile:7", || "ada lovelace".into(), &tagged);
/// assert_eq!(again, "ada lovelace");
/// ```
pub fn invalidate_tag(tag: &str, options: &Options) -> Result<(), Error> {
    let engine = engine::current();
    block_on(crate::policy::version::invalidate_tag(
        &engine,
        tag,
        options,
        &engine.blocking,
    ))?;
    Ok(())
}
