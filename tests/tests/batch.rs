//! Batches (`cache_memoize_many` and twins): one lookup and one store for
//! the whole batch, the compute function given exactly the keys that
//! missed, entries shared with single calls, and per key everything a
//! single call has: the invalidation barrier, tags, encryption, local
//! copies, chunked values, counts. On the embedded store, memcached,
//! Redis, a Redis cluster, sync and async.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use memo_runtime::__fuzz::redis_round_trips;
use memo_runtime::{
    Backend, BackendError, Config, EncryptionKey, MemoryBackend, Options, cache_memoize,
    cache_memoize_many, cache_memoize_many_async, configure, invalidate, invalidate_tag,
    make_cache_key, stats, try_cache_memoize_many, try_cache_memoize_many_async,
};
use memo_tests::behaviour::noise;
use memo_tests::cluster::Cluster;
use memo_tests::recording::RecordingBackend;
use memo_tests::{runtime, serial, with_each_backend};

/// What a [`Counting`] backend was asked, call by call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Calls {
    get: usize,
    get_many: usize,
    set: usize,
    /// The number of items of each `set_many`, in order.
    set_many: Vec<usize>,
    add: usize,
    other: usize,
}

/// A memory backend that counts its calls (each would be a round trip or
/// a pipelined batch on a server).
#[derive(Clone, Default)]
struct Counting {
    inner: MemoryBackend,
    calls: Arc<Mutex<Calls>>,
}

impl Counting {
    fn take(&self) -> Calls {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn count(&self, what: impl FnOnce(&mut Calls)) {
        what(&mut self.calls.lock().unwrap());
    }
}

impl Backend for Counting {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.count(|c| c.get += 1);
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.count(|c| c.get_many += 1);
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.count(|c| c.set += 1);
        self.inner.set(key, value, ttl)
    }
    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        self.count(|c| c.set_many.push(items.len()));
        self.inner.set_many(items, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.count(|c| c.add += 1);
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.count(|c| c.other += 1);
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.count(|c| c.other += 1);
        self.inner.delete(key)
    }
}

fn counting() -> Counting {
    let backend = Counting::default();
    configure(Config::new(backend.clone()));
    backend
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i}")).collect()
}

/// The value computed for index `i` of a batch, as its compute function
/// makes it.
fn computed(tag: &str, missing: &[usize]) -> Vec<String> {
    missing.iter().map(|i| format!("{tag}-{i}")).collect()
}

#[test]
fn a_hundred_keys_take_one_lookup_and_one_store() {
    let _serial = serial();
    let backend = counting();
    let o = Options::new();
    let all = keys("hundred", 100);

    // 90 of them first, all misses: one lookup, the missing tokens, one
    // store.
    let first: Vec<String> = cache_memoize_many(all[..90].to_vec(), |m| computed("v", m), &o);
    assert_eq!(first.len(), 90);
    let calls = backend.take();
    assert_eq!(calls.get_many, 1, "{calls:?}");
    assert_eq!(calls.set_many, [90, 90], "tokens, then values: {calls:?}");
    assert_eq!((calls.get, calls.set, calls.add, calls.other), (0, 0, 0, 0));

    // The hundred, ten of them new.
    let seen = Mutex::new(Vec::new());
    let values: Vec<String> = cache_memoize_many(
        all.clone(),
        |m| {
            seen.lock().unwrap().extend_from_slice(m);
            computed("v", m)
        },
        &o,
    );
    let calls = backend.take();
    assert_eq!(*seen.lock().unwrap(), (90..100).collect::<Vec<_>>());
    assert_eq!(calls.get_many, 1, "one lookup for 100 keys: {calls:?}");
    assert_eq!(
        calls.set_many,
        [10, 10],
        "one batch of tokens, one of values: {calls:?}"
    );
    assert_eq!((calls.get, calls.set, calls.add, calls.other), (0, 0, 0, 0));
    let expected = computed("v", &(0..100).collect::<Vec<_>>());
    assert_eq!(values, expected);

    // All hit: one lookup, nothing computed, nothing stored.
    let again: Vec<String> = cache_memoize_many(all, |_| panic!("everything was cached"), &o);
    assert_eq!(again, expected);
    let calls = backend.take();
    assert_eq!(
        calls,
        Calls {
            get_many: 1,
            ..Calls::default()
        }
    );
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn an_empty_batch_asks_nothing() {
    let _serial = serial();
    let backend = counting();
    let values: Vec<u8> = cache_memoize_many(
        Vec::<String>::new(),
        |_| panic!("nothing to compute"),
        &Options::new(),
    );
    assert!(values.is_empty());
    let values: Vec<u8> = runtime::run(cache_memoize_many_async(
        Vec::<String>::new(),
        |_| async { panic!("nothing to compute") },
        &Options::new(),
    ));
    assert!(values.is_empty());
    assert_eq!(backend.take(), Calls::default());
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn compute_is_given_exactly_the_keys_that_missed() {
    with_each_backend(|backend| {
        let o = Options::new();
        let all = keys("mixed", 10);
        // The even ones are there already, from single calls.
        for i in (0..10).step_by(2) {
            let _: String = cache_memoize(all[i].as_str(), || format!("single-{i}"), &o);
        }
        let before = stats();
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            all.clone(),
            |m| {
                given = Some(m.to_vec());
                computed("batch", m)
            },
            &o,
        );
        assert_eq!(given.as_deref(), Some(&[1, 3, 5, 7, 9][..]), "{backend}");
        let expected: Vec<String> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    format!("single-{i}")
                } else {
                    format!("batch-{i}")
                }
            })
            .collect();
        assert_eq!(values, expected, "{backend}");
        let after = stats();
        assert_eq!(after.hits - before.hits, 5, "{backend}: hits per key");
        assert_eq!(after.misses - before.misses, 5, "{backend}: misses per key");

        // All hit: no computation.
        let called = AtomicUsize::new(0);
        let again: Vec<String> = cache_memoize_many(
            all,
            |m| {
                called.fetch_add(1, Ordering::SeqCst);
                computed("again", m)
            },
            &o,
        );
        assert_eq!(called.load(Ordering::SeqCst), 0, "{backend}");
        assert_eq!(again, expected, "{backend}");

        // All miss.
        let fresh = keys("fresh", 7);
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            fresh,
            |m| {
                given = Some(m.to_vec());
                computed("f", m)
            },
            &o,
        );
        assert_eq!(given, Some((0..7).collect::<Vec<_>>()), "{backend}");
        assert_eq!(values, computed("f", &(0..7).collect::<Vec<_>>()));
    });
}

#[test]
fn a_batch_and_single_calls_share_entries() {
    with_each_backend(|backend| {
        let o = Options::new().tags(["shared"]);
        let all = keys("share", 4);
        let _: Vec<u32> = cache_memoize_many(
            all.clone(),
            |m| m.iter().map(|&i| i as u32 * 10).collect(),
            &o,
        );
        for (i, key) in all.iter().enumerate() {
            let single: u32 = cache_memoize(key.as_str(), || panic!("{backend}: stored"), &o);
            assert_eq!(single, i as u32 * 10, "{backend}");
        }
        let _: u32 = cache_memoize("share:new", || 99, &o);
        let mut more = all;
        more.push("share:new".into());
        let values: Vec<u32> =
            cache_memoize_many(more, |m| panic!("{backend}: {m:?} were stored"), &o);
        assert_eq!(values, [0, 10, 20, 30, 99], "{backend}");
    });
}

#[test]
fn async_batches_share_entries_with_sync_ones() {
    with_each_backend(|backend| {
        let o = Options::new();
        let all = keys("async", 6);
        let _: Vec<String> = cache_memoize_many(all[..3].to_vec(), |m| computed("sync", m), &o);
        let future = cache_memoize_many_async(
            all.clone(),
            |m| {
                assert_eq!(m, [3, 4, 5], "{backend}");
                let values = computed("async", m);
                async move { values }
            },
            &o,
        );
        let values: Vec<String> = runtime::run_multi(assert_send(future));
        assert_eq!(
            values,
            [
                "sync-0", "sync-1", "sync-2", "async-3", "async-4", "async-5"
            ],
            "{backend}"
        );
        let again: Vec<String> = cache_memoize_many(all, |_| panic!("{backend}: all stored"), &o);
        assert_eq!(again, values, "{backend}");

        // An `Err` stores nothing.
        let failed: Result<Vec<String>, &str> = runtime::run(try_cache_memoize_many_async(
            keys("async-err", 3),
            |_| async { Err("down") },
            &o,
        ));
        assert_eq!(failed, Err("down"));
        let mut given = None;
        let _: Vec<String> = cache_memoize_many(
            keys("async-err", 3),
            |m| {
                given = Some(m.to_vec());
                computed("later", m)
            },
            &o,
        );
        assert_eq!(
            given,
            Some(vec![0, 1, 2]),
            "{backend}: an Err stored something"
        );
    });
}

fn assert_send<F: Send>(future: F) -> F {
    future
}

#[test]
fn an_err_stores_nothing() {
    with_each_backend(|backend| {
        let o = Options::new();
        let all = keys("err", 3);
        let failed: Result<Vec<u8>, String> =
            try_cache_memoize_many(all.clone(), |m| Err(format!("{} failed", m.len())), &o);
        assert_eq!(failed, Err("3 failed".to_owned()));
        let ok: Result<Vec<u8>, String> = try_cache_memoize_many(
            all.clone(),
            |m| Ok(m.iter().map(|&i| i as u8).collect()),
            &o,
        );
        assert_eq!(ok, Ok(vec![0, 1, 2]), "{backend}: computed again");
        let stored: Result<Vec<u8>, String> =
            try_cache_memoize_many(all, |_| Err(format!("{backend}: stored")), &o);
        assert_eq!(stored, Ok(vec![0, 1, 2]));
    });
}

#[test]
#[should_panic(expected = "compute returned 3 values for 4 missing keys")]
fn a_wrong_count_panics_naming_both() {
    let _: Vec<u8> = cache_memoize_many(keys("wrong-count", 4), |_| vec![1, 2, 3], &Options::new());
}

#[test]
fn after_a_wrong_count_single_calls_are_not_held_up() {
    with_each_backend(|backend| {
        let o = Options::new();
        let panicked = std::panic::catch_unwind(|| {
            let _: Vec<u8> = cache_memoize_many(keys("wrong", 2), |_| vec![1, 2, 3], &o);
        });
        let message = panicked.expect_err("a wrong count panics");
        let message = message
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(
            message.contains("compute returned 3 values for 2 missing keys"),
            "{message}"
        );
        // Nothing stored, no flight left behind.
        let started = std::time::Instant::now();
        let single: u8 = cache_memoize("wrong:0", || 7, &o);
        assert_eq!(single, 7, "{backend}");
        assert!(started.elapsed() < Duration::from_secs(5), "{backend}");
    });
}

#[test]
fn a_key_given_twice_is_computed_for_each_position_and_the_last_stored() {
    with_each_backend(|backend| {
        let o = Options::new();
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            vec!["dup:a", "dup:b", "dup:a"],
            |m| {
                given = Some(m.to_vec());
                computed("d", m)
            },
            &o,
        );
        assert_eq!(given, Some(vec![0, 1, 2]), "{backend}");
        assert_eq!(values, ["d-0", "d-1", "d-2"], "{backend}");
        let a: String = cache_memoize("dup:a", || panic!("{backend}: stored"), &o);
        assert_eq!(a, "d-2", "{backend}: the last one is stored");
        let hits: Vec<String> =
            cache_memoize_many(vec!["dup:a", "dup:a"], |_| panic!("stored"), &o);
        assert_eq!(hits, ["d-2", "d-2"], "{backend}");
    });
}

#[test]
fn a_batch_computing_across_an_invalidate_is_not_served_after_it() {
    with_each_backend(|backend| {
        let o = Options::new();
        let started = Arc::new(Barrier::new(2));
        let go = Arc::new(Barrier::new(2));
        let (s, g) = (started.clone(), go.clone());
        let batch = thread::spawn(move || {
            cache_memoize_many::<_, String, _>(
                vec!["race:a", "race:b"],
                |m| {
                    s.wait();
                    g.wait();
                    computed("old", m)
                },
                &Options::new(),
            )
        });
        started.wait();
        invalidate("race:a", &o).unwrap();
        go.wait();
        assert_eq!(batch.join().unwrap(), ["old-0", "old-1"]);
        let a: String = cache_memoize("race:a", || "new".into(), &o);
        assert_eq!(
            a, "new",
            "{backend}: a value computed before invalidate was served after it"
        );
        let b: String = cache_memoize("race:b", || "new".into(), &o);
        assert_eq!(b, "old-1", "{backend}: only race:a was invalidated");
        // And a batch after it, too.
        let again: Vec<String> = cache_memoize_many(
            vec!["race:a", "race:b"],
            |m| panic!("{backend}: {m:?} computed again"),
            &o,
        );
        assert_eq!(again, ["new", "old-1"], "{backend}");
    });
}

#[test]
fn a_batch_after_an_invalidate_is_not_served_an_older_value() {
    with_each_backend(|backend| {
        // With local copies too: those are this process's.
        let o = Options::new().local(Duration::from_secs(60));
        let _: Vec<String> = cache_memoize_many(vec!["inv:a", "inv:b"], |m| computed("old", m), &o);
        invalidate("inv:b", &o).unwrap();
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            vec!["inv:a", "inv:b"],
            |m| {
                given = Some(m.to_vec());
                computed("new", m)
            },
            &o,
        );
        assert_eq!(given, Some(vec![1]), "{backend}");
        assert_eq!(values, ["old-0", "new-1"], "{backend}");
    });
}

#[test]
fn a_single_call_during_a_batch_waits_for_its_value() {
    with_each_backend(|backend| {
        let started = Arc::new(Barrier::new(2));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = started.clone();
        let batch = thread::spawn(move || {
            cache_memoize_many::<_, String, _>(
                vec!["flight:a", "flight:b"],
                |m| {
                    s.wait();
                    go_rx.recv().unwrap();
                    computed("batch", m)
                },
                &Options::new(),
            )
        });
        started.wait();
        let single = thread::spawn(|| {
            cache_memoize::<_, String, _>("flight:b", || "single".into(), &Options::new())
        });
        // Long enough for the single call to join the batch's flight.
        thread::sleep(Duration::from_millis(300));
        go_tx.send(()).unwrap();
        assert_eq!(batch.join().unwrap(), ["batch-0", "batch-1"]);
        assert_eq!(
            single.join().unwrap(),
            "batch-1",
            "{backend}: the single call computed instead of waiting"
        );
    });
}

#[test]
fn a_batch_takes_the_value_a_single_call_is_computing() {
    with_each_backend(|backend| {
        let started = Arc::new(Barrier::new(2));
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let s = started.clone();
        let single = thread::spawn(move || {
            cache_memoize::<_, String, _>(
                "shared:a",
                || {
                    s.wait();
                    go_rx.recv().unwrap();
                    "single".into()
                },
                &Options::new(),
            )
        });
        started.wait();
        let batch = thread::spawn(|| {
            cache_memoize_many::<_, String, _>(
                vec!["shared:a", "shared:b"],
                |missing| {
                    assert_eq!(missing, [1], "the key being computed is not the batch's");
                    computed("batch", missing)
                },
                &Options::new(),
            )
        });
        // Long enough for the batch to wait on the single call's flight.
        thread::sleep(Duration::from_millis(300));
        go_tx.send(()).unwrap();
        assert_eq!(single.join().unwrap(), "single");
        assert_eq!(
            batch.join().unwrap(),
            ["single", "batch-1"],
            "{backend}: the batch computed a key it could wait for"
        );
    });
}

#[test]
fn batches_over_the_same_keys_in_opposite_orders_never_wait_on_each_other() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let started = Arc::new(Barrier::new(2));
    let run = |keys: Vec<&'static str>| {
        let started = Arc::clone(&started);
        thread::spawn(move || {
            started.wait();
            let at = std::time::Instant::now();
            let values = cache_memoize_many::<_, String, _>(
                keys.clone(),
                |missing| {
                    thread::sleep(Duration::from_millis(200));
                    missing.iter().map(|&i| keys[i].to_owned()).collect()
                },
                &Options::new(),
            );
            (values, at.elapsed())
        })
    };
    let one = run(vec!["crossed:a", "crossed:b", "crossed:c"]);
    let two = run(vec!["crossed:c", "crossed:b", "crossed:a"]);
    let (one, took_one) = one.join().unwrap();
    let (two, took_two) = two.join().unwrap();
    assert_eq!(one, ["crossed:a", "crossed:b", "crossed:c"]);
    assert_eq!(two, ["crossed:c", "crossed:b", "crossed:a"]);
    // Waiting on each other, both would sit out the 30 s coalescing
    // deadline.
    assert!(
        took_one.max(took_two) < Duration::from_secs(5),
        "{took_one:?}, {took_two:?}"
    );
}

#[test]
fn tags_invalidate_batch_entries() {
    with_each_backend(|backend| {
        let tagged = Options::new().tags(["team:7"]);
        let all = keys("tagged", 5);
        let _: Vec<String> = cache_memoize_many(all.clone(), |m| computed("old", m), &tagged);
        let cached: Vec<String> =
            cache_memoize_many(all.clone(), |_| panic!("{backend}: cached"), &tagged);
        assert_eq!(cached, computed("old", &[0, 1, 2, 3, 4]));
        invalidate_tag("team:7", &Options::new()).unwrap();
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            all,
            |m| {
                given = Some(m.to_vec());
                computed("new", m)
            },
            &tagged,
        );
        assert_eq!(given, Some(vec![0, 1, 2, 3, 4]), "{backend}");
        assert_eq!(values, computed("new", &[0, 1, 2, 3, 4]));
        let single: String = cache_memoize("tagged:2", || panic!("{backend}: stored"), &tagged);
        assert_eq!(single, "new-2");
    });
}

#[test]
fn force_overwrite_recomputes_and_replaces_every_key() {
    with_each_backend(|backend| {
        let o = Options::new();
        let all = keys("overwrite", 3);
        let _: Vec<String> = cache_memoize_many(all.clone(), |m| computed("old", m), &o);
        let mut given = None;
        let values: Vec<String> = cache_memoize_many(
            all.clone(),
            |m| {
                given = Some(m.to_vec());
                computed("new", m)
            },
            &o.clone().force_overwrite(true),
        );
        assert_eq!(given, Some(vec![0, 1, 2]), "{backend}");
        assert_eq!(values, computed("new", &[0, 1, 2]));
        let read: Vec<String> = cache_memoize_many(all, |_| panic!("{backend}: stored"), &o);
        assert_eq!(read, computed("new", &[0, 1, 2]), "{backend}");
    });
}

#[test]
fn encrypted_batches_send_nothing_readable() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    let key = EncryptionKey::new(b"an AES-256 key of 32 bytes here!").unwrap();
    configure(Config::new(backend.clone()).encryption_key(key));
    let o = Options::new().encrypt(true);
    let secret = "4111-1111-1111-1111";
    let all = vec!["customer-7731:card", "customer-7731:backup"];
    let values: Vec<String> = cache_memoize_many(
        all.clone(),
        |m| m.iter().map(|i| format!("{secret}/{i}")).collect(),
        &o,
    );
    assert_eq!(values[1], format!("{secret}/1"));
    assert!(!backend.entries().is_empty(), "the batch stored its values");
    assert!(!backend.saw(b"customer-7731"), "a key reached the backend");
    assert!(
        !backend.saw(secret.as_bytes()),
        "a value reached the backend"
    );
    let single: String = cache_memoize(all[0], || panic!("stored"), &o);
    assert_eq!(single, format!("{secret}/0"));
    // Read without the key, the encrypted entries are another key's.
    assert_ne!(
        make_cache_key(all[0], &o),
        make_cache_key(all[0], &Options::new().encrypt(false))
    );
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn local_copies_serve_a_batch_without_the_backend() {
    let _serial = serial();
    let backend = counting();
    let o = Options::new().local(Duration::from_secs(60));
    let all = keys("local", 20);
    let _: Vec<u64> =
        cache_memoize_many(all.clone(), |m| m.iter().map(|&i| i as u64).collect(), &o);
    backend.take();
    let before = stats();
    let values: Vec<u64> = cache_memoize_many(all, |_| panic!("kept locally"), &o);
    assert_eq!(values, (0..20).collect::<Vec<u64>>());
    assert_eq!(backend.take(), Calls::default(), "the backend was asked");
    let after = stats();
    assert_eq!(after.local_hits - before.local_hits, 20);
    assert_eq!(after.hits - before.hits, 20);
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn large_values_in_a_batch_are_chunked() {
    let _serial = serial();
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()).chunk_size(4096));
    let o = Options::new().large_data(true);
    let all = keys("large", 3);
    let data: Vec<Vec<u8>> = (0..3).map(|i| noise(i, 20_000)).collect();
    let values: Vec<Vec<u8>> = cache_memoize_many(
        all.clone(),
        |m| m.iter().map(|&i| data[i].clone()).collect(),
        &o,
    );
    assert_eq!(values, data);
    let largest = backend.values().iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        largest <= 4096 + 512,
        "an entry of {largest} bytes: not chunked"
    );
    let single: Vec<u8> = cache_memoize(all[1].as_str(), || panic!("stored"), &o);
    assert_eq!(single, data[1]);
    let again: Vec<Vec<u8>> = cache_memoize_many(all, |_| panic!("stored"), &o);
    assert_eq!(again, data);

    // Without `large_data`, one too large for an entry is computed, not
    // stored, and does not keep the others from being stored.
    let mixed = keys("mixed-size", 2);
    let _: Vec<Vec<u8>> = cache_memoize_many(
        mixed.clone(),
        |m| {
            m.iter()
                .map(|&i| {
                    if i == 0 {
                        vec![1; 10]
                    } else {
                        noise(9, 20_000)
                    }
                })
                .collect()
        },
        &Options::new(),
    );
    let mut given = None;
    let _: Vec<Vec<u8>> = cache_memoize_many(
        mixed,
        |m| {
            given = Some(m.to_vec());
            m.iter().map(|_| Vec::new()).collect()
        },
        &Options::new(),
    );
    assert_eq!(given, Some(vec![1]));
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn a_batch_on_a_redis_cluster() {
    let _serial = serial();
    let Some(cluster) = Cluster::try_start(3, 0) else {
        return;
    };
    configure(Config::from_url(&cluster.url()).expect("a valid URL"));
    let o = Options::new().tags(["cluster-tag"]);
    let all = keys("cluster", 100);
    let first: Vec<String> = cache_memoize_many(all[..90].to_vec(), |m| computed("v", m), &o);
    assert_eq!(first.len(), 90);

    let mut given = None;
    let values: Vec<String> = cache_memoize_many(
        all.clone(),
        |m| {
            given = Some(m.to_vec());
            computed("v", m)
        },
        &o,
    );
    assert_eq!(given, Some((90..100).collect::<Vec<_>>()));
    assert_eq!(values, computed("v", &(0..100).collect::<Vec<_>>()));

    // Every key hits: one pipelined batch per master at most.
    let before = redis_round_trips();
    let again: Vec<String> = cache_memoize_many(all.clone(), |_| panic!("stored"), &o);
    let trips = redis_round_trips() - before;
    assert_eq!(again, values);
    assert!(trips <= 3, "{trips} round trips for 100 hits on 3 masters");

    let async_values: Vec<String> = runtime::run(cache_memoize_many_async(
        all.clone(),
        |_| async { panic!("stored") },
        &o,
    ));
    assert_eq!(async_values, values);

    for (i, key) in all.iter().enumerate().step_by(17) {
        let single: String = cache_memoize(key.as_str(), || panic!("stored"), &o);
        assert_eq!(single, format!("v-{i}"));
    }
    invalidate_tag("cluster-tag", &Options::new()).unwrap();
    let mut given = None;
    let _: Vec<String> = cache_memoize_many(
        all,
        |m| {
            given = Some(m.len());
            computed("w", m)
        },
        &o,
    );
    assert_eq!(given, Some(100), "the tag invalidated every entry");
    configure(Config::new(MemoryBackend::new()));
}
