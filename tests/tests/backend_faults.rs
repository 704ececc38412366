//! What a caller sees when the cache server misbehaves: down at start,
//! killed mid-run, restarted empty, frozen past the timeout, or answering
//! garbage. In every case the caller gets the right value, with no error
//! and no panic; the failures are counted in `stats().errors` and logged
//! once per outage; and caching resumes by itself when the server returns.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memo_runtime::{Config, MemoryBackend, Options, cache_memoize, configure, stats};
use memo_tests::logs::Logger;
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};

/// Short timeouts and back-off so that the tests run in seconds.
const TUNING: &str = "connect_timeout_ms=100&timeout_ms=250&backoff_ms=100&max_backoff_ms=400";

/// How long caching may take to resume once a server is back: longer than
/// the largest back-off.
const RECOVERY: Duration = Duration::from_secs(5);

fn configure_for(server: &Server) {
    let url = format!("{}?{TUNING}&namespace=faults", server.url());
    configure(Config::from_url(&url).expect("a valid URL"));
}

fn reset() {
    configure(Config::new(MemoryBackend::new()));
}

/// The value for `key`, checked against what computing it gives; returns
/// whether it was computed (a miss) rather than read.
fn fetch(key: &str) -> bool {
    fetch_with(key, &Options::new())
}

fn fetch_with(key: &str, options: &Options) -> bool {
    let computed = AtomicUsize::new(0);
    let value: Vec<String> = cache_memoize(
        ["faults", key],
        || {
            computed.fetch_add(1, Ordering::SeqCst);
            expected(key)
        },
        options,
    );
    assert_eq!(
        value,
        expected(key),
        "the caller always gets the right value"
    );
    computed.load(Ordering::SeqCst) > 0
}

fn expected(key: &str) -> Vec<String> {
    (0..50).map(|i| format!("{key}-{i}")).collect()
}

/// Calls until `key` is served from the cache, which needs the server back
/// and a store to have gone through; fails after [`RECOVERY`].
fn wait_for_caching(key: &str) {
    let deadline = Instant::now() + RECOVERY;
    while fetch(key) {
        assert!(
            Instant::now() < deadline,
            "caching did not resume within {RECOVERY:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

macro_rules! faults {
    ($($name:ident => $kind:expr),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn server_down_at_start_costs_nothing_but_the_cache() {
                    super::down_at_start($kind);
                }

                #[test]
                fn server_killed_mid_run_then_back_resumes_caching() {
                    super::killed_mid_run($kind);
                }

                #[test]
                fn server_restarted_empty_is_a_plain_miss() {
                    super::restarted_empty($kind);
                }

                #[test]
                fn server_paused_past_the_timeout_is_skipped_then_resumed() {
                    super::paused($kind);
                }

                #[test]
                fn an_outage_is_logged_once_not_per_call() {
                    super::logged_once($kind);
                }
            }
        )*
    };
}

faults!(memcached => memo_tests::servers::Kind::Memcached, redis => memo_tests::servers::Kind::Redis);

fn down_at_start(kind: Kind) {
    let _serial = serial();
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    server.kill();
    configure_for(&server);
    let started = Instant::now();
    for _ in 0..50 {
        assert!(fetch("a"), "nothing to read from: computed every time");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead server costs milliseconds, not a hang: {:?}",
        started.elapsed()
    );
    assert!(stats().errors > 0, "failures are counted");
    server.restart();
    wait_for_caching("a");
    reset();
}

fn killed_mid_run(kind: Kind) {
    let _serial = serial();
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    configure_for(&server);
    let large = Options::new().large_data(true);
    assert!(fetch("a"));
    assert!(fetch_with("big", &large));
    assert!(!fetch("a"));
    assert!(!fetch_with("big", &large));
    assert_eq!(stats().errors, 0);

    server.kill();
    for _ in 0..20 {
        assert!(fetch("a"));
        assert!(fetch_with("big", &large));
    }
    let errors = stats().errors;
    assert!(errors > 0, "failures are counted");

    server.restart();
    wait_for_caching("a");
    // Large data too: the restarted server is empty, so it is computed and
    // stored once more, then read.
    let deadline = Instant::now() + RECOVERY;
    while fetch_with("big", &large) {
        assert!(
            Instant::now() < deadline,
            "large data caching did not resume"
        );
    }
    reset();
}

fn restarted_empty(kind: Kind) {
    let _serial = serial();
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    configure_for(&server);
    for key in ["a", "b", "c"] {
        assert!(fetch(key));
        assert!(!fetch(key));
    }
    server.restart();
    for key in ["a", "b", "c"] {
        assert!(fetch(key), "the restarted server is empty");
        assert!(!fetch(key), "and caches again at once");
    }
    assert_eq!(
        stats().errors,
        0,
        "connections from before the restart are replaced without an error"
    );
    reset();
}

fn paused(kind: Kind) {
    let _serial = serial();
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    configure_for(&server);
    assert!(fetch("a"));
    assert!(!fetch("a"));

    server.pause();
    let started = Instant::now();
    for _ in 0..20 {
        assert!(fetch("a"), "a frozen server answers nothing: computed");
    }
    let elapsed = started.elapsed();
    server.resume();
    // The first call waits out the 250 ms timeout (a store after it may too,
    // or a probe); the others skip the server during its back-off.
    assert!(
        elapsed < Duration::from_secs(3),
        "20 calls against a frozen server took {elapsed:?}"
    );
    assert!(stats().errors > 0, "timeouts are counted");

    wait_for_caching("a");
    assert!(!fetch("a"));
    reset();
}

fn logged_once(kind: Kind) {
    let _serial = serial();
    let logger = Logger::install();
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    configure_for(&server);
    assert!(fetch("a"));
    logger.clear();

    server.kill();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        fetch("a");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(logger.count(log::Level::Warn), 1, "{:?}", logger.lines());
    server.restart();
    wait_for_caching("a");
    assert_eq!(logger.count(log::Level::Warn), 1, "{:?}", logger.lines());
    assert_eq!(logger.count(log::Level::Info), 1, "{:?}", logger.lines());
    reset();
}

/// Serves a memcached lookalike that answers every `get` with the same
/// bogus bytes and accepts every store: a broken or hostile cache.
fn garbage_memcached() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("its address").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                    line.clear();
                    let reply = match words.first().map(String::as_str) {
                        Some("get" | "gets") => {
                            let mut reply = String::new();
                            for key in &words[1..] {
                                reply.push_str(&format!("VALUE {key} 0 11 1\r\nnot a value\r\n"));
                            }
                            reply + "END\r\n"
                        }
                        Some("set" | "add") => {
                            let length: usize = words[4].parse().unwrap_or(0);
                            let mut data = vec![0; length + 2];
                            if reader.read_exact(&mut data).is_err() {
                                return;
                            }
                            "STORED\r\n".to_owned()
                        }
                        Some("delete") => "DELETED\r\n".to_owned(),
                        Some("touch") => "TOUCHED\r\n".to_owned(),
                        _ => "ERROR\r\n".to_owned(),
                    };
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn a_cache_answering_garbage_is_never_believed() {
    let _serial = serial();
    let address = garbage_memcached();
    configure(Config::from_url(&format!("memcached://{address}?{TUNING}")).expect("a valid URL"));
    for key in ["a", "b"] {
        assert!(fetch(key), "garbage is a miss");
        assert!(fetch(key), "and stays one");
        assert!(fetch_with(key, &Options::new().large_data(true)));
    }
    reset();
}

#[test]
fn losing_one_of_two_memcached_servers_loses_only_its_share() {
    let _serial = serial();
    let (Some(first), Some(second)) = (
        Server::try_start(Kind::Memcached),
        Server::try_start(Kind::Memcached),
    ) else {
        return;
    };
    let servers = [first, second];
    let url = format!(
        "memcached://{},{}?{TUNING}",
        servers[0].address(),
        servers[1].address()
    );
    configure(Config::from_url(&url).expect("a valid URL"));
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for key in &keys {
        assert!(fetch(key));
    }
    servers[1].kill();
    let still_cached = keys.iter().filter(|key| !fetch(key)).count();
    assert!(
        (5..35).contains(&still_cached),
        "{still_cached} of 40 keys survived; expected the live server's share"
    );
    assert!(stats().errors > 0);
    reset();
}
