//! A connection that may be out of step with its server is never reused:
//! after a server sends an extra reply, garbage, or a reply of the wrong
//! type, the next command reads its own answer, never the leftover of an
//! earlier one (which for a lock command could mean taking someone else's
//! lock for one's own). Fake servers play the confused memcached and Redis.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use memo_runtime::{Backend, MemcachedBackend, RedisBackend};
use memo_tests::servers::{fake_server, read_memcached_request, read_redis_command};

/// A memcached whose very first reply is the value `first` followed by
/// `extra`; every later `get` is answered with the value `second`.
fn fake_memcached(extra: &'static [u8]) -> u16 {
    let sent = Arc::new(AtomicBool::new(false));
    fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while let Some(request) = read_memcached_request(&mut reader) {
            let key = request.split(' ').nth(1).unwrap_or("k").to_owned();
            let reply = if sent.swap(true, Ordering::SeqCst) {
                format!("VALUE {key} 0 6\r\nsecond\r\nEND\r\n").into_bytes()
            } else {
                let mut reply = format!("VALUE {key} 0 5\r\nfirst\r\nEND\r\n").into_bytes();
                reply.extend_from_slice(extra);
                reply
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// A Redis whose very first reply is `$5 first` followed by `extra`; every
/// later `GET` is answered `second`.
fn fake_redis(extra: &'static [u8]) -> u16 {
    let sent = Arc::new(AtomicBool::new(false));
    fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while read_redis_command(&mut reader).is_some() {
            let reply = if sent.swap(true, Ordering::SeqCst) {
                b"$6\r\nsecond\r\n".to_vec()
            } else {
                [&b"$5\r\nfirst\r\n"[..], extra].concat()
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

fn second_call_reads_its_own_reply(name: &str, backend: &dyn Backend) {
    assert_eq!(
        backend.get("k").unwrap().as_deref(),
        Some(&b"first"[..]),
        "{name}: first call"
    );
    // Give the stray bytes time to arrive, as they would between calls.
    std::thread::sleep(Duration::from_millis(50));
    let second = backend.get("k");
    assert_eq!(
        second.as_ref().ok().and_then(|v| v.as_deref()),
        Some(&b"second"[..]),
        "{name}: the second call read {second:?}"
    );
}

#[test]
fn memcached_never_reads_a_stale_reply() {
    for (name, extra) in [
        ("duplicate reply", &b"VALUE k 0 5\r\nfirst\r\nEND\r\n"[..]),
        ("garbage", &b"\x00\xffgarbage\r\n"[..]),
        ("unsolicited status", &b"STORED\r\n"[..]),
    ] {
        let port = fake_memcached(extra);
        let backend = MemcachedBackend::new([format!("127.0.0.1:{port}")]).unwrap();
        second_call_reads_its_own_reply(&format!("memcached {name}"), &backend);
    }
}

#[test]
fn redis_never_reads_a_stale_reply() {
    for (name, extra) in [
        ("duplicate reply", &b"$5\r\nfirst\r\n"[..]),
        ("garbage", &b"\x00\xffgarbage\r\n"[..]),
        ("unsolicited integer", &b":1\r\n"[..]),
        ("unsolicited status", &b"+OK\r\n"[..]),
    ] {
        let port = fake_redis(extra);
        let backend = RedisBackend::new(&format!("127.0.0.1:{port}")).unwrap();
        second_call_reads_its_own_reply(&format!("redis {name}"), &backend);
    }
}

/// A reply of a type the command never gives (an integer to `GET`) leaves
/// the rest of the exchange unaccounted for: that connection is dropped,
/// and the next call, on a new one, reads its own answer.
#[test]
fn redis_drops_a_connection_after_a_reply_of_the_wrong_type() {
    let sent = Arc::new(AtomicBool::new(false));
    let port = fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while read_redis_command(&mut reader).is_some() {
            let reply: &[u8] = if sent.swap(true, Ordering::SeqCst) {
                b"$6\r\nsecond\r\n"
            } else {
                b":1\r\n$5\r\nfirst\r\n"
            };
            if stream.write_all(reply).is_err() {
                return;
            }
        }
    });
    let backend = RedisBackend::new(&format!("127.0.0.1:{port}"))
        .unwrap()
        .backoff(Duration::from_millis(1), Duration::from_millis(1));
    assert!(backend.get("k").is_err(), "an integer is no answer to GET");
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(backend.get("k").unwrap().as_deref(), Some(&b"second"[..]));
}

/// A memcached answering its very first command with `error`, and every
/// later one normally.
fn memcached_failing_once(error: &'static str) -> u16 {
    let answered = Arc::new(AtomicBool::new(false));
    fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while let Some(request) = read_memcached_request(&mut reader) {
            let key = request.split(' ').nth(1).unwrap_or("k").to_owned();
            let reply = if !answered.swap(true, Ordering::SeqCst) {
                format!("{error}\r\n")
            } else if request.starts_with("get") {
                format!("VALUE {key} 0 2\r\nok\r\nEND\r\n")
            } else {
                "STORED\r\n".to_owned()
            };
            if stream.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    })
}

/// An error reply fails only its own call: the server is up, so it is not
/// put into back-off, and the next call (on a fresh connection where the
/// old one may be out of step) is answered.
#[test]
fn memcached_error_replies_fail_one_call_without_back_off() {
    for error in [
        "CLIENT_ERROR bad command line format",
        "SERVER_ERROR out of memory storing object",
    ] {
        for first in ["set", "get"] {
            let port = memcached_failing_once(error);
            let backend = MemcachedBackend::new([format!("127.0.0.1:{port}")]).unwrap();
            let failed = match first {
                "set" => backend.set("k", b"v", Duration::from_secs(60)).is_err(),
                _ => backend.get("k").is_err(),
            };
            assert!(failed, "{error} to {first} is an error");
            assert_eq!(
                backend.get("k").unwrap().as_deref(),
                Some(&b"ok"[..]),
                "{error} to {first}: the server was put into back-off"
            );
            backend.set("k", b"v", Duration::from_secs(60)).unwrap();
        }
    }
}
