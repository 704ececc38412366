//! The other process of the cross-process invalidation test
//! (`tests/hot_keys.rs`): configured from `MEMO_CACHE_URL`, it answers each
//! line `get KEY` on stdin with the value memoized under `KEY` with a local
//! copy (computing `peer-N` on a miss), one line per request, until stdin
//! closes. For `tests/background_refresh.rs`, `stale KEY` answers with the
//! value memoized with `cache_memoize_owned` and a stale window (a refresh
//! takes 600 ms and computes `peer-N`), and `count` with how many values
//! this process has computed.

use std::io::{BufRead, Write};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use memo_runtime::{Config, Options, cache_memoize, cache_memoize_owned, configure};

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
            cache_memoize_owned(
                key,
                move || {
                    std::thread::sleep(Duration::from_millis(600));
                    format!("peer-{}", computed.fetch_add(1, Ordering::SeqCst) + 1)
                },
                &stale,
            )
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
