//! The Redis backend: one Redis server, the master of a Redis Sentinel
//! service (`sentinel`, [`RedisBackend::sentinel`]), or a Redis Cluster
//! ([`cluster`]), spoken to over RESP2.
//!
//! Each memo operation is one Redis round trip: `GET`, `MGET` for
//! `get_many`, `SET key value PX ms` (pipelined for `set_many`), `SET ... NX
//! PX` for `add`, `PEXPIRE` for `touch`, `DEL`, and Lua scripts for
//! `delete_if_value` and `touch_if_value`, so a lock holder whose lock
//! expired can never delete or extend the token of the caller that took the
//! lock after it. With a password or a database in the URL, each new
//! connection first sends `AUTH` and `SELECT`.
//!
//! The protocol is spoken here rather than through the `redis` crate's
//! synchronous connection because that connection only has per-read
//! timeouts (a server trickling its reply holds a caller for a timeout per
//! byte) and cannot tell whether a connection is still in step after an
//! error. RESP2 for these few commands is a short encoder and a strict
//! parser with bounded lengths.
//!
//! This file is the single-node client; `protocol` speaks RESP2 (one
//! sans-IO parser); `command` holds memo's commands as data (what each
//! sends, how its reply reads), shared with [`cluster`], the Redis Cluster
//! client, which routes them by key slot; connections, deadlines and
//! back-off are `backend::net`, shared with memcached. Each operation's conversation is written once and serves
//! the blocking client and, with the `async` feature, an
//! [`AsyncBackend`](crate::AsyncBackend) on tokio sockets: one `configure`
//! serves both worlds, with one health and the same pool rules, so both
//! read the same entries and a server backed off for one is backed off
//! for the other. The async client is memo's own rather than the `redis`
//! crate's for the same reasons as the blocking one: whole-call deadlines
//! and knowing when a connection is in step.
//!
//! Connections live in a pool of idle ones; a caller takes one or opens a
//! new one, so concurrent callers never queue behind one socket, up to
//! `max_connections` open per server (64 by default), past which callers
//! wait within their deadline for one to come free. Each call
//! runs under deadlines (see the `net` module): connecting, the
//! handshake included, within 250 ms and all of its reads and writes within
//! 1 s by default. After an I/O failure, a timeout or a reply that does not
//! parse, the server is skipped for a back-off that starts at 500 ms and
//! doubles up to 5 s: calls fail at once with a [`BackendError`] instead of
//! waiting on a dead host, and only one caller at a time probes the server
//! again. Each outage is logged once when it starts and once when the
//! server is back. An error reply (`-ERR ...`) fails only its call, and
//! leaves the connection in step. A connection goes back to the pool only
//! when every reply of the call was read whole; a pooled one with stray
//! bytes waiting, or closed by a server restart, is never reused.
//!
//! TTLs are sent as `PX` milliseconds, at least one, and at most
//! [`MAX_TTL_MILLIS`]: Redis refuses a `PX` that would overflow its clock
//! when added to the current time, and a refused `SET` would not cache at
//! all.
//!
//! With the cargo feature `tls`, `rediss://` speaks TLS (rustls, see the
//! `net::tls` module): the server's certificate is checked against the
//! system's roots or, with `?ca=PATH`, a private CA, and must name the host
//! of the URL; `?cert=PATH&key=PATH` adds a client certificate, and
//! `?insecure=true` skips verification (logged as a warning). The handshake
//! is paid once per pooled connection, within the connect timeout. A Redis
//! Cluster takes the same parameters (`rediss+cluster://`, see
//! [`cluster`]), and so does the invalidation subscriber of local copies
//! (`pubsub`).

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
// Not imported by name: with both traits in scope, `backend.get(..)`
// would be ambiguous in this module and its tests.
use super::asynchronous as aio;
use super::net::conn::{Conn, Transport, ready};
use super::net::pool::{OpError, Pool, SyncConn};
#[cfg(feature = "async")]
use super::net::pool::{run_async, run_mux};
use super::net::{self, Settings};
pub use super::net::{
    DEFAULT_BACKOFF, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT,
};
use super::{Backend, BackendError};
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;
use command::Cmd;
#[cfg(feature = "__fuzz")]
pub(crate) use command::round_trips;

pub mod cluster;
mod command;
mod protocol;
mod pubsub;
mod sentinel;

pub use sentinel::DEFAULT_SENTINEL_PORT;
use sentinel::{Lookup, Sentinel, SentinelConfig};

/// The port Redis listens on when a server is named without one.
pub const DEFAULT_PORT: u16 = 6379;

/// The longest `PX` sent: Redis refuses one that overflows a signed 64-bit
/// millisecond clock once the current time is added, so half of that
/// range, about 146 million years, is always accepted.
pub const MAX_TTL_MILLIS: u64 = (i64::MAX / 2) as u64;

/// Value bytes sent in one `set_many` pipeline, so a large batch goes out
/// in slices this size and its replies are read in between.
const MAX_PIPELINE_BYTES: usize = 8 * 1024 * 1024;

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
#[must_use = "a backend does nothing until passed to Config::new"]
pub struct RedisBackend {
    name: String,
    db: u32,
    username: Option<String>,
    password: Option<String>,
    settings: Settings,
    target: Target,
}

/// Where a [`RedisBackend`]'s server is.
// One per backend, so its size costs nothing; boxing the pool would add
// a pointer to follow on every call to a single server.
#[allow(clippy::large_enum_variant)]
enum Target {
    /// At a fixed address.
    Node(Pool),
    /// Wherever the sentinels say the master of a service is.
    Sentinel(Arc<Sentinel>),
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("server", &self.name)
            .field("database", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("settings", &self.settings)
            .field(
                "sentinel",
                &match &self.target {
                    Target::Node(_) => None,
                    Target::Sentinel(sentinel) => Some(&sentinel.config),
                },
            )
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
        let (host, port) = net::split_host_port(address, DEFAULT_PORT)?;
        Ok(RedisBackend {
            name: address.to_owned(),
            db: 0,
            username: None,
            password: None,
            settings: Settings::default(),
            target: Target::Node(Pool::new(
                format!("redis {address}"),
                host,
                port,
                "error reply: ",
            )),
        })
    }

    /// A client for the master of `service`, as the sentinels at
    /// `sentinels` (each `host:port`, or `host` for port 26379) name it,
    /// following it through failovers (URL:
    /// `redis+sentinel://h1:26379,h2:26379/SERVICE`).
    ///
    /// The master's database and credentials are set as for one server
    /// ([`database`](Self::database), [`password`](Self::password)); the
    /// sentinels' own credentials, when they have some, with
    /// [`sentinel_password`](Self::sentinel_password).
    ///
    /// ```
    /// use memo_runtime::{Config, RedisBackend, configure};
    ///
    /// let backend = RedisBackend::sentinel(["10.0.0.7:26379", "10.0.0.8:26379"], "cache")?
    ///     .password(None, "s3cret")
    ///     .database(2);
    /// configure(Config::new(backend).namespace("shop"));
    /// # configure(Config::new(memo_runtime::MemoryBackend::new()));
    /// # Ok::<(), memo_runtime::ConfigError>(())
    /// ```
    ///
    /// Fails only on a malformed address, an empty list or a service
    /// name with spaces: nothing is resolved or connected until the first
    /// call.
    pub fn sentinel<I>(sentinels: I, service: &str) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let config = SentinelConfig::new(sentinels, service)?;
        Ok(RedisBackend {
            name: format!("{service} (sentinels {})", config.addresses().join(",")),
            db: 0,
            username: None,
            password: None,
            settings: Settings::default(),
            target: Target::Sentinel(Arc::new(Sentinel::new(config))),
        })
    }

    /// Authenticates with the sentinels (not the master) with `password`,
    /// as `username` when given (URL: `sentinel_username`,
    /// `sentinel_password`). Does nothing for a backend made by
    /// [`new`](Self::new).
    pub fn sentinel_password(mut self, username: Option<&str>, password: &str) -> Self {
        self.change_sentinel(|config| {
            config.username = username.map(str::to_owned);
            config.password = Some(password.to_owned());
        });
        self
    }

    /// Rebuilds the Sentinel state with `change` made to its setup (any
    /// master found before is forgotten with its connections).
    fn change_sentinel(&mut self, change: impl FnOnce(&mut SentinelConfig)) {
        if let Target::Sentinel(sentinel) = &self.target {
            let mut config = sentinel.config.clone();
            change(&mut config);
            self.target = Target::Sentinel(Arc::new(Sentinel::new(config)));
        }
    }

    /// Selects database `db` (URL: the path, `redis://host:port/2`).
    pub fn database(mut self, db: u32) -> Self {
        self.db = db;
        self
    }

    /// Authenticates with `password`, as `username` when given (Redis 6
    /// ACLs) or as the default user (URL: `redis://user:password@host` or
    /// `redis://:password@host`).
    pub fn password(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.to_owned());
        self
    }

    net::tuning_setters!();

    /// Speaks TLS to the server, verifying it as `tls` says (URL:
    /// `rediss://`, with `ca`, `cert`, `key` and `insecure`). The server's
    /// certificate must name the host this backend was given. Through
    /// Sentinel (`rediss+sentinel://`), the sentinels and the master are
    /// reached over TLS alike, the master's certificate naming the host the
    /// sentinels announce for it (an IP address unless they announce host
    /// names).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.set_tls(tls);
        self
    }

    fn set_tls(&mut self, tls: net::TlsConfig) {
        match &mut self.target {
            Target::Node(pool) => pool.set_tls(tls),
            Target::Sentinel(_) => self.change_sentinel(|config| config.tls = Some(tls)),
        }
    }

    /// How connections speak TLS, if they do.
    fn tls_config(&self) -> Option<&net::TlsConfig> {
        match &self.target {
            Target::Node(pool) => pool.tls(),
            Target::Sentinel(sentinel) => sentinel.config.tls.as_ref(),
        }
    }

    /// The server, as given.
    pub fn server(&self) -> &str {
        &self.name
    }

    pub(crate) fn from_url_parts(url: &CacheUrl) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        // `rediss+cluster://...?cluster=false` is one node over TLS.
        let (tls, url) = net::split_tls(url, url.scheme.starts_with("rediss"))?;
        let url = &url;
        let host = match url.hosts.as_slice() {
            [host] => host,
            [] => {
                return Err(invalid(
                    "redis:// needs a host, e.g. redis://127.0.0.1:6379",
                ));
            }
            _ => {
                return Err(invalid(
                    "redis:// takes one host; for a Redis Cluster write redis+cluster://h1:p1,h2:p2 (or add ?cluster=true)",
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
        if let Some((username, password)) = url_credentials(url)? {
            backend = backend.password(username, password);
        }
        backend.settings.apply_url_params(url)?;
        if let Some(tls) = tls {
            backend.set_tls(tls);
        }
        Ok(backend)
    }

    /// A client from a `redis+sentinel://` (or `rediss+sentinel://`) URL:
    /// the sentinels as hosts, the service as path, the master's
    /// credentials as userinfo, and `db`, `sentinel_username` and
    /// `sentinel_password` among the parameters.
    pub(crate) fn from_sentinel_url(url: &CacheUrl) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        let (tls, url) = net::split_tls(url, url.scheme.starts_with("rediss"))?;
        if url.hosts.is_empty() {
            return Err(invalid(
                "redis+sentinel:// needs the sentinels and the service, e.g. redis+sentinel://127.0.0.1:26379/mymaster",
            ));
        }
        if url.path.is_empty() || url.path.contains('/') {
            return Err(invalid(
                "redis+sentinel:// takes the service name as its path, e.g. redis+sentinel://h1:26379,h2:26379/mymaster (the database goes in ?db=N)",
            ));
        }
        let mut backend = Self::sentinel(&url.hosts, &url.path)?;
        if let Some((username, password)) = url_credentials(&url)? {
            backend = backend.password(username, password);
        }
        let mut sentinel_credentials = (None, None);
        let mut rest = Vec::new();
        for (name, value) in &url.params {
            match name.as_str() {
                "db" => {
                    let db = value.parse().map_err(|_| {
                        url.invalid_value(name, value, "expected a database number")
                    })?;
                    backend = backend.database(db);
                }
                "sentinel_username" => sentinel_credentials.0 = Some(value.as_str()),
                "sentinel_password" => sentinel_credentials.1 = Some(value.as_str()),
                _ => rest.push((name.clone(), value.clone())),
            }
        }
        match sentinel_credentials {
            (username, Some(password)) => {
                backend = backend.sentinel_password(username, password);
            }
            (Some(_), None) => {
                return Err(invalid("sentinel_username needs sentinel_password as well"));
            }
            (None, None) => {}
        }
        let tuning = CacheUrl {
            params: rest,
            ..url.clone()
        };
        backend
            .settings
            .apply_url_params(&tuning)
            .map_err(|err| match err {
                ConfigError::UnknownParameter { name, .. } => tuning.unknown_parameter(
                    &name,
                    &[
                        net::URL_PARAMS,
                        &["db", "sentinel_username", "sentinel_password"],
                    ]
                    .concat(),
                ),
                other => other,
            })?;
        if let Some(tls) = tls {
            backend.set_tls(tls);
        }
        Ok(backend)
    }

    /// Runs `op` on a pooled blocking connection (see `net::pool`) to the
    /// server, or through Sentinel to the master, looked up again and the
    /// command sent once more when the master seems to have moved, within
    /// the call's deadline (see `sentinel`).
    fn run<T>(
        &self,
        mut op: impl FnMut(&mut SyncConn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let handshake = |conn: &mut SyncConn| ready(self.handshake(conn));
        let sentinel = match &self.target {
            Target::Node(pool) => return pool.run(&self.settings, &handshake, &mut op),
            Target::Sentinel(sentinel) => sentinel,
        };
        sentinel.watch(self.settings.connect_timeout);
        let deadline = sentinel::call_deadline(&self.settings);
        let mut last = None;
        for _ in 0..sentinel::MAX_ATTEMPTS {
            let master = match sentinel.lookup() {
                Lookup::Known(pool) => Ok(pool),
                Lookup::Ask { _guard, fallback } => {
                    match sentinel::ask(sentinel, &self.settings, deadline) {
                        Ok((host, port)) => Ok(sentinel.install(&host, port)),
                        Err(err) => fallback.ok_or(err),
                    }
                }
            };
            let pool = match master {
                Ok(pool) => pool,
                Err(err) => return Err(last.unwrap_or(err)),
            };
            let Some(settings) = sentinel::settings_within(&self.settings, deadline) else {
                break;
            };
            match pool.run(&settings, &handshake, &mut op) {
                Err(err) if sentinel.moved(&pool, &err) => last = Some(err),
                other => return other,
            }
        }
        Err(sentinel::no_master(&sentinel.config.service, last))
    }

    /// The master to send an async call to (see [`run`](Self::run)).
    #[cfg(feature = "async")]
    async fn master_async(
        &self,
        sentinel: &Sentinel,
        deadline: std::time::Instant,
    ) -> Result<Arc<Pool>, BackendError> {
        match sentinel.lookup() {
            Lookup::Known(pool) => Ok(pool),
            Lookup::Ask { _guard, fallback } => {
                match sentinel::ask_async(sentinel, &self.settings, deadline).await {
                    Ok((host, port)) => Ok(sentinel.install(&host, port)),
                    Err(err) => fallback.ok_or(err),
                }
            }
        }
    }

    /// Authenticates and selects the database on a new connection; through
    /// Sentinel, checks too that the server is still the master.
    async fn handshake<T: Transport>(&self, conn: &mut Conn<T>) -> Result<(), OpError> {
        handshake(
            conn,
            self.username.as_deref(),
            self.password.as_deref(),
            self.db,
        )
        .await?;
        if let Target::Sentinel(_) = self.target {
            sentinel::check_role(conn).await?;
        }
        Ok(())
    }

    /// The servers an invalidation subscriber may use: the server, or the
    /// master as the sentinels name it when asked.
    fn node_lister(&self) -> pubsub::NodeLister {
        match &self.target {
            Target::Node(pool) => {
                let (host, port) = pool.address();
                let node = (host.to_owned(), port);
                Box::new(move || vec![node.clone()])
            }
            Target::Sentinel(sentinel) => {
                sentinel.watch(self.settings.connect_timeout);
                let sentinel = Arc::clone(sentinel);
                let settings = self.settings;
                Box::new(move || {
                    if let Some(address) = sentinel.known_address() {
                        return vec![address];
                    }
                    let deadline = sentinel::call_deadline(&settings);
                    match sentinel::ask(&sentinel, &settings, deadline) {
                        Ok((host, port)) => {
                            sentinel.install(&host, port);
                            vec![(host, port)]
                        }
                        Err(_) => Vec::new(),
                    }
                })
            }
        }
    }
}

/// The credentials of a Redis URL, `user:password@` or `:password@`, as
/// the username (if any) and the password.
fn url_credentials(url: &CacheUrl) -> Result<Option<(Option<&str>, &str)>, ConfigError> {
    let Some(username) = &url.username else {
        return Ok(None);
    };
    let password = url
        .password
        .as_deref()
        .ok_or_else(|| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: "write credentials as user:password@ or :password@".to_owned(),
        })?;
    Ok(Some((
        (!username.is_empty()).then_some(username.as_str()),
        password,
    )))
}

/// Authenticates (as `username` when given) and selects database `db` on
/// a new connection, as the single-node and the cluster client do.
async fn handshake<T: Transport>(
    conn: &mut Conn<T>,
    username: Option<&str>,
    password: Option<&str>,
    db: u32,
) -> Result<(), OpError> {
    if let Some(password) = password {
        let mut auth: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(username) = username {
            auth.push(username.as_bytes());
        }
        auth.push(password.as_bytes());
        conn.command(&auth).await?.ok("AUTH")?;
    }
    if db != 0 {
        let db = db.to_string();
        conn.command(&[b"SELECT", db.as_bytes()])
            .await?
            .ok("SELECT")?;
    }
    Ok(())
}

/// The pieces `set_many` pipelines: slices of at most about
/// [`MAX_PIPELINE_BYTES`] of values, and at least one item each.
fn pipeline_slices<'i, 'a>(
    items: &'i [(&'a str, &'a [u8])],
) -> impl Iterator<Item = &'i [(&'a str, &'a [u8])]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= items.len() {
            return None;
        }
        let mut end = start;
        let mut bytes = 0;
        while end < items.len() && (end == start || bytes < MAX_PIPELINE_BYTES) {
            bytes += items[end].1.len();
            end += 1;
        }
        let slice = &items[start..end];
        start = end;
        Some(slice)
    })
}

/// Each operation's conversation, written once over any transport
/// (`net::conn`) for the blocking and the async client.
impl<T: Transport> Conn<T> {
    async fn get_value(&mut self, key: &str) -> Result<Option<Vec<u8>>, OpError> {
        self.run(&Cmd::Get(key), "").await?.value()
    }

    async fn mget(&mut self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, OpError> {
        self.run(&Cmd::MGet(keys.to_vec()), "").await?.values()
    }

    async fn set_px(&mut self, key: &str, value: &[u8], millis: &str) -> Result<(), OpError> {
        self.run(&Cmd::Set(key, value), millis).await?.done()
    }

    /// Pipelines one slice of `set_many`. Every reply is read, even after
    /// an error reply, so that the connection stays in step; the first
    /// error is kept.
    async fn set_slice(&mut self, slice: &[(&str, &[u8])], millis: &str) -> Result<(), OpError> {
        self.out.clear();
        for (key, value) in slice {
            Cmd::Set(key, value).push(self, millis).await?;
        }
        self.flush().await?;
        command::count_round_trip();
        let mut first_error = None;
        for (key, value) in slice {
            match Cmd::Set(key, value).read(self).await {
                Ok(_) => {}
                Err(OpError::Refused(message)) => {
                    first_error.get_or_insert(OpError::Refused(message));
                }
                Err(err) => return Err(err),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn add_nx(&mut self, key: &str, value: &[u8], millis: &str) -> Result<bool, OpError> {
        self.run(&Cmd::Add(key, value), millis).await?.flag()
    }

    async fn pexpire(&mut self, key: &str, millis: &str) -> Result<bool, OpError> {
        self.run(&Cmd::Touch(key), millis).await?.flag()
    }

    async fn del(&mut self, key: &str) -> Result<bool, OpError> {
        self.run(&Cmd::Delete(key), "").await?.flag()
    }

    async fn eval_delete_if_value(&mut self, key: &str, expected: &[u8]) -> Result<bool, OpError> {
        self.run(&Cmd::DeleteIfValue(key, expected), "")
            .await?
            .flag()
    }

    async fn eval_touch_if_value(
        &mut self,
        key: &str,
        expected: &[u8],
        millis: &str,
    ) -> Result<bool, OpError> {
        self.run(&Cmd::TouchIfValue(key, expected), millis)
            .await?
            .flag()
    }
}

impl Backend for RedisBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(|conn| ready(conn.get_value(key)))
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.run(|conn| ready(conn.mget(keys)))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl).to_string();
        self.run(|conn| ready(conn.set_px(key, value, &millis)))
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl).to_string();
        for slice in pipeline_slices(items) {
            self.run(|conn| ready(conn.set_slice(slice, &millis)))?;
        }
        Ok(())
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        self.run(|conn| ready(conn.add_nx(key, value, &millis)))
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        self.run(|conn| ready(conn.pexpire(key, &millis)))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.run(|conn| ready(conn.del(key)))
    }

    /// Atomic, through a Lua script.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        self.run(|conn| ready(conn.eval_delete_if_value(key, expected)))
    }

    /// Atomic, through a Lua script.
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        self.run(|conn| ready(conn.eval_touch_if_value(key, expected, &millis)))
    }

    /// The same client serves async callers natively, on tokio sockets.
    #[cfg(feature = "async")]
    fn __async(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn aio::AsyncBackend>> {
        Some(self)
    }

    /// Pub/sub tells other processes to drop their local copies (`pubsub`).
    fn __invalidations(&self) -> Option<&dyn super::Invalidations> {
        Some(self)
    }
}

/// Runs `$call` (`run_async!` or `run_mux!` on `$pool` with `$settings`)
/// on the server, or through Sentinel on the master, looked up again and
/// `$call` run once more when the master seems to have moved, within the
/// call's deadline, as the blocking `RedisBackend::run` does.
#[cfg(feature = "async")]
macro_rules! on_master {
    ($self:ident, |$pool:ident, $settings:ident| $call:expr) => {
        match &$self.target {
            Target::Node(pool) => {
                let $pool: &Pool = pool;
                let $settings: &Settings = &$self.settings;
                $call
            }
            Target::Sentinel(sentinel) => {
                sentinel.watch($self.settings.connect_timeout);
                let deadline = sentinel::call_deadline(&$self.settings);
                let mut last = None;
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let master = match $self.master_async(sentinel, deadline).await {
                        Ok(master) => master,
                        Err(err) => break Err(last.unwrap_or(err)),
                    };
                    let Some(within) = sentinel::settings_within(&$self.settings, deadline) else {
                        break Err(sentinel::no_master(&sentinel.config.service, last));
                    };
                    let result = {
                        let $pool: &Pool = &master;
                        let $settings: &Settings = &within;
                        $call
                    };
                    match result {
                        Err(err)
                            if sentinel.moved(&master, &err)
                                && attempts < sentinel::MAX_ATTEMPTS =>
                        {
                            last = Some(err);
                        }
                        other => break other,
                    }
                }
            }
        }
    };
}

/// Runs one async call on the pool (see `net::tokio_io`), with the
/// handshake on each new connection.
#[cfg(feature = "async")]
macro_rules! run {
    ($self:ident, |$conn:ident| $op:expr) => {
        on_master!($self, |pool, settings| run_async!(
            pool,
            settings,
            handshake: |new| $self.handshake(new),
            op: |$conn| $op,
        ))
    };
}

/// Runs one small async call over the multiplexed connection of the
/// current runtime (see `net::mux`): pipelined with the other calls in
/// flight, under the same deadlines, health and rules as `run!`.
#[cfg(feature = "async")]
macro_rules! mux {
    ($self:ident, |$conn:ident| $op:expr) => {
        on_master!($self, |pool, settings| run_mux!(
            pool,
            settings,
            count: protocol::split,
            framing: protocol::FRAMING,
            handshake: |new| $self.handshake(new),
            op: |$conn| $op,
        ))
    };
}

/// The same operations, health and rules as the blocking client, over
/// tokio sockets: nothing here blocks the executor. Single-key commands
/// and reads of a few keys are pipelined with the other calls in flight
/// on one multiplexed connection per runtime (`net::mux`); large values
/// use the pool.
#[cfg(feature = "async")]
impl aio::AsyncBackend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { mux!(self, |conn| conn.get_value(key)) })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> aio::BackendFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // Pipelined like a single key: an async lookup reads its entry
            // with the version tokens (a few keys); the chunks of a large
            // value are read by the blocking pipeline.
            mux!(self, |conn| conn.mget(keys))
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            if value.len() <= super::net::mux::MAX_VALUE {
                mux!(self, |conn| conn.set_px(key, value, &millis))
            } else {
                run!(self, |conn| conn.set_px(key, value, &millis))
            }
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            for slice in pipeline_slices(items) {
                run!(self, |conn| conn.set_slice(slice, &millis))?;
            }
            Ok(())
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            if value.len() <= super::net::mux::MAX_VALUE {
                mux!(self, |conn| conn.add_nx(key, value, &millis))
            } else {
                run!(self, |conn| conn.add_nx(key, value, &millis))
            }
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            mux!(self, |conn| conn.pexpire(key, &millis))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move { mux!(self, |conn| conn.del(key)) })
    }

    /// Atomic, through a Lua script.
    fn delete_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move { mux!(self, |conn| conn.eval_delete_if_value(key, expected)) })
    }

    /// Atomic, through a Lua script.
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            mux!(self, |conn| conn
                .eval_touch_if_value(key, expected, &millis))
        })
    }
}

/// `PX` takes whole milliseconds, at least one, at most [`MAX_TTL_MILLIS`].
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MILLIS)
        .clamp(1, MAX_TTL_MILLIS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(url: &str) -> Result<RedisBackend, ConfigError> {
        RedisBackend::from_url_parts(&CacheUrl::parse(url).unwrap())
    }

    fn node_address(backend: &RedisBackend) -> (&str, u16) {
        match &backend.target {
            Target::Node(pool) => pool.address(),
            Target::Sentinel(_) => panic!("not a single node"),
        }
    }

    #[test]
    fn url_with_database_credentials_and_tuning_is_parsed() {
        let backend = backend(
            "redis://app:pa%3Ass@cache:6380/3?connect_timeout_ms=50&timeout_ms=70&pool_size=2&max_connections=4&backoff_ms=10&max_backoff_ms=20",
        )
        .unwrap();
        assert_eq!(backend.server(), "cache:6380");
        assert_eq!(node_address(&backend), ("cache", 6380));
        assert_eq!(backend.db, 3);
        assert_eq!(backend.username.as_deref(), Some("app"));
        assert_eq!(backend.password.as_deref(), Some("pa:ss"));
        assert_eq!(backend.settings.connect_timeout, Duration::from_millis(50));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.pool_size, 2);
        assert_eq!(backend.settings.max_connections, 4);
        assert_eq!(backend.settings.backoff, Duration::from_millis(10));
        assert_eq!(backend.settings.max_backoff, Duration::from_millis(20));
    }

    #[test]
    fn escaped_delimiters_in_credentials_reach_auth_as_written() {
        let backend = backend("redis://ad%3Amin%40x:pa%3Ass%2C@cache:6380").unwrap();
        assert_eq!(backend.username.as_deref(), Some("ad:min@x"));
        assert_eq!(backend.password.as_deref(), Some("pa:ss,"));
        assert_eq!(node_address(&backend), ("cache", 6380));
        let backend = backend_or_err("redis://:p%40ss@a%2Cb:1");
        assert!(backend.is_err(), "a host with a decoded comma is refused");
    }

    fn backend_or_err(url: &str) -> Result<RedisBackend, ConfigError> {
        RedisBackend::from_url_parts(&CacheUrl::parse(url)?)
    }

    fn sentinel_backend(url: &str) -> Result<RedisBackend, ConfigError> {
        RedisBackend::from_sentinel_url(&CacheUrl::parse(url)?)
    }

    #[test]
    fn sentinel_urls_take_sentinels_service_database_and_both_credentials() {
        let backend = sentinel_backend(
            "redis+sentinel://app:m4ster@a:26380,b,[::1]:26381/cache?db=3&sentinel_username=watch&sentinel_password=w4tch&timeout_ms=70&max_connections=5",
        )
        .unwrap();
        let Target::Sentinel(sentinel) = &backend.target else {
            panic!("a sentinel backend");
        };
        assert_eq!(sentinel.config.service, "cache");
        assert_eq!(
            sentinel.config.addresses(),
            ["a:26380", "b:26379", "[::1]:26381"]
        );
        assert_eq!(sentinel.credentials(), (Some("watch"), Some("w4tch")));
        assert_eq!(backend.db, 3);
        assert_eq!(backend.username.as_deref(), Some("app"));
        assert_eq!(backend.password.as_deref(), Some("m4ster"));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.max_connections, 5);
        assert_eq!(
            backend.server(),
            "cache (sentinels a:26380,b:26379,[::1]:26381)"
        );
        let shown = format!("{backend:?}");
        assert!(
            !shown.contains("m4ster") && !shown.contains("w4tch"),
            "{shown}"
        );
        assert!(
            shown.contains("watch"),
            "the sentinel user is shown: {shown}"
        );

        let plain = sentinel_backend("redis+sentinel://a/cache?sentinel_password=w4tch").unwrap();
        let Target::Sentinel(sentinel) = &plain.target else {
            panic!("a sentinel backend");
        };
        assert_eq!(sentinel.credentials(), (None, Some("w4tch")));
        assert_eq!(plain.password, None);

        let built = RedisBackend::sentinel(["a:26379"], "cache")
            .unwrap()
            .sentinel_password(Some("watch"), "w4tch")
            .password(None, "m4ster")
            .database(1);
        let Target::Sentinel(sentinel) = &built.target else {
            panic!("a sentinel backend");
        };
        assert_eq!(sentinel.credentials(), (Some("watch"), Some("w4tch")));
        assert_eq!(built.db, 1);
    }

    #[test]
    fn bad_sentinel_urls_are_clear_errors_without_secrets() {
        for url in [
            "redis+sentinel://a:26379",
            "redis+sentinel://a:26379/",
            "redis+sentinel://a:26379/cache/2",
            "redis+sentinel:///cache",
            "redis+sentinel://a:0/cache",
            "redis+sentinel://a/cache?db=x",
            "redis+sentinel://a/cache?sentinel_username=watch",
            "redis+sentinel://a/cache?colour=blue&sentinel_password=w4tch",
            "redis+sentinel://m:m4ster@a/cache?timeout_ms=0&sentinel_password=w4tch",
            "redis+sentinel://a/cache?insecure=true",
        ] {
            let Err(err) = sentinel_backend(url) else {
                panic!("{url} was accepted");
            };
            let shown = format!("{err} {err:?}");
            assert!(
                !shown.contains("m4ster") && !shown.contains("w4tch"),
                "{shown}"
            );
        }
        let err = sentinel_backend("redis+sentinel://a/cache?colour=blue")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sentinel_password") && err.contains("db"),
            "{err}"
        );
    }

    #[test]
    fn password_only_and_defaults() {
        let backend = backend("redis://:secret@[::1]").unwrap();
        assert_eq!(node_address(&backend), ("::1", DEFAULT_PORT));
        assert_eq!(backend.db, 0);
        assert_eq!(backend.username, None);
        assert_eq!(backend.password.as_deref(), Some("secret"));
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
            "redis://a:1?insecure=true",
            "rediss://a:1?ca=/no/such/ca.pem",
        ] {
            assert!(backend(url).is_err(), "{url} was accepted");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_it() {
        let err = backend("rediss://a:1").unwrap_err().to_string();
        assert!(err.contains("\"tls\""), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn rediss_verifies_by_default_and_insecure_says_so() {
        let secure = backend("rediss://a:1?insecure=true&timeout_ms=70").unwrap();
        assert_eq!(secure.settings.timeout, Duration::from_millis(70));
        let err = backend("rediss://a:1?colour=blue").unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn ttls_are_whole_milliseconds_of_at_least_one() {
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(
            ttl_millis(Duration::from_secs(30 * 24 * 3600)),
            2_592_000_000
        );
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::MAX), MAX_TTL_MILLIS);
        assert_eq!(ttl_millis(Duration::from_secs(u64::MAX)), MAX_TTL_MILLIS);
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
