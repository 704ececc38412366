//! Coalescing: concurrent calls for one key in one process share one
//! computation, and a leader that fails hands over without stranding
//! anyone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    CacheLock, Config, LockOptions, MemoryBackend, Options, cache_memoize, configure, stats,
    try_cache_memoize,
};
use memo_tests::recording::{Op, RecordingBackend};
use memo_tests::serial;

/// Runs `threads` threads released together, each calling `call(i)`.
fn together<R: Send + 'static>(
    threads: usize,
    call: impl Fn(usize) -> R + Send + Sync + 'static,
) -> Vec<thread::Result<R>> {
    let barrier = Arc::new(Barrier::new(threads));
    let call = Arc::new(call);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let call = Arc::clone(&call);
            thread::spawn(move || {
                barrier.wait();
                call(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join()).collect()
}

fn slow_value(computed: &AtomicUsize, work: Duration) -> u64 {
    computed.fetch_add(1, Ordering::SeqCst);
    thread::sleep(work);
    42
}

#[test]
fn sixteen_threads_on_one_cold_key_compute_once() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let values = together(16, move |_| {
        cache_memoize(
            "cold",
            || slow_value(&c, Duration::from_millis(100)),
            &Options::new(),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    assert!(values.into_iter().all(|v| v.unwrap() == 42));
    let stats = stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 15);
    assert_eq!(stats.stores, 1);
}

#[test]
fn waiters_share_a_large_value_too() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let values = together(8, move |_| {
        cache_memoize(
            "cold-large",
            || {
                c.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                (0..50_000u32).collect::<Vec<_>>()
            },
            &Options::new().large_data(true),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    for value in values {
        assert_eq!(value.unwrap(), (0..50_000u32).collect::<Vec<_>>());
    }
}

#[test]
fn a_panicking_leader_hands_over_to_one_waiter() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let start = Instant::now();
    let results = together(8, move |_| {
        cache_memoize(
            "panics-once",
            || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                if n == 0 {
                    panic!("the first computation fails");
                }
                7u32
            },
            &Options::new(),
        )
    });
    assert!(start.elapsed() < Duration::from_secs(5), "nobody hung");
    assert_eq!(
        computed.load(Ordering::SeqCst),
        2,
        "exactly one more computation"
    );
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert!(
        results
            .into_iter()
            .filter_map(Result::ok)
            .all(|value| value == 7)
    );
}

#[test]
fn an_err_from_the_leader_lets_another_thread_compute() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let results = together(6, move |_| {
        try_cache_memoize(
            "errs-once",
            || {
                let n = c.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(100));
                if n == 0 { Err("first fails") } else { Ok(9u8) }
            },
            &Options::new(),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 2);
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    assert_eq!(results.iter().filter(|r| **r == Ok(9)).count(), 5);
}

#[test]
fn coalesce_false_computes_in_every_thread() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let values = together(8, move |_| {
        cache_memoize(
            "uncoalesced",
            || slow_value(&c, Duration::from_millis(100)),
            &Options::new().coalesce(false),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 8);
    assert!(values.into_iter().all(|v| v.unwrap() == 42));
}

#[test]
fn distinct_keys_compute_in_parallel() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let start = Instant::now();
    let values = together(8, move |i| {
        cache_memoize(
            ["distinct", &i.to_string()],
            || slow_value(&c, Duration::from_millis(300)),
            &Options::new(),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 8);
    assert!(values.into_iter().all(|v| v.unwrap() == 42));
    // Serialized, eight computations would take 2.4 s.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn with_a_lock_only_the_leader_takes_it() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()));
    let lock_key = CacheLock::new("locked-cold").full_cache_key().to_owned();
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let values = together(8, move |_| {
        cache_memoize(
            "locked-cold",
            || slow_value(&c, Duration::from_millis(100)),
            &Options::new().lock(LockOptions::new()),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    assert!(values.into_iter().all(|v| v.unwrap() == 42));
    let ops = backend.ops();
    let adds = ops
        .iter()
        .filter(|op| matches!(op, Op::Set(key, _) if *key == lock_key))
        .count();
    assert_eq!(adds, 1, "one lock attempt for the process: {ops:?}");
    assert!(ops.contains(&Op::Delete(lock_key)), "released");
    assert_eq!(stats().lock_waits, 0);
}

#[test]
fn a_waiter_gives_up_after_the_lock_timeout_and_computes() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new().lock(
        LockOptions::new()
            .timeout(Duration::from_millis(200))
            .retry(Duration::from_millis(10)),
    );
    let leader_options = options.clone();
    let leader = thread::spawn(move || {
        cache_memoize(
            "stuck-leader",
            || {
                thread::sleep(Duration::from_millis(1500));
                1u8
            },
            &leader_options,
        )
    });
    thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let value: u8 = cache_memoize("stuck-leader", || 2, &options);
    let waited = start.elapsed();
    assert_eq!(value, 2);
    assert!(waited < Duration::from_millis(1200), "{waited:?}");
    assert_eq!(leader.join().unwrap(), 1);
}

#[test]
fn a_refresh_is_not_coalesced_with_readers() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&computed);
    let values = together(4, move |_| {
        cache_memoize(
            "refreshed",
            || slow_value(&c, Duration::from_millis(50)),
            &Options::new().force_overwrite(true),
        )
    });
    assert_eq!(computed.load(Ordering::SeqCst), 4);
    assert!(values.into_iter().all(|v| v.unwrap() == 42));
}

#[test]
fn a_waiter_of_another_type_computes_its_own() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let leader = thread::spawn(|| {
        cache_memoize(
            "two-types",
            || {
                thread::sleep(Duration::from_millis(200));
                String::from("text")
            },
            &Options::new(),
        )
    });
    thread::sleep(Duration::from_millis(50));
    // The leader's `String` bytes would decode as a `Vec<u64>` (a length,
    // then four one-byte varints): calls of two types never share a value.
    let other: Vec<u64> = cache_memoize("two-types", || vec![1, 2, 3], &Options::new());
    assert_eq!(other, vec![1, 2, 3]);
    assert_eq!(leader.join().unwrap(), "text");
}
