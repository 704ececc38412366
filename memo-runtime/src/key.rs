//! Cache keys: how a key given by the caller becomes the key the backend
//! stores, byte for byte as Djblets' `make_cache_key` builds it.
//!
//! 1. A single string is used as is. A sequence of two or more components
//!    has `%` escaped as `%25` and `:` as `%3A` in each component, and the
//!    components are joined with `:`, so no caller-supplied component can
//!    forge a separator (`["a:b"]`-style input can never collide with
//!    `["a", "b"]`). A one-component sequence is used as is.
//! 2. The namespace, if configured, is prefixed with `:`.
//! 3. With encryption, the result is replaced by its hex HMAC-SHA256 under
//!    the encryption key: the cache never sees a readable key.
//! 4. Without encryption, each character from `\x00` to `\x20` and `\x7f`
//!    becomes the four characters `\xNN` (and so does `\`, see below), and a key longer than 240 bytes
//!    keeps its longest prefix of at most 176 bytes that ends on a character
//!    boundary, followed by the 64 hex digits of the SHA-256 of the whole
//!    key. Keys therefore always satisfy memcached's rules (at most 250
//!    bytes, no spaces or control characters).
//!
//! One deliberate difference from Djblets: a backslash is escaped too (as
//! `\x5c`). Djblets leaves it alone, which makes the key `"a b"` and the key
//! `"a\x20b"` (a literal backslash) the same stored key, so one caller could
//! receive another's value. Escaping the escape character makes the rule
//! injective; keys without a backslash are unaffected.
//!
//! Derived keys (see `chunk_key` and [`lock_key`]) extend a full key:
//! `{key}-{write id}-{n}` for the chunks of one write, `_lock_:{key}` for
//! its lock. They are kept within 250 bytes the same way.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::crypto::{EncryptionKey, hex};

/// memcached's hard limit on key length, in bytes.
pub const MEMCACHED_MAX_KEY: usize = 250;
/// Keys longer than this are shortened with a hash (Djblets' rule).
pub const MAX_KEY: usize = 240;
/// What a shortened key keeps of its start: 240 bytes less the 64 hex
/// digits of the hash.
const KEEP_PREFIX: usize = MAX_KEY - 64;

/// A key as the caller gives it: one raw string, or a sequence of
/// components that memo escapes and joins.
///
/// ```
/// use memo_runtime::CacheKey;
///
/// let raw = CacheKey::from("user:42");
/// let parts = CacheKey::from(["user", "42"]);
/// assert_eq!(raw.normalized(), "user:42");
/// assert_eq!(parts.normalized(), "user:42");
/// // A component cannot forge a separator:
/// assert_eq!(CacheKey::from(["user:42", "x"]).normalized(), "user%3A42:x");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// One string, used as is.
    Raw(String),
    /// Components, escaped and joined with `:`.
    Parts(Vec<String>),
}

impl CacheKey {
    /// The key before namespacing, escaping and hashing: the string itself,
    /// the only component, or the escaped components joined with `:`.
    pub fn normalized(&self) -> Cow<'_, str> {
        match self {
            CacheKey::Raw(key) => Cow::Borrowed(key),
            CacheKey::Parts(parts) if parts.len() == 1 => Cow::Borrowed(&parts[0]),
            CacheKey::Parts(parts) => {
                let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(':');
                    }
                    escape_component(part, &mut out);
                }
                Cow::Owned(out)
            }
        }
    }
}

fn escape_component(part: &str, out: &mut String) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

impl From<&str> for CacheKey {
    fn from(key: &str) -> Self {
        CacheKey::Raw(key.to_owned())
    }
}

impl From<String> for CacheKey {
    fn from(key: String) -> Self {
        CacheKey::Raw(key)
    }
}

impl From<&String> for CacheKey {
    fn from(key: &String) -> Self {
        CacheKey::Raw(key.clone())
    }
}

impl From<&CacheKey> for CacheKey {
    fn from(key: &CacheKey) -> Self {
        key.clone()
    }
}

impl<const N: usize> From<[&str; N]> for CacheKey {
    fn from(parts: [&str; N]) -> Self {
        CacheKey::Parts(parts.iter().map(|p| (*p).to_owned()).collect())
    }
}

impl<const N: usize> From<[String; N]> for CacheKey {
    fn from(parts: [String; N]) -> Self {
        CacheKey::Parts(parts.into())
    }
}

impl From<&[&str]> for CacheKey {
    fn from(parts: &[&str]) -> Self {
        CacheKey::Parts(parts.iter().map(|p| (*p).to_owned()).collect())
    }
}

impl From<&[String]> for CacheKey {
    fn from(parts: &[String]) -> Self {
        CacheKey::Parts(parts.to_vec())
    }
}

impl From<Vec<String>> for CacheKey {
    fn from(parts: Vec<String>) -> Self {
        CacheKey::Parts(parts)
    }
}

impl From<Vec<&str>> for CacheKey {
    fn from(parts: Vec<&str>) -> Self {
        CacheKey::Parts(parts.into_iter().map(str::to_owned).collect())
    }
}

/// The full key as stored: namespaced, then hashed under `encryption` if
/// given, else escaped and shortened to memcached's rules.
pub(crate) fn full_key(
    namespace: Option<&str>,
    key: &CacheKey,
    encryption: Option<&EncryptionKey>,
) -> String {
    let normalized = key.normalized();
    let namespaced: Cow<'_, str> = match namespace {
        Some(ns) => Cow::Owned(format!("{ns}:{normalized}")),
        None => normalized,
    };
    match encryption {
        Some(enc) => enc.hash_key(&namespaced),
        None => shorten(escape_for_memcached(&namespaced).into_owned(), MAX_KEY, 0),
    }
}

/// Replaces each character from `\x00` to `\x20` and `\x7f` with `\xNN`.
fn escape_for_memcached(key: &str) -> Cow<'_, str> {
    if !key.chars().any(needs_escape) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 16);
    for c in key.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c <= '\x20' || c == '\x7f' || c == '\\'
}

/// Shortens `key` to at most `limit` bytes: keeps its longest prefix (on a
/// character boundary) that leaves room for 64 hex digits of its SHA-256 and
/// `reserve` more bytes.
fn shorten(key: String, limit: usize, reserve: usize) -> String {
    if key.len() <= limit {
        return key;
    }
    let digest = hex(&Sha256::digest(key.as_bytes()));
    let mut keep = (limit - 64).min(KEEP_PREFIX).saturating_sub(reserve);
    while !key.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut out = String::with_capacity(keep + 64);
    out.push_str(&key[..keep]);
    out.push_str(&digest);
    out
}

/// The key of chunk `index` of the write `write_id` of `full_key`.
///
/// The write id makes every write's chunks distinct, so a reader can never
/// stitch together chunks of two different writes of the same key.
pub(crate) fn chunk_key(full_key: &str, write_id: &str, index: u32) -> String {
    let suffix = format!("-{write_id}-{index}");
    derived(full_key, "", &suffix)
}

/// The key of the lock of `full_key`.
pub fn lock_key(full_key: &str) -> String {
    derived(full_key, "_lock_:", "")
}

fn derived(full_key: &str, prefix: &str, suffix: &str) -> String {
    let extra = prefix.len() + suffix.len();
    let base = if full_key.len() + extra <= MEMCACHED_MAX_KEY {
        Cow::Borrowed(full_key)
    } else {
        Cow::Owned(shorten(full_key.to_owned(), MEMCACHED_MAX_KEY - extra, 0))
    };
    format!("{prefix}{base}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns(key: impl Into<CacheKey>) -> String {
        full_key(Some("example.com"), &key.into(), None)
    }

    #[test]
    fn components_are_escaped_and_joined() {
        assert_eq!(
            ns(["%test%", "%1:2:3%"]),
            "example.com:%25test%25:%251%3A2%3A3%25"
        );
    }

    #[test]
    fn a_single_string_or_component_is_used_as_is() {
        assert_eq!(ns("a:b%c"), "example.com:a:b%c");
        assert_eq!(ns(["a:b%c"]), "example.com:a:b%c");
        assert_eq!(full_key(None, &"plain".into(), None), "plain");
    }

    #[test]
    fn long_keys_keep_a_prefix_and_a_hash() {
        let key = ns("x".repeat(229));
        assert_eq!(
            key,
            format!(
                "example.com:{}edf8474a1b91e737ec28252abe7a8aa5604539b239505e8ccad8890a44198c58",
                "x".repeat(164)
            )
        );
        assert_eq!(key.len(), MAX_KEY);
        // 228 x's make exactly 240 bytes, which is still allowed.
        assert_eq!(ns("x".repeat(228)).len(), 240);
        assert!(ns("x".repeat(228)).ends_with("xxx"));
    }

    #[test]
    fn long_keys_cut_on_a_character_boundary() {
        let key = ns("é".repeat(200));
        assert!(key.len() <= MAX_KEY);
        assert!(key.starts_with("example.com:é"));
    }

    #[test]
    fn control_characters_and_spaces_are_escaped() {
        assert_eq!(ns("a b\tc\x7fd\0"), "example.com:a\\x20b\\x09c\\x7fd\\x00");
    }

    #[test]
    fn escaped_text_cannot_collide_with_the_character_it_stands_for() {
        assert_ne!(ns("a b"), ns("a\\x20b"));
        assert_eq!(ns("a\\b"), "example.com:a\\x5cb");
    }

    #[test]
    fn encrypted_keys_are_hmacs_of_the_full_key() {
        let enc = EncryptionKey::new(b"0123456789abcdef").unwrap();
        assert_eq!(
            full_key(Some("example.com"), &"abc123".into(), Some(&enc)),
            "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9"
        );
    }

    #[test]
    fn derived_keys_fit_memcached() {
        let long = ns("y".repeat(500));
        let chunk = chunk_key(&long, "0123456789abcdef", u32::MAX);
        assert!(chunk.len() <= MEMCACHED_MAX_KEY, "{}", chunk.len());
        assert!(chunk.ends_with("-0123456789abcdef-4294967295"));
        assert_ne!(chunk_key(&long, "a", 1), chunk_key(&long, "b", 1));
        assert_eq!(lock_key("k"), "_lock_:k");
        assert!(lock_key(&long).len() <= MEMCACHED_MAX_KEY);
    }

    proptest! {
        #[test]
        fn distinct_component_sequences_never_share_a_key(
            a in proptest::collection::vec(".{0,12}", 2..5),
            b in proptest::collection::vec(".{0,12}", 2..5),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(ns(a), ns(b));
        }

        #[test]
        fn every_key_fits_memcached_rules(parts in proptest::collection::vec(any::<String>(), 0..6)) {
            let key = ns(parts);
            prop_assert!(key.len() <= MAX_KEY);
            prop_assert!(!key.chars().any(|c| c <= '\x20' || c == '\x7f'));
        }

        #[test]
        fn distinct_raw_keys_never_share_a_key(a in "[a-z \\\\x0-9\t]{0,300}", b in "[a-z \\\\x0-9\t]{0,300}") {
            prop_assume!(a != b);
            prop_assert_ne!(ns(a), ns(b));
        }
    }
}
