//! `#[cache_memoize]` on a `fn` returning `impl Stream<Item = T>`: stream
//! mode. Lazy, items reach the caller as the body's stream yields them, a
//! hit replays them, and a stream dropped half-way leaves nothing a later
//! call takes as complete.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use futures_core::Stream;
use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, cache_memoize_iter, configure};
use memo_tests::runtime::run;

/// A fresh embedded cache, so each test starts from nothing.
fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-stream"));
}

/// The body's stream: yields `items` one per poll and counts what it
/// yielded, so a test sees how far the source has run.
struct Source<T> {
    items: std::vec::IntoIter<T>,
    yielded: Arc<AtomicUsize>,
}

impl<T: Unpin> Stream for Source<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        let item = self.items.next();
        if item.is_some() {
            self.yielded.fetch_add(1, SeqCst);
        }
        Poll::Ready(item)
    }
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

async fn collect<S: Stream + Unpin>(mut stream: S) -> Vec<S::Item> {
    let mut items = Vec::new();
    while let Some(item) = next(&mut stream).await {
        items.push(item);
    }
    items
}

fn assert_send_unpin<T: Send + Unpin>(_: &T) {}

static WORD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "words:{text}")]
fn words(text: String) -> impl Stream<Item = String> {
    WORD_RUNS.fetch_add(1, SeqCst);
    let items: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    Source {
        items: items.into_iter(),
        yielded: Arc::new(AtomicUsize::new(0)),
    }
}

#[test]
fn nothing_runs_until_the_first_poll_and_a_hit_replays() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = WORD_RUNS.load(SeqCst);
        let stream = words("a b c".into());
        assert_send_unpin(&stream);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 0, "lazy: the body waits");
        assert_eq!(collect(stream).await, ["a", "b", "c"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 1);
        assert_eq!(collect(words("a b c".into())).await, ["a", "b", "c"]);
        assert_eq!(
            WORD_RUNS.load(SeqCst) - before,
            1,
            "a hit replays the items"
        );
        // Stored in iterator mode's format, under the template's key: a sync
        // iterator over the same key reads it.
        assert_eq!(same_words("a b c".into()), ["a", "b", "c"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 1);
    });
}

#[cache_memoize_iter(key = "words:{text}")]
fn same_words(text: String) -> Vec<String> {
    panic!("the stream stored {text:?} already")
}

static LONG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "long:{count}", ignore(yielded))]
fn long(count: u32, yielded: Arc<AtomicUsize>) -> impl futures_core::Stream<Item = u32> + Send {
    LONG_RUNS.fetch_add(1, SeqCst);
    Source {
        items: (0..count).collect::<Vec<_>>().into_iter(),
        yielded,
    }
}

#[test]
fn items_reach_the_caller_as_the_source_yields_them() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let yielded = Arc::new(AtomicUsize::new(0));
        let mut stream = long(10_000, Arc::clone(&yielded));
        assert_eq!(next(&mut stream).await, Some(0));
        let after_first = yielded.load(SeqCst);
        assert!(
            after_first < 100,
            "the first item came after {after_first} of 10,000 source items"
        );
        let mut rest = 1;
        while let Some(item) = next(&mut stream).await {
            assert_eq!(item, rest);
            rest += 1;
        }
        assert_eq!(rest, 10_000);
    });
}

#[test]
fn a_stream_dropped_half_way_leaves_nothing_complete() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = LONG_RUNS.load(SeqCst);
        let yielded = Arc::new(AtomicUsize::new(0));
        let mut stream = long(50, Arc::clone(&yielded));
        for expected in 0..3 {
            assert_eq!(next(&mut stream).await, Some(expected));
        }
        drop(stream);
        assert_eq!(LONG_RUNS.load(SeqCst) - before, 1);

        let items = collect(long(50, Arc::new(AtomicUsize::new(0)))).await;
        assert_eq!(items, (0..50).collect::<Vec<_>>(), "every item, none lost");
        assert_eq!(
            LONG_RUNS.load(SeqCst) - before,
            2,
            "the half-read stream stored no entry: computed again"
        );
        let items = collect(long(50, Arc::new(AtomicUsize::new(0)))).await;
        assert_eq!(items.len(), 50);
        assert_eq!(LONG_RUNS.load(SeqCst) - before, 2, "the full one did");
    });
}

static TAGGED_RUNS: AtomicUsize = AtomicUsize::new(0);

struct Catalog;

impl Catalog {
    /// A `'static` borrow may be used in the body; `&self` and `label`
    /// only key the entry, so the stream borrows neither (`use<>`).
    #[cache_memoize(key = "tagged:{prefix}:{label}", helpers = false)]
    fn tagged(&self, prefix: &'static str, label: &str) -> impl Stream<Item = String> + use<> {
        TAGGED_RUNS.fetch_add(1, SeqCst);
        Source {
            items: vec![format!("{prefix}1"), format!("{prefix}2")].into_iter(),
            yielded: Arc::new(AtomicUsize::new(0)),
        }
    }
}

#[test]
fn methods_and_static_borrows_work() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = TAGGED_RUNS.load(SeqCst);
        let label = String::from("x");
        let stream = Catalog.tagged("p", &label);
        drop(label);
        assert_eq!(collect(stream).await, ["p1", "p2"]);
        assert_eq!(collect(Catalog.tagged("p", "x")).await, ["p1", "p2"]);
        assert_eq!(TAGGED_RUNS.load(SeqCst) - before, 1);
        assert_eq!(collect(Catalog.tagged("p", "y")).await, ["p1", "p2"]);
        assert_eq!(TAGGED_RUNS.load(SeqCst) - before, 2, "label keys the entry");
    });
}

#[test]
fn invalidate_is_async_and_refresh_recomputes() {
    let _serial = memo_tests::serial();
    fresh();
    run(async {
        let before = WORD_RUNS.load(SeqCst);
        assert_eq!(collect(words("x y".into())).await, ["x", "y"]);
        assert_eq!(collect(words("x y".into())).await, ["x", "y"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 1);

        words_invalidate("x y".into()).await.unwrap();
        assert_eq!(collect(words("x y".into())).await, ["x", "y"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 2, "invalidated");

        assert_eq!(collect(words_refresh("x y".into())).await, ["x", "y"]);
        assert_eq!(
            WORD_RUNS.load(SeqCst) - before,
            3,
            "refresh computes on a hit"
        );
        assert_eq!(collect(words("x y".into())).await, ["x", "y"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 3, "and the next call hits");
    });
}

#[test]
fn functional_stream_and_attribute_share_entries() {
    let _serial = memo_tests::serial();
    fresh();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = WORD_RUNS.load(SeqCst);
        assert_eq!(collect(words("k l".into())).await, ["k", "l"]);
        let stored = memo_runtime::cache_memoize_stream(
            ["words", "k l"],
            || -> Source<String> { panic!("the attribute stored it") },
            &Options::new(),
        );
        assert_eq!(collect(stored).await, ["k", "l"]);
        assert_eq!(WORD_RUNS.load(SeqCst) - before, 1);
    });
}
