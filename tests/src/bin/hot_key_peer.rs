//! The other process of the cross-process invalidation test
//! (`tests/hot_keys.rs`): configured from `MEMO_CACHE_URL`, it answers each
//! line `get KEY` on stdin with the value memoized under `KEY` with a local
//! copy (computing `peer-N` on a miss), one line per request, until stdin
//! closes. For `tests/background_refresh.rs`, `stale KEY` answers with the
//! value memoized with `cache_memoize_detached` and a stale window (a refresh
//! takes 600 ms and computes `peer-N`), and `count` with how many values
//! this process has computed. For `tests/invalidation_fleet.rs`,
//! `slow KEY MS` and `slowtag KEY TAG MS` answer with the value memoized
//! without a local copy (with the tag `TAG`), computing `slow-N` in `MS`
//! milliseconds on a miss: the writer of a stale set.

use std::io::{BufRead, Write};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use memo_runtime::{Config, Options, cache_memoize, cache_memoize_detached, configure};

fn main() {
    let url = std::env::var("MEMO_CACHE_URL").expect("MEMO_CACHE_URL");
    configure(Config::from_url(&url).expect("a cache URL"));
    let options = Options::new().local(Duration::from_secs(60));
    let stale = Options::new()
        .expiration(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(10));
    let computed = Arc::new(AtomicUsize::new(0));
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a line");
        let value: String = if let Some(key) = line.strip_prefix("get ") {
            cache_memoize(
                key,
                || format!("peer-{}", computed.fetch_add(1, Ordering::SeqCst) + 1),
                &options,
            )
        } else if let Some(key) = line.strip_prefix("stale ") {
            let computed = Arc::clone(&computed);
            cache_memoize_detached(
                key,
                move || {
                    std::thread::sleep(Duration::from_millis(600));
                    format!("peer-{}", computed.fetch_add(1, Ordering::SeqCst) + 1)
                },
                &stale,
            )
        } else if let Some(rest) = line.strip_prefix("slow ") {
            let (key, ms) = rest.split_once(' ').expect("slow KEY MS");
            slow(key, ms, &Options::new(), &computed)
        } else if let Some(rest) = line.strip_prefix("slowtag ") {
            let mut words = rest.split(' ');
            let (key, tag, ms) = (
                words.next().expect("a key"),
                words.next().expect("a tag"),
                words.next().expect("milliseconds"),
            );
            slow(key, ms, &Options::new().tags([tag]), &computed)
        } else if line == "count" {
            computed.load(Ordering::SeqCst).to_string()
        } else {
            continue;
        };
        let mut out = stdout.lock();
        writeln!(out, "{value}").expect("stdout");
        out.flush().expect("stdout");
    }
}

/// The value memoized under `key` with `options`, computing `slow-N` in
/// `ms` milliseconds on a miss.
fn slow(key: &str, ms: &str, options: &Options, computed: &AtomicUsize) -> String {
    let ms: u64 = ms.parse().expect("milliseconds");
    cache_memoize(
        key,
        || {
            std::thread::sleep(Duration::from_millis(ms));
            format!("slow-{}", computed.fetch_add(1, Ordering::SeqCst) + 1)
        },
        options,
    )
}
