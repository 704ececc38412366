//! Regressions in the stored format, through the public API: chunked values
//! and iterators that never hit, two keys sharing an entry, derived keys a
//! caller can produce, stored items larger than the chunk size, and a zero
//! or huge expiration.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memo_runtime::MAX_MANIFEST_OVERHEAD;
use memo_runtime::MIN_CHUNK_SIZE;
use memo_runtime::{
    Backend, BackendError, CacheLock, Config, EncryptionKey, LockOptions, MemoryBackend, Options,
    cache_memoize, cache_memoize_iter, configure, invalidate, make_cache_key, stats,
};
use memo_tests::recording::{Op, RecordingBackend};
use memo_tests::serial;

/// Pseudo-random bytes (xorshift): zlib cannot shrink them, so compressed
/// streams are as long as the data and fill every buffer on the way.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn key() -> EncryptionKey {
    EncryptionKey::new([9u8; 32]).unwrap()
}

/// Every pipeline: compression on and off, encryption on and off.
fn pipelines() -> Vec<Options> {
    let mut all = Vec::new();
    for compress in [true, false] {
        for encrypt in [false, true] {
            all.push(
                Options::new()
                    .large_data(true)
                    .compress(compress)
                    .encrypt(encrypt)
                    .encryption_key(key()),
            );
        }
    }
    all
}

/// How many times `compute` ran over two calls for `data` under `key`.
fn value_computes(key: &str, data: &[u8], options: &Options) -> usize {
    let calls = Cell::new(0);
    for _ in 0..2 {
        let got: Vec<u8> = cache_memoize(
            key,
            || {
                calls.set(calls.get() + 1);
                data.to_vec()
            },
            options,
        );
        assert!(got == data, "{} bytes came back altered", data.len());
    }
    calls.get()
}

/// How many times `compute` ran over two full iterations of `items`.
fn iter_computes(key: &str, items: &[Vec<u8>], options: &Options) -> usize {
    let calls = Cell::new(0);
    for _ in 0..2 {
        let got: Vec<Vec<u8>> = cache_memoize_iter(
            key,
            || {
                calls.set(calls.get() + 1);
                items.to_vec()
            },
            options,
        )
        .collect();
        assert!(got == items, "{} items came back altered", items.len());
    }
    calls.get()
}

/// A chunked value whose last chunk ends where an inflate call fills the
/// 64 KiB output buffer used to stay a miss forever: the decoder still
/// held output when the reader ran out of chunks and declared the stream
/// truncated. The sweep puts the end of the stream around every multiple
/// of 64 KiB and of the chunk size, with a chunk size below and above the
/// buffer, in every pipeline, as a value and as an iterator.
#[test]
fn chunked_values_hit_whatever_their_size() {
    let _serial = serial();
    const BUF: usize = 64 * 1024;
    let mut misses = Vec::new();
    for chunk_size in [MIN_CHUNK_SIZE, BUF + 1000] {
        let mut sizes = vec![1, chunk_size - 1, chunk_size, chunk_size + 1];
        for base in [BUF, chunk_size + BUF, 2 * chunk_size] {
            sizes.extend([base - 1, base, base + 1]);
        }
        if chunk_size > BUF {
            // The last chunk longer than the buffer by various amounts.
            sizes.extend([chunk_size + BUF + 300, 2 * chunk_size - 300]);
        }
        sizes.sort_unstable();
        sizes.dedup();
        for options in pipelines() {
            configure(Config::new(MemoryBackend::new()).chunk_size(chunk_size));
            for &size in &sizes {
                let data = noise(size, size as u64);
                if value_computes(&format!("v{size}"), &data, &options) != 1 {
                    misses.push(("value", chunk_size, size, options.clone()));
                }
            }
            // Items whose frames straddle buffers and chunks, the stream
            // ending a little past the buffer into the last chunk.
            for total in [chunk_size + BUF, chunk_size + BUF + 300] {
                let items: Vec<Vec<u8>> = (0..total)
                    .step_by(7_001)
                    .map(|start| noise(7_001.min(total - start), start as u64))
                    .collect();
                if iter_computes(&format!("i{total}"), &items, &options) != 1 {
                    misses.push(("iterator", chunk_size, total, options.clone()));
                }
            }
        }
    }
    assert!(misses.is_empty(), "never hit: {misses:#?}");
    assert_eq!(stats().invalid, 0);
}

/// The default configuration's chunk size is far above the buffer: the
/// same sweep in its neighbourhood, for a value a few chunks long.
#[test]
fn chunked_values_hit_with_a_chunk_larger_than_the_buffer() {
    let _serial = serial();
    let chunk_size = 200_000;
    configure(Config::new(MemoryBackend::new()).chunk_size(chunk_size));
    let options = Options::new().large_data(true);
    let mut misses = Vec::new();
    for last in (64 * 1024 - 2..chunk_size).step_by(9_973) {
        let size = chunk_size + last;
        if value_computes(&format!("v{size}"), &noise(size, 3), &options) != 1 {
            misses.push(size);
        }
    }
    assert!(misses.is_empty(), "never hit: {misses:?}");
}

/// The longest key that still fits as is and a key one byte longer, which
/// gets shortened.
fn long_key() -> String {
    format!("report:{}", "x".repeat(300))
}

/// A key longer than 240 bytes is stored as a prefix and a digest; a raw
/// key spelling that stored key out lands on the same stored key. Each
/// must read the other's entry as a miss, never as its value.
#[test]
fn a_long_key_and_its_shortened_form_never_share_a_value() {
    let _serial = serial();
    for namespace in [None, Some("shop")] {
        for options in [
            Options::new(),
            Options::new().large_data(true),
            Options::new().encrypt(true).encryption_key(key()),
            Options::new()
                .large_data(true)
                .encrypt(true)
                .encryption_key(key()),
        ] {
            let mut config = Config::new(MemoryBackend::new()).chunk_size(MIN_CHUNK_SIZE);
            if let Some(ns) = namespace {
                config = config.namespace(ns);
            }
            configure(config);
            let long = long_key();
            let stored = make_cache_key(long.as_str(), &Options::new());
            let literal = match namespace {
                Some(ns) => stored[ns.len() + 1..].to_owned(),
                None => stored.clone(),
            };
            // Without encryption both land on one stored key.
            assert_eq!(make_cache_key(literal.as_str(), &Options::new()), stored);

            for (first, second) in [(&long, &literal), (&literal, &long)] {
                invalidate(first.as_str(), &options).unwrap();
                invalidate(second.as_str(), &options).unwrap();
                let a: String = cache_memoize(first.as_str(), || "first".into(), &options);
                assert_eq!(a, "first");
                let b: String = cache_memoize(second.as_str(), || "second".into(), &options);
                assert_eq!(b, "second", "{first} got {second}'s value");
            }
            for (first, second) in [(&long, &literal), (&literal, &long)] {
                invalidate(first.as_str(), &options).unwrap();
                invalidate(second.as_str(), &options).unwrap();
                let a: Vec<String> =
                    cache_memoize_iter(first.as_str(), || vec!["first".to_owned()], &options)
                        .collect();
                assert_eq!(a, ["first"]);
                let b: Vec<String> =
                    cache_memoize_iter(second.as_str(), || vec!["second".to_owned()], &options)
                        .collect();
                assert_eq!(b, ["second"], "{first} got {second}'s items");
            }
        }
    }
}

/// A caller key spelling out the old lock key (`_lock_:job`) or the old
/// chunk key of `job` is an entry of its own: it neither holds `job`'s
/// lock nor overwrites `job`'s chunks.
#[test]
fn caller_keys_cannot_reach_derived_keys() {
    let _serial = serial();
    for namespace in [None, Some("shop")] {
        let backend = RecordingBackend::new();
        let mut config = Config::new(backend.clone()).chunk_size(MIN_CHUNK_SIZE);
        if let Some(ns) = namespace {
            config = config.namespace(ns);
        }
        configure(config);
        // A caller's entry under the old lock key does not hold the lock.
        let _: String = cache_memoize("_lock_:job", || "squatter".into(), &Options::new());
        let lock_key = CacheLock::new("job").full_cache_key().to_owned();
        assert_ne!(lock_key, make_cache_key("_lock_:job", &Options::new()));
        let mut lock = CacheLock::new("job").options(LockOptions::new().blocking(false));
        assert!(lock.acquire().unwrap(), "a caller's entry holds job's lock");
        lock.release().unwrap();
        let locked = Options::new().lock(LockOptions::new().timeout(Duration::from_millis(200)));
        let calls = Cell::new(0);
        for _ in 0..2 {
            let value: u32 = cache_memoize(
                "job",
                || {
                    calls.set(calls.get() + 1);
                    7
                },
                &locked,
            );
            assert_eq!(value, 7);
        }
        assert_eq!(calls.get(), 1);

        // Every chunk key a large value used, written over by callers.
        backend.clear_log();
        let data = noise(10_000, 1);
        let large = Options::new().large_data(true).compress(false);
        assert_eq!(value_computes("big", &data, &large), 1);
        let main = make_cache_key("big", &Options::new());
        let chunk_keys: Vec<String> = backend
            .ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Set(key, _) if key != main => Some(key),
                _ => None,
            })
            .collect();
        assert!(chunk_keys.len() >= 10);
        let prefix = namespace.map(|ns| format!("{ns}:"));
        for chunk_key in &chunk_keys {
            if let Some(prefix) = &prefix {
                assert!(chunk_key.starts_with(prefix.as_str()), "{chunk_key}");
            }
            let raw = match &prefix {
                Some(prefix) => chunk_key.strip_prefix(prefix.as_str()).unwrap(),
                None => chunk_key.as_str(),
            };
            assert_ne!(make_cache_key(raw, &Options::new()), *chunk_key);
            let _: String = cache_memoize(raw, || "squatter".into(), &Options::new());
        }
        // The old chunk key scheme, `{key}-{write id}-{n}`, is a plain key.
        let _: String = cache_memoize(
            format!("{main}-0123456789abcdef-0").as_str(),
            || "squatter".into(),
            &Options::new(),
        );
        assert_eq!(
            value_computes("big", &data, &large),
            0,
            "chunks overwritten"
        );
        if let Some(prefix) = &prefix {
            for key in backend.keys() {
                assert!(key.starts_with(prefix.as_str()), "{key}");
            }
            assert!(lock_key.starts_with(prefix.as_str()));
        }
    }
}

/// The sizes of every item stored.
fn stored_sizes(backend: &RecordingBackend) -> Vec<(String, usize)> {
    backend
        .ops()
        .into_iter()
        .filter_map(|op| match op {
            Op::Set(key, value) => Some((key, value.len())),
            _ => None,
        })
        .collect()
}

/// With the smallest chunk size, a value of over a thousand chunks needs
/// two levels of index chunks: no stored item exceeds the chunk size (the
/// manifest by at most its fixed overhead), and the value hits.
#[test]
fn no_stored_item_exceeds_the_chunk_size() {
    let _serial = serial();
    for chunk_size in [0, 1500] {
        let backend = RecordingBackend::new();
        configure(Config::new(backend.clone()).chunk_size(chunk_size));
        let limit = chunk_size.max(MIN_CHUNK_SIZE);
        let mut checked = 0;
        for (pipeline, options) in pipelines().into_iter().enumerate() {
            // Past 32 chunks the manifest used to outgrow the chunk; past
            // 1024, two levels of index chunks (the plain pipeline only, to
            // keep the test quick).
            let many = if pipeline == 2 { 1100 } else { 100 };
            for chunks in [31, 32, 33, many] {
                backend.clear_log();
                let data = noise(limit * chunks - 50, chunks as u64);
                assert_eq!(
                    value_computes(&format!("v{pipeline}-{chunks}"), &data, &options),
                    1,
                    "{chunks} chunks of {limit}"
                );
                let sizes = stored_sizes(&backend);
                assert!(sizes.len() >= chunks);
                for (key, size) in sizes {
                    assert!(size <= limit + MAX_MANIFEST_OVERHEAD, "{key}: {size} bytes");
                    checked += 1;
                }
            }
            backend.clear_log();
            let items: Vec<Vec<u8>> = (0..60).map(|i| noise(limit * 3, i)).collect();
            assert_eq!(
                iter_computes(&format!("items{pipeline}"), &items, &options),
                1
            );
            for (key, size) in stored_sizes(&backend) {
                assert!(size <= limit + MAX_MANIFEST_OVERHEAD, "{key}: {size} bytes");
            }
        }
        assert!(checked > 1400);
    }
}

/// A backend that records the TTL of every write and stores with a TTL it
/// can hold (the shipped backends clamp on their own).
#[derive(Clone, Default)]
struct TtlBackend {
    inner: MemoryBackend,
    ttls: Arc<Mutex<Vec<Duration>>>,
    keys: Arc<Mutex<HashMap<String, usize>>>,
}

impl TtlBackend {
    fn saw(&self, ttl: Duration) {
        self.ttls.lock().unwrap().push(ttl);
    }

    fn ttls(&self) -> Vec<Duration> {
        self.ttls.lock().unwrap().clone()
    }
}

const HELD: Duration = Duration::from_secs(3600);

impl Backend for TtlBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.saw(ttl);
        *self.keys.lock().unwrap().entry(key.into()).or_default() += 1;
        self.inner.set(key, value, ttl.min(HELD))
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.saw(ttl);
        self.inner.add(key, value, ttl.min(HELD))
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.touch(key, ttl.min(HELD))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key)
    }
}

/// `expiration(Duration::ZERO)` (Django's timeout 0) computes every time
/// and stores nothing at all, in every mode, and takes no lock.
#[test]
fn a_zero_expiration_stores_nothing() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()).chunk_size(MIN_CHUNK_SIZE));
    let data = noise(5_000, 5);
    for options in pipelines()
        .into_iter()
        .chain([Options::new(), Options::new().encrypt(true)])
    {
        let options = options.expiration(Duration::ZERO).lock(LockOptions::new());
        assert_eq!(value_computes("zero", &data, &options), 2);
        let items = vec![data.clone(), data.clone()];
        assert_eq!(iter_computes("zero-items", &items, &options), 2);
    }
    let writes: Vec<Op> = backend
        .ops()
        .into_iter()
        .filter(|op| !matches!(op, Op::Get(_)))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}

/// The longest expirations reach the backend as given, without a panic,
/// and the entries hit.
#[test]
fn a_huge_expiration_reaches_the_backend() {
    let _serial = serial();
    for huge in [Duration::MAX, Duration::from_secs(u64::MAX)] {
        let backend = TtlBackend::default();
        configure(Config::new(backend.clone()).chunk_size(MIN_CHUNK_SIZE));
        for options in pipelines().into_iter().chain([Options::new()]) {
            // A value that fits one entry when not chunked.
            let data = noise(
                if options == Options::new() {
                    700
                } else {
                    5_000
                },
                6,
            );
            let options = options.expiration(huge).lock(LockOptions::new());
            assert_eq!(value_computes("huge", &data, &options), 1);
            assert_eq!(
                value_computes("huge", &data, &options.clone().force_overwrite(true)),
                2
            );
            let items = vec![data.clone(), data.clone()];
            assert_eq!(iter_computes("huge-items", &items, &options), 1);
            invalidate("huge", &options).unwrap();
            invalidate("huge-items", &options).unwrap();
        }
        let ttls = backend.ttls();
        // Locks keep their own expiry; every entry write carries `huge`.
        let entries = ttls.iter().filter(|&&ttl| ttl == huge).count();
        assert!(entries > 20, "{ttls:?}");
        assert!(ttls.iter().all(|&ttl| ttl == huge || ttl <= HELD));
        assert!(!backend.keys.lock().unwrap().is_empty());
    }
}
