//! What observing a hit costs (features `tracing` and `metrics`): one hit
//! of a small record from the local copy, the embedded store and Redis,
//! with nothing
//! installed, with a subscriber at INFO (memo's DEBUG spans off) and
//! Prometheus' recorder, and with a subscriber that records memo's spans
//! (`fmt`, to nowhere, at DEBUG) and Prometheus' recorder.
//!
//! The features are compile-time, so the figures with them off come from
//! a second run of this same file:
//!
//! ```sh
//! cargo bench -p memo-runtime --features redis --bench observe
//! cargo bench -p memo-runtime --features redis,tracing,metrics --bench observe
//! ```
//!
//! The subscriber and the recorder are installed for the benchmark's own
//! thread only (`tracing::subscriber::with_default`,
//! `metrics::with_local_recorder`), so that one process measures all three.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use memo_runtime::{Config, Function, MemoryBackend, Options, cache_memoize, configure};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

#[path = "../../tests/src/servers.rs"]
#[allow(dead_code, unreachable_pub, missing_docs)]
mod servers;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
}

fn profile() -> Profile {
    Profile {
        id: 7,
        name: "Ada Lovelace".into(),
        email: "ada@analytical.example".into(),
        roles: vec!["admin".into(), "reviewer".into()],
    }
}

static PROFILE: Function = Function::new("bench::profile");

/// The features this build has, as the benchmark's name says them.
fn features() -> &'static str {
    match (cfg!(feature = "tracing"), cfg!(feature = "metrics")) {
        (true, true) => "features_on",
        (false, false) => "features_off",
        _ => "features_partial",
    }
}

/// A subscriber that keeps memo's spans at `level`, printing to nowhere.
fn subscriber(level: LevelFilter) -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        .with(level)
}

fn observe(c: &mut Criterion) {
    let redis = servers::Server::redis();
    let options = Options::new()
        .function(&PROFILE)
        .expiration(Duration::from_secs(600));
    let recorder = PrometheusBuilder::new().build_recorder();
    let mut group = c.benchmark_group(format!("observe/{}", features()));
    let local = options.clone().local(Duration::from_secs(600));
    for (backend, config, options) in [
        ("local", Config::new(MemoryBackend::new()), &local),
        ("embedded", Config::new(MemoryBackend::new()), &options),
        (
            "redis",
            Config::from_url(&redis.url()).expect("a valid URL"),
            &options,
        ),
    ] {
        configure(config);
        let _: Profile = cache_memoize("bench:observe", profile, options);
        let hit = || {
            black_box(cache_memoize::<_, Profile, _>(
                "bench:observe",
                profile,
                options,
            ))
        };
        group.bench_function(format!("{backend}/none"), |b| b.iter(hit));
        for (name, level) in [("info", LevelFilter::INFO), ("debug", LevelFilter::DEBUG)] {
            tracing::subscriber::with_default(subscriber(level), || {
                metrics::with_local_recorder(&recorder, || {
                    group.bench_function(format!("{backend}/{name}"), |b| b.iter(hit));
                });
            });
        }
    }
    group.finish();
    configure(Config::new(MemoryBackend::new()));
}

criterion_group!(benches, observe);
criterion_main!(benches);
