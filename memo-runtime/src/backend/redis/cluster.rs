//! The Redis Cluster backend: a cluster's masters, found from any seed
//! node, each key sent to the master serving its slot.
//!
//! **memo's own client, not the `redis` crate's cluster clients.** memo
//! speaks to a cluster with the same client as to a single node, for the
//! same reasons as there: the crate's
//! connections bound each read rather than the whole call, and cannot
//! tell whether a connection is still in step after an error. Each node
//! here is a `backend::net` pool with its own health, so a cluster node
//! gets the single node's deadlines, pool rules, back-off and TLS.
//!
//! **Routing.** A key's slot is the CRC16 (XMODEM) of the key, or of its
//! hash tag (the text between the first `{` and the next `}`, when not
//! empty), modulo 16384: Redis's own rule, so memo sends each command to
//! the master that owns the key. The slot → master map is read with
//! `CLUSTER SLOTS` from any reachable node (the seeds given, then the
//! nodes already known) and shared by blocking and async callers. Until it
//! is known, commands go to a seed and follow its redirections. Each
//! master's endpoint is read as Redis documents it: an IP address, an
//! announced host name (`cluster-preferred-endpoint-type hostname`, also
//! the name its TLS certificate is checked against), or `NULL` for "the
//! node you asked" (`unknown-endpoint`, nodes behind a load balancer). An
//! entry memo cannot read costs only its slots, which are then reached
//! through redirections, and is logged once, not at every reading.
//!
//! - `MOVED slot host:port`: the slot has a new owner. The command is sent
//!   there at once, the slot is remapped, and the whole map is read again
//!   (at most every 200 ms, by one caller at a time, the others routing by
//!   what they know).
//! - `ASK slot host:port`: a slot in migration; the command is sent to the
//!   target preceded by `ASKING`, and the map is left alone.
//! - `CLUSTERDOWN`, `TRYAGAIN`, a node that cannot be reached or times
//!   out: the call fails (the caller computes its value, as with any cache
//!   failure) and the map is marked stale, so the next call reads it again.
//!   That is how caching resumes by itself after a failover: once a
//!   replica is promoted, `CLUSTER SLOTS` names it and calls go there.
//!
//! Redirections are followed within the call's deadline, at most four
//! times: a whole call, map reading included, costs at most
//! `connect_timeout + timeout`, like a call to one node. A dead node is
//! skipped during its back-off (its calls fail at once), per node.
//!
//! **Batches: split per slot, not hash-tagged.** A large value's chunks
//! and its manifest are read with one `get_many`. `MGET` only works within
//! one slot, so `get_many` groups its keys by slot (one `GET` or `MGET`
//! per slot), groups those commands by master, and sends each master's
//! commands pipelined in one write, reading all their replies in one go:
//! one round trip per master per batch. Async callers reach the masters in
//! parallel on their task. Blocking callers reach them one after the
//! other, except when a batch spans several masters and carries a large
//! value's chunks (at least four keys read, or 64 KiB of values written):
//! then each extra master is reached from a scoped thread of its own, so
//! the batch costs its slowest master's round trip instead of the sum of
//! them, for the price of starting a thread or two (tens of microseconds,
//! small next to moving megabytes). `set_many` does the
//! same with `SET`s (in slices of at most 8 MiB of values per write, as on
//! one node). memo does not give a value's derived keys (chunks, lock) a
//! common hash tag, which would put them in one slot: that would change
//! the keys memo stores (`format::key`), and a large value on one slot
//! would load a single master instead of spreading over all of them.
//!
//! **TLS** (`rediss+cluster://`, `rediss://...?cluster=true`,
//! [`RedisClusterBackend::tls`]): every node's pool gets the same TLS
//! settings, the nodes found from `CLUSTER SLOTS`, `MOVED` and `ASK`
//! included. A node's certificate is checked against the host memo reaches
//! it by: a seed's as given in the URL, a found node's as the cluster
//! announces it (an IP address unless the cluster announces host names),
//! so node certificates need that address as a subject alternative name.
//! With `tls-cluster yes`, Redis 7 announces the TLS ports to TLS clients.
//!
//! **Locks.** `add` is `SET NX`, and the compare-and-delete and
//! compare-and-touch scripts touch one key, so each runs atomically on the
//! master of that key.
//!
//! **Not supported.** A cluster has only database 0, so a database in the
//! URL is refused. Reads go to masters only (a replica may lag behind, and
//! memo checks what it reads but would rather not miss).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[cfg(feature = "async")]
use super::super::asynchronous as aio;
use super::command::{Cmd, Reply, count_round_trip};
use super::protocol::Value;
use super::{DEFAULT_PORT, handshake, pipeline_slices, ttl_millis, url_credentials};
use crate::backend::net::conn::{Conn, Transport, ready};
use crate::backend::net::deadline::later;
#[cfg(feature = "async")]
use crate::backend::net::pool::run_async;
use crate::backend::net::pool::{OpError, Pool, SyncConn};
use crate::backend::net::{self, Settings, address, lock};
use crate::backend::{Backend, BackendError, BackendErrorKind};
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// How many times one call sends a command: the first time and up to four
/// redirections.
const MAX_ROUNDS: usize = 5;

/// The shortest pause between two readings of the slot map, so that a
/// cluster in trouble is not asked for its topology by every call.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// The slot of `key` in a Redis Cluster: CRC16 of the key, or of its hash
/// tag, modulo 16384, as Redis computes it.
///
/// ```
/// use memo_runtime::backend::redis::cluster::key_slot;
///
/// assert_eq!(key_slot("foo"), 12182);
/// assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
/// assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}")); // `{}` is no tag
/// ```
pub fn key_slot(key: &str) -> u16 {
    let key = key.as_bytes();
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A client for a Redis Cluster (or Valkey cluster), reaching every master
/// found from its seed nodes.
///
/// Creating one opens no connection, so a service starts even when its
/// cache is down; the topology is read on first use.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{Config, RedisClusterBackend, configure};
///
/// let backend = RedisClusterBackend::new(["10.0.0.7:7000", "10.0.0.8:7000"])?
///     .password(None, "s3cret")
///     .timeout(Duration::from_millis(500));
/// configure(Config::new(backend).namespace("shop"));
/// # configure(Config::new(memo_runtime::MemoryBackend::new()));
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
///
/// The same from a URL (`redis://...?cluster=true` works too):
///
/// ```
/// use memo_runtime::Config;
///
/// let config = Config::from_url("redis+cluster://:s3cret@10.0.0.7:7000,10.0.0.8:7000?timeout_ms=500")?;
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
#[must_use = "a backend does nothing until passed to Config::new"]
pub struct RedisClusterBackend {
    /// The seed nodes, as `host:port`.
    seeds: Vec<(String, u16)>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) settings: Settings,
    /// How every node's connections speak TLS, when they do.
    pub(super) tls: Option<net::TlsConfig>,
    /// Shared with the invalidation subscriber, which follows the nodes.
    map: Arc<SlotMap>,
}

impl std::fmt::Debug for RedisClusterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClusterBackend")
            .field("seeds", &self.seeds())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// One master (or any node met): its address and connections.
#[derive(Debug)]
struct Node {
    /// `host:port` (`[v6]:port`).
    address: String,
    host: String,
    pool: Pool,
}

/// What the client knows of the cluster, shared by every caller.
#[derive(Debug, Default)]
struct SlotMap {
    /// Each slot's master; empty until the topology was first read.
    slots: RwLock<Vec<Option<Arc<Node>>>>,
    /// Every node met, by address, so that a node keeps its pool and its
    /// health across readings of the map.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    refresh: Mutex<RefreshState>,
    /// Whether a caller is reading the map right now.
    refreshing: AtomicBool,
    /// The last warning about the map, so that a cluster answering the
    /// same odd map at every reading is reported once, not every 200 ms.
    warned: Mutex<String>,
}

#[derive(Debug, Default)]
struct RefreshState {
    loaded: bool,
    /// Something (a redirection, a failed node) says the map is out of date.
    stale: bool,
    last: Option<Instant>,
}

/// Clears `SlotMap::refreshing` when the reading ends, however it ends
/// (an async caller may be cancelled mid-way).
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl SlotMap {
    /// Starts a reading of the map when one is due and none is under way.
    fn start_refresh(&self) -> Option<Refreshing<'_>> {
        let mut state = lock(&self.refresh);
        let due = (!state.loaded || state.stale)
            && state
                .last
                .is_none_or(|last| last.elapsed() >= MIN_REFRESH_INTERVAL);
        if !due || self.refreshing.swap(true, Ordering::AcqRel) {
            return None;
        }
        state.last = Some(Instant::now());
        Some(Refreshing(&self.refreshing))
    }

    /// Logs `warning` unless it is the one logged last.
    fn warn_once(&self, warning: &str) {
        let mut warned = lock(&self.warned);
        if *warned != warning {
            crate::common::diag::warning!("{warning}");
            warning.clone_into(&mut warned);
        }
    }

    fn mark_stale(&self) {
        lock(&self.refresh).stale = true;
    }

    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<Arc<Node>>>> {
        self.slots
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn slots_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Option<Arc<Node>>>> {
        self.slots
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What became of one command sent to a node.
#[derive(Debug)]
enum Outcome {
    Reply(Reply),
    /// `MOVED`: the slot is served by `host:port` now.
    Moved {
        slot: u16,
        host: String,
        port: u16,
    },
    /// `ASK`: this once, ask `host:port`.
    Ask {
        host: String,
        port: u16,
    },
    /// Any other error reply.
    Refused(String),
}

/// The commands of one node in one round, by position in the call, each
/// with whether it goes after an `ASKING`.
type Group = (Arc<Node>, Vec<(usize, bool)>);

impl RedisClusterBackend {
    /// A client for the cluster that `seeds` belong to, each `host:port`
    /// (or `host` for port 6379, IPv6 as `[::1]:7000`); one reachable seed
    /// is enough to find every master.
    ///
    /// Fails only on a malformed address or an empty list: nothing is
    /// resolved or connected until the first call.
    pub fn new<I>(seeds: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let seeds = seeds
            .into_iter()
            .map(|seed| net::split_host_port(seed.as_ref(), DEFAULT_PORT))
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(ConfigError::Backend(
                "Redis Cluster needs at least one seed node, e.g. 127.0.0.1:7000".to_owned(),
            ));
        }
        Ok(RedisClusterBackend {
            seeds,
            username: None,
            password: None,
            settings: Settings::default(),
            tls: None,
            map: Arc::default(),
        })
    }

    /// Authenticates with `password` on every node, as `username` when
    /// given (Redis 6 ACLs) or as the default user (URL:
    /// `redis+cluster://user:password@host:port,...`).
    pub fn password(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.to_owned());
        self
    }

    net::tuning_setters!();

    /// Speaks TLS to every node, verifying it as `tls` says (URL:
    /// `rediss+cluster://`, or `rediss://...?cluster=true`, with `ca`,
    /// `cert`, `key` and `insecure`).
    ///
    /// Each node's certificate must name the node as this client reaches
    /// it: a seed by the host it was given, and a node found from the
    /// cluster (`CLUSTER SLOTS`, `MOVED`, `ASK`) by the address the cluster
    /// announces for it, usually an IP address, so its certificate needs
    /// that IP address as a subject alternative name (or the cluster
    /// announces host names with `cluster-announce-hostname` and
    /// `cluster-preferred-endpoint-type hostname`). With Redis 7's
    /// `tls-cluster yes`, nodes announce their TLS port to TLS clients.
    ///
    /// ```no_run
    /// use memo_runtime::{RedisClusterBackend, TlsConfig};
    ///
    /// let tls = TlsConfig::with_ca_file("/etc/cache/ca.pem")?;
    /// let backend = RedisClusterBackend::new(["10.0.0.7:7000", "10.0.0.8:7000"])?.tls(tls);
    /// # Ok::<(), memo_runtime::ConfigError>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.tls = Some(tls);
        // Forgets any node met by calls made before, with its plaintext pool.
        self.map = Arc::default();
        self
    }

    /// The seed nodes, as `host:port`.
    pub fn seeds(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|(host, port)| address(host, *port))
            .collect()
    }

    /// The master `key` is sent to as far as this client knows (`host:port`
    /// as the cluster names it), or `None` before the topology was read.
    pub fn node_for(&self, key: &str) -> Option<String> {
        let slots = self.map.slots();
        let node = slots.get(usize::from(key_slot(key)))?.as_ref()?;
        Some(node.address.clone())
    }

    /// A client from a `redis+cluster://` URL or a `redis://` one that had
    /// `cluster=true` (the configuration layer takes that parameter out).
    pub(crate) fn from_url_parts(url: &CacheUrl) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: url.url.clone(),
            reason: reason.to_owned(),
        };
        let secure = match url.scheme.as_str() {
            "redis" | "redis+cluster" => false,
            "rediss" | "rediss+cluster" => true,
            _ => {
                return Err(invalid(
                    "a Redis Cluster is reached over redis+cluster:// or redis://...?cluster=true (rediss+cluster:// or rediss://...?cluster=true over TLS)",
                ));
            }
        };
        let (tls, url) = net::split_tls(url, secure)?;
        let url = &url;
        if url.hosts.is_empty() {
            return Err(invalid(
                "a Redis Cluster URL needs at least one node, e.g. redis+cluster://127.0.0.1:7000",
            ));
        }
        if !url.path.is_empty() && url.path != "0" {
            return Err(invalid(
                "Redis Cluster has only database 0 (SELECT is refused in cluster mode); drop the /database",
            ));
        }
        let mut backend = Self::new(&url.hosts)?;
        if let Some((username, password)) = url_credentials(url)? {
            backend = backend.password(username, password);
        }
        backend.settings.apply_url_params(url)?;
        backend.tls = tls;
        Ok(backend)
    }

    /// Runs `op` on one node, for a command any node serves (`PUBLISH`):
    /// the master of `key`'s slot, then the other nodes known, until one
    /// succeeds or the call's deadline passes; the last failure otherwise.
    pub(super) fn on_any_node(
        &self,
        key: &str,
        op: &mut dyn FnMut(&mut SyncConn) -> Result<(), OpError>,
    ) -> Result<(), BackendError> {
        let deadline = later(
            Instant::now(),
            self.settings
                .connect_timeout
                .saturating_add(self.settings.timeout),
        );
        let first = self.route(&self.map.slots(), Some(key));
        let mut nodes = vec![Arc::clone(&first)];
        nodes.extend(
            self.refresh_candidates()
                .into_iter()
                .filter(|node| !Arc::ptr_eq(node, &first)),
        );
        let mut last = None;
        for node in nodes {
            let Some(settings) = self.settings_within(deadline) else {
                break;
            };
            match node
                .pool
                .run(&settings, &|conn| ready(self.handshake(conn)), op)
            {
                Ok(()) => return Ok(()),
                Err(err) => {
                    self.map.mark_stale();
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(out_of_time))
    }

    /// Lists the nodes an invalidation subscriber may use, at the time it
    /// is asked: the seeds, then every node met since.
    pub(super) fn node_lister(&self) -> Box<dyn Fn() -> Vec<(String, u16)> + Send> {
        let seeds = self.seeds.clone();
        let map = Arc::clone(&self.map);
        Box::new(move || {
            let mut nodes = seeds.clone();
            for node in lock(&map.nodes).values() {
                let (host, port) = node.pool.address();
                if !nodes.iter().any(|(h, p)| h == host && *p == port) {
                    nodes.push((host.to_owned(), port));
                }
            }
            nodes
        })
    }

    /// The node at `host:port`, met before or new.
    fn node(&self, host: &str, port: u16) -> Arc<Node> {
        let address = address(host, port);
        let mut nodes = lock(&self.map.nodes);
        Arc::clone(nodes.entry(address.clone()).or_insert_with(|| {
            let mut pool = Pool::new(
                format!("redis {address}"),
                host.to_owned(),
                port,
                "error reply: ",
            );
            pool.use_tls(self.tls.as_ref());
            Arc::new(Node {
                pool,
                host: host.to_owned(),
                address,
            })
        }))
    }

    /// Where a command with `key` goes: its slot's master, or a seed while
    /// the slot's master is unknown (which will redirect it).
    fn route(&self, slots: &[Option<Arc<Node>>], key: Option<&str>) -> Arc<Node> {
        let slot = key.map_or(0, key_slot);
        if let Some(Some(node)) = slots.get(usize::from(slot)) {
            return Arc::clone(node);
        }
        let (host, port) = &self.seeds[usize::from(slot) % self.seeds.len()];
        self.node(host, *port)
    }

    /// The pending commands of a round, grouped by the node they go to.
    fn group(&self, cmds: &[Cmd<'_>], pending: &[(usize, Option<Arc<Node>>)]) -> Vec<Group> {
        let slots = self.map.slots();
        let mut groups: Vec<Group> = Vec::new();
        for (position, asking) in pending {
            let (node, ask) = match asking {
                Some(target) => (Arc::clone(target), true),
                None => (self.route(&slots, cmds[*position].key()), false),
            };
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, members)) => members.push((*position, ask)),
                None => groups.push((node, vec![(*position, ask)])),
            }
        }
        groups
    }

    /// The settings for a node call that must end by `deadline`: the
    /// configured ones while there is time for them, else both timeouts
    /// cut in proportion. `None` when no time is left.
    fn settings_within(&self, deadline: Instant) -> Option<Settings> {
        let left = deadline.saturating_duration_since(Instant::now());
        let full = self
            .settings
            .connect_timeout
            .saturating_add(self.settings.timeout);
        let mut settings = self.settings;
        if left < full {
            let share = left.as_secs_f64() / full.as_secs_f64();
            settings.connect_timeout = self.settings.connect_timeout.mul_f64(share);
            settings.timeout = left.saturating_sub(settings.connect_timeout);
        }
        (!settings.timeout.is_zero() && !settings.connect_timeout.is_zero()).then_some(settings)
    }

    /// Sends `cmds` (each with the `PX` `millis`) to their masters,
    /// following redirections, within one call's deadline; the replies in
    /// order. Every node of a round gets its commands even when another
    /// fails; then the first failure is the call's.
    async fn call<W: World>(
        &self,
        world: &W,
        cmds: &[Cmd<'_>],
        millis: &str,
    ) -> Result<Vec<Reply>, BackendError> {
        let deadline = later(
            Instant::now(),
            self.settings
                .connect_timeout
                .saturating_add(self.settings.timeout),
        );
        let mut replies: Vec<Option<Reply>> = cmds.iter().map(|_| None).collect();
        let mut pending: Vec<(usize, Option<Arc<Node>>)> =
            (0..cmds.len()).map(|position| (position, None)).collect();
        for _ in 0..MAX_ROUNDS {
            if pending.is_empty() {
                break;
            }
            self.refresh_if_due(world, deadline).await;
            let settings = self.settings_within(deadline).ok_or_else(out_of_time)?;
            let groups = self.group(cmds, &pending);
            let batches: Vec<Vec<(&Cmd<'_>, bool)>> = groups
                .iter()
                .map(|(_, members)| {
                    members
                        .iter()
                        .map(|&(position, ask)| (&cmds[position], ask))
                        .collect()
                })
                .collect();
            let jobs: Vec<(&Node, &[(&Cmd<'_>, bool)])> = groups
                .iter()
                .zip(&batches)
                .map(|((node, _), batch)| (&**node, batch.as_slice()))
                .collect();
            let outcomes = world.run_all(self, &jobs, settings, millis).await;
            pending.clear();
            let mut first_error = None;
            for ((node, members), outcome) in groups.iter().zip(outcomes) {
                let outcomes = match outcome {
                    Ok(outcomes) => outcomes,
                    Err(err) => {
                        // The node may be gone for good (a failover):
                        // read the map again before long.
                        self.map.mark_stale();
                        first_error.get_or_insert(err);
                        continue;
                    }
                };
                for (&(position, _), outcome) in members.iter().zip(outcomes) {
                    match outcome {
                        Outcome::Reply(reply) => replies[position] = Some(reply),
                        Outcome::Moved { slot, host, port } => {
                            let host = if host.is_empty() { &node.host } else { &host };
                            let target = self.node(host, port);
                            if let Some(entry) = self.map.slots_mut().get_mut(usize::from(slot)) {
                                *entry = Some(target);
                            }
                            self.map.mark_stale();
                            pending.push((position, None));
                        }
                        Outcome::Ask { host, port } => {
                            let host = if host.is_empty() { &node.host } else { &host };
                            pending.push((position, Some(self.node(host, port))));
                        }
                        Outcome::Refused(message) => {
                            if is_cluster_trouble(&message) {
                                self.map.mark_stale();
                            }
                            first_error.get_or_insert(
                                BackendError::new(format!(
                                    "redis {}: error reply: {message}",
                                    node.address
                                ))
                                .with_kind(BackendErrorKind::Server),
                            );
                        }
                    }
                }
            }
            if let Some(err) = first_error {
                return Err(err);
            }
        }
        if !pending.is_empty() {
            return Err(BackendError::new(format!(
                "redis cluster: still redirected after {MAX_ROUNDS} attempts; the cluster is resharding"
            ))
            .with_kind(BackendErrorKind::Server));
        }
        replies
            .into_iter()
            .map(|reply| reply.ok_or_else(|| mismatch("a command got no reply")))
            .collect()
    }

    /// Sends one command (see [`call`](Self::call)) and reads its reply
    /// with `read`.
    async fn one<W: World, R>(
        &self,
        world: &W,
        cmd: Cmd<'_>,
        millis: &str,
        read: fn(Reply) -> Result<R, OpError>,
    ) -> Result<R, BackendError> {
        let reply = self
            .call(world, std::slice::from_ref(&cmd), millis)
            .await?
            .pop()
            .ok_or_else(|| mismatch("no reply"))?;
        read(reply).map_err(|err| mismatch(&format!("{err:?}")))
    }

    /// `get_many`: one `GET` or `MGET` per slot, pipelined per master.
    async fn get_many_in<W: World>(
        &self,
        world: &W,
        keys: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (position, key) in keys.iter().enumerate() {
            by_slot.entry(key_slot(key)).or_default().push(position);
        }
        let cmds: Vec<Cmd<'_>> = by_slot
            .values()
            .map(|positions| match positions.as_slice() {
                [one] => Cmd::Get(keys[*one]),
                many => Cmd::MGet(many.iter().map(|&p| keys[p]).collect()),
            })
            .collect();
        let replies = self.call(world, &cmds, "").await?;
        let mut values = vec![None; keys.len()];
        for (reply, positions) in replies.into_iter().zip(by_slot.values()) {
            let found = match reply {
                Reply::Value(value) => vec![value],
                Reply::Values(found) => found,
                other => return Err(mismatch(&format!("{other:?} to a read"))),
            };
            if found.len() != positions.len() {
                return Err(mismatch("a read answered the wrong number of values"));
            }
            for (&position, value) in positions.iter().zip(found) {
                values[position] = value;
            }
        }
        Ok(values)
    }

    /// `set_many`: `SET`s pipelined per master, in slices of bounded size.
    async fn set_many_in<W: World>(
        &self,
        world: &W,
        items: &[(&str, &[u8])],
        ttl: Duration,
    ) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl).to_string();
        for slice in pipeline_slices(items) {
            let cmds: Vec<Cmd<'_>> = slice
                .iter()
                .map(|(key, value)| Cmd::Set(key, value))
                .collect();
            self.call(world, &cmds, &millis).await?;
        }
        Ok(())
    }

    /// Reads the slot map again when due (see [`SlotMap::start_refresh`]),
    /// from the seeds, then the nodes already known, until one answers.
    async fn refresh_if_due<W: World>(&self, world: &W, deadline: Instant) {
        let Some(_refreshing) = self.map.start_refresh() else {
            return;
        };
        let slots = Cmd::Slots;
        let batch = [(&slots, false)];
        for node in self.refresh_candidates() {
            let Some(settings) = self.settings_within(deadline) else {
                return;
            };
            let Ok(mut outcomes) = world.run(self, &node, settings, &batch, "").await else {
                continue;
            };
            let Some(Outcome::Reply(Reply::Topology(value))) = outcomes.pop() else {
                continue;
            };
            match parse_slots(value, &node.host) {
                Ok(topology) => {
                    if !topology.skipped.is_empty() {
                        self.map.warn_once(&format!(
                            "redis {}: CLUSTER SLOTS entries left out (their slots go through \
                             redirections): {}",
                            node.address,
                            topology.skipped.join("; ")
                        ));
                    }
                    // A node that is not (yet) part of a cluster knows no
                    // slots: ask the next one.
                    if !topology.ranges.is_empty() {
                        self.install(&topology.ranges);
                        return;
                    }
                }
                Err(reason) => self.map.warn_once(&format!(
                    "redis {}: unreadable CLUSTER SLOTS: {reason}",
                    node.address
                )),
            }
        }
    }

    /// The nodes to ask for the map: the seeds, then every other node met.
    fn refresh_candidates(&self) -> Vec<Arc<Node>> {
        let mut candidates: Vec<Arc<Node>> = self
            .seeds
            .iter()
            .map(|(host, port)| self.node(host, *port))
            .collect();
        let known: Vec<Arc<Node>> = lock(&self.map.nodes).values().cloned().collect();
        for node in known {
            if !candidates.iter().any(|seed| Arc::ptr_eq(seed, &node)) {
                candidates.push(node);
            }
        }
        candidates
    }

    /// Installs a map read from the cluster, and forgets the nodes that
    /// are neither in it nor seeds.
    fn install(&self, ranges: &[SlotRange]) {
        let mut slots = vec![None; usize::from(SLOTS)];
        for range in ranges {
            let node = self.node(&range.host, range.port);
            for slot in range.start..=range.end {
                slots[usize::from(slot)] = Some(Arc::clone(&node));
            }
        }
        let seeds = self.seeds();
        lock(&self.map.nodes).retain(|address, node| {
            seeds.contains(address) || slots.iter().flatten().any(|n| Arc::ptr_eq(n, node))
        });
        *self.map.slots_mut() = slots;
        let mut state = lock(&self.map.refresh);
        state.loaded = true;
        state.stale = false;
    }

    /// Authenticates a new connection; a cluster has no database to select.
    async fn handshake<T: Transport>(&self, conn: &mut Conn<T>) -> Result<(), OpError> {
        handshake(conn, self.username.as_deref(), self.password.as_deref(), 0).await
    }
}

/// The error of a call whose deadline passed between redirections.
fn out_of_time() -> BackendError {
    BackendError::new("redis cluster: the call's deadline passed while following redirections")
        .with_kind(BackendErrorKind::Timeout)
}

/// A reply memo cannot match to its command: reported, never a panic.
fn mismatch(what: &str) -> BackendError {
    BackendError::new(format!("redis cluster: {what}")).with_kind(BackendErrorKind::Protocol)
}

/// Whether an error reply says the cluster itself is in trouble (down,
/// resharding, a master lost), which a fresh map may cure.
fn is_cluster_trouble(message: &str) -> bool {
    [
        "CLUSTERDOWN",
        "TRYAGAIN",
        "MASTERDOWN",
        "READONLY",
        "LOADING",
    ]
    .iter()
    .any(|prefix| message.starts_with(prefix))
}

/// An error reply, as a redirection when it is one.
fn outcome_of_error(message: String) -> Outcome {
    let parts: Vec<&str> = message.split(' ').collect();
    if let [kind @ ("MOVED" | "ASK"), slot, target] = parts.as_slice() {
        if let (Ok(slot), Some((host, port))) = (slot.parse::<u16>(), split_target(target)) {
            if slot < SLOTS {
                return if *kind == "MOVED" {
                    Outcome::Moved { slot, host, port }
                } else {
                    Outcome::Ask { host, port }
                };
            }
        }
    }
    Outcome::Refused(message)
}

/// The `host:port` of a redirection (`::1:7000` for IPv6, as Redis writes
/// it; an empty host means the node that answered).
fn split_target(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse().ok().filter(|port| *port != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port))
}

/// One line of the map: slots `start..=end` are served by `host:port`.
#[derive(Debug, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    host: String,
    port: u16,
}

/// What a `CLUSTER SLOTS` reply says: the slot ranges memo can use, and
/// why each entry it could not use was left out.
#[derive(Debug, Default, PartialEq, Eq)]
struct Topology {
    ranges: Vec<SlotRange>,
    skipped: Vec<String>,
}

/// Reads `CLUSTER SLOTS`: `[[start, end, [endpoint, port, id, metadata],
/// replicas...], ...]`.
///
/// The endpoint is what the cluster prefers clients to use
/// (`cluster-preferred-endpoint-type`): an IP address, an announced host
/// name, or `NULL` for "the node you asked" (`unknown-endpoint`, nodes
/// behind a load balancer). `NULL` and an empty endpoint (a node that does
/// not know its own address yet) mean `asked`, the host memo reached the
/// answering node by, with the port given. `?` is a node configured to
/// announce a host name that has none: its IP address from the metadata
/// when given, else `asked`, as for `NULL`.
///
/// An entry memo cannot read (bounds out of range, no port, a host that
/// is not one) costs only its slots, which stay unmapped and are reached
/// through the seeds and their `MOVED` replies; only a reply that is not a
/// list of entries at all is an error.
fn parse_slots(value: Value, asked: &str) -> Result<Topology, String> {
    let Value::Array(entries) = value else {
        return Err("not an array".to_owned());
    };
    let mut topology = Topology::default();
    for entry in entries {
        match parse_slot_range(entry, asked) {
            Ok(range) => topology.ranges.push(range),
            Err(reason) => topology.skipped.push(reason),
        }
    }
    Ok(topology)
}

/// One entry of `CLUSTER SLOTS` (see [`parse_slots`]).
fn parse_slot_range(entry: Value, asked: &str) -> Result<SlotRange, String> {
    let Value::Array(fields) = entry else {
        return Err("a slot range is not an array".to_owned());
    };
    let mut fields = fields.into_iter();
    let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err("a slot range lacks its bounds or its master".to_owned());
    };
    let slot = |n: i64| u16::try_from(n).ok().filter(|&n| n < SLOTS);
    let (Some(start), Some(end)) = (slot(start), slot(end)) else {
        return Err(format!("slots {start}-{end} are out of range"));
    };
    if start > end {
        return Err(format!("slots {start}-{end} are reversed"));
    }
    let mut master = master.into_iter();
    let (Some(endpoint), Some(Value::Int(port))) = (master.next(), master.next()) else {
        return Err(format!(
            "the master of slots {start}-{end} lacks its endpoint or port"
        ));
    };
    let port = u16::try_from(port)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("the master of slots {start}-{end} has port {port}"))?;
    let metadata = master.nth(1);
    let host = match endpoint {
        Value::Nil => asked.to_owned(),
        Value::Bulk(bytes) => match bytes.as_slice() {
            b"" => asked.to_owned(),
            b"?" => metadata_ip(metadata).unwrap_or_else(|| asked.to_owned()),
            _ => String::from_utf8(bytes)
                .ok()
                .filter(|host| is_host(host))
                .ok_or_else(|| format!("the master of slots {start}-{end} has no usable host"))?,
        },
        _ => {
            return Err(format!(
                "the master of slots {start}-{end} has no usable host"
            ));
        }
    };
    Ok(SlotRange {
        start,
        end,
        host,
        port,
    })
}

/// The `ip` of a node's networking metadata (a map, flattened to
/// `[name, value, ...]` in RESP2), when it is one.
fn metadata_ip(metadata: Option<Value>) -> Option<String> {
    let Some(Value::Array(pairs)) = metadata else {
        return None;
    };
    let mut pairs = pairs.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        if let (Value::Bulk(name), Value::Bulk(value)) = (name, value) {
            if name.eq_ignore_ascii_case(b"ip") {
                return String::from_utf8(value).ok().filter(|ip| is_host(ip));
            }
        }
    }
    None
}

/// Whether `host`, as a cluster announces it, can be connected to: a
/// name or an address without spaces, controls or URL delimiters.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && !matches!(b, b'/' | b'@' | b',' | b'?' | b'#'))
}

/// Sends `batch` pipelined in one write, then reads every reply (so the
/// connection stays in step whatever they say): one round trip.
async fn exec<T: Transport>(
    conn: &mut Conn<T>,
    batch: &[(&Cmd<'_>, bool)],
    millis: &str,
) -> Result<Vec<Outcome>, OpError> {
    conn.out.clear();
    for (cmd, asking) in batch {
        if *asking {
            conn.push_command(&[b"ASKING"]).await?;
        }
        cmd.push(conn, millis).await?;
    }
    conn.flush().await?;
    count_round_trip();
    let mut outcomes = Vec::with_capacity(batch.len());
    for (cmd, asking) in batch {
        let mut refused_asking = None;
        if *asking {
            match conn.value().await {
                Ok(value) => value.ok("ASKING")?,
                Err(OpError::Refused(message)) => refused_asking = Some(message),
                Err(err) => return Err(err),
            }
        }
        let outcome = match cmd.read(conn).await {
            Ok(reply) => Outcome::Reply(reply),
            Err(OpError::Refused(message)) => outcome_of_error(message),
            Err(err) => return Err(err),
        };
        outcomes.push(match refused_asking {
            Some(message) => Outcome::Refused(message),
            None => outcome,
        });
    }
    Ok(outcomes)
}

/// Polls every future until all are done: the nodes of a round in
/// parallel for async callers.
#[cfg(feature = "async")]
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(done) => *output = Some(done),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// How a call reaches one node: the blocking pool or the async one. The
/// routing above is written once, as async code over this.
trait World: Sync {
    /// Runs `batch` on `node` (see [`exec`]) under `settings`.
    fn run<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        node: &'a Node,
        settings: Settings,
        batch: &'a [(&'a Cmd<'a>, bool)],
        millis: &'a str,
    ) -> impl Future<Output = Result<Vec<Outcome>, BackendError>> + Send + 'a;

    /// Runs each node's batch of one round, the nodes in parallel: the
    /// outcomes in the order of `jobs`.
    fn run_all<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        jobs: &'a [(&'a Node, &'a [(&'a Cmd<'a>, bool)])],
        settings: Settings,
        millis: &'a str,
    ) -> impl Future<Output = Vec<Result<Vec<Outcome>, BackendError>>> + Send + 'a;
}

/// Keys read, or value bytes written, from which a blocking round over
/// several nodes reaches them on threads of its own (see
/// [`Blocking::run_all`]).
const PARALLEL_MIN_KEYS: usize = 4;
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// Whether a round is worth a thread per extra node: it spans several
/// nodes and moves enough data (the chunks of a large value) that its
/// round trips cost more than starting threads (some tens of
/// microseconds).
fn worth_threads(jobs: &[(&Node, &[(&Cmd<'_>, bool)])]) -> bool {
    if jobs.len() < 2 {
        return false;
    }
    let (mut keys, mut bytes) = (0, 0);
    for (cmd, _) in jobs.iter().flat_map(|(_, batch)| batch.iter()) {
        match cmd {
            Cmd::MGet(many) => keys += many.len(),
            Cmd::Get(_) => keys += 1,
            Cmd::Set(_, value) | Cmd::Add(_, value) => bytes += value.len(),
            _ => {}
        }
    }
    keys >= PARALLEL_MIN_KEYS || bytes >= PARALLEL_MIN_BYTES
}

/// Blocking callers: the node call runs when its future is made.
struct Blocking;

impl Blocking {
    fn run_now(
        backend: &RedisClusterBackend,
        node: &Node,
        settings: &Settings,
        batch: &[(&Cmd<'_>, bool)],
        millis: &str,
    ) -> Result<Vec<Outcome>, BackendError> {
        node.pool.run(
            settings,
            &|conn| ready(backend.handshake(conn)),
            &mut |conn| ready(exec(conn, batch, millis)),
        )
    }
}

impl World for Blocking {
    fn run<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        node: &'a Node,
        settings: Settings,
        batch: &'a [(&'a Cmd<'a>, bool)],
        millis: &'a str,
    ) -> impl Future<Output = Result<Vec<Outcome>, BackendError>> + Send + 'a {
        std::future::ready(Self::run_now(backend, node, &settings, batch, millis))
    }

    /// One node after the other, except for a round that spans several
    /// nodes and moves a large value's chunks: then every node but the
    /// first is reached from a scoped thread of its own, so that the round
    /// costs the slowest node's round trip rather than the sum of them
    /// (each thread runs under the same deadline). A thread that cannot be
    /// started runs its node here instead.
    fn run_all<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        jobs: &'a [(&'a Node, &'a [(&'a Cmd<'a>, bool)])],
        settings: Settings,
        millis: &'a str,
    ) -> impl Future<Output = Vec<Result<Vec<Outcome>, BackendError>>> + Send + 'a {
        let run = |&(node, batch): &(&Node, &[(&Cmd<'_>, bool)])| {
            Self::run_now(backend, node, &settings, batch, millis)
        };
        let outcomes = if worth_threads(jobs) {
            std::thread::scope(|scope| {
                let spawned: Vec<_> = jobs[1..]
                    .iter()
                    .map(|job| {
                        std::thread::Builder::new()
                            .name("memo-cluster".into())
                            .spawn_scoped(scope, move || run(job))
                    })
                    .collect();
                let mut outcomes = vec![run(&jobs[0])];
                for (job, handle) in jobs[1..].iter().zip(spawned) {
                    outcomes.push(match handle {
                        Ok(handle) => handle.join().unwrap_or_else(|_| {
                            Err(mismatch("a node call panicked").with_kind(BackendErrorKind::Other))
                        }),
                        Err(_) => run(job),
                    });
                }
                outcomes
            })
        } else {
            jobs.iter().map(run).collect()
        };
        std::future::ready(outcomes)
    }
}

/// Async callers: tokio sockets from the same pools.
#[cfg(feature = "async")]
struct Tokio;

#[cfg(feature = "async")]
impl World for Tokio {
    async fn run<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        node: &'a Node,
        settings: Settings,
        batch: &'a [(&'a Cmd<'a>, bool)],
        millis: &'a str,
    ) -> Result<Vec<Outcome>, BackendError> {
        run_async!(
            &node.pool,
            &settings,
            handshake: |new| backend.handshake(new),
            op: |conn| exec(conn, batch, millis),
        )
    }

    /// The nodes' futures polled together: in parallel on one task.
    async fn run_all<'a>(
        &'a self,
        backend: &'a RedisClusterBackend,
        jobs: &'a [(&'a Node, &'a [(&'a Cmd<'a>, bool)])],
        settings: Settings,
        millis: &'a str,
    ) -> Vec<Result<Vec<Outcome>, BackendError>> {
        join_all(
            jobs.iter()
                .map(|&(node, batch)| self.run(backend, node, settings, batch, millis))
                .collect(),
        )
        .await
    }
}

impl Backend for RedisClusterBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        ready(self.one(&Blocking, Cmd::Get(key), "", Reply::value))
    }

    fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        ready(self.get_many_in(&Blocking, keys))
    }

    fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
        let millis = ttl_millis(ttl).to_string();
        ready(self.one(&Blocking, Cmd::Set(key, value), &millis, Reply::done))
    }

    fn set_many(&self, items: &[(&str, &[u8])], ttl: Duration) -> Result<(), BackendError> {
        ready(self.set_many_in(&Blocking, items, ttl))
    }

    fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        ready(self.one(&Blocking, Cmd::Add(key, value), &millis, Reply::flag))
    }

    fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        ready(self.one(&Blocking, Cmd::Touch(key), &millis, Reply::flag))
    }

    fn delete(&self, key: &str) -> Result<bool, BackendError> {
        ready(self.one(&Blocking, Cmd::Delete(key), "", Reply::flag))
    }

    /// Atomic, through a Lua script on the key's master.
    fn delete_if_value(&self, key: &str, expected: &[u8]) -> Result<bool, BackendError> {
        let cmd = Cmd::DeleteIfValue(key, expected);
        ready(self.one(&Blocking, cmd, "", Reply::flag))
    }

    /// Atomic, through a Lua script on the key's master.
    fn touch_if_value(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let millis = ttl_millis(ttl).to_string();
        let cmd = Cmd::TouchIfValue(key, expected);
        ready(self.one(&Blocking, cmd, &millis, Reply::flag))
    }

    /// The same client serves async callers natively, on tokio sockets.
    #[cfg(feature = "async")]
    fn __async(self: Arc<Self>) -> Option<Arc<dyn aio::AsyncBackend>> {
        Some(self)
    }

    /// Cluster-wide pub/sub tells other processes to drop their local
    /// copies (`pubsub`).
    fn __invalidations(&self) -> Option<&dyn crate::backend::Invalidations> {
        Some(self)
    }
}

/// The same routing, map, pools and health as the blocking client, over
/// tokio sockets: nothing here blocks the executor.
#[cfg(feature = "async")]
impl aio::AsyncBackend for RedisClusterBackend {
    fn get<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, Option<Vec<u8>>> {
        Box::pin(self.one(&Tokio, Cmd::Get(key), "", Reply::value))
    }

    fn get_many<'a>(&'a self, keys: &'a [&'a str]) -> aio::BackendFuture<'a, Vec<Option<Vec<u8>>>> {
        Box::pin(self.get_many_in(&Tokio, keys))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            self.one(&Tokio, Cmd::Set(key, value), &millis, Reply::done)
                .await
        })
    }

    fn set_many<'a>(
        &'a self,
        items: &'a [(&'a str, &'a [u8])],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, ()> {
        Box::pin(self.set_many_in(&Tokio, items, ttl))
    }

    fn add<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            self.one(&Tokio, Cmd::Add(key, value), &millis, Reply::flag)
                .await
        })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl: Duration) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            self.one(&Tokio, Cmd::Touch(key), &millis, Reply::flag)
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> aio::BackendFuture<'a, bool> {
        Box::pin(self.one(&Tokio, Cmd::Delete(key), "", Reply::flag))
    }

    /// Atomic, through a Lua script on the key's master.
    fn delete_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(self.one(&Tokio, Cmd::DeleteIfValue(key, expected), "", Reply::flag))
    }

    /// Atomic, through a Lua script on the key's master.
    fn touch_if_value<'a>(
        &'a self,
        key: &'a str,
        expected: &'a [u8],
        ttl: Duration,
    ) -> aio::BackendFuture<'a, bool> {
        Box::pin(async move {
            let millis = ttl_millis(ttl).to_string();
            self.one(
                &Tokio,
                Cmd::TouchIfValue(key, expected),
                &millis,
                Reply::flag,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_and_its_hash_tags() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("bar"), 5061);
        assert_eq!(key_slot(""), 0);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("{user1000}.followers"), key_slot("user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        // Only the first `{` and the first `}` after it count.
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
        assert_eq!(key_slot("foo{bar}{zap}"), key_slot("bar"));
        assert_eq!(key_slot("no}tag{here"), crc16(b"no}tag{here") % SLOTS);
        assert!((0..5000).all(|i| key_slot(&format!("k{i}")) < SLOTS));
    }

    #[test]
    fn redirections_are_read_and_anything_else_is_an_error() {
        assert!(matches!(
            outcome_of_error("MOVED 3999 127.0.0.1:6381".to_owned()),
            Outcome::Moved { slot: 3999, host, port: 6381 } if host == "127.0.0.1"
        ));
        assert!(matches!(
            outcome_of_error("ASK 3999 ::1:6381".to_owned()),
            Outcome::Ask { host, port: 6381 } if host == "::1"
        ));
        assert!(matches!(
            outcome_of_error("MOVED 3999 :6381".to_owned()),
            Outcome::Moved { host, .. } if host.is_empty()
        ));
        for other in [
            "MOVED 16384 h:1",
            "MOVED x h:1",
            "MOVED 1 h",
            "MOVED 1 h:0",
            "MOVED 1 h:1 extra",
            "ASK",
            "CLUSTERDOWN The cluster is down",
            "ERR wrong",
        ] {
            assert!(
                matches!(outcome_of_error(other.to_owned()), Outcome::Refused(m) if m == other),
                "{other}"
            );
        }
        assert!(is_cluster_trouble("CLUSTERDOWN Hash slot not served"));
        assert!(is_cluster_trouble("TRYAGAIN Multiple keys request"));
        assert!(!is_cluster_trouble("ERR unknown command"));
    }

    fn bulk(text: &str) -> Value {
        Value::Bulk(text.as_bytes().to_vec())
    }

    fn node_info(endpoint: Value, port: i64, metadata: &[&str]) -> Value {
        Value::Array(vec![
            endpoint,
            Value::Int(port),
            bulk("id"),
            Value::Array(metadata.iter().map(|text| bulk(text)).collect()),
        ])
    }

    fn entry(start: i64, end: i64, master: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master])
    }

    fn range(start: u16, end: u16, host: &str, port: u16) -> SlotRange {
        SlotRange {
            start,
            end,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn every_endpoint_redis_documents_is_read() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(999),
                // Redis before 7: no metadata.
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id")]),
                node_info(bulk("10.0.0.4"), 7003, &[]),
            ]),
            // `cluster-preferred-endpoint-type unknown-endpoint`.
            entry(1000, 1999, node_info(Value::Nil, 7001, &["ip", "10.0.0.2"])),
            // A node that does not know its own address yet.
            entry(2000, 2999, node_info(bulk(""), 7002, &[])),
            // Announced host names, as preferred endpoints.
            entry(
                3000,
                3999,
                node_info(bulk("cache-3.internal"), 7003, &["ip", "10.0.0.3"]),
            ),
            // Host names preferred, but this node announces none.
            entry(4000, 4999, node_info(bulk("?"), 7004, &["ip", "10.0.0.4"])),
            entry(5000, 16383, node_info(bulk("?"), 7005, &[])),
        ]);
        let topology = parse_slots(reply, "seed.internal").unwrap();
        assert_eq!(topology.skipped, Vec::<String>::new());
        assert_eq!(
            topology.ranges,
            [
                range(0, 999, "10.0.0.1", 7000),
                range(1000, 1999, "seed.internal", 7001),
                range(2000, 2999, "seed.internal", 7002),
                range(3000, 3999, "cache-3.internal", 7003),
                range(4000, 4999, "10.0.0.4", 7004),
                range(5000, 16383, "seed.internal", 7005),
            ]
        );
    }

    #[test]
    fn a_malformed_entry_costs_its_slots_not_the_map() {
        let good = |start, end| entry(start, end, node_info(bulk("h"), 7000, &[]));
        let bad = [
            entry(0, 16384, node_info(bulk("h"), 1, &[])),
            entry(-1, 5, node_info(bulk("h"), 1, &[])),
            entry(9, 5, node_info(bulk("h"), 1, &[])),
            entry(0, 5, node_info(bulk("h"), 0, &[])),
            entry(0, 5, node_info(bulk("h"), 65536, &[])),
            entry(0, 5, node_info(bulk("h h"), 1, &[])),
            entry(0, 5, node_info(bulk("h,i"), 1, &[])),
            entry(0, 5, node_info(Value::Int(3), 1, &[])),
            entry(0, 5, Value::Array(vec![bulk("h")])),
            entry(0, 5, Value::Nil),
            Value::Nil,
            Value::Array(vec![Value::Int(0)]),
            Value::Bulk(b"\xff\xfe".to_vec()),
        ];
        for bad in bad {
            let reply = Value::Array(vec![good(0, 99), bad.clone(), good(200, 16383)]);
            let topology = parse_slots(reply, "s").unwrap();
            assert_eq!(
                topology.ranges,
                [range(0, 99, "h", 7000), range(200, 16383, "h", 7000)],
                "{bad:?}"
            );
            assert_eq!(topology.skipped.len(), 1, "{bad:?}");
        }
        let invalid_host = entry(0, 5, node_info(Value::Bulk(vec![0xff]), 1, &[]));
        let topology = parse_slots(Value::Array(vec![invalid_host]), "s").unwrap();
        assert!(topology.ranges.is_empty());
        for not_a_map in [Value::Int(1), Value::Nil, bulk("x")] {
            assert!(parse_slots(not_a_map, "s").is_err());
        }
        assert_eq!(
            parse_slots(Value::Array(vec![]), "s"),
            Ok(Topology::default())
        );
    }

    #[test]
    fn urls_take_seeds_credentials_and_tuning() {
        let parse = |url: &str| RedisClusterBackend::from_url_parts(&CacheUrl::parse(url).unwrap());
        let backend =
            parse("redis+cluster://app:pw@a:7000,b,[::1]:7002?timeout_ms=70&pool_size=2&max_connections=3").unwrap();
        assert_eq!(backend.seeds(), ["a:7000", "b:6379", "[::1]:7002"]);
        assert_eq!(backend.username.as_deref(), Some("app"));
        assert_eq!(backend.password.as_deref(), Some("pw"));
        assert_eq!(backend.settings.timeout, Duration::from_millis(70));
        assert_eq!(backend.settings.pool_size, 2);
        assert_eq!(backend.settings.max_connections, 3);
        let built = RedisClusterBackend::new(["a:7000"])
            .unwrap()
            .max_connections(9);
        assert_eq!(built.settings.max_connections, 9);
        assert!(!format!("{backend:?}").contains("pw"));
        assert!(parse("redis://a:1").is_ok());
        assert!(parse("redis+cluster://a:1/0").is_ok());
        for bad in [
            "redis+cluster://",
            "redis+cluster://a:1/2",
            "redis+cluster://user@a:1",
            "redis+cluster://a:0",
            "redis+cluster://a:1?colour=blue",
            "redis+cluster://a:1?timeout_ms=0",
            "memcached://a:1",
            "redis+cluster://a:1?ca=/tmp/ca.pem",
            "rediss+cluster://a:1?ca=/no/such/ca.pem",
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_give_every_node_the_tls_settings() {
        let parse = |url: &str| RedisClusterBackend::from_url_parts(&CacheUrl::parse(url).unwrap());
        for url in [
            "rediss+cluster://a:7000,b:7001?insecure=true&timeout_ms=70",
            "rediss://a:7000,b:7001?insecure=true&timeout_ms=70",
        ] {
            let backend = parse(url).unwrap();
            assert!(backend.tls.is_some(), "{url}");
            assert_eq!(backend.settings.timeout, Duration::from_millis(70));
            // Seeds and nodes found later alike.
            assert!(backend.node("a", 7000).pool.tls().is_some());
            assert!(backend.node("10.0.0.9", 7005).pool.tls().is_some());
        }
        let plain = parse("redis+cluster://a:7000").unwrap();
        assert!(plain.node("10.0.0.9", 7005).pool.tls().is_none());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_it() {
        let url = CacheUrl::parse("rediss+cluster://a:7000").unwrap();
        let err = RedisClusterBackend::from_url_parts(&url).unwrap_err();
        assert!(err.to_string().contains("\"tls\""), "{err}");
    }

    #[test]
    fn a_dead_cluster_fails_fast_within_the_deadline() {
        let backend = RedisClusterBackend::new(["127.0.0.1:9", "127.0.0.1:10"]).unwrap();
        let started = Instant::now();
        assert!(backend.get("k").is_err());
        assert!(backend.set("k", b"v", Duration::from_secs(1)).is_err());
        assert!(backend.get_many(&["a", "b", "c"]).is_err());
        assert!(started.elapsed() < Duration::from_millis(600));
        assert_eq!(backend.node_for("k"), None);
    }

    #[test]
    fn one_caller_at_a_time_reads_the_map_and_not_too_often() {
        let map = SlotMap::default();
        let first = map.start_refresh();
        assert!(first.is_some(), "never read: due");
        assert!(map.start_refresh().is_none(), "one reader at a time");
        drop(first);
        assert!(map.start_refresh().is_none(), "rate-limited");
        lock(&map.refresh).loaded = true;
        std::thread::sleep(MIN_REFRESH_INTERVAL);
        assert!(
            map.start_refresh().is_none(),
            "loaded and not stale: not due"
        );
        map.mark_stale();
        let again = map.start_refresh();
        assert!(again.is_some(), "stale, and the interval passed");
        drop(again);
        map.mark_stale();
        assert!(map.start_refresh().is_none(), "rate-limited again");
    }

    #[test]
    fn only_batches_of_a_large_value_over_several_nodes_take_threads() {
        let node = |port| Node {
            address: address("h", port),
            host: "h".to_owned(),
            pool: Pool::new(String::new(), "h".to_owned(), port, ""),
        };
        let (a, b) = (node(1), node(2));
        let big = vec![0u8; PARALLEL_MIN_BYTES];
        let (get, mget) = (Cmd::Get("k"), Cmd::MGet(vec!["x", "y", "z"]));
        let (small_set, big_set) = (Cmd::Set("k", b"v"), Cmd::Set("k", &big));
        let reads: &[(&Cmd<'_>, bool)] = &[(&get, false), (&mget, false)];
        let one_read: &[(&Cmd<'_>, bool)] = &[(&get, false)];
        let small: &[(&Cmd<'_>, bool)] = &[(&small_set, false)];
        let large: &[(&Cmd<'_>, bool)] = &[(&big_set, false)];
        assert!(worth_threads(&[(&a, one_read), (&b, reads)]), "4 keys");
        assert!(!worth_threads(&[(&a, one_read), (&b, one_read)]));
        assert!(worth_threads(&[(&a, small), (&b, large)]), "64 KiB");
        assert!(!worth_threads(&[(&a, small), (&b, small)]));
        assert!(!worth_threads(&[(&a, reads), (&a, reads)][..1]), "one node");
        assert!(!worth_threads(&[]));
    }

    #[test]
    fn deadlines_shrink_in_proportion_and_end() {
        let backend = RedisClusterBackend::new(["h:1"])
            .unwrap()
            .connect_timeout(Duration::from_millis(100))
            .timeout(Duration::from_millis(300));
        let far = Instant::now() + Duration::from_secs(10);
        let settings = backend.settings_within(far).unwrap();
        assert_eq!(settings.timeout, Duration::from_millis(300));
        let near = Instant::now() + Duration::from_millis(200);
        let settings = backend.settings_within(near).unwrap();
        assert!(settings.connect_timeout + settings.timeout <= Duration::from_millis(200));
        assert!(settings.connect_timeout <= Duration::from_millis(50));
        assert!(backend.settings_within(Instant::now()).is_none());
    }
}
