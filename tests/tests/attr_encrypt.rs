//! `encrypt` and `large_data` under the attribute, checked against the bytes
//! a backend actually receives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memo_runtime::{
    Backend, BackendError, Config, EncryptionKey, MemoryBackend, Options, cache_memoize, configure,
    make_cache_key,
};
use serde::{Deserialize, Serialize};

/// Keeps every key and value it is handed, on top of a real store.
#[derive(Default)]
struct Recording {
    inner: MemoryBackend,
    written: Mutex<HashMap<String, Vec<u8>>>,
}

impl Recording {
    fn keys(&self) -> Vec<String> {
        self.written.lock().unwrap().keys().cloned().collect()
    }

    /// Whether `needle` appears in any key or value written.
    fn saw(&self, needle: &[u8]) -> bool {
        self.written
            .lock()
            .unwrap()
            .iter()
            .any(|(key, value)| contains(key.as_bytes(), needle) || contains(value, needle))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl Backend for Recording {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.written
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_vec());
        self.inner.set(key, value, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.written
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_vec());
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key)
    }
}

fn recording(chunk_size: usize) -> Arc<Recording> {
    let backend = Arc::new(Recording::default());
    configure(
        Config::new(Arc::clone(&backend))
            .namespace("attr-encrypt")
            .encryption_key(EncryptionKey::new(b"0123456789abcdef").unwrap())
            .chunk_size(chunk_size),
    );
    backend
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Secret {
    owner: String,
    note: String,
}

static SECRETS: AtomicUsize = AtomicUsize::new(0);

#[cache_memoize(key = "secret-note:{owner}", encrypt)]
fn secret(owner: &str) -> Secret {
    SECRETS.fetch_add(1, SeqCst);
    Secret {
        owner: owner.to_owned(),
        note: "THE-PLAINTEXT-NOTE".to_owned(),
    }
}

#[test]
fn encrypt_hides_keys_and_values() {
    let _serial = memo_tests::serial();
    let backend = recording(64 * 1024);
    let before = SECRETS.load(SeqCst);
    let value = secret("mallory-owner");
    assert_eq!(secret("mallory-owner"), value);
    assert_eq!(SECRETS.load(SeqCst) - before, 1);
    assert!(!backend.keys().is_empty(), "something was stored");
    for readable in [
        &b"secret-note"[..],
        b"mallory-owner",
        b"THE-PLAINTEXT-NOTE",
        b"attr-encrypt",
    ] {
        assert!(
            !backend.saw(readable),
            "{:?} reached the backend",
            String::from_utf8_lossy(readable)
        );
    }
    let hashed = make_cache_key(
        ["secret-note", "mallory-owner"],
        &Options::new().encrypt(true),
    );
    assert!(
        backend.keys().contains(&hashed),
        "{:?} not in {:?}",
        hashed,
        backend.keys()
    );
}

#[cache_memoize(key = "plain-note:{owner}")]
fn plain(owner: &str) -> Secret {
    Secret {
        owner: owner.to_owned(),
        note: "THE-PLAINTEXT-NOTE".to_owned(),
    }
}

#[test]
fn without_encrypt_the_key_is_readable() {
    let _serial = memo_tests::serial();
    let backend = recording(64 * 1024);
    plain("alice");
    assert!(
        backend
            .keys()
            .contains(&"attr-encrypt:plain-note:alice".to_owned())
    );
}

static LARGE: AtomicUsize = AtomicUsize::new(0);

/// Far more than one chunk, encrypted.
#[cache_memoize(key = "large:{n}", large_data, encrypt)]
fn large(n: usize) -> Vec<String> {
    LARGE.fetch_add(1, SeqCst);
    (0..n).map(|i| format!("LARGE-ROW-{i:06}")).collect()
}

#[test]
fn large_data_spans_chunks_and_stays_encrypted() {
    let _serial = memo_tests::serial();
    let backend = recording(1024);
    let before = LARGE.load(SeqCst);
    let rows = large(5000);
    assert_eq!(large(5000), rows);
    assert_eq!(LARGE.load(SeqCst) - before, 1);
    assert!(
        backend.keys().len() > 2,
        "stored in chunks: {:?}",
        backend.keys().len()
    );
    assert!(!backend.saw(b"LARGE-ROW"));
}

/// Uncompressed large data, not encrypted: rows are visible in the chunks.
#[cache_memoize(key = "raw:{n}", large_data, compress = false)]
fn raw(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("RAW-ROW-{i:06}")).collect()
}

#[test]
fn large_data_with_compress_false_stores_raw_chunks() {
    let _serial = memo_tests::serial();
    let backend = recording(1024);
    let rows = raw(2000);
    assert_eq!(raw(2000), rows);
    assert!(backend.keys().len() > 2);
    assert!(
        backend.saw(b"RAW-ROW-00"),
        "uncompressed rows are stored as is"
    );
}
