//! The per-process copies of hot entries (`Options::local`): a bounded map
//! in front of the shared backend, one per configuration (kept beside its
//! counters and flights, so `configure` starts afresh).
//!
//! An entry is keyed by the stored key and records the type fingerprint it
//! was kept for, so a caller of another type under the same key never takes
//! it; the payload is either the value's serialized bytes (the functional
//! API, where `T` need not be `Clone`) or the decoded value itself (the
//! attribute's `local`, which hands out clones). Each entry expires at its
//! own instant, the earlier of the call's `local` duration and the shared
//! entry's logical expiry, and a lookup checks that instant itself, so a
//! copy is never served past the value's own expiry. The budget is in bytes
//! (the size of the value as stored), set by `Config::local_capacity`.
//!
//! # Why not moka
//!
//! A local hit is meant to cost little more than the clone of the value,
//! and moka's `get` records every read for its admission policy (a channel
//! send, an epoch pin, clock reads, and the periodic draining of that
//! channel), which took about a quarter of a local hit. This map is a
//! handful of shards, each a `HashMap` under a `Mutex`: a hit is one hash,
//! one uncontended lock and a clone of an `Arc`. What it gives up is moka's
//! choice of victims: when the budget is exceeded, it drops expired copies
//! first and then arbitrary ones (a `HashMap`'s order follows its random
//! hash keys), not the least recently used. For copies of hot entries, which
//! a miss recomputes at the cost of one backend round trip, that is a good
//! trade.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What a local copy holds. Nominally `pub` (in a private module) because
/// the `Keep` trait, which the attribute's generated code names through
/// `__private`, hands it around.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The value's postcard bytes, decoded on every hit.
    Encoded(Arc<[u8]>),
    /// The decoded value, cloned out on every hit.
    Typed(Arc<dyn Any + Send + Sync>),
}

/// One kept value.
#[derive(Clone)]
pub(crate) struct Kept {
    /// The type fingerprint the value was kept for.
    pub(crate) fingerprint: u64,
    /// When the copy stops being served.
    pub(crate) until: Instant,
    /// The logical expiry (ms since the Unix epoch) and computation time
    /// (µs) of the shared entry, for refresh-ahead on local hits.
    pub(crate) stamp: (u64, u64),
    /// What the budget charges for it.
    pub(crate) weight: u32,
    /// The value.
    pub(crate) payload: Payload,
}

impl Kept {
    /// What the budget charges for this copy under `key`.
    fn charge(&self, key: &str) -> u64 {
        u64::from(self.weight) + key.len() as u64 + u64::from(OVERHEAD)
    }
}

/// How many shards the copies are spread over: enough that threads
/// hitting different keys rarely meet on one lock.
const SHARDS: usize = 32;

/// One shard: its copies, by stored key.
type Shard = HashMap<Box<str>, Kept>;

/// The local copies of one configuration.
pub(crate) struct LocalCopies {
    shards: Box<[Mutex<Shard>]>,
    /// Seeds the choice of a key's shard; random per map.
    seed: u64,
    /// What every copy in every shard weighs, in all.
    weight: AtomicU64,
    capacity: u64,
}

impl std::fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCopies")
            .field("weight", &self.weight.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What each copy costs beyond its value: the key and the bookkeeping.
const OVERHEAD: u32 = 128;

impl LocalCopies {
    /// Copies weighing at most `capacity` bytes in all (at times a little
    /// more, for the moment between a copy being kept and others evicted).
    pub(crate) fn new(capacity: u64) -> LocalCopies {
        LocalCopies {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            seed: {
                let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
                hasher.write_u8(0);
                hasher.finish()
            },
            weight: AtomicU64::new(0),
            capacity,
        }
    }

    /// A key's shard, by a multiply-rotate hash seeded per map: cheaper
    /// than the shards' own SipHash, and enough to spread keys, since only
    /// the choice of one of 32 locks hangs on it (a key that collides in
    /// it costs contention, never a wrong entry).
    fn shard_of(&self, key: &str) -> usize {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut hash = self.seed;
        let mut chunks = key.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
        let mut word = [0u8; 8];
        word[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word) ^ key.len() as u64).wrapping_mul(K);
        (hash >> 59) as usize % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic under this lock can only have come from the allocator;
        // the map itself is whole, so a poisoned shard stays usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The copy kept under `key` for a type of `fingerprint`, unless it has
    /// run out.
    pub(crate) fn get(&self, key: &str, fingerprint: u64) -> Option<Kept> {
        let mut shard = self.lock(self.shard_of(key));
        let kept = shard.get(key)?;
        if Instant::now() >= kept.until {
            let charge = kept.charge(key);
            shard.remove(key);
            self.weight.fetch_sub(charge, Ordering::Relaxed);
            return None;
        }
        (kept.fingerprint == fingerprint).then(|| kept.clone())
    }

    /// Keeps `kept` under `key`, replacing any earlier copy; nothing when it
    /// would run out at once, or alone weighs more than the budget.
    pub(crate) fn insert(&self, key: &str, kept: Kept) {
        let index = self.shard_of(key);
        let charge = kept.charge(key);
        let mut shard = self.lock(index);
        if let Some(old) = shard.remove(key) {
            self.weight.fetch_sub(old.charge(key), Ordering::Relaxed);
        }
        if Instant::now() >= kept.until || charge > self.capacity {
            return;
        }
        shard.insert(Box::from(key), kept);
        let total = self.weight.fetch_add(charge, Ordering::Relaxed) + charge;
        drop(shard);
        if total > self.capacity {
            self.evict(key, index);
        }
    }

    /// Brings the total weight under the budget: expired copies first, in
    /// every shard, then arbitrary ones, sparing `fresh`, the copy just
    /// kept; each pass goes from the shard after `index` round to it. Down
    /// to seven eighths of the budget, so that the sweeps (a pass over the
    /// shards) happen once in many inserts rather than on each. One shard
    /// is locked at a time.
    fn evict(&self, fresh: &str, index: usize) {
        let target = self.capacity - self.capacity / 8;
        let under = || self.weight.load(Ordering::Relaxed) <= target;
        let now = Instant::now();
        for expired_only in [true, false] {
            for offset in 1..=SHARDS {
                let mut shard = self.lock((index + offset) % SHARDS);
                if expired_only {
                    let mut freed = 0;
                    shard.retain(|key, kept| {
                        let keep = now < kept.until;
                        if !keep {
                            freed += kept.charge(key);
                        }
                        keep
                    });
                    self.weight.fetch_sub(freed, Ordering::Relaxed);
                } else {
                    while !under() {
                        let Some(victim) = shard.keys().find(|key| ***key != *fresh).cloned()
                        else {
                            break;
                        };
                        if let Some(kept) = shard.remove(&victim) {
                            self.weight
                                .fetch_sub(kept.charge(&victim), Ordering::Relaxed);
                        }
                    }
                }
                if under() {
                    return;
                }
            }
        }
    }

    /// Drops the copy kept under `key`, whatever its type.
    pub(crate) fn remove(&self, key: &str) {
        let mut shard = self.lock(self.shard_of(key));
        if let Some(old) = shard.remove(key) {
            self.weight.fetch_sub(old.charge(key), Ordering::Relaxed);
        }
    }

    /// How many copies are kept (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        (0..SHARDS).map(|index| self.lock(index).len()).sum()
    }
}

/// This process's name on the invalidation channel, so that it ignores its
/// own messages (its copy was dropped before publishing, and may since
/// hold a newer value).
fn process_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut id = [0u8; 8];
        // A failed draw only makes two processes likelier to share a name.
        let _ = getrandom::fill(&mut id);
        u64::from_le_bytes(id) | 1
    })
}

/// The message that tells other processes to drop their copy of `key`.
pub(crate) fn invalidation(key: &str) -> Vec<u8> {
    format!("{:016x}\n{key}", process_id()).into_bytes()
}

/// The key a message from another process invalidates; `None` for this
/// process's own messages and anything malformed.
pub(crate) fn invalidated(message: &[u8]) -> Option<&str> {
    let message = std::str::from_utf8(message).ok()?;
    let (sender, key) = message.split_once('\n')?;
    let sender = u64::from_str_radix(sender, 16).ok()?;
    (sender != process_id()).then_some(key)
}

/// The channel invalidations travel on: one per namespace, named under
/// the namespace like every key memo stores.
pub(crate) fn channel(namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}:memo:invalidations"),
        None => "memo:invalidations".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(fingerprint: u64, for_: Duration) -> Kept {
        Kept {
            fingerprint,
            until: Instant::now() + for_,
            stamp: (0, 0),
            weight: 3,
            payload: Payload::Encoded(Arc::from(&b"abc"[..])),
        }
    }

    #[test]
    fn a_copy_serves_its_own_type_until_it_runs_out() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_millis(80)));
        assert!(copies.get("k", 1).is_some());
        assert!(copies.get("k", 2).is_none());
        std::thread::sleep(Duration::from_millis(100));
        assert!(copies.get("k", 1).is_none());
    }

    #[test]
    fn a_replacement_sets_its_own_expiry_and_remove_drops_it() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_secs(60)));
        copies.insert("k", kept(1, Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(70));
        assert!(copies.get("k", 1).is_none());
        copies.insert("k", kept(1, Duration::from_secs(60)));
        copies.remove("k");
        assert!(copies.get("k", 1).is_none());
        copies.insert("k", kept(1, Duration::ZERO));
        assert!(copies.get("k", 1).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let copies = LocalCopies::new(10 * u64::from(OVERHEAD + 8));
        for i in 0..1_000 {
            copies.insert(&format!("k{i}"), kept(1, Duration::from_secs(60)));
            assert!(copies.len() <= 10, "{}", copies.len());
        }
        assert!(copies.len() >= 5, "{}", copies.len());
        assert!(copies.weight.load(Ordering::Relaxed) <= copies.capacity);
        // The newest copy survives the eviction it caused.
        assert!(copies.get("k999", 1).is_some());
    }

    #[test]
    fn expired_copies_are_evicted_before_live_ones() {
        let copies = LocalCopies::new(10 * u64::from(OVERHEAD + 8));
        copies.insert("live", kept(1, Duration::from_secs(60)));
        for i in 0..8 {
            copies.insert(&format!("short{i}"), kept(1, Duration::from_millis(20)));
        }
        std::thread::sleep(Duration::from_millis(40));
        for i in 0..4 {
            copies.insert(&format!("new{i}"), kept(1, Duration::from_secs(60)));
        }
        assert!(copies.get("live", 1).is_some());
        for i in 0..4 {
            assert!(copies.get(&format!("new{i}"), 1).is_some(), "new{i}");
        }
    }

    #[test]
    fn weights_return_to_zero_when_copies_go() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("a", kept(1, Duration::from_secs(60)));
        copies.insert("a", kept(1, Duration::from_secs(60)));
        copies.insert("b", kept(1, Duration::from_millis(10)));
        copies.remove("a");
        std::thread::sleep(Duration::from_millis(20));
        assert!(copies.get("b", 1).is_none());
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
        assert_eq!(copies.len(), 0);
    }

    #[test]
    fn similar_keys_spread_over_every_shard() {
        let copies = LocalCopies::new(1 << 20);
        let mut used = [0usize; SHARDS];
        for i in 0..3_200 {
            used[copies.shard_of(&format!("app:user:{i}"))] += 1;
        }
        // 100 a shard on average; none starved or flooded.
        assert!(used.iter().all(|n| (50..200).contains(n)), "{used:?}");
    }

    #[test]
    fn a_copy_heavier_than_the_budget_is_not_kept() {
        let copies = LocalCopies::new(u64::from(OVERHEAD));
        copies.insert("k", kept(1, Duration::from_secs(60)));
        assert!(copies.get("k", 1).is_none());
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_process_ignores_its_own_invalidations_and_garbage() {
        let own = invalidation("ns:key");
        assert_eq!(invalidated(&own), None);
        let other = format!("{:016x}\nns:key", process_id() ^ 2);
        assert_eq!(invalidated(other.as_bytes()), Some("ns:key"));
        for garbage in [&b""[..], b"\n", b"zz\nkey", b"\xff\xfe"] {
            assert_eq!(invalidated(garbage), None);
        }
    }
}
