//! Hot keys, side by side with `cached`'s `#[cached]` in-process memoization.
//!
//! - `hot_hit`: one hit of a ~100-byte struct: memo's typed local copy
//!   (`#[cache_memoize(local = ..)]`), memo's encoded local copy
//!   (`Options::local`), a plain hit on the embedded store, and `#[cached]`.
//! - `hot_hit_2_threads_1000_keys`, `hot_hit_8_threads_1000_keys`: the same
//!   over 1,000 warm keys from 2 and 8 threads at once; the time shown is
//!   the wall time of one call on each thread, made in parallel, so the
//!   throughput is the threads' calls together.
//! - The steady load (not criterion): `MEMO_STEADY_LOAD=1` runs 200 calls/s
//!   for 20 s (`MEMO_STEADY_SECS`) of a 100 ms computation expiring every
//!   5 s, without and with `refresh_ahead` and with `stale` (through
//!   `cache_memoize` and through `cache_memoize_detached`, whose won refreshes
//!   run in the background), on the embedded
//!   store (or `MEMO_CACHE_URL`, with the backend's cargo feature), and prints caller latencies and
//!   computations per expiry period.
//!
//! Run with `cargo bench -p memo-runtime --bench hotkeys` and
//! `MEMO_STEADY_LOAD=1 cargo bench -p memo-runtime --bench hotkeys`.

// `criterion_main!`-style entry points have no docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cached::proc_macro::cached;
use criterion::{Criterion, Throughput};
use memo_runtime::{
    Config, MemoryBackend, Options, cache_memoize, cache_memoize_detached, configure,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
    active: bool,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: "Ada Lovelace".into(),
        email: "ada@analytical.example".into(),
        roles: vec!["admin".into(), "reviewer".into(), "ops".into()],
        score: 98.25,
        active: true,
    }
}

#[memo_runtime::cache_memoize(key = "bench:local:{id}", local = 3600)]
fn memo_local(id: u64) -> Profile {
    profile(id)
}

#[memo_runtime::cache_memoize(key = "bench:plain:{id}")]
fn memo_plain(id: u64) -> Profile {
    profile(id)
}

fn memo_encoded_local(id: u64) -> Profile {
    let options = Options::new().local(Duration::from_secs(3600));
    cache_memoize(
        ["bench:encoded", id.to_string().as_str()],
        || profile(id),
        &options,
    )
}

// `by_key`: concurrent misses of one key compute once, as memo's do.
#[cached(sync_writes = "by_key")]
fn cached_profile(id: u64) -> Profile {
    profile(id)
}

type Call = fn(u64) -> Profile;

const CALLS: [(&str, Call); 4] = [
    ("memo_local_typed", memo_local),
    ("memo_local_encoded", memo_encoded_local),
    ("memo_plain_embedded", memo_plain),
    ("cached_proc_macro", cached_profile),
];

fn configure_memory() {
    configure(Config::new(MemoryBackend::with_max_bytes(1 << 30)));
}

fn hot_hit(c: &mut Criterion) {
    configure_memory();
    let mut group = c.benchmark_group("hot_hit");
    group.throughput(Throughput::Elements(1));
    for (name, call) in CALLS {
        black_box(call(7));
        group.bench_function(name, |b| b.iter(|| black_box(call(black_box(7)))));
    }
    group.finish();
}

fn hot_hit_threads(c: &mut Criterion, threads: u64) {
    configure_memory();
    let mut group = c.benchmark_group(format!("hot_hit_{threads}_threads_1000_keys"));
    group.throughput(Throughput::Elements(threads));
    for (name, call) in CALLS {
        for key in 0..1_000 {
            black_box(call(key));
        }
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                thread::scope(|scope| {
                    for t in 0..threads {
                        scope.spawn(move || {
                            for i in 0..iters {
                                black_box(call((i * 7 + t * 131) % 1_000));
                            }
                        });
                    }
                });
                started.elapsed()
            });
        });
    }
    group.finish();
}

/// One steady-load run's figures.
struct Steady {
    p50: Duration,
    p99: Duration,
    max: Duration,
    waited: usize,
    computations: usize,
    calls: usize,
}

/// `owned`: through `cache_memoize_detached`, whose won refreshes run in the
/// background, rather than `cache_memoize`.
fn steady_run(options: &Options, seconds: u64, key: &str, owned: bool) -> Steady {
    const CALLERS: u64 = 20;
    const PERIOD: Duration = Duration::from_millis(100); // 20 callers × 10/s = 200/s
    let computations = Arc::new(AtomicUsize::new(0));
    let latencies = Mutex::new(Vec::new());
    let begin = Instant::now();
    let end = begin + Duration::from_secs(seconds);
    thread::scope(|scope| {
        for caller in 0..CALLERS {
            let (computations, latencies) = (&computations, &latencies);
            scope.spawn(move || {
                let mut mine = Vec::new();
                let mut next = Instant::now() + PERIOD * caller as u32 / CALLERS as u32;
                while next < end {
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                    let started = Instant::now();
                    let counter = Arc::clone(computations);
                    let compute = move || {
                        thread::sleep(Duration::from_millis(100));
                        counter.fetch_add(1, Ordering::Relaxed) as u64
                    };
                    let value: u64 = if owned {
                        cache_memoize_detached(key, compute, options)
                    } else {
                        cache_memoize(key, compute, options)
                    };
                    black_box(value);
                    mine.push((started.elapsed(), started - begin));
                    next += PERIOD;
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let calls: Vec<(Duration, Duration)> = latencies.into_inner().unwrap();
    // Callers of the first second wait for the cold start, whatever the
    // option; the waits that matter come after.
    let waited = calls
        .iter()
        .filter(|(took, at)| *at >= Duration::from_secs(1) && *took >= Duration::from_millis(50))
        .count();
    let mut latencies: Vec<Duration> = calls.iter().map(|(took, _)| *took).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Steady {
        p50: at(0.50),
        p99: at(0.99),
        max: *latencies.last().unwrap(),
        waited,
        computations: computations.load(Ordering::Relaxed),
        calls: latencies.len(),
    }
}

fn steady_load() {
    let seconds: u64 = std::env::var("MEMO_STEADY_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(20);
    match std::env::var("MEMO_CACHE_URL") {
        Ok(url) => configure(Config::from_url(&url).expect("MEMO_CACHE_URL")),
        Err(_) => configure_memory(),
    }
    let expiration = Duration::from_secs(5);
    let plain = Options::new().expiration(expiration);
    let ahead = plain.clone().refresh_ahead(1.0);
    let stale = plain.clone().stale_while_revalidate(Duration::from_secs(5));
    let runs = [
        ("no option", plain, false),
        ("refresh_ahead(1.0)", ahead.clone(), false),
        ("stale_while_revalidate(5 s)", stale.clone(), false),
        ("refresh_ahead(1.0), owned", ahead, true),
        ("stale_while_revalidate(5 s), owned", stale, true),
    ];
    println!(
        "steady load: 200 calls/s for {seconds} s, compute 100 ms, expiration 5 s ({} periods)",
        seconds / 5
    );
    println!(
        "| option | calls | p50 | p99 | max | callers after the cold start that waited ≥ 50 ms | computations per 5 s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, (name, options, owned)) in runs.iter().enumerate() {
        let run = steady_run(options, seconds, &format!("bench:steady:{i}"), *owned);
        println!(
            "| {name} | {} | {:.1?} | {:.1?} | {:.1?} | {} | {:.2} |",
            run.calls,
            run.p50,
            run.p99,
            run.max,
            run.waited,
            run.computations as f64 / (seconds as f64 / 5.0),
        );
    }
}

fn main() {
    if std::env::var_os("MEMO_STEADY_LOAD").is_some() {
        steady_load();
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    hot_hit(&mut criterion);
    hot_hit_threads(&mut criterion, 2);
    hot_hit_threads(&mut criterion, 8);
    criterion.final_summary();
}
