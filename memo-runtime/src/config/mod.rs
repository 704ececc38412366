//! The configuration: which backend, which namespace, which defaults.
//!
//! - this file: [`Config`], a builder whose getters read what was built;
//! - `url`: [`Config::from_url`], the scheme picking the backend;
//! - `env`: [`Config::from_env`], the same from environment variables;
//! - `resolve`: how a call's key and encryption follow from the
//!   configuration, one rule for values and locks alike;
//! - `global`: the slot [`configure`] fills and [`config`] reads.
//!
//! A service configures memo once at startup with [`configure`]; every
//! memoized call then reads the current configuration through [`config`].
//! Calling [`configure`] again replaces it for every later call (calls in
//! flight finish with the configuration they started with). Without any
//! `configure` call, memo uses an embedded [`MemoryBackend`](crate::MemoryBackend).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
use crate::backend::AsyncBackend;
use crate::backend::Backend;
use crate::common::counters::Counters;
use crate::format::crypto::EncryptionKey;

mod env;
mod global;
mod resolve;
mod url;

pub use crate::common::error::ConfigError;
pub use crate::common::url::CacheUrl;
pub use global::{config, configure, stats};
pub(crate) use global::{current, generation};
pub(crate) use resolve::Resolved;

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

/// The default budget of the local copies ([`Config::local_capacity`]):
/// 64 MiB.
pub const DEFAULT_LOCAL_CAPACITY: u64 = 64 << 20;

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
/// assert_eq!(memo_runtime::config().get_namespace(), Some("shop"));
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
    /// The byte budget of the local copies (`Options::local`).
    pub(crate) local_capacity: u64,
    /// The same engine for async callers: its own non-blocking client when
    /// it has one (`Backend::__async`), else its blocking calls run on
    /// tokio's blocking pool.
    #[cfg(feature = "async")]
    pub(crate) async_backend: Arc<dyn AsyncBackend>,
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
            #[cfg(feature = "async")]
            async_backend: Arc::clone(&backend).__async().unwrap_or_else(|| {
                Arc::new(crate::backend::world::SpawnBlocking(Arc::clone(&backend)))
            }),
            local_capacity: DEFAULT_LOCAL_CAPACITY,
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

    /// A configuration on an async-only engine, with every default of
    /// [`Config::new`].
    ///
    /// Async calls use it directly. Synchronous calls on such a
    /// configuration still work: each backend call is run on one small
    /// background runtime thread that memo starts on first use, shared by
    /// every such configuration, and the calling thread waits for it. The
    /// caller's own executor is never asked to run it, so a sync call from
    /// inside async code cannot deadlock, though it does block that thread
    /// for the call, as any sync call would.
    #[cfg(feature = "async")]
    pub fn new_async(backend: impl AsyncBackend) -> Self {
        let backend: Arc<dyn AsyncBackend> = Arc::new(backend);
        Self::with_shared_backend(Arc::new(crate::backend::world::OnBackground(backend)))
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

    /// The budget, in bytes, of the values that calls with
    /// [`Options::local`](crate::Options::local) keep in this process
    /// (64 MiB by default). Each copy is charged the size of its value as
    /// stored plus a small overhead; past the budget the least useful copies
    /// are dropped (they are read from the backend again on the next call).
    pub fn local_capacity(mut self, bytes: u64) -> Self {
        self.local_capacity = bytes;
        self
    }

    /// The counters since this configuration was installed.
    pub(crate) fn stats(&self) -> crate::Stats {
        self.counters.snapshot()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    // The getters are named `get_*` because the builder took the plain
    // names first (`Config::new(b).namespace("x")` is the contract), as
    // `std::process::Command` pairs `arg` with `get_args`.

    /// The namespace, if any.
    pub fn get_namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The expiration used when a call sets none.
    pub fn get_default_expiration(&self) -> Duration {
        self.default_expiration
    }

    /// Whether every call is encrypted.
    pub fn get_force_encryption(&self) -> bool {
        self.force_encryption
    }

    /// The chunk size in bytes.
    pub fn get_chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// The zlib level of compressed values.
    pub fn get_compression_level(&self) -> u8 {
        self.compression_level
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::url::redact;

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
        assert_eq!(config.get_namespace(), Some("shop"));
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
        assert_eq!(config.get_namespace(), Some("env-ns"));
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
