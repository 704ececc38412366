//! Stampede protection: with a lock, concurrent misses compute once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    CacheLock, Config, LockOptions, MemoryBackend, Options, cache_memoize, configure, stats,
};
use memo_tests::serial;

fn stampede(threads: usize, options: Options, work: Duration) -> (usize, Vec<u64>) {
    let computed = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let computed = Arc::clone(&computed);
            let barrier = Arc::clone(&barrier);
            let options = options.clone();
            thread::spawn(move || {
                barrier.wait();
                cache_memoize(
                    "stampede",
                    || {
                        computed.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(work);
                        42u64
                    },
                    &options,
                )
            })
        })
        .collect();
    let values = handles.into_iter().map(|h| h.join().unwrap()).collect();
    (computed.load(Ordering::SeqCst), values)
}

#[test]
fn sixteen_threads_missing_at_once_compute_once() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    // Without coalescing, the threads stand for processes: only the cache
    // lock keeps them from computing at once.
    let options = Options::new()
        .coalesce(false)
        .lock(LockOptions::new().retry(Duration::from_millis(5)));
    let (computed, values) = stampede(16, options, Duration::from_millis(200));
    assert_eq!(computed, 1);
    assert!(values.iter().all(|&v| v == 42));
    let stats = stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 15);
    assert!(stats.lock_waits >= 1);
}

#[test]
fn without_a_lock_a_stampede_computes_many_times() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new().coalesce(false);
    let (computed, values) = stampede(8, options, Duration::from_millis(100));
    assert!(computed > 1, "the lock is what prevents the stampede");
    assert!(values.iter().all(|&v| v == 42));
}

#[test]
fn a_waiter_that_times_out_computes_anyway() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let holder = CacheLock::new("slow")
        .acquire_guard()
        .expect("the lock is free");
    let start = Instant::now();
    let value: u32 = cache_memoize(
        "slow",
        || 5,
        &Options::new().lock(
            LockOptions::new()
                .timeout(Duration::from_millis(150))
                .retry(Duration::from_millis(10)),
        ),
    );
    assert_eq!(value, 5);
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(stats().lock_timeouts, 1);
    drop(holder);
}

#[test]
fn a_panicking_compute_releases_the_lock() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new().lock(LockOptions::new());
    let result = std::panic::catch_unwind(|| {
        cache_memoize::<_, u32, _>("panics", || panic!("compute failed"), &options)
    });
    assert!(result.is_err());
    let mut lock = CacheLock::new("panics").blocking(false);
    assert!(lock.acquire().unwrap(), "the lock was released on unwind");
}
