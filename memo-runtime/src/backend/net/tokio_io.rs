//! The tokio side of the network clients: sockets that never block the
//! executor, connecting under the call's deadlines, and idle connections
//! free of any runtime.
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
//! own). So an idle connection is kept deregistered, as a plain
//! non-blocking `std` socket ([`Idle`]), and registered again with the
//! reactor of whichever runtime takes it next. No pooled connection is tied
//! to a runtime, so none can outlive one and poison a later call; a socket
//! that cannot be deregistered (its runtime is shutting down) is closed.
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

use super::conn::{Conn, Io};

impl Io for TcpStream {
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

/// An idle async connection, off any runtime's reactor.
#[derive(Debug)]
pub(crate) struct Idle {
    stream: std::net::TcpStream,
    /// The request buffer, kept for its capacity.
    out: Vec<u8>,
    /// The TLS session, which lives as long as the socket.
    #[cfg(feature = "tls")]
    tls: Option<Box<super::tls::Session>>,
}

impl Idle {
    /// Deregisters `conn`'s socket for the pool; `None` (the socket is
    /// closed) when its runtime no longer can.
    pub(crate) fn suspend(conn: Conn<TcpStream>) -> Option<Idle> {
        let Conn {
            io,
            mut out,
            #[cfg(feature = "tls")]
            tls,
            ..
        } = conn;
        out.clear();
        let stream = io.into_std().ok()?;
        Some(Idle {
            stream,
            out,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// Registers the socket with the current runtime's reactor; `None`
    /// (the socket is closed) when it cannot be reused: bytes are waiting
    /// on it (a stray reply would be read as the answer to the next
    /// command), the peer closed it, or it cannot be registered.
    pub(crate) fn resume(self) -> Option<Conn<TcpStream>> {
        // Non-blocking since `into_std`, so an idle socket peeks `WouldBlock`.
        let mut byte = [0u8; 1];
        let quiet = matches!(
            self.stream.peek(&mut byte),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock
        );
        if !quiet {
            return None;
        }
        let stream = TcpStream::from_std(self.stream).ok()?;
        let mut conn = Conn::new(stream);
        conn.out = self.out;
        #[cfg(feature = "tls")]
        {
            conn.tls = self.tls;
        }
        Some(conn)
    }
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
