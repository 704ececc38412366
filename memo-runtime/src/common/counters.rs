//! Counters of what the cache did, and the once-per-episode failure log.
//!
//! Every configuration carries its own counters, so `stats()` reports what
//! happened since the last [`configure`](crate::configure) call. Counting is
//! a relaxed atomic add per event: cheap enough for the hit path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of the counters of the configuration in force.
///
/// ```
/// use memo_runtime::{cache_memoize, stats, Options};
///
/// let before = stats();
/// let _: u32 = cache_memoize("stats-doc-example", || 7, &Options::new());
/// let _: u32 = cache_memoize("stats-doc-example", || 7, &Options::new());
/// let after = stats();
/// assert!(after.hits > before.hits);
/// assert!(after.misses > before.misses);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that had to compute (nothing usable in the cache).
    pub misses: u64,
    /// Values written to the cache (a chunked value counts once).
    pub stores: u64,
    /// Backend operations that failed (errors, timeouts, servers down), and
    /// values that could not be stored.
    pub errors: u64,
    /// Entries read back that did not check out (corrupt, truncated,
    /// tampered with, of another type or format) and were treated as misses.
    pub invalid: u64,
    /// Bytes read from the backend.
    pub bytes_read: u64,
    /// Bytes written to the backend.
    pub bytes_written: u64,
    /// Times a memoized call found its lock held and waited.
    pub lock_waits: u64,
    /// Times a wait for a lock timed out (the caller computed anyway).
    pub lock_timeouts: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stores: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) invalid: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) lock_waits: AtomicU64,
    pub(crate) lock_timeouts: AtomicU64,
    /// Whether the backend is in a failure episode; logging happens on the
    /// transitions only, so a dead server does not flood the log.
    failing: AtomicBool,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            stores: get(&self.stores),
            errors: get(&self.errors),
            invalid: get(&self.invalid),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            lock_waits: get(&self.lock_waits),
            lock_timeouts: get(&self.lock_timeouts),
        }
    }

    /// Counts a failed backend operation; logs a warning when it starts a
    /// failure episode and a debug line otherwise.
    pub(crate) fn backend_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        Self::add(&self.errors, 1);
        if self.failing.swap(true, Ordering::Relaxed) {
            log::debug!("memo: {what} failed: {error}");
        } else {
            log::warn!(
                "memo: {what} failed: {error}; computing values without the cache until it answers again"
            );
        }
    }

    /// Notes a successful backend operation, ending any failure episode.
    pub(crate) fn backend_ok(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            log::info!("memo: the cache backend answers again");
        }
    }

    /// Counts an entry that did not check out.
    pub(crate) fn invalid_entry(&self, key: &str, why: &dyn std::fmt::Display) {
        Self::add(&self.invalid, 1);
        log::debug!("memo: entry {key} treated as a miss: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_every_counter() {
        let counters = Counters::default();
        Counters::add(&counters.hits, 2);
        Counters::add(&counters.bytes_written, 10);
        counters.backend_failed("get", &"boom");
        counters.backend_failed("get", &"boom again");
        counters.backend_ok();
        let stats = counters.snapshot();
        assert_eq!(stats.hits, 2);
        assert_eq!(stats.bytes_written, 10);
        assert_eq!(stats.errors, 2);
        assert!(!counters.failing.load(Ordering::Relaxed));
    }
}
