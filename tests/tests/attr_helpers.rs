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

/// Receivers other than `&self`, forwarded to the memoizing body as
/// written.
#[derive(Clone)]
struct Ledger {
    entries: Vec<u32>,
    computed: std::sync::Arc<AtomicUsize>,
}

impl Ledger {
    #[cache_memoize(key = "ledger-total:{n}")]
    fn total(self: std::sync::Arc<Self>, n: u32) -> u32 {
        self.computed.fetch_add(1, SeqCst);
        self.entries.iter().sum::<u32>() * n
    }

    #[cache_memoize(key = "ledger-padded:{n}")]
    fn padded(mut self, n: u32) -> Vec<u32> {
        self.computed.fetch_add(1, SeqCst);
        self.entries.resize(n as usize, 0);
        self.entries
    }
}

#[test]
fn refresh_takes_the_receiver_as_the_method_does() {
    let _serial = memo_tests::serial();
    fresh();
    let ledger = Ledger {
        entries: vec![1, 2],
        computed: std::sync::Arc::default(),
    };
    let shared = std::sync::Arc::new(ledger.clone());
    assert_eq!(shared.clone().total(2), 6);
    assert_eq!(shared.clone().total(2), 6);
    assert_eq!(shared.total_refresh(2), 6);
    assert_eq!(ledger.computed.load(SeqCst), 2);
    assert_eq!(ledger.clone().padded(3), [1, 2, 0]);
    assert_eq!(ledger.clone().padded(3), [1, 2, 0]);
    assert_eq!(ledger.clone().padded_refresh(3), [1, 2, 0]);
    assert_eq!(ledger.computed.load(SeqCst), 4);
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

// A `_refresh` refreshes the one call it was asked for. Memoized calls made
// while that call sets itself up (building its key or its options) are
// calls of their own, and read the cache as usual.

static LABELS: AtomicUsize = AtomicUsize::new(0);
static PRICES: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "label:{code}")]
fn label(code: &str) -> (String, usize) {
    (code.to_uppercase(), LABELS.fetch_add(1, SeqCst))
}

/// A key argument whose `Display` makes a memoized call.
struct Region(&'static str);

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&label(self.0).0)
    }
}

#[cache_memoize(key = "price:{region}")]
fn price(region: &Region) -> usize {
    let _ = region;
    PRICES.fetch_add(1, SeqCst)
}

#[test]
fn refresh_skips_a_memoized_call_in_a_key_argument_s_display() {
    let _serial = memo_tests::serial();
    fresh();
    let first = price(&Region("eu"));
    let labels = LABELS.load(SeqCst);
    let refreshed = price_refresh(&Region("eu"));
    assert_ne!(refreshed, first, "the outer call computed afresh");
    assert_eq!(
        LABELS.load(SeqCst),
        labels,
        "the call inside `Display` was read from the cache"
    );
    assert_eq!(price(&Region("eu")), refreshed, "and overwrote its entry");
}

static SETTINGS: AtomicUsize = AtomicUsize::new(0);
static BULLETINS: AtomicUsize = AtomicUsize::new(0);

/// An expiration read through a memoized call.
#[cache_memoize(key = "bulletin-ttl")]
fn bulletin_ttl() -> u64 {
    SETTINGS.fetch_add(1, SeqCst);
    3600
}

#[cache_memoize(key = "bulletin:{id}", expiration = bulletin_ttl())]
fn bulletin(id: u32) -> (u32, usize) {
    (id, BULLETINS.fetch_add(1, SeqCst))
}

#[cache_memoize(key = "async-bulletin:{id}", expiration = bulletin_ttl())]
async fn async_bulletin(id: u32) -> (u32, usize) {
    (id, BULLETINS.fetch_add(1, SeqCst))
}

#[test]
fn refresh_skips_a_memoized_call_in_an_option() {
    let _serial = memo_tests::serial();
    fresh();
    let first = bulletin(1);
    let settings = SETTINGS.load(SeqCst);
    let refreshed = bulletin_refresh(1);
    assert_ne!(refreshed, first, "the outer call computed afresh");
    assert_eq!(
        SETTINGS.load(SeqCst),
        settings,
        "the expiration's call was read from the cache"
    );
    assert_eq!(bulletin(1), refreshed, "and overwrote its entry");
}

#[test]
fn async_refresh_skips_a_memoized_call_in_an_option() {
    let _serial = memo_tests::serial();
    fresh();
    memo_tests::runtime::run(async {
        let first = async_bulletin(1).await;
        let settings = SETTINGS.load(SeqCst);
        let refreshed = async_bulletin_refresh(1).await;
        assert_ne!(refreshed, first, "the outer call computed afresh");
        assert_eq!(
            SETTINGS.load(SeqCst),
            settings,
            "the expiration's call was read from the cache"
        );
        assert_eq!(
            async_bulletin(1).await,
            refreshed,
            "and overwrote its entry"
        );
    });
}
