//! memcached's text protocol, as memo speaks it: `get` with many keys
//! (pipelined in bounded batches), `gets`, `set` (pipelined for
//! `set_many`), `add`, `touch`, `delete`, `cas`, and meta delete, each
//! reply parsed strictly with bounded lengths.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::BackendError;
use crate::backend::net::pool::{Conn, OpError};
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
/// Values at least this large are written straight to the socket instead of
/// being copied into the request buffer.
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
    pub(super) fn stored(self, key: &str) -> Result<(), OpError> {
        match self {
            Reply::Stored => Ok(()),
            other => Err(OpError::Protocol(format!(
                "unexpected reply {other:?} to set {key}"
            ))),
        }
    }

    pub(super) fn unexpected(self, command: &str) -> OpError {
        OpError::Protocol(format!("unexpected reply {self:?} to {command}"))
    }
}

impl Conn {
    pub(super) fn get_many(
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
            self.flush()?;
            // ...then read their answers, in order.
            for batch in batches {
                let wanted = &keys[batch];
                let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
                let mut next = 0;
                loop {
                    let line = self.line(MAX_LINE)?;
                    if line == "END" {
                        break;
                    }
                    if line.starts_with("SERVER_ERROR") || line.starts_with("CLIENT_ERROR") {
                        return Err(OpError::Rejected(line));
                    }
                    let (key, length, token) = parse_value_line(&line)?;
                    // memcached answers in request order, skipping misses.
                    let offset = wanted[next..]
                        .iter()
                        .position(|wanted| *wanted == key)
                        .ok_or_else(|| {
                            OpError::Protocol(format!("reply for a key not asked for: {key:?}"))
                        })?;
                    next += offset;
                    found[next] = Some(self.data(length)?);
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

    pub(super) fn store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> Result<Reply, OpError> {
        self.out.clear();
        self.push_store(command, key, value, exptime)?;
        self.flush()?;
        self.reply()
    }

    fn push_store(
        &mut self,
        command: &str,
        key: &str,
        value: &[u8],
        exptime: u64,
    ) -> io::Result<()> {
        let header = format!("{command} {key} 0 {exptime} {}\r\n", value.len());
        self.out.extend_from_slice(header.as_bytes());
        self.push(value)?;
        self.out.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Pipelines the `set`s in batches, reading each batch's replies before
    /// writing the next. Every reply is read even after a refusal, so the
    /// connection stays in step; the first refusal is returned.
    pub(super) fn set_many(
        &mut self,
        items: &[(&str, &[u8])],
        exptime: u64,
    ) -> Result<(), OpError> {
        let mut refused = None;
        for batch in items.chunks(MAX_PIPELINED_SETS) {
            self.out.clear();
            for (key, value) in batch {
                self.push_store("set", key, value, exptime)?;
            }
            self.flush()?;
            for (key, _) in batch {
                match self.reply() {
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

    pub(super) fn delete(&mut self, key: &str) -> Result<bool, OpError> {
        self.send(format!("delete {key}\r\n").as_bytes())?;
        match self.reply()? {
            Reply::Deleted => Ok(true),
            Reply::NotFound => Ok(false),
            other => Err(other.unexpected("delete")),
        }
    }

    pub(super) fn reply(&mut self) -> Result<Reply, OpError> {
        let line = self.line(MAX_LINE)?;
        Ok(match line.as_str() {
            "STORED" => Reply::Stored,
            "NOT_STORED" => Reply::NotStored,
            "EXISTS" => Reply::Exists,
            "NOT_FOUND" => Reply::NotFound,
            "TOUCHED" => Reply::Touched,
            "DELETED" => Reply::Deleted,
            "ERROR" => Reply::Error,
            _ => {
                if let Some(message) = line.strip_prefix("SERVER_ERROR ") {
                    return Err(OpError::Refused(message.to_owned()));
                }
                if let Some(message) = line.strip_prefix("CLIENT_ERROR ") {
                    // The server may now read our data as commands.
                    return Err(OpError::Rejected(format!("client error: {message}")));
                }
                let code = line.split(' ').next().unwrap_or_default();
                if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                    Reply::Meta(code.to_owned())
                } else {
                    return Err(OpError::Protocol(format!("unexpected reply {line:?}")));
                }
            }
        })
    }
}

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
