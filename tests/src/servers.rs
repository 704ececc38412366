//! Real memcached and Redis servers for tests, each a child process on a
//! free loopback port, stopped when dropped.
//!
//! A test that needs a server starts its own, so tests never share state
//! with each other or with a developer's running cache:
//!
//! ```no_run
//! use memo_tests::servers::Server;
//!
//! let server = Server::memcached();
//! let url = server.url(); // "memcached://127.0.0.1:PORT"
//! server.kill(); // for fault tests: gone, port still reserved for restart()
//! server.restart(); // back, empty, on the same port
//! ```
//!
//! The binaries are Debian's (`apt-get install -y memcached redis-server`).
//! When one is missing, [`Server::try_start`] says how to install it and
//! lets the test return early, so `cargo test --workspace` passes on a
//! machine without them; in CI (`CI` set in the environment) a missing
//! binary fails the test instead, so nothing is skipped there unseen.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "install it with: apt-get install -y memcached redis-server";

/// How long a freshly started server may take to answer.
const STARTUP: Duration = Duration::from_secs(10);

/// Which server a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `memcached`, at `memcached://127.0.0.1:PORT`.
    Memcached,
    /// `redis-server`, at `redis://127.0.0.1:PORT`.
    Redis,
}

impl Kind {
    fn binary(self) -> &'static str {
        match self {
            Kind::Memcached => "memcached",
            Kind::Redis => "redis-server",
        }
    }

    /// The URL scheme of this kind of server.
    pub fn scheme(self) -> &'static str {
        match self {
            Kind::Memcached => "memcached",
            Kind::Redis => "redis",
        }
    }
}

/// A server process on `127.0.0.1:port`, killed when dropped.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    binary: PathBuf,
    port: u16,
    /// Arguments after the usual ones, `{port}` standing for the port.
    extra_args: Vec<String>,
    /// A configuration file to write (its text, `{port}` standing for the
    /// port) and pass first, as `redis-server --sentinel` needs one it can
    /// rewrite.
    config: Option<(PathBuf, String)>,
    child: Mutex<Option<Child>>,
}

impl Server {
    /// Starts memcached on a free port and waits until it answers.
    pub fn memcached() -> Server {
        Server::start(Kind::Memcached)
    }

    /// Starts redis-server on a free port and waits until it answers.
    pub fn redis() -> Server {
        Server::start(Kind::Redis)
    }

    /// Starts a server of `kind`, or `None` when its binary is not
    /// installed and this is not CI (after printing how to install it).
    /// Tests write `let Some(server) = Server::try_start(kind) else { return };`.
    pub fn try_start(kind: Kind) -> Option<Server> {
        if find_binary(kind.binary()).is_some() || std::env::var_os("CI").is_some() {
            return Some(Server::start(kind));
        }
        // Straight to the process's stderr: the test harness captures
        // `eprintln!` of passing tests, and this note must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "note: skipping a test that needs `{}`, which is not installed; {INSTALL_HINT}",
            kind.binary()
        );
        None
    }

    /// Starts a server of `kind` on a free port. Another process may take
    /// the port between finding it free and the server binding it, so a
    /// server that does not come up is retried on a new port.
    pub fn start(kind: Kind) -> Server {
        Server::start_with_args(kind, &[])
    }

    /// Starts a server of `kind` with `extra_args` after the usual ones
    /// (`{port}` in them stands for the port it listens on), as
    /// [`Server::start`] does.
    pub fn start_with_args(kind: Kind, extra_args: &[String]) -> Server {
        Server::start_with_config(kind, None, extra_args)
    }

    /// Starts a Redis Sentinel on a free port, monitoring what `config`
    /// (a sentinel configuration, `{port}` standing for its own port)
    /// says. The file is written to the temporary directory and removed
    /// when the sentinel is dropped.
    pub fn sentinel(config: &str) -> Server {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "memo-sentinel-{}-{}.conf",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Server::start_with_config(
            Kind::Redis,
            Some((path, config.to_owned())),
            &["--sentinel".to_owned()],
        )
    }

    fn start_with_config(
        kind: Kind,
        config: Option<(PathBuf, String)>,
        extra_args: &[String],
    ) -> Server {
        let binary = find_binary(kind.binary())
            .unwrap_or_else(|| panic!("`{}` is not installed; {INSTALL_HINT}", kind.binary()));
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let server = Server {
                kind,
                binary: binary.clone(),
                port,
                extra_args: extra_args.to_vec(),
                config: config.clone(),
                child: Mutex::new(None),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("could not start {}: {last_error}", kind.binary());
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, as memo's backends take it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The cache URL for this server, e.g. `redis://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.kind.scheme(), self.address())
    }

    /// Stops the server (SIGKILL) and waits for it to be gone. Its port is
    /// not reused by these helpers until [`Server::restart`].
    pub fn kill(&self) {
        let mut child = self.lock();
        if let Some(mut process) = child.take() {
            // A stopped process dies of SIGKILL too, so no resume is needed.
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server again, empty, on the same port, after killing it
    /// if it still runs.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + STARTUP;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment after the kill.
                Err(err) if Instant::now() > deadline => {
                    panic!("could not restart {}: {err}", self.kind.binary())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections are still accepted by the
    /// kernel, but nothing is answered, as with an overloaded or hung host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.lock();
        let Some(process) = child.as_ref() else {
            panic!("{} is not running", self.kind.binary());
        };
        let status = Command::new("kill")
            .args([signal, &process.id().to_string()])
            .status()
            .unwrap_or_else(|err| panic!("cannot run kill {signal}: {err}"));
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    fn spawn(&self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        if let Some((path, text)) = &self.config {
            std::fs::write(path, text.replace("{port}", &port))
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
            command.arg(path);
        }
        match self.kind {
            Kind::Memcached => {
                command.args(["-l", "127.0.0.1", "-p", &port, "-U", "0", "-m", "256"]);
                if is_root() {
                    command.args(["-u", "root"]);
                }
            }
            Kind::Redis => {
                command.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                ]);
            }
        }
        command.args(
            self.extra_args
                .iter()
                .map(|arg| arg.replace("{port}", &port)),
        );
        let mut process = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| {
                format!(
                    "cannot run {}: {err}; {INSTALL_HINT}",
                    self.binary.display()
                )
            })?;
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(format!(
                    "exited at startup ({status}); is port {port} taken?"
                ));
            }
            if let Some(pid) = self.serving_pid() {
                // The port was free when picked, but another server (another
                // test's, a benchmark's) may have taken it since, in which
                // case this one failed to bind and the answer is theirs.
                if pid != process.id() {
                    let _ = process.kill();
                    let _ = process.wait();
                    return Err(format!("port {port} is served by process {pid}"));
                }
                *self.lock() = Some(process);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = process.kill();
                let _ = process.wait();
                return Err(format!("did not answer on port {port} within {STARTUP:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of the server answering on the port, as it reports
    /// it itself (memcached's `stats`, Redis' `INFO server`).
    fn serving_pid(&self) -> Option<u32> {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let timeout = Some(Duration::from_millis(500));
        stream.set_read_timeout(timeout).ok()?;
        stream.set_write_timeout(timeout).ok()?;
        let (request, field, last_line) = match self.kind {
            Kind::Memcached => (&b"stats\r\n"[..], "STAT pid ", "END"),
            Kind::Redis => (&b"INFO server\r\n"[..], "process_id:", ""),
        };
        if let Some(password) = self.password() {
            // Its `+OK` is a line before the field, skipped below.
            stream
                .write_all(format!("AUTH {password}\r\n").as_bytes())
                .ok()?;
        }
        stream.write_all(request).ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let trimmed = line.trim_end();
            if let Some(pid) = trimmed.strip_prefix(field) {
                return pid.trim().parse().ok();
            }
            if !last_line.is_empty() && trimmed == last_line {
                return None;
            }
        }
    }

    /// The password the server requires, from `--requirepass` or its
    /// configuration file's `requirepass`.
    fn password(&self) -> Option<String> {
        let from_args = self
            .extra_args
            .windows(2)
            .find(|pair| pair[0] == "--requirepass")
            .map(|pair| pair[1].clone());
        from_args.or_else(|| {
            let (_, text) = self.config.as_ref()?;
            text.lines()
                .find_map(|line| line.strip_prefix("requirepass "))
                .map(|password| password.trim().to_owned())
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some((path, _)) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The installed `redis-server`'s version (`7.0.15` as `(7, 0)`), or
/// `None` when it is missing or says something else.
pub fn redis_version() -> Option<(u32, u32)> {
    let output = Command::new(find_binary("redis-server")?)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("v="))?;
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// A port nothing listens on right now: the kernel's pick for port 0.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"))
}

/// The installed binary called `name`, searched in `PATH` and the usual
/// system directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether tests run as root, as whom memcached refuses to run unless told
/// which user to be (`-u root`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A fake server on a free loopback port, for misbehaviour a real server
/// never shows (trickling replies, stray bytes, silence): every accepted
/// connection is handed to `handle` on its own thread, with its number
/// (0 for the first). Returns the port. The threads live until the test
/// process ends or `handle` returns.
pub fn fake_server<F>(handle: F) -> u16
where
    F: Fn(TcpStream, usize) + Send + Sync + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"));
    let port = listener
        .local_addr()
        .map(|address| address.port())
        .unwrap_or_else(|err| panic!("no local address: {err}"));
    let handle = std::sync::Arc::new(handle);
    std::thread::spawn(move || {
        for (number, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let handle = std::sync::Arc::clone(&handle);
            std::thread::spawn(move || handle(stream, number));
        }
    });
    port
}

/// Reads one memcached text request line from `reader` (without `\r\n`),
/// and, for a storage command, its data block. `None` once the client has
/// gone.
pub fn read_memcached_request(reader: &mut impl std::io::BufRead) -> Option<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_owned();
    let parts: Vec<&str> = line.split(' ').collect();
    if matches!(parts[0], "set" | "add" | "cas") {
        let length: usize = parts.get(4)?.parse().ok()?;
        let mut data = vec![0; length + 2];
        reader.read_exact(&mut data).ok()?;
    }
    Some(line)
}

/// Reads one Redis command (a RESP array of bulk strings) from `reader`.
/// `None` once the client has gone or on anything else.
pub fn read_redis_command(reader: &mut impl std::io::BufRead) -> Option<Vec<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let length: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; length + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(length);
        args.push(arg);
    }
    Some(args)
}

/// The reply a real Redis gives to `command` when it is the `ECHO` that
/// memo's multiplexed connections end each batch with, so that a fake
/// server answering everything else its own way still passes that check.
pub fn redis_echo(command: &[Vec<u8>]) -> Option<Vec<u8>> {
    match command {
        [name, token] if name.eq_ignore_ascii_case(b"ECHO") => {
            let mut reply = format!("${}\r\n", token.len()).into_bytes();
            reply.extend_from_slice(token);
            reply.extend_from_slice(b"\r\n");
            Some(reply)
        }
        _ => None,
    }
}

/// The reply a real memcached gives to `request` when it is the `version`
/// that memo's multiplexed connections end each batch with (see
/// [`redis_echo`]).
pub fn memcached_version(request: &str) -> Option<&'static [u8]> {
    (request == "version").then_some(b"VERSION 1.6.18\r\n")
}

/// Writes `bytes` one at a time, `pause` apart, as a server choking on its
/// reply would; stops when the client has gone.
pub fn trickle(stream: &mut TcpStream, bytes: &[u8], pause: Duration) {
    for byte in bytes {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// One client of each backend memo ships that can run here: the embedded
/// store always, memcached and Redis on fresh servers when installed (see
/// [`Server::try_start`]). Each comes with its name and its server, which
/// the caller keeps alive for as long as it uses the backend.
#[cfg(all(feature = "memcached", feature = "redis"))]
pub fn every_backend() -> Vec<(
    &'static str,
    std::sync::Arc<dyn memo_runtime::Backend>,
    Option<Server>,
)> {
    use memo_runtime::{MemcachedBackend, MemoryBackend, RedisBackend};
    let mut all: Vec<(
        &'static str,
        std::sync::Arc<dyn memo_runtime::Backend>,
        Option<Server>,
    )> = vec![("memory", std::sync::Arc::new(MemoryBackend::new()), None)];
    if let Some(server) = Server::try_start(Kind::Memcached) {
        let backend = MemcachedBackend::new([server.address()]).expect("a memcached client");
        all.push(("memcached", std::sync::Arc::new(backend), Some(server)));
    }
    if let Some(server) = Server::try_start(Kind::Redis) {
        let backend = RedisBackend::new(&server.address()).expect("a Redis client");
        all.push(("redis", std::sync::Arc::new(backend), Some(server)));
    }
    all
}

/// A raw line-protocol session with `server`, bypassing memo's clients:
/// each call sends a request verbatim and returns the first reply line
/// (with its `\r\n`). For pinning what the server itself accepts.
pub fn raw_session(server: &Server) -> impl FnMut(&str) -> String {
    use std::io::BufRead as _;
    let stream = TcpStream::connect(server.address())
        .unwrap_or_else(|err| panic!("cannot connect to {}: {err}", server.address()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("a second handle"));
    let mut writer = stream;
    move |request: &str| {
        writer
            .write_all(request.as_bytes())
            .unwrap_or_else(|err| panic!("cannot send {request:?}: {err}"));
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|err| panic!("no reply to {request:?}: {err}"));
        line
    }
}
