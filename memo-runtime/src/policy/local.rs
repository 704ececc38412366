//! The per-process copies of hot entries (`Options::local`): a bounded map
//! in front of the shared backend, one per engine, so `configure` starts
//! afresh.
//!
//! An entry is keyed by the stored key and records the type fingerprint it
//! was kept for, so a caller of another type under the same key never takes
//! it; the payload is either the value's serialized bytes (the functional
//! API, where `T` need not be `Clone`) or the decoded value itself (the
//! attribute's `local`, which hands out clones). Each copy expires at its
//! own instant, the earlier of the call's `local` duration and the shared
//! entry's logical expiry, and a lookup checks that instant itself, so a
//! copy is never served past the value's own expiry. Each copy also carries
//! the barrier ticket of the call that made it, which the policy checks
//! before serving it (see `barrier`). The budget is in bytes (the size of
//! the value as stored plus its key and a fixed overhead), set by
//! `Config::local_capacity`.
//!
//! # Why quick_cache
//!
//! The map is `quick_cache`'s sharded, weighted cache. Its eviction is
//! S3-FIFO-like (CLOCK-Pro): a key read again and again stays while keys
//! read once pass through, which is what copies of hot entries need. A hit
//! takes one shard's read lock and marks the entry, with no channel, no
//! background thread and no clock, so threads hitting different keys do
//! not meet; `moka`, the other choice, records every read in a channel
//! that its maintenance drains. Expired copies are not swept: they are
//! dropped when a lookup finds them, or evicted like any cold entry.
//!
//! The messages that carry an invalidation to the other processes' copies
//! (over Redis pub/sub) are written and read here too.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::barrier::Ticket;

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
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// The type fingerprint the value was kept for.
    pub(crate) fingerprint: u64,
    /// When the copy stops being served.
    pub(crate) until: Instant,
    /// The logical expiry (ms since the Unix epoch) and computation time
    /// (µs) of the shared entry, for refresh-ahead on local hits.
    pub(crate) stamp: (u64, u64),
    /// The barrier ticket of the call that made the copy.
    pub(crate) ticket: Ticket,
    /// What the budget charges for the value.
    pub(crate) weight: u32,
    /// The value.
    pub(crate) payload: Payload,
}

/// What the budget charges for a copy beyond its value and key: the
/// entry's own bookkeeping, so that many tiny copies are bounded too.
const OVERHEAD: u64 = 128;

/// The budget's measure of a copy.
#[derive(Debug, Clone, Copy)]
struct Charge;

impl Weighter<Box<str>, Kept> for Charge {
    fn weight(&self, key: &Box<str>, kept: &Kept) -> u64 {
        u64::from(kept.weight) + key.len() as u64 + OVERHEAD
    }
}

/// The copies of one engine.
pub(crate) struct LocalCopies {
    copies: Cache<Box<str>, Kept, Charge>,
    capacity: u64,
}

impl std::fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCopies")
            .field("capacity", &self.capacity)
            .field("copies", &self.copies.len())
            .finish()
    }
}

impl LocalCopies {
    /// Copies weighing at most `capacity` bytes in all.
    pub(crate) fn new(capacity: u64) -> LocalCopies {
        // quick_cache sizes its tables by an estimate of the entries:
        // copies of about a kilobyte, bounded so that a huge budget does
        // not allocate up front.
        let estimate = (capacity / 1024).clamp(16, 1 << 16) as usize;
        LocalCopies {
            copies: Cache::with_weighter(estimate, capacity.max(1), Charge),
            capacity,
        }
    }

    /// The copy kept under `key`, if it has not run out by `now`. One that
    /// has is dropped. Whether it holds a value of the caller's type is
    /// for the caller's [`Keep`](super::hot::Keep) to say.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Kept> {
        let kept = self.copies.get(key)?;
        if now >= kept.until {
            self.copies.remove_if(key, |found| now >= found.until);
            self.report();
            return None;
        }
        Some(kept)
    }

    /// Keeps `kept` under `key`, replacing any earlier copy; nothing when
    /// it would run out at once, or alone weighs more than the budget.
    pub(crate) fn insert(&self, key: &str, kept: Kept) {
        if Instant::now() >= kept.until || Charge.weight(&Box::from(key), &kept) > self.capacity {
            self.copies.remove(key);
            self.report();
            return;
        }
        self.copies.insert(Box::from(key), kept);
        self.report();
    }

    /// Drops the copy kept under `key`, whatever its type.
    pub(crate) fn remove(&self, key: &str) {
        self.copies.remove(key);
        self.report();
    }

    /// Drops every copy.
    pub(crate) fn clear(&self) {
        self.copies.clear();
        self.report();
    }

    /// Reports the copies' number and weight to the metrics, after every
    /// change (and only then: a hit changes neither).
    fn report(&self) {
        super::observe::local_copies(self.copies.len(), self.copies.weight());
    }

    /// The number of copies and the bytes the budget charges for them.
    #[cfg(test)]
    fn usage(&self) -> (usize, u64) {
        (self.copies.len(), self.copies.weight())
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
    use crate::policy::barrier::Barrier;
    use std::time::Duration;

    fn kept(fingerprint: u64, for_: Duration, weight: u32) -> Kept {
        Kept {
            fingerprint,
            until: Instant::now() + for_,
            stamp: (0, 0),
            ticket: Barrier::default().ticket("k"),
            weight,
            payload: Payload::Encoded(Arc::from(&b"abc"[..])),
        }
    }

    #[test]
    fn a_copy_serves_until_it_runs_out() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_millis(50), 3));
        assert!(copies.get("k", Instant::now()).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(copies.get("k", Instant::now()).is_none());
        assert_eq!(copies.usage().0, 0, "the run-out copy is dropped");
    }

    #[test]
    fn a_replacement_takes_the_place_of_the_copy_and_remove_drops_it() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_secs(60), 3));
        copies.insert("k", kept(2, Duration::from_secs(60), 3));
        assert_eq!(
            copies.get("k", Instant::now()).map(|kept| kept.fingerprint),
            Some(2)
        );
        copies.remove("k");
        assert!(copies.get("k", Instant::now()).is_none());
        assert_eq!(copies.usage(), (0, 0));
    }

    #[test]
    fn copies_that_run_out_at_once_or_outweigh_the_budget_are_not_kept() {
        let copies = LocalCopies::new(4096);
        copies.insert("now", kept(1, Duration::ZERO, 3));
        assert!(copies.get("now", Instant::now()).is_none());
        copies.insert("heavy", kept(1, Duration::from_secs(60), 4096));
        assert!(copies.get("heavy", Instant::now()).is_none());
        assert_eq!(copies.usage(), (0, 0));
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let budget = 64 * 1024;
        let copies = LocalCopies::new(budget);
        for n in 0..10_000 {
            copies.insert(&format!("key:{n}"), kept(1, Duration::from_secs(60), 1000));
        }
        let (count, weight) = copies.usage();
        assert!(
            weight <= budget,
            "{weight} bytes kept over a budget of {budget}"
        );
        assert!(count > 0);
    }

    #[test]
    fn a_hot_copy_survives_a_scan_of_cold_ones() {
        let copies = LocalCopies::new(256 * 1024);
        copies.insert("hot", kept(1, Duration::from_secs(60), 1000));
        for n in 0..20_000u32 {
            // The hot copy is read between the cold ones' inserts, as a
            // hot key is.
            if n.is_multiple_of(8) {
                assert!(
                    copies.get("hot", Instant::now()).is_some(),
                    "hot copy evicted at {n}"
                );
            }
            copies.insert(&format!("cold:{n}"), kept(1, Duration::from_secs(60), 1000));
        }
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
