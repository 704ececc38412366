//! A real Redis Cluster for tests: N `redis-server --cluster-enabled yes`
//! nodes on free loopback ports, joined with `redis-cli --cluster create`,
//! stopped (and their files removed) when dropped.
//!
//! ```no_run
//! use memo_tests::cluster::Cluster;
//!
//! let Some(cluster) = Cluster::try_start(3, 0) else { return }; // 3 masters
//! let url = cluster.url(); // "redis+cluster://127.0.0.1:P1,127.0.0.1:P2,..."
//! cluster.kill("127.0.0.1:P1"); // a node gone, as a crashed host
//! ```
//!
//! With the `tls` feature, [`Cluster::try_start_tls`] starts one whose
//! nodes also serve TLS (`--tls-port`) and speak TLS to each other
//! (`--tls-cluster yes`); TLS clients are then told the nodes' TLS ports.
//! Each node keeps a plaintext port too, for the helpers here.
//!
//! Like [`Server::try_start`], a missing `redis-server` or `redis-cli`
//! skips the test with a note, except in CI, where it fails.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::servers::{Kind, Server, find_binary, free_port};

/// How long the cluster may take to form, or to fail over.
const SETTLE: Duration = Duration::from_secs(30);

/// A running cluster: its nodes, masters first as `redis-cli` made them
/// (it makes the first `masters` nodes masters).
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Server>,
    /// Each node's TLS port, in the order of `nodes`; empty without TLS.
    tls_ports: Vec<u16>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts a cluster of `masters` masters with `replicas` replicas each,
    /// or `None` (after a note on stderr) when `redis-server` or
    /// `redis-cli` is not installed and this is not CI.
    pub fn try_start(masters: usize, replicas: usize) -> Option<Cluster> {
        Cluster::try_start_with(masters, replicas, &|_| Vec::new())
    }

    /// [`try_start`](Self::try_start), with `extra` among every node's
    /// arguments (`--cluster-preferred-endpoint-type hostname`, ...).
    pub fn try_start_with_args(masters: usize, replicas: usize, extra: &[&str]) -> Option<Cluster> {
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        Cluster::try_start_with(masters, replicas, &|_| extra.clone())
    }

    /// [`try_start`](Self::try_start), with every node also serving TLS
    /// with `pki`'s server certificate (which names `127.0.0.1`, the
    /// address the nodes announce) and the nodes speaking TLS to each
    /// other; clients need no certificate.
    #[cfg(feature = "tls")]
    pub fn try_start_tls(
        masters: usize,
        replicas: usize,
        pki: &crate::tls::Pki,
    ) -> Option<Cluster> {
        Cluster::try_start_tls_with_args(masters, replicas, pki, &[])
    }

    /// [`try_start_tls`](Self::try_start_tls), with `extra` among every
    /// node's arguments.
    #[cfg(feature = "tls")]
    pub fn try_start_tls_with_args(
        masters: usize,
        replicas: usize,
        pki: &crate::tls::Pki,
        extra: &[&str],
    ) -> Option<Cluster> {
        let path = |p: &std::path::Path| p.display().to_string();
        let tls_args = |tls_port: u16| {
            vec![
                "--tls-port".to_owned(),
                tls_port.to_string(),
                "--tls-cluster".to_owned(),
                "yes".to_owned(),
                "--tls-replication".to_owned(),
                "yes".to_owned(),
                "--tls-cert-file".to_owned(),
                path(&pki.server().cert),
                "--tls-key-file".to_owned(),
                path(&pki.server().key),
                "--tls-ca-cert-file".to_owned(),
                path(&pki.ca()),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]
            .into_iter()
            .chain(extra.iter().map(|arg| (*arg).to_owned()))
            .collect()
        };
        Cluster::try_start_with(masters, replicas, &tls_args)
    }

    /// Starts a cluster whose nodes take `tls_args(tls_port)` too when it
    /// returns any.
    fn try_start_with(
        masters: usize,
        replicas: usize,
        tls_args: &dyn Fn(u16) -> Vec<String>,
    ) -> Option<Cluster> {
        let missing = ["redis-server", "redis-cli"]
            .into_iter()
            .find(|binary| find_binary(binary).is_none());
        match missing {
            Some(binary) if std::env::var_os("CI").is_none() => {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: skipping a test that needs `{binary}`, which is not installed; \
                     install it with: apt-get install -y redis-server redis-tools"
                );
                None
            }
            _ => Some(Cluster::start_with(masters, replicas, tls_args)),
        }
    }

    /// Starts a cluster of `masters` masters (at least three, Redis's
    /// minimum) with `replicas` replicas each, and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Cluster::start_with(masters, replicas, &|_| Vec::new())
    }

    fn start_with(
        masters: usize,
        replicas: usize,
        tls_args: &dyn Fn(u16) -> Vec<String>,
    ) -> Cluster {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memo-cluster-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let mut tls_ports = Vec::new();
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| {
                let tls_port = free_port();
                let tls = tls_args(tls_port);
                if tls.iter().any(|arg| arg == "--tls-port") {
                    tls_ports.push(tls_port);
                }
                let mut args = vec![
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-config-file".to_owned(),
                    dir.join("nodes-{port}.conf").display().to_string(),
                    // Replication writes an RDB file: keep it out of the
                    // working directory, one per node.
                    "--dir".to_owned(),
                    dir.display().to_string(),
                    "--dbfilename".to_owned(),
                    "dump-{port}.rdb".to_owned(),
                    "--cluster-node-timeout".to_owned(),
                    "1000".to_owned(),
                    // The bus defaults to port + 10000, which may be taken
                    // or beyond 65535 for an ephemeral port.
                    "--cluster-port".to_owned(),
                    free_port().to_string(),
                ];
                args.extend(tls);
                Server::start_with_args(Kind::Redis, &args)
            })
            .collect();
        let cluster = Cluster {
            nodes,
            tls_ports,
            dir,
        };
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(cluster.addresses());
        create.extend([
            "--cluster-replicas".to_owned(),
            replicas.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let mut creating = Command::new(find_binary("redis-cli").expect("redis-cli is installed"))
            .args(&create)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run redis-cli: {err}"));
        // redis-cli waits for the nodes to meet for as long as it takes;
        // nodes that cannot (a cluster bus refusing their certificates)
        // would hold the test forever.
        let deadline = Instant::now() + SETTLE;
        while creating.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = creating.kill();
        let output = creating
            .wait_with_output()
            .unwrap_or_else(|err| panic!("cannot run redis-cli: {err}"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed or did not finish within {SETTLE:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let ports: Vec<u16> = cluster.nodes.iter().map(Server::port).collect();
        cluster.wait_until("every node reports cluster_state:ok", || {
            ports.iter().all(|&port| {
                cluster
                    .cli(port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            })
        });
        // A replica that has not synced yet would not take over from a
        // master that dies (its data is too old to count).
        cluster.wait_until("every replica is in sync", || {
            ports.iter().all(|&port| {
                let info = cluster.cli(port, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        cluster
    }

    /// Every node's `127.0.0.1:port`, masters first.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(Server::address).collect()
    }

    /// `redis+cluster://` and every node.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// Every node's `127.0.0.1:tls_port`, masters first; empty for a
    /// cluster without TLS.
    pub fn tls_addresses(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// `rediss+cluster://` and every node's TLS port, then `?query`.
    pub fn tls_url(&self, query: &str) -> String {
        format!(
            "rediss+cluster://{}?{query}",
            self.tls_addresses().join(",")
        )
    }

    /// The node at `address` (`127.0.0.1:port`, its plaintext or its TLS
    /// port).
    pub fn node(&self, address: &str) -> &Server {
        let tls = self.tls_addresses();
        self.nodes
            .iter()
            .enumerate()
            .find(|(at, node)| {
                node.address() == address || tls.get(*at).is_some_and(|a| a == address)
            })
            .map(|(_, node)| node)
            .unwrap_or_else(|| panic!("no node at {address}"))
    }

    /// Stops the node at `address` (SIGKILL), as a crashed host.
    pub fn kill(&self, address: &str) {
        self.node(address).kill();
    }

    /// Runs `redis-cli -p port args...` and returns what it printed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new(find_binary("redis-cli").expect("redis-cli is installed"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run redis-cli: {err}"));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The id of the node at `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        self.cli(port, &["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// The port of the master serving `slot`, as the node at `asked` sees it.
    pub fn master_of_slot(&self, asked: u16, slot: u16) -> Option<u16> {
        let nodes = self.cli(asked, &["CLUSTER", "NODES"]);
        nodes.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let is_master = fields.get(2)?.split(',').any(|flag| flag == "master");
            let serves = fields.iter().skip(8).any(|range| {
                let mut bounds = range.splitn(2, '-');
                let (Some(start), end) = (bounds.next(), bounds.next()) else {
                    return false;
                };
                let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.unwrap_or(start).parse())
                else {
                    return false;
                };
                (start..=end).contains(&slot)
            });
            if !is_master || !serves || fields.get(2)?.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            address.rsplit_once(':')?.1.parse().ok()
        })
    }

    /// Waits until `done` holds, panicking with `what` after a while.
    pub fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + SETTLE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
