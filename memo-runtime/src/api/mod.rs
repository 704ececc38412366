//! The API layer: what a caller programs against. Synchronous and async
//! entry points and their options; each hands off to the one policy in `policy`.
//!
//! - [`Options`], a call's settings, defined with the policy that reads
//!   them (`policy::options`);
//! - `sync`: [`cache_memoize`], [`try_cache_memoize`], their `_detached`
//!   twins (a won refresh runs in the background) and `_if` twins (a
//!   predicate says what is stored), [`invalidate`], [`make_cache_key`];
//! - `iter`: [`cache_memoize_iter`] and [`MemoIter`];
//! - `many`: [`cache_memoize_many`] and [`try_cache_memoize_many`], many
//!   keys in one call (with feature `async`, their `_async` twins);
//! - `asynchronous` (feature `async`): `cache_memoize_async`,
//!   `try_cache_memoize_async`, their `_detached` and `_if` twins,
//!   `invalidate_async`;
//! - `stream` (feature `async`): `cache_memoize_stream` and `MemoStream`.

use crate::backend::BackendError;

#[cfg(feature = "async")]
mod asynchronous;
mod iter;
mod many;
#[cfg(feature = "async")]
mod stream;
mod sync;

pub use crate::policy::options::Options;
#[cfg(feature = "async")]
pub use asynchronous::{
    cache_memoize_async, cache_memoize_detached_async, cache_memoize_if_async, invalidate_async,
    invalidate_tag_async, try_cache_memoize_async, try_cache_memoize_detached_async,
    try_cache_memoize_if_async,
};
pub use iter::{MemoIter, cache_memoize_iter};
pub use many::{cache_memoize_many, try_cache_memoize_many};
#[cfg(feature = "async")]
pub use many::{cache_memoize_many_async, try_cache_memoize_many_async};
#[cfg(feature = "async")]
pub use stream::{MemoStream, cache_memoize_stream};
pub use sync::{
    cache_memoize, cache_memoize_detached, cache_memoize_if, invalidate, invalidate_tag,
    make_cache_key, try_cache_memoize, try_cache_memoize_detached, try_cache_memoize_if,
};

pub(crate) use crate::policy::codec::{as_ok, as_value};
#[cfg(feature = "async")]
pub(crate) use asynchronous::memoize_async_with;
pub(crate) use sync::{cacheable_if, memoize_now};

/// A failure of an explicit cache operation such as [`invalidate`].
/// (Memoized calls never fail because of the cache.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed.
    #[error("cache backend failed: {0}")]
    Backend(#[from] BackendError),
}
