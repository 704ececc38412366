//! RESP2, as memo speaks it: commands as arrays of bulk strings, and a
//! strict reply parser with bounded lengths and no nesting.

use std::io;

use crate::backend::net::pool::{Conn, OpError};

/// The longest bulk string accepted in a reply: Redis's own default limit
/// (`proto-max-bulk-len`). A reply claiming more is refused before a byte of
/// it is read.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The most elements accepted in an array reply; memo's `MGET`s name far
/// fewer keys.
const MAX_ARRAY: usize = 1 << 20;
/// The longest status, error or integer line accepted.
const MAX_LINE: usize = 64 * 1024;

/// A RESP2 reply other than an error, which is an [`OpError::Refused`].
#[derive(Debug)]
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

impl Conn {
    /// Sends one command and reads its reply.
    pub(super) fn command(&mut self, args: &[&[u8]]) -> Result<Value, OpError> {
        self.out.clear();
        self.push_command(args)?;
        self.flush()?;
        self.value()
    }

    /// Runs a Lua script on one key. `EVAL` sends the script each time:
    /// Redis caches it by digest, and a script of a hundred bytes costs
    /// less than the extra round trip of `EVALSHA` falling back on a
    /// restarted server.
    pub(super) fn script(
        &mut self,
        script: &str,
        key: &str,
        args: &[&[u8]],
    ) -> Result<Value, OpError> {
        let mut all: Vec<&[u8]> = vec![b"EVAL", script.as_bytes(), b"1", key.as_bytes()];
        all.extend_from_slice(args);
        self.command(&all)
    }

    /// Appends a command as a RESP array of bulk strings; large arguments
    /// go straight to the socket rather than being copied.
    pub(super) fn push_command(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.out
                .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.push(arg)?;
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(())
    }

    /// Reads one reply; an error reply is [`OpError::Refused`].
    pub(super) fn value(&mut self) -> Result<Value, OpError> {
        let line = self.line(MAX_LINE)?;
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
        match kind {
            "+" => Ok(Value::Status(rest.to_owned())),
            "-" => Err(OpError::Refused(rest.to_owned())),
            ":" => Ok(Value::Int(number()?)),
            "$" => match number()? {
                -1 => Ok(Value::Nil),
                length => {
                    let length = within(length, MAX_BULK, "bulk")?;
                    Ok(Value::Bulk(self.data(length)?))
                }
            },
            "*" => match number()? {
                -1 => Ok(Value::Nil),
                count => {
                    let count = within(count, MAX_ARRAY, "array")?;
                    // memo's commands answer flat arrays: an element that
                    // is itself an array is refused, which bounds nesting.
                    let mut values = Vec::with_capacity(count.min(1024));
                    // An error element leaves the rest of the array unread,
                    // so unlike an error reply it puts the connection out of
                    // step.
                    for _ in 0..count {
                        match self.value() {
                            Ok(Value::Array(_)) => {
                                return Err(OpError::Protocol("nested array reply".to_owned()));
                            }
                            Ok(value) => values.push(value),
                            Err(OpError::Refused(message)) => {
                                return Err(OpError::Protocol(format!(
                                    "error inside an array reply: {message}"
                                )));
                            }
                            Err(err) => return Err(err),
                        }
                    }
                    Ok(Value::Array(values))
                }
            },
            _ => Err(OpError::Protocol(format!("unexpected reply {line:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::backend::net::deadline::DeadlineStream;

    /// A connection to a loopback peer that has sent `reply` and closed.
    fn conn_reading(reply: &[u8]) -> Conn {
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
    fn replies_are_parsed_strictly_and_never_panic() {
        let ok = |reply: &[u8]| conn_reading(reply).value();
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
