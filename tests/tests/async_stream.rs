//! `cache_memoize_stream`: a stream cached as it flows, in the format
//! iterators use.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use memo_runtime::{
    Config, MemoStream, MemoryBackend, Options, cache_memoize_iter, cache_memoize_stream,
    configure, make_cache_key, stats,
};
use memo_tests::serial;

/// An iterator as a stream, yielding to the executor between items.
struct Slowly<I> {
    items: I,
    yield_next: bool,
}

fn slowly<I: IntoIterator>(items: I) -> Slowly<I::IntoIter> {
    Slowly {
        items: items.into_iter(),
        yield_next: false,
    }
}

impl<I: Iterator + Unpin> Stream for Slowly<I> {
    type Item = I::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<I::Item>> {
        // Every other poll is `Pending` (after waking itself), as a source
        // waiting on I/O would be.
        self.yield_next = !self.yield_next;
        if self.yield_next {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.items.next())
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

fn run<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn counted(
    computed: &Arc<AtomicUsize>,
    items: Vec<String>,
) -> impl FnOnce() -> Slowly<std::vec::IntoIter<String>> + Send + 'static {
    let computed = Arc::clone(computed);
    move || {
        computed.fetch_add(1, Ordering::SeqCst);
        slowly(items)
    }
}

#[test]
fn a_miss_streams_and_stores_and_a_hit_streams_back() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    run(async {
        for count in [0usize, 1, 2, 50, 51, 1000, 5000] {
            let items: Vec<String> = (0..count).map(|i| format!("item-{i}")).collect();
            let computed = Arc::new(AtomicUsize::new(0));
            let key = format!("stream-{count}");
            for _ in 0..2 {
                let stream =
                    cache_memoize_stream(&*key, counted(&computed, items.clone()), &Options::new());
                assert_eq!(collect(stream).await, items, "{count} items");
            }
            assert_eq!(computed.load(Ordering::SeqCst), 1, "{count} items");
        }
    });
    assert_eq!(stats().hits, 7);
}

#[test]
fn a_stream_dropped_half_way_leaves_nothing_complete() {
    let _serial = serial();
    let backend = MemoryBackend::new();
    configure(Config::new(backend.clone()).chunk_size(1024));
    let items: Vec<String> = (0..2000).map(|i| format!("item-{i}")).collect();
    let computed = Arc::new(AtomicUsize::new(0));
    run(async {
        let mut stream = cache_memoize_stream(
            "half-way",
            counted(&computed, items.clone()),
            &Options::new(),
        );
        for expected in items.iter().take(500) {
            assert_eq!(next(&mut stream).await.as_ref(), Some(expected));
        }
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    let main = make_cache_key("half-way", &Options::new());
    assert_eq!(memo_runtime::Backend::get(&backend, &main).unwrap(), None);
    run(async {
        let stream = cache_memoize_stream(
            "half-way",
            counted(&computed, items.clone()),
            &Options::new(),
        );
        assert_eq!(collect(stream).await, items);
    });
    assert_eq!(
        computed.load(Ordering::SeqCst),
        2,
        "the second call computed"
    );
}

/// A source that panics after `after` items.
struct Panics(u32, u32);

impl Stream for Panics {
    type Item = u32;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u32>> {
        assert!(self.0 < self.1, "the source fails");
        self.0 += 1;
        Poll::Ready(Some(self.0))
    }
}

#[test]
fn a_panicking_source_leaves_nothing_complete() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    let outcome = run(async {
        tokio::spawn(collect(cache_memoize_stream(
            "panicking-source",
            || Panics(0, 300),
            &Options::new(),
        )))
        .await
    });
    assert!(outcome.is_err(), "the caller's own panic reaches it");
    let items = run(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        collect(cache_memoize_stream(
            "panicking-source",
            || slowly(0..3u32),
            &Options::new(),
        ))
        .await
    });
    assert_eq!(
        items,
        [0, 1, 2],
        "recomputed: nothing was taken as complete"
    );
}

#[test]
fn iterators_and_streams_share_entries() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).chunk_size(1024));
    let items: Vec<u64> = (0..3000).collect();
    let written: Vec<u64> =
        cache_memoize_iter("iter-then-stream", || items.clone(), &Options::new()).collect();
    let read = run(collect(cache_memoize_stream(
        "iter-then-stream",
        || -> Slowly<std::vec::IntoIter<u64>> { unreachable!("the iterator's entry is read") },
        &Options::new(),
    )));
    assert_eq!(written, read);
    let streamed = run(collect(cache_memoize_stream(
        "stream-then-iter",
        || slowly(0..3000u64),
        &Options::new().encrypt(true),
    )));
    let read: Vec<u64> = cache_memoize_iter(
        "stream-then-iter",
        || -> Vec<u64> { unreachable!("the stream's entry is read") },
        &Options::new().encrypt(true),
    )
    .collect();
    assert_eq!(streamed, read);
}

#[test]
fn a_zero_expiration_streams_without_storing() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let computed = Arc::new(AtomicUsize::new(0));
    let options = Options::new().expiration(Duration::ZERO);
    run(async {
        for _ in 0..2 {
            let items = vec!["a".to_owned(), "b".to_owned()];
            let stream =
                cache_memoize_stream("no-ttl", counted(&computed, items.clone()), &options);
            assert_eq!(collect(stream).await, items);
        }
    });
    assert_eq!(computed.load(Ordering::SeqCst), 2);
    assert_eq!(stats().stores, 0);
}

#[test]
fn memo_streams_are_send_and_unpin() {
    fn assert_send_unpin<T: Send + Unpin>(_: &T) {}
    let stream: MemoStream<String> =
        cache_memoize_stream("send", || slowly(Vec::<String>::new()), &Options::new());
    assert_send_unpin(&stream);
}
