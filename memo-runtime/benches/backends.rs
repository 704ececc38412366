//! memo against the bare client underneath it, over loopback, side by side.
//!
//! For each of memcached and Redis (started by this bench on free ports):
//!
//! - `hit/<backend>/memo` — a memoized hit of a small value through
//!   `cache_memoize`, versus `hit/<backend>/raw_get` — one `get` of the very
//!   bytes memo stored, under the same key, with the same client: memo's
//!   built-in memcached client used directly through the `Backend` trait,
//!   and the `redis` crate's own connection for Redis. The ratio is memo's
//!   overhead (key building, envelope check, decoding) over the floor.
//! - `hit/<backend>/memo_2_tags` — the same hit of an entry stored with two
//!   tags, whose tokens are read in the same request.
//! - `hit/<backend>/raw_get_2_keys` — memo's own client reading two stored
//!   keys in one request (`Backend::get_many`): what a lookup asks of the
//!   server, since it reads the entry with its version token.
//! - `barrier/<backend>/miss_store` (and `_2_tags`) — a miss and its store
//!   after an `invalidate`, versus `raw_get_then_set`; `invalidate_tag`
//!   versus `raw_set` of a token.
//! - `large_data/<backend>/memo_store` and `memo_load` — a 64 MiB value
//!   stored (`force_overwrite`) and loaded with `large_data`, versus
//!   `raw_set_many` and `raw_get_many` of the same 64 MiB in chunks of
//!   memo's default chunk size. Compression is off on both sides so the
//!   bytes on the wire match; the value is random, which zlib could not
//!   shrink anyway.
//!
//! Run with `cargo bench -p memo-runtime --features memcached,redis --bench backends`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use memo_runtime::DEFAULT_CHUNK_SIZE;
use memo_runtime::{
    Backend, Config, MemcachedBackend, MemoryBackend, Options, RedisBackend, cache_memoize,
    configure, make_cache_key,
};
use serde::{Deserialize, Serialize};

#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;
#[path = "support/mod.rs"]
mod support;

use servers::Server;

const LARGE: usize = 64 * 1024 * 1024;
const MINUTE: Duration = Duration::from_secs(60);

/// A typical memoized result: a small record with a few strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
}

fn profile() -> Profile {
    Profile {
        id: 42,
        name: "Ada Lovelace".to_owned(),
        email: "ada@example.com".to_owned(),
        roles: vec!["admin".to_owned(), "reviewer".to_owned()],
        score: 0.97,
    }
}

/// A raw client's `get` of one key that must be stored.
type RawGet = Box<dyn FnMut(&str) -> Vec<u8>>;

/// One backend under test: how memo reaches it, and the raw client.
struct Target {
    name: &'static str,
    url: String,
    raw_get: RawGet,
    raw: Box<dyn Backend>,
    _server: Server,
}

fn memcached() -> Target {
    let server = Server::memcached();
    let client = MemcachedBackend::new([server.address()]).expect("a valid address");
    let raw = MemcachedBackend::new([server.address()]).expect("a valid address");
    Target {
        name: "memcached",
        url: server.url(),
        raw_get: Box::new(move |key| client.get(key).expect("get").expect("stored")),
        raw: Box::new(raw),
        _server: server,
    }
}

fn redis() -> Target {
    let server = Server::redis();
    let client = redis::Client::open(server.url()).expect("a valid URL");
    let mut conn = client.get_connection().expect("redis answers");
    Target {
        name: "redis",
        url: server.url(),
        raw_get: Box::new(move |key| {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<Vec<u8>>>(&mut conn)
                .expect("get")
                .expect("stored")
        }),
        raw: Box::new(RedisBackend::new(&server.address()).expect("a valid address")),
        _server: server,
    }
}

fn hit(c: &mut Criterion, target: &mut Target) {
    configure(Config::from_url(&target.url).expect("a valid URL"));
    let options = Options::new();
    let key = ["bench", "profile", "42"];
    let stored: Profile = cache_memoize(key, profile, &options);
    assert_eq!(stored, profile());
    let full_key = make_cache_key(key, &options);

    let mut group = c.benchmark_group(format!("hit/{}", target.name));
    group.bench_function("memo", |b| {
        b.iter(|| {
            let value: Profile = cache_memoize(key, || unreachable!("a hit"), &options);
            value
        });
    });
    let tagged = Options::new().tags(["bench:tag:a", "bench:tag:b"]);
    let tagged_key = ["bench", "profile", "tagged"];
    let _: Profile = cache_memoize(tagged_key, profile, &tagged);
    group.bench_function("memo_2_tags", |b| {
        b.iter(|| {
            let value: Profile = cache_memoize(tagged_key, || unreachable!("a hit"), &tagged);
            value
        });
    });
    let raw_get = &mut target.raw_get;
    group.bench_function("raw_get", |b| b.iter(|| raw_get(&full_key)));
    let two_keys = [full_key.as_str(), &make_cache_key(tagged_key, &tagged)];
    let raw = &target.raw;
    group.bench_function("raw_get_2_keys", |b| {
        b.iter(|| {
            let values = raw.get_many(&two_keys).expect("get_many");
            assert!(values.iter().all(Option::is_some), "both stored");
            values
        });
    });
    group.finish();
}

/// What the invalidation barrier costs a miss, and a tag's invalidation,
/// next to the raw client's `get` and `set` of the same bytes.
fn barrier(c: &mut Criterion, target: &mut Target) {
    configure(Config::from_url(&target.url).expect("a valid URL"));
    let plain = Options::new();
    let tagged = Options::new().tags(["bench:tag:a", "bench:tag:b"]);
    let key = ["bench", "profile", "missed"];
    let _: Profile = cache_memoize(key, profile, &plain);
    let full_key = make_cache_key(key, &plain);
    let bytes = target.raw.get(&full_key).expect("get").expect("stored");

    let mut group = c.benchmark_group(format!("barrier/{}", target.name));
    for (name, options) in [("miss_store", &plain), ("miss_store_2_tags", &tagged)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                // Not timed: the entry goes, its tokens stay.
                || memo_runtime::invalidate(key, options).expect("invalidate"),
                |()| {
                    let value: Profile = cache_memoize(key, profile, options);
                    value
                },
                BatchSize::SmallInput,
            );
        });
    }
    let raw = &target.raw;
    group.bench_function("raw_get_then_set", |b| {
        b.iter(|| {
            let _ = raw.get(&full_key).expect("get");
            raw.set(&full_key, &bytes, MINUTE).expect("set");
        });
    });
    group.bench_function("invalidate_tag", |b| {
        b.iter(|| memo_runtime::invalidate_tag("bench:tag:a", &plain).expect("invalidate"));
    });
    group.bench_function("raw_set", |b| {
        b.iter(|| raw.set("bench:raw:token", &[7u8; 8], MINUTE).expect("set"));
    });
    group.finish();
}

fn large_data(c: &mut Criterion, target: &mut Target) {
    configure(Config::from_url(&target.url).expect("a valid URL"));
    let data = support::noise(LARGE);
    let store = Options::new()
        .large_data(true)
        .compress(false)
        .force_overwrite(true);
    let load = Options::new().large_data(true).compress(false);
    let keys: Vec<String> = (0..LARGE.div_ceil(DEFAULT_CHUNK_SIZE))
        .map(|i| format!("bench:raw:{i}"))
        .collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .map(String::as_str)
        .zip(data.chunks(DEFAULT_CHUNK_SIZE))
        .collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let mut group = c.benchmark_group(format!("large_data/{}", target.name));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(LARGE as u64));
    group.bench_function("memo_store", |b| {
        b.iter_batched(
            || data.clone(),
            |value| {
                let stored: Vec<u8> = cache_memoize("bench:large", move || value, &store);
                stored.len()
            },
            BatchSize::PerIteration,
        );
    });
    // Stored here too, so that `memo_load` runs alone under a filter.
    let _: Vec<u8> = cache_memoize("bench:large", || data.clone(), &store);
    let loaded: Vec<u8> = cache_memoize("bench:large", || unreachable!("stored"), &load);
    assert!(loaded == data, "the 64 MiB value reads back whole");
    drop(loaded);
    group.bench_function("memo_load", |b| {
        b.iter(|| {
            let value: Vec<u8> = cache_memoize("bench:large", || unreachable!("a hit"), &load);
            value.len()
        });
    });
    let raw = &target.raw;
    group.bench_function("raw_set_many", |b| {
        b.iter(|| raw.set_many(&items, MINUTE).expect("stored"));
    });
    group.bench_function("raw_get_many", |b| {
        b.iter(|| {
            let values = raw.get_many(&key_refs).expect("read");
            values
                .iter()
                .map(|v| v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
        });
    });
    group.finish();
}

fn backends(c: &mut Criterion) {
    for mut target in [memcached(), redis()] {
        hit(c, &mut target);
        barrier(c, &mut target);
        large_data(c, &mut target);
    }
    configure(Config::new(MemoryBackend::new()));
}

criterion_group!(benches, backends);
criterion_main!(benches);
