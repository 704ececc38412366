//! Every `Duration` a caller can hand a lock or a chunked entry is valid
//! input, on every backend: zero, one nanosecond, `u64::MAX` seconds and
//! `Duration::MAX` as lock timeout, retry and expiry, and as the expiration
//! of large values and iterators. None of them panics, a huge expiration is
//! cached (not stored already expired, not wrapped to a second), and an
//! unrelated key keeps hitting afterwards: a refused command must never put
//! a whole server into back-off.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{
    CacheLock, Config, LockError, LockOptions, MemoryBackend, Options, cache_memoize,
    cache_memoize_iter, configure, stats,
};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

const EDGES: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_secs(31 * 24 * 3600),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

/// Runs `check` with the global configuration on memory, memcached and
/// Redis in turn.
fn on_every_backend(check: fn(&str)) {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).namespace("edges"));
    check("memory");
    for kind in [Kind::Memcached, Kind::Redis] {
        let Some(server) = Server::try_start(kind) else {
            continue;
        };
        configure(
            Config::from_url(&server.url())
                .expect("a valid URL")
                .namespace("edges"),
        );
        check(&server.url());
    }
    configure(Config::new(MemoryBackend::new()));
}

/// A hit on a key no edge touched: the backend still answers normally.
fn unrelated_key_keeps_hitting(backend: &str) {
    let computed = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: u64 = cache_memoize(
            ["unrelated", backend],
            || {
                computed.fetch_add(1, Ordering::Relaxed);
                7
            },
            &Options::new(),
        );
        assert_eq!(value, 7);
    }
    assert_eq!(
        computed.load(Ordering::Relaxed),
        1,
        "{backend}: the unrelated key missed twice"
    );
}

fn locks_take_every_duration(backend: &str) {
    for (i, edge) in EDGES.into_iter().enumerate() {
        let key = format!("lock-{i}");
        let mut holder = CacheLock::new(key.as_str())
            .lock_expiration(edge)
            .timeout(edge)
            .retry(edge);
        assert!(holder.acquire().expect("acquire"), "{backend} {edge:?}");
        assert!(holder.locked(), "{backend} {edge:?}: held but not locked()");
        holder
            .update_expiration(Some(edge))
            .unwrap_or_else(|err| panic!("{backend} {edge:?}: update_expiration: {err}"));

        // Whatever the retry interval, a waiter gives up at its timeout.
        let start = Instant::now();
        let waited = CacheLock::new(key.as_str())
            .retry(edge)
            .timeout(Duration::from_millis(100))
            .acquire();
        assert!(
            matches!(waited, Err(LockError::Timeout { .. })),
            "{backend} {edge:?}: {waited:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{backend} {edge:?}"
        );

        holder.release().expect("release");
        assert!(
            CacheLock::new(key.as_str())
                .blocking(false)
                .acquire_guard()
                .is_ok()
        );
    }
    unrelated_key_keeps_hitting(backend);
}

fn memoized_locks_take_every_duration(backend: &str) {
    for (i, edge) in EDGES.into_iter().enumerate() {
        let options = Options::new().lock(
            LockOptions::new()
                .timeout(edge)
                .retry(edge)
                .lock_expiration(edge),
        );
        let computed = AtomicUsize::new(0);
        for _ in 0..2 {
            let value: u32 = cache_memoize(
                ["locked", &i.to_string()],
                || {
                    computed.fetch_add(1, Ordering::Relaxed);
                    41
                },
                &options,
            );
            assert_eq!(value, 41);
        }
        assert_eq!(computed.load(Ordering::Relaxed), 1, "{backend} {edge:?}");
    }
    unrelated_key_keeps_hitting(backend);
}

fn chunked_entries_keep_huge_expirations(backend: &str) {
    let before = stats().errors;
    // Zero stores nothing and a nanosecond is rounded up to the backend's
    // smallest unit (a millisecond on Redis): neither is expected to hit.
    for (i, edge) in EDGES.into_iter().enumerate().skip(2) {
        let options = Options::new().large_data(true).expiration(edge);
        let value: Vec<u8> = (0..50_000u32).map(|n| (n * 31 % 251) as u8).collect();
        let computed = AtomicUsize::new(0);
        for _ in 0..2 {
            let got: Vec<u8> = cache_memoize(
                ["large", &i.to_string()],
                || {
                    computed.fetch_add(1, Ordering::Relaxed);
                    value.clone()
                },
                &options,
            );
            assert_eq!(got, value);
        }
        assert_eq!(
            computed.load(Ordering::Relaxed),
            1,
            "{backend} {edge:?}: large value"
        );

        let computed = AtomicUsize::new(0);
        for _ in 0..2 {
            let items: Vec<u64> = cache_memoize_iter(
                ["items", &i.to_string()],
                || {
                    computed.fetch_add(1, Ordering::Relaxed);
                    0..2_000u64
                },
                &Options::new().expiration(edge),
            )
            .collect();
            assert_eq!(items, (0..2_000).collect::<Vec<_>>());
        }
        assert_eq!(
            computed.load(Ordering::Relaxed),
            1,
            "{backend} {edge:?}: iterator"
        );
    }
    assert_eq!(
        stats().errors,
        before,
        "{backend}: a duration edge was counted as an error"
    );
    unrelated_key_keeps_hitting(backend);
}

#[test]
fn locks_take_every_duration_on_every_backend() {
    on_every_backend(locks_take_every_duration);
}

#[test]
fn memoized_calls_with_locks_take_every_duration_on_every_backend() {
    on_every_backend(memoized_locks_take_every_duration);
}

#[test]
fn chunked_values_and_iterators_keep_huge_expirations_on_every_backend() {
    on_every_backend(chunked_entries_keep_huge_expirations);
}
