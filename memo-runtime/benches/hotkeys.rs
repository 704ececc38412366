//! Hot keys, side by side with `cached`'s `#[cached]` in-process memoization.
//!
//! - `hot_hit`: one hit of a ~100-byte struct: memo's typed local copy
//!   (`#[cache_memoize(local = ..)]`), memo's encoded local copy
//!   (`Options::local`), a plain hit on the embedded store, `#[cached]`,
//!   and two floors, not memo: the work no local copy can skip
//!   (`local_floor`) and the work no hit of a stored value can skip
//!   (`plain_floor`).
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
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cached::proc_macro::cached;
use criterion::{Criterion, Throughput};
use memo_runtime::{
    Backend, Config, MemoryBackend, Options, cache_memoize, cache_memoize_detached, configure,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// The envelope's header, before the value's bytes.
const HEADER_LEN: usize = 36;
/// The envelope's checksum, after the value's bytes.
const CHECKSUM_LEN: usize = 16;

/// The envelope in a stored entry, after the guard of version tokens (a
/// magic of 4 bytes, their count, and 8 bytes each).
fn envelope(stored: &[u8]) -> &[u8] {
    &stored[5 + 8 * usize::from(stored[4])..]
}

/// Not memo: what no hit of a stored value can skip, however it is built,
/// done with the same crates on the bytes `memo_plain` stored. It reads the
/// entry and its version token from the embedded store in one `get_many`,
/// matches the token, computes the SHA-256 the envelope is checked by (over
/// the full key, the header and the value's bytes), and decodes a fresh
/// value. The plain hit's own further steps (resolving the call, judging
/// the stamp, the barrier, the counters) come on top.
fn plain_floor(id: u64) -> Profile {
    let key = format!("bench:plain:{id}");
    let version = format!("\\V:{key}");
    let [stored, token] = <[_; 2]>::try_from(
        store()
            .get_many(&[&key, &version])
            .expect("the embedded store"),
    )
    .expect("two answers");
    let (stored, token) = (stored.expect("warmed"), token.expect("warmed"));
    assert_eq!(stored[5..13], token[..], "the entry's own token");
    let bytes = envelope(&stored);
    let checked = &bytes[..bytes.len() - CHECKSUM_LEN];
    let mut checksum = Sha256::new();
    checksum.update((key.len() as u64).to_le_bytes());
    checksum.update(key.as_bytes());
    checksum.update(checked);
    assert_eq!(checksum.finalize()[..CHECKSUM_LEN], bytes[checked.len()..]);
    postcard::from_bytes(&checked[HEADER_LEN..]).expect("the value's bytes")
}

/// Not memo: what no local copy can skip, the local copy's floor. It
/// builds the key, looks the copy up in a `quick_cache` map (the one memo
/// keeps copies in), checks the copy's expiry against the clock, and clones
/// the value out. The local hit's own further steps (resolving the call,
/// the barrier, the counters) come on top.
fn local_floor(id: u64) -> Profile {
    type Copies = quick_cache::sync::Cache<Box<str>, (Instant, Arc<Profile>)>;
    static COPIES: OnceLock<Copies> = OnceLock::new();
    let copies = COPIES.get_or_init(|| Copies::new(10_000));
    let key = format!("bench:local:{id}");
    let (until, value) = copies.get(key.as_str()).unwrap_or_else(|| {
        let copy = (
            Instant::now() + Duration::from_secs(3600),
            Arc::new(profile(id)),
        );
        copies.insert(key.into_boxed_str(), copy.clone());
        copy
    });
    assert!(Instant::now() < until, "an hour-long copy");
    Profile::clone(&value)
}

type Call = fn(u64) -> Profile;

const CALLS: [(&str, Call); 6] = [
    ("memo_local_typed", memo_local),
    ("local_floor", local_floor),
    ("memo_local_encoded", memo_encoded_local),
    ("memo_plain_embedded", memo_plain),
    ("plain_floor", plain_floor),
    ("cached_proc_macro", cached_profile),
];

/// The one embedded store every group is configured with, which
/// `plain_floor` reads too.
fn store() -> &'static MemoryBackend {
    static STORE: OnceLock<MemoryBackend> = OnceLock::new();
    STORE.get_or_init(|| MemoryBackend::with_max_bytes(1 << 30))
}

fn configure_memory() {
    configure(Config::new(store().clone()));
    // `plain_floor` reads what `memo_plain` stores, with the envelope's
    // layout (a change of format fails here, not in the floor).
    let stored = {
        memo_plain(7);
        store().get("bench:plain:7").expect("the embedded store")
    };
    let stored = stored.expect("stored under its key as written");
    assert!(
        store()
            .get("\\V:bench:plain:7")
            .expect("the embedded store")
            .is_some(),
        "a version key as written"
    );
    let stored = envelope(&stored);
    let body = postcard::to_allocvec(&profile(7)).expect("serializes");
    assert_eq!(stored[HEADER_LEN..stored.len() - CHECKSUM_LEN], body[..]);
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
