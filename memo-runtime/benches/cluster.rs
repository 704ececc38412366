//! A 64 MiB `large_data` value on a 3-master Redis Cluster versus a single
//! Redis server, side by side in one run, over loopback (both started by
//! this bench on free ports).
//!
//! - `cluster_large_data/<target>/load` and `.../load_async` — the value
//!   loaded with `cache_memoize` (blocking: the masters of a batch in
//!   parallel, from a thread per extra master) and `cache_memoize_async`
//!   (the masters of a batch in parallel on the task) from `single` (one `redis-server`) and `cluster` (three
//!   masters, no replicas). Compression off, random bytes, default chunk
//!   size; throughput in bytes per second.
//! - `.../store` — the same value stored (`force_overwrite`).
//! - Printed once, not sampled: the round trips of one load and one store
//!   on each target, counted by the client (each a pipelined write and the
//!   reading of its replies).
//!
//! Run with `cargo bench -p memo-runtime --features redis,async,__fuzz --bench cluster`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use memo_runtime::__fuzz::redis_round_trips;
use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, cache_memoize_async, configure};

#[path = "../../tests/src/cluster.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod cluster;
#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;
// `cluster` starts TLS clusters too when the `tls` feature is on.
#[path = "support/mod.rs"]
mod support;
#[cfg(feature = "tls")]
#[path = "../../tests/src/tls.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod tls;

const LARGE: usize = 64 * 1024 * 1024;
const KEY: &str = "bench:cluster:large";

fn large_data(c: &mut Criterion, name: &str, url: &str, data: &[u8]) {
    configure(Config::from_url(url).expect("a valid URL"));
    let store = Options::new()
        .large_data(true)
        .compress(false)
        .force_overwrite(true);
    let load = Options::new().large_data(true).compress(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let before = redis_round_trips();
    let _: Vec<u8> = cache_memoize(KEY, || data.to_vec(), &store);
    let stored = redis_round_trips() - before;
    let before = redis_round_trips();
    let loaded: Vec<u8> = cache_memoize(KEY, || unreachable!("stored"), &load);
    let loaded_trips = redis_round_trips() - before;
    assert!(loaded == data, "the 64 MiB value reads back whole");
    let before = redis_round_trips();
    let loaded: Vec<u8> = runtime.block_on(cache_memoize_async(
        KEY,
        || async { unreachable!("stored") },
        &load,
    ));
    let async_trips = redis_round_trips() - before;
    assert!(loaded == data, "the 64 MiB value reads back whole, async");
    drop(loaded);
    println!(
        "round trips on {name}: store {stored}, load {loaded_trips}, async load {async_trips}"
    );

    let mut group = c.benchmark_group(format!("cluster_large_data/{name}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(LARGE as u64));
    group.bench_function("load", |b| {
        b.iter(|| {
            let value: Vec<u8> = cache_memoize(KEY, || unreachable!("a hit"), &load);
            value.len()
        });
    });
    group.bench_function("load_async", |b| {
        b.iter(|| {
            let value: Vec<u8> = runtime.block_on(cache_memoize_async(
                KEY,
                || async { unreachable!("a hit") },
                &load,
            ));
            value.len()
        });
    });
    group.bench_function("store", |b| {
        b.iter_batched(
            || data.to_vec(),
            |value| {
                let stored: Vec<u8> = cache_memoize(KEY, move || value, &store);
                stored.len()
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn side_by_side(c: &mut Criterion) {
    let data = support::noise(LARGE);
    let single = servers::Server::redis();
    let cluster = cluster::Cluster::start(3, 0);
    large_data(c, "single", &single.url(), &data);
    large_data(c, "cluster", &cluster.url(), &data);
    configure(Config::new(MemoryBackend::new()));
}

criterion_group!(benches, side_by_side);
criterion_main!(benches);
