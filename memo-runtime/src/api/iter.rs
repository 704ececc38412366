//! [`cache_memoize_iter`]: an iterator cached as it streams, and the state
//! machine behind [`MemoIter`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::world::block_on;
use crate::format::envelope::fingerprint;
use crate::format::key::CacheKey;
use crate::lock::CacheLockGuard;
use crate::policy::Call;
use crate::policy::items::{ItemReader, ItemsLookup};
use crate::policy::observe::{CallOutcome, Observed};
use crate::policy::options::Options;
use crate::policy::stream::{StoreError, StreamWriter};

/// Memoizes an iterator: the items are cached as they stream.
///
/// Nothing runs until the first `next()`. On a miss, `compute` runs and
/// each item reaches the caller as soon as the source yields it, while it
/// is serialized, compressed, encrypted and stored in chunks on the way
/// through; the entry becomes visible to readers only once the source is
/// exhausted and every chunk is stored, so an iterator dropped half-way, or
/// a source that panics, leaves nothing a reader would take as complete.
///
/// On a hit, the stored chunks are first fetched and verified (each against
/// its digest in the manifest) without decoding, then the items are decoded
/// as the caller pulls them. Memory stays bounded by a few chunks either
/// way, whatever the total size. If the entry vanishes between the
/// verification and the read (evicted), `compute` runs and the iterator
/// continues where it was, skipping the items already yielded: like all
/// memoization, this takes `compute` to produce the same items each time.
/// (An overwrite by another writer does not cause this: the chunks it
/// supersedes stay readable for [`SUPERSEDED_GRACE`](crate::SUPERSEDED_GRACE).)
///
/// ```
/// use memo_runtime::{cache_memoize_iter, Options};
///
/// let squares: Vec<u64> =
///     cache_memoize_iter("squares-iter", || (0..5u64).map(|i| i * i), &Options::new()).collect();
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// let again: Vec<u64> =
///     cache_memoize_iter("squares-iter", || -> Vec<u64> { unreachable!() }, &Options::new())
///         .collect();
/// assert_eq!(again, squares);
/// ```
pub fn cache_memoize_iter<K, T, I, F>(key: K, compute: F, options: &Options) -> MemoIter<T, I, F>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    MemoIter {
        state: IterState::Start {
            key: key.into(),
            options: options.clone(),
        },
        compute: Some(compute),
    }
}

/// The iterator [`cache_memoize_iter`] returns.
pub struct MemoIter<T, I: IntoIterator<Item = T>, F> {
    state: IterState<T, I::IntoIter>,
    compute: Option<F>,
}

enum IterState<T, S> {
    Start {
        key: CacheKey,
        options: Options,
    },
    Hit {
        call: Box<Call<'static>>,
        items: ItemReader,
        yielded: u64,
        _item: std::marker::PhantomData<fn() -> T>,
    },
    Miss {
        call: Box<Call<'static>>,
        source: S,
        writer: Option<StreamWriter>,
        scratch: Vec<u8>,
        _lock: Option<CacheLockGuard>,
    },
    Fallback {
        source: std::iter::Skip<S>,
    },
    Done,
}

impl<T, I, F> MemoIter<T, I, F>
where
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    fn start(&mut self, key: CacheKey, options: Options) {
        let call = Box::new(Call::owning(crate::policy::engine::current(), key, options));
        let driver = call.blocking().clone();
        // The span covers the lookup: the outcome is known once the
        // iterator opens.
        let observed = Observed::start(&call);
        let (found, lock) =
            observed.within(|| block_on(call.find_or_lock(&driver, &ItemsLookup::<T>::new())));
        let lock = lock.map(CacheLockGuard::held);
        if let Some(items) = found {
            call.hit();
            observed.end(CallOutcome::Hit);
            self.state = IterState::Hit {
                call,
                items,
                yielded: 0,
                _item: std::marker::PhantomData,
            };
            return;
        }
        call.miss();
        observed.end(CallOutcome::Miss);
        let compute = self.compute.take().expect("compute runs once");
        // The tokens the items will be stored behind, had before the
        // source starts.
        let writer = (call.will_store() && block_on(call.ensure_tokens(&driver)).is_some())
            .then(|| call.writer(true));
        self.state = IterState::Miss {
            source: compute().into_iter(),
            call,
            writer,
            scratch: Vec::new(),
            _lock: lock,
        };
    }
}

impl<T, I, F> Iterator for MemoIter<T, I, F>
where
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            match &mut self.state {
                IterState::Start { .. } => {
                    let IterState::Start { key, options } =
                        std::mem::replace(&mut self.state, IterState::Done)
                    else {
                        unreachable!("matched Start above")
                    };
                    self.start(key, options);
                }
                IterState::Hit {
                    call,
                    items,
                    yielded,
                    ..
                } => match items.next::<T>() {
                    Ok(Some(item)) => {
                        *yielded += 1;
                        return Some(item);
                    }
                    Ok(None) => {
                        self.state = IterState::Done;
                        return None;
                    }
                    Err(err) => {
                        call.load_failed(err);
                        crate::common::diag::warning!(
                            "memo: cached items of {} became unreadable after {} items; recomputing",
                            call.key.stored(),
                            yielded
                        );
                        let skip = usize::try_from(*yielded).unwrap_or(usize::MAX);
                        let compute = self.compute.take().expect("compute runs once");
                        self.state = IterState::Fallback {
                            source: compute().into_iter().skip(skip),
                        };
                    }
                },
                IterState::Miss {
                    call,
                    source,
                    writer,
                    scratch,
                    ..
                } => match source.next() {
                    Some(item) => {
                        if let Some(active) = writer.as_mut() {
                            scratch.clear();
                            match postcard::to_io(&item, &mut *scratch) {
                                Ok(_) => active.write_item(scratch),
                                Err(err) => {
                                    call.store_finished(Err(StoreError::Encode(err.into())));
                                    *writer = None;
                                }
                            }
                        }
                        return Some(item);
                    }
                    None => {
                        if let Some(active) = writer.take() {
                            let outcome = active.finish(fingerprint::<T>(true));
                            call.store_finished(outcome);
                        }
                        self.state = IterState::Done;
                        return None;
                    }
                },
                IterState::Fallback { source } => {
                    let item = source.next();
                    if item.is_none() {
                        self.state = IterState::Done;
                    }
                    return item;
                }
                IterState::Done => return None,
            }
        }
    }
}

impl<T, I: IntoIterator<Item = T>, F> std::fmt::Debug for MemoIter<T, I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            IterState::Start { .. } => "not started",
            IterState::Hit { .. } => "reading from the cache",
            IterState::Miss { .. } => "computing and storing",
            IterState::Fallback { .. } => "recomputing",
            IterState::Done => "done",
        };
        f.debug_struct("MemoIter").field("state", &state).finish()
    }
}
