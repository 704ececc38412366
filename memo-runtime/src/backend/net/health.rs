//! Whether a server is usable: after a failure it is skipped for a
//! back-off that doubles per failure, and each outage is logged once when
//! it starts and once when it ends.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::deadline::later;
use super::{Settings, lock};
use crate::backend::{BackendError, BackendErrorKind};

/// Whether a server is usable, and if not, when to try it again.
///
/// After a failure the server is skipped until `retry_at`; the first caller
/// past that time probes it, pushing `retry_at` on so that the others keep
/// failing fast until the probe has an answer.
///
/// A healthy server's calls take no lock: `troubled` is set, under the
/// lock, from a failure until the success that ends the outage, and only
/// then do calls look at the state. A mutex on every call was a point
/// where concurrent callers queued (and, on a busy machine, slept).
#[derive(Debug, Default)]
pub(crate) struct Health {
    troubled: AtomicBool,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Health {
    /// `Ok` when the server may be tried now; an error at once while it is
    /// being skipped.
    pub(crate) fn admit(
        &self,
        what: &dyn Fn() -> String,
        settings: &Settings,
    ) -> Result<(), BackendError> {
        if !self.troubled.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = lock(&self.state);
        let Some(retry_at) = state.retry_at else {
            return Ok(());
        };
        let now = Instant::now();
        if now < retry_at {
            return Err(BackendError::new(format!(
                "{} is unavailable; next attempt in {} ms",
                what(),
                (retry_at - now).as_millis()
            ))
            .with_kind(BackendErrorKind::Connection));
        }
        state.retry_at = Some(later(now, settings.backoff_after(state.failures)));
        Ok(())
    }

    /// Ends an outage, logging once that the server is back.
    pub(crate) fn succeeded(&self, what: &dyn Fn() -> String) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut state = lock(&self.state);
        if state.failures > 0 {
            crate::common::diag::info!("{} is reachable again", what());
        }
        *state = HealthState::default();
        self.troubled.store(false, Ordering::Release);
    }

    /// Starts or extends an outage (logging only its start) and returns the
    /// error for the caller, of the kind `err` says: a deadline that passed
    /// is a timeout, malformed data a protocol failure, anything else a
    /// broken connection.
    pub(crate) fn failed(
        &self,
        what: &dyn Fn() -> String,
        settings: &Settings,
        doing: &str,
        err: io::Error,
    ) -> BackendError {
        let mut state = lock(&self.state);
        self.troubled.store(true, Ordering::Release);
        if state.failures == 0 {
            crate::common::diag::warning!(
                "{}: {doing}: {err}; skipping it for {} ms, then retrying",
                what(),
                settings.backoff.as_millis()
            );
        }
        state.failures = state.failures.saturating_add(1);
        state.retry_at = Some(later(
            Instant::now(),
            settings.backoff_after(state.failures),
        ));
        let kind = match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => BackendErrorKind::Timeout,
            io::ErrorKind::InvalidData => BackendErrorKind::Protocol,
            _ => BackendErrorKind::Connection,
        };
        BackendError::with_source(format!("{}: {doing}", what()), err).with_kind(kind)
    }
}
