//! The tokio side of the network clients: sockets that never block the
//! executor, connecting under the call's deadlines, and idle connections
//! kept per runtime.
//!
//! **Deadlines.** Connecting (DNS through `tokio::net::lookup_host`
//! included) and any handshake run under one `tokio::time::timeout_at` for
//! the connect deadline, and the operation under another for the I/O
//! deadline (`pool::run_async!`), as the blocking client's `Budget` has
//! it: a whole call takes at most `connect_timeout + timeout`, however its
//! server trickles, and a stale connection replaced mid-call stays within
//! the same deadlines.
//!
//! **Runtimes.** A tokio socket belongs to the reactor of the runtime that
//! registered it, and is dead once that runtime shuts down; a process may
//! run several runtimes, in turn or at once (each `#[tokio::test]` has its
//! own). So each idle connection is pooled with the [`Id`] of its runtime
//! ([`Idle`]) and only ever taken again by a call on that same runtime: no
//! connection crosses runtimes, so none can outlive its runtime and poison
//! a later call. The connections of a runtime that has shut down are never
//! taken; they age out of the pool, oldest first, as other connections are
//! released. Keeping idle sockets registered spares every call the
//! registering and deregistering with the reactor (two `epoll_ctl`s and a
//! reactor slot), which made pooled calls several times slower.
//!
//! **What a caller needs.** A tokio runtime with I/O and time enabled
//! (`enable_all`, as `#[tokio::main]` and `#[tokio::test]` build them),
//! current-thread or multi-thread. Polled outside any tokio runtime, a
//! call fails with an error instead of panicking.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, Id};

use super::conn::{Conn, Transport, Waiting};

impl Transport for TcpStream {
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        self.read(buf)
    }

    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        AsyncWriteExt::write_all(self, bytes)
    }
}

/// An idle async connection, still registered with the reactor of the
/// runtime that used it last.
#[derive(Debug)]
pub(crate) struct Idle {
    runtime: Id,
    conn: Conn<TcpStream>,
}

impl Idle {
    /// Pools `conn` for calls on the current runtime; `None` (the socket is
    /// closed) outside any runtime.
    pub(crate) fn park(mut conn: Conn<TcpStream>) -> Option<Idle> {
        let runtime = Handle::try_current().ok()?.id();
        conn.out.clear();
        Some(Idle { runtime, conn })
    }

    /// Whether this connection belongs to `runtime`'s reactor.
    pub(crate) fn on(&self, runtime: Id) -> bool {
        self.runtime == runtime
    }

    /// The connection, if it can be reused: `None` (the socket is closed)
    /// when bytes are waiting on it (a stray reply would be read as the
    /// answer to the next command), the peer closed it, or it failed.
    pub(crate) fn resume(mut self) -> Option<Conn<TcpStream>> {
        (self.conn.waiting() == Waiting::Nothing).then_some(self.conn)
    }
}

/// The runtime the caller runs on, whose idle connections it may take.
pub(crate) fn current_runtime() -> Option<Id> {
    Handle::try_current().ok().map(|handle| handle.id())
}

/// Opens a connection to `host:port`, trying each address in turn. The
/// caller bounds it with the connect deadline.
pub(crate) async fn connect(host: &str, port: u16) -> io::Result<Conn<TcpStream>> {
    let addresses: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
    };
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(Conn::new(stream));
            }
            Err(err) => last_error = err,
        }
    }
    Err(last_error)
}

/// The error of a deadline that passed.
pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the call's deadline passed")
}

/// Whether the caller runs on a tokio runtime, which the async clients'
/// sockets and timers need; an error rather than a panic when not.
pub(crate) fn check_runtime() -> Result<(), crate::backend::BackendError> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| {
            crate::backend::BackendError::new(
                "memo's async network clients need a tokio runtime (with time and I/O enabled)",
            )
        })
}
