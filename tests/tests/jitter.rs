//! Expiration jitter: each store's TTL is shortened by a random fraction
//! of it, within `[0, jitter]`, so that entries stored together spread
//! their expiries; without jitter the TTL is the expiration exactly. Read
//! back as the embedded store is given them, and from Redis itself
//! (`PTTL`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use memo_runtime::{
    Backend, BackendError, Config, MemoryBackend, Options, cache_memoize, cache_memoize_iter,
    configure, make_cache_key,
};
use memo_tests::servers::{Kind, Server, raw_session};

const EXPIRATION: Duration = Duration::from_secs(1000);

/// The embedded store, noting the TTL of every value it is given.
#[derive(Debug, Clone, Default)]
struct TtlLog {
    inner: MemoryBackend,
    ttls: Arc<Mutex<Vec<(String, Duration)>>>,
}

impl TtlLog {
    /// The TTLs given so far, in order, and forgets them.
    fn take(&self) -> Vec<(String, Duration)> {
        std::mem::take(&mut self.ttls.lock().unwrap())
    }

    fn note(&self, key: &str, ttl: Duration) {
        self.ttls.lock().unwrap().push((key.to_owned(), ttl));
    }
}

impl Backend for TtlLog {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.note(key, ttl);
        self.inner.set(key, value, ttl)
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        for (key, _) in items {
            self.note(key, ttl);
        }
        self.inner.set_many(items, ttl)
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.inner.add(key, value, ttl)
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.touch(key, ttl)
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key)
    }
}

/// Asserts that `ttls` lie within `[expiration × (1 − jitter) − slack,
/// expiration]` and spread over most of that range.
fn assert_spread(ttls: &[Duration], jitter: f64, slack: Duration, context: &str) {
    let lowest = EXPIRATION.mul_f64(1.0 - jitter).saturating_sub(slack);
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(
        ttls.iter().all(|ttl| (lowest..=EXPIRATION).contains(ttl)),
        "{context}: {min:?}..{max:?} not within {lowest:?}..{EXPIRATION:?}"
    );
    // With 200 uniform draws, the chance that none falls in the lowest or
    // the highest fifth of the range is below 10^-19.
    let span = EXPIRATION.mul_f64(jitter);
    assert!(
        *min < EXPIRATION - span.mul_f64(0.8) && *max > EXPIRATION - span.mul_f64(0.2),
        "{context}: {min:?}..{max:?} does not spread over {lowest:?}..{EXPIRATION:?}"
    );
}

#[memo_runtime::cache_memoize(key = "attr:{i}", expiration = 1000, jitter = 0.5)]
fn jittered(i: u32) -> u32 {
    i * 2
}

#[memo_runtime::cache_memoize(key = "exact:{i}", expiration = 1000, jitter = 0)]
fn exact(i: u32) -> u32 {
    i * 3
}

#[test]
fn the_embedded_store_is_given_ttls_spread_within_the_jitter() {
    let _serial = memo_tests::serial();
    let log = TtlLog::default();
    configure(Config::new(log.clone()).namespace("jitter"));

    let options = Options::new()
        .expiration(EXPIRATION)
        .expiration_jitter(0.25);
    for i in 0..200 {
        let _: u32 = cache_memoize(["fn", &i.to_string()], || i, &options);
    }
    let ttls: Vec<Duration> = log.take().into_iter().map(|(_, ttl)| ttl).collect();
    assert_eq!(ttls.len(), 200);
    assert_spread(&ttls, 0.25, Duration::ZERO, "functional");

    for i in 0..200 {
        jittered(i);
    }
    let ttls: Vec<Duration> = log.take().into_iter().map(|(_, ttl)| ttl).collect();
    assert_eq!(ttls.len(), 200);
    assert_spread(&ttls, 0.5, Duration::ZERO, "attribute");

    // Without jitter, or with jitter 0, the expiration exactly.
    for i in 0..50 {
        exact(i);
        let _: u32 = cache_memoize(
            ["plain", &i.to_string()],
            || i,
            &Options::new().expiration(EXPIRATION),
        );
    }
    let ttls = log.take();
    assert_eq!(ttls.len(), 100);
    assert!(ttls.iter().all(|(_, ttl)| *ttl == EXPIRATION), "{ttls:?}");

    // An iterator's chunks and manifest share their store's one draw.
    let options = Options::new().expiration(EXPIRATION).expiration_jitter(1.0);
    let mut draws = Vec::new();
    for i in 0..20 {
        let items: Vec<u64> = cache_memoize_iter(
            ["iter", &i.to_string()],
            || (0..50_000u64).map(|n| n * 7919),
            &options,
        )
        .collect();
        assert_eq!(items.len(), 50_000);
        let ttls = log.take();
        assert!(ttls.len() > 1, "chunked: {ttls:?}");
        assert!(ttls.iter().all(|(_, ttl)| *ttl == ttls[0].1), "{ttls:?}");
        assert!(!ttls[0].1.is_zero() && ttls[0].1 <= EXPIRATION);
        draws.push(ttls[0].1);
    }
    draws.dedup();
    assert!(draws.len() > 1, "each store draws anew: {draws:?}");
}

/// The key's remaining TTL in milliseconds, as Redis reports it.
fn pttl(ask: &mut impl FnMut(&str) -> String, key: &str) -> Duration {
    let reply = ask(&format!("PTTL {key}\r\n"));
    let millis: u64 = reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("PTTL {key}: {reply:?}"));
    Duration::from_millis(millis)
}

#[test]
fn redis_holds_ttls_spread_within_the_jitter() {
    let _serial = memo_tests::serial();
    let Some(server) = Server::try_start(Kind::Redis) else {
        return;
    };
    configure(
        Config::from_url(&server.url())
            .expect("a Redis configuration")
            .namespace("jitter"),
    );
    let mut ask = raw_session(&server);
    // The time between a store and its `PTTL`, generously.
    let slack = Duration::from_secs(5);

    let jittered_options = Options::new().expiration(EXPIRATION).expiration_jitter(0.3);
    let exact_options = Options::new().expiration(EXPIRATION);
    let mut spread = Vec::new();
    let mut exact = Vec::new();
    for i in 0..200 {
        let key = ["redis", &i.to_string()];
        let _: u32 = cache_memoize(key, || i, &jittered_options);
        spread.push(pttl(&mut ask, &make_cache_key(key, &jittered_options)));
        let key = ["redis-exact", &i.to_string()];
        let _: u32 = cache_memoize(key, || i, &exact_options);
        exact.push(pttl(&mut ask, &make_cache_key(key, &exact_options)));
    }
    assert_spread(&spread, 0.3, slack, "redis");
    assert!(
        exact
            .iter()
            .all(|ttl| *ttl <= EXPIRATION && *ttl > EXPIRATION - slack),
        "without jitter: {:?}..{:?}",
        exact.iter().min(),
        exact.iter().max()
    );

    // With a stale window, the backend holds the entry for the jittered
    // expiration plus the whole window.
    let window = Duration::from_secs(500);
    let options = jittered_options.stale_while_revalidate(window);
    let mut held = Vec::new();
    for i in 0..200 {
        let key = ["redis-stale", &i.to_string()];
        let _: u32 = cache_memoize(key, || i, &options);
        held.push(pttl(&mut ask, &make_cache_key(key, &options)) - window);
    }
    assert_spread(&held, 0.3, slack, "redis, stale");
}
