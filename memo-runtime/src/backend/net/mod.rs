//! What the network backends share: connection settings and their URL
//! parameters, server addresses, and
//!
//! - `transport`: the byte transport a connection runs over;
//! - `conn`: a connection and the sans-IO framing every reply parser
//!   builds on, one for the blocking and the async client;
//! - `pool`: the one connection pool and call rules of both clients;
//! - `limit`: the cap on the connections a pool has open;
//! - `tokio_io` (feature `async`): tokio sockets, and the loop of an async
//!   call;
//! - `mux` (feature `async`): many concurrent calls pipelined over one
//!   connection per runtime, for protocols that answer in order (Redis);
//! - `health`: the back-off that keeps callers from waiting on a dead host,
//!   logged once per outage;
//! - `deadline`: the deadlines every call runs under;
//! - `tls` (feature `tls`): rustls sessions over either transport, and how
//!   they verify servers ([`TlsConfig`](tls::TlsConfig)).
//!
//! **Deadlines, not per-read timeouts.** A socket timeout bounds one read,
//! so a server that trickles a reply a byte at a time could hold a caller
//! for as many timeouts as the reply has bytes. Instead each call gets a
//! `Budget`: all of its reads and writes together end by `timeout` after
//! the call started, and all connection attempts together (DNS included)
//! by `connect_timeout` after it started; time spent connecting is added to
//! the I/O deadline, so a call takes at most `connect_timeout + timeout`,
//! whatever the server does and however many times a stale pooled
//! connection is replaced within the call. `DeadlineStream` enforces it
//! by keeping the socket's timeouts no longer than the time left at every
//! read and write (setting them only when they would outlast it, since a
//! system call is as costly as the request on a fast network); the async
//! client runs the connecting and the I/O of a call each
//! under a `tokio::time::timeout_at` for the same deadlines.
//!
//! **Blocking and async callers share one client.** With the `async`
//! feature, each server's `Pool` also keeps idle tokio connections, under
//! the same size and reuse rules, and one `Health` serves both worlds: a
//! server that failed for a blocking caller is skipped by async callers
//! too, and the other way round. The replies are parsed by one sans-IO
//! parser per protocol and each operation's conversation is written once
//! (`conn`), so both clients send the same bytes, accept the same replies
//! and fail with the same error kinds.
//!
//! **Any duration is accepted.** Timeouts and back-off are clamped to
//! [`MAX_TUNING`], so that no `Instant + Duration` can overflow (which
//! panics) whatever a caller or a URL asks for.

use std::sync::Mutex;
use std::time::Duration;

use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

pub(crate) mod conn;
pub(crate) mod deadline;
pub(crate) mod health;
pub(crate) mod limit;
#[cfg(feature = "async")]
pub(crate) mod mux;
pub(crate) mod pool;
#[cfg(feature = "tls")]
pub(crate) mod tls;
#[cfg(feature = "async")]
pub(crate) mod tokio_io;
pub(crate) mod transport;

/// How long opening a connection may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long one read or write may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// How many idle connections each server keeps by default.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// How many connections, in use or idle, one backend opens to each server
/// at most by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a failed server is skipped at first; the pause doubles with
/// each further failure.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest a failed server is skipped before it is tried again.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The longest timeout or back-off honoured; longer ones are clamped to it.
/// A year is "forever" for a cache call, and far from where adding it to an
/// `Instant` could overflow.
pub(super) const MAX_TUNING: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The URL parameters every network backend takes.
pub(crate) const URL_PARAMS: &[&str] = &[
    "connect_timeout_ms",
    "timeout_ms",
    "pool_size",
    "max_connections",
    "backoff_ms",
    "max_backoff_ms",
];

/// How a backend speaks TLS: rustls settings with the `tls` feature; in a
/// build without it, a type with no values.
#[cfg(feature = "tls")]
pub(crate) use tls::TlsConfig;
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub(crate) enum TlsConfig {}

/// The TLS settings `url` asks for (`secure`: its scheme is `rediss` or
/// `memcacheds`), and `url` without the TLS parameters. A TLS scheme in a
/// build without the `tls` feature is an error naming the feature.
pub(crate) fn split_tls(
    url: &CacheUrl,
    secure: bool,
) -> Result<(Option<TlsConfig>, CacheUrl), ConfigError> {
    #[cfg(feature = "tls")]
    {
        let tls = TlsConfig::from_url(url, secure)?;
        let rest = CacheUrl {
            params: url
                .params
                .iter()
                .filter(|(name, _)| !tls::URL_PARAMS.contains(&name.as_str()))
                .cloned()
                .collect(),
            ..url.clone()
        };
        Ok((tls, rest))
    }
    #[cfg(not(feature = "tls"))]
    if secure {
        Err(ConfigError::FeatureDisabled {
            scheme: url.scheme.clone(),
            feature: "tls",
        })
    } else {
        Ok((None, url.clone()))
    }
}

/// Timeouts, pool size and back-off of a network backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) pool_size: usize,
    /// At least one.
    pub(crate) max_connections: usize,
    pub(crate) backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            pool_size: DEFAULT_POOL_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl Settings {
    /// Zero means the default; clamped to [`MAX_TUNING`].
    pub(crate) fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = nonzero_or(timeout, DEFAULT_CONNECT_TIMEOUT).min(MAX_TUNING);
    }

    /// Zero means the default; clamped to [`MAX_TUNING`].
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = nonzero_or(timeout, DEFAULT_TIMEOUT).min(MAX_TUNING);
    }

    /// Zero means the default.
    pub(crate) fn set_max_connections(&mut self, max: usize) {
        self.max_connections = if max == 0 {
            DEFAULT_MAX_CONNECTIONS
        } else {
            max
        };
    }

    /// The longest pause is at least the first; both are clamped to
    /// [`MAX_TUNING`].
    pub(crate) fn set_backoff(&mut self, first: Duration, max: Duration) {
        self.backoff = first.min(MAX_TUNING);
        self.max_backoff = max.max(first).min(MAX_TUNING);
    }

    /// Applies the tuning parameters of `url` ([`URL_PARAMS`]); any other
    /// parameter is an error.
    pub(crate) fn apply_url_params(&mut self, url: &CacheUrl) -> Result<(), ConfigError> {
        let mut backoff = (self.backoff, self.max_backoff);
        for (name, value) in &url.params {
            match name.as_str() {
                "connect_timeout_ms" => {
                    self.set_connect_timeout(positive_millis(url, name, value)?);
                }
                "timeout_ms" => self.set_timeout(positive_millis(url, name, value)?),
                "pool_size" => {
                    self.pool_size = value.parse().map_err(|_| {
                        url.invalid_value(name, value, "expected a number of connections")
                    })?;
                }
                "max_connections" => {
                    let max = value.parse().ok().filter(|max| *max > 0).ok_or_else(|| {
                        url.invalid_value(
                            name,
                            value,
                            "expected a number of connections, at least 1",
                        )
                    })?;
                    self.set_max_connections(max);
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
    pub(crate) fn backoff_after(&self, failures: u32) -> Duration {
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
        /// How long opening connections, name resolution and any handshake
        /// included, may take in one call (URL: `connect_timeout_ms`). Zero
        /// means the default; anything above a year counts as a year.
        pub fn connect_timeout(mut self, timeout: Duration) -> Self {
            self.settings.set_connect_timeout(timeout);
            self
        }

        /// How long the reads and writes of one call may take, all together,
        /// before the server counts as failed (URL: `timeout_ms`). Zero means
        /// the default; anything above a year counts as a year.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.settings.set_timeout(timeout);
            self
        }

        /// How many idle connections are kept per server for reuse (URL:
        /// `pool_size`). More callers than this still run at once on extra
        /// connections, up to [`max_connections`](Self::max_connections),
        /// which are closed after use. Zero keeps none.
        pub fn pool_size(mut self, size: usize) -> Self {
            self.settings.pool_size = size;
            self
        }

        /// How many connections this backend opens to each server at most,
        /// in use or idle, blocking and async callers together (URL:
        /// `max_connections`; 64 by default, and zero means the default).
        /// A call that finds them all busy waits
        /// for one within its own deadline (`timeout`), then fails with a
        /// timeout error, and memo computes its value: a burst of callers
        /// never opens more sockets than this, and never fails a caller.
        pub fn max_connections(mut self, max: usize) -> Self {
            self.settings.set_max_connections(max);
            self
        }

        /// How long a failed server is skipped at first, and at most, before
        /// the next attempt (URL: `backoff_ms`, `max_backoff_ms`). The pause
        /// doubles with each consecutive failure between the two. Anything
        /// above a year counts as a year.
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

/// `host:port`, with an IPv6 host in brackets.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
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
    use super::deadline::{Budget, later};
    use super::health::Health;
    use super::*;
    use std::io;
    use std::time::Instant;

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
    fn any_duration_is_clamped_and_never_overflows_an_instant() {
        let mut settings = Settings::default();
        settings.set_timeout(Duration::MAX);
        settings.set_connect_timeout(Duration::MAX);
        settings.set_backoff(Duration::MAX, Duration::MAX);
        assert_eq!(settings.timeout, MAX_TUNING);
        assert_eq!(settings.connect_timeout, MAX_TUNING);
        assert_eq!(settings.backoff_after(u32::MAX), MAX_TUNING);
        let budget = Budget::start(&settings);
        assert!(budget.io_by > Instant::now());
        assert!(later(Instant::now(), Duration::MAX) > Instant::now());
        let health = Health::default();
        let what = || "x".to_owned();
        let _ = health.failed(&what, &settings, "test", io::Error::other("down"));
        assert!(health.admit(&what, &settings).is_err());
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
        let url =
            CacheUrl::parse("x://h?timeout_ms=70&pool_size=3&max_connections=5&backoff_ms=10")
                .unwrap();
        let mut settings = Settings::default();
        assert_eq!(settings.max_connections, DEFAULT_MAX_CONNECTIONS);
        settings.apply_url_params(&url).unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(70));
        assert_eq!(settings.pool_size, 3);
        assert_eq!(settings.max_connections, 5);
        settings.set_max_connections(0);
        assert_eq!(settings.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(settings.backoff, Duration::from_millis(10));
        for bad in [
            "x://h?timeout_ms=0",
            "x://h?pool_size=-1",
            "x://h?max_connections=0",
            "x://h?max_connections=many",
            "x://h?colour=red",
        ] {
            let url = CacheUrl::parse(bad).unwrap();
            assert!(Settings::default().apply_url_params(&url).is_err(), "{bad}");
        }
    }
}
