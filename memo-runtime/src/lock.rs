//! A lock held in the cache, shared by every process using it.
//!
//! It follows Djblets' `CacheLock`: acquiring stores a random token with the
//! backend's atomic `add` (set only if absent); a blocking acquire retries
//! every `retry` interval plus 0–25% random jitter (so waiters woken
//! together do not stampede in step) until `timeout`; the lock entry expires
//! after `lock_expiration`, so a holder that crashed cannot block everyone
//! forever; and release deletes the entry only if it still holds this
//! holder's token, so a holder whose lock expired and was taken over cannot
//! release the new holder's lock.
//!
//! The retry loop is written once, as async code over the backend layer's
//! `World`: [`acquire`](CacheLock::acquire) runs it on the caller's thread
//! (blocking calls, `thread::sleep`), `acquire_async` on tokio (the
//! engine's async client, tokio timers).
//!
//! The lock is advisory and best-effort, like any lock in a cache that may
//! evict or lose entries: memo uses it to avoid computing the same value
//! many times at once, never for correctness.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "async")]
use crate::backend::AsyncBackend;
use crate::backend::world::{Blocking, World, block_on};
use crate::backend::{Backend, BackendError};
use crate::common::counters::Counters;
use crate::config::Config;
use crate::format::key::{CacheKey, lock_key};

/// Default time a lock entry lives before it expires on its own.
pub const DEFAULT_LOCK_EXPIRATION: Duration = Duration::from_secs(30);
/// Default time a blocking acquire waits before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval between attempts of a blocking acquire.
pub const DEFAULT_LOCK_RETRY: Duration = Duration::from_millis(50);

/// How a lock is taken: the settings of [`CacheLock`], carried into
/// [`Options::lock`](crate::Options::lock).
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{LockOptions, Options};
///
/// let options = Options::new().lock(
///     LockOptions::new()
///         .timeout(Duration::from_secs(5))
///         .retry(Duration::from_millis(20))
///         .lock_expiration(Duration::from_secs(60)),
/// );
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "lock options do nothing until passed to Options::lock or CacheLock::options"]
pub struct LockOptions {
    pub(crate) blocking: bool,
    pub(crate) timeout: Duration,
    pub(crate) retry: Duration,
    pub(crate) lock_expiration: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            blocking: true,
            timeout: DEFAULT_LOCK_TIMEOUT,
            retry: DEFAULT_LOCK_RETRY,
            lock_expiration: DEFAULT_LOCK_EXPIRATION,
        }
    }
}

impl LockOptions {
    /// Blocking, 30 s timeout, 50 ms retry, 30 s expiration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `acquire` waits for a lock held elsewhere (`true`) or returns
    /// `Ok(false)` at once (`false`).
    pub fn blocking(mut self, blocking: bool) -> Self {
        self.blocking = blocking;
        self
    }

    /// How long a blocking acquire waits before `Err(LockError::Timeout)`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The interval between attempts; each wait adds 0–25% jitter.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry.max(Duration::from_millis(1));
        self
    }

    /// How long the lock entry lives if never released. At least one
    /// second (backends count TTLs in whole seconds or milliseconds).
    pub fn lock_expiration(mut self, expiration: Duration) -> Self {
        self.lock_expiration = expiration.max(Duration::from_secs(1));
        self
    }
}

/// A lock operation that did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A blocking acquire waited `waited` without getting the lock.
    #[error("timed out after {waited:?} waiting for lock {key}")]
    Timeout {
        /// The lock's full cache key.
        key: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Release or update of a lock this holder does not hold (never
    /// acquired, already released, or expired and perhaps taken over).
    #[error("lock {0} is not held by this holder")]
    NotHeld(String),
    /// `acquire` on a lock this holder already holds.
    #[error("lock {0} is already held by this holder")]
    AlreadyHeld(String),
    /// A non-blocking guard could not be had: the lock is held elsewhere.
    #[error("lock {0} is held elsewhere")]
    Busy(String),
    /// The backend failed.
    #[error("lock backend failed: {0}")]
    Backend(#[from] BackendError),
}

/// A lock stored in the cache under a key derived from a cache key.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::CacheLock;
///
/// let mut lock = CacheLock::new("nightly-report").timeout(Duration::from_secs(1));
/// assert!(lock.acquire().unwrap());
/// assert!(lock.locked());
///
/// let mut other = CacheLock::new("nightly-report").blocking(false);
/// assert!(!other.acquire().unwrap()); // held elsewhere
///
/// lock.release().unwrap();
/// assert!(lock.release().is_err()); // not held any more
/// assert!(other.acquire().unwrap());
/// # other.release().unwrap();
/// ```
#[must_use = "a lock does nothing until acquired"]
pub struct CacheLock {
    backend: Arc<dyn Backend>,
    #[cfg(feature = "async")]
    async_backend: Arc<dyn AsyncBackend>,
    counters: Arc<Counters>,
    full_cache_key: String,
    token: String,
    options: LockOptions,
    expires_at: Option<Instant>,
}

impl fmt::Debug for CacheLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLock")
            .field("full_cache_key", &self.full_cache_key)
            .field("options", &self.options)
            .field("locked", &self.locked())
            .finish_non_exhaustive()
    }
}

impl CacheLock {
    /// A lock for `key` on the configured backend (namespaced, and hashed
    /// when the configuration forces encryption, like any key). Nothing is
    /// acquired until [`acquire`](Self::acquire).
    pub fn new(key: impl Into<CacheKey>) -> CacheLock {
        let config = crate::config::config();
        let resolved = config.resolve(key.into(), None, None);
        Self::for_stored_key(&config, resolved.key.stored(), LockOptions::default())
    }

    /// A lock guarding the memoized entry stored under `stored_key`.
    pub(crate) fn for_stored_key(
        config: &Config,
        stored_key: &str,
        options: LockOptions,
    ) -> CacheLock {
        let mut token = [0u8; 16];
        crate::format::crypto::fill_random(&mut token);
        CacheLock {
            backend: Arc::clone(&config.backend),
            #[cfg(feature = "async")]
            async_backend: Arc::clone(&config.async_backend),
            counters: Arc::clone(&config.counters),
            full_cache_key: lock_key(config.namespace.as_deref(), stored_key),
            token: crate::format::crypto::hex(&token),
            options,
            expires_at: None,
        }
    }

    /// All settings at once.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// See [`LockOptions::blocking`].
    pub fn blocking(mut self, blocking: bool) -> Self {
        self.options = self.options.blocking(blocking);
        self
    }

    /// See [`LockOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options = self.options.timeout(timeout);
        self
    }

    /// See [`LockOptions::retry`].
    pub fn retry(mut self, retry: Duration) -> Self {
        self.options = self.options.retry(retry);
        self
    }

    /// See [`LockOptions::lock_expiration`].
    pub fn lock_expiration(mut self, expiration: Duration) -> Self {
        self.options = self.options.lock_expiration(expiration);
        self
    }

    /// The key the lock entry is stored under: the lock key derived from
    /// the entry's stored key (see [`CacheKey`]).
    pub fn full_cache_key(&self) -> &str {
        &self.full_cache_key
    }

    /// Takes the lock. `Ok(true)` once held; `Ok(false)` only when
    /// non-blocking and held elsewhere; `Err(LockError::Timeout)` when a
    /// blocking wait runs out.
    pub fn acquire(&mut self) -> Result<bool, LockError> {
        let io = self.blocking_io();
        block_on(self.acquire_via(&io))
    }

    /// [`acquire`](Self::acquire) for async callers: the engine's async
    /// client, and tokio timers between attempts, so no executor thread is
    /// blocked while the lock is held elsewhere. Needs a tokio runtime with
    /// its time driver.
    #[cfg(feature = "async")]
    pub async fn acquire_async(&mut self) -> Result<bool, LockError> {
        let io = self.tokio_io();
        self.acquire_via(&io).await
    }

    fn blocking_io(&self) -> Blocking {
        Blocking(Arc::clone(&self.backend))
    }

    #[cfg(feature = "async")]
    fn tokio_io(&self) -> crate::backend::world::Tokio {
        crate::backend::world::Tokio(Arc::clone(&self.async_backend))
    }

    /// The one acquire loop, in either world.
    pub(crate) async fn acquire_via(&mut self, io: &impl World) -> Result<bool, LockError> {
        if self.locked() {
            return Err(LockError::AlreadyHeld(self.full_cache_key.clone()));
        }
        let start = Instant::now();
        let mut waited = false;
        loop {
            let attempt = Instant::now();
            if io
                .backend()
                .add(
                    &self.full_cache_key,
                    self.token.as_bytes(),
                    self.options.lock_expiration,
                )
                .await?
            {
                self.expires_at = Some(later(attempt, self.options.lock_expiration));
                return Ok(true);
            }
            if !self.options.blocking {
                return Ok(false);
            }
            if !waited {
                waited = true;
                self.counters.lock_waited();
                crate::common::diag::debug!("memo: waiting for the lock {}", self.full_cache_key);
            }
            let elapsed = start.elapsed();
            if elapsed >= self.options.timeout {
                self.counters.lock_timed_out();
                return Err(LockError::Timeout {
                    key: self.full_cache_key.clone(),
                    waited: elapsed,
                });
            }
            io.sleep(jittered(self.options.retry).min(self.options.timeout - elapsed))
                .await;
        }
    }

    /// Releases the lock, deleting the entry only if it still holds this
    /// holder's token. An `Err` when the lock is not held (never acquired,
    /// released already, or expired).
    pub fn release(&mut self) -> Result<(), LockError> {
        let io = self.blocking_io();
        block_on(self.release_via(&io))
    }

    /// [`release`](Self::release) for async callers, through the engine's
    /// async client.
    #[cfg(feature = "async")]
    pub async fn release_async(&mut self) -> Result<(), LockError> {
        let io = self.tokio_io();
        self.release_via(&io).await
    }

    /// The one release, in either world.
    pub(crate) async fn release_via(&mut self, io: &impl World) -> Result<(), LockError> {
        if self.expires_at.take().is_none() {
            return Err(LockError::NotHeld(self.full_cache_key.clone()));
        }
        if io
            .backend()
            .delete_if_value(&self.full_cache_key, self.token.as_bytes())
            .await?
        {
            Ok(())
        } else {
            Err(LockError::NotHeld(self.full_cache_key.clone()))
        }
    }

    /// Releases a lock whose holder is going away without waiting for the
    /// outcome, which is logged and counted. Synchronous callers release
    /// at once; an async holder dropped on a tokio runtime (its future was
    /// cancelled) has the release spawned there. Where there is no runtime,
    /// or the runtime is shutting down (a detached refresh ended by its
    /// runtime's shutdown) and drops the spawned release before it ends,
    /// a short-lived thread releases it through the synchronous engine, so
    /// that no dead holder keeps it until it expires.
    pub(crate) fn release_quietly(mut self, on_tokio: bool) {
        if self.expires_at.is_none() {
            return;
        }
        #[cfg(feature = "async")]
        if on_tokio {
            /// The lock until its release has ended; released on a thread
            /// of its own if dropped before.
            struct Releasing(Option<CacheLock>);
            impl Drop for Releasing {
                fn drop(&mut self) {
                    if let Some(lock) = self.0.take() {
                        let spawned = std::thread::Builder::new()
                            .name("memo-lock-release".into())
                            .spawn(move || lock.release_quietly(false));
                        if let Err(err) = spawned {
                            crate::common::diag::debug!(
                                "memo: cannot release a lock on a thread: {err}"
                            );
                        }
                    }
                }
            }
            let mut releasing = Releasing(Some(self));
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Some(lock) = releasing.0.as_mut() {
                        let outcome = lock.release_async().await;
                        lock.released(outcome);
                    }
                    // Ended: nothing left for the guard to release.
                    releasing.0.take();
                });
            }
            return;
        }
        let _ = on_tokio;
        let outcome = self.release();
        self.released(outcome);
    }

    /// Logs and counts how a release nobody waits on ended.
    pub(crate) fn released(&self, outcome: Result<(), LockError>) {
        match outcome {
            Ok(()) => {}
            // Nobody else hears of a failure on this silent path, so it
            // is counted like any other backend failure.
            Err(LockError::Backend(err)) => self.counters.backend_failed("lock release", &err),
            Err(err) => {
                crate::common::diag::debug!("memo: releasing {}: {err}", self.full_cache_key);
            }
        }
    }

    /// Whether this holder holds the lock: acquired, not released, and not
    /// past its expiration.
    pub fn locked(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() < at)
    }

    /// Extends the lock's life to `expiration` from now (`None`: the
    /// configured `lock_expiration`), for holders whose work runs long.
    pub fn update_expiration(&mut self, expiration: Option<Duration>) -> Result<(), LockError> {
        if !self.locked() {
            return Err(LockError::NotHeld(self.full_cache_key.clone()));
        }
        let expiration = expiration
            .unwrap_or(self.options.lock_expiration)
            .max(Duration::from_secs(1));
        let now = Instant::now();
        // One atomic compare-and-touch: a read followed by a touch could
        // extend a successor's lock taken over in between.
        if self
            .backend
            .touch_if_value(&self.full_cache_key, self.token.as_bytes(), expiration)?
        {
            self.expires_at = Some(later(now, expiration));
            Ok(())
        } else {
            self.expires_at = None;
            Err(LockError::NotHeld(self.full_cache_key.clone()))
        }
    }

    /// Acquires the lock and returns a guard that releases it when dropped.
    /// A non-blocking lock held elsewhere is `Err(LockError::Busy)`.
    ///
    /// ```
    /// use memo_runtime::CacheLock;
    ///
    /// {
    ///     let guard = CacheLock::new("rebuild-index").acquire_guard().unwrap();
    ///     assert!(guard.locked());
    /// } // released here
    /// assert!(CacheLock::new("rebuild-index").blocking(false).acquire().unwrap());
    /// ```
    pub fn acquire_guard(mut self) -> Result<CacheLockGuard, LockError> {
        if self.acquire()? {
            Ok(CacheLockGuard { lock: self })
        } else {
            Err(LockError::Busy(self.full_cache_key))
        }
    }
}

/// Holds a [`CacheLock`] and releases it on drop.
#[derive(Debug)]
pub struct CacheLockGuard {
    lock: CacheLock,
}

impl CacheLockGuard {
    /// Releases now, reporting the outcome (dropping releases silently).
    pub fn release(mut self) -> Result<(), LockError> {
        self.lock.release()
    }
}

impl std::ops::Deref for CacheLockGuard {
    type Target = CacheLock;
    fn deref(&self) -> &CacheLock {
        &self.lock
    }
}

impl std::ops::DerefMut for CacheLockGuard {
    fn deref_mut(&mut self) -> &mut CacheLock {
        &mut self.lock
    }
}

impl CacheLockGuard {
    /// A guard for a lock already held.
    pub(crate) fn held(lock: CacheLock) -> CacheLockGuard {
        CacheLockGuard { lock }
    }
}

impl Drop for CacheLockGuard {
    fn drop(&mut self) {
        if self.lock.expires_at.is_some() {
            let outcome = self.lock.release();
            self.lock.released(outcome);
        }
    }
}

/// `base` plus a random 0–25%, saturating: integer arithmetic, because
/// `Duration::mul_f64` panics near `Duration::MAX` and a caller may pass it.
fn jittered(base: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    crate::format::crypto::fill_random(&mut bytes);
    let quarter_nanos = base.as_nanos() / 4;
    let extra = quarter_nanos * u128::from(u16::from_le_bytes(bytes)) / u128::from(u16::MAX);
    base.saturating_add(duration_from_nanos(extra))
}

/// `nanos` as a `Duration`, saturating at `Duration::MAX`.
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // Below a second's worth of nanoseconds, so the cast is exact.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// `from + after`, or a point so far ahead that it never comes when the sum
/// does not fit an `Instant` (a caller may ask for `Duration::MAX`).
fn later(from: Instant, after: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(after)
        .or_else(|| from.checked_add(CENTURY.min(after)))
        .unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use std::thread;

    fn config() -> Config {
        Config::new(MemoryBackend::new())
    }

    fn lock(config: &Config, options: LockOptions) -> CacheLock {
        CacheLock::for_stored_key(config, "job", options)
    }

    #[test]
    fn jitter_and_deadlines_saturate_at_the_largest_durations() {
        for base in [
            Duration::ZERO,
            Duration::from_nanos(3),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            let jittered = jittered(base);
            assert!(jittered >= base);
            assert!(jittered <= base.saturating_add(base / 4));
        }
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(50 * 365 * 24 * 3600));
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(duration_from_nanos(u128::MAX), Duration::MAX);
    }

    #[test]
    fn the_largest_durations_are_valid_lock_settings() {
        let config = config();
        for huge in [Duration::from_secs(u64::MAX), Duration::MAX] {
            let mut holder = lock(&config, LockOptions::new().lock_expiration(huge));
            assert!(holder.acquire().unwrap());
            assert!(holder.locked());
            holder.update_expiration(Some(huge)).unwrap();
            assert!(holder.locked());

            // A huge retry interval still gives up at the timeout.
            let mut waiter = lock(
                &config,
                LockOptions::new()
                    .retry(huge)
                    .timeout(Duration::from_millis(50)),
            );
            let start = Instant::now();
            assert!(matches!(waiter.acquire(), Err(LockError::Timeout { .. })));
            assert!(start.elapsed() < Duration::from_secs(5));

            holder.release().unwrap();
            assert!(!holder.locked());
        }
    }

    #[test]
    fn a_second_holder_waits_then_times_out() {
        let config = config();
        let mut first = lock(&config, LockOptions::new());
        assert!(first.acquire().unwrap());
        let mut second = lock(
            &config,
            LockOptions::new()
                .timeout(Duration::from_millis(120))
                .retry(Duration::from_millis(10)),
        );
        let start = Instant::now();
        assert!(matches!(second.acquire(), Err(LockError::Timeout { .. })));
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert!(start.elapsed() < Duration::from_secs(2));
        let stats = config.counters.snapshot();
        assert_eq!((stats.lock_waits, stats.lock_timeouts), (1, 1));
    }

    #[test]
    fn non_blocking_returns_false_when_held() {
        let config = config();
        let mut first = lock(&config, LockOptions::new());
        assert!(first.acquire().unwrap());
        let mut second = lock(&config, LockOptions::new().blocking(false));
        assert!(!second.acquire().unwrap());
        first.release().unwrap();
        assert!(second.acquire().unwrap());
    }

    #[test]
    fn a_waiter_gets_the_lock_when_released() {
        let config = config();
        let mut first = lock(&config, LockOptions::new());
        assert!(first.acquire().unwrap());
        let mut second = lock(&config, LockOptions::new().retry(Duration::from_millis(5)));
        let waiter = thread::spawn(move || second.acquire().unwrap());
        thread::sleep(Duration::from_millis(50));
        first.release().unwrap();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn an_expired_lock_can_be_taken_and_the_old_holder_cannot_release_it() {
        let config = config();
        let mut first = lock(
            &config,
            LockOptions::new().lock_expiration(Duration::from_secs(1)),
        );
        assert!(first.acquire().unwrap());
        thread::sleep(Duration::from_millis(1100));
        assert!(!first.locked());
        let mut second = lock(&config, LockOptions::new().blocking(false));
        assert!(second.acquire().unwrap());
        assert!(matches!(first.release(), Err(LockError::NotHeld(_))));
        assert_eq!(
            config.backend.get("\\L:job").unwrap().as_deref(),
            Some(second.token.as_bytes())
        );
        second.release().unwrap();
    }

    #[test]
    fn release_without_holding_is_an_error() {
        let config = config();
        let mut never = lock(&config, LockOptions::new());
        assert!(matches!(never.release(), Err(LockError::NotHeld(_))));
        assert!(matches!(
            never.update_expiration(None),
            Err(LockError::NotHeld(_))
        ));
    }

    #[test]
    fn update_expiration_keeps_a_long_holder_alive() {
        let config = config();
        let mut holder = lock(
            &config,
            LockOptions::new().lock_expiration(Duration::from_secs(1)),
        );
        assert!(holder.acquire().unwrap());
        thread::sleep(Duration::from_millis(600));
        holder
            .update_expiration(Some(Duration::from_secs(5)))
            .unwrap();
        thread::sleep(Duration::from_millis(600));
        assert!(holder.locked());
        let mut other = lock(&config, LockOptions::new().blocking(false));
        assert!(!other.acquire().unwrap());
    }

    #[test]
    fn double_acquire_is_an_error() {
        let config = config();
        let mut holder = lock(&config, LockOptions::new());
        assert!(holder.acquire().unwrap());
        assert!(matches!(holder.acquire(), Err(LockError::AlreadyHeld(_))));
    }

    #[test]
    fn guard_releases_on_drop_and_busy_is_an_error() {
        let config = config();
        let guard = lock(&config, LockOptions::new()).acquire_guard().unwrap();
        assert!(guard.locked());
        assert!(matches!(
            lock(&config, LockOptions::new().blocking(false)).acquire_guard(),
            Err(LockError::Busy(_))
        ));
        drop(guard);
        assert!(
            lock(&config, LockOptions::new().blocking(false))
                .acquire()
                .unwrap()
        );
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(125));
        }
    }

    #[test]
    fn lock_keys_derive_from_the_stored_key() {
        let lock = CacheLock::for_stored_key(&config(), "ns:abc", LockOptions::new());
        assert_eq!(lock.full_cache_key(), "\\L:ns:abc");
    }
}
