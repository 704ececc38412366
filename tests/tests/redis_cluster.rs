//! memo on a real Redis Cluster (started by each test, see
//! `memo_tests::cluster`): the behaviour suite on three masters, sync and
//! async; redirections while a slot migrates; a master killed mid-run;
//! and a failover that caching survives without reconfiguring.
//!
//! Every test holds [`serial`]: most configure memo globally, and the
//! others count the process's Redis round trips.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::__fuzz::redis_round_trips;
use memo_runtime::backend::redis::cluster::key_slot;
use memo_runtime::{
    Backend, CacheLock, Config, MemoryBackend, Options, RedisClusterBackend, cache_memoize,
    cache_memoize_async, cache_memoize_iter, configure, invalidate, invalidate_async,
    make_cache_key, stats,
};
use memo_tests::behaviour::{self, noise};
use memo_tests::cluster::Cluster;
use memo_tests::{runtime, serial};

const MINUTE: Duration = Duration::from_secs(60);
const CHUNK: usize = 4096;

/// Sizes around the chunk boundaries: empty, one chunk, just over, many.
fn sizes() -> Vec<usize> {
    let mut sizes = vec![0, 1, 100_000, 300_001];
    for chunks in [1, 2, 7] {
        sizes.extend([chunks * CHUNK - 1, chunks * CHUNK, chunks * CHUNK + 1]);
    }
    sizes
}

/// A client of the cluster whose map is loaded, for routing questions.
fn loaded_client(cluster: &Cluster) -> RedisClusterBackend {
    let client = RedisClusterBackend::new(cluster.addresses()).expect("valid addresses");
    client.get("load-the-map").expect("the cluster answers");
    client
}

/// The masters' ports, from `CLUSTER NODES` of the first node.
fn masters(cluster: &Cluster, first: u16) -> Vec<u16> {
    let mut ports: Vec<u16> = (0..16384u16)
        .step_by(512)
        .filter_map(|slot| cluster.master_of_slot(first, slot))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("host:port")
}

#[test]
fn the_backend_contract_holds_across_slots_and_masters() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    let backend = RedisClusterBackend::new([&cluster.addresses()[1]]).expect("one seed");
    assert_eq!(backend.get("absent").unwrap(), None);
    backend.set("k", b"one", MINUTE).unwrap();
    assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"one"[..]));

    // Hundreds of keys over every slot range, hash-tagged ones sharing a
    // slot (one MGET), misses and repeats in place.
    let mut keys: Vec<String> = (0..600).map(|i| format!("many:{i}")).collect();
    keys.extend((0..20).map(|i| format!("{{tagged}}:{i}")));
    let values: Vec<Vec<u8>> = (0..keys.len())
        .map(|i| noise(i as u64, 1 + i % 700))
        .collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| (key.as_str(), value.as_slice()))
        .collect();
    let before = redis_round_trips();
    backend.set_many(&items, MINUTE).unwrap();
    assert_eq!(redis_round_trips() - before, 3, "one write per master");
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.extend(["absent", keys[7].as_str(), "k"]);
    let before = redis_round_trips();
    let found = backend.get_many(&wanted).unwrap();
    assert_eq!(
        redis_round_trips() - before,
        3,
        "one pipelined round trip per master"
    );
    assert_eq!(found.len(), wanted.len());
    for (i, value) in values.iter().enumerate() {
        assert_eq!(found[i].as_ref(), Some(value), "key {}", keys[i]);
    }
    assert_eq!(found[keys.len()], None);
    assert_eq!(found[keys.len() + 1].as_ref(), Some(&values[7]));
    assert_eq!(found[keys.len() + 2].as_deref(), Some(&b"one"[..]));

    // The keys really are spread: every master holds some.
    let holders: std::collections::BTreeSet<String> = keys
        .iter()
        .map(|key| backend.node_for(key).expect("the map is loaded"))
        .collect();
    assert_eq!(holders.len(), 3, "{holders:?}");
    for address in &holders {
        let size: u64 = cluster
            .cli(port_of(address), &["DBSIZE"])
            .trim()
            .parse()
            .expect("DBSIZE answers a number");
        assert!(size > 0, "{address} holds nothing");
    }

    // Locks: atomic on the key's master.
    assert!(backend.add("lock", b"mine", MINUTE).unwrap());
    assert!(!backend.add("lock", b"theirs", MINUTE).unwrap());
    assert!(!backend.delete_if_value("lock", b"theirs").unwrap());
    assert!(backend.touch_if_value("lock", b"mine", MINUTE).unwrap());
    assert!(!backend.touch_if_value("lock", b"theirs", MINUTE).unwrap());
    assert!(backend.delete_if_value("lock", b"mine").unwrap());
    assert!(!backend.delete_if_value("lock", b"mine").unwrap());
    assert!(backend.touch("k", MINUTE).unwrap());
    assert!(!backend.touch("absent", MINUTE).unwrap());
    assert!(backend.delete("k").unwrap());
    assert!(!backend.delete("k").unwrap());

    // Eight threads at once, each seeing its own writes.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let backend = &backend;
            scope.spawn(move || {
                for i in 0..100u64 {
                    let key = format!("thread:{t}:{i}");
                    let value = noise(t * 1000 + i, 64);
                    backend.set(&key, &value, MINUTE).unwrap();
                    assert_eq!(backend.get(&key).unwrap(), Some(value));
                }
            });
        }
    });
}

#[test]
fn the_behaviour_suite_passes_on_three_masters() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    configure(
        Config::from_url(&cluster.url())
            .expect("a valid cluster URL")
            .namespace("suite")
            .chunk_size(CHUNK),
    );
    let calls = AtomicUsize::new(0);

    // Small values: computed once, then hits.
    for id in 0..30u64 {
        for _ in 0..3 {
            let value: String = cache_memoize(
                ["profile", &id.to_string()],
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    format!("user {id}")
                },
                &Options::new(),
            );
            assert_eq!(value, format!("user {id}"));
        }
    }
    assert_eq!(calls.swap(0, Ordering::SeqCst), 30);
    let after_small = stats();
    assert_eq!((after_small.misses, after_small.hits), (30, 60));

    // Large values across chunk boundaries: chunks spread over the slots
    // of every master, read back whole.
    let large = Options::new().large_data(true).compress(false);
    for size in sizes() {
        for _ in 0..2 {
            let value: Vec<u8> = cache_memoize(
                ["blob", &size.to_string()],
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    noise(size as u64, size)
                },
                &large,
            );
            assert!(value == noise(size as u64, size), "size {size}");
        }
    }
    assert_eq!(calls.swap(0, Ordering::SeqCst), sizes().len());
    for address in cluster.addresses() {
        let keys: u64 = cluster
            .cli(port_of(&address), &["DBSIZE"])
            .trim()
            .parse()
            .expect("DBSIZE answers a number");
        assert!(
            keys > 20,
            "{address} holds {keys} keys: chunks spread over every master"
        );
    }

    // Iterators: streamed once, replayed from the cache.
    let items = || (0..400u64).map(|i| (i, noise(i, 300)));
    for _ in 0..3 {
        let collected: Vec<(u64, Vec<u8>)> = cache_memoize_iter(
            "rows",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                items()
            },
            &Options::new(),
        )
        .collect();
        assert_eq!(collected, items().collect::<Vec<_>>());
    }
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    // Invalidate drops small and large entries.
    let compute = || calls.fetch_add(1, Ordering::SeqCst) as u64;
    assert_eq!(cache_memoize("counter", compute, &Options::new()), 0);
    assert_eq!(cache_memoize("counter", compute, &Options::new()), 0);
    invalidate("counter", &Options::new()).expect("the cluster answers");
    assert_eq!(cache_memoize("counter", compute, &Options::new()), 1);
    let blob = || noise(calls.fetch_add(1, Ordering::SeqCst) as u64, 50_000);
    let before: Vec<u8> = cache_memoize("big", blob, &large);
    invalidate("big", &large).expect("the cluster answers");
    let after: Vec<u8> = cache_memoize("big", blob, &large);
    assert_ne!(before, after, "recomputed after invalidation");

    // A cache lock excludes a second holder.
    let mut first = CacheLock::new("resource").blocking(false);
    assert!(first.acquire().expect("the cluster answers"));
    let mut second = CacheLock::new("resource").blocking(false);
    assert!(!second.acquire().expect("the cluster answers"));
    first.release().expect("the holder releases");
    assert!(second.acquire().expect("the cluster answers"));
    second.release().expect("the holder releases");

    behaviour::a_locked_stampede_computes_once("expensive", Duration::from_millis(300));
    assert_eq!(stats().errors, 0, "{:?}", stats());
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn async_callers_share_the_cluster_with_blocking_ones() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    // `redis://` with `cluster=true`, one seed: the rest is discovered.
    let url = format!(
        "redis://{}?cluster=true&namespace=async",
        cluster.addresses()[2]
    );
    configure(
        Config::from_url(&url)
            .expect("a valid URL")
            .chunk_size(CHUNK),
    );
    let large = Options::new().large_data(true).compress(false);
    let calls = Arc::new(AtomicUsize::new(0));
    // Stored by blocking callers, read by async ones, and the other way.
    for size in sizes() {
        let value: Vec<u8> = cache_memoize(["sync", &size.to_string()], || noise(1, size), &large);
        assert!(value == noise(1, size));
    }
    runtime::run_multi(async {
        for size in sizes() {
            let read: Vec<u8> = cache_memoize_async(
                ["sync", &size.to_string()],
                || async { unreachable!("stored by a blocking caller") },
                &large,
            )
            .await;
            assert!(read == noise(1, size), "size {size}");
            let stored: Vec<u8> = cache_memoize_async(
                ["async", &size.to_string()],
                || async move { noise(2, size) },
                &large,
            )
            .await;
            assert!(stored == noise(2, size));
        }
        invalidate_async(["async", "1"], &large)
            .await
            .expect("the cluster answers");

        behaviour::a_locked_task_stampede("async-expensive", Duration::from_millis(300), &calls)
            .await;
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "computed exactly once");
    for size in sizes() {
        let value: Vec<u8> = cache_memoize(["async", &size.to_string()], || noise(3, size), &large);
        let expected = if size == 1 {
            noise(3, 1)
        } else {
            noise(2, size)
        };
        assert!(value == expected, "size {size}");
    }
    assert_eq!(stats().errors, 0, "{:?}", stats());

    // The async face of the client, method by method.
    let backend = Arc::new(RedisClusterBackend::new(cluster.addresses()).unwrap());
    let aio: Arc<dyn memo_runtime::AsyncBackend> =
        Backend::__async(Arc::clone(&backend)).expect("the cluster client serves async callers");
    runtime::run(async {
        let keys: Vec<String> = (0..100).map(|i| format!("a:{i}")).collect();
        let items: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), k.as_bytes())).collect();
        aio.set_many(&items, MINUTE).await.unwrap();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let before = redis_round_trips();
        let found = aio.get_many(&refs).await.unwrap();
        assert_eq!(redis_round_trips() - before, 3, "the masters in parallel");
        assert!(
            found
                .iter()
                .zip(&keys)
                .all(|(v, k)| v.as_deref() == Some(k.as_bytes()))
        );
        assert!(aio.add("a-lock", b"t", MINUTE).await.unwrap());
        assert!(!aio.add("a-lock", b"u", MINUTE).await.unwrap());
        assert!(aio.touch_if_value("a-lock", b"t", MINUTE).await.unwrap());
        assert!(!aio.delete_if_value("a-lock", b"u").await.unwrap());
        assert!(aio.delete_if_value("a-lock", b"t").await.unwrap());
        assert!(aio.touch("a:1", MINUTE).await.unwrap());
        assert!(aio.delete("a:1").await.unwrap());
        assert_eq!(aio.get("a:1").await.unwrap(), None);
    });
    assert_eq!(backend.get("a:2").unwrap().as_deref(), Some(&b"a:2"[..]));
    configure(Config::new(MemoryBackend::new()));
}

/// Moves `slot` from the master at `from` to the one at `to`, in Redis's
/// steps: importing, migrating, the keys moved with `MIGRATE`, then the
/// new owner announced to every master. `between` runs while the slot is
/// half moved.
fn migrate_slot(
    cluster: &Cluster,
    masters: &[u16],
    slot: u16,
    from: u16,
    to: u16,
    between: impl FnOnce(),
) {
    let slot_text = slot.to_string();
    let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
    let ok = |port: u16, args: &[&str]| {
        let reply = cluster.cli(port, args);
        assert!(reply.trim() == "OK", "{args:?} on {port}: {reply}");
    };
    ok(
        to,
        &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
    );
    ok(
        from,
        &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
    );
    between();
    let keys = cluster.cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "1000"]);
    let keys: Vec<&str> = keys.lines().filter(|line| !line.is_empty()).collect();
    if !keys.is_empty() {
        let to_text = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &to_text, "", "0", "5000", "KEYS"];
        args.extend(&keys);
        ok(from, &args);
    }
    for &port in masters {
        ok(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
    }
}

#[test]
fn moved_and_ask_redirections_are_followed() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    let first = port_of(&cluster.addresses()[0]);
    let masters = masters(&cluster, first);
    assert_eq!(masters.len(), 3);
    // Keys of one slot, by hash tag.
    let key = |name: &str| format!("{{moving}}{name}");
    let slot = key_slot(&key("a"));
    let client = loaded_client(&cluster);
    let stale = loaded_client(&cluster);
    let from = port_of(&client.node_for(&key("a")).expect("loaded"));
    let to = *masters
        .iter()
        .find(|&&port| port != from)
        .expect("another master");
    client.set(&key("old"), b"old value", MINUTE).unwrap();

    migrate_slot(&cluster, &masters, slot, from, to, || {
        // Half moved: a new key belongs to the target (ASK), an old one is
        // still read from the source.
        client.set(&key("new"), b"new value", MINUTE).unwrap();
        assert_eq!(
            client.get(&key("new")).unwrap().as_deref(),
            Some(&b"new value"[..])
        );
        assert_eq!(
            client.get(&key("old")).unwrap().as_deref(),
            Some(&b"old value"[..])
        );
        let both = client
            .get_many(&[&key("old"), &key("new"), &key("none")])
            .unwrap_or_default();
        // MGET across a half-moved slot may be refused (TRYAGAIN): an
        // error, never a wrong value.
        if !both.is_empty() {
            assert_eq!(both[0].as_deref(), Some(&b"old value"[..]));
            assert_eq!(both[1].as_deref(), Some(&b"new value"[..]));
            assert_eq!(both[2], None);
        }
        assert_eq!(
            client.node_for(&key("a")),
            Some(format!("127.0.0.1:{from}")),
            "ASK moves nothing"
        );
    });
    assert_eq!(
        cluster.cli(to, &["DBSIZE"]).trim(),
        "2",
        "both keys landed on the new owner"
    );

    // A client with the old map is sent on (MOVED) and learns the move.
    assert_eq!(
        stale.get(&key("old")).unwrap().as_deref(),
        Some(&b"old value"[..])
    );
    assert_eq!(stale.node_for(&key("a")), Some(format!("127.0.0.1:{to}")));
    let found = stale.get_many(&[&key("new"), &key("old")]).unwrap();
    assert_eq!(found[0].as_deref(), Some(&b"new value"[..]));
    stale.set(&key("third"), b"3", MINUTE).unwrap();
    assert_eq!(cluster.cli(to, &["DBSIZE"]).trim(), "3");
}

#[test]
fn a_master_killed_mid_run_costs_no_wrong_value_and_no_panic() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    let timeouts = "connect_timeout_ms=100&timeout_ms=300&backoff_ms=100&max_backoff_ms=300";
    configure(
        Config::from_url(&format!("{}?namespace=kill&{timeouts}", cluster.url()))
            .expect("a valid URL")
            .chunk_size(CHUNK),
    );
    let victim = cluster.addresses()[1].clone();
    let started = Instant::now();
    let slowest = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                scope.spawn(move || {
                    let mut slowest = Duration::ZERO;
                    while started.elapsed() < Duration::from_secs(4) {
                        for id in 0..20u64 {
                            let options = if id % 5 == 0 {
                                Options::new().large_data(true).compress(false)
                            } else {
                                Options::new()
                            };
                            let call = Instant::now();
                            let value: Vec<u8> = cache_memoize(
                                ["value", &id.to_string()],
                                || noise(id, 1000 + id as usize * 1000),
                                &options,
                            );
                            slowest = slowest.max(call.elapsed());
                            assert!(
                                value == noise(id, 1000 + id as usize * 1000),
                                "thread {t} id {id}"
                            );
                        }
                    }
                    slowest
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        cluster.kill(&victim);
        workers
            .into_iter()
            .map(|worker| worker.join().expect("no panic"))
            .max()
            .unwrap_or_default()
    });
    // A memoized call makes a few backend calls (read, store), each within
    // connect_timeout + timeout.
    assert!(slowest < Duration::from_secs(2), "a call took {slowest:?}");
    assert!(stats().errors > 0, "the dead master was noticed");
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn caching_resumes_by_itself_after_a_failover() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 1) else {
        return;
    };
    let timeouts = "connect_timeout_ms=100&timeout_ms=300&backoff_ms=100&max_backoff_ms=300";
    configure(
        Config::from_url(&format!("{}?namespace=failover&{timeouts}", cluster.url()))
            .expect("a valid URL"),
    );
    let client = loaded_client(&cluster);
    let victim = client.node_for("load-the-map").expect("loaded");
    // Memo keys served by the master about to die.
    let doomed: Vec<String> = (0..2000)
        .map(|i| format!("k{i}"))
        .filter(|name| {
            client.node_for(&make_cache_key(name.as_str(), &Options::new())) == Some(victim.clone())
        })
        .take(40)
        .collect();
    assert!(doomed.len() == 40);
    let calls = AtomicUsize::new(0);
    let memo = |name: &str| {
        cache_memoize(
            name,
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                format!("value of {name}")
            },
            &Options::new(),
        )
    };
    assert_eq!(memo(&doomed[0]), format!("value of {}", doomed[0]));
    assert_eq!(memo(&doomed[0]), format!("value of {}", doomed[0]));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "cached before the kill");

    cluster.kill(&victim);
    let killed = Instant::now();
    // Until a replica takes over, calls compute (correctly); then each key
    // is cached again, without any reconfiguring.
    let mut resumed = None;
    for name in doomed.iter().skip(1).cycle().take(2000) {
        let call = Instant::now();
        assert_eq!(memo(name), format!("value of {name}"));
        assert_eq!(memo(name), format!("value of {name}"));
        assert!(
            call.elapsed() < Duration::from_secs(2),
            "{:?}",
            call.elapsed()
        );
        if calls.swap(0, Ordering::SeqCst) < 2 {
            resumed = Some(killed.elapsed());
            break;
        }
        if killed.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let resumed = resumed.expect("caching resumed within 20 s of the kill");
    eprintln!("caching resumed {resumed:?} after the master was killed");
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn a_hung_master_costs_its_callers_at_most_the_deadline() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    let client = RedisClusterBackend::new(cluster.addresses())
        .expect("valid addresses")
        .connect_timeout(Duration::from_millis(100))
        .timeout(Duration::from_millis(300));
    client.get("load-the-map").expect("the cluster answers");
    let hung = client.node_for("load-the-map").expect("loaded");
    let key_on = |wanted: bool| {
        (0..1000)
            .map(|i| format!("key:{i}"))
            .find(|key| (client.node_for(key).as_ref() == Some(&hung)) == wanted)
            .expect("keys on every master")
    };
    let (stuck, free) = (key_on(true), key_on(false));
    client.set(&stuck, b"stuck", MINUTE).unwrap();
    client.set(&free, b"free", MINUTE).unwrap();

    cluster.node(&hung).pause();
    let started = Instant::now();
    assert!(client.get(&stuck).is_err(), "a hung master is an error");
    let first = started.elapsed();
    let started = Instant::now();
    let both = client.get_many(&[&free, &stuck]);
    let batch = started.elapsed();
    let started = Instant::now();
    // The other masters answer at once (before the cluster notices).
    let other = client.get(&free);
    let quick = started.elapsed();
    cluster.node(&hung).resume();

    // connect + I/O deadline, plus scheduling slack.
    let bound = Duration::from_millis(400 + 250);
    assert!(first < bound, "the first call took {first:?}");
    assert!(batch < bound, "a batch with the hung master took {batch:?}");
    assert!(
        both.is_err(),
        "a batch missing a master's share is an error"
    );
    assert_eq!(other.unwrap().as_deref(), Some(&b"free"[..]));
    assert!(quick < Duration::from_millis(200), "took {quick:?}");
    // Back: the values are still there.
    cluster.wait_until("the master answers again", || {
        client.get(&stuck).ok().flatten().as_deref() == Some(&b"stuck"[..])
    });
}
