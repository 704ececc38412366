//! Detached calls (`cache_memoize_detached` and friends, and the attribute on an
//! owned signature): a refresh won with `stale_while_revalidate` or
//! `refresh_ahead` runs in the background while the caller is served the
//! value it found; sync and async, on the embedded store and on real
//! memcached and Redis servers.
//!
//! Expirations are 1 s and refreshes take 300–600 ms, so a caller served
//! in the foreground is told apart from one served at once by a wide
//! margin: [`AT_ONCE`] is well below any refresh. The extremes of every
//! hot-key setting (zero, `Duration::MAX`, a NaN or infinite β) are taken
//! without a panic or a wrong value. Every async call keeps the passes over
//! a large value off the executor.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    Backend, Config, Options, cache_memoize_detached, cache_memoize_detached_async, configure,
    stats, try_cache_memoize_detached, try_cache_memoize_detached_async,
};
use memo_tests::behaviour::{eventually, timed_together};
use memo_tests::peer::Peer;
use memo_tests::runtime::{run, run_multi};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server, every_backend};

const SECOND: Duration = Duration::from_secs(1);

/// A compute that takes this long runs in the foreground for sure.
const REFRESH: Duration = Duration::from_millis(400);

/// What a caller served at once may take, generously for a loaded CI
/// machine, and still well below [`REFRESH`].
const AT_ONCE: Duration = Duration::from_millis(200);

fn use_backend(backend: &Arc<dyn Backend>) {
    configure(Config::with_shared_backend(Arc::clone(backend)));
}

fn stale_options() -> Options {
    Options::new()
        .expiration(SECOND)
        .stale_while_revalidate(Duration::from_secs(4))
}

/// An owned compute function that takes `took`, counts its runs in `runs`
/// and returns the run's number.
fn counting(runs: &Arc<AtomicUsize>, took: Duration) -> impl FnOnce() -> usize + Send + 'static {
    let runs = Arc::clone(runs);
    move || {
        thread::sleep(took);
        runs.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[test]
fn stale_callers_are_served_at_once_while_one_refresh_runs_in_the_background() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = Arc::new(AtomicUsize::new(0));
        let options = stale_options();
        let first: usize =
            cache_memoize_detached("owned:stale", counting(&runs, Duration::ZERO), &options);
        thread::sleep(Duration::from_millis(1_200));
        let served = timed_together(8, |_| -> usize {
            cache_memoize_detached("owned:stale", counting(&runs, REFRESH), &options)
        });
        assert!(
            served
                .iter()
                .all(|(value, took)| *value == first && *took < AT_ONCE),
            "{name}: every caller, the winner too, gets the stale value at once: {served:?}"
        );
        // Callers that coalesced on the winner count as plain hits.
        assert!(stats().stale_serves >= 1, "{name}");
        assert!(
            eventually(3 * SECOND, || {
                cache_memoize_detached("owned:stale", counting(&runs, REFRESH), &options) == 2
            }),
            "{name}: the refreshed value appears"
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "{name}: exactly one refresh"
        );
        assert_eq!(stats().refresh_failures, 0, "{name}");
    }
}

#[test]
fn async_stale_callers_are_served_at_once_on_a_current_thread_runtime() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = Arc::new(AtomicUsize::new(0));
        let options = stale_options();
        run(async {
            let compute = |runs: &Arc<AtomicUsize>| {
                let runs = Arc::clone(runs);
                || async move {
                    tokio::time::sleep(REFRESH).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                }
            };
            let first: usize =
                cache_memoize_detached_async("owned:async", || async { 0 }, &options).await;
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let (compute, options) = (compute(&runs), options.clone());
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let value: usize =
                            cache_memoize_detached_async("owned:async", compute, &options).await;
                        (value, started.elapsed())
                    })
                })
                .collect();
            let mut served = Vec::new();
            for task in tasks {
                served.push(task.await.unwrap());
            }
            assert!(
                served
                    .iter()
                    .all(|(value, took)| *value == first && *took < AT_ONCE),
                "{name}: {served:?}"
            );
            // The refresh runs as a task on this runtime, while it runs.
            let started = Instant::now();
            loop {
                let value: usize =
                    cache_memoize_detached_async("owned:async", compute(&runs), &options).await;
                if value == 1 {
                    break;
                }
                assert!(started.elapsed() < 3 * SECOND, "{name}: no refresh");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "{name}: exactly one refresh"
        );
        assert!(stats().stale_serves >= 1, "{name}");
    }
}

#[test]
fn an_early_refresh_runs_in_the_background_and_its_value_appears() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = Arc::new(AtomicUsize::new(0));
        // β at its maximum and a 300 ms computation: every call within
        // the last seconds of the expiry draws a refresh.
        let options = Options::new().expiration(4 * SECOND).refresh_ahead(1_000.0);
        let slow = Duration::from_millis(300);
        let first: usize = cache_memoize_detached("owned:early", counting(&runs, slow), &options);
        assert_eq!(first, 1, "{name}");
        let started = Instant::now();
        let served: Vec<usize> = (0..5)
            .map(|_| cache_memoize_detached("owned:early", counting(&runs, slow), &options))
            .collect();
        assert!(
            started.elapsed() < AT_ONCE,
            "{name}: callers return at once: {:?}",
            started.elapsed()
        );
        assert_eq!(served, [1; 5], "{name}: the still-fresh value");
        assert!(
            eventually(3 * SECOND, || runs.load(Ordering::SeqCst) >= 2),
            "{name}: a background refresh ran"
        );
        assert!(stats().early_refreshes >= 1, "{name}");
        assert!(
            eventually(3 * SECOND, || {
                cache_memoize_detached("owned:early", counting(&runs, slow), &options) >= 2
            }),
            "{name}: its value appears"
        );
    }
}

#[test]
fn a_refresh_that_panics_or_fails_keeps_the_stale_value_then_the_foreground_computes() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let options = Options::new()
            .expiration(SECOND)
            .stale_while_revalidate(Duration::from_secs(2));
        let key = "owned:failing";
        let _: Result<u32, String> = try_cache_memoize_detached(key, || Ok(1), &options);
        thread::sleep(Duration::from_millis(1_100));
        let started = Instant::now();
        let failed: Result<u32, String> =
            try_cache_memoize_detached(key, || Err("down".to_owned()), &options);
        assert_eq!(failed, Ok(1), "{name}: stale, while the refresh fails");
        assert!(
            eventually(SECOND, || stats().refresh_failures == 1),
            "{name}: the failure is counted"
        );
        let panicked: Result<u32, String> =
            try_cache_memoize_detached(key, || panic!("refresh panics"), &options);
        assert_eq!(panicked, Ok(1), "{name}: stale, while the refresh panics");
        assert!(
            eventually(SECOND, || stats().refresh_failures == 2),
            "{name}: the panic is counted"
        );
        assert!(started.elapsed() < SECOND, "{name}: no hang");
        // Neither left the refresh flight or the lock behind: the next
        // caller wins the refresh, and it succeeds.
        let stale: Result<u32, String> = try_cache_memoize_detached(key, || Ok(2), &options);
        assert_eq!(stale, Ok(1), "{name}");
        assert!(
            eventually(SECOND, || {
                try_cache_memoize_detached::<_, u32, String, _>(key, || Ok(3), &options) == Ok(2)
            }),
            "{name}: the third refresh's value"
        );
        // Past the stale window the entry is gone: the foreground computes.
        thread::sleep(Duration::from_millis(3_100));
        let started = Instant::now();
        let computed: Result<u32, String> = try_cache_memoize_detached(
            key,
            || {
                thread::sleep(REFRESH);
                Ok(4)
            },
            &options,
        );
        assert_eq!(computed, Ok(4), "{name}");
        assert!(started.elapsed() >= REFRESH, "{name}: in the foreground");
    }
}

#[test]
fn async_refresh_failures_are_counted_and_the_stale_value_stays() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let options = stale_options();
        run_multi(async {
            let key = "owned:async-failing";
            let _: Result<u32, String> =
                try_cache_memoize_detached_async(key, || async { Ok(1) }, &options).await;
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let failed: Result<u32, String> = try_cache_memoize_detached_async(
                key,
                || async { Err("down".to_owned()) },
                &options,
            )
            .await;
            assert_eq!(failed, Ok(1), "{name}");
            let started = Instant::now();
            while stats().refresh_failures < 1 {
                assert!(started.elapsed() < SECOND, "{name}: {:?}", stats());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let panicked: Result<u32, String> = try_cache_memoize_detached_async(
                key,
                || async { panic!("refresh panics") },
                &options,
            )
            .await;
            assert_eq!(panicked, Ok(1), "{name}");
            let started = Instant::now();
            while stats().refresh_failures < 2 {
                assert!(started.elapsed() < SECOND, "{name}: {:?}", stats());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Neither left the refresh flight or the lock behind.
            let refreshed = loop {
                let value: Result<u32, String> =
                    try_cache_memoize_detached_async(key, || async { Ok(2) }, &options).await;
                if value == Ok(2) || started.elapsed() > 2 * SECOND {
                    break value;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(refreshed, Ok(2), "{name}");
        });
    }
}

#[test]
fn a_runtime_dropped_mid_refresh_leaves_nothing_stuck_for_the_next_runtime() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = Arc::new(AtomicUsize::new(0));
        let options = stale_options();
        let key = "owned:dropped-runtime";
        run(async {
            let _: usize = cache_memoize_detached_async(key, || async { 0 }, &options).await;
        });
        thread::sleep(Duration::from_millis(1_100));
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let counted = Arc::clone(&runs);
        let stale: usize = runtime.block_on(cache_memoize_detached_async(
            key,
            move || async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                counted.fetch_add(1, Ordering::SeqCst) + 100
            },
            &options,
        ));
        assert_eq!(stale, 0, "{name}");
        // The refresh is under way on the runtime, holding the lock.
        thread::sleep(Duration::from_millis(100));
        drop(runtime);
        assert!(
            started.elapsed() < SECOND,
            "{name}: the shutdown did not wait"
        );
        let counted = Arc::clone(&runs);
        let refreshed = run(async {
            let started = Instant::now();
            loop {
                let counted = Arc::clone(&counted);
                let value: usize = cache_memoize_detached_async(
                    key,
                    move || async move { counted.fetch_add(1, Ordering::SeqCst) + 1 },
                    &options,
                )
                .await;
                if value != 0 || started.elapsed() > 3 * SECOND {
                    break value;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        assert_eq!(refreshed, 1, "{name}: refreshed on the new runtime");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}");
    }
}

#[test]
fn beyond_the_pool_s_capacity_callers_refresh_in_the_foreground() {
    let _serial = serial();
    let store = memo_runtime::MemoryBackend::new();
    configure(Config::new(store.clone()));
    // A window long enough for every queued refresh to run, however late
    // the pool (shared with the other tests of this process) gets to it.
    let options = Options::new()
        .expiration(SECOND)
        .stale_while_revalidate(Duration::from_secs(60));
    const KEYS: usize = 40;
    for key in 0..KEYS {
        let _: String =
            cache_memoize_detached(format!("owned:pool:{key}"), || "old".to_owned(), &options);
    }
    thread::sleep(Duration::from_millis(1_100));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let served = timed_together(KEYS, |key| -> String {
        let refreshes = Arc::clone(&refreshes);
        cache_memoize_detached(
            format!("owned:pool:{key}"),
            move || {
                thread::sleep(Duration::from_millis(600));
                refreshes.fetch_add(1, Ordering::SeqCst);
                "new".to_owned()
            },
            &options,
        )
    });
    // Each caller got a right value: stale at once, or its own refresh.
    let at_once = served
        .iter()
        .filter(|(value, took)| value == "old" && *took < AT_ONCE);
    let foreground = served
        .iter()
        .filter(|(value, took)| value == "new" && *took >= Duration::from_millis(600));
    let (at_once, foreground) = (at_once.count(), foreground.count());
    assert_eq!(at_once + foreground, KEYS, "{served:?}");
    // The pool takes 16 jobs (4 running, 12 queued): the rest of the 40
    // callers, arriving within the first refresh, run theirs themselves.
    assert!(at_once >= 4, "{served:?}");
    assert!(foreground >= KEYS - 20, "{served:?}");
    // Every key is refreshed once and stored: in the foreground, or by
    // the pool once it gets to the job. (Asking for the values instead
    // would start refreshes of its own once the new values go stale.)
    assert!(
        eventually(20 * SECOND, || refreshes.load(Ordering::SeqCst) == KEYS
            && stats().stores >= 2 * KEYS as u64),
        "{} refreshes, {:?}",
        refreshes.load(Ordering::SeqCst),
        stats()
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(refreshes.load(Ordering::SeqCst), KEYS, "one refresh a key");
    // What each key holds now, read past memo so that nothing refreshes.
    for key in 0..KEYS {
        let stored = memo_runtime::make_cache_key(format!("owned:pool:{key}"), &options);
        let bytes = store.get(&stored).unwrap().expect("still stored");
        let holds = |text: &[u8]| bytes.windows(text.len()).any(|window| window == text);
        assert!(holds(b"new") && !holds(b"old"), "key {key}");
    }
}

/// Another process, driven line by line (see `src/bin/hot_key_peer.rs`).
fn peer(url: &str) -> Peer {
    Peer::start(env!("CARGO_BIN_EXE_hot_key_peer"), url)
}

#[test]
fn across_two_processes_exactly_one_background_refresh_runs() {
    let _serial = serial();
    for kind in [Kind::Memcached, Kind::Redis] {
        let Some(server) = Server::try_start(kind) else {
            continue;
        };
        configure(Config::from_url(&server.url()).unwrap());
        // The peer's stale window and expiry.
        let options = Options::new()
            .expiration(SECOND)
            .stale_while_revalidate(Duration::from_secs(10));
        let mut peer = peer(&server.url());
        let key = "owned:peers";
        let _: String = cache_memoize_detached(key, || "first".to_owned(), &options);
        thread::sleep(Duration::from_millis(1_100));
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let started = Instant::now();
        let here: String = cache_memoize_detached(
            key,
            move || {
                thread::sleep(Duration::from_millis(600));
                counted.fetch_add(1, Ordering::SeqCst);
                "here".to_owned()
            },
            &options,
        );
        // The peer finds the value stale while this process refreshes it
        // under the entry's lock: it serves it and does not refresh.
        let there = peer.ask(&format!("stale {key}"));
        assert_eq!(
            (here.as_str(), there.as_str()),
            ("first", "first"),
            "{kind:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500), "{kind:?}");
        assert!(
            eventually(3 * SECOND, || peer.ask(&format!("stale {key}")) == "here"),
            "{kind:?}: the peer reads the refreshed value"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{kind:?}");
        assert_eq!(peer.ask("count"), "0", "{kind:?}: the peer never refreshed");
    }
}

// ---------------------------------------------------------------------------
// The attribute.

static ATTR_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Owned, with a local copy kept decoded: the owned call with `Decoded`.
#[memo_runtime::cache_memoize(key = "owned-attr:{id}", expiration = 1, stale = 4, local = 60)]
fn owned_report(id: u64) -> Vec<usize> {
    thread::sleep(REFRESH);
    vec![id as usize, ATTR_RUNS.fetch_add(1, Ordering::SeqCst) + 1]
}

/// Borrows its argument: refreshed in the foreground, as before.
#[memo_runtime::cache_memoize(key = "borrowed-attr:{name}", expiration = 1, stale = 4)]
fn borrowed_report(name: &str) -> String {
    thread::sleep(REFRESH);
    format!("{name}-{}", ATTR_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Async and owned, fallible.
#[memo_runtime::cache_memoize(key = "owned-attr-async:{id}", expiration = 1, stale = 4)]
async fn owned_async_report(id: u64) -> Result<usize, String> {
    tokio::time::sleep(REFRESH).await;
    Ok(id as usize + ATTR_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

#[test]
fn the_attribute_refreshes_owned_signatures_in_the_background_and_borrowed_ones_in_front() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    ATTR_RUNS.store(0, Ordering::SeqCst);
    assert_eq!(owned_report(7), [7, 1]);
    assert_eq!(borrowed_report("b"), "b-2");
    thread::sleep(Duration::from_millis(1_200));

    let started = Instant::now();
    assert_eq!(owned_report(7), [7, 1], "stale, to the winner too");
    assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
    assert!(
        eventually(3 * SECOND, || owned_report(7) == [7, 3]),
        "the background refresh's value, through the local copy"
    );

    let started = Instant::now();
    assert_eq!(borrowed_report("b"), "b-4", "computed by the winner");
    assert!(started.elapsed() >= REFRESH, "in the foreground");

    run(async {
        assert_eq!(owned_async_report(10).await, Ok(15));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let started = Instant::now();
        assert_eq!(owned_async_report(10).await, Ok(15), "stale, at once");
        assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
        let started = Instant::now();
        loop {
            if owned_async_report(10).await == Ok(16) {
                break;
            }
            assert!(started.elapsed() < 3 * SECOND, "no background refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(stats().local_hits >= 1);
}

// ---------------------------------------------------------------------------
// Large values off the executor.

/// The largest gap a task ticking every millisecond sees on a
/// current-thread runtime while `work` runs there.
async fn largest_gap<F: std::future::Future>(work: F) -> (F::Output, Duration) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeat = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut largest = Duration::ZERO;
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
                largest = largest.max(last.elapsed());
                last = Instant::now();
            }
            largest
        }
    });
    // Let the heartbeat start ticking.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let output = work.await;
    stop.store(true, Ordering::SeqCst);
    (output, heartbeat.await.unwrap())
}

fn large_value() -> Vec<u64> {
    (0..1_000_000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

/// Every async call moves the passes over a large value to tokio's blocking
/// pool: a 64 MiB value stored and read back through the general
/// `cache_memoize_async` never stalls a current-thread runtime for 30 ms.
/// Inline, its postcard pass alone takes hundreds of milliseconds in a
/// debug build. The value is built before the heartbeat starts and moved
/// into the compute function, so the gaps measured are memo's own.
#[test]
fn a_64_mib_value_never_stalls_a_current_thread_runtime() {
    const BOUND: Duration = Duration::from_millis(30);
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let options = Options::new().large_data(true);
    let len = (64 << 20) / std::mem::size_of::<u64>();
    let expected: Vec<u64> = (0..len as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    // A stall of memo's recurs on every attempt; a gap from the operating
    // system's scheduling on a loaded machine does not.
    let mut smallest = (Duration::MAX, Duration::MAX);
    for attempt in 0..3 {
        let key = format!("large:64mib:{attempt}");
        let value = expected.clone();
        let (stored, store_gap, loaded, load_gap) = run(async {
            let (stored, store_gap) = largest_gap(memo_runtime::cache_memoize_async(
                key.as_str(),
                move || async move { value },
                &options,
            ))
            .await;
            let (loaded, load_gap) = largest_gap(memo_runtime::cache_memoize_async(
                key.as_str(),
                || async { Vec::<u64>::new() },
                &options,
            ))
            .await;
            (stored, store_gap, loaded, load_gap)
        });
        assert!(
            stored == expected && loaded == expected,
            "attempt {attempt}"
        );
        smallest = (smallest.0.min(store_gap), smallest.1.min(load_gap));
        if smallest.0 < BOUND && smallest.1 < BOUND {
            break;
        }
    }
    eprintln!(
        "largest heartbeat gap, 64 MiB: store {:?}, load {:?}",
        smallest.0, smallest.1
    );
    assert!(
        smallest.0 < BOUND && smallest.1 < BOUND,
        "the heartbeat stalled: store {:?}, load {:?}",
        smallest.0,
        smallest.1
    );
}

#[test]
fn entries_written_by_owned_calls_read_back_everywhere_and_waiters_share_large_values() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        // Above the inline budget (64 KiB), below a chunk: sealed from the
        // bytes serialized once, and decoded off the executor.
        let mid: Vec<u64> = (0..40_000u64).map(|i| i << 40).collect();
        let large = large_value();
        let runs = Arc::new(AtomicUsize::new(0));
        let whole = Options::new();
        let chunked = Options::new().large_data(true).compress(true);
        run(async {
            let value = mid.clone();
            let stored: Vec<u64> = cache_memoize_detached_async(
                "owned-format:mid",
                move || async move { value },
                &whole,
            )
            .await;
            assert_eq!(stored, mid, "{name}");
            let read: Vec<u64> =
                cache_memoize_detached_async("owned-format:mid", || async { Vec::new() }, &whole)
                    .await;
            assert_eq!(read, mid, "{name}");
            // Eight tasks miss a large value at once: one computes, the
            // others get the bytes it shares.
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (runs, chunked) = (Arc::clone(&runs), chunked.clone());
                    tokio::spawn(async move {
                        let value: Vec<u64> = cache_memoize_detached_async(
                            "owned-format:large",
                            move || async move {
                                runs.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                large_value()
                            },
                            &chunked,
                        )
                        .await;
                        value
                    })
                })
                .collect();
            for task in tasks {
                assert!(task.await.unwrap() == large, "{name}");
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}: one computation");
        // What the owned calls stored, the borrowed ones read, and back.
        let read: Vec<u64> = memo_runtime::cache_memoize("owned-format:mid", Vec::new, &whole);
        assert_eq!(read, mid, "{name}");
        let read: Vec<u64> = memo_runtime::cache_memoize("owned-format:large", Vec::new, &chunked);
        assert!(read == large, "{name}");
        let _: Vec<u64> =
            memo_runtime::cache_memoize("owned-format:borrowed", large_value, &chunked);
        let read: Vec<u64> = run(cache_memoize_detached_async(
            "owned-format:borrowed",
            || async { Vec::new() },
            &chunked,
        ));
        assert!(read == large, "{name}");
    }
}

#[test]
fn an_encrypted_value_serialized_up_front_reads_back() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let key = memo_runtime::EncryptionKey::new(b"0123456789abcdef").unwrap();
    let mid: Vec<u64> = (0..40_000u64).map(|i| i << 40).collect();
    for options in [
        Options::new().encrypt(true).encryption_key(key.clone()),
        Options::new()
            .large_data(true)
            .encrypt(true)
            .encryption_key(key),
    ] {
        let value = mid.clone();
        let stored: Vec<u64> = run(cache_memoize_detached_async(
            "owned-encrypted",
            move || async move { value },
            &options,
        ));
        let read: Vec<u64> = memo_runtime::cache_memoize("owned-encrypted", Vec::new, &options);
        let read_async: Vec<u64> = run(cache_memoize_detached_async(
            "owned-encrypted",
            || async { Vec::new() },
            &options,
        ));
        assert_eq!(
            (stored == mid, read == mid, read_async == mid),
            (true, true, true)
        );
        memo_runtime::invalidate("owned-encrypted", &options).unwrap();
    }
}

/// Every extreme of the hot-key settings a caller controls: windows and
/// local durations of zero and `Duration::MAX`, a β that is zero,
/// negative, NaN, infinite or tiny, with expirations from zero to
/// `Duration::MAX`. Each call returns its own value, never panics, and a
/// second call is a hit wherever anything is stored (an expiration of zero
/// stores nothing).
#[test]
fn extreme_hot_key_settings_are_taken_without_a_panic_or_a_wrong_value() {
    let _serial = serial();
    let durations = [
        Duration::ZERO,
        SECOND,
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ];
    let betas = [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::MIN_POSITIVE,
        f64::MAX,
        1.0,
    ];
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let mut case = 0;
        for expiration in [Duration::ZERO, SECOND, Duration::MAX] {
            for (index, &window) in durations.iter().enumerate() {
                let beta = betas[index % betas.len()];
                let local = durations[(index + 1) % durations.len()];
                for options in [
                    Options::new()
                        .expiration(expiration)
                        .stale_while_revalidate(window),
                    Options::new().expiration(expiration).refresh_ahead(beta),
                    Options::new().expiration(expiration).local(local),
                    Options::new()
                        .expiration(expiration)
                        .stale_while_revalidate(window)
                        .refresh_ahead(beta)
                        .local(local),
                ] {
                    case += 1;
                    let key = format!("owned:extreme:{case}");
                    let stored = !expiration.is_zero();
                    let runs = Arc::new(AtomicUsize::new(0));
                    for round in 0..2 {
                        let value: String =
                            cache_memoize_detached(key.clone(), value_of(&runs, &key), &options);
                        assert_eq!(value, key, "{name} {options:?}");
                        let expected = if stored { 1 } else { round + 1 };
                        assert_eq!(runs.load(Ordering::SeqCst), expected, "{name} {options:?}");
                    }
                    let async_key = format!("{key}:async");
                    let async_runs = Arc::new(AtomicUsize::new(0));
                    run(async {
                        for round in 0..2 {
                            let compute = value_of(&async_runs, &async_key);
                            let value: String = cache_memoize_detached_async(
                                async_key.clone(),
                                || async move { compute() },
                                &options,
                            )
                            .await;
                            assert_eq!(value, async_key, "{name} {options:?}");
                            let expected = if stored { 1 } else { round + 1 };
                            assert_eq!(
                                async_runs.load(Ordering::SeqCst),
                                expected,
                                "{name} {options:?}"
                            );
                        }
                    });
                }
            }
        }
    }
}

/// An owned compute function returning `key`, counting its runs.
fn value_of(runs: &Arc<AtomicUsize>, key: &str) -> impl FnOnce() -> String + Send + 'static {
    let (runs, key) = (Arc::clone(runs), key.to_owned());
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        key
    }
}

/// Owned async calls encode a value inline until its postcard bytes pass
/// 64 KiB, and decode a found entry inline until its stored bytes do:
/// every size from well below to just above both boundaries round-trips,
/// stored and hit, plain, encrypted and kept as a local copy, and
/// coalesced waiters of a value on the boundary get the leader's value.
#[test]
fn owned_async_values_round_trip_across_the_inline_budget() {
    let _serial = serial();
    // A `Vec<u8>` of n bytes is n + 3 postcard bytes here (a three-byte
    // length); the stored entry adds its header.
    const BUDGET: usize = 64 * 1024;
    let sizes: Vec<usize> = (BUDGET - 160..=BUDGET + 4).collect();
    let key = memo_runtime::EncryptionKey::new(b"0123456789abcdef").unwrap();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        for (label, options) in [
            ("plain", Options::new()),
            (
                "encrypted",
                Options::new().encrypt(true).encryption_key(key.clone()),
            ),
            ("local", Options::new().local(Duration::from_secs(60))),
        ] {
            run(async {
                for &size in &sizes {
                    let key = format!("owned:budget:{label}:{size}");
                    let value = memo_tests::behaviour::noise(size as u64, size);
                    for round in 0..2 {
                        let expected = value.clone();
                        let got: Vec<u8> = cache_memoize_detached_async(
                            key.clone(),
                            move || async move {
                                assert_eq!(round, 0, "computed once");
                                expected
                            },
                            &options,
                        )
                        .await;
                        assert!(got == value, "{name} {label} {size} round {round}");
                    }
                }
            });
        }
        // Sixteen tasks on one cold key of each boundary size: one computes,
        // the others are handed its bytes.
        run_multi(async {
            for size in [BUDGET - 3, BUDGET - 2, BUDGET + 1] {
                let runs = Arc::new(AtomicUsize::new(0));
                let key = format!("owned:budget:coalesced:{size}");
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let (runs, key) = (Arc::clone(&runs), key.clone());
                        tokio::spawn(async move {
                            cache_memoize_detached_async(
                                key,
                                move || async move {
                                    runs.fetch_add(1, Ordering::SeqCst);
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    memo_tests::behaviour::noise(size as u64, size)
                                },
                                &Options::new(),
                            )
                            .await
                        })
                    })
                    .collect();
                for task in tasks {
                    let got: Vec<u8> = task.await.unwrap();
                    assert!(
                        got == memo_tests::behaviour::noise(size as u64, size),
                        "{name} {size}"
                    );
                }
                assert_eq!(runs.load(Ordering::SeqCst), 1, "{name} {size}");
            }
        });
    }
}
