//! The cache-hit path's shortcuts keep every promise of the slow path:
//!
//! - each thread keeps its own copy of the configuration, yet a
//!   configuration installed by `configure` is seen by the very next call
//!   on every thread;
//! - the local copies (a sharded map of their own) are never served past an
//!   invalidation or the shared entry's expiry, on any thread;
//! - the attribute builds a key of several components in one string, the
//!   same key the functional API builds from the components;
//! - a synchronous local hit, found before the call is resolved by a hash
//!   of the full key's pieces, finds the copy of every form of its key
//!   (and only its key), and counts as the slow path does;
//! - a hit on the embedded store that skips the checksum of bytes already
//!   checked still checks new bytes, and another key's entry is a miss.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    Config, MemoryBackend, Options, cache_memoize, cache_memoize_async, configure, invalidate,
};
use memo_tests::runtime::run_multi;
use memo_tests::serial;

const THREADS: usize = 8;

#[test]
fn configure_is_seen_by_the_very_next_call_on_every_thread() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let rounds = 20;
    // Both barriers are met once per round by every worker and the main
    // thread: the workers call, the main thread configures afresh, the
    // workers call again.
    let called = Barrier::new(THREADS + 1);
    let configured = Barrier::new(THREADS + 1);
    let stale = AtomicUsize::new(0);
    thread::scope(|scope| {
        for worker in 0..THREADS {
            let (called, configured, stale) = (&called, &configured, &stale);
            scope.spawn(move || {
                let key = format!("configure:{worker}");
                for round in 0..rounds {
                    // Stores `round` in this round's configuration, and
                    // reads it back from this thread's copy of it.
                    // (Counted rather than asserted, so that a failure
                    // cannot leave the other threads at a barrier.)
                    let stored: usize = cache_memoize(&key, || round, &Options::new());
                    let again: usize = cache_memoize(&key, || usize::MAX, &Options::new());
                    if (stored, again) != (round, round) {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    called.wait();
                    configured.wait();
                    // A fresh, empty backend: the call must compute. An
                    // old configuration would answer `round`.
                    let next: usize = cache_memoize(&key, || round + 1, &Options::new());
                    if next != round + 1 {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    let copy = Options::new().local(Duration::from_secs(60));
                    let local: usize = cache_memoize(&key, || usize::MAX, &copy);
                    if local != round + 1 {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        for _ in 0..rounds {
            called.wait();
            configure(Config::new(MemoryBackend::new()));
            configured.wait();
        }
    });
    assert_eq!(stale.load(Ordering::SeqCst), 0);
}

#[test]
fn configure_from_another_thread_is_seen_by_async_tasks() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    run_multi(async {
        let first: u32 =
            cache_memoize_async("configure:async", || async { 1 }, &Options::new()).await;
        assert_eq!(first, 1);
        thread::spawn(|| configure(Config::new(MemoryBackend::new())))
            .join()
            .unwrap();
        let next: u32 =
            cache_memoize_async("configure:async", || async { 2 }, &Options::new()).await;
        assert_eq!(next, 2, "the new, empty configuration computes");
    });
}

#[test]
fn no_thread_serves_a_local_copy_after_invalidate_returns() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new().local(Duration::from_secs(60));
    let rounds = 20;
    let hit = Barrier::new(THREADS + 1);
    let invalidated = Barrier::new(THREADS + 1);
    let wrong = AtomicUsize::new(0);
    let generation = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let (hit, invalidated, wrong, generation, options) =
                (&hit, &invalidated, &wrong, &generation, &options);
            scope.spawn(move || {
                for _ in 0..rounds {
                    // Many local hits, on every thread, of this round's
                    // value.
                    for _ in 0..100 {
                        let now = generation.load(Ordering::SeqCst);
                        let got: usize = cache_memoize("invalidated", || now, options);
                        if got != now {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    hit.wait();
                    invalidated.wait();
                }
            });
        }
        for _ in 0..rounds {
            hit.wait();
            generation.fetch_add(1, Ordering::SeqCst);
            invalidate("invalidated", &options).unwrap();
            invalidated.wait();
        }
    });
    assert_eq!(wrong.load(Ordering::SeqCst), 0);
}

#[test]
fn no_thread_serves_a_local_copy_past_the_shared_entry_s_expiry() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new()
        .local(Duration::from_secs(3600))
        .expiration(Duration::from_millis(300));
    let expired = AtomicBool::new(false);
    let runs = Arc::new(AtomicUsize::new(0));
    let first: usize = cache_memoize(
        "expiring",
        || runs.fetch_add(1, Ordering::SeqCst) + 1,
        &options,
    );
    assert_eq!(first, 1);
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let (expired, options, runs) = (&expired, &options, &runs);
            scope.spawn(move || {
                // Hits of the first value until it expires (on any
                // thread's copy), then never again. Bounded by time, not
                // by a count of calls: hits served without a lock run
                // through any count too fast.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while std::time::Instant::now() < deadline {
                    let past = expired.load(Ordering::SeqCst);
                    let got: usize = cache_memoize(
                        "expiring",
                        || runs.fetch_add(1, Ordering::SeqCst) + 1,
                        options,
                    );
                    if past {
                        assert_ne!(got, 1, "a copy served past the entry's expiry");
                        return;
                    }
                }
                panic!("never saw the expiry");
            });
        }
        // The shared entry's logical expiry is 300 ms after it was stored;
        // memo's clocks are read after that on every later call.
        thread::sleep(Duration::from_millis(350));
        expired.store(true, Ordering::SeqCst);
    });
}

#[memo_runtime::cache_memoize(key = "parts:{a}:{b}:v{n}")]
fn joined(a: &str, b: String, n: u32) -> String {
    format!("{a}/{b}/{n}")
}

#[memo_runtime::cache_memoize(key = "lit%:more:{a}:tail%:end", version = 2)]
fn literal_runs(a: &str) -> String {
    format!("runs {a}")
}

#[memo_runtime::cache_memoize]
fn default_key(a: u32) -> u32 {
    a + 1
}

#[memo_runtime::cache_memoize(key = "{a}", local = 60)]
fn alone(a: &str) -> String {
    format!("computed {a}")
}

#[test]
fn the_attribute_s_joined_key_is_the_functional_api_s() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    for (a, b) in [
        ("x", "y"),
        ("a:b", "%3A"),
        ("%", ":"),
        ("", ""),
        ("é ü", "\\x20"),
    ] {
        let value = joined(a, b.to_owned(), 7);
        let expected = format!("{a}/{b}/7");
        assert_eq!(value, expected);
        // The same key built from components: a hit.
        let parts = ["parts", a, b, "v7"];
        let found: String =
            cache_memoize(parts, || panic!("a miss for {parts:?}"), &Options::new());
        assert_eq!(found, expected);
        joined_invalidate(a, b.to_owned(), 7).unwrap();
        let hit: String = cache_memoize(parts, || "recomputed".to_owned(), &Options::new());
        assert_eq!(hit, "recomputed", "the helper dropped the same key");
    }
    // Runs of literal components, escaped and joined when the function
    // was compiled, make the key the components would.
    for a in ["x", "a:b%", ""] {
        assert_eq!(literal_runs(a), format!("runs {a}"));
        let parts = ["lit%", "more", a, "tail%", "end", "v2"];
        let found: String =
            cache_memoize(parts, || panic!("a miss for {parts:?}"), &Options::new());
        assert_eq!(found, format!("runs {a}"));
    }
    assert_eq!(default_key(5), 6);
    let parts = [module_path!(), "default_key", "5"];
    let found: u32 = cache_memoize(parts, || panic!("a miss for {parts:?}"), &Options::new());
    assert_eq!(found, 6);
    // One component is used as is, unescaped, as a one-element sequence.
    assert_eq!(alone("a:b%"), "computed a:b%");
    let found: String = cache_memoize(["a:b%"], || panic!("a miss"), &Options::new());
    assert_eq!(found, "computed a:b%");
}

#[test]
fn a_local_copy_is_found_by_every_form_of_its_key_and_counted() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).namespace("shop"));
    let options = Options::new().local(Duration::from_secs(60));
    let runs = AtomicUsize::new(0);
    let compute = || runs.fetch_add(1, Ordering::SeqCst) + 1;
    // Stored as is, the raw form and the components' form are one key;
    // a component's `:` is escaped, so it is another key.
    let first: usize = cache_memoize("user:42", compute, &options);
    let parts: usize = cache_memoize(["user", "42"], compute, &options);
    let other: usize = cache_memoize(["user:42"], compute, &options);
    let escaped: usize = cache_memoize(["user", "4:2"], compute, &options);
    assert_eq!((first, parts, other, escaped), (1, 1, 1, 2));
    // `["user:42"]` is used as is: the same key as `"user:42"`.
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // A key with a space is stored escaped: found by the slow path.
    let spaced: usize = cache_memoize("a b", compute, &options);
    let again: usize = cache_memoize("a b", compute, &options);
    assert_eq!((spaced, again), (3, 3));
    // Another key whose bytes differ only past a common prefix.
    let longer: usize = cache_memoize("user:421", compute, &options);
    assert_eq!(longer, 4);
    let stats = memo_runtime::stats();
    // Two hits found before resolving the call, one by the slow path.
    assert_eq!(stats.local_hits, 3, "{stats:?}");
    assert_eq!(stats.hits, 3, "{stats:?}");
    assert_eq!(stats.misses, 4, "{stats:?}");
}

#[test]
fn an_embedded_hit_checks_bytes_it_has_not_checked_before() {
    use memo_runtime::Backend;
    let _serial = serial();
    let backend = MemoryBackend::new();
    configure(Config::new(backend.clone()));
    let options = Options::new();
    let runs = AtomicUsize::new(0);
    let compute = || runs.fetch_add(1, Ordering::SeqCst) + 1;
    let first: usize = cache_memoize("checked", compute, &options);
    // Hits: the second and later reuse the first one's check.
    for _ in 0..3 {
        assert_eq!(
            cache_memoize::<_, usize, _>("checked", compute, &options),
            first
        );
    }
    // A flipped byte in a copy of the entry, written back: new bytes, not
    // checked yet, so the checksum catches it.
    let mut bytes = backend.get("checked").unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    backend
        .set("checked", &bytes, Duration::from_secs(60))
        .unwrap();
    let invalid_before = memo_runtime::stats().invalid;
    let recomputed: usize = cache_memoize("checked", compute, &options);
    assert_eq!(recomputed, 2);
    assert_eq!(memo_runtime::stats().invalid, invalid_before + 1);
    // Another key's entry, checked under that key, copied under this one:
    // a miss, never the other key's value.
    let theirs: usize = cache_memoize("theirs", || 100, &options);
    assert_eq!(
        cache_memoize::<_, usize, _>("theirs", compute, &options),
        theirs
    );
    let foreign = backend.get("theirs").unwrap().unwrap();
    backend
        .set("mine", &foreign, Duration::from_secs(60))
        .unwrap();
    let mine: usize = cache_memoize("mine", compute, &options);
    assert_eq!(mine, 3);
    assert_eq!(cache_memoize::<_, usize, _>("mine", compute, &options), 3);
    let stats = memo_runtime::stats();
    assert_eq!(stats.hits, 5, "{stats:?}");
    assert_eq!(stats.misses, 4, "{stats:?}");
}

/// A value whose `Clone` makes memoized calls of its own, local and not.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct CallsWhenCloned(u32);

impl Clone for CallsWhenCloned {
    fn clone(&self) -> Self {
        CallsWhenCloned(inner_local(self.0) + inner_plain(self.0) - self.0)
    }
}

#[memo_runtime::cache_memoize(key = "reentrant:inner:{n}", local = 60)]
fn inner_local(n: u32) -> u32 {
    n
}

#[memo_runtime::cache_memoize(key = "reentrant:plain:{n}")]
fn inner_plain(n: u32) -> u32 {
    n
}

#[memo_runtime::cache_memoize(key = "reentrant:outer:{n}", local = 60)]
fn outer(n: u32) -> CallsWhenCloned {
    CallsWhenCloned(n)
}

#[test]
fn a_value_whose_clone_calls_memo_is_served_from_its_local_copy() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    // Computed, then hits: each clones the kept value, and the clone's
    // own memoized calls hit (or fill) their entries and copies.
    for _ in 0..3 {
        assert_eq!(outer(5), CallsWhenCloned(5));
    }
    let stats = memo_runtime::stats();
    assert!(stats.local_hits >= 2, "{stats:?}");
}

/// Makes memoized calls from a thread-local's destructor as its thread
/// exits, and sends what they returned.
struct CallsOnExit(mpsc::Sender<Vec<u32>>);

impl Drop for CallsOnExit {
    fn drop(&mut self) {
        let _ = self.0.send(calls_on_exit());
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<CallsOnExit>> = const { RefCell::new(None) };
}

/// A local copy whose clone makes memoized calls, a local copy and a
/// plain hit, three times over: `[36; 3]`.
fn calls_on_exit() -> Vec<u32> {
    (0..3)
        .map(|_| outer(11).0 + inner_local(12) + inner_plain(13))
        .collect()
}

#[test]
fn memoized_calls_from_a_thread_local_s_destructor_get_their_values() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    // Thread-locals are dropped in the reverse of the order they were
    // first used: calls made before the thread-local is set run its
    // destructor while the thread still remembers their hits, calls made
    // after run it once the remembered hits (and memo's other
    // thread-locals) are gone.
    for calls_first in [true, false] {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            if calls_first {
                assert_eq!(calls_on_exit(), [36; 3]);
            }
            ON_EXIT.with(|on_exit| *on_exit.borrow_mut() = Some(CallsOnExit(tx)));
            if !calls_first {
                assert_eq!(calls_on_exit(), [36; 3]);
            }
        })
        .join()
        .unwrap();
        assert_eq!(rx.recv().unwrap(), [36; 3], "calls first: {calls_first}");
    }
}

#[test]
fn no_thread_reads_an_embedded_entry_after_it_is_replaced_or_dropped() {
    use memo_runtime::Backend;
    let _serial = serial();
    let backend = MemoryBackend::new();
    configure(Config::new(backend.clone()));
    let options = Options::new();
    let rounds = 20;
    let hit = Barrier::new(THREADS + 1);
    let written = Barrier::new(THREADS + 1);
    let wrong = AtomicUsize::new(0);
    let generation = AtomicUsize::new(0);
    thread::scope(|scope| {
        for _ in 0..THREADS {
            let (hit, written, wrong, generation, options) =
                (&hit, &written, &wrong, &generation, &options);
            scope.spawn(move || {
                for _ in 0..rounds {
                    for _ in 0..100 {
                        let now = generation.load(Ordering::SeqCst);
                        let got: usize = cache_memoize("replaced", || now, options);
                        if got != now {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    hit.wait();
                    written.wait();
                }
            });
        }
        for round in 0..rounds {
            hit.wait();
            generation.fetch_add(1, Ordering::SeqCst);
            if round % 2 == 0 {
                invalidate("replaced", &options).unwrap();
            } else {
                // Overwritten with the next generation's value, as another
                // writer of the store would.
                let next = generation.load(Ordering::SeqCst);
                let stored = {
                    let _: usize = cache_memoize("scratch", || next, &options);
                    backend.get("scratch").unwrap().unwrap()
                };
                // The scratch entry is bound to its own key: written under
                // "replaced" it is a miss, and the call recomputes.
                backend
                    .set("replaced", &stored, Duration::from_secs(60))
                    .unwrap();
                backend.delete("scratch").unwrap();
            }
            written.wait();
        }
    });
    assert_eq!(wrong.load(Ordering::SeqCst), 0);
}

#[test]
fn a_plain_embedded_hit_is_counted_and_never_served_past_its_logical_expiry() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()).namespace("plain-ns"));
    // The stale window keeps the entry in the store past its logical
    // expiry; a call without one must not be served it then.
    let keeping = Options::new()
        .expiration(Duration::from_millis(300))
        .stale_while_revalidate(Duration::from_secs(60));
    let plain = Options::new().expiration(Duration::from_millis(300));
    // Stored as they are, and escaped ("a b"): both hit.
    for key in ["plain:key", "a b"] {
        let first: u32 = cache_memoize(key, || 1, &keeping);
        assert_eq!(first, 1);
        let before = memo_runtime::stats();
        let hit: u32 = cache_memoize(key, || panic!("a miss for {key}"), &plain);
        assert_eq!(hit, 1);
        let after = memo_runtime::stats();
        assert_eq!(after.hits, before.hits + 1, "{key}");
        assert!(after.bytes_read > before.bytes_read, "{key}");
        // Another type under the same key is a miss, not a wrong value.
        let other: String = cache_memoize(key, || "other".to_owned(), &plain);
        assert_eq!(other, "other");
        let _: u32 = cache_memoize(key, || 1, &keeping);
    }
    thread::sleep(Duration::from_millis(350));
    for key in ["plain:key", "a b"] {
        let again: u32 = cache_memoize(key, || 2, &plain);
        assert_eq!(again, 2, "{key} served past its logical expiry");
    }
}

// ---------------------------------------------------------------------------
// The hits a thread remembers by the caller's key, served again first.

#[test]
fn a_remembered_embedded_hit_is_never_served_past_its_logical_expiry() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let keeping = Options::new()
        .expiration(Duration::from_millis(300))
        .stale_while_revalidate(Duration::from_secs(60));
    let plain = Options::new().expiration(Duration::from_millis(300));
    let _: u32 = cache_memoize("remembered:expiry", || 1, &keeping);
    let stored = Instant::now();
    let expiry = stored + Duration::from_millis(300);
    // Hit after hit with no write in between, past the logical expiry:
    // the entry stays in the store (the stale window), so only the
    // remembered expiry can stop it being served.
    let mut recomputed = false;
    while stored.elapsed() < Duration::from_millis(1500) {
        let started = Instant::now();
        let value: u32 = cache_memoize("remembered:expiry", || 2, &plain);
        if value == 2 {
            recomputed = true;
            break;
        }
        assert!(
            started < expiry,
            "served {:?} past the logical expiry",
            started - expiry
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert!(recomputed, "the value was never recomputed");
}

/// A plain call's options and a local copy's: the two kinds of hit a
/// thread remembers.
fn plain_and_local() -> [Options; 2] {
    [
        Options::new(),
        Options::new().local(Duration::from_secs(60)),
    ]
}

#[test]
fn a_remembered_hit_is_never_served_to_another_type() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    // A `u32` and a `u64` have the same postcard bytes: only the type
    // tells the two calls apart.
    for options in plain_and_local() {
        invalidate("remembered:type", &options).unwrap();
        for _ in 0..3 {
            let small: u32 = cache_memoize("remembered:type", || 7, &options);
            assert_eq!(small, 7);
        }
        let wide: u64 = cache_memoize("remembered:type", || 9, &options);
        assert_eq!(wide, 9, "{options:?}");
    }
}

#[test]
fn remembered_keys_of_every_length_are_told_apart() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    // Lengths across the word boundaries of the slot hash; two keys of
    // each length differ only in their first or their last byte.
    for options in plain_and_local() {
        for len in 1..=40 {
            let base = "k".repeat(len);
            let keys = [
                base.clone(),
                format!("x{}", &base[1..]),
                format!("{}y", &base[..len - 1]),
            ];
            for _ in 0..3 {
                for (n, key) in keys.iter().enumerate() {
                    let expected = format!("{len}/{n}");
                    let value: String = cache_memoize(key.as_str(), || expected.clone(), &options);
                    assert_eq!(value, expected, "{key:?}, {options:?}");
                }
            }
        }
    }
}

#[memo_runtime::cache_memoize(key = "ints:{a}:{b}:{c}:{d}:{e}:{f}:{g}")]
fn integers(a: i8, b: i64, c: u64, d: isize, e: usize, f: u16, g: i128) -> String {
    format!("{a} {b} {c} {d} {e} {f} {g}")
}

#[test]
fn the_attribute_s_integer_arguments_make_the_key_their_text_would() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let cases: [(i8, i64, u64, isize, usize, u16, i128); 5] = [
        (0, 0, 0, 0, 0, 0, 0),
        (-1, -1, 1, -1, 1, 1, -1),
        (9, 10, 99, 100, 999, 1000, 10_000),
        (
            i8::MIN,
            i64::MIN,
            u64::MAX,
            isize::MIN,
            usize::MAX,
            u16::MAX,
            i128::MIN,
        ),
        (
            i8::MAX,
            i64::MAX,
            u64::MAX - 1,
            isize::MAX,
            usize::MAX - 1,
            0,
            i128::MAX,
        ),
    ];
    for (a, b, c, d, e, f, g) in cases {
        let expected = format!("{a} {b} {c} {d} {e} {f} {g}");
        assert_eq!(integers(a, b, c, d, e, f, g), expected);
        let parts = [
            "ints".to_owned(),
            a.to_string(),
            b.to_string(),
            c.to_string(),
            d.to_string(),
            e.to_string(),
            f.to_string(),
            g.to_string(),
        ];
        let found: String = cache_memoize(
            parts.clone(),
            || panic!("a miss for {parts:?}"),
            &Options::new(),
        );
        assert_eq!(found, expected);
    }
}
