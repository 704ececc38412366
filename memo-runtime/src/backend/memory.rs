//! The embedded in-memory backend, used when nothing else is configured.
//!
//! Built on `quick_cache`'s sharded, weighted cache: a read takes one
//! shard's read lock, with no channel to feed and no background work, so
//! threads reading different keys do not meet; and the total bytes held
//! (keys and values, plus a fixed per-entry overhead) are bounded, so a
//! process cannot grow without limit however much it memoizes.
//!
//! Expiry is checked on every read, against each entry's own instant: an
//! expired entry is never returned, and is dropped when a read or a write
//! meets it, or evicted as a cold entry. Eviction is S3-FIFO-like: a new
//! entry enters a probation queue holding half the budget, and an entry
//! read again there moves on to the main queue. Every write is admitted,
//! so the chunks of a value up to half the budget, written in turn, are
//! all there when its manifest lands.
//!
//! The atomic operations (`add`, `touch`, the compare-and-delete and
//! compare-and-touch the locks use) run under the entry's shard write lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{OptionsBuilder, Weighter};

use super::{Backend, BackendError};
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

/// The default byte budget of a [`MemoryBackend`]: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// What an entry costs beyond its key and value bytes (the map's slot, the
/// box, the expiry), so that many tiny entries still count.
const ENTRY_OVERHEAD: u64 = 96;

/// The longest TTL an entry gets; longer ones are clamped to it, so that
/// its expiry is an instant the clock can represent; a century is forever
/// for a process.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// A read clones the entry out whole: the bytes, which it returns anyway,
/// and nothing shared, so readers of one key write nothing (a shared
/// `Arc` would be counted up and down by every read, and threads reading
/// the same keys would pass its cache line between them).
#[derive(Clone)]
struct Entry {
    /// Never changed once stored: a write replaces the whole entry.
    value: Box<[u8]>,
    expires: Instant,
}

impl Entry {
    fn new(value: Box<[u8]>, ttl: Duration) -> Entry {
        let now = Instant::now();
        Entry {
            value,
            expires: now.checked_add(ttl.min(MAX_TTL)).unwrap_or(now),
        }
    }

    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// The budget's measure of an entry.
#[derive(Clone, Copy)]
struct Bytes;

impl Weighter<String, Entry> for Bytes {
    fn weight(&self, key: &String, entry: &Entry) -> u64 {
        key.len() as u64 + entry.value.len() as u64 + ENTRY_OVERHEAD
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
    cache: Arc<Cache<String, Entry, Bytes>>,
    max_bytes: u64,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.cache.len())
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
        let max_bytes = max_bytes.max(1);
        // quick_cache sizes its tables by an estimate of the entries:
        // a few hundred bytes each, bounded so that a huge budget does not
        // allocate up front.
        let estimate = (max_bytes / 512).clamp(64, 1 << 20) as usize;
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimate)
            .weight_capacity(max_bytes)
            .hot_allocation(0.5)
            .build()
            .expect("the options are within their bounds");
        MemoryBackend {
            cache: Arc::new(Cache::with_options(
                options,
                Bytes,
                Default::default(),
                Default::default(),
            )),
            max_bytes,
        }
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The bytes currently held, keys and values plus per-entry overhead
    /// (expired entries included until they are dropped).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// The number of entries held (expired ones included until they are
    /// dropped).
    pub fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.clear();
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

    /// The value under `key` if it is live at `now`; an expired entry found
    /// is dropped.
    fn read(&self, key: &str, now: Instant) -> Option<Vec<u8>> {
        let entry = self.cache.get(key)?;
        if entry.live(now) {
            return Some(entry.value.into_vec());
        }
        self.cache.remove_if(key, |entry| !entry.live(now));
        None
    }

    /// Runs `decide` on the live entry under `key`, under its shard's write
    /// lock: `Some(ttl)` gives it a new expiry, `None` leaves it. Whether it
    /// was given one. An expired entry found on the way is dropped.
    fn retouch(&self, key: &str, decide: impl FnOnce(&Entry) -> Option<Duration>) -> bool {
        let now = Instant::now();
        let result = self.cache.entry(key, None, |_, entry| {
            if !entry.live(now) {
                return EntryAction::Remove;
            }
            match decide(entry) {
                Some(ttl) => {
                    *entry = Entry::new(std::mem::take(&mut entry.value), ttl);
                    EntryAction::Retain(true)
                }
                None => EntryAction::Retain(false),
            }
        });
        matches!(result, EntryResult::Retained(true))
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.read(key, Instant::now()))
    }

    /// One clock read for all the keys: a hit reads an entry and its
    /// version token together.
    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        let now = Instant::now();
        Ok(keys.iter().map(|key| self.read(key, now)).collect())
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        if ttl.is_zero() {
            // Expired at once: whatever was there goes, nothing is kept.
            self.cache.remove(key);
            return Ok(());
        }
        self.cache
            .insert(key.to_owned(), Entry::new(Box::from(value), ttl));
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let now = Instant::now();
        let entry = Entry::new(Box::from(value), ttl);
        let result = self.cache.entry(key, None, |_, held| {
            if held.live(now) {
                EntryAction::Retain(())
            } else {
                EntryAction::ReplaceWithGuard
            }
        });
        let (EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _)) = result else {
            return Ok(false);
        };
        if !entry.live(now) {
            // A zero TTL: added, and gone at once.
            return Ok(true);
        }
        // A guard is this caller's alone until it inserts: nobody else can
        // add in between.
        let _ = guard.insert(entry);
        Ok(true)
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        Ok(self.retouch(key, |_| Some(ttl)))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let now = Instant::now();
        Ok(self
            .cache
            .remove(key)
            .is_some_and(|(_, entry)| entry.live(now)))
    }

    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let now = Instant::now();
        let result = self.cache.entry(key, None, |_, entry| {
            // An expired entry goes too, though it is not reported.
            if !entry.live(now) || *entry.value == *expected {
                EntryAction::Remove
            } else {
                EntryAction::Retain(())
            }
        });
        Ok(matches!(result, EntryResult::Removed(_, entry) if entry.live(now)))
    }

    /// Atomic: the comparison and the new expiry happen under the entry's
    /// shard write lock.
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(self.retouch(key, |entry| (*entry.value == *expected).then_some(ttl)))
    }

    #[cfg(feature = "async")]
    fn __async(self: Arc<Self>) -> Option<Arc<dyn super::AsyncBackend>> {
        Some(self)
    }
}

/// The same store, served to async callers directly: every operation is an
/// in-memory map access under quick_cache's short shard locks, never held
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
        for i in 990..1000 {
            assert!(
                backend.get(&format!("key-{i}")).unwrap().is_some(),
                "key-{i}"
            );
        }
        assert!(backend.weighted_bytes() <= 64 * 1024);
        assert!(
            backend.entry_count() < 100,
            "most of the 1,000 entries went"
        );
    }

    #[test]
    fn an_entry_read_again_and_again_survives_a_scan_of_new_ones() {
        let backend = MemoryBackend::with_max_bytes(256 * 1024);
        let value = vec![1u8; 1024];
        backend.set("hot", &value, MINUTE).unwrap();
        for i in 0..5_000u32 {
            if i.is_multiple_of(4) {
                assert!(backend.get("hot").unwrap().is_some(), "evicted at {i}");
            }
            backend.set(&format!("cold-{i}"), &value, MINUTE).unwrap();
        }
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
