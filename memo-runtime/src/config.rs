//! The global configuration: which backend, which namespace, which defaults.
//!
//! A service configures memo once at startup with [`configure`]; every
//! memoized call then reads the current configuration through [`config`].
//! Calling [`configure`] again replaces it for every later call (calls in
//! flight finish with the configuration they started with). Without any
//! `configure` call, memo uses an embedded [`MemoryBackend`].
//!
//! The same settings can come from a URL ([`Config::from_url`]) or from the
//! environment ([`Config::from_env`]), so that deployment, not code, picks
//! the cache.

use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::backend::{Backend, MemoryBackend};
use crate::crypto::EncryptionKey;
use crate::stats::Counters;

/// The default expiration of a memoized value: 30 days, as in Djblets.
pub const DEFAULT_EXPIRATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The default chunk size: memcached's 1 MiB item limit less 1 KiB for the
/// key and memcached's own item header, so every stored item fits.
pub const DEFAULT_CHUNK_SIZE: usize = (1 << 20) - 1024;

/// The smallest chunk size accepted; smaller chunks would spend more on
/// per-item overhead than on data.
pub const MIN_CHUNK_SIZE: usize = 1024;

/// The default zlib compression level: fast, with most of the ratio of the
/// slower levels on the structured data services cache.
pub const DEFAULT_COMPRESSION_LEVEL: u8 = 1;

/// A configuration that is wrong: an unknown URL scheme, a malformed value,
/// an encryption key of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL could not be parsed at all.
    #[error("invalid cache URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL names a scheme memo does not know, or one whose cargo feature
    /// is off.
    #[error(
        "unsupported cache URL scheme {scheme:?}: use memory://, memcached:// (feature \"memcached\") or redis:// (feature \"redis\")"
    )]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// The scheme is known but its cargo feature is not enabled.
    #[error("cache URL scheme {scheme:?} needs memo-runtime's cargo feature {feature:?}")]
    FeatureDisabled {
        /// The scheme as given.
        scheme: String,
        /// The feature to enable.
        feature: &'static str,
    },
    /// A setting (URL parameter or environment variable) has a value that
    /// cannot be used.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidValue {
        /// The parameter or variable name.
        name: String,
        /// The value as given.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// A URL parameter memo does not know.
    #[error("unknown cache URL parameter {name:?} (known: {known})")]
    UnknownParameter {
        /// The parameter as given.
        name: String,
        /// The parameters the scheme accepts.
        known: String,
    },
    /// An encryption key of the wrong length.
    #[error(transparent)]
    Key(#[from] crate::crypto::KeyError),
    /// The backend could not be set up from the URL.
    #[error("cannot set up the cache backend: {0}")]
    Backend(String),
}

/// Everything memo needs to know about the cache: the backend and the
/// defaults that apply to every memoized call.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{Config, MemoryBackend, configure};
///
/// configure(
///     Config::new(MemoryBackend::new())
///         .namespace("shop")
///         .default_expiration(Duration::from_secs(3600)),
/// );
/// assert_eq!(memo_runtime::config().namespace_str(), Some("shop"));
/// ```
#[derive(Clone)]
#[must_use = "a configuration does nothing until passed to configure"]
pub struct Config {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) namespace: Option<String>,
    pub(crate) default_expiration: Duration,
    pub(crate) force_encryption: bool,
    pub(crate) encryption_key: Option<EncryptionKey>,
    pub(crate) chunk_size: usize,
    pub(crate) compression_level: u8,
    pub(crate) counters: Arc<Counters>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("namespace", &self.namespace)
            .field("default_expiration", &self.default_expiration)
            .field("force_encryption", &self.force_encryption)
            .field("encryption_key", &self.encryption_key)
            .field("chunk_size", &self.chunk_size)
            .field("compression_level", &self.compression_level)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration on `backend` with every default: no namespace, 30
    /// days expiration, encryption only where a call asks for it, chunks of
    /// [`DEFAULT_CHUNK_SIZE`] bytes.
    pub fn new(backend: impl Backend) -> Self {
        Self::with_shared_backend(Arc::new(backend))
    }

    /// Like [`Config::new`], for a backend already behind an `Arc` (shared
    /// with other code, or chosen at run time).
    pub fn with_shared_backend(backend: Arc<dyn Backend>) -> Self {
        Config {
            backend,
            namespace: None,
            default_expiration: DEFAULT_EXPIRATION,
            force_encryption: false,
            encryption_key: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            counters: Arc::default(),
        }
    }

    /// Prefixes every key with `namespace` and `:`, so that several
    /// applications (or several deployments of one) can share a cache. An
    /// empty namespace means none.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = (!namespace.is_empty()).then(|| namespace.to_owned());
        self
    }

    /// The expiration of values whose call sets none. Zero means the
    /// default, 30 days.
    pub fn default_expiration(mut self, expiration: Duration) -> Self {
        self.default_expiration = if expiration.is_zero() {
            DEFAULT_EXPIRATION
        } else {
            expiration
        };
        self
    }

    /// Encrypts keys and values of every call, whatever the call's options
    /// say (Djblets' `DJBLETS_CACHE_FORCE_ENCRYPTION`).
    pub fn force_encryption(mut self, force: bool) -> Self {
        self.force_encryption = force;
        self
    }

    /// The key used when a call encrypts without naming its own.
    ///
    /// Without one, encrypted calls use a random key made once per process:
    /// safe, but values written by one process cannot be read by another, so
    /// a shared cache needs this set.
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// The largest item memo stores in one backend entry; larger values
    /// (with `large_data`, and iterators) are split into chunks of this
    /// size. Clamped to at least [`MIN_CHUNK_SIZE`] and at most 4 GiB - 1
    /// (a manifest records sizes in 32 bits).
    pub fn chunk_size(mut self, chunk_size: usize) -> Self {
        let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        self.chunk_size = chunk_size.clamp(MIN_CHUNK_SIZE, max);
        self
    }

    /// The zlib level (0 to 10) for compressed values; 1 by default,
    /// favouring speed. Values above 10 are clamped.
    pub fn compression_level(mut self, level: u8) -> Self {
        self.compression_level = level.min(10);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The namespace, if any.
    pub fn namespace_str(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The expiration used when a call sets none.
    pub fn default_expiration_value(&self) -> Duration {
        self.default_expiration
    }

    /// Whether every call is encrypted.
    pub fn forces_encryption(&self) -> bool {
        self.force_encryption
    }

    /// The chunk size in bytes.
    pub fn chunk_size_value(&self) -> usize {
        self.chunk_size
    }

    /// A configuration from a URL naming the backend and, in its query, the
    /// settings:
    ///
    /// - `memory://` (optionally `?max_bytes=N`): the embedded backend.
    /// - `memcached://host:port[,host:port...]`: memcached servers (cargo
    ///   feature `memcached`), with the backend's own parameters such as
    ///   timeouts (see `MemcachedBackend::from_url`).
    /// - `redis://host:port[/db]`: a Redis server (cargo feature `redis`).
    ///
    /// Parameters every scheme takes: `namespace`, `expiration` (seconds),
    /// `chunk_size` (bytes), `compression_level` (0-10), `force_encryption`
    /// (`true`/`false`). An encryption key never goes in a URL (URLs end up
    /// in logs); use [`Config::encryption_key`] or `MEMO_ENCRYPTION_KEY`.
    ///
    /// ```
    /// use memo_runtime::Config;
    ///
    /// let config = Config::from_url("memory://?namespace=shop&expiration=60").unwrap();
    /// assert_eq!(config.namespace_str(), Some("shop"));
    /// assert!(Config::from_url("ftp://nowhere").is_err());
    /// ```
    pub fn from_url(url: &str) -> Result<Config, ConfigError> {
        let parsed = CacheUrl::parse(url)?;
        let mut backend_params = Vec::new();
        let mut settings = Vec::new();
        for (name, value) in &parsed.params {
            if GENERAL_PARAMS.contains(&name.as_str()) {
                settings.push((name.as_str(), value.as_str()));
            } else {
                backend_params.push((name.clone(), value.clone()));
            }
        }
        let backend_url = CacheUrl {
            params: backend_params,
            ..parsed.clone()
        };
        let backend: Arc<dyn Backend> = match parsed.scheme.as_str() {
            "memory" => Arc::new(MemoryBackend::from_url_parts(&backend_url)?),
            "memcached" => memcached_from_url(&backend_url)?,
            "redis" | "rediss" => redis_from_url(&backend_url)?,
            other => {
                return Err(ConfigError::UnsupportedScheme {
                    scheme: other.to_owned(),
                });
            }
        };
        let mut config = Config::with_shared_backend(backend);
        for (name, value) in settings {
            config = config.apply_setting(name, value)?;
        }
        Ok(config)
    }

    /// A configuration from these environment variables, so that
    /// deployment, not code, picks the cache:
    ///
    /// | variable | meaning | example |
    /// |---|---|---|
    /// | `MEMO_CACHE_URL` | backend and options, as for [`Config::from_url`] | `memcached://10.0.0.5:11211,10.0.0.6:11211?namespace=shop` |
    /// | `MEMO_NAMESPACE` | [`Config::namespace`] | `shop` |
    /// | `MEMO_DEFAULT_EXPIRATION` | [`Config::default_expiration`], in seconds | `3600` |
    /// | `MEMO_CHUNK_SIZE` | [`Config::chunk_size`], in bytes | `1047552` |
    /// | `MEMO_FORCE_ENCRYPTION` | [`Config::force_encryption`]: `1`/`true`/`yes` or `0`/`false`/`no` | `true` |
    /// | `MEMO_ENCRYPTION_KEY` | [`Config::encryption_key`], as 32, 48 or 64 hex digits | `000102…1f` |
    ///
    /// Without `MEMO_CACHE_URL` the backend is the embedded one; a variable
    /// that is set but malformed is an error, never silently ignored.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Config::from_env`] over any source of variables, for tests and for
    /// services that keep settings elsewhere.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = match lookup("MEMO_CACHE_URL") {
            Some(url) if !url.trim().is_empty() => Config::from_url(url.trim())?,
            _ => Config::new(MemoryBackend::new()),
        };
        for (var, setting) in ENV_SETTINGS {
            if let Some(value) = lookup(var) {
                config = config
                    .apply_setting(setting, value.trim())
                    .map_err(|e| match e {
                        ConfigError::InvalidValue { value, reason, .. } => {
                            ConfigError::InvalidValue {
                                name: (*var).to_owned(),
                                value,
                                reason,
                            }
                        }
                        other => other,
                    })?;
            }
        }
        if let Some(hex_key) = lookup("MEMO_ENCRYPTION_KEY") {
            let bytes = decode_hex(hex_key.trim()).ok_or_else(|| ConfigError::InvalidValue {
                name: "MEMO_ENCRYPTION_KEY".to_owned(),
                value: "<redacted>".to_owned(),
                reason: "expected 32, 48 or 64 hex digits (a 16, 24 or 32 byte AES key)".to_owned(),
            })?;
            config = config.encryption_key(EncryptionKey::new(bytes)?);
        }
        Ok(config)
    }

    fn apply_setting(self, name: &str, value: &str) -> Result<Config, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidValue {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        Ok(match name {
            "namespace" => self.namespace(value),
            "expiration" => self.default_expiration(Duration::from_secs(
                value
                    .parse()
                    .map_err(|_| invalid("expected a whole number of seconds"))?,
            )),
            "chunk_size" => {
                let size: usize = value
                    .parse()
                    .map_err(|_| invalid("expected a number of bytes"))?;
                if size < MIN_CHUNK_SIZE {
                    return Err(invalid(&format!(
                        "expected at least {MIN_CHUNK_SIZE} bytes"
                    )));
                }
                self.chunk_size(size)
            }
            "compression_level" => {
                let level: u8 = value
                    .parse()
                    .ok()
                    .filter(|level| *level <= 10)
                    .ok_or_else(|| invalid("expected a zlib level from 0 to 10"))?;
                self.compression_level(level)
            }
            "force_encryption" => self.force_encryption(
                parse_bool(value).ok_or_else(|| invalid("expected true or false"))?,
            ),
            _ => unreachable!("apply_setting is only called with known setting names"),
        })
    }
}

const GENERAL_PARAMS: &[&str] = &[
    "namespace",
    "expiration",
    "chunk_size",
    "compression_level",
    "force_encryption",
];

const ENV_SETTINGS: &[(&str, &str)] = &[
    ("MEMO_NAMESPACE", "namespace"),
    ("MEMO_DEFAULT_EXPIRATION", "expiration"),
    ("MEMO_CHUNK_SIZE", "chunk_size"),
    ("MEMO_FORCE_ENCRYPTION", "force_encryption"),
];

#[cfg(feature = "memcached")]
fn memcached_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(
        crate::backend::memcached::MemcachedBackend::from_url_parts(url)?,
    ))
}

#[cfg(not(feature = "memcached"))]
fn memcached_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: url.scheme.clone(),
        feature: "memcached",
    })
}

#[cfg(feature = "redis")]
fn redis_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(
        crate::backend::redis::RedisBackend::from_url_parts(url)?,
    ))
}

#[cfg(not(feature = "redis"))]
fn redis_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Err(ConfigError::FeatureDisabled {
        scheme: url.scheme.clone(),
        feature: "redis",
    })
}

/// Parses `1/true/yes/on` and `0/false/no/off`, any case.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A cache URL taken apart: `scheme://[user:pass@]host:port[,host:port...][/path][?a=b&c=d]`.
///
/// Backends receive this from [`Config::from_url`] with the general
/// parameters (namespace, expiration, ...) already taken out, so whatever
/// is left in `params` is theirs to accept or reject.
///
/// Credentials never leave it by accident: `url` holds the URL with its
/// userinfo replaced by `***`, and `Debug` prints the userinfo the same way,
/// since both end up in error messages and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheUrl {
    /// The URL as given, with any credentials replaced by `***`: safe for
    /// error messages and logs.
    pub url: String,
    /// The scheme, lower-cased (`memory`, `memcached`, `redis`).
    pub scheme: String,
    /// `user:password` before an `@`, if any.
    pub userinfo: Option<String>,
    /// The comma-separated hosts, each as written (`host:port`, `[::1]:port`).
    pub hosts: Vec<String>,
    /// The path after the hosts, without the leading `/` (Redis' database).
    pub path: String,
    /// The query parameters, percent-decoded, in order.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for CacheUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheUrl")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("userinfo", &self.userinfo.as_ref().map(|_| REDACTED))
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .field("params", &self.params)
            .finish()
    }
}

/// What stands in for credentials wherever a URL is shown.
const REDACTED: &str = "***";

/// `url` with its userinfo (everything up to the last `@` ahead of the
/// query) replaced by [`REDACTED`]. It reaches past the first `/` on
/// purpose: a password with an unescaped `/` does not parse, and the error
/// saying so must not print it either.
fn redact(url: &str) -> String {
    // Without a scheme there is no telling where credentials begin: hide
    // everything up to the `@`.
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let query = rest.find('?').unwrap_or(rest.len());
    match rest[..query].rfind('@') {
        Some(at) => format!("{}{REDACTED}{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

impl CacheUrl {
    /// Takes `url` apart.
    ///
    /// ```
    /// use memo_runtime::CacheUrl;
    ///
    /// let url = CacheUrl::parse("redis://:s3cret@cache:6379/2").unwrap();
    /// assert_eq!(url.url, "redis://***@cache:6379/2");
    /// assert!(!format!("{url:?}").contains("s3cret"));
    /// ```
    pub fn parse(url: &str) -> Result<CacheUrl, ConfigError> {
        let redacted = redact(url);
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: redacted.clone(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://..., e.g. memcached://127.0.0.1:11211"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(invalid("the scheme is empty or has invalid characters"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, Some(query)),
            None => (rest, None),
        };
        // The last `@` ends the credentials even when they hold an unescaped
        // `/`, the same rule `redact` follows, so hosts never hold a secret.
        let (userinfo, after_userinfo) = match before_query.rsplit_once('@') {
            Some((userinfo, rest)) => (
                // The credentials' own text must not reach the error.
                Some(percent_decode(userinfo, &redacted).map_err(|_| {
                    invalid("bad percent escape or non-UTF-8 text in the credentials")
                })?),
                rest,
            ),
            None => (None, before_query),
        };
        let (hosts, path) = match after_userinfo.split_once('/') {
            Some((hosts, path)) => (hosts, path),
            None => (after_userinfo, ""),
        };
        let hosts = if hosts.is_empty() {
            Vec::new()
        } else {
            hosts
                .split(',')
                .map(|host| {
                    let host = host.trim();
                    if host.is_empty() {
                        Err(invalid("empty host in the host list"))
                    } else {
                        Ok(host.to_owned())
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((
                percent_decode(name, &redacted)?,
                percent_decode(value, &redacted)?,
            ));
        }
        Ok(CacheUrl {
            url: redacted.clone(),
            scheme: scheme.to_ascii_lowercase(),
            userinfo,
            hosts,
            path: path.to_owned(),
            params,
        })
    }

    /// The error for a parameter the backend does not know.
    pub(crate) fn unknown_parameter(&self, name: &str, known: &[&str]) -> ConfigError {
        let mut all: Vec<&str> = GENERAL_PARAMS.to_vec();
        all.extend_from_slice(known);
        ConfigError::UnknownParameter {
            name: name.to_owned(),
            known: all.join(", "),
        }
    }

    /// The error for a parameter with a value that cannot be used.
    pub(crate) fn invalid_value(&self, name: &str, value: &str, reason: &str) -> ConfigError {
        ConfigError::InvalidValue {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    /// A parameter holding a duration in milliseconds.
    #[cfg(any(feature = "memcached", feature = "redis"))]
    pub(crate) fn millis(&self, name: &str, value: &str) -> Result<Duration, ConfigError> {
        value
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| self.invalid_value(name, value, "expected a whole number of milliseconds"))
    }
}

fn percent_decode(text: &str, url: &str) -> Result<String, ConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| ConfigError::InvalidUrl {
                        url: url.to_owned(),
                        reason: format!("bad percent escape in {text:?}"),
                    })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{text:?} does not decode to UTF-8"),
    })
}

static GLOBAL: RwLock<Option<Arc<Config>>> = RwLock::new(None);
static DEFAULT: OnceLock<Arc<Config>> = OnceLock::new();

/// Installs `config` for every later memoized call, replacing the previous
/// one. Statistics start again from zero with each configuration.
pub fn configure(config: Config) {
    let config = Arc::new(config);
    match GLOBAL.write() {
        Ok(mut slot) => *slot = Some(config),
        // A panic while holding the lock cannot leave the slot half-written
        // (it holds one Arc), so the poisoned value is safe to replace.
        Err(poisoned) => *poisoned.into_inner() = Some(config),
    }
}

/// The configuration in force: the last one passed to [`configure`], or the
/// embedded default.
pub fn config() -> Arc<Config> {
    let slot = match GLOBAL.read() {
        Ok(slot) => slot,
        Err(poisoned) => poisoned.into_inner(),
    };
    match slot.as_ref() {
        Some(config) => Arc::clone(config),
        None => Arc::clone(DEFAULT.get_or_init(|| Arc::new(Config::new(MemoryBackend::new())))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_errors_or_debug() {
        for url in [
            "redis://:s3cret@a:1,b:2",
            "redis://user:s3cret@a:1/x?namespace=n&bogus=1",
            "redis://:s3cret@a:1?timeout_ms=soon",
            "redis://:s3%zzcret@a:1",
            "redis://:s3/cret@a:1",
            "memcached://user:s3cret@a:1",
            "ftp://:s3cret@a:1",
            "nonsense:s3cret@a",
        ] {
            if let Ok(parsed) = CacheUrl::parse(url) {
                let shown = format!("{parsed:?}");
                assert!(!shown.contains("s3"), "{shown}");
                assert!(!parsed.url.contains("s3"), "{}", parsed.url);
            }
            let shown = match Config::from_url(url) {
                Ok(config) => vec![format!("{config:?}")],
                Err(err) => vec![err.to_string(), format!("{err:?}")],
            };
            for shown in shown {
                assert!(!shown.contains("s3"), "{url} leaked: {shown}");
            }
        }
        assert_eq!(redact("redis://u:p@h:1/2?a=b@c"), "redis://***@h:1/2?a=b@c");
        assert_eq!(redact("memcached://h:1"), "memcached://h:1");
    }

    #[test]
    fn url_with_several_hosts_and_params_is_taken_apart() {
        let url = CacheUrl::parse("memcached://a:1,b:2/x?namespace=s%20p&t=5").unwrap();
        assert_eq!(url.scheme, "memcached");
        assert_eq!(url.hosts, vec!["a:1", "b:2"]);
        assert_eq!(url.path, "x");
        assert_eq!(
            url.params,
            vec![
                ("namespace".to_owned(), "s p".to_owned()),
                ("t".to_owned(), "5".to_owned())
            ]
        );
    }

    #[test]
    fn malformed_urls_are_clear_errors() {
        assert!(matches!(
            CacheUrl::parse("localhost:11211"),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            CacheUrl::parse("memcached://a,,b"),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            CacheUrl::parse("memory://?namespace=%zz"),
            Err(ConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Config::from_url("ftp://x"),
            Err(ConfigError::UnsupportedScheme { .. })
        ));
    }

    #[test]
    fn general_settings_come_from_the_url() {
        let config = Config::from_url(
            "memory://?namespace=shop&expiration=60&chunk_size=4096&force_encryption=yes&compression_level=9",
        )
        .unwrap();
        assert_eq!(config.namespace_str(), Some("shop"));
        assert_eq!(config.default_expiration, Duration::from_secs(60));
        assert_eq!(config.chunk_size, 4096);
        assert!(config.force_encryption);
        assert_eq!(config.compression_level, 9);
    }

    #[test]
    fn bad_settings_are_rejected_not_ignored() {
        for url in [
            "memory://?expiration=soon",
            "memory://?chunk_size=10",
            "memory://?force_encryption=maybe",
            "memory://?compression_level=11",
        ] {
            assert!(
                matches!(Config::from_url(url), Err(ConfigError::InvalidValue { .. })),
                "{url}"
            );
        }
        assert!(matches!(
            Config::from_url("memory://?colour=blue"),
            Err(ConfigError::UnknownParameter { .. })
        ));
    }

    #[test]
    fn environment_variables_configure_everything() {
        let vars = |name: &str| match name {
            "MEMO_CACHE_URL" => Some("memory://".to_owned()),
            "MEMO_NAMESPACE" => Some("env-ns".to_owned()),
            "MEMO_DEFAULT_EXPIRATION" => Some("120".to_owned()),
            "MEMO_FORCE_ENCRYPTION" => Some("true".to_owned()),
            "MEMO_ENCRYPTION_KEY" => Some("000102030405060708090a0b0c0d0e0f".to_owned()),
            _ => None,
        };
        let config = Config::from_vars(vars).unwrap();
        assert_eq!(config.namespace_str(), Some("env-ns"));
        assert_eq!(config.default_expiration, Duration::from_secs(120));
        assert!(config.force_encryption);
        assert!(config.encryption_key.is_some());
    }

    #[test]
    fn malformed_environment_names_the_variable() {
        let err = Config::from_vars(|name| {
            (name == "MEMO_DEFAULT_EXPIRATION").then(|| "later".to_owned())
        })
        .unwrap_err();
        assert!(err.to_string().contains("MEMO_DEFAULT_EXPIRATION"), "{err}");
        let err =
            Config::from_vars(|name| (name == "MEMO_ENCRYPTION_KEY").then(|| "abc".to_owned()))
                .unwrap_err();
        assert!(err.to_string().contains("MEMO_ENCRYPTION_KEY"), "{err}");
        assert!(
            !err.to_string().contains("abc"),
            "keys are never echoed: {err}"
        );
    }

    #[test]
    fn unset_features_say_which_feature_to_enable() {
        #[cfg(not(feature = "memcached"))]
        assert!(matches!(
            Config::from_url("memcached://127.0.0.1:11211"),
            Err(ConfigError::FeatureDisabled {
                feature: "memcached",
                ..
            })
        ));
        #[cfg(not(feature = "redis"))]
        assert!(matches!(
            Config::from_url("redis://127.0.0.1:6379"),
            Err(ConfigError::FeatureDisabled {
                feature: "redis",
                ..
            })
        ));
    }
}
