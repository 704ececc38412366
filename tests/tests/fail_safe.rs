//! `Options::fail_safe`: an expired value is kept to fall back on, and a
//! recomputation that returns `Err` serves it instead, counted, storing
//! nothing, so the next call tries again. On the embedded store,
//! memcached and Redis.

use std::cell::Cell;
use std::time::Duration;

use memo_runtime::{
    Config, LockOptions, MemoryBackend, Options, configure, invalidate, stats, try_cache_memoize,
    try_cache_memoize_async,
};
use memo_tests::runtime;
use memo_tests::serial;
use memo_tests::with_each_backend;

/// Expires in a second (memcached counts whole seconds), kept five more.
fn options() -> Options {
    Options::new()
        .expiration(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(5))
}

fn past_expiry() {
    std::thread::sleep(Duration::from_millis(1_200));
}

#[test]
fn a_failed_recomputation_serves_the_last_good_value_until_one_succeeds() {
    with_each_backend(|backend| {
        for options in [
            options(),
            options().lock(LockOptions::new()),
            options().stale_while_revalidate(Duration::from_millis(100)),
        ] {
            let key = "fs:value";
            let calls = Cell::new(0);
            let failing = || -> Result<u32, String> {
                calls.set(calls.get() + 1);
                Err("the source is down".into())
            };
            assert_eq!(
                try_cache_memoize(key, || Ok::<u32, String>(1), &options),
                Ok(1)
            );
            past_expiry();
            let before = stats().fail_safe_serves;
            // Each call tries again, and falls back.
            assert_eq!(
                try_cache_memoize(key, failing, &options),
                Ok(1),
                "{backend}"
            );
            assert_eq!(
                try_cache_memoize(key, failing, &options),
                Ok(1),
                "{backend}"
            );
            assert_eq!(calls.get(), 2, "{backend}: every call recomputes");
            assert_eq!(stats().fail_safe_serves, before + 2, "{backend}");
            // A success is stored and served from then on.
            assert_eq!(
                try_cache_memoize(key, || Ok::<u32, String>(2), &options),
                Ok(2)
            );
            assert_eq!(
                try_cache_memoize(key, failing, &options),
                Ok(2),
                "{backend}"
            );
            assert_eq!(calls.get(), 2, "{backend}: a hit computes nothing");
            invalidate(key, &options).unwrap();
        }
    });
}

#[test]
fn with_nothing_to_fall_back_on_the_error_is_the_callers() {
    with_each_backend(|backend| {
        let err = || -> Result<u32, String> { Err("down".into()) };
        // Never stored.
        assert_eq!(
            try_cache_memoize("fs:none", err, &options()),
            Err("down".into())
        );
        // Without the option, an expired value is not kept to fall back on.
        let plain = Options::new().expiration(Duration::from_secs(1));
        assert_eq!(
            try_cache_memoize("fs:plain", || Ok::<u32, String>(1), &plain),
            Ok(1)
        );
        past_expiry();
        assert_eq!(
            try_cache_memoize("fs:plain", err, &plain),
            Err("down".into()),
            "{backend}"
        );
        // Past the fail-safe window, neither.
        let short = Options::new()
            .expiration(Duration::from_secs(1))
            .fail_safe(Duration::from_millis(100));
        assert_eq!(
            try_cache_memoize("fs:short", || Ok::<u32, String>(1), &short),
            Ok(1)
        );
        past_expiry();
        assert_eq!(
            try_cache_memoize("fs:short", err, &short),
            Err("down".into()),
            "{backend}"
        );
        for key in ["fs:none", "fs:plain", "fs:short"] {
            invalidate(key, &plain).unwrap();
        }
    });
}

#[test]
fn a_panic_is_never_swallowed() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    assert_eq!(
        try_cache_memoize("fs:panic", || Ok::<u32, String>(1), &options()),
        Ok(1)
    );
    past_expiry();
    let caught = std::panic::catch_unwind(|| {
        try_cache_memoize::<_, u32, String, _>(
            "fs:panic",
            || panic!("the caller's own"),
            &options(),
        )
    });
    assert!(caught.is_err(), "the panic reached its caller");
    let after = try_cache_memoize(
        "fs:panic",
        || Err::<u32, String>("down".to_owned()),
        &options(),
    );
    assert_eq!(after, Ok(1), "the value is still there to fall back on");
}

#[test]
fn async_calls_fall_back_too() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    runtime::run(async {
        let first: Result<u32, String> =
            try_cache_memoize_async("fs:async", || async { Ok(1) }, &options()).await;
        assert_eq!(first, Ok(1));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let later: Result<u32, String> =
            try_cache_memoize_async("fs:async", || async { Err("down".into()) }, &options()).await;
        assert_eq!(later, Ok(1));
    });
}

#[test]
fn a_value_a_predicate_refuses_is_returned_not_replaced() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let small = |value: &u32| *value < 10;
    let first: Result<u32, String> =
        memo_runtime::try_cache_memoize_if("fs:if", || Ok(1), small, &options());
    assert_eq!(first, Ok(1));
    past_expiry();
    let refused: Result<u32, String> =
        memo_runtime::try_cache_memoize_if("fs:if", || Ok(99), small, &options());
    assert_eq!(refused, Ok(99), "the refused value is the caller's");
}
