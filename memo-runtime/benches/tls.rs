//! Hit latency over TLS against plaintext, on the same server, side by
//! side: each of Redis and memcached (started by this bench with a
//! throwaway CA) listens on a TLS port and a plaintext port at once.
//!
//! - `tls_hit/<backend>/plain_sync` and `tls_sync` — a memoized hit of a
//!   small value through `cache_memoize`, warm pool;
//! - `tls_hit/<backend>/plain_async` and `tls_async` — the same through
//!   `cache_memoize_async` on a current-thread runtime.
//!
//! The handshake is paid once per pooled connection, so a warm hit pays
//! only the record encryption of a request and its reply.
//!
//! Run with `cargo bench -p memo-runtime --features async,memcached,redis,tls --bench tls`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, cache_memoize_async, configure};
use serde::{Deserialize, Serialize};

#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;
#[path = "../../tests/src/tls.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod tls;

use servers::Kind;
use tls::{Pki, TlsServer};

const KEY: &str = "tls-bench-profile";

/// A typical memoized result: a small record with a few strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
}

fn profile() -> Profile {
    Profile {
        id: 42,
        name: "Ada Lovelace".to_owned(),
        email: "ada@example.com".to_owned(),
        roles: vec!["admin".to_owned(), "reviewer".to_owned()],
        score: 0.97,
    }
}

/// Benchmarks warm hits through `url`, blocking and async, as `label`.
fn hits(c: &mut Criterion, group: &str, label: &str, url: &str) {
    configure(Config::from_url(url).expect("a valid URL"));
    let options = Options::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let stored: Profile = cache_memoize(KEY, profile, &options);
    assert_eq!(stored, profile());
    let warm: Profile = rt.block_on(cache_memoize_async(KEY, || async { profile() }, &options));
    assert_eq!(warm, profile());
    let mut group = c.benchmark_group(group);
    group.bench_function(format!("{label}_sync"), |b| {
        b.iter(|| {
            let value: Profile = cache_memoize(KEY, || unreachable!("a hit"), &options);
            value
        });
    });
    group.bench_function(format!("{label}_async"), |b| {
        b.iter_custom(|ops| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..ops {
                    let value: Profile =
                        cache_memoize_async(KEY, || async { unreachable!("a hit") }, &options)
                            .await;
                    std::hint::black_box(value);
                }
                start.elapsed()
            })
        });
    });
    group.finish();
    let stats = memo_runtime::stats();
    assert_eq!(stats.errors, 0, "{stats:?}");
    configure(Config::new(MemoryBackend::new()));
}

fn tls_vs_plain(c: &mut Criterion) {
    let pki = Pki::new();
    for (name, kind) in [("redis", Kind::Redis), ("memcached", Kind::Memcached)] {
        let server = TlsServer::start(kind, &pki, pki.server(), false);
        let group = format!("tls_hit/{name}");
        hits(c, &group, "plain", &server.plain_url());
        let tls = server.url(&format!("ca={}", pki.ca().display()));
        hits(c, &group, "tls", &tls);
    }
}

criterion_group!(benches, tls_vs_plain);
criterion_main!(benches);
