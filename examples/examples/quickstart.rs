//! The attribute on the embedded default cache: the first call computes,
//! the second reads the stored value back.
//!
//! ```text
//! cargo run -p memo-examples --example quickstart
//! ```

use std::time::{Duration, Instant};

use memo_runtime::cache_memoize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    customer: u64,
    lines: Vec<String>,
}

/// A slow computation, memoized for an hour per customer.
#[cache_memoize(key = "report:{customer}", expiration = 3600)]
fn monthly_report(customer: u64) -> Report {
    std::thread::sleep(Duration::from_millis(500));
    Report {
        customer,
        lines: (1..=3)
            .map(|i| format!("line {i} for {customer}"))
            .collect(),
    }
}

fn main() {
    let started = Instant::now();
    let first = monthly_report(42);
    println!("miss: computed in {:.1?}", started.elapsed());

    let started = Instant::now();
    let second = monthly_report(42);
    println!("hit: {:.1?}", started.elapsed());

    assert_eq!(first.lines, second.lines);
    println!("{second:?}");

    // Drop the entry: the next call computes again.
    monthly_report_invalidate(42).expect("the embedded cache does not fail");
    let started = Instant::now();
    monthly_report(42);
    println!("after invalidate: computed in {:.1?}", started.elapsed());
}
