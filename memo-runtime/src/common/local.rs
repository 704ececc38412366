//! The per-process copies of hot entries (`Options::local`): a bounded moka
//! cache in front of the shared backend, one per configuration (kept beside
//! its counters and flights, so `configure` starts afresh).
//!
//! An entry is keyed by the stored key and records the type fingerprint it
//! was kept for, so a caller of another type under the same key never takes
//! it; the payload is either the value's serialized bytes (the functional
//! API, where `T` need not be `Clone`) or the decoded value itself (the
//! attribute's `local`, which hands out clones). Each entry expires at its
//! own instant, the earlier of the call's `local` duration and the shared
//! entry's logical expiry, so a copy is never served past the value's own
//! expiry. The budget is in bytes (the size of the value as stored), set by
//! `Config::local_capacity`.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

/// What a local copy holds.
#[derive(Clone)]
pub(crate) enum Payload {
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

/// The local copies of one configuration.
pub(crate) struct LocalCopies {
    cache: Cache<Arc<str>, Kept>,
}

impl std::fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCopies")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

/// Expires each copy at its own `until`.
struct Until;

impl Expiry<Arc<str>, Kept> for Until {
    fn expire_after_create(&self, _: &Arc<str>, kept: &Kept, now: Instant) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        kept: &Kept,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(kept.until.saturating_duration_since(now))
    }
}

/// What each copy costs beyond its value: the key and the bookkeeping.
const OVERHEAD: u32 = 128;

impl LocalCopies {
    /// Copies weighing at most `capacity` bytes in all.
    pub(crate) fn new(capacity: u64) -> LocalCopies {
        LocalCopies {
            cache: Cache::builder()
                .max_capacity(capacity)
                .weigher(|key: &Arc<str>, kept: &Kept| {
                    let key = u32::try_from(key.len()).unwrap_or(u32::MAX);
                    kept.weight.saturating_add(key).saturating_add(OVERHEAD)
                })
                .expire_after(Until)
                .build(),
        }
    }

    /// The copy kept under `key` for a type of `fingerprint`, unless it has
    /// run out (moka expires each entry at its `until`).
    pub(crate) fn get(&self, key: &str, fingerprint: u64) -> Option<Kept> {
        let kept = self.cache.get(key)?;
        (kept.fingerprint == fingerprint).then_some(kept)
    }

    /// Keeps `kept` under `key`, replacing any earlier copy; nothing when it
    /// would run out at once.
    pub(crate) fn insert(&self, key: &str, kept: Kept) {
        if Instant::now() < kept.until {
            self.cache.insert(Arc::from(key), kept);
        } else {
            self.cache.invalidate(key);
        }
    }

    /// Drops the copy kept under `key`, whatever its type.
    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key);
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
        }
        copies.cache.run_pending_tasks();
        assert!(
            copies.cache.entry_count() <= 10,
            "{}",
            copies.cache.entry_count()
        );
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
