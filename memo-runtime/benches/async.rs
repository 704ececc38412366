//! memo's async API against the raw async clients underneath it, over
//! loopback, on real memcached and Redis servers started by this bench.
//!
//! - `async_hit/<backend>/<tasks>/memo` and `.../raw` — hit throughput with
//!   1, 64 and 512 concurrent tasks on one multi-thread runtime, every task
//!   reading the same stored ~110-byte record: `cache_memoize_async` versus
//!   the same `GET` of the very bytes memo stored. The raw Redis client is
//!   the `redis` crate's multiplexed async connection (one, cloned into each
//!   task); the raw memcached client is a minimal text-protocol `get` over
//!   one tokio `TcpStream` per task. `memo` runs with the default options,
//!   where concurrent calls for one key share a lookup (coalescing);
//!   `memo_coalesce_off` makes one lookup per call, as the raw clients do,
//!   and `memo_coalesce_off_pool512` does so with `pool_size=512`.
//!   `async_hit/redis/<tasks>/cached` is what a user would pick instead:
//!   the `cached` crate's `AsyncRedisCache` on the same server, reading
//!   the same record (its own entry, in its own format).
//!   Throughput is in operations per second.
//! - `latency/<backend>/sync` and `.../async` — one caller, sequential hits:
//!   `cache_memoize` versus `cache_memoize_async` on a current-thread
//!   runtime, same server, same entry.
//! - Printed once, not sampled (criterion has no shape for them):
//!   `stampede` — 1,000 tasks on one cold key whose computation takes
//!   100 ms: how many computations ran and the wall time; the same with
//!   `lock` across 4 processes (this bench re-run as workers) × 100 tasks;
//!   `heartbeat` — the
//!   largest interval seen by a task ticking every 5 ms on a current-thread
//!   runtime while memo stores and loads a 64 MiB `large_data` value on
//!   Redis, and while a server accepts connections and never answers
//!   (`timeout_ms=500`).
//!
//! Run with `cargo bench -p memo-runtime --features async,memcached,redis --bench async`
//! (with `MEMO_BENCH_SAMPLED_ONLY=1`, only the sampled benchmarks run; with
//! `MEMO_BENCH_HEARTBEAT_ONLY=1`, only the 64 MiB heartbeat through
//! `cache_memoize_async`).

// A hand-written `main` drives criterion; it needs no docs.
#![allow(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cached::{AsyncRedisCache, ConcurrentCachedAsync};
use criterion::{Criterion, Throughput};
use memo_runtime::{
    Config, LockOptions, Options, cache_memoize, cache_memoize_async, configure, make_cache_key,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;
#[path = "support/mod.rs"]
mod support;

use servers::Server;

const LARGE: usize = 64 * 1024 * 1024;
const KEY: [&str; 3] = ["bench", "async-profile", "42"];
const CONCURRENCY: [usize; 3] = [1, 64, 512];
/// Set in the environment of this bench's own child processes for the
/// cross-process stampede: `<url> <key> <start, ms since the epoch>`.
/// The key of the entry `cached` reads.
const CACHED_KEY: u64 = 42;
const WORKER: &str = "MEMO_ASYNC_BENCH_STAMPEDE_WORKER";
const PROCESSES: usize = 4;
const TASKS_PER_PROCESS: usize = 100;

/// A typical memoized result: a small record, about 110 bytes encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
    bio: String,
}

fn profile() -> Profile {
    Profile {
        id: 42,
        name: "Ada Lovelace".to_owned(),
        email: "ada@example.com".to_owned(),
        roles: vec!["admin".to_owned(), "reviewer".to_owned()],
        score: 0.97,
        bio: "Analyst, metaphysician, and founder of scientific computing.".to_owned(),
    }
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One memcached connection speaking just enough of the text protocol to
/// `get` one key that is stored.
struct RawMemcached {
    stream: BufReader<TcpStream>,
    line: String,
    value: Vec<u8>,
}

impl RawMemcached {
    async fn connect(address: &str) -> RawMemcached {
        let stream = TcpStream::connect(address)
            .await
            .expect("memcached answers");
        stream.set_nodelay(true).expect("nodelay");
        RawMemcached {
            stream: BufReader::new(stream),
            line: String::new(),
            value: Vec::new(),
        }
    }

    /// The length of the stored value.
    async fn get(&mut self, key: &str) -> usize {
        let request = format!("get {key}\r\n");
        self.stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("sent");
        self.line.clear();
        self.stream.read_line(&mut self.line).await.expect("header");
        let len: usize = self
            .line
            .trim_end()
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a VALUE line, got {:?}", self.line));
        self.value.resize(len + 2, 0);
        self.stream.read_exact(&mut self.value).await.expect("data");
        self.line.clear();
        self.stream.read_line(&mut self.line).await.expect("END");
        assert_eq!(self.line, "END\r\n");
        len
    }
}

/// Runs `ops` operations spread over `tasks` tasks on `rt` and returns the
/// time they took, scaled to exactly `ops` (each task runs the same count).
fn spread<S, F, Fut>(rt: &Runtime, tasks: usize, ops: u64, state: &mut Vec<S>, op: F) -> Duration
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut,
    Fut: Future<Output = S> + Send + 'static,
{
    let per_task = ops.div_ceil(tasks as u64).max(1);
    let elapsed = rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = state
            .drain(..)
            .map(|s| tokio::spawn(op(s, per_task)))
            .collect();
        for handle in handles {
            state.push(handle.await.expect("a task"));
        }
        start.elapsed()
    });
    elapsed.mul_f64(ops as f64 / (per_task * tasks as u64) as f64)
}

fn hit_throughput(c: &mut Criterion, rt: &Runtime, name: &str, server: &Server) {
    configure(Config::from_url(&server.url()).expect("a valid URL"));
    let options: &'static Options = Box::leak(Box::new(Options::new()));
    let uncoalesced: &'static Options = Box::leak(Box::new(Options::new().coalesce(false)));
    let stored: Profile = rt.block_on(cache_memoize_async(KEY, || async { profile() }, options));
    assert_eq!(stored, profile());
    let full_key: &'static str = Box::leak(make_cache_key(KEY, options).into_boxed_str());
    let redis_conn = if name == "redis" {
        let client = redis::Client::open(server.url()).expect("a valid URL");
        Some(
            rt.block_on(client.get_multiplexed_async_connection())
                .expect("redis answers"),
        )
    } else {
        None
    };
    // What a user would pick instead: `cached`'s async Redis store, on its
    // default multiplexed connection.
    let cached_store = (name == "redis").then(|| {
        rt.block_on(async {
            let cache = AsyncRedisCache::<u64, Profile>::builder("memo-bench")
                .connection_string(&server.url())
                .ttl(Duration::from_secs(3600))
                .build()
                .await
                .expect("cached connects");
            cache
                .async_cache_set(CACHED_KEY, profile())
                .await
                .expect("cached stores");
            cache
        })
    });

    for tasks in CONCURRENCY {
        let mut group = c.benchmark_group(format!("async_hit/{name}/{tasks}"));
        group.throughput(Throughput::Elements(1));
        // Coalescing joins concurrent calls for one key before the lookup,
        // so with it on, tasks hitting one key share GETs; with it off
        // every call makes its own, as the raw client does.
        for (variant, options) in [("memo", options), ("memo_coalesce_off", uncoalesced)] {
            group.bench_function(variant, |b| {
                let mut slots: Vec<()> = vec![(); tasks];
                b.iter_custom(|ops| {
                    spread(rt, tasks, ops, &mut slots, |(), n| async move {
                        for _ in 0..n {
                            let value: Profile = cache_memoize_async(
                                KEY,
                                || async { unreachable!("a hit") },
                                options,
                            )
                            .await;
                            std::hint::black_box(value);
                        }
                    })
                });
            });
        }
        // Above `pool_size` (16 by default) concurrent calls, each extra
        // call opens a connection and closes it after; a pool as large as
        // the task count shows what that churn costs.
        configure(
            Config::from_url(&format!("{}?pool_size=512", server.url())).expect("a valid URL"),
        );
        group.bench_function("memo_coalesce_off_pool512", |b| {
            let mut slots: Vec<()> = vec![(); tasks];
            b.iter_custom(|ops| {
                spread(rt, tasks, ops, &mut slots, |(), n| async move {
                    for _ in 0..n {
                        let value: Profile = cache_memoize_async(
                            KEY,
                            || async { unreachable!("a hit") },
                            uncoalesced,
                        )
                        .await;
                        std::hint::black_box(value);
                    }
                })
            });
        });
        configure(Config::from_url(&server.url()).expect("a valid URL"));
        if let Some(cache) = &cached_store {
            group.bench_function("cached", |b| {
                let mut caches = vec![cache.clone(); tasks];
                b.iter_custom(|ops| {
                    spread(rt, tasks, ops, &mut caches, |cache, n| async move {
                        for _ in 0..n {
                            let value = cache.async_cache_get(&CACHED_KEY).await.expect("get");
                            std::hint::black_box(value.expect("stored"));
                        }
                        cache
                    })
                });
            });
        }
        if let Some(conn) = &redis_conn {
            let check: Option<Vec<u8>> = rt
                .block_on(
                    redis::cmd("GET")
                        .arg(full_key)
                        .query_async(&mut conn.clone()),
                )
                .expect("get");
            assert!(check.is_some(), "the raw client reads memo's entry");
            group.bench_function("raw", |b| {
                let mut conns = vec![conn.clone(); tasks];
                b.iter_custom(|ops| {
                    spread(rt, tasks, ops, &mut conns, |mut conn, n| async move {
                        for _ in 0..n {
                            let value: Option<Vec<u8>> = redis::cmd("GET")
                                .arg(full_key)
                                .query_async(&mut conn)
                                .await
                                .expect("get");
                            std::hint::black_box(value.expect("stored"));
                        }
                        conn
                    })
                });
            });
        } else {
            let address = server.address();
            let mut conns: Vec<RawMemcached> = rt.block_on(async {
                let mut conns = Vec::with_capacity(tasks);
                for _ in 0..tasks {
                    conns.push(RawMemcached::connect(&address).await);
                }
                conns
            });
            group.bench_function("raw", |b| {
                b.iter_custom(|ops| {
                    spread(rt, tasks, ops, &mut conns, |mut conn, n| async move {
                        for _ in 0..n {
                            std::hint::black_box(conn.get(full_key).await);
                        }
                        conn
                    })
                });
            });
        }
        group.finish();
    }
}

fn hit_latency(c: &mut Criterion, name: &str, server: &Server) {
    configure(Config::from_url(&server.url()).expect("a valid URL"));
    let options = Options::new();
    let rt = current_thread();
    let stored: Profile = cache_memoize(KEY, profile, &options);
    assert_eq!(stored, profile());
    let mut group = c.benchmark_group(format!("latency/{name}"));
    group.bench_function("sync", |b| {
        b.iter(|| {
            let value: Profile = cache_memoize(KEY, || unreachable!("a hit"), &options);
            value
        });
    });
    group.bench_function("async", |b| {
        b.iter_custom(|ops| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..ops {
                    let value: Profile =
                        cache_memoize_async(KEY, || async { unreachable!("a hit") }, &options)
                            .await;
                    std::hint::black_box(value);
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Spawns `tasks` concurrent calls for `key`, each computing for 100 ms
/// and counting in `computations`; whether every task got the computed
/// value.
async fn cold_callers(
    tasks: usize,
    key: &str,
    options: &'static Options,
    computations: &Arc<AtomicUsize>,
) -> bool {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let computations = Arc::clone(computations);
            let key = key.to_owned();
            tokio::spawn(async move {
                let value: Profile = cache_memoize_async(
                    key.as_str(),
                    || async move {
                        computations.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        profile()
                    },
                    options,
                )
                .await;
                value == profile()
            })
        })
        .collect();
    let mut all_right = true;
    for handle in handles {
        all_right &= handle.await.expect("a task");
    }
    all_right
}

/// 1,000 tasks on one cold key, computing for 100 ms.
fn stampede(rt: &Runtime, name: &str, server: &Server, coalesce: bool) {
    configure(Config::from_url(&server.url()).expect("a valid URL"));
    let options: &'static Options = Box::leak(Box::new(Options::new().coalesce(coalesce)));
    let computations = Arc::new(AtomicUsize::new(0));
    let key = format!("bench:stampede:{coalesce}");
    let (wall, all_right) = rt.block_on(async {
        let start = Instant::now();
        let all_right = cold_callers(1_000, &key, options, &computations).await;
        (start.elapsed(), all_right)
    });
    assert!(all_right, "every task got the computed value");
    println!(
        "stampede/{name}/coalesce={coalesce}: 1000 tasks, {} computation(s), wall {:.1} ms",
        computations.load(Ordering::SeqCst),
        wall.as_secs_f64() * 1e3
    );
}

/// Runs `work` on `rt` next to a task ticking every 5 ms; returns its
/// output, the largest interval between two ticks, and the wall time of
/// `work`.
fn heartbeat<F: Future>(rt: &Runtime, work: F) -> (F::Output, Duration, Duration) {
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut last = Instant::now();
                let mut largest = Duration::ZERO;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let now = Instant::now();
                    largest = largest.max(now - last);
                    last = now;
                }
                largest
            }
        });
        // Let the ticker take its first timestamp before the work starts.
        tokio::task::yield_now().await;
        let start = Instant::now();
        let output = work.await;
        let wall = start.elapsed();
        stop.store(true, Ordering::SeqCst);
        let largest = ticker.await.expect("the ticker");
        (output, largest, wall)
    })
}

fn report(what: &str, largest: Duration, wall: Duration) {
    println!(
        "heartbeat/{what}: largest tick interval {:.1} ms (5 ms period), work took {:.1} ms",
        largest.as_secs_f64() * 1e3,
        wall.as_secs_f64() * 1e3
    );
}

/// On a current-thread runtime the ticker shares the one thread with the
/// work; on the multi-thread runtime (for comparison) it has a worker of
/// its own while memo moves the large value's CPU work off the executor.
///
fn heartbeat_large(redis: &Server, flavor: &str, rt: &Runtime) {
    configure(Config::from_url(&redis.url()).expect("a valid URL"));
    let data = support::noise(LARGE);
    let store = Options::new()
        .large_data(true)
        .compress(false)
        .force_overwrite(true);
    let load = Options::new().large_data(true).compress(false);
    for round in 0..3 {
        let value = data.clone();
        let compute = || async move { value };
        let (stored, largest, wall) = heartbeat(
            rt,
            cache_memoize_async("bench:async-large", compute, &store),
        );
        assert_eq!(stored.len(), LARGE);
        drop(stored);
        report(
            &format!("{flavor}/redis/store_64MiB/{round}"),
            largest,
            wall,
        );
        let empty = || async { Vec::<u8>::new() };
        let (loaded, largest, wall) =
            heartbeat(rt, cache_memoize_async("bench:async-large", empty, &load));
        assert!(loaded == data, "the 64 MiB value reads back whole");
        drop(loaded);
        report(&format!("{flavor}/redis/load_64MiB/{round}"), largest, wall);
    }
}

fn heartbeat_hung(rt: &Runtime) {
    let port = servers::fake_server(|stream, _| {
        // Accept, never answer, keep the connection open.
        std::thread::sleep(Duration::from_secs(3_600));
        drop(stream);
    });
    for scheme in ["memcached", "redis"] {
        configure(
            Config::from_url(&format!("{scheme}://127.0.0.1:{port}?timeout_ms=500"))
                .expect("a valid URL"),
        );
        for round in 0..2 {
            let (value, largest, wall) = heartbeat(
                rt,
                cache_memoize_async(
                    format!("bench:hung:{round}"),
                    || async { 7u64 },
                    &Options::new(),
                ),
            );
            assert_eq!(value, 7, "a hung server costs time, not the value");
            report(
                &format!("current_thread/hung_{scheme}/{round}"),
                largest,
                wall,
            );
        }
    }
}

fn epoch_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// One process of the cross-process stampede: 100 tasks on one cold key
/// with `lock`, all released at the same wall-clock instant as the other
/// processes'; prints how many computations ran here.
fn stampede_worker(spec: &str) {
    let mut parts = spec.split(' ');
    let (Some(url), Some(key), Some(start)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("a worker spec `<url> <key> <start>`, got {spec:?}");
    };
    let start: u128 = start.parse().expect("a start instant");
    configure(Config::from_url(url).expect("a valid URL"));
    let options: &'static Options = Box::leak(Box::new(Options::new().lock(LockOptions::new())));
    let computations = Arc::new(AtomicUsize::new(0));
    let rt = multi_thread();
    let wait = start.saturating_sub(epoch_millis());
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0)));
    let all_right = rt.block_on(cold_callers(TASKS_PER_PROCESS, key, options, &computations));
    assert!(all_right, "every task got the computed value");
    println!("computations={}", computations.load(Ordering::SeqCst));
}

/// 4 processes × 100 tasks on one cold key with `lock`: the computations
/// summed over the processes, and the wall time from the common start to
/// the last exit.
fn stampede_processes(name: &str, server: &Server) {
    let exe = std::env::current_exe().expect("this bench's path");
    // Far enough ahead for every process to be up and connected.
    let start = epoch_millis() + 500;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .env(
                    WORKER,
                    format!("{} bench:stampede:processes {start}", server.url()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("a worker process")
        })
        .collect();
    let mut computations = 0;
    for child in children {
        let output = child.wait_with_output().expect("a worker's output");
        assert!(output.status.success(), "a worker failed");
        let text = String::from_utf8_lossy(&output.stdout);
        computations += text
            .lines()
            .find_map(|line| line.strip_prefix("computations="))
            .and_then(|n| n.parse::<usize>().ok())
            .expect("a worker's count");
    }
    let wall = epoch_millis().saturating_sub(start);
    println!(
        "stampede_processes/{name}/lock: {PROCESSES} processes x {TASKS_PER_PROCESS} tasks, \
         {computations} computation(s), wall {wall} ms from the common start"
    );
}

fn main() {
    if let Ok(spec) = std::env::var(WORKER) {
        stampede_worker(&spec);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let memcached = Server::memcached();
    let redis = Server::redis();
    // Only the 64 MiB heartbeat experiment, on both runtime flavours.
    if std::env::var_os("MEMO_BENCH_HEARTBEAT_ONLY").is_some() {
        heartbeat_large(&redis, "current_thread", &current_thread());
        heartbeat_large(&redis, "multi_thread", &multi_thread());
        return;
    }
    let rt = multi_thread();
    for (name, server) in [("memcached", &memcached), ("redis", &redis)] {
        hit_throughput(&mut c, &rt, name, server);
    }
    for (name, server) in [("memcached", &memcached), ("redis", &redis)] {
        hit_latency(&mut c, name, server);
    }
    // For profiling one sampled benchmark: skips the printed experiments.
    if std::env::var_os("MEMO_BENCH_SAMPLED_ONLY").is_some() {
        c.final_summary();
        return;
    }
    for (name, server) in [("memcached", &memcached), ("redis", &redis)] {
        stampede(&rt, name, server, true);
        stampede(&rt, name, server, false);
        stampede_processes(name, server);
    }
    let single = current_thread();
    heartbeat_large(&redis, "current_thread", &single);
    heartbeat_large(&redis, "multi_thread", &rt);
    heartbeat_hung(&single);
    c.final_summary();
}
