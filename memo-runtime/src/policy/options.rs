//! [`Options`]: how one memoized call uses the cache. Defined here, below
//! the API that re-exports it, because the policy reads every field.

use std::time::Duration;

use super::observe::{Function, UNNAMED};
use crate::format::crypto::EncryptionKey;
use crate::lock::LockOptions;

/// How one memoized call uses the cache.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{LockOptions, Options};
///
/// let options = Options::new()
///     .expiration(Duration::from_secs(3600))
///     .large_data(true)
///     .encrypt(true)
///     .lock(LockOptions::new());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "options do nothing until passed to a memoized call"]
pub struct Options {
    pub(crate) expiration: Option<Duration>,
    pub(crate) jitter: Jitter,
    pub(crate) force_overwrite: bool,
    pub(crate) large_data: bool,
    pub(crate) compress: bool,
    pub(crate) encrypt: Option<bool>,
    pub(crate) encryption_key: Option<EncryptionKey>,
    pub(crate) lock: Option<LockOptions>,
    pub(crate) coalesce: bool,
    pub(crate) local: Option<Duration>,
    pub(crate) refresh_ahead: Option<Beta>,
    pub(crate) stale: Option<Duration>,
    /// How long past its expiry a value is kept to fall back on when a
    /// recomputation fails.
    pub(crate) fail_safe: Option<Duration>,
    /// The tags the entry is stored with, as given (each resolved like a
    /// key when the call runs); `None` for none, so that making the options
    /// of a call without tags, as the attribute does on every call,
    /// allocates nothing.
    tags: Option<std::sync::Arc<[String]>>,
    /// The memoized function, as spans and metrics name it.
    pub(crate) function: &'static Function,
}

/// The β of refresh-ahead, compared by its bits so that [`Options`] stays
/// `Eq`. Always finite and positive.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beta(pub(crate) f64);

impl PartialEq for Beta {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Beta {}

/// The largest β accepted: beyond it every hit of a value that took any
/// time to compute would refresh, which is no longer "ahead".
pub(crate) const MAX_BETA: f64 = 1_000.0;

/// The expiration jitter, a fraction in [0, 1], compared by its bits so
/// that [`Options`] stays `Eq` (never NaN, never -0).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Jitter(f64);

impl PartialEq for Jitter {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Jitter {}

impl Jitter {
    /// `jitter` clamped to [0, 1], NaN counting as 0.
    fn clamped(jitter: f64) -> Jitter {
        if jitter.is_nan() || jitter <= 0.0 {
            Jitter(0.0)
        } else {
            Jitter(jitter.min(1.0))
        }
    }

    /// `ttl` shortened by a fraction `jitter × draw` of it, `draw` being
    /// uniform in [0, 1). The cut is made in integer arithmetic, because
    /// `Duration::mul_f64` panics near `Duration::MAX`, which a caller may
    /// pass; it is strictly less than `ttl`, so a non-zero TTL stays
    /// non-zero (zero means "store nothing").
    pub(crate) fn shorten(self, ttl: Duration, draw: impl FnOnce() -> f64) -> Duration {
        if self.0 == 0.0 || ttl.is_zero() {
            return ttl;
        }
        const ONE: f64 = (1u64 << 32) as f64;
        // In [0, 2^32): the fraction cut, in 32-bit fixed point. The cast
        // saturates and truncates, which keeps it below 2^32.
        let fraction = ((self.0 * draw().clamp(0.0, 1.0)) * ONE).min(ONE - 1.0) as u128;
        let nanos = ttl.as_nanos();
        // At most ~2^94 × 2^32: no overflow.
        let cut = (nanos * fraction) >> 32;
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        // Below `ttl`'s own nanoseconds, so its seconds fit in a `u64`.
        let cut = Duration::new((cut / NANOS_PER_SEC) as u64, (cut % NANOS_PER_SEC) as u32);
        ttl - cut
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            expiration: None,
            jitter: Jitter::default(),
            force_overwrite: false,
            large_data: false,
            compress: true,
            encrypt: None,
            encryption_key: None,
            lock: None,
            coalesce: true,
            local: None,
            refresh_ahead: None,
            stale: None,
            fail_safe: None,
            tags: None,
            function: &UNNAMED,
        }
    }
}

impl Options {
    /// The defaults: the configuration's expiration, no overwrite, no
    /// chunking, compression for chunked values, encryption as the
    /// configuration says, no lock, coalescing.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the value lives in the cache; without this, the
    /// configuration's default.
    ///
    /// Zero stores nothing, as Django's timeout of 0 does: the call still
    /// looks the key up, but on a miss it computes and returns the value
    /// without storing it (values, large values and iterators alike) and
    /// without taking the call's lock. A huge expiration (up to
    /// `Duration::MAX`) is passed on to the backend, which clamps it to
    /// what it can hold.
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.expiration = Some(expiration);
        self
    }

    /// Shortens the expiration of each value this call stores by a random
    /// fraction of it, drawn uniformly from [0, `jitter`], so that entries
    /// stored together (a cache warmed at startup, a batch) do not all
    /// expire in the same second and send every caller to the backend at
    /// once. With `expiration(60 s)` and a jitter of `0.1`, each store
    /// lives between 54 and 60 seconds.
    ///
    /// Each store draws anew; a value's logical expiry (for
    /// [`refresh_ahead`](Self::refresh_ahead),
    /// [`stale_while_revalidate`](Self::stale_while_revalidate) and the
    /// local copy) is the shortened one, and a stale window is added to it
    /// unshortened. The lock's own expiration is not jittered. `jitter` is
    /// a fraction: NaN and negative values are taken as 0 (the exact
    /// expiration, the default), values above 1 as 1. However long the
    /// cut, a stored value keeps a non-zero expiration.
    pub fn expiration_jitter(mut self, jitter: f64) -> Self {
        self.jitter = Jitter::clamped(jitter);
        self
    }

    /// Computes and stores even when a value is cached (a refresh).
    pub fn force_overwrite(mut self, force: bool) -> Self {
        self.force_overwrite = force;
        self
    }

    /// Stores the value compressed and split into chunks, for values that
    /// may exceed the backend's item limit (memcached's 1 MiB). Reading
    /// back handles either form, so turning this on or off for an existing
    /// key is safe.
    pub fn large_data(mut self, large: bool) -> Self {
        self.large_data = large;
        self
    }

    /// Whether chunked values and iterators are zlib-compressed (default
    /// `true`). Small values are never compressed: it would cost more than
    /// it saves.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Encrypts the key and value. When the configuration forces
    /// encryption, every call is encrypted whatever this says.
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = Some(encrypt);
        self
    }

    /// The key to encrypt this call with, instead of the configuration's.
    /// Setting a key does not by itself turn encryption on.
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// On a miss, takes a cache lock so that concurrent callers (threads or
    /// processes) compute the value once: the others wait, then read it.
    /// A caller whose wait times out computes anyway.
    pub fn lock(mut self, lock: LockOptions) -> Self {
        self.lock = Some(lock);
        self
    }

    /// Whether concurrent calls for the same key in this process (threads
    /// or tasks) share one computation (default `true`). One of them leads:
    /// it looks up, takes the call's lock if any, computes and stores; the
    /// others wait for its value and decode their own copy. A leader that
    /// panics, returns `Err` or whose future is dropped hands over to a
    /// waiter. A waiter waits at most the lock's timeout, or
    /// [`COALESCE_TIMEOUT`](crate::COALESCE_TIMEOUT) without a lock, then
    /// computes (and stores) on its own. A waiter served by its leader
    /// counts as a hit in [`stats`](crate::stats).
    ///
    /// Applies to values (`cache_memoize`, `try_cache_memoize` and their
    /// async twins); iterators and streams each compute. A
    /// [`force_overwrite`](Self::force_overwrite) call is never coalesced:
    /// a refresh always computes.
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// Keeps a copy of the value in this process for up to `duration`,
    /// consulted before the shared backend: a hit costs no round trip. The
    /// copy never outlives the shared entry's own (logical) expiry, and
    /// [`invalidate`](crate::invalidate) (or a
    /// [`force_overwrite`](Self::force_overwrite) call) drops this process's
    /// copy at once. With Redis, other processes are told too and drop theirs
    /// within a fraction of a second; with other backends another process's
    /// copy lives out its `duration`, which therefore bounds how stale a value
    /// may be after an invalidation elsewhere.
    ///
    /// The functional API keeps the value's serialized bytes (no round trip,
    /// still a decode, and `T` need not be `Clone`); the attribute's
    /// `local = SECS` keeps the decoded value and hands out clones. Values
    /// stored with [`large_data`](Self::large_data) are not kept. The copies
    /// of one configuration share a budget set by
    /// [`Config::local_capacity`](crate::Config::local_capacity). Zero turns
    /// the local copy off.
    pub fn local(mut self, duration: Duration) -> Self {
        self.local = (!duration.is_zero()).then_some(duration);
        self
    }

    /// Recomputes a value probabilistically *before* it expires, so that a
    /// popular entry is refreshed by one caller instead of by a stampede
    /// after its expiry (Vattani et al., VLDB 2015, "XFetch").
    ///
    /// Each hit recomputes when `now − Δ·β·ln(rand()) ≥ expiry`, where Δ is
    /// how long the value took to compute (stored with it) and `rand()` is
    /// uniform in (0, 1]: the closer the expiry and the slower the
    /// computation, the likelier. The caller that wins computes and stores
    /// the new value (one per process at a time; a concurrent winner keeps
    /// the value it found); every other caller keeps hitting. β = 1 is the
    /// paper's optimum; larger refreshes earlier. A β that is not a positive
    /// number (zero, negative, NaN) turns this off; one above 1,000 is
    /// clamped to 1,000. Applies to values stored whole (not
    /// [`large_data`](Self::large_data)).
    pub fn refresh_ahead(mut self, beta: f64) -> Self {
        self.refresh_ahead = (beta > 0.0).then(|| Beta(beta.min(MAX_BETA)));
        self
    }

    /// Keeps serving a value for up to `window` past its expiry while it is
    /// recomputed: the backend holds the entry for its expiration plus the
    /// window, and the value's own (logical) expiry travels in the entry.
    ///
    /// A caller that finds the value expired but within the window gets it
    /// at once, unless it wins the refresh: exactly one caller refreshes,
    /// chosen in this process by coalescing and across processes by the
    /// entry's [`CacheLock`](crate::CacheLock) (taken without waiting). The
    /// winner computes on its own thread or task (the compute function
    /// borrows the caller's arguments, so it cannot move to a detached
    /// thread) and returns the fresh value; every other caller is served
    /// the stale one meanwhile. A refresh that fails or panics leaves the
    /// stale value in place, so the next caller tries again; once the window
    /// has passed, the entry is gone and callers compute as on any miss.
    /// Zero turns this off. Applies to values stored whole (not
    /// [`large_data`](Self::large_data)).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale = (!window.is_zero()).then_some(window);
        self
    }

    /// Keeps a value for up to `window` past its expiry, to fall back on
    /// when its recomputation fails: a caller that finds the value expired
    /// (and not servable as stale) recomputes; when that returns `Err`
    /// (the `try_` calls, or a `Result` under the attribute), it gets the
    /// last good value instead, counted in
    /// [`Stats::fail_safe_serves`](crate::Stats::fail_safe_serves), and
    /// nothing is stored, so the next call tries again. With nothing to
    /// fall back on, the `Err` is the caller's; a panic always is.
    ///
    /// With [`stale_while_revalidate`](Self::stale_while_revalidate) the
    /// stale window comes first: within it the stale value is served while
    /// one caller refreshes (a failed refresh keeps it), and after it the
    /// fail-safe window takes over. With [`lock`](Self::lock) the caller
    /// that takes the lock recomputes and falls back on failure; the
    /// others wait for it as on any miss. A call with a predicate
    /// ([`cache_memoize_if`](crate::cache_memoize_if), the attribute's
    /// `cache_if`) does not fall back: a value it refuses is returned as
    /// it is. Zero turns this off. Applies to values stored whole (not
    /// [`large_data`](Self::large_data)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use memo_runtime::{try_cache_memoize, Options};
    ///
    /// let options = Options::new()
    ///     .expiration(Duration::from_millis(10))
    ///     .fail_safe(Duration::from_secs(60));
    /// let first: Result<u32, String> = try_cache_memoize("fail-safe-doc", || Ok(1), &options);
    /// std::thread::sleep(Duration::from_millis(20));
    /// let later: Result<u32, String> =
    ///     try_cache_memoize("fail-safe-doc", || Err("the source is down".into()), &options);
    /// assert_eq!((first, later), (Ok(1), Ok(1)));
    /// ```
    pub fn fail_safe(mut self, window: Duration) -> Self {
        self.fail_safe = (!window.is_zero()).then_some(window);
        self
    }

    /// These options for a call with a predicate (`cache_if`): without the
    /// fail-safe window, since a value the predicate refuses is the
    /// caller's to receive, not a failure to replace with an older one,
    /// and the policy cannot tell the two apart.
    pub(crate) fn without_fail_safe(&self) -> std::borrow::Cow<'_, Options> {
        if self.fail_safe.is_none() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut options = self.clone();
        options.fail_safe = None;
        std::borrow::Cow::Owned(options)
    }

    /// Stores the entry with these tags, so that
    /// [`invalidate_tag`](crate::invalidate_tag) of any of them makes it a
    /// miss, in every process, on every backend (memcached included: no
    /// scan, no list of keys).
    ///
    /// Each tag is a key like any other: namespaced, escaped, and opaque
    /// under encryption. Each has a small entry of its own holding its
    /// current version, read in the same round trip as the entry (one
    /// request per server or per cluster slot the keys fall in). Up to 16
    /// tags are kept; more are ignored, and logged. The tags are part of
    /// what an entry is stored behind: a call with other tags, under the
    /// same key, finds it a miss.
    ///
    /// ```
    /// use memo_runtime::{cache_memoize, invalidate_tag, Options};
    ///
    /// let options = Options::new().tags(["user:7", "catalog"]);
    /// let _: u32 = cache_memoize("tags-doc:orders:7", || 3, &options);
    /// invalidate_tag("user:7", &Options::new()).unwrap();
    /// let again: u32 = cache_memoize("tags-doc:orders:7", || 4, &options);
    /// assert_eq!(again, 4);
    /// ```
    pub fn tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: std::sync::Arc<[String]> = tags.into_iter().map(Into::into).collect();
        self.tags = (!tags.is_empty()).then_some(tags);
        self
    }

    /// The tags the entry is stored with, as given.
    pub(crate) fn tag_list(&self) -> &[String] {
        self.tags.as_deref().unwrap_or_default()
    }

    /// Names the memoized function in the call's `tracing` span and its
    /// metrics (features `tracing` and `metrics`): the `function` field and
    /// label. The attribute sets it to the function's path; the functional
    /// API leaves it empty unless it is named here.
    ///
    /// A [`Function`] is a `static`: the name is a label of every metric of
    /// the call, so it comes from the code, never from data (a key, a user
    /// id), which would make each call a time series of its own.
    ///
    /// ```
    /// use memo_runtime::{cache_memoize, Function, Options};
    ///
    /// static DAILY_REPORT: Function = Function::new("reports::daily");
    ///
    /// let options = Options::new().function(&DAILY_REPORT);
    /// let total: u32 = cache_memoize("function-doc", || 12, &options);
    /// assert_eq!(total, 12);
    /// ```
    pub fn function(mut self, function: &'static Function) -> Self {
        self.function = function;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn no_tags_are_the_same_options_as_none_given() {
        assert_eq!(Options::new().tags(Vec::<String>::new()), Options::new());
        let tagged = Options::new().tags(["user:7", "catalog"]);
        assert_eq!(tagged.tag_list(), ["user:7", "catalog"]);
        assert_ne!(tagged, Options::new());
        assert!(Options::new().tag_list().is_empty());
    }

    #[test]
    fn jitter_is_clamped_to_a_fraction() {
        let jitter = |value: f64| Options::new().expiration_jitter(value).jitter.0;
        assert_eq!(jitter(0.25), 0.25);
        assert_eq!(jitter(f64::NAN), 0.0);
        assert_eq!(jitter(-0.5), 0.0);
        assert_eq!(jitter(-0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(jitter(1.5), 1.0);
        assert_eq!(jitter(f64::INFINITY), 1.0);
        assert_eq!(
            Options::new().expiration_jitter(f64::NAN),
            Options::new().expiration_jitter(0.0)
        );
    }

    #[test]
    fn jitter_cuts_within_its_bounds() {
        let tenth = Jitter::clamped(0.1);
        assert_eq!(tenth.shorten(MINUTE, || 0.0), MINUTE);
        // 32-bit fixed point: exact to a few nanoseconds a minute.
        let half = tenth.shorten(MINUTE, || 0.5);
        assert!(
            half.abs_diff(Duration::from_secs(57)) < Duration::from_micros(1),
            "{half:?}"
        );
        let shortest = tenth.shorten(MINUTE, || 1.0 - f64::EPSILON);
        assert!(
            shortest > Duration::from_secs(54) && shortest < MINUTE,
            "{shortest:?}"
        );
        // No jitter: the exact expiration, whatever the draw.
        assert_eq!(Jitter::clamped(0.0).shorten(MINUTE, || 0.9), MINUTE);
        // Zero stays zero: "store nothing" is not jittered into a store.
        assert_eq!(tenth.shorten(Duration::ZERO, || 0.5), Duration::ZERO);
    }

    #[test]
    fn a_full_jitter_never_reaches_zero_nor_panics() {
        let full = Jitter::clamped(1.0);
        for ttl in [
            Duration::from_nanos(1),
            Duration::from_millis(1),
            MINUTE,
            Duration::MAX,
        ] {
            for draw in [0.0, 0.5, 1.0 - f64::EPSILON, 1.0, 2.0, f64::NAN] {
                let shortened = full.shorten(ttl, || draw);
                assert!(
                    !shortened.is_zero() && shortened <= ttl,
                    "{ttl:?}, draw {draw}: {shortened:?}"
                );
            }
        }
        let half = Jitter::clamped(0.5).shorten(Duration::MAX, || 1.0);
        assert!(half >= Duration::MAX / 2, "{half:?}");
    }
}
