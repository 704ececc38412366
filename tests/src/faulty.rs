//! A backend that misbehaves on purpose, reproducibly from a seed: it drops
//! writes, corrupts, truncates and extends values, duplicates them, swaps
//! values between keys, returns stale values from earlier writes, reorders
//! and shortens `get_many` answers, stores part of a `set_many` before
//! failing, and fails operations. memo must hand its caller the right value
//! through all of it.
//!
//! Faults fall in two classes. *Failures* (`fail`, `partial_write`,
//! `short_many`) are errors a backend reports, or an answer memo must treat
//! as one; memo counts each in `stats().errors`, and
//! [`FaultyBackend::injected_failures`] is the number it must reach.
//! Everything else is silent corruption, which memo must detect and treat
//! as a miss.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memo_runtime::{Backend, BackendError, MemoryBackend};

/// What can go wrong, each with a probability in parts per thousand.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A `set` reports success but stores nothing.
    pub drop_write: u32,
    /// A `get` returns the value with one bit flipped.
    pub flip_bit: u32,
    /// A `get` returns a prefix of the value.
    pub truncate: u32,
    /// A `get` returns the value with bytes appended.
    pub extend: u32,
    /// A `get` returns the value of another key.
    pub swap: u32,
    /// A `get` returns an earlier value of the same key.
    pub stale: u32,
    /// A `get` returns a duplicate of the value twice over.
    pub duplicate: u32,
    /// `get_many` returns the right values in another order.
    pub reorder: u32,
    /// `get_many` returns fewer values than keys asked for.
    pub short_many: u32,
    /// `set_many` stores some of its items, then fails.
    pub partial_write: u32,
    /// Any operation fails with an error.
    pub fail: u32,
}

impl Faults {
    /// Every fault at `per_mille`.
    pub fn all(per_mille: u32) -> Faults {
        Faults {
            drop_write: per_mille,
            flip_bit: per_mille,
            truncate: per_mille,
            extend: per_mille,
            swap: per_mille,
            stale: per_mille,
            duplicate: per_mille,
            reorder: per_mille,
            short_many: per_mille,
            partial_write: per_mille,
            fail: per_mille,
        }
    }
}

/// The faults that are failures memo must count in `stats().errors`.
const FAILURES: [&str; 3] = ["fail", "partial_write", "short_many"];

/// A [`MemoryBackend`] wrapped in seeded misbehaviour.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: MemoryBackend,
    faults: Faults,
    rng: AtomicU64,
    history: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    /// How many faults were injected, by kind.
    pub injected: Mutex<HashMap<&'static str, u64>>,
}

impl FaultyBackend {
    /// A backend injecting `faults`, reproducibly from `seed`.
    pub fn new(seed: u64, faults: Faults) -> Self {
        FaultyBackend {
            inner: MemoryBackend::new(),
            faults,
            rng: AtomicU64::new(seed.max(1)),
            history: Mutex::default(),
            injected: Mutex::default(),
        }
    }

    /// Total faults injected.
    pub fn total_injected(&self) -> u64 {
        self.injected.lock().unwrap().values().sum()
    }

    /// Injected operation failures (what `stats().errors` must account for).
    pub fn injected_failures(&self) -> u64 {
        let injected = self.injected.lock().unwrap();
        FAILURES
            .iter()
            .map(|kind| injected.get(kind).copied().unwrap_or(0))
            .sum()
    }

    /// How many faults of `kind` (a field name of [`Faults`]) were injected.
    pub fn injected(&self, kind: &str) -> u64 {
        self.injected
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The backend underneath, without faults.
    pub fn inner(&self) -> &MemoryBackend {
        &self.inner
    }

    fn next(&self) -> u64 {
        // xorshift64*: small, fast, and reproducible for a seed (the order
        // of calls across threads is not, which is fine for these tests).
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn roll(&self, per_mille: u32, kind: &'static str) -> bool {
        let hit = per_mille > 0 && self.next() % 1000 < u64::from(per_mille);
        if hit {
            *self.injected.lock().unwrap().entry(kind).or_default() += 1;
        }
        hit
    }

    fn fail(&self, op: &str) -> Result<(), BackendError> {
        if self.roll(self.faults.fail, "fail") {
            Err(BackendError::new(format!("injected failure of {op}")))
        } else {
            Ok(())
        }
    }

    fn mangle(&self, key: &str, value: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if self.roll(self.faults.stale, "stale") {
            let history = self.history.lock().unwrap();
            if let Some(old) = history.get(key).and_then(|h| h.first()) {
                return Some(old.clone());
            }
        }
        if self.roll(self.faults.swap, "swap") {
            let history = self.history.lock().unwrap();
            let others: Vec<&Vec<u8>> = history
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .filter_map(|(_, h)| h.last())
                .collect();
            if !others.is_empty() {
                let pick = self.next() as usize % others.len();
                return Some(others[pick].clone());
            }
        }
        let mut value = value?;
        if !value.is_empty() && self.roll(self.faults.flip_bit, "flip_bit") {
            let at = self.next() as usize % value.len();
            value[at] ^= 1 << (self.next() % 8);
        }
        if !value.is_empty() && self.roll(self.faults.truncate, "truncate") {
            let len = self.next() as usize % value.len();
            value.truncate(len);
        }
        if self.roll(self.faults.extend, "extend") {
            value.extend_from_slice(b"\0extra");
        }
        if self.roll(self.faults.duplicate, "duplicate") {
            value.extend_from_within(..);
        }
        Some(value)
    }

    fn remember(&self, key: &str, value: &[u8]) {
        let mut history = self.history.lock().unwrap();
        let entry = history.entry(key.to_owned()).or_default();
        if entry.len() < 4 {
            entry.push(value.to_vec());
        } else {
            entry[3] = value.to_vec();
        }
    }
}

impl Backend for FaultyBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.fail("get")?;
        let value = self.inner.get(key)?;
        Ok(self.mangle(key, value))
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        self.fail("get_many")?;
        let values = self.inner.get_many(keys)?;
        let mut values: Vec<Option<Vec<u8>>> = keys
            .iter()
            .zip(values)
            .map(|(key, value)| self.mangle(key, value))
            .collect();
        if values.len() > 1 && self.roll(self.faults.reorder, "reorder") {
            // A rotation by at least one: every value moves.
            let by = 1 + self.next() as usize % (values.len() - 1);
            values.rotate_left(by);
        }
        if !values.is_empty() && self.roll(self.faults.short_many, "short_many") {
            values.truncate(self.next() as usize % values.len());
        }
        Ok(values)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.fail("set")?;
        self.remember(key, value);
        if self.roll(self.faults.drop_write, "drop_write") {
            return Ok(());
        }
        self.inner.set(key, value, ttl)
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        self.fail("set_many")?;
        let fail_after = self
            .roll(self.faults.partial_write, "partial_write")
            .then(|| self.next() as usize % items.len().max(1));
        for (i, (key, value)) in items.iter().enumerate() {
            if fail_after == Some(i) {
                return Err(BackendError::new(format!(
                    "injected failure of set_many after {i} of {} items",
                    items.len()
                )));
            }
            self.remember(key, value);
            if !self.roll(self.faults.drop_write, "drop_write") {
                self.inner.set(key, value, ttl)?;
            }
        }
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        self.fail("add")?;
        self.inner.add(key, value, ttl)
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        self.fail("touch")?;
        self.inner.touch(key, ttl)
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.fail("delete")?;
        self.inner.delete(key)
    }

    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.fail("delete_if_value")?;
        self.inner.delete_if_value(key, expected)
    }

    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.fail("touch_if_value")?;
        self.inner.touch_if_value(key, expected, ttl)
    }
}
