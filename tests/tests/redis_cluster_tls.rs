//! memo on a real Redis Cluster over TLS (`rediss+cluster://`, and
//! `rediss://...?cluster=true`): three masters started with
//! `--tls-cluster yes` and a throwaway CA (see `memo_tests::cluster`).
//! Values, a large value spread over the masters, iterators, locks and an
//! 8-thread stampede, blocking and async; the nodes found from the cluster
//! are reached over TLS too; a wrong CA costs callers only the cache.
#![cfg(all(feature = "tls", feature = "redis"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use memo_runtime::{
    AsyncBackend, Backend, Config, MemoryBackend, Options, RedisClusterBackend, TlsConfig,
    cache_memoize, cache_memoize_async, configure, stats,
};
use memo_tests::behaviour::{self, noise};
use memo_tests::cluster::Cluster;
use memo_tests::tls::Pki;
use memo_tests::{runtime, serial};

const MINUTE: Duration = Duration::from_secs(60);

/// Keys stored on each master, over its plaintext port.
fn keys_per_master(cluster: &Cluster) -> Vec<usize> {
    cluster.addresses()[..3]
        .iter()
        .map(|address| {
            let port = cluster.node(address).port();
            cluster.cli(port, &["DBSIZE"]).trim().parse().unwrap_or(0)
        })
        .collect()
}

fn reset() {
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn values_large_values_iterators_and_locks_work_on_a_tls_cluster() {
    let _serial = serial();
    let pki = Pki::new();
    let Some(cluster) = Cluster::try_start_tls(3, 0, &pki) else {
        return;
    };
    let ca = format!("ca={}", pki.ca().display());
    configure(
        Config::from_url(&cluster.tls_url(&ca))
            .expect("a valid URL")
            .namespace("tlscluster")
            .chunk_size(4096),
    );
    let calls = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: String = cache_memoize(
            "small",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                "over tls".to_owned()
            },
            &Options::new(),
        );
        assert_eq!(value, "over tls");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a miss, then a hit");

    // 2 MB over 4 KiB chunks: about 500 chunks, on every master.
    let large = Options::new().large_data(true).compress(false);
    for _ in 0..2 {
        let value: Vec<u8> = cache_memoize(
            "large",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                noise(7, 2_000_000)
            },
            &large,
        );
        assert_eq!(value, noise(7, 2_000_000));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let spread = keys_per_master(&cluster);
    assert!(
        spread.iter().all(|&keys| keys > 50),
        "the chunks are spread over the masters: {spread:?}"
    );

    behaviour::an_iterator_replays("rows", &calls);
    behaviour::a_locked_stampede_computes_once("stampede", Duration::from_millis(200));
    behaviour::a_lock_excludes_a_second_holder("resource");

    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

#[test]
fn nodes_found_from_the_cluster_are_reached_over_tls() {
    let _serial = serial();
    let pki = Pki::new();
    let Some(cluster) = Cluster::try_start_tls(3, 0, &pki) else {
        return;
    };
    // One seed: the other masters come from CLUSTER SLOTS, which names
    // their TLS ports to a TLS client.
    let seed = cluster.tls_addresses()[1].clone();
    let tls = TlsConfig::with_ca_file(pki.ca()).expect("the CA");
    let backend = RedisClusterBackend::new([&seed])
        .expect("a valid seed")
        .tls(tls);
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        Backend::set(&backend, key, &noise(i as u64, 100), MINUTE).expect("stored over TLS");
    }
    let tls_addresses = cluster.tls_addresses();
    let mut reached: Vec<String> = keys
        .iter()
        .map(|key| backend.node_for(key).expect("the map is loaded"))
        .collect();
    reached.sort();
    reached.dedup();
    assert_eq!(reached.len(), 3, "every master: {reached:?}");
    assert!(
        reached.iter().all(|node| tls_addresses.contains(node)),
        "by their TLS ports: {reached:?} vs {tls_addresses:?}"
    );
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let values = Backend::get_many(&backend, &refs).expect("read over TLS");
    for (i, value) in values.into_iter().enumerate() {
        assert_eq!(value, Some(noise(i as u64, 100)));
    }
    // The same through `rediss://...?cluster=true` with one seed.
    let url = format!("rediss://{seed}?cluster=true&ca={}", pki.ca().display());
    configure(Config::from_url(&url).expect("a valid URL"));
    let value: u64 = cache_memoize("via-cluster-true", || 7, &Options::new());
    assert_eq!(value, 7);
    let value: u64 = cache_memoize("via-cluster-true", || 8, &Options::new());
    assert_eq!(value, 7, "a hit");
    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

#[test]
fn async_callers_use_the_tls_cluster() {
    let _serial = serial();
    let pki = Pki::new();
    let Some(cluster) = Cluster::try_start_tls(3, 0, &pki) else {
        return;
    };
    let ca = format!("ca={}", pki.ca().display());
    configure(
        Config::from_url(&cluster.tls_url(&ca))
            .expect("a valid URL")
            .namespace("tlscluster-async")
            .chunk_size(4096),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let large = Options::new().large_data(true).compress(false);
    runtime::run_multi(async {
        for _ in 0..2 {
            let calls = Arc::clone(&calls);
            let value: Vec<u8> = cache_memoize_async(
                "large",
                || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    noise(9, 1_000_000)
                },
                &large,
            )
            .await;
            assert_eq!(value, noise(9, 1_000_000));
        }
        let tasks: Vec<_> = (0..16u64)
            .map(|i| {
                tokio::spawn(async move {
                    cache_memoize_async(
                        &format!("task-{i}"),
                        || async move { i * 3 },
                        &Options::new(),
                    )
                    .await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("no panic"), i as u64 * 3);
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a miss, then a hit");
    let spread = keys_per_master(&cluster);
    assert!(
        spread.iter().all(|&keys| keys > 20),
        "the chunks are spread over the masters: {spread:?}"
    );

    // The backend's own async calls, on one seed.
    let tls = TlsConfig::with_ca_file(pki.ca()).expect("the CA");
    let backend = Arc::new(
        RedisClusterBackend::new([&cluster.tls_addresses()[2]])
            .expect("a valid seed")
            .tls(tls),
    );
    runtime::run_multi(async move {
        let keys: Vec<String> = (0..32).map(|i| format!("async-{i}")).collect();
        for key in &keys {
            AsyncBackend::set(&*backend, key, key.as_bytes(), MINUTE)
                .await
                .expect("stored");
        }
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values = AsyncBackend::get_many(&*backend, &refs)
            .await
            .expect("read");
        for (key, value) in keys.iter().zip(values) {
            assert_eq!(value.as_deref(), Some(key.as_bytes()));
        }
    });
    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

#[test]
fn a_wrong_ca_costs_only_the_cache() {
    let _serial = serial();
    let pki = Pki::new();
    let Some(cluster) = Cluster::try_start_tls(3, 0, &pki) else {
        return;
    };
    let url = cluster.tls_url(&format!(
        "ca={}&backoff_ms=30000&max_backoff_ms=30000",
        pki.other_ca().display()
    ));
    configure(Config::from_url(&url).expect("a valid URL"));
    let errors = stats().errors;
    let computed = AtomicUsize::new(0);
    for _ in 0..5 {
        let value: u64 = cache_memoize(
            "untrusted",
            || {
                computed.fetch_add(1, Ordering::SeqCst);
                5
            },
            &Options::new(),
        );
        assert_eq!(value, 5);
    }
    assert_eq!(computed.load(Ordering::SeqCst), 5, "each call computes");
    assert!(stats().errors > errors, "the failures are counted");
    assert_eq!(keys_per_master(&cluster), [0, 0, 0], "nothing was stored");
    reset();
}
