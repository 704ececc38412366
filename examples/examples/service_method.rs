//! Memoized methods on a service struct: `&self` fields in the key, the
//! generated `_invalidate` / `_refresh` helpers as methods, a `Result` of
//! which only `Ok` is cached.
//!
//! ```text
//! cargo run -p memo-examples --example service_method
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use memo_runtime::cache_memoize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Price {
    sku: String,
    cents: u64,
}

#[derive(Debug)]
struct NotFound(String);

/// Talks to a (pretend) pricing database.
struct PricingService {
    region: String,
    queries: AtomicU32,
}

impl PricingService {
    /// Cached per region and SKU; unknown SKUs are not cached.
    #[cache_memoize(key = "price:{self.region}:{sku}", expiration = 300, version = 2)]
    pub fn price(&self, sku: &str) -> Result<Price, NotFound> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if sku.starts_with("X-") {
            return Err(NotFound(sku.to_owned()));
        }
        Ok(Price {
            sku: sku.to_owned(),
            cents: sku.len() as u64 * 1000,
        })
    }
}

fn main() {
    let eu = PricingService {
        region: "eu".into(),
        queries: AtomicU32::new(0),
    };

    println!("{:?}", eu.price("BOOK-1"));
    println!("{:?}", eu.price("BOOK-1"));
    for _ in 0..2 {
        if let Err(NotFound(sku)) = eu.price("X-GONE") {
            println!("not found: {sku}");
        }
    }
    println!(
        "database queries: {} (the Ok cached, each Err retried)",
        eu.queries.load(Ordering::Relaxed)
    );

    // The price changed: recompute now and overwrite the entry ...
    println!("refreshed: {:?}", eu.price_refresh("BOOK-1"));
    // ... or drop it, so that the next call computes it.
    eu.price_invalidate("BOOK-1")
        .expect("the embedded cache does not fail");
    println!("{:?}", eu.price("BOOK-1"));
    println!("database queries: {}", eu.queries.load(Ordering::Relaxed));
}
