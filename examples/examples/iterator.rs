//! Iterator mode: items reach the caller as the body yields them, and are
//! stored on the way; the next call streams them back from the cache.
//!
//! ```text
//! cargo run -p memo-examples --example iterator
//! ```

use std::time::{Duration, Instant};

use memo_runtime::cache_memoize;

/// Lines of a (pretend) slow source, one every 50 ms.
#[cache_memoize(key = "log-lines:{source}")]
fn log_lines(source: &str) -> impl Iterator<Item = String> {
    (1..=5).map(move |i| {
        std::thread::sleep(Duration::from_millis(50));
        format!("{source}: line {i}")
    })
}

fn main() {
    let started = Instant::now();
    let mut lines = log_lines("api");
    println!(
        "call returned in {:.1?}: nothing computed yet",
        started.elapsed()
    );
    let first = lines.next().expect("five lines");
    println!("first item after {:.1?}: {first}", started.elapsed());
    let rest: Vec<String> = lines.collect();
    println!(
        "all {} items after {:.1?} (miss)",
        rest.len() + 1,
        started.elapsed()
    );

    let started = Instant::now();
    let again: Vec<String> = log_lines("api").collect();
    println!(
        "all {} items after {:.1?} (hit)",
        again.len(),
        started.elapsed()
    );
    for line in again {
        println!("  {line}");
    }
}
