//! The async API on the embedded store and through the bridges: the same
//! policy and stored format as the sync API, without blocking an executor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memo_runtime::{
    AsyncBackend, BackendFuture, CacheLock, Config, EncryptionKey, LockError, LockOptions,
    MemoryBackend, Options, cache_memoize, cache_memoize_async, configure, invalidate_async, stats,
    try_cache_memoize_async,
};
use memo_tests::recording::{Op, RecordingBackend};
use memo_tests::runtime::{run, run_multi};
use memo_tests::serial;

#[test]
fn a_miss_computes_and_a_hit_does_not() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    run(async {
        let options = Options::new();
        let first: u64 = cache_memoize_async("async-hit", || async { 7 }, &options).await;
        let second: u64 =
            cache_memoize_async("async-hit", || async { unreachable!() }, &options).await;
        assert_eq!((first, second), (7, 7));
    });
    let stats = stats();
    assert_eq!((stats.misses, stats.hits, stats.stores), (1, 1, 1));
}

#[test]
fn only_ok_is_cached() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    run(async {
        let options = Options::new();
        let err: Result<u8, &str> =
            try_cache_memoize_async("async-result", || async { Err("no") }, &options).await;
        assert_eq!(err, Err("no"));
        let ok: Result<u8, &str> =
            try_cache_memoize_async("async-result", || async { Ok(3) }, &options).await;
        assert_eq!(ok, Ok(3));
        let hit: Result<u8, &str> =
            try_cache_memoize_async("async-result", || async { Ok(4) }, &options).await;
        assert_eq!(hit, Ok(3));
    });
}

#[test]
fn invalidate_async_drops_values_and_chunks() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()).chunk_size(1024));
    run(async {
        for options in [Options::new(), Options::new().large_data(true)] {
            let value: Vec<u32> =
                cache_memoize_async("async-gone", || async { (0..5000).collect() }, &options).await;
            invalidate_async("async-gone", &options).await.unwrap();
            let again: Vec<u32> =
                cache_memoize_async("async-gone", || async { vec![1] }, &options).await;
            assert_eq!((value.len(), again), (5000, vec![1]));
            invalidate_async("async-gone", &options).await.unwrap();
        }
    });
    for op in backend.ops() {
        // The version token stays, as the barrier across processes needs.
        if let Op::Set(key, _) = op
            && !key.starts_with("\\V:")
        {
            let left = memo_runtime::Backend::get(backend.inner(), &key).unwrap();
            assert_eq!(left, None, "{key} was deleted too");
        }
    }
}

#[test]
fn encrypted_values_round_trip_and_stay_sealed() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    let key = EncryptionKey::new([9u8; 32]).unwrap();
    configure(Config::new(backend.clone()).encryption_key(key));
    run(async {
        for large in [false, true] {
            let options = Options::new().encrypt(true).large_data(large);
            let key = format!("secret-{large}");
            let value: String =
                cache_memoize_async(&*key, || async { "plain-text-marker".repeat(10) }, &options)
                    .await;
            let hit: String =
                cache_memoize_async(&*key, || async { unreachable!() }, &options).await;
            assert_eq!(value, hit);
        }
    });
    assert!(!backend.saw(b"plain-text-marker"));
    assert!(!backend.keys().iter().any(|k| k.contains("secret")));
}

#[test]
fn large_values_round_trip_across_chunk_boundaries() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    run_multi(async {
        for len in [0usize, 1, 255, 256, 257, 1023, 1024, 1025, 100_000] {
            for compress in [false, true] {
                let options = Options::new().large_data(true).compress(compress);
                let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let key = format!("async-large-{len}-{compress}");
                let expected = value.clone();
                let stored: Vec<u8> =
                    cache_memoize_async(&*key, || async move { value }, &options).await;
                let hit: Vec<u8> =
                    cache_memoize_async(&*key, || async { unreachable!() }, &options).await;
                assert_eq!(stored, expected);
                assert_eq!(hit, expected, "{len} {compress}");
            }
        }
    });
}

#[test]
fn sync_writes_and_async_reads_the_same_entry() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    for options in [Options::new(), Options::new().large_data(true)] {
        let key = format!("shared-{}", options == Options::new());
        let len = if options.clone() == Options::new() {
            100
        } else {
            3000
        };
        let written: Vec<u64> = cache_memoize(&*key, || (0..len).collect(), &options);
        let read: Vec<u64> = run(cache_memoize_async(
            &*key,
            || async { unreachable!("the sync write is read") },
            &options,
        ));
        assert_eq!(written, read);
    }
    let written: String = run(cache_memoize_async(
        "async-first",
        || async { "from async".to_owned() },
        &Options::new(),
    ));
    let read: String = cache_memoize("async-first", || unreachable!(), &Options::new());
    assert_eq!(written, read);
}

/// Spawns `tasks` concurrent calls for `key` on the current runtime, each
/// computing `value` after `pause`; returns what each got and how many
/// computed.
async fn stampede(
    tasks: usize,
    key: &'static str,
    pause: Duration,
    value: u64,
    options: Options,
) -> (Vec<u64>, usize) {
    let computed = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let computed = Arc::clone(&computed);
            let options = options.clone();
            tokio::spawn(async move {
                cache_memoize_async(
                    key,
                    || async move {
                        computed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(pause).await;
                        value
                    },
                    &options,
                )
                .await
            })
        })
        .collect();
    let mut values = Vec::new();
    for handle in handles {
        values.push(handle.await.unwrap());
    }
    (values, computed.load(Ordering::SeqCst))
}

#[test]
fn a_thousand_tasks_on_one_cold_key_compute_once() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let (values, computed) = run_multi(stampede(
        1000,
        "thousand",
        Duration::from_millis(100),
        42,
        Options::new(),
    ));
    assert_eq!(computed, 1);
    assert!(values.iter().all(|&v| v == 42));
    assert_eq!(stats().misses, 1);
}

#[test]
fn many_tasks_coalesce_on_a_current_thread_runtime() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let (values, computed) = run(stampede(
        50,
        "current-thread",
        Duration::from_millis(50),
        1,
        Options::new().lock(LockOptions::new()),
    ));
    assert_eq!(computed, 1);
    assert!(values.iter().all(|&v| v == 1));
}

#[test]
fn a_cancelled_leader_hands_over_to_a_waiter() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let start = Instant::now();
    let (cancelled, waited) = run_multi(async {
        let leader = tokio::spawn(async {
            let options = Options::new();
            let computing = cache_memoize_async(
                "cancelled",
                || async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    1u32
                },
                &options,
            );
            tokio::time::timeout(Duration::from_millis(100), computing).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = tokio::spawn(async {
            cache_memoize_async("cancelled", || async { 2u32 }, &Options::new()).await
        });
        (leader.await.unwrap(), waiter.await.unwrap())
    });
    assert!(cancelled.is_err(), "the leader was dropped by its timeout");
    assert_eq!(waited, 2, "the waiter computed in its place");
    assert!(start.elapsed() < Duration::from_secs(5), "no hang");
}

#[test]
fn a_panicking_async_leader_hands_over() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let results = run_multi(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let computed = Arc::clone(&computed);
                tokio::spawn(async move {
                    cache_memoize_async(
                        "async-panics",
                        || async move {
                            let n = computed.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            assert!(n != 0, "the first computation fails");
                            5u8
                        },
                        &Options::new(),
                    )
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    assert_eq!(computed.load(Ordering::SeqCst), 2);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert!(results.into_iter().filter_map(Result::ok).all(|v| v == 5));
}

#[test]
fn two_runtimes_in_sequence() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    let options = Options::new().large_data(true).lock(LockOptions::new());
    for round in 0..2u32 {
        let value: Vec<u32> = run(cache_memoize_async(
            "two-runtimes",
            || async { (0..3000).collect() },
            &options,
        ));
        assert_eq!(value.len(), 3000, "round {round}");
        let mut lock = CacheLock::new("two-runtimes-lock");
        run(async {
            assert!(lock.acquire_async().await.unwrap());
            lock.release_async().await.unwrap();
        });
    }
}

#[test]
fn locks_acquire_and_release_on_tokio_timers() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    run(async {
        let mut held = CacheLock::new("async-lock");
        assert!(held.acquire_async().await.unwrap());
        assert!(matches!(
            held.acquire_async().await,
            Err(LockError::AlreadyHeld(_))
        ));
        let mut other = CacheLock::new("async-lock").blocking(false);
        assert!(!other.acquire_async().await.unwrap());
        // A blocking waiter times out on tokio timers while another task on
        // this same thread (a current-thread runtime) keeps running.
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let mut waiter = CacheLock::new("async-lock")
            .timeout(Duration::from_millis(200))
            .retry(Duration::from_millis(20));
        assert!(matches!(
            waiter.acquire_async().await,
            Err(LockError::Timeout { .. })
        ));
        assert!(
            ticks.load(Ordering::SeqCst) >= 5,
            "the executor was never blocked"
        );
        ticker.abort();
        held.release_async().await.unwrap();
        assert!(held.release_async().await.is_err(), "released already");
        assert!(other.acquire_async().await.unwrap());
        other.release_async().await.unwrap();
    });
}

#[test]
fn a_users_sync_backend_serves_async_calls() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()));
    let value: u32 = run(cache_memoize_async(
        "user-sync",
        || async { 11 },
        &Options::new(),
    ));
    assert_eq!(value, 11);
    let stored = backend
        .ops()
        .iter()
        .any(|op| matches!(op, Op::Set(key, _) if key == "user-sync"));
    assert!(stored, "the value went through the user's backend");
    let hit: u32 = run(cache_memoize_async(
        "user-sync",
        || async { 0 },
        &Options::new(),
    ));
    assert_eq!(hit, 11);
}

/// An engine with only an async interface, counting its calls.
#[derive(Default, Clone)]
struct AsyncMap {
    map: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    calls: Arc<AtomicUsize>,
}

impl AsyncMap {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Vec<u8>>) -> R) -> R {
        self.calls.fetch_add(1, Ordering::SeqCst);
        f(&mut self.map.lock().unwrap())
    }
}

impl AsyncBackend for AsyncMap {
    fn get<'a>(&'a self, key: &'a str) -> BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            Ok(self.with(|m| m.get(key).cloned()))
        })
    }
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], _: Duration) -> BackendFuture<'a, ()> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.with(|m| m.insert(key.to_owned(), value.to_vec()));
            Ok(())
        })
    }
    fn add<'a>(&'a self, key: &'a str, value: &'a [u8], _: Duration) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            Ok(self.with(|m| {
                if m.contains_key(key) {
                    return false;
                }
                m.insert(key.to_owned(), value.to_vec());
                true
            }))
        })
    }
    fn touch<'a>(&'a self, key: &'a str, _: Duration) -> BackendFuture<'a, bool> {
        Box::pin(async move { Ok(self.with(|m| m.contains_key(key))) })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BackendFuture<'a, bool> {
        Box::pin(async move { Ok(self.with(|m| m.remove(key).is_some())) })
    }
}

#[test]
fn new_async_serves_sync_and_async_calls() {
    let _serial = serial();
    let engine = AsyncMap::default();
    configure(Config::new_async(engine.clone()).chunk_size(1024));
    let options = Options::new().lock(LockOptions::new());
    // Sync writes, async reads; then async writes, sync reads.
    let written: Vec<u16> = cache_memoize("both-worlds", || (0..100).collect(), &options);
    let read: Vec<u16> = run(cache_memoize_async(
        "both-worlds",
        || async { unreachable!() },
        &options,
    ));
    assert_eq!(written, read);
    let large = options.large_data(true);
    let written: Vec<u16> = run(cache_memoize_async(
        "both-worlds-large",
        || async { (0..5000).collect() },
        &large,
    ));
    let read: Vec<u16> = cache_memoize("both-worlds-large", || unreachable!(), &large);
    assert_eq!(written, read);
    // A sync call made from inside a current-thread runtime does not wait
    // on that runtime: it completes.
    let inside: u8 = run(async { cache_memoize("sync-inside", || 4, &Options::new()) });
    assert_eq!(inside, 4);
    assert!(engine.calls.load(Ordering::SeqCst) > 0);
    assert_eq!(stats().errors, 0);
}

#[test]
fn every_memo_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let options = Options::new();
    assert_send(cache_memoize_async("send", || async { 1u8 }, &options));
    assert_send(try_cache_memoize_async(
        "send",
        || async { Ok::<u8, String>(1) },
        &options,
    ));
    assert_send(invalidate_async("send", &options));
    let mut lock = CacheLock::new("send");
    assert_send(lock.acquire_async());
    let mut lock = CacheLock::new("send");
    assert_send(lock.release_async());
}

#[test]
fn a_cancelled_leader_releases_its_lock() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    run_multi(async {
        let leader = tokio::spawn(async {
            let options = Options::new().lock(LockOptions::new());
            let computing = cache_memoize_async(
                "cancelled-locked",
                || async {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    1u32
                },
                &options,
            );
            tokio::time::timeout(Duration::from_millis(100), computing).await
        });
        assert!(leader.await.unwrap().is_err());
        // The release was spawned as the future dropped; without it the
        // lock would stay taken for its 30 s expiration.
        let mut lock = CacheLock::new("cancelled-locked")
            .timeout(Duration::from_secs(2))
            .retry(Duration::from_millis(10));
        let start = Instant::now();
        assert!(lock.acquire_async().await.unwrap());
        assert!(start.elapsed() < Duration::from_secs(1));
        lock.release_async().await.unwrap();
    });
}

#[test]
fn a_sync_caller_waits_for_an_async_leader() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let runtime = std::thread::spawn(move || {
        run(cache_memoize_async(
            "mixed-worlds",
            || async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                3u8
            },
            &Options::new(),
        ))
    });
    std::thread::sleep(Duration::from_millis(50));
    let waited: u8 = cache_memoize(
        "mixed-worlds",
        || {
            computed.fetch_add(1, Ordering::SeqCst);
            4
        },
        &Options::new(),
    );
    assert_eq!((waited, runtime.join().unwrap()), (3, 3));
    assert_eq!(computed.load(Ordering::SeqCst), 1);
}

#[test]
fn other_tasks_keep_running_while_a_large_value_is_stored_and_loaded() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let largest_gap = runtime.block_on(async {
        let heartbeat = tokio::spawn(async {
            let mut largest = Duration::ZERO;
            let mut last = Instant::now();
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                largest = largest.max(last.elapsed());
                last = Instant::now();
            }
            largest
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // On the one worker, next to the heartbeat.
        let memo = tokio::spawn(async {
            let options = Options::new().large_data(true);
            let len = 16 << 20;
            let stored: Vec<u16> =
                cache_memoize_async("huge", || async move { vec![7; len] }, &options).await;
            let loaded: Vec<u16> =
                cache_memoize_async("huge", || async { unreachable!() }, &options).await;
            assert_eq!((stored.len(), loaded.len()), (len, len));
        });
        memo.await.unwrap();
        heartbeat.await.unwrap()
    });
    // Inline, the (de)serialization stalls this worker for about a second
    // in a debug build; the bound leaves room for a loaded two-core machine.
    assert!(
        largest_gap < Duration::from_millis(250),
        "the heartbeat stalled for {largest_gap:?}"
    );
}
