//! An HTTP service whose handlers are memoized `async fn`s: the first
//! request for a report takes half a second, the next ones are served from
//! the cache, and concurrent first requests share one computation.
//!
//! ```text
//! cargo run -p memo-examples --example axum_service
//! MEMO_CACHE_URL='redis://127.0.0.1:6379?namespace=reports' cargo run -p memo-examples --example axum_service
//! MEMO_CACHE_URL='memcached://127.0.0.1:11211' cargo run -p memo-examples --example axum_service
//!
//! curl http://127.0.0.1:3000/reports/7            # slow the first time, then fast
//! curl -X DELETE http://127.0.0.1:3000/reports/7  # drops the entry
//! curl http://127.0.0.1:3000/                     # a memoized fn as the handler itself
//! curl http://127.0.0.1:3000/metrics              # memo's metrics, for Prometheus
//! ```
//!
//! `PORT` picks another port; without `MEMO_CACHE_URL` the cache is the
//! embedded in-memory store. memo's features `tracing` and `metrics` are
//! on: each memoized call's span is printed as it closes (with its
//! function, outcome and key), and `/metrics` renders the counters and
//! histograms of the `metrics` facade through `metrics-exporter-prometheus`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use memo_runtime::{Config, cache_memoize, configure, stats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

/// What the slow backend computes.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    id: u64,
    lines: Vec<String>,
    computed_at_ms: u128,
}

/// The expensive part: a database or a remote service in real life.
#[cache_memoize(key = "report:{id}", expiration = 60)]
async fn report(id: u64) -> Report {
    tokio::time::sleep(Duration::from_millis(500)).await;
    Report {
        id,
        lines: (1..=3)
            .map(|n| format!("line {n} of report {id}"))
            .collect(),
        computed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis()),
    }
}

/// `GET /reports/{id}`: extracts the argument and awaits the memoized fn.
async fn get_report(Path(id): Path<u64>) -> String {
    let started = Instant::now();
    let report = report(id).await;
    format!(
        "report {} (computed at {} ms since the epoch), served in {:?}\n{}\n",
        report.id,
        report.computed_at_ms,
        started.elapsed(),
        report.lines.join("\n")
    )
}

/// `DELETE /reports/{id}`: the generated helper of an `async fn` is async.
async fn delete_report(Path(id): Path<u64>) -> (StatusCode, String) {
    match report_invalidate(id).await {
        Ok(()) => (
            StatusCode::OK,
            format!("report {id} dropped from the cache\n"),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("could not drop report {id}: {error}\n"),
        ),
    }
}

/// `GET /`: a memoized `async fn` with no arguments is a handler as it is.
#[cache_memoize(key = "front-page", expiration = 5)]
async fn front_page() -> String {
    let stats = stats();
    format!(
        "front page rendered with {} hits and {} misses so far; kept for 5 s\n",
        stats.hits, stats.misses
    )
}

/// `GET /metrics`: everything recorded so far, in Prometheus' text format.
async fn metrics(handle: axum::extract::State<PrometheusHandle>) -> String {
    handle.render()
}

/// Prints memo's call spans as they close (DEBUG, target
/// `memo_runtime::call`) and everyone's INFO lines.
fn trace() {
    let filter = Targets::new()
        .with_target("memo_runtime", LevelFilter::DEBUG)
        .with_default(LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_span_events(FmtSpan::CLOSE)
                .with_ansi(false),
        )
        .with(filter)
        .init();
}

#[tokio::main]
async fn main() {
    trace();
    let prometheus = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("cannot install the metrics recorder: {error}");
            std::process::exit(1);
        }
    };
    // MEMO_CACHE_URL (and the other MEMO_* variables) pick the cache;
    // without them, the embedded store.
    match Config::from_env() {
        Ok(config) => configure(config),
        Err(error) => {
            eprintln!("invalid cache configuration ({error}); using the embedded store");
        }
    }

    let app = Router::new()
        .route("/", get(front_page))
        .route("/reports/{id}", get(get_report).delete(delete_report))
        .route("/metrics", get(metrics))
        .with_state(prometheus);

    let port = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(3000);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("cannot listen on {address}: {error}; set PORT to another port");
            std::process::exit(1);
        }
    };
    println!("listening; try:\n  curl http://{address}/reports/7\n  curl http://{address}/");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("server stopped: {error}");
    }
}
