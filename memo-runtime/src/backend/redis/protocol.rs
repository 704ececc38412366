//! RESP2, as memo speaks it: commands as arrays of bulk strings, and a
//! strict sans-IO reply parser with bounded lengths and bounded nesting
//! (flat arrays, except for the topology reply of a cluster), shared by the
//! blocking and the async client (see `net::conn`).

use std::io;

use crate::backend::net::conn::{Conn, Parsed, Transport, take_data, take_line};
use crate::backend::net::pool::OpError;

/// The longest bulk string accepted in a reply: Redis's own default limit
/// (`proto-max-bulk-len`). A reply claiming more is refused before a byte of
/// it is read.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The most elements accepted in an array reply; memo's `MGET`s name far
/// fewer keys.
const MAX_ARRAY: usize = 1 << 20;
/// The longest status, error or integer line accepted.
const MAX_LINE: usize = 64 * 1024;
/// The deepest arrays accepted in `CLUSTER SLOTS`' reply: slot ranges,
/// each holding nodes, each holding (since Redis 7) a list of metadata.
const TOPOLOGY_DEPTH: u8 = 4;

/// A RESP2 reply other than an error, which is an [`OpError::Refused`].
#[derive(Debug, Clone)]
pub(super) enum Value {
    Nil,
    Status(String),
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
}

impl Value {
    pub(super) fn unexpected(self, command: &str) -> OpError {
        let kind = match self {
            Value::Nil => "nil",
            Value::Status(_) => "a status",
            Value::Int(_) => "an integer",
            Value::Bulk(_) => "a bulk string",
            Value::Array(_) => "an array",
        };
        OpError::Protocol(format!("{command} answered {kind}"))
    }

    pub(super) fn ok(self, command: &str) -> Result<(), OpError> {
        match self {
            Value::Status(status) if status == "OK" => Ok(()),
            other => Err(other.unexpected(command)),
        }
    }

    pub(super) fn bulk(self, command: &str) -> Result<Option<Vec<u8>>, OpError> {
        match self {
            Value::Bulk(bytes) => Ok(Some(bytes)),
            Value::Nil => Ok(None),
            other => Err(other.unexpected(command)),
        }
    }

    pub(super) fn int(self, command: &str) -> Result<i64, OpError> {
        match self {
            Value::Int(n) => Ok(n),
            other => Err(other.unexpected(command)),
        }
    }
}

/// Parses one reply (sans-IO, see `net::conn`). An error reply is a
/// whole reply that leaves the connection in step, so it is returned as a
/// parsed `Err` ([`OpError::Refused`]), its line consumed.
///
/// The bytes are first only measured, allocating nothing, and the reply
/// is built once they are all there: a large reply arriving in many reads
/// is copied once, not once per read.
pub(crate) fn parse_value(buf: &[u8]) -> Parsed<Result<Value, OpError>> {
    parse_within(buf, 1)
}

/// Parses one reply of `CLUSTER SLOTS`, whose arrays nest
/// [`TOPOLOGY_DEPTH`] deep; otherwise as [`parse_value`].
pub(crate) fn parse_topology(buf: &[u8]) -> Parsed<Result<Value, OpError>> {
    parse_within(buf, TOPOLOGY_DEPTH)
}

/// One reply with arrays at most `depth` deep.
fn parse_within(buf: &[u8], depth: u8) -> Parsed<Result<Value, OpError>> {
    if let Some(rest) = buf.strip_prefix(b"-") {
        let Some((message, used)) = take_line(rest, MAX_LINE)? else {
            return Ok(None);
        };
        return Ok(Some((Err(OpError::Refused(message.to_owned())), used + 1)));
    }
    if value_at(buf, depth, false)?.is_none() {
        return Ok(None);
    }
    Ok(value_at(buf, depth, true)?.map(|(value, used)| (Ok(value), used)))
}

/// The value at the start of `buf` and the bytes it takes, `Ok(None)`
/// while incomplete. Without `build`, only measures it (bulk strings and
/// arrays come back as `Nil`). `depth` is how many levels of arrays may
/// still open here: memo's commands answer flat arrays (depth 1), so an
/// array nested deeper is refused (which bounds nesting), and so is an
/// error element, which leaves the rest of the array unread (unlike an
/// error reply, it puts the connection out of step).
fn value_at(buf: &[u8], depth: u8, build: bool) -> Result<Option<(Value, usize)>, OpError> {
    let Some((line, used)) = take_line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    // The first byte says the type; a line starting with a multi-byte
    // character is no RESP reply (and must not be split inside it).
    let Some((kind, rest)) = line.split_at_checked(1) else {
        return Err(OpError::Protocol(format!("unexpected reply {line:?}")));
    };
    // A length or count from the reply, refused beyond `max` before
    // anything is read or allocated on its strength.
    let within = |n: i64, max: usize, what: &str| {
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| OpError::Protocol(format!("{what} length out of range: {line:?}")))
    };
    let number = || -> Result<i64, OpError> {
        rest.parse()
            .map_err(|_| OpError::Protocol(format!("bad number in reply {line:?}")))
    };
    let value = match kind {
        "+" => Value::Status(rest.to_owned()),
        "-" => {
            return Err(OpError::Protocol(format!(
                "error inside an array reply: {rest}"
            )));
        }
        ":" => Value::Int(number()?),
        "$" => match number()? {
            -1 => Value::Nil,
            length => {
                let length = within(length, MAX_BULK, "bulk")?;
                let Some((range, data_used)) = take_data(&buf[used..], length)? else {
                    return Ok(None);
                };
                let data = if build {
                    Value::Bulk(buf[used..][range].to_vec())
                } else {
                    Value::Nil
                };
                return Ok(Some((data, used + data_used)));
            }
        },
        "*" => match number()? {
            -1 => Value::Nil,
            _ if depth == 0 => return Err(OpError::Protocol("nested array reply".to_owned())),
            count => {
                let count = within(count, MAX_ARRAY, "array")?;
                let mut values = Vec::with_capacity(if build { count.min(1024) } else { 0 });
                let mut end = used;
                for _ in 0..count {
                    let Some((value, element)) = value_at(&buf[end..], depth - 1, build)? else {
                        return Ok(None);
                    };
                    end += element;
                    if build {
                        values.push(value);
                    }
                }
                let array = if build {
                    Value::Array(values)
                } else {
                    Value::Nil
                };
                return Ok(Some((array, end)));
            }
        },
        _ => return Err(OpError::Protocol(format!("unexpected reply {line:?}"))),
    };
    Ok(Some((value, used)))
}

/// Appends a RESP header line, `*3\r\n` or `$5\r\n`: by hand, as
/// `format!` on every command showed in profiles.
fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    let mut buf = [0u8; 20];
    out.push(kind);
    // A `usize` is at most 64 bits on every target Rust supports.
    out.extend_from_slice(crate::common::decimal(len as u64, &mut buf));
    out.extend_from_slice(b"\r\n");
}

/// Delimits one RESP value (a reply, or a command: an array of bulk
/// strings) without keeping it, for the multiplexed connection, which
/// counts the commands of a request and cuts the replies of a batch.
#[cfg(feature = "async")]
pub(super) fn split(buf: &[u8]) -> Parsed<()> {
    if let Some(rest) = buf.strip_prefix(b"-") {
        return Ok(take_line(rest, MAX_LINE)?.map(|(_, used)| ((), used + 1)));
    }
    Ok(value_at(buf, 1, false)?.map(|(_, used)| ((), used)))
}

/// [`split`] for replies: no RESP reply leaves the connection out of step
/// (an error reply is whole).
#[cfg(feature = "async")]
fn split_reply(buf: &[u8]) -> Parsed<bool> {
    Ok(split(buf)?.map(|((), used)| (false, used)))
}

/// RESP on a multiplexed connection: each batch ends with `ECHO n`, whose
/// reply no other command of memo's can have.
#[cfg(feature = "async")]
pub(super) const FRAMING: crate::backend::net::mux::Framing = crate::backend::net::mux::Framing {
    split: split_reply,
    check: echo,
    checked: echoed,
};

#[cfg(feature = "async")]
fn echo(n: u64, out: &mut Vec<u8>) {
    let n = n.to_string();
    header(out, b'*', 2);
    header(out, b'$', 4);
    out.extend_from_slice(b"ECHO\r\n");
    header(out, b'$', n.len());
    out.extend_from_slice(n.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The reply to `ECHO n` is `n`. A user whose ACL forbids `ECHO` gets an
/// error naming it instead, which stands in the same place.
#[cfg(feature = "async")]
fn echoed(n: u64, reply: &[u8]) -> bool {
    let n = n.to_string();
    let mut expected = Vec::with_capacity(n.len() + 8);
    header(&mut expected, b'$', n.len());
    expected.extend_from_slice(n.as_bytes());
    expected.extend_from_slice(b"\r\n");
    reply == expected.as_slice()
        || (reply.starts_with(b"-")
            && reply
                .to_ascii_lowercase()
                .windows(6)
                .any(|w| w == b"'echo'"))
}

/// The conversations, written once over any transport (`net::conn`): the
/// blocking client runs them to completion in one poll, the async one
/// awaits them.
impl<T: Transport> Conn<T> {
    /// Sends one command and reads its reply.
    pub(super) async fn command(&mut self, args: &[&[u8]]) -> Result<Value, OpError> {
        self.out.clear();
        self.push_command(args).await?;
        self.flush().await?;
        self.value().await
    }

    /// Appends a command as a RESP array of bulk strings; large arguments
    /// go straight to the socket rather than being copied.
    pub(super) async fn push_command(&mut self, args: &[&[u8]]) -> io::Result<()> {
        header(&mut self.out, b'*', args.len());
        for arg in args {
            header(&mut self.out, b'$', arg.len());
            self.push(arg).await?;
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// Reads one reply; an error reply is [`OpError::Refused`].
    pub(super) async fn value(&mut self) -> Result<Value, OpError> {
        self.next(parse_value).await?
    }

    /// Reads one reply of `CLUSTER SLOTS` (see [`parse_topology`]).
    pub(super) async fn topology(&mut self) -> Result<Value, OpError> {
        self.next(parse_topology).await?
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::backend::net::conn::ready;
    use crate::backend::net::deadline::DeadlineStream;

    /// A connection to a loopback peer that has sent `reply` and closed.
    fn conn_reading(reply: &[u8]) -> Conn<DeadlineStream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(reply).unwrap();
        drop(server);
        client.flush().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        Conn::new(DeadlineStream::new(client, deadline))
    }

    #[test]
    fn headers_are_written_as_format_writes_them() {
        for len in [0, 1, 9, 10, 99, 100, 12_345, u32::MAX as usize, usize::MAX] {
            for kind in [b'*', b'$'] {
                let mut out = b"x".to_vec();
                header(&mut out, kind, len);
                assert_eq!(out, format!("x{}{len}\r\n", kind as char).into_bytes());
            }
        }
    }

    #[test]
    fn replies_are_parsed_strictly_and_never_panic() {
        let ok = |reply: &[u8]| ready(conn_reading(reply).value());
        assert!(matches!(ok(b"+OK\r\n"), Ok(Value::Status(s)) if s == "OK"));
        assert!(matches!(ok(b":-7\r\n"), Ok(Value::Int(-7))));
        assert!(matches!(ok(b"$-1\r\n"), Ok(Value::Nil)));
        assert!(matches!(ok(b"$3\r\na\r\n\r\n"), Ok(Value::Bulk(b)) if b == b"a\r\n"));
        assert!(matches!(ok(b"-ERR no\r\n"), Err(OpError::Refused(m)) if m == "ERR no"));
        assert!(matches!(
            ok(b"*2\r\n$1\r\na\r\n$-1\r\n"),
            Ok(Value::Array(values)) if values.len() == 2
        ));
        for bad in [
            &b"\xc3\xa9\r\n"[..],
            b"\r\n",
            b"?\r\n",
            b":x\r\n",
            b"$-2\r\n",
            b"$536870913\r\n",
            b"$99999999999999999999\r\n",
            b"*1048577\r\n",
            b"*1\r\n*0\r\n",
            b"*2\r\n-ERR x\r\n:1\r\n",
            b"$3\r\nabcde",
            b"$3\r\nab",
            b"+OK",
            b"",
        ] {
            assert!(
                !matches!(ok(bad), Ok(_) | Err(OpError::Refused(_))),
                "{:?} must put the connection out of step",
                String::from_utf8_lossy(bad)
            );
        }
        // Arbitrary bytes: any answer but a panic.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..300 {
            let len = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"+-:$*\r\n0123456789-xOK\xff"[(seed % 22) as usize]
                })
                .collect();
            let _ = ok(&bytes);
        }
    }
}

#[cfg(test)]
mod incremental {
    use super::*;

    /// Every reply, cut at every byte: incomplete until whole, then the
    /// same value and length as parsed at once, whatever follows.
    #[test]
    fn every_prefix_is_incomplete_until_the_reply_is_whole() {
        let big = format!("${}\r\n{}\r\n", 70_000, "v".repeat(70_000));
        let replies: [&[u8]; 8] = [
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":123\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$5\r\nab\r\nc\r\n",
            b"*3\r\n$1\r\na\r\n$-1\r\n:7\r\n",
            big.as_bytes(),
        ];
        for reply in replies {
            for cut in 0..reply.len() {
                assert!(
                    matches!(parse_value(&reply[..cut]), Ok(None)),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(&reply[..reply.len().min(40)])
                );
            }
            let mut followed = reply.to_vec();
            followed.extend_from_slice(b"+NEXT\r\n");
            for bytes in [reply, &followed[..]] {
                let Ok(Some((value, used))) = parse_value(bytes) else {
                    panic!("{:?} does not parse", String::from_utf8_lossy(reply));
                };
                assert_eq!(used, reply.len());
                match value {
                    Ok(Value::Bulk(bytes)) => {
                        assert!(bytes.len() == 5 || bytes.len() == 70_000 || bytes.is_empty());
                    }
                    Ok(Value::Array(values)) => assert_eq!(values.len(), 3),
                    Ok(_) | Err(OpError::Refused(_)) => {}
                    Err(other) => panic!("{other:?}"),
                }
            }
        }
    }
}
