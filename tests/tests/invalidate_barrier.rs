//! `invalidate` is a barrier in this process: once it returns, no call
//! that starts afterwards is served a value whose computation or read began
//! before it. Three ways an older value used to come back are pinned here,
//! each on the embedded store, memcached and Redis, with a second thread
//! astride the step that reads, computes or stores; then the same for
//! `force_overwrite`, and a race of readers against a writer that
//! invalidates as it goes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, LazyLock};
use std::thread;
use std::time::Duration;

use memo_runtime::{Options, cache_memoize, invalidate, make_cache_key};
use memo_tests::with_each_backend;
use serde::{Deserialize, Deserializer, Serialize};

#[test]
fn a_computation_started_before_invalidate_is_not_served_after_it() {
    with_each_backend(|backend| {
        let o = Options::new();
        let started = Arc::new(Barrier::new(2));
        let go = Arc::new(Barrier::new(2));
        let (s, g) = (started.clone(), go.clone());
        let a = thread::spawn(move || {
            let compute = || {
                s.wait();
                g.wait();
                "old".to_string()
            };
            cache_memoize::<_, String, _>("k", compute, &Options::new())
        });
        started.wait();
        invalidate("k", &o).unwrap();
        go.wait();
        assert_eq!(a.join().unwrap(), "old", "its own caller gets its value");
        let c: String = cache_memoize("k", || "new".to_string(), &o);
        assert_eq!(
            c, "new",
            "{backend}: a value computed before invalidate was served after it"
        );
        invalidate("k", &o).unwrap();
    });
}

#[test]
fn a_caller_after_invalidate_does_not_join_an_older_flight() {
    with_each_backend(|backend| {
        let o = Options::new();
        let started = Arc::new(Barrier::new(2));
        let s = started.clone();
        let a = thread::spawn(move || {
            let compute = || {
                s.wait();
                thread::sleep(Duration::from_millis(300));
                "old".to_string()
            };
            cache_memoize::<_, String, _>("k2", compute, &Options::new())
        });
        started.wait();
        invalidate("k2", &o).unwrap();
        let c: String = cache_memoize("k2", || "new".to_string(), &o);
        assert_eq!(a.join().unwrap(), "old");
        assert_eq!(
            c, "new",
            "{backend}: a caller after invalidate joined the older flight"
        );
        invalidate("k2", &o).unwrap();
    });
}

static ARMED: AtomicBool = AtomicBool::new(false);
static DECODING: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(2));
static GO: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(2));

/// A value whose decoding can be held open, once, when armed.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Slow(u64);

impl<'de> Deserialize<'de> for Slow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        if n == 41 && ARMED.swap(false, Ordering::SeqCst) {
            DECODING.wait(); // "I have read the old bytes"
            GO.wait(); // "invalidate has returned"
        }
        Ok(Slow(n))
    }
}

#[test]
fn a_local_copy_read_before_invalidate_is_not_kept() {
    with_each_backend(|backend| {
        let local = Options::new().local(Duration::from_secs(3600));
        let _ = invalidate("k3", &local);
        assert_eq!(cache_memoize("k3", || Slow(41), &Options::new()), Slow(41));
        ARMED.store(true, Ordering::SeqCst);
        let reader = thread::spawn({
            let local = local.clone();
            move || cache_memoize::<_, Slow, _>("k3", || Slow(99), &local)
        });
        DECODING.wait();
        invalidate("k3", &local).unwrap();
        GO.wait();
        assert_eq!(reader.join().unwrap(), Slow(41));
        let got: Slow = cache_memoize("k3", || Slow(42), &local);
        assert_eq!(
            got,
            Slow(42),
            "{backend}: served a value invalidate had removed"
        );
        invalidate("k3", &local).unwrap();
    });
}

#[test]
fn a_computation_that_began_before_an_overwrite_is_not_served_after_it() {
    with_each_backend(|backend| {
        let o = Options::new();
        let started = Arc::new(Barrier::new(2));
        let go = Arc::new(Barrier::new(2));
        let (s, g) = (started.clone(), go.clone());
        let a = thread::spawn(move || {
            let compute = || {
                s.wait();
                g.wait();
                "old".to_string()
            };
            cache_memoize::<_, String, _>("k4", compute, &Options::new())
        });
        started.wait();
        // The refresh returns before the older computation stores.
        let fresh: String = cache_memoize(
            "k4",
            || "fresh".to_string(),
            &o.clone().force_overwrite(true),
        );
        assert_eq!(fresh, "fresh");
        go.wait();
        assert_eq!(a.join().unwrap(), "old");
        let c: String = cache_memoize("k4", || "recomputed".to_string(), &o);
        // The older store may have replaced the overwrite's value: that
        // costs a recomputation, never the old value.
        assert_ne!(
            c, "old",
            "{backend}: an older computation's store won over the overwrite"
        );
        invalidate("k4", &o).unwrap();
    });
}

/// The "database" the race below reads: its version, bumped before each
/// invalidation.
static VERSION: AtomicU64 = AtomicU64::new(0);

/// Readers compute from the database and store, with and without local
/// copies, while a writer bumps the database and invalidates: every call
/// the writer makes after its `invalidate` returned sees at least the
/// version it wrote.
#[test]
fn no_call_after_invalidate_sees_an_older_version_under_concurrent_readers() {
    with_each_backend(|backend| {
        for (name, options) in [
            ("plain", Options::new()),
            ("local", Options::new().local(Duration::from_secs(60))),
        ] {
            let key = format!("race:{name}");
            let stop = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..3)
                .map(|n| {
                    let (stop, options, key) = (stop.clone(), options.clone(), key.clone());
                    thread::spawn(move || {
                        let mut calls = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            let _: u64 = cache_memoize(
                                key.as_str(),
                                || {
                                    let version = VERSION.load(Ordering::SeqCst);
                                    // Now and then a slow computation, so
                                    // that stores land across the barrier.
                                    if (calls + n).is_multiple_of(3) {
                                        thread::sleep(Duration::from_micros(300));
                                    }
                                    version
                                },
                                &options,
                            );
                            calls += 1;
                        }
                    })
                })
                .collect();
            for _ in 0..150 {
                let written = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
                invalidate(key.as_str(), &options).unwrap();
                let seen: u64 =
                    cache_memoize(key.as_str(), || VERSION.load(Ordering::SeqCst), &options);
                assert!(
                    seen >= written,
                    "{backend} ({key}): version {seen} served after version {written} was invalidated"
                );
            }
            stop.store(true, Ordering::SeqCst);
            for reader in readers {
                reader.join().unwrap();
            }
            invalidate(key.as_str(), &options).unwrap();
        }
    });
}

/// A key that shares nothing with the one invalidated keeps its entry.
#[test]
fn invalidating_one_key_leaves_others_cached() {
    with_each_backend(|backend| {
        let o = Options::new();
        let _: u32 = cache_memoize("kept", || 1, &o);
        invalidate("dropped", &o).unwrap();
        let again: u32 = cache_memoize("kept", || 2, &o);
        assert_eq!(again, 1, "{backend}: {}", make_cache_key("kept", &o));
        invalidate("kept", &o).unwrap();
    });
}
