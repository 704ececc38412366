//! The configuration in force: the slot [`configure`] fills and [`config`]
//! reads, and the counters of that configuration ([`stats`]).

use std::sync::{Arc, OnceLock, RwLock};

use super::Config;
use crate::backend::MemoryBackend;
use crate::common::counters::Stats;

static GLOBAL: RwLock<Option<Arc<Config>>> = RwLock::new(None);
static DEFAULT: OnceLock<Arc<Config>> = OnceLock::new();

/// Installs `config` for every later memoized call, replacing the previous
/// one. Statistics start again from zero with each configuration.
pub fn configure(config: Config) {
    let config = Arc::new(config);
    match GLOBAL.write() {
        Ok(mut slot) => *slot = Some(config),
        // A panic while holding the lock cannot leave the slot half-written
        // (it holds one Arc), so the poisoned value is safe to replace.
        Err(poisoned) => *poisoned.into_inner() = Some(config),
    }
}

/// The configuration in force: the last one passed to [`configure`], or the
/// embedded default.
pub fn config() -> Arc<Config> {
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
    config().counters.snapshot()
}
