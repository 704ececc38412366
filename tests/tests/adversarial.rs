//! Over 100,000 randomized memoize and iterate calls against a backend that
//! drops, corrupts, truncates, extends, duplicates, reorders, swaps and
//! fails (see `memo_tests::faulty`), reproducibly from a seed: every call
//! returns exactly what its compute function produces, nothing panics, and
//! `stats()` accounts for every call and every injected failure.
//!
//! The operations mix every way of calling memo: small values, `large_data`
//! values over several chunks, iterators read whole or dropped half-way,
//! `try_cache_memoize` with `Ok` and `Err`, `force_overwrite`, locks,
//! `invalidate`, encryption and compression on and off, and two types
//! memoized under one key. Values are pure functions of their key, so a
//! stale value of the right key is still the right value, while anything
//! from another key, another type or another write is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use memo_runtime::{
    BackendError, Config, EncryptionKey, LockOptions, Options, Stats, cache_memoize,
    cache_memoize_iter, configure, invalidate, stats, try_cache_memoize,
};
use memo_tests::faulty::{Faults, FaultyBackend};
use memo_tests::serial;
use serde::{Deserialize, Serialize};

/// SplitMix64: the operation mix, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    key: u64,
    name: String,
    values: Vec<u32>,
}

/// The small value of key `n`: a few strings.
fn small(n: u64) -> Vec<String> {
    (0..n % 5 + 1).map(|i| format!("small {n}.{i}")).collect()
}

/// The large value of key `n`: about 2 to 6 chunks of 1 KiB, little
/// compressible so that it spans several chunks either way.
fn large(n: u64) -> Vec<u8> {
    let len = 2000 + (n % 5) * 900;
    let mut x = n.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The items of key `n`: up to 60 records, sometimes none.
fn items(n: u64) -> Vec<Record> {
    (0..(n * 7) % 61)
        .map(|i| Record {
            key: n,
            name: format!("item {i} of {n}"),
            values: vec![i as u32; (i % 9) as usize],
        })
        .collect()
}

/// Under the type-confusion keys, a second type whose postcard layout can
/// decode from the first's bytes (a string of the same bytes).
fn other_type(n: u64) -> String {
    format!("other {n}")
}

#[derive(Debug, Default)]
struct Tally {
    calls: u64,
    invalidate_errors: u64,
    /// Calls under the keys shared by two types (where finding the other
    /// type's value is expected, and counted as invalid).
    shared: u64,
}

fn one_operation(rng: &mut Rng, tally: &mut Tally) {
    let n = rng.below(48);
    let id = n.to_string();
    let mut options = Options::new()
        .encrypt(rng.chance(400))
        .compress(rng.chance(500));
    if rng.chance(50) {
        options = options.force_overwrite(true);
    }
    if rng.chance(50) {
        options = options.lock(
            LockOptions::new()
                .blocking(false)
                .lock_expiration(Duration::from_secs(1)),
        );
    }
    match rng.below(100) {
        0..=29 => {
            tally.calls += 1;
            let got: Vec<String> = cache_memoize(["small", &id], || small(n), &options);
            assert_eq!(got, small(n));
        }
        30..=39 => {
            tally.calls += 1;
            let options = options.large_data(true);
            let got: Vec<u8> = cache_memoize(["large", &id], || large(n), &options);
            assert!(got == large(n), "large value of {n} differs");
        }
        40..=49 => {
            tally.calls += 1;
            let got: Result<Vec<String>, String> =
                try_cache_memoize(["small", &id], || Ok(small(n)), &options);
            assert_eq!(got, Ok(small(n)));
        }
        50..=54 => {
            // An error is returned as is, and a cached value is still a hit.
            tally.calls += 1;
            let got: Result<Vec<u8>, String> =
                try_cache_memoize(["failing", &id], || Err(format!("no {n}")), &options);
            assert_eq!(got, Err(format!("no {n}")));
        }
        55..=74 => {
            tally.calls += 1;
            let got: Vec<Record> =
                cache_memoize_iter(["items", &id], || items(n), &options).collect();
            assert_eq!(got, items(n));
        }
        75..=84 => {
            // Read part of the items, then drop the iterator: no partial
            // write may ever be taken for the whole list.
            let take = rng.below(20) as usize;
            let mut iter = cache_memoize_iter(["items", &id], || items(n), &options);
            let got: Vec<Record> = iter.by_ref().take(take).collect();
            if take > 0 {
                tally.calls += 1;
            }
            let expected = items(n);
            assert_eq!(got, expected[..take.min(expected.len())]);
        }
        85..=92 => {
            // One key, two types: each reader gets its own type's value.
            tally.calls += 1;
            tally.shared += 1;
            let key = ["shared", &id];
            if rng.chance(500) {
                let got: Vec<String> = cache_memoize(key, || small(n), &options);
                assert_eq!(got, small(n));
            } else {
                let got: String = cache_memoize(key, || other_type(n), &options);
                assert_eq!(got, other_type(n));
            }
        }
        _ => {
            let key = match rng.below(3) {
                0 => ["small", &id],
                1 => ["large", &id],
                _ => ["items", &id],
            };
            let options = options.large_data(key[0] == "large");
            if invalidate(key, &options).is_err() {
                tally.invalidate_errors += 1;
            }
        }
    }
}

/// Runs `ops` operations from `seed` against a backend injecting `faults`,
/// checks that every call and failure is accounted for, and returns the
/// backend and the statistics.
fn run(seed: u64, ops: u64, faults: Faults) -> (Arc<FaultyBackend>, Stats, Tally) {
    let backend = Arc::new(FaultyBackend::new(seed, faults));
    configure(
        Config::with_shared_backend(backend.clone())
            .chunk_size(1024)
            .namespace("adversarial")
            .encryption_key(EncryptionKey::new([0x5e; 24]).unwrap()),
    );
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    for _ in 0..ops {
        one_operation(&mut rng, &mut tally);
    }
    let stats = stats();
    assert_eq!(
        stats.hits + stats.misses,
        tally.calls,
        "every memoized call is a hit or a miss: {stats:?}"
    );
    assert_eq!(
        stats.errors + tally.invalidate_errors,
        backend.injected_failures(),
        "every injected failure is counted (or returned, by invalidate): {stats:?}"
    );
    (backend, stats, tally)
}

#[test]
fn a_hundred_thousand_operations_against_a_hostile_backend() {
    let _serial = serial();
    let started = Instant::now();
    let ops = 25_000;
    let mut faults_injected = 0;
    for seed in [0x5eed_0001, 0x5eed_0002, 0x5eed_0003, 0x5eed_0004] {
        let (backend, stats, _) = run(seed, ops, Faults::all(15));
        assert!(stats.hits > ops / 4, "the cache still works: {stats:?}");
        assert!(
            stats.invalid > 0,
            "corruption was seen and refused: {stats:?}"
        );
        println!(
            "seed {seed:#x}: {ops} operations, {} faults injected ({} failures); {stats:?}",
            backend.total_injected(),
            backend.injected_failures()
        );
        faults_injected += backend.total_injected();
    }
    println!(
        "{} operations, {faults_injected} faults injected, no wrong value, in {:?}",
        4 * ops,
        started.elapsed()
    );
}

/// Turns one kind of fault on.
type SetFault = fn(&mut Faults);

#[test]
fn each_fault_kind_alone_at_a_high_rate() {
    let _serial = serial();
    let kinds: [(&str, SetFault); 11] = [
        ("drop_write", |f| f.drop_write = 400),
        ("flip_bit", |f| f.flip_bit = 400),
        ("truncate", |f| f.truncate = 400),
        ("extend", |f| f.extend = 400),
        ("swap", |f| f.swap = 400),
        ("stale", |f| f.stale = 400),
        ("duplicate", |f| f.duplicate = 400),
        ("reorder", |f| f.reorder = 400),
        ("short_many", |f| f.short_many = 400),
        ("partial_write", |f| f.partial_write = 400),
        ("fail", |f| f.fail = 400),
    ];
    for (i, (name, set)) in kinds.into_iter().enumerate() {
        let mut faults = Faults::default();
        set(&mut faults);
        let (backend, stats, _) = run(1000 + i as u64, 1_000, faults);
        assert!(backend.injected(name) > 10, "{name}: faults were injected");
        println!("{name}: {} injected; {stats:?}", backend.injected(name));
    }
}

#[test]
fn without_faults_every_repeated_call_hits() {
    let _serial = serial();
    let (_, stats, tally) = run(99, 5_000, Faults::default());
    assert_eq!(stats.errors, 0);
    assert!(stats.invalid <= tally.shared, "{stats:?}");
    assert!(stats.hits > stats.misses, "{stats:?}");
}

/// A memory backend on which some operations always fail.
struct Failing {
    inner: memo_runtime::MemoryBackend,
    set_many: bool,
    delete_if_value: bool,
}

impl memo_runtime::Backend for Failing {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.inner.set(key, value, ttl)
    }
    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        if self.set_many {
            return Err(BackendError::new("set_many refused"));
        }
        self.inner.set_many(items, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key)
    }
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        if self.delete_if_value {
            return Err(BackendError::new("delete refused"));
        }
        self.inner.delete_if_value(key, expected)
    }
}

fn failing(set_many: bool, delete_if_value: bool) {
    configure(
        Config::new(Failing {
            inner: memo_runtime::MemoryBackend::new(),
            set_many,
            delete_if_value,
        })
        .chunk_size(1024),
    );
}

#[test]
fn a_failed_lock_release_is_counted() {
    let _serial = serial();
    failing(false, true);
    let options = Options::new().lock(LockOptions::new());
    let value: u32 = cache_memoize("locked", || 7, &options);
    assert_eq!(value, 7);
    assert_eq!(stats().errors, 1, "the release failed: {:?}", stats());
}

#[test]
fn a_failed_chunk_write_of_an_iterator_dropped_half_way_is_counted() {
    let _serial = serial();
    failing(true, false);
    let options = Options::new().compress(false);
    // Enough items for the first batch of chunks to be written (and fail)
    // before the caller stops reading.
    let mut iter = cache_memoize_iter("dropped", || (0..2000u32).map(|i| [i; 8]), &options);
    assert_eq!(iter.by_ref().take(1500).count(), 1500);
    drop(iter);
    assert_eq!(stats().errors, 1, "the write failed: {:?}", stats());
    assert_eq!(stats().stores, 0);
}
