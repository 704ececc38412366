//! Fake memcached and Redis servers that misbehave slowly: they trickle a
//! valid-looking reply a byte at a time, claim a huge value and stall, or
//! never answer. Deadline tests, sync and async, run every call against
//! each of them.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::servers::{fake_server, read_memcached_request, read_redis_command, trickle};

/// The pause between two trickled bytes: far above any sane per-read
/// timeout, so only a whole-call deadline cuts a trickled reply short.
pub const BYTE_PAUSE: Duration = Duration::from_millis(300);

/// How a fake server misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// A valid-looking reply, one byte every [`BYTE_PAUSE`].
    Trickle,
    /// A reply claiming a huge value, whose bytes then trickle in.
    HugeLength,
    /// Reads the request, answers nothing, keeps the connection open.
    Silent,
}

/// Every way of misbehaving.
pub const ALL: [Misbehaviour; 3] = [
    Misbehaviour::Trickle,
    Misbehaviour::HugeLength,
    Misbehaviour::Silent,
];

fn misbehave(stream: &mut TcpStream, how: Misbehaviour, reply: &[u8]) {
    match how {
        Misbehaviour::Silent => std::thread::sleep(Duration::from_secs(30)),
        Misbehaviour::Trickle => trickle(stream, reply, BYTE_PAUSE),
        Misbehaviour::HugeLength => {
            let _ = stream.write_all(reply);
            trickle(stream, &[b'x'; 100], Duration::from_millis(100));
        }
    }
}

/// A fake memcached on a free loopback port that misbehaves `how` on
/// every request; returns the port.
pub fn fake_memcached(how: Misbehaviour) -> u16 {
    fake_server(move |mut stream: TcpStream, _| {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        while let Some(request) = read_memcached_request(&mut reader) {
            let parts: Vec<&str> = request.split(' ').collect();
            let reply = match parts[0] {
                "get" | "gets" => {
                    let key = parts.get(1).copied().unwrap_or("k");
                    match how {
                        Misbehaviour::HugeLength => format!("VALUE {key} 0 1073741824\r\n"),
                        _ => format!("VALUE {key} 0 20\r\n{}\r\nEND\r\n", "x".repeat(20)),
                    }
                }
                "touch" => "TOUCHED\r\n".to_owned(),
                "delete" => "DELETED\r\n".to_owned(),
                _ => "STORED\r\n".to_owned(),
            };
            misbehave(&mut stream, how, reply.as_bytes());
        }
    })
}

/// A fake Redis on a free loopback port that misbehaves `how` on every
/// command but `AUTH` and `SELECT`, which it answers at once, or, with
/// `slow_auth`, a byte a second; returns the port.
pub fn fake_redis(how: Misbehaviour, slow_auth: bool) -> u16 {
    fake_server(move |mut stream: TcpStream, _| {
        let Ok(read_half) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(read_half);
        while let Some(command) = read_redis_command(&mut reader) {
            let name = String::from_utf8_lossy(&command[0]).to_ascii_uppercase();
            if name == "AUTH" || name == "SELECT" {
                if slow_auth {
                    trickle(&mut stream, b"+OK\r\n", Duration::from_secs(1));
                } else {
                    let _ = stream.write_all(b"+OK\r\n");
                }
                continue;
            }
            let bulk = format!("$20\r\n{}\r\n", "x".repeat(20));
            let reply = match name.as_str() {
                "GET" if matches!(how, Misbehaviour::HugeLength) => "$536870912\r\n".to_owned(),
                "GET" => bulk,
                "MGET" if matches!(how, Misbehaviour::HugeLength) => {
                    format!("*{}\r\n$536870912\r\n", command.len() - 1)
                }
                "MGET" => format!(
                    "*{}\r\n{}",
                    command.len() - 1,
                    bulk.repeat(command.len() - 1)
                ),
                "SET" => "+OK\r\n".to_owned(),
                _ => ":1\r\n".to_owned(),
            };
            misbehave(&mut stream, how, reply.as_bytes());
        }
    })
}
