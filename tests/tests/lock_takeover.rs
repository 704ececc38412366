//! `CacheLock::update_expiration` must never extend a successor's lock.
//!
//! A holder whose lock expired can be overtaken: another process `add`s
//! its own token under the same key. If extending the lock were a read
//! ("is it still my token?") followed by a separate touch, a takeover
//! falling between the two would have the old holder extend the
//! successor's entry, keeping it alive long after the successor meant it
//! to expire. The extension is one compare-and-touch instead. The backend
//! here lets a successor take over right after the holder's first backend
//! operation of `update_expiration`, whichever it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use memo_runtime::{Backend, BackendError, CacheLock, Config, MemoryBackend, configure};
use memo_tests::serial;

/// A memory backend on which a successor takes the armed key over right
/// after the next read or compare-and-touch of it has been answered.
struct Takeover {
    inner: MemoryBackend,
    armed: AtomicBool,
    key: String,
}

impl Takeover {
    fn take_over_after<T>(&self, key: &str, answered: T) -> T {
        if key == self.key && self.armed.swap(false, Ordering::SeqCst) {
            self.inner
                .set(key, b"successor", SUCCESSOR_TTL)
                .expect("memory set");
        }
        answered
    }
}

const SUCCESSOR_TTL: Duration = Duration::from_millis(300);

impl Backend for Takeover {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let answered = self.inner.get(key);
        self.take_over_after(key, answered)
    }
    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.inner.set(key, value, ttl)
    }
    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.inner.add(key, value, ttl)
    }
    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.inner.touch(key, ttl)
    }
    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.inner.delete(key)
    }
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.inner.delete_if_value(key, expected)
    }
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let answered = self.inner.touch_if_value(key, expected, ttl);
        self.take_over_after(key, answered)
    }
}

#[test]
fn extending_a_lock_never_extends_a_successors_lock() {
    let _serial = serial();
    let key = CacheLock::new("report").full_cache_key().to_owned();
    let backend = Arc::new(Takeover {
        inner: MemoryBackend::new(),
        armed: AtomicBool::new(false),
        key: key.clone(),
    });
    configure(Config::with_shared_backend(backend.clone()));

    let mut holder = CacheLock::new("report");
    assert!(holder.acquire().unwrap());
    backend.armed.store(true, Ordering::SeqCst);
    // Whether this reports success (the extension landed before the
    // takeover) or `NotHeld` (after it), it must not touch the successor.
    let _ = holder.update_expiration(Some(Duration::from_secs(3600)));
    assert!(
        !backend.armed.load(Ordering::SeqCst),
        "no takeover happened"
    );
    assert_eq!(
        backend.inner.get(&key).unwrap().as_deref(),
        Some(&b"successor"[..])
    );

    thread::sleep(SUCCESSOR_TTL + Duration::from_millis(400));
    assert_eq!(
        backend.inner.get(&key).unwrap(),
        None,
        "the successor's lock outlived its own expiration: the old holder extended it"
    );
    configure(Config::new(MemoryBackend::new()));
}
