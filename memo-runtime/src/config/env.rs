//! [`Config::from_env`]: the settings from `MEMO_*` environment variables.

use super::Config;
use crate::backend::MemoryBackend;
use crate::common::error::ConfigError;
use crate::format::crypto::EncryptionKey;

/// Each variable and the URL setting it stands for.
const ENV_SETTINGS: &[(&str, &str)] = &[
    ("MEMO_NAMESPACE", "namespace"),
    ("MEMO_DEFAULT_EXPIRATION", "expiration"),
    ("MEMO_CHUNK_SIZE", "chunk_size"),
    ("MEMO_FORCE_ENCRYPTION", "force_encryption"),
];

impl Config {
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
