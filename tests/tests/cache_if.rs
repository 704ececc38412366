//! `cache_if`: a value the predicate refuses is returned and not stored,
//! neither in the shared cache nor as a local copy, nor handed to
//! coalesced callers as a cached value; one it accepts is memoized as
//! usual. Through the attribute (plain, `Result`, `async`, method, owned,
//! `local`) and the functional API, on the embedded store, memcached and
//! Redis.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use memo_runtime::{
    Config, MemoryBackend, Options, cache_memoize, cache_memoize_if, cache_memoize_if_async,
    configure, try_cache_memoize, try_cache_memoize_if, try_cache_memoize_if_async,
};
use memo_tests::runtime::run;
use memo_tests::servers::{Kind, Server};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The embedded store, and memcached and Redis on fresh servers when they
/// are installed; each with its server, kept alive by the caller.
fn backends() -> Vec<(&'static str, Config, Option<Server>)> {
    let mut all = vec![("memory", Config::new(MemoryBackend::new()), None)];
    for kind in [Kind::Memcached, Kind::Redis] {
        if let Some(server) = Server::try_start(kind) {
            let config = Config::from_url(&server.url()).expect("a configuration");
            all.push((kind.scheme(), config, Some(server)));
        }
    }
    all
}

/// What is stored under `key`, if anything: a miss computes an `Err`,
/// which stores nothing.
fn lookup<T: Serialize + DeserializeOwned>(key: &[&str]) -> Option<T> {
    try_cache_memoize(key, || Err(()), &Options::new()).ok()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    id: u32,
    complete: bool,
}

/// Reports of even ids are complete.
fn build(id: u32) -> Report {
    Report {
        id,
        complete: id.is_multiple_of(2),
    }
}

fn is_complete(report: &Report) -> bool {
    report.complete
}

// A predicate takes a reference to the cached type itself, so `&Vec<T>`
// and `&String` rather than the slices clippy prefers.
#[allow(clippy::ptr_arg)]
mod checks {
    /// A predicate reached by a path.
    pub(crate) fn non_empty(rows: &Vec<String>) -> bool {
        !rows.is_empty()
    }

    /// For a `Result`, the predicate sees the `Ok` value.
    pub(crate) fn settled(status: &String) -> bool {
        status != "pending"
    }
}

static REPORTS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "report:{id}", cache_if = is_complete)]
fn report(id: u32) -> Report {
    REPORTS.fetch_add(1, SeqCst);
    build(id)
}

static STATUSES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "status:{id}", cache_if = checks::settled)]
fn status(id: u32) -> Result<String, String> {
    STATUSES.fetch_add(1, SeqCst);
    match id {
        0 => Err("no such job".into()),
        id if id.is_multiple_of(2) => Ok("done".into()),
        _ => Ok("pending".into()),
    }
}

static FETCHES: AtomicUsize = AtomicUsize::new(0);

/// An owned `async fn`: the owned async call.
#[cache_memoize(key = "fetched:{id}", cache_if = is_complete)]
async fn fetched(id: u32) -> Report {
    FETCHES.fetch_add(1, SeqCst);
    tokio::task::yield_now().await;
    build(id)
}

/// A borrowing `async fn` returning a `Result`: the borrowed async call.
#[cache_memoize(key = "rows:{table}", cache_if = checks::non_empty)]
async fn rows(table: &str) -> Result<Vec<String>, String> {
    FETCHES.fetch_add(1, SeqCst);
    Ok(match table {
        "empty" => Vec::new(),
        _ => vec![format!("{table}:1")],
    })
}

static OWNED: AtomicUsize = AtomicUsize::new(0);

/// With `stale`, an owned signature: the owned sync call.
#[cache_memoize(key = "owned:{id}", cache_if = is_complete, stale = 60)]
fn owned(id: u32) -> Report {
    OWNED.fetch_add(1, SeqCst);
    build(id)
}

/// With `local`: a refused value must not be kept in this process either.
#[cache_memoize(key = "local:{id}", cache_if = is_complete, local = 60)]
fn local(id: u32) -> Report {
    OWNED.fetch_add(1, SeqCst);
    build(id)
}

struct Service {
    calls: AtomicUsize,
}

impl Service {
    #[cache_memoize(key = "method:{id}", cache_if = is_complete)]
    fn method(&self, id: u32) -> Report {
        self.calls.fetch_add(1, SeqCst);
        build(id)
    }
}

/// Calls `f` twice and returns how many times it computed, by `counter`.
fn computed_twice<T>(counter: &AtomicUsize, f: impl Fn() -> T) -> (T, usize) {
    let before = counter.load(SeqCst);
    let _ = f();
    let value = f();
    (value, counter.load(SeqCst) - before)
}

#[test]
fn the_attribute_stores_only_what_the_predicate_accepts() {
    let _serial = memo_tests::serial();
    for (name, config, _server) in backends() {
        configure(config.namespace(&format!("cache-if-attr-{name}")));

        let (value, computed) = computed_twice(&REPORTS, || report(1));
        assert_eq!(value, build(1), "{name}");
        assert_eq!(computed, 2, "{name}: refused, so computed each time");
        assert_eq!(lookup::<Report>(&["report", "1"]), None, "{name}");
        let (value, computed) = computed_twice(&REPORTS, || report(2));
        assert_eq!(value, build(2), "{name}");
        assert_eq!(computed, 1, "{name}: accepted, so memoized");
        assert_eq!(lookup(&["report", "2"]), Some(build(2)), "{name}");

        let (value, computed) = computed_twice(&STATUSES, || status(1));
        assert_eq!(value.as_deref(), Ok("pending"), "{name}");
        assert_eq!(computed, 2, "{name}");
        assert_eq!(lookup::<String>(&["status", "1"]), None, "{name}");
        let (value, computed) = computed_twice(&STATUSES, || status(2));
        assert_eq!(value.as_deref(), Ok("done"), "{name}");
        assert_eq!(computed, 1, "{name}");
        let (value, computed) = computed_twice(&STATUSES, || status(0));
        assert!(value.is_err(), "{name}");
        assert_eq!(computed, 2, "{name}: an `Err` is never stored");

        for (id, expected) in [(1, 2), (2, 1)] {
            let (_, computed) = computed_twice(&OWNED, || owned(id));
            assert_eq!(computed, expected, "{name}: owned, id {id}");
            let (_, computed) = computed_twice(&OWNED, || local(id));
            assert_eq!(computed, expected, "{name}: local, id {id}");
        }
        assert_eq!(lookup::<Report>(&["owned", "1"]), None, "{name}");
        assert_eq!(lookup::<Report>(&["local", "1"]), None, "{name}");
        assert_eq!(lookup(&["local", "2"]), Some(build(2)), "{name}");

        let service = Service {
            calls: AtomicUsize::new(0),
        };
        let (_, computed) = computed_twice(&service.calls, || service.method(3));
        assert_eq!(computed, 2, "{name}: method, refused");
        let (_, computed) = computed_twice(&service.calls, || service.method(4));
        assert_eq!(computed, 1, "{name}: method, accepted");

        run(async {
            for (id, expected) in [(5, 2), (6, 1)] {
                let before = FETCHES.load(SeqCst);
                assert_eq!(fetched(id).await, build(id), "{name}");
                assert_eq!(fetched(id).await, build(id), "{name}");
                assert_eq!(FETCHES.load(SeqCst) - before, expected, "{name}: id {id}");
            }
            for (table, expected) in [("empty", 2), ("users", 1)] {
                let before = FETCHES.load(SeqCst);
                assert!(rows(table).await.is_ok(), "{name}");
                assert!(rows(table).await.is_ok(), "{name}");
                assert_eq!(FETCHES.load(SeqCst) - before, expected, "{name}: {table}");
            }
        });
        assert_eq!(lookup::<Report>(&["fetched", "5"]), None, "{name}");
        assert_eq!(lookup(&["fetched", "6"]), Some(build(6)), "{name}");
        assert_eq!(lookup::<Vec<String>>(&["rows", "empty"]), None, "{name}");
    }
}

#[test]
fn the_functional_api_stores_only_what_the_predicate_accepts() {
    let _serial = memo_tests::serial();
    for (name, config, _server) in backends() {
        configure(config.namespace(&format!("cache-if-fn-{name}")));
        let options = Options::new().expiration(Duration::from_secs(60));
        let computed = AtomicUsize::new(0);
        let compute = |id: u32| {
            computed.fetch_add(1, SeqCst);
            build(id)
        };
        for (id, expected) in [(1, 2), (2, 1)] {
            let before = computed.load(SeqCst);
            for _ in 0..2 {
                let value = cache_memoize_if(
                    ["fn", &id.to_string()],
                    || compute(id),
                    is_complete,
                    &options,
                );
                assert_eq!(value, build(id), "{name}");
            }
            assert_eq!(computed.load(SeqCst) - before, expected, "{name}: id {id}");
        }
        assert_eq!(lookup::<Report>(&["fn", "1"]), None, "{name}");
        assert_eq!(lookup(&["fn", "2"]), Some(build(2)), "{name}");

        // A closure that borrows, as the functional API allows.
        let threshold = 10;
        for (id, expected) in [(3, 2), (30, 1)] {
            let before = computed.load(SeqCst);
            for _ in 0..2 {
                let value: Result<Report, String> = try_cache_memoize_if(
                    ["try", &id.to_string()],
                    || Ok(compute(id)),
                    |report: &Report| report.id > threshold,
                    &options,
                );
                assert_eq!(value, Ok(build(id)), "{name}");
            }
            assert_eq!(computed.load(SeqCst) - before, expected, "{name}: id {id}");
        }

        run(async {
            for (id, expected) in [(7, 2), (8, 1)] {
                let before = computed.load(SeqCst);
                for _ in 0..2 {
                    let value = cache_memoize_if_async(
                        ["async", &id.to_string()],
                        || async { compute(id) },
                        is_complete,
                        &options,
                    )
                    .await;
                    assert_eq!(value, build(id), "{name}");
                }
                assert_eq!(computed.load(SeqCst) - before, expected, "{name}: id {id}");
                let before = computed.load(SeqCst);
                for _ in 0..2 {
                    let value: Result<Report, String> = try_cache_memoize_if_async(
                        ["try-async", &id.to_string()],
                        || async { Ok(compute(id)) },
                        is_complete,
                        &options,
                    )
                    .await;
                    assert_eq!(value, Ok(build(id)), "{name}");
                }
                assert_eq!(computed.load(SeqCst) - before, expected, "{name}: id {id}");
            }
        });
        assert_eq!(lookup::<Report>(&["async", "7"]), None, "{name}");
        assert_eq!(lookup::<Report>(&["try-async", "7"]), None, "{name}");
        assert_eq!(lookup(&["try-async", "8"]), Some(build(8)), "{name}");
    }
}

static SLOW: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "slow:{id}", cache_if = is_complete)]
fn slow(id: u32) -> Report {
    SLOW.fetch_add(1, SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    build(id)
}

/// Concurrent callers of one key share one computation; a refused value
/// is not shared as if it were cached: each caller computes in turn.
#[test]
fn coalesced_callers_are_not_served_a_refused_value() {
    let _serial = memo_tests::serial();
    configure(Config::new(MemoryBackend::new()).namespace("cache-if-coalesce"));
    for (id, expected) in [(1, 4), (2, 1)] {
        let before = SLOW.load(SeqCst);
        let barrier = Arc::new(Barrier::new(4));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    slow(id)
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.join().unwrap(), build(id));
        }
        assert_eq!(SLOW.load(SeqCst) - before, expected, "id {id}");
    }
    // Nothing refused reached the cache, through any caller.
    let stored: Report = cache_memoize(["slow", "2"], || panic!("stored"), &Options::new());
    assert_eq!(stored, build(2));
    assert_eq!(lookup::<Report>(&["slow", "1"]), None);
}
