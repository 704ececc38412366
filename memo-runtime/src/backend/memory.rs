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
//!
//! memo's own hits read an entry shared rather than copied, and a thread
//! serves its most recent reads of small entries again without asking moka
//! (whose `get` records every read for its LRU) for as long as nothing was
//! written to the store since, within a second and the entry's expiry (see
//! `Recent`). A read can also come with a `Mark`, by which a caller that
//! keeps the entry itself (the hits a thread remembers, `policy::recall`)
//! checks the same rule before serving it again.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    value: Arc<Stored>,
    ttl: Duration,
    /// When the entry expires, by our own reading of the clock taken just
    /// before moka's: never later than moka's own expiry of it.
    expires: Instant,
}

/// The bytes of one entry, never changed once stored (a write replaces the
/// whole entry), and the full key whose envelope checksum they were last
/// found to match (see [`Stored::checked_for`]).
pub(crate) struct Stored {
    bytes: Box<[u8]>,
    checked: OnceLock<Box<str>>,
    /// The longest full key the entry remembers: as long as the key it is
    /// stored under, which the byte budget charges twice for it (memo's
    /// full key is its stored key whenever nothing was escaped, shortened
    /// or hashed).
    checked_limit: usize,
}

impl Stored {
    /// The stored bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether these bytes were found to be an envelope whose checksum
    /// matches under `full_key` (see [`checked`](Self::checked)). Their
    /// checksum then still matches, as neither side can have changed: a
    /// read in this process need not hash them again.
    pub(crate) fn checked_for(&self, full_key: &str) -> bool {
        self.checked
            .get()
            .is_some_and(|checked| **checked == *full_key)
    }

    /// Records that these bytes' envelope checksum matched under
    /// `full_key`, unless it is longer than the entry's key. Only one full
    /// key can match (the checksum binds it), so the first record is the
    /// only one.
    pub(crate) fn checked(&self, full_key: &str) {
        if full_key.len() <= self.checked_limit {
            let _ = self.checked.set(Box::from(full_key));
        }
    }
}

impl std::ops::Deref for Stored {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
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
    /// What the threads' recent reads are checked against (shared by
    /// clones, which share the cache).
    writes: Arc<Writes>,
}

/// The store's identity, its count of finished writes and its number of
/// writes under way: every operation that can change or drop an entry runs
/// inside [`Writes::around`], which turns every thread's recent reads of
/// this store (see [`Recent`]) stale.
struct Writes {
    id: u64,
    done: AtomicU64,
    busy: AtomicU64,
}

impl Writes {
    fn new() -> Writes {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Writes {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            done: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Runs `op`, a write, counted as under way while it runs and as done
    /// once it has. A remembered read is served only when [`now`](Self::now)
    /// finds no write under way and the count of finished ones unchanged
    /// since it was remembered: no write has then begun between the read
    /// from moka and now (one that began and ended in between changed the
    /// count; one that began and is still running is under way), so the
    /// value is still the current one. Sequentially consistent, so that
    /// these orders are the same for every thread.
    fn around<R>(&self, op: impl FnOnce() -> R) -> R {
        self.busy.fetch_add(1, Ordering::SeqCst);
        let result = op();
        self.done.fetch_add(1, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// The count of finished writes, or `None` while a write is under way.
    /// The writes under way are read first: a write that ends between the
    /// two reads is then seen in the count.
    fn now(&self) -> Option<u64> {
        if self.busy.load(Ordering::SeqCst) != 0 {
            return None;
        }
        Some(self.done.load(Ordering::SeqCst))
    }
}

/// One entry a thread read recently, served again without asking moka
/// while nothing was written to the store since, the entry has not
/// expired, and it was read from moka less than [`RECENCY`] ago.
///
/// What this saves is moka's `get`, which records each read for its LRU
/// (a channel send, an epoch pin, a clock read, and now and then draining
/// the channel): most of a hit of a hot entry. What it gives up: moka
/// sees a hot entry's reads once per [`RECENCY`] per thread rather than
/// each one (plenty for LRU), and an entry that moka evicts for room may
/// still be served from here until the next write or [`RECENCY`] (the value
/// last written under the key, unexpired: a hit, never a wrong value);
/// each thread keeps at most [`RECENT_SLOTS`] entries of at most
/// [`RECENT_MAX_BYTES`] alive outside the byte budget.
struct Recent {
    store: u64,
    writes: u64,
    key: Box<str>,
    value: Arc<Stored>,
    expires: Instant,
    read: Instant,
}

/// Where a read of a small entry stands in the store's history: the
/// entry read is still the one stored under its key at any later instant
/// before [`until`](Self::current) at which no write has begun or ended
/// since the read (the rule of [`Recent`]). What a caller that keeps the
/// entry itself checks before serving it again.
pub(crate) struct Mark {
    writes: Arc<Writes>,
    at: u64,
    until: Instant,
    read: Instant,
}

impl Mark {
    /// Whether the entry read is still current at `now`.
    pub(crate) fn current(&self, now: Instant) -> bool {
        now < self.until && self.writes.now() == Some(self.at)
    }

    /// The mark, served for at most `fresh_for` after the read as well
    /// (a value's logical expiry, as a duration from a clock reading taken
    /// after the read); `None` leaves it as it is.
    pub(crate) fn fresh_for(self, fresh_for: Option<Duration>) -> Mark {
        match fresh_for.and_then(|fresh_for| self.read.checked_add(fresh_for)) {
            Some(stale_at) => Mark {
                until: self.until.min(stale_at),
                ..self
            },
            None => self,
        }
    }
}

/// How many entries a thread remembers, one per slot by a hash of the key.
const RECENT_SLOTS: usize = 64;
/// The largest entry a thread remembers.
const RECENT_MAX_BYTES: usize = 1024;
/// How long a remembered entry is served before moka is asked again.
const RECENCY: Duration = Duration::from_secs(1);

thread_local! {
    static RECENT: RefCell<[Option<Recent>; RECENT_SLOTS]> =
        const { RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// A key's slot: a multiply-rotate hash, enough to spread keys (a
/// collision only costs a read from moka).
fn slot_of(key: &str) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut hash = key.len() as u64;
    for chunk in key.as_bytes().chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    (hash >> 58) as usize % RECENT_SLOTS
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
                // The key twice: the map's, and the full key the entry may
                // remember having checked (`Stored::checked`).
                let weight = 2 * key.len() as u64 + entry.value.len() as u64 + ENTRY_OVERHEAD;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryBackend {
            cache,
            max_bytes,
            writes: Arc::new(Writes::new()),
        }
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
        self.writes.around(|| {
            self.cache.invalidate_all();
            self.cache.run_pending_tasks();
        });
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

    fn entry(key: &str, value: &[u8], ttl: Duration) -> Entry {
        Self::entry_of(
            Arc::new(Stored {
                bytes: Box::from(value),
                checked: OnceLock::new(),
                checked_limit: key.len(),
            }),
            ttl,
        )
    }

    fn entry_of(value: Arc<Stored>, ttl: Duration) -> Entry {
        let ttl = ttl.min(MAX_TTL);
        let now = Instant::now();
        Entry {
            value,
            ttl,
            // Unrepresentable: expired at once for `Recent`, which then
            // never serves it (moka still holds it for its TTL).
            expires: now.checked_add(ttl).unwrap_or(now),
        }
    }
}

impl MemoryBackend {
    /// Gives the entry under `key` a new `ttl` if its value passes `keep`,
    /// in one compute on the entry, which moka runs under the key's lock;
    /// whether it did.
    fn retouch(&self, key: &str, ttl: Duration, keep: impl Fn(&[u8]) -> bool) -> bool {
        let result = self.writes.around(|| {
            self.cache
                .entry(key.to_owned())
                .and_compute_with(|existing| match existing {
                    Some(entry) if keep(&entry.value().value) => {
                        Op::Put(Self::entry_of(Arc::clone(&entry.value().value), ttl))
                    }
                    _ => Op::Nop,
                })
        });
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }
}

impl MemoryBackend {
    /// The entry under `key`, shared rather than copied: the hit path of
    /// memo's own calls on the embedded store. `None` when absent.
    pub(crate) fn get_shared(&self, key: &str) -> Option<Arc<Stored>> {
        self.get_marked(key, Instant::now(), false)
            .map(|(entry, _)| entry)
    }

    /// [`get_shared`](Self::get_shared) at `now`, a clock reading taken
    /// just before, and, when `marked` and the entry may be served again
    /// without asking the store (a small entry read while no write was
    /// under way), the [`Mark`] under which it may. Marks are asked for
    /// only when kept: each holds a reference shared by every reader.
    pub(crate) fn get_marked(
        &self,
        key: &str,
        now: Instant,
        marked: bool,
    ) -> Option<(Arc<Stored>, Option<Mark>)> {
        // Read before moka: a write that ends after this read leaves what
        // is remembered below stale. While a write is under way, nothing is
        // served from or kept in this thread's slots.
        let writes = self.writes.now();
        let slot = slot_of(key);
        let mark = |at: u64, until: Instant| Mark {
            writes: Arc::clone(&self.writes),
            at,
            until,
            read: now,
        };
        if let Some(writes) = writes {
            let recent = RECENT.try_with(|recent| {
                let recent = recent.try_borrow().ok()?;
                let recent = recent[slot].as_ref()?;
                (recent.store == self.writes.id
                    && recent.writes == writes
                    && now < recent.expires
                    && now.saturating_duration_since(recent.read) < RECENCY
                    && *recent.key == *key)
                    .then(|| {
                        let until = recent.expires.min(recent.read + RECENCY);
                        let mark = marked.then(|| mark(writes, until));
                        (Arc::clone(&recent.value), mark)
                    })
            });
            if let Ok(Some(found)) = recent {
                return Some(found);
            }
        }
        let entry = self.cache.get(key)?;
        let small = entry.value.len() <= RECENT_MAX_BYTES;
        let mark = writes.filter(|_| small).and_then(|writes| {
            self.remember(slot, key, &entry, writes, now);
            marked.then(|| mark(writes, entry.expires.min(now + RECENCY)))
        });
        Some((entry.value, mark))
    }

    /// Remembers `entry`, read at `now` with the store at `writes`, in
    /// this thread's `slot`: unless the slot holds another key read less
    /// than [`RECENCY`] ago, so that keys read in turn do not keep
    /// replacing each other.
    fn remember(&self, slot: usize, key: &str, entry: &Entry, writes: u64, now: Instant) {
        let _ = RECENT.try_with(|recent| {
            let Ok(mut recent) = recent.try_borrow_mut() else {
                return;
            };
            let slot = &mut recent[slot];
            let key = match slot.take() {
                Some(old) if *old.key == *key => old.key,
                Some(old)
                    if old.store == self.writes.id
                        && now.saturating_duration_since(old.read) < RECENCY =>
                {
                    *slot = Some(old);
                    return;
                }
                _ => Box::from(key),
            };
            *slot = Some(Recent {
                store: self.writes.id,
                writes,
                key,
                value: Arc::clone(&entry.value),
                expires: entry.expires,
                read: now,
            });
        });
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.cache.get(key).map(|entry| entry.value.to_vec()))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        self.writes.around(|| {
            self.cache
                .insert(key.to_owned(), Self::entry(key, value, ttl));
        });
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let entry = self.writes.around(|| {
            self.cache
                .entry(key.to_owned())
                .or_insert_with(|| Self::entry(key, value, ttl))
        });
        Ok(entry.is_fresh())
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        Ok(self.retouch(key, ttl, |_| true))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.writes.around(|| self.cache.remove(key).is_some()))
    }

    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let result = self.writes.around(|| {
            self.cache
                .entry(key.to_owned())
                .and_compute_with(|existing| match existing {
                    Some(entry) if **entry.value().value == *expected => Op::Remove,
                    _ => Op::Nop,
                })
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

    fn __memory(&self) -> Option<&MemoryBackend> {
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
    fn an_entry_remembers_the_one_key_it_was_checked_for_until_replaced() {
        let backend = MemoryBackend::new();
        backend.set("key1", b"bytes", MINUTE).unwrap();
        let entry = backend.get_shared("key1").unwrap();
        assert_eq!(entry.bytes(), b"bytes");
        assert!(!entry.checked_for("full"));
        entry.checked("full");
        assert!(entry.checked_for("full"));
        assert!(!entry.checked_for("ful"));
        assert!(!entry.checked_for("full:"));
        // The first record stays.
        entry.checked("othe");
        assert!(!entry.checked_for("othe"));
        // The same bytes with a new expiry keep it; new bytes start afresh.
        assert!(backend.touch("key1", MINUTE).unwrap());
        assert!(backend.get_shared("key1").unwrap().checked_for("full"));
        backend.set("key1", b"bytes", MINUTE).unwrap();
        assert!(!backend.get_shared("key1").unwrap().checked_for("full"));
        // A full key longer than the entry's key (the budget charges the
        // key twice, for this) is not remembered.
        let entry = backend.get_shared("key1").unwrap();
        entry.checked("fuller");
        assert!(!entry.checked_for("fuller"));
        entry.checked("ful");
        assert!(entry.checked_for("ful"));
        assert!(backend.get_shared("absent").is_none());
    }

    fn shared(backend: &MemoryBackend, key: &str) -> Option<Vec<u8>> {
        backend
            .get_shared(key)
            .map(|stored| stored.bytes().to_vec())
    }

    #[test]
    fn remembered_reads_follow_every_write() {
        let backend = MemoryBackend::new();
        backend.set("k", b"one", MINUTE).unwrap();
        for _ in 0..3 {
            assert_eq!(shared(&backend, "k").as_deref(), Some(&b"one"[..]));
        }
        backend.set("k", b"two", MINUTE).unwrap();
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"two"[..]));
        assert!(backend.delete("k").unwrap());
        assert_eq!(shared(&backend, "k"), None);
        assert!(backend.add("k", b"three", MINUTE).unwrap());
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"three"[..]));
        assert!(backend.delete_if_value("k", b"three").unwrap());
        assert_eq!(shared(&backend, "k"), None);
        backend.set("k", b"four", MINUTE).unwrap();
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"four"[..]));
        // A touch to a short TTL is seen: the entry expires with it.
        assert!(
            backend
                .touch_if_value("k", b"four", Duration::from_millis(30))
                .unwrap()
        );
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"four"[..]));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(shared(&backend, "k"), None);
        backend.set("k", b"five", MINUTE).unwrap();
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"five"[..]));
        backend.clear();
        assert_eq!(shared(&backend, "k"), None);
    }

    #[test]
    fn a_remembered_read_is_never_served_past_the_entry_s_expiry() {
        let backend = MemoryBackend::new();
        backend
            .set("short", b"v", Duration::from_millis(40))
            .unwrap();
        // Remembered well within the recency window, with no write since.
        assert_eq!(shared(&backend, "short").as_deref(), Some(&b"v"[..]));
        assert_eq!(shared(&backend, "short").as_deref(), Some(&b"v"[..]));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(shared(&backend, "short"), None);
    }

    #[test]
    fn stores_and_keys_sharing_a_slot_keep_their_own_entries() {
        let a = MemoryBackend::new();
        let b = MemoryBackend::new();
        a.set("k", b"a", MINUTE).unwrap();
        b.set("k", b"b", MINUTE).unwrap();
        for _ in 0..3 {
            assert_eq!(shared(&a, "k").as_deref(), Some(&b"a"[..]));
            assert_eq!(shared(&b, "k").as_deref(), Some(&b"b"[..]));
        }
        // Two keys in one slot.
        let first = "slot-0";
        let other = (1..)
            .map(|i| format!("slot-{i}"))
            .find(|key| slot_of(key) == slot_of(first))
            .unwrap();
        a.set(first, b"first", MINUTE).unwrap();
        a.set(&other, b"other", MINUTE).unwrap();
        for _ in 0..3 {
            assert_eq!(shared(&a, first).as_deref(), Some(&b"first"[..]));
            assert_eq!(shared(&a, &other).as_deref(), Some(&b"other"[..]));
        }
        // A clone is the same store.
        let clone = a.clone();
        clone.set(first, b"changed", MINUTE).unwrap();
        assert_eq!(shared(&a, first).as_deref(), Some(&b"changed"[..]));
    }

    #[test]
    fn nothing_is_served_from_or_kept_in_the_slots_while_a_write_is_under_way() {
        let backend = MemoryBackend::new();
        backend.set("k", b"old", MINUTE).unwrap();
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"old"[..]));
        // A write under way: its new value is in moka, its count not yet.
        backend.writes.busy.fetch_add(1, Ordering::SeqCst);
        backend
            .cache
            .insert("k".to_owned(), MemoryBackend::entry("k", b"new", MINUTE));
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"new"[..]));
        // Read meanwhile, a key is not remembered.
        backend.cache.insert(
            "other".to_owned(),
            MemoryBackend::entry("other", b"o", MINUTE),
        );
        assert_eq!(shared(&backend, "other").as_deref(), Some(&b"o"[..]));
        let remembered = RECENT.with(|recent| {
            recent.borrow()[slot_of("other")]
                .as_ref()
                .is_some_and(|recent| &*recent.key == "other")
        });
        assert!(!remembered);
        backend.writes.done.fetch_add(1, Ordering::SeqCst);
        backend.writes.busy.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(shared(&backend, "k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_large_entry_is_not_remembered_but_still_read() {
        let backend = MemoryBackend::new();
        let large = vec![7u8; RECENT_MAX_BYTES + 1];
        backend.set("large", &large, MINUTE).unwrap();
        assert_eq!(shared(&backend, "large"), Some(large));
        let remembered = RECENT.with(|recent| {
            recent.borrow()[slot_of("large")]
                .as_ref()
                .is_some_and(|recent| &*recent.key == "large")
        });
        assert!(!remembered);
    }

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
