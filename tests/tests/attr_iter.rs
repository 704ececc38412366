//! Iterator mode: `-> impl Iterator<Item = T>` or `#[cache_memoize_iter]`.
//! Lazy, computed once, items stored as they stream; borrowed arguments work.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, cache_memoize, cache_memoize_iter, configure};

fn fresh() {
    configure(
        Config::new(MemoryBackend::new())
            .namespace("attr-iter")
            .chunk_size(1024),
    );
}

static WORDS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "words:{text}")]
fn words(text: &str) -> impl Iterator<Item = String> {
    WORDS.fetch_add(1, SeqCst);
    text.split_whitespace().map(str::to_owned)
}

#[test]
fn borrowed_argument_and_compute_once() {
    let _serial = memo_tests::serial();
    fresh();
    let before = WORDS.load(SeqCst);
    let text = String::from("the quick brown fox");
    let first: Vec<String> = words(&text).collect();
    let again: Vec<String> = words(&text).collect();
    assert_eq!(first, ["the", "quick", "brown", "fox"]);
    assert_eq!(again, first);
    assert_eq!(WORDS.load(SeqCst) - before, 1);
}

static LAZY: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "lazy:{n}")]
fn lazy(n: u32) -> impl Iterator<Item = u32> {
    LAZY.fetch_add(1, SeqCst);
    0..n
}

#[test]
fn nothing_runs_before_the_first_next() {
    let _serial = memo_tests::serial();
    fresh();
    let before = LAZY.load(SeqCst);
    let mut iter = lazy(5);
    assert_eq!(
        LAZY.load(SeqCst),
        before,
        "calling the function computes nothing"
    );
    assert_eq!(iter.next(), Some(0));
    assert_eq!(LAZY.load(SeqCst) - before, 1);
    assert_eq!(iter.collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(lazy(5).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
    assert_eq!(LAZY.load(SeqCst) - before, 1);
}

static BIG: AtomicUsize = AtomicUsize::new(0);

/// Many items over a tiny chunk size: stored across several chunks.
#[cache_memoize(key = "big:{n}", compress = false)]
fn big(n: u64) -> impl Iterator<Item = (u64, String)> {
    BIG.fetch_add(1, SeqCst);
    (0..n).map(|i| (i, format!("item number {i}")))
}

#[test]
fn many_items_round_trip_through_chunks() {
    let _serial = memo_tests::serial();
    fresh();
    let before = BIG.load(SeqCst);
    let first: Vec<_> = big(2000).collect();
    let again: Vec<_> = big(2000).collect();
    assert_eq!(first.len(), 2000);
    assert_eq!(again, first);
    assert_eq!(BIG.load(SeqCst) - before, 1);
}

static SLICES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "doubled:{xs:?}")]
fn doubled(xs: &[i64]) -> impl Iterator<Item = i64> + '_ {
    SLICES.fetch_add(1, SeqCst);
    xs.iter().map(|x| x * 2)
}

#[test]
fn the_iterator_may_borrow_a_slice_argument() {
    let _serial = memo_tests::serial();
    fresh();
    let before = SLICES.load(SeqCst);
    let xs = vec![1, 2, 3];
    assert_eq!(doubled(&xs).collect::<Vec<_>>(), [2, 4, 6]);
    assert_eq!(doubled(&xs).collect::<Vec<_>>(), [2, 4, 6]);
    assert_eq!(SLICES.load(SeqCst) - before, 1);
}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

/// Explicit iterator mode, collected into the declared type.
#[cache_memoize_iter(key = "squares:{n}")]
fn squares(n: u64) -> Vec<u64> {
    SQUARES.fetch_add(1, SeqCst);
    (1..=n).map(|i| i * i).collect()
}

#[cache_memoize_iter(key = "letters")]
fn letters() -> BTreeSet<char> {
    "hello".chars().collect()
}

#[test]
fn cache_memoize_iter_collects_into_the_return_type() {
    let _serial = memo_tests::serial();
    fresh();
    let before = SQUARES.load(SeqCst);
    assert_eq!(squares(4), [1, 4, 9, 16]);
    assert_eq!(squares(4), [1, 4, 9, 16]);
    assert_eq!(SQUARES.load(SeqCst) - before, 1);
    assert_eq!(letters().into_iter().collect::<String>(), "ehlo");
    assert_eq!(letters().len(), 4);
}

#[cache_memoize(key = "boxed:{n}")]
fn boxed(n: u8) -> Box<dyn Iterator<Item = u8> + Send> {
    Box::new(0..n)
}

#[test]
fn boxed_iterators_are_iterator_mode() {
    let _serial = memo_tests::serial();
    fresh();
    assert_eq!(boxed(3).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(boxed(3).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn stored_items_are_readable_through_the_functional_api() {
    let _serial = memo_tests::serial();
    fresh();
    let _: Vec<u32> = lazy(3).collect();
    let items: Vec<u32> = cache_memoize_iter(
        ["lazy", "3"],
        || -> Vec<u32> { panic!("lazy(3) should have stored its items") },
        &memo_runtime::Options::new(),
    )
    .collect();
    assert_eq!(items, [0, 1, 2]);
}
