//! A large value, split into chunks, compressed and encrypted: the backend
//! sees neither the key nor a byte of the data.
//!
//! ```text
//! cargo run -p memo-examples --example encrypted_large
//! ```

use std::time::Instant;

use memo_runtime::{Config, EncryptionKey, MemoryBackend, cache_memoize, configure, stats};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    id: u32,
    email: String,
    balance_cents: i64,
}

/// Around 5 MB of rows: more than one backend item can hold.
#[cache_memoize(key = "ledger:{tenant}", large_data, encrypt, expiration = 600)]
fn ledger(tenant: &str) -> Vec<Row> {
    (0..100_000)
        .map(|id| Row {
            id,
            email: format!("customer{id}@{tenant}.example"),
            balance_cents: i64::from(id) * 37 - 1_000_000,
        })
        .collect()
}

fn main() {
    // In a service the key comes from a secret store or MEMO_ENCRYPTION_KEY.
    let key = EncryptionKey::new(b"an example key, 32 bytes long!!!").expect("32 bytes");
    configure(
        Config::new(MemoryBackend::new())
            .namespace("example")
            .encryption_key(key),
    );

    let started = Instant::now();
    let rows = ledger("acme");
    println!(
        "miss: {} rows computed and stored in {:.1?}",
        rows.len(),
        started.elapsed()
    );

    let started = Instant::now();
    let again = ledger("acme");
    println!(
        "hit: {} rows read back in {:.1?}",
        again.len(),
        started.elapsed()
    );
    println!("last row: {:?}", again.last());

    let stats = stats();
    println!(
        "hits {}, misses {}, stores {}",
        stats.hits, stats.misses, stats.stores
    );
}
