//! Multiplexed async connections: many concurrent calls pipelined over one
//! connection per runtime, for protocols whose replies come back in the
//! order of the requests (Redis).
//!
//! **Why.** A pooled connection carries one call at a time, so each call
//! costs its own write, read and wake-up on both ends; under concurrency
//! the server spends its time switching between sockets. A multiplexed
//! connection sends every request waiting at that moment in one write and
//! reads their replies in one go, so a hundred concurrent hits cost the
//! server about one read and one write. This is what the `redis` crate's
//! multiplexed connection does; here it keeps memo's own rules.
//!
//! **How.** Each runtime has one lane per server ([`Lanes`]): a connection
//! owned by a driver task spawned on that runtime, fed by a channel. A
//! call runs its usual conversation (the same `async fn`s over an
//! [`Transport`] as the pooled clients) over a [`MuxIo`]: its writes collect in a
//! buffer, and its first read hands the buffer to the driver as one
//! request, together with the number of commands in it (counted by the
//! protocol's parser). The driver batches whatever requests wait, writes
//! them at once, cuts the replies (again with the parser) and hands each
//! call the raw bytes of exactly its own replies, which its conversation
//! then parses as if it had read them from a socket.
//!
//! **The rules stay.** A call waits at most until its own deadline
//! (`run_mux!` bounds it like `run_async!`); the driver reads each batch's
//! replies at most until the latest deadline in it, then drops the
//! connection, failing every call still waiting. Any transport failure or
//! reply that does not parse drops the connection the same way, so a later
//! call never reads an earlier call's reply. Each batch ends with a check
//! command whose reply nothing else can have (Redis `ECHO n`, memcached
//! `version`): a reply the server slipped in anywhere in the batch would
//! stand where the check's reply belongs, so the batch fails (its calls
//! compute) instead of handing replies to the wrong calls, however the
//! bytes were spread over reads; and no reply is handed out before the
//! check's has been read. Before each batch the driver
//! checks that nothing arrived unasked (a stray reply, or the server
//! closing the connection); if something did, the connection is dropped
//! and the batch's calls retry once on a fresh one, as a stale pooled
//! connection would. Failures reach the server's shared `Health` through
//! `Pool::settle`, as for any call. A lane belongs to one runtime and dies
//! with it (its driver task is gone, its channel closed); the next call on
//! another runtime opens its own.
//!
//! Only small requests are multiplexed: a request carrying a large value,
//! or asking for many, would hold up every call queued behind it, so the
//! backends send those over a pooled connection of their own.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Mutex;
use std::time::Instant;

use tokio::runtime::Id;
use tokio::sync::{mpsc, oneshot};

use super::conn::{Carried, Conn, OpError, Parse, Transport, Waiting};
use super::lock;

/// Request bytes sent in one write at most; the driver leaves the rest of
/// the queue for the next batch.
const MAX_BATCH: usize = 256 * 1024;

/// How a protocol is framed for a multiplexed connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Framing {
    /// Delimits one reply; `true` when it leaves the connection out of
    /// step (memcached's `CLIENT_ERROR`).
    pub(crate) split: Parse<bool>,
    /// Appends the check that ends batch `n`: a command whose reply only
    /// the check can have (Redis `ECHO n`).
    pub(crate) check: fn(u64, &mut Vec<u8>),
    /// Whether `reply`, one whole reply, answers batch `n`'s check.
    pub(crate) checked: fn(u64, &[u8]) -> bool,
}

/// Values up to this size are stored over the multiplexed connection;
/// larger ones, and every batch, go over a pooled connection of their own,
/// so that they hold up no other call.
pub(crate) const MAX_VALUE: usize = 16 * 1024;

/// What a call's request buffers start with: most single-key commands
/// fit, so they are written without reallocating.
pub(crate) const REQUEST_CAPACITY: usize = 256;

/// One call's request: its bytes, how many replies it expects, by when,
/// and where its replies go.
struct Request {
    bytes: Vec<u8>,
    replies: usize,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<u8>, OpError>>,
}

/// One runtime's multiplexed connection to a server.
struct Lane {
    runtime: Id,
    requests: mpsc::UnboundedSender<Request>,
}

/// The lanes of one server, one per runtime that has used it.
#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Mutex<Vec<Lane>>,
    /// Held while a lane is being opened, so that concurrent first calls
    /// wait for one connection instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("open", &lock(&self.lanes).len())
            .finish()
    }
}

/// A lane's sending end, as a call holds it.
#[derive(Clone)]
pub(crate) struct Sender(mpsc::UnboundedSender<Request>);

impl Lanes {
    /// The open lane of `runtime`, if any; lanes whose driver has ended
    /// (its connection failed, or its runtime shut down) are forgotten on
    /// the way.
    pub(crate) fn get(&self, runtime: Id) -> Option<Sender> {
        let mut lanes = lock(&self.lanes);
        lanes.retain(|lane| !lane.requests.is_closed());
        lanes
            .iter()
            .find(|lane| lane.runtime == runtime)
            .map(|lane| Sender(lane.requests.clone()))
    }

    /// Waits until no other call is opening a lane; the lane to use then
    /// if one was opened meanwhile, else a guard to hold while opening.
    pub(crate) async fn opening(
        &self,
        runtime: Id,
    ) -> Result<Sender, tokio::sync::MutexGuard<'_, ()>> {
        let guard = self.opening.lock().await;
        match self.get(runtime) {
            Some(lane) => Ok(lane),
            None => Err(guard),
        }
    }

    /// Starts a lane over `conn` on the current runtime, with `split`
    /// cutting replies (and saying which leave the connection out of
    /// step), and returns its sender: the lane already opened
    /// meanwhile by a concurrent call, if any (`conn` is then closed).
    pub(crate) fn open<S>(&self, runtime: Id, conn: Conn<S>, framing: Framing) -> Sender
    where
        S: Transport + 'static,
    {
        let mut lanes = lock(&self.lanes);
        lanes.retain(|lane| !lane.requests.is_closed());
        if let Some(lane) = lanes.iter().find(|lane| lane.runtime == runtime) {
            return Sender(lane.requests.clone());
        }
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(drive(conn, queue, framing));
        lanes.push(Lane {
            runtime,
            requests: requests.clone(),
        });
        Sender(requests)
    }

    /// Forgets `runtime`'s lane if it is the one `sender` feeds (a call
    /// found it failed), so that the next call opens a fresh one.
    pub(crate) fn close(&self, runtime: Id, sender: &Sender) {
        lock(&self.lanes)
            .retain(|lane| lane.runtime != runtime || !lane.requests.same_channel(&sender.0));
    }
}

/// The transport of one multiplexed call: writes collect in `out`, and the
/// first read after them sends them as one request and waits for its
/// replies, which later reads return.
pub(crate) struct MuxIo {
    lane: Sender,
    count: Parse<()>,
    deadline: Instant,
    out: Vec<u8>,
    replies: Vec<u8>,
    read: usize,
}

impl MuxIo {
    /// A call over `lane`, whose requests `count` parses command by
    /// command, to be answered by `deadline`.
    pub(crate) fn new(lane: Sender, count: Parse<()>, deadline: Instant) -> MuxIo {
        MuxIo {
            lane,
            count,
            deadline,
            out: Vec::with_capacity(REQUEST_CAPACITY),
            replies: Vec::new(),
            read: 0,
        }
    }

    /// Sends the collected writes and waits for their replies.
    async fn exchange(&mut self) -> io::Result<()> {
        let bytes = std::mem::take(&mut self.out);
        let replies = count(self.count, &bytes)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            bytes,
            replies,
            deadline: self.deadline,
            reply,
        };
        if self.lane.0.send(request).is_err() {
            return Err(lane_gone());
        }
        match answer.await {
            Ok(Ok(replies)) => {
                self.replies = replies;
                self.read = 0;
                Ok(())
            }
            Ok(Err(err)) => Err(into_io(err)),
            // The driver ended with the request unanswered.
            Err(_) => Err(lane_gone()),
        }
    }
}

impl Transport for MuxIo {
    async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read == self.replies.len() {
            if self.out.is_empty() {
                // Nothing asked and nothing left: the conversation wants
                // more than its replies, which is a closed stream to it.
                return Ok(0);
            }
            self.exchange().await?;
        }
        let left = &self.replies[self.read..];
        let n = left.len().min(buf.len());
        buf[..n].copy_from_slice(&left[..n]);
        self.read += n;
        Ok(n)
    }

    fn write_all<'a>(
        &'a mut self,
        bytes: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        self.out.extend_from_slice(bytes);
        std::future::ready(Ok(()))
    }
}

/// How many whole commands `bytes` holds; an error if it ends inside one
/// (a conversation that reads before it has written a whole request).
fn count(parse: Parse<()>, mut bytes: &[u8]) -> io::Result<usize> {
    let mut commands = 0;
    while !bytes.is_empty() {
        match parse(bytes) {
            Ok(Some(((), used))) if used > 0 => {
                commands += 1;
                bytes = &bytes[used..];
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a multiplexed request is not whole commands",
                ));
            }
        }
    }
    Ok(commands)
}

/// What a call sees when its lane's driver ended before answering: a
/// connection that closed, which the pool's rules retry once.
fn lane_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the multiplexed connection closed",
    )
}

/// An error from the driver, as the transport error of the call's
/// conversation, which turns it back into itself.
fn into_io(err: OpError) -> io::Error {
    match err {
        OpError::Io(err) => err,
        other => io::Error::other(Carried(other)),
    }
}

/// The error each waiting call gets when the connection fails under it:
/// the same kind, for the pool's rules (stale, timed out, broken).
fn copy_error(err: &OpError) -> OpError {
    match err {
        OpError::Io(err) => OpError::Io(io::Error::new(err.kind(), err.to_string())),
        OpError::Protocol(message) => OpError::Protocol(message.clone()),
        OpError::Refused(message) => OpError::Refused(message.clone()),
        OpError::Rejected(message) => OpError::Rejected(message.clone()),
    }
}

/// The driver task of one lane: batches the waiting requests, writes them,
/// reads and hands out their replies, until the connection fails or every
/// sender is gone.
async fn drive<S: Transport>(
    conn: Conn<S>,
    mut queue: mpsc::UnboundedReceiver<Request>,
    framing: Framing,
) {
    let Err(err) = serve(conn, &mut queue, framing).await else {
        return;
    };
    // The calls still queued fail as the connection did, rather than
    // finding their lane gone: a hung server is a timeout to all of them.
    queue.close();
    while let Ok(request) = queue.try_recv() {
        let _ = request.reply.send(Err(copy_error(&err)));
    }
}

/// The loop of [`drive`]: `Ok` once every sender is gone, or the error
/// that ended the connection (already sent to the calls of its batch).
async fn serve<S: Transport>(
    mut conn: Conn<S>,
    queue: &mut mpsc::UnboundedReceiver<Request>,
    framing: Framing,
) -> Result<(), OpError> {
    let mut next: Option<Request> = None;
    let mut batches: u64 = 0;
    loop {
        let first = match next.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(request) => request,
                None => return Ok(()),
            },
        };
        let mut bytes = first.bytes.len();
        let mut batch = VecDeque::from([first]);
        while bytes < MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => {
                    bytes += request.bytes.len();
                    batch.push_back(request);
                }
                Err(_) => break,
            }
        }
        // A call that gave up before its request was sent needs no reply.
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if conn.waiting() != Waiting::Nothing {
            // The server closed the connection (a restart), or sent bytes
            // nobody asked for since the last batch: nothing of this batch
            // was sent, so its calls see a closed connection and retry
            // once on a fresh one, as with a stale pooled connection.
            let err = OpError::Io(lane_gone());
            fail(batch, &err);
            return Err(err);
        }
        let deadline = batch
            .iter()
            .map(|request| request.deadline)
            .max()
            .unwrap_or_else(Instant::now);
        let read = tokio::time::timeout_at(
            deadline.into(),
            exchange(&mut conn, &mut batch, framing, batches),
        )
        .await
        .unwrap_or_else(|_| {
            Err(OpError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "the call's deadline passed",
            )))
        });
        batches = batches.wrapping_add(1);
        let (replies, in_step) = match read {
            Ok(read) => read,
            Err(err) => {
                fail(batch, &err);
                return Err(err);
            }
        };
        // The replies are handed out only once the batch is read whole and
        // nothing more came: a server that slipped in an extra reply would
        // have shifted every reply after it onto the wrong call. (A reply
        // that turns up later still fails the next batch, as a stray
        // reply on a pooled connection fails its next use.)
        let after = if in_step {
            conn.waiting()
        } else {
            Waiting::Closed
        };
        if after == Waiting::Bytes {
            let err = out_of_step();
            fail(batch, &err);
            return Err(err);
        }
        let answered = replies.len();
        let mut requests = batch.into_iter();
        for (request, replies) in requests.by_ref().take(answered).zip(replies) {
            // A call dropped meanwhile no longer listens; its replies were
            // read all the same, to stay in step.
            let _ = request.reply.send(Ok(replies));
        }
        if !in_step {
            // memcached's `CLIENT_ERROR`, answered to its own call, after
            // which the server may read our bytes out of step.
            let err = out_of_step();
            fail(requests, &err);
            return Err(err);
        }
        if after == Waiting::Closed {
            return Err(OpError::Io(lane_gone()));
        }
        // Requests that came while this batch was out go next; the queue
        // is drained before waiting again.
        next = queue.try_recv().ok();
    }
}

/// Writes `batch`'s requests at once and reads each one's replies, in
/// order. The flag is false when a reply left the connection out of step
/// (the requests after it then have no replies).
async fn exchange<S: Transport>(
    conn: &mut Conn<S>,
    batch: &mut VecDeque<Request>,
    framing: Framing,
    number: u64,
) -> Result<(Vec<Vec<u8>>, bool), OpError> {
    let split = framing.split;
    conn.out.clear();
    for request in batch.iter() {
        conn.out.extend_from_slice(&request.bytes);
    }
    (framing.check)(number, &mut conn.out);
    conn.flush().await?;
    let mut all = Vec::with_capacity(batch.len());
    for request in batch.iter_mut() {
        // The request's own buffer, sent, takes its replies: no
        // allocation here, and the call frees what it allocated (memory
        // freed on another thread than it came from is slow to free).
        let mut replies = std::mem::take(&mut request.bytes);
        replies.clear();
        let mut in_step = true;
        for _ in 0..request.replies {
            in_step &= !conn.next_raw(split, &mut replies).await?;
        }
        all.push(replies);
        if !in_step {
            return Ok((all, false));
        }
    }
    // The check's reply must come right after the batch's own: a reply
    // the server slipped in anywhere before it would stand in its place,
    // however the replies were spread over reads.
    let mut check = Vec::new();
    match conn.next_raw(split, &mut check).await {
        Ok(_) if (framing.checked)(number, &check) => {}
        // Bytes after the batch's replies that are not the check's, even
        // ones that do not parse: out of step, as a stray reply on a
        // pooled connection is, and no sign that the server is down.
        Ok(_) | Err(OpError::Protocol(_)) => return Err(out_of_step()),
        Err(err) => return Err(err),
    }
    Ok((all, true))
}

/// Fails every call of `batch` with (a copy of) `err`.
fn fail(batch: impl IntoIterator<Item = Request>, err: &OpError) {
    for request in batch {
        let _ = request.reply.send(Err(copy_error(err)));
    }
}

/// The error of the calls of a batch the server answered out of step
/// (bytes nobody asked for, or a `CLIENT_ERROR` before them): the server
/// is up, so no back-off, but no reply of theirs can be trusted.
fn out_of_step() -> OpError {
    OpError::Rejected("the server answered out of step; the connection was dropped".to_owned())
}
