//! The Redis backend, on the `redis` crate's synchronous client.
//!
//! Each memo operation is one Redis round trip: `GET`, `MGET` for
//! `get_many`, `SET key value PX ms` (pipelined for `set_many`), `SET ... NX
//! PX` for `add`, `PEXPIRE` for `touch`, `DEL`, and a Lua script for
//! `delete_if_value`, so a lock holder whose lock expired can never delete
//! the token of the caller that took the lock after it.
//!
//! Connections live in a pool of idle ones; a caller takes one or opens a
//! new one, so concurrent callers never queue behind one socket. Opening a
//! connection (including its handshake) and every read and write have short
//! timeouts, 250 ms and 1 s by default. After a failure the server is
//! skipped for a back-off that starts at 500 ms and doubles up to 5 s:
//! calls fail at once with a [`BackendError`] instead of waiting on a dead
//! host, and only one caller at a time probes the server again. Each outage
//! is logged once when it starts and once when the server is back. A pooled
//! connection found closed by a server restart is replaced once, silently.
//!
//! TLS (`rediss://`) is not built in: it would pull a TLS stack into every
//! build. Run a TLS proxy such as stunnel next to the service instead.

use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, ProtocolVersion, RedisConnectionInfo};

use super::endpoint::{self, Health, Settings, lock};
pub use super::endpoint::{
    DEFAULT_BACKOFF, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
};
use super::{Backend, BackendError};
use crate::config::{CacheUrl, ConfigError};

/// The port Redis listens on when a server is named without one.
pub const DEFAULT_PORT: u16 = 6379;

/// Value bytes sent in one `set_many` pipeline: the client assembles a
/// pipeline in memory, so a large batch goes out in slices this size.
const MAX_PIPELINE_BYTES: usize = 8 * 1024 * 1024;

/// Deletes `KEYS[1]` only if it holds `ARGV[1]`. Redis runs a script
/// atomically, so nothing can replace the value between the read and the
/// delete.
const DELETE_IF_VALUE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// A client for one Redis server (or anything speaking its protocol:
/// Valkey, KeyDB, Dragonfly).
///
/// Creating one opens no connection, so a service starts even when its
/// cache is down; connections are opened on first use and kept in a pool.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{Config, RedisBackend, configure};
///
/// let backend = RedisBackend::new("10.0.0.7:6379")?
///     .database(2)
///     .password(None, "s3cret")
///     .timeout(Duration::from_millis(500));
/// configure(Config::new(backend).namespace("shop"));
/// # configure(Config::new(memo_runtime::MemoryBackend::new()));
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
///
/// The same from a URL (`/2` is the database, the password comes before
/// the `@`):
///
/// ```
/// use memo_runtime::Config;
///
/// let config = Config::from_url("redis://:s3cret@10.0.0.7:6379/2?namespace=shop&timeout_ms=500")?;
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
pub struct RedisBackend {
    name: String,
    client: redis::Client,
    settings: Settings,
    idle: Mutex<Vec<redis::Connection>>,
    health: Health,
    delete_if_value: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.client.get_connection_info();
        f.debug_struct("RedisBackend")
            .field("server", &self.name)
            .field("database", &info.redis.db)
            .field("username", &info.redis.username)
            .field(
                "password",
                &info.redis.password.as_ref().map(|_| "<redacted>"),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

impl RedisBackend {
    /// A client for the server at `address` (`host:port`, `host` for port
    /// 6379, or `[v6]:port`), database 0, no password, default timeouts.
    ///
    /// Fails only on a malformed address: nothing is resolved or connected
    /// until the first call.
    pub fn new(address: &str) -> Result<Self, ConfigError> {
        let (host, port) = endpoint::split_host_port(address, DEFAULT_PORT)?;
        let info = ConnectionInfo {
            addr: ConnectionAddr::Tcp(host, port),
            redis: RedisConnectionInfo {
                db: 0,
                username: None,
                password: None,
                protocol: ProtocolVersion::RESP2,
            },
        };
        Ok(RedisBackend {
            name: address.to_owned(),
            client: Self::client(info)?,
            settings: Settings::default(),
            idle: Mutex::new(Vec::new()),
            health: Health::default(),
            delete_if_value: redis::Script::new(DELETE_IF_VALUE),
        })
    }

    /// Selects database `db` (URL: the path, `redis://host:port/2`).
    pub fn database(self, db: u32) -> Self {
        self.with_info(|info| info.redis.db = i64::from(db))
    }

    /// Authenticates with `password`, as `username` when given (Redis 6
    /// ACLs) or as the default user (URL: `redis://user:password@host` or
    /// `redis://:password@host`).
    pub fn password(self, username: Option<&str>, password: &str) -> Self {
        self.with_info(|info| {
            info.redis.username = username.map(str::to_owned);
            info.redis.password = Some(password.to_owned());
        })
    }

    endpoint::tuning_setters!();

    /// The server, as given.
    pub fn server(&self) -> &str {
        &self.name
    }

    pub(crate) fn from_url_parts(url: &CacheUrl) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        if url.scheme == "rediss" {
            return Err(invalid(
                "rediss:// (TLS) is not supported; reach Redis over redis:// through a local TLS proxy",
            ));
        }
        let host = match url.hosts.as_slice() {
            [host] => host,
            [] => {
                return Err(invalid(
                    "redis:// needs a host, e.g. redis://127.0.0.1:6379",
                ));
            }
            _ => {
                return Err(invalid(
                    "redis:// takes one host; memo does not shard over several Redis servers",
                ));
            }
        };
        let mut backend = Self::new(host)?;
        if !url.path.is_empty() {
            let db = url.path.parse().map_err(|_| {
                url.invalid_value(
                    "database",
                    &url.path,
                    "expected a database number, as in redis://host:6379/2",
                )
            })?;
            backend = backend.database(db);
        }
        if let Some(userinfo) = &url.userinfo {
            let (username, password) = userinfo
                .split_once(':')
                .ok_or_else(|| invalid("write credentials as user:password@ or :password@"))?;
            backend = backend.password((!username.is_empty()).then_some(username), password);
        }
        backend.settings.apply_url_params(url)?;
        Ok(backend)
    }

    fn client(info: ConnectionInfo) -> Result<redis::Client, ConfigError> {
        redis::Client::open(info).map_err(|err| ConfigError::Backend(format!("redis: {err}")))
    }

    fn with_info(mut self, change: impl FnOnce(&mut ConnectionInfo)) -> Self {
        let mut info = self.client.get_connection_info().clone();
        change(&mut info);
        // Opening a client from a TCP address only stores it: it cannot
        // fail, but keep the old client rather than panic if it ever did.
        if let Ok(client) = Self::client(info) {
            self.client = client;
        }
        self
    }

    /// Runs `op` on a pooled connection. A connection closed under us (the
    /// server restarted since it was pooled) is replaced once with a fresh
    /// one; any other I/O failure drops it and starts a back-off. An error
    /// reply from the server is returned as is: the server is up.
    fn run<T>(
        &self,
        mut op: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BackendError> {
        let what = || format!("redis {}", self.name);
        self.health.admit(&what, &self.settings)?;
        let mut pooled = lock(&self.idle).pop();
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => match self.connect() {
                    Ok(conn) => conn,
                    Err(err) => {
                        return Err(self.health.failed(
                            &what,
                            &self.settings,
                            "cannot connect",
                            err,
                        ));
                    }
                },
            };
            match op(&mut conn) {
                Ok(value) => {
                    self.release(conn);
                    self.health.succeeded(&what);
                    return Ok(value);
                }
                Err(err) if reused && err.is_connection_dropped() => {
                    // Every idle connection dates from before the restart.
                    lock(&self.idle).clear();
                    continue;
                }
                Err(err) if err.is_io_error() => {
                    return Err(self.health.failed(&what, &self.settings, "I/O failed", err));
                }
                Err(err) => {
                    if redis::ConnectionLike::is_open(&conn) {
                        self.release(conn);
                    }
                    self.health.succeeded(&what);
                    return Err(BackendError::with_source(
                        format!("{}: error reply", what()),
                        err,
                    ));
                }
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(self.settings.connect_timeout)?;
        conn.set_read_timeout(Some(self.settings.timeout))?;
        conn.set_write_timeout(Some(self.settings.timeout))?;
        Ok(conn)
    }

    fn release(&self, conn: redis::Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.settings.pool_size {
            idle.push(conn);
        }
    }
}

impl Backend for RedisBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(|conn| redis::cmd("GET").arg(key).query(conn))
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> =
            self.run(|conn| redis::cmd("MGET").arg(keys).query(conn))?;
        if values.len() != keys.len() {
            return Err(BackendError::new(format!(
                "redis {}: MGET of {} keys answered {} values",
                self.name,
                keys.len(),
                values.len()
            )));
        }
        Ok(values)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl);
        self.run(|conn| {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(millis)
                .query::<()>(conn)
        })
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl);
        let mut start = 0;
        while start < items.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < items.len() && (end == start || bytes < MAX_PIPELINE_BYTES) {
                bytes += items[end].1.len();
                end += 1;
            }
            let slice = &items[start..end];
            self.run(|conn| {
                let mut pipe = redis::pipe();
                for (key, value) in slice {
                    pipe.cmd("SET")
                        .arg(*key)
                        .arg(*value)
                        .arg("PX")
                        .arg(millis)
                        .ignore();
                }
                pipe.query::<()>(conn)
            })?;
            start = end;
        }
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl);
        let reply: Option<String> = self.run(|conn| {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .query(conn)
        })?;
        Ok(reply.is_some())
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl);
        let touched: i64 =
            self.run(|conn| redis::cmd("PEXPIRE").arg(key).arg(millis).query(conn))?;
        Ok(touched == 1)
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let deleted: i64 = self.run(|conn| redis::cmd("DEL").arg(key).query(conn))?;
        Ok(deleted > 0)
    }

    /// Atomic, through a Lua script (sent once, then run by its digest).
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let deleted: i64 =
            self.run(|conn| self.delete_if_value.key(key).arg(expected).invoke(conn))?;
        Ok(deleted > 0)
    }
}

/// `PX` takes whole milliseconds, at least one.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str) -> Result<RedisBackend, ConfigError> {
        RedisBackend::from_url_parts(&CacheUrl::parse(url).unwrap())
    }

    fn info(backend: &RedisBackend) -> &ConnectionInfo {
        backend.client.get_connection_info()
    }

    #[test]
    fn url_with_database_credentials_and_tuning_is_parsed() {
        let backend = backend(
            "redis://app:pa%3Ass@cache:6380/3?connect_timeout_ms=50&timeout_ms=70&pool_size=2&backoff_ms=10&max_backoff_ms=20",
        )
        .unwrap();
        assert_eq!(backend.server(), "cache:6380");
        let info = info(&backend);
        assert!(matches!(&info.addr, ConnectionAddr::Tcp(host, 6380) if host == "cache"));
        assert_eq!(info.redis.db, 3);
        assert_eq!(info.redis.username.as_deref(), Some("app"));
        assert_eq!(info.redis.password.as_deref(), Some("pa:ss"));
        assert_eq!(backend.settings.connect_timeout, Duration::from_millis(50));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.pool_size, 2);
        assert_eq!(backend.settings.backoff, Duration::from_millis(10));
        assert_eq!(backend.settings.max_backoff, Duration::from_millis(20));
    }

    #[test]
    fn password_only_and_defaults() {
        let backend = backend("redis://:secret@[::1]").unwrap();
        let info = info(&backend);
        assert!(matches!(&info.addr, ConnectionAddr::Tcp(host, DEFAULT_PORT) if host == "::1"));
        assert_eq!(info.redis.db, 0);
        assert_eq!(info.redis.username, None);
        assert_eq!(info.redis.password.as_deref(), Some("secret"));
        assert_eq!(backend.settings.timeout, DEFAULT_TIMEOUT);
        assert!(
            !format!("{backend:?}").contains("secret"),
            "the password is never shown"
        );
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for url in [
            "redis://",
            "redis://a:1,b:2",
            "redis://a:1/x",
            "redis://a:1/-1",
            "redis://user@a:1",
            "redis://a:0",
            "redis://a:1?timeout_ms=0",
            "redis://a:1?pool_size=many",
            "redis://a:1?colour=blue",
            "rediss://a:1",
        ] {
            assert!(backend(url).is_err(), "{url} was accepted");
        }
        let err = backend("rediss://a:1").unwrap_err().to_string();
        assert!(err.contains("TLS"), "{err}");
    }

    #[test]
    fn ttls_are_whole_milliseconds_of_at_least_one() {
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(
            ttl_millis(Duration::from_secs(30 * 24 * 3600)),
            2_592_000_000
        );
        assert!(ttl_millis(Duration::MAX) > 0);
    }

    #[test]
    fn a_dead_server_fails_fast_and_is_skipped_during_back_off() {
        let backend = RedisBackend::new("127.0.0.1:9").unwrap();
        let started = std::time::Instant::now();
        assert!(backend.set("k", b"v", Duration::from_secs(60)).is_err());
        let err = backend.get("k").unwrap_err().to_string();
        assert!(err.contains("unavailable"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(400));
    }
}
