//! What the network backends share: connection settings and their URL
//! parameters, server addresses, the health of a server (the back-off that
//! keeps callers from waiting on a dead host, logged once per outage), and
//! the deadlines every call runs under.
//!
//! **Deadlines, not per-read timeouts.** A socket timeout bounds one read,
//! so a server that trickles a reply a byte at a time could hold a caller
//! for as many timeouts as the reply has bytes. Instead each call gets a
//! [`Budget`]: all of its reads and writes together end by `timeout` after
//! the call started, and all connection attempts together (DNS included)
//! by `connect_timeout` after it started; time spent connecting is added to
//! the I/O deadline, so a call takes at most `connect_timeout + timeout`,
//! whatever the server does and however many times a stale pooled
//! connection is replaced within the call. [`DeadlineStream`] enforces it
//! by setting the socket timeout to the time left before every read and
//! write.
//!
//! **Any duration is accepted.** Timeouts and back-off are clamped to
//! [`MAX_TUNING`], so that no `Instant + Duration` can overflow (which
//! panics) whatever a caller or a URL asks for.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BackendError;
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

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

/// The longest timeout or back-off honoured; longer ones are clamped to it.
/// A year is "forever" for a cache call, and far from where adding it to an
/// `Instant` could overflow.
pub(super) const MAX_TUNING: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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
    /// Zero means the default; clamped to [`MAX_TUNING`].
    pub(crate) fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = nonzero_or(timeout, DEFAULT_CONNECT_TIMEOUT).min(MAX_TUNING);
    }

    /// Zero means the default; clamped to [`MAX_TUNING`].
    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = nonzero_or(timeout, DEFAULT_TIMEOUT).min(MAX_TUNING);
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
        /// connections, which are closed after use. Zero keeps none.
        pub fn pool_size(mut self, size: usize) -> Self {
            self.settings.pool_size = size;
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
        state.retry_at = Some(later(now, settings.backoff_after(state.failures)));
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
        state.retry_at = Some(later(
            Instant::now(),
            settings.backoff_after(state.failures),
        ));
        BackendError::with_source(format!("{}: {doing}", what()), err)
    }
}

/// `from + duration`, or as late as representable near that: never panics.
pub(crate) fn later(from: Instant, duration: Duration) -> Instant {
    from.checked_add(duration.min(MAX_TUNING))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 60 * 60)))
        .unwrap_or(from)
}

/// The deadlines of one call (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// When every connection attempt of the call must be done.
    connect_by: Instant,
    /// When every read and write of the call must be done; pushed back by
    /// the time spent connecting.
    pub(crate) io_by: Instant,
}

impl Budget {
    /// The budget of a call starting now.
    pub(crate) fn start(settings: &Settings) -> Budget {
        let now = Instant::now();
        Budget {
            connect_by: later(now, settings.connect_timeout),
            io_by: later(now, settings.timeout),
        }
    }

    /// Opens a TCP connection to `host:port` within the connect deadline,
    /// then runs `handshake` on it (a stream bounded by the same deadline);
    /// the time it all took is added to the I/O deadline.
    pub(crate) fn connect<T>(
        &mut self,
        host: &str,
        port: u16,
        handshake: impl FnOnce(DeadlineStream) -> io::Result<T>,
    ) -> io::Result<T> {
        let started = Instant::now();
        let result = connect(host, port, self.connect_by).and_then(|stream| {
            stream.set_nodelay(true)?;
            handshake(DeadlineStream::new(stream, self.connect_by))
        });
        self.io_by = later(self.io_by, started.elapsed());
        result
    }
}

/// A TCP stream whose reads and writes fail with `TimedOut` once its
/// deadline has passed, each one waiting at most for the time left.
#[derive(Debug)]
pub(crate) struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    pub(crate) fn new(stream: TcpStream, deadline: Instant) -> Self {
        DeadlineStream { stream, deadline }
    }

    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// The time left, or `TimedOut` when there is none.
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        Ok(left)
    }

    /// Whether the connection can be reused: nothing unread is waiting on
    /// it (a stray reply would be read as the answer to the next command)
    /// and the peer has not closed it.
    pub(crate) fn is_clean(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let idle = matches!(
            self.stream.peek(&mut byte),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).is_ok() && idle
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the call's deadline passed")
}

/// A socket timeout shows as `WouldBlock` on Unix; name it for what it is.
fn deadline_error(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        err
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf).map_err(deadline_error)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf).map_err(deadline_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `host:port` by `deadline`, trying each address in turn.
fn connect(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for address in resolve(host, port, deadline)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = deadline_error(err),
        }
    }
    Err(last_error)
}

/// The addresses of `host`, resolved by `deadline`. The system resolver
/// has no timeout (a dead DNS server blocks it for many seconds), so a name
/// is resolved on a helper thread that this call stops waiting for at the
/// deadline; the thread finishes on its own later. IP addresses, the usual
/// case for cache servers, need no thread.
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if deadline <= Instant::now() {
        return Err(timed_out());
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("memo-resolve".to_owned())
        .spawn(move || {
            let addresses = (name.as_str(), port)
                .to_socket_addrs()
                .map(|found| found.collect::<Vec<_>>());
            // The caller may have stopped waiting; nothing to do then.
            let _ = sender.send(addresses);
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match receiver.recv_timeout(left) {
        Ok(addresses) => addresses,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("resolving {host} took longer than the connect timeout"),
        )),
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
    fn names_resolve_within_the_deadline_and_addresses_need_no_lookup() {
        let soon = later(Instant::now(), Duration::from_secs(5));
        let ip = resolve("127.0.0.1", 7, Instant::now()).unwrap();
        assert_eq!(ip, [SocketAddr::from(([127, 0, 0, 1], 7))]);
        let v6 = resolve("::1", 7, Instant::now()).unwrap();
        assert_eq!(v6.len(), 1);
        let found = resolve("localhost", 7, soon).unwrap();
        assert!(found.iter().all(|address| address.ip().is_loopback()));
        let err = resolve("localhost", 7, Instant::now()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_deadline_stream_times_out_after_its_deadline_not_per_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            // A byte every 100 ms: each read is quick, the whole is not.
            for _ in 0..20 {
                if peer.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_millis(350);
        let mut stream = DeadlineStream::new(TcpStream::connect(address).unwrap(), deadline);
        let mut all = Vec::new();
        let err = stream.read_to_end(&mut all).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!((3..=5).contains(&all.len()), "read {} bytes", all.len());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "took {took:?}");
        std::thread::sleep(Duration::from_millis(150));
        assert!(!stream.is_clean(), "a stray byte is waiting");
        drop(stream);
        writer.join().unwrap();
    }

    #[test]
    fn only_a_quiet_open_connection_is_clean() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let far = later(Instant::now(), Duration::from_secs(5));
        let stream = DeadlineStream::new(TcpStream::connect(address).unwrap(), far);
        let (peer, _) = listener.accept().unwrap();
        assert!(stream.is_clean());
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!stream.is_clean(), "closed by the peer");
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
