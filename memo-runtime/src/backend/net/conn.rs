//! One connection, whatever drives it: the request buffer, the reply
//! buffer, and the loop that feeds sans-IO reply parsers.
//!
//! **One parser per protocol, for both worlds.** A protocol's replies are
//! parsed by plain functions over a byte slice ([`Parse`]): each returns
//! `Ok(None)` while the reply is incomplete, `Ok(Some((reply, used)))` once
//! it is whole, or an error. Neither parsers nor the conversations built on
//! them (`get` batches, pipelined `set`s, compare-and-delete) know how bytes
//! arrive: they are `async fn`s over an [`Transport`] transport. The blocking
//! client runs them over a [`DeadlineStream`](super::deadline::DeadlineStream),
//! whose reads never return `Pending`, so [`ready`] completes them in one
//! poll; the tokio client awaits them over a `tokio::net::TcpStream`. The
//! bytes on the wire, the lengths refused and the errors returned are
//! therefore the same in both.
//!
//! **TLS sits inside the connection.** With the `tls` feature a `Conn`
//! may carry a rustls session (`tls::Session`), through which its reads and
//! writes go; the conversations above see plaintext either way.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Values at least this large are written straight to the socket instead of
/// being copied into the request buffer.
const DIRECT_WRITE: usize = 16 * 1024;
/// Bytes asked of the socket per read, at most.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes asked of the socket per read, at least: a small reply fits, and
/// a large one grows the buffer to [`READ_CHUNK`] in a few reads.
const MIN_READ: usize = 1024;

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
        if err.get_ref().is_some_and(|inner| inner.is::<Carried>()) {
            if let Some(Ok(carried)) = err.into_inner().map(|inner| inner.downcast::<Carried>()) {
                return carried.0;
            }
            return OpError::Protocol("a carried error was lost".to_owned());
        }
        OpError::Io(err)
    }
}

/// An [`OpError`] carried through a transport's `io::Error` (a
/// multiplexed connection's driver reports to the call's transport this
/// way), turned back into itself by `OpError::from`, so that a refusal
/// stays a refusal and does not become an I/O failure.
#[derive(Debug)]
pub(crate) struct Carried(pub(crate) OpError);

impl std::fmt::Display for Carried {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Carried {}

pub(crate) use super::transport::Transport;

/// A reply parser: `Ok(None)` while `buf` holds only part of a reply,
/// `Ok(Some((reply, used)))` when its first `used` bytes are a whole reply.
pub(crate) type Parse<R> = fn(&[u8]) -> Parsed<R>;

/// What a [`Parse`] returns.
pub(crate) type Parsed<R> = Result<Option<(R, usize)>, OpError>;

/// An open connection: its transport, its TLS session if any, the bytes
/// read but not yet parsed, and the request being assembled.
#[derive(Debug)]
pub(crate) struct Conn<T> {
    pub(crate) io: T,
    /// The TLS session the bytes go through, once a handshake set it up.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Box<super::tls::Session>>,
    /// Bytes read from the socket, in `input[start..end]`; the rest is room
    /// for the next read. Its length only grows (as bytes arrive), so each
    /// byte of it is zeroed once per connection, not on every read:
    /// zeroing a fresh 64 KiB per reply cost more than the rest of a small
    /// hit.
    input: Vec<u8>,
    /// Where the unparsed bytes of `input` start.
    start: usize,
    /// Where the bytes read end.
    end: usize,
    /// The request being assembled; [`flush`](Self::flush) sends it.
    pub(crate) out: Vec<u8>,
    /// This connection's place under its pool's cap on open connections,
    /// given back when the connection is dropped, wherever that happens
    /// (pooled then evicted, failed, or a multiplexed lane ending).
    pub(crate) slot: Option<super::limit::Slot>,
}

impl<T: Transport> Conn<T> {
    pub(crate) fn new(io: T) -> Conn<T> {
        Conn {
            io,
            #[cfg(feature = "tls")]
            tls: None,
            input: Vec::new(),
            start: 0,
            end: 0,
            out: Vec::new(),
            slot: None,
        }
    }

    /// Whether a reply, or part of one, was read and not parsed: such a
    /// connection is out of step and never reused.
    pub(crate) fn has_unread(&self) -> bool {
        self.start < self.end
    }

    /// Whether bytes that no reply took were read from the server: those
    /// not parsed, and with TLS those rustls holds. Such a connection is
    /// out of step and never pooled.
    pub(crate) fn has_leftovers(&mut self) -> bool {
        #[cfg(feature = "tls")]
        if self.tls.as_mut().is_some_and(|tls| tls.has_unread()) {
            return true;
        }
        self.has_unread()
    }

    /// Writes `bytes` at once, bypassing the buffer.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        write(
            &mut self.io,
            #[cfg(feature = "tls")]
            &mut self.tls,
            bytes,
        )
        .await
    }

    /// Appends `bytes` to the request, writing large ones straight to the
    /// socket (after what is already buffered) rather than copying them.
    pub(crate) async fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() >= DIRECT_WRITE {
            self.flush().await?;
            self.send(bytes).await
        } else {
            self.out.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Sends the buffered request.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let result = write(
                &mut self.io,
                #[cfg(feature = "tls")]
                &mut self.tls,
                &self.out,
            )
            .await;
            self.out.clear();
            result?;
        }
        Ok(())
    }

    /// The next reply, as `parse` reads it, reading from the socket until
    /// it is whole. A peer that closes mid-reply cut it short (a protocol
    /// failure); one that closes between replies is an `UnexpectedEof`,
    /// what a pooled connection to a restarted server shows.
    pub(crate) async fn next<R>(&mut self, parse: Parse<R>) -> Result<R, OpError> {
        Ok(self.next_span(parse).await?.0)
    }

    /// The next reply, and where its bytes are in `input` (valid until the
    /// next read).
    async fn next_span<R>(
        &mut self,
        parse: Parse<R>,
    ) -> Result<(R, std::ops::Range<usize>), OpError> {
        loop {
            if let Some((reply, used)) = parse(&self.input[self.start..self.end])? {
                let span = self.start..self.start + used;
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok((reply, span));
            }
            if self.fill().await? == 0 {
                return Err(if self.has_unread() {
                    OpError::Protocol("reply cut short".to_owned())
                } else {
                    OpError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }

    /// Appends the bytes of the next reply, as `parse` delimits it, to
    /// `out`, reading until it is whole, and returns what `parse` says of
    /// it: for passing replies on unparsed (a multiplexed connection hands
    /// each call its own).
    #[cfg(feature = "async")]
    pub(crate) async fn next_raw<R>(
        &mut self,
        parse: Parse<R>,
        out: &mut Vec<u8>,
    ) -> Result<R, OpError> {
        let (reply, span) = self.next_span(parse).await?;
        out.extend_from_slice(&self.input[span]);
        Ok(reply)
    }

    /// What waits on this connection while no reply is expected: one poll
    /// of a read, which is `Pending` on a quiet connection. Through the
    /// TLS session if any, so that records the server sends on its own
    /// (TLS 1.3 session tickets) are taken in, and only bytes of a reply
    /// nobody asked for count. Cancelling the pending read loses nothing:
    /// the session keeps whatever it has read.
    #[cfg(feature = "async")]
    pub(crate) fn waiting(&mut self) -> Waiting {
        if self.has_leftovers() {
            return Waiting::Bytes;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let polled = pin!(self.fill()).poll(&mut cx);
        match polled {
            Poll::Pending => Waiting::Nothing,
            Poll::Ready(Ok(0) | Err(_)) => Waiting::Closed,
            Poll::Ready(Ok(_)) => Waiting::Bytes,
        }
    }

    /// Reads more bytes after the unparsed ones. The buffer grows only as
    /// bytes arrive, so a bogus length in a reply allocates nothing ahead.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Room for the next read: as much as the buffer already holds,
        // from `MIN_READ` up to `READ_CHUNK`, so a connection that only ever
        // reads small replies (every multiplexed call has its own) never
        // zeroes 64 KiB, and a large reply still arrives in large reads.
        let room = self.input.len().clamp(MIN_READ, READ_CHUNK);
        if self.input.len() < self.end + room {
            self.input.resize(self.end + room, 0);
        }
        let into = &mut self.input[self.end..];
        #[cfg(feature = "tls")]
        let read = match &mut self.tls {
            Some(tls) => tls.read(&mut self.io, into).await?,
            None => self.io.read_some(into).await?,
        };
        #[cfg(not(feature = "tls"))]
        let read = self.io.read_some(into).await?;
        self.end += read;
        Ok(read)
    }
}

/// What waits on an idle connection ([`Conn::waiting`]).
#[cfg(feature = "async")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// Nothing: the connection is in step.
    Nothing,
    /// The server closed the connection, or it failed.
    Closed,
    /// Bytes nobody asked for: the connection is out of step.
    Bytes,
}

/// Writes `bytes` to a connection's transport `io`, through its TLS
/// session if any.
async fn write<T: Transport>(
    io: &mut T,
    #[cfg(feature = "tls")] tls: &mut Option<Box<super::tls::Session>>,
    bytes: &[u8],
) -> io::Result<()> {
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        return tls.write_all(io, bytes).await;
    }
    io.write_all(bytes).await
}

/// Runs `future` to completion on this thread. Only for futures that never
/// return `Pending`, as every conversation over a blocking transport: it
/// takes one poll. Should one pend anyway, it is polled again after a
/// yield rather than lost.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::yield_now();
    }
}

/// The first line of `buf` without its `\r\n`: `Ok(None)` until it is
/// whole, an error when it is longer than `max_len` or not UTF-8, so a
/// confused peer cannot make memo buffer forever.
pub(crate) fn take_line(buf: &[u8], max_len: usize) -> Result<Option<(&str, usize)>, OpError> {
    let window = &buf[..buf.len().min(max_len)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= max_len {
            return Err(OpError::Protocol("reply line too long".to_owned()));
        }
        return Ok(None);
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(OpError::Protocol(
            "reply line not ended by \\r\\n".to_owned(),
        ));
    }
    let line = std::str::from_utf8(&buf[..end - 1])
        .map_err(|_| OpError::Protocol("reply line is not UTF-8".to_owned()))?;
    Ok(Some((line, end + 1)))
}

/// `length` bytes at the start of `buf` followed by `\r\n`: the range of
/// the data and the bytes used, or `Ok(None)` until they have all arrived.
pub(crate) fn take_data(
    buf: &[u8],
    length: usize,
) -> Result<Option<(std::ops::Range<usize>, usize)>, OpError> {
    let Some(end) = length.checked_add(2) else {
        return Err(OpError::Protocol("data length out of range".to_owned()));
    };
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[length..end] != b"\r\n" {
        return Err(OpError::Protocol("data not followed by \\r\\n".to_owned()));
    }
    Ok(Some((0..length, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_data_are_framed_strictly() {
        assert!(matches!(take_line(b"OK\r", 10), Ok(None)));
        assert!(matches!(take_line(b"OK\r\nx", 10), Ok(Some(("OK", 4)))));
        assert!(take_line(b"OK\n", 10).is_err());
        assert!(take_line(b"\n", 10).is_err());
        assert!(take_line(b"0123456789", 10).is_err());
        assert!(take_line(b"\xff\r\n", 10).is_err());
        assert!(matches!(take_data(b"abc\r", 3), Ok(None)));
        assert!(matches!(take_data(b"abc\r\n", 3), Ok(Some((r, 5))) if r == (0..3)));
        assert!(take_data(b"abcd\r\n", 3).is_err());
        assert!(take_data(b"", usize::MAX).is_err());
    }
}
