//! Several writers repeatedly store different large values and iterators
//! under one key while others read it: every read yields exactly one
//! writer's complete value, never a mix of two writes' chunks and never a
//! truncated list.
//!
//! Every value describes itself (writer, round, length, and contents
//! derived from those), so a reader can tell a complete value from a
//! splice of two or a cut one. First with threads on the embedded backend,
//! then with several processes (this test binary re-run as a child writer)
//! on real memcached and Redis servers.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use memo_runtime::{
    Config, EncryptionKey, MemoryBackend, Options, cache_memoize, cache_memoize_iter, configure,
    stats,
};
use memo_tests::serial;
use memo_tests::servers::{Kind, Server};
use serde::{Deserialize, Serialize};

const VALUE_KEY: [&str; 2] = ["concurrent", "value"];
const ITEMS_KEY: [&str; 2] = ["concurrent", "items"];

/// Set in a child process to the job it runs (see [`child_writer`]).
const CHILD_ENV: &str = "MEMO_CONCURRENT_WRITER";

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The large value of `writer`'s `round`: a header (writer, round, length)
/// and a body derived from it, over several 1 KiB chunks; each writer's
/// values have their own length.
fn value(writer: u64, round: u64) -> Vec<u64> {
    let len = 300 + writer * 170 + round % 3 * 50;
    let mut out = vec![writer, round, len];
    out.extend((3..len).map(|i| mix(writer << 40 ^ round << 20 ^ i)));
    out
}

/// Checks that `got` is one complete value; returns its writer.
fn check_value(got: &[u64]) -> u64 {
    assert!(got.len() >= 3, "truncated value: {} words", got.len());
    let (writer, round) = (got[0], got[1]);
    assert_eq!(
        got.len() as u64,
        got[2],
        "value of writer {writer} truncated or extended"
    );
    assert!(
        got == value(writer, round),
        "value of writer {writer} round {round} is a mix"
    );
    writer
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    writer: u64,
    round: u64,
    index: u64,
    count: u64,
    text: String,
}

/// The items of `writer`'s `round`: each writer yields its own number.
fn items(writer: u64, round: u64) -> Vec<Item> {
    let count = 40 + writer * 25 + round % 4;
    (0..count)
        .map(|index| Item {
            writer,
            round,
            index,
            count,
            text: format!("{:x}", mix(writer ^ round << 8 ^ index << 16)).repeat(3),
        })
        .collect()
}

/// Checks that `got` is one writer's complete list; returns its writer.
fn check_items(got: &[Item]) -> u64 {
    assert!(!got.is_empty(), "an empty list was never written");
    let (writer, round) = (got[0].writer, got[0].round);
    assert_eq!(
        got.len() as u64,
        got[0].count,
        "list of writer {writer} truncated"
    );
    assert!(
        got == items(writer, round),
        "list of writer {writer} round {round} is a mix"
    );
    writer
}

fn writer_options(compress: bool, encrypt: bool) -> Options {
    Options::new()
        .large_data(true)
        .compress(compress)
        .encrypt(encrypt)
        .force_overwrite(true)
}

fn reader_options(compress: bool, encrypt: bool) -> Options {
    Options::new()
        .large_data(true)
        .compress(compress)
        .encrypt(encrypt)
}

/// One write of each kind by `writer`.
fn write_once(writer: u64, round: u64, compress: bool, encrypt: bool) {
    let options = writer_options(compress, encrypt);
    let stored: Vec<u64> = cache_memoize(VALUE_KEY, || value(writer, round), &options);
    check_value(&stored);
    let streamed: Vec<Item> =
        cache_memoize_iter(ITEMS_KEY, || items(writer, round), &options).collect();
    check_items(&streamed);
}

/// One read of each kind by reader `reader` (whose own values, computed on
/// a miss, are just one more writer's).
fn read_once(reader: u64, round: u64, compress: bool, encrypt: bool, seen: &Seen) {
    let options = reader_options(compress, encrypt);
    let got: Vec<u64> = cache_memoize(VALUE_KEY, || value(reader, round), &options);
    seen.note(check_value(&got), reader);
    let got: Vec<Item> = cache_memoize_iter(ITEMS_KEY, || items(reader, round), &options).collect();
    seen.note(check_items(&got), reader);
}

/// What readers saw: reads of another writer's value, and of their own.
#[derive(Default)]
struct Seen {
    others: AtomicU64,
    own: AtomicU64,
}

impl Seen {
    fn note(&self, writer: u64, reader: u64) {
        let counter = if writer == reader {
            &self.own
        } else {
            &self.others
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn key() -> EncryptionKey {
    EncryptionKey::new(*b"concurrent-writers-test-key-0032").unwrap()
}

/// Writers 0..writers and readers 100.. as threads of this process, until
/// every writer has done `rounds` rounds.
fn threads(writers: u64, readers: u64, rounds: u64, compress: bool, encrypt: bool) -> Seen {
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let writer_threads: Vec<_> = (0..writers)
        .map(|writer| {
            thread::spawn(move || {
                for round in 0..rounds {
                    write_once(writer, round, compress, encrypt);
                }
            })
        })
        .collect();
    let reader_threads: Vec<_> = (0..readers)
        .map(|r| {
            let (done, seen) = (done.clone(), seen.clone());
            thread::spawn(move || {
                let mut round = 0;
                while !done.load(Ordering::Relaxed) {
                    read_once(100 + r, round, compress, encrypt, &seen);
                    round += 1;
                }
            })
        })
        .collect();
    for handle in writer_threads {
        handle.join().expect("a writer thread panicked");
    }
    done.store(true, Ordering::Relaxed);
    for handle in reader_threads {
        handle.join().expect("a reader thread panicked");
    }
    Arc::try_unwrap(seen).unwrap_or_default()
}

#[test]
fn threads_never_read_a_mix_of_two_writes() {
    let _serial = serial();
    for (compress, encrypt) in [(false, false), (true, false), (false, true), (true, true)] {
        configure(
            Config::new(MemoryBackend::new())
                .chunk_size(1024)
                .encryption_key(key()),
        );
        let seen = threads(4, 4, 25, compress, encrypt);
        let stats = stats();
        println!(
            "threads, compress {compress}, encrypt {encrypt}: {} reads of another writer's value, {} of their own; {stats:?}",
            seen.others.load(Ordering::Relaxed),
            seen.own.load(Ordering::Relaxed),
        );
        assert!(
            seen.others.load(Ordering::Relaxed) > 0,
            "readers saw writers' values"
        );
        assert_eq!(stats.errors, 0);
    }
}

/// The job of a child process: `url|writer|millis|compress|encrypt`.
#[test]
fn child_writer() {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let parts: Vec<&str> = job.split('|').collect();
    let [url, writer, millis, compress, encrypt] = parts[..] else {
        panic!("malformed {CHILD_ENV}: {job}");
    };
    let writer: u64 = writer.parse().unwrap();
    let (compress, encrypt) = (compress == "1", encrypt == "1");
    configure(process_config(url));
    let deadline = Instant::now() + Duration::from_millis(millis.parse().unwrap());
    let seen = Seen::default();
    let mut round = 0;
    while Instant::now() < deadline {
        write_once(writer, round, compress, encrypt);
        read_once(writer, round, compress, encrypt, &seen);
        round += 1;
    }
    println!(
        "writer {writer}: {round} rounds; {} reads of others' values; {:?}",
        seen.others.load(Ordering::Relaxed),
        stats()
    );
}

fn process_config(url: &str) -> Config {
    Config::from_url(url)
        .unwrap_or_else(|err| panic!("{url}: {err}"))
        .chunk_size(1024)
        .encryption_key(key())
}

fn spawn_child(url: &str, writer: u64, millis: u64, compress: bool, encrypt: bool) -> Child {
    let job = format!(
        "{url}|{writer}|{millis}|{}|{}",
        u8::from(compress),
        u8::from(encrypt)
    );
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-running the test binary as a child writer")
}

/// Three writer processes and this one reading (with threads) for
/// `millis`, on a fresh server of `kind`.
fn processes(kind: Kind, millis: u64) {
    let Some(server) = Server::try_start(kind) else {
        return;
    };
    let url = format!("{}?namespace=concurrent&timeout_ms=2000", server.url());
    for (compress, encrypt) in [(false, false), (true, true)] {
        configure(process_config(&url));
        let children: Vec<Child> = (0..3)
            .map(|writer| spawn_child(&url, writer, millis, compress, encrypt))
            .collect();
        let seen = Arc::new(Seen::default());
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let seen = seen.clone();
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_millis(millis);
                    let mut round = 0;
                    while Instant::now() < deadline {
                        read_once(100 + r, round, compress, encrypt, &seen);
                        round += 1;
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.join().expect("a reader thread panicked");
        }
        for child in children {
            let output = child
                .wait_with_output()
                .expect("waiting for a child writer");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "a child writer failed ({}):\n{stdout}\n{stderr}",
                output.status
            );
            if let Some(line) = stdout.lines().find(|line| line.contains("rounds")) {
                println!("  {}", line.trim_start_matches("test child_writer ... "));
            }
        }
        let stats = stats();
        println!(
            "{kind:?}, compress {compress}, encrypt {encrypt}: {} reads of a writer process's value, {} of the reader's own; {stats:?}",
            seen.others.load(Ordering::Relaxed),
            seen.own.load(Ordering::Relaxed),
        );
        assert!(
            seen.others.load(Ordering::Relaxed) > 0,
            "readers saw writers' values"
        );
        assert_eq!(stats.errors, 0, "{kind:?} answered every call");
    }
}

#[test]
fn memcached_processes_never_read_a_mix_of_two_writes() {
    let _serial = serial();
    processes(Kind::Memcached, 2500);
}

#[test]
fn redis_processes_never_read_a_mix_of_two_writes() {
    let _serial = serial();
    processes(Kind::Redis, 2500);
}
