//! TLS for the network clients (feature `tls`): `rediss://` and
//! `memcacheds://`, with rustls on the `ring` provider, no OpenSSL.
//!
//! **One TLS layer for both worlds.** memo's clients speak over the small
//! [`Transport`] transport, which the blocking client runs over a
//! `DeadlineStream` and the async one over a tokio socket. [`Session`] is a
//! sans-IO rustls client driven over any such transport, so one TLS layer
//! serves the blocking and the async client: the same handshake, the same
//! errors, and the connect and call deadlines of the transport under it.
//! A `Conn` carries its session, pooled or idle with it; an idle
//! connection is checked through its session (`Conn::waiting`), so that
//! the session tickets a TLS 1.3 server sends after the handshake are
//! taken in rather than mistaken for a stray reply.
//!
//! **Paid once per connection.** The handshake runs when a pooled
//! connection is opened, within the connect deadline, before any protocol
//! handshake (`AUTH`, `SELECT`); reusing a pooled connection costs nothing
//! more than on plaintext. rustls also resumes sessions with the same
//! server when a new connection is opened, except with a client
//! certificate (see `without_resumption`).
//!
//! **In step.** A connection is reused only when no reply bytes are left
//! over (`pool`); over TLS that includes records rustls has read and not
//! yet decrypted, plaintext it holds, and TLS bytes read from the socket
//! but not yet handed to rustls ([`Session::has_unread`]).
//!
//! **Errors** name the problem (an unknown CA, a certificate for another
//! name, a handshake that did not finish within the connect timeout, a
//! refused client certificate) and never quote a key file or credential.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    RootCertStore, SignatureScheme,
};

use super::transport::Transport;
use crate::common::error::ConfigError;
use crate::common::url::CacheUrl;

/// The URL parameters of the TLS schemes.
pub(crate) const URL_PARAMS: &[&str] = &["ca", "cert", "key", "insecure"];

/// TLS bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// How `rediss://` and `memcacheds://` connections verify the server, and
/// the client certificate they present if any.
///
/// Built once per backend; the certificate files are read when it is
/// built, so an unreadable or malformed file is a configuration error at
/// start-up, not a failure of every call.
///
/// ```no_run
/// use memo_runtime::{RedisBackend, TlsConfig};
///
/// let tls = TlsConfig::with_ca_file("/etc/cache/ca.pem")?
///     .client_certificate("/etc/cache/client.pem", "/etc/cache/client.key")?;
/// let backend = RedisBackend::new("cache.internal:6380")?.tls(tls);
/// # Ok::<(), memo_runtime::ConfigError>(())
/// ```
///
/// The same from a URL: `rediss://cache.internal:6380?ca=/etc/cache/ca.pem&cert=/etc/cache/client.pem&key=/etc/cache/client.key`.
#[derive(Clone)]
pub struct TlsConfig {
    verify: Verify,
    client: Arc<ClientConfig>,
}

/// How the server's certificate is checked.
#[derive(Clone)]
enum Verify {
    Roots(Arc<RootCertStore>),
    Nothing,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verify = match &self.verify {
            Verify::Roots(roots) => format!("{} trusted roots", roots.len()),
            Verify::Nothing => "nothing (insecure)".to_owned(),
        };
        f.debug_struct("TlsConfig")
            .field("verify", &verify)
            .field(
                "client_certificate",
                &self.client.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl TlsConfig {
    /// Verifies servers against the system's root certificates, as a
    /// managed cache (ElastiCache, Memorystore, Azure Cache, Upstash)
    /// needs. Fails when the system has none.
    pub fn new() -> Result<TlsConfig, ConfigError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ConfigError::Backend(
                "TLS: no root certificates found on this system; install them \
                 (ca-certificates) or name a CA file with ca=PATH"
                    .to_owned(),
            ));
        }
        TlsConfig::verifying(roots, None)
    }

    /// Verifies servers against the CA certificates in the PEM file at
    /// `path` only (a private CA, as `redis-cli --cacert` does).
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<TlsConfig, ConfigError> {
        let path = path.as_ref();
        let certs = read_certificates("ca", path)?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|err| {
                file_error("ca", path, &format!("not a usable CA certificate: {err}"))
            })?;
        }
        TlsConfig::verifying(roots, None)
    }

    /// Accepts any server certificate: the connection is encrypted but the
    /// server is not authenticated, so anyone on the network path can pose
    /// as the cache (URL: `insecure=true`). Only for a test setup with a
    /// self-signed certificate; logs a warning, once per process, saying
    /// so.
    pub fn insecure() -> TlsConfig {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            crate::common::diag::warning!(
                "memo: TLS certificate verification is OFF (insecure=true): connections to the \
                 cache are encrypted but anyone on the network path can impersonate the server, \
                 read every key and value and change what is stored; use ca=PATH instead"
            );
        });
        let client = builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider().signature_verification_algorithms,
            )))
            .with_no_client_auth();
        TlsConfig {
            verify: Verify::Nothing,
            client: Arc::new(client),
        }
    }

    /// Presents the certificate chain in the PEM file `cert` with the
    /// private key in the PEM file `key`, for servers that require client
    /// certificates (mutual TLS, Redis' `tls-auth-clients yes`).
    pub fn client_certificate(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig, ConfigError> {
        let chain = read_certificates("cert", cert.as_ref())?;
        let key = read_key(key.as_ref())?;
        match self.verify {
            Verify::Roots(roots) => {
                TlsConfig::verifying(Arc::unwrap_or_clone(roots), Some((chain, key)))
            }
            Verify::Nothing => {
                let client = builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                        provider().signature_verification_algorithms,
                    )))
                    .with_client_auth_cert(chain, key)
                    .map_err(client_auth_error)?;
                Ok(TlsConfig {
                    verify: Verify::Nothing,
                    client: Arc::new(without_resumption(client)),
                })
            }
        }
    }

    fn verifying(
        roots: RootCertStore,
        client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<TlsConfig, ConfigError> {
        let roots = Arc::new(roots);
        let builder = builder().with_root_certificates(Arc::clone(&roots));
        let client = match client_auth {
            Some((chain, key)) => without_resumption(
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(client_auth_error)?,
            ),
            None => builder.with_no_client_auth(),
        };
        Ok(TlsConfig {
            verify: Verify::Roots(roots),
            client: Arc::new(client),
        })
    }

    /// The TLS settings of a URL: `Ok(None)` for a plaintext scheme, which
    /// takes no TLS parameter; for a TLS one, the system roots unless
    /// `ca=PATH` names a CA file, a client certificate with `cert` and
    /// `key`, or no verification with `insecure=true`. The other parameters
    /// are left for the caller.
    pub(crate) fn from_url(url: &CacheUrl, secure: bool) -> Result<Option<TlsConfig>, ConfigError> {
        let param = |name: &str| {
            url.params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        if !secure {
            return match URL_PARAMS.iter().find(|name| param(name).is_some()) {
                Some(name) => Err(url.invalid_value(
                    name,
                    param(name).unwrap_or_default(),
                    &format!(
                        "TLS parameters need a TLS scheme (rediss://, memcacheds://), not {}://",
                        url.scheme
                    ),
                )),
                None => Ok(None),
            };
        }
        let insecure = match param("insecure") {
            None => false,
            Some(value) => crate::common::url::parse_bool(value)
                .ok_or_else(|| url.invalid_value("insecure", value, "expected true or false"))?,
        };
        let config = match (param("ca"), insecure) {
            (Some(ca), true) => {
                return Err(url.invalid_value(
                    "insecure",
                    "true",
                    &format!("ca={ca} verifies the server and insecure=true turns verification off; pick one"),
                ));
            }
            (Some(ca), false) => TlsConfig::with_ca_file(ca)?,
            (None, true) => TlsConfig::insecure(),
            (None, false) => TlsConfig::new()?,
        };
        match (param("cert"), param("key")) {
            (Some(cert), Some(key)) => Ok(Some(config.client_certificate(cert, key)?)),
            (None, None) => Ok(Some(config)),
            (Some(_), None) => Err(url.invalid_value(
                "cert",
                param("cert").unwrap_or_default(),
                "a client certificate needs its private key too (key=PATH)",
            )),
            (None, Some(_)) => Err(url.invalid_value(
                "key",
                "<path>",
                "a private key needs its certificate too (cert=PATH)",
            )),
        }
    }

    /// A new session with `host`, whose certificate must name it (an IP
    /// address as an IP address entry).
    pub(crate) fn session(&self, host: &ServerName<'static>) -> io::Result<Session> {
        let tls = ClientConnection::new(Arc::clone(&self.client), host.clone())
            .map_err(|err| io::Error::other(format!("TLS: {err}")))?;
        Ok(Session {
            tls,
            incoming: Vec::new(),
            start: 0,
            end: 0,
            outgoing: Vec::new(),
            records: Records::default(),
        })
    }
}

/// The name a server's certificate must carry: its host as given.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, ConfigError> {
    ServerName::try_from(host.to_owned()).map_err(|_| ConfigError::InvalidValue {
        name: "server".to_owned(),
        value: host.to_owned(),
        reason: "not a host name or IP address a TLS certificate can name".to_owned(),
    })
}

/// `client` without session resumption. memcached 1.6 requiring client
/// certificates fails every resumed session (a fatal `internal_error`
/// alert: it sets no session id context), so with a client certificate
/// each new connection makes a full handshake: paid once per pooled
/// connection, like any handshake.
fn without_resumption(mut client: ClientConfig) -> ClientConfig {
    client.resumption = rustls::client::Resumption::disabled();
    client
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
}

fn file_error(name: &str, path: &Path, reason: &str) -> ConfigError {
    ConfigError::InvalidValue {
        name: name.to_owned(),
        value: path.display().to_string(),
        reason: reason.to_owned(),
    }
}

/// What went wrong reading a PEM file, without quoting its content.
fn pem_error(err: &rustls::pki_types::pem::Error, what: &str) -> String {
    use rustls::pki_types::pem::Error;
    match err {
        Error::Io(err) => format!("cannot read the file: {err}"),
        Error::NoItemsFound => format!("no {what} in the file (expected PEM)"),
        _ => format!("not a valid PEM file of {what}"),
    }
}

fn read_certificates(name: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| file_error(name, path, &pem_error(&err, "certificate")))?;
    if certs.is_empty() {
        return Err(file_error(
            name,
            path,
            "no certificate in the file (expected PEM)",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|err| file_error("key", path, &pem_error(&err, "private key")))
}

fn client_auth_error(err: rustls::Error) -> ConfigError {
    ConfigError::InvalidValue {
        name: "key".to_owned(),
        value: "<path>".to_owned(),
        reason: format!("the client certificate and key cannot be used together: {err}"),
    }
}

/// Accepts any certificate but still checks that the server holds the
/// key of the one it sent, so the handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A rustls client session over an [`Transport`] transport, with the TLS bytes
/// read from the socket and not yet handed to rustls.
#[derive(Debug)]
pub(crate) struct Session {
    tls: ClientConnection,
    /// TLS bytes read from the socket, in `start..end`; rustls has taken
    /// those before `start`. Allocated once and never zeroed again: a hit
    /// should not pay for clearing 64 KiB.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
    /// TLS bytes rustls produced, on their way to the socket.
    outgoing: Vec<u8>,
    /// Where the TLS bytes given to rustls stand in the record framing.
    records: Records,
}

impl Session {
    /// Runs the handshake over `io`, whose deadline bounds it.
    pub(crate) async fn handshake<T: Transport>(&mut self, io: &mut T) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.send_pending(io).await?;
            if !self.tls.is_handshaking() {
                break;
            }
            if self.receive(io).await.map_err(handshake_error)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "TLS: the server closed the connection during the handshake \
                     (is it a TLS port? does it require a client certificate?)",
                ));
            }
        }
        self.send_pending(io).await
    }

    /// Reads plaintext into `buf`; zero when the server closed.
    pub(crate) async fn read<T: Transport>(
        &mut self,
        io: &mut T,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without `close_notify`: as a plaintext socket closes.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(err) => return Err(err),
            }
            if self.receive(io).await? == 0 {
                return Ok(0);
            }
            // Key updates and alerts rustls answers.
            self.send_pending(io).await?;
        }
    }

    /// Encrypts and sends all of `bytes`, a buffer's worth at a time.
    pub(crate) async fn write_all<T: Transport>(
        &mut self,
        io: &mut T,
        mut bytes: &[u8],
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            let taken = self.tls.writer().write(bytes)?;
            bytes = &bytes[taken..];
            self.send_pending(io).await?;
        }
        Ok(())
    }

    /// Whether bytes of a reply are held anywhere in the session: TLS
    /// bytes read and not yet given to rustls, part of a record, or
    /// decrypted plaintext nobody read. Such a connection is out of step.
    pub(crate) fn has_unread(&mut self) -> bool {
        if self.start < self.end || !self.records.at_boundary() {
            return true;
        }
        match self.tls.process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
    }

    /// Hands rustls more TLS bytes, reading from `io` when none are left
    /// over, and processes them; the bytes read, zero when the server
    /// closed.
    async fn receive<T: Transport>(&mut self, io: &mut T) -> io::Result<usize> {
        if self.start == self.end {
            if self.incoming.is_empty() {
                self.incoming = vec![0; READ_CHUNK];
            }
            let read = io.read_some(&mut self.incoming).await?;
            (self.start, self.end) = (0, read);
            if read == 0 {
                return Ok(0);
            }
        }
        let mut rest = &self.incoming[self.start..self.end];
        let taken = self.tls.read_tls(&mut rest)?;
        self.records
            .advance(&self.incoming[self.start..self.start + taken]);
        self.start += taken;
        self.tls.process_new_packets().map_err(tls_error)?;
        // Zero taken: rustls saw `close_notify` and reads no more.
        Ok(taken)
    }

    /// Sends whatever TLS bytes rustls has ready.
    async fn send_pending<T: Transport>(&mut self, io: &mut T) -> io::Result<()> {
        while self.tls.wants_write() {
            self.outgoing.clear();
            self.tls.write_tls(&mut self.outgoing)?;
            io.write_all(&self.outgoing).await?;
        }
        Ok(())
    }
}

/// A transport failure during the handshake, named as one.
fn handshake_error(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::TimedOut {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS: the handshake did not finish within the connect timeout",
        )
    } else {
        err
    }
}

/// A rustls failure, as an I/O error saying what to check.
fn tls_error(err: rustls::Error) -> io::Error {
    use rustls::Error;
    let message = match &err {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a trusted CA (for a private CA, \
             pass ca=PATH)"
                .to_owned()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "TLS: the server's certificate does not name the host memo connected to (name \
              mismatch: connect by a name the certificate lists)"
            .to_owned(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "TLS: the server's certificate has expired".to_owned(),
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure,
        ) => format!(
            "TLS: the server refused the connection ({err}); does it require a client \
             certificate (cert=PATH&key=PATH) signed by a CA it trusts?"
        ),
        _ => format!("TLS: {err}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Follows the TLS record framing (a 5-byte header whose last two bytes
/// are the length of the body that follows) over the bytes given to
/// rustls, to tell whether it holds part of a record: rustls does not say.
#[derive(Debug, Default)]
struct Records {
    /// Header bytes seen of the current record, 0 to 4.
    header: usize,
    /// The record length's first byte, once seen.
    length_high: u8,
    /// Body bytes still to come.
    body: usize,
}

impl Records {
    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body > 0 {
                let skip = self.body.min(bytes.len());
                self.body -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            match self.header {
                3 => self.length_high = bytes[0],
                4 => self.body = usize::from(u16::from_be_bytes([self.length_high, bytes[0]])),
                _ => {}
            }
            self.header = (self.header + 1) % 5;
            bytes = &bytes[1..];
        }
    }

    fn at_boundary(&self) -> bool {
        self.header == 0 && self.body == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_framing_is_followed_across_any_split() {
        // Two records: 3 and 0 body bytes.
        let stream = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 0];
        for split in 0..=stream.len() {
            let mut records = Records::default();
            records.advance(&stream[..split]);
            let whole = split == 0 || split == 8 || split == 13;
            assert_eq!(records.at_boundary(), whole, "split at {split}");
            records.advance(&stream[split..]);
            assert!(records.at_boundary());
        }
        let mut long = Records::default();
        long.advance(&[23, 3, 3, 0x40, 0x00]);
        long.advance(&vec![0; 0x3fff]);
        assert!(!long.at_boundary());
        long.advance(&[0]);
        assert!(long.at_boundary());
    }

    #[test]
    fn tls_parameters_need_a_tls_scheme_and_files_that_parse() {
        let url = |text: &str| CacheUrl::parse(text).unwrap();
        let err = TlsConfig::from_url(&url("redis://h?ca=/x.pem"), false).unwrap_err();
        assert!(err.to_string().contains("TLS scheme"), "{err}");
        assert!(
            TlsConfig::from_url(&url("redis://h"), false)
                .unwrap()
                .is_none()
        );
        let missing = TlsConfig::from_url(&url("rediss://h?ca=/no/such.pem"), true).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        let both = TlsConfig::from_url(&url("rediss://h?ca=/x&insecure=true"), true).unwrap_err();
        assert!(both.to_string().contains("pick one"), "{both}");
        let half = TlsConfig::from_url(&url("rediss://h?insecure=1&cert=/c"), true).unwrap_err();
        assert!(half.to_string().contains("key=PATH"), "{half}");
        let bad = TlsConfig::from_url(&url("rediss://h?insecure=maybe"), true).unwrap_err();
        assert!(bad.to_string().contains("true or false"), "{bad}");
        let insecure = TlsConfig::from_url(&url("rediss://h?insecure=true"), true).unwrap();
        assert!(format!("{insecure:?}").contains("insecure"));
    }

    #[test]
    fn a_key_file_is_never_quoted() {
        let dir = std::env::temp_dir().join(format!("memo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("bad.key");
        let secret =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA=!!\n-----END PRIVATE KEY-----\n";
        std::fs::write(&key, secret).unwrap();
        let err = read_key(&key).unwrap_err().to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A rustls server on a free loopback port that completes one
    /// handshake, reads a request line, and writes `reply` and then the
    /// first `partial` bytes of a second record holding `stray`.
    fn tls_server(reply: &'static [u8], stray: &'static [u8], partial: usize) -> u16 {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            let mut tls = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp).unwrap();
            }
            let mut request = Vec::new();
            while !request.ends_with(b"\n") {
                tls.complete_io(&mut tcp).unwrap();
                let mut buf = [0u8; 64];
                if let Ok(n) = tls.reader().read(&mut buf) {
                    request.extend_from_slice(&buf[..n]);
                }
            }
            let mut records = Vec::new();
            tls.writer().write_all(reply).unwrap();
            tls.write_tls(&mut records).unwrap();
            let whole = records.len();
            tls.writer().write_all(stray).unwrap();
            tls.write_tls(&mut records).unwrap();
            tcp.write_all(&records[..whole + partial.min(records.len() - whole)])
                .unwrap();
            std::thread::sleep(std::time::Duration::from_secs(2));
        });
        port
    }

    /// Sends a request over a fresh TLS connection to `port` and reads one
    /// reply line; whether the connection then holds leftovers.
    fn leftovers_after_one_reply(port: u16) -> bool {
        use super::super::conn::{Conn, ready, take_line};
        use super::super::deadline::{DeadlineStream, later};
        let deadline = later(std::time::Instant::now(), std::time::Duration::from_secs(5));
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut conn = Conn::new(DeadlineStream::new(tcp, deadline));
        let mut session = TlsConfig::insecure()
            .session(&server_name("127.0.0.1").unwrap())
            .unwrap();
        ready(session.handshake(&mut conn.io)).unwrap();
        conn.tls = Some(Box::new(session));
        ready(conn.send(b"PING\r\n")).unwrap();
        // Let the whole burst arrive before the first read.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let line = ready(
            conn.next(|buf| Ok(take_line(buf, 100)?.map(|(line, used)| (line.to_owned(), used)))),
        )
        .unwrap();
        assert_eq!(line, "+PONG");
        conn.has_leftovers()
    }

    #[test]
    fn a_connection_holding_part_of_a_stray_record_is_never_reused() {
        assert!(!leftovers_after_one_reply(tls_server(b"+PONG\r\n", b"", 0)));
        for partial in [1, 4, 5, 6, 20] {
            let port = tls_server(b"+PONG\r\n", b"+STRAY\r\n", partial);
            assert!(
                leftovers_after_one_reply(port),
                "{partial} bytes of a record"
            );
        }
        let port = tls_server(b"+PONG\r\n", b"+STRAY\r\n", usize::MAX);
        assert!(leftovers_after_one_reply(port), "a whole stray record");
    }

    #[test]
    fn server_names_are_hosts_or_ip_addresses() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("cache.internal"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("bad name!").is_err());
    }
}
