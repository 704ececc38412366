//! Throwaway certificates and TLS-speaking memcached and Redis servers for
//! the TLS tests and benchmarks.
//!
//! [`Pki`] makes a private CA with a server certificate for `127.0.0.1`
//! and a client certificate, a second CA nobody uses, and a self-signed
//! server certificate, all written as PEM files to a temporary directory.
//! [`TlsServer`] runs `redis-server --tls-port` or `memcached -Z` with one
//! of them, listening for TLS and plaintext on two ports at once:
//!
//! ```no_run
//! use memo_tests::servers::Kind;
//! use memo_tests::tls::{Pki, TlsServer};
//!
//! let pki = Pki::new();
//! let server = TlsServer::start(Kind::Redis, &pki, pki.server(), false);
//! let url = server.url(&format!("ca={}", pki.ca().display()));
//! // "rediss://127.0.0.1:PORT?ca=/tmp/.../ca.pem"
//! ```

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::servers::{Kind, free_port, is_root};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate (chain) file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// The certificates of a test, in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    server: Identity,
    client: Identity,
    self_signed: Identity,
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    /// Generates a CA (`ca.pem`) with a server certificate for
    /// `127.0.0.1` only and a client certificate signed by it, a second,
    /// unrelated CA (`other-ca.pem`), and a self-signed server certificate.
    pub fn new() -> Pki {
        Pki::with_server_names(&["127.0.0.1"])
    }

    /// [`new`](Self::new), with a server certificate naming `names` (DNS
    /// names or IP addresses) instead of `127.0.0.1`.
    pub fn with_server_names(names: &[&str]) -> Pki {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "memo-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("a writable temporary directory");
            path
        };
        let (ca, ca_key) = authority("memo test CA");
        write("ca.pem", &ca.pem());
        let (other, _) = authority("memo unrelated CA");
        write("other-ca.pem", &other.pem());

        let server_key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("SANs");
        // Client use too: the nodes of a TLS cluster present it to each
        // other on the cluster bus, which always verifies its peers.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("a server certificate");
        let server = Identity {
            cert: write("server.pem", &server.pem()),
            key: write("server.key", &server_key.serialize_pem()),
        };

        let client_key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "memo test client");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("a client certificate");
        let client = Identity {
            cert: write("client.pem", &client.pem()),
            key: write("client.key", &client_key.serialize_pem()),
        };

        let lone_key = KeyPair::generate().expect("a key");
        let lone = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("SANs")
            .self_signed(&lone_key)
            .expect("a self-signed certificate");
        let self_signed = Identity {
            cert: write("self-signed.pem", &lone.pem()),
            key: write("self-signed.key", &lone_key.serialize_pem()),
        };
        Pki {
            dir,
            server,
            client,
            self_signed,
        }
    }

    /// The CA that signed [`server`](Self::server) and
    /// [`client`](Self::client).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing the servers use.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server certificate: names `127.0.0.1` only (as an IP address
    /// entry), for server and client use.
    pub fn server(&self) -> &Identity {
        &self.server
    }

    /// A client certificate signed by [`ca`](Self::ca).
    pub fn client(&self) -> &Identity {
        &self.client
    }

    /// A server certificate for `127.0.0.1` that no CA signed.
    pub fn self_signed(&self) -> &Identity {
        &self.self_signed
    }

    /// A file in the directory, for tests that write their own.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn authority(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("a CA certificate");
    (cert, key)
}

/// A memcached or Redis server serving TLS on one port and plaintext on
/// another, killed when dropped.
#[derive(Debug)]
pub struct TlsServer {
    kind: Kind,
    tls_port: u16,
    plain_port: u16,
    /// The command line, to restart the server on the same ports.
    args: Vec<String>,
    child: Child,
}

impl TlsServer {
    /// Starts a server of `kind` presenting `identity`; with
    /// `require_client_cert`, it accepts only clients with a certificate
    /// signed by `pki`'s CA. Retried on new ports if it does not come up.
    pub fn start(
        kind: Kind,
        pki: &Pki,
        identity: &Identity,
        require_client_cert: bool,
    ) -> TlsServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let (tls_port, plain_port) = (free_port(), free_port());
            let args = arguments(
                kind,
                pki,
                identity,
                require_client_cert,
                tls_port,
                plain_port,
            );
            match spawn(kind, &args, tls_port, plain_port) {
                Ok(child) => {
                    return TlsServer {
                        kind,
                        tls_port,
                        plain_port,
                        args,
                        child,
                    };
                }
                Err(err) => last_error = err,
            }
        }
        panic!("could not start a TLS {kind:?} server: {last_error}");
    }

    /// Kills the server and starts it again, empty, on the same ports.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match spawn(self.kind, &self.args, self.tls_port, self.plain_port) {
                Ok(child) => {
                    self.child = child;
                    return;
                }
                // The old sockets may linger for a moment after the kill.
                Err(err) if Instant::now() > deadline => {
                    panic!("could not restart the TLS {:?} server: {err}", self.kind)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The TLS port.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The plaintext port of the same server.
    pub fn plain_port(&self) -> u16 {
        self.plain_port
    }

    /// `rediss://127.0.0.1:PORT?query` or `memcacheds://...`.
    pub fn url(&self, query: &str) -> String {
        self.url_for("127.0.0.1", query)
    }

    /// The TLS URL naming the server by `host`.
    pub fn url_for(&self, host: &str, query: &str) -> String {
        let scheme = match self.kind {
            Kind::Redis => "rediss",
            Kind::Memcached => "memcacheds",
        };
        format!("{scheme}://{host}:{}?{query}", self.tls_port)
    }

    /// The plaintext URL of the same server.
    pub fn plain_url(&self) -> String {
        let scheme = match self.kind {
            Kind::Redis => "redis",
            Kind::Memcached => "memcached",
        };
        format!("{scheme}://127.0.0.1:{}", self.plain_port)
    }
}

/// The command line of a server of `kind` on the two ports.
fn arguments(
    kind: Kind,
    pki: &Pki,
    identity: &Identity,
    require_client_cert: bool,
    tls_port: u16,
    plain_port: u16,
) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let mut args: Vec<String> = match kind {
        Kind::Redis => vec![
            "--port".into(),
            plain_port.to_string(),
            "--tls-port".into(),
            tls_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-cert-file".into(),
            path(&identity.cert),
            "--tls-key-file".into(),
            path(&identity.key),
            "--tls-ca-cert-file".into(),
            path(&pki.ca()),
            "--tls-auth-clients".into(),
            if require_client_cert { "yes" } else { "no" }.into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
        ],
        Kind::Memcached => {
            let mut options = format!(
                "ssl_chain_cert={},ssl_key={}",
                path(&identity.cert),
                path(&identity.key)
            );
            if require_client_cert {
                options.push_str(&format!(
                    ",ssl_ca_cert={},ssl_verify_mode=2",
                    path(&pki.ca())
                ));
            }
            vec![
                "-Z".into(),
                "-o".into(),
                options,
                "-l".into(),
                format!("127.0.0.1:{tls_port}"),
                "-l".into(),
                format!("notls:127.0.0.1:{plain_port}"),
                "-U".into(),
                "0".into(),
                "-m".into(),
                "256".into(),
            ]
        }
    };
    if kind == Kind::Memcached && is_root() {
        args.extend(["-u".into(), "root".into()]);
    }
    args
}

/// Runs the server and waits until both ports answer.
fn spawn(kind: Kind, args: &[String], tls_port: u16, plain_port: u16) -> Result<Child, String> {
    let binary = match kind {
        Kind::Redis => "redis-server",
        Kind::Memcached => "memcached",
    };
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run {binary}: {err}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited at startup ({status})"));
        }
        if answers(kind, plain_port) && TcpStream::connect(("127.0.0.1", tls_port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("did not come up within 10 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the server answers a plaintext request on `port`.
fn answers(kind: Kind, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request: &[u8] = match kind {
        Kind::Redis => b"PING\r\n",
        Kind::Memcached => b"version\r\n",
    };
    let mut reply = [0u8; 16];
    stream.write_all(request).is_ok() && matches!(stream.read(&mut reply), Ok(n) if n > 0)
}
