//! The functional API as a user sees it, on the embedded backend.

use std::cell::Cell;
use std::time::Duration;

use memo_runtime::{
    Backend, CacheKey, Config, MemoryBackend, Options, cache_memoize, configure, invalidate,
    make_cache_key, stats, try_cache_memoize,
};
use memo_tests::recording::{Op, RecordingBackend};
use memo_tests::serial;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    roles: Vec<String>,
    score: f64,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
        roles: vec!["reader".into(), "writer".into()],
        score: id as f64 / 3.0,
    }
}

fn fresh() -> RecordingBackend {
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()).chunk_size(4096));
    backend
}

#[test]
fn computes_once_then_answers_from_the_cache() {
    let _serial = serial();
    fresh();
    let calls = Cell::new(0);
    for _ in 0..5 {
        let value = cache_memoize(
            ["profile", "1"],
            || {
                calls.set(calls.get() + 1);
                profile(1)
            },
            &Options::new(),
        );
        assert_eq!(value, profile(1));
    }
    assert_eq!(calls.get(), 1);
    let stats = stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (4, 1, 1));
    assert!(stats.bytes_read > 0 && stats.bytes_written > 0);
}

#[test]
fn different_keys_are_different_entries() {
    let _serial = serial();
    fresh();
    let a: u32 = cache_memoize(["n", "a:b"], || 1, &Options::new());
    let b: u32 = cache_memoize(["n", "a", "b"], || 2, &Options::new());
    let c: u32 = cache_memoize(["n", "a%3Ab"], || 3, &Options::new());
    assert_eq!((a, b, c), (1, 2, 3));
}

#[test]
fn try_cache_memoize_caches_only_ok() {
    let _serial = serial();
    let backend = fresh();
    let calls = Cell::new(0);
    let failing = || -> Result<u32, String> {
        calls.set(calls.get() + 1);
        Err("not yet".into())
    };
    assert_eq!(
        try_cache_memoize("flaky", failing, &Options::new()),
        Err("not yet".into())
    );
    assert_eq!(
        try_cache_memoize("flaky", failing, &Options::new()),
        Err("not yet".into())
    );
    assert_eq!(calls.get(), 2, "errors are not cached");
    assert!(
        backend.entries().is_empty(),
        "nothing was stored for an error"
    );
    let ok: Result<u32, String> = try_cache_memoize("flaky", || Ok(7), &Options::new());
    assert_eq!(ok, Ok(7));
    let cached: Result<u32, String> =
        try_cache_memoize("flaky", || Err("recomputed".into()), &Options::new());
    assert_eq!(cached, Ok(7));
}

#[test]
fn large_values_are_chunked_compressed_and_round_trip() {
    let _serial = serial();
    let backend = fresh();
    let big: Vec<Profile> = (0..2000).map(profile).collect();
    let options = Options::new().large_data(true);
    let stored = cache_memoize("big", || big.clone(), &options);
    assert_eq!(stored, big);
    let chunk_writes = backend
        .ops()
        .iter()
        .filter(
            |op| matches!(op, Op::Set(key, _) if key.starts_with("\\C") && key.ends_with(":big")),
        )
        .count();
    assert!(
        chunk_writes > 3,
        "stored over several chunks, got {chunk_writes}"
    );
    for value in backend.values() {
        assert!(value.len() <= 4096 + 64, "item of {} bytes", value.len());
    }
    let loaded = cache_memoize(
        "big",
        || -> Vec<Profile> { unreachable!("cached") },
        &options,
    );
    assert_eq!(loaded, big);
    assert_eq!(stats().hits, 1);
}

#[test]
fn uncompressed_large_data_is_larger_but_equal() {
    let _serial = serial();
    let backend = fresh();
    let text = "the same words again and again ".repeat(2000);
    let compressed: String = cache_memoize("z", || text.clone(), &Options::new().large_data(true));
    let zipped: usize = backend.values().iter().map(Vec::len).sum();
    backend.clear_log();
    let plain: String = cache_memoize(
        "p",
        || text.clone(),
        &Options::new().large_data(true).compress(false),
    );
    let raw: usize = backend.values().iter().map(Vec::len).sum();
    assert_eq!(compressed, text);
    assert_eq!(plain, text);
    assert!(zipped * 10 < raw, "compressed {zipped} vs raw {raw}");
}

#[test]
fn a_large_value_without_large_data_is_computed_not_cached() {
    let _serial = serial();
    let backend = fresh();
    let big = vec![1u8; 10_000];
    let value: Vec<u8> = cache_memoize("too-big", || big.clone(), &Options::new());
    assert_eq!(value, big);
    assert!(backend.entries().is_empty());
    assert_eq!(stats().errors, 1);
}

#[test]
fn reading_switches_between_small_and_large_forms() {
    let _serial = serial();
    fresh();
    let _: String = cache_memoize("form", || "x".repeat(100), &Options::new().large_data(true));
    let small: String = cache_memoize("form", || unreachable!(), &Options::new());
    assert_eq!(small, "x".repeat(100));
}

#[test]
fn another_type_under_the_same_key_is_recomputed() {
    let _serial = serial();
    fresh();
    let _: Vec<u32> = cache_memoize("shape", || vec![1, 2, 3], &Options::new());
    let other: Vec<u64> = cache_memoize("shape", || vec![9], &Options::new());
    assert_eq!(other, vec![9]);
    assert_eq!(stats().invalid, 1);
}

#[test]
fn invalidate_drops_small_and_chunked_entries() {
    let _serial = serial();
    let backend = fresh();
    let _: u32 = cache_memoize("small", || 1, &Options::new());
    invalidate("small", &Options::new()).unwrap();
    assert_eq!(cache_memoize("small", || 2u32, &Options::new()), 2);

    let options = Options::new().large_data(true);
    let _: Vec<u64> = cache_memoize("large", || (0..5000).collect(), &options);
    invalidate("large", &options).unwrap();
    let chunk_keys: Vec<String> = backend
        .ops()
        .iter()
        .filter_map(|op| match op {
            Op::Set(key, _) if key.starts_with("\\C") && key.ends_with(":large") => {
                Some(key.clone())
            }
            _ => None,
        })
        .collect();
    assert!(!chunk_keys.is_empty());
    let live_chunks = chunk_keys
        .iter()
        .filter(|key| backend.inner().get(key).unwrap().is_some())
        .count();
    assert_eq!(live_chunks, 0, "chunks are removed with the entry");
    assert_eq!(cache_memoize("large", || vec![7u64], &options), vec![7]);
    invalidate("never-stored", &Options::new()).unwrap();
}

#[test]
fn force_overwrite_recomputes_and_replaces() {
    let _serial = serial();
    fresh();
    let _: u32 = cache_memoize("fo", || 1, &Options::new());
    let refreshed: u32 = cache_memoize("fo", || 2, &Options::new().force_overwrite(true));
    assert_eq!(refreshed, 2);
    assert_eq!(cache_memoize("fo", || 3u32, &Options::new()), 2);
}

#[test]
fn values_expire() {
    let _serial = serial();
    fresh();
    let options = Options::new().expiration(Duration::from_millis(100));
    let _: u32 = cache_memoize("short", || 1, &options);
    assert_eq!(cache_memoize("short", || 2u32, &options), 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(cache_memoize("short", || 3u32, &options), 3);
}

#[test]
fn the_configured_default_expiration_applies() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).default_expiration(Duration::from_millis(100)));
    let _: u32 = cache_memoize("default-ttl", || 1, &Options::new());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(cache_memoize("default-ttl", || 2u32, &Options::new()), 2);
}

#[test]
fn keys_follow_djblets_rules_with_the_namespace() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).namespace("example.com"));
    assert_eq!(
        make_cache_key(["%test%", "%1:2:3%"], &Options::new()),
        "example.com:%25test%25:%251%3A2%3A3%25"
    );
    assert_eq!(
        make_cache_key("x".repeat(229), &Options::new()),
        format!(
            "example.com:{}edf8474a1b91e737ec28252abe7a8aa5604539b239505e8ccad8890a44198c58",
            "x".repeat(164)
        )
    );
    let key = memo_runtime::EncryptionKey::new(b"0123456789abcdef").unwrap();
    assert_eq!(
        make_cache_key("abc123", &Options::new().encrypt(true).encryption_key(key)),
        "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9"
    );
    let parts: Vec<String> = vec!["a".into(), "b c".into()];
    assert_eq!(
        make_cache_key(parts, &Options::new()),
        "example.com:a:b\\x20c"
    );
    assert_eq!(
        make_cache_key(CacheKey::from(&["only:one"][..]), &Options::new()),
        "example.com:only:one"
    );
}

#[test]
fn reconfiguring_switches_backend_and_namespace() {
    let _serial = serial();
    let first = RecordingBackend::new();
    configure(Config::new(first.clone()).namespace("one"));
    let _: u32 = cache_memoize("k", || 1, &Options::new());
    let second = RecordingBackend::new();
    configure(Config::new(second.clone()).namespace("two"));
    assert_eq!(cache_memoize("k", || 2u32, &Options::new()), 2);
    assert!(first.keys().iter().all(|k| k.starts_with("one:")));
    assert!(second.keys().iter().all(|k| k.starts_with("two:")));
    assert_eq!(
        stats().misses,
        1,
        "stats start afresh with a new configuration"
    );
}

#[test]
fn every_stored_item_fits_memcached_limits() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()));
    let options = Options::new().large_data(true).compress(false);
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let value = cache_memoize("x".repeat(300), || big.clone(), &options);
    assert_eq!(value, big);
    for op in backend.ops() {
        if let Op::Set(key, value) = op {
            assert!(key.len() <= 250, "key of {} bytes", key.len());
            assert!(value.len() <= 1 << 20, "item of {} bytes", value.len());
        }
    }
}
