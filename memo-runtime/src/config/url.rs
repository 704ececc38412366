//! [`Config::from_url`]: the general settings from the query, the backend
//! from the scheme.

use std::sync::Arc;
use std::time::Duration;

use super::{Config, MIN_CHUNK_SIZE};
use crate::backend::{Backend, MemoryBackend};
use crate::common::error::ConfigError;
use crate::common::url::{CacheUrl, GENERAL_PARAMS, parse_bool};

impl Config {
    /// A configuration from a URL naming the backend and, in its query, the
    /// settings:
    ///
    /// - `memory://` (optionally `?max_bytes=N`): the embedded backend.
    /// - `memcached://host:port[,host:port...]`: memcached servers (cargo
    ///   feature `memcached`), with the backend's own parameters such as
    ///   timeouts (see `MemcachedBackend::from_url`).
    /// - `redis://host:port[/db]`: a Redis server (cargo feature `redis`).
    /// - `redis+sentinel://host:port[,host:port...]/SERVICE`: the master of
    ///   a Redis Sentinel service, followed through failovers, with `db`,
    ///   `sentinel_username` and `sentinel_password` parameters (see
    ///   `RedisBackend::sentinel`).
    /// - `redis+cluster://host:port[,host:port...]`, or `redis://...` with
    ///   `cluster=true`: a Redis Cluster, found from any of the nodes given
    ///   (see `RedisClusterBackend`).
    /// - `memcacheds://...`, `rediss://...`, `rediss+sentinel://...` and
    ///   `rediss+cluster://...`: the
    ///   same over TLS (cargo feature `tls` too), with `ca=PATH` for a
    ///   private CA, `cert=PATH&key=PATH` for a client certificate,
    ///   `insecure=true` to skip verification (see `TlsConfig`).
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
    /// assert_eq!(config.get_namespace(), Some("shop"));
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
            "memcached" | "memcacheds" => memcached_from_url(&backend_url)?,
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel"
            | "rediss+sentinel" => redis_from_url(&backend_url)?,
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

    pub(super) fn apply_setting(self, name: &str, value: &str) -> Result<Config, ConfigError> {
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

#[cfg(feature = "memcached")]
fn memcached_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Ok(Arc::new(
        crate::backend::memcached::MemcachedBackend::from_url_parts(url)?,
    ))
}

#[cfg(not(feature = "memcached"))]
fn memcached_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Err(feature_disabled(url, "memcached"))
}

#[cfg(feature = "redis")]
fn redis_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    use crate::backend::redis::{RedisBackend, cluster::RedisClusterBackend};
    if url.scheme.ends_with("+sentinel") {
        return Ok(Arc::new(RedisBackend::from_sentinel_url(url)?));
    }
    let mut cluster = url.scheme.ends_with("+cluster");
    for (name, value) in url.params.iter().filter(|(name, _)| name == "cluster") {
        cluster = parse_bool(value)
            .ok_or_else(|| url.invalid_value(name, value, "expected true or false"))?;
    }
    // The backends see the URL without the parameter that chose them.
    let url = CacheUrl {
        params: url
            .params
            .iter()
            .filter(|(name, _)| name != "cluster")
            .cloned()
            .collect(),
        ..url.clone()
    };
    if cluster {
        return Ok(Arc::new(RedisClusterBackend::from_url_parts(&url)?));
    }
    Ok(Arc::new(RedisBackend::from_url_parts(&url)?))
}

#[cfg(not(feature = "redis"))]
fn redis_from_url(url: &CacheUrl) -> Result<Arc<dyn Backend>, ConfigError> {
    Err(feature_disabled(url, "redis"))
}

/// The error for a scheme whose backend is behind a cargo feature that is
/// off.
#[cfg(not(all(feature = "memcached", feature = "redis")))]
fn feature_disabled(url: &CacheUrl, feature: &'static str) -> ConfigError {
    ConfigError::FeatureDisabled {
        scheme: url.scheme.clone(),
        feature,
    }
}
