//! memcached and Redis over TLS (`memcacheds://`, `rediss://`), against
//! real servers started with throwaway certificates: values, large values
//! around TLS record boundaries, iterators and locks, blocking and async;
//! one handshake per pooled connection; a wrong CA, a name mismatch or a
//! missing client certificate cost callers nothing but the cache (every
//! call returns its computed value, the failure is counted and logged
//! once); a server stalling its handshake costs at most the connect
//! timeout; `insecure=true` against a self-signed certificate; two
//! memcached servers over TLS share the keys, and losing one loses only its
//! share.
#![cfg(all(feature = "tls", feature = "memcached", feature = "redis"))]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{
    AsyncBackend, Backend, Config, ConfigError, MemcachedBackend, MemoryBackend, Options,
    RedisBackend, TlsConfig, cache_memoize, cache_memoize_async, configure, make_cache_key, stats,
};
use memo_tests::behaviour::{self, noise};
use memo_tests::logs::Logger;
use memo_tests::runtime;
use memo_tests::serial;
use memo_tests::servers::{Kind, fake_server};
use memo_tests::tls::{Pki, TlsServer};

const TTL: Duration = Duration::from_secs(60);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_millis(400);

/// Value sizes around TLS records (16 KiB of plaintext each), the client's
/// direct-write size (16 KiB) and read size (64 KiB), and rustls' 64 KiB
/// send buffer.
const SIZES: [usize; 16] = [
    0,
    1,
    16 * 1024 - 1,
    16 * 1024,
    16 * 1024 + 1,
    2 * 16 * 1024 - 1,
    2 * 16 * 1024,
    2 * 16 * 1024 + 1,
    3 * 16 * 1024 + 7,
    64 * 1024 - 1,
    64 * 1024,
    64 * 1024 + 1,
    100_000,
    4 * 64 * 1024 + 3,
    1_000_000,
    1_048_576 - 200,
];

fn value_of(size: usize, salt: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 11) as u8)
        .collect()
}

/// How long connecting, the handshake included, may take against a real
/// server in these tests: generous, for a loaded machine and a debug build.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A backend built with the builders, for the server and TLS settings of
/// `url`, with its blocking and async faces.
fn backend_from(
    kind: Kind,
    url: &str,
    connect_timeout: Duration,
) -> (Arc<dyn Backend>, Arc<dyn AsyncBackend>) {
    let address = url.split("://").nth(1).unwrap().split('?').next().unwrap();
    let tls = tls_of(url);
    let backend: Arc<dyn Backend> = match kind {
        Kind::Redis => Arc::new(
            RedisBackend::new(address)
                .unwrap()
                .tls(tls)
                .connect_timeout(connect_timeout),
        ),
        Kind::Memcached => Arc::new(
            MemcachedBackend::new([address])
                .unwrap()
                .tls(tls)
                .connect_timeout(connect_timeout),
        ),
    };
    let asynchronous = Backend::__async(Arc::clone(&backend)).expect("async face");
    (backend, asynchronous)
}

/// The `TlsConfig` the query of `url` describes (`ca`, `cert`, `key`).
fn tls_of(url: &str) -> TlsConfig {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
    };
    let mut tls = match param("ca") {
        Some(ca) => TlsConfig::with_ca_file(ca).unwrap(),
        None => TlsConfig::insecure(),
    };
    if let (Some(cert), Some(key)) = (param("cert"), param("key")) {
        tls = tls.client_certificate(cert, key).unwrap();
    }
    tls
}

/// A plaintext client of the same server, to look behind the TLS port.
fn plain(kind: Kind, server: &TlsServer) -> Arc<dyn Backend> {
    let address = format!("127.0.0.1:{}", server.plain_port());
    match kind {
        Kind::Redis => Arc::new(RedisBackend::new(&address).unwrap()),
        Kind::Memcached => Arc::new(MemcachedBackend::new([address]).unwrap()),
    }
}

/// How many connections the server has accepted so far, on any port, this
/// probe's own included.
fn connections_accepted(kind: Kind, server: &TlsServer) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", server.plain_port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (request, field): (&[u8], &str) = match kind {
        Kind::Redis => (b"INFO stats\r\n", "total_connections_received:"),
        Kind::Memcached => (b"stats\r\n", "STAT total_connections "),
    };
    stream.write_all(request).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "no {field} in the stats"
        );
        if let Some(count) = line.trim_end().strip_prefix(field) {
            return count.trim().parse().unwrap();
        }
    }
}

fn reset() {
    configure(Config::new(MemoryBackend::new()));
}

fn configure_url(url: &str) {
    let url = format!("{url}&connect_timeout_ms={}", CONNECT_TIMEOUT.as_millis());
    configure(
        Config::from_url(&url)
            .expect("a valid TLS URL")
            .namespace("tls")
            .chunk_size(4096),
    );
}

macro_rules! both_kinds {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(
                #[test]
                fn $test() {
                    super::$test(memo_tests::servers::Kind::Redis);
                }
            )*
        }
        mod memcached {
            $(
                #[test]
                fn $test() {
                    super::$test(memo_tests::servers::Kind::Memcached);
                }
            )*
        }
    };
}

both_kinds!(
    values_large_values_iterators_and_locks_work_over_tls,
    async_values_large_values_and_locks_work_over_tls,
    every_size_around_record_boundaries_round_trips,
    the_handshake_is_paid_once_per_pooled_connection,
    a_wrong_ca_or_name_costs_only_the_cache_and_is_logged_once,
    mutual_tls_works_with_a_client_certificate_and_fails_safe_without,
    a_stalled_handshake_costs_at_most_the_connect_timeout,
    insecure_accepts_a_self_signed_certificate,
    a_restarted_server_is_a_plain_miss_and_its_sessions_are_replaced,
);

fn values_large_values_iterators_and_locks_work_over_tls(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), false);
    configure_url(&server.url(&format!("ca={}", pki.ca().display())));
    let calls = AtomicUsize::new(0);

    for _ in 0..2 {
        let value: String = cache_memoize(
            "small",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                "over tls".to_owned()
            },
            &Options::new(),
        );
        assert_eq!(value, "over tls");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a miss, then a hit");
    let stored = plain(kind, &server)
        .get(&make_cache_key("small", &Options::new()))
        .unwrap();
    assert!(stored.is_some(), "the entry reached the server through TLS");

    // 300 KB over 4 KiB chunks: many chunks and many TLS records.
    let large = Options::new().large_data(true).compress(false);
    for _ in 0..2 {
        let value: Vec<u8> = cache_memoize(
            "large",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                noise(3, 300_000)
            },
            &large,
        );
        assert_eq!(value, noise(3, 300_000));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    behaviour::an_iterator_replays("rows", &calls);
    behaviour::a_locked_stampede_computes_once("stampede", Duration::from_millis(200));
    behaviour::a_lock_excludes_a_second_holder("resource");

    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

fn async_values_large_values_and_locks_work_over_tls(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), false);
    configure_url(&server.url(&format!("ca={}", pki.ca().display())));
    let calls = Arc::new(AtomicUsize::new(0));
    runtime::run_multi(async {
        for _ in 0..2 {
            let calls = Arc::clone(&calls);
            let value: Vec<u8> = cache_memoize_async(
                "large",
                || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    noise(9, 250_000)
                },
                &Options::new().large_data(true).compress(false),
            )
            .await;
            assert_eq!(value, noise(9, 250_000));
        }
        behaviour::a_locked_task_stampede("stampede", Duration::from_millis(200), &calls).await;
    });
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one large, one locked");
    // Another runtime, with connections of its own.
    runtime::run(async {
        let value: Vec<u8> = cache_memoize_async(
            "large",
            || async { unreachable!("cached") },
            &Options::new().large_data(true).compress(false),
        )
        .await;
        assert_eq!(value, noise(9, 250_000));
    });
    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

fn every_size_around_record_boundaries_round_trips(kind: Kind) {
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), false);
    let (sync, asynchronous) = backend_from(
        kind,
        &server.url(&format!("ca={}", pki.ca().display())),
        CONNECT_TIMEOUT,
    );
    let plain = plain(kind, &server);
    for (i, size) in SIZES.into_iter().enumerate() {
        let key = format!("size-{size}");
        let value = value_of(size, i as u8);
        sync.set(&key, &value, TTL).unwrap();
        assert_eq!(
            sync.get(&key).unwrap().as_deref(),
            Some(&value[..]),
            "{size}"
        );
        assert_eq!(
            plain.get(&key).unwrap().as_deref(),
            Some(&value[..]),
            "{size}"
        );
    }
    // A batch of them in one pipeline each way.
    let keys: Vec<String> = SIZES.iter().map(|size| format!("batch-{size}")).collect();
    let values: Vec<Vec<u8>> = SIZES.iter().map(|&size| value_of(size, 9)).collect();
    let items: Vec<(&str, &[u8])> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    sync.set_many(&items, TTL).unwrap();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let read = sync.get_many(&key_refs).unwrap();
    assert!(
        read.iter()
            .zip(&values)
            .all(|(r, v)| r.as_deref() == Some(&v[..]))
    );

    runtime::run(async {
        for (i, size) in SIZES.into_iter().enumerate() {
            let key = format!("async-size-{size}");
            let value = value_of(size, i as u8 ^ 0x55);
            asynchronous.set(&key, &value, TTL).await.unwrap();
            assert_eq!(
                asynchronous.get(&key).await.unwrap().as_deref(),
                Some(&value[..]),
                "{size}"
            );
            assert_eq!(
                sync.get(&key).unwrap().as_deref(),
                Some(&value[..]),
                "{size}"
            );
        }
        let read = asynchronous.get_many(&key_refs).await.unwrap();
        assert!(
            read.iter()
                .zip(&values)
                .all(|(r, v)| r.as_deref() == Some(&v[..]))
        );
    });
}

fn the_handshake_is_paid_once_per_pooled_connection(kind: Kind) {
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), false);
    let (sync, asynchronous) = backend_from(
        kind,
        &server.url(&format!("ca={}", pki.ca().display())),
        CONNECT_TIMEOUT,
    );
    let before = connections_accepted(kind, &server);
    // Less the probe that counts them.
    let opened = || connections_accepted(kind, &server) - before - 1;
    sync.set("k", b"v", TTL).unwrap();
    for _ in 0..50 {
        assert_eq!(sync.get("k").unwrap().as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(opened(), 1, "blocking");
    // An async connection belongs to the runtime whose reactor it is
    // registered with: each runtime pays one handshake, and its 25 calls
    // share that connection.
    for _ in 0..2 {
        runtime::run(async {
            for _ in 0..25 {
                assert_eq!(
                    asynchronous.get("k").await.unwrap().as_deref(),
                    Some(&b"v"[..])
                );
            }
        });
    }
    assert_eq!(
        opened() - 1,
        3,
        "one more per runtime, less the first probe"
    );
}

/// Calls through the configured cache `n` times, the `i`th computing `i`:
/// how many computed, and what each returned.
fn call_n(n: usize) -> (usize, Vec<usize>) {
    let mut values = Vec::new();
    let calls = AtomicUsize::new(0);
    for i in 0..n {
        let value: usize = cache_memoize(
            "fail-safe",
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                i
            },
            &Options::new(),
        );
        values.push(value);
    }
    (calls.load(Ordering::SeqCst), values)
}

/// Async calls, likewise.
async fn call_n_async(n: usize) -> (usize, Vec<usize>) {
    let mut values = Vec::new();
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..n {
        let counter = Arc::clone(&calls);
        let value: usize = cache_memoize_async(
            "fail-safe-async",
            || async move {
                counter.fetch_add(1, Ordering::SeqCst);
                i
            },
            &Options::new(),
        )
        .await;
        values.push(value);
    }
    (calls.load(Ordering::SeqCst), values)
}

/// Configures `url`, which the server must refuse to serve, and checks that
/// blocking and async callers compute every value, that the failures are
/// counted and logged once, and that the log says `why`.
fn fails_safe(url: &str, why: &str) {
    let logger = Logger::install();
    logger.clear();
    // A back-off longer than the test: one outage, one log line.
    let url = format!(
        "{url}&connect_timeout_ms={}&backoff_ms=30000&max_backoff_ms=30000",
        CONNECT_TIMEOUT.as_millis()
    );
    configure(Config::from_url(&url).unwrap());
    let every_value: Vec<usize> = (0..10).collect();
    assert_eq!(call_n(10), (10, every_value.clone()), "each call computes");
    assert_eq!(runtime::run(call_n_async(10)), (10, every_value));
    let errors = stats().errors;
    assert!(
        errors >= 2,
        "reads and writes failed and were counted: {errors}"
    );
    // This server's lines only: the logger is the process's, and the
    // other tests of this binary run at the same time.
    let server = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['?', '/']).next())
        .and_then(|authority| authority.rsplit('@').next())
        .unwrap_or_default()
        .to_owned();
    let warnings: Vec<String> = logger
        .lines()
        .into_iter()
        .filter(|(level, line)| *level == log::Level::Warn && line.contains(&server))
        .map(|(_, line)| line)
        .collect();
    assert_eq!(warnings.len(), 1, "logged once: {warnings:?}");
    assert!(warnings[0].contains(why), "{warnings:?}");
    assert!(
        !warnings[0].contains("BEGIN"),
        "no key material: {warnings:?}"
    );
}

fn a_wrong_ca_or_name_costs_only_the_cache_and_is_logged_once(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), false);
    fails_safe(
        &server.url(&format!("ca={}", pki.other_ca().display())),
        "not signed by a trusted CA",
    );
    // The certificate names 127.0.0.1 only.
    fails_safe(
        &server.url_for("localhost", &format!("ca={}", pki.ca().display())),
        "name mismatch",
    );
    let plain = plain(kind, &server);
    assert!(
        plain
            .get(&make_cache_key("fail-safe", &Options::new()))
            .unwrap()
            .is_none(),
        "nothing was stored"
    );
    reset();
}

fn mutual_tls_works_with_a_client_certificate_and_fails_safe_without(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.server(), true);
    let client = pki.client();
    configure_url(&server.url(&format!(
        "ca={}&cert={}&key={}",
        pki.ca().display(),
        client.cert.display(),
        client.key.display()
    )));
    assert_eq!(
        call_n(10),
        (1, vec![0; 10]),
        "cached with a client certificate"
    );
    assert_eq!(runtime::run(call_n_async(10)), (1, vec![0; 10]));
    assert_eq!(stats().errors, 0, "{:?}", stats());

    fails_safe(
        &server.url(&format!("ca={}", pki.ca().display())),
        "client certificate",
    );
    reset();
}

fn a_stalled_handshake_costs_at_most_the_connect_timeout(kind: Kind) {
    let pki = Pki::new();
    // Accepts and says nothing; the second fake starts a 16 KiB handshake
    // record and trickles its body a byte every 20 ms.
    let silent = fake_server(|stream, _| {
        std::thread::sleep(Duration::from_secs(5));
        drop(stream);
    });
    let trickling = fake_server(|mut stream, _| {
        if stream.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]).is_err() {
            return;
        }
        for _ in 0..250 {
            if stream.write_all(&[0]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let connect_timeout = Duration::from_millis(300);
    for port in [silent, trickling] {
        let scheme = match kind {
            Kind::Redis => "rediss",
            Kind::Memcached => "memcacheds",
        };
        let url = format!("{scheme}://127.0.0.1:{port}?ca={}", pki.ca().display());
        let (sync, asynchronous) = backend_from(kind, &url, connect_timeout);
        let started = Instant::now();
        let err = sync.get("k").unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= connect_timeout - Duration::from_millis(50),
            "{took:?}"
        );
        assert!(took < connect_timeout + SLACK, "{took:?}: {err}");
        assert!(err.to_string().contains("handshake"), "{err}");
        // A fresh backend: the first one backs off.
        let (_, asynchronous_fresh) = backend_from(kind, &url, connect_timeout);
        drop(asynchronous);
        runtime::run(async {
            let started = Instant::now();
            let err = asynchronous_fresh.get("k").await.unwrap_err();
            let took = started.elapsed();
            assert!(took < connect_timeout + SLACK, "{took:?}: {err}");
            assert!(err.to_string().contains("handshake"), "{err}");
        });
    }
}

fn insecure_accepts_a_self_signed_certificate(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let server = TlsServer::start(kind, &pki, pki.self_signed(), false);
    let logger = Logger::install();
    logger.clear();
    configure_url(&server.url("insecure=true"));
    assert_eq!(call_n(5), (1, vec![0; 5]), "cached");
    assert_eq!(runtime::run(call_n_async(5)), (1, vec![0; 5]));
    assert_eq!(stats().errors, 0, "{:?}", stats());
    // Verifying, the same server is refused: its certificate is its own.
    fails_safe(
        &server.url(&format!("ca={}", pki.ca().display())),
        "not signed by a trusted CA",
    );
    reset();
}

fn a_restarted_server_is_a_plain_miss_and_its_sessions_are_replaced(kind: Kind) {
    let _serial = serial();
    let pki = Pki::new();
    let mut server = TlsServer::start(kind, &pki, pki.server(), false);
    configure_url(&server.url(&format!("ca={}", pki.ca().display())));
    assert_eq!(call_n(3), (1, vec![0; 3]));
    assert_eq!(runtime::run(call_n_async(3)), (1, vec![0; 3]));
    server.restart();
    // Every pooled connection, blocking and async, is from before the
    // restart: each is found closed and replaced within the call.
    assert_eq!(call_n(3), (1, vec![0; 3]), "the restarted server is empty");
    assert_eq!(runtime::run(call_n_async(3)), (1, vec![0; 3]));
    assert_eq!(stats().errors, 0, "{:?}", stats());
    reset();
}

#[test]
fn insecure_is_logged_loudly_once_per_process() {
    let _serial = serial();
    // Installed before any test of this process turns verification off.
    let logger = Logger::install();
    for _ in 0..3 {
        let _ = Config::from_url("rediss://127.0.0.1:1?insecure=true").unwrap();
        let _ = Config::from_url("memcacheds://127.0.0.1:1?insecure=true").unwrap();
    }
    assert_eq!(logger.ever_logged("verification is OFF (insecure=true)"), 1);
}

#[test]
fn tls_urls_with_bad_files_or_parameters_are_clear_errors() {
    let pki = Pki::new();
    std::fs::write(pki.path("garbage.pem"), "not a certificate\n").unwrap();
    let secret_key =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGtleSBtYXRlcmlhbA==!\n-----END PRIVATE KEY-----\n";
    std::fs::write(pki.path("bad.key"), secret_key).unwrap();
    let client = pki.client();
    let cases = [
        (
            format!("rediss://h:1?ca={}", pki.path("missing.pem").display()),
            "cannot read",
        ),
        (
            format!("memcacheds://h:1?ca={}", pki.path("garbage.pem").display()),
            "no certificate",
        ),
        (
            format!(
                "rediss://h:1?ca={}&cert={}&key={}",
                pki.ca().display(),
                client.cert.display(),
                pki.path("bad.key").display()
            ),
            "private key",
        ),
        (
            format!(
                "rediss://h:1?ca={}&cert={}&key={}",
                pki.ca().display(),
                client.cert.display(),
                pki.server().key.display()
            ),
            "cannot be used together",
        ),
        (
            format!(
                "rediss://h:1?ca={}&cert={}",
                pki.ca().display(),
                client.cert.display()
            ),
            "key=PATH",
        ),
        (
            format!("redis://h:1?ca={}", pki.ca().display()),
            "TLS scheme",
        ),
        ("memcached://h:1?insecure=true".to_owned(), "TLS scheme"),
        ("rediss://h:1?insecure=perhaps".to_owned(), "true or false"),
    ];
    for (url, expected) in cases {
        let err = Config::from_url(&url).map(|_| ()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(expected), "{url}: {message}");
        assert!(!message.contains("c2VjcmV0"), "{url}: {message}");
    }
    let err = Config::from_url("rediss://user:hunter2@h:1?ca=/nowhere.pem")
        .map(|_| ())
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(matches!(err, ConfigError::InvalidValue { .. }), "{err:?}");
}

/// Whether a blocking call for `key` computed (a miss); the value is
/// checked either way.
fn computed(key: &str) -> bool {
    let computed = AtomicUsize::new(0);
    let value: String = cache_memoize(
        ["spread", key],
        || {
            computed.fetch_add(1, Ordering::SeqCst);
            format!("value of {key}")
        },
        &Options::new(),
    );
    assert_eq!(value, format!("value of {key}"), "the caller's own value");
    computed.load(Ordering::SeqCst) > 0
}

/// [`computed`], async.
async fn computed_async(key: &str) -> bool {
    let computed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&computed);
    let owned = key.to_owned();
    let value: String = cache_memoize_async(
        ["spread", key],
        || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            format!("value of {owned}")
        },
        &Options::new(),
    )
    .await;
    assert_eq!(value, format!("value of {key}"), "the caller's own value");
    computed.load(Ordering::SeqCst) > 0
}

#[test]
fn two_memcached_tls_servers_share_the_keys_and_losing_one_loses_only_its_share() {
    let _serial = serial();
    let pki = Pki::new();
    let first = TlsServer::start(Kind::Memcached, &pki, pki.server(), false);
    let second = TlsServer::start(Kind::Memcached, &pki, pki.server(), false);
    let url = format!(
        "memcacheds://127.0.0.1:{},127.0.0.1:{}?ca={}&timeout_ms=500",
        first.tls_port(),
        second.tls_port(),
        pki.ca().display()
    );
    configure_url(&url);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let (sync_keys, async_keys) = keys.split_at(20);
    for key in sync_keys {
        assert!(computed(key), "{key} starts cold");
        assert!(!computed(key), "{key} is a hit over TLS");
    }
    runtime::run(async {
        for key in async_keys {
            assert!(computed_async(key).await, "{key} starts cold");
            assert!(!computed_async(key).await, "{key} is a hit over TLS");
        }
    });
    // Each server, read through its plaintext port, holds some of the keys,
    // and no key is on both.
    let options = Options::new();
    let held = |server: &TlsServer| -> Vec<bool> {
        let raw = plain(Kind::Memcached, server);
        keys.iter()
            .map(|key| {
                let stored = make_cache_key(["spread", key.as_str()], &options);
                raw.get(&stored).unwrap().is_some()
            })
            .collect()
    };
    let (on_first, on_second) = (held(&first), held(&second));
    let on_first_count = on_first.iter().filter(|held| **held).count();
    assert!(
        (5..35).contains(&on_first_count),
        "{on_first_count} of 40 keys on the first server; expected a share"
    );
    for (index, (a, b)) in on_first.iter().zip(&on_second).enumerate() {
        assert!(a ^ b, "key {index} is on exactly one server");
    }
    assert_eq!(stats().errors, 0, "{:?}", stats());

    drop(second);
    // The lost server's keys are misses that still return their values, the
    // live server's keys are still hits, blocking and async alike.
    for (key, on_first) in sync_keys.iter().zip(&on_first) {
        assert_eq!(computed(key), !on_first, "{key} after losing a server");
    }
    runtime::run(async {
        for (key, on_first) in async_keys.iter().zip(&on_first[20..]) {
            assert_eq!(
                computed_async(key).await,
                !on_first,
                "{key} after losing a server"
            );
        }
    });
    assert!(stats().errors > 0, "the lost server is counted");
    reset();
}
