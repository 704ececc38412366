//! The byte transport every connection runs over ([`Transport`]): a blocking
//! `DeadlineStream`, a tokio socket, and under either, with the `tls`
//! feature, a rustls session. It sits below `conn` (the connection and its
//! framing) and `tls`, so both can speak over it.

use std::future::Future;
use std::io;

/// A byte transport: a socket, blocking or not.
pub(crate) trait Transport: Send {
    /// Reads some bytes into `buf`; zero means the peer closed.
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
    /// Writes all of `bytes`.
    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;
}
