//! Async single-key calls to memcached and Redis are pipelined over one
//! multiplexed connection per server and runtime: hundreds of concurrent
//! calls with distinct keys each get their own reply over a handful of
//! connections, a server that slips in an extra reply or hangs costs calls
//! an error within their deadline (never another call's reply), and a
//! restarted server costs no call an error.
#![cfg(all(feature = "memcached", feature = "redis"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{AsyncBackend, Backend, MemcachedBackend, RedisBackend};
use memo_tests::servers::{Kind, Server, fake_server, read_redis_command};

const TTL: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_millis(400);
/// Concurrent tasks, each with keys of its own.
const TASKS: usize = 512;

fn async_of<B: Backend>(backend: &Arc<B>) -> Arc<dyn AsyncBackend> {
    Backend::__async(Arc::clone(backend)).expect("a shipped backend serves async callers")
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The connections a real server has accepted so far.
fn connections_accepted(server: &Server, kind: Kind) -> u64 {
    let mut stream = TcpStream::connect(server.address()).expect("the server answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let (request, field, end): (&[u8], &str, &str) = match kind {
        Kind::Memcached => (b"stats\r\n", "STAT total_connections ", "END"),
        _ => (
            b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n",
            "total_connections_received:",
            "",
        ),
    };
    stream.write_all(request).expect("a request");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).expect("a reply") > 0,
            "no {field}"
        );
        let trimmed = line.trim_end();
        if let Some(count) = trimmed.strip_prefix(field) {
            // This very connection is counted too.
            return count.parse::<u64>().expect("a count") - 1;
        }
        assert!(end.is_empty() || trimmed != end, "no {field}");
    }
}

/// Every single-key operation from `TASKS` concurrent tasks, each on keys
/// of its own, against both real servers: each call sees its own results.
#[test]
fn concurrent_calls_share_a_few_connections_and_each_gets_its_own_reply() {
    let Some(memcached) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let Some(redis) = Server::try_start(Kind::Redis) else {
        return;
    };
    let backends: [(Kind, &Server, Arc<dyn AsyncBackend>); 2] = [
        (
            Kind::Memcached,
            &memcached,
            async_of(&Arc::new(
                MemcachedBackend::new([memcached.address()]).unwrap(),
            )),
        ),
        (
            Kind::Redis,
            &redis,
            async_of(&Arc::new(RedisBackend::new(&redis.address()).unwrap())),
        ),
    ];
    let runtime = multi_thread();
    for (kind, server, backend) in backends {
        let before = connections_accepted(server, kind);
        runtime.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let backend = Arc::clone(&backend);
                    tokio::spawn(async move {
                        let key = format!("mux-{task}");
                        let value = format!("value of {task}").repeat(1 + task % 7);
                        backend.set(&key, value.as_bytes(), TTL).await.unwrap();
                        for _ in 0..4 {
                            let got = backend.get(&key).await.unwrap();
                            assert_eq!(got.as_deref(), Some(value.as_bytes()), "{key}");
                        }
                        assert!(!backend.add(&key, b"other", TTL).await.unwrap(), "{key}");
                        assert!(backend.touch(&key, TTL).await.unwrap(), "{key}");
                        assert!(
                            backend
                                .touch_if_value(&key, value.as_bytes(), TTL)
                                .await
                                .unwrap()
                        );
                        assert!(!backend.delete_if_value(&key, b"other").await.unwrap());
                        assert!(backend.delete(&key).await.unwrap(), "{key}");
                        assert_eq!(backend.get(&key).await.unwrap(), None, "{key}");
                        assert!(!backend.delete(&key).await.unwrap(), "{key}");
                        assert!(backend.add(&key, b"again", TTL).await.unwrap(), "{key}");
                        assert!(backend.delete_if_value(&key, b"again").await.unwrap());
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("a task");
            }
        });
        let opened = connections_accepted(server, kind) - before;
        // One multiplexed connection carries them all; a pooled one per
        // concurrent call would be hundreds.
        assert!(
            opened <= 2,
            "{kind:?}: {opened} connections for {TASKS} tasks"
        );
    }
}

/// A Redis whose every batch of `GET`s is answered, in one write, with a
/// reply per command (the key itself as the value) and, in `slipped`
/// batches, one extra reply after the first.
fn redis_slipping_in_a_reply(slipped: Arc<AtomicBool>) -> u16 {
    fake_server(move |stream, _| {
        let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
        let mut stream = stream;
        loop {
            let Some(first) = read_redis_command(&mut reader) else {
                return;
            };
            let mut commands = vec![first];
            // The rest of the batch, already buffered.
            while !reader.buffer().is_empty() {
                match read_redis_command(&mut reader) {
                    Some(command) => commands.push(command),
                    None => return,
                }
            }
            let mut replies = Vec::new();
            for (i, command) in commands.iter().enumerate() {
                let key = command.get(1).cloned().unwrap_or_default();
                replies.extend_from_slice(format!("${}\r\n", key.len()).as_bytes());
                replies.extend_from_slice(&key);
                replies.extend_from_slice(b"\r\n");
                if i == 0 && slipped.swap(false, Ordering::SeqCst) {
                    replies.extend_from_slice(b"$5\r\nextra\r\n");
                }
            }
            if stream.write_all(&replies).is_err() {
                return;
            }
        }
    })
}

#[test]
fn a_reply_slipped_into_a_batch_never_reaches_another_call() {
    let slipped = Arc::new(AtomicBool::new(false));
    let port = redis_slipping_in_a_reply(Arc::clone(&slipped));
    let redis = Arc::new(
        RedisBackend::new(&format!("127.0.0.1:{port}"))
            .unwrap()
            .timeout(TIMEOUT)
            .backoff(Duration::ZERO, Duration::ZERO),
    );
    let backend = async_of(&redis);
    let runtime = multi_thread();
    // 64 concurrent gets, each checking that any value it gets is its own
    // (the fake answers a key with itself); how many failed.
    let round = |round: usize| {
        runtime.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|task| {
                    let backend = Arc::clone(&backend);
                    tokio::spawn(async move {
                        let key = format!("key-{round}-{task}");
                        match backend.get(&key).await {
                            Ok(value) => {
                                assert_eq!(value.as_deref(), Some(key.as_bytes()));
                                0
                            }
                            Err(_) => 1,
                        }
                    })
                })
                .collect();
            let mut failed = 0;
            for task in tasks {
                failed += task.await.expect("no call got another call's reply");
            }
            failed
        })
    };
    for number in 0..20 {
        slipped.store(true, Ordering::SeqCst);
        // The calls of the batch with the slipped reply fail (they would
        // compute); however the batches fall, none gets a wrong value.
        round(number);
        assert!(
            !slipped.load(Ordering::SeqCst),
            "round {number}: nothing slipped in"
        );
    }
    // The connection that fell out of step was replaced: calls succeed.
    assert_eq!(round(20), 0, "calls after the slipped batches all succeed");
}

#[test]
fn a_hung_server_fails_every_waiting_call_within_its_deadline() {
    // Accepts, reads, never answers.
    let port = fake_server(|mut stream, _| {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    for kind in [Kind::Memcached, Kind::Redis] {
        let address = format!("127.0.0.1:{port}");
        let backend: Arc<dyn AsyncBackend> = match kind {
            Kind::Memcached => async_of(&Arc::new(
                MemcachedBackend::new([address])
                    .unwrap()
                    .timeout(TIMEOUT)
                    .backoff(Duration::ZERO, Duration::ZERO),
            )),
            _ => async_of(&Arc::new(
                RedisBackend::new(&address)
                    .unwrap()
                    .timeout(TIMEOUT)
                    .backoff(Duration::ZERO, Duration::ZERO),
            )),
        };
        for runtime in [
            multi_thread(),
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        ] {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|task| {
                        let backend = Arc::clone(&backend);
                        tokio::spawn(async move {
                            let started = Instant::now();
                            let result = backend.get(&format!("hung-{task}")).await;
                            (result.map(|_| ()), started.elapsed())
                        })
                    })
                    .collect();
                for task in tasks {
                    let (result, took) = task.await.expect("no task panics");
                    let err = result.expect_err("a hung server answers nothing");
                    assert!(err.is_timeout(), "{kind:?}: {err}");
                    assert!(took < TIMEOUT + SLACK, "{kind:?}: took {took:?}");
                }
            });
        }
    }
}

#[test]
fn a_restarted_server_costs_no_call_an_error() {
    for kind in [Kind::Memcached, Kind::Redis] {
        let Some(server) = Server::try_start(kind) else {
            return;
        };
        let backend: Arc<dyn AsyncBackend> = match kind {
            Kind::Memcached => async_of(&Arc::new(
                MemcachedBackend::new([server.address()]).unwrap(),
            )),
            _ => async_of(&Arc::new(RedisBackend::new(&server.address()).unwrap())),
        };
        let runtime = multi_thread();
        runtime.block_on(async {
            backend.set("k", b"before", TTL).await.unwrap();
            assert_eq!(
                backend.get("k").await.unwrap().as_deref(),
                Some(&b"before"[..])
            );
        });
        server.restart();
        runtime.block_on(async {
            // The lane's connection died with the old server; the first
            // call finds out and retries on a fresh one.
            assert_eq!(backend.get("k").await.unwrap(), None, "{kind:?}");
            backend.set("k", b"after", TTL).await.unwrap();
            assert_eq!(
                backend.get("k").await.unwrap().as_deref(),
                Some(&b"after"[..])
            );
        });
    }
}
