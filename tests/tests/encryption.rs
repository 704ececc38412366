//! With encryption on, nothing readable reaches the backend, and a wrong
//! key or any tampering is a miss.

use memo_runtime::{
    Backend, Config, EncryptionKey, Options, cache_memoize, cache_memoize_iter, configure,
    make_cache_key, stats,
};
use memo_tests::recording::RecordingBackend;
use memo_tests::serial;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Secret {
    owner: String,
    card: String,
    notes: Vec<String>,
}

const KEY_MARKER: &[u8] = b"customer-7731";
const VALUE_MARKER: &str = "4111-1111-1111-1111";

fn secret() -> Secret {
    Secret {
        owner: "Grace Hopper".into(),
        card: VALUE_MARKER.into(),
        notes: (0..50)
            .map(|i| format!("note {i} {VALUE_MARKER}"))
            .collect(),
    }
}

fn key() -> EncryptionKey {
    EncryptionKey::new(b"an AES-256 key of 32 bytes here!").unwrap()
}

fn configured(force: bool) -> RecordingBackend {
    let backend = RecordingBackend::new();
    configure(
        Config::new(backend.clone())
            .namespace("shop")
            .encryption_key(key())
            .force_encryption(force)
            .chunk_size(2048),
    );
    backend
}

/// Every 6-byte window of the plaintext markers, so that even a partial
/// leak is caught.
fn leaks(backend: &RecordingBackend) -> Vec<String> {
    let mut found = Vec::new();
    for marker in [
        KEY_MARKER,
        VALUE_MARKER.as_bytes(),
        b"Grace Hopper",
        b"shop:",
    ] {
        for window in marker.windows(6) {
            if backend.saw(window) {
                found.push(String::from_utf8_lossy(window).into_owned());
            }
        }
    }
    found
}

#[test]
fn nothing_readable_reaches_the_backend() {
    let _serial = serial();
    let backend = configured(false);
    let options = Options::new().encrypt(true);
    let key = ["customer-7731", "card"];
    let first = cache_memoize(key, secret, &options);
    let second = cache_memoize(key, || unreachable!("cached"), &options);
    assert_eq!(first, second);

    let large = Options::new().encrypt(true).large_data(true);
    let big: Vec<Secret> = vec![secret(); 40];
    let stored = cache_memoize(["customer-7731", "history"], || big.clone(), &large);
    let loaded: Vec<Secret> =
        cache_memoize(["customer-7731", "history"], || unreachable!(), &large);
    assert_eq!(stored, loaded);

    let items: Vec<Secret> =
        cache_memoize_iter(["customer-7731", "feed"], || vec![secret(); 30], &options).collect();
    assert_eq!(items.len(), 30);

    assert!(!backend.values().is_empty());
    assert_eq!(leaks(&backend), Vec::<String>::new());
    for key in backend.keys() {
        // Derived keys (locks, chunks) end with the stored key's hash.
        let hash = key.rsplit(':').next().unwrap();
        assert_eq!(hash.len(), 64, "{key}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    }
}

#[test]
fn force_encryption_covers_calls_that_do_not_ask() {
    let _serial = serial();
    let backend = configured(true);
    let value = cache_memoize(["customer-7731"], secret, &Options::new().encrypt(false));
    assert_eq!(value, secret());
    assert_eq!(leaks(&backend), Vec::<String>::new());
}

#[test]
fn a_wrong_key_is_a_miss_not_an_error() {
    let _serial = serial();
    let backend = configured(false);
    let options = Options::new().encrypt(true);
    let _ = cache_memoize("k", secret, &options);
    // Another process with another key reads the same backend: the key hash
    // differs, so it misses; even forcing its key name onto our entry fails
    // authentication.
    let other = EncryptionKey::new(b"another key, also 32 bytes long!").unwrap();
    let their_options = Options::new().encrypt(true).encryption_key(other);
    let theirs = make_cache_key("k", &their_options);
    let ours = make_cache_key("k", &options);
    assert_ne!(theirs, ours);
    let entry = backend.inner().get(&ours).unwrap().unwrap();
    backend
        .inner()
        .set(&theirs, &entry, std::time::Duration::from_secs(60))
        .unwrap();
    let recomputed = cache_memoize(
        "k",
        || Secret {
            owner: "them".into(),
            card: String::new(),
            notes: vec![],
        },
        &their_options,
    );
    assert_eq!(recomputed.owner, "them");
    // A miss (behind another key's version token, or failing the MAC),
    // never an error.
    assert_eq!(stats().errors, 0);
    assert!(stats().invalid <= 1);
}

#[test]
fn every_flipped_bit_is_a_miss() {
    let _serial = serial();
    let backend = configured(false);
    let options = Options::new().encrypt(true);
    let _ = cache_memoize("flip", secret, &options);
    let full = make_cache_key("flip", &options);
    let good = backend.inner().get(&full).unwrap().unwrap();
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        backend
            .inner()
            .set(&full, &bad, std::time::Duration::from_secs(60))
            .unwrap();
        let value = cache_memoize(
            "flip",
            || Secret {
                owner: format!("recomputed {i}"),
                card: String::new(),
                notes: vec![],
            },
            &options.clone().force_overwrite(false),
        );
        assert_eq!(
            value.owner,
            format!("recomputed {i}"),
            "flip at {i} accepted"
        );
    }
}
