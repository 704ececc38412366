//! The configuration in force: the slot [`configure`] fills and [`config`]
//! reads, and the counters of that configuration ([`stats`]).
//!
//! Every `configure` bumps a generation after replacing the slot; the
//! policy keeps one engine per generation (`policy::engine`), and each
//! thread a snapshot of it, so a memoized call reads this slot only once
//! after each `configure`, and otherwise loads the generation: one atomic
//! load of a word that only `configure` writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use super::Config;
use crate::backend::MemoryBackend;
use crate::common::counters::Stats;

static GLOBAL: RwLock<Option<Arc<Config>>> = RwLock::new(None);
static DEFAULT: OnceLock<Arc<Config>> = OnceLock::new();
/// Bumped by every [`configure`], under the slot's write lock, after the
/// slot holds the new configuration. Starts at 1 so that no snapshot taken
/// before any configuration (generation 0) matches.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Installs `config` for every later memoized call, replacing the previous
/// one. Statistics, flights in progress and local copies start again from
/// nothing with each configuration.
///
/// Every call that starts after this returns, on any thread, uses `config`.
/// The configuration it replaces is released once the calls in flight have
/// finished and each thread that used it has made its next memoized call
/// (or ended): until then that thread's snapshot keeps it, and its
/// backend's connections, alive.
pub fn configure(config: Config) {
    let config = Arc::new(config);
    let mut slot = GLOBAL.write().unwrap_or_else(PoisonError::into_inner);
    // A panic while holding the lock cannot leave the slot half-written
    // (it holds one Arc), so a poisoned slot is safe to replace.
    let old = slot.replace(config);
    // Bumped under the write lock: two concurrent `configure`s publish
    // their generations in the order they wrote the slot, so the last
    // generation always goes with the last configuration.
    GENERATION.fetch_add(1, Ordering::Release);
    drop(slot);
    // Dropped outside the lock: the last reference to a configuration may
    // take its connections down with it.
    drop(old);
}

/// The configuration in force: the last one passed to [`configure`], or the
/// embedded default.
pub fn config() -> Arc<Config> {
    current().0
}

/// The configuration in force and its generation, read together.
pub(crate) fn current() -> (Arc<Config>, u64) {
    let slot = GLOBAL.read().unwrap_or_else(PoisonError::into_inner);
    let generation = GENERATION.load(Ordering::Acquire);
    let config = match slot.as_ref() {
        Some(config) => Arc::clone(config),
        None => Arc::clone(DEFAULT.get_or_init(|| Arc::new(Config::new(MemoryBackend::new())))),
    };
    (config, generation)
}

/// The generation of the configuration in force: what a snapshot of it is
/// checked against.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The counters of the configuration in force, since it was installed.
pub fn stats() -> Stats {
    config().stats()
}
