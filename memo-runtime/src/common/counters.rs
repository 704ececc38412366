//! Counters of what the cache did, and the once-per-episode failure log.
//!
//! Every configuration carries its own counters, so `stats()` reports what
//! happened since the last [`configure`](crate::configure) call. Counting is
//! a relaxed atomic add per event: cheap enough for the hit path. What every
//! hit counts (hits, bytes read, local hits) is spread over stripes, each on
//! a cache line of its own, a thread always adding to the same one: threads
//! hitting at once then do not all write one line.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::error::BackendError;

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
    /// Of those failures, the ones that were timeouts
    /// ([`BackendError::is_timeout`](crate::BackendError::is_timeout)).
    pub timeouts: u64,
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
    /// Of the hits, those answered from this process's local copy
    /// ([`Options::local`](crate::Options::local)), with no backend call.
    pub local_hits: u64,
    /// Values recomputed before their expiry by refresh-ahead
    /// ([`Options::refresh_ahead`](crate::Options::refresh_ahead)).
    pub early_refreshes: u64,
    /// Of the hits, those that served a value past its expiry while it was
    /// being refreshed
    /// ([`Options::stale_while_revalidate`](crate::Options::stale_while_revalidate)).
    pub stale_serves: u64,
    /// Refreshes (ahead of expiry, or of a stale value) whose computation
    /// failed (`Err`) or panicked; the old value stayed in place.
    pub refresh_failures: u64,
    /// Calls whose recomputation returned `Err` and that were served the
    /// last good value instead
    /// ([`Options::fail_safe`](crate::Options::fail_safe)).
    pub fail_safe_serves: u64,
}

/// The live counters behind [`Stats`], counted by event.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// The counts of the hit path, by stripe; summed by `snapshot`.
    stripes: [Stripe; STRIPES],
    misses: AtomicU64,
    stores: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    invalid: AtomicU64,
    bytes_written: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    early_refreshes: AtomicU64,
    stale_serves: AtomicU64,
    refresh_failures: AtomicU64,
    fail_safe_serves: AtomicU64,
    /// Whether the backend is in a failure episode; logging happens on the
    /// transitions only, so a dead server does not flood the log.
    failing: AtomicBool,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// How many stripes the hit path's counts are spread over: about as many
/// threads as hit at once on a large machine; more only cost memory.
const STRIPES: usize = 16;

/// One stripe of the hit path's counts, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    hits: AtomicU64,
    bytes_read: AtomicU64,
    local_hits: AtomicU64,
}

/// This thread's stripe: threads take them in turn as they first count.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    // During a thread's teardown, any stripe will do.
    INDEX.try_with(|index| *index).unwrap_or(0)
}

impl Counters {
    /// A call answered from the cache.
    pub(crate) fn hit(&self) {
        bump(&self.stripe().hits, 1);
    }

    fn stripe(&self) -> &Stripe {
        &self.stripes[stripe_index()]
    }

    /// A call that had to compute.
    pub(crate) fn miss(&self) {
        bump(&self.misses, 1);
    }

    /// A value written to the cache (a chunked one counts once).
    pub(crate) fn stored(&self) {
        bump(&self.stores, 1);
    }

    /// `n` bytes read from the backend.
    pub(crate) fn read(&self, n: usize) {
        bump(&self.stripe().bytes_read, n as u64);
    }

    /// `n` bytes written to the backend.
    pub(crate) fn wrote(&self, n: usize) {
        bump(&self.bytes_written, n as u64);
    }

    /// A memoized call found its lock held and waited.
    pub(crate) fn lock_waited(&self) {
        bump(&self.lock_waits, 1);
    }

    /// A wait for a lock timed out.
    pub(crate) fn lock_timed_out(&self) {
        bump(&self.lock_timeouts, 1);
    }

    /// A call answered from the local copy (counted as a hit too, when a
    /// snapshot sums them: one write per local hit).
    pub(crate) fn local_hit(&self) {
        bump(&self.stripe().local_hits, 1);
    }

    /// A value recomputed ahead of its expiry.
    pub(crate) fn early_refresh(&self) {
        bump(&self.early_refreshes, 1);
    }

    /// A stale value served while it is refreshed (counted as a hit too).
    pub(crate) fn stale_served(&self) {
        bump(&self.stripe().hits, 1);
        bump(&self.stale_serves, 1);
    }

    /// A call served its last good value after its recomputation failed.
    pub(crate) fn fail_safe_served(&self) {
        bump(&self.fail_safe_serves, 1);
    }

    /// A refresh whose computation failed or panicked.
    pub(crate) fn refresh_failed(&self) {
        bump(&self.refresh_failures, 1);
    }

    /// A value that could not be stored for a reason of its own (it does
    /// not serialize, it is too large), logged by the caller.
    pub(crate) fn unstorable(&self) {
        bump(&self.errors, 1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let sum = |counter: fn(&Stripe) -> &AtomicU64| {
            self.stripes.iter().map(|stripe| get(counter(stripe))).sum()
        };
        let local_hits = sum(|stripe| &stripe.local_hits);
        Stats {
            hits: sum(|stripe| &stripe.hits) + local_hits,
            misses: get(&self.misses),
            stores: get(&self.stores),
            errors: get(&self.errors),
            timeouts: get(&self.timeouts),
            invalid: get(&self.invalid),
            bytes_read: sum(|stripe| &stripe.bytes_read),
            bytes_written: get(&self.bytes_written),
            lock_waits: get(&self.lock_waits),
            lock_timeouts: get(&self.lock_timeouts),
            local_hits,
            early_refreshes: get(&self.early_refreshes),
            stale_serves: get(&self.stale_serves),
            refresh_failures: get(&self.refresh_failures),
            fail_safe_serves: get(&self.fail_safe_serves),
        }
    }

    /// Counts a failed backend operation; logs a warning, with the kind of
    /// failure, when it starts a failure episode and a debug line otherwise.
    pub(crate) fn backend_failed(&self, what: &str, error: &BackendError) {
        bump(&self.errors, 1);
        if error.is_timeout() {
            bump(&self.timeouts, 1);
        }
        let kind = error.kind();
        #[cfg(feature = "metrics")]
        metrics::counter!("memo_backend_errors_total", "kind" => kind.label()).increment(1);
        let first = !self.failing.swap(true, Ordering::Relaxed);
        // With `tracing`, the kind is a field of the event too.
        #[cfg(feature = "tracing")]
        if first {
            tracing::warn!(
                kind = kind.label(),
                "memo: {what} failed ({kind}): {error}; computing values without the cache until it answers again"
            );
        } else {
            tracing::debug!(kind = kind.label(), "memo: {what} failed ({kind}): {error}");
        }
        #[cfg(not(feature = "tracing"))]
        if first {
            log::warn!(
                "memo: {what} failed ({kind}): {error}; computing values without the cache until it answers again"
            );
        } else {
            log::debug!("memo: {what} failed ({kind}): {error}");
        }
    }

    /// Notes a successful backend operation, ending any failure episode.
    pub(crate) fn backend_ok(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            crate::common::diag::info!("memo: the cache backend answers again");
        }
    }

    /// Counts an entry that did not check out.
    pub(crate) fn invalid_entry(&self, key: &str, why: &dyn std::fmt::Display) {
        bump(&self.invalid, 1);
        crate::common::diag::debug!("memo: entry {key} treated as a miss: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::error::BackendErrorKind;

    #[test]
    fn counts_from_more_threads_than_stripes_are_all_summed() {
        let counters = Counters::default();
        std::thread::scope(|scope| {
            for _ in 0..STRIPES * 2 + 3 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        counters.hit();
                        counters.local_hit();
                        counters.stale_served();
                        counters.read(3);
                    }
                });
            }
        });
        let threads = (STRIPES * 2 + 3) as u64;
        let stats = counters.snapshot();
        assert_eq!(stats.hits, threads * 300);
        assert_eq!(stats.local_hits, threads * 100);
        assert_eq!(stats.stale_serves, threads * 100);
        assert_eq!(stats.bytes_read, threads * 300);
    }

    #[test]
    fn snapshot_reflects_every_counter() {
        let counters = Counters::default();
        counters.hit();
        counters.hit();
        counters.wrote(10);
        counters.backend_failed("get", &BackendError::new("boom"));
        counters.backend_failed(
            "get",
            &BackendError::new("boom again").with_kind(BackendErrorKind::Timeout),
        );
        counters.backend_ok();
        let stats = counters.snapshot();
        assert_eq!(stats.hits, 2);
        assert_eq!(stats.bytes_written, 10);
        assert_eq!(stats.errors, 2);
        assert_eq!(stats.timeouts, 1);
        assert!(!counters.failing.load(Ordering::Relaxed));
    }
}
