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
//!   never queue behind one socket.
//! - **Failures.** Each call runs under deadlines, not per-read timeouts:
//!   connecting (DNS included) within 250 ms and all of the call's reads and
//!   writes within 1 s by default, so a server trickling its reply cannot
//!   hold a caller longer (see the `endpoint` module). After an I/O failure
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
//! - **Expiry.** memcached reads an expiration above 30 days as an absolute
//!   Unix time, so longer TTLs are sent as one, capped at `i32::MAX`
//!   (January 2038), the largest memcached parses: a longer TTL is kept as
//!   long as memcached can, rather than refused (`CLIENT_ERROR`) or, wrapped
//!   past 2038, stored already expired. Sub-second TTLs and zero round up to
//!   one second, memcached's resolution (its `0` means "never expires").

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::endpoint::{self, Budget, DeadlineStream, Health, Settings, lock};
pub use super::endpoint::{
    DEFAULT_BACKOFF, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BACKOFF, DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
};
use super::{Backend, BackendError};
use crate::common::MAX_KEY_LEN;
use crate::common::error::ConfigError;
use crate::common::hash::fnv1a;
use crate::common::url::CacheUrl;

/// The port memcached listens on when a server is named without one.
pub const DEFAULT_PORT: u16 = 11211;

/// memcached's largest possible item (its `-I` setting tops out at 1 GiB):
/// a reply claiming more is not from a memcached, and is refused before a
/// byte of it is read.
const MAX_ITEM: usize = 1 << 30;

/// Expirations above this many seconds are Unix times to memcached.
const MAX_RELATIVE_EXPIRATION: u64 = 30 * 24 * 60 * 60;
/// The latest absolute expiration memcached parses (it reads a 32-bit
/// signed number): 2038-01-19.
const MAX_ABSOLUTE_EXPIRATION: u64 = i32::MAX as u64;
/// Request bytes written before reading replies, for `get` batches. Well
/// under any socket buffer, so the write never waits on a server that is
/// itself waiting for us to read.
const MAX_PIPELINED_REQUEST: usize = 32 * 1024;
/// Keys named in one `get` command: a bounded request line, of at most
/// ~25 KB with the longest keys.
const MAX_KEYS_PER_GET: usize = 100;
/// `set`s written before reading their replies. Each reply is at most a
/// short line, so a batch's replies fit in a socket buffer.
const MAX_PIPELINED_SETS: usize = 256;
/// Values at least this large are written straight to the socket instead of
/// being copied into the request buffer.
const DIRECT_WRITE: usize = 16 * 1024;
/// The longest reply line memo accepts; real ones are under 300 bytes.
const MAX_LINE: usize = 1024;

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
            servers,
            settings: Settings::default(),
        })
    }

    endpoint::tuning_setters!();

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
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        if url.userinfo.is_some() {
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
        Ok(backend)
    }

    /// The index of the server holding `key`: the one whose hash with the
    /// key scores highest (rendezvous hashing).
    fn pick(&self, key: &str) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        let key_hash = fnv1a(key.bytes());
        let mut best = 0;
        let mut best_score = 0;
        for (index, server) in self.servers.iter().enumerate() {
            let score = mix(key_hash ^ server.seed);
            if index == 0 || score > best_score {
                best = index;
                best_score = score;
            }
        }
        best
    }

    /// Groups `keys` (by position) per server, in server order.
    fn partition<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        let mut groups = vec![Vec::new(); self.servers.len()];
        for (position, key) in keys.enumerate() {
            groups[self.pick(key)].push(position);
        }
        groups
    }

    fn run<T>(
        &self,
        server: usize,
        mut op: impl FnMut(&mut Conn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        self.servers[server].run(&self.settings, &mut op)
    }
}

impl Backend for MemcachedBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        check_key(key)?;
        let mut values = self.run(self.pick(key), |conn| conn.get_many(&[key], None))?;
        Ok(values.pop().flatten())
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        keys.iter().try_for_each(|key| check_key(key))?;
        let mut values = vec![None; keys.len()];
        for (server, positions) in self.partition(keys.iter().copied()).into_iter().enumerate() {
            if positions.is_empty() {
                continue;
            }
            let server_keys: Vec<&str> = positions.iter().map(|&p| keys[p]).collect();
            let found = self.run(server, |conn| conn.get_many(&server_keys, None))?;
            for (position, value) in positions.into_iter().zip(found) {
                values[position] = value;
            }
        }
        Ok(values)
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| {
            conn.store("set", key, value, exptime)?.stored(key)
        })
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        items.iter().try_for_each(|(key, _)| check_key(key))?;
        let exptime = expiration(ttl);
        let mut first_error = None;
        for (server, positions) in self
            .partition(items.iter().map(|(key, _)| *key))
            .into_iter()
            .enumerate()
        {
            if positions.is_empty() {
                continue;
            }
            let server_items: Vec<(&str, &[u8])> = positions.iter().map(|&p| items[p]).collect();
            // Every server gets its share even when another failed, so one
            // dead server costs only its own keys.
            if let Err(err) = self.run(server, |conn| conn.set_many(&server_items, exptime)) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| {
            match conn.store("add", key, value, exptime)? {
                Reply::Stored => Ok(true),
                Reply::NotStored => Ok(false),
                other => Err(other.unexpected("add")),
            }
        })
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        check_key(key)?;
        let exptime = expiration(ttl);
        self.run(self.pick(key), |conn| {
            conn.send(format!("touch {key} {exptime}\r\n").as_bytes())?;
            match conn.reply()? {
                Reply::Touched => Ok(true),
                Reply::NotFound => Ok(false),
                other => Err(other.unexpected("touch")),
            }
        })
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        check_key(key)?;
        self.run(self.pick(key), |conn| conn.delete(key))
    }

    /// Atomic: reads the value with its CAS token (`gets`) and deletes with
    /// a meta delete conditioned on that token (`md key C<cas>`), so a value
    /// replaced in between is left alone. On a server older than 1.6, which
    /// has no meta commands, it falls back to a plain delete.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        check_key(key)?;
        self.run(self.pick(key), |conn| {
            let mut cas = None;
            let current = conn.get_many(&[key], Some(&mut cas))?.pop().flatten();
            let Some(cas) = cas.filter(|_| current.as_deref() == Some(expected)) else {
                return Ok(false);
            };
            conn.send(format!("md {key} C{cas}\r\n").as_bytes())?;
            match conn.reply()? {
                Reply::Meta(code) if code == "HD" => Ok(true),
                Reply::Meta(code) if code == "NF" || code == "EX" => Ok(false),
                Reply::Error => conn.delete(key),
                other => Err(other.unexpected("md")),
            }
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
            let mut cas = None;
            let current = conn.get_many(&[key], Some(&mut cas))?.pop().flatten();
            let Some(cas) = cas.filter(|_| current.as_deref() == Some(expected)) else {
                return Ok(false);
            };
            conn.out.clear();
            let header = format!("cas {key} 0 {exptime} {} {cas}\r\n", expected.len());
            conn.out.extend_from_slice(header.as_bytes());
            conn.push(expected)?;
            conn.out.extend_from_slice(b"\r\n");
            conn.flush()?;
            match conn.reply()? {
                Reply::Stored => Ok(true),
                Reply::Exists | Reply::NotFound => Ok(false),
                other => Err(other.unexpected("cas")),
            }
        })
    }
}

/// One memcached server: its address, its idle connections and its health.
struct Server {
    name: String,
    host: String,
    port: u16,
    seed: u64,
    idle: Mutex<Vec<Conn>>,
    health: Health,
}

impl Server {
    fn new(address: &str) -> Result<Server, ConfigError> {
        let (host, port) = endpoint::split_host_port(address, DEFAULT_PORT)?;
        Ok(Server {
            name: address.to_owned(),
            seed: fnv1a(address.bytes()),
            host,
            port,
            idle: Mutex::new(Vec::new()),
            health: Health::default(),
        })
    }

    /// Runs `op` on a pooled connection, within one [`Budget`]. A
    /// connection that turns out to be stale (the server restarted since it
    /// was pooled) is replaced once with a fresh one, inside the same
    /// budget; any other transport failure drops the connection and starts
    /// a back-off.
    fn run<T>(
        &self,
        settings: &Settings,
        op: &mut dyn FnMut(&mut Conn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let what = || format!("memcached {}", self.name);
        self.health.admit(&what, settings)?;
        let mut budget = Budget::start(settings);
        let mut replaced = false;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => match self.connect(&mut budget) {
                    Ok(conn) => (conn, false),
                    Err(err) => {
                        return Err(self.health.failed(&what, settings, "cannot connect", err));
                    }
                },
            };
            conn.reader.get_mut().set_deadline(budget.io_by);
            match op(&mut conn) {
                Ok(value) => {
                    self.release(conn, settings);
                    self.health.succeeded(&what);
                    return Ok(value);
                }
                Err(OpError::Refused(message)) => {
                    self.release(conn, settings);
                    self.health.succeeded(&what);
                    return Err(BackendError::new(format!("{}: {message}", what())));
                }
                Err(OpError::Rejected(message)) => {
                    // The server is up and answered; only this connection
                    // may be out of step, so it alone is dropped.
                    self.health.succeeded(&what);
                    return Err(BackendError::new(format!("{}: {message}", what())));
                }
                Err(OpError::Io(err)) if reused && !replaced && is_stale(&err) => {
                    // Every idle connection dates from before the restart.
                    lock(&self.idle).clear();
                    replaced = true;
                    continue;
                }
                Err(OpError::Io(err)) => {
                    return Err(self.health.failed(&what, settings, "I/O failed", err));
                }
                Err(OpError::Protocol(message)) => {
                    let err = io::Error::new(io::ErrorKind::InvalidData, message);
                    return Err(self
                        .health
                        .failed(&what, settings, "sent a malformed reply", err));
                }
            }
        }
    }

    /// An idle connection fit for reuse; those with stray bytes waiting or
    /// closed by the server are dropped on the way.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let conn = lock(&self.idle).pop()?;
            if conn.reader.get_ref().is_clean() {
                return Some(conn);
            }
        }
    }

    fn connect(&self, budget: &mut Budget) -> io::Result<Conn> {
        budget.connect(&self.host, self.port, |stream| {
            Ok(Conn {
                reader: BufReader::with_capacity(64 * 1024, stream),
                out: Vec::new(),
            })
        })
    }

    /// Pools `conn` unless the pool is full or a reply was left half read.
    fn release(&self, conn: Conn, settings: &Settings) {
        if !conn.reader.buffer().is_empty() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < settings.pool_size {
            idle.push(conn);
        }
    }
}

/// A failed operation, by what it means for the connection and the server.
enum OpError {
    /// The socket failed or timed out: drop the connection, back off.
    Io(io::Error),
    /// The server said something memo cannot follow: the connection is out
    /// of step, so drop it and back off.
    Protocol(String),
    /// The server refused the request (a value too large, out of memory)
    /// but the connection is in step and the server is fine.
    Refused(String),
    /// The server answered with an error where the connection may now be
    /// out of step (`CLIENT_ERROR`, which can make memcached read our data
    /// as commands; an error inside a `get` reply): drop the connection,
    /// but the server is up, so no back-off.
    Rejected(String),
}

impl From<io::Error> for OpError {
    fn from(err: io::Error) -> Self {
        OpError::Io(err)
    }
}

/// A one-line reply to a storage, touch or delete command.
#[derive(Debug)]
enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Touched,
    Deleted,
    /// A meta command's status code (`HD`, `NF`, `EX`, ...).
    Meta(String),
    /// `ERROR`: the server does not know the command.
    Error,
}

impl Reply {
    fn stored(self, key: &str) -> Result<(), OpError> {
        match self {
            Reply::Stored => Ok(()),
            other => Err(OpError::Protocol(format!(
                "unexpected reply {other:?} to set {key}"
            ))),
        }
    }

    fn unexpected(self, command: &str) -> OpError {
        OpError::Protocol(format!("unexpected reply {self:?} to {command}"))
    }
}

/// An open connection: a buffered reader over the socket, and a buffer the
/// next request is assembled in.
struct Conn {
    reader: BufReader<DeadlineStream>,
    out: Vec<u8>,
}

impl Conn {
    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(request)
    }

    /// Appends `bytes` to the request, writing large ones straight to the
    /// socket (after what is already buffered) rather than copying them.
    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_WRITE {
            self.flush()?;
            self.send(bytes)
        } else {
            self.out.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let result = self.reader.get_mut().write_all(&self.out);
            self.out.clear();
            result?;
        }
        Ok(())
    }

    /// Fetches `keys` (one server's share), in pipelined `get` commands of
    /// bounded size; with `cas`, one key with `gets` and its CAS token.
    fn get_many(
        &mut self,
        keys: &[&str],
        mut cas: Option<&mut Option<u64>>,
    ) -> Result<Vec<Option<Vec<u8>>>, OpError> {
        let command = if cas.is_some() { "gets" } else { "get" };
        let mut values = Vec::with_capacity(keys.len());
        let mut start = 0;
        while start < keys.len() {
            // Write as many `get` commands as fit the pipelining budget...
            let mut end = start;
            let mut batches = Vec::new();
            self.out.clear();
            while end < keys.len() && (end == start || self.out.len() < MAX_PIPELINED_REQUEST) {
                let batch_start = end;
                self.out.extend_from_slice(command.as_bytes());
                while end < keys.len() && end - batch_start < MAX_KEYS_PER_GET {
                    self.out.push(b' ');
                    self.out.extend_from_slice(keys[end].as_bytes());
                    end += 1;
                }
                self.out.extend_from_slice(b"\r\n");
                batches.push(batch_start..end);
            }
            self.flush()?;
            // ...then read their answers, in order.
            for batch in batches {
                let wanted = &keys[batch];
                let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
                let mut next = 0;
                loop {
                    let line = self.line()?;
                    if line == "END" {
                        break;
                    }
                    if line.starts_with("SERVER_ERROR") || line.starts_with("CLIENT_ERROR") {
                        return Err(OpError::Rejected(line));
                    }
                    let (key, length, token) = parse_value_line(&line)?;
                    // memcached answers in request order, skipping misses.
                    let offset = wanted[next..]
                        .iter()
                        .position(|wanted| *wanted == key)
                        .ok_or_else(|| {
                            OpError::Protocol(format!("reply for a key not asked for: {key:?}"))
                        })?;
                    next += offset;
                    found[next] = Some(self.data(length)?);
                    if let Some(cas) = cas.as_deref_mut() {
                        *cas = token;
                    }
                    next += 1;
                }
                values.extend(found);
            }
            start = end;
        }
        Ok(values)
    }

    fn store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> Result<Reply, OpError> {
        self.out.clear();
        self.push_store(command, key, value, exptime)?;
        self.flush()?;
        self.reply()
    }

    fn push_store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> io::Result<()> {
        let header = format!("{command} {key} 0 {exptime} {}\r\n", value.len());
        self.out.extend_from_slice(header.as_bytes());
        self.push(value)?;
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Pipelines the `set`s in batches, reading each batch's replies before
    /// writing the next. Every reply is read even after a refusal, so the
    /// connection stays in step; the first refusal is returned.
    fn set_many(&mut self, items: &[(&str, &[u8])], exptime: u64) -> Result<(), OpError> {
        let mut refused = None;
        for batch in items.chunks(MAX_PIPELINED_SETS) {
            self.out.clear();
            for (key, value) in batch {
                self.push_store("set", key, value, exptime)?;
            }
            self.flush()?;
            for (key, _) in batch {
                match self.reply() {
                    Ok(Reply::Stored) => {}
                    Err(OpError::Refused(message)) => {
                        refused.get_or_insert(format!("set {key}: {message}"));
                    }
                    Ok(other) => return Err(other.unexpected("set")),
                    Err(err) => return Err(err),
                }
            }
        }
        refused.map_or(Ok(()), |message| Err(OpError::Refused(message)))
    }

    fn delete(&mut self, key: &str) -> Result<bool, OpError> {
        self.send(format!("delete {key}\r\n").as_bytes())?;
        match self.reply()? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(other.unexpected("delete")),
        }
    }

    fn reply(&mut self) -> Result<Reply, OpError> {
        let line = self.line()?;
        Ok(match line.as_str() {
            "STORED" => Reply::Stored,
            "NOT_STORED" => Reply::NotStored,
            "EXISTS" => Reply::Exists,
            "NOT_FOUND" => Reply::NotFound,
            "TOUCHED" => Reply::Touched,
            "DELETED" => Reply::Deleted,
            "ERROR" => Reply::Error,
            _ => {
                if let Some(message) = line.strip_prefix("SERVER_ERROR ") {
                    return Err(OpError::Refused(message.to_owned()));
                }
                if let Some(message) = line.strip_prefix("CLIENT_ERROR ") {
                    // The server may now read our data as commands.
                    return Err(OpError::Rejected(format!("client error: {message}")));
                }
                let code = line.split(' ').next().unwrap_or_default();
                if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                    Reply::Meta(code.to_owned())
                } else {
                    return Err(OpError::Protocol(format!("unexpected reply {line:?}")));
                }
            }
        })
    }

    /// One reply line without its `\r\n`, refusing lines longer than any
    /// memcached sends so a confused peer cannot make memo buffer forever.
    fn line(&mut self) -> Result<String, OpError> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(OpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(OpError::Protocol(
                "reply line too long or cut short".to_owned(),
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| OpError::Protocol("reply line is not UTF-8".to_owned()))
    }

    /// A value's `length` bytes and the `\r\n` after them. The buffer grows
    /// as bytes arrive, so a bogus length cannot allocate in advance.
    fn data(&mut self, length: usize) -> Result<Vec<u8>, OpError> {
        let mut data = Vec::with_capacity(length.min(1 << 20));
        let read = (&mut self.reader)
            .take(length as u64)
            .read_to_end(&mut data)?;
        let mut end = [0u8; 2];
        if read < length {
            return Err(OpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        self.reader.read_exact(&mut end)?;
        if end != *b"\r\n" {
            return Err(OpError::Protocol("value not followed by \\r\\n".to_owned()));
        }
        Ok(data)
    }
}

/// Takes apart `VALUE <key> <flags> <bytes> [<cas>]`. Anything else,
/// `SERVER_ERROR` included, leaves the rest of the reply unaccounted for,
/// so it is a protocol error and the connection is dropped.
fn parse_value_line(line: &str) -> Result<(&str, usize, Option<u64>), OpError> {
    let bad = || OpError::Protocol(format!("unexpected line in a get reply: {line:?}"));
    let mut parts = line.split(' ');
    if parts.next() != Some("VALUE") {
        return Err(bad());
    }
    let key = parts.next().ok_or_else(bad)?;
    let _flags: u32 = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let length = parts
        .next()
        .and_then(|l| l.parse().ok())
        .filter(|&length| length <= MAX_ITEM)
        .ok_or_else(bad)?;
    let cas = match parts.next() {
        Some(token) => Some(token.parse().map_err(|_| bad())?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((key, length, cas))
}

/// Rejects keys memcached would refuse or misread: empty, longer than 250
/// bytes, or holding a space or control character (which would end the key
/// and let the rest be read as protocol).
fn check_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(BackendError::new(format!(
            "memcached keys are 1 to {MAX_KEY_LEN} bytes; got {} bytes",
            key.len()
        )));
    }
    if key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(BackendError::new(format!(
            "memcached keys cannot hold spaces or control characters: {key:?}"
        )));
    }
    Ok(())
}

/// The `exptime` for `ttl`: whole seconds, rounded up (memcached's
/// resolution is a second, and zero would mean "never expires"); above 30
/// days, the Unix time it ends at, as memcached reads such values, capped
/// at the latest one memcached parses. Should that cap ever be in the past
/// or too near (a clock past 2038), 30 days, the longest relative TTL.
fn expiration(ttl: Duration) -> u64 {
    let seconds = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .max(1);
    if seconds <= MAX_RELATIVE_EXPIRATION {
        return seconds;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let at = now.saturating_add(seconds).min(MAX_ABSOLUTE_EXPIRATION);
    if at <= now.saturating_add(MAX_RELATIVE_EXPIRATION) {
        return MAX_RELATIVE_EXPIRATION;
    }
    at
}

/// Whether `err` is what a pooled connection to a restarted server gives on
/// its first use: the peer closed or reset it, not a timeout.
fn is_stale(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// SplitMix64's finalizer: spreads FNV's weak high bits, so that each
/// server's score is an independent-looking function of the key.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
            "memcached://a:1,b,[::1]:3?connect_timeout_ms=50&timeout_ms=70&pool_size=3&backoff_ms=10&max_backoff_ms=20",
        )
        .unwrap();
        assert_eq!(backend.servers(), ["a:1", "b", "[::1]:3"]);
        let ports: Vec<u16> = backend.servers.iter().map(|s| s.port).collect();
        assert_eq!(ports, [1, DEFAULT_PORT, 3]);
        assert_eq!(backend.servers[2].host, "::1");
        assert_eq!(backend.settings.connect_timeout, Duration::from_millis(50));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.pool_size, 3);
        assert_eq!(backend.settings.backoff, Duration::from_millis(10));
        assert_eq!(backend.settings.max_backoff, Duration::from_millis(20));
    }

    #[test]
    fn defaults_are_short_timeouts() {
        let backend = backend("memcached://127.0.0.1:11211").unwrap();
        assert_eq!(backend.settings.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(backend.settings.timeout, DEFAULT_TIMEOUT);
        assert_eq!(backend.settings.pool_size, DEFAULT_POOL_SIZE);
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
    fn long_ttls_become_unix_times() {
        assert_eq!(expiration(Duration::from_millis(1)), 1);
        assert_eq!(expiration(Duration::from_millis(1500)), 2);
        assert_eq!(expiration(Duration::from_secs(60)), 60);
        // memo's default expiration is exactly 30 days: still relative.
        assert_eq!(
            expiration(Duration::from_secs(MAX_RELATIVE_EXPIRATION)),
            MAX_RELATIVE_EXPIRATION
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let absolute = expiration(Duration::from_secs(MAX_RELATIVE_EXPIRATION + 1));
        assert!(
            (now + MAX_RELATIVE_EXPIRATION..now + MAX_RELATIVE_EXPIRATION + 5).contains(&absolute)
        );
        for huge in [
            Duration::from_secs(u64::from(u32::MAX)),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(expiration(huge), MAX_ABSOLUTE_EXPIRATION, "{huge:?}");
        }
        assert_eq!(expiration(Duration::ZERO), 1);
        assert_eq!(expiration(Duration::from_nanos(1)), 1);
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
    fn value_lines_are_parsed_strictly() {
        assert_eq!(parse_value_line("VALUE k 0 5").ok(), Some(("k", 5, None)));
        assert_eq!(
            parse_value_line("VALUE k 0 5 42").ok(),
            Some(("k", 5, Some(42)))
        );
        for bad in [
            "VALUE k 0",
            "VALUE k x 5",
            "VALUE k 0 -1",
            "VALUE k 0 5 x",
            "VALUE k 0 5 1 2",
            "VALUE k 0 1073741825",
            "STORED",
        ] {
            assert!(parse_value_line(bad).is_err(), "{bad}");
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
}
