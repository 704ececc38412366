//! `#[cache_memoize]` on plain functions: computed once, stored under the
//! key the template says, options honoured.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure, make_cache_key};
use serde::{Deserialize, Serialize};

/// A fresh embedded cache, so each test starts from nothing.
fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-basic"));
}

/// Reads `key` through the functional API, panicking on a miss: proves the
/// attribute stored exactly there.
fn stored<T: Serialize + serde::de::DeserializeOwned>(key: &[&str]) -> T {
    cache_memoize(
        key,
        || panic!("nothing stored under {key:?}"),
        &Options::new(),
    )
}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "square:{n}")]
fn square(n: u64) -> u64 {
    SQUARES.fetch_add(1, SeqCst);
    n * n
}

#[test]
fn computes_once_per_argument() {
    let _serial = memo_tests::serial();
    fresh();
    let before = SQUARES.load(SeqCst);
    assert_eq!(square(12), 144);
    assert_eq!(square(12), 144);
    assert_eq!(square(12), 144);
    assert_eq!(SQUARES.load(SeqCst) - before, 1);
    assert_eq!(square(13), 169);
    assert_eq!(SQUARES.load(SeqCst) - before, 2);
}

#[test]
fn template_components_become_a_key_sequence() {
    let _serial = memo_tests::serial();
    fresh();
    square(7);
    assert_eq!(stored::<u64>(&["square", "7"]), 49);
    assert_eq!(
        make_cache_key(["square", "7"], &Options::new()),
        "attr-basic:square:7"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: String,
    greeting: String,
}

static PROFILES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "profile:{id}")]
fn profile(id: &str) -> Profile {
    PROFILES.fetch_add(1, SeqCst);
    Profile {
        id: id.to_owned(),
        greeting: format!("hello {id}"),
    }
}

#[test]
fn a_value_cannot_forge_a_separator() {
    let _serial = memo_tests::serial();
    fresh();
    let colon = profile("a:b");
    let escaped = profile("a%3Ab");
    assert_eq!(colon.id, "a:b");
    assert_eq!(escaped.id, "a%3Ab", "two inputs, two entries");
    assert_eq!(
        make_cache_key(["profile", "a:b"], &Options::new()),
        "attr-basic:profile:a%3Ab"
    );
    assert_eq!(stored::<Profile>(&["profile", "a:b"]), colon);
    assert_eq!(stored::<Profile>(&["profile", "a%3Ab"]), escaped);
}

#[cache_memoize(key = "page-{page}:{filter:?}", version = 3)]
fn search(page: u32, filter: Option<&str>) -> Vec<String> {
    vec![format!("{page}/{filter:?}")]
}

#[test]
fn mixed_components_debug_placeholders_and_version() {
    let _serial = memo_tests::serial();
    fresh();
    let found = search(2, Some("x"));
    assert_eq!(
        stored::<Vec<String>>(&["page-2", "Some(\"x\")", "v3"]),
        found
    );
}

static DEFAULT_KEYED: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize]
fn default_keyed(a: i32, b: &str) -> String {
    DEFAULT_KEYED.fetch_add(1, SeqCst);
    format!("{a}{b}")
}

#[test]
fn default_key_is_module_name_and_every_argument() {
    let _serial = memo_tests::serial();
    fresh();
    let before = DEFAULT_KEYED.load(SeqCst);
    assert_eq!(default_keyed(1, "x"), "1x");
    assert_eq!(default_keyed(1, "x"), "1x");
    assert_eq!(default_keyed(1, "y"), "1y");
    assert_eq!(DEFAULT_KEYED.load(SeqCst) - before, 2);
    assert_eq!(
        stored::<String>(&[module_path!(), "default_keyed", "1", "x"]),
        "1x"
    );
}

static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

struct Db;

#[cache_memoize(key = "user:{id}", ignore(db))]
fn user_name(db: &Db, id: u32) -> String {
    let _ = db;
    LOOKUPS.fetch_add(1, SeqCst);
    format!("user {id}")
}

#[test]
fn ignored_arguments_stay_out_of_the_key() {
    let _serial = memo_tests::serial();
    fresh();
    let before = LOOKUPS.load(SeqCst);
    assert_eq!(user_name(&Db, 5), "user 5");
    assert_eq!(user_name(&Db, 5), "user 5");
    assert_eq!(LOOKUPS.load(SeqCst) - before, 1);
    assert_eq!(stored::<String>(&["user", "5"]), "user 5");
}

static SHORT_LIVED: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "short-lived", expiration = 1)]
fn short_lived() -> usize {
    SHORT_LIVED.fetch_add(1, SeqCst)
}

#[test]
fn expiration_is_honoured() {
    let _serial = memo_tests::serial();
    fresh();
    let first = short_lived();
    assert_eq!(short_lived(), first);
    std::thread::sleep(Duration::from_millis(2100));
    assert_ne!(short_lived(), first, "recomputed after it expired");
}

const HOUR: u64 = 60 * 60;

#[cache_memoize(key = "hourly", expiration = HOUR)]
fn hourly() -> u8 {
    1
}

#[test]
fn expiration_takes_a_constant() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(hourly(), 1);
    assert_eq!(stored::<u8>(&["hourly"]), 1);
}

static OVERWRITES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "always-fresh", force_overwrite)]
fn always_fresh() -> usize {
    OVERWRITES.fetch_add(1, SeqCst)
}

#[test]
fn force_overwrite_computes_every_time_and_stores() {
    let _serial = memo_tests::serial();
    fresh();
    let first = always_fresh();
    let second = always_fresh();
    assert_eq!(second, first + 1);
    assert_eq!(stored::<usize>(&["always-fresh"]), second);
}

static LOCKED: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "slow:{n}", lock(timeout = 5, retry = 10, expiration = 30))]
fn slow(n: u32) -> u32 {
    LOCKED.fetch_add(1, SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    n + 1
}

#[test]
fn lock_makes_concurrent_misses_compute_once() {
    let _serial = memo_tests::serial();
    fresh();
    let before = LOCKED.load(SeqCst);
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(|| slow(41))).collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), 42);
    }
    assert_eq!(LOCKED.load(SeqCst) - before, 1);
}

/// Documented, public, `#[must_use]`: attributes are kept.
#[must_use]
#[cache_memoize(key = "documented:{x}")]
pub(crate) fn documented(x: u8) -> u8 {
    x
}

#[test]
fn other_attributes_and_visibility_are_kept() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(documented(3), 3);
}

#[cache_memoize(key = "early:{n}")]
fn early_return(n: i32) -> i32 {
    if n < 0 {
        return 0;
    }
    n * 2
}

#[test]
fn return_in_the_body_returns_the_value_to_cache() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(early_return(-5), 0);
    assert_eq!(early_return(4), 8);
    assert_eq!(stored::<i32>(&["early", "-5"]), 0);
}

#[cache_memoize(key = "slice:{xs:?}")]
fn total(xs: &[u32]) -> u32 {
    xs.iter().sum()
}

#[test]
fn borrowed_slices_key_by_debug() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(total(&[1, 2, 3]), 6);
    assert_eq!(stored::<u32>(&["slice", "[1, 2, 3]"]), 6);
}
