//! The async API against real memcached and Redis servers: a sync process
//! and an async one share entries, whichever client each uses (the
//! engine's non-blocking client, or its blocking one on tokio's blocking
//! pool).

use std::time::Duration;

use memo_runtime::{
    CacheLock, Config, LockOptions, Options, cache_memoize, cache_memoize_async, configure,
    invalidate_async, stats,
};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn shares_entries_between_worlds(kind: Kind) {
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    let _serial = serial();
    configure(
        Config::from_url(&server.url())
            .expect("a valid URL")
            .chunk_size(1024),
    );
    for (index, options) in [
        Options::new(),
        Options::new().large_data(true),
        Options::new().encrypt(true).large_data(true),
        Options::new().lock(LockOptions::new()),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("worlds-{index}");
        let len = if options.clone().large_data(false) == options {
            50
        } else {
            5000
        };
        let written: Vec<u32> = cache_memoize(&*key, || (0..len).collect(), &options);
        let read: Vec<u32> = run(cache_memoize_async(
            &*key,
            || async { unreachable!("the sync write is read") },
            &options,
        ));
        assert_eq!(written, read);
        run(invalidate_async(&*key, &options)).unwrap();
        let again: Vec<u32> = run(cache_memoize_async(&*key, || async { vec![7] }, &options));
        let read: Vec<u32> =
            cache_memoize(&*key, || unreachable!("the async write is read"), &options);
        assert_eq!((again, read), (vec![7], vec![7]));
    }
    run(async {
        let mut lock = CacheLock::new("async-server-lock").timeout(Duration::from_millis(100));
        assert!(lock.acquire_async().await.unwrap());
        let mut other = CacheLock::new("async-server-lock").blocking(false);
        assert!(!other.acquire_async().await.unwrap());
        lock.release_async().await.unwrap();
    });
    assert_eq!(stats().errors, 0);
}

#[test]
fn memcached_entries_are_shared_between_sync_and_async() {
    shares_entries_between_worlds(Kind::Memcached);
}

#[test]
fn redis_entries_are_shared_between_sync_and_async() {
    shares_entries_between_worlds(Kind::Redis);
}

/// A server that accepts connections and never answers.
fn silent_server() -> u16 {
    memo_tests::servers::fake_server(|stream, _| {
        std::thread::sleep(Duration::from_secs(30));
        drop(stream);
    })
}

/// A hung server costs an async caller its timeout, not its executor: a
/// heartbeat task on the same current-thread runtime keeps ticking.
fn a_hung_server_never_stalls_the_executor(scheme: &str) {
    let _serial = serial();
    let port = silent_server();
    configure(
        Config::from_url(&format!("{scheme}://127.0.0.1:{port}?timeout_ms=300"))
            .expect("a valid URL"),
    );
    let (value, largest_gap) = run(async {
        let heartbeat = tokio::spawn(async {
            let mut largest = Duration::ZERO;
            let mut last = std::time::Instant::now();
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                largest = largest.max(last.elapsed());
                last = std::time::Instant::now();
            }
            largest
        });
        // Let the heartbeat start before memo's first poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let value: u8 = cache_memoize_async(
            "hung",
            || async { 5 },
            &Options::new().lock(LockOptions::new().timeout(Duration::from_millis(300))),
        )
        .await;
        (value, heartbeat.await.unwrap())
    });
    assert_eq!(value, 5, "computed despite the hung server");
    assert!(
        largest_gap < Duration::from_millis(100),
        "the heartbeat stalled for {largest_gap:?}"
    );
    assert!(stats().errors >= 1);
}

#[test]
fn a_hung_memcached_never_stalls_the_executor() {
    a_hung_server_never_stalls_the_executor("memcached");
}

#[test]
fn a_hung_redis_never_stalls_the_executor() {
    a_hung_server_never_stalls_the_executor("redis");
}
