//! Invalidation is a barrier across processes, and by tag: once
//! `invalidate`, `invalidate_tag` or a `force_overwrite` call returns `Ok`,
//! no call that starts afterwards, in any process, is served a value whose
//! computation began before it. On the embedded store, memcached and Redis
//! (the embedded store is one process's own, so only its in-process part
//! and its tags apply), with a second real process as the stale writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{
    Backend, BackendError, Config, EncryptionKey, MemoryBackend, Options, cache_memoize,
    cache_memoize_iter, configure, invalidate, invalidate_tag,
};
use memo_tests::cluster::Cluster;
use memo_tests::peer::Peer;
use memo_tests::sentinel::Sentinels;
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

/// Runs `test` configured on each backend in turn, with a namespace, and
/// hands it the URL another process would use (none for the embedded
/// store, which no other process shares): the embedded store, memcached,
/// Redis, and a Redis Cluster of three masters, where an entry's tokens
/// fall in other slots than the entry.
fn on_every_backend(test: impl Fn(&str, Option<&str>)) {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).namespace("fleet"));
    test("memory", None);
    for kind in [Kind::Memcached, Kind::Redis] {
        let server = Server::start(kind);
        let url = format!("{}?namespace=fleet", server.url());
        configure(Config::from_url(&url).expect("a valid URL"));
        test(kind.scheme(), Some(&url));
    }
    if let Some(cluster) = Cluster::try_start(3, 0) {
        let url = format!("{}?namespace=fleet", cluster.url());
        configure(Config::from_url(&url).expect("a valid URL"));
        test("redis cluster", Some(&url));
    }
    if let Some(sentinels) = Sentinels::try_start() {
        let url = with_namespace(&sentinels.url());
        configure(Config::from_url(&url).expect("a valid URL"));
        test("redis sentinel", Some(&url));
    }
    configure(Config::new(MemoryBackend::new()));
}

/// `url` with the tests' namespace, whether or not it has a query already.
fn with_namespace(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}namespace=fleet")
}

fn peer(url: &str) -> Peer {
    Peer::start(env!("CARGO_BIN_EXE_hot_key_peer"), url)
}

#[test]
fn exactly_the_tagged_entries_drop() {
    on_every_backend(|backend, _| {
        let user7 = Options::new().tags(["user:7"]);
        let both = Options::new().tags(["user:7", "catalog"]);
        let catalog = Options::new().tags(["catalog"]);
        let plain = Options::new();
        let _: u32 = cache_memoize("t:a", || 1, &user7);
        let _: u32 = cache_memoize("t:b", || 1, &both);
        let _: u32 = cache_memoize("t:c", || 1, &catalog);
        let _: u32 = cache_memoize("t:d", || 1, &plain);
        invalidate_tag("user:7", &plain).unwrap();
        assert_eq!(
            cache_memoize("t:a", || 2, &user7),
            2u32,
            "{backend}: tagged"
        );
        assert_eq!(
            cache_memoize("t:b", || 2, &both),
            2u32,
            "{backend}: one of two tags"
        );
        assert_eq!(
            cache_memoize("t:c", || 2, &catalog),
            1u32,
            "{backend}: other tag"
        );
        assert_eq!(
            cache_memoize("t:d", || 2, &plain),
            1u32,
            "{backend}: untagged"
        );
        // The other tag of a two-tag entry drops it too.
        invalidate_tag("catalog", &plain).unwrap();
        assert_eq!(
            cache_memoize("t:b", || 3, &both),
            3u32,
            "{backend}: the other tag"
        );
        assert_eq!(cache_memoize("t:c", || 3, &catalog), 3u32, "{backend}");
        assert_eq!(
            cache_memoize("t:a", || 3, &user7),
            2u32,
            "{backend}: kept since"
        );
        for key in ["t:a", "t:b", "t:c", "t:d"] {
            invalidate(key, &plain).unwrap();
        }
    });
}

#[test]
fn tags_hold_for_large_values_local_copies_encryption_and_iterators() {
    on_every_backend(|backend, _| {
        let key = EncryptionKey::new([9u8; 32]).unwrap();
        let large = Options::new().tags(["big"]).large_data(true);
        let local = Options::new().tags(["big"]).local(Duration::from_secs(60));
        let sealed = Options::new()
            .tags(["big"])
            .encrypt(true)
            .encryption_key(key.clone());
        let value = |n: u8| vec![n; 300_000];
        assert_eq!(cache_memoize("t:large", || value(1), &large), value(1));
        assert_eq!(cache_memoize("t:large", || value(2), &large), value(1));
        assert_eq!(cache_memoize("t:local", || 1u8, &local), 1);
        assert_eq!(cache_memoize("t:local", || 2u8, &local), 1);
        assert_eq!(cache_memoize("t:sealed", || 1u8, &sealed), 1);
        assert_eq!(cache_memoize("t:sealed", || 2u8, &sealed), 1);
        let items = |n: u32| cache_memoize_iter("t:items", move || [n, n + 1], &large);
        assert_eq!(items(1).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(items(5).collect::<Vec<_>>(), [1, 2]);

        // The encrypted entry's tag is the encrypted one: the plain tag
        // leaves it, the tag under the same key drops it.
        invalidate_tag("big", &Options::new()).unwrap();
        assert_eq!(
            cache_memoize("t:large", || value(3), &large),
            value(3),
            "{backend}"
        );
        assert_eq!(cache_memoize("t:local", || 3u8, &local), 3, "{backend}");
        assert_eq!(cache_memoize("t:sealed", || 3u8, &sealed), 1, "{backend}");
        assert_eq!(items(7).collect::<Vec<_>>(), [7, 8], "{backend}");
        let under_key = Options::new().encrypt(true).encryption_key(key);
        invalidate_tag("big", &under_key).unwrap();
        assert_eq!(cache_memoize("t:sealed", || 4u8, &sealed), 4, "{backend}");
        for key in ["t:large", "t:local", "t:sealed", "t:items"] {
            invalidate(key, &large).unwrap();
        }
    });
}

#[test]
fn a_stale_set_from_another_process_is_not_served() {
    on_every_backend(|backend, url| {
        let Some(url) = url else { return };
        for (how, command, barrier) in [
            ("invalidate", "slow fleet-k 800", 0),
            ("invalidate_tag", "slowtag fleet-t tag-x 800", 1),
            ("force_overwrite", "slow fleet-o 800", 2),
        ] {
            let key = command.split(' ').nth(1).unwrap();
            let options = if barrier == 1 {
                Options::new().tags(["tag-x"])
            } else {
                Options::new()
            };
            let mut writer = peer(url);
            // The peer misses and starts computing from the world as it
            // was; meanwhile the world changes and is invalidated.
            writer.send(command);
            std::thread::sleep(Duration::from_millis(300));
            match barrier {
                0 => invalidate(key, &options).unwrap(),
                1 => invalidate_tag("tag-x", &Options::new()).unwrap(),
                _ => {
                    let fresh: String = cache_memoize(
                        key,
                        || "overwritten".to_owned(),
                        &options.clone().force_overwrite(true),
                    );
                    assert_eq!(fresh, "overwritten");
                }
            }
            // Its value reaches its own caller, and lands in the cache
            // after the barrier...
            assert_eq!(writer.answer(), "slow-1", "{backend} {how}");
            // ...but nobody after the barrier is served it.
            let after: String = cache_memoize(key, || "recomputed".to_owned(), &options);
            assert_ne!(after, "slow-1", "{backend} {how}: the stale set won");
            // The stale store may have replaced the overwrite's value: that
            // costs a recomputation, never the old value.
            if barrier != 2 {
                assert_eq!(after, "recomputed", "{backend} {how}");
            }
            invalidate(key, &options).unwrap();
        }
    });
}

#[test]
fn a_writer_killed_mid_computation_holds_nobody_up() {
    on_every_backend(|backend, url| {
        let Some(url) = url else { return };
        let mut writer = peer(url);
        writer.send("slow fleet-killed 10000");
        std::thread::sleep(Duration::from_millis(300));
        writer.kill();
        let started = Instant::now();
        let value: String = cache_memoize("fleet-killed", || "mine".to_owned(), &Options::new());
        assert_eq!(value, "mine");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{backend}: waited {:?} for a dead writer",
            started.elapsed()
        );
        invalidate("fleet-killed", &Options::new()).unwrap();
    });
}

#[test]
fn invalidation_that_cannot_reach_the_cache_says_so_in_time() {
    let _serial = serial();
    for kind in [Kind::Memcached, Kind::Redis] {
        let server = Server::start(kind);
        configure(Config::from_url(&format!("{}?timeout_ms=300", server.url())).unwrap());
        let _: u32 = cache_memoize("down", || 1, &Options::new());
        server.kill();
        let started = Instant::now();
        assert!(invalidate("down", &Options::new()).is_err(), "{kind:?}");
        assert!(invalidate_tag("down", &Options::new()).is_err(), "{kind:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{kind:?}: {:?}",
            started.elapsed()
        );
    }
    configure(Config::new(MemoryBackend::new()));
}

/// A backend that counts the calls made to it, by method.
#[derive(Default)]
struct Counting {
    inner: MemoryBackend,
    gets: AtomicUsize,
    get_manys: AtomicUsize,
    others: AtomicUsize,
}

impl Backend for Counting {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.get_manys.fetch_add(1, Ordering::SeqCst);
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.set(key, value, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key)
    }
}

#[test]
fn a_hit_with_two_tags_is_one_backend_call_and_a_miss_a_few_more() {
    let _serial = serial();
    let counting = Arc::new(Counting::default());
    configure(Config::with_shared_backend(counting.clone()));
    let tagged = Options::new().tags(["a", "b"]);
    let _: u32 = cache_memoize("counted", || 1, &tagged);
    let calls = |c: &Counting| {
        (
            c.gets.swap(0, Ordering::SeqCst),
            c.get_manys.swap(0, Ordering::SeqCst),
            c.others.swap(0, Ordering::SeqCst),
        )
    };
    // The miss: one lookup, the three tokens written, the value stored.
    assert_eq!(calls(&counting), (0, 1, 4));
    for _ in 0..3 {
        let hit: u32 = cache_memoize("counted", || 2, &tagged);
        assert_eq!(hit, 1);
        assert_eq!(calls(&counting), (0, 1, 0), "a hit is one get_many");
    }
    // A miss once the tokens exist costs one lookup and one store.
    invalidate("counted", &Options::new()).unwrap();
    calls(&counting);
    let _: u32 = cache_memoize("counted", || 3, &tagged);
    assert_eq!(calls(&counting), (0, 1, 1));
    configure(Config::new(MemoryBackend::new()));
}
