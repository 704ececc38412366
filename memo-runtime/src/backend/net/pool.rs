//! The one connection pool of both network clients, and the loop every call
//! runs in.
//!
//! Each server has a pool of idle connections; a caller takes one (or opens
//! a new one when none is idle), so concurrent callers never queue behind
//! one socket. A call runs within one `Budget`. What a failure does depends
//! on what it says about the connection and the server ([`OpError`]): a
//! connection goes back to the pool only after a call that left it in step,
//! a pooled connection found closed by a restarted server is replaced once
//! within the same budget, and a transport or protocol failure starts a
//! back-off (`health`). A pooled connection with bytes waiting on it, or
//! closed by the server, is never reused, so a stray reply can never be
//! taken for the answer to a later command.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Mutex;

use super::deadline::{Budget, DeadlineStream};
use super::health::Health;
use super::{Settings, lock};
use crate::backend::{BackendError, BackendErrorKind};

/// Values at least this large are written straight to the socket instead of
/// being copied into the request buffer.
const DIRECT_WRITE: usize = 16 * 1024;

/// A failed operation, by what it means for the connection and the server.
#[derive(Debug)]
pub(crate) enum OpError {
    /// The socket failed or timed out: drop the connection, back off.
    Io(io::Error),
    /// The server said something memo cannot follow: the connection is out
    /// of step, so drop it and back off.
    Protocol(String),
    /// The server refused the request (a value too large, out of memory, an
    /// error reply) but the connection is in step and the server is fine.
    Refused(String),
    /// The server answered with an error where the connection may now be
    /// out of step (memcached's `CLIENT_ERROR`, which can make it read our
    /// data as commands; an error inside a reply): drop the connection, but
    /// the server is up, so no back-off.
    // Only memcached's replies say this.
    #[cfg_attr(not(feature = "memcached"), allow(dead_code))]
    Rejected(String),
}

impl From<io::Error> for OpError {
    fn from(err: io::Error) -> Self {
        OpError::Io(err)
    }
}

/// An open connection: a buffered reader over the socket, and a buffer the
/// next request is assembled in.
#[derive(Debug)]
pub(crate) struct Conn {
    reader: BufReader<DeadlineStream>,
    /// The request being assembled; [`flush`](Self::flush) sends it.
    pub(crate) out: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(stream: DeadlineStream) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 * 1024, stream),
            out: Vec::new(),
        }
    }

    /// Writes `bytes` to the socket at once, bypassing the buffer.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Appends `bytes` to the request, writing large ones straight to the
    /// socket (after what is already buffered) rather than copying them.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_WRITE {
            self.flush()?;
            self.send(bytes)
        } else {
            self.out.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Sends the buffered request.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let result = self.reader.get_mut().write_all(&self.out);
            self.out.clear();
            result?;
        }
        Ok(())
    }

    /// One reply line without its `\r\n`, refusing lines longer than
    /// `max_len`, so a confused peer cannot make memo buffer forever.
    pub(crate) fn line(&mut self, max_len: usize) -> Result<String, OpError> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(max_len as u64)
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
    pub(crate) fn data(&mut self, length: usize) -> Result<Vec<u8>, OpError> {
        let mut data = Vec::with_capacity(length.min(1 << 20));
        let read = (&mut self.reader)
            .take(length as u64)
            .read_to_end(&mut data)?;
        if read < length {
            return Err(OpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut end = [0u8; 2];
        self.reader.read_exact(&mut end)?;
        if end != *b"\r\n" {
            return Err(OpError::Protocol("data not followed by \\r\\n".to_owned()));
        }
        Ok(data)
    }
}

/// A handshake run on each new connection (authentication, database
/// selection), within the connect deadline.
pub(crate) type Handshake<'a> = &'a dyn Fn(&mut Conn) -> Result<(), OpError>;

/// One server: its address, its idle connections and its health.
#[derive(Debug)]
pub(crate) struct Pool {
    /// What logs and errors call the server (`memcached host:port`).
    label: String,
    host: String,
    port: u16,
    idle: Mutex<Vec<Conn>>,
    health: Health,
    /// What an error reply is called in the error it becomes.
    refused: &'static str,
}

impl Pool {
    /// A pool for the server `host:port`, called `label` in logs and errors;
    /// `refused` prefixes the message of a refusal.
    pub(crate) fn new(label: String, host: String, port: u16, refused: &'static str) -> Pool {
        Pool {
            label,
            host,
            port,
            idle: Mutex::new(Vec::new()),
            health: Health::default(),
            refused,
        }
    }

    /// The host and port connections go to.
    #[cfg(test)]
    pub(crate) fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Runs `op` on a pooled connection, within one [`Budget`]. A
    /// connection that turns out to be stale (the server restarted since it
    /// was pooled) is replaced once with a fresh one, inside the same
    /// budget; any other transport failure drops the connection and starts
    /// a back-off. A refusal is returned as is and the connection, still in
    /// step, is kept: the server is up.
    pub(crate) fn run<T>(
        &self,
        settings: &Settings,
        handshake: Handshake<'_>,
        op: &mut dyn FnMut(&mut Conn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let what = || self.label.clone();
        self.health.admit(&what, settings)?;
        let mut budget = Budget::start(settings);
        let mut replaced = false;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => match self.connect(&mut budget, handshake) {
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
                    return Err(BackendError::new(format!(
                        "{}: {}{message}",
                        self.label, self.refused
                    ))
                    .with_kind(BackendErrorKind::Server));
                }
                Err(OpError::Rejected(message)) => {
                    // The server is up and answered; only this connection
                    // may be out of step, so it alone is dropped.
                    self.health.succeeded(&what);
                    return Err(BackendError::new(format!("{}: {message}", self.label))
                        .with_kind(BackendErrorKind::Server));
                }
                Err(OpError::Io(err)) if reused && !replaced && is_stale(&err) => {
                    // Every idle connection dates from before the restart.
                    lock(&self.idle).clear();
                    replaced = true;
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

    /// Opens a connection and runs the handshake, all within the connect
    /// deadline.
    fn connect(&self, budget: &mut Budget, handshake: Handshake<'_>) -> io::Result<Conn> {
        budget.connect(&self.host, self.port, |stream| {
            let mut conn = Conn::new(stream);
            handshake(&mut conn).map_err(|err| match err {
                OpError::Io(err) => err,
                OpError::Protocol(message)
                | OpError::Refused(message)
                | OpError::Rejected(message) => io::Error::other(format!("handshake: {message}")),
            })?;
            Ok(conn)
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

/// No handshake: the connection is ready once open (memcached).
#[cfg_attr(not(feature = "memcached"), allow(dead_code))]
pub(crate) fn no_handshake(_: &mut Conn) -> Result<(), OpError> {
    Ok(())
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
