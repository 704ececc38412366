//! A backend that drops, corrupts, truncates, extends, swaps and fails:
//! the caller always gets the value its compute function produces.

use std::sync::Arc;

use memo_runtime::{
    Config, EncryptionKey, Options, cache_memoize, cache_memoize_iter, configure, stats,
    try_cache_memoize,
};
use memo_tests::faulty::{Faults, FaultyBackend};
use memo_tests::serial;

/// The value every key must yield: a pure function of the key, so stale
/// values of the same key are legitimately equal, while another key's value
/// is always different. Large values span several chunks; small ones fit
/// one entry (so no store is skipped for size, and `errors` counts only
/// backend failures).
fn truth(n: u64, large: bool) -> Vec<String> {
    let count = if large { (n % 7) * 40 + 1 } else { n % 7 + 1 };
    (0..count).map(|i| format!("key {n} item {i}")).collect()
}

fn run(faults: Faults, seed: u64, rounds: u64, encrypt: bool) -> Arc<FaultyBackend> {
    let backend = Arc::new(FaultyBackend::new(seed, faults));
    configure(
        Config::with_shared_backend(backend.clone())
            .chunk_size(1024)
            .encryption_key(EncryptionKey::new([9u8; 16]).unwrap()),
    );
    for round in 0..rounds {
        let n = round % 23;
        let large = round % 3 == 0;
        let id = n.to_string();
        let key = ["faults", if large { "large" } else { "small" }, &id];
        let options = Options::new()
            .encrypt(encrypt)
            .large_data(large)
            .compress(round % 2 == 0);
        match round % 4 {
            0 | 1 => assert_eq!(
                cache_memoize(key, || truth(n, large), &options),
                truth(n, large)
            ),
            2 => {
                let result: Result<Vec<String>, ()> =
                    try_cache_memoize(key, || Ok(truth(n, large)), &options);
                assert_eq!(result, Ok(truth(n, large)));
            }
            _ => {
                let items: Vec<String> =
                    cache_memoize_iter(["faults-iter", &id], || truth(n, true), &options).collect();
                assert_eq!(items, truth(n, true));
            }
        }
    }
    backend
}

#[test]
fn each_fault_alone_never_yields_a_wrong_value() {
    let _serial = serial();
    type Enable = fn(&mut Faults);
    let kinds: [(&str, Enable); 8] = [
        ("drop_write", |f| f.drop_write = 300),
        ("flip_bit", |f| f.flip_bit = 300),
        ("truncate", |f| f.truncate = 300),
        ("extend", |f| f.extend = 300),
        ("swap", |f| f.swap = 300),
        ("stale", |f| f.stale = 300),
        ("duplicate", |f| f.duplicate = 300),
        ("fail", |f| f.fail = 300),
    ];
    for (name, set) in kinds {
        for encrypt in [false, true] {
            let mut faults = Faults::default();
            set(&mut faults);
            let backend = run(faults, 42, 400, encrypt);
            assert!(
                backend.total_injected() > 20,
                "{name}: faults were injected"
            );
            let stats = stats();
            assert!(
                stats.hits > 0,
                "{name}: the cache still worked some of the time"
            );
            if name == "fail" {
                assert_eq!(
                    stats.errors,
                    backend.injected_failures(),
                    "every injected failure is counted"
                );
            }
        }
    }
}

#[test]
fn all_faults_together_never_yield_a_wrong_value() {
    let _serial = serial();
    for seed in 1..=5 {
        let backend = run(Faults::all(60), seed, 1000, seed % 2 == 0);
        assert!(backend.total_injected() > 100);
        assert_eq!(stats().errors, backend.injected_failures());
    }
}

#[test]
fn a_dead_backend_still_answers_every_call() {
    let _serial = serial();
    let faults = Faults {
        fail: 1000,
        ..Faults::default()
    };
    let backend = run(faults, 7, 200, false);
    let stats = stats();
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.errors, backend.injected_failures());
    assert!(stats.errors >= 200);
}
