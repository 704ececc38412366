//! Batches: the memoize policy for many keys at once, behind
//! `cache_memoize_many` and its twins (`api::many`).
//!
//! A batch is one [`Call`] per key, run through the steps of the single
//! policy with the backend calls of every key merged, so that its cost in
//! round trips does not grow with the number of keys:
//!
//! 1. the local copies (`Options::local`), key by key, as a single call;
//! 2. **one `get_many`** for every key left, with the version tokens of
//!    each (its version key and its tags' keys, each asked once), through
//!    the same checks as a single lookup (`Call::found_main`,
//!    `Call::decode_main`);
//! 3. for the keys that missed: the value of a computation another call in
//!    this process is running for one (waited for, all at once, holding no
//!    flight of its own), else a flight each, led by the batch (below);
//! 4. **one `set_many`** of the version tokens the misses lack (a fresh
//!    token each, and for `force_overwrite` a new version token), before
//!    the computation, as `ensure_tokens` makes sure of them for one call;
//! 5. the compute function, once, given the indices of the misses;
//! 6. **one `set_many`** of the computed values, each serialized once
//!    (off the executor when large, as a single call's) and sealed as a
//!    single call seals it (`Call::seal_value`, behind its guard); a
//!    value stored with `large_data` takes the single-key store path
//!    (`Call::store`), chunked, and one too large for an entry without it
//!    is refused with the single call's advice;
//! 7. the values handed to the flights' waiters.
//!
//! A batch with misses thus costs at most three round trips (a lookup, the
//! missing tokens, the store; the middle one only when a token is
//! missing), a batch that hits costs one, on a cluster one per master in
//! each (the cluster client splits by slot and pipelines per master).
//!
//! # Per key, per batch
//!
//! Per key, as for a single call: the barrier ticket (taken before any
//! read), the local copy, the check of the entry against its tokens, the
//! envelope (key, type, encryption), the tags, chunking, the hit and miss
//! counts, and the flight. So the invalidation barrier holds for every
//! key: a value read or computed before an `invalidate` of its key that
//! returned is served to no call that starts after it, in this process
//! (tickets, epoch-keyed flights) or any other (tokens, made sure of before
//! the computation starts).
//!
//! Per batch: the one computation, its duration in each value's stamp, and
//! the expiration's jitter (one draw, so that the batch is stored in one
//! `set_many`, whose TTL is one for all items, and its entries expire
//! together, to be recomputed together by the next batch).
//!
//! # What a batch does not do
//!
//! Each is a per-key round trip or wait that would undo the batch:
//!
//! - it takes no cross-process lock (`Options::lock` is ignored);
//! - it waits on a flight only before it leads any of its own: a key
//!   another call starts computing while the batch leads others is
//!   computed by the batch too (a duplicate computation, never a wrong
//!   value), so that two batches never wait on each other; calls that
//!   miss a key while the batch computes it wait for the batch's value;
//! - it serves only fresh values: a value due for an early refresh is
//!   served as is (`refresh_ahead` does not refresh from a batch), and
//!   one past its expiry is a miss (no `stale_while_revalidate` or
//!   `fail_safe` serving);
//! - a token that was missing is written with `set`, not `add` (there is
//!   no batched `add`): two callers that race to write it both store
//!   behind their own, and the loser's entries are misses, which costs a
//!   recomputation, never a stale value (see `Backend`).
//!
//! A key given twice is two positions of the batch, each on its own: each
//! is looked up, and on a miss both indices are given to the compute
//! function; each position gets the value computed for it, and the last is
//! stored.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{Encode, Serde, as_value};
use super::drive::Driver;
use super::engine::Handle;
use super::flight::{Joined, LeaderGuard, Outcome, Waiter};
use super::hot::{Encoded, Verdict};
use super::observe::{CallOutcome, Observed};
use super::options::Options;
use super::stream::StoreError;
use super::version::short_answer;
use super::{Call, engine, hot, publish};
use crate::format::envelope::{self, fingerprint};
use crate::format::guard::{self, Token};
use crate::format::key::CacheKey;

/// How a batch picks the value to store from what it computed: all of it
/// ([`as_value`]), named as a type for the driver's `Encode` bound.
type Whole<T> = fn(&T) -> Option<&T>;

/// A batch's maps of keys: foldhash, seeded per process, costs a fraction
/// of std's SipHash on short keys, which a batch hashes hundreds of.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One call per key, of the engine in force, sharing one draw of the
/// expiration's jitter.
pub(crate) fn calls(keys: impl IntoIterator<Item = CacheKey>, options: &Options) -> Vec<Call<'_>> {
    let engine: Arc<Handle> = engine::current();
    let draw = hot::unit_draw();
    let ttl = options
        .expiration
        .unwrap_or(engine.config.default_expiration);
    let ttl = options.jitter.shorten(ttl, || draw);
    keys.into_iter()
        .map(|key| {
            let mut call = Call::new(Arc::clone(&engine), key, options);
            call.ttl = ttl;
            call
        })
        .collect()
}

/// The batch policy: the value of each call, found or computed by one call
/// of `compute` with the indices (ascending) of the calls that missed,
/// which must return one value for each. An `Err` of `compute` is returned
/// as is, and nothing is stored.
///
/// `calls` is not empty: the API answers an empty batch itself, having no
/// call to take its driver from. The batch is observed as a whole
/// (`observe`): one span, and each key counted as a call.
///
/// # Panics
///
/// When `compute` returns a number of values other than the number of
/// misses.
pub(crate) async fn memoize_many<D, T, E, F, Fut>(
    driver: &D,
    calls: Vec<Call<'_>>,
    compute: F,
) -> Result<Vec<T>, E>
where
    D: Serde<T> + Encode<T, T, Whole<T>>,
    T: Serialize + DeserializeOwned,
    F: FnOnce(&[usize]) -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
{
    let observed = Observed::start_many(&calls);
    let mut outcomes = Vec::new();
    let result = observed
        .cover(serve_many(driver, &calls, compute, &mut outcomes))
        .await;
    observed.end_many(outcomes.into_iter());
    result
}

/// The steps of [`memoize_many`]; `outcomes` says how each key was served
/// once that is known.
async fn serve_many<D, T, E, F, Fut>(
    driver: &D,
    calls: &[Call<'_>],
    compute: F,
    outcomes: &mut Vec<CallOutcome>,
) -> Result<Vec<T>, E>
where
    D: Serde<T> + Encode<T, T, Whole<T>>,
    T: Serialize + DeserializeOwned,
    F: FnOnce(&[usize]) -> Fut,
    Fut: Future<Output = Result<Vec<T>, E>>,
{
    let fp = fingerprint::<T>(false);
    let now = Instant::now();
    let mut found: Vec<Option<T>> = calls
        .iter()
        .map(|call| {
            call.keeps_locally()
                .then(|| call.local_hit(&Encoded, now))?
        })
        .collect();
    let local: Vec<bool> = found.iter().map(Option::is_some).collect();
    let looked_up = look_up(driver, calls, &mut found, fp).await;
    outcomes.extend(found.iter().zip(&local).map(|(found, &local)| match found {
        Some(_) if local => CallOutcome::Local,
        Some(_) => CallOutcome::Hit,
        None => CallOutcome::Miss,
    }));
    share(driver, calls, fp, &mut found, outcomes).await;
    let missing: Vec<usize> = (0..calls.len()).filter(|&i| found[i].is_none()).collect();
    if missing.is_empty() {
        return Ok(found.into_iter().flatten().collect());
    }
    for &i in &missing {
        calls[i].miss();
    }
    let flights: Vec<Option<LeaderGuard>> = missing.iter().map(|&i| lead(&calls[i], fp)).collect();
    let stores = calls[missing[0]].will_store();
    if stores && looked_up {
        ensure_tokens(driver, calls, &missing).await;
    }
    let started = Instant::now();
    let computed = compute(&missing).await;
    let took = started.elapsed();
    let values = match computed {
        Ok(values) => values,
        Err(err) => {
            // The flights are handed over to their waiters as they drop.
            drop(flights);
            for &i in &missing {
                if calls[i].options.force_overwrite {
                    calls[i].lower_barrier();
                }
            }
            return Err(err);
        }
    };
    if values.len() != missing.len() {
        panic!(
            "compute returned {} values for {} missing keys",
            values.len(),
            missing.len()
        );
    }
    let stamps: Vec<_> = missing.iter().map(|&i| calls[i].stamp(took)).collect();
    // Each value serialized once, off the executor when large in the async
    // world, for its local copy and its entry alike, as a single call's.
    let mut plains = Vec::with_capacity(values.len());
    let mut owned = Vec::with_capacity(values.len());
    for value in values {
        let (value, plain) = driver.encode(value, &(as_value as Whole<T>)).get().await;
        owned.push(value);
        plains.push(plain);
    }
    let values = owned;
    for (((&i, value), &stamp), plain) in missing.iter().zip(&values).zip(&stamps).zip(&plains) {
        calls[i].keep_locally(&Encoded, fp, value, stamp, plain.as_ref());
    }
    if stores {
        store(driver, calls, &missing, &values, &stamps, &plains).await;
    }
    for &i in &missing {
        if calls[i].options.force_overwrite {
            calls[i].lower_barrier();
            calls[i].tell_others();
        }
    }
    // Published after storing, as a single call does, so that a call that
    // arrives once a flight has ended finds the value stored.
    for (flight, value) in flights.into_iter().zip(&values) {
        publish(flight, value);
    }
    let mut values = values.into_iter();
    Ok(found
        .into_iter()
        .flat_map(|hit| hit.or_else(|| values.next()))
        .collect())
}

/// Looks up, in one `get_many`, every call that `found` has no value for
/// yet, and fills in the fresh values found. `false` when the backend
/// failed (every call then misses, and none stores: it knows no tokens).
async fn look_up<D, T>(driver: &D, calls: &[Call<'_>], found: &mut [Option<T>], fp: u64) -> bool
where
    D: Serde<T>,
    T: Serialize + DeserializeOwned,
{
    let pending: Vec<usize> = (0..calls.len()).filter(|&i| found[i].is_none()).collect();
    if pending.is_empty() {
        return true;
    }
    // A call's own keys (its entry's and its version key) are asked as
    // they come; a tag's, usually shared by the whole batch, once.
    let mut keys: Vec<&str> = Vec::with_capacity(2 * pending.len());
    let mut tags: Map<&str, usize> = Map::default();
    // Where each call's answers are in `keys`, one after the other.
    let mut asked: Vec<usize> = Vec::with_capacity(2 * pending.len());
    for &i in &pending {
        for (n, key) in calls[i].lookup_keys().into_iter().enumerate() {
            let at = if n < 2 {
                keys.push(key);
                keys.len() - 1
            } else {
                *tags.entry(key).or_insert_with(|| {
                    keys.push(key);
                    keys.len() - 1
                })
            };
            asked.push(at);
        }
    }
    let counters = &calls[pending[0]].config().counters;
    let mut values = match driver.backend().get_many(&keys).await {
        Ok(values) if values.len() == keys.len() => values,
        Ok(values) => {
            counters.backend_failed("get_many", &short_answer(values.len(), keys.len()));
            return false;
        }
        Err(err) => {
            counters.backend_failed("get_many", &err);
            return false;
        }
    };
    counters.backend_ok();
    let mut asked = asked.into_iter();
    for &i in &pending {
        let call = &calls[i];
        let answer: Vec<Option<Vec<u8>>> = (&mut asked)
            .take(1 + call.guard_keys().len())
            .enumerate()
            // A tag's token is everyone's: copied (it is 8 bytes).
            .map(|(n, at)| {
                if n < 2 {
                    values[at].take()
                } else {
                    values[at].clone()
                }
            })
            .collect();
        // Read for its tokens alone: an overwrite serves nothing found.
        let Some(bytes) = call.found_main(answer) else {
            continue;
        };
        if call.options.force_overwrite {
            continue;
        }
        let Some((value, stamp)) = call.decode_main(driver, bytes).await else {
            continue;
        };
        if let Verdict::Fresh | Verdict::Early = call.judge(stamp) {
            call.hit();
            call.keep_locally(&Encoded, fp, &value, stamp, None);
            found[i] = Some(value);
        }
    }
    true
}

/// Waits for the values of the keys the batch missed that another call in
/// this process is computing already, and takes them as its own (counted
/// hits, outcome `coalesced`). The batch leads none of its keys yet: it
/// waits holding no flight, so that two batches never wait on each other.
/// All waits run at once (their computations do), so the batch waits as
/// long as the longest. A key whose computation failed, or that took past
/// the call's deadline, is left to the batch to compute.
async fn share<D, T>(
    driver: &D,
    calls: &[Call<'_>],
    fp: u64,
    found: &mut [Option<T>],
    outcomes: &mut [CallOutcome],
) where
    D: Serde<T>,
    T: Serialize + DeserializeOwned,
{
    let waiting: Vec<(usize, Waiter)> = (0..calls.len())
        .filter(|&i| found[i].is_none() && calls[i].coalesces())
        .filter_map(|i| {
            let flights = &calls[i].engine.flights;
            Some((i, flights.wait_for(&calls[i].flight_key(fp))?))
        })
        .collect();
    for (i, waiter) in waiting {
        let call = &calls[i];
        match driver.wait(waiter, call.coalesce_deadline()).await {
            Outcome::Value(bytes) => {
                if let Ok(value) = driver.decode_shared(bytes).await {
                    call.hit();
                    found[i] = Some(value);
                    outcomes[i] = CallOutcome::Coalesced;
                }
            }
            // Handed over, or given up: the batch computes the key.
            Outcome::Lead(guard) => drop(guard),
            Outcome::TimedOut => {}
        }
    }
}

/// The flight of a call that missed, when it coalesces and nobody here is
/// computing its key already (the batch leads no key it would have to
/// wait for: see [`share`]).
fn lead(call: &Call<'_>, fp: u64) -> Option<LeaderGuard> {
    if !call.coalesces() {
        return None;
    }
    match call.engine.flights.join(&call.flight_key(fp)) {
        Joined::Leader(guard) => Some(guard),
        // Leaving at once: the batch computes the key itself.
        Joined::Waiter(waiter) => {
            drop(waiter);
            None
        }
    }
}

/// Makes sure of the tokens of every missing call before the computation,
/// in one `set_many`: a fresh token for each one the lookup found missing
/// (one per key, however many calls share it), and a new version token for
/// each call that overwrites. A call whose tokens cannot be written stores
/// nothing (an overwriting one stores behind the token it read).
async fn ensure_tokens<D: Driver>(driver: &D, calls: &[Call<'_>], missing: &[usize]) {
    let mut written: Map<&str, Token> = Map::default();
    let mut order: Vec<&str> = Vec::new();
    let mut tokens: Vec<(usize, Vec<Option<Token>>)> = Vec::with_capacity(missing.len());
    let mut ttl = Duration::ZERO;
    for &i in missing {
        let call = &calls[i];
        let keys = call.guard_keys();
        let Some(mut seen) = call.seen().filter(|seen| seen.len() == keys.len()) else {
            continue;
        };
        let mut changed = false;
        for (at, (key, token)) in keys.iter().zip(seen.iter_mut()).enumerate() {
            let renew = at == 0 && call.options.force_overwrite;
            if token.is_some() && !renew {
                continue;
            }
            // One token per key: a key given twice that overwrites is
            // overwritten once, and both positions store behind it.
            let fresh = *written.entry(key.as_str()).or_insert_with(|| {
                order.push(key);
                guard::new_token()
            });
            *token = Some(fresh);
            changed = true;
        }
        if changed {
            ttl = ttl.max(call.guard_ttl());
            tokens.push((i, seen));
        }
    }
    if order.is_empty() {
        return;
    }
    let bytes: Vec<(&str, [u8; 8])> = order
        .iter()
        .map(|key| (*key, guard::token_bytes(written[key])))
        .collect();
    let items: Vec<(&str, &[u8])> = bytes.iter().map(|(key, b)| (*key, &b[..])).collect();
    let counters = &calls[missing[0]].config().counters;
    match driver.backend().set_many(&items, ttl).await {
        Ok(()) => {
            counters.backend_ok();
            for (i, seen) in tokens {
                calls[i].remember(seen);
            }
        }
        Err(err) => counters.backend_failed("set_many", &err),
    }
}

/// Stores the computed values, `values[n]` for `calls[missing[n]]`
/// stamped `stamps[n]` (its postcard bytes `plains[n]`, when made): in one
/// `set_many`, each sealed as a single call seals it; one stored chunked
/// (`large_data`) through the single call's store.
async fn store<D, T>(
    driver: &D,
    calls: &[Call<'_>],
    missing: &[usize],
    values: &[T],
    stamps: &[envelope::Stamp],
    plains: &[Option<Arc<[u8]>>],
) where
    D: Driver,
    T: Serialize + DeserializeOwned,
{
    let mut entries: Vec<(usize, Vec<u8>)> = Vec::with_capacity(missing.len());
    let items = missing.iter().zip(values).zip(stamps).zip(plains);
    for (((&i, value), &stamp), plain) in items {
        let call = &calls[i];
        if call.options.large_data {
            call.store(driver, value, stamp, plain.as_ref()).await;
            continue;
        }
        let Some(mut entry) = call.guard_prefix() else {
            call.store_finished(Err(StoreError::NoVersion));
            continue;
        };
        match call.seal_value(value, stamp, plain.as_ref()) {
            Err(err) => call.store_finished(Err(err)),
            Ok(encoded) => {
                entry.extend_from_slice(&encoded);
                entries.push((i, entry));
            }
        }
    }
    let Some(&(first, _)) = entries.first() else {
        return;
    };
    let items: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(i, entry)| (calls[*i].key.stored(), &entry[..]))
        .collect();
    // One draw of jitter for the batch: every call has this TTL.
    let ttl = calls[first].backend_ttl();
    match driver.backend().set_many(&items, ttl).await {
        Ok(()) => {
            for (i, entry) in &entries {
                calls[*i].counters().wrote(entry.len());
                calls[*i].store_finished(Ok(()));
            }
        }
        Err(err) => calls[first].counters().backend_failed("set_many", &err),
    }
}
