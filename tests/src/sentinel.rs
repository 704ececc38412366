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
//! Like [`Server::try_start`], a missing `redis-server` or `redis-cli`
//! skips the test with a note, except in CI, where it fails.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::servers::{Kind, Server, find_binary};

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
}

impl Sentinels {
    /// Starts the setup without passwords, or `None` (after a note on
    /// stderr) when `redis-server` or `redis-cli` is not installed and
    /// this is not CI.
    pub fn try_start() -> Option<Sentinels> {
        Sentinels::try_start_with(None)
    }

    /// Starts the setup with `passwords`: the master and replica require
    /// one, the sentinel another.
    pub fn try_start_with_passwords(passwords: Passwords) -> Option<Sentinels> {
        Sentinels::try_start_with(Some(passwords))
    }

    fn try_start_with(passwords: Option<Passwords>) -> Option<Sentinels> {
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
            _ => Some(Sentinels::start(passwords)),
        }
    }

    fn start(passwords: Option<Passwords>) -> Sentinels {
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
        let master = Server::start_with_args(Kind::Redis, &args);
        let mut replica_args = args.clone();
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            master.port().to_string(),
        ]);
        let replica = Server::start_with_args(Kind::Redis, &replica_args);
        let mut config = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 3000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            master.port()
        );
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
        };
        let (master, replica) = (set.servers[0].port(), set.servers[1].port());
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

    /// The sentinel's `127.0.0.1:port`.
    pub fn sentinel_address(&self) -> String {
        self.sentinel.address()
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

    /// The server started on `port` (the first master or the replica).
    pub fn server(&self, port: u16) -> &Server {
        self.servers
            .iter()
            .find(|server| server.port() == port)
            .unwrap_or_else(|| panic!("no server on port {port}"))
    }

    /// The port of the server that is not on `port`.
    pub fn other(&self, port: u16) -> u16 {
        let other = self
            .servers
            .iter()
            .find(|server| server.port() != port)
            .expect("two servers");
        other.port()
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
        cli(port, self.passwords.map(|p| p.master), args)
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
