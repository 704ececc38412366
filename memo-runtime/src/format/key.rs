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
//! The stored key is what the backend sees; what a stored envelope is bound
//! to is the caller's *full* key, step 2's result before any escaping,
//! shortening or hashing (see `format::envelope`), so two keys that
//! share a stored key never read each other's values.
//!
//! One deliberate difference from Djblets: a backslash is escaped too (as
//! `\x5c`). Djblets leaves it alone, which makes the key `"a b"` and the key
//! `"a\x20b"` (a literal backslash) the same stored key, so one caller could
//! receive another's value. Escaping the escape character makes the rule
//! injective; keys without a backslash are unaffected.
//!
//! # Derived keys
//!
//! Besides the entry itself, memo stores a lock and, for chunked values and
//! iterators, data chunks and index chunks. Their keys come from one
//! function, [`EntryKey::derived`] (and [`lock_key`] for a lock), built as
//!
//! ```text
//! {prefix}\{MARKER}{tag}:{stored key, prefix removed}
//! ```
//!
//! - `prefix` is the escaped namespace and `:` when a namespace is set, the
//!   stored key starts with it (encryption off) and it is at most
//!   [`MAX_DERIVED_PREFIX`] bytes; otherwise it is empty. So with a namespace
//!   and no encryption every key memo stores starts with `namespace:`, and an
//!   encrypted deployment shows nothing readable, not even the namespace.
//! - `MARKER` is an uppercase letter: `L` for the lock, `V` for the
//!   entry's version key and `T` for a tag's key (both hold a token, see
//!   `format::guard`; a tag's key is derived from the tag resolved as a key),
//!   `C` for data chunk
//!   `n` of write `w` (tag `{w}-{n}`), `I` for index chunk `n` at level `l`
//!   of write `w` (tag `{w}-{l}.{n}`). The write id is 16 lowercase hex
//!   digits, `n` and `l` are decimal.
//! - For the key `job` in the namespace `shop`: `shop:\L:job` (lock),
//!   `shop:\V:job` (version), `shop:\T:job` (the tag `job`),
//!   `shop:\C0123456789abcdef-7:job` (data chunk 7),
//!   `shop:\I0123456789abcdef-1.0:job` (the first index chunk of level 1);
//!   encrypted, `\L:` and the 64 hex digits of the stored key.
//! - When the result would exceed 250 bytes, the `:` after the tag becomes
//!   `;` and the stored key part keeps its longest prefix that fits (on a
//!   character boundary) followed by the 64 hex digits of the SHA-256 of
//!   the derived key before shortening: prefix and marker always survive,
//!   and a shortened derived key never equals an unshortened one.
//!
//! No derived key can equal a key a caller can produce: in a caller's
//! stored key a backslash only ever starts an escape (`\x` and two
//! lowercase hex digits) or, at a shortening cut, is followed by lowercase
//! hex digits of the digest, and an encrypted key is 64 lowercase hex
//! digits; a derived key always holds a backslash followed by an uppercase
//! letter. Two derived keys of different kinds differ in their marker, and
//! within a kind the tag and the rest are read back unambiguously (the tag
//! ends at the first `:` or `;`), so derived keys never collide with one another
//! either (short of a SHA-256 collision). Derived keys follow memcached's
//! rules like stored keys: at most 250 bytes, no space or control
//! character.

use std::borrow::Cow;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::common::MAX_KEY_LEN;
use crate::format::crypto::{EncryptionKey, hex};

/// Keys longer than this are shortened with a hash (Djblets' rule).
pub(crate) const MAX_KEY: usize = 240;
/// What a shortened key keeps of its start: 240 bytes less the 64 hex
/// digits of the hash.
const KEEP_PREFIX: usize = MAX_KEY - 64;

/// A key as the caller gives it: one raw string, or a sequence of
/// components that memo escapes and joins.
///
/// The stored key is Djblets' `make_cache_key`: the namespace and `:`
/// first; then, when the call encrypts, the hex HMAC-SHA256 of the whole
/// under the encryption key; otherwise the characters `\x00`-`\x20`, `\x7f`
/// and `\` escaped as `\xNN`, and a key over 240 bytes cut to its first
/// 176 bytes (on a character boundary) followed by the 64 hex digits of its
/// SHA-256. Locks and the chunks of large values are stored under keys
/// derived from the stored key (`namespace:\L:...`, `namespace:\C...`)
/// that no caller's key can equal.
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
#[non_exhaustive]
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
                self.write_normalized(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Appends [`normalized`](Self::normalized) to `out`, without building
    /// it on its own first.
    /// The key as one string: a raw key as it is, components escaped and
    /// joined (what the namespace is put in front of).
    pub(crate) fn joined(self) -> String {
        match self {
            CacheKey::Raw(key) => key,
            parts => {
                let mut out = String::new();
                parts.write_normalized(&mut out);
                out
            }
        }
    }

    fn write_normalized(&self, out: &mut String) {
        match self {
            CacheKey::Raw(key) => out.push_str(key),
            CacheKey::Parts(parts) if parts.len() == 1 => out.push_str(&parts[0]),
            CacheKey::Parts(parts) => {
                for (i, part) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(':');
                    }
                    escape_component(part, out);
                }
            }
        }
    }

    /// An upper bound on the normalized key's length, short of escapes.
    fn normalized_len_hint(&self) -> usize {
        match self {
            CacheKey::Raw(key) => key.len(),
            CacheKey::Parts(parts) => parts.iter().map(|p| p.len() + 1).sum(),
        }
    }
}

fn escape_component(part: &str, out: &mut String) {
    // Both escaped characters are ASCII, and no byte of a multi-byte
    // character is, so a byte scan finds them: much faster on every key
    // than `contains` with a set of `char`s, which decodes each character.
    let bytes = part.as_bytes();
    if !bytes.iter().any(|&byte| byte == b'%' || byte == b':') {
        out.push_str(part);
        return;
    }
    let mut run = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escaped = match byte {
            b'%' => "%25",
            b':' => "%3A",
            _ => continue,
        };
        // `run..at` lies between ASCII bytes (or the ends): whole characters.
        out.push_str(&part[run..at]);
        out.push_str(escaped);
        run = at + 1;
    }
    out.push_str(&part[run..]);
}

/// A key of two or more components built in one string, as
/// [`CacheKey::Parts`] would normalize it: what `#[cache_memoize]`'s
/// expansion builds, so that a call allocates one string for its key
/// rather than one per component and a vector. Not a public API.
#[doc(hidden)]
#[derive(Debug, Default)]
#[must_use]
pub struct KeyParts {
    joined: String,
    any: bool,
}

impl KeyParts {
    /// No components yet.
    #[inline]
    pub fn new() -> KeyParts {
        KeyParts {
            joined: String::with_capacity(64),
            any: false,
        }
    }

    #[inline]
    fn separate(&mut self) {
        if self.any {
            self.joined.push(':');
        }
        self.any = true;
    }

    /// Appends a component given as text.
    #[inline]
    pub fn text(&mut self, part: &str) -> &mut KeyParts {
        self.separate();
        escape_component(part, &mut self.joined);
        self
    }

    /// Appends one or more components the attribute's expansion escaped
    /// and joined with `:` when it was compiled (the template's literal
    /// text, the function's name, the version): no scan at run time.
    /// `joined` must already be in that form; anything else only changes
    /// the caller's own keys.
    #[inline]
    pub fn escaped(&mut self, joined: &'static str) -> &mut KeyParts {
        self.separate();
        self.joined.push_str(joined);
        self
    }

    /// Appends a component given as a value's `Display`, as its
    /// `to_string()` would read.
    #[inline]
    pub fn display<T: std::fmt::Display + ?Sized>(&mut self, part: &T) -> &mut KeyParts {
        self.separate();
        // Writing into a String cannot fail; a `Display` that reports an
        // error leaves what it wrote, as `to_string` would have panicked.
        let _ = write!(EscapeComponent(&mut self.joined), "{part}");
        self
    }

    /// Appends what `append` does: the attribute's expansion appends an
    /// argument through [`KeyArg`] this way, within its chain of calls.
    #[inline]
    pub fn append(&mut self, append: impl FnOnce(&mut KeyParts)) -> &mut KeyParts {
        append(self);
        self
    }

    /// Appends a component given as an integer: `-` when `negative`, then
    /// the digits of `magnitude`, as the integer's `to_string()` reads.
    #[inline]
    pub fn integer(&mut self, negative: bool, magnitude: u64) -> &mut KeyParts {
        self.separate();
        let mut buf = [0u8; 20];
        let digits = crate::common::decimal(magnitude, &mut buf);
        if negative {
            self.joined.push('-');
        }
        // ASCII digits: always UTF-8.
        self.joined
            .push_str(std::str::from_utf8(digits).unwrap_or_default());
        self
    }

    /// The key: the components escaped and joined with `:`. Meant for two
    /// or more components; a single one would be escaped, where
    /// [`CacheKey::Parts`] keeps a lone component as it is. The string is
    /// taken, leaving no components: the builder is borrowed throughout
    /// (`KeyParts::new().escaped(..).finish()`) because a builder moved
    /// from call to call was copied through the stack at each, and one
    /// such copy stalled every call on reading what it had just written.
    #[inline]
    pub fn finish(&mut self) -> CacheKey {
        CacheKey::Raw(std::mem::take(&mut self.joined))
    }
}

/// A key argument the attribute's expansion appends to a [`KeyParts`]:
/// `(&KeyArg(&value)).append_to(parts)` finds [`AppendInteger`] for a
/// value of a primitive integer type up to 64 bits, whose digits are
/// written directly, and [`AppendDisplay`] (one reference further) for
/// anything else `Display`. Both write what `to_string()` would. Not a
/// public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct KeyArg<'a, T: ?Sized>(pub &'a T);

/// Appends an integer key argument as its decimal digits, without the
/// formatting machinery (and without escaping, which digits and `-` never
/// need). Not a public API.
#[doc(hidden)]
pub trait AppendInteger {
    /// Appends the argument as a component.
    fn append_to(&self, parts: &mut KeyParts);
}

/// Appends any `Display` key argument, as [`KeyParts::display`]. Not a
/// public API.
#[doc(hidden)]
pub trait AppendDisplay {
    /// Appends the argument as a component.
    fn append_to(&self, parts: &mut KeyParts);
}

impl<T: std::fmt::Display + ?Sized> AppendDisplay for &KeyArg<'_, T> {
    #[inline]
    fn append_to(&self, parts: &mut KeyParts) {
        parts.display(self.0);
    }
}

macro_rules! append_signed {
    ($($int:ty),* $(,)?) => {$(
        impl AppendInteger for KeyArg<'_, $int> {
            #[inline]
            fn append_to(&self, parts: &mut KeyParts) {
                let value = i64::from(*self.0);
                parts.integer(value < 0, value.unsigned_abs());
            }
        }
    )*};
}

macro_rules! append_unsigned {
    ($($int:ty),* $(,)?) => {$(
        impl AppendInteger for KeyArg<'_, $int> {
            #[inline]
            fn append_to(&self, parts: &mut KeyParts) {
                parts.integer(false, u64::from(*self.0));
            }
        }
    )*};
}

append_signed!(i8, i16, i32, i64);
append_unsigned!(u8, u16, u32, u64);

impl AppendInteger for KeyArg<'_, usize> {
    #[inline]
    fn append_to(&self, parts: &mut KeyParts) {
        match u64::try_from(*self.0) {
            Ok(value) => parts.integer(false, value),
            Err(_) => parts.display(self.0),
        };
    }
}

impl AppendInteger for KeyArg<'_, isize> {
    #[inline]
    fn append_to(&self, parts: &mut KeyParts) {
        match i64::try_from(*self.0) {
            Ok(value) => parts.integer(value < 0, value.unsigned_abs()),
            Err(_) => parts.display(self.0),
        };
    }
}

/// `fmt::Write` that escapes a component as it is written.
struct EscapeComponent<'a>(&'a mut String);

impl std::fmt::Write for EscapeComponent<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_component(s, self.0);
        Ok(())
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

/// The caller's full key: namespace, `:` and the normalized key, before
/// any escaping, shortening or hashing. Envelopes bind this, not the stored
/// key, so two keys that share a stored key (a long key's shortened form
/// and a raw key equal to it) read each other's entries as a miss.
pub(crate) fn full_key(namespace: Option<&str>, key: &CacheKey) -> String {
    // Built in one allocation: this runs on every memoized call.
    let mut full =
        String::with_capacity(namespace.map_or(0, |ns| ns.len() + 1) + key.normalized_len_hint());
    if let Some(ns) = namespace {
        full.push_str(ns);
        full.push(':');
    }
    key.write_normalized(&mut full);
    full
}

/// The full key as stored: namespaced, then hashed under `encryption` if
/// given, else escaped and shortened to memcached's rules.
#[cfg(test)]
fn stored_key_of(
    namespace: Option<&str>,
    key: &CacheKey,
    encryption: Option<&EncryptionKey>,
) -> String {
    stored_key(&full_key(namespace, key), encryption)
}

#[cfg(test)]
fn stored_key(full: &str, encryption: Option<&EncryptionKey>) -> String {
    stored_key_unless_full(full, encryption).unwrap_or_else(|| full.to_owned())
}

/// The stored key of `full`, or `None` when it is `full` itself (no
/// encryption, nothing to escape, short enough): the common case, which
/// then needs no second string.
fn stored_key_unless_full(full: &str, encryption: Option<&EncryptionKey>) -> Option<String> {
    match encryption {
        Some(enc) => Some(enc.hash_key(full)),
        None => match escape_for_memcached(full) {
            Cow::Borrowed(_) if full.len() <= MAX_KEY => None,
            escaped => Some(shorten(escaped.into_owned(), MAX_KEY)),
        },
    }
}

/// Replaces each character from `\x00` to `\x20`, `\x7f` and `\` with
/// `\xNN`.
fn escape_for_memcached(key: &str) -> Cow<'_, str> {
    // Every character escaped is ASCII, and no byte of a multi-byte
    // character is, so a byte scan finds the same (and faster).
    if !key
        .bytes()
        .any(|byte| byte <= 0x20 || byte == 0x7f || byte == b'\\')
    {
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
/// character boundary) of at most 176 bytes, followed by the 64 hex digits
/// of its SHA-256.
fn shorten(key: String, limit: usize) -> String {
    if key.len() <= limit {
        return key;
    }
    let digest = hex(&Sha256::digest(key.as_bytes()));
    let mut keep = (limit - 64).min(KEEP_PREFIX);
    while !key.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut out = String::with_capacity(keep + 64);
    out.push_str(&key[..keep]);
    out.push_str(&digest);
    out
}

/// The keys of one memoized entry: the key it is stored under, the full key
/// its envelopes are bound to, and the namespace prefix its derived keys
/// keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryKey {
    /// `None` when the stored key is the full key itself.
    stored: Option<String>,
    full: String,
    prefix_len: usize,
}

impl EntryKey {
    /// The keys of `key` under `namespace`, encrypted or not (tests; calls
    /// use [`EntryKey::from_owned`]).
    #[cfg(test)]
    pub(crate) fn new(
        namespace: Option<&str>,
        key: &CacheKey,
        encryption: Option<&EncryptionKey>,
    ) -> EntryKey {
        EntryKey::with_full(namespace, full_key(namespace, key), encryption)
    }

    /// [`EntryKey::new`] taking the key, whose string becomes the full key
    /// as it is when there is no namespace to prefix (one allocation fewer
    /// on every call).
    pub(crate) fn from_owned(
        namespace: Option<&str>,
        key: CacheKey,
        encryption: Option<&EncryptionKey>,
    ) -> EntryKey {
        let full = match (namespace, key) {
            (None, CacheKey::Raw(key)) => key,
            (namespace, key) => full_key(namespace, &key),
        };
        EntryKey::with_full(namespace, full, encryption)
    }

    fn with_full(
        namespace: Option<&str>,
        full: String,
        encryption: Option<&EncryptionKey>,
    ) -> EntryKey {
        let stored = stored_key_unless_full(&full, encryption);
        EntryKey {
            prefix_len: derived_prefix_len(namespace, stored.as_deref().unwrap_or(&full)),
            stored,
            full,
        }
    }

    /// An entry whose full key is its stored key (harnesses and tests).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn from_parts(namespace: Option<&str>, stored: &str, full: &str) -> EntryKey {
        EntryKey {
            prefix_len: derived_prefix_len(namespace, stored),
            stored: (stored != full).then(|| stored.to_owned()),
            full: full.to_owned(),
        }
    }

    /// The key the entry is stored under (what [`make_cache_key`](crate::make_cache_key) returns).
    pub(crate) fn stored(&self) -> &str {
        self.stored.as_deref().unwrap_or(&self.full)
    }

    /// The caller's full key, which envelopes bind.
    pub(crate) fn full(&self) -> &str {
        &self.full
    }

    /// The key of a derived item of this entry (see the module docs).
    pub(crate) fn derived(&self, kind: Derived<'_>) -> String {
        derived(self.stored(), self.prefix_len, kind)
    }
}

/// What a derived key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Derived<'a> {
    /// The entry's lock.
    Lock,
    /// The entry's version key, holding the token its value must be stored
    /// behind (`format::guard`).
    Version,
    /// A tag's key, derived from the tag resolved as a key, holding the
    /// token of the tag's current version.
    Tag,
    /// Data chunk `index` of the write with the hex id `write`.
    Chunk {
        /// The write id, 16 lowercase hex digits.
        write: &'a str,
        /// The chunk's position in the stream.
        index: u32,
    },
    /// Index chunk `index` at `level` (1 = lists data chunks) of a write.
    Index {
        /// The write id, 16 lowercase hex digits.
        write: &'a str,
        /// The level in the tree of digests, from 1.
        level: u32,
        /// The chunk's position within its level.
        index: u32,
    },
}

/// The longest namespace prefix (escaped namespace and `:`) derived keys
/// keep; a longer one leaves room for too little else within 250 bytes.
pub(crate) const MAX_DERIVED_PREFIX: usize = 140;

fn derived_prefix_len(namespace: Option<&str>, stored: &str) -> usize {
    let Some(ns) = namespace else { return 0 };
    let escaped = escape_for_memcached(ns);
    let len = escaped.len() + 1;
    let starts = stored
        .strip_prefix(&*escaped)
        .is_some_and(|rest| rest.starts_with(':'));
    if len <= MAX_DERIVED_PREFIX && starts {
        len
    } else {
        0
    }
}

/// The key of the lock of the entry stored under `stored_key` in
/// `namespace` (see the module docs).
pub(crate) fn lock_key(namespace: Option<&str>, stored_key: &str) -> String {
    derived(
        stored_key,
        derived_prefix_len(namespace, stored_key),
        Derived::Lock,
    )
}

/// What a key is placed by on a pool of servers, as two pieces to hash one
/// after the other: for an entry's version key (`{prefix}\\V:{rest}`), the
/// entry's own stored key (`{prefix}{rest}`), so that the two always share a
/// server and one request reads both; any other key places by itself. No
/// caller's key contains `\\V:` (a backslash there only starts a `\\xNN`
/// escape), so only a version key is read this way. A version key shortened
/// to fit (`\\V;`) places by itself.
#[cfg(feature = "memcached")]
pub(crate) fn placed_by(key: &str) -> (&str, &str) {
    if let Some(at) = key.find("\\V:") {
        let (prefix, tail) = key.split_at(at);
        if prefix.is_empty() || prefix.ends_with(':') {
            return (prefix, &tail[3..]);
        }
    }
    (key, "")
}

fn derived(stored: &str, prefix_len: usize, kind: Derived<'_>) -> String {
    let (prefix, rest) = stored.split_at(prefix_len);
    let mut head = String::with_capacity(prefix.len() + 40);
    head.push_str(prefix);
    // Write errors into a String cannot happen.
    let _ = match kind {
        Derived::Lock => write!(head, "\\L"),
        Derived::Version => write!(head, "\\V"),
        Derived::Tag => write!(head, "\\T"),
        Derived::Chunk { write, index } => write!(head, "\\C{write}-{index}"),
        Derived::Index {
            write,
            level,
            index,
        } => write!(head, "\\I{write}-{level}.{index}"),
    };
    if head.len() + 1 + rest.len() <= MAX_KEY_LEN {
        head.push(':');
        head.push_str(rest);
        return head;
    }
    // `;` rather than `:` marks a shortened rest, so that a shortened key
    // never equals another stored key's rest taken verbatim.
    head.push(';');
    let mut whole = Sha256::new();
    whole.update(head.as_bytes());
    whole.update(rest.as_bytes());
    let digest = hex(&whole.finalize());
    let mut keep = MAX_KEY_LEN.saturating_sub(head.len() + 64).min(rest.len());
    while !rest.is_char_boundary(keep) {
        keep -= 1;
    }
    head.push_str(&rest[..keep]);
    head.push_str(&digest);
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns(key: impl Into<CacheKey>) -> String {
        stored_key_of(Some("example.com"), &key.into(), None)
    }

    #[test]
    fn components_are_escaped_and_joined() {
        assert_eq!(
            ns(["%test%", "%1:2:3%"]),
            "example.com:%25test%25:%251%3A2%3A3%25"
        );
    }

    #[test]
    fn components_escape_byte_by_byte_as_character_by_character() {
        fn by_chars(part: &str) -> String {
            part.chars()
                .map(|c| match c {
                    '%' => "%25".to_owned(),
                    ':' => "%3A".to_owned(),
                    c => c.to_string(),
                })
                .collect()
        }
        for part in [
            "",
            "%",
            ":",
            "::",
            "%%",
            "a",
            "plain",
            "é:ü%",
            ":é",
            "é%",
            "%ユ:ー%",
            "𝄞:𝄞",
            "a:b%c:",
            "%3A",
            "100%",
            "x\u{7f}:\u{0}",
        ] {
            let mut out = String::from("prefix");
            escape_component(part, &mut out);
            assert_eq!(out, format!("prefix{}", by_chars(part)), "{part:?}");
        }
    }

    #[test]
    fn a_single_string_or_component_is_used_as_is() {
        assert_eq!(ns("a:b%c"), "example.com:a:b%c");
        assert_eq!(ns(["a:b%c"]), "example.com:a:b%c");
        assert_eq!(stored_key_of(None, &"plain".into(), None), "plain");
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
            stored_key_of(Some("example.com"), &"abc123".into(), Some(&enc)),
            "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9"
        );
    }

    fn entry(key: impl Into<CacheKey>) -> EntryKey {
        EntryKey::new(Some("example.com"), &key.into(), None)
    }

    const WRITE: &str = "0123456789abcdef";

    fn every_kind(entry: &EntryKey) -> Vec<String> {
        vec![
            entry.derived(Derived::Lock),
            entry.derived(Derived::Chunk {
                write: WRITE,
                index: 0,
            }),
            entry.derived(Derived::Chunk {
                write: WRITE,
                index: u32::MAX,
            }),
            entry.derived(Derived::Index {
                write: WRITE,
                level: u32::MAX,
                index: u32::MAX,
            }),
        ]
    }

    /// Whether `key` could be a caller's stored key: no backslash except
    /// one starting an escape or followed by lowercase hex (a shortening
    /// cut), or 64 lowercase hex digits (encrypted).
    fn caller_could_store(key: &str) -> bool {
        let bytes = key.as_bytes();
        bytes.iter().enumerate().all(|(i, &b)| {
            b != b'\\'
                || bytes
                    .get(i + 1)
                    .is_none_or(|n| matches!(n, b'0'..=b'9' | b'a'..=b'f' | b'x'))
        })
    }

    #[test]
    fn derived_keys_keep_the_namespace_and_a_marker() {
        let job = entry("job");
        assert_eq!(job.derived(Derived::Lock), "example.com:\\L:job");
        assert_eq!(
            job.derived(Derived::Chunk {
                write: WRITE,
                index: 7
            }),
            "example.com:\\C0123456789abcdef-7:job"
        );
        assert_eq!(
            job.derived(Derived::Index {
                write: WRITE,
                level: 2,
                index: 3
            }),
            "example.com:\\I0123456789abcdef-2.3:job"
        );
        assert_eq!(
            lock_key(Some("example.com"), "example.com:job"),
            "example.com:\\L:job"
        );
        assert_eq!(lock_key(None, "job"), "\\L:job");
        // Encrypted: nothing readable, not even the namespace.
        let enc = EncryptionKey::new(b"0123456789abcdef").unwrap();
        let sealed = EntryKey::new(Some("example.com"), &"job".into(), Some(&enc));
        assert_eq!(
            sealed.derived(Derived::Lock),
            format!("\\L:{}", sealed.stored())
        );
        assert_eq!(sealed.full(), "example.com:job");
    }

    #[test]
    fn derived_keys_of_long_keys_fit_memcached() {
        for len in [0, 1, 170, 176, 177, 228, 229, 240, 500] {
            for key in [
                entry("y".repeat(len)),
                entry("é".repeat(len)),
                entry(" ".repeat(len)),
            ] {
                for derived in every_kind(&key) {
                    assert!(derived.len() <= MAX_KEY_LEN, "{derived}");
                    assert!(derived.starts_with("example.com:\\"), "{derived}");
                    assert!(!derived.chars().any(|c| c <= ' ' || c == '\x7f'));
                }
            }
        }
        // Shortened: `;` after the tag, then part of the key and a digest.
        let long = entry("y".repeat(500));
        let chunk = long.derived(Derived::Chunk {
            write: WRITE,
            index: 3,
        });
        assert!(
            chunk.starts_with("example.com:\\C0123456789abcdef-3;yyy"),
            "{chunk}"
        );
        assert_eq!(chunk.len(), MAX_KEY_LEN);
        // A lock key has room for any stored key.
        assert_eq!(
            long.derived(Derived::Lock),
            format!("example.com:\\L:{}", &long.stored()["example.com:".len()..])
        );
        let short = entry("y".repeat(100));
        assert!(
            short
                .derived(Derived::Lock)
                .starts_with("example.com:\\L:yyy")
        );
        // A namespace too long to keep is dropped, the marker stays.
        let ns = "n".repeat(200);
        let long = EntryKey::new(Some(&ns), &"k".into(), None);
        for derived in every_kind(&long) {
            assert!(derived.len() <= MAX_KEY_LEN);
            assert!(derived.starts_with('\\'));
        }
    }

    #[test]
    fn callers_cannot_produce_derived_keys() {
        for raw in [
            "_lock_:job",
            "\\L:job",
            "example.com:\\L:job",
            "job-0123456789abcdef-0",
            "\\C0123456789abcdef-0:job",
        ] {
            let stored = entry(raw).stored().to_owned();
            assert!(caller_could_store(&stored), "{stored}");
            for derived in every_kind(&entry("job")) {
                assert_ne!(stored, derived);
                assert!(!caller_could_store(&derived), "{derived}");
            }
        }
    }

    proptest! {
        #[test]
        fn key_parts_build_the_key_parts_normalize_to(
            parts in proptest::collection::vec(".{0,12}", 2..6),
            number in any::<i64>(),
        ) {
            let mut built = KeyParts::new();
            for part in &parts {
                built.text(part);
            }
            built.display(&number).display(&format_args!("{:?}:{}", parts[0], parts[1]));
            let mut expected = parts.clone();
            expected.push(number.to_string());
            expected.push(format!("{:?}:{}", parts[0], parts[1]));
            let expected = CacheKey::from(expected);
            let built = built.finish();
            prop_assert_eq!(built.normalized(), expected.normalized());
            for ns in [None, Some("shop")] {
                prop_assert_eq!(EntryKey::new(ns, &built, None), EntryKey::new(ns, &expected, None));
                prop_assert_eq!(
                    EntryKey::from_owned(ns, built.clone(), None),
                    EntryKey::new(ns, &expected, None)
                );
                prop_assert_eq!(
                    EntryKey::from_owned(ns, expected.clone(), None),
                    EntryKey::new(ns, &expected, None)
                );
            }
        }

        #[test]
        fn entry_keys_store_what_the_full_key_escapes_and_shortens_to(
            key in any::<String>(),
            namespaced in any::<bool>(),
        ) {
            // The stored key, shared with the full key or not, is the rule
            // applied to the full key.
            let ns = namespaced.then_some("shop");
            let entry = EntryKey::new(ns, &CacheKey::from(key.as_str()), None);
            let full = full_key(ns, &CacheKey::from(key.as_str()));
            prop_assert_eq!(entry.full(), full.as_str());
            let stored = shorten(escape_for_memcached(&full).into_owned(), MAX_KEY);
            prop_assert_eq!(entry.stored(), stored.as_str());
        }

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
        fn derived_keys_are_never_caller_keys(
            a in "[a-z_:\\\\x0-9 LCI-]{0,300}",
            b in "[a-z_:\\\\x0-9 LCI-]{0,300}",
            encrypted in any::<bool>(),
            namespaced in any::<bool>(),
        ) {
            let enc = EncryptionKey::new(b"0123456789abcdef").unwrap();
            let enc = encrypted.then_some(&enc);
            let ns = namespaced.then_some("shop");
            let caller = EntryKey::new(ns, &CacheKey::from(a.as_str()), enc);
            prop_assert!(caller_could_store(caller.stored()));
            let other = EntryKey::new(ns, &CacheKey::from(b.as_str()), enc);
            for derived in every_kind(&other) {
                prop_assert!(!caller_could_store(&derived));
                prop_assert_ne!(caller.stored(), derived.as_str());
                prop_assert!(derived.len() <= MAX_KEY_LEN);
                if namespaced && !encrypted {
                    prop_assert!(derived.starts_with("shop:\\"), "{}", derived);
                }
            }
        }

        #[test]
        fn distinct_raw_keys_never_share_a_key(a in "[a-z \\\\x0-9\t]{0,300}", b in "[a-z \\\\x0-9\t]{0,300}") {
            prop_assume!(a != b);
            prop_assert_ne!(ns(a), ns(b));
        }
    }
}
