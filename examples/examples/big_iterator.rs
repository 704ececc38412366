//! Streams 1 GiB of serialized items through `cache_memoize_iter`, stores
//! them, reads them back, and shows that memo's own memory stays bounded:
//! the peak resident size exceeds the starting one by no more than what the
//! embedded backend holds plus 64 MiB. Given a cache URL, the bytes live in
//! another process and the bound is 64 MiB flat.
//!
//! ```text
//! cargo build --release -p memo-examples --example big_iterator
//! /usr/bin/time -v target/release/examples/big_iterator        # 1 GiB, embedded
//! /usr/bin/time -v target/release/examples/big_iterator 0.25   # 256 MiB
//! memcached -m 3072 -p 21211 -l 127.0.0.1 -u nobody &
//! /usr/bin/time -v target/release/examples/big_iterator 1 memcached://127.0.0.1:21211
//! ```
//!
//! Every item read back is compared with the one the source would produce,
//! without ever collecting the sequence.

use std::time::Instant;

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize_iter, configure, stats};

const BOUND: u64 = 64 * 1024 * 1024;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Event {
    seq: u64,
    kind: String,
    tags: Vec<String>,
    samples: Vec<u32>,
}

const KINDS: [&str; 5] = ["click", "view", "purchase", "search", "logout"];

fn event(seq: u64) -> Event {
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    Event {
        seq,
        kind: KINDS[(seq % 5) as usize].to_owned(),
        tags: (0..4)
            .map(|i| format!("tag-{}", (next() % 50) + i))
            .collect(),
        samples: (0..200).map(|_| (next() % 5000) as u32).collect(),
    }
}

/// Serialized size of one event, to know how many make the target size.
fn event_size() -> usize {
    postcard::to_stdvec(&event(1)).map_or(420, |bytes| bytes.len())
}

/// Current and peak resident set size, in bytes, from /proc.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let gib: f64 = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1.0);
    let target = (gib * 1024.0 * 1024.0 * 1024.0) as u64;
    let count = target / event_size() as u64;

    let url = std::env::args().nth(2);
    let memory = MemoryBackend::with_max_bytes(4 << 30);
    match &url {
        Some(url) => match Config::from_url(url) {
            Ok(config) => configure(config),
            Err(err) => {
                eprintln!("big_iterator: {err}");
                std::process::exit(2);
            }
        },
        None => configure(Config::new(memory.clone())),
    }
    // What the backend holds inside this process: the embedded store's
    // bytes, or nothing when the cache is another process.
    let held_here = || {
        if url.is_some() {
            0
        } else {
            memory.weighted_bytes()
        }
    };
    let (baseline, _) = rss();
    println!(
        "storing {count} events (~{:.0} MiB serialized); baseline RSS {:.1} MiB",
        mib(target),
        mib(baseline)
    );

    let options = Options::new();
    let start = Instant::now();
    let mut stored = 0u64;
    for (i, item) in
        cache_memoize_iter("big-iterator", || (0..count).map(event), &options).enumerate()
    {
        assert_eq!(item.seq, i as u64);
        stored += 1;
    }
    let store_time = start.elapsed();
    let held = held_here();
    println!(
        "miss: streamed and stored {stored} events in {store_time:.2?}; {:.1} MiB written, {:.1} MiB of it held in this process",
        mib(stats().bytes_written),
        mib(held)
    );

    let start = Instant::now();
    let mut read = 0u64;
    for (i, item) in cache_memoize_iter(
        "big-iterator",
        || -> Vec<Event> { panic!("expected a hit") },
        &options,
    )
    .enumerate()
    {
        assert_eq!(item, event(i as u64), "item {i} read back differs");
        read += 1;
    }
    assert_eq!(read, count, "every item read back");
    let load_time = start.elapsed();
    let (current, peak) = rss();
    let stats = stats();
    println!(
        "hit: read back and verified {read} events in {load_time:.2?} ({} hits, {} misses)",
        stats.hits, stats.misses
    );
    let growth = peak.saturating_sub(baseline);
    let allowed = held + BOUND;
    println!(
        "RSS now {:.1} MiB, peak {:.1} MiB: peak - baseline = {:.1} MiB <= held here {:.1} MiB + 64 MiB = {:.1} MiB: {}",
        mib(current),
        mib(peak),
        mib(growth),
        mib(held),
        mib(allowed),
        if growth <= allowed { "yes" } else { "NO" }
    );
    assert!(growth <= allowed, "memo's own memory exceeded its bound");
}
