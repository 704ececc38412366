//! The batch entry points: many keys memoized in one call, with one
//! lookup, one computation of the keys that missed, and one store.
//!
//! [`cache_memoize_many`] and [`try_cache_memoize_many`], and with feature
//! `async` their `_async` twins, each a few lines handing off to the batch
//! policy (`policy::many`, whose module docs say what is per key and what
//! is per batch). A batch shares entries with single calls: a key a batch
//! stored is a hit for [`cache_memoize`](fn@crate::cache_memoize), and the
//! other way round, as long as the options agree.
//!
//! There is no attribute form: a memoized function takes one set of
//! arguments, and a batch needs the function of many, which the caller
//! writes best by hand.

#[cfg(feature = "async")]
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::world::block_on;
use crate::format::key::CacheKey;
use crate::policy::many::{calls, memoize_many};
use crate::policy::options::Options;

/// Returns the value cached under each of `keys`, in order, computing the
/// ones that miss with one call of `compute`.
///
/// `compute` is given the indices into `keys` (ascending) of the keys that
/// missed, and returns their values in that order. It runs at most once,
/// and not at all when every key hits. The keys are looked up in one
/// backend call (one per master on a Redis cluster) and the computed
/// values stored in one more (plus one to write any version token that is
/// missing, before `compute` runs), whatever the number of keys. An empty
/// `keys` returns an empty `Vec` without calling `compute` or the backend.
///
/// Each key is stored as [`cache_memoize`](fn@crate::cache_memoize) stores it
/// (the same entry, envelope, encryption, tags, local copy and
/// invalidation barrier), so single calls and batches share entries. What
/// a batch leaves out: it takes no [`Options::lock`], never waits on
/// another call computing one of its keys in this process (it computes the
/// key too), serves a value only while it is fresh (no
/// `stale_while_revalidate`, `fail_safe` or `refresh_ahead`), and draws the
/// expiration's jitter once for the whole batch. A key given twice is
/// looked up, and on a miss computed, once per position: both indices are
/// given to `compute`, and the value computed last is stored.
///
/// # Panics
///
/// When `compute` returns a number of values other than the number of
/// indices it was given: "compute returned 3 values for 4 missing keys".
///
/// ```
/// use memo_runtime::{cache_memoize_many, Options};
///
/// fn squares(of: &[u64]) -> Vec<u64> {
///     of.iter().map(|n| n * n).collect()
/// }
///
/// let options = Options::new();
/// let numbers = [2u64, 3, 4];
/// let keys: Vec<String> = numbers.iter().map(|n| format!("many-doc:{n}")).collect();
/// let first: Vec<u64> = cache_memoize_many(
///     keys.clone(),
///     |missing| squares(&missing.iter().map(|&i| numbers[i]).collect::<Vec<_>>()),
///     &options,
/// );
/// assert_eq!(first, [4, 9, 16]);
///
/// // One more key: only it is computed.
/// let mut more = keys.clone();
/// more.push("many-doc:5".to_owned());
/// let second: Vec<u64> = cache_memoize_many(
///     more,
///     |missing| {
///         assert_eq!(missing, [3]);
///         vec![25]
///     },
///     &options,
/// );
/// assert_eq!(second, [4, 9, 16, 25]);
/// ```
pub fn cache_memoize_many<K, T, F>(keys: Vec<K>, compute: F, options: &Options) -> Vec<T>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce(&[usize]) -> Vec<T>,
{
    let values = try_cache_memoize_many(
        keys,
        |missing| Ok::<_, std::convert::Infallible>(compute(missing)),
        options,
    );
    match values {
        Ok(values) => values,
        Err(never) => match never {},
    }
}

/// [`cache_memoize_many`] for a fallible computation: when `compute`
/// returns `Err`, nothing is stored and the error is returned (the keys
/// that hit are dropped with it); concurrent single calls waiting on the
/// batch for one of its keys compute in its place.
///
/// # Panics
///
/// When `compute` returns `Ok` with a number of values other than the
/// number of indices it was given.
///
/// ```
/// use memo_runtime::{try_cache_memoize_many, Options};
///
/// let inputs = ["1", "2", "x"];
/// let parsed: Result<Vec<u32>, std::num::ParseIntError> = try_cache_memoize_many(
///     vec!["try-many-doc:1", "try-many-doc:2", "try-many-doc:x"],
///     |missing| missing.iter().map(|&i| inputs[i].parse()).collect(),
///     &Options::new(),
/// );
/// assert!(parsed.is_err());
///
/// let parsed: Result<Vec<u32>, std::num::ParseIntError> = try_cache_memoize_many(
///     vec!["try-many-doc:1", "try-many-doc:2"],
///     |missing| missing.iter().map(|&i| inputs[i].parse()).collect(),
///     &Options::new(),
/// );
/// assert_eq!(parsed, Ok(vec![1, 2]));
/// ```
pub fn try_cache_memoize_many<K, T, E, F>(
    keys: Vec<K>,
    compute: F,
    options: &Options,
) -> Result<Vec<T>, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce(&[usize]) -> Result<Vec<T>, E>,
{
    let calls = calls(keys.into_iter().map(Into::into), options);
    let Some(first) = calls.first() else {
        return Ok(Vec::new());
    };
    let engine = std::sync::Arc::clone(&first.engine);
    block_on(memoize_many(
        &engine.blocking,
        calls,
        |missing: &[usize]| std::future::ready(compute(missing)),
    ))
}

/// [`cache_memoize_many`] for async code: the same batch, with the backend
/// reached through its non-blocking client and `compute` awaited. The
/// future is `Send`; it needs a tokio runtime with its time driver.
///
/// # Panics
///
/// When `compute`'s future yields a number of values other than the number
/// of indices it was given.
///
/// ```
/// use memo_runtime::{cache_memoize_many_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let ids = [7u32, 8, 9];
/// let names: Vec<String> = cache_memoize_many_async(
///     ids.iter().map(|id| format!("async-many-doc:{id}")).collect(),
///     |missing| {
///         let wanted: Vec<u32> = missing.iter().map(|&i| ids[i]).collect();
///         async move { wanted.iter().map(|id| format!("user {id}")).collect() }
///     },
///     &Options::new(),
/// )
/// .await;
/// assert_eq!(names, ["user 7", "user 8", "user 9"]);
/// # });
/// ```
#[cfg(feature = "async")]
pub async fn cache_memoize_many_async<K, T, F, Fut>(
    keys: Vec<K>,
    compute: F,
    options: &Options,
) -> Vec<T>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    F: FnOnce(&[usize]) -> Fut + Send,
    Fut: Future<Output = Vec<T>> + Send,
{
    let values = try_cache_memoize_many_async(
        keys,
        |missing| {
            let values = compute(missing);
            async move { Ok::<_, std::convert::Infallible>(values.await) }
        },
        options,
    )
    .await;
    match values {
        Ok(values) => values,
        Err(never) => match never {},
    }
}

/// [`try_cache_memoize_many`] for async code: when `compute`'s future
/// yields `Err`, nothing is stored and the error is returned.
///
/// # Panics
///
/// When `compute`'s future yields `Ok` with a number of values other than
/// the number of indices it was given.
///
/// ```
/// use memo_runtime::{try_cache_memoize_many_async, Options};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let doubled: Result<Vec<u32>, String> = try_cache_memoize_many_async(
///     vec!["async-try-many-doc:1", "async-try-many-doc:2"],
///     |missing| {
///         let values = missing.iter().map(|&i| 2 * (i as u32 + 1)).collect();
///         async move { Ok(values) }
///     },
///     &Options::new(),
/// )
/// .await;
/// assert_eq!(doubled, Ok(vec![2, 4]));
/// # });
/// ```
#[cfg(feature = "async")]
pub async fn try_cache_memoize_many_async<K, T, E, F, Fut>(
    keys: Vec<K>,
    compute: F,
    options: &Options,
) -> Result<Vec<T>, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned + Send + 'static,
    E: Send,
    F: FnOnce(&[usize]) -> Fut + Send,
    Fut: Future<Output = Result<Vec<T>, E>> + Send,
{
    let calls = calls(keys.into_iter().map(Into::into), options);
    let Some(first) = calls.first() else {
        return Ok(Vec::new());
    };
    let engine = std::sync::Arc::clone(&first.engine);
    memoize_many(&engine.tokio, calls, compute).await
}
