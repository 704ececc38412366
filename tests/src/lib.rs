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

/// Runs `test` with memo configured on each backend in turn, holding the
/// tests' global lock: the embedded store, then memcached and Redis on
/// fresh servers (each named by its URL scheme); the embedded store is in
/// force again afterwards.
#[cfg(all(feature = "memcached", feature = "redis"))]
pub fn with_each_backend(test: impl Fn(&str)) {
    use memo_runtime::{Config, MemoryBackend, configure};
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    test("memory");
    for kind in [servers::Kind::Memcached, servers::Kind::Redis] {
        let server = servers::Server::start(kind);
        configure(Config::from_url(&server.url()).expect("a valid URL"));
        test(kind.scheme());
    }
    configure(Config::new(MemoryBackend::new()));
}
