//! `Backend::touch_if_value` on every real backend: it extends an entry's
//! time to live only while the entry holds the expected bytes, which is
//! what lets a lock holder renew its lock without ever extending a lock
//! that expired and was taken by someone else.

use std::time::Duration;

use memo_runtime::Backend;
use memo_tests::servers::every_backend;

#[test]
fn extends_only_a_matching_value_and_reports_which() {
    let minute = Duration::from_secs(60);
    for (name, backend, _server) in every_backend() {
        assert!(
            !backend.touch_if_value("absent", b"v", minute).unwrap(),
            "{name}: absent"
        );
        backend.set("lock", b"mine", minute).unwrap();
        assert!(
            !backend.touch_if_value("lock", b"theirs", minute).unwrap(),
            "{name}: another value"
        );
        assert!(
            !backend.touch_if_value("lock", b"min", minute).unwrap(),
            "{name}: a prefix"
        );
        assert!(
            backend.touch_if_value("lock", b"mine", minute).unwrap(),
            "{name}: matching"
        );
        assert_eq!(
            backend.get("lock").unwrap().as_deref(),
            Some(&b"mine"[..]),
            "{name}: the value is untouched"
        );
        // Values of every size, across socket-buffer and direct-write
        // boundaries, and bytes that look like protocol.
        for size in [0, 1, 2, 16 * 1024 - 1, 16 * 1024, 64 * 1024 + 1, 1 << 19] {
            let value: Vec<u8> = (0..size).map(|i| b"\r\n \0END"[i % 7]).collect();
            let key = format!("sized-{size}");
            backend.set(&key, &value, minute).unwrap();
            assert!(
                backend.touch_if_value(&key, &value, minute).unwrap(),
                "{name}: {size} bytes"
            );
            assert_eq!(backend.get(&key).unwrap().as_deref(), Some(&value[..]));
        }
    }
}

#[test]
fn the_ttl_is_really_extended_and_a_replaced_value_is_not() {
    for (name, backend, _server) in every_backend() {
        // memcached counts whole seconds, so the short TTL is one.
        backend
            .set("renewed", b"t", Duration::from_secs(1))
            .unwrap();
        backend
            .set("replaced", b"old", Duration::from_secs(1))
            .unwrap();
        assert!(
            backend
                .touch_if_value("renewed", b"t", Duration::from_secs(60))
                .unwrap(),
            "{name}"
        );
        backend
            .set("replaced", b"new", Duration::from_secs(1))
            .unwrap();
        assert!(
            !backend
                .touch_if_value("replaced", b"old", Duration::from_secs(60))
                .unwrap(),
            "{name}: the value changed"
        );
        std::thread::sleep(Duration::from_millis(2100));
        assert_eq!(
            backend.get("renewed").unwrap().as_deref(),
            Some(&b"t"[..]),
            "{name}: extended past its first TTL"
        );
        assert_eq!(
            backend.get("replaced").unwrap(),
            None,
            "{name}: the replaced value kept its own short TTL"
        );
        assert!(
            !backend
                .touch_if_value("renewed-gone", b"t", Duration::from_secs(60))
                .unwrap()
        );
    }
}
