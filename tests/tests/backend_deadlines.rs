//! A slow server costs a caller at most the configured timeout: the
//! timeout is a deadline for the whole call, not for each socket read, so
//! a server trickling a reply a byte at a time, claiming a huge value,
//! saying nothing, or stalling its handshake is cut off in time. Fake
//! servers (plain TCP listeners) play the misbehaving memcached and Redis.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{
    Backend, Config, MemcachedBackend, MemoryBackend, Options, RedisBackend, cache_memoize,
    configure,
};
use memo_tests::fakes::{ALL, Misbehaviour, fake_memcached, fake_redis};
use memo_tests::serial;
use memo_tests::servers::{fake_server, read_memcached_request, read_redis_command};

const TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling slack on a loaded machine; far below one trickled byte per
/// read times the bytes of a reply.
const SLACK: Duration = Duration::from_millis(400);

fn within(limit: Duration, context: &str, call: impl FnOnce()) {
    let started = Instant::now();
    call();
    let took = started.elapsed();
    assert!(took < limit, "{context}: took {took:?}, limit {limit:?}");
}

/// The right value, computed, within the timeout plus slack.
fn memoize_within(url: &str, limit: Duration, context: &str) {
    configure(Config::from_url(url).expect("a valid URL"));
    let computed = AtomicUsize::new(0);
    within(limit, context, || {
        let value: Vec<u32> = cache_memoize(
            ["deadlines", context],
            || {
                computed.fetch_add(1, Ordering::SeqCst);
                (0..100).collect()
            },
            &Options::new(),
        );
        assert_eq!(value, (0..100).collect::<Vec<u32>>(), "{context}");
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1, "{context}");
}

#[test]
fn the_public_api_returns_in_time_from_a_slow_memcached() {
    let _serial = serial();
    for how in ALL {
        let port = fake_memcached(how);
        let url = format!("memcached://127.0.0.1:{port}?timeout_ms=500");
        memoize_within(&url, TIMEOUT + SLACK, &format!("memcached {how:?}"));
    }
    configure(Config::new(MemoryBackend::new()));
}

#[test]
fn the_public_api_returns_in_time_from_a_slow_redis() {
    let _serial = serial();
    for how in ALL {
        let port = fake_redis(how, false);
        let url = format!("redis://127.0.0.1:{port}?timeout_ms=500");
        memoize_within(&url, TIMEOUT + SLACK, &format!("redis {how:?}"));
    }
    // A handshake that stalls is bounded by the connect timeout.
    let port = fake_redis(Misbehaviour::Trickle, true);
    let url = format!("redis://:secret@127.0.0.1:{port}/2?timeout_ms=500&connect_timeout_ms=300");
    memoize_within(&url, Duration::from_millis(300) + SLACK, "redis slow AUTH");
    configure(Config::new(MemoryBackend::new()));
}

fn memcached_at(port: u16) -> MemcachedBackend {
    MemcachedBackend::new([format!("127.0.0.1:{port}")])
        .unwrap()
        .timeout(TIMEOUT)
}

fn redis_at(port: u16) -> RedisBackend {
    RedisBackend::new(&format!("127.0.0.1:{port}"))
        .unwrap()
        .timeout(TIMEOUT)
}

/// Each operation (of those named in `only`, when given), on a fresh client
/// (so no back-off shortens it), fails within the deadline.
fn every_operation_fails_in_time(
    name: &str,
    only: Option<&[&str]>,
    make: &dyn Fn() -> Box<dyn Backend>,
) {
    type Op = fn(&dyn Backend) -> bool;
    let ops: [(&str, Op); 7] = [
        ("get", |b| b.get("k").is_err()),
        ("get_many", |b| b.get_many(&["k", "l", "m"]).is_err()),
        ("set", |b| {
            b.set("k", b"v", Duration::from_secs(60)).is_err()
        }),
        ("set_many", |b| {
            b.set_many(&[("k", b"v"), ("l", b"w")], Duration::from_secs(60))
                .is_err()
        }),
        ("add", |b| {
            b.add("k", b"v", Duration::from_secs(60)).is_err()
        }),
        ("delete_if_value", |b| b.delete_if_value("k", b"v").is_err()),
        ("touch_if_value", |b| {
            b.touch_if_value("k", b"v", Duration::from_secs(60))
                .is_err()
        }),
    ];
    for (op_name, op) in ops {
        if only.is_some_and(|only| !only.contains(&op_name)) {
            continue;
        }
        let backend = make();
        let context = format!("{name} {op_name}");
        within(TIMEOUT + SLACK, &context, || {
            assert!(op(&*backend), "{context} fails");
        });
    }
}

#[test]
fn direct_memcached_calls_fail_within_the_deadline() {
    for how in ALL {
        let port = fake_memcached(how);
        // Only replies to reads carry a value whose length can lie.
        let only: Option<&[&str]> = matches!(how, Misbehaviour::HugeLength).then_some(&[
            "get",
            "get_many",
            "delete_if_value",
            "touch_if_value",
        ]);
        every_operation_fails_in_time(&format!("memcached {how:?}"), only, &|| {
            Box::new(memcached_at(port))
        });
    }
}

#[test]
fn direct_redis_calls_fail_within_the_deadline() {
    for how in ALL {
        let port = fake_redis(how, false);
        let only: Option<&[&str]> =
            matches!(how, Misbehaviour::HugeLength).then_some(&["get", "get_many"]);
        every_operation_fails_in_time(&format!("redis {how:?}"), only, &|| {
            Box::new(redis_at(port))
        });
    }
}

/// A pooled connection that dies after a pause, then a replacement that
/// never answers: replacing the stale connection happens inside the same
/// deadline, not with a fresh one.
#[test]
fn replacing_a_stale_connection_stays_inside_the_deadline() {
    let memcached = fake_server(|mut stream: TcpStream, number| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if number > 0 {
            // Silent from the second connection on.
            let _ = read_memcached_request(&mut reader);
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        if read_memcached_request(&mut reader).is_some() {
            let _ = stream.write_all(b"END\r\n");
        }
        if read_memcached_request(&mut reader).is_some() {
            std::thread::sleep(Duration::from_millis(450));
        }
    });
    let redis = fake_server(|mut stream: TcpStream, number| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if number > 0 {
            let _ = read_redis_command(&mut reader);
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        if read_redis_command(&mut reader).is_some() {
            let _ = stream.write_all(b"$-1\r\n");
        }
        if read_redis_command(&mut reader).is_some() {
            std::thread::sleep(Duration::from_millis(450));
        }
    });
    let backends: [(&str, Box<dyn Backend>); 2] = [
        ("memcached", Box::new(memcached_at(memcached))),
        ("redis", Box::new(redis_at(redis))),
    ];
    for (name, backend) in backends {
        assert_eq!(backend.get("k").unwrap(), None, "{name}: first call");
        within(TIMEOUT + Duration::from_millis(250), name, || {
            assert!(backend.get("k").is_err(), "{name}: second call");
        });
    }
}

/// The handshake memo's own Redis client sends on every new connection,
/// against a real server with a password, an ACL user and a database.
#[test]
fn redis_authenticates_and_selects_the_database() {
    let Some(server) = memo_tests::servers::Server::try_start(memo_tests::servers::Kind::Redis)
    else {
        return;
    };
    let mut ask = memo_tests::servers::raw_session(&server);
    assert_eq!(ask("ACL SETUSER app on >pw ~* +@all\r\n"), "+OK\r\n");
    assert_eq!(ask("CONFIG SET requirepass s3cret\r\n"), "+OK\r\n");
    let address = server.address();
    for (url, auth, db) in [
        (
            format!("redis://:s3cret@{address}/2"),
            "AUTH s3cret\r\n",
            "2",
        ),
        (
            format!("redis://app:pw@{address}/3"),
            "AUTH app pw\r\n",
            "3",
        ),
    ] {
        let config = Config::from_url(&url).expect("a valid URL");
        let backend = config.backend();
        backend
            .set("handshake", db.as_bytes(), Duration::from_secs(60))
            .unwrap_or_else(|err| panic!("{url}: {err}"));
        assert_eq!(
            backend.get("handshake").unwrap().as_deref(),
            Some(db.as_bytes())
        );
        assert_eq!(ask(auth), "+OK\r\n");
        assert_eq!(ask(&format!("SELECT {db}\r\nGET handshake\r\n")), "+OK\r\n");
        assert_eq!(ask(""), "$1\r\n");
        assert_eq!(
            ask(""),
            format!("{db}\r\n"),
            "{url}: stored in database {db}"
        );
    }
    let wrong = RedisBackend::new(&address).unwrap().password(None, "wrong");
    assert!(wrong.get("handshake").is_err(), "a wrong password fails");
}

/// A listener whose accept queue is full: the kernel no longer completes
/// handshakes, so connecting hangs, as with a host that drops packets.
/// `None` when the kernel still accepts (the test then has nothing to show).
fn unconnectable() -> Option<(std::net::TcpListener, Vec<TcpStream>, u16)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let address = listener.local_addr().ok()?;
    let mut held = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&address, Duration::from_millis(100)) {
            Ok(stream) => held.push(stream),
            Err(_) => return Some((listener, held, address.port())),
        }
    }
    None
}

#[test]
fn connecting_is_bounded_by_the_connect_timeout() {
    let Some((_listener, _held, port)) = unconnectable() else {
        return;
    };
    let connect_timeout = Duration::from_millis(300);
    let backends: [(&str, Box<dyn Backend>); 2] = [
        (
            "memcached",
            Box::new(memcached_at(port).connect_timeout(connect_timeout)),
        ),
        (
            "redis",
            Box::new(redis_at(port).connect_timeout(connect_timeout)),
        ),
    ];
    for (name, backend) in backends {
        within(connect_timeout + SLACK, name, || {
            assert!(backend.get("k").is_err(), "{name}");
        });
    }
}
