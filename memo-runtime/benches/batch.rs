//! A batch of 100 keys against 100 single calls, with the same mix of hits
//! and misses, over loopback, on memcached and Redis (each started by this
//! bench on a free port).
//!
//! - `batch/<backend>/many` — one `cache_memoize_many` of 100 keys, 90 of
//!   them stored and 10 new ones (a miss each, computed in one call);
//! - `batch/<backend>/single` — the same 100 keys through 100
//!   `cache_memoize` calls, 90 hits and 10 misses;
//! - `batch/<backend>/raw_get_many` — the floor: one `get_many`, through
//!   the same client, of the 200 keys a batch of 100 hits reads (each
//!   entry and its version key).
//!
//! Each iteration takes 10 keys no iteration used before, so that every
//! one has its 10 misses. Printed once, not sampled: the backend calls of
//! one iteration of each, counted by a wrapper around the client; each is
//! one round trip (a write of the pipelined requests, then their
//! replies), since the batch's requests are far below the clients'
//! pipelining budgets.
//!
//! Run with `cargo bench -p memo-runtime --features memcached,redis --bench batch`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use memo_runtime::{
    Backend, BackendError, Config, MemcachedBackend, MemoryBackend, Options, RedisBackend,
    cache_memoize, cache_memoize_many, config, configure, make_cache_key,
};
use serde::{Deserialize, Serialize};

#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;

use servers::Server;

const KEYS: usize = 100;
const MISSES: usize = 10;

/// A typical memoized result: a small record with a few strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: "Ada Lovelace".to_owned(),
        email: "ada@example.com".to_owned(),
        roles: vec!["admin".to_owned(), "reviewer".to_owned()],
    }
}

/// A client that counts the calls made to it.
struct Counted<B> {
    inner: B,
    calls: Arc<AtomicU64>,
}

impl<B: Backend> Counted<B> {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl<B: Backend> Backend for Counted<B> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.count();
        self.inner.get(key)
    }
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.count();
        self.inner.get_many(keys)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.count();
        self.inner.set(key, value, ttl)
    }
    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        self.count();
        self.inner.set_many(items, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.count();
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.count();
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.count();
        self.inner.delete(key)
    }
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.count();
        self.inner.delete_if_value(key, expected)
    }
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.count();
        self.inner.touch_if_value(key, expected, ttl)
    }
}

/// The keys of one iteration: the 90 stored ones, then 10 never used.
fn iteration_keys(mode: &str, iteration: u64) -> Vec<String> {
    (0..KEYS - MISSES)
        .map(|i| format!("bench:batch:hot:{i}"))
        .chain((0..MISSES).map(|i| format!("bench:batch:{mode}:{iteration}:{i}")))
        .collect()
}

fn many(keys: Vec<String>, options: &Options) -> Vec<Profile> {
    let values: Vec<Profile> = cache_memoize_many(
        keys,
        |missing| missing.iter().map(|&i| profile(i as u64)).collect(),
        options,
    );
    assert_eq!(values.len(), KEYS);
    values
}

fn single(keys: Vec<String>, options: &Options) -> Vec<Profile> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| cache_memoize(key.as_str(), || profile(i as u64), options))
        .collect()
}

fn bench(c: &mut Criterion, name: &str, backend: impl Backend) {
    let calls = Arc::new(AtomicU64::new(0));
    configure(Config::new(Counted {
        inner: backend,
        calls: Arc::clone(&calls),
    }));
    let options = Options::new();
    // The 90 hits of every iteration.
    let _ = many(iteration_keys("warm", 0), &options);

    let trips = |run: fn(Vec<String>, &Options) -> Vec<Profile>, mode: &str| {
        let before = calls.load(Ordering::Relaxed);
        let values = run(iteration_keys(mode, u64::MAX), &options);
        assert_eq!(values[KEYS - 1], profile((KEYS - 1) as u64));
        calls.load(Ordering::Relaxed) - before
    };
    let batched = trips(many, "count-many");
    let singles = trips(single, "count-single");
    println!(
        "round trips on {name} for {KEYS} keys, {MISSES} misses: batch {batched}, single calls {singles} ({:.1}x)",
        singles as f64 / batched as f64
    );

    let mut group = c.benchmark_group(format!("batch/{name}"));
    let mut iteration = 0;
    group.bench_function("many", |b| {
        b.iter(|| {
            iteration += 1;
            many(iteration_keys("many", iteration), &options)
        });
    });
    let mut iteration = 0;
    group.bench_function("single", |b| {
        b.iter(|| {
            iteration += 1;
            single(iteration_keys("single", iteration), &options)
        });
    });
    // The floor: one `get_many` of the keys a hit of the 100 reads (each
    // entry and its version key), through the same client.
    let stored: Vec<String> = iteration_keys("warm", 0)
        .iter()
        .flat_map(|key| {
            let key = make_cache_key(key.as_str(), &options);
            [format!("\\V:{key}"), key]
        })
        .collect();
    group.bench_function("raw_get_many", |b| {
        let keys: Vec<&str> = stored.iter().map(String::as_str).collect();
        b.iter(|| config().backend().get_many(&keys).expect("get_many"));
    });
    group.finish();
}

fn batch(c: &mut Criterion) {
    let memcached = Server::memcached();
    bench(
        c,
        "memcached",
        MemcachedBackend::new([memcached.address()]).expect("a valid address"),
    );
    let redis = Server::redis();
    bench(
        c,
        "redis",
        RedisBackend::new(&redis.address()).expect("a valid address"),
    );
    configure(Config::new(MemoryBackend::new()));
}

criterion_group!(benches, batch);
criterion_main!(benches);
