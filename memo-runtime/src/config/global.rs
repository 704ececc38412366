//! The configuration in force: the slot [`configure`] fills and [`config`]
//! reads, and the counters of that configuration ([`stats`]).
//!
//! Every memoized call reads the slot, so reading it is on the hit path. A
//! read-write lock there costs two atomic read-modify-writes on one shared
//! word per call, a cache line that every thread of a busy process fights
//! over. Instead each thread keeps its own clone of the `Arc`, tagged with
//! the generation it was read at; [`configure`] bumps a global generation
//! after replacing the slot, and a thread whose tag differs re-reads the
//! slot. A call therefore pays one atomic load of a word that is only ever
//! written by `configure`, and sees a configuration installed by a
//! `configure` that returned before it started (the generation is
//! published with release ordering after the slot is written, and read
//! with acquire ordering).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::Config;
use crate::backend::MemoryBackend;
use crate::common::counters::Stats;

static GLOBAL: RwLock<Option<Arc<Config>>> = RwLock::new(None);
static DEFAULT: OnceLock<Arc<Config>> = OnceLock::new();
/// Bumped by every [`configure`], after the slot holds the new
/// configuration. Starts at 1 so that a thread's empty cache (generation 0)
/// never matches.
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's copy of the slot and the generation it was read at.
    static CACHED: RefCell<(u64, Option<Arc<Config>>)> = const { RefCell::new((0, None)) };
}

/// Installs `config` for every later memoized call, replacing the previous
/// one. Statistics start again from zero with each configuration.
///
/// Every call that starts after this returns, on any thread, uses `config`.
/// The configuration it replaces is released once the calls in flight have
/// finished and each thread that used it has made its next memoized call
/// (or ended): until then that thread's copy keeps it, and its backend's
/// connections, alive.
pub fn configure(config: Config) {
    let config = Arc::new(config);
    let old = match GLOBAL.write() {
        Ok(mut slot) => {
            let old = slot.replace(config);
            // Bumped under the write lock: two concurrent `configure`s
            // publish their generations in the order they wrote the slot,
            // so a reader tagged with the last generation holds the last
            // configuration.
            GENERATION.fetch_add(1, Ordering::Release);
            old
        }
        // A panic while holding the lock cannot leave the slot half-written
        // (it holds one Arc), so the poisoned value is safe to replace.
        Err(poisoned) => {
            let mut slot = poisoned.into_inner();
            let old = slot.replace(config);
            GENERATION.fetch_add(1, Ordering::Release);
            old
        }
    };
    // Dropped outside the lock: the last reference to a configuration may
    // take its publisher thread down with it.
    drop(old);
}

/// The configuration in force: the last one passed to [`configure`], or the
/// embedded default.
pub fn config() -> Arc<Config> {
    let generation = GENERATION.load(Ordering::Acquire);
    let cached = CACHED.try_with(|cached| {
        // Only this function borrows it, and nothing it calls comes back
        // here, so the borrow cannot fail; a failure would only cost a read
        // of the slot.
        let mut cached = cached.try_borrow_mut().ok()?;
        if cached.0 != generation || cached.1.is_none() {
            *cached = (generation, Some(read_slot()));
        }
        cached.1.clone()
    });
    // During this thread's teardown the cache is gone: read the slot.
    cached.ok().flatten().unwrap_or_else(read_slot)
}

/// The generation of the configuration in force: a value kept by what
/// was found under one configuration is served again only while this is
/// the generation read before that configuration was.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Runs `f` on the configuration in force, borrowed from this thread's
/// cache rather than cloned out of it: no write to the `Arc`'s count,
/// which every thread calling at once would otherwise share. What `f` does
/// must not need this thread's cache: a [`config`] inside it reads the
/// slot.
pub(crate) fn with_config<R>(f: impl FnOnce(&Config) -> R) -> R {
    let generation = GENERATION.load(Ordering::Acquire);
    let mut f = Some(f);
    let done = CACHED.try_with(|cached| {
        let mut cached = cached.try_borrow_mut().ok()?;
        if cached.0 != generation || cached.1.is_none() {
            *cached = (generation, Some(read_slot()));
        }
        let config = cached.1.as_deref()?;
        f.take().map(|f| f(config))
    });
    match (done, f) {
        (Ok(Some(result)), _) => result,
        (_, Some(f)) => f(&read_slot()),
        (_, None) => unreachable!("`f` ran, so it returned"),
    }
}

/// The configuration in force, taken out of this thread's cache rather
/// than cloned (no write to the `Arc`'s count, which every thread calling
/// at once would otherwise share), with the generation it was cached
/// under, for a call that hands both back with [`give_back`] when it is
/// done. Until then this thread's [`config`] reads the slot, as after a
/// `configure`.
pub(crate) fn take_config() -> (Arc<Config>, u64) {
    let generation = GENERATION.load(Ordering::Acquire);
    let taken = CACHED.try_with(|cached| {
        let mut cached = cached.try_borrow_mut().ok()?;
        if cached.0 == generation {
            cached.1.take()
        } else {
            None
        }
    });
    match taken {
        Ok(Some(taken)) => (taken, generation),
        // Nothing to give back to: a clone, which `give_back` drops unless
        // the cache is empty at this generation.
        _ => (config(), generation),
    }
}

/// Puts a configuration taken with [`take_config`] at `generation` back in
/// this thread's cache, if no `configure` happened since and the cache is
/// empty at that generation; else drops it. (A call nested in between may
/// have refilled the cache, or emptied it at a later generation: the
/// configuration then stays out.)
pub(crate) fn give_back(taken: Arc<Config>, generation: u64) {
    if GENERATION.load(Ordering::Acquire) != generation {
        return;
    }
    let _ = CACHED.try_with(|cached| {
        if let Ok(mut cached) = cached.try_borrow_mut() {
            if cached.0 == generation && cached.1.is_none() {
                cached.1 = Some(taken);
            }
        }
    });
}

/// The slot's configuration, or the embedded default.
fn read_slot() -> Arc<Config> {
    let slot = match GLOBAL.read() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    match slot.as_ref() {
        Some(config) => Arc::clone(config),
        None => Arc::clone(DEFAULT.get_or_init(|| Arc::new(Config::new(MemoryBackend::new())))),
    }
}

/// The counters of the configuration in force, since it was installed.
pub fn stats() -> Stats {
    config().stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached_is_empty() -> bool {
        CACHED.with(|cached| cached.borrow().1.is_none())
    }

    // One test, in sequence: it moves the generation, which a test of the
    // cache's contents on another thread would see.
    #[test]
    fn a_taken_configuration_goes_back_unless_a_new_generation_came() {
        // Filled, taken, found meanwhile, given back, taken again.
        let current = config();
        let (first, generation) = take_config();
        assert!(Arc::ptr_eq(&first, &current));
        assert!(cached_is_empty());
        assert!(Arc::ptr_eq(&config(), &first));
        let (second, again) = take_config();
        give_back(second, again);
        give_back(first, generation);
        assert!(!cached_is_empty());
        let (third, generation) = take_config();
        with_config(|config| assert!(std::ptr::eq(config, &*third)));
        give_back(third, generation);
        assert!(!cached_is_empty());

        // Taken before a new generation: it stays out.
        let (taken, generation) = take_config();
        // As `configure` does (the slot is the same here: harmless to
        // other tests, whose threads only read it again).
        GENERATION.fetch_add(1, Ordering::Release);
        // A nested call that took at the new generation and never gave
        // back (it missed) leaves the cache empty at that generation.
        let (nested, _) = take_config();
        let _ = CACHED.with(|cached| cached.borrow_mut().1.take());
        give_back(taken, generation);
        assert!(
            cached_is_empty(),
            "an old generation's configuration went back"
        );
        drop(nested);
        drop(config());
        assert!(!cached_is_empty());
    }
}
