//! `max_connections`: a burst of 512 concurrent large-value calls, from
//! threads and from async tasks, opens no more sockets to a server than
//! the cap, counted by the server itself (Redis `INFO clients`, memcached
//! `stats`) while the burst runs; and every call still returns its value.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use memo_runtime::{
    Config, MemcachedBackend, MemoryBackend, Options, cache_memoize, cache_memoize_async, configure,
};
use memo_tests::behaviour::noise;
use memo_tests::servers::{Kind, Server};
use memo_tests::{runtime, serial};

const CALLS: usize = 512;
const CAP: usize = 8;
const SIZE: usize = 64 * 1024;
/// Long enough that no call gives up on a connection mid-reply on a busy
/// machine: a connection dropped that way is closed on memo's side at
/// once, but counted by the server until it notices, which would blur
/// what this test counts.
const PATIENT: Duration = Duration::from_secs(5);

/// The connections `server` has open right now, as it counts them.
fn connections(kind: Kind, probe: &mut BufReader<TcpStream>) -> usize {
    let (request, field) = match kind {
        Kind::Redis => ("INFO clients\r\n", "connected_clients:"),
        Kind::Memcached => ("stats\r\n", "STAT curr_connections "),
    };
    probe
        .get_mut()
        .write_all(request.as_bytes())
        .expect("the probe writes");
    let mut found = None;
    let mut line = String::new();
    match kind {
        Kind::Redis => {
            probe.read_line(&mut line).expect("a bulk header");
            let length: usize = line.trim_end()[1..].parse().expect("a length");
            let mut body = vec![0; length + 2];
            probe.read_exact(&mut body).expect("the bulk");
            for text in String::from_utf8_lossy(&body).lines() {
                if let Some(count) = text.strip_prefix(field) {
                    found = count.trim().parse().ok();
                }
            }
        }
        Kind::Memcached => loop {
            line.clear();
            probe.read_line(&mut line).expect("a stats line");
            if line.trim_end() == "END" {
                break;
            }
            if let Some(count) = line.trim_end().strip_prefix(field) {
                found = count.parse().ok();
            }
        },
    }
    found.expect("the server counts its connections")
}

/// Runs `burst` while a probe counts the server's connections every few
/// milliseconds; the most seen, less what the server counted before the
/// burst with only the probe connected.
fn most_connections_during(server: &Server, kind: Kind, burst: impl FnOnce()) -> usize {
    let stream = TcpStream::connect(server.address()).expect("the probe connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    let mut probe = BufReader::new(stream);
    let before = connections(kind, &mut probe);
    let done = AtomicBool::new(false);
    let most = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                most.fetch_max(connections(kind, &mut probe), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        burst();
        done.store(true, Ordering::SeqCst);
    });
    most.load(Ordering::SeqCst).saturating_sub(before)
}

fn large() -> Options {
    Options::new().large_data(true).compress(false)
}

fn reset() {
    configure(Config::new(MemoryBackend::new()));
}

/// 512 threads, each memoizing a value of several chunks, twice (a miss
/// that stores, then a hit that reads every chunk).
fn threads(options: &Options) {
    let wrong = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for i in 0..CALLS {
            let (options, wrong) = (options, &wrong);
            scope.spawn(move || {
                for _ in 0..2 {
                    let value: Vec<u8> =
                        cache_memoize(["big", &i.to_string()], || noise(i as u64, SIZE), options);
                    if value != noise(i as u64, SIZE) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "every call got its value");
}

/// The same from 512 tasks on a multi-thread runtime.
fn tasks(options: &Options) {
    let wrong = Arc::new(AtomicUsize::new(0));
    runtime::run_multi(async {
        let mut handles = Vec::new();
        for i in 0..CALLS {
            let (options, wrong) = (options.clone(), Arc::clone(&wrong));
            handles.push(tokio::spawn(async move {
                for _ in 0..2 {
                    let value: Vec<u8> = cache_memoize_async(
                        ["big-async", &i.to_string()],
                        || async move { noise(i as u64, SIZE) },
                        &options,
                    )
                    .await;
                    if value != noise(i as u64, SIZE) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.expect("the task ran");
        }
    });
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "every call got its value");
}

/// The burst from threads, then from tasks, each on a fresh server (so
/// that only this burst's connections count) reached through `config`.
fn burst_stays_under_the_cap(kind: Kind, config: impl Fn(&Server) -> Config) {
    for (world, burst) in [("threads", threads as fn(&Options)), ("tasks", tasks)] {
        let Some(server) = Server::try_start(kind) else {
            return;
        };
        configure(config(&server).namespace(world).chunk_size(16 * 1024));
        let most = most_connections_during(&server, kind, || burst(&large()));
        reset();
        assert!(
            most <= CAP,
            "{kind:?}: {most} connections from {world}, cap {CAP}"
        );
        assert!(most > 1, "{kind:?}: the probe saw the burst from {world}");
    }
}

#[test]
fn a_burst_of_large_values_opens_at_most_max_connections_to_redis() {
    let _serial = serial();
    burst_stays_under_the_cap(Kind::Redis, |server| {
        let url = format!("{}?max_connections={CAP}&timeout_ms=5000", server.url());
        Config::from_url(&url).expect("a valid URL")
    });
}

#[test]
fn a_burst_of_large_values_opens_at_most_max_connections_to_memcached() {
    let _serial = serial();
    burst_stays_under_the_cap(Kind::Memcached, |server| {
        Config::new(
            MemcachedBackend::new([server.address()])
                .expect("an address")
                .max_connections(CAP)
                .timeout(PATIENT),
        )
    });
}
