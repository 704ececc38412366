//! One behavioural suite, run against every backend memo ships: the
//! embedded memory store, one memcached, a pool of two memcached servers,
//! and Redis. Each test starts its own servers on free loopback ports.
//!
//! The suite speaks only the public API, and also reads the backend
//! directly to check that values really landed in the server under the key
//! `make_cache_key` names, not in some fallback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use memo_runtime::{
    Backend, CacheLock, Config, EncryptionKey, LockOptions, MemcachedBackend, MemoryBackend,
    Options, RedisBackend, cache_memoize, cache_memoize_iter, configure, invalidate,
    make_cache_key, stats, try_cache_memoize,
};
use memo_tests::behaviour::noise;
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};
use serde::{Deserialize, Serialize};

/// A configured backend, a second client of the same backend (for the
/// trait's own contract), a direct handle on each of its servers, and the
/// server processes, kept alive for the test.
struct Fixture {
    config: Config,
    whole: Arc<dyn Backend>,
    raw: Vec<Arc<dyn Backend>>,
    _servers: Vec<Server>,
}

impl Fixture {
    /// Whether any server holds something under `full_key`.
    fn stored(&self, full_key: &str) -> bool {
        self.raw.iter().any(|raw| {
            raw.get(full_key)
                .expect("the server answers direct reads")
                .is_some()
        })
    }

    /// Every value held under `full_keys`, from whichever server has it.
    fn raw_values(&self, full_keys: &[String]) -> Vec<Vec<u8>> {
        full_keys
            .iter()
            .flat_map(|key| {
                self.raw
                    .iter()
                    .filter_map(move |raw| raw.get(key).expect("direct read"))
            })
            .collect()
    }
}

fn memory() -> Option<Fixture> {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    Some(Fixture {
        config: Config::with_shared_backend(Arc::clone(&backend)),
        whole: Arc::clone(&backend),
        raw: vec![backend],
        _servers: Vec::new(),
    })
}

fn memcached() -> Option<Fixture> {
    let server = Server::try_start(Kind::Memcached)?;
    Some(Fixture {
        config: Config::from_url(&server.url()).expect("a valid memcached URL"),
        whole: Arc::new(MemcachedBackend::new([server.address()]).unwrap()),
        raw: vec![Arc::new(MemcachedBackend::new([server.address()]).unwrap())],
        _servers: vec![server],
    })
}

fn memcached_pool() -> Option<Fixture> {
    let servers = [
        Server::try_start(Kind::Memcached)?,
        Server::try_start(Kind::Memcached)?,
    ];
    let url = format!(
        "memcached://{},{}",
        servers[0].address(),
        servers[1].address()
    );
    Some(Fixture {
        config: Config::from_url(&url).expect("a valid memcached URL"),
        whole: Arc::new(
            MemcachedBackend::new([servers[0].address(), servers[1].address()]).unwrap(),
        ),
        raw: servers
            .iter()
            .map(|server| {
                Arc::new(MemcachedBackend::new([server.address()]).unwrap()) as Arc<dyn Backend>
            })
            .collect(),
        _servers: servers.into(),
    })
}

fn redis() -> Option<Fixture> {
    let server = Server::try_start(Kind::Redis)?;
    Some(Fixture {
        config: Config::from_url(&server.url()).expect("a valid redis URL"),
        whole: Arc::new(RedisBackend::new(&server.address()).unwrap()),
        raw: vec![Arc::new(RedisBackend::new(&server.address()).unwrap())],
        _servers: vec![server],
    })
}

/// Runs `behaviour` on a fresh fixture, configured globally for the
/// duration, with chunks small enough that 100 KB spans many of them.
fn run(setup: fn() -> Option<Fixture>, behaviour: fn(&Fixture)) {
    let _serial = serial();
    let Some(fixture) = setup() else { return };
    configure(fixture.config.clone().namespace("suite").chunk_size(4096));
    behaviour(&fixture);
    configure(Config::new(MemoryBackend::new()));
}

macro_rules! suite {
    ($($backend:ident),* $(,)?) => {
        $(
            mod $backend {
                #[test]
                fn the_backend_keeps_the_trait_contract() {
                    super::run(super::$backend, super::backend_contract);
                }

                #[test]
                fn entries_expire_and_touch_extends_them() {
                    super::run(super::$backend, super::expiry);
                }

                #[test]
                fn small_values_are_computed_once_and_stored_in_the_backend() {
                    super::run(super::$backend, super::small_values);
                }

                #[test]
                fn errors_are_returned_and_never_cached() {
                    super::run(super::$backend, super::errors_are_not_cached);
                }

                #[test]
                fn large_data_spans_several_chunks_and_reads_back_whole() {
                    super::run(super::$backend, super::large_data);
                }

                #[test]
                fn iterators_stream_once_and_replay_from_the_cache() {
                    super::run(super::$backend, super::iterators);
                }

                #[test]
                fn an_abandoned_iterator_leaves_nothing_readable() {
                    super::run(super::$backend, super::abandoned_iterator);
                }

                #[test]
                fn encrypted_values_round_trip_and_reach_the_server_opaque() {
                    super::run(super::$backend, super::encryption);
                }

                #[test]
                fn invalidate_drops_the_entry() {
                    super::run(super::$backend, super::invalidation);
                }

                #[test]
                fn twelve_threads_with_a_lock_compute_exactly_once() {
                    super::run(super::$backend, super::locked_stampede);
                }

                #[test]
                fn cache_lock_excludes_a_second_holder() {
                    super::run(super::$backend, super::cache_lock);
                }
            }
        )*
    };
}

suite!(memory, memcached, memcached_pool, redis);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
        tags: vec!["a".into(), "b:c".into()],
    }
}

const MINUTE: Duration = Duration::from_secs(60);

fn backend_contract(fixture: &Fixture) {
    let backend = &*fixture.whole;
    assert_eq!(backend.get("absent").unwrap(), None);
    backend.set("k", b"one", MINUTE).unwrap();
    backend.set("k", b"two", MINUTE).unwrap();
    assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"two"[..]));

    // Bytes that look like protocol travel as data.
    let tricky = b"\r\nEND\r\nVALUE x 0 1\r\n\0\xff";
    backend.set("tricky", tricky, MINUTE).unwrap();
    assert_eq!(backend.get("tricky").unwrap().as_deref(), Some(&tricky[..]));
    backend.set("empty", b"", MINUTE).unwrap();
    assert_eq!(backend.get("empty").unwrap().as_deref(), Some(&b""[..]));

    // Hundreds of long keys: several pipelined batches, order kept, misses
    // and repeats in place.
    let keys: Vec<String> = (0..600)
        .map(|i| format!("{}:{i}", "long".repeat(25)))
        .collect();
    let values: Vec<Vec<u8>> = (0..600).map(|i| noise(i, 1 + i as usize % 700)).collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(key, value)| (key.as_str(), value.as_slice()))
        .collect();
    backend.set_many(&items, MINUTE).unwrap();
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.extend(["absent", keys[7].as_str(), "k"]);
    let found = backend.get_many(&wanted).unwrap();
    assert_eq!(found.len(), wanted.len());
    for (i, value) in values.iter().enumerate() {
        assert_eq!(found[i].as_ref(), Some(value), "key {i}");
    }
    assert_eq!(found[600], None);
    assert_eq!(found[601].as_ref(), Some(&values[7]));
    assert_eq!(found[602].as_deref(), Some(&b"two"[..]));
    assert_eq!(
        backend.get_many(&[]).unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );

    // The largest chunk memo writes by default, with room for its envelope.
    let chunk = noise(99, memo_runtime::DEFAULT_CHUNK_SIZE + 256);
    backend.set("chunk", &chunk, MINUTE).unwrap();
    assert_eq!(backend.get("chunk").unwrap().as_ref(), Some(&chunk));

    // memcached reads expirations over 30 days as Unix times; a longer TTL
    // must still mean "from now", not "already in the past".
    backend
        .set("month", b"m", Duration::from_secs(31 * 24 * 3600))
        .unwrap();
    backend
        .set("year", b"y", Duration::from_secs(365 * 24 * 3600))
        .unwrap();
    assert_eq!(backend.get("month").unwrap().as_deref(), Some(&b"m"[..]));
    assert_eq!(backend.get("year").unwrap().as_deref(), Some(&b"y"[..]));

    // A value the server may refuse leaves the client in step.
    let _ = backend.set("huge", &vec![1u8; 3 << 20], MINUTE);
    assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"two"[..]));

    assert!(backend.add("lock", b"mine", MINUTE).unwrap());
    assert!(!backend.add("lock", b"theirs", MINUTE).unwrap());
    assert!(!backend.delete_if_value("lock", b"theirs").unwrap());
    assert_eq!(backend.get("lock").unwrap().as_deref(), Some(&b"mine"[..]));
    assert!(backend.delete_if_value("lock", b"mine").unwrap());
    assert!(!backend.delete_if_value("lock", b"mine").unwrap());
    assert!(backend.touch("k", MINUTE).unwrap());
    assert!(!backend.touch("absent", MINUTE).unwrap());
    assert!(backend.delete("k").unwrap());
    assert!(!backend.delete("k").unwrap());
    assert_eq!(backend.get("k").unwrap(), None);

    // Many callers at once, each seeing its own writes.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
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

fn expiry(fixture: &Fixture) {
    let backend = &*fixture.whole;
    let second = Duration::from_secs(1);
    backend.set("short", b"s", second).unwrap();
    backend.set("touched", b"t", second).unwrap();
    assert!(backend.add("added", b"a", second).unwrap());
    assert!(backend.touch("touched", MINUTE).unwrap());
    // memcached counts in whole seconds: past two, a one-second TTL is over.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(backend.get("short").unwrap(), None);
    assert_eq!(backend.get("touched").unwrap().as_deref(), Some(&b"t"[..]));
    assert!(
        backend.add("added", b"again", MINUTE).unwrap(),
        "free after expiry"
    );
}

fn small_values(fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    let options = Options::new();
    for id in 0..40u64 {
        for _ in 0..3 {
            let value: Profile = cache_memoize(
                ["profile", &id.to_string()],
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    profile(id)
                },
                &options,
            );
            assert_eq!(value, profile(id));
        }
        let full_key = make_cache_key(["profile", &id.to_string()], &options);
        assert!(fixture.stored(&full_key), "{full_key} is in the backend");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 40, "each value computed once");
    let stats = stats();
    assert_eq!(stats.misses, 40);
    assert_eq!(stats.hits, 80);
    assert_eq!(stats.stores, 40);
    assert_eq!(stats.errors, 0);
    assert!(stats.bytes_read > 0 && stats.bytes_written > 0);

    if fixture.raw.len() > 1 {
        // Forty keys over two servers: both hold some.
        let per_server = fixture.raw.iter().filter(|raw| {
            (0..40u64).any(|id| {
                let key = make_cache_key(["profile", &id.to_string()], &options);
                raw.get(&key).unwrap().is_some()
            })
        });
        assert_eq!(
            per_server.count(),
            fixture.raw.len(),
            "keys spread over every server"
        );
    }
}

fn errors_are_not_cached(_fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    let attempt = |fail: bool| {
        try_cache_memoize(
            "flaky",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                if fail { Err("upstream down") } else { Ok(7u32) }
            },
            &Options::new(),
        )
    };
    assert_eq!(attempt(true), Err("upstream down"));
    assert_eq!(attempt(false), Ok(7));
    assert_eq!(attempt(true), Ok(7), "the Ok value is cached now");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn large_data(fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    for (name, options) in [
        ("plain", Options::new().large_data(true)),
        ("raw", Options::new().large_data(true).compress(false)),
    ] {
        for seed in 1..=3u64 {
            let seed_text = seed.to_string();
            let key = ["blob", name, seed_text.as_str()];
            for _ in 0..2 {
                let value: Vec<u8> = cache_memoize(
                    key,
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        noise(seed, 100_000)
                    },
                    &options,
                );
                assert_eq!(value, noise(seed, 100_000));
            }
            assert!(fixture.stored(&make_cache_key(key, &options)));
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    let stats = stats();
    assert!(stats.bytes_written > 600_000, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

fn iterators(_fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    let items = |seed: u64| (0..400u64).map(move |i| (i, noise(seed + i, 300)));
    let options = Options::new();
    for round in 0..3 {
        let mut seen = 0;
        let collected: Vec<(u64, Vec<u8>)> = cache_memoize_iter(
            "rows",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                items(5)
            },
            &options,
        )
        .inspect(|_| seen += 1)
        .collect();
        assert_eq!(collected, items(5).collect::<Vec<_>>(), "round {round}");
        assert_eq!(seen, 400);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "replayed from the cache");

    // Lazy: building the iterator runs nothing.
    let lazy = cache_memoize_iter(
        "lazy",
        || -> Vec<u8> { panic!("not pulled, not run") },
        &options,
    );
    drop(lazy);
}

fn abandoned_iterator(_fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    let source = || {
        calls.fetch_add(1, Ordering::SeqCst);
        (0..300u64).map(|i| (i, noise(i, 200)))
    };
    let first: Vec<_> = cache_memoize_iter("partial", source, &Options::new())
        .take(100)
        .collect();
    assert_eq!(first.len(), 100);
    let whole: Vec<_> = cache_memoize_iter("partial", source, &Options::new()).collect();
    assert_eq!(
        whole,
        (0..300u64).map(|i| (i, noise(i, 200))).collect::<Vec<_>>()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the half-read run left nothing taken for complete"
    );
}

fn encryption(fixture: &Fixture) {
    let key = EncryptionKey::new([7u8; 32]).unwrap();
    let options = Options::new().encrypt(true).encryption_key(key);
    let secret = "the launch code is 0000".to_owned();
    let calls = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: String = cache_memoize(
            ["secret", "user:1"],
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                secret.clone()
            },
            &options,
        );
        assert_eq!(value, secret);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let full_key = make_cache_key(["secret", "user:1"], &options);
    assert!(
        !full_key.contains("secret") && !full_key.contains("user"),
        "{full_key}"
    );
    let stored = fixture.raw_values(std::slice::from_ref(&full_key));
    assert_eq!(stored.len(), 1, "the encrypted entry is in the backend");
    assert!(
        !stored[0].windows(11).any(|w| w == b"launch code"),
        "no plaintext reaches the server"
    );

    // Large data, encrypted, over several chunks.
    let large = Options::new()
        .large_data(true)
        .encrypt(true)
        .encryption_key(EncryptionKey::new([9u8; 16]).unwrap());
    for _ in 0..2 {
        let value: Vec<u8> = cache_memoize(
            "secret-blob",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                noise(11, 100_000)
            },
            &large,
        );
        assert_eq!(value, noise(11, 100_000));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Another key reads nothing: a miss, computed afresh.
    let other = Options::new()
        .encrypt(true)
        .encryption_key(EncryptionKey::new([8u8; 32]).unwrap());
    let value: String = cache_memoize(["secret", "user:1"], || "fresh".to_owned(), &other);
    assert_eq!(value, "fresh");
    assert_eq!(stats().errors, 0);
}

fn invalidation(fixture: &Fixture) {
    let calls = AtomicUsize::new(0);
    let options = Options::new();
    let compute = || calls.fetch_add(1, Ordering::SeqCst) as u64 + 100;
    assert_eq!(cache_memoize("counter", compute, &options), 100);
    assert_eq!(cache_memoize("counter", compute, &options), 100);
    invalidate("counter", &options).expect("the backend answers");
    assert!(!fixture.stored(&make_cache_key("counter", &options)));
    assert_eq!(cache_memoize("counter", compute, &options), 101);

    let large = Options::new().large_data(true);
    let blob = || noise(calls.fetch_add(1, Ordering::SeqCst) as u64, 50_000);
    let before: Vec<u8> = cache_memoize("big", blob, &large);
    invalidate("big", &large).expect("the backend answers");
    let after: Vec<u8> = cache_memoize("big", blob, &large);
    assert_ne!(before, after, "recomputed after invalidation");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

fn locked_stampede(_fixture: &Fixture) {
    let calls = Arc::new(AtomicUsize::new(0));
    let options = Options::new().lock(LockOptions::new());
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let calls = Arc::clone(&calls);
            let options = options.clone();
            std::thread::spawn(move || {
                cache_memoize(
                    "expensive",
                    || {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        profile(42)
                    },
                    &options,
                )
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("no panic"), profile(42));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "computed exactly once");
    assert_eq!(stats().errors, 0);
}

fn cache_lock(_fixture: &Fixture) {
    let mut first = CacheLock::new("resource").blocking(false);
    assert!(first.acquire().expect("the backend answers"));
    assert!(first.locked());
    let mut second = CacheLock::new("resource").blocking(false);
    assert!(
        !second.acquire().expect("the backend answers"),
        "held elsewhere"
    );
    assert!(second.release().is_err(), "releasing a lock not held");
    first.release().expect("the holder releases");
    assert!(second.acquire().expect("the backend answers"), "free again");
    second.release().expect("the holder releases");
}
