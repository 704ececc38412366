//! Hot keys: the local copy, refresh-ahead and stale-while-revalidate, sync
//! and async, on the embedded store and on real memcached and Redis servers.
//!
//! Expirations are 1–2 s, so the tests that wait for one take a few seconds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    Backend, CacheLock, Config, Options, cache_memoize, cache_memoize_async, configure, invalidate,
    invalidate_async, stats, try_cache_memoize,
};
use memo_tests::behaviour::timed_together;
use memo_tests::peer::Peer;
use memo_tests::runtime::run_multi;
use memo_tests::serial;
use memo_tests::servers::{Kind, Server, every_backend};
use serde::{Deserialize, Serialize};

const SECOND: Duration = Duration::from_secs(1);

fn use_backend(backend: &Arc<dyn Backend>) {
    configure(Config::with_shared_backend(Arc::clone(backend)));
}

/// A compute function that counts its runs and returns the run's number.
fn counting(runs: &AtomicUsize, took: Duration) -> impl FnOnce() -> usize + '_ {
    move || {
        thread::sleep(took);
        runs.fetch_add(1, Ordering::SeqCst) + 1
    }
}

// ---------------------------------------------------------------------------
// The local copy.

#[test]
fn a_local_copy_answers_without_the_backend() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        let options = Options::new().local(Duration::from_secs(60));
        let first: usize = cache_memoize("local:1", counting(&runs, Duration::ZERO), &options);
        let read = stats().bytes_read;
        for _ in 0..100 {
            let again: usize = cache_memoize("local:1", counting(&runs, Duration::ZERO), &options);
            assert_eq!(again, first, "{name}");
        }
        let after = stats();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}");
        assert_eq!(after.local_hits, 100, "{name}");
        assert_eq!(after.bytes_read, read, "{name}: no backend read");
    }
}

#[test]
fn invalidate_and_overwrite_drop_the_local_copy_at_once() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        let options = Options::new().local(Duration::from_secs(60));
        let _: usize = cache_memoize("local:2", counting(&runs, Duration::ZERO), &options);
        invalidate("local:2", &options).unwrap();
        let second: usize = cache_memoize("local:2", counting(&runs, Duration::ZERO), &options);
        assert_eq!(second, 2, "{name}: recomputed after invalidate");
        let third: usize = cache_memoize(
            "local:2",
            counting(&runs, Duration::ZERO),
            &options.clone().force_overwrite(true),
        );
        assert_eq!(third, 3, "{name}");
        let hit: usize = cache_memoize("local:2", counting(&runs, Duration::ZERO), &options);
        assert_eq!(hit, 3, "{name}: the overwrite's value, not the old copy");
    }
}

#[test]
fn a_local_copy_never_outlives_the_shared_entry() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        let options = Options::new()
            .local(Duration::from_secs(60))
            .expiration(SECOND);
        let _: usize = cache_memoize("local:3", counting(&runs, Duration::ZERO), &options);
        thread::sleep(Duration::from_millis(1_100));
        let again: usize = cache_memoize("local:3", counting(&runs, Duration::ZERO), &options);
        assert_eq!(again, 2, "{name}: the copy expired with the entry");
    }
}

#[test]
fn a_local_copy_of_another_type_is_not_served() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let options = Options::new().local(Duration::from_secs(60));
    let number: u64 = cache_memoize("local:4", || 7, &options);
    let text: String = cache_memoize("local:4", || "seven".to_owned(), &options);
    assert_eq!((number, text.as_str()), (7, "seven"));
}

#[test]
fn the_local_budget_bounds_what_is_kept() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()).local_capacity(16 * 1024));
    let options = Options::new().local(Duration::from_secs(60));
    for i in 0..2_000u32 {
        let _: Vec<u8> = cache_memoize(format!("local:budget:{i}"), || vec![0; 64], &options);
    }
    let before = stats().local_hits;
    for i in 0..2_000u32 {
        let _: Vec<u8> = cache_memoize(format!("local:budget:{i}"), || vec![0; 64], &options);
    }
    let kept = stats().local_hits - before;
    assert!(kept < 200, "{kept} copies of ~200 bytes in a 16 KiB budget");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
}

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[memo_runtime::cache_memoize(key = "profile:{id}", local = 60)]
fn profile(id: u64) -> Profile {
    PROFILE_RUNS.fetch_add(1, Ordering::SeqCst);
    Profile {
        id,
        name: "Ada".into(),
        tags: vec!["admin".into()],
    }
}

#[memo_runtime::cache_memoize(key = "async-profile:{id}", local = 60)]
async fn async_profile(id: u64) -> Profile {
    PROFILE_RUNS.fetch_add(1, Ordering::SeqCst);
    Profile {
        id,
        name: "Grace".into(),
        tags: Vec::new(),
    }
}

#[test]
fn the_attribute_keeps_decoded_values_and_its_helpers_drop_them() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    PROFILE_RUNS.store(0, Ordering::SeqCst);
    let first = profile(1);
    assert_eq!(profile(1), first);
    assert_eq!(stats().local_hits, 1);
    assert_eq!(profile_refresh(1), first);
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 2);
    profile_invalidate(1).unwrap();
    assert_eq!(profile(1), first);
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(profile(1), first);
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 3);
    run_multi(async {
        let first = async_profile(2).await;
        assert_eq!(async_profile(2).await, first);
        async_profile_invalidate(2).await.unwrap();
        assert_eq!(async_profile(2).await, first);
    });
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 5);
    assert_eq!(stats().local_hits, 3);
}

#[test]
fn async_calls_keep_and_drop_local_copies() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let options = Options::new().local(Duration::from_secs(60));
        run_multi(async {
            let first: u32 = cache_memoize_async("local:async", || async { 1 }, &options).await;
            let hit: u32 = cache_memoize_async("local:async", || async { 2 }, &options).await;
            assert_eq!((first, hit), (1, 1), "{name}");
            invalidate_async("local:async", &options).await.unwrap();
            let again: u32 = cache_memoize_async("local:async", || async { 3 }, &options).await;
            assert_eq!(again, 3, "{name}");
        });
        assert_eq!(stats().local_hits, 1, "{name}");
    }
}

/// Another process with a local copy, driven line by line.
fn peer(url: &str) -> Peer {
    Peer::start(env!("CARGO_BIN_EXE_hot_key_peer"), url)
}

/// What the peer's call for `key` returns.
fn get(peer: &mut Peer, key: &str) -> String {
    peer.ask(&format!("get {key}"))
}

/// Asks until the peer answers `expected`; how long that took.
fn wait_for(peer: &mut Peer, key: &str, expected: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if get(peer, key) == expected {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn with_redis_an_invalidation_reaches_another_process_s_local_copy() {
    let _serial = serial();
    let Some(server) = Server::try_start(Kind::Redis) else {
        return;
    };
    let _peer = an_invalidation_reaches_a_peer(&server.url());
}

/// Through Sentinel, each process subscribes on the master the sentinels
/// name, where the other publishes.
#[test]
fn through_sentinel_an_invalidation_reaches_another_process_s_local_copy() {
    let _serial = serial();
    let Some(set) = memo_tests::sentinel::Sentinels::try_start() else {
        return;
    };
    let _peer = an_invalidation_reaches_a_peer(&set.url());
}

/// Over TLS, the subscriber speaks TLS with the backend's CA.
#[cfg(feature = "tls")]
#[test]
fn over_tls_an_invalidation_reaches_another_process_s_local_copy() {
    use memo_tests::tls::{Pki, TlsServer};
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(Kind::Redis, &pki, pki.server(), false);
    let _peer = an_invalidation_reaches_a_peer(&server.url(&format!("ca={}", pki.ca().display())));
}

/// On a Redis Cluster over TLS, the subscriber speaks TLS to its node.
#[cfg(feature = "tls")]
#[test]
fn on_a_tls_cluster_an_invalidation_reaches_another_process_s_local_copy() {
    let _serial = serial();
    let pki = memo_tests::tls::Pki::new();
    let Some(cluster) = memo_tests::cluster::Cluster::try_start_tls(3, 0, &pki) else {
        return;
    };
    let _peer =
        an_invalidation_reaches_a_peer(&cluster.tls_url(&format!("ca={}", pki.ca().display())));
}

/// On a Redis Cluster, one subscription on any node hears every
/// invalidation (pub/sub is cluster-wide), and when that node dies the
/// subscriber moves on to another.
#[test]
fn on_a_redis_cluster_an_invalidation_reaches_another_process_after_its_node_dies() {
    let _serial = serial();
    let Some(cluster) = memo_tests::cluster::Cluster::try_start(3, 1) else {
        return;
    };
    let mut peer = an_invalidation_reaches_a_peer(&cluster.url());
    // The peer subscribed on its first seed, a master: kill it, and wait
    // for its replica to take over.
    let seeds = cluster.addresses();
    cluster.kill(&seeds[0]);
    let survivor = cluster.node(&seeds[1]).port();
    thread::sleep(Duration::from_millis(1500));
    cluster.wait_until("the cluster recovers", || {
        cluster
            .cli(survivor, &["CLUSTER", "INFO"])
            .contains("cluster_state:ok")
    });
    let options = Options::new().local(Duration::from_secs(60));
    assert_eq!(get(&mut peer, "shared"), "parent-2", "its local copy");
    let started = Instant::now();
    while invalidate("shared", &options).is_err() {
        assert!(started.elapsed() < 10 * SECOND, "the cluster answers again");
        thread::sleep(Duration::from_millis(100));
    }
    let mine: String = cache_memoize("shared", || "parent-3".to_owned(), &options);
    assert_eq!(mine, "parent-3");
    // The peer's own client may still be finding the new master, and
    // compute its own value: either way its copy of `parent-2` is gone.
    let started = Instant::now();
    while get(&mut peer, "shared") == "parent-2" {
        assert!(
            started.elapsed() < 3 * SECOND,
            "the peer's new subscription heard the invalidation"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Configures this process and a peer with `url` and checks that an
/// invalidation and a refresh here drop the peer's local copy within a
/// fraction of a second; the peer, holding `parent-2`.
fn an_invalidation_reaches_a_peer(url: &str) -> Peer {
    configure(Config::from_url(url).unwrap());
    let options = Options::new().local(Duration::from_secs(60));
    let mut peer = peer(url);
    assert_eq!(get(&mut peer, "shared"), "peer-1");
    // The peer's subscriber connects in the background.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(get(&mut peer, "shared"), "peer-1", "its local copy");
    invalidate("shared", &options).unwrap();
    let mine: String = cache_memoize("shared", || "parent-1".to_owned(), &options);
    assert_eq!(mine, "parent-1");
    let took = wait_for(&mut peer, "shared", "parent-1", Duration::from_secs(2));
    assert!(
        took.is_some_and(|took| took < Duration::from_millis(500)),
        "the peer dropped its copy within a fraction of a second: {took:?}"
    );
    // A refresh (`force_overwrite`) reaches it as well.
    let refreshed: String = cache_memoize(
        "shared",
        || "parent-2".to_owned(),
        &options.force_overwrite(true),
    );
    assert_eq!(refreshed, "parent-2");
    let took = wait_for(&mut peer, "shared", "parent-2", Duration::from_secs(2));
    assert!(
        took.is_some_and(|took| took < Duration::from_millis(500)),
        "{took:?}"
    );
    peer
}

#[test]
fn with_memcached_the_local_duration_bounds_another_process_s_staleness() {
    let _serial = serial();
    let Some(server) = Server::try_start(Kind::Memcached) else {
        return;
    };
    configure(Config::from_url(&server.url()).unwrap());
    let mut peer = peer(&server.url());
    assert_eq!(get(&mut peer, "shared"), "peer-1");
    let options = Options::new().local(Duration::from_secs(60));
    invalidate("shared", &options).unwrap();
    let _: String = cache_memoize("shared", || "parent-1".to_owned(), &options);
    thread::sleep(Duration::from_millis(300));
    // No invalidation channel: the peer keeps its copy.
    assert_eq!(get(&mut peer, "shared"), "peer-1");
}

// ---------------------------------------------------------------------------
// Stale while revalidate.

fn stale_options() -> Options {
    Options::new()
        .expiration(SECOND)
        .stale_while_revalidate(Duration::from_secs(3))
}

#[test]
fn a_stale_value_is_served_at_once_while_one_caller_refreshes() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        let options = stale_options();
        let first: usize = cache_memoize("stale:1", counting(&runs, Duration::ZERO), &options);
        thread::sleep(Duration::from_millis(1_200));
        let served = timed_together(8, |_| -> usize {
            cache_memoize(
                "stale:1",
                counting(&runs, Duration::from_millis(400)),
                &options,
            )
        });
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "{name}: exactly one refresh"
        );
        let stale: Vec<_> = served.iter().filter(|(value, _)| *value == first).collect();
        assert_eq!(stale.len(), 7, "{name}: {served:?}");
        assert!(
            stale
                .iter()
                .all(|(_, took)| *took < Duration::from_millis(300)),
            "{name}: stale values are served at once: {served:?}"
        );
        let fresh: usize = cache_memoize("stale:1", counting(&runs, Duration::ZERO), &options);
        assert_eq!(fresh, 2, "{name}: the refreshed value");
    }
}

#[test]
fn a_stale_value_held_by_another_process_s_lock_is_served_not_recomputed() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        let options = stale_options();
        let _: usize = cache_memoize("stale:2", counting(&runs, Duration::ZERO), &options);
        thread::sleep(Duration::from_millis(1_200));
        // Another process refreshing holds the entry's lock.
        let mut elsewhere = CacheLock::new("stale:2");
        assert!(elsewhere.acquire().unwrap(), "{name}");
        let served: usize = cache_memoize("stale:2", counting(&runs, Duration::ZERO), &options);
        assert_eq!((served, runs.load(Ordering::SeqCst)), (1, 1), "{name}");
        assert_eq!(stats().stale_serves, 1, "{name}");
        elsewhere.release().unwrap();
        let refreshed: usize = cache_memoize("stale:2", counting(&runs, Duration::ZERO), &options);
        assert_eq!(refreshed, 2, "{name}");
    }
}

#[test]
fn a_failed_or_panicking_refresh_keeps_the_stale_value_until_the_window_ends() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let options = Options::new()
            .expiration(SECOND)
            .stale_while_revalidate(Duration::from_secs(2));
        let _: Result<u32, String> = try_cache_memoize("stale:3", || Ok(1), &options);
        thread::sleep(Duration::from_millis(1_200));
        let failed: Result<u32, String> =
            try_cache_memoize("stale:3", || Err("down".to_owned()), &options);
        assert_eq!(failed, Err("down".to_owned()), "{name}");
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let _: u32 = cache_memoize("stale:3", || panic!("refresh panics"), &options);
        }));
        assert!(panicked.is_err(), "{name}");
        assert_eq!(stats().refresh_failures, 2, "{name}");
        // Still in the window: a caller while another refreshes gets the
        // stale value.
        let mut elsewhere = CacheLock::new("stale:3");
        assert!(elsewhere.acquire().unwrap(), "{name}");
        let stale: Result<u32, String> = try_cache_memoize("stale:3", || Ok(9), &options);
        assert_eq!(stale, Ok(1), "{name}");
        elsewhere.release().unwrap();
        // Past the window the entry is gone: computed in the foreground.
        thread::sleep(Duration::from_millis(2_200));
        let computed: Result<u32, String> = try_cache_memoize("stale:3", || Ok(2), &options);
        assert_eq!(computed, Ok(2), "{name}");
    }
}

#[test]
fn an_expired_value_is_a_miss_for_a_call_without_a_stale_window() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let _: u32 = cache_memoize("stale:4", || 1, &stale_options());
    thread::sleep(Duration::from_millis(1_100));
    let plain: u32 = cache_memoize("stale:4", || 2, &Options::new().expiration(SECOND));
    assert_eq!(plain, 2);
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);
/// The async twin's own count: `report`'s `refresh_ahead` may start one
/// more refresh in the background at any time.
static ASYNC_REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[memo_runtime::cache_memoize(key = "report:{id}", expiration = 1, stale = 3, refresh_ahead = 2.0)]
fn report(id: u64) -> usize {
    thread::sleep(Duration::from_millis(300));
    REPORT_RUNS.fetch_add(1, Ordering::SeqCst) + id as usize
}

#[memo_runtime::cache_memoize(key = "async-report:{id}", expiration = 1, stale = 3)]
async fn async_report(id: u64) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    ASYNC_REPORT_RUNS.fetch_add(1, Ordering::SeqCst) + id as usize
}

#[test]
fn the_attribute_s_stale_window_serves_while_one_caller_refreshes() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    REPORT_RUNS.store(0, Ordering::SeqCst);
    ASYNC_REPORT_RUNS.store(0, Ordering::SeqCst);
    assert_eq!(report(0), 0);
    thread::sleep(Duration::from_millis(1_200));
    // An owned signature: the caller that wins the refresh is served the
    // stale value too, and the refresh runs in the background.
    let started = Instant::now();
    assert_eq!(report(0), 0);
    assert!(started.elapsed() < Duration::from_millis(200));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(report(0), 0, "stale, while the refresh runs");
    thread::sleep(Duration::from_millis(600));
    assert_eq!(report(0), 1, "the background refresh's value");
    run_multi(async {
        assert_eq!(async_report(10).await, 10);
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let started = Instant::now();
        assert_eq!(async_report(10).await, 10, "stale, at once, to the winner");
        assert_eq!(async_report(10).await, 10, "stale, at once");
        assert!(started.elapsed() < Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(async_report(10).await, 11);
    });
    assert!(stats().stale_serves >= 4);
}

#[test]
fn async_callers_are_served_stale_values_while_one_refreshes() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = Arc::new(AtomicUsize::new(0));
        let options = stale_options();
        run_multi(async {
            let _: usize = cache_memoize_async("stale:async", || async { 1 }, &options).await;
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let tasks: Vec<_> = (0..6)
                .map(|_| {
                    let (runs, options) = (Arc::clone(&runs), options.clone());
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let value: usize = cache_memoize_async(
                            "stale:async",
                            || async move {
                                tokio::time::sleep(Duration::from_millis(400)).await;
                                runs.fetch_add(1, Ordering::SeqCst) + 2
                            },
                            &options,
                        )
                        .await;
                        (value, started.elapsed())
                    })
                })
                .collect();
            let mut served = Vec::new();
            for task in tasks {
                served.push(task.await.unwrap());
            }
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}: one refresh");
            let stale = served.iter().filter(|(value, _)| *value == 1).count();
            assert_eq!(stale, 5, "{name}: {served:?}");
            assert!(
                served
                    .iter()
                    .filter(|(value, _)| *value == 1)
                    .all(|(_, took)| *took < Duration::from_millis(300)),
                "{name}: {served:?}"
            );
        });
    }
}

// ---------------------------------------------------------------------------
// Refresh ahead.

#[test]
fn refresh_ahead_recomputes_before_the_expiry_while_others_keep_hitting() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let runs = AtomicUsize::new(0);
        // β at its maximum and a 20 ms computation: a refresh is all but
        // certain within the first few hits of a 2 s entry.
        let options = Options::new().expiration(2 * SECOND).refresh_ahead(1_000.0);
        let stored_at = Instant::now();
        let _: usize = cache_memoize(
            "ahead:1",
            counting(&runs, Duration::from_millis(20)),
            &options,
        );
        let mut refreshed_at = None;
        while stored_at.elapsed() < Duration::from_millis(1_500) {
            let value: usize = cache_memoize(
                "ahead:1",
                counting(&runs, Duration::from_millis(20)),
                &options,
            );
            if value == 2 {
                refreshed_at = Some(stored_at.elapsed());
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        assert!(refreshed_at.is_some(), "{name}: refreshed before expiry");
        assert!(stats().early_refreshes >= 1, "{name}");
    }
}

#[test]
fn refresh_ahead_never_triggers_far_from_the_expiry_with_the_default_beta() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let runs = AtomicUsize::new(0);
    let options = Options::new()
        .expiration(Duration::from_secs(3600))
        .refresh_ahead(1.0);
    for _ in 0..1_000 {
        let _: usize = cache_memoize(
            "ahead:2",
            counting(&runs, Duration::from_millis(1)),
            &options,
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(stats().early_refreshes, 0);
}

#[test]
fn during_an_early_refresh_other_callers_hit_at_once_and_a_failure_keeps_the_value() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        let options = Options::new().expiration(2 * SECOND).refresh_ahead(1_000.0);
        let _: Result<u32, String> = try_cache_memoize(
            "ahead:3",
            || {
                thread::sleep(Duration::from_millis(50));
                Ok(1)
            },
            &options,
        );
        let failures = thread::scope(|scope| {
            let refresher = scope.spawn(|| {
                // Keeps calling until it wins a refresh, which fails slowly.
                let mut failures = 0;
                for _ in 0..50 {
                    let got: Result<u32, String> = try_cache_memoize(
                        "ahead:3",
                        || {
                            thread::sleep(Duration::from_millis(300));
                            Err("down".to_owned())
                        },
                        &options,
                    );
                    if got.is_err() {
                        failures += 1;
                        break;
                    }
                }
                failures
            });
            thread::sleep(Duration::from_millis(100));
            for _ in 0..5 {
                let started = Instant::now();
                let got: Result<u32, String> =
                    try_cache_memoize("ahead:3", || Err("not me".to_owned()), &options);
                // A hit, or (if it won) a failure of its own: never a wait.
                assert!(started.elapsed() < Duration::from_millis(200), "{name}");
                assert!(matches!(got, Ok(1) | Err(_)), "{name}: {got:?}");
            }
            refresher.join().unwrap()
        });
        assert_eq!(failures, 1, "{name}: the refresh failed once");
        assert!(stats().refresh_failures >= 1, "{name}");
        // The failed refresh left the value in place.
        let kept: Result<u32, String> =
            try_cache_memoize("ahead:3", || Ok(9), &Options::new().expiration(2 * SECOND));
        assert_eq!(kept, Ok(1), "{name}");
    }
}

#[test]
fn async_refresh_ahead_recomputes_before_the_expiry() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let options = Options::new().expiration(2 * SECOND).refresh_ahead(1_000.0);
    let runs = Arc::new(AtomicUsize::new(0));
    run_multi(async {
        let stored_at = Instant::now();
        let mut latest = 0;
        while stored_at.elapsed() < Duration::from_millis(1_500) && latest < 2 {
            let runs = Arc::clone(&runs);
            latest = cache_memoize_async(
                "ahead:async",
                || async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                },
                &options,
            )
            .await;
        }
        assert_eq!(latest, 2);
    });
    assert_eq!(stats().early_refreshes, 1);
}

#[test]
fn a_chunked_entry_is_not_kept_locally() {
    let _serial = serial();
    configure(Config::new(memo_runtime::MemoryBackend::new()));
    let large = Options::new().large_data(true).expiration(SECOND);
    let _: Vec<u8> = cache_memoize("local:chunked", || vec![1; 10], &large);
    // A call without `large_data` reads the chunked entry: no expiry to
    // bound a copy by, so none is kept, and the entry's expiry holds.
    let local = Options::new().local(Duration::from_secs(60));
    let read: Vec<u8> = cache_memoize("local:chunked", || vec![2; 10], &local);
    assert_eq!(read, vec![1; 10]);
    thread::sleep(Duration::from_millis(1_100));
    let again: Vec<u8> = cache_memoize("local:chunked", || vec![3; 10], &local);
    assert_eq!(again, vec![3; 10]);
}

#[test]
fn an_entry_of_the_previous_format_is_a_miss_on_every_backend() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        use_backend(&backend);
        // A version 2 envelope (no expiry, no computation time) as the
        // previous release stored it: header, one-byte body, checksum.
        let mut old = b"MEMO\x02\x01\x00\x00".to_vec();
        old.extend_from_slice(&[0x11; 8]);
        old.extend_from_slice(&1u32.to_le_bytes());
        old.push(42);
        old.extend_from_slice(&[0; 16]);
        let stored = memo_runtime::make_cache_key("old-format", &Options::new());
        backend.set(&stored, &old, Duration::from_secs(60)).unwrap();
        let before = stats().invalid;
        let value: u8 = cache_memoize("old-format", || 7, &stale_options());
        assert_eq!(value, 7, "{name}");
        assert_eq!(stats().invalid, before + 1, "{name}");
    }
}
