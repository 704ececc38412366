//! The envelope every stored value travels in.
//!
//! Values are serialized with postcard, which is compact and fast but not
//! self-describing: bytes written for one type can decode "successfully" as
//! another. The envelope therefore records what the bytes are, and binds
//! them to the key they were stored under, so that anything unexpected is a
//! miss rather than a wrong value. The key an envelope is bound to is the
//! caller's *full* key (namespace, `:` and the normalized key, before any
//! escaping, shortening or hashing), so two keys that happen to share a
//! stored key (a long key's shortened form and a raw key spelling it out)
//! read each other's entries as a miss:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "MEMO"
//!      4     1  format version (3)
//!      5     1  kind: 1 = value, 2 = manifest of a chunked value or iterator
//!      6     1  flags: 1 = compressed, 2 = encrypted, 4 = iterator
//!      7     1  reserved, 0
//!      8     8  fingerprint of the Rust type's name and serde shape (see
//!               `schema`; little endian); zero when
//!               encrypted: the fingerprint then leads the plaintext, so
//!               the server cannot tell which type an entry holds
//!     16     4  body length (little endian)
//!     20     8  logical expiry: milliseconds since the Unix epoch after
//!               which the value is stale (little endian); 0 = none
//!     28     8  the value's computation time in microseconds (Δ of
//!               refresh-ahead; little endian)
//!     36     n  body
//!   36+n    16  checksum: SHA-256(length of the full key as 8 bytes little
//!               endian, full key, header, body), first 16 bytes (absent
//!               when encrypted: the body is sealed, and its MAC covers
//!               the length of the full key, the full key and the header)
//! ```
//!
//! Version 3 adds the logical expiry and the computation time, which the
//! policy needs for refresh-ahead and stale-while-revalidate: the backend
//! may keep an entry past its logical expiry (the stale window), so the
//! expiry travels in the header, under the checksum or MAC like every other
//! field, and a forged or flipped expiry is a miss. Version 2 entries are
//! misses (the version byte), never read with a guessed expiry.
//!
//! Version 2 binds the full key rather than the stored key, lays the
//! manifest out as the root of a tree of index chunks, stores chunks and
//! locks under the derived keys of `format::key`, and fingerprints a
//! type's shape as well as its name; version 1 entries are misses.
//!
//! A wrong magic, another version or kind, unknown flags, an encryption flag
//! that does not match the caller's, another type, a length that does not
//! match the bytes present (truncated or extended), a checksum or MAC that
//! does not check out, or a body postcard cannot decode exactly: each is an
//! [`Invalid`] reason, and the caller recomputes. Nothing is allocated on
//! the strength of a length field before the bytes it claims are present.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::crypto::{EncryptionKey, tags_equal};

const MAGIC: &[u8; 4] = b"MEMO";
const VERSION: u8 = 3;
/// The size of the envelope header.
pub(crate) const HEADER_LEN: usize = 36;
/// The size of the checksum of an unencrypted envelope.
pub(crate) const CHECKSUM_LEN: usize = 16;
const FINGERPRINT_LEN: usize = 8;

/// Envelope flag: the payload is zlib-compressed.
pub(crate) const FLAG_COMPRESSED: u8 = 1;
/// Envelope flag: the payload is encrypted.
pub(crate) const FLAG_ENCRYPTED: u8 = 2;
/// Envelope flag: the payload is a sequence of items (an iterator).
pub(crate) const FLAG_ITERATOR: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_ENCRYPTED | FLAG_ITERATOR;

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A whole value in the body.
    Value = 1,
    /// A manifest (`format::manifest`) describing chunks stored under other keys.
    Manifest = 2,
}

/// Why bytes read from the cache were not accepted. Each one makes the read
/// a miss; the reason is logged at debug level and counted in
/// [`Stats::invalid`](crate::Stats::invalid).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Invalid {
    /// Fewer bytes than an envelope header.
    #[error("too short to be an envelope ({0} bytes)")]
    TooShort(usize),
    /// Not a memo envelope.
    #[error("not a memo envelope (bad magic)")]
    Magic,
    /// Written by another format version.
    #[error("format version {0}, expected {VERSION}")]
    Version(u8),
    /// An unknown kind, unknown flags, or a non-zero reserved byte.
    #[error("malformed header: {0}")]
    Header(&'static str),
    /// Written for another Rust type (or iterator-ness).
    #[error("stored for another type")]
    Type,
    /// Encrypted when the caller reads in the clear, or the reverse.
    #[error("encryption flag does not match the caller's")]
    EncryptionMismatch,
    /// The length field disagrees with the bytes present.
    #[error("length mismatch: header says {claimed} bytes, {present} present")]
    Length {
        /// What the header claims.
        claimed: u64,
        /// What is there.
        present: u64,
    },
    /// The checksum does not match (corruption, or another key's value).
    #[error("checksum mismatch")]
    Checksum,
    /// The MAC does not match (wrong key, tampering, another key's value).
    #[error("authentication failed")]
    Mac,
    /// The body does not decode exactly as the expected type.
    #[error("body does not decode: {0}")]
    Decode(String),
    /// A manifest whose fields are inconsistent.
    #[error("malformed manifest: {0}")]
    Manifest(&'static str),
    /// A chunk is missing.
    #[error("chunk {0} is missing")]
    MissingChunk(u32),
    /// A chunk does not match its digest in the manifest.
    #[error("chunk {0} does not match its digest")]
    ChunkDigest(u32),
    /// An index chunk (level, position) is missing, or does not match its
    /// digest.
    #[error("index chunk {1} of level {0} is missing or does not match its digest")]
    IndexChunk(u32, u32),
    /// The reassembled stream is malformed (bad padding, bad zlib data,
    /// wrong length, trailing bytes, wrong item count).
    #[error("malformed stream: {0}")]
    Stream(String),
}

/// The fingerprint of `T` in the given mode: a digest of its type name,
/// its serde shape (field names, order and types, enum variants,
/// recursively) and whether it is an iterator's item type, so that a type
/// changed between deploys reads the other deploy's entries as misses.
///
/// Computed once per type and cached. A type whose shape cannot be traced
/// (see the `schema` module) falls back to its name and mode only.
/// `std::any::type_name` is not guaranteed stable across compiler versions;
/// a change there only turns old entries into misses, which is safe.
pub(crate) fn fingerprint<T: DeserializeOwned>(iterator: bool) -> u64 {
    super::schema::fingerprint::<T>(iterator)
}

/// A parsed, verified envelope header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// What the envelope holds.
    pub(crate) kind: Kind,
    /// The `FLAG_*` bits.
    pub(crate) flags: u8,
    /// The type fingerprint.
    pub(crate) fingerprint: u64,
    /// The body length.
    pub(crate) body_len: u32,
    /// When the value goes stale, and what it cost.
    pub(crate) stamp: Stamp,
}

/// When a stored value goes stale and how long it took to compute: what
/// refresh-ahead and stale-while-revalidate decide by. Part of the header,
/// so covered by the checksum or MAC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The logical expiry in milliseconds since the Unix epoch; 0 = none
    /// (manifests, whose values expire with the backend entry).
    pub(crate) expires_ms: u64,
    /// The computation time in microseconds.
    pub(crate) compute_us: u64,
}

impl Stamp {
    /// No logical expiry.
    pub(crate) const NONE: Stamp = Stamp {
        expires_ms: 0,
        compute_us: 0,
    };
}

impl Header {
    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[6] = self.flags;
        out[8..16].copy_from_slice(&self.fingerprint.to_le_bytes());
        out[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        out[20..28].copy_from_slice(&self.stamp.expires_ms.to_le_bytes());
        out[28..36].copy_from_slice(&self.stamp.compute_us.to_le_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Result<Header, Invalid> {
        if bytes.len() < HEADER_LEN {
            return Err(Invalid::TooShort(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(Invalid::Magic);
        }
        if bytes[4] != VERSION {
            return Err(Invalid::Version(bytes[4]));
        }
        let kind = match bytes[5] {
            1 => Kind::Value,
            2 => Kind::Manifest,
            _ => return Err(Invalid::Header("unknown kind")),
        };
        if bytes[6] & !KNOWN_FLAGS != 0 {
            return Err(Invalid::Header("unknown flags"));
        }
        if bytes[7] != 0 {
            return Err(Invalid::Header("reserved byte set"));
        }
        Ok(Header {
            kind,
            flags: bytes[6],
            fingerprint: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            body_len: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
            stamp: Stamp {
                expires_ms: u64::from_le_bytes(bytes[20..28].try_into().expect("8 bytes")),
                compute_us: u64::from_le_bytes(bytes[28..36].try_into().expect("8 bytes")),
            },
        })
    }
}

/// The kind of the envelope in `bytes`, or why it is not one.
pub(crate) fn peek_kind(bytes: &[u8]) -> Result<Kind, Invalid> {
    Header::parse(bytes).map(|header| header.kind)
}

/// Wraps `body` in an envelope bound to `full_key`, with no logical
/// expiry: sealed under `encryption`, or followed by a checksum.
pub(crate) fn seal_envelope(
    full_key: &str,
    kind: Kind,
    flags: u8,
    fingerprint: u64,
    body: &[u8],
    encryption: Option<&EncryptionKey>,
) -> Result<Vec<u8>, EncodeError> {
    seal_stamped(
        full_key,
        kind,
        flags,
        fingerprint,
        body,
        encryption,
        Stamp::NONE,
    )
}

/// [`seal_envelope`] with a logical expiry and computation time.
pub(crate) fn seal_stamped(
    full_key: &str,
    kind: Kind,
    mut flags: u8,
    fingerprint: u64,
    body: &[u8],
    encryption: Option<&EncryptionKey>,
    stamp: Stamp,
) -> Result<Vec<u8>, EncodeError> {
    use crate::format::crypto::{BLOCK, TAG};
    let stored_len = match encryption {
        Some(_) => BLOCK + ((FINGERPRINT_LEN + body.len()) / BLOCK + 1) * BLOCK + TAG,
        None => body.len(),
    };
    let body_len = u32::try_from(stored_len).map_err(|_| EncodeError::TooLarge(stored_len))?;
    if encryption.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let header = Header {
        kind,
        flags,
        // Encrypted, the fingerprint travels inside the ciphertext, so the
        // server cannot tell which type an entry holds.
        fingerprint: if encryption.is_some() { 0 } else { fingerprint },
        body_len,
        stamp,
    }
    .to_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + stored_len + CHECKSUM_LEN);
    out.extend_from_slice(&header);
    match encryption {
        Some(key) => {
            let mut plaintext =
                zeroize::Zeroizing::new(Vec::with_capacity(FINGERPRINT_LEN + body.len()));
            plaintext.extend_from_slice(&fingerprint.to_le_bytes());
            plaintext.extend_from_slice(body);
            let key_len = (full_key.len() as u64).to_le_bytes();
            let sealed = key.seal(&[&key_len, full_key.as_bytes(), &header], &plaintext);
            debug_assert_eq!(sealed.len(), stored_len);
            out.extend_from_slice(&sealed);
        }
        None => {
            out.extend_from_slice(body);
            let sum = checksum(full_key, &header, body);
            out.extend_from_slice(&sum);
        }
    }
    Ok(out)
}

/// Verifies an envelope read under `full_key` and returns its header and
/// plaintext body. `fingerprint` is the expected type's, or `None` to accept
/// any type (only for housekeeping that never decodes the body).
pub(crate) fn open_envelope(
    full_key: &str,
    bytes: &[u8],
    kind: Kind,
    fingerprint: Option<u64>,
    encryption: Option<&EncryptionKey>,
) -> Result<(Header, Body), Invalid> {
    let mut header = Header::parse(bytes)?;
    if header.kind != kind {
        return Err(Invalid::Header("unexpected kind"));
    }
    let encrypted = header.flags & FLAG_ENCRYPTED != 0;
    if encrypted != encryption.is_some() {
        return Err(Invalid::EncryptionMismatch);
    }
    if encrypted && header.fingerprint != 0 {
        return Err(Invalid::Header("type fingerprint in the clear"));
    }
    if !encrypted && fingerprint.is_some_and(|expected| expected != header.fingerprint) {
        return Err(Invalid::Type);
    }
    let trailer = if encrypted { 0 } else { CHECKSUM_LEN };
    let present = bytes.len() - HEADER_LEN;
    let claimed = header.body_len as usize + trailer;
    if present != claimed {
        return Err(Invalid::Length {
            claimed: claimed as u64,
            present: present as u64,
        });
    }
    let (head, rest) = bytes.split_at(HEADER_LEN);
    let body = match encryption {
        Some(key) => {
            // The key's length goes first, as in the checksum, so that no
            // two (key, header) pairs run together into the same input.
            let key_len = (full_key.len() as u64).to_le_bytes();
            let plaintext = key
                .open(&[&key_len, full_key.as_bytes(), head], rest)
                .ok_or(Invalid::Mac)?;
            let (inner, body) = plaintext
                .split_first_chunk::<FINGERPRINT_LEN>()
                .ok_or(Invalid::Header("sealed body too short"))?;
            header.fingerprint = u64::from_le_bytes(*inner);
            if fingerprint.is_some_and(|expected| expected != header.fingerprint) {
                return Err(Invalid::Type);
            }
            Body::Owned(body.to_vec())
        }
        None => {
            let (body, sum) = rest.split_at(header.body_len as usize);
            if !tags_equal(&checksum(full_key, head, body), sum) {
                return Err(Invalid::Checksum);
            }
            Body::Borrowed(HEADER_LEN, header.body_len as usize)
        }
    };
    Ok((header, body))
}

/// The plaintext body of an opened envelope: a range of the input when it
/// was stored in the clear, a decrypted copy otherwise.
#[derive(Debug)]
pub(crate) enum Body {
    /// `bytes[start..start + len]` of the envelope.
    Borrowed(usize, usize),
    /// Decrypted bytes.
    Owned(Vec<u8>),
}

impl Body {
    /// The body's bytes, given the envelope it was opened from.
    pub(crate) fn bytes<'a>(&'a self, envelope: &'a [u8]) -> &'a [u8] {
        match self {
            Body::Borrowed(start, len) => &envelope[*start..*start + *len],
            Body::Owned(bytes) => bytes,
        }
    }
}

fn checksum(full_key: &str, header: &[u8], body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    hasher.update((full_key.len() as u64).to_le_bytes());
    hasher.update(full_key.as_bytes());
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()[..CHECKSUM_LEN]
        .try_into()
        .expect("16 bytes")
}

/// A value that could not be encoded for storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EncodeError {
    /// serde/postcard refused the value (e.g. a map with unknown length).
    #[error("cannot serialize the value: {0}")]
    Serialize(#[from] postcard::Error),
    /// The value exceeds what one envelope can hold (4 GiB).
    #[error("value of {0} bytes is too large for one envelope")]
    TooLarge(usize),
}

/// Serializes `value` into a value envelope bound to `full_key`, with no
/// logical expiry.
#[cfg_attr(not(any(test, feature = "__fuzz")), allow(dead_code))]
pub(crate) fn encode_value<T: Serialize + DeserializeOwned>(
    full_key: &str,
    value: &T,
    encryption: Option<&EncryptionKey>,
) -> Result<Vec<u8>, EncodeError> {
    encode_stamped(full_key, value, encryption, Stamp::NONE)
}

/// Serializes `value` into a value envelope bound to `full_key`, stamped
/// with its logical expiry and computation time.
pub(crate) fn encode_stamped<T: Serialize + DeserializeOwned>(
    full_key: &str,
    value: &T,
    encryption: Option<&EncryptionKey>,
    stamp: Stamp,
) -> Result<Vec<u8>, EncodeError> {
    let body = postcard::to_stdvec(value)?;
    let body = zeroize::Zeroizing::new(body);
    seal_stamped(
        full_key,
        Kind::Value,
        0,
        fingerprint::<T>(false),
        &body,
        encryption,
        stamp,
    )
}

/// Decodes a value envelope read under `full_key`.
#[cfg_attr(not(any(test, feature = "__fuzz")), allow(dead_code))]
pub(crate) fn decode_value<T: DeserializeOwned>(
    full_key: &str,
    bytes: &[u8],
    encryption: Option<&EncryptionKey>,
) -> Result<T, Invalid> {
    decode_stamped(full_key, bytes, encryption).map(|(value, _)| value)
}

/// Decodes a value envelope read under `full_key`, with its stamp.
pub(crate) fn decode_stamped<T: DeserializeOwned>(
    full_key: &str,
    bytes: &[u8],
    encryption: Option<&EncryptionKey>,
) -> Result<(T, Stamp), Invalid> {
    let (header, body) = open_envelope(
        full_key,
        bytes,
        Kind::Value,
        Some(fingerprint::<T>(false)),
        encryption,
    )?;
    Ok((decode_exact(body.bytes(bytes))?, header.stamp))
}

/// Decodes `bytes` as exactly one `T`, with nothing left over.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Invalid> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(Invalid::Decode(format!("{} trailing bytes", rest.len()))),
        Err(err) => Err(Invalid::Decode(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::serial::{deserialize_from_reader, write_varint};
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn profile() -> Profile {
        Profile {
            id: 42,
            name: "Ada".into(),
            tags: vec!["admin".into(), "ops".into()],
        }
    }

    fn key() -> EncryptionKey {
        EncryptionKey::new([7u8; 32]).unwrap()
    }

    #[test]
    fn values_round_trip_in_the_clear_and_encrypted() {
        for enc in [None, Some(key())] {
            let bytes = encode_value("k", &profile(), enc.as_ref()).unwrap();
            assert_eq!(
                decode_value::<Profile>("k", &bytes, enc.as_ref()).unwrap(),
                profile()
            );
        }
    }

    #[test]
    fn every_corruption_is_a_miss_never_a_panic() {
        for enc in [None, Some(key())] {
            let good = encode_value("k", &profile(), enc.as_ref()).unwrap();
            for i in 0..good.len() {
                for bit in 0..8 {
                    let mut bad = good.clone();
                    bad[i] ^= 1 << bit;
                    assert!(
                        decode_value::<Profile>("k", &bad, enc.as_ref()).is_err(),
                        "flip of bit {bit} at {i} accepted"
                    );
                }
            }
            for len in 0..good.len() {
                assert!(decode_value::<Profile>("k", &good[..len], enc.as_ref()).is_err());
            }
            let mut longer = good.clone();
            longer.push(0);
            assert!(decode_value::<Profile>("k", &longer, enc.as_ref()).is_err());
            assert!(decode_value::<Profile>("k", &[], enc.as_ref()).is_err());
        }
    }

    #[test]
    fn another_type_with_the_same_layout_is_a_miss() {
        let bytes = encode_value("k", &profile(), None).unwrap();
        assert_eq!(decode_value::<Other>("k", &bytes, None), Err(Invalid::Type));
        let sealed = encode_value("k", &profile(), Some(&key())).unwrap();
        assert_eq!(
            decode_value::<Other>("k", &sealed, Some(&key())),
            Err(Invalid::Type)
        );
    }

    #[test]
    fn encrypted_envelopes_hide_the_type() {
        let sealed = encode_value("k", &profile(), Some(&key())).unwrap();
        assert_eq!(&sealed[8..16], &[0u8; 8]);
        let fingerprint = fingerprint::<Profile>(false).to_le_bytes();
        assert!(!sealed.windows(8).any(|w| w == fingerprint));
    }

    #[test]
    fn a_value_moved_to_another_key_is_a_miss() {
        let bytes = encode_value("k1", &profile(), None).unwrap();
        assert_eq!(
            decode_value::<Profile>("k2", &bytes, None),
            Err(Invalid::Checksum)
        );
        let bytes = encode_value("k1", &profile(), Some(&key())).unwrap();
        assert_eq!(
            decode_value::<Profile>("k2", &bytes, Some(&key())),
            Err(Invalid::Mac)
        );
    }

    #[test]
    fn encryption_cannot_be_stripped_or_added() {
        let clear = encode_value("k", &profile(), None).unwrap();
        assert_eq!(
            decode_value::<Profile>("k", &clear, Some(&key())),
            Err(Invalid::EncryptionMismatch)
        );
        let sealed = encode_value("k", &profile(), Some(&key())).unwrap();
        assert_eq!(
            decode_value::<Profile>("k", &sealed, None),
            Err(Invalid::EncryptionMismatch)
        );
    }

    #[test]
    fn other_versions_and_garbage_are_misses() {
        let mut bytes = encode_value("k", &profile(), None).unwrap();
        for version in [1, 2, 4, 0xff] {
            bytes[4] = version;
            assert_eq!(
                decode_value::<Profile>("k", &bytes, None),
                Err(Invalid::Version(version))
            );
        }
        assert_eq!(
            decode_value::<Profile>("k", b"a pickled python object, as long as any header", None),
            Err(Invalid::Magic)
        );
    }

    #[test]
    fn a_forged_huge_length_is_rejected_without_allocating() {
        let mut bytes = encode_value("k", &profile(), None).unwrap();
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_value::<Profile>("k", &bytes, None),
            Err(Invalid::Length { .. })
        ));
        // A body whose checksum is right but whose postcard length prefix
        // claims 2^60 elements must fail on missing data, not allocate.
        let mut body = Vec::new();
        write_varint(1 << 60, &mut body);
        let forged = seal_envelope(
            "k",
            Kind::Value,
            0,
            fingerprint::<Vec<u64>>(false),
            &body,
            None,
        )
        .unwrap();
        assert!(decode_value::<Vec<u64>>("k", &forged, None).is_err());
        assert!(deserialize_from_reader::<Vec<u64>, _>(&body[..]).is_err());
        assert!(deserialize_from_reader::<String, _>(&body[..]).is_err());
    }

    #[test]
    fn stamps_round_trip_and_are_covered_by_the_checksum_and_mac() {
        let stamp = Stamp {
            expires_ms: 1_700_000_000_123,
            compute_us: 98_765,
        };
        for enc in [None, Some(key())] {
            let bytes = encode_stamped("k", &profile(), enc.as_ref(), stamp).unwrap();
            let (value, read) = decode_stamped::<Profile>("k", &bytes, enc.as_ref()).unwrap();
            assert_eq!((value, read), (profile(), stamp));
            // Moving the expiry later (to serve a value longer) is a miss.
            for at in [20, 27, 28, 35] {
                let mut forged = bytes.clone();
                forged[at] ^= 0x40;
                assert!(decode_stamped::<Profile>("k", &forged, enc.as_ref()).is_err());
            }
        }
    }

    #[test]
    fn a_version_2_entry_is_a_miss() {
        // A version 2 header (20 bytes: no expiry, no computation time)
        // followed by a body: rejected on the version byte, before any
        // field is read at the new offsets.
        let mut old = b"MEMO\x02\x01\x00\x00".to_vec();
        old.extend_from_slice(&fingerprint::<u64>(false).to_le_bytes());
        old.extend_from_slice(&1u32.to_le_bytes());
        old.push(42);
        old.extend_from_slice(&[0; CHECKSUM_LEN]);
        assert_eq!(
            decode_value::<u64>("k", &old, None),
            Err(Invalid::Version(2))
        );
    }
}
