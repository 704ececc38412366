//! `-> Result<T, E>`: only `Ok` is cached; an `Err` is returned as is and
//! nothing is stored, so the next call tries again.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, cache_memoize, configure};

fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-result"));
}

/// An error type with no serde at all.
#[derive(Debug, PartialEq)]
struct NotFound(u32);

static FETCHES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "item:{id}")]
fn fetch(id: u32) -> Result<String, NotFound> {
    FETCHES.fetch_add(1, SeqCst);
    if id == 0 {
        return Err(NotFound(id));
    }
    Ok(format!("item {id}"))
}

#[test]
fn ok_is_cached() {
    let _serial = memo_tests::serial();
    fresh();
    let before = FETCHES.load(SeqCst);
    assert_eq!(fetch(1), Ok("item 1".to_owned()));
    assert_eq!(fetch(1), Ok("item 1".to_owned()));
    assert_eq!(FETCHES.load(SeqCst) - before, 1);
}

#[test]
fn err_is_returned_and_not_cached() {
    let _serial = memo_tests::serial();
    fresh();
    let before = FETCHES.load(SeqCst);
    assert_eq!(fetch(0), Err(NotFound(0)));
    assert_eq!(fetch(0), Err(NotFound(0)));
    assert_eq!(
        FETCHES.load(SeqCst) - before,
        2,
        "every Err is computed anew"
    );
}

static PARSES: AtomicUsize = AtomicUsize::new(0);

/// `?` works in the body, and an alias named `Result` counts as a result.
#[cache_memoize(key = "parse:{text}")]
fn parse(text: &str) -> std::io::Result<u64> {
    PARSES.fetch_add(1, SeqCst);
    let n: u64 = text
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(n * 10)
}

#[test]
fn question_mark_and_result_aliases() {
    let _serial = memo_tests::serial();
    fresh();
    let before = PARSES.load(SeqCst);
    assert_eq!(parse("4").unwrap(), 40);
    assert_eq!(parse("4").unwrap(), 40);
    assert!(parse("four").is_err());
    assert!(parse("four").is_err());
    assert_eq!(PARSES.load(SeqCst) - before, 3);
}

#[test]
fn ok_value_is_stored_under_the_key() {
    let _serial = memo_tests::serial();
    fresh();
    fetch(9).unwrap();
    let stored: String = cache_memoize(
        ["item", "9"],
        || panic!("fetch(9) should have stored its Ok value"),
        &memo_runtime::Options::new(),
    );
    assert_eq!(stored, "item 9");
}
