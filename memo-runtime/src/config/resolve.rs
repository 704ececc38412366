//! How a call's key and encryption follow from the configuration: one rule
//! for memoized values and for locks alike.
//!
//! A call is encrypted when the configuration forces encryption or the call
//! asks for it; it then uses the call's own key, else the configuration's,
//! else a random key made once per process. Its keys are namespaced, then
//! hashed under that key, or escaped and shortened (see `format::key`).

use std::sync::OnceLock;

use super::Config;
use crate::format::crypto::EncryptionKey;
use crate::format::key::{CacheKey, Derived, EntryKey};

/// The key encrypted calls use when neither the call nor the configuration
/// names one: random, made once per process.
static PROCESS_KEY: OnceLock<EncryptionKey> = OnceLock::new();

/// A call's keys and the encryption key it uses, if it encrypts.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The keys the entry is stored under and bound to.
    pub(crate) key: EntryKey,
    /// The key values are sealed with; `None` in the clear.
    pub(crate) encryption: Option<EncryptionKey>,
}

impl Config {
    /// Resolves `key` for a call that asks for encryption with `encrypt`
    /// (`None`: as the configuration says) under `explicit` (`None`: the
    /// configuration's key).
    pub(crate) fn resolve(
        &self,
        key: CacheKey,
        encrypt: Option<bool>,
        explicit: Option<&EncryptionKey>,
    ) -> Resolved {
        let encryption = self.encryption_for(encrypt, explicit);
        Resolved {
            key: EntryKey::from_owned(self.namespace.as_deref(), key, encryption.as_ref()),
            encryption,
        }
    }

    /// The key a call that asks for encryption with `encrypt` under
    /// `explicit` seals with; `None` in the clear (see [`Config::resolve`]).
    pub(crate) fn encryption_for(
        &self,
        encrypt: Option<bool>,
        explicit: Option<&EncryptionKey>,
    ) -> Option<EncryptionKey> {
        let encrypted = self.force_encryption || encrypt == Some(true);
        encrypted.then(|| self.effective_key(explicit))
    }

    /// The key of `tag`'s current version for a call that resolved its
    /// encryption to `encryption`: the tag resolved as a key, then derived
    /// (`\T`), so no tag key equals an entry's or another derived key.
    pub(crate) fn tag_key(&self, tag: &str, encryption: Option<&EncryptionKey>) -> String {
        EntryKey::from_owned(
            self.namespace.as_deref(),
            CacheKey::from(tag.to_owned()),
            encryption,
        )
        .derived(Derived::Tag)
    }

    /// The key an encrypted call uses.
    fn effective_key(&self, explicit: Option<&EncryptionKey>) -> EncryptionKey {
        explicit
        .or(self.encryption_key.as_ref())
        .cloned()
        .unwrap_or_else(|| {
            PROCESS_KEY
                .get_or_init(|| {
                    crate::common::diag::warning!(
                        "memo: encrypting without a configured key; using a random per-process key, so other processes cannot read these values (set Config::encryption_key or MEMO_ENCRYPTION_KEY)"
                    );
                    EncryptionKey::generate()
                })
                .clone()
        })
    }
}
