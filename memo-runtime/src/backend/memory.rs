//! The embedded in-memory backend, used when nothing else is configured.
//!
//! Built on moka's concurrent cache: lock-free reads, per-entry expiry, and a
//! bound on the total bytes held (keys and values, plus a fixed per-entry
//! overhead; keys count twice, as an entry may also remember the full key
//! its checksum was checked for), so a process cannot grow without limit
//! however much it memoizes. Eviction is least-recently-used rather than
//! moka's default TinyLFU admission: TinyLFU may refuse a brand-new entry
//! when the cache is full, which for a chunked value means storing most
//! chunks and losing one, a wasted write; under LRU the newest write is
//! always whole.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{Backend, BackendError};
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

/// The default byte budget of a [`MemoryBackend`]: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What an entry costs beyond its key and value bytes (moka's node, the Arc,
/// the expiry bookkeeping), so that many tiny entries still count.
const ENTRY_OVERHEAD: u64 = 96;

/// The longest TTL an entry gets; longer ones are clamped to it. moka adds
/// the TTL to its own clock, which panics on overflow far sooner than
/// `Duration::MAX`; a century is forever for a process, and far from that.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

#[derive(Clone)]
struct Entry {
    /// Never changed once stored: a write replaces the whole entry.
    value: Arc<[u8]>,
    ttl: Duration,
}

struct EntryExpiry;

impl Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(&self, _key: &String, entry: &Entry, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        entry: &Entry,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// A thread-safe in-process cache bounded by bytes, honouring each entry's
/// time to live.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{Backend, MemoryBackend};
///
/// let backend = MemoryBackend::with_max_bytes(64 * 1024 * 1024);
/// backend.set("greeting", b"hello", Duration::from_secs(60)).unwrap();
/// assert_eq!(backend.get("greeting").unwrap().as_deref(), Some(&b"hello"[..]));
/// assert!(!backend.add("greeting", b"again", Duration::from_secs(60)).unwrap());
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    cache: Cache<String, Entry>,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// A backend holding at most [`DEFAULT_MAX_BYTES`].
    pub fn new() -> Self {
        Self::with_max_bytes(DEFAULT_MAX_BYTES)
    }

    /// A backend holding at most `max_bytes` of keys and values; the least
    /// valuable entries are evicted beyond that.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &Entry| {
                let weight = key.len() as u64 + entry.value.len() as u64 + ENTRY_OVERHEAD;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryBackend { cache, max_bytes }
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The bytes currently held, keys and values plus per-entry overhead.
    /// Eviction runs in batches, so this may briefly exceed the budget.
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// The number of live entries.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    pub(crate) fn from_url_parts(url: &CacheUrl) -> Result<Self, ConfigError> {
        if !url.hosts.is_empty() || !url.path.is_empty() {
            return Err(ConfigError::InvalidUrl {
                url: url.url.clone(),
                reason: "memory:// takes no host or path".to_owned(),
            });
        }
        let mut max_bytes = DEFAULT_MAX_BYTES;
        for (name, value) in &url.params {
            match name.as_str() {
                "max_bytes" => {
                    max_bytes = value
                        .parse()
                        .ok()
                        .filter(|bytes| *bytes > 0)
                        .ok_or_else(|| {
                            url.invalid_value(name, value, "expected a positive number of bytes")
                        })?;
                }
                other => return Err(url.unknown_parameter(other, &["max_bytes"])),
            }
        }
        Ok(Self::with_max_bytes(max_bytes))
    }

    fn entry(value: &[u8], ttl: Duration) -> Entry {
        Self::entry_of(Arc::from(value), ttl)
    }

    fn entry_of(value: Arc<[u8]>, ttl: Duration) -> Entry {
        Entry {
            value,
            ttl: ttl.min(MAX_TTL),
        }
    }
}

impl MemoryBackend {
    /// Gives the entry under `key` a new `ttl` if its value passes `keep`,
    /// in one compute on the entry, which moka runs under the key's lock;
    /// whether it did.
    fn retouch(&self, key: &str, ttl: Duration, keep: impl Fn(&[u8]) -> bool) -> bool {
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(entry) if keep(&entry.value().value) => {
                    Op::Put(Self::entry_of(Arc::clone(&entry.value().value), ttl))
                }
                _ => Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.cache.get(key).map(|entry| entry.value.to_vec()))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.cache.insert(key.to_owned(), Self::entry(value, ttl));
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let entry = self
            .cache
            .entry(key.to_owned())
            .or_insert_with(|| Self::entry(value, ttl));
        Ok(entry.is_fresh())
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        Ok(self.retouch(key, ttl, |_| true))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.cache.remove(key).is_some())
    }

    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let result = self
            .cache
            .entry(key.to_owned())
            .and_compute_with(|existing| match existing {
                Some(entry) if *entry.value().value == *expected => Op::Remove,
                _ => Op::Nop,
            });
        Ok(matches!(result, moka::ops::compute::CompResult::Removed(_)))
    }

    /// Atomic: the comparison and the new expiry happen in one compute on
    /// the entry, which moka runs under the key's lock.
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(self.retouch(key, ttl, |value| value == expected))
    }

    #[cfg(feature = "async")]
    fn __async(self: Arc<Self>) -> Option<Arc<dyn super::AsyncBackend>> {
        Some(self)
    }
}

/// The same store, served to async callers directly: every operation is an
/// in-memory map access under moka's short per-entry locks, never held
/// across an `.await`, so each future completes on its first poll.
#[cfg(feature = "async")]
impl super::AsyncBackend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> super::BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Backend::get(self, key)))
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> super::BackendFuture<'a, ()> {
        Box::pin(std::future::ready(Backend::set(self, key, value, ttl)))
    }
    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> super::BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Backend::add(self, key, value, ttl)))
    }
    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> super::BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Backend::touch(self, key, ttl)))
    }
    fn delete<'a>(&'a self, key: &'a str) -> super::BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Backend::delete(self, key)))
    }
    fn delete_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> super::BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Backend::delete_if_value(
            self, key, expected,
        )))
    }
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> super::BackendFuture<'a, bool> {
        Box::pin(std::future::ready(Backend::touch_if_value(
            self, key, expected, ttl,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn values_expire_after_their_ttl() {
        let backend = MemoryBackend::new();
        backend
            .set("short", b"v", Duration::from_millis(50))
            .unwrap();
        backend.set("long", b"v", MINUTE).unwrap();
        assert!(backend.get("short").unwrap().is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(backend.get("short").unwrap(), None);
        assert!(backend.get("long").unwrap().is_some());
    }

    #[test]
    fn add_only_stores_when_absent_and_after_expiry() {
        let backend = MemoryBackend::new();
        assert!(backend.add("k", b"a", Duration::from_millis(50)).unwrap());
        assert!(!backend.add("k", b"b", MINUTE).unwrap());
        assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"a"[..]));
        std::thread::sleep(Duration::from_millis(120));
        assert!(backend.add("k", b"c", MINUTE).unwrap());
        assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"c"[..]));
    }

    #[test]
    fn touch_extends_a_live_entry_only() {
        let backend = MemoryBackend::new();
        assert!(!backend.touch("absent", MINUTE).unwrap());
        backend.set("k", b"v", Duration::from_millis(80)).unwrap();
        assert!(backend.touch("k", MINUTE).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn delete_if_value_spares_another_holders_value() {
        let backend = MemoryBackend::new();
        backend.set("lock", b"mine", MINUTE).unwrap();
        assert!(!backend.delete_if_value("lock", b"theirs").unwrap());
        assert!(backend.get("lock").unwrap().is_some());
        assert!(backend.delete_if_value("lock", b"mine").unwrap());
        assert_eq!(backend.get("lock").unwrap(), None);
        assert!(!backend.delete("lock").unwrap());
    }

    #[test]
    fn touch_if_value_extends_only_the_expected_value() {
        let backend = MemoryBackend::new();
        assert!(!backend.touch_if_value("k", b"v", MINUTE).unwrap());
        backend.set("k", b"v", Duration::from_millis(80)).unwrap();
        assert!(!backend.touch_if_value("k", b"other", MINUTE).unwrap());
        assert!(backend.touch_if_value("k", b"v", MINUTE).unwrap());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn any_ttl_is_accepted_and_huge_ones_keep_the_entry() {
        let backend = MemoryBackend::new();
        for (i, ttl) in [
            Duration::from_secs(u64::from(u32::MAX)),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ]
        .into_iter()
        .enumerate()
        {
            let key = format!("k{i}");
            backend.set(&key, b"v", ttl).unwrap();
            assert!(backend.touch(&key, ttl).unwrap());
            assert!(backend.touch_if_value(&key, b"v", ttl).unwrap());
            backend.set_many(&[(&key, b"w")], ttl).unwrap();
            assert!(backend.add(&format!("a{i}"), b"v", ttl).unwrap());
            backend.cache.run_pending_tasks();
            assert_eq!(backend.get(&key).unwrap().as_deref(), Some(&b"w"[..]));
        }
        backend.set("zero", b"v", Duration::ZERO).unwrap();
        assert_eq!(backend.get("zero").unwrap(), None, "zero expires at once");
    }

    #[test]
    fn memory_stays_within_the_byte_budget() {
        let budget = 1024 * 1024;
        let backend = MemoryBackend::with_max_bytes(budget);
        let value = vec![7u8; 10 * 1024];
        for i in 0..1000 {
            backend.set(&format!("key-{i}"), &value, MINUTE).unwrap();
        }
        assert!(
            backend.weighted_bytes() <= budget,
            "{} bytes held for a budget of {budget}",
            backend.weighted_bytes()
        );
        assert!(backend.entry_count() > 10, "the cache still holds entries");
    }

    #[test]
    fn the_newest_entries_survive_eviction() {
        let backend = MemoryBackend::with_max_bytes(64 * 1024);
        let value = vec![1u8; 1024];
        for i in 0..1000 {
            backend.set(&format!("key-{i}"), &value, MINUTE).unwrap();
        }
        backend.cache.run_pending_tasks();
        for i in 990..1000 {
            assert!(
                backend.get(&format!("key-{i}")).unwrap().is_some(),
                "key-{i}"
            );
        }
        assert_eq!(backend.get("key-0").unwrap(), None);
    }

    #[test]
    fn concurrent_adds_admit_exactly_one_winner() {
        let backend = Arc::new(MemoryBackend::new());
        let winners: usize = (0..16)
            .map(|i| {
                let backend = Arc::clone(&backend);
                std::thread::spawn(move || {
                    backend
                        .add("race", format!("{i}").as_bytes(), MINUTE)
                        .unwrap() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }

    #[test]
    fn url_parameters_are_checked() {
        let url = CacheUrl::parse("memory://?max_bytes=4096").unwrap();
        assert_eq!(
            MemoryBackend::from_url_parts(&url).unwrap().max_bytes(),
            4096
        );
        for bad in [
            "memory://?max_bytes=0",
            "memory://?max=1",
            "memory://host:1",
        ] {
            let url = CacheUrl::parse(bad).unwrap();
            assert!(MemoryBackend::from_url_parts(&url).is_err(), "{bad}");
        }
    }
}
