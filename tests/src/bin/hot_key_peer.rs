//! The other process of the cross-process invalidation test
//! (`tests/hot_keys.rs`): configured from `MEMO_CACHE_URL`, it answers each
//! line `get KEY` on stdin with the value memoized under `KEY` with a local
//! copy (computing `peer-N` on a miss), one line per request, until stdin
//! closes.

use std::io::{BufRead, Write};
use std::time::Duration;

use memo_runtime::{Config, Options, cache_memoize, configure};

fn main() {
    let url = std::env::var("MEMO_CACHE_URL").expect("MEMO_CACHE_URL");
    configure(Config::from_url(&url).expect("a cache URL"));
    let options = Options::new().local(Duration::from_secs(60));
    let mut computed = 0;
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("a line");
        let Some(key) = line.strip_prefix("get ") else {
            continue;
        };
        let value: String = cache_memoize(
            key,
            || {
                computed += 1;
                format!("peer-{computed}")
            },
            &options,
        );
        let mut out = stdout.lock();
        writeln!(out, "{value}").expect("stdout");
        out.flush().expect("stdout");
    }
}
