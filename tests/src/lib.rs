//! Shared helpers for memo's integration tests.
//!
//! memo's configuration is process-global, and `cargo test` runs the tests
//! of one file as threads of one process, so every test that calls
//! `configure` holds [`serial`] for its whole body.

use std::sync::{Mutex, MutexGuard};

pub mod behaviour;
pub mod cluster;
pub mod fakes;
pub mod faulty;
pub mod logs;
pub mod peer;
pub mod recording;
pub mod runtime;
pub mod sentinel;
pub mod servers;
#[cfg(feature = "tls")]
pub mod tls;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serializes tests that touch the global configuration or statistics. A
/// test that panicked while holding it leaves nothing to repair (each test
/// configures afresh), so poisoning is ignored.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
