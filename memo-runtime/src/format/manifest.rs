//! The format of a chunked value: the manifest, the tree of digests over
//! the chunks, and the keys they are stored under. Pure: bytes in, bytes
//! out; the pipeline that stores and fetches them is `policy::stream`.
//!
//! memcached refuses items over 1 MiB, so a large payload is stored as
//! chunks of at most `chunk_size` bytes under derived keys (see `format::key`), plus a main entry, the [`Manifest`], written last.
//! The payload flows through a pipeline that never holds more than a few
//! chunks:
//!
//! ```text
//! postcard bytes -> zlib (optional) -> AES-CBC (optional) -> chunks -> set_many batches
//! ```
//!
//! and back the same way on load. The manifest records a random write id
//! (part of every chunk key, so two writes of one key never share chunk
//! keys and a reader can never combine their chunks), the chunk size and
//! count, the lengths, the item count, the IV, and the root of a tree of
//! SHA-256 digests:
//!
//! - the *fan-out* `F` is `chunk_size / 32`, the digests one chunk holds;
//! - level 0 are the data chunks; an *index chunk* at level `l + 1` is the
//!   concatenation of the digests of up to `F` consecutive level-`l` chunks
//!   (all full but the last);
//! - the manifest lists the digests of the lowest level that has at most
//!   `F` chunks: the data chunks themselves for up to `F` chunks, else the
//!   index chunks of level 1, 2, ... (a value of `N` chunks has
//!   `ceil(N / F)` level-1 index chunks, and so on).
//!
//! So no item memo stores exceeds `chunk_size` bytes, except the manifest,
//! which holds at most `F` digests plus [`MAX_OVERHEAD`] bytes of fixed
//! fields and envelope (set `chunk_size` that much below the backend's item
//! limit; the default is). Index chunks are written in the same batches as
//! data chunks, and a reader fetches the index chunks a batch needs in the
//! batch's own round trip, holding one index chunk per level.
//!
//! The manifest's body (inside an envelope of kind 2, see
//! `format::envelope`), all integers little endian:
//!
//! ```text
//! offset  size  field
//!      0     8  write id
//!      8     4  chunk size (at least 64: two digests)
//!     12     4  number of data chunks
//!     16     8  bytes stored over all data chunks
//!     24     8  serialized length before compression and encryption
//!     32     8  item count (1 for a value)
//!     40    16  IV of the encrypted stream (zeros in the clear)
//!     56  32*k  digests of the top level's k chunks, k <= chunk size / 32
//! ```
//!
//! When encrypting, the manifest is sealed with a MAC that covers the root
//! digests, which authenticates every chunk (encrypt-then-MAC over the
//! whole stream). A missing, short, long or altered chunk is a miss.
//!
//! Because the manifest is written only after every chunk is stored, a
//! writer that stops half-way (an iterator dropped early, a panic, a failed
//! `set_many`) leaves only orphan chunks, which no reader can reach. They
//! are written with the entry's TTL and live it out (or until evicted): an
//! abandoned write costs the space of what it stored for as long as the
//! entry would have lived. Writing them short-lived and extending them once
//! the manifest lands would cost a round trip per chunk on every write.

use super::crypto::{self, BLOCK, EncryptionKey};
use super::envelope::{self, FLAG_COMPRESSED, FLAG_ITERATOR, Invalid, Kind};
use super::key::{Derived, EntryKey};

/// The size of a chunk digest (SHA-256).
pub(crate) const DIGEST: usize = 32;
const MANIFEST_FIXED: usize = 8 + 4 + 4 + 8 + 8 + 8 + BLOCK;

/// The most a main entry exceeds `chunk_size` by: a manifest's fixed
/// fields and the envelope's header and checksum, or, encrypted, its IV,
/// padding, sealed type fingerprint and MAC; and the guard of version
/// tokens in front of it. Every other stored item is at most `chunk_size`
/// bytes.
pub const MAX_OVERHEAD: usize =
    MANIFEST_FIXED + envelope::HEADER_LEN + 2 * BLOCK + 8 + crypto::TAG + super::guard::MAX_LEN;

/// How many digests one chunk holds: the fan-out of the tree of digests.
pub(crate) fn fanout(chunk_size: u32) -> u64 {
    u64::from(chunk_size) / DIGEST as u64
}

/// How many chunks each level of the tree has, from the data chunks (level
/// 0) up to the level the manifest lists. `None` when `chunk_size` is too
/// small to hold two digests.
fn level_counts(chunk_count: u32, chunk_size: u32) -> Option<Vec<u64>> {
    let fanout = fanout(chunk_size);
    if fanout < 2 {
        return None;
    }
    let mut counts = vec![u64::from(chunk_count)];
    while let Some(&last) = counts.last().filter(|&&last| last > fanout) {
        counts.push(last.div_ceil(fanout));
    }
    Some(counts)
}

/// The main entry of a chunked value: what was written and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// A random id shared by the chunk keys of this write.
    pub(crate) write_id: [u8; 8],
    /// The size of every data chunk but the last.
    pub(crate) chunk_size: u32,
    /// The number of data chunks.
    pub(crate) chunk_count: u32,
    /// The total bytes stored over all data chunks.
    pub(crate) stored_len: u64,
    /// The serialized length before compression and encryption.
    pub(crate) plain_len: u64,
    /// The number of items (1 for a single value).
    pub(crate) item_count: u64,
    /// The IV of the encrypted stream (zeros in the clear).
    pub(crate) iv: [u8; BLOCK],
    /// The SHA-256 of each chunk of the tree's top level: the data chunks
    /// when there are at most `chunk_size / 32` of them, else index chunks.
    pub(crate) digests: Vec<[u8; DIGEST]>,
    /// `FLAG_COMPRESSED` and `FLAG_ITERATOR` bits.
    pub(crate) flags: u8,
}

impl Manifest {
    /// The manifest's body bytes (before the envelope).
    pub(crate) fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_FIXED + self.digests.len() * DIGEST);
        out.extend_from_slice(&self.write_id);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.plain_len.to_le_bytes());
        out.extend_from_slice(&self.item_count.to_le_bytes());
        out.extend_from_slice(&self.iv);
        for digest in &self.digests {
            out.extend_from_slice(digest);
        }
        out
    }

    /// Parses and checks a manifest body. Every field is checked against
    /// the others; the chunk count is bounded by the digests actually
    /// present, so a forged count cannot cause an allocation.
    pub(crate) fn from_body(body: &[u8], flags: u8, encrypted: bool) -> Result<Manifest, Invalid> {
        if body.len() < MANIFEST_FIXED || (body.len() - MANIFEST_FIXED) % DIGEST != 0 {
            return Err(Invalid::Manifest("length"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let digests = (body.len() - MANIFEST_FIXED) / DIGEST;
        let chunk_size = u32_at(8);
        let chunk_count = u32_at(12);
        if fanout(chunk_size) < 2 {
            return Err(Invalid::Manifest("chunk size"));
        }
        if digests as u64 > fanout(chunk_size) {
            return Err(Invalid::Manifest("more digests than a chunk holds"));
        }
        let manifest = Manifest {
            write_id: body[..8].try_into().expect("8 bytes"),
            chunk_size,
            chunk_count,
            stored_len: u64_at(16),
            plain_len: u64_at(24),
            item_count: u64_at(32),
            iv: body[40..56].try_into().expect("16 bytes"),
            digests: body[MANIFEST_FIXED..]
                .chunks_exact(DIGEST)
                .map(|d| d.try_into().expect("32 bytes"))
                .collect(),
            flags: flags & (FLAG_COMPRESSED | FLAG_ITERATOR),
        };
        if manifest.top_count() != Some(digests as u64) {
            return Err(Invalid::Manifest("chunk count"));
        }
        let expected_chunks = manifest.stored_len.div_ceil(u64::from(manifest.chunk_size));
        if expected_chunks != u64::from(manifest.chunk_count) {
            return Err(Invalid::Manifest("chunk count and length disagree"));
        }
        if encrypted && (manifest.stored_len == 0 || manifest.stored_len % BLOCK as u64 != 0) {
            return Err(Invalid::Manifest("encrypted length"));
        }
        let compressed = flags & FLAG_COMPRESSED != 0;
        if !compressed && manifest.plain_len > manifest.stored_len {
            return Err(Invalid::Manifest("plain length"));
        }
        if flags & FLAG_ITERATOR == 0 && manifest.item_count != 1 {
            return Err(Invalid::Manifest("item count"));
        }
        Ok(manifest)
    }

    /// How many chunks each level of the tree has (data chunks first).
    pub(crate) fn levels(&self) -> Vec<u64> {
        level_counts(self.chunk_count, self.chunk_size).unwrap_or_default()
    }

    /// How many digests the manifest lists.
    fn top_count(&self) -> Option<u64> {
        level_counts(self.chunk_count, self.chunk_size).and_then(|c| c.last().copied())
    }

    /// The levels of index chunks (0 when the manifest lists data chunks).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn depth(&self) -> u32 {
        self.levels().len().saturating_sub(1) as u32
    }

    pub(crate) fn write_hex(&self) -> String {
        crypto::hex(&self.write_id)
    }

    /// The key of data chunk `index`.
    pub(crate) fn chunk_key(&self, key: &EntryKey, index: u32) -> String {
        key.derived(Derived::Chunk {
            write: &self.write_hex(),
            index,
        })
    }

    /// The key of index chunk `index` at `level` (from 1).
    pub(crate) fn index_key(&self, key: &EntryKey, level: u32, index: u32) -> String {
        key.derived(Derived::Index {
            write: &self.write_hex(),
            level,
            index,
        })
    }

    /// Every key this write stored besides the manifest: data chunks, then
    /// index chunks level by level.
    pub(crate) fn stored_keys(&self, key: &EntryKey) -> impl Iterator<Item = String> + '_ {
        let key = key.clone();
        let levels = self.levels();
        let data = (0..self.chunk_count).map({
            let key = key.clone();
            move |index| self.chunk_key(&key, index)
        });
        let index = levels
            .into_iter()
            .enumerate()
            .skip(1)
            .flat_map(move |(level, count)| {
                let key = key.clone();
                (0..count).map(move |index| {
                    self.index_key(&key, level as u32, u32::try_from(index).unwrap_or(u32::MAX))
                })
            });
        data.chain(index)
    }

    /// The exact length data chunk `index` must have.
    pub(crate) fn chunk_len(&self, index: u32) -> u64 {
        let size = u64::from(self.chunk_size);
        let start = u64::from(index) * size;
        size.min(self.stored_len.saturating_sub(start))
    }

    /// The envelope for this manifest, bound to the caller's full key.
    pub(crate) fn encode(
        &self,
        full_key: &str,
        fingerprint: u64,
        encryption: Option<&EncryptionKey>,
    ) -> Result<Vec<u8>, envelope::EncodeError> {
        envelope::seal_envelope(
            full_key,
            Kind::Manifest,
            self.flags,
            fingerprint,
            &self.to_body(),
            encryption,
        )
    }

    /// Any manifest stored for `full_key`, whatever type it was written
    /// for; `None` for anything else. For housekeeping only (finding chunks
    /// to delete): such a manifest is never decoded into a value.
    pub(crate) fn decode_any(
        full_key: &str,
        bytes: &[u8],
        encryption: Option<&EncryptionKey>,
    ) -> Option<Manifest> {
        Self::open(full_key, bytes, None, encryption).ok()
    }

    /// Opens a manifest envelope bound to `full_key`.
    pub(crate) fn decode(
        full_key: &str,
        bytes: &[u8],
        fingerprint: u64,
        encryption: Option<&EncryptionKey>,
    ) -> Result<Manifest, Invalid> {
        Self::open(full_key, bytes, Some(fingerprint), encryption)
    }

    fn open(
        full_key: &str,
        bytes: &[u8],
        fingerprint: Option<u64>,
        encryption: Option<&EncryptionKey>,
    ) -> Result<Manifest, Invalid> {
        let (header, body) =
            envelope::open_envelope(full_key, bytes, Kind::Manifest, fingerprint, encryption)?;
        Manifest::from_body(body.bytes(bytes), header.flags, encryption.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_manifest_is_rejected_before_allocating() {
        let mut manifest = Manifest {
            write_id: [0; 8],
            chunk_size: 1024,
            chunk_count: u32::MAX,
            stored_len: 1 << 60,
            plain_len: 1 << 60,
            item_count: 1,
            iv: [0; BLOCK],
            digests: vec![],
            flags: 0,
        };
        assert!(Manifest::from_body(&manifest.to_body(), 0, false).is_err());
        manifest.chunk_count = 0;
        assert!(Manifest::from_body(&manifest.to_body(), 0, false).is_err());
        manifest.stored_len = 0;
        manifest.plain_len = 0;
        assert!(Manifest::from_body(&manifest.to_body(), 0, false).is_ok());
        manifest.plain_len = 1;
        assert!(Manifest::from_body(&manifest.to_body(), 0, false).is_err());
        assert!(Manifest::from_body(&[1, 2, 3], 0, false).is_err());
    }
}
