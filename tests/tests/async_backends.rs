//! The shipped network backends serve async callers natively, on tokio
//! sockets: every `AsyncBackend` operation against real memcached (one
//! server and two) and Redis, entries shared with the blocking client of
//! the same instance, whole-call deadlines against misbehaving fake
//! servers on both runtime flavours without stalling the executor,
//! connections kept in step, one back-off for both worlds, several
//! runtimes in turn, and many concurrent tasks.
#![cfg(all(feature = "memcached", feature = "redis"))]

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{AsyncBackend, Backend, MemcachedBackend, RedisBackend};
use memo_tests::fakes::{ALL, Misbehaviour, fake_memcached, fake_redis};
use memo_tests::servers::{
    Kind, Server, fake_server, memcached_version, read_memcached_request, read_redis_command,
    redis_echo,
};

const TTL: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling slack on a loaded machine; far below one trickled byte per
/// read times the bytes of a reply.
const SLACK: Duration = Duration::from_millis(400);

/// The async face of a shipped backend, as `configure` obtains it.
fn async_of<B: Backend>(backend: &Arc<B>) -> Arc<dyn AsyncBackend> {
    Backend::__async(Arc::clone(backend)).expect("a shipped backend serves async callers")
}

/// Value sizes around the client's buffer and direct-write boundaries.
const SIZES: [usize; 9] = [
    0,
    1,
    16 * 1024 - 1,
    16 * 1024,
    64 * 1024 - 1,
    64 * 1024,
    64 * 1024 + 1,
    200_000,
    1_048_576 - 200,
];

fn value_of(size: usize, salt: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Every `AsyncBackend` method, checked against what the blocking client of
/// the same instance reads and writes.
async fn every_method(name: &str, sync: &dyn Backend, backend: &dyn AsyncBackend) {
    let key = |suffix: &str| format!("async-{name}-{suffix}");
    for (i, size) in SIZES.into_iter().enumerate() {
        let k = key(&format!("size-{size}"));
        let value = value_of(size, i as u8);
        backend.set(&k, &value, TTL).await.unwrap();
        assert_eq!(
            backend.get(&k).await.unwrap().as_deref(),
            Some(&value[..]),
            "{name}: {size} bytes"
        );
        assert_eq!(sync.get(&k).unwrap().as_deref(), Some(&value[..]), "{name}");
        let other = value_of(size, i as u8 + 100);
        sync.set(&k, &other, TTL).unwrap();
        assert_eq!(backend.get(&k).await.unwrap().as_deref(), Some(&other[..]));
    }

    let (a, b, missing) = (key("a"), key("b"), key("missing"));
    assert_eq!(backend.get(&missing).await.unwrap(), None, "{name}");
    backend
        .set_many(&[(&a, b"one"), (&b, b"two")], TTL)
        .await
        .unwrap();
    let many: Vec<String> = (0..250).map(|i| key(&format!("many-{i}"))).collect();
    let items: Vec<(&str, &[u8])> = many.iter().map(|k| (k.as_str(), k.as_bytes())).collect();
    backend.set_many(&items, TTL).await.unwrap();
    let mut wanted: Vec<&str> = vec![&a, &missing, &b];
    wanted.extend(many.iter().map(String::as_str));
    let found = backend.get_many(&wanted).await.unwrap();
    assert_eq!(found[0].as_deref(), Some(&b"one"[..]), "{name}");
    assert_eq!(found[1], None, "{name}");
    assert_eq!(found[2].as_deref(), Some(&b"two"[..]), "{name}");
    for (k, value) in many.iter().zip(&found[3..]) {
        assert_eq!(value.as_deref(), Some(k.as_bytes()), "{name}");
    }
    assert_eq!(sync.get_many(&wanted).unwrap(), found, "{name}");
    assert!(backend.get_many(&[]).await.unwrap().is_empty());

    let lock = key("lock");
    assert!(backend.add(&lock, b"mine", TTL).await.unwrap(), "{name}");
    assert!(!backend.add(&lock, b"theirs", TTL).await.unwrap(), "{name}");
    assert!(!sync.add(&lock, b"theirs", TTL).unwrap(), "{name}");
    assert!(backend.touch(&lock, TTL).await.unwrap(), "{name}");
    assert!(!backend.touch(&missing, TTL).await.unwrap(), "{name}");
    assert!(
        backend.touch_if_value(&lock, b"mine", TTL).await.unwrap(),
        "{name}"
    );
    assert!(
        !backend.touch_if_value(&lock, b"theirs", TTL).await.unwrap(),
        "{name}"
    );
    assert!(!backend.delete_if_value(&lock, b"theirs").await.unwrap());
    assert_eq!(sync.get(&lock).unwrap().as_deref(), Some(&b"mine"[..]));
    assert!(backend.delete_if_value(&lock, b"mine").await.unwrap());
    assert_eq!(sync.get(&lock).unwrap(), None, "{name}");
    assert!(!backend.delete_if_value(&lock, b"mine").await.unwrap());

    assert!(backend.delete(&a).await.unwrap(), "{name}");
    assert!(!backend.delete(&a).await.unwrap(), "{name}");
    assert_eq!(sync.get(&a).unwrap(), None, "{name}");

    // Extreme TTLs are clamped as for blocking callers, never refused.
    for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        backend.set(&b, b"kept", ttl).await.unwrap();
        assert!(backend.add(&key("ttl"), b"x", ttl).await.is_ok());
        assert!(backend.touch(&b, ttl).await.is_ok(), "{name} {ttl:?}");
    }
    backend.set(&b, b"kept", Duration::MAX).await.unwrap();
    assert_eq!(sync.get(&b).unwrap().as_deref(), Some(&b"kept"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_async_method_against_real_servers() {
    let Some(one) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let Some(two) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let Some(redis) = Server::try_start(Kind::Redis) else {
        return;
    };
    let single = Arc::new(MemcachedBackend::new([one.address()]).unwrap());
    every_method("memcached", &*single, &*async_of(&single)).await;
    let pair = Arc::new(MemcachedBackend::new([one.address(), two.address()]).unwrap());
    every_method("memcached-pair", &*pair, &*async_of(&pair)).await;
    let redis = Arc::new(RedisBackend::new(&redis.address()).unwrap());
    every_method("redis", &*redis, &*async_of(&redis)).await;
}

#[tokio::test]
async fn every_async_method_on_a_current_thread_runtime_with_a_redis_database() {
    let Some(server) = Server::try_start(Kind::Redis) else {
        return;
    };
    let redis = Arc::new(RedisBackend::new(&server.address()).unwrap().database(3));
    every_method("redis-db3", &*redis, &*async_of(&redis)).await;
    let other_db = RedisBackend::new(&server.address()).unwrap();
    assert_eq!(
        Backend::get(&other_db, "async-redis-db3-b").unwrap(),
        None,
        "SELECT ran on the async connections"
    );
}

const EVERY_OP: [&str; 9] = [
    "get",
    "get_many",
    "set",
    "set_many",
    "add",
    "touch",
    "delete",
    "delete_if_value",
    "touch_if_value",
];

/// Each of `ops` fails within `limit`; `backend` has no back-off, so
/// each call really waits on the server.
async fn every_call_fails_in_time(
    context: &str,
    backend: &dyn AsyncBackend,
    ops: &[&str],
    limit: Duration,
) {
    for &op in ops {
        let started = Instant::now();
        let result = match op {
            "get" => backend.get("k").await.map(|_| ()),
            "get_many" => backend.get_many(&["k", "l", "m"]).await.map(|_| ()),
            "set" => backend.set("k", b"v", TTL).await,
            "set_many" => backend.set_many(&[("k", b"v"), ("l", b"w")], TTL).await,
            "add" => backend.add("k", b"v", TTL).await.map(|_| ()),
            "touch" => backend.touch("k", TTL).await.map(|_| ()),
            "delete" => backend.delete("k").await.map(|_| ()),
            "delete_if_value" => backend.delete_if_value("k", b"v").await.map(|_| ()),
            _ => backend.touch_if_value("k", b"v", TTL).await.map(|_| ()),
        };
        let took = started.elapsed();
        let Err(err) = result else {
            panic!("{context} {op}: no error");
        };
        // The same error kinds as the blocking client's.
        assert!(err.is_timeout(), "{context} {op}: {err}");
        assert!(
            took < limit,
            "{context} {op}: took {took:?}, limit {limit:?}"
        );
    }
}

/// Every misbehaviour of both fake servers, and a Redis stalling its
/// handshake (bounded by the connect timeout).
async fn misbehaving_servers(flavour: &str) {
    for how in ALL {
        let memcached = Arc::new(
            MemcachedBackend::new([format!("127.0.0.1:{}", fake_memcached(how))])
                .unwrap()
                .timeout(TIMEOUT)
                .backoff(Duration::ZERO, Duration::ZERO),
        );
        let context = format!("{flavour} memcached {how:?}");
        // A huge length only shows in replies carrying a value.
        let ops: &[&str] = match how {
            Misbehaviour::HugeLength => &["get", "get_many", "delete_if_value", "touch_if_value"],
            _ => &EVERY_OP,
        };
        every_call_fails_in_time(&context, &*async_of(&memcached), ops, TIMEOUT + SLACK).await;
        let redis = Arc::new(
            RedisBackend::new(&format!("127.0.0.1:{}", fake_redis(how, false)))
                .unwrap()
                .timeout(TIMEOUT)
                .backoff(Duration::ZERO, Duration::ZERO),
        );
        let context = format!("{flavour} redis {how:?}");
        let ops: &[&str] = match how {
            Misbehaviour::HugeLength => &["get", "get_many"],
            _ => &EVERY_OP,
        };
        every_call_fails_in_time(&context, &*async_of(&redis), ops, TIMEOUT + SLACK).await;
    }
    let connect = Duration::from_millis(300);
    let slow_auth = Arc::new(
        RedisBackend::new(&format!(
            "127.0.0.1:{}",
            fake_redis(Misbehaviour::Trickle, true)
        ))
        .unwrap()
        .password(None, "secret")
        .timeout(TIMEOUT)
        .connect_timeout(connect)
        .backoff(Duration::ZERO, Duration::ZERO),
    );
    let context = format!("{flavour} redis slow AUTH");
    every_call_fails_in_time(&context, &*async_of(&slow_auth), &EVERY_OP, connect + SLACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_servers_cost_a_multi_thread_caller_at_most_the_deadline() {
    misbehaving_servers("multi-thread").await;
}

#[tokio::test]
async fn hung_servers_never_stall_a_current_thread_runtime() {
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut largest = Duration::ZERO;
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                largest = largest.max(last.elapsed());
                last = Instant::now();
            }
            largest
        }
    });
    misbehaving_servers("current-thread").await;
    stop.store(true, Ordering::SeqCst);
    let largest = heartbeat.await.unwrap();
    // A call blocking the thread would stall it for a whole timeout
    // (500 ms) or a trickled reply; the margin above 5 ms is for the
    // scheduler of a loaded 2-core machine running the other tests.
    assert!(
        largest < Duration::from_millis(150),
        "the heartbeat stalled for {largest:?}"
    );
}

/// A memcached whose very first reply is the value `first` followed by
/// `extra` (at once, or `late`: once the reply has been read); every later
/// `get` is answered with the value `second`.
fn confused_memcached(extra: &'static [u8], late: bool) -> u16 {
    let sent = Arc::new(AtomicBool::new(false));
    fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while let Some(request) = read_memcached_request(&mut reader) {
            if let Some(version) = memcached_version(&request) {
                if stream.write_all(version).is_err() {
                    return;
                }
                continue;
            }
            let key = request.split(' ').nth(1).unwrap_or("k").to_owned();
            let reply = if sent.swap(true, Ordering::SeqCst) {
                format!("VALUE {key} 0 6\r\nsecond\r\nEND\r\n").into_bytes()
            } else {
                let reply = format!("VALUE {key} 0 5\r\nfirst\r\nEND\r\n").into_bytes();
                answer(&mut stream, &reply, extra, late);
                continue;
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// A Redis whose very first reply is `first` followed by `extra` (at once,
/// or `late`); every later `GET` is answered `second`.
fn confused_redis(extra: &'static [u8], late: bool) -> u16 {
    let sent = Arc::new(AtomicBool::new(false));
    fake_server(move |mut stream: TcpStream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        while let Some(command) = read_redis_command(&mut reader) {
            if let Some(echo) = redis_echo(&command) {
                if stream.write_all(&echo).is_err() {
                    return;
                }
                continue;
            }
            let reply = if sent.swap(true, Ordering::SeqCst) {
                b"$6\r\nsecond\r\n".to_vec()
            } else {
                answer(&mut stream, b"$5\r\nfirst\r\n", extra, late);
                continue;
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    })
}

/// Sends `reply` then `extra`: together, or `late`, after the client has
/// had time to read the reply and pool its connection.
fn answer(stream: &mut TcpStream, reply: &[u8], extra: &[u8], late: bool) {
    if late {
        let _ = stream.write_all(reply);
        std::thread::sleep(Duration::from_millis(30));
        let _ = stream.write_all(extra);
    } else {
        let _ = stream.write_all(&[reply, extra].concat());
    }
}

async fn second_call_reads_its_own_reply(context: &str, backend: &dyn AsyncBackend) {
    // Bytes arriving with the reply may be a stray reply sent before it,
    // so a multiplexed call that sees them fails rather than guess; one
    // that reads the reply alone takes it.
    if let Ok(first) = backend.get("k").await {
        assert_eq!(first.as_deref(), Some(&b"first"[..]), "{context}");
    }
    // Let the stray bytes arrive, if they came apart from the reply.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = backend.get("k").await.unwrap();
    assert_eq!(second.as_deref(), Some(&b"second"[..]), "{context}");
}

#[tokio::test]
async fn a_connection_out_of_step_is_never_reused() {
    let memcached_extras: [&'static [u8]; 3] = [
        b"VALUE k 0 5\r\nfirst\r\nEND\r\n",
        b"garbage\r\n",
        b"\x00\xff",
    ];
    for (extra, late) in memcached_extras
        .into_iter()
        .flat_map(|e| [(e, false), (e, true)])
    {
        let port = confused_memcached(extra, late);
        let backend = Arc::new(MemcachedBackend::new([format!("127.0.0.1:{port}")]).unwrap());
        let context = format!(
            "memcached + {:?}, late {late}",
            String::from_utf8_lossy(extra)
        );
        second_call_reads_its_own_reply(&context, &*async_of(&backend)).await;
    }
    let redis_extras: [&'static [u8]; 3] = [b"$5\r\nfirst\r\n", b"+OK\r\n", b"garbage"];
    for (extra, late) in redis_extras
        .into_iter()
        .flat_map(|e| [(e, false), (e, true)])
    {
        let port = confused_redis(extra, late);
        let backend = Arc::new(RedisBackend::new(&format!("127.0.0.1:{port}")).unwrap());
        let context = format!("redis + {:?}, late {late}", String::from_utf8_lossy(extra));
        second_call_reads_its_own_reply(&context, &*async_of(&backend)).await;
    }
}

/// A memcached fake answering every `get` with a miss, counting the
/// connections it accepts.
fn counting_memcached() -> (u16, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let port = fake_server(move |stream, _| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut reader = BufReader::new(stream.try_clone().expect("a second handle"));
        let mut stream = stream;
        while let Some(request) = read_memcached_request(&mut reader) {
            let reply = memcached_version(&request).unwrap_or(b"END\r\n");
            if stream.write_all(reply).is_err() {
                return;
            }
        }
    });
    (port, accepted)
}

#[test]
fn a_runtime_reuses_its_own_pooled_connections_only() {
    let (port, accepted) = counting_memcached();
    let memcached = Arc::new(MemcachedBackend::new([format!("127.0.0.1:{port}")]).unwrap());
    let backend = async_of(&memcached);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // `get` and a `get_many` of a few keys both go over the runtime's
    // multiplexed connection: one connection per runtime.
    let calls = |runtime: &tokio::runtime::Runtime| {
        runtime.block_on(async {
            for _ in 0..50 {
                assert_eq!(backend.get("k").await.unwrap(), None);
                assert_eq!(backend.get_many(&["k", "l"]).await.unwrap(), [None, None]);
            }
        });
    };
    let opened = || accepted.load(Ordering::SeqCst);
    calls(&first);
    assert_eq!(opened(), 1, "one connection for 100 calls");
    // Both runtimes are alive: the second must not take the first's
    // connections, whose sockets belong to the first's reactor.
    calls(&second);
    assert_eq!(opened(), 2, "one more for the second runtime");
    calls(&first);
    calls(&second);
    assert_eq!(opened(), 2, "each runtime keeps its own");
    drop(first);
    // The first runtime's connections are dead but still held; the
    // second runtime goes on with its own.
    calls(&second);
    assert_eq!(opened(), 2);
}

#[test]
fn runtimes_in_turn_share_one_backend() {
    let Some(memcached) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let Some(redis) = Server::try_start(Kind::Redis) else {
        return;
    };
    let memcached = Arc::new(MemcachedBackend::new([memcached.address()]).unwrap());
    let redis = Arc::new(RedisBackend::new(&redis.address()).unwrap());
    let backends = [async_of(&memcached), async_of(&redis)];
    for round in 0..4u8 {
        let runtime = if round % 2 == 0 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        }
        .enable_all()
        .build()
        .unwrap();
        runtime.block_on(async {
            for backend in &backends {
                if round > 0 {
                    let earlier = backend.get("rounds").await.unwrap();
                    assert_eq!(earlier, Some(vec![round - 1]), "round {round}");
                }
                backend.set("rounds", &[round], TTL).await.unwrap();
            }
        });
        // The runtime, and the reactor its sockets were registered with,
        // is gone; its pooled connections must not poison the next one.
        drop(runtime);
    }
    assert_eq!(Backend::get(&*memcached, "rounds").unwrap(), Some(vec![3]));
    assert_eq!(Backend::get(&*redis, "rounds").unwrap(), Some(vec![3]));
}

#[test]
fn a_runtime_shut_down_mid_call_leaves_the_backend_usable() {
    let Some(server) = Server::try_start(Kind::Redis) else {
        return;
    };
    let redis = Arc::new(RedisBackend::new(&server.address()).unwrap());
    let backend = async_of(&redis);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for i in 0..8 {
        let backend = Arc::clone(&backend);
        runtime.spawn(async move {
            loop {
                let _ = backend.set(&format!("busy-{i}"), b"v", TTL).await;
            }
        });
    }
    std::thread::sleep(Duration::from_millis(100));
    runtime.shutdown_timeout(Duration::from_millis(100));
    let next = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    next.block_on(async {
        for _ in 0..32 {
            backend.set("after", b"fine", TTL).await.unwrap();
            assert_eq!(
                backend.get("after").await.unwrap().as_deref(),
                Some(&b"fine"[..])
            );
        }
    });
}

#[tokio::test]
async fn sync_and_async_callers_share_one_back_off() {
    // A port with nothing listening: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let pause = (Duration::from_secs(30), Duration::from_secs(30));
    let memcached = Arc::new(
        MemcachedBackend::new([&address])
            .unwrap()
            .backoff(pause.0, pause.1),
    );
    let err = Backend::get(&*memcached, "k").unwrap_err();
    assert!(err.is_connection(), "{err}");
    let err = async_of(&memcached).get("k").await.unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");

    let redis = Arc::new(
        RedisBackend::new(&address)
            .unwrap()
            .backoff(pause.0, pause.1),
    );
    let err = async_of(&redis).get("k").await.unwrap_err();
    assert!(err.is_connection(), "{err}");
    let started = Instant::now();
    let err = Backend::get(&*redis, "k").unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50));
}

async fn many_tasks(backend: Arc<dyn AsyncBackend>, name: &str) {
    for i in 0..64 {
        backend
            .set(&format!("task-{name}-{i}"), format!("v{i}").as_bytes(), TTL)
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let backend = Arc::clone(&backend);
            let name = name.to_owned();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let value = backend.get(&format!("task-{name}-{i}")).await.unwrap();
                    assert_eq!(value, Some(format!("v{i}").into_bytes()));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_tasks_all_read_their_values() {
    let Some(memcached) = Server::try_start(Kind::Memcached) else {
        return;
    };
    let Some(redis) = Server::try_start(Kind::Redis) else {
        return;
    };
    let memcached = Arc::new(MemcachedBackend::new([memcached.address()]).unwrap());
    let redis = Arc::new(RedisBackend::new(&redis.address()).unwrap());
    many_tasks(async_of(&memcached), "memcached").await;
    many_tasks(async_of(&redis), "redis").await;
}

#[tokio::test]
async fn sixty_four_concurrent_tasks_on_a_current_thread_runtime() {
    let Some(redis) = Server::try_start(Kind::Redis) else {
        return;
    };
    let redis = Arc::new(RedisBackend::new(&redis.address()).unwrap().pool_size(4));
    many_tasks(async_of(&redis), "redis-current").await;
}

#[test]
fn outside_a_tokio_runtime_a_call_is_an_error_not_a_panic() {
    let backend = Arc::new(RedisBackend::new("127.0.0.1:9").unwrap());
    let backend = async_of(&backend);
    let mut future = backend.get("k");
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(result) => assert!(result.is_err()),
        std::task::Poll::Pending => panic!("no runtime: nothing can wake it"),
    }
}

#[tokio::test]
async fn a_cancelled_call_never_leaves_its_reply_to_the_next() {
    // The first connection answers its first command late; every other
    // answer is prompt.
    let port = fake_server(|mut stream: TcpStream, number| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut first = number == 0;
        while let Some(command) = read_redis_command(&mut reader) {
            let reply = if let Some(echo) = redis_echo(&command) {
                echo
            } else if std::mem::take(&mut first) {
                std::thread::sleep(Duration::from_millis(200));
                b"$5\r\nfirst\r\n".to_vec()
            } else {
                b"$6\r\nsecond\r\n".to_vec()
            };
            if stream.write_all(&reply).is_err() {
                return;
            }
        }
    });
    let redis = Arc::new(RedisBackend::new(&format!("127.0.0.1:{port}")).unwrap());
    let backend = async_of(&redis);
    let cancelled = tokio::time::timeout(Duration::from_millis(50), backend.get("k")).await;
    assert!(cancelled.is_err(), "the caller gave up first");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let value = backend.get("k").await.unwrap();
        assert_eq!(value.as_deref(), Some(&b"second"[..]));
    }
}

#[tokio::test]
async fn a_server_named_by_host_name_is_resolved_without_blocking() {
    let Some(server) = Server::try_start(Kind::Redis) else {
        return;
    };
    let redis = Arc::new(RedisBackend::new(&format!("localhost:{}", server.port())).unwrap());
    let backend = async_of(&redis);
    backend.set("named", b"yes", TTL).await.unwrap();
    assert_eq!(
        Backend::get(&*redis, "named").unwrap().as_deref(),
        Some(&b"yes"[..])
    );
}
