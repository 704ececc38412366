//! The generated `<fn>_invalidate` and `<fn>_refresh` helpers.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use memo_runtime::{Config, MemoryBackend, cache_memoize, configure};

fn fresh() {
    configure(Config::new(MemoryBackend::new()).namespace("attr-helpers"));
}

static BUILDS: AtomicUsize = AtomicUsize::new(0);

struct Conn;

#[cache_memoize(key = "report:{id}", ignore(conn), version = 2)]
fn report(conn: &Conn, id: u32) -> (u32, usize) {
    let _ = conn;
    (id, BUILDS.fetch_add(1, SeqCst))
}

#[test]
fn invalidate_drops_one_entry() {
    let _serial = memo_tests::serial();
    fresh();
    let first = report(&Conn, 1);
    let other = report(&Conn, 2);
    assert_eq!(report(&Conn, 1), first);
    report_invalidate(1).unwrap();
    let rebuilt = report(&Conn, 1);
    assert_ne!(rebuilt, first, "recomputed after invalidate");
    assert_eq!(report(&Conn, 1), rebuilt, "and cached again");
    assert_eq!(report(&Conn, 2), other, "other entries untouched");
}

#[test]
fn invalidating_a_missing_entry_is_fine() {
    let _serial = memo_tests::serial();
    fresh();
    report_invalidate(12345).unwrap();
}

#[test]
fn refresh_recomputes_and_stores() {
    let _serial = memo_tests::serial();
    fresh();
    let first = report(&Conn, 3);
    let refreshed = report_refresh(&Conn, 3);
    assert_ne!(refreshed, first, "refresh always computes");
    assert_eq!(report(&Conn, 3), refreshed, "and overwrites the entry");
}

static INNER: AtomicUsize = AtomicUsize::new(0);
static OUTER: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "inner")]
fn inner() -> usize {
    INNER.fetch_add(1, SeqCst)
}

#[cache_memoize(key = "outer")]
fn outer() -> (usize, usize) {
    (OUTER.fetch_add(1, SeqCst), inner())
}

#[test]
fn refresh_reaches_only_the_outer_call() {
    let _serial = memo_tests::serial();
    fresh();
    let (outer_first, inner_first) = outer();
    let (outer_again, inner_again) = outer_refresh();
    assert_eq!(outer_again, outer_first + 1);
    assert_eq!(inner_again, inner_first, "inner() was read from the cache");
    assert_eq!(outer(), (outer_again, inner_again));
}

struct Pricing {
    region: String,
    computed: AtomicUsize,
}

impl Pricing {
    #[cache_memoize(key = "quote:{self.region}:{sku}", encrypt)]
    fn quote(&self, sku: u32) -> u64 {
        self.computed.fetch_add(1, SeqCst);
        u64::from(sku) * 3
    }
}

#[test]
fn method_helpers_are_methods() {
    let _serial = memo_tests::serial();
    configure(
        Config::new(MemoryBackend::new())
            .namespace("attr-helpers")
            .encryption_key(memo_runtime::EncryptionKey::new(b"0123456789abcdef").unwrap()),
    );
    let pricing = Pricing {
        region: "eu".into(),
        computed: AtomicUsize::new(0),
    };
    pricing.quote(7);
    pricing.quote(7);
    assert_eq!(pricing.computed.load(SeqCst), 1);
    pricing.quote_invalidate(7).unwrap();
    pricing.quote(7);
    assert_eq!(
        pricing.computed.load(SeqCst),
        2,
        "invalidate found the encrypted key"
    );
    assert_eq!(pricing.quote_refresh(7), 21);
    assert_eq!(pricing.computed.load(SeqCst), 3);
}

static STREAMS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "stream:{n}")]
fn stream(n: u32) -> impl Iterator<Item = u32> {
    STREAMS.fetch_add(1, SeqCst);
    0..n
}

#[test]
fn iterator_helpers() {
    let _serial = memo_tests::serial();
    fresh();
    let before = STREAMS.load(SeqCst);
    assert_eq!(stream(3).count(), 3);
    assert_eq!(stream(3).count(), 3);
    assert_eq!(STREAMS.load(SeqCst) - before, 1);
    assert_eq!(stream_refresh(3).count(), 3);
    assert_eq!(STREAMS.load(SeqCst) - before, 2);
    stream_invalidate(3).unwrap();
    assert_eq!(stream(3).count(), 3);
    assert_eq!(STREAMS.load(SeqCst) - before, 3);
}
