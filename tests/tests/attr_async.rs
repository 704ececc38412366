//! `#[cache_memoize]` on `async fn`: computed once and read back, `Result`
//! caching only `Ok`, methods, generics and borrowed arguments as for sync
//! functions, async helpers, coalesced concurrent calls, and futures that
//! can be spawned and serve as handlers.

use std::fmt::Display;
use std::future::Future;
use std::num::ParseIntError;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure};
use memo_tests::runtime::{run, run_multi};
use serde::{Deserialize, Serialize};

/// A fresh embedded cache, so each test starts from nothing.
fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-async"));
}

/// Reads `key` through the synchronous functional API, panicking on a
/// miss: proves the attribute stored exactly there, in the format a sync
/// caller reads.
fn stored<T: Serialize + serde::de::DeserializeOwned>(key: &[&str]) -> T {
    cache_memoize(
        key,
        || panic!("nothing stored under {key:?}"),
        &Options::new(),
    )
}

fn assert_send<T: Send>(_: &T) {}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "square:{n}")]
async fn square(n: u64) -> u64 {
    SQUARES.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(1)).await;
    n * n
}

#[test]
fn computes_once_and_stores_where_sync_callers_read() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = SQUARES.load(SeqCst);
        assert_eq!(square(12).await, 144);
        assert_eq!(square(12).await, 144);
        assert_eq!(square(12).await, 144);
        assert_eq!(SQUARES.load(SeqCst) - before, 1);
        assert_eq!(square(13).await, 169);
        assert_eq!(SQUARES.load(SeqCst) - before, 2);
        assert_eq!(stored::<u64>(&["square", "12"]), 144);
    });
}

static PARSES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "parse:{text}")]
async fn parse(text: &str) -> Result<u32, ParseIntError> {
    PARSES.fetch_add(1, SeqCst);
    let n: u32 = text.trim().parse()?;
    tokio::task::yield_now().await;
    Ok(n * 2)
}

#[test]
fn result_caches_ok_only_and_question_mark_works() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = PARSES.load(SeqCst);
        assert!(parse("x").await.is_err());
        assert!(parse("x").await.is_err());
        assert_eq!(PARSES.load(SeqCst) - before, 2, "an Err is not stored");
        assert_eq!(parse(" 21 ").await, Ok(42));
        assert_eq!(parse(" 21 ").await, Ok(42));
        assert_eq!(PARSES.load(SeqCst) - before, 3, "an Ok is");
        assert_eq!(stored::<u32>(&["parse", " 21 "]), 42);
    });
}

static GREETINGS: AtomicUsize = AtomicUsize::new(0);

struct Greeter {
    salutation: String,
}

impl Greeter {
    #[cache_memoize(key = "greet:{self.salutation}:{name}")]
    async fn greet(&self, name: &str) -> String {
        GREETINGS.fetch_add(1, SeqCst);
        tokio::task::yield_now().await;
        format!("{}, {name}!", self.salutation)
    }
}

#[test]
fn methods_take_self_and_borrowed_arguments() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = GREETINGS.load(SeqCst);
        let hello = Greeter {
            salutation: "Hello".into(),
        };
        let name = String::from("Ada");
        assert_eq!(hello.greet(&name).await, "Hello, Ada!");
        assert_eq!(hello.greet("Ada").await, "Hello, Ada!");
        assert_eq!(GREETINGS.load(SeqCst) - before, 1);
        let hi = Greeter {
            salutation: "Hi".into(),
        };
        assert_eq!(hi.greet("Ada").await, "Hi, Ada!");
        assert_eq!(GREETINGS.load(SeqCst) - before, 2, "self.salutation keys");
        assert_eq!(stored::<String>(&["greet", "Hi", "Ada"]), "Hi, Ada!");
    });
}

static DESCRIBED: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "describe:{value}")]
async fn describe<T: Display + Send + Sync>(value: T) -> String {
    DESCRIBED.fetch_add(1, SeqCst);
    format!("<{value}>")
}

#[test]
fn generic_functions_work() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = DESCRIBED.load(SeqCst);
        assert_eq!(describe(7u8).await, "<7>");
        assert_eq!(describe("7").await, "<7>", "same Display, same entry");
        assert_eq!(describe(7.5f64).await, "<7.5>");
        assert_eq!(DESCRIBED.load(SeqCst) - before, 2);
    });
}

#[cache_memoize(key = "steps:{start}:{limit}")]
async fn steps(mut start: u32, limit: u32) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        if start >= limit {
            return out;
        }
        out.push(start);
        start += 1;
        tokio::task::yield_now().await;
    }
}

#[test]
fn mutable_arguments_and_early_returns_keep_their_meaning() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        assert_eq!(steps(2, 5).await, [2, 3, 4]);
        assert_eq!(steps(2, 5).await, [2, 3, 4]);
        assert_eq!(steps(5, 2).await, Vec::<u32>::new());
    });
}

static REPORTS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "report:{id}")]
async fn report(id: u32) -> String {
    let run = REPORTS.fetch_add(1, SeqCst);
    format!("report {id} run {run}")
}

#[test]
fn helpers_are_async_and_refresh_once() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let first = report(1).await;
        assert_eq!(report(1).await, first);

        let invalidate = report_invalidate(1);
        assert_send(&invalidate);
        invalidate.await.unwrap();
        let second = report(1).await;
        assert_ne!(second, first, "invalidated: computed afresh");

        let refresh = report_refresh(1);
        assert_send(&refresh);
        let third = refresh.await;
        assert_ne!(third, second, "refresh computes even on a hit");
        assert_eq!(report(1).await, third, "and overwrites the entry");
        assert_eq!(report(1).await, third, "a later call is not refreshed too");
        assert_eq!(stored::<String>(&["report", "1"]), third);
    });
}

static SHARED: AtomicUsize = AtomicUsize::new(0);
static UNSHARED: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "shared:{n}")]
async fn shared(n: u64) -> u64 {
    SHARED.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n + 1
}

#[cache_memoize(key = "unshared:{n}", coalesce = false)]
async fn unshared(n: u64) -> u64 {
    UNSHARED.fetch_add(1, SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n + 1
}

/// Spawns `tasks` calls of `call` at once and returns their values.
async fn all_at_once<F, Fut>(tasks: usize, call: F) -> Vec<u64>
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let handles: Vec<_> = (0..tasks).map(|_| tokio::spawn(call())).collect();
    let mut values = Vec::new();
    for handle in handles {
        values.push(handle.await.expect("no task panics"));
    }
    values
}

#[test]
fn fifty_concurrent_calls_compute_once() {
    let _serial = memo_tests::serial();
    fresh();
    run_multi(async {
        let before = SHARED.load(SeqCst);
        let values = all_at_once(50, || shared(9)).await;
        assert!(values.iter().all(|&v| v == 10), "{values:?}");
        assert_eq!(SHARED.load(SeqCst) - before, 1);
    });
}

#[test]
fn coalesce_false_lets_each_call_compute() {
    let _serial = memo_tests::serial();
    fresh();
    run_multi(async {
        let before = UNSHARED.load(SeqCst);
        let values = all_at_once(50, || unshared(9)).await;
        assert!(values.iter().all(|&v| v == 10), "{values:?}");
        assert_eq!(UNSHARED.load(SeqCst) - before, 50);
        assert_eq!(unshared(9).await, 10);
        assert_eq!(UNSHARED.load(SeqCst) - before, 50, "still stored and read");
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "profile:{id}", expiration = 60)]
async fn profile(id: u64) -> Profile {
    PROFILES.fetch_add(1, SeqCst);
    tokio::task::yield_now().await;
    Profile {
        id,
        name: format!("user {id}"),
    }
}

/// The bound a web framework puts on a handler (axum's `Handler` for a
/// function of one extracted argument): cloneable, `Send`, `'static`, and
/// returning a `Send` future.
fn route<F, Fut, T>(handler: F) -> F
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    handler
}

#[test]
fn futures_are_send_spawnable_and_fit_a_handler() {
    let _serial = memo_tests::serial();
    fresh();
    run_multi(async {
        let future = profile(3);
        assert_send(&future);
        assert_send(&parse("1"));
        let hello = Greeter {
            salutation: "Hey".into(),
        };
        assert_send(&hello.greet("you"));
        assert_send(&describe(1u8));

        let before = PROFILES.load(SeqCst);
        let spawned = tokio::spawn(future).await.unwrap();
        assert_eq!(spawned.name, "user 3");
        let handler = route(profile);
        let again = tokio::spawn(handler(3)).await.unwrap();
        assert_eq!(again, spawned);
        assert_eq!(PROFILES.load(SeqCst) - before, 1);
    });
}

#[test]
fn runs_on_a_current_thread_runtime_and_on_one_after_another() {
    let _serial = memo_tests::serial();
    fresh();
    let before = SQUARES.load(SeqCst);
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(square(40)), 1600);
    }
    assert_eq!(SQUARES.load(SeqCst) - before, 1);
}

static COUNTS: AtomicUsize = AtomicUsize::new(0);

trait Counter {
    async fn count(&self, n: u32) -> u32;
}

struct Doubler;

impl Counter for Doubler {
    /// In a trait impl no extra method may be added: `helpers = false`.
    #[cache_memoize(key = "count:{n}", helpers = false)]
    async fn count(&self, n: u32) -> u32 {
        COUNTS.fetch_add(1, SeqCst);
        n * 2
    }
}

#[test]
fn trait_impls_take_async_methods() {
    let _serial = memo_tests::serial();
    fresh();
    let before = COUNTS.load(SeqCst);
    run(async {
        assert_eq!(Doubler.count(4).await, 8);
        assert_eq!(Doubler.count(4).await, 8);
    });
    assert_eq!(COUNTS.load(SeqCst) - before, 1);
}
