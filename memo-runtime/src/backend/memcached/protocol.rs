//! memcached's text protocol, as memo speaks it: `get` with many keys
//! (pipelined in bounded batches), `gets`, `set` (pipelined for
//! `set_many`), `add`, `touch`, `delete`, `cas`, and meta delete, each
//! reply parsed strictly with bounded lengths by a sans-IO parser, and
//! each conversation written once for the blocking and the async client
//! (see `net::conn`).

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::BackendError;
use crate::backend::net::conn::{Conn, Parsed, Transport, take_data, take_line};
use crate::backend::net::pool::OpError;
use crate::common::MAX_KEY_LEN;

/// memcached's largest possible item (its `-I` setting tops out at 1 GiB):
/// a reply claiming more is not from a memcached, and is refused before a
/// byte of it is read.
const MAX_ITEM: usize = 1 << 30;

/// Expirations above this many seconds are Unix times to memcached.
const MAX_RELATIVE_EXPIRATION: u64 = 30 * 24 * 60 * 60;
/// The latest absolute expiration memcached parses (it reads a 32-bit
/// signed number): 2038-01-19.
const MAX_ABSOLUTE_EXPIRATION: u64 = i32::MAX as u64;
/// Request bytes written before reading replies, for `get` batches. Well
/// under any socket buffer, so the write never waits on a server that is
/// itself waiting for us to read.
const MAX_PIPELINED_REQUEST: usize = 32 * 1024;
/// Keys named in one `get` command: a bounded request line, of at most
/// ~25 KB with the longest keys.
const MAX_KEYS_PER_GET: usize = 100;
/// `set`s written before reading their replies. Each reply is at most a
/// short line, so a batch's replies fit in a socket buffer.
const MAX_PIPELINED_SETS: usize = 256;
/// The longest reply line accepted.
const MAX_LINE: usize = 1024;

/// A one-line reply to a storage, touch or delete command.
#[derive(Debug)]
pub(super) enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Touched,
    Deleted,
    /// A meta command's status code (`HD`, `NF`, `EX`, ...).
    Meta(String),
    /// `ERROR`: the server does not know the command.
    Error,
}

impl Reply {
    fn unexpected(self, command: &str) -> OpError {
        OpError::Protocol(format!("unexpected reply {self:?} to {command}"))
    }
}

/// One item of a `get` reply.
#[derive(Debug)]
enum Item {
    Value {
        key: String,
        data: Vec<u8>,
        cas: Option<u64>,
    },
    End,
}

/// Parses a one-line reply (sans-IO, see `net::conn`). A refusal
/// (`SERVER_ERROR`) is a whole reply that leaves the connection in step,
/// so it is returned as a parsed `Err`, its line consumed.
fn parse_reply(buf: &[u8]) -> Parsed<Result<Reply, OpError>> {
    let Some((line, used)) = take_line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    let reply = match line {
        "STORED" => Ok(Reply::Stored),
        "NOT_STORED" => Ok(Reply::NotStored),
        "EXISTS" => Ok(Reply::Exists),
        "NOT_FOUND" => Ok(Reply::NotFound),
        "TOUCHED" => Ok(Reply::Touched),
        "DELETED" => Ok(Reply::Deleted),
        "ERROR" => Ok(Reply::Error),
        _ => {
            if let Some(message) = line.strip_prefix("SERVER_ERROR ") {
                Err(OpError::Refused(message.to_owned()))
            } else if let Some(message) = line.strip_prefix("CLIENT_ERROR ") {
                // The server may now read our data as commands.
                Err(OpError::Rejected(format!("client error: {message}")))
            } else {
                let code = line.split(' ').next().unwrap_or_default();
                if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                    Ok(Reply::Meta(code.to_owned()))
                } else {
                    return Err(OpError::Protocol(format!("unexpected reply {line:?}")));
                }
            }
        }
    };
    Ok(Some((reply, used)))
}

/// Parses one item of a `get`/`gets` reply (sans-IO, see `net::conn`):
/// `VALUE` with its data, or `END`. An error line there leaves the rest of
/// the reply unaccounted for, so it is an error and the connection is
/// dropped.
fn parse_item(buf: &[u8]) -> Result<Option<(Item, usize)>, OpError> {
    let Some((line, used)) = take_line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    if line == "END" {
        return Ok(Some((Item::End, used)));
    }
    if line.starts_with("SERVER_ERROR") || line.starts_with("CLIENT_ERROR") {
        return Err(OpError::Rejected(line.to_owned()));
    }
    let (key, length, cas) = parse_value_line(line)?;
    let Some((range, data_used)) = take_data(&buf[used..], length)? else {
        return Ok(None);
    };
    let data = buf[used..][range].to_vec();
    let item = Item::Value {
        key: key.to_owned(),
        data,
        cas,
    };
    Ok(Some((item, used + data_used)))
}

/// The conversations of each operation, written once over any transport
/// (`net::conn`): the blocking client runs them to completion in one poll,
/// the async one awaits them.
impl<T: Transport> Conn<T> {
    /// The values of `keys` (`get`), or with `cas` their CAS tokens too
    /// (`gets`; the last found is kept).
    pub(super) async fn get_many(
        &mut self,
        keys: &[&str],
        mut cas: Option<&mut Option<u64>>,
    ) -> Result<Vec<Option<Vec<u8>>>, OpError> {
        let command = if cas.is_some() { "gets" } else { "get" };
        let mut values = Vec::with_capacity(keys.len());
        let mut start = 0;
        while start < keys.len() {
            // Write as many `get` commands as fit the pipelining budget...
            let mut end = start;
            let mut batches = Vec::new();
            self.out.clear();
            while end < keys.len() && (end == start || self.out.len() < MAX_PIPELINED_REQUEST) {
                let batch_start = end;
                self.out.extend_from_slice(command.as_bytes());
                while end < keys.len() && end - batch_start < MAX_KEYS_PER_GET {
                    self.out.push(b' ');
                    self.out.extend_from_slice(keys[end].as_bytes());
                    end += 1;
                }
                self.out.extend_from_slice(b"\r\n");
                batches.push(batch_start..end);
            }
            self.flush().await?;
            // ...then read their answers, in order.
            for batch in batches {
                let wanted = &keys[batch];
                let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
                let mut next = 0;
                loop {
                    let Item::Value {
                        key,
                        data,
                        cas: token,
                    } = self.next(parse_item).await?
                    else {
                        break;
                    };
                    // memcached answers in request order, skipping misses.
                    let offset = wanted[next..]
                        .iter()
                        .position(|wanted| *wanted == key)
                        .ok_or_else(|| {
                            OpError::Protocol(format!("reply for a key not asked for: {key:?}"))
                        })?;
                    next += offset;
                    found[next] = Some(data);
                    if let Some(cas) = cas.as_deref_mut() {
                        *cas = token;
                    }
                    next += 1;
                }
                values.extend(found);
            }
            start = end;
        }
        Ok(values)
    }

    /// The next one-line reply; a refusal is an error.
    async fn reply(&mut self) -> Result<Reply, OpError> {
        self.next(parse_reply).await?
    }

    async fn store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> Result<Reply, OpError> {
        self.out.clear();
        self.push_store(command, key, value, exptime).await?;
        self.flush().await?;
        self.reply().await
    }

    async fn push_store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> io::Result<()> {
        let header = format!("{command} {key} 0 {exptime} {}\r\n", value.len());
        self.out.extend_from_slice(header.as_bytes());
        self.push(value).await?;
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    pub(super) async fn set(
        &mut self,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> Result<(), OpError> {
        match self.store("set", key, value, exptime).await? {
            Reply::Stored => Ok(()),
            other => Err(OpError::Protocol(format!(
                "unexpected reply {other:?} to set {key}"
            ))),
        }
    }

    pub(super) async fn add(
        &mut self,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> Result<bool, OpError> {
        match self.store("add", key, value, exptime).await? {
            Reply::Stored => Ok(true),
            Reply::NotStored => Ok(false),
            other => Err(other.unexpected("add")),
        }
    }

    /// Pipelines the `set`s in batches, reading each batch's replies before
    /// writing the next. Every reply is read even after a refusal, so the
    /// connection stays in step; the first refusal is returned.
    pub(super) async fn set_many(
        &mut self,
        items: &[(&str, &[u8])],
        exptime: u64,
    ) -> Result<(), OpError> {
        let mut refused = None;
        for batch in items.chunks(MAX_PIPELINED_SETS) {
            self.out.clear();
            for (key, value) in batch {
                self.push_store("set", key, value, exptime).await?;
            }
            self.flush().await?;
            for (key, _) in batch {
                match self.reply().await {
                    Ok(Reply::Stored) => {}
                    Err(OpError::Refused(message)) => {
                        refused.get_or_insert(format!("set {key}: {message}"));
                    }
                    Ok(other) => return Err(other.unexpected("set")),
                    Err(err) => return Err(err),
                }
            }
        }
        refused.map_or(Ok(()), |message| Err(OpError::Refused(message)))
    }

    pub(super) async fn touch(&mut self, key: &str, exptime: u64) -> Result<bool, OpError> {
        self.send(format!("touch {key} {exptime}\r\n").as_bytes())
            .await?;
        match self.reply().await? {
            Reply::Touched => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(other.unexpected("touch")),
        }
    }

    pub(super) async fn delete(&mut self, key: &str) -> Result<bool, OpError> {
        self.send(format!("delete {key}\r\n").as_bytes()).await?;
        match self.reply().await? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(other.unexpected("delete")),
        }
    }

    /// Reads the value with its CAS token (`gets`) and deletes with a meta
    /// delete conditioned on that token (`md key C<cas>`), so a value
    /// replaced in between is left alone. A server older than 1.6, which
    /// has no meta commands, gets a plain delete.
    pub(super) async fn delete_if_value(
        &mut self,
        key: &str,
        expected: &[u8],
    ) -> Result<bool, OpError> {
        let mut cas = None;
        let current = self.get_many(&[key], Some(&mut cas)).await?.pop().flatten();
        let Some(cas) = cas.filter(|_| current.as_deref() == Some(expected)) else {
            return Ok(false);
        };
        self.send(format!("md {key} C{cas}\r\n").as_bytes()).await?;
        match self.reply().await? {
            Reply::Meta(code) if code == "HD" => Ok(true),
            Reply::Meta(code) if code == "NF" || code == "EX" => Ok(false),
            Reply::Error => self.delete(key).await,
            other => Err(other.unexpected("md")),
        }
    }

    /// Reads the value with its CAS token (`gets`) and stores the same
    /// bytes back with the new expiration under that token (`cas`), so a
    /// value replaced in between is neither extended nor overwritten.
    pub(super) async fn touch_if_value(
        &mut self,
        key: &str,
        expected: &[u8],
        exptime: u64,
    ) -> Result<bool, OpError> {
        let mut cas = None;
        let current = self.get_many(&[key], Some(&mut cas)).await?.pop().flatten();
        let Some(cas) = cas.filter(|_| current.as_deref() == Some(expected)) else {
            return Ok(false);
        };
        self.out.clear();
        let header = format!("cas {key} 0 {exptime} {} {cas}\r\n", expected.len());
        self.out.extend_from_slice(header.as_bytes());
        self.push(expected).await?;
        self.out.extend_from_slice(b"\r\n");
        self.flush().await?;
        match self.reply().await? {
            Reply::Stored => Ok(true),
            Reply::Exists | Reply::NotFound => Ok(false),
            other => Err(other.unexpected("cas")),
        }
    }
}

/// Delimits one command of a request memo wrote (for the multiplexed
/// connection, which counts the commands of each request): a line, and
/// for a storage command the data block after it.
#[cfg(feature = "async")]
pub(super) fn split_request(buf: &[u8]) -> Parsed<()> {
    // A `get` line names at most `MAX_KEYS_PER_GET` keys.
    let Some((line, used)) = take_line(buf, 64 * 1024)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let stores = matches!(
        parts.next(),
        Some("set" | "add" | "replace" | "append" | "prepend" | "cas")
    );
    if !stores {
        return Ok(Some(((), used)));
    }
    let length = parts
        .nth(3)
        .and_then(|length| length.parse::<usize>().ok())
        .ok_or_else(|| OpError::Protocol(format!("malformed storage command {line:?}")))?;
    Ok(take_data(&buf[used..], length)?.map(|(_, data_used)| ((), used + data_used)))
}

/// Delimits one reply (for the multiplexed connection, which cuts the
/// replies of a batch): a `get`/`gets` reply up to its `END`, or a single
/// line. `true` for `CLIENT_ERROR`, after which the server may read our
/// bytes out of step.
#[cfg(feature = "async")]
fn split_reply(buf: &[u8]) -> Parsed<bool> {
    let Some((line, used)) = take_line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    if !line.starts_with("VALUE ") {
        return Ok(Some((line.starts_with("CLIENT_ERROR"), used)));
    }
    let mut at = 0;
    loop {
        let Some((line, used)) = take_line(&buf[at..], MAX_LINE)? else {
            return Ok(None);
        };
        if line == "END" {
            return Ok(Some((false, at + used)));
        }
        let (_, length, _) = parse_value_line(line)?;
        let Some((_, data_used)) = take_data(&buf[at + used..], length)? else {
            return Ok(None);
        };
        at += used + data_used;
    }
}

/// memcached's text protocol on a multiplexed connection: each batch ends
/// with `version`, whose `VERSION ...` line no other command of memo's
/// answers.
#[cfg(feature = "async")]
pub(super) const FRAMING: crate::backend::net::mux::Framing = crate::backend::net::mux::Framing {
    split: split_reply,
    check: |_, out| out.extend_from_slice(b"version\r\n"),
    checked: |_, reply| reply.starts_with(b"VERSION "),
};

/// Takes apart `VALUE <key> <flags> <bytes> [<cas>]`. Anything else,
/// `SERVER_ERROR` included, leaves the rest of the reply unaccounted for,
/// so it is a protocol error and the connection is dropped.
fn parse_value_line(line: &str) -> Result<(&str, usize, Option<u64>), OpError> {
    let bad = || OpError::Protocol(format!("unexpected line in a get reply: {line:?}"));
    let mut parts = line.split(' ');
    if parts.next() != Some("VALUE") {
        return Err(bad());
    }
    let key = parts.next().ok_or_else(bad)?;
    let _flags: u32 = parts.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
    let length = parts
        .next()
        .and_then(|l| l.parse().ok())
        .filter(|&length| length <= MAX_ITEM)
        .ok_or_else(bad)?;
    let cas = match parts.next() {
        Some(token) => Some(token.parse().map_err(|_| bad())?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok((key, length, cas))
}

/// Rejects keys memcached would refuse or misread: empty, longer than 250
/// bytes, or holding a space or control character (which would end the key
/// and let the rest be read as protocol).
pub(super) fn check_key(key: &str) -> Result<(), BackendError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(BackendError::new(format!(
            "memcached keys are 1 to {MAX_KEY_LEN} bytes; got {} bytes",
            key.len()
        )));
    }
    if key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(BackendError::new(format!(
            "memcached keys cannot hold spaces or control characters: {key:?}"
        )));
    }
    Ok(())
}

/// The `exptime` for `ttl`: whole seconds, rounded up (memcached's
/// resolution is a second, and zero would mean "never expires"); above 30
/// days, the Unix time it ends at, as memcached reads such values, capped
/// at the latest one memcached parses. Should that cap ever be in the past
/// or too near (a clock past 2038), 30 days, the longest relative TTL.
pub(super) fn expiration(ttl: Duration) -> u64 {
    let seconds = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .max(1);
    if seconds <= MAX_RELATIVE_EXPIRATION {
        return seconds;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let at = now.saturating_add(seconds).min(MAX_ABSOLUTE_EXPIRATION);
    if at <= now.saturating_add(MAX_RELATIVE_EXPIRATION) {
        return MAX_RELATIVE_EXPIRATION;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ttls_become_unix_times() {
        assert_eq!(expiration(Duration::from_millis(1)), 1);
        assert_eq!(expiration(Duration::from_millis(1500)), 2);
        assert_eq!(expiration(Duration::from_secs(60)), 60);
        // memo's default expiration is exactly 30 days: still relative.
        assert_eq!(
            expiration(Duration::from_secs(MAX_RELATIVE_EXPIRATION)),
            MAX_RELATIVE_EXPIRATION
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let absolute = expiration(Duration::from_secs(MAX_RELATIVE_EXPIRATION + 1));
        assert!(
            (now + MAX_RELATIVE_EXPIRATION..now + MAX_RELATIVE_EXPIRATION + 5).contains(&absolute)
        );
        for huge in [
            Duration::from_secs(u64::from(u32::MAX)),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(expiration(huge), MAX_ABSOLUTE_EXPIRATION, "{huge:?}");
        }
        assert_eq!(expiration(Duration::ZERO), 1);
        assert_eq!(expiration(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn value_lines_are_parsed_strictly() {
        assert_eq!(parse_value_line("VALUE k 0 5").ok(), Some(("k", 5, None)));
        assert_eq!(
            parse_value_line("VALUE k 0 5 42").ok(),
            Some(("k", 5, Some(42)))
        );
        for bad in [
            "VALUE k 0",
            "VALUE k x 5",
            "VALUE k 0 -1",
            "VALUE k 0 5 x",
            "VALUE k 0 5 1 2",
            "VALUE k 0 1073741825",
            "STORED",
        ] {
            assert!(parse_value_line(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod incremental {
    use super::*;

    /// Every reply, cut at every byte: incomplete until whole, then parsed
    /// with the length it takes, whatever follows.
    #[test]
    fn every_prefix_is_incomplete_until_the_item_is_whole() {
        let big = format!("VALUE k 0 70000 9\r\n{}\r\n", "v".repeat(70_000));
        let items: [&[u8]; 4] = [
            b"END\r\n",
            b"VALUE k 0 0\r\n\r\n",
            b"VALUE key 7 5 42\r\nEND\r\n\r\n",
            big.as_bytes(),
        ];
        for item in items {
            for cut in 0..item.len() {
                assert!(matches!(parse_item(&item[..cut]), Ok(None)), "cut at {cut}");
            }
            let followed = [item, b"END\r\n"].concat();
            for bytes in [item, &followed[..]] {
                let Ok(Some((parsed, used))) = parse_item(bytes) else {
                    panic!("{:?} does not parse", String::from_utf8_lossy(item));
                };
                assert_eq!(used, item.len());
                if let Item::Value { data, .. } = parsed {
                    assert!(data.len() == 5 || data.len() == 70_000 || data.is_empty());
                }
            }
        }
        for line in [
            &b"STORED\r\n"[..],
            b"SERVER_ERROR out of memory\r\n",
            b"HD\r\n",
        ] {
            for cut in 0..line.len() {
                assert!(matches!(parse_reply(&line[..cut]), Ok(None)));
            }
            assert!(matches!(parse_reply(line), Ok(Some((_, used))) if used == line.len()));
        }
        assert!(matches!(
            parse_reply(b"SERVER_ERROR full\r\n"),
            Ok(Some((Err(OpError::Refused(_)), _)))
        ));
        assert!(parse_reply(b"WHAT\r\n").is_err());
        assert!(parse_item(b"VALUE k 0 1073741825\r\n").is_err());
        assert!(parse_item(b"VALUE k 0 3\r\nabcXY").is_err());
    }
}
