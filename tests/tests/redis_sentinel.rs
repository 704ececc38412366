//! memo through Redis Sentinel (`redis+sentinel://`), on real processes
//! started by each test (a master, a replica and a sentinel, see
//! `memo_tests::sentinel`): values, large values, iterators and locks,
//! blocking and async; a `SENTINEL FAILOVER` during which every call
//! returns its value and after which caching resumes on the promoted
//! master; a killed master replaced by the sentinel; and credentials of
//! both kinds kept out of every message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{
    Backend, CacheLock, Config, MemoryBackend, Options, RedisBackend, cache_memoize,
    cache_memoize_async, cache_memoize_iter, configure, make_cache_key,
};
use memo_tests::behaviour::noise;
use memo_tests::sentinel::{Passwords, SERVICE, Sentinels};
use memo_tests::{runtime, serial};

const MINUTE: Duration = Duration::from_secs(60);

fn reset() {
    configure(Config::new(MemoryBackend::new()));
}

/// Whether the stored form of memo's `key` is on the server at `port`.
fn stored_on(set: &Sentinels, port: u16, key: &str, options: &Options) -> bool {
    let stored = make_cache_key(key, options);
    set.cli(port, &["EXISTS", &stored]).trim() == "1"
}

#[test]
fn values_large_values_iterators_and_locks_go_to_the_master() {
    let _serial = serial();
    let Some(set) = Sentinels::try_start() else {
        return;
    };
    configure(
        Config::from_url(&set.url())
            .expect("a valid URL")
            .namespace("sentinel")
            .chunk_size(4096),
    );
    let master = set.master_port();
    let calls = AtomicUsize::new(0);
    let options = Options::new();
    for _ in 0..2 {
        let value: String = cache_memoize(
            "small",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                "through sentinel".to_owned()
            },
            &options,
        );
        assert_eq!(value, "through sentinel");
    }
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "the second call hit");
    assert!(stored_on(&set, master, "small", &options));

    let large = Options::new().large_data(true).compress(false);
    for size in [0, 4095, 4097, 100_000] {
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
    assert_eq!(calls.swap(0, Ordering::SeqCst), 4);

    for _ in 0..2 {
        let items: Vec<u32> = cache_memoize_iter(
            "numbers",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                0..5000u32
            },
            &Options::new(),
        )
        .collect();
        assert_eq!(items, (0..5000).collect::<Vec<_>>());
    }
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

    let mut first = CacheLock::new("job");
    assert!(first.acquire().expect("the lock is reachable"));
    let mut second = CacheLock::new("job").blocking(false);
    assert!(!second.acquire().expect("the lock is reachable"));
    first.release().expect("released");
    assert!(second.acquire().expect("the lock is reachable"));
    second.release().expect("released");

    runtime::run_multi(async {
        for id in 0..20u32 {
            for _ in 0..2 {
                let value: u32 = cache_memoize_async(
                    ["async", &id.to_string()],
                    || async move { id * 3 },
                    &options,
                )
                .await;
                assert_eq!(value, id * 3);
            }
        }
        let value: Vec<u8> =
            cache_memoize_async("async-blob", || async { noise(7, 50_000) }, &large).await;
        assert_eq!(value, noise(7, 50_000));
    });
    assert!(stored_on(&set, master, "async:1", &options));
    assert!(
        set.cli(set.other(master), &["INFO", "replication"])
            .contains("role:slave"),
        "the replica is still one"
    );
    reset();
}

/// Calls memo over and over from a thread and from tokio tasks until
/// `stop`, counting the calls and any wrong value.
struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    wrong: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let wrong = Arc::new(AtomicUsize::new(0));
        let blocking = {
            let (stop, calls, wrong) = (stop.clone(), calls.clone(), wrong.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = format!("load:{}", i % 50);
                    let value: u64 = cache_memoize(key, || i % 50 * 7, &Options::new());
                    calls.fetch_add(1, Ordering::SeqCst);
                    if value != i % 50 * 7 {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let tasks = {
            let (stop, calls, wrong) = (stop.clone(), calls.clone(), wrong.clone());
            std::thread::spawn(move || {
                runtime::run_multi(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let key = format!("load-async:{}", i % 50);
                        let value: u64 = cache_memoize_async(
                            key,
                            || async move { i % 50 * 11 },
                            &Options::new(),
                        )
                        .await;
                        calls.fetch_add(1, Ordering::SeqCst);
                        if value != i % 50 * 11 {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
            })
        };
        Load {
            stop,
            calls,
            wrong,
            threads: vec![blocking, tasks],
        }
    }

    /// Stops the load; how many calls ran.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("the load ran without panicking");
        }
        assert_eq!(
            self.wrong.load(Ordering::SeqCst),
            0,
            "every call got its value"
        );
        self.calls.load(Ordering::SeqCst)
    }
}

/// Stores fresh keys until one lands on the server at `port`; how long
/// that took, or `None` after `within`.
fn caching_resumes_on(set: &Sentinels, port: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < within {
        n += 1;
        let key = format!("after:{n}");
        let _: u32 = cache_memoize(key.as_str(), || n, &Options::new());
        if stored_on(set, port, &key, &Options::new()) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_sentinel_failover_is_followed_and_no_call_fails_its_caller() {
    let _serial = serial();
    let Some(set) = Sentinels::try_start() else {
        return;
    };
    configure(Config::from_url(&set.url()).expect("a valid URL"));
    let old = set.master_port();
    let load = Load::start();
    std::thread::sleep(Duration::from_millis(300));
    let new = set.failover();
    assert_ne!(new, old);
    let took = caching_resumes_on(&set, new, Duration::from_secs(5));
    assert!(
        took.is_some(),
        "caching resumed on the promoted master {new} within a few seconds"
    );
    std::thread::sleep(Duration::from_millis(300));
    let calls = load.stop();
    assert!(calls > 100, "the load ran throughout: {calls} calls");
    // Both worlds write to the promoted master now.
    let options = Options::new();
    let _: u32 = cache_memoize("after-failover", || 1, &options);
    assert!(stored_on(&set, new, "after-failover", &options));
    runtime::run(async {
        let _: u32 = cache_memoize_async("after-failover-async", || async { 2 }, &options).await;
    });
    assert!(stored_on(&set, new, "after-failover-async", &options));
    reset();
}

#[test]
fn a_killed_master_is_replaced_by_its_replica_and_caching_resumes() {
    let _serial = serial();
    let Some(set) = Sentinels::try_start() else {
        return;
    };
    configure(Config::from_url(&set.url()).expect("a valid URL"));
    let old = set.master_port();
    let replica = set.other(old);
    let load = Load::start();
    std::thread::sleep(Duration::from_millis(300));
    set.server(old).kill();
    let killed = Instant::now();
    set.wait_for_master(replica);
    let promoted = killed.elapsed();
    let took = caching_resumes_on(&set, replica, Duration::from_secs(5));
    assert!(
        took.is_some(),
        "caching resumed on {replica} within a few seconds of its promotion \
         ({promoted:?} after the kill)"
    );
    let calls = load.stop();
    assert!(calls > 100, "the load ran throughout: {calls} calls");
    reset();
}

#[test]
fn sentinels_with_their_own_password_and_a_master_with_another() {
    let _serial = serial();
    let passwords = Passwords {
        master: "m4ster-secret",
        sentinel: "w4tch-secret",
    };
    let Some(set) = Sentinels::try_start_with_passwords(passwords) else {
        return;
    };
    let master = set.master_port();
    // The builder and the URL reach the same master.
    let backend = RedisBackend::sentinel([set.sentinel_address()], SERVICE)
        .expect("a sentinel setup")
        .password(None, passwords.master)
        .sentinel_password(None, passwords.sentinel);
    backend
        .set("built", b"yes", MINUTE)
        .expect("the master answers");
    assert_eq!(set.cli(master, &["GET", "built"]).trim(), "yes");
    let shown = format!("{backend:?}");
    assert!(!shown.contains("secret"), "{shown}");

    configure(Config::from_url(&set.url()).expect("a valid URL"));
    let options = Options::new();
    let _: u32 = cache_memoize("with-passwords", || 5, &options);
    assert!(stored_on(&set, master, "with-passwords", &options));

    // A wrong sentinel password or master password costs only the cache,
    // and never shows either password.
    let logger = memo_tests::logs::Logger::install();
    logger.clear();
    for (master_password, sentinel_password) in [
        (passwords.master, "wrong-secret"),
        ("wrong-secret", passwords.sentinel),
    ] {
        let backend = RedisBackend::sentinel([set.sentinel_address()], SERVICE)
            .expect("a sentinel setup")
            .password(None, master_password)
            .sentinel_password(None, sentinel_password);
        let err = backend.get("k").expect_err("refused");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
    let logged = logger.lines();
    assert!(
        logged.iter().all(|(_, line)| !line.contains("secret")),
        "{logged:?}"
    );
    assert!(!logged.is_empty(), "the refusals were logged");
    reset();
}

#[cfg(feature = "tls")]
#[test]
fn over_tls_the_sentinels_and_the_master_are_reached_and_a_failover_followed() {
    let _serial = serial();
    let pki = memo_tests::tls::Pki::new();
    let Some(set) = Sentinels::try_start_tls(&pki) else {
        return;
    };
    // The sentinel's TLS port, and the servers' TLS ports as it names
    // them: a plaintext connection to any of them would fail.
    configure(
        Config::from_url(&set.tls_url(&format!("ca={}", pki.ca().display())))
            .expect("a valid URL")
            .chunk_size(4096),
    );
    let master = set.master_port();
    let options = Options::new();
    let calls = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: String = cache_memoize(
            "tls",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                "over tls".to_owned()
            },
            &options,
        );
        assert_eq!(value, "over tls");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call hit");
    assert!(stored_on(&set, master, "tls", &options));
    let large = Options::new().large_data(true);
    let value: Vec<u8> = cache_memoize("tls-blob", || noise(3, 30_000), &large);
    assert_eq!(value, noise(3, 30_000));
    runtime::run(async {
        let value: u32 = cache_memoize_async("tls-async", || async { 9 }, &options).await;
        assert_eq!(value, 9);
    });
    assert!(stored_on(&set, master, "tls-async", &options));

    let load = Load::start();
    let new = set.failover();
    let took = caching_resumes_on(&set, new, Duration::from_secs(5));
    assert!(took.is_some(), "caching resumed over TLS on {new}");
    load.stop();
    reset();
}
