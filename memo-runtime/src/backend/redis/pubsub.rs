//! Invalidations between processes over Redis pub/sub, for the local copies
//! of `Options::local`: an `invalidate` (or a refresh) in one process
//! `PUBLISH`es the stored key on the namespace's channel, and every other
//! process using local copies on that configuration runs a subscriber that
//! drops its copy as the message arrives, within a round trip.
//!
//! Publishing goes through the backend's pool like any command. The
//! subscriber holds a connection of its own (a subscribed connection
//! cannot serve other commands, and is not counted under
//! `max_connections`) on a background thread, speaking TLS when
//! the backend does (same CA, client certificate and name checks); after a
//! failure it reconnects with a back-off of up to 5 s. Messages published
//! while it was disconnected are lost, as pub/sub does not queue them, so
//! during an outage the local copies' own duration bounds their staleness,
//! as with any backend without invalidations.
//!
//! **Redis Cluster.** Classic pub/sub (`PUBLISH`, `SUBSCRIBE`) is
//! cluster-wide: a message published on any node is broadcast over the
//! cluster bus to every node, masters and replicas. So one subscription on
//! one node is enough: the subscriber connects to a seed or a node met
//! since, and after a failure moves on to the next one, so a dead node
//! costs one reconnection, not the channel. Publishing tries the master of
//! the channel's slot first, then every other node known, within one
//! call's deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::cluster::RedisClusterBackend;
use super::protocol::Value;
use super::{RedisBackend, handshake};
use crate::backend::net::TlsConfig;
use crate::backend::net::conn::{Conn, Transport, ready};
use crate::backend::net::pool::{OpError, Pool};
use crate::backend::{BackendError, Deliver, Invalidations};

/// How often an idle subscriber checks whether it is still wanted.
const POLL: Duration = Duration::from_millis(500);
/// The longest wait between reconnection attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A subscribed connection: blocking reads that wake up every [`POLL`].
struct Subscribed(TcpStream);

impl Transport for Subscribed {
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        std::future::ready(self.0.read(buf))
    }

    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        std::future::ready(self.0.write_all(bytes))
    }
}

impl Invalidations for RedisBackend {
    fn publish(&self, channel: &str, message: &[u8]) -> Result<(), BackendError> {
        self.run(|conn| {
            ready(conn.command(&[b"PUBLISH", channel.as_bytes(), message]))?
                .int("PUBLISH")
                .map(drop)
        })
    }

    fn subscribe(&self, channel: &str, deliver: Deliver) {
        Subscriber {
            nodes: self.node_lister(),
            tls: self.tls_config().cloned(),
            db: self.db,
            username: self.username.clone(),
            password: self.password.clone(),
            connect_timeout: self.settings.connect_timeout,
            channel: channel.to_owned(),
        }
        .spawn(deliver);
    }
}

impl Invalidations for RedisClusterBackend {
    fn publish(&self, channel: &str, message: &[u8]) -> Result<(), BackendError> {
        self.on_any_node(channel, &mut |conn| {
            ready(conn.command(&[b"PUBLISH", channel.as_bytes(), message]))?
                .int("PUBLISH")
                .map(drop)
        })
    }

    fn subscribe(&self, channel: &str, deliver: Deliver) {
        Subscriber {
            nodes: self.node_lister(),
            tls: self.tls.clone(),
            db: 0,
            username: self.username.clone(),
            password: self.password.clone(),
            connect_timeout: self.settings.connect_timeout,
            channel: channel.to_owned(),
        }
        .spawn(deliver);
    }
}

/// The nodes a subscriber may use, asked again before each attempt (a
/// cluster's nodes change as it fails over).
pub(super) type NodeLister = Box<dyn Fn() -> Vec<(String, u16)> + Send>;

/// What the subscriber thread needs to (re)connect.
pub(super) struct Subscriber {
    /// The nodes to subscribe on, one at a time, in turn after failures.
    pub(super) nodes: NodeLister,
    pub(super) tls: Option<TlsConfig>,
    pub(super) db: u32,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) channel: String,
}

/// How a subscription ended.
enum Ended {
    /// `deliver` no longer wants messages: the configuration is gone.
    Unwanted,
    /// The connection failed; try again.
    Failed(OpError),
}

/// The first pause before reconnecting.
const FIRST_RETRY: Duration = Duration::from_millis(100);

impl Subscriber {
    /// Runs the subscriber on a thread of its own.
    pub(super) fn spawn(self, mut deliver: Deliver) {
        let spawned = std::thread::Builder::new()
            .name("memo-invalidations".into())
            .spawn(move || self.run(&mut *deliver));
        if let Err(err) = spawned {
            crate::common::diag::warning!("memo: cannot start the invalidation subscriber: {err}");
        }
    }

    fn run(&self, deliver: &mut dyn FnMut(&[u8]) -> bool) {
        let mut retry = FIRST_RETRY;
        let mut turn = 0usize;
        loop {
            let nodes = (self.nodes)();
            if let Some((host, port)) = nodes.get(turn % nodes.len().max(1)) {
                let (ended, subscribed) = self.session(host, *port, deliver);
                match ended {
                    Ended::Unwanted => return,
                    Ended::Failed(err) => {
                        crate::common::diag::debug!(
                            "memo: invalidation subscriber for {host}:{port}: {err:?}; \
                             reconnecting in {retry:?}"
                        );
                    }
                }
                // A subscription that worked for a while starts the
                // back-off over; either way the next node is tried next.
                if subscribed {
                    retry = FIRST_RETRY;
                }
                turn = turn.wrapping_add(1);
            }
            // Sleeps in steps, so a configuration dropped meanwhile ends
            // the thread promptly.
            let mut slept = Duration::ZERO;
            while slept < retry {
                std::thread::sleep(POLL.min(retry));
                slept += POLL.min(retry);
                if !deliver(b"") {
                    return;
                }
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    /// One connection to `host:port`: subscribes, then hands over messages
    /// until it fails or is no longer wanted; and whether it subscribed.
    fn session(
        &self,
        host: &str,
        port: u16,
        deliver: &mut dyn FnMut(&[u8]) -> bool,
    ) -> (Ended, bool) {
        let mut conn = match self.connect(host, port) {
            Ok(conn) => conn,
            Err(err) => return (Ended::Failed(err), false),
        };
        if let Err(err) = ready(conn.command(&[b"SUBSCRIBE", self.channel.as_bytes()])) {
            return (Ended::Failed(err), false);
        }
        (self.listen(&mut conn, deliver), true)
    }

    /// Hands over the messages of a subscribed connection.
    fn listen(&self, conn: &mut Conn<Subscribed>, deliver: &mut dyn FnMut(&[u8]) -> bool) -> Ended {
        loop {
            match ready(conn.value()) {
                Ok(Value::Array(parts)) => match <[Value; 3]>::try_from(parts) {
                    Ok([Value::Bulk(kind), _, Value::Bulk(message)])
                        if kind == b"message" && !deliver(&message) =>
                    {
                        return Ended::Unwanted;
                    }
                    _ => {}
                },
                Ok(other) => return Ended::Failed(other.unexpected("SUBSCRIBE")),
                // A read that timed out between messages leaves the
                // connection in step: check whether it is still wanted.
                Err(OpError::Io(err))
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && !conn.has_unread() =>
                {
                    if !deliver(b"") {
                        return Ended::Unwanted;
                    }
                }
                Err(err) => return Ended::Failed(err),
            }
        }
    }

    /// Connects to `host:port`, within the connect timeout: TCP, TLS
    /// when the backend speaks it, then `AUTH` and `SELECT`.
    fn connect(&self, host: &str, port: u16) -> Result<Conn<Subscribed>, OpError> {
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let stream = TcpStream::connect_timeout(&addr, self.connect_timeout)?;
        stream.set_nodelay(true)?;
        // The handshakes run within the connect timeout; then reads wake up
        // every `POLL` to check whether the subscription is still wanted.
        stream.set_read_timeout(Some(self.connect_timeout))?;
        stream.set_write_timeout(Some(self.connect_timeout))?;
        let mut conn = Conn::new(Subscribed(stream));
        // A pool of no connections, for its TLS handshake (none in
        // plaintext): the same verification as the backend's own
        // connections.
        let mut pool = Pool::new(format!("redis {host}:{port}"), host.to_owned(), port, "");
        pool.use_tls(self.tls.as_ref());
        ready(pool.secure(&mut conn))?;
        // Pub/sub channels ignore the database; selecting it anyway keeps
        // the connection the same as the pool's.
        ready(handshake(
            &mut conn,
            self.username.as_deref(),
            self.password.as_deref(),
            self.db,
        ))?;
        conn.io.0.set_read_timeout(Some(POLL))?;
        Ok(conn)
    }
}
