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
