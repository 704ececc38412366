//! A backend that records every key and value it is given, to prove what
//! reaches a cache server (and what must not).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use memo_runtime::{Backend, BackendError, MemoryBackend};

/// One call made to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `get` or one key of `get_many`.
    Get(String),
    /// `set`, `add` or one item of `set_many`: key and value.
    Set(String, Vec<u8>),
    /// A whole `set_many` call: how many items it carried.
    SetMany(usize),
    /// `touch` or `touch_if_value`.
    Touch(String),
    /// `delete` or `delete_if_value`.
    Delete(String),
}

/// A [`MemoryBackend`] that logs every operation.
#[derive(Debug, Clone, Default)]
pub struct RecordingBackend {
    inner: MemoryBackend,
    log: Arc<Mutex<Vec<Op>>>,
}

impl RecordingBackend {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets the operations so far.
    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    /// Every key the backend was given, for any operation.
    pub fn keys(&self) -> Vec<String> {
        self.ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Get(k) | Op::Set(k, _) | Op::Touch(k) | Op::Delete(k) => Some(k),
                Op::SetMany(_) => None,
            })
            .collect()
    }

    /// Every value the backend was given, but the version tokens memo
    /// writes under version (`\\V`) and tag (`\\T`) keys before it computes.
    pub fn entries(&self) -> Vec<Vec<u8>> {
        self.ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Set(key, value) if !key.contains("\\V:") && !key.contains("\\T:") => {
                    Some(value)
                }
                _ => None,
            })
            .collect()
    }

    /// Every value the backend was given.
    pub fn values(&self) -> Vec<Vec<u8>> {
        self.ops()
            .into_iter()
            .filter_map(|op| match op {
                Op::Set(_, v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// Whether `needle` occurs in any key or value the backend was given.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.keys().iter().any(|k| contains(k.as_bytes(), needle))
            || self.values().iter().any(|v| contains(v, needle))
    }

    /// The underlying store, to tamper with directly.
    pub fn inner(&self) -> &MemoryBackend {
        &self.inner
    }

    fn record(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

impl Backend for RecordingBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.record(Op::Get(key.to_owned()));
        self.inner.get(key)
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        for key in keys {
            self.record(Op::Get((*key).to_owned()));
        }
        self.inner.get_many(keys)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.record(Op::Set(key.to_owned(), value.to_vec()));
        self.inner.set(key, value, ttl)
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        self.record(Op::SetMany(items.len()));
        for (key, value) in items {
            self.record(Op::Set((*key).to_owned(), value.to_vec()));
        }
        self.inner.set_many(items, ttl)
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.record(Op::Set(key.to_owned(), value.to_vec()));
        self.inner.add(key, value, ttl)
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.record(Op::Touch(key.to_owned()));
        self.inner.touch(key, ttl)
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.record(Op::Delete(key.to_owned()));
        self.inner.delete(key)
    }

    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.record(Op::Delete(key.to_owned()));
        self.inner.delete_if_value(key, expected)
    }

    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.record(Op::Touch(key.to_owned()));
        self.inner.touch_if_value(key, expected, ttl)
    }
}
