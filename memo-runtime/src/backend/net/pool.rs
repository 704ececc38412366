//! The one connection pool of both network clients, and the rules every
//! call runs by, for blocking and async callers alike.
//!
//! Each server has a pool of idle connections (blocking ones, and async
//! ones when the `async` feature is on: the same sizes and reuse rules,
//! and one shared health); a caller takes one (or opens a new one when
//! none is idle), so concurrent callers never queue behind one socket.
//! Blocking calls run in [`Pool::run`], async ones in `run_async!`, and
//! both settle each attempt by the same rules ([`Pool::settle`]). A call runs within one `Budget`. What a failure does depends
//! on what it says about the connection and the server ([`OpError`]): a
//! connection goes back to the pool only after a call that left it in step,
//! a pooled connection found closed by a restarted server is replaced once
//! within the same budget, and a transport or protocol failure starts a
//! back-off (`health`). A pooled connection with bytes waiting on it, or
//! closed by the server, is never reused, so a stray reply can never be
//! taken for the answer to a later command.
//!
//! **A bounded number of sockets.** Besides the idle connections it keeps
//! (`pool_size`), a pool counts every connection it has open, in use or
//! idle, blocking, async and multiplexed alike, and opens no more than
//! `max_connections` (`limit`): each connection holds a [`Slot`] that
//! it gives back when it is dropped, wherever that happens. A caller that
//! finds no idle connection and no free slot waits, within its own
//! deadline, for either; an idle connection that only another world or
//! runtime could use is closed to make room. A caller still waiting at
//! its deadline fails with a timeout error, without counting against the
//! server's health: the server is fine, only busy on our side.
//!
//! With the `tls` feature a pool may speak TLS to its server
//! ([`Pool::set_tls`]): each new connection, blocking or async, runs its
//! TLS handshake within the connect deadline, before the protocol's own
//! handshake, and keeps its session for as long as it is pooled.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::conn::Conn;
use super::deadline::{Budget, DeadlineStream};
use super::health::Health;
use super::limit::Limiter;
pub(crate) use super::limit::Slot;
use super::{Settings, lock};
use crate::backend::{BackendError, BackendErrorKind};

pub(crate) use super::conn::OpError;

/// A blocking connection.
pub(crate) type SyncConn = Conn<DeadlineStream>;

/// A handshake run on each new blocking connection (authentication,
/// database selection), within the connect deadline.
pub(crate) type Handshake<'a> = &'a dyn Fn(&mut SyncConn) -> Result<(), OpError>;

/// The runtime whose idle connections an async caller may take.
#[cfg(feature = "async")]
type IdleOf = tokio::runtime::Id;
#[cfg(not(feature = "async"))]
type IdleOf = std::convert::Infallible;

/// What a caller without an idle connection gets: one that came back to
/// the pool while it waited, or a slot to open a new one with.
pub(crate) enum Room<C> {
    Idle(C),
    Slot(Slot),
}

/// What became of one attempt of a call ([`Pool::settle`]).
pub(crate) enum Settled<T> {
    /// The call is over; `keep` says whether its connection is in step and
    /// may go back to the pool.
    Done {
        result: Result<T, BackendError>,
        keep: bool,
    },
    /// A stale pooled connection: try once more on a fresh one, within the
    /// same budget.
    Retry,
}

/// One server: its address, its idle connections and its health, shared
/// by blocking and async callers (a server that failed for one is skipped
/// by both).
#[derive(Debug)]
pub(crate) struct Pool {
    /// What logs and errors call the server (`memcached host:port`).
    label: String,
    host: String,
    port: u16,
    idle: Mutex<Vec<SyncConn>>,
    #[cfg(feature = "async")]
    idle_async: Mutex<Vec<super::tokio_io::Idle>>,
    /// Multiplexed connections, one per runtime (`mux`).
    #[cfg(feature = "async")]
    pub(crate) lanes: super::mux::Lanes,
    health: Health,
    /// The count of open connections, and the callers waiting for room.
    limiter: Arc<Limiter>,
    /// What an error reply is called in the error it becomes.
    refused: &'static str,
    /// How connections speak TLS, when they do.
    #[cfg(feature = "tls")]
    tls: Option<super::tls::TlsConfig>,
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
            #[cfg(feature = "async")]
            idle_async: Mutex::new(Vec::new()),
            #[cfg(feature = "async")]
            lanes: super::mux::Lanes::default(),
            health: Health::default(),
            limiter: Arc::default(),
            refused,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Makes every new connection speak TLS as `tls` says, verifying that
    /// the server's certificate names this pool's host.
    pub(crate) fn set_tls(&mut self, tls: super::TlsConfig) {
        #[cfg(feature = "tls")]
        {
            self.tls = Some(tls);
        }
        #[cfg(not(feature = "tls"))]
        match tls {}
    }

    /// [`set_tls`](Self::set_tls) when `tls` is given; plaintext otherwise.
    pub(crate) fn use_tls(&mut self, tls: Option<&super::TlsConfig>) {
        #[cfg(feature = "tls")]
        {
            self.tls = tls.cloned();
        }
        #[cfg(not(feature = "tls"))]
        if let Some(tls) = tls {
            match *tls {}
        }
    }

    /// Runs the TLS handshake on a new connection when this pool speaks
    /// TLS, within the deadline of `conn`'s transport (blocking) or the
    /// caller's (async); nothing otherwise.
    pub(crate) async fn secure<T: super::conn::Transport>(
        &self,
        conn: &mut Conn<T>,
    ) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let name = super::tls::server_name(&self.host)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
            let mut session = tls.session(&name)?;
            session.handshake(&mut conn.io).await?;
            conn.tls = Some(Box::new(session));
        }
        let _ = conn;
        Ok(())
    }

    /// [`secure`](Self::secure) for an async connection, by `deadline`.
    #[cfg(feature = "async")]
    pub(crate) async fn secure_async(
        &self,
        conn: &mut Conn<tokio::net::TcpStream>,
        deadline: std::time::Instant,
    ) -> io::Result<()> {
        tokio::time::timeout_at(deadline.into(), self.secure(conn))
            .await
            .unwrap_or_else(|_| Err(handshake_timed_out()))
    }

    /// How this pool's connections speak TLS, if they do.
    pub(crate) fn tls(&self) -> Option<&super::TlsConfig> {
        #[cfg(feature = "tls")]
        return self.tls.as_ref();
        #[cfg(not(feature = "tls"))]
        None
    }

    /// The host and port connections go to.
    pub(crate) fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Admits a call (or fails it at once while the server is skipped) and
    /// starts its budget.
    pub(crate) fn begin(&self, settings: &Settings) -> Result<Budget, BackendError> {
        self.health.admit(&|| self.label.clone(), settings)?;
        Ok(Budget::start(settings))
    }

    /// The error of a call that could not connect, starting a back-off.
    pub(crate) fn connect_failed(&self, settings: &Settings, err: io::Error) -> BackendError {
        self.health
            .failed(&|| self.label.clone(), settings, "cannot connect", err)
    }

    /// What one attempt's `result` means, for blocking and async calls
    /// alike. A refusal is returned as is and the connection, still in
    /// step, is kept: the server is up. A connection that turns out to be
    /// stale (`reused`, and the server restarted since it was pooled) is
    /// replaced once; any other transport failure drops the connection and
    /// starts a back-off.
    pub(crate) fn settle<T>(
        &self,
        settings: &Settings,
        reused: bool,
        replaced: &mut bool,
        result: Result<T, OpError>,
    ) -> Settled<T> {
        let what = || self.label.clone();
        let (result, keep) = match result {
            Ok(value) => {
                self.health.succeeded(&what);
                (Ok(value), true)
            }
            Err(OpError::Refused(message)) => {
                self.health.succeeded(&what);
                let err = BackendError::new(format!("{}: {}{message}", self.label, self.refused))
                    .with_kind(BackendErrorKind::Server);
                (Err(err), true)
            }
            Err(OpError::Rejected(message)) => {
                // The server is up and answered; only this connection
                // may be out of step, so it alone is dropped.
                self.health.succeeded(&what);
                let err = BackendError::new(format!("{}: {message}", self.label))
                    .with_kind(BackendErrorKind::Server);
                (Err(err), false)
            }
            Err(OpError::Io(err)) if reused && !*replaced && is_stale(&err) => {
                // Every idle connection dates from before the restart.
                lock(&self.idle).clear();
                #[cfg(feature = "async")]
                lock(&self.idle_async).clear();
                *replaced = true;
                return Settled::Retry;
            }
            Err(OpError::Io(err)) => (
                Err(self.health.failed(&what, settings, "I/O failed", err)),
                false,
            ),
            Err(OpError::Protocol(message)) => {
                let err = io::Error::new(io::ErrorKind::InvalidData, message);
                (
                    Err(self
                        .health
                        .failed(&what, settings, "sent a malformed reply", err)),
                    false,
                )
            }
        };
        Settled::Done { result, keep }
    }

    /// Runs `op` on a pooled blocking connection, within one [`Budget`]
    /// (see [`settle`](Self::settle)).
    pub(crate) fn run<T>(
        &self,
        settings: &Settings,
        handshake: Handshake<'_>,
        op: &mut dyn FnMut(&mut SyncConn) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let mut budget = self.begin(settings)?;
        let mut replaced = false;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => match self.room(settings, &mut budget)? {
                    Room::Idle(conn) => (conn, true),
                    Room::Slot(slot) => match self.connect(&mut budget, handshake) {
                        Ok(mut conn) => {
                            conn.slot = Some(slot);
                            (conn, false)
                        }
                        Err(err) => return Err(self.connect_failed(settings, err)),
                    },
                },
            };
            conn.io.set_deadline(budget.io_by);
            let result = op(&mut conn);
            match self.settle(settings, reused, &mut replaced, result) {
                Settled::Done { result, keep } => {
                    if keep {
                        self.release(conn, settings);
                    }
                    return result;
                }
                Settled::Retry => {}
            }
        }
    }

    /// Room for a blocking call without an idle connection: a slot at
    /// once when fewer than `max_connections` are open, else whichever
    /// comes first, a connection pooled or a slot freed, by the call's
    /// deadline (see the module docs).
    fn room(
        &self,
        settings: &Settings,
        budget: &mut Budget,
    ) -> Result<Room<SyncConn>, BackendError> {
        if let Some(slot) = self.limiter.try_acquire(settings.max_connections) {
            return Ok(Room::Slot(slot));
        }
        let _waiter = self.limiter.waiter();
        loop {
            let seen = self.limiter.version();
            if let Some(conn) = self.take_idle() {
                return Ok(Room::Idle(conn));
            }
            if let Some(slot) = self.limiter.try_acquire(settings.max_connections) {
                budget.waited(settings);
                return Ok(Room::Slot(slot));
            }
            if self.evict_idle(None) {
                continue;
            }
            let left = budget.io_by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.busy(settings));
            }
            self.limiter.sleep(seen, left);
        }
    }

    /// [`room`](Self::room) for an async call on the current runtime.
    #[cfg(feature = "async")]
    pub(crate) async fn room_async(
        &self,
        settings: &Settings,
        budget: &mut Budget,
    ) -> Result<Room<Conn<tokio::net::TcpStream>>, BackendError> {
        if let Some(slot) = self.limiter.try_acquire(settings.max_connections) {
            return Ok(Room::Slot(slot));
        }
        let _waiter = self.limiter.waiter();
        loop {
            let notified = self.limiter.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(conn) = self.take_idle_async() {
                return Ok(Room::Idle(conn));
            }
            if let Some(slot) = self.limiter.try_acquire(settings.max_connections) {
                budget.waited(settings);
                return Ok(Room::Slot(slot));
            }
            if self.evict_idle(super::tokio_io::current_runtime()) {
                continue;
            }
            let left = budget.io_by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.busy(settings));
            }
            let _ = tokio::time::timeout(left.min(super::limit::RECHECK), notified).await;
        }
    }

    /// Closes one idle connection that the caller cannot take, to make
    /// room: an async one (of any runtime) for a blocking caller
    /// (`runtime` `None`), a blocking one or another runtime's for an
    /// async caller on `runtime`. Whether there was one. A connection the
    /// caller could take is left for it: closing it would only make the
    /// server count a socket more until it notices the close.
    fn evict_idle(&self, runtime: Option<IdleOf>) -> bool {
        // Without async connections a blocking caller could take every
        // idle one.
        #[cfg(not(feature = "async"))]
        let evicted = runtime.is_some();
        #[cfg(feature = "async")]
        let evicted = {
            let blocking = runtime.and_then(|_| lock(&self.idle).pop());
            let evicted = blocking.is_some();
            drop(blocking);
            evicted || {
                let unusable = {
                    let mut idle = lock(&self.idle_async);
                    let at = idle
                        .iter()
                        .position(|conn| runtime.is_none_or(|runtime| !conn.on(runtime)));
                    at.map(|at| idle.remove(at))
                };
                // Closing deregisters from the reactor: not under the lock.
                unusable.is_some()
            }
        };
        evicted
    }

    /// The error of a call that found every connection busy until its
    /// deadline. Not a failure of the server: no back-off.
    pub(crate) fn busy(&self, settings: &Settings) -> BackendError {
        BackendError::new(format!(
            "{}: all {} connections were busy until the call's deadline",
            self.label, settings.max_connections
        ))
        .with_kind(BackendErrorKind::Timeout)
    }

    /// An idle connection fit for reuse; those with stray bytes waiting or
    /// closed by the server are dropped on the way.
    fn take_idle(&self) -> Option<SyncConn> {
        loop {
            let conn = lock(&self.idle).pop()?;
            // The session's own leftovers were checked when it was pooled.
            if conn.io.is_clean() {
                return Some(conn);
            }
        }
    }

    /// Opens a connection and runs the handshake, all within the connect
    /// deadline.
    fn connect(&self, budget: &mut Budget, handshake: Handshake<'_>) -> io::Result<SyncConn> {
        budget.connect(&self.host, self.port, |stream| {
            let mut conn = Conn::new(stream);
            super::conn::ready(self.secure(&mut conn))?;
            handshake(&mut conn).map_err(handshake_error)?;
            Ok(conn)
        })
    }

    /// Pools `conn` unless the pool is full or a reply was left half read.
    fn release(&self, mut conn: SyncConn, settings: &Settings) {
        if conn.has_leftovers() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < settings.pool_size {
            idle.push(conn);
            drop(idle);
            self.limiter.wake();
        }
    }

    /// Takes an idle async connection of the current runtime, if any,
    /// the most recently pooled first.
    #[cfg(feature = "async")]
    pub(crate) fn take_idle_async(&self) -> Option<Conn<tokio::net::TcpStream>> {
        let runtime = super::tokio_io::current_runtime()?;
        loop {
            let idle = {
                let mut pool = lock(&self.idle_async);
                let at = pool.iter().rposition(|idle| idle.on(runtime))?;
                pool.remove(at)
            };
            if let Some(conn) = idle.resume() {
                return Some(conn);
            }
        }
    }

    /// Pools an async connection unless a reply was left half read. A full
    /// pool makes room by dropping its oldest connection, so the
    /// connections of a runtime that has shut down (never taken again, see
    /// `tokio_io`) age out.
    #[cfg(feature = "async")]
    pub(crate) fn release_async(&self, mut conn: Conn<tokio::net::TcpStream>, settings: &Settings) {
        if conn.has_leftovers() || settings.pool_size == 0 {
            return;
        }
        let Some(idle) = super::tokio_io::Idle::park(conn) else {
            return;
        };
        let evicted = {
            let mut pool = lock(&self.idle_async);
            let evicted = (pool.len() >= settings.pool_size).then(|| pool.remove(0));
            pool.push(idle);
            evicted
        };
        // Closing deregisters from the reactor: not under the pool's lock.
        drop(evicted);
        self.limiter.wake();
    }
}

/// The error of a TLS handshake that did not finish by the connect
/// deadline.
#[cfg(feature = "async")]
fn handshake_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "TLS: the handshake did not finish within the connect timeout",
    )
}

/// A handshake failure, as the connection failure it is.
pub(crate) fn handshake_error(err: OpError) -> io::Error {
    match err {
        OpError::Io(err) => err,
        OpError::Protocol(message) | OpError::Refused(message) | OpError::Rejected(message) => {
            io::Error::other(format!("handshake: {message}"))
        }
    }
}

/// No handshake: the connection is ready once open (memcached).
#[cfg_attr(not(feature = "memcached"), allow(dead_code))]
pub(crate) fn no_handshake(_: &mut SyncConn) -> Result<(), OpError> {
    Ok(())
}

/// Whether `err` is what a pooled connection to a restarted server gives on
/// its first use: the peer closed or reset it, not a timeout.
pub(crate) fn is_stale(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Runs one async call on `$pool`, by the rules of the blocking
/// `Pool::run`: admitted by the shared health, an idle connection or a
/// fresh one (with `$handshake` on it, `$conn` naming it) within the
/// connect deadline, `$op` within the I/O deadline, then
/// `Pool::settle`. Evaluates to the call's `Result`. A macro rather than a
/// function taking a closure, because the operation is a future borrowing
/// the connection, which closures cannot return in stable Rust without
/// losing `Send`.
#[cfg(feature = "async")]
macro_rules! run_async {
    ($pool:expr, $settings:expr, handshake: |$hconn:ident| $handshake:expr, op: |$conn:ident| $op:expr $(,)?) => {{
        let pool: &$crate::backend::net::pool::Pool = $pool;
        let settings: &$crate::backend::net::Settings = $settings;
        match $crate::backend::net::tokio_io::check_runtime().and_then(|()| pool.begin(settings)) {
            Err(err) => Err(err),
            Ok(mut budget) => {
                let mut replaced = false;
                loop {
                    let (mut conn, reused) = match pool.take_idle_async() {
                        Some(conn) => (conn, true),
                        None => match pool.room_async(settings, &mut budget).await {
                            Err(err) => break Err(err),
                            Ok($crate::backend::net::pool::Room::Idle(conn)) => (conn, true),
                            Ok($crate::backend::net::pool::Room::Slot(slot)) => {
                                let connected = $crate::backend::net::pool::within_connect!(
                                    budget,
                                    $crate::backend::net::pool::open_async!(
                                        pool,
                                        budget,
                                        |$hconn| { $handshake }
                                    )
                                );
                                match connected {
                                    Ok(mut conn) => {
                                        conn.slot = Some(slot);
                                        (conn, false)
                                    }
                                    Err(err) => break Err(pool.connect_failed(settings, err)),
                                }
                            }
                        },
                    };
                    let result = {
                        let $conn = &mut conn;
                        $crate::backend::net::pool::within_io!(budget, $op)
                    };
                    match pool.settle(settings, reused, &mut replaced, result) {
                        $crate::backend::net::pool::Settled::Done { result, keep } => {
                            if keep {
                                pool.release_async(conn, settings);
                            }
                            break result;
                        }
                        $crate::backend::net::pool::Settled::Retry => {}
                    }
                }
            }
        }
    }};
}
#[cfg(feature = "async")]
pub(crate) use run_async;

/// Runs one async call over `$pool`'s multiplexed connection for the
/// current runtime (`mux`), by the rules of `run_async!`: admitted by the
/// shared health, the lane opened if need be (with `$handshake` on its
/// connection, `$framing` cutting and checking its replies) within the
/// connect deadline,
/// `$count` counting the commands of each request,
/// `$op` within the I/O deadline over a `MuxIo`, then `Pool::settle`; a
/// lane found closed is replaced once within the same deadlines.
#[cfg(feature = "async")]
macro_rules! run_mux {
    ($pool:expr, $settings:expr, count: $count:expr, framing: $framing:expr, handshake: |$hconn:ident| $handshake:expr, op: |$conn:ident| $op:expr $(,)?) => {{
        let pool: &$crate::backend::net::pool::Pool = $pool;
        let settings: &$crate::backend::net::Settings = $settings;
        let count: $crate::backend::net::conn::Parse<()> = $count;
        let framing: $crate::backend::net::mux::Framing = $framing;
        let runtime = $crate::backend::net::tokio_io::check_runtime().and_then(|()| {
            $crate::backend::net::tokio_io::current_runtime()
                .ok_or_else(|| $crate::backend::BackendError::new("no tokio runtime"))
        });
        match runtime.and_then(|runtime| pool.begin(settings).map(|budget| (runtime, budget))) {
            Err(err) => Err(err),
            Ok((runtime, mut budget)) => {
                let mut replaced = false;
                loop {
                    let (lane, reused) = match pool.lanes.get(runtime) {
                        Some(lane) => (lane, true),
                        None => {
                            // One caller opens the lane while the others
                            // wait for it, all within their deadlines; only
                            // the opener takes room under the cap.
                            let opening = ::tokio::time::timeout_at(
                                ::tokio::time::Instant::from_std(budget.io_by),
                                pool.lanes.opening(runtime),
                            )
                            .await;
                            let opened = match opening {
                                Err(_) => break Err(pool.busy(settings)),
                                // Opened by a concurrent call meanwhile.
                                Ok(Ok(lane)) => (lane, false),
                                Ok(Err(guard)) => {
                                    let room = match pool.room_async(settings, &mut budget).await {
                                        Ok(room) => room,
                                        Err(err) => break Err(err),
                                    };
                                    let connected = $crate::backend::net::pool::within_connect!(
                                        budget,
                                        async {
                                            let conn = match room {
                                                $crate::backend::net::pool::Room::Idle(conn) => {
                                                    conn
                                                }
                                                $crate::backend::net::pool::Room::Slot(slot) => {
                                                    let mut conn =
                                                        $crate::backend::net::pool::open_async!(
                                                            pool,
                                                            budget,
                                                            |$hconn| $handshake
                                                        )
                                                        .await?;
                                                    conn.slot = Some(slot);
                                                    conn
                                                }
                                            };
                                            Ok::<_, ::std::io::Error>(
                                                pool.lanes.open(runtime, conn, framing),
                                            )
                                        }
                                    );
                                    drop(guard);
                                    match connected {
                                        Ok(lane) => (lane, false),
                                        Err(err) => break Err(pool.connect_failed(settings, err)),
                                    }
                                }
                            };
                            opened
                        }
                    };
                    let result = {
                        let mut conn = $crate::backend::net::conn::Conn::new(
                            $crate::backend::net::mux::MuxIo::new(
                                lane.clone(),
                                count,
                                budget.io_by,
                            ),
                        );
                        conn.out
                            .reserve($crate::backend::net::mux::REQUEST_CAPACITY);
                        let $conn = &mut conn;
                        $crate::backend::net::pool::within_io!(budget, $op)
                    };
                    match pool.settle(settings, reused, &mut replaced, result) {
                        $crate::backend::net::pool::Settled::Done { result, .. } => break result,
                        $crate::backend::net::pool::Settled::Retry => {
                            pool.lanes.close(runtime, &lane)
                        }
                    }
                }
            }
        }
    }};
}
#[cfg(feature = "async")]
pub(crate) use run_mux;

/// A new async connection to `$pool`'s server with its TLS and protocol
/// handshakes (`$handshake` on it, `$hconn` naming it): an async block,
/// evaluating to `io::Result<Conn>`, for `within_connect!`.
#[cfg(feature = "async")]
macro_rules! open_async {
    ($pool:expr, $budget:expr, |$hconn:ident| $handshake:expr) => {
        async {
            let (host, port) = $pool.address();
            let mut conn = $crate::backend::net::tokio_io::connect(host, port).await?;
            $pool.secure_async(&mut conn, $budget.connect_by).await?;
            {
                let $hconn = &mut conn;
                $handshake
                    .await
                    .map_err($crate::backend::net::pool::handshake_error)?;
            }
            Ok::<_, ::std::io::Error>(conn)
        }
    };
}
#[cfg(feature = "async")]
pub(crate) use open_async;

/// Awaits `$connecting` (an `io::Result`) within `$budget`'s connect
/// deadline, a timeout failing it, and adds the time it took to the I/O
/// deadline, as the blocking `Budget::connect` does.
#[cfg(feature = "async")]
macro_rules! within_connect {
    ($budget:expr, $connecting:expr) => {{
        let started = ::std::time::Instant::now();
        let connected = ::tokio::time::timeout_at(
            ::tokio::time::Instant::from_std($budget.connect_by),
            $connecting,
        )
        .await
        .unwrap_or_else(|_| Err($crate::backend::net::tokio_io::timed_out()));
        $budget.connected(started);
        connected
    }};
}
#[cfg(feature = "async")]
pub(crate) use within_connect;

/// Awaits `$op` (a `Result<_, OpError>`) within `$budget`'s I/O
/// deadline, a timeout failing it as an I/O error.
#[cfg(feature = "async")]
macro_rules! within_io {
    ($budget:expr, $op:expr) => {
        ::tokio::time::timeout_at(::tokio::time::Instant::from_std($budget.io_by), $op)
            .await
            .unwrap_or_else(|_| {
                Err($crate::backend::net::pool::OpError::Io(
                    $crate::backend::net::tokio_io::timed_out(),
                ))
            })
    };
}
#[cfg(feature = "async")]
pub(crate) use within_io;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A pool for a loopback listener that accepts (through its backlog)
    /// and never answers, with `max` connections and a 200 ms deadline.
    fn quiet_pool(max: usize) -> (Pool, Settings, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pool = Pool::new("test".to_owned(), "127.0.0.1".to_owned(), port, "");
        let mut settings = Settings::default();
        settings.set_max_connections(max);
        settings.set_timeout(Duration::from_millis(200));
        (pool, settings, listener)
    }

    #[test]
    fn a_call_finding_every_connection_busy_waits_then_times_out_without_a_back_off() {
        let (pool, settings, _listener) = quiet_pool(2);
        let held: Vec<Slot> = (0..2)
            .map(|_| pool.limiter.try_acquire(settings.max_connections).unwrap())
            .collect();
        let started = Instant::now();
        let err = pool
            .run(&settings, &no_handshake, &mut |_| Ok(()))
            .unwrap_err();
        let waited = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
        // A slot given back lets the next call through at once: the
        // server was never counted as failed.
        drop(held);
        pool.run(&settings, &no_handshake, &mut |_| Ok(())).unwrap();
        assert_eq!(pool.limiter.open(), 1, "the idle one");
        lock(&pool.idle).clear();
        assert_eq!(pool.limiter.open(), 0, "closed");
    }

    #[test]
    fn a_waiting_call_takes_a_connection_as_soon_as_one_comes_back() {
        let (pool, settings, _listener) = quiet_pool(1);
        pool.run(&settings, &no_handshake, &mut |_| Ok(())).unwrap();
        let conn = pool.take_idle().expect("pooled");
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let started = Instant::now();
                pool.run(&settings, &no_handshake, &mut |_| Ok(()))
                    .map(|()| started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(50));
            pool.release(conn, &settings);
            let waited = waiter.join().unwrap().unwrap();
            assert!(waited < Duration::from_millis(150), "{waited:?}");
        });
        assert_eq!(pool.limiter.open(), 1);
    }

    #[cfg(feature = "async")]
    #[test]
    fn async_calls_wait_for_room_too_and_blocking_idle_ones_make_room() {
        let (pool, settings, _listener) = quiet_pool(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let held = pool.limiter.try_acquire(1).unwrap();
        let err = runtime
            .block_on(async {
                run_async!(&pool, &settings, handshake: |_c| async { Ok::<(), OpError>(()) }, op: |_c| async { Ok::<(), OpError>(()) })
            })
            .unwrap_err();
        assert!(
            err.is_timeout() && err.to_string().contains("busy"),
            "{err}"
        );
        drop(held);
        // A blocking connection sits idle, holding the only slot: an async
        // caller, which cannot use it, closes it to make room.
        pool.run(&settings, &no_handshake, &mut |_| Ok(())).unwrap();
        assert_eq!(lock(&pool.idle).len(), 1);
        runtime
            .block_on(async {
                run_async!(&pool, &settings, handshake: |_c| async { Ok::<(), OpError>(()) }, op: |_c| async { Ok::<(), OpError>(()) })
            })
            .unwrap();
        assert_eq!(lock(&pool.idle).len(), 0);
        assert_eq!(pool.limiter.open(), 1);
    }
}
