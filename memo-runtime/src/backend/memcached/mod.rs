//! The memcached backend: one or more memcached servers, spoken to over
//! memcached's text protocol.
//!
//! The client is a small one of memo's own rather than the `memcache` crate,
//! because what memo needs from a client is exactly where that crate gets in
//! the way: it builds its connection pools eagerly (so a server that is down
//! when the service starts makes configuration fail), places keys by
//! `hash % servers` with Rust's unstable `DefaultHasher`, has no multi-key
//! store and no notion of a server that should be skipped for a while after
//! it failed, nor a deadline for a whole call. The text protocol memo uses
//! is a handful of commands (`get` with many keys, `gets`, `set`, `add`,
//! `touch`, `delete`, `cas` for an atomic compare-and-touch, and meta delete
//! for an atomic compare-and-delete), which is less code than adapting the
//! crate.
//!
//! - this file: [`MemcachedBackend`], the client;
//! - `placement`: which server holds a key;
//! - `protocol`: the commands and replies, one sans-IO parser and one
//!   conversation per operation for blocking and async callers;
//! - connections, deadlines and back-off: `backend::net`, shared with Redis.
//!
//! With the `async` feature the same backend also implements
//! [`AsyncBackend`](crate::AsyncBackend) on tokio sockets: one `configure`
//! serves both worlds, over the same placement, per-server health and pool
//! rules, so both read the same entries and a server backed off for one is
//! backed off for the other.
//!
//! What the backend guarantees:
//!
//! - **Placement.** Keys are spread over the servers by rendezvous hashing
//!   on a hash that is fixed by this file (FNV-1a then a SplitMix64 mix), so
//!   every process places a key on the same server, and losing or adding one
//!   server moves only that server's share of the keys.
//! - **Round trips.** `get_many` sends one `get k1 k2 ...` per server (split
//!   into pipelined commands of bounded size, read back in one go), and
//!   `set_many` pipelines its `set`s and reads the replies after each batch.
//!   Replies are read rather than suppressed with `noreply`, so a value the
//!   server refuses (too large, out of memory) is an error, not a silent
//!   loss; batches are small enough that neither side's socket buffer fills
//!   while the other waits.
//! - **Concurrency.** Each server has a pool of idle connections; a caller
//!   takes one (or opens a new one when none is idle), so concurrent callers
//!   never queue behind one socket, up to `max_connections` open per
//!   server (64 by default), past which callers wait within their deadline
//!   for one to come free.
//! - **Failures.** Each call runs under deadlines, not per-read timeouts:
//!   connecting (DNS included) within 250 ms and all of the call's reads and
//!   writes within 1 s by default, so a server trickling its reply cannot
//!   hold a caller longer (see the `net` module). After an I/O failure
//!   or a timeout the server is skipped for a back-off that starts at 500 ms
//!   and doubles up to 5 s: calls for its keys fail at once with a
//!   [`BackendError`] instead of waiting on a dead host, and only one caller
//!   at a time probes it again. The episode is logged once when the server
//!   goes away and once when it is back. An error reply (`CLIENT_ERROR`,
//!   `SERVER_ERROR`) fails that one call only: the server is up, so other
//!   keys must not pay for one refused command.
//! - **In step.** A connection goes back to the pool only after a call that
//!   read exactly the replies it expected; any error that may leave a reply
//!   half read or unread closes it. A pooled connection with bytes waiting
//!   on it, or closed by the server, is never reused, so a stray reply can
//!   never be taken for the answer to a later command.
//! - **TLS.** With the cargo feature `tls`, `memcacheds://` speaks TLS to
//!   every server (memcached 1.6 started with `-Z`), verified against the
//!   system's roots or `?ca=PATH`, with `?cert=PATH&key=PATH` for a client
//!   certificate and `?insecure=true` to skip verification (logged as a
//!   warning). The handshake is paid once per pooled connection, within
//!   the connect timeout (see the `net::tls` module).
//! - **Expiry.** memcached reads an expiration above 30 days as an absolute
//!   Unix time, so longer TTLs are sent as one, capped at `i32::MAX`
//!   (January 2038), the largest memcached parses: a longer TTL is kept as
//!   long as memcached can, rather than refused (`CLIENT_ERROR`) or, wrapped
//!   past 2038, stored already expired. Sub-second TTLs and zero round up to
//!   one second, memcached's resolution (its `0` means "never expires").

use std::time::Duration;

#[cfg(feature = "async")]
// Not imported by name: with both traits in scope, `backend.get(..)`
// would be ambiguous in this module and its tests.
use super::asynchronous as aio;
use super::net::conn::ready;
use super::net::pool::{OpError, Pool, SyncConn, no_handshake};
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
use protocol::{check_key, expiration};

mod placement;
mod protocol;

/// The port memcached listens on when a server is named without one.
pub const DEFAULT_PORT: u16 = 11211;

/// A client for one or more memcached servers.
///
/// Creating one opens no connection, so a service starts even when its
/// cache is down; connections are opened on first use and kept in a pool.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{Config, MemcachedBackend, configure};
///
/// let backend = MemcachedBackend::new(["10.0.0.5:11211", "10.0.0.6:11211"])?
///     .timeout(Duration::from_millis(500))
///     .pool_size(32);
/// assert_eq!(backend.servers(), ["10.0.0.5:11211", "10.0.0.6:11211"]);
/// configure(Config::new(backend).namespace("shop"));
/// # configure(Config::new(memo_runtime::MemoryBackend::new()));
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
///
/// The same from a URL, with every tuning parameter spelled out:
///
/// ```
/// use memo_runtime::Config;
///
/// let config = Config::from_url(
///     "memcached://10.0.0.5:11211,10.0.0.6:11211?namespace=shop\
///      &connect_timeout_ms=100&timeout_ms=500&pool_size=32&backoff_ms=250&max_backoff_ms=2000",
/// )?;
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
#[must_use = "a backend does nothing until passed to Config::new"]
pub struct MemcachedBackend {
    servers: Vec<Server>,
    /// Each server's placement seed, in server order.
    seeds: Vec<u64>,
    settings: Settings,
}

impl std::fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("servers", &self.servers())
            .field("settings", &self.settings)
            .finish()
    }
}

impl MemcachedBackend {
    /// A client for `servers`, each `host:port` (or `host`, port 11211;
    /// IPv6 as `[::1]:11211`), with the default timeouts and pool size.
    ///
    /// Fails only on a malformed address or an empty list: nothing is
    /// resolved or connected until the first call.
    pub fn new<I>(servers: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let servers = servers
            .into_iter()
            .map(|server| Server::new(server.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(ConfigError::Backend(
                "memcached needs at least one server, e.g. 127.0.0.1:11211".to_owned(),
            ));
        }
        Ok(MemcachedBackend {
            seeds: servers.iter().map(|server| server.seed).collect(),
            servers,
            settings: Settings::default(),
        })
    }

    net::tuning_setters!();

    /// Speaks TLS to every server, verifying each as `tls` says (URL:
    /// `memcacheds://`, with `ca`, `cert`, `key` and `insecure`). Each
    /// server's certificate must name its host as given here.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.set_tls(&tls);
        self
    }

    // Without the `tls` feature there is no `TlsConfig` to clone.
    #[cfg_attr(not(feature = "tls"), allow(unreachable_code))]
    fn set_tls(&mut self, tls: &net::TlsConfig) {
        for server in &mut self.servers {
            server.pool.set_tls(tls.clone());
        }
    }

    /// The servers, as given.
    pub fn servers(&self) -> Vec<&str> {
        self.servers.iter().map(|s| s.name.as_str()).collect()
    }

    /// The server `key` is stored on, as given to [`MemcachedBackend::new`].
    /// Every process with the same server list agrees.
    pub fn server_for(&self, key: &str) -> &str {
        &self.servers[self.pick(key)].name
    }

    pub(crate) fn from_url_parts(url: &CacheUrl) -> Result<Self, ConfigError> {
        let (tls, url) = net::split_tls(url, url.scheme == "memcacheds")?;
        let url = &url;
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        if url.username.is_some() {
            return Err(invalid(
                "memcached:// takes no user or password (memcached's text protocol has no authentication)",
            ));
        }
        if !url.path.is_empty() {
            return Err(invalid("memcached:// takes no path"));
        }
        if url.hosts.is_empty() {
            return Err(invalid(
                "memcached:// needs at least one host, e.g. memcached://127.0.0.1:11211",
            ));
        }
        let mut backend = Self::new(&url.hosts)?;
        backend.settings.apply_url_params(url)?;
        if let Some(tls) = tls {
            backend.set_tls(&tls);
        }
        Ok(backend)
    }

    /// The index of the server holding `key`.
    fn pick(&self, key: &str) -> usize {
        placement::pick(&self.seeds, key)
    }

    /// Runs `op` on a pooled blocking connection to `server`; the
    /// conversation is the async one, complete in one poll (`net::conn`).
    fn run<T>(
        &self,
        server: usize,
        mut op: impl FnMut(&mut SyncConn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        self.servers[server]
            .pool
            .run(&self.settings, &no_handshake, &mut op)
    }

    /// The servers holding `keys`, each with the positions of its keys.
    fn by_server<'k>(
        &self,
        keys: impl Iterator<Item = &'k str>,
    ) -> impl Iterator<Item = (usize, Vec<usize>)> {
        placement::partition(&self.seeds, keys)
            .into_iter()
            .enumerate()
            .filter(|(_, positions)| !positions.is_empty())
    }
}

impl Backend for MemcachedBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        check_key(key)?;
        let mut values = self.run(self.pick(key), |conn| ready(conn.get_many(&[key], None)))?;
        Ok(values.pop().flatten())
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().try_for_each(|key| check_key(key))?;
        let mut values = vec![None; keys.len()];
        for (server, positions) in self.by_server(keys.iter().copied()) {
            let server_keys: Vec<&str> = positions.iter().map(|&p| keys[p]).collect();
            let found = self.run(server, |conn| ready(conn.get_many(&server_keys, None)))?;
            for (position, value) in positions.into_iter().zip(found) {
                values[position] = value;
            }
        }
        Ok(values)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| ready(conn.set(key, value, exptime)))
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        items.iter().try_for_each(|(key, _)| check_key(key))?;
        let exptime = expiration(ttl);
        let mut first_error = None;
        for (server, positions) in self.by_server(items.iter().map(|(key, _)| *key)) {
            let server_items: Vec<(&str, &[u8])> = positions.iter().map(|&p| items[p]).collect();
            // Every server gets its share even when another failed, so one
            // dead server costs only its own keys.
            if let Err(err) = self.run(server, |conn| ready(conn.set_many(&server_items, exptime)))
            {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| ready(conn.add(key, value, exptime)))
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| ready(conn.touch(key, exptime)))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        check_key(key)?;
        self.run(self.pick(key), |conn| ready(conn.delete(key)))
    }

    /// Atomic: reads the value with its CAS token (`gets`) and deletes with
    /// a meta delete conditioned on that token (`md key C<cas>`), so a value
    /// replaced in between is left alone. On a server older than 1.6, which
    /// has no meta commands, it falls back to a plain delete.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        check_key(key)?;
        self.run(self.pick(key), |conn| {
            ready(conn.delete_if_value(key, expected))
        })
    }

    /// Atomic: reads the value with its CAS token (`gets`) and stores the
    /// same bytes back with the new expiration under that token (`cas`),
    /// so a value replaced in between is neither extended nor overwritten.
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| {
            ready(conn.touch_if_value(key, expected, exptime))
        })
    }

    /// The same client serves async callers natively, on tokio sockets.
    #[cfg(feature = "async")]
    fn __async(self: std::sync::Arc<Self>) -> Option<std::sync::Arc<dyn aio::AsyncBackend>> {
        Some(self)
    }
}

/// Runs one async call on `$server`'s pool (see `net::tokio_io`).
#[cfg(feature = "async")]
macro_rules! run {
    ($self:ident, $server:expr, |$conn:ident| $op:expr) => {
        run_async!(
            &$self.servers[$server].pool,
            &$self.settings,
            handshake: |_conn| async { Ok::<(), OpError>(()) },
            op: |$conn| $op,
        )
    };
}

/// Runs one small async call over `$server`'s multiplexed connection for
/// the current runtime (see `net::mux`): pipelined with the other calls in
/// flight, under the same deadlines, health and rules as `run!`.
///
/// Not over TLS: memcached 1.6.18 with `-Z` stalls on pipelined commands
/// that share a TLS record with the one before them (it waits on the
/// socket while the next command sits decrypted in its TLS buffer), so a
/// TLS server gets one call per connection, from the pool.
#[cfg(feature = "async")]
macro_rules! mux {
    ($self:ident, $server:expr, |$conn:ident| $op:expr) => {
        if $self.servers[$server].pool.tls().is_some() {
            run!($self, $server, |$conn| $op)
        } else {
            run_mux!(
                &$self.servers[$server].pool,
                &$self.settings,
                count: protocol::split_request,
                framing: protocol::FRAMING,
                handshake: |_conn| async { Ok::<(), OpError>(()) },
                op: |$conn| $op,
            )
        }
    };
}

/// The same operations, placement, health and rules as the blocking
/// client, over tokio sockets: nothing here blocks the executor.
/// Single-key commands and reads of a few keys are pipelined with the
/// other calls in flight on one multiplexed connection per server and
/// runtime (`net::mux`); large values use the pools.
#[cfg(feature = "async")]
impl aio::AsyncBackend for MemcachedBackend {
    fn get<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            check_key(key)?;
            let mut values = mux!(self, self.pick(key), |conn| conn.get_many(&[key], None))?;
            Ok(values.pop().flatten())
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> aio::BackendFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            keys.iter().try_for_each(|key| check_key(key))?;
            let mut values = vec![None; keys.len()];
            for (server, positions) in self.by_server(keys.iter().copied()) {
                let server_keys: Vec<&str> = positions.iter().map(|&p| keys[p]).collect();
                // Pipelined like a single key: an async lookup reads its
                // entry with the version tokens (a few keys); the chunks
                // of a large value are read by the blocking pipeline.
                let found = mux!(self, server, |conn| conn.get_many(&server_keys, None))?;
                for (position, value) in positions.into_iter().zip(found) {
                    values[position] = value;
                }
            }
            Ok(values)
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(async move {
            check_key(key)?;
            let exptime = expiration(ttl);
            if value.len() <= super::net::mux::MAX_VALUE {
                mux!(self, self.pick(key), |conn| conn.set(key, value, exptime))
            } else {
                run!(self, self.pick(key), |conn| conn.set(key, value, exptime))
            }
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(async move {
            items.iter().try_for_each(|(key, _)| check_key(key))?;
            let exptime = expiration(ttl);
            let mut first_error = None;
            for (server, positions) in self.by_server(items.iter().map(|(key, _)| *key)) {
                let server_items: Vec<(&str, &[u8])> =
                    positions.iter().map(|&p| items[p]).collect();
                // As in the blocking client: one dead server costs only its
                // own keys.
                if let Err(err) = run!(self, server, |conn| conn.set_many(&server_items, exptime)) {
                    first_error.get_or_insert(err);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            let exptime = expiration(ttl);
            if value.len() <= super::net::mux::MAX_VALUE {
                mux!(self, self.pick(key), |conn| conn.add(key, value, exptime))
            } else {
                run!(self, self.pick(key), |conn| conn.add(key, value, exptime))
            }
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            let exptime = expiration(ttl);
            mux!(self, self.pick(key), |conn| conn.touch(key, exptime))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            mux!(self, self.pick(key), |conn| conn.delete(key))
        })
    }

    /// Atomic, as [`Backend::delete_if_value`].
    fn delete_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            mux!(self, self.pick(key), |conn| conn
                .delete_if_value(key, expected))
        })
    }

    /// Atomic, as [`Backend::touch_if_value`].
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            check_key(key)?;
            let exptime = expiration(ttl);
            mux!(self, self.pick(key), |conn| conn
                .touch_if_value(key, expected, exptime))
        })
    }
}

/// One memcached server: its name as given, its placement seed and its
/// connections.
#[derive(Debug)]
struct Server {
    name: String,
    seed: u64,
    pool: Pool,
}

impl Server {
    fn new(address: &str) -> Result<Server, ConfigError> {
        let (host, port) = net::split_host_port(address, DEFAULT_PORT)?;
        Ok(Server {
            name: address.to_owned(),
            seed: placement::seed(address),
            pool: Pool::new(format!("memcached {address}"), host, port, ""),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backend(url: &str) -> Result<MemcachedBackend, ConfigError> {
        MemcachedBackend::from_url_parts(&CacheUrl::parse(url).unwrap())
    }

    #[test]
    fn url_with_several_servers_and_tuning_is_parsed() {
        let backend = backend(
            "memcached://a:1,b,[::1]:3?connect_timeout_ms=50&timeout_ms=70&pool_size=3&max_connections=4&backoff_ms=10&max_backoff_ms=20",
        )
        .unwrap();
        assert_eq!(backend.servers(), ["a:1", "b", "[::1]:3"]);
        let ports: Vec<u16> = backend.servers.iter().map(|s| s.pool.address().1).collect();
        assert_eq!(ports, [1, DEFAULT_PORT, 3]);
        assert_eq!(backend.servers[2].pool.address().0, "::1");
        assert_eq!(backend.settings.connect_timeout, Duration::from_millis(50));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.pool_size, 3);
        assert_eq!(backend.settings.max_connections, 4);
        assert_eq!(backend.settings.backoff, Duration::from_millis(10));
        assert_eq!(backend.settings.max_backoff, Duration::from_millis(20));
    }

    #[test]
    fn defaults_are_short_timeouts() {
        let backend = backend("memcached://127.0.0.1:11211").unwrap();
        assert_eq!(backend.settings.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(backend.settings.timeout, DEFAULT_TIMEOUT);
        assert_eq!(backend.settings.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(backend.settings.max_connections, DEFAULT_MAX_CONNECTIONS);
    }

    #[test]
    fn bad_urls_are_clear_errors() {
        for url in [
            "memcached://",
            "memcached://u:p@a:1",
            "memcached://a:1/db",
            "memcached://a:0",
            "memcached://a:70000",
            "memcached://a:port",
            "memcached://::1:11211",
            "memcached://[::1:11211",
            "memcached://a:1?timeout_ms=0",
            "memcached://a:1?timeout_ms=soon",
            "memcached://a:1?pool_size=-1",
            "memcached://a:1?colour=blue",
        ] {
            assert!(backend(url).is_err(), "{url} was accepted");
        }
        let err = backend("memcached://a:1?colour=blue")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timeout_ms"),
            "the error lists known parameters: {err}"
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_it() {
        let err = backend("memcacheds://a:1").unwrap_err().to_string();
        assert!(err.contains("\"tls\""), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn memcacheds_takes_tls_and_tuning_parameters() {
        let backend = backend("memcacheds://a:1,b:2?insecure=true&pool_size=3").unwrap();
        assert_eq!(backend.servers(), ["a:1", "b:2"]);
        assert_eq!(backend.settings.pool_size, 3);
        assert!(self::backend("memcached://a:1?insecure=true").is_err());
    }

    #[test]
    fn placement_is_fixed_across_builds() {
        // Pinned values: if these change, every deployed cache is reshuffled.
        let backend = MemcachedBackend::new(["a:1", "b:2", "c:3"]).unwrap();
        let placed: Vec<&str> = ["k0", "k1", "k2", "k3", "k4", "k5"]
            .iter()
            .map(|key| backend.server_for(key))
            .collect();
        let again = MemcachedBackend::new(["c:3", "a:1", "b:2"]).unwrap();
        for key in ["k0", "k1", "k2", "k3", "k4", "k5"] {
            assert_eq!(
                backend.server_for(key),
                again.server_for(key),
                "order matters not"
            );
        }
        assert_eq!(placed, PINNED_PLACEMENT);
    }

    const PINNED_PLACEMENT: [&str; 6] = ["a:1", "a:1", "b:2", "c:3", "c:3", "c:3"];

    #[test]
    fn keys_spread_evenly_and_a_lost_server_moves_only_its_share() {
        let three = MemcachedBackend::new(["a:1", "b:2", "c:3"]).unwrap();
        let two = MemcachedBackend::new(["a:1", "b:2"]).unwrap();
        let keys: Vec<String> = (0..30_000).map(|i| format!("memo:key:{i}")).collect();
        let mut counts = HashMap::new();
        for key in &keys {
            let server = three.server_for(key);
            *counts.entry(server).or_insert(0) += 1;
            if server != "c:3" {
                assert_eq!(two.server_for(key), server, "{key} moved needlessly");
            }
        }
        for (server, count) in counts {
            assert!(
                (9_000..11_000).contains(&count),
                "{server} holds {count} of 30000"
            );
        }
    }

    #[test]
    fn keys_that_would_break_the_protocol_are_refused() {
        // No server: the key check comes before any connection.
        let backend = MemcachedBackend::new(["127.0.0.1:9"]).unwrap();
        for key in [
            "",
            "two words",
            "line\r\nflush_all",
            "tab\t",
            &"k".repeat(251),
        ] {
            let err = backend.get(key).unwrap_err();
            assert!(err.to_string().contains("memcached keys"), "{key:?}: {err}");
        }
    }

    #[test]
    fn a_dead_server_fails_fast_and_is_skipped_during_back_off() {
        // Port 9 (discard) on loopback is closed: connections are refused.
        let backend = MemcachedBackend::new(["127.0.0.1:9"]).unwrap();
        let started = std::time::Instant::now();
        assert!(backend.set("k", b"v", Duration::from_secs(60)).is_err());
        let err = backend.get("k").unwrap_err().to_string();
        assert!(err.contains("unavailable"), "{err}");
        assert!(started.elapsed() < Duration::from_millis(400));
    }

    /// A server that reads each request line and answers it with `reply`
    /// (or, with `None`, never answers).
    fn fake_server(reply: Option<&'static [u8]>) -> String {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = std::io::BufReader::new(stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if let Some(reply) = reply {
                            if line.starts_with("get ") || line.starts_with("set ") {
                                let _ = writer.write_all(reply);
                            }
                        }
                        line.clear();
                    }
                });
            }
        });
        address
    }

    #[test]
    fn errors_say_what_kind_of_failure_they_are() {
        let quick = |address: &str| {
            MemcachedBackend::new([address])
                .unwrap()
                .timeout(Duration::from_millis(200))
        };
        let refused = MemcachedBackend::new(["127.0.0.1:9"]).unwrap();
        assert!(refused.get("k").unwrap_err().is_connection());
        assert!(
            refused.get("k").unwrap_err().is_connection(),
            "while skipped"
        );

        let silent = quick(&fake_server(None));
        assert!(silent.get("k").unwrap_err().is_timeout());

        let garbage = quick(&fake_server(Some(b"WHAT IS THIS\r\n")));
        assert!(garbage.get("k").unwrap_err().is_protocol());

        let full = quick(&fake_server(Some(b"SERVER_ERROR out of memory\r\n")));
        let err = full.set("k", b"v", Duration::from_secs(60)).unwrap_err();
        assert!(err.is_server_error(), "{err}");
        assert_eq!(err.kind(), crate::BackendErrorKind::Server);
    }
}
