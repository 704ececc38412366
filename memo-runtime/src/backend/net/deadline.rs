//! Deadlines, not per-read timeouts: the budget of one call, and a TCP
//! stream whose every read and write waits at most for the time left (see
//! the `net` module docs).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use std::future::Future;

use super::conn::Transport;
use super::{MAX_TUNING, Settings};

/// `from + duration`, or as late as representable near that: never panics.
pub(crate) fn later(from: Instant, duration: Duration) -> Instant {
    from.checked_add(duration.min(MAX_TUNING))
        .or_else(|| from.checked_add(Duration::from_secs(24 * 60 * 60)))
        .unwrap_or(from)
}

/// The deadlines of one call (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// When every connection attempt of the call must be done.
    pub(crate) connect_by: Instant,
    /// When every read and write of the call must be done; pushed back by
    /// the time spent connecting.
    pub(crate) io_by: Instant,
}

impl Budget {
    /// The budget of a call starting now.
    pub(crate) fn start(settings: &Settings) -> Budget {
        let now = Instant::now();
        Budget {
            connect_by: later(now, settings.connect_timeout),
            io_by: later(now, settings.timeout),
        }
    }

    /// Opens a TCP connection to `host:port` within the connect deadline,
    /// then runs `handshake` on it (a stream bounded by the same deadline);
    /// the time it all took is added to the I/O deadline.
    pub(crate) fn connect<T>(
        &mut self,
        host: &str,
        port: u16,
        handshake: impl FnOnce(DeadlineStream) -> io::Result<T>,
    ) -> io::Result<T> {
        let started = Instant::now();
        let result = connect(host, port, self.connect_by).and_then(|stream| {
            stream.set_nodelay(true)?;
            handshake(DeadlineStream::new(stream, self.connect_by))
        });
        self.connected(started);
        result
    }

    /// Gives a call that waited for room to open a
    /// connection its connect timeout from now, within its I/O deadline:
    /// the wait was not the server's slowness, and must not make the
    /// connection attempt fail as if it were.
    pub(crate) fn waited(&mut self, settings: &Settings) {
        let fresh = later(Instant::now(), settings.connect_timeout).min(self.io_by);
        self.connect_by = self.connect_by.max(fresh);
    }

    /// Adds the time spent connecting since `started` to the I/O deadline.
    pub(crate) fn connected(&mut self, started: Instant) {
        self.io_by = later(self.io_by, started.elapsed());
    }
}

/// A TCP stream whose reads and writes fail with `TimedOut` once its
/// deadline has passed, each one waiting at most for the time left.
///
/// The socket's own timeouts bound each wait. Setting one is a system call,
/// as costly as the read it bounds on a fast network, so the stream keeps
/// the timeouts it set and sets one again only when the time left is
/// shorter (a wait must never outlast the deadline). A timeout shorter than
/// the time left is kept: a wait it cuts short is taken up again for the
/// time left, so it costs the call nothing. Timeouts are set in whole
/// milliseconds (the kernel counts them in coarser ticks anyway), so the
/// calls that reuse a pooled connection, each with a deadline a little
/// later than the last's, find the timeout already set.
#[derive(Debug)]
pub(crate) struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
    /// The socket's read timeout as last set; `None` before the first.
    read_timeout: Option<Duration>,
    /// The socket's write timeout as last set.
    write_timeout: Option<Duration>,
}

/// The timeout to set for a wait of at most `left`: `left` in whole
/// milliseconds, or `left` itself under one.
fn timeout_for(left: Duration) -> Duration {
    let whole = Duration::from_millis(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
    if whole.is_zero() { left } else { whole }
}

/// Which of the socket's waits a timeout bounds.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Read,
    Write,
}

impl DeadlineStream {
    pub(crate) fn new(stream: TcpStream, deadline: Instant) -> Self {
        DeadlineStream {
            stream,
            deadline,
            read_timeout: None,
            write_timeout: None,
        }
    }

    pub(crate) fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Runs `op`, a read or a write, each of its waits bounded by the time
    /// left, until it ends other than by the socket's timeout or the
    /// deadline passes.
    fn waiting<T>(
        &mut self,
        wait: Wait,
        mut op: impl FnMut(&mut TcpStream) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            self.bound(wait)?;
            match op(&mut self.stream) {
                // A socket timeout shows as `WouldBlock` on Unix and
                // `TimedOut` elsewhere: the time left decides what it means.
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                result => return result,
            }
        }
    }

    /// Sets the socket's timeout for `wait` to the time left, unless the
    /// one set is no longer (see the type's docs).
    fn bound(&mut self, wait: Wait) -> io::Result<()> {
        let left = self.remaining()?;
        let set = match wait {
            Wait::Read => &mut self.read_timeout,
            Wait::Write => &mut self.write_timeout,
        };
        if set.is_none_or(|set| set > left) {
            let timeout = timeout_for(left);
            match wait {
                Wait::Read => self.stream.set_read_timeout(Some(timeout)),
                Wait::Write => self.stream.set_write_timeout(Some(timeout)),
            }?;
            *set = Some(timeout);
        }
        Ok(())
    }

    /// The time left, or `TimedOut` when there is none.
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        Ok(left)
    }

    /// Whether the connection can be reused: nothing unread is waiting on
    /// it (a stray reply would be read as the answer to the next command)
    /// and the peer has not closed it. One system call, a `recv` that peeks
    /// without waiting: the check runs before every request on a pooled
    /// connection.
    #[cfg(unix)]
    pub(crate) fn is_clean(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit()];
        let peeked = socket2::SockRef::from(&self.stream)
            .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
        matches!(peeked, Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }

    /// [`is_clean`](Self::is_clean) where no flag makes one `recv` not wait:
    /// the socket is made non-blocking around the peek.
    #[cfg(not(unix))]
    pub(crate) fn is_clean(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let idle = matches!(
            self.stream.peek(&mut byte),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock
        );
        self.stream.set_nonblocking(false).is_ok() && idle
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the call's deadline passed")
}

/// A socket timeout shows as `WouldBlock` on Unix; name it for what it is.
fn deadline_error(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        err
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.waiting(Wait::Read, |stream| stream.read(buf))
    }
}

/// A blocking transport: its futures are ready when first polled, so the
/// conversations over it run in one poll (`conn::ready`).
impl Transport for DeadlineStream {
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        std::future::ready(Read::read(self, buf))
    }

    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        std::future::ready(Write::write_all(self, bytes))
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.waiting(Wait::Write, |stream| stream.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `host:port` by `deadline`, trying each address in turn.
fn connect(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address found");
    for address in resolve(host, port, deadline)? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = deadline_error(err),
        }
    }
    Err(last_error)
}

/// The addresses of `host`, resolved by `deadline`. The system resolver
/// has no timeout (a dead DNS server blocks it for many seconds), so a name
/// is resolved on a helper thread that this call stops waiting for at the
/// deadline; the thread finishes on its own later. IP addresses, the usual
/// case for cache servers, need no thread.
fn resolve(host: &str, port: u16, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if deadline <= Instant::now() {
        return Err(timed_out());
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("memo-resolve".to_owned())
        .spawn(move || {
            let addresses = (name.as_str(), port)
                .to_socket_addrs()
                .map(|found| found.collect::<Vec<_>>());
            // The caller may have stopped waiting; nothing to do then.
            let _ = sender.send(addresses);
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match receiver.recv_timeout(left) {
        Ok(addresses) => addresses,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("resolving {host} took longer than the connect timeout"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_within_the_deadline_and_addresses_need_no_lookup() {
        let soon = later(Instant::now(), Duration::from_secs(5));
        let ip = resolve("127.0.0.1", 7, Instant::now()).unwrap();
        assert_eq!(ip, [SocketAddr::from(([127, 0, 0, 1], 7))]);
        let v6 = resolve("::1", 7, Instant::now()).unwrap();
        assert_eq!(v6.len(), 1);
        let found = resolve("localhost", 7, soon).unwrap();
        assert!(found.iter().all(|address| address.ip().is_loopback()));
        let err = resolve("localhost", 7, Instant::now()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn a_deadline_stream_times_out_after_its_deadline_not_per_read() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            // A byte every 100 ms: each read is quick, the whole is not.
            for _ in 0..20 {
                if peer.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_millis(350);
        let mut stream = DeadlineStream::new(TcpStream::connect(address).unwrap(), deadline);
        let mut all = Vec::new();
        let err = stream.read_to_end(&mut all).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!((3..=5).contains(&all.len()), "read {} bytes", all.len());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(600), "took {took:?}");
        std::thread::sleep(Duration::from_millis(150));
        assert!(!stream.is_clean(), "a stray byte is waiting");
        drop(stream);
        writer.join().unwrap();
    }

    /// A stream to a peer that writes `b"x"` each time told to, with the
    /// peer's side of the telling.
    fn stream_to_a_quiet_peer(deadline: Instant) -> (DeadlineStream, std::sync::mpsc::Sender<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let (tell, told) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            while told.recv().is_ok() {
                if peer.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        (
            DeadlineStream::new(TcpStream::connect(address).unwrap(), deadline),
            tell,
        )
    }

    #[test]
    fn a_timeout_set_for_a_later_deadline_never_outlasts_an_earlier_one() {
        let (mut stream, tell) =
            stream_to_a_quiet_peer(later(Instant::now(), Duration::from_secs(30)));
        tell.send(()).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).unwrap(), 1);
        // The socket's timeout is now about 30 s: the next call's deadline
        // is much earlier, and a silent peer must not hold it past it.
        let started = Instant::now();
        stream.set_deadline(started + Duration::from_millis(200));
        let err = stream.read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn a_wait_cut_short_by_an_earlier_timeout_goes_on_until_the_deadline() {
        let started = Instant::now();
        let (mut stream, tell) = stream_to_a_quiet_peer(started + Duration::from_millis(100));
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        // The socket's timeout is now under 100 ms, shorter than the next
        // call's time left: a reply that comes after it, within the
        // deadline, is still read.
        stream.set_deadline(later(Instant::now(), Duration::from_secs(30)));
        let teller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            tell.send(()).unwrap();
            tell
        });
        let waited = Instant::now();
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "read after {:?}",
            waited.elapsed()
        );
        assert!(waited.elapsed() >= Duration::from_millis(390));
        drop(teller.join().unwrap());
    }

    #[test]
    fn timeouts_are_whole_milliseconds_under_the_time_left() {
        for (left, timeout) in [
            (
                Duration::from_micros(2_999_999),
                Duration::from_millis(2_999),
            ),
            (Duration::from_millis(5), Duration::from_millis(5)),
            (Duration::from_micros(999), Duration::from_micros(999)),
            (Duration::from_nanos(1), Duration::from_nanos(1)),
            (Duration::MAX, Duration::from_millis(u64::MAX)),
        ] {
            assert_eq!(timeout_for(left), timeout, "for {left:?} left");
        }
    }

    #[test]
    fn only_a_quiet_open_connection_is_clean() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let far = later(Instant::now(), Duration::from_secs(5));
        let stream = DeadlineStream::new(TcpStream::connect(address).unwrap(), far);
        let (peer, _) = listener.accept().unwrap();
        assert!(stream.is_clean());
        drop(peer);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!stream.is_clean(), "closed by the peer");
    }
}
