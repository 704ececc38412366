//! Invalidations between processes over Redis pub/sub, for the local copies
//! of `Options::local`: an `invalidate` (or a refresh) in one process
//! `PUBLISH`es the stored key on the namespace's channel, and every other
//! process using local copies on that configuration runs a subscriber that
//! drops its copy as the message arrives, within a round trip.
//!
//! Publishing goes through the backend's pool like any command. The
//! subscriber holds a connection of its own (a subscribed connection
//! cannot serve other commands) on a background thread; after a failure
//! it reconnects with a back-off of up to 5 s. Messages published while it
//! was disconnected are lost, as pub/sub does not queue them, so during an
//! outage the local copies' own duration bounds their staleness, as with
//! any backend without invalidations.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::protocol::Value;
use super::{DEFAULT_PORT, RedisBackend};
use crate::backend::net::conn::{Conn, Io, ready};
use crate::backend::net::{self, pool::OpError};
use crate::backend::{BackendError, Deliver, Invalidations};

/// How often an idle subscriber checks whether it is still wanted.
const POLL: Duration = Duration::from_millis(500);
/// The longest wait between reconnection attempts.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// A subscribed connection: blocking reads that wake up every [`POLL`].
struct Subscribed(TcpStream);

impl Io for Subscribed {
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

    fn subscribe(&self, channel: &str, mut deliver: Deliver) {
        let subscriber = Subscriber {
            address: self.name.clone(),
            db: self.db,
            username: self.username.clone(),
            password: self.password.clone(),
            connect_timeout: self.settings.connect_timeout,
            channel: channel.to_owned(),
        };
        let spawned = std::thread::Builder::new()
            .name("memo-invalidations".into())
            .spawn(move || subscriber.run(&mut *deliver));
        if let Err(err) = spawned {
            log::warn!("memo: cannot start the invalidation subscriber: {err}");
        }
    }
}

/// What the subscriber thread needs to (re)connect.
struct Subscriber {
    address: String,
    db: u32,
    username: Option<String>,
    password: Option<String>,
    connect_timeout: Duration,
    channel: String,
}

/// How a subscription ended.
enum Ended {
    /// `deliver` no longer wants messages: the configuration is gone.
    Unwanted,
    /// The connection failed; try again.
    Failed(OpError),
}

impl Subscriber {
    fn run(&self, deliver: &mut dyn FnMut(&[u8]) -> bool) {
        let mut retry = Duration::from_millis(100);
        loop {
            match self.session(deliver) {
                Ended::Unwanted => return,
                Ended::Failed(err) => {
                    log::debug!(
                        "memo: invalidation subscriber for {}: {err:?}; reconnecting in {retry:?}",
                        self.address
                    );
                }
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

    /// One connection: subscribes, then hands over messages until it fails
    /// or is no longer wanted.
    fn session(&self, deliver: &mut dyn FnMut(&[u8]) -> bool) -> Ended {
        let mut conn = match self.connect() {
            Ok(conn) => conn,
            Err(err) => return Ended::Failed(err),
        };
        if let Err(err) = ready(conn.command(&[b"SUBSCRIBE", self.channel.as_bytes()])) {
            return Ended::Failed(err);
        }
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

    fn connect(&self) -> Result<Conn<Subscribed>, OpError> {
        let (host, port) = net::split_host_port(&self.address, DEFAULT_PORT)
            .map_err(|err| OpError::Protocol(err.to_string()))?;
        let addr = (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        let stream = TcpStream::connect_timeout(&addr, self.connect_timeout)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn::new(Subscribed(stream));
        if let Some(password) = &self.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(username) = &self.username {
                auth.push(username.as_bytes());
            }
            auth.push(password.as_bytes());
            ready(conn.command(&auth))?.ok("AUTH")?;
        }
        if self.db != 0 {
            // Pub/sub channels ignore the database; selecting it anyway
            // keeps the connection the same as the pool's.
            let db = self.db.to_string();
            ready(conn.command(&[b"SELECT", db.as_bytes()]))?.ok("SELECT")?;
        }
        Ok(conn)
    }
}
