//! Without any `configure` call, memo works on the embedded backend. This
//! file must never call `configure`: it is its own test process.

use memo_runtime::{Options, cache_memoize, config, stats};

#[test]
fn memoizes_on_the_embedded_backend_without_configuration() {
    let mut calls = 0;
    for _ in 0..3 {
        let value: String = cache_memoize(
            "unconfigured",
            || {
                calls += 1;
                "hello".to_owned()
            },
            &Options::new(),
        );
        assert_eq!(value, "hello");
    }
    assert_eq!(calls, 1);
    assert_eq!(stats().hits, 2);
    assert!(config().get_namespace().is_none());
    assert_eq!(
        config().get_default_expiration(),
        std::time::Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(config().get_chunk_size(), 1_047_552);
}
