//! A real Redis Sentinel setup for tests: a master, one replica
//! (`--replicaof`) and one sentinel (`redis-server --sentinel`, quorum 1,
//! short `down-after-milliseconds` and `failover-timeout`), each on a free
//! loopback port, stopped when dropped.
//!
//! ```no_run
//! use memo_tests::sentinel::Sentinels;
//!
//! let Some(set) = Sentinels::try_start() else { return };
//! let url = set.url(); // "redis+sentinel://127.0.0.1:PORT/memo-test"
//! set.failover(); // SENTINEL FAILOVER: the replica becomes the master
//! ```
//!
//! With the `tls` feature, [`Sentinels::try_start_tls`] starts one whose
//! servers and sentinel also serve TLS and replicate and monitor over it,
//! so the sentinel names the servers' TLS ports; each keeps a plaintext
//! port for the helpers here.
//!
//! Like [`Server::try_start`], a missing `redis-server` or `redis-cli`
//! skips the test with a note, except in CI, where it fails.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::servers::{Kind, Server, find_binary, free_port};

/// How long the setup may take to settle, or to fail over.
const SETTLE: Duration = Duration::from_secs(30);

/// The name the sentinel monitors the master by.
pub const SERVICE: &str = "memo-test";

/// Passwords, when the setup has them (see
/// [`Sentinels::try_start_with_passwords`]).
#[derive(Debug, Clone, Copy)]
pub struct Passwords {
    /// The master's and the replica's `requirepass`.
    pub master: &'static str,
    /// The sentinel's own `requirepass`.
    pub sentinel: &'static str,
}

/// A running master, replica and sentinel.
#[derive(Debug)]
pub struct Sentinels {
    /// The master and the replica as started (which is which changes with
    /// each failover).
    servers: [Server; 2],
    sentinel: Server,
    passwords: Option<Passwords>,
    /// The TLS ports of the two servers and of the sentinel, when they
    /// serve TLS.
    tls_ports: Option<[u16; 3]>,
}

impl Sentinels {
    /// Starts the setup without passwords, or `None` (after a note on
    /// stderr) when `redis-server` or `redis-cli` is not installed and
    /// this is not CI.
    pub fn try_start() -> Option<Sentinels> {
        Sentinels::try_start_with(None, None)
    }

    /// [`try_start`](Self::try_start), with the servers and the sentinel
    /// also serving TLS with `pki`'s server certificate (which names
    /// `127.0.0.1`), replicating and monitoring over TLS.
    #[cfg(feature = "tls")]
    pub fn try_start_tls(pki: &crate::tls::Pki) -> Option<Sentinels> {
        let path = |p: &std::path::Path| p.display().to_string();
        let tls = TlsFiles {
            cert: path(&pki.server().cert),
            key: path(&pki.server().key),
            ca: path(&pki.ca()),
        };
        Sentinels::try_start_with(None, Some(tls))
    }

    /// Starts the setup with `passwords`: the master and replica require
    /// one, the sentinel another.
    pub fn try_start_with_passwords(passwords: Passwords) -> Option<Sentinels> {
        Sentinels::try_start_with(Some(passwords), None)
    }

    fn try_start_with(passwords: Option<Passwords>, tls: Option<TlsFiles>) -> Option<Sentinels> {
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
            _ => Some(Sentinels::start(passwords, tls)),
        }
    }

    fn start(passwords: Option<Passwords>, tls: Option<TlsFiles>) -> Sentinels {
        let tls_ports = tls
            .as_ref()
            .map(|_| [free_port(), free_port(), free_port()]);
        let tls_args = |at: usize| -> Vec<String> {
            match (&tls, tls_ports) {
                (Some(files), Some(ports)) => files.args(ports[at]),
                _ => Vec::new(),
            }
        };
        // Replication writes an RDB file: keep it out of the working
        // directory, one per server.
        let mut args = vec![
            "--dir".to_owned(),
            std::env::temp_dir().display().to_string(),
            "--dbfilename".to_owned(),
            format!("memo-sentinel-{}-{{port}}.rdb", std::process::id()),
        ];
        let passwords_args: Vec<String> = passwords
            .map(|p| {
                vec![
                    "--requirepass".to_owned(),
                    p.master.to_owned(),
                    "--masterauth".to_owned(),
                    p.master.to_owned(),
                ]
            })
            .unwrap_or_default();
        args.extend(passwords_args);
        let mut master_args = args.clone();
        master_args.extend(tls_args(0));
        let master = Server::start_with_args(Kind::Redis, &master_args);
        // Over TLS, replication and monitoring use the TLS ports.
        let master_port = tls_ports.map_or(master.port(), |ports| ports[0]);
        let mut replica_args = args.clone();
        replica_args.extend(tls_args(1));
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master_port.to_string(),
        ]);
        let replica = Server::start_with_args(Kind::Redis, &replica_args);
        let mut config = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 3000\n\
             sentinel parallel-syncs {SERVICE} 1\n"
        );
        if let (Some(files), Some(ports)) = (&tls, tls_ports) {
            config.push_str(&files.config(ports[2]));
        }
        if let Some(p) = passwords {
            config.push_str(&format!(
                "sentinel auth-pass {SERVICE} {}\nrequirepass {}\n",
                p.master, p.sentinel
            ));
        }
        let sentinel = Server::sentinel(&config);
        let set = Sentinels {
            servers: [master, replica],
            sentinel,
            passwords,
            tls_ports,
        };
        let (master, replica) = (set.port_of(0), set.port_of(1));
        set.wait_until("the replica is in sync", || {
            set.cli(replica, &["INFO", "replication"])
                .contains("master_link_status:up")
        });
        set.wait_until("the sentinel knows the replica", || {
            let replicas = set.sentinel_cli(&["SENTINEL", "replicas", SERVICE]);
            replicas.contains(&replica.to_string())
                && replicas.contains("master-link-status\nok")
                && !replicas.contains("s_down")
        });
        assert_eq!(set.master_port(), master);
        set
    }

    /// `redis+sentinel://127.0.0.1:PORT/SERVICE`, with the master's
    /// password and the sentinel's when the setup has them.
    pub fn url(&self) -> String {
        match self.passwords {
            None => format!("redis+sentinel://{}/{SERVICE}", self.sentinel.address()),
            Some(p) => format!(
                "redis+sentinel://:{}@{}/{SERVICE}?sentinel_password={}",
                p.master,
                self.sentinel.address(),
                p.sentinel
            ),
        }
    }

    /// `rediss+sentinel://127.0.0.1:TLS_PORT/SERVICE?query`, for a setup
    /// started with TLS.
    pub fn tls_url(&self, query: &str) -> String {
        let ports = self.tls_ports.expect("a setup started with TLS");
        format!("rediss+sentinel://127.0.0.1:{}/{SERVICE}?{query}", ports[2])
    }

    /// The sentinel's `127.0.0.1:port`.
    pub fn sentinel_address(&self) -> String {
        self.sentinel.address()
    }

    /// The port the sentinel names server `at` (0 the first master, 1 the
    /// replica) by: its TLS port in a setup with TLS.
    fn port_of(&self, at: usize) -> u16 {
        self.tls_ports
            .map_or(self.servers[at].port(), |ports| ports[at])
    }

    /// Which server `port` (plaintext or TLS) belongs to.
    fn index_of(&self, port: u16) -> usize {
        (0..2)
            .find(|&at| self.servers[at].port() == port || self.port_of(at) == port)
            .unwrap_or_else(|| panic!("no server on port {port}"))
    }

    /// The master's port, as the sentinel names it.
    pub fn master_port(&self) -> u16 {
        let reply = self.sentinel_cli(&["SENTINEL", "get-master-addr-by-name", SERVICE]);
        reply
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("the sentinel names no master: {reply:?}"))
    }

    /// The server started on `port` (the first master or the replica; its
    /// plaintext or its TLS port).
    pub fn server(&self, port: u16) -> &Server {
        &self.servers[self.index_of(port)]
    }

    /// The port the sentinel names the server that is not on `port` by.
    pub fn other(&self, port: u16) -> u16 {
        self.port_of(1 - self.index_of(port))
    }

    /// `SENTINEL FAILOVER`, then waits until the sentinel names the other
    /// server and that server says it is the master; the new master's
    /// port.
    pub fn failover(&self) -> u16 {
        let old = self.master_port();
        let reply = self.sentinel_cli(&["SENTINEL", "FAILOVER", SERVICE]);
        assert!(reply.contains("OK"), "SENTINEL FAILOVER: {reply}");
        let new = self.other(old);
        self.wait_for_master(new);
        new
    }

    /// Waits until the sentinel names the server on `port` and it says it
    /// is the master.
    pub fn wait_for_master(&self, port: u16) {
        self.wait_until("the sentinel promotes the replica", || {
            self.master_port() == port && self.role(port) == "master"
        });
    }

    /// What `ROLE` says the server on `port` is.
    pub fn role(&self, port: u16) -> String {
        self.cli(port, &["ROLE"])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    }

    /// Runs `redis-cli -p port args...` on a data server, with its
    /// password if any, and returns what it printed.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let plain = self.server(port).port();
        cli(plain, self.passwords.map(|p| p.master), args)
    }

    /// Runs `redis-cli` on the sentinel.
    pub fn sentinel_cli(&self, args: &[&str]) -> String {
        cli(
            self.sentinel.port(),
            self.passwords.map(|p| p.sentinel),
            args,
        )
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

/// The files of a setup's TLS.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: String,
    key: String,
    ca: String,
}

impl TlsFiles {
    /// A server's arguments to serve TLS on `port` and replicate over it.
    fn args(&self, port: u16) -> Vec<String> {
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &self.cert,
            "--tls-key-file",
            &self.key,
            "--tls-ca-cert-file",
            &self.ca,
            "--tls-auth-clients",
            "no",
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect()
    }

    /// The sentinel's configuration lines to serve TLS on `port` and
    /// monitor over it.
    fn config(&self, port: u16) -> String {
        format!(
            "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            self.cert, self.key, self.ca
        )
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for server in &self.servers {
            server.kill();
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
                "memo-sentinel-{}-{}.rdb",
                std::process::id(),
                server.port()
            )));
        }
    }
}

fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new(find_binary("redis-cli").expect("redis-cli is installed"));
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run redis-cli: {err}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}
