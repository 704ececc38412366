//! Redis Sentinel: which server a [`RedisBackend`](super::RedisBackend)
//! talks to, when a set of sentinels decides which server is the master.
//!
//! **Only the address.** Everything else is the single-node client: the
//! master is reached through a `net` pool like any Redis server, with its
//! handshake (`AUTH`, `SELECT`), deadlines, back-off, connection cap, TLS
//! and multiplexed async connections, and locks and the invalidation
//! messages of local copies go to it as they would to one server. What
//! this module adds is finding the master and following it when it moves.
//!
//! **Finding it.** The sentinels are asked in turn, each through a pool of
//! its own (so a dead sentinel is skipped during its back-off), with
//! `SENTINEL get-master-addr-by-name SERVICE`, authenticating with the
//! sentinels' own credentials when they have some. Every new connection to
//! the master then checks `ROLE` in its handshake: a server that is no
//! longer the master (a failover the sentinel has not finished telling)
//! fails the handshake like an unreachable one.
//!
//! **Following a failover.** The master is looked up again when a call
//! sees a sign of a failover: a `READONLY` (or `MASTERDOWN`) reply, a
//! connection that fails or times out, or the master's back-off. Within
//! the call's deadline (`connect_timeout + timeout`, as for one server)
//! the call asks the sentinels again, at most every
//! [`MIN_ASK_INTERVAL`] and by one caller at a time, and sends its
//! command once more to the master named. A background thread also
//! listens to the sentinels' `+switch-master` messages, so that the move
//! is known as soon as the sentinels make it, before any call trips on the
//! old master. A call that cannot reach a master in time fails like any
//! cache failure (memo computes its value); caching resumes on the
//! promoted master by itself.
//!
//! **TLS** (`rediss+sentinel://`, [`tls`](super::RedisBackend::tls)):
//! the sentinels and the master are reached with the same TLS settings,
//! the `+switch-master` listener included. The master's certificate must
//! name the address the sentinels announce for it (an IP address unless
//! they announce host names), and the sentinels must announce its TLS
//! port (`tls-replication yes` on the servers and the sentinels).
//!
//! **Credentials.** The master's credentials are the URL's userinfo (or
//! [`password`](super::RedisBackend::password)); the sentinels' own are
//! `sentinel_username` / `sentinel_password` (or
//! [`sentinel_password`](super::RedisBackend::sentinel_password)). Neither
//! reaches an error, a log line or `Debug`: the pools are named by
//! address, and the URL's password parameters are redacted like its
//! userinfo.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock, Weak};
use std::time::{Duration, Instant};

use super::protocol::Value;
use super::pubsub::Subscriber;
use crate::backend::net::conn::{Conn, Transport, ready};
use crate::backend::net::deadline::later;
use crate::backend::net::pool::{OpError, Pool};
use crate::backend::net::{self, Settings, TlsConfig, lock};
use crate::backend::{BackendError, BackendErrorKind};
use crate::common::error::ConfigError;

/// The port a sentinel listens on when named without one.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The shortest pause between two lookups of the master, so that a
/// failover in progress is not asked about by every call.
pub(super) const MIN_ASK_INTERVAL: Duration = Duration::from_millis(100);

/// How many times one call sends its command: the first time, and again
/// after each sign of a failover, while its deadline allows.
pub(super) const MAX_ATTEMPTS: usize = 3;

/// The channel on which sentinels announce a new master.
const SWITCH_MASTER: &str = "+switch-master";

/// What a Sentinel setup is made of, as configured; kept to build the
/// runtime state again when a builder method changes it.
#[derive(Clone)]
pub(super) struct SentinelConfig {
    pub(super) service: String,
    pub(super) sentinels: Vec<(String, u16)>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) tls: Option<TlsConfig>,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("service", &self.service)
            .field("sentinels", &self.addresses())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl SentinelConfig {
    /// A setup for `service`, from `sentinels` (`host:port`, or `host` for
    /// port 26379).
    pub(super) fn new<I>(sentinels: I, service: &str) -> Result<SentinelConfig, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let sentinels = sentinels
            .into_iter()
            .map(|address| net::split_host_port(address.as_ref(), DEFAULT_SENTINEL_PORT))
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(ConfigError::Backend(
                "Redis Sentinel needs at least one sentinel, e.g. 127.0.0.1:26379".to_owned(),
            ));
        }
        if service.is_empty() || service.bytes().any(|b| b <= b' ') {
            return Err(ConfigError::Backend(format!(
                "Redis Sentinel needs the name of the service it monitors, without spaces \
                 (as in `sentinel monitor NAME ...`); got {service:?}"
            )));
        }
        Ok(SentinelConfig {
            service: service.to_owned(),
            sentinels,
            username: None,
            password: None,
            tls: None,
        })
    }

    /// The sentinels, as `host:port`.
    pub(super) fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(host, port)| net::address(host, *port))
            .collect()
    }
}

/// The master as last looked up.
#[derive(Default)]
struct Master {
    pool: Option<Arc<Pool>>,
    /// A call saw a sign that it moved.
    stale: bool,
    /// When the sentinels were last asked.
    asked: Option<Instant>,
}

/// A Sentinel setup at run time: its sentinels' pools and the master.
pub(super) struct Sentinel {
    pub(super) config: SentinelConfig,
    sentinels: Vec<Pool>,
    master: RwLock<Master>,
    /// Whether a caller is asking the sentinels about a known master.
    asking: AtomicBool,
    /// Starts the `+switch-master` listener on first use.
    watching: Once,
    /// The master's address as last logged, to log each move once.
    logged: Mutex<Option<(String, u16)>>,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

/// Clears `Sentinel::asking` however the asking ends (an async caller
/// may be cancelled).
pub(super) struct Asking<'a>(&'a AtomicBool);

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What the master lookup of a call decided.
pub(super) enum Lookup<'a> {
    /// Use this master.
    Known(Arc<Pool>),
    /// Ask the sentinels (holding the guard, if one was needed), and use
    /// `fallback` if they do not answer.
    Ask {
        _guard: Option<Asking<'a>>,
        fallback: Option<Arc<Pool>>,
    },
}

impl Sentinel {
    pub(super) fn new(config: SentinelConfig) -> Sentinel {
        let sentinels = config
            .sentinels
            .iter()
            .map(|(host, port)| {
                let mut pool = Pool::new(
                    format!("redis sentinel {}", net::address(host, *port)),
                    host.clone(),
                    *port,
                    "error reply: ",
                );
                pool.use_tls(config.tls.as_ref());
                pool
            })
            .collect();
        Sentinel {
            config,
            sentinels,
            master: RwLock::default(),
            asking: AtomicBool::new(false),
            watching: Once::new(),
            logged: Mutex::new(None),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Master> {
        self.master
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Master> {
        self.master
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The master to use, or whether to ask the sentinels first: when
    /// none is known, or a call saw it move and no one asked lately.
    pub(super) fn lookup(&self) -> Lookup<'_> {
        let master = self.read();
        let Some(pool) = master.pool.clone() else {
            // Nothing to fall back on: every caller asks.
            return Lookup::Ask {
                _guard: None,
                fallback: None,
            };
        };
        let due = master.stale
            && master
                .asked
                .is_none_or(|asked| asked.elapsed() >= MIN_ASK_INTERVAL);
        drop(master);
        if !due || self.asking.swap(true, Ordering::AcqRel) {
            return Lookup::Known(pool);
        }
        Lookup::Ask {
            _guard: Some(Asking(&self.asking)),
            fallback: Some(pool),
        }
    }

    /// Notes that a call to `pool` failed as `err` says; whether that is a
    /// sign the master moved, worth looking it up again and retrying.
    pub(super) fn moved(&self, pool: &Arc<Pool>, err: &BackendError) -> bool {
        let sign = match err.kind() {
            BackendErrorKind::Connection | BackendErrorKind::Timeout => true,
            BackendErrorKind::Server => {
                let message = err.to_string();
                ["READONLY", "MASTERDOWN", "LOADING"]
                    .iter()
                    .any(|sign| message.contains(&format!("error reply: {sign}")))
            }
            _ => false,
        };
        if sign {
            let mut master = self.write();
            if master
                .pool
                .as_ref()
                .is_some_and(|known| Arc::ptr_eq(known, pool))
            {
                master.stale = true;
            }
        }
        sign
    }

    /// Makes `host:port` the master: the pool already known when it is the
    /// same address (its connections and health kept), a new one else.
    pub(super) fn install(&self, host: &str, port: u16) -> Arc<Pool> {
        let mut master = self.write();
        master.asked = Some(Instant::now());
        master.stale = false;
        if let Some(pool) = &master.pool {
            if pool.address() == (host, port) {
                return Arc::clone(pool);
            }
        }
        let address = net::address(host, port);
        let mut pool = Pool::new(
            format!("redis {address} (master of {})", self.config.service),
            host.to_owned(),
            port,
            "error reply: ",
        );
        pool.use_tls(self.config.tls.as_ref());
        let pool = Arc::new(pool);
        master.pool = Some(Arc::clone(&pool));
        drop(master);
        let mut logged = lock(&self.logged);
        let now = (host.to_owned(), port);
        if logged.as_ref() != Some(&now) {
            if logged.is_some() {
                crate::common::diag::info!(
                    "redis sentinel: the master of {} is now {address}",
                    self.config.service
                );
            }
            *logged = Some(now);
        }
        pool
    }

    /// Records a lookup that found nothing, so that the next one waits
    /// its turn.
    pub(super) fn asked_in_vain(&self) {
        self.write().asked = Some(Instant::now());
    }

    /// The sentinels' pools, in the order to ask them.
    pub(super) fn sentinels(&self) -> &[Pool] {
        &self.sentinels
    }

    /// The master's address as known, if any.
    pub(super) fn known_address(&self) -> Option<(String, u16)> {
        let master = self.read();
        let (host, port) = master.pool.as_ref()?.address();
        Some((host.to_owned(), port))
    }

    /// Starts, once, a background listener for the sentinels'
    /// `+switch-master` messages, which installs the new master of this
    /// service as soon as they announce it. It ends with the backend.
    pub(super) fn watch(self: &Arc<Self>, connect_timeout: Duration) {
        self.watching.call_once(|| {
            let weak: Weak<Sentinel> = Arc::downgrade(self);
            let nodes = self.config.sentinels.clone();
            let service = self.config.service.clone();
            Subscriber {
                nodes: Box::new(move || nodes.clone()),
                tls: self.config.tls.clone(),
                db: 0,
                username: self.config.username.clone(),
                password: self.config.password.clone(),
                connect_timeout,
                channel: SWITCH_MASTER.to_owned(),
            }
            .spawn(Box::new(move |message: &[u8]| {
                let Some(sentinel) = weak.upgrade() else {
                    return false;
                };
                if let Some((host, port)) = switched(message, &service) {
                    sentinel.install(&host, port);
                }
                true
            }));
        });
    }

    /// The credentials the sentinels' connections authenticate with.
    pub(super) fn credentials(&self) -> (Option<&str>, Option<&str>) {
        (
            self.config.username.as_deref(),
            self.config.password.as_deref(),
        )
    }
}

/// The new master in a `+switch-master` message (`name old-ip old-port
/// new-ip new-port`), when it is about `service`.
fn switched(message: &[u8], service: &str) -> Option<(String, u16)> {
    let text = std::str::from_utf8(message).ok()?;
    let [name, _, _, host, port] =
        <[&str; 5]>::try_from(text.split(' ').collect::<Vec<_>>()).ok()?;
    if name != service {
        return None;
    }
    let port = port.parse().ok().filter(|port| *port != 0)?;
    Some((host.to_owned(), port))
}

/// Authenticates a connection to a sentinel with its own credentials.
pub(super) async fn sentinel_handshake<T: Transport>(
    conn: &mut Conn<T>,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<(), OpError> {
    super::handshake(conn, username, password, 0).await
}

/// Asks one sentinel where the master of `service` is: `None` when it
/// does not know the service.
pub(super) async fn master_address<T: Transport>(
    conn: &mut Conn<T>,
    service: &str,
) -> Result<Option<(String, u16)>, OpError> {
    let reply = conn
        .command(&[b"SENTINEL", b"get-master-addr-by-name", service.as_bytes()])
        .await?;
    let parts = match reply {
        Value::Nil => return Ok(None),
        Value::Array(parts) => parts,
        other => return Err(other.unexpected("SENTINEL get-master-addr-by-name")),
    };
    let [Value::Bulk(host), Value::Bulk(port)] = <[Value; 2]>::try_from(parts).map_err(|_| {
        OpError::Protocol("SENTINEL get-master-addr-by-name answered no address".to_owned())
    })?
    else {
        return Err(OpError::Protocol(
            "SENTINEL get-master-addr-by-name answered no address".to_owned(),
        ));
    };
    let host = String::from_utf8(host)
        .ok()
        .filter(|host| !host.is_empty() && host.bytes().all(|b| b > b' '));
    let port = std::str::from_utf8(&port)
        .ok()
        .and_then(|port| port.parse::<u16>().ok())
        .filter(|port| *port != 0);
    match (host, port) {
        (Some(host), Some(port)) => Ok(Some((host, port))),
        _ => Err(OpError::Protocol(
            "SENTINEL get-master-addr-by-name answered a malformed address".to_owned(),
        )),
    }
}

/// Checks, on a new connection to the master named by the sentinels, that
/// the server is the master: right after a failover a sentinel may still
/// name the old one, which now refuses writes.
pub(super) async fn check_role<T: Transport>(conn: &mut Conn<T>) -> Result<(), OpError> {
    conn.out.clear();
    conn.push_command(&[b"ROLE"]).await?;
    conn.flush().await?;
    // A master's `ROLE` lists its replicas as nested arrays.
    match conn.topology().await? {
        Value::Array(parts) => match parts.first() {
            Some(Value::Bulk(role)) if role == b"master" => Ok(()),
            Some(Value::Bulk(role)) => Err(OpError::Protocol(format!(
                "the server the sentinels named is a {}, not the master",
                String::from_utf8_lossy(role)
            ))),
            _ => Err(OpError::Protocol("ROLE answered no role".to_owned())),
        },
        other => Err(other.unexpected("ROLE")),
    }
}

/// The settings for one attempt that must end by `deadline`: the
/// configured ones while there is time for them, else both timeouts cut
/// in proportion; `None` when no time is left.
pub(super) fn settings_within(settings: &Settings, deadline: Instant) -> Option<Settings> {
    let left = deadline.saturating_duration_since(Instant::now());
    let full = settings.connect_timeout.saturating_add(settings.timeout);
    let mut within = *settings;
    if left < full {
        let share = left.as_secs_f64() / full.as_secs_f64();
        within.connect_timeout = settings.connect_timeout.mul_f64(share);
        within.timeout = left.saturating_sub(within.connect_timeout);
    }
    (!within.timeout.is_zero() && !within.connect_timeout.is_zero()).then_some(within)
}

/// When a call that starts now must be over: as for one server.
pub(super) fn call_deadline(settings: &Settings) -> Instant {
    later(
        Instant::now(),
        settings.connect_timeout.saturating_add(settings.timeout),
    )
}

/// The error of a lookup no sentinel answered, or of a call whose
/// deadline passed between attempts.
pub(super) fn no_master(service: &str, last: Option<BackendError>) -> BackendError {
    last.unwrap_or_else(|| {
        BackendError::new(format!(
            "redis sentinel: no sentinel named the master of {service} within the call's deadline"
        ))
        .with_kind(BackendErrorKind::Connection)
    })
}

/// Asks the sentinels in turn, blocking, by `deadline`.
pub(super) fn ask(
    sentinel: &Sentinel,
    settings: &Settings,
    deadline: Instant,
) -> Result<(String, u16), BackendError> {
    let (username, password) = sentinel.credentials();
    let service = &sentinel.config.service;
    let mut last = None;
    for pool in sentinel.sentinels() {
        let Some(settings) = settings_within(settings, deadline) else {
            break;
        };
        let found = pool.run(
            &settings,
            &|conn| ready(sentinel_handshake(conn, username, password)),
            &mut |conn| ready(master_address(conn, service)),
        );
        match found {
            Ok(Some(address)) => return Ok(address),
            Ok(None) => last = Some(unknown_service(pool, service)),
            Err(err) => last = Some(err),
        }
    }
    sentinel.asked_in_vain();
    Err(no_master(service, last))
}

/// Asks the sentinels in turn, on tokio sockets, by `deadline`.
#[cfg(feature = "async")]
pub(super) async fn ask_async(
    sentinel: &Sentinel,
    settings: &Settings,
    deadline: Instant,
) -> Result<(String, u16), BackendError> {
    let (username, password) = sentinel.credentials();
    let service = &sentinel.config.service;
    let mut last = None;
    for pool in sentinel.sentinels() {
        let Some(settings) = settings_within(settings, deadline) else {
            break;
        };
        let found = crate::backend::net::pool::run_async!(
            pool,
            &settings,
            handshake: |conn| sentinel_handshake(conn, username, password),
            op: |conn| master_address(conn, service),
        );
        match found {
            Ok(Some(address)) => return Ok(address),
            Ok(None) => last = Some(unknown_service(pool, service)),
            Err(err) => last = Some(err),
        }
    }
    sentinel.asked_in_vain();
    Err(no_master(service, last))
}

/// The error of a sentinel that does not monitor `service`.
pub(super) fn unknown_service(pool: &Pool, service: &str) -> BackendError {
    let (host, port) = pool.address();
    BackendError::new(format!(
        "redis sentinel {}: does not know the service {service}",
        net::address(host, port)
    ))
    .with_kind(BackendErrorKind::Server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_messages_are_read_for_their_service_only() {
        assert_eq!(
            switched(b"cache 10.0.0.1 6379 10.0.0.2 6380", "cache"),
            Some(("10.0.0.2".to_owned(), 6380))
        );
        assert_eq!(
            switched(b"other 10.0.0.1 6379 10.0.0.2 6380", "cache"),
            None
        );
        for bad in [
            &b"cache 10.0.0.1 6379 10.0.0.2"[..],
            b"cache a 1 b 0",
            b"cache a 1 b x",
            b"\xff",
        ] {
            assert_eq!(switched(bad, "cache"), None);
        }
    }

    #[test]
    fn a_setup_needs_sentinels_and_a_service_name() {
        assert!(SentinelConfig::new(["a", "b:1"], "cache").is_ok());
        assert_eq!(
            SentinelConfig::new(["a"], "cache").unwrap().addresses(),
            ["a:26379"]
        );
        assert!(SentinelConfig::new(Vec::<String>::new(), "cache").is_err());
        assert!(SentinelConfig::new(["a"], "").is_err());
        assert!(SentinelConfig::new(["a"], "two words").is_err());
        assert!(SentinelConfig::new(["a:0"], "cache").is_err());
    }

    #[test]
    fn a_failover_sign_marks_the_master_stale_and_lookups_are_rate_limited() {
        let sentinel = Sentinel::new(SentinelConfig::new(["127.0.0.1:9"], "cache").unwrap());
        assert!(matches!(
            sentinel.lookup(),
            Lookup::Ask { fallback: None, .. }
        ));
        let pool = sentinel.install("127.0.0.1", 10);
        assert!(matches!(sentinel.lookup(), Lookup::Known(_)));
        let readonly = BackendError::new(
            "redis 127.0.0.1:10: error reply: READONLY You can't write against a read only replica.",
        )
        .with_kind(BackendErrorKind::Server);
        assert!(sentinel.moved(&pool, &readonly));
        let other = BackendError::new("redis x: error reply: ERR wrong")
            .with_kind(BackendErrorKind::Server);
        assert!(!sentinel.moved(&pool, &other));
        // Just asked (by `install`): not yet.
        assert!(matches!(sentinel.lookup(), Lookup::Known(_)));
        std::thread::sleep(MIN_ASK_INTERVAL);
        let first = sentinel.lookup();
        assert!(matches!(
            first,
            Lookup::Ask {
                fallback: Some(_),
                ..
            }
        ));
        assert!(
            matches!(sentinel.lookup(), Lookup::Known(_)),
            "one asker at a time"
        );
        drop(first);
        // The same address keeps its pool; another gets a new one.
        assert!(Arc::ptr_eq(&sentinel.install("127.0.0.1", 10), &pool));
        assert!(!Arc::ptr_eq(&sentinel.install("127.0.0.1", 11), &pool));
        assert_eq!(sentinel.known_address(), Some(("127.0.0.1".to_owned(), 11)));
    }
}
