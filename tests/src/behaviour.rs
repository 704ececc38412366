//! Pieces of the behaviour suite that every deployment runs (a plain
//! server, TLS, a cluster, a cluster over TLS), through the configuration
//! in force: pseudo-random payloads, an iterator that replays, a locked
//! stampede, a lock that excludes a second holder, and waiting for what
//! happens in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use memo_runtime::{CacheLock, LockOptions, Options, cache_memoize, cache_memoize_iter};

/// Runs `call(i)` for each `i` in `0..threads`, each on a thread of its
/// own, all released at once; what each returned, with how long it took,
/// in the order of `i`.
pub fn timed_together<T: Send>(
    threads: usize,
    call: impl Fn(usize) -> T + Sync,
) -> Vec<(T, Duration)> {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let callers: Vec<_> = (0..threads)
            .map(|i| {
                let (barrier, call) = (&barrier, &call);
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let value = call(i);
                    (value, started.elapsed())
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|caller| caller.join().expect("a caller panicked"))
            .collect()
    })
}

/// `len` pseudo-random bytes from `seed` (xorshift): incompressible, so
/// compressed payloads are as large as they claim.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
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

/// An iterator of 300 items memoized under `key` computes once (counted
/// in `calls`) and replays whole.
pub fn an_iterator_replays(key: &str, calls: &AtomicUsize) {
    let before = calls.load(Ordering::SeqCst);
    let items = || (0..300u64).map(|i| (i, noise(i, 200)));
    for _ in 0..2 {
        let collected: Vec<(u64, Vec<u8>)> = cache_memoize_iter(
            key,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                items()
            },
            &Options::new(),
        )
        .collect();
        assert_eq!(collected, items().collect::<Vec<_>>());
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "the iterator replays"
    );
}

/// Eight threads on one cold `key` with a lock, the computation taking
/// `compute`: one computation, and every thread gets its value.
pub fn a_locked_stampede_computes_once(key: &'static str, compute: Duration) {
    let locked = Options::new().lock(LockOptions::new());
    let computed = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let computed = Arc::clone(&computed);
            let locked = locked.clone();
            std::thread::spawn(move || {
                cache_memoize(
                    key,
                    || {
                        computed.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(compute);
                        42u64
                    },
                    &locked,
                )
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("no panic"), 42);
    }
    assert_eq!(computed.load(Ordering::SeqCst), 1, "computed exactly once");
}

/// A `CacheLock` on `name` excludes a second holder until released.
pub fn a_lock_excludes_a_second_holder(name: &str) {
    let mut first = CacheLock::new(name).blocking(false);
    assert!(first.acquire().expect("the cache answers"));
    let mut second = CacheLock::new(name).blocking(false);
    assert!(!second.acquire().expect("the cache answers"), "held");
    first.release().expect("the holder releases");
    assert!(second.acquire().expect("the cache answers"), "free again");
    second.release().expect("the holder releases");
}

/// Eight tasks on one cold `key` with a lock, the computation (counted in
/// `calls`) taking `compute`: every task gets its value. The caller checks
/// `calls`, which may count other computations too.
pub async fn a_locked_task_stampede(
    key: &'static str,
    compute: Duration,
    calls: &Arc<AtomicUsize>,
) {
    let locked = Options::new().lock(LockOptions::new());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let calls = Arc::clone(calls);
            let locked = locked.clone();
            tokio::spawn(async move {
                memo_runtime::cache_memoize_async(
                    key,
                    || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(compute).await;
                        7u32
                    },
                    &locked,
                )
                .await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic"), 7);
    }
}

/// Whether `done` turns true within `within`, asked every 20 ms: for what
/// happens in the background (a refresh, a flight ending).
pub fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}
