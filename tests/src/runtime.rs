//! Fresh tokio runtimes for the async tests, one per test as
//! `#[tokio::test]` makes them. Tests hold [`serial`](crate::serial)
//! outside the runtime, never across an `.await`.

use std::future::Future;

/// Runs `future` to completion on a fresh current-thread runtime.
pub fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(future)
}

/// Runs `future` to completion on a fresh multi-thread runtime of four
/// workers.
pub fn run_multi<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a multi-thread runtime")
        .block_on(future)
}
