//! What the network backends share: connection settings and their URL
//! parameters, server addresses, and the health of a server (the back-off
//! that keeps callers from waiting on a dead host, logged once per outage).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BackendError;
use crate::config::{CacheUrl, ConfigError};

/// How long opening a connection may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long one read or write may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How many idle connections each server keeps by default.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// How long a failed server is skipped at first; the pause doubles with
/// each further failure.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest a failed server is skipped before it is tried again.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The URL parameters every network backend takes.
pub(crate) const URL_PARAMS: &[&str] = &[
    "connect_timeout_ms",
    "timeout_ms",
    "pool_size",
    "backoff_ms",
    "max_backoff_ms",
];

/// Timeouts, pool size and back-off of a network backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl Settings {
    /// Zero means the default.
    pub(crate) fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = nonzero_or(timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    /// Zero means the default.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = nonzero_or(timeout, DEFAULT_TIMEOUT);
    }

    /// The longest pause is at least the first.
    pub(crate) fn set_backoff(&mut self, first: Duration, max: Duration) {
        self.backoff = first;
        self.max_backoff = max.max(first);
    }

    /// Applies the tuning parameters of `url` ([`URL_PARAMS`]); any other
    /// parameter is an error.
    pub(crate) fn apply_url_params(&mut self, url: &CacheUrl) -> Result<(), ConfigError> {
        let mut backoff = (self.backoff, self.max_backoff);
        for (name, value) in &url.params {
            match name.as_str() {
                "connect_timeout_ms" => {
                    self.set_connect_timeout(positive_millis(url, name, value)?)
                }
                "timeout_ms" => self.set_timeout(positive_millis(url, name, value)?),
                "pool_size" => {
                    self.pool_size = value.parse().map_err(|_| {
                        url.invalid_value(name, value, "expected a number of connections")
                    })?;
                }
                "backoff_ms" => backoff.0 = url.millis(name, value)?,
                "max_backoff_ms" => backoff.1 = url.millis(name, value)?,
                other => return Err(url.unknown_parameter(other, URL_PARAMS)),
            }
        }
        self.set_backoff(backoff.0, backoff.1);
        Ok(())
    }

    /// The pause after `failures` consecutive failures: `backoff`, doubled
    /// per further failure, capped at `max_backoff`.
    fn backoff_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// The builder methods every network backend offers over its `settings`
/// field, written once so the two backends cannot drift apart.
macro_rules! tuning_setters {
    () => {
        /// How long opening a connection, any handshake included, may take
        /// (URL: `connect_timeout_ms`). Zero means the default.
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.settings.set_connect_timeout(timeout);
            self
        }

        /// How long one read or write may take before the server counts as
        /// failed (URL: `timeout_ms`). Zero means the default.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.settings.set_timeout(timeout);
            self
        }

        /// How many idle connections are kept per server for reuse (URL:
        /// `pool_size`). More callers than this still run at once on extra
        /// connections, which are closed after use. Zero keeps none.
        pub fn pool_size(mut self, size: usize) -> Self {
            self.settings.pool_size = size;
            self
        }

        /// How long a failed server is skipped at first, and at most, before
        /// the next attempt (URL: `backoff_ms`, `max_backoff_ms`). The pause
        /// doubles with each consecutive failure between the two.
        pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
            self.settings.set_backoff(first, max);
            self
        }
    };
}
pub(crate) use tuning_setters;

fn positive_millis(url: &CacheUrl, name: &str, value: &str) -> Result<Duration, ConfigError> {
    let millis = url.millis(name, value)?;
    if millis.is_zero() {
        return Err(url.invalid_value(name, value, "expected at least 1 millisecond"));
    }
    Ok(millis)
}

fn nonzero_or(duration: Duration, default: Duration) -> Duration {
    if duration.is_zero() {
        default
    } else {
        duration
    }
}

/// Whether a server is usable, and if not, when to try it again.
///
/// After a failure the server is skipped until `retry_at`; the first caller
/// past that time probes it, pushing `retry_at` on so that the others keep
/// failing fast until the probe has an answer.
#[derive(Default)]
pub(crate) struct Health {
    state: Mutex<HealthState>,
}

#[derive(Default)]
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
            )));
        }
        state.retry_at = Some(now + settings.backoff_after(state.failures));
        Ok(())
    }

    /// Ends an outage, logging once that the server is back.
    pub(crate) fn succeeded(&self, what: &dyn Fn() -> String) {
        let mut state = lock(&self.state);
        if state.failures > 0 {
            log::info!("{} is reachable again", what());
            *state = HealthState::default();
        }
    }

    /// Starts or extends an outage (logging only its start) and returns the
    /// error for the caller.
    pub(crate) fn failed(
        &self,
        what: &dyn Fn() -> String,
        settings: &Settings,
        doing: &str,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> BackendError {
        let mut state = lock(&self.state);
        if state.failures == 0 {
            log::warn!(
                "{}: {doing}: {err}; skipping it for {} ms, then retrying",
                what(),
                settings.backoff.as_millis()
            );
        }
        state.failures = state.failures.saturating_add(1);
        state.retry_at = Some(Instant::now() + settings.backoff_after(state.failures));
        BackendError::with_source(format!("{}: {doing}", what()), err)
    }
}

/// Splits `host:port`, `host` (for `default_port`) or `[v6]:port`, checking
/// the port.
pub(crate) fn split_host_port(
    address: &str,
    default_port: u16,
) -> Result<(String, u16), ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidValue {
        name: "server".to_owned(),
        value: address.to_owned(),
        reason: reason.to_owned(),
    };
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid("an IPv6 address needs a closing ]"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("expected :port after ]"))?,
                ),
            ),
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return Err(invalid("write IPv6 addresses as [address]:port")),
            None => (address, None),
        }
    };
    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == b'/' || b == b'@') {
        return Err(invalid(&format!(
            "expected host:port, e.g. 127.0.0.1:{default_port}"
        )));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| invalid("the port must be a number from 1 to 65535"))?,
    };
    Ok((host.to_owned(), port))
}

/// Locks `mutex`, ignoring poisoning: the data behind these locks (idle
/// connections, health counters) is valid after any panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut settings = Settings::default();
        settings.set_backoff(Duration::from_millis(100), Duration::from_millis(350));
        let pauses: Vec<u128> = (1..=5)
            .map(|n| settings.backoff_after(n).as_millis())
            .collect();
        assert_eq!(pauses, [100, 200, 350, 350, 350]);
        let defaults = Settings::default();
        let pauses: Vec<u128> = (1..=6)
            .map(|n| defaults.backoff_after(n).as_millis())
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(defaults.backoff_after(u32::MAX), DEFAULT_MAX_BACKOFF);
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(split_host_port("h:1", 9).unwrap(), ("h".to_owned(), 1));
        assert_eq!(split_host_port("h", 9).unwrap(), ("h".to_owned(), 9));
        assert_eq!(
            split_host_port("[::1]:5", 9).unwrap(),
            ("::1".to_owned(), 5)
        );
        for bad in ["", "h:0", "h:x", "::1:5", "[::1", "a b:1", "h:70000"] {
            assert!(split_host_port(bad, 9).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_params_tune_and_unknown_ones_fail() {
        let url = CacheUrl::parse("x://h?timeout_ms=70&pool_size=3&backoff_ms=10").unwrap();
        let mut settings = Settings::default();
        settings.apply_url_params(&url).unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(70));
        assert_eq!(settings.pool_size, 3);
        assert_eq!(settings.backoff, Duration::from_millis(10));
        for bad in [
            "x://h?timeout_ms=0",
            "x://h?pool_size=-1",
            "x://h?colour=red",
        ] {
            let url = CacheUrl::parse(bad).unwrap();
            assert!(Settings::default().apply_url_params(&url).is_err(), "{bad}");
        }
    }
}
