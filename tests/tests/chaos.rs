//! Chaos with real servers: memcached and Redis are killed and restarted,
//! and frozen with SIGSTOP (a hung host: connections accepted, nothing
//! answered) and thawed with SIGCONT, while 8 threads memoize small values,
//! large chunked values and iterators continuously.
//!
//! Throughout: no wrong value (every value is a pure function of its key,
//! checked on every call), no panic, no call blocked longer than the
//! backend's timeout plus the compute time (plus scheduling slack), and
//! the hit rate recovers once the server is back. The figures are printed
//! (`cargo test -p memo-tests --test chaos -- --nocapture`) and recorded in
//! RELIABILITY.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    Config, EncryptionKey, Options, Stats, cache_memoize, cache_memoize_iter, configure, stats,
};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

const THREADS: u64 = 8;
/// The backend's per-operation timeout.
const TIMEOUT: Duration = Duration::from_millis(400);
/// What each compute function costs.
const COMPUTE: Duration = Duration::from_millis(3);
/// Allowance for scheduling on a loaded two-core machine (8 workers, the
/// server, the test harness).
const SLACK: Duration = Duration::from_millis(250);
/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(2);
/// The longest the hit rate may take to recover once the server is back:
/// the back-off (at most `max_backoff_ms`) plus refilling the cache.
const RECOVERY: Duration = Duration::from_secs(8);

/// A compute function: `COMPUTE` of work, then `value`.
fn compute<T>(value: impl FnOnce() -> T) -> T {
    thread::sleep(COMPUTE);
    value()
}

fn small(n: u64) -> Vec<String> {
    (0..n % 4 + 1).map(|i| format!("chaos {n}.{i}")).collect()
}

fn large(n: u64) -> Vec<u64> {
    (0..600 + n * 40)
        .map(|i| i.wrapping_mul(n | 1) ^ 0x5a5a)
        .collect()
}

fn items(n: u64) -> Vec<(u64, String)> {
    (0..20 + n % 30).map(|i| (n, format!("item {i}"))).collect()
}

/// What the workers measured.
#[derive(Default)]
struct Figures {
    calls: AtomicU64,
    worst_micros: AtomicU64,
    over_bound: AtomicU64,
}

fn worker(id: u64, stop: &AtomicBool, figures: &Figures, bound: Duration) {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while !stop.load(Ordering::Relaxed) {
        let n = next() % 40;
        let id = n.to_string();
        let encrypt = next() % 4 == 0;
        let options = Options::new().encrypt(encrypt);
        let started = Instant::now();
        match next() % 4 {
            0 | 1 => {
                let got: Vec<String> =
                    cache_memoize(["small", &id], || compute(|| small(n)), &options);
                assert_eq!(got, small(n), "wrong small value for {n}");
            }
            2 => {
                let options = options.large_data(true);
                let got: Vec<u64> =
                    cache_memoize(["large", &id], || compute(|| large(n)), &options);
                assert!(got == large(n), "wrong large value for {n}");
            }
            _ => {
                let got: Vec<(u64, String)> =
                    cache_memoize_iter(["items", &id], || compute(|| items(n)), &options).collect();
                assert_eq!(got, items(n), "wrong items for {n}");
            }
        }
        let took = started.elapsed();
        figures.calls.fetch_add(1, Ordering::Relaxed);
        figures
            .worst_micros
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if took > bound {
            figures.over_bound.fetch_add(1, Ordering::Relaxed);
            eprintln!("a call took {took:?}, over {bound:?}");
        }
    }
}

/// The hit rate over the next `window`.
fn hit_rate(window: Duration) -> f64 {
    let before = stats();
    thread::sleep(window);
    let after = stats();
    let hits = after.hits - before.hits;
    let calls = hits + after.misses - before.misses;
    if calls == 0 {
        0.0
    } else {
        hits as f64 / calls as f64
    }
}

/// How long until the hit rate over a 250 ms window is back above 50%.
fn recovery() -> Duration {
    let started = Instant::now();
    while started.elapsed() < RECOVERY {
        if hit_rate(Duration::from_millis(250)) >= 0.5 {
            return started.elapsed();
        }
    }
    panic!("the hit rate did not recover within {RECOVERY:?}");
}

fn chaos(kind: Kind) {
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    let url = format!(
        "{}?namespace=chaos&timeout_ms={}&connect_timeout_ms=200&backoff_ms=200&max_backoff_ms=1000",
        server.url(),
        TIMEOUT.as_millis()
    );
    configure(
        Config::from_url(&url)
            .unwrap()
            .chunk_size(4096)
            .encryption_key(EncryptionKey::new([0xc4; 32]).unwrap()),
    );
    let bound = TIMEOUT + COMPUTE + SLACK;
    let stop = Arc::new(AtomicBool::new(false));
    let figures = Arc::new(Figures::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (stop, figures) = (stop.clone(), figures.clone());
            thread::spawn(move || worker(id, &stop, &figures, bound))
        })
        .collect();

    thread::sleep(Duration::from_millis(1000));
    let warm = hit_rate(Duration::from_millis(500));

    server.kill();
    let calls_before = figures.calls.load(Ordering::Relaxed);
    let down = hit_rate(OUTAGE);
    let calls_while_down = figures.calls.load(Ordering::Relaxed) - calls_before;
    server.restart();
    let after_restart = recovery();

    server.pause();
    let calls_before = figures.calls.load(Ordering::Relaxed);
    let paused = hit_rate(OUTAGE);
    let calls_while_paused = figures.calls.load(Ordering::Relaxed) - calls_before;
    server.resume();
    let after_resume = recovery();
    let end = hit_rate(Duration::from_millis(500));

    stop.store(true, Ordering::Relaxed);
    for handle in workers {
        handle.join().expect("a worker panicked");
    }
    let elapsed = started.elapsed();
    let stats: Stats = stats();
    let worst = Duration::from_micros(figures.worst_micros.load(Ordering::Relaxed));
    println!(
        "chaos {kind:?}: {} calls in {elapsed:.1?} by {THREADS} threads, 0 wrong values, 0 panics; \
         {} backend errors survived, {} invalid entries refused; \
         worst call {worst:.0?} (bound {bound:?} = timeout {TIMEOUT:?} + compute {COMPUTE:?} + slack {SLACK:?}); \
         hit rate {:.0}% warm, {:.0}% killed ({calls_while_down} calls), {:.0}% frozen ({calls_while_paused} calls), {:.0}% at the end; \
         recovered {after_restart:.1?} after restart, {after_resume:.1?} after SIGCONT; {stats:?}",
        figures.calls.load(Ordering::Relaxed),
        stats.errors,
        stats.invalid,
        warm * 100.0,
        down * 100.0,
        paused * 100.0,
        end * 100.0,
    );
    assert!(warm >= 0.5, "the cache worked before the chaos");
    assert!(stats.errors > 0, "the outages were noticed");
    assert!(
        calls_while_down > 0 && calls_while_paused > 0,
        "calls went on during outages"
    );
    assert_eq!(
        figures.over_bound.load(Ordering::Relaxed),
        0,
        "no call blocked longer than {bound:?} (worst {worst:?})"
    );
}

#[test]
fn memcached_killed_and_frozen_never_breaks_a_caller() {
    let _serial = serial();
    chaos(Kind::Memcached);
}

#[test]
fn redis_killed_and_frozen_never_breaks_a_caller() {
    let _serial = serial();
    chaos(Kind::Redis);
}
