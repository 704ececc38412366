//! Hot keys: what the policy decides from a value's stamp (its logical
//! expiry and computation time), and the local copies in front of the
//! backend.
//!
//! - [`Verdict`] and `Call::judge`: fresh, due for an early refresh
//!   (XFetch, `Options::refresh_ahead`), stale but servable
//!   (`Options::stale_while_revalidate`), or expired (a miss);
//! - `Call::lead_refresh`: who refreshes: one caller per process (a flight
//!   of its own, never waited on) and, for a stale value, one across
//!   processes (the entry's lock, taken without waiting);
//! - [`Keep`]: what a local copy holds, the serialized value
//!   ([`Encoded`], functional API) or the value itself ([`Typed`], the
//!   attribute's `local`), and `Call::local_hit`, the policy's first step.

use std::any::Any;
use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Call;
use super::drive::Driver;
use super::flight::{Joined, LeaderGuard};
use super::local::{Kept, Payload};
use super::observe::{CallOutcome, Observed};
use super::options::Beta;
use crate::format::envelope::{self, Stamp};
use crate::lock::{CacheLock, LockError};

/// What a value's stamp says about serving it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Serve it.
    Fresh,
    /// Serve it, unless this caller wins the refresh ahead of its expiry.
    Early,
    /// Past its expiry, within the stale window: serve it, unless this
    /// caller wins the refresh.
    Stale,
    /// Past its expiry and its stale window, within its fail-safe window:
    /// a miss, whose value is served only if the recomputation fails.
    FailSafe,
    /// Past its expiry and any window this call accepts: a miss.
    Expired,
}

/// Milliseconds since the Unix epoch: the clock logical expiries are kept
/// in, since other processes (on other machines) read them. A clock before
/// the epoch reads as 0, which only makes values look younger.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, saturating_ms)
}

fn saturating_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A uniform number in (0, 1], from a per-thread xorshift seeded once from
/// the OS: the hit path of refresh-ahead needs a cheap draw, not a secret.
fn unit_random() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            // A failed seed still gives a usable, if predictable, sequence.
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        ((x >> 11) + 1) as f64 / (1u64 << 53) as f64
    })
}

/// A uniform number in [0, 1), for the expiration's jitter.
pub(crate) fn unit_draw() -> f64 {
    1.0 - unit_random()
}

/// XFetch: whether a caller at `now_ms` recomputes a value expiring at
/// `expires_ms` that took `compute_us` to compute, with `beta` and a draw
/// `random` in (0, 1].
fn xfetch(now_ms: u64, expires_ms: u64, compute_us: u64, beta: f64, random: f64) -> bool {
    let delta_ms = compute_us as f64 / 1_000.0;
    // ln(random) ≤ 0, so the gap is ≥ 0.
    let gap = -delta_ms * beta * random.ln();
    now_ms as f64 + gap >= expires_ms as f64
}

impl Call<'_> {
    /// The TTL the backend keeps a value for: its expiration, plus the
    /// longer of the stale and fail-safe windows when the call has one
    /// (values stored whole only).
    pub(crate) fn backend_ttl(&self) -> Duration {
        let window = self.options.stale.max(self.options.fail_safe);
        match window {
            Some(window) if !self.options.large_data => self.ttl.saturating_add(window),
            _ => self.ttl,
        }
    }

    /// The stamp of a value computed now in `took`.
    pub(crate) fn stamp(&self, took: Duration) -> Stamp {
        Stamp {
            expires_ms: unix_ms().saturating_add(saturating_ms(self.ttl)).max(1),
            compute_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// What `stamp` says about serving its value to this call now.
    pub(crate) fn judge(&self, stamp: Stamp) -> Verdict {
        if stamp.expires_ms == 0 {
            // A manifest: the value expires with the backend entry.
            return Verdict::Fresh;
        }
        let now = unix_ms();
        if now >= stamp.expires_ms {
            let within = |window: Option<Duration>| {
                window.is_some_and(|window| {
                    now < stamp.expires_ms.saturating_add(saturating_ms(window))
                })
            };
            return if within(self.options.stale) {
                Verdict::Stale
            } else if within(self.options.fail_safe) {
                Verdict::FailSafe
            } else {
                Verdict::Expired
            };
        }
        match self.options.refresh_ahead {
            Some(Beta(beta))
                if xfetch(now, stamp.expires_ms, stamp.compute_us, beta, unit_random()) =>
            {
                Verdict::Early
            }
            _ => Verdict::Fresh,
        }
    }

    /// Whether this call keeps local copies.
    pub(crate) fn keeps_locally(&self) -> bool {
        self.options.local.is_some() && !self.options.large_data
    }

    /// The local copy of a `T`, counted and observed as the call's local
    /// hit, if the call keeps local copies and one is kept, fresh, and not
    /// due for an early refresh: the first step of the policy, which both
    /// entry points take before they build the policy's future. One clock
    /// reading checks the copy's expiry and, with metrics, starts the call's
    /// duration.
    pub(crate) fn serve_local<T, K: Keep<T>>(&self, keep: &K) -> Option<T> {
        if !self.keeps_locally() {
            return None;
        }
        let now = Instant::now();
        let value = self.local_hit(keep, now)?;
        Observed::start_at(self, now).end(CallOutcome::Local);
        Some(value)
    }

    /// The local copy of a `T`, counted as a local hit, if one is kept,
    /// fresh at `now`, and not due for an early refresh, for a call that
    /// [keeps local copies](Self::keeps_locally) (a batch observes its
    /// calls' hits together).
    pub(crate) fn local_hit<T, K: Keep<T>>(&self, keep: &K, now: Instant) -> Option<T> {
        let value = self.local_copy(keep, now)?;
        self.counters().local_hit();
        Some(value)
    }

    /// The local copy of a `T`, if one is kept, fresh at `now`, and not due
    /// for an early refresh.
    fn local_copy<T, K: Keep<T>>(&self, keep: &K, now: Instant) -> Option<T> {
        if self.options.force_overwrite {
            // A refresh replaces the value: the copies go first (and again
            // once its new version is written, see `Call::overwrite`).
            self.drop_local();
            return None;
        }
        let kept = self.engine.local().get(self.key.stored(), now)?;
        // Made by a call that began before the key's latest invalidation:
        // never served again.
        if !self.engine.barrier.current(kept.ticket) {
            return None;
        }
        // A copy never outlives the logical expiry, so only an early
        // refresh can make it unservable.
        if self.options.refresh_ahead.is_some() {
            let (expires_ms, compute_us) = kept.stamp;
            let stamp = Stamp {
                expires_ms,
                compute_us,
            };
            if self.judge(stamp) != Verdict::Fresh {
                return None;
            }
        }
        keep.take(&kept.payload, kept.fingerprint)
    }

    /// Keeps a copy of `value`, stamped `stamp`, for the call's `local`
    /// duration, never past the value's logical expiry.
    /// `plain`, when given, holds the value's postcard bytes, made once.
    pub(crate) fn keep_locally<T, K: Keep<T>>(
        &self,
        keep: &K,
        fp: u64,
        value: &T,
        stamp: Stamp,
        plain: Option<&Arc<[u8]>>,
    ) {
        let Some(local) = self.options.local.filter(|_| self.keeps_locally()) else {
            return;
        };
        // A chunked value (read by a call without `large_data`) carries no
        // expiry to bound a copy by: it is not kept.
        if stamp.expires_ms == 0 {
            return;
        }
        let left = Duration::from_millis(stamp.expires_ms.saturating_sub(unix_ms())).min(local);
        let now = Instant::now();
        let Some((payload, weight)) = keep.keep(value, plain) else {
            return;
        };
        let kept = Kept {
            fingerprint: fp,
            until: now.checked_add(left).unwrap_or(now),
            stamp: (stamp.expires_ms, stamp.compute_us),
            ticket: self.ticket,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            payload,
        };
        self.engine.local().insert(self.key.stored(), kept);
    }

    /// Drops this process's local copy of the entry.
    pub(crate) fn drop_local(&self) {
        if let Some(copies) = self.engine.local_if_made() {
            copies.remove(self.key.stored());
        }
    }

    /// For a call that keeps local copies, tells the other processes to
    /// drop theirs: once the entry has been replaced or deleted, so that
    /// none of them reads the old value back in between.
    pub(crate) fn tell_others(&self) {
        if self.options.local.is_some() {
            self.engine.publish_invalidation(self.key.stored());
        }
    }

    /// Whether this caller refreshes a value found `verdict` (early or
    /// stale): `Some` when it won, with what it holds while refreshing;
    /// `None` when another caller, here or (stale only) in another process,
    /// is at it.
    pub(crate) async fn lead_refresh<D: Driver>(
        &self,
        driver: &D,
        fp: u64,
        verdict: Verdict,
    ) -> Option<Refresh> {
        // Never waited on: a caller that loses serves the value it found.
        let flight = match self
            .engine
            .flights
            .join(&format!("refresh:{fp:016x}:{}", self.key.stored()))
        {
            Joined::Leader(guard) => guard,
            Joined::Waiter(_) => return None,
        };
        if verdict != Verdict::Stale {
            return Some(Refresh { flight, lock: None });
        }
        let options = self.options.lock.unwrap_or_default().blocking(false);
        let mut lock = self.lock(options);
        match lock.acquire_via(driver).await {
            Ok(true) => Some(Refresh {
                flight,
                lock: Some(lock),
            }),
            Ok(false) => None,
            Err(LockError::Backend(err)) => {
                // Refreshing twice beats serving stale values for the rest
                // of the window.
                self.counters().backend_failed("lock", &err);
                Some(Refresh { flight, lock: None })
            }
            Err(err) => {
                crate::common::diag::debug!("memo: {err}; refreshing without the lock");
                Some(Refresh { flight, lock: None })
            }
        }
    }
}

/// What the caller that won a refresh holds while it computes: the
/// process's refresh flight (so no other caller here refreshes meanwhile)
/// and, for a stale value, the entry's lock.
pub(crate) struct Refresh {
    pub(crate) flight: LeaderGuard,
    pub(crate) lock: Option<CacheLock>,
}

/// Counts a refresh whose computation panicked, or whose future was
/// dropped, as it unwinds; disarmed once the computation returned.
pub(crate) struct RefreshWatch<'c> {
    pub(crate) call: &'c Call<'c>,
    pub(crate) armed: bool,
}

impl Drop for RefreshWatch<'_> {
    fn drop(&mut self) {
        if self.armed && std::thread::panicking() {
            self.call.counters().refresh_failed();
        }
    }
}

/// How a local copy keeps and hands back a value of type `T`. Nominally
/// `pub` (in a private module): the attribute's generated code picks one
/// through `__private`.
pub trait Keep<T>: Sync {
    /// The payload to keep for `value`, and what it weighs in bytes;
    /// `plain`, when given, holds its postcard bytes.
    fn keep(&self, value: &T, plain: Option<&Arc<[u8]>>) -> Option<(Payload, usize)>;
    /// The value a payload kept for a type of fingerprint `fingerprint`
    /// holds, if it holds one of `T`.
    fn take(&self, payload: &Payload, fingerprint: u64) -> Option<T>;
}

/// Keeps the serialized value: no round trip, still a decode; `T` need not
/// be `Clone` (the functional API).
#[derive(Debug, Clone, Copy)]
pub struct Encoded;

impl<T: Serialize + DeserializeOwned> Keep<T> for Encoded {
    fn keep(&self, value: &T, plain: Option<&Arc<[u8]>>) -> Option<(Payload, usize)> {
        let bytes = match plain {
            Some(plain) => Arc::clone(plain),
            None => Arc::from(postcard::to_allocvec(value).ok()?),
        };
        let len = bytes.len();
        Some((Payload::Encoded(bytes), len))
    }

    /// Bytes of one type can decode as another: the fingerprint says whose
    /// they are.
    fn take(&self, payload: &Payload, fingerprint: u64) -> Option<T> {
        match payload {
            Payload::Encoded(bytes) if fingerprint == envelope::fingerprint::<T>(false) => {
                envelope::decode_exact(bytes).ok()
            }
            Payload::Encoded(_) | Payload::Typed(_) => None,
        }
    }
}

/// Keeps the decoded value and hands out clones (the attribute's `local`).
/// Made only for a `Clone` type, whose clone and downcast it keeps as
/// function pointers: the one bound is then the constructor's, which the
/// attribute's expansion reaches through `__private::decoded` and its
/// `LocalCopy` bound, so that a missing `Clone` is reported with that
/// trait's message rather than deep inside the call's bounds.
pub struct Typed<T> {
    share: fn(&T) -> Arc<dyn Any + Send + Sync>,
    downcast: fn(&(dyn Any + Send + Sync)) -> Option<&T>,
    clone: fn(&T) -> T,
}

impl<T> std::fmt::Debug for Typed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Typed")
    }
}

impl<T: Clone + Send + Sync + 'static> Default for Typed<T> {
    fn default() -> Self {
        Typed {
            share: |value| Arc::new(value.clone()),
            downcast: <dyn Any + Send + Sync>::downcast_ref::<T>,
            clone: T::clone,
        }
    }
}

impl<T: Serialize> Keep<T> for Typed<T> {
    fn keep(&self, value: &T, plain: Option<&Arc<[u8]>>) -> Option<(Payload, usize)> {
        // Charged the size it has as stored, counted without allocating.
        let size = match plain {
            Some(plain) => plain.len(),
            None => {
                let mut size = CountBytes(0);
                postcard::to_io(value, &mut size).ok()?;
                size.0
            }
        };
        Some((Payload::Typed((self.share)(value)), size))
    }

    /// The downcast says whether the value is a `T`: within one process,
    /// that is what the fingerprint would say, without looking it up.
    fn take(&self, payload: &Payload, fingerprint: u64) -> Option<T> {
        let _ = fingerprint;
        match payload {
            Payload::Typed(value) => (self.downcast)(&**value).map(self.clone),
            Payload::Encoded(_) => None,
        }
    }
}

/// An `io::Write` that only counts.
struct CountBytes(usize);

impl io::Write for CountBytes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_as_millis_saturated_at_every_extreme() {
        let max_secs = u64::MAX / 1000;
        for duration in [
            Duration::ZERO,
            Duration::from_nanos(999_999),
            Duration::from_millis(1),
            Duration::from_millis(1_234_567),
            Duration::new(max_secs, 614_999_999),
            Duration::new(max_secs, 615_000_000),
            Duration::new(max_secs, 999_999_999),
            Duration::new(max_secs + 1, 0),
            Duration::MAX,
        ] {
            let expected = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            assert_eq!(saturating_ms(duration), expected, "{duration:?}");
        }
    }

    #[test]
    fn a_copy_is_taken_only_as_the_type_it_was_kept_for() {
        let fp = envelope::fingerprint::<u32>(false);
        let (encoded, _) = Keep::<u32>::keep(&Encoded, &7u32, None).unwrap();
        assert_eq!(Keep::<u32>::take(&Encoded, &encoded, fp), Some(7));
        // The same bytes, kept for another type, read as a u32 (postcard
        // would decode them): not taken.
        let other = envelope::fingerprint::<u8>(false);
        assert_eq!(Keep::<u32>::take(&Encoded, &encoded, other), None);
        let (typed, _) = Keep::<u32>::keep(&Typed::<u32>::default(), &7u32, None).unwrap();
        assert_eq!(
            Keep::<u32>::take(&Typed::<u32>::default(), &typed, fp),
            Some(7)
        );
        assert_eq!(Keep::<u8>::take(&Typed::<u8>::default(), &typed, fp), None);
        // Neither takes the other's payload.
        assert_eq!(Keep::<u32>::take(&Encoded, &typed, fp), None);
        assert_eq!(
            Keep::<u32>::take(&Typed::<u32>::default(), &encoded, fp),
            None
        );
    }

    #[test]
    fn xfetch_never_refreshes_a_free_computation_and_always_at_expiry() {
        let now = 1_000_000;
        assert!(!xfetch(now, now + 1, 0, 1.0, 1e-300));
        assert!(xfetch(now, now, 0, 1.0, 1.0));
        // Δ = 100 ms, β = 1: 50 ms before expiry refreshes when
        // −ln(r) ≥ 0.5, i.e. r ≤ e^−0.5 ≈ 0.607.
        assert!(xfetch(now, now + 50, 100_000, 1.0, 0.6));
        assert!(!xfetch(now, now + 50, 100_000, 1.0, 0.61));
        // A larger β refreshes earlier.
        assert!(xfetch(now, now + 100, 100_000, 2.0, 0.6));
    }

    #[test]
    fn random_draws_are_in_the_unit_interval_and_vary() {
        let draws: Vec<f64> = (0..10_000).map(|_| unit_random()).collect();
        assert!(draws.iter().all(|r| *r > 0.0 && *r <= 1.0));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn xfetch_refreshes_about_as_often_as_the_paper_says() {
        // Δ = 100 ms, β = 1, 100 ms before expiry: P = e^−1 ≈ 0.37.
        let now = 5_000;
        let hits = (0..20_000)
            .filter(|_| xfetch(now, now + 100, 100_000, 1.0, unit_random()))
            .count();
        let p = hits as f64 / 20_000.0;
        assert!((0.33..0.41).contains(&p), "{p}");
    }
}
