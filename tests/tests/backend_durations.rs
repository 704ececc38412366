//! Every `Duration` a caller can pass is accepted by every backend, as a
//! time to live and as tuning: no panic, no error, and a TTL longer than
//! the engine can hold is clamped to the longest it can, so the value is
//! cached rather than refused or stored already expired. A refused command
//! never puts the server into back-off, so other keys keep hitting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use memo_runtime::{
    Backend, Config, MemcachedBackend, MemoryBackend, Options, RedisBackend, cache_memoize,
    configure,
};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server, every_backend};

const DAY: u64 = 24 * 60 * 60;

/// The edges: nothing, below every resolution, around memcached's switch
/// from relative to absolute expirations, around 32-bit limits, and the
/// largest values a `Duration` can hold.
const EDGES: [Duration; 11] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(999),
    Duration::from_secs(30 * DAY - 1),
    Duration::from_secs(30 * DAY),
    Duration::from_secs(30 * DAY + 1),
    Duration::from_secs(i32::MAX as u64),
    Duration::from_secs(u32::MAX as u64),
    Duration::from_secs(u64::MAX / 1000),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

/// TTLs long enough that the value must still be there right after.
fn must_hit(ttl: Duration) -> bool {
    ttl >= Duration::from_secs(30 * DAY - 1)
}

fn hit(backend: &dyn Backend, key: &str, value: &[u8]) -> bool {
    backend.get(key).expect("the server answers").as_deref() == Some(value)
}

#[test]
fn every_ttl_edge_is_accepted_by_every_operation_and_huge_ones_cache() {
    for (name, backend, _server) in every_backend() {
        backend
            .set("unrelated", b"u", Duration::from_secs(600))
            .unwrap();
        for (i, ttl) in EDGES.into_iter().enumerate() {
            let context = format!("{name}, ttl {ttl:?}");
            let key = format!("set-{i}");
            backend
                .set(&key, b"v", ttl)
                .unwrap_or_else(|err| panic!("{context}: set: {err}"));
            if must_hit(ttl) {
                assert!(hit(&*backend, &key, b"v"), "{context}: set value is gone");
            }

            let many = [format!("many-{i}-a"), format!("many-{i}-b")];
            backend
                .set_many(&[(&many[0], b"a"), (&many[1], b"b")], ttl)
                .unwrap_or_else(|err| panic!("{context}: set_many: {err}"));
            if must_hit(ttl) {
                assert!(hit(&*backend, &many[0], b"a"), "{context}: set_many");
                assert!(hit(&*backend, &many[1], b"b"), "{context}: set_many");
            }

            let added = format!("add-{i}");
            let stored = backend
                .add(&added, b"v", ttl)
                .unwrap_or_else(|err| panic!("{context}: add: {err}"));
            assert!(stored, "{context}: add of an absent key stores");
            if must_hit(ttl) {
                assert!(hit(&*backend, &added, b"v"), "{context}: added value");
            }

            let touched = format!("touch-{i}");
            backend
                .set(&touched, b"t", Duration::from_secs(600))
                .unwrap();
            let found = backend
                .touch(&touched, ttl)
                .unwrap_or_else(|err| panic!("{context}: touch: {err}"));
            assert!(found, "{context}: touch finds the key");
            if must_hit(ttl) {
                assert!(hit(&*backend, &touched, b"t"), "{context}: touched value");
            }

            let compared = format!("touch-if-{i}");
            backend
                .set(&compared, b"c", Duration::from_secs(600))
                .unwrap();
            let extended = backend
                .touch_if_value(&compared, b"c", ttl)
                .unwrap_or_else(|err| panic!("{context}: touch_if_value: {err}"));
            assert!(extended, "{context}: touch_if_value matches");
            if must_hit(ttl) {
                assert!(hit(&*backend, &compared, b"c"), "{context}: extended value");
            }

            assert!(
                hit(&*backend, "unrelated", b"u"),
                "{context}: an unrelated key stops hitting (the server was backed off)"
            );
        }
    }
}

/// Asks a real memcached directly which expirations it takes and keeps, so
/// the backend's clamp rests on the server's behaviour, not on a guess:
/// `i32::MAX` (an absolute time in 2038) is stored and readable, one more
/// is stored already expired, and `u64::MAX` is refused.
#[test]
fn memcached_keeps_an_absolute_expiration_up_to_i32_max() {
    let Some(server) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let mut ask = memo_tests::servers::raw_session(&server);
    assert_eq!(
        ask(&format!("set max 0 {} 1\r\nv\r\n", i32::MAX)),
        "STORED\r\n"
    );
    assert_eq!(ask("get max\r\n"), "VALUE max 0 1\r\n");
    assert_eq!(ask(""), "v\r\n");
    assert_eq!(ask(""), "END\r\n");
    // One second later is read as a negative 32-bit time: stored, but
    // already expired.
    let over = i32::MAX as u64 + 1;
    assert_eq!(ask(&format!("set over 0 {over} 1\r\nv\r\n")), "STORED\r\n");
    assert_eq!(ask("get over\r\n"), "END\r\n");
    // Past 64-bit signed, the command is refused and its data line read as
    // a command of its own: the connection is out of step.
    assert!(ask(&format!("set huge 0 {} 1\r\nv\r\n", u64::MAX)).starts_with("CLIENT_ERROR"));
    assert_eq!(ask(""), "ERROR\r\n");
}

#[test]
fn huge_expirations_through_the_public_api_cache_on_every_backend() {
    let _serial = serial();
    for (name, backend, _server) in every_backend() {
        configure(Config::with_shared_backend(Arc::clone(&backend)).namespace("durations"));
        for (i, ttl) in EDGES.into_iter().enumerate() {
            let options = Options::new().expiration(ttl);
            let computed = AtomicUsize::new(0);
            for _ in 0..2 {
                let value: Vec<u64> = cache_memoize(
                    ["durations", name, &i.to_string()],
                    || {
                        computed.fetch_add(1, Ordering::SeqCst);
                        vec![i as u64; 100]
                    },
                    &options,
                );
                assert_eq!(value, vec![i as u64; 100], "{name}, ttl {ttl:?}");
            }
            if must_hit(ttl) {
                assert_eq!(
                    computed.load(Ordering::SeqCst),
                    1,
                    "{name}, ttl {ttl:?}: the second call hits"
                );
            }
            let unrelated = AtomicUsize::new(0);
            for _ in 0..2 {
                let _: u8 = cache_memoize(
                    ["durations", name, "unrelated", &i.to_string()],
                    || {
                        unrelated.fetch_add(1, Ordering::SeqCst);
                        7
                    },
                    &Options::new().expiration(Duration::from_secs(600)),
                );
            }
            assert_eq!(
                unrelated.load(Ordering::SeqCst),
                1,
                "{name}, ttl {ttl:?}: an unrelated key keeps hitting"
            );
        }
    }
    configure(Config::new(MemoryBackend::new()));
}

/// Tuning with the largest values a URL or a setter can carry: the backend
/// is built, caches, and never overflows a deadline.
#[test]
fn the_largest_timeouts_and_back_offs_are_accepted() {
    let _serial = serial();
    let max = u64::MAX;
    let tuning =
        format!("connect_timeout_ms={max}&timeout_ms={max}&backoff_ms={max}&max_backoff_ms={max}");
    for kind in [Kind::Memcached, Kind::Redis] {
        let Some(server) = Server::try_start(kind) else {
            continue;
        };
        let url = format!("{}?{tuning}&namespace=tuning", server.url());
        configure(Config::from_url(&url).expect("the largest values are valid"));
        let computed = AtomicUsize::new(0);
        for _ in 0..2 {
            let value: String = cache_memoize(
                ["tuning", &format!("{kind:?}")],
                || {
                    computed.fetch_add(1, Ordering::SeqCst);
                    "v".repeat(10)
                },
                &Options::new(),
            );
            assert_eq!(value, "v".repeat(10));
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1, "{kind:?} caches");

        let by_setters: Arc<dyn Backend> = match kind {
            Kind::Memcached => Arc::new(
                MemcachedBackend::new([server.address()])
                    .unwrap()
                    .connect_timeout(Duration::MAX)
                    .timeout(Duration::MAX)
                    .backoff(Duration::MAX, Duration::MAX),
            ),
            Kind::Redis => Arc::new(
                RedisBackend::new(&server.address())
                    .unwrap()
                    .connect_timeout(Duration::MAX)
                    .timeout(Duration::MAX)
                    .backoff(Duration::MAX, Duration::MAX),
            ),
        };
        by_setters.set("k", b"v", Duration::MAX).unwrap();
        assert!(hit(&*by_setters, "k", b"v"), "{kind:?}");
    }

    // A dead server with the longest back-off: failing and being skipped
    // compute deadlines a year away, without overflow.
    let dead: [Arc<dyn Backend>; 2] = [
        Arc::new(
            MemcachedBackend::new(["127.0.0.1:9"])
                .unwrap()
                .backoff(Duration::MAX, Duration::MAX)
                .timeout(Duration::MAX),
        ),
        Arc::new(
            RedisBackend::new("127.0.0.1:9")
                .unwrap()
                .backoff(Duration::MAX, Duration::MAX)
                .timeout(Duration::MAX),
        ),
    ];
    for backend in dead {
        for _ in 0..3 {
            assert!(backend.get("k").is_err());
        }
    }
    configure(Config::new(MemoryBackend::new()));
}
