//! The axum_service example as its user runs it: started as a process on a
//! free port, asked for a report three times, and scraped at `/metrics`,
//! where memo's hit counter for the memoized handler grows.
//!
//! `cargo test` builds the workspace's examples before it runs any test, so
//! the example's binary sits next to this test's, in `target/*/examples`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example's binary, built by the same `cargo test`.
fn example() -> PathBuf {
    let test = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/<test> → target/<profile>/examples/axum_service
    let dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir
        .join("examples")
        .join(format!("axum_service{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo test -p memo-examples`, which builds it",
        path.display()
    );
    path
}

/// The example, killed when dropped.
struct Service(Child, u16);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Service {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let mut child = Command::new(example())
        .env("PORT", port.to_string())
        .env_remove("MEMO_CACHE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    let stdout = child.stdout.take().expect("its stdout");
    let mut lines = BufReader::new(stdout).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.starts_with("listening"));
    assert!(listening, "the example said it listens");
    // Keep draining what it prints (its spans), so it never blocks on a
    // full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Service(child, port)
}

/// The body of `GET path`, over HTTP/1.1 by hand.
fn get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("cannot reach the example: {err}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("the request is sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the sample `name{labels}` in a Prometheus scrape, 0 when
/// absent.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(key, value)| series.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a number"))
        .sum()
}

#[test]
fn the_hit_counter_of_the_memoized_handler_grows_at_metrics() {
    let service = start();
    let port = service.1;
    let hits = |scrape: &str| {
        sample(
            scrape,
            "memo_calls_total",
            &[("function", "axum_service::report"), ("outcome", "hit")],
        )
    };
    assert!(get(port, "/reports/7").starts_with("report 7"));
    let first = get(port, "/metrics");
    assert_eq!(
        sample(
            &first,
            "memo_calls_total",
            &[("function", "axum_service::report"), ("outcome", "miss")]
        ),
        1.0,
        "{first}"
    );
    assert!(
        first.contains("memo_compute_duration_seconds"),
        "the computation's histogram: {first}"
    );
    get(port, "/reports/7");
    let second = get(port, "/metrics");
    get(port, "/reports/7");
    let third = get(port, "/metrics");
    assert_eq!(
        (hits(&first), hits(&second), hits(&third)),
        (0.0, 1.0, 2.0),
        "{third}"
    );
}
