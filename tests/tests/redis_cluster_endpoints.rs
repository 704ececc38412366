//! Every endpoint a Redis Cluster may announce in `CLUSTER SLOTS`, as the
//! cluster client reads it: `NULL` for "the node you asked" (fake nodes
//! answering as Redis documents it), an entry that cannot be read costing
//! only its slots, and host names announced by a real cluster
//! (`cluster-preferred-endpoint-type hostname`), over TLS too.

use std::collections::HashMap;
use std::io::{BufReader, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use memo_runtime::backend::redis::cluster::key_slot;
use memo_runtime::{Backend, RedisClusterBackend};
use memo_tests::cluster::Cluster;
use memo_tests::servers::{fake_server, read_redis_command, redis_version};
use memo_tests::{runtime, serial};

const MINUTE: Duration = Duration::from_secs(60);

/// The slots the first fake node serves; the second serves the rest.
const SPLIT: u16 = 8192;

/// Two fake cluster nodes on loopback, splitting the slots at [`SPLIT`]:
/// each serves `GET`, `SET` and `MGET` for its own slots from memory,
/// answers `MOVED` for the others (as a real node does), and answers
/// `CLUSTER SLOTS` with the reply the test gives.
struct FakeCluster {
    ports: [u16; 2],
    /// `CLUSTER SLOTS` asked, over both nodes.
    slots_asked: Arc<AtomicUsize>,
    /// Commands sent to a node that does not serve their slot.
    misrouted: Arc<AtomicUsize>,
}

impl FakeCluster {
    /// Starts the nodes; `slots_reply` makes the `CLUSTER SLOTS` reply (raw
    /// RESP) from the two ports.
    fn start(slots_reply: impl Fn([u16; 2]) -> String) -> FakeCluster {
        let ports_cell: Arc<OnceLock<[u16; 2]>> = Arc::default();
        let reply_cell: Arc<OnceLock<String>> = Arc::default();
        let slots_asked = Arc::new(AtomicUsize::new(0));
        let misrouted = Arc::new(AtomicUsize::new(0));
        let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
        let node = |me: usize| {
            let (ports_cell, reply_cell) = (Arc::clone(&ports_cell), Arc::clone(&reply_cell));
            let (slots_asked, misrouted) = (Arc::clone(&slots_asked), Arc::clone(&misrouted));
            let store = Arc::clone(&store);
            fake_server(move |stream: TcpStream, _| {
                let mut writer = stream.try_clone().expect("a second handle");
                let mut reader = BufReader::new(stream);
                while let Some(command) = read_redis_command(&mut reader) {
                    let ports = ports_cell.get().expect("both nodes started");
                    let reply = answer(
                        me,
                        *ports,
                        &command,
                        reply_cell.get().expect("the reply is set"),
                        &slots_asked,
                        &misrouted,
                        &store,
                    );
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            })
        };
        let ports = [node(0), node(1)];
        ports_cell.set(ports).expect("set once");
        reply_cell.set(slots_reply(ports)).expect("set once");
        FakeCluster {
            ports,
            slots_asked,
            misrouted,
        }
    }

    fn address(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.ports[node])
    }
}

/// What fake node `me` answers to `command`.
fn answer(
    me: usize,
    ports: [u16; 2],
    command: &[Vec<u8>],
    slots_reply: &str,
    slots_asked: &AtomicUsize,
    misrouted: &AtomicUsize,
    store: &Mutex<HashMap<Vec<u8>, Vec<u8>>>,
) -> String {
    let name = String::from_utf8_lossy(&command[0]).to_ascii_uppercase();
    if name == "CLUSTER" {
        slots_asked.fetch_add(1, Ordering::SeqCst);
        return slots_reply.to_owned();
    }
    let Some(key) = command.get(1) else {
        return "-ERR wrong number of arguments\r\n".to_owned();
    };
    let slot = key_slot(&String::from_utf8_lossy(key));
    let owner = usize::from(slot >= SPLIT);
    if owner != me {
        misrouted.fetch_add(1, Ordering::SeqCst);
        return format!("-MOVED {slot} 127.0.0.1:{}\r\n", ports[owner]);
    }
    let bulk = |value: Option<&Vec<u8>>| match value {
        Some(value) => format!("${}\r\n{}\r\n", value.len(), String::from_utf8_lossy(value)),
        None => "$-1\r\n".to_owned(),
    };
    let mut store = store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match name.as_str() {
        "SET" => {
            store.insert(key.clone(), command[2].clone());
            "+OK\r\n".to_owned()
        }
        "GET" => bulk(store.get(key)),
        "MGET" => {
            let mut reply = format!("*{}\r\n", command.len() - 1);
            for key in &command[1..] {
                reply.push_str(&bulk(store.get(key)));
            }
            reply
        }
        _ => format!("-ERR unknown command '{name}'\r\n"),
    }
}

/// One node of `CLUSTER SLOTS` in RESP: endpoint (already encoded), port,
/// id and an empty metadata map, as Redis 7 writes them.
fn node_info(endpoint: &str, port: u16) -> String {
    format!("*4\r\n{endpoint}:{port}\r\n$2\r\nid\r\n*0\r\n")
}

fn entry(start: u16, end: u16, master: &str) -> String {
    format!("*3\r\n:{start}\r\n:{end}\r\n{master}")
}

/// A key of `half` (0 below [`SPLIT`], 1 from it), the `n`th such key.
fn key_in(half: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("key:{half}:{n}:{i}"))
        .find(|key| usize::from(key_slot(key) >= SPLIT) == half)
        .expect("keys of every slot exist")
}

#[test]
fn null_endpoints_mean_the_node_that_answered() {
    let _serial = serial();
    // `cluster-preferred-endpoint-type unknown-endpoint`: every endpoint
    // is NULL, each node to be reached at the address memo asked, with the
    // port given.
    let cluster = FakeCluster::start(|[a, b]| {
        format!(
            "*2\r\n{}{}",
            entry(0, SPLIT - 1, &node_info("$-1\r\n", a)),
            entry(SPLIT, 16383, &node_info("$-1\r\n", b)),
        )
    });
    let backend = Arc::new(RedisClusterBackend::new([cluster.address(0)]).expect("a seed"));
    let started = Instant::now();
    for n in 0..20 {
        for half in 0..2 {
            let key = key_in(half, n);
            backend.set(&key, key.as_bytes(), MINUTE).unwrap();
            assert_eq!(backend.get(&key).unwrap().as_deref(), Some(key.as_bytes()));
            assert_eq!(backend.node_for(&key), Some(cluster.address(half)), "{key}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let keys: Vec<String> = (0..20).map(|n| key_in(n % 2, n)).collect();
    let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    let found = backend.get_many(&wanted).unwrap();
    assert!(
        found
            .iter()
            .zip(&keys)
            .all(|(v, k)| v.as_deref() == Some(k.as_bytes()))
    );
    runtime::run(async {
        let backend: &dyn memo_runtime::AsyncBackend = &*backend;
        for n in 20..30 {
            let key = key_in(n % 2, n);
            backend.set(&key, b"async", MINUTE).await.unwrap();
            assert_eq!(
                backend.get(&key).await.unwrap().as_deref(),
                Some(&b"async"[..])
            );
        }
    });
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "long enough to re-read"
    );
    assert_eq!(
        cluster.misrouted.load(Ordering::SeqCst),
        0,
        "every command went straight to its node"
    );
    assert_eq!(
        cluster.slots_asked.load(Ordering::SeqCst),
        1,
        "the map was read once and kept"
    );
}

#[test]
fn an_entry_that_cannot_be_read_costs_only_its_slots() {
    let _serial = serial();
    // The second range's master has a host with a space: left out, the
    // first range kept.
    let cluster = FakeCluster::start(|[a, b]| {
        format!(
            "*2\r\n{}{}",
            entry(0, SPLIT - 1, &node_info("$-1\r\n", a)),
            entry(SPLIT, 16383, &node_info("$8\r\nbad host\r\n", b)),
        )
    });
    let backend = RedisClusterBackend::new([cluster.address(1)]).expect("a seed");
    for n in 0..15 {
        let key = key_in(0, n);
        backend.set(&key, b"low", MINUTE).unwrap();
        assert_eq!(backend.get(&key).unwrap().as_deref(), Some(&b"low"[..]));
        assert_eq!(backend.node_for(&key), Some(cluster.address(0)));
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(cluster.misrouted.load(Ordering::SeqCst), 0);
    assert_eq!(
        cluster.slots_asked.load(Ordering::SeqCst),
        1,
        "a map with a bad entry is still a map"
    );
    // The slots left out are reached through the seed and its redirection.
    let key = key_in(1, 0);
    backend.set(&key, b"high", MINUTE).unwrap();
    assert_eq!(backend.get(&key).unwrap().as_deref(), Some(&b"high"[..]));
}

/// Whether the installed Redis can announce host names (Redis 7), after
/// saying why not when it cannot.
fn announces_host_names() -> bool {
    match redis_version() {
        Some(version) if version >= (7, 0) => true,
        found => {
            let _ = writeln!(
                std::io::stderr(),
                "note: skipping a host-name cluster test: redis-server {found:?} \
                 has no cluster-preferred-endpoint-type (Redis 7 has)"
            );
            false
        }
    }
}

const HOST_NAMES: [&str; 4] = [
    "--cluster-announce-hostname",
    "localhost",
    "--cluster-preferred-endpoint-type",
    "hostname",
];

/// Waits until every node of `cluster` names the masters by host name.
fn wait_for_host_names(cluster: &Cluster) {
    let port = cluster.node(&cluster.addresses()[0]).port();
    cluster.wait_until("CLUSTER SLOTS names every master by host name", || {
        let slots = cluster.cli(port, &["CLUSTER", "SLOTS"]);
        // Until a node has heard every other's host name, it says `?`.
        slots.matches("localhost").count() >= 3 && !slots.lines().any(|line| line.trim() == "?")
    });
}

#[test]
fn announced_host_names_are_used() {
    let _serial = serial();
    if !announces_host_names() {
        return;
    }
    let Some(cluster) = Cluster::try_start_with_args(3, 0, &HOST_NAMES) else {
        return;
    };
    wait_for_host_names(&cluster);
    let backend = RedisClusterBackend::new(cluster.addresses()).expect("seeds");
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..60 {
        let key = format!("named:{i}");
        backend.set(&key, key.as_bytes(), MINUTE).unwrap();
        assert_eq!(backend.get(&key).unwrap().as_deref(), Some(key.as_bytes()));
        let node = backend.node_for(&key).expect("the map is loaded");
        assert!(node.starts_with("localhost:"), "{node}");
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 3, "{nodes:?}");
}

#[cfg(feature = "tls")]
#[test]
fn announced_host_names_are_the_names_tls_verifies() {
    use memo_runtime::TlsConfig;
    use memo_tests::tls::Pki;

    let _serial = serial();
    if !announces_host_names() {
        return;
    }
    // The certificate names `localhost` only: a node reached by its IP
    // address would fail verification.
    let pki = Pki::with_server_names(&["localhost"]);
    let Some(cluster) = Cluster::try_start_tls_with_args(3, 0, &pki, &HOST_NAMES) else {
        return;
    };
    wait_for_host_names(&cluster);
    let seed = cluster.tls_addresses()[0].replace("127.0.0.1", "localhost");
    let tls = TlsConfig::with_ca_file(pki.ca()).expect("the CA");
    let backend = Arc::new(RedisClusterBackend::new([seed]).expect("a seed").tls(tls));
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..60 {
        let key = format!("named:{i}");
        backend.set(&key, key.as_bytes(), MINUTE).unwrap();
        assert_eq!(backend.get(&key).unwrap().as_deref(), Some(key.as_bytes()));
        nodes.insert(backend.node_for(&key).expect("the map is loaded"));
    }
    let tls_ports: Vec<String> = cluster
        .tls_addresses()
        .iter()
        .map(|address| address.replace("127.0.0.1", "localhost"))
        .collect();
    assert!(
        nodes.iter().all(|node| tls_ports.contains(node)),
        "{nodes:?} are the TLS ports by name"
    );
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    runtime::run(async {
        let backend: &dyn memo_runtime::AsyncBackend = &*backend;
        for i in 0..30 {
            let key = format!("named:async:{i}");
            backend.set(&key, b"tls", MINUTE).await.unwrap();
            assert_eq!(
                backend.get(&key).await.unwrap().as_deref(),
                Some(&b"tls"[..])
            );
        }
    });
}
