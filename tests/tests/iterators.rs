//! `cache_memoize_iter`: lazy, streaming, stored on the way through, and
//! never visible half-written.

use std::cell::RefCell;
use std::rc::Rc;

use memo_runtime::{
    Backend, CacheLock, Config, LockOptions, Options, cache_memoize_iter, configure, stats,
};
use memo_tests::recording::{Op, RecordingBackend};
use memo_tests::serial;

fn fresh(chunk_size: usize) -> RecordingBackend {
    let backend = RecordingBackend::new();
    configure(Config::new(backend.clone()).chunk_size(chunk_size));
    backend
}

fn items(n: u64) -> impl Iterator<Item = (u64, String)> {
    (0..n).map(|i| (i, format!("item number {i} with some text to compress")))
}

#[test]
fn nothing_runs_before_the_first_next() {
    let _serial = serial();
    let backend = fresh(4096);
    let ran = RefCell::new(false);
    let iter = cache_memoize_iter(
        "lazy",
        || {
            *ran.borrow_mut() = true;
            items(3)
        },
        &Options::new(),
    );
    assert!(!*ran.borrow());
    assert!(backend.ops().is_empty(), "not even the cache is asked");
    assert_eq!(iter.count(), 3);
    assert!(*ran.borrow());
}

#[test]
fn items_reach_the_caller_as_the_source_yields_them() {
    let _serial = serial();
    fresh(4096);
    let events = Rc::new(RefCell::new(Vec::new()));
    let source_events = Rc::clone(&events);
    let source =
        move || (0..3u32).inspect(move |i| source_events.borrow_mut().push(format!("yield {i}")));
    for item in cache_memoize_iter("stream", source, &Options::new()) {
        events.borrow_mut().push(format!("got {item}"));
    }
    assert_eq!(
        *events.borrow(),
        ["yield 0", "got 0", "yield 1", "got 1", "yield 2", "got 2"]
    );
}

#[test]
fn a_miss_stores_and_a_hit_replays_exactly() {
    let _serial = serial();
    let backend = fresh(4096);
    let first: Vec<_> = cache_memoize_iter("replay", || items(5000), &Options::new()).collect();
    assert_eq!(first, items(5000).collect::<Vec<_>>());
    let chunks = backend
        .ops()
        .iter()
        .filter(|op| matches!(op, Op::Set(key, _) if key.starts_with("\\C") && key.ends_with(":replay")))
        .count();
    assert!(chunks > 2, "spread over {chunks} chunks");
    let second: Vec<(u64, String)> = cache_memoize_iter(
        "replay",
        || -> Vec<(u64, String)> { unreachable!("cached") },
        &Options::new(),
    )
    .collect();
    assert_eq!(second, first);
    let stats = stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 1, 1));
}

#[test]
fn chunks_are_stored_while_the_source_still_runs() {
    let _serial = serial();
    let backend = fresh(1024);
    let mut iter = cache_memoize_iter("early", || items(100_000), &Options::new().compress(false));
    for _ in 0..1000 {
        iter.next().unwrap();
    }
    let sets: Vec<usize> = backend
        .ops()
        .iter()
        .filter_map(|op| match op {
            Op::SetMany(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert!(!sets.is_empty(), "batches went out before the source ended");
    assert!(
        sets.iter().all(|&n| n <= memo_runtime::BATCH_CHUNKS),
        "batches are bounded: {sets:?}"
    );
    assert!(
        !backend
            .keys()
            .iter()
            .any(|k| k == "early" && backend.inner().get(k).unwrap().is_some()),
        "the main entry is not written before the end"
    );
}

#[test]
fn an_iterator_dropped_half_way_leaves_nothing_readable() {
    let _serial = serial();
    fresh(1024);
    let partial: Vec<_> = cache_memoize_iter("half", || items(10_000), &Options::new())
        .take(5000)
        .collect();
    assert_eq!(partial.len(), 5000);
    let again: Vec<_> = cache_memoize_iter("half", || items(3), &Options::new()).collect();
    assert_eq!(
        again.len(),
        3,
        "the half-written entry was not taken as complete"
    );
}

#[test]
fn a_panicking_source_leaves_nothing_readable() {
    let _serial = serial();
    fresh(1024);
    let result = std::panic::catch_unwind(|| {
        cache_memoize_iter(
            "boom",
            || items(10_000).inspect(|item| assert_ne!(item.0, 7000, "source failed")),
            &Options::new(),
        )
        .count()
    });
    assert!(result.is_err());
    let again: Vec<_> = cache_memoize_iter("boom", || items(2), &Options::new()).collect();
    assert_eq!(again.len(), 2);
}

#[test]
fn empty_iterators_are_cached_too() {
    let _serial = serial();
    fresh(4096);
    for compress in [true, false] {
        let key = format!("empty-{compress}");
        let options = Options::new().compress(compress);
        assert_eq!(
            cache_memoize_iter(&key, Vec::<u8>::new, &options).count(),
            0
        );
        let again: Vec<u8> =
            cache_memoize_iter(&key, || -> Vec<u8> { unreachable!("cached") }, &options).collect();
        assert!(again.is_empty());
    }
}

#[test]
fn encrypted_iterators_round_trip() {
    let _serial = serial();
    let backend = fresh(2048);
    let options = Options::new().encrypt(true);
    let first: Vec<_> = cache_memoize_iter("secret-items", || items(3000), &options).collect();
    let second: Vec<(u64, String)> =
        cache_memoize_iter("secret-items", || -> Vec<_> { unreachable!() }, &options).collect();
    assert_eq!(first, second);
    assert!(!backend.saw(b"item number"));
    assert!(!backend.saw(b"secret-items"));
}

#[test]
fn a_chunk_lost_before_reading_means_recompute() {
    let _serial = serial();
    let backend = fresh(1024);
    let _: Vec<_> = cache_memoize_iter("lossy", || items(3000), &Options::new()).collect();
    let chunk = backend
        .keys()
        .into_iter()
        .find(|k| k.starts_with("\\C") && k.ends_with("-2:lossy"))
        .unwrap();
    backend.inner().delete(&chunk).unwrap();
    let calls = RefCell::new(0);
    let again: Vec<_> = cache_memoize_iter(
        "lossy",
        || {
            *calls.borrow_mut() += 1;
            items(3000)
        },
        &Options::new(),
    )
    .collect();
    assert_eq!(again, items(3000).collect::<Vec<_>>());
    assert_eq!(*calls.borrow(), 1);
}

#[test]
fn iterator_misses_take_the_lock() {
    let _serial = serial();
    let backend = fresh(4096);
    let options = Options::new().lock(LockOptions::new());
    let items: Vec<u32> = cache_memoize_iter("locked-iter", || 0..10u32, &options).collect();
    assert_eq!(items.len(), 10);
    let locks = backend
        .keys()
        .into_iter()
        .filter(|k| k == CacheLock::new("locked-iter").full_cache_key())
        .count();
    assert!(locks >= 2, "the lock was taken and released");
}
