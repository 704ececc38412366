//! The async entry points (feature `async`): the same policy as the
//! synchronous ones, driven on tokio, so a sync process and an async
//! process share entries.

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::sync::cacheable_if;
use crate::backend::world::Tokio;
use crate::format::key::CacheKey;
use crate::policy::codec::{Borrowed, Owned, as_ok, as_value};
use crate::policy::detach::{Later, Ownership, RefreshJob};
use crate::policy::hot::{Encoded, Keep};
use crate::policy::options::Options;
use crate::policy::{Call, memoize};

/// [`cache_memoize`](fn@crate::cache_memoize) for async code: returns the
/// value cached under `key`, or awaits `compute()`, stores its value and
/// returns it.
///
/// Nothing here blocks the executor: the backend is reached through its
/// non-blocking client (a user's synchronous [`Backend`](crate::Backend)
/// runs on tokio's blocking pool), lock retries wait on tokio timers, and
/// every CPU-heavy pass over a large value (its postcard encoding and
/// decoding, and a `large_data` value's hashing, compression and
/// encryption) runs on tokio's blocking pool, so that no poll of this
/// future runs long, even on a current-thread runtime. That is why `T` is
/// `'static`: the value moves to the pool and back. `compute` may still
/// borrow from the caller.
///
/// Concurrent calls for the same key, tasks or threads, share one
/// computation (see [`Options::coalesce`]); a call whose future is dropped
/// hands its computation over to a waiting one. A refresh this caller wins
/// (with [`Options::stale_while_revalidate`] or
/// [`Options::refresh_ahead`]) runs in its foreground; see
/// [`cache_memoize_detached_async`] to run it as a task of its own. The
/// future is `Send`. Needs a tokio runtime with its time driver (any
/// `#[tokio::main]`).
///
/// ```
/// use memo_runtime::{cache_memoize_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let total: u64 = cache_memoize_async("async-doc", || async { (1..=10).sum() }, &Options::new()).await;
/// assert_eq!(total, 55);
/// # });
/// ```
pub async fn cache_memoize_async<K, T, F, Fut>(key: K, compute: F, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T> + Send,
{
    memoize_async_with(
        key.into(),
        options,
        compute,
        as_value::<T>,
        |value| value,
        Encoded,
        Borrowed,
    )
    .await
}

/// [`try_cache_memoize`](fn@crate::try_cache_memoize) for async code: only
/// `Ok` values are cached; an `Err` is returned as is, nothing is stored,
/// and a concurrent call for the same key computes in its place.
///
/// `E` is `'static` as `T` is: the whole result moves to tokio's blocking
/// pool while a large `Ok` value is serialized (see
/// [`cache_memoize_async`]).
///
/// ```
/// use memo_runtime::{try_cache_memoize_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let parsed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize_async("async-parse", || async { "42".parse() }, &Options::new()).await;
/// assert_eq!(parsed, Ok(42));
/// # });
/// ```
pub async fn try_cache_memoize_async<K, T, E, F, Fut>(
    key: K,
    compute: F,
    options: &Options,
) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, E>> + Send,
{
    memoize_async_with(
        key.into(),
        options,
        compute,
        as_ok::<T, E>,
        Ok,
        Encoded,
        Borrowed,
    )
    .await
}

/// [`cache_memoize_if`](fn@crate::cache_memoize_if) for async code:
/// stores the value `compute()` yields only when `predicate` accepts it;
/// a refused value is returned and nothing is stored.
///
/// The predicate is a `Copy` function (a `fn` or a closure that captures
/// nothing it borrows): it travels with the value to tokio's blocking pool
/// when a large value is serialized there.
///
/// ```
/// use memo_runtime::{cache_memoize_if_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let rows: Vec<u8> = cache_memoize_if_async(
///     "async-if-doc",
///     || async { vec![1, 2] },
///     |rows: &Vec<u8>| !rows.is_empty(),
///     &Options::new(),
/// )
/// .await;
/// assert_eq!(rows, [1, 2]);
/// # });
/// ```
pub async fn cache_memoize_if_async<K, T, F, Fut, P>(
    key: K,
    compute: F,
    predicate: P,
    options: &Options,
) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = T> + Send,
    P: Fn(&T) -> bool + Copy + Send + Sync + 'static,
{
    memoize_async_with(
        key.into(),
        &options.without_fail_safe(),
        compute,
        cacheable_if(as_value::<T>, predicate),
        |value| value,
        Encoded,
        Borrowed,
    )
    .await
}

/// [`try_cache_memoize_async`] storing an `Ok` value only when `predicate`
/// accepts it (see [`cache_memoize_if_async`]); an `Err` is never stored.
///
/// ```
/// use memo_runtime::{try_cache_memoize_if_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let status: Result<String, std::io::Error> = try_cache_memoize_if_async(
///     "async-if-status",
///     || async { Ok("done".to_owned()) },
///     |status: &String| status != "pending",
///     &Options::new(),
/// )
/// .await;
/// assert_eq!(status.unwrap(), "done");
/// # });
/// ```
pub async fn try_cache_memoize_if_async<K, T, E, F, Fut, P>(
    key: K,
    compute: F,
    predicate: P,
    options: &Options,
) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, E>> + Send,
    P: Fn(&T) -> bool + Copy + Send + Sync + 'static,
{
    memoize_async_with(
        key.into(),
        &options.without_fail_safe(),
        compute,
        cacheable_if(as_ok::<T, E>, predicate),
        Ok,
        Encoded,
        Borrowed,
    )
    .await
}

/// [`cache_memoize_async`] whose won refresh runs detached: the compute
/// function is `'static` and `Send`, so a refresh this caller wins (with
/// [`Options::stale_while_revalidate`] or [`Options::refresh_ahead`]) runs
/// as a task spawned on the caller's runtime while the caller returns the
/// value it found at once. Without either option it is
/// [`cache_memoize_async`].
///
/// A refresh cut short by its runtime's shutdown lets go of what it held
/// (the entry's lock is released or expires); the next caller, on any
/// runtime, finds the stale value and refreshes again.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{cache_memoize_detached_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let options = Options::new()
///     .expiration(Duration::from_secs(60))
///     .stale_while_revalidate(Duration::from_secs(600));
/// let id = 7;
/// let report: String =
///     cache_memoize_detached_async("detached-async-doc", move || async move { format!("report {id}") }, &options)
///         .await;
/// assert_eq!(report, "report 7");
/// # });
/// ```
pub async fn cache_memoize_detached_async<K, T, F, Fut>(key: K, compute: F, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    memoize_async_with(
        key.into(),
        options,
        compute,
        as_value::<T>,
        |value| value,
        Encoded,
        Owned,
    )
    .await
}

/// [`try_cache_memoize_async`] whose won refresh runs detached: see
/// [`cache_memoize_detached_async`]; a refresh that returns `Err` counts as
/// a refresh failure and stores nothing.
///
/// ```
/// use memo_runtime::{try_cache_memoize_detached_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let parsed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize_detached_async("detached-async-parse", || async { "42".parse() }, &Options::new())
///         .await;
/// assert_eq!(parsed, Ok(42));
/// # });
/// ```
pub async fn try_cache_memoize_detached_async<K, T, E, F, Fut>(
    key: K,
    compute: F,
    options: &Options,
) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    memoize_async_with(
        key.into(),
        options,
        compute,
        as_ok::<T, E>,
        Ok,
        Encoded,
        Owned,
    )
    .await
}

/// Runs the policy on tokio, keeping local copies as `keep` says; a
/// refresh it wins runs as `ownership` says.
pub(crate) async fn memoize_async_with<T, R, F, Fut, C, K, O>(
    key: CacheKey,
    options: &Options,
    compute: F,
    cacheable: C,
    from_cache: impl Fn(T) -> R + Send,
    keep: K,
    ownership: O,
) -> R
where
    T: Serialize + DeserializeOwned + Send + 'static,
    R: Send + 'static,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = R> + Send,
    C: Fn(&R) -> Option<&T> + Copy + Send + 'static,
    K: Keep<T> + Send,
    O: Ownership<RefreshJob<Tokio, T, Later<F>, C, K>>,
{
    let call = Call::new(crate::policy::engine::current(), key, options);
    if let Some(value) = call.serve_local(&keep) {
        return from_cache(value);
    }
    // The engine's driver, borrowed through a handle of its own: the call
    // itself moves into the policy.
    let engine = std::sync::Arc::clone(&call.engine);
    memoize(
        &engine.tokio,
        call,
        Later(compute),
        cacheable,
        from_cache,
        keep,
        ownership,
    )
    .await
}

/// [`invalidate`](fn@crate::invalidate) for async code: drops the entry
/// memoized under `key` (and its chunks, if chunked).
pub async fn invalidate_async<K: Into<CacheKey>>(key: K, options: &Options) -> Result<(), Error> {
    let call = Call::new(crate::policy::engine::current(), key.into(), options);
    call.invalidate(call.tokio()).await?;
    Ok(())
}

/// [`invalidate_tag`](crate::invalidate_tag) for async callers: the same
/// barrier, without blocking the executor.
pub async fn invalidate_tag_async(tag: &str, options: &Options) -> Result<(), Error> {
    let engine = crate::policy::engine::current();
    crate::policy::version::invalidate_tag(&engine, tag, options, &engine.tokio).await?;
    Ok(())
}
