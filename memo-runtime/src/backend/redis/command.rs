//! memo's Redis commands as data: what each one sends and how its reply
//! reads, written once for the single-node client and the cluster client
//! (which routes, pipelines and re-sends them by key slot).

use std::sync::atomic::{AtomicU64, Ordering};

use super::protocol::Value;
use crate::backend::net::conn::{Conn, Transport};
use crate::backend::net::pool::OpError;

/// Deletes `KEYS[1]` only if it holds `ARGV[1]`. Redis runs a script
/// atomically, so nothing can replace the value between the read and the
/// delete.
const DELETE_IF_VALUE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

/// Sets the expiry of `KEYS[1]` to `ARGV[2]` milliseconds only if it holds
/// `ARGV[1]`, atomically like [`DELETE_IF_VALUE`].
const TOUCH_IF_VALUE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// One command; `millis` is the `PX` of the call, as text.
#[derive(Debug, Clone)]
pub(super) enum Cmd<'a> {
    /// `GET key`.
    Get(&'a str),
    /// `MGET key...`; on a cluster, keys of one slot.
    MGet(Vec<&'a str>),
    /// `SET key value PX ms`.
    Set(&'a str, &'a [u8]),
    /// `SET key value NX PX ms`.
    Add(&'a str, &'a [u8]),
    /// `PEXPIRE key ms`.
    Touch(&'a str),
    /// `DEL key`.
    Delete(&'a str),
    /// The compare-and-delete script on `key`. `EVAL` sends the script
    /// each time: Redis caches it by digest, and a script of a hundred
    /// bytes costs less than the extra round trip of `EVALSHA` falling back
    /// on a restarted server.
    DeleteIfValue(&'a str, &'a [u8]),
    /// The compare-and-touch script on `key`.
    TouchIfValue(&'a str, &'a [u8]),
    /// `CLUSTER SLOTS`: the cluster's topology.
    Slots,
}

/// What a command answered, once checked against what it may answer.
#[derive(Debug)]
pub(super) enum Reply {
    /// `GET`: the value, if any.
    Value(Option<Vec<u8>>),
    /// `MGET`: the values, in key order.
    Values(Vec<Option<Vec<u8>>>),
    /// `SET`: stored.
    Done,
    /// `SET NX`, `PEXPIRE`, `DEL` and the scripts: whether it happened.
    Flag(bool),
    /// `CLUSTER SLOTS`, left for the cluster client to read.
    Topology(Value),
}

impl Cmd<'_> {
    /// The key whose slot the command goes to (the first, for `MGET`).
    pub(super) fn key(&self) -> Option<&str> {
        match self {
            Cmd::Get(key)
            | Cmd::Set(key, _)
            | Cmd::Add(key, _)
            | Cmd::Touch(key)
            | Cmd::Delete(key)
            | Cmd::DeleteIfValue(key, _)
            | Cmd::TouchIfValue(key, _) => Some(key),
            Cmd::MGet(keys) => keys.first().copied(),
            Cmd::Slots => None,
        }
    }

    /// Appends the command to `conn`'s request.
    pub(super) async fn push<T: Transport>(
        &self,
        conn: &mut Conn<T>,
        millis: &str,
    ) -> std::io::Result<()> {
        let px = millis.as_bytes();
        match self {
            Cmd::Get(key) => conn.push_command(&[b"GET", key.as_bytes()]).await,
            Cmd::MGet(keys) => {
                let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                args.push(b"MGET");
                args.extend(keys.iter().map(|key| key.as_bytes()));
                conn.push_command(&args).await
            }
            Cmd::Set(key, value) => {
                conn.push_command(&[b"SET", key.as_bytes(), value, b"PX", px])
                    .await
            }
            Cmd::Add(key, value) => {
                conn.push_command(&[b"SET", key.as_bytes(), value, b"NX", b"PX", px])
                    .await
            }
            Cmd::Touch(key) => conn.push_command(&[b"PEXPIRE", key.as_bytes(), px]).await,
            Cmd::Delete(key) => conn.push_command(&[b"DEL", key.as_bytes()]).await,
            Cmd::DeleteIfValue(key, expected) => {
                let script = DELETE_IF_VALUE.as_bytes();
                conn.push_command(&[b"EVAL", script, b"1", key.as_bytes(), expected])
                    .await
            }
            Cmd::TouchIfValue(key, expected) => {
                let script = TOUCH_IF_VALUE.as_bytes();
                conn.push_command(&[b"EVAL", script, b"1", key.as_bytes(), expected, px])
                    .await
            }
            Cmd::Slots => conn.push_command(&[b"CLUSTER", b"SLOTS"]).await,
        }
    }

    /// Reads the command's reply from `conn`: an error reply is
    /// [`OpError::Refused`] (the connection in step), a reply of a kind the
    /// command never answers is [`OpError::Protocol`].
    pub(super) async fn read<T: Transport>(&self, conn: &mut Conn<T>) -> Result<Reply, OpError> {
        if let Cmd::Slots = self {
            return Ok(Reply::Topology(conn.topology().await?));
        }
        let value = conn.value().await?;
        Ok(match self {
            Cmd::Get(_) => Reply::Value(value.bulk("GET")?),
            Cmd::MGet(keys) => {
                let Value::Array(values) = value else {
                    return Err(value.unexpected("MGET"));
                };
                if values.len() != keys.len() {
                    return Err(OpError::Protocol(format!(
                        "MGET of {} keys answered {} values",
                        keys.len(),
                        values.len()
                    )));
                }
                Reply::Values(
                    values
                        .into_iter()
                        .map(|value| value.bulk("MGET"))
                        .collect::<Result<_, _>>()?,
                )
            }
            Cmd::Set(..) => {
                value.ok("SET")?;
                Reply::Done
            }
            Cmd::Add(..) => match value {
                Value::Status(status) if status == "OK" => Reply::Flag(true),
                Value::Nil => Reply::Flag(false),
                other => return Err(other.unexpected("SET NX")),
            },
            Cmd::Touch(_) => Reply::Flag(value.int("PEXPIRE")? == 1),
            Cmd::Delete(_) => Reply::Flag(value.int("DEL")? > 0),
            Cmd::DeleteIfValue(..) => Reply::Flag(value.int("EVAL")? > 0),
            Cmd::TouchIfValue(..) => Reply::Flag(value.int("EVAL")? == 1),
            Cmd::Slots => Reply::Topology(value),
        })
    }
}

impl Reply {
    /// The value of a `GET`.
    pub(super) fn value(self) -> Result<Option<Vec<u8>>, OpError> {
        match self {
            Reply::Value(value) => Ok(value),
            other => Err(other.mismatch()),
        }
    }

    /// The values of an `MGET`.
    pub(super) fn values(self) -> Result<Vec<Option<Vec<u8>>>, OpError> {
        match self {
            Reply::Values(values) => Ok(values),
            other => Err(other.mismatch()),
        }
    }

    /// A `SET`'s acknowledgement.
    pub(super) fn done(self) -> Result<(), OpError> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.mismatch()),
        }
    }

    /// Whether a conditional command happened.
    pub(super) fn flag(self) -> Result<bool, OpError> {
        match self {
            Reply::Flag(flag) => Ok(flag),
            other => Err(other.mismatch()),
        }
    }

    /// A reply taken for another command's: memo's own mistake, reported
    /// as an error rather than a panic.
    fn mismatch(&self) -> OpError {
        OpError::Protocol(format!("reply {self:?} does not match its command"))
    }
}

/// The number of request batches written to Redis servers by this process
/// (each one write, then its replies read), for the benchmarks' round-trip
/// counts.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// Counts one round trip.
pub(super) fn count_round_trip() {
    ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
}

/// The round trips counted so far (see [`ROUND_TRIPS`]).
#[cfg_attr(not(feature = "__fuzz"), allow(dead_code))]
pub(crate) fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

impl<T: Transport> Conn<T> {
    /// Sends one command and reads its reply: one round trip.
    pub(super) async fn run(&mut self, cmd: &Cmd<'_>, millis: &str) -> Result<Reply, OpError> {
        self.out.clear();
        cmd.push(self, millis).await?;
        self.flush().await?;
        count_round_trip();
        cmd.read(self).await
    }
}
