//! Splitting large values and iterators over several cache entries, and
//! reading them back.
//!
//! memcached refuses items over 1 MiB, so a large payload is stored as
//! chunks of at most `chunk_size` bytes under derived keys, plus a main
//! entry, the [`Manifest`], written last. The payload flows through a
//! pipeline that never holds more than a few chunks:
//!
//! ```text
//! postcard bytes -> zlib (optional) -> AES-CBC (optional) -> chunks -> set_many batches
//! ```
//!
//! and back the same way on load. The manifest records a random write id
//! (part of every chunk key, so two writes of one key never share chunk
//! keys and a reader can never combine their chunks), the chunk size and
//! count, the lengths, the item count, the IV, and the SHA-256 of every
//! chunk. When encrypting, the manifest is sealed with a MAC that covers
//! those digests, which authenticates every chunk (encrypt-then-MAC over
//! the whole stream). A missing, short, long or altered chunk is a miss.
//!
//! Because the manifest is written only after every chunk is stored, a
//! writer that stops half-way (an iterator dropped early, a panic, a failed
//! `set_many`) leaves only orphan chunks, which no reader can reach and
//! which expire with their TTL.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendError};
use crate::codec::{self, Deflater, FLAG_COMPRESSED, FLAG_ITERATOR, Inflater, Invalid, Kind};
use crate::crypto::{self, BLOCK, Decryptor, EncryptionKey, Encryptor};
use crate::key::chunk_key;
use crate::stats::Counters;

/// How many chunks travel in one `get_many`/`set_many` round trip. Together
/// with the chunk being filled, this bounds the pipeline's memory to about
/// five chunks (5 MiB at the default chunk size).
pub const BATCH_CHUNKS: usize = 4;

/// How long the chunks of a superseded write stay readable, for readers
/// that were streaming them when the new write landed.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(5 * 60);

const DIGEST: usize = 32;
const MANIFEST_FIXED: usize = 8 + 4 + 4 + 8 + 8 + 8 + BLOCK;

/// The main entry of a chunked value: what was written and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// A random id shared by the chunk keys of this write.
    pub write_id: [u8; 8],
    /// The size of every chunk but the last.
    pub chunk_size: u32,
    /// The number of chunks.
    pub chunk_count: u32,
    /// The total bytes stored over all chunks.
    pub stored_len: u64,
    /// The serialized length before compression and encryption.
    pub plain_len: u64,
    /// The number of items (1 for a single value).
    pub item_count: u64,
    /// The IV of the encrypted stream (zeros in the clear).
    pub iv: [u8; BLOCK],
    /// The SHA-256 of each stored chunk.
    pub digests: Vec<[u8; DIGEST]>,
    /// `FLAG_COMPRESSED` and `FLAG_ITERATOR` bits.
    pub flags: u8,
}

impl Manifest {
    /// The manifest's body bytes (before the envelope).
    pub fn to_body(&self) -> Vec<u8> {
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
    pub fn from_body(body: &[u8], flags: u8, encrypted: bool) -> Result<Manifest, Invalid> {
        if body.len() < MANIFEST_FIXED || (body.len() - MANIFEST_FIXED) % DIGEST != 0 {
            return Err(Invalid::Manifest("length"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let manifest = Manifest {
            write_id: body[..8].try_into().expect("8 bytes"),
            chunk_size: u32_at(8),
            chunk_count: u32_at(12),
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
        if manifest.digests.len() != manifest.chunk_count as usize {
            return Err(Invalid::Manifest("chunk count"));
        }
        if manifest.chunk_size == 0 {
            return Err(Invalid::Manifest("chunk size"));
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

    /// The key of chunk `index`.
    pub fn chunk_key(&self, full_key: &str, index: u32) -> String {
        chunk_key(full_key, &crypto::hex(&self.write_id), index)
    }

    /// The exact length chunk `index` must have.
    fn chunk_len(&self, index: u32) -> u64 {
        let size = u64::from(self.chunk_size);
        let start = u64::from(index) * size;
        size.min(self.stored_len - start)
    }

    /// The envelope for this manifest under `full_key`.
    pub fn encode(
        &self,
        full_key: &str,
        fingerprint: u64,
        encryption: Option<&EncryptionKey>,
    ) -> Result<Vec<u8>, codec::EncodeError> {
        codec::seal_envelope(
            full_key,
            Kind::Manifest,
            self.flags,
            fingerprint,
            &self.to_body(),
            encryption,
        )
    }

    /// Any manifest stored under `full_key`, whatever type it was written
    /// for; `None` for anything else. For housekeeping only (finding chunks
    /// to delete): such a manifest is never decoded into a value.
    pub fn decode_any(
        full_key: &str,
        bytes: &[u8],
        encryption: Option<&EncryptionKey>,
    ) -> Option<Manifest> {
        Self::open(full_key, bytes, None, encryption).ok()
    }

    /// Gives every chunk of this write `ttl` more to live (less than its
    /// own, for a superseded write).
    pub fn expire_chunks(
        &self,
        backend: &dyn Backend,
        full_key: &str,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        for index in 0..self.chunk_count {
            backend.touch(&self.chunk_key(full_key, index), ttl)?;
        }
        Ok(())
    }

    /// Deletes every chunk of this write.
    pub fn delete_chunks(&self, backend: &dyn Backend, full_key: &str) -> Result<(), BackendError> {
        for index in 0..self.chunk_count {
            backend.delete(&self.chunk_key(full_key, index))?;
        }
        Ok(())
    }

    /// Opens a manifest envelope read under `full_key`.
    pub fn decode(
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
            codec::open_envelope(full_key, bytes, Kind::Manifest, fingerprint, encryption)?;
        Manifest::from_body(body.bytes(bytes), header.flags, encryption.is_some())
    }
}

/// Why a chunked value could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A backend call failed; the manifest was not written.
    #[error("storing chunks failed: {0}")]
    Backend(#[from] BackendError),
    /// The value cannot be described by one manifest (more than 2^32 chunks
    /// or a manifest larger than a chunk).
    #[error("value too large to store: {0}")]
    TooLarge(String),
    /// The manifest could not be encoded.
    #[error(transparent)]
    Encode(#[from] codec::EncodeError),
}

/// Why a chunked value could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A backend call failed.
    #[error("reading chunks failed: {0}")]
    Backend(#[from] BackendError),
    /// Something read back did not check out.
    #[error("invalid chunked value: {0}")]
    Invalid(#[from] Invalid),
}

/// The write side of the pipeline: takes serialized bytes, compresses,
/// encrypts, cuts chunks and stores them in batches, then writes the
/// manifest on [`finish`](Self::finish).
///
/// After a backend failure it stops storing and discards further input (an
/// iterator still hands every item to its caller); `finish` then reports
/// the failure and writes no manifest.
pub struct StreamWriter {
    backend: Arc<dyn Backend>,
    counters: Arc<Counters>,
    full_key: String,
    write_hex: String,
    ttl: Duration,
    chunk_size: usize,
    deflater: Option<Deflater>,
    encryptor: Option<Encryptor>,
    partial_block: Vec<u8>,
    chunk: Vec<u8>,
    batch: Vec<(String, Vec<u8>)>,
    manifest: Manifest,
    failed: Option<BackendError>,
}

impl StreamWriter {
    /// A writer storing under `full_key`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        counters: Arc<Counters>,
        full_key: String,
        ttl: Duration,
        chunk_size: usize,
        compression: Option<u8>,
        encryption: Option<&EncryptionKey>,
        iterator: bool,
    ) -> StreamWriter {
        let mut write_id = [0u8; 8];
        crypto::fill_random(&mut write_id);
        let iv = if encryption.is_some() {
            crypto::random_iv()
        } else {
            [0u8; BLOCK]
        };
        let mut flags = 0;
        if compression.is_some() {
            flags |= FLAG_COMPRESSED;
        }
        if iterator {
            flags |= FLAG_ITERATOR;
        }
        StreamWriter {
            backend,
            counters,
            full_key,
            write_hex: crypto::hex(&write_id),
            ttl,
            chunk_size,
            deflater: compression.map(Deflater::new),
            encryptor: encryption.map(|key| key.encryptor(&iv)),
            partial_block: Vec::new(),
            chunk: Vec::new(),
            batch: Vec::new(),
            manifest: Manifest {
                write_id,
                chunk_size: u32::try_from(chunk_size).unwrap_or(u32::MAX),
                chunk_count: 0,
                stored_len: 0,
                plain_len: 0,
                item_count: if iterator { 0 } else { 1 },
                iv,
                digests: Vec::new(),
                flags,
            },
            failed: None,
        }
    }

    /// Whether a backend call failed (nothing more will be stored).
    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Appends one framed iterator item (its postcard bytes).
    pub fn write_item(&mut self, item: &[u8]) {
        self.manifest.item_count += 1;
        let (frame, len) = codec::varint(item.len() as u64);
        self.write_plain(&frame[..len]);
        self.write_plain(item);
    }

    /// Appends serialized bytes.
    pub fn write_plain(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.manifest.plain_len += data.len() as u64;
        match self.deflater.take() {
            Some(mut deflater) => {
                deflater.write(data, &mut |out| self.encrypt_stage(out));
                self.deflater = Some(deflater);
            }
            None => self.encrypt_stage(data),
        }
    }

    fn encrypt_stage(&mut self, data: &[u8]) {
        if self.encryptor.is_none() {
            return self.chunk_stage(data);
        }
        let mut pending = std::mem::take(&mut self.partial_block);
        pending.extend_from_slice(data);
        let whole = pending.len() / BLOCK * BLOCK;
        if let Some(encryptor) = self.encryptor.as_mut() {
            encryptor.encrypt_blocks(&mut pending[..whole]);
        }
        self.chunk_stage(&pending[..whole]);
        pending.drain(..whole);
        self.partial_block = pending;
    }

    fn chunk_stage(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.failed.is_none() {
            if self.chunk.capacity() == 0 {
                self.chunk.reserve_exact(self.chunk_size);
            }
            let take = (self.chunk_size - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.chunk.len() == self.chunk_size {
                self.seal_chunk();
            }
        }
    }

    fn seal_chunk(&mut self) {
        let chunk = std::mem::take(&mut self.chunk);
        let index = self.manifest.chunk_count;
        self.manifest.digests.push(Sha256::digest(&chunk).into());
        self.manifest.stored_len += chunk.len() as u64;
        self.manifest.chunk_count += 1;
        let key = chunk_key(&self.full_key, &self.write_hex, index);
        self.batch.push((key, chunk));
        if self.batch.len() >= BATCH_CHUNKS {
            self.flush_batch();
        }
    }

    fn flush_batch(&mut self) {
        if self.batch.is_empty() || self.failed.is_some() {
            self.batch.clear();
            return;
        }
        let items: Vec<(&str, &[u8])> = self
            .batch
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice()))
            .collect();
        let bytes: usize = items.iter().map(|(_, value)| value.len()).sum();
        match self.backend.set_many(&items, self.ttl) {
            Ok(()) => {
                Counters::add(&self.counters.bytes_written, bytes as u64);
                self.counters.backend_ok();
            }
            Err(err) => self.failed = Some(err),
        }
        self.batch.clear();
    }

    /// Ends the stream, stores the last chunks and then the manifest.
    pub fn finish(
        mut self,
        fingerprint: u64,
        encryption: Option<&EncryptionKey>,
    ) -> Result<(), StoreError> {
        if let Some(mut deflater) = self.deflater.take() {
            deflater.finish(&mut |out| self.encrypt_stage(out));
        }
        if self.encryptor.is_some() {
            let padding = crypto::padding(self.partial_block.len());
            self.encrypt_stage(&padding);
            debug_assert!(self.partial_block.is_empty());
        }
        if !self.chunk.is_empty() {
            self.seal_chunk();
        }
        self.flush_batch();
        if let Some(err) = self.failed.take() {
            return Err(StoreError::Backend(err));
        }
        let envelope = self
            .manifest
            .encode(&self.full_key, fingerprint, encryption)?;
        if envelope.len() > self.chunk_size.max(64 * 1024) {
            return Err(StoreError::TooLarge(format!(
                "{} chunks need a {} byte manifest",
                self.manifest.chunk_count,
                envelope.len()
            )));
        }
        // The write this one replaces, if chunked: its chunks become
        // unreachable once the new manifest lands. Left alone they would
        // live out their whole TTL (30 days by default; a Redis without an
        // eviction policy would hold them all that time), and deleted at
        // once they would vanish under a reader that is streaming them right
        // now. So they are given a short grace period, then expire.
        let previous = match self.backend.get(&self.full_key) {
            Ok(Some(bytes)) => Manifest::decode_any(&self.full_key, &bytes, encryption),
            Ok(None) => None,
            Err(err) => {
                self.counters.backend_failed("get", &err);
                None
            }
        };
        self.backend.set(&self.full_key, &envelope, self.ttl)?;
        Counters::add(&self.counters.bytes_written, envelope.len() as u64);
        if let Some(previous) = previous.filter(|p| p.write_id != self.manifest.write_id) {
            let grace = SUPERSEDED_GRACE.min(self.ttl);
            if let Err(err) = previous.expire_chunks(&*self.backend, &self.full_key, grace) {
                self.counters.backend_failed("touch", &err);
            }
        }
        Ok(())
    }
}

impl Drop for StreamWriter {
    /// A writer dropped before [`finish`](Self::finish) (an iterator the
    /// caller stopped reading) stores no manifest; a backend failure it met
    /// on the way is still counted, as `finish` would have.
    fn drop(&mut self) {
        if let Some(err) = self.failed.take() {
            self.counters.backend_failed("set_many", &err);
        }
    }
}

/// Fetches the chunks of `manifest` in batches and checks each one's length
/// and digest, without decoding anything. When the value has at most
/// `keep_up_to` chunks, the verified chunks are returned for the reader to
/// use, saving a second fetch.
pub(crate) fn verify_chunks(
    backend: &dyn Backend,
    counters: &Counters,
    full_key: &str,
    manifest: &Manifest,
    keep_up_to: usize,
) -> Result<Option<VecDeque<Vec<u8>>>, LoadError> {
    let keep = manifest.chunk_count as usize <= keep_up_to;
    let mut kept = VecDeque::new();
    let mut fetcher = ChunkFetcher::default();
    while let Some(chunk) = fetcher.next(backend, counters, full_key, manifest)? {
        if keep {
            kept.push_back(chunk);
        }
    }
    Ok(keep.then_some(kept))
}

/// Fetches verified chunks in order, a batch at a time.
#[derive(Default)]
struct ChunkFetcher {
    next_index: u32,
    queue: VecDeque<Vec<u8>>,
}

impl ChunkFetcher {
    fn next(
        &mut self,
        backend: &dyn Backend,
        counters: &Counters,
        full_key: &str,
        manifest: &Manifest,
    ) -> Result<Option<Vec<u8>>, LoadError> {
        if self.queue.is_empty() {
            let first = self.next_index;
            let end = manifest
                .chunk_count
                .min(first.saturating_add(BATCH_CHUNKS as u32));
            if first >= end {
                return Ok(None);
            }
            let keys: Vec<String> = (first..end)
                .map(|index| manifest.chunk_key(full_key, index))
                .collect();
            let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let values = backend.get_many(&key_refs)?;
            counters.backend_ok();
            if values.len() != keys.len() {
                return Err(BackendError::new(format!(
                    "get_many returned {} values for {} keys",
                    values.len(),
                    keys.len()
                ))
                .into());
            }
            for (index, value) in (first..end).zip(values) {
                let chunk = value.ok_or(Invalid::MissingChunk(index))?;
                Counters::add(&counters.bytes_read, chunk.len() as u64);
                if chunk.len() as u64 != manifest.chunk_len(index)
                    || !crypto::tags_equal(
                        &Sha256::digest(&chunk),
                        &manifest.digests[index as usize],
                    )
                {
                    return Err(Invalid::ChunkDigest(index).into());
                }
                self.queue.push_back(chunk);
            }
        }
        let chunk = self.queue.pop_front();
        if chunk.is_some() {
            self.next_index += 1;
        }
        Ok(chunk)
    }
}

/// The read side of the pipeline: an [`io::Read`] of the serialized bytes
/// of a chunked value, verifying, decrypting and decompressing chunk by
/// chunk.
///
/// Errors surface as `io::Error`s; [`take_error`](Self::take_error) then
/// tells whether the backend failed or the data did not check out. The
/// reader reports a clean end of stream only when every chunk was consumed,
/// the zlib stream ended exactly there, the padding was right and the
/// length matches the manifest.
pub struct StreamReader {
    backend: Arc<dyn Backend>,
    counters: Arc<Counters>,
    full_key: String,
    manifest: Manifest,
    fetcher: ChunkFetcher,
    preloaded: Option<VecDeque<Vec<u8>>>,
    decryptor: Option<Decryptor>,
    carry: Vec<u8>,
    stored: Vec<u8>,
    stored_pos: usize,
    chunks_done: bool,
    inflater: Option<Inflater>,
    out: Vec<u8>,
    out_pos: usize,
    plain_seen: u64,
    error: Option<LoadError>,
}

impl StreamReader {
    /// A reader of the value `manifest` describes. `preloaded` holds the
    /// chunks [`verify_chunks`] kept, if any.
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        counters: Arc<Counters>,
        full_key: String,
        manifest: Manifest,
        encryption: Option<&EncryptionKey>,
        preloaded: Option<VecDeque<Vec<u8>>>,
    ) -> StreamReader {
        let compressed = manifest.flags & FLAG_COMPRESSED != 0;
        StreamReader {
            decryptor: encryption.map(|key| key.decryptor(&manifest.iv)),
            backend,
            counters,
            full_key,
            manifest,
            fetcher: ChunkFetcher::default(),
            preloaded,
            carry: Vec::new(),
            stored: Vec::new(),
            stored_pos: 0,
            chunks_done: false,
            inflater: compressed.then(Inflater::default),
            out: Vec::new(),
            out_pos: 0,
            plain_seen: 0,
            error: None,
        }
    }

    /// The manifest being read.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Why the last read failed.
    pub fn take_error(&mut self) -> Option<LoadError> {
        self.error.take()
    }

    fn fail(&mut self, error: LoadError) -> io::Error {
        let message = error.to_string();
        self.error = Some(error);
        io::Error::new(io::ErrorKind::InvalidData, message)
    }

    /// Loads the next chunk into `stored`, decrypted; `false` when every
    /// chunk has been consumed.
    fn next_stored(&mut self) -> Result<bool, LoadError> {
        if self.chunks_done {
            return Ok(false);
        }
        let chunk = match self.preloaded.as_mut() {
            Some(preloaded) => preloaded.pop_front(),
            None => self.fetcher.next(
                &*self.backend,
                &self.counters,
                &self.full_key,
                &self.manifest,
            )?,
        };
        let Some(chunk) = chunk else {
            self.chunks_done = true;
            if !self.carry.is_empty() {
                return Err(Invalid::Stream("ciphertext is not whole blocks".into()).into());
            }
            return Ok(false);
        };
        self.stored_pos = 0;
        let last = self.is_last_chunk();
        match self.decryptor.as_mut() {
            None => self.stored = chunk,
            Some(decryptor) => {
                let mut data = std::mem::take(&mut self.carry);
                data.extend_from_slice(&chunk);
                let whole = data.len() / BLOCK * BLOCK;
                self.carry = data.split_off(whole);
                decryptor.decrypt_blocks(&mut data);
                if last {
                    if !self.carry.is_empty() {
                        return Err(Invalid::Stream("ciphertext is not whole blocks".into()).into());
                    }
                    let body = crypto::unpad(&data)
                        .ok_or_else(|| Invalid::Stream("bad padding".into()))?
                        .len();
                    data.truncate(body);
                }
                self.stored = data;
            }
        }
        if last {
            self.chunks_done = true;
        }
        Ok(true)
    }

    fn is_last_chunk(&self) -> bool {
        let consumed = match &self.preloaded {
            Some(preloaded) => self.manifest.chunk_count as usize - preloaded.len(),
            None => self.fetcher.next_index as usize,
        };
        consumed == self.manifest.chunk_count as usize
    }

    /// Refills `out` with plain bytes; `false` at the verified end.
    fn refill(&mut self) -> Result<bool, LoadError> {
        self.out.clear();
        self.out_pos = 0;
        loop {
            if self.stored_pos == self.stored.len() && !self.next_stored()? {
                return self.check_end().map(|()| false);
            }
            let input = &self.stored[self.stored_pos..];
            match self.inflater.as_mut() {
                None => {
                    self.out.extend_from_slice(input);
                    self.stored_pos = self.stored.len();
                }
                Some(inflater) => {
                    if self.out.len() < STREAM_OUT {
                        self.out.resize(STREAM_OUT, 0);
                    }
                    let (used, written) = inflater.inflate(input, &mut self.out)?;
                    self.stored_pos += used;
                    self.out.truncate(written);
                    if written == 0 && inflater.finished() {
                        if self.stored_pos < self.stored.len() || self.next_stored()? {
                            return Err(Invalid::Stream(
                                "bytes after the end of the zlib stream".into(),
                            )
                            .into());
                        }
                        return self.check_end().map(|()| false);
                    }
                }
            }
            if !self.out.is_empty() {
                self.plain_seen += self.out.len() as u64;
                if self.plain_seen > self.manifest.plain_len {
                    return Err(Invalid::Stream("longer than the manifest says".into()).into());
                }
                return Ok(true);
            }
        }
    }

    fn check_end(&self) -> Result<(), LoadError> {
        if let Some(inflater) = &self.inflater {
            if !inflater.finished() {
                return Err(Invalid::Stream("zlib stream truncated".into()).into());
            }
        }
        if self.plain_seen != self.manifest.plain_len {
            return Err(Invalid::Stream(format!(
                "{} bytes, the manifest says {}",
                self.plain_seen, self.manifest.plain_len
            ))
            .into());
        }
        Ok(())
    }
}

const STREAM_OUT: usize = 64 * 1024;

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.error.is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "stream failed"));
        }
        if self.out_pos == self.out.len() {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(err) => return Err(self.fail(err)),
            }
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    const TTL: Duration = Duration::from_secs(60);

    struct Setup {
        backend: Arc<dyn Backend>,
        counters: Arc<Counters>,
    }

    fn setup() -> Setup {
        Setup {
            backend: Arc::new(MemoryBackend::new()),
            counters: Arc::default(),
        }
    }

    fn store(
        s: &Setup,
        data: &[u8],
        chunk_size: usize,
        compression: Option<u8>,
        enc: Option<&EncryptionKey>,
    ) {
        let mut writer = StreamWriter::new(
            Arc::clone(&s.backend),
            Arc::clone(&s.counters),
            "main".into(),
            TTL,
            chunk_size,
            compression,
            enc,
            false,
        );
        for piece in data.chunks(1000) {
            writer.write_plain(piece);
        }
        writer.finish(7, enc).unwrap();
    }

    fn load(s: &Setup, enc: Option<&EncryptionKey>) -> Result<Vec<u8>, LoadError> {
        let bytes = s.backend.get("main").unwrap().expect("manifest stored");
        let manifest = Manifest::decode("main", &bytes, 7, enc)?;
        let mut reader = StreamReader::new(
            Arc::clone(&s.backend),
            Arc::clone(&s.counters),
            "main".into(),
            manifest,
            enc,
            None,
        );
        let mut out = Vec::new();
        match reader.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(_) => Err(reader.take_error().expect("an error is recorded")),
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len as u32).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn every_pipeline_combination_round_trips() {
        let key = EncryptionKey::new([3u8; 16]).unwrap();
        for len in [0, 1, 15, 16, 17, 4095, 4096, 4097, 50_000] {
            for chunk_size in [1024, 1000, 4096] {
                for compression in [None, Some(1), Some(9)] {
                    for enc in [None, Some(&key)] {
                        let s = setup();
                        let input = data(len);
                        store(&s, &input, chunk_size, compression, enc);
                        assert_eq!(
                            load(&s, enc).unwrap(),
                            input,
                            "len {len} chunk {chunk_size} {compression:?} {}",
                            enc.is_some()
                        );
                    }
                }
            }
        }
    }

    fn manifest_of(s: &Setup) -> Manifest {
        let bytes = s.backend.get("main").unwrap().unwrap();
        Manifest::decode("main", &bytes, 7, None).unwrap()
    }

    #[test]
    fn a_missing_or_altered_chunk_is_invalid() {
        let s = setup();
        store(&s, &data(10_000), 1024, None, None);
        let manifest = manifest_of(&s);
        assert_eq!(manifest.chunk_count, 10);
        let third = manifest.chunk_key("main", 3);
        let original = s.backend.get(&third).unwrap().unwrap();
        let mut flipped = original.clone();
        flipped[10] ^= 1;
        s.backend.set(&third, &flipped, TTL).unwrap();
        assert!(matches!(
            load(&s, None),
            Err(LoadError::Invalid(Invalid::ChunkDigest(3)))
        ));
        s.backend.set(&third, &original[..100], TTL).unwrap();
        assert!(matches!(
            load(&s, None),
            Err(LoadError::Invalid(Invalid::ChunkDigest(3)))
        ));
        s.backend.delete(&third).unwrap();
        assert!(matches!(
            load(&s, None),
            Err(LoadError::Invalid(Invalid::MissingChunk(3)))
        ));
    }

    #[test]
    fn chunks_of_two_writes_never_mix() {
        let s = setup();
        store(&s, &data(10_000), 1024, None, None);
        let first = manifest_of(&s);
        let old = s.backend.get(&first.chunk_key("main", 5)).unwrap().unwrap();
        store(&s, &vec![1u8; 10_000], 1024, None, None);
        let second = manifest_of(&s);
        assert_ne!(first.write_id, second.write_id);
        for index in 0..10 {
            assert_ne!(
                first.chunk_key("main", index),
                second.chunk_key("main", index)
            );
        }
        // Copying the first write's chunk over the second's is caught.
        s.backend
            .set(&second.chunk_key("main", 5), &old, TTL)
            .unwrap();
        assert!(load(&s, None).is_err());
    }

    #[test]
    fn an_overwrite_lets_the_previous_writes_chunks_expire_soon() {
        let s = setup();
        store(&s, &data(10_000), 1024, None, None);
        let first = manifest_of(&s);
        let mut writer = StreamWriter::new(
            Arc::clone(&s.backend),
            Arc::clone(&s.counters),
            "main".into(),
            Duration::from_millis(300),
            1024,
            None,
            None,
            false,
        );
        writer.write_plain(&data(5_000));
        writer.finish(7, None).unwrap();
        // Still there for a reader in flight...
        assert!(
            s.backend
                .get(&first.chunk_key("main", 0))
                .unwrap()
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(500));
        // ...then gone long before their own 60 s TTL.
        for index in 0..first.chunk_count {
            assert_eq!(
                s.backend.get(&first.chunk_key("main", index)).unwrap(),
                None
            );
        }
    }

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

    #[test]
    fn trailing_compressed_bytes_are_rejected() {
        // A stream whose zlib data ends before the last chunk does is
        // malformed even when every digest matches (a hostile writer).
        let s = setup();
        let mut writer = StreamWriter::new(
            Arc::clone(&s.backend),
            Arc::clone(&s.counters),
            "main".into(),
            TTL,
            1024,
            None,
            None,
            false,
        );
        let mut compressed = Vec::new();
        let mut deflater = Deflater::new(1);
        deflater.write(b"hello", &mut |out| compressed.extend_from_slice(out));
        deflater.finish(&mut |out| compressed.extend_from_slice(out));
        compressed.extend_from_slice(b"junk");
        writer.write_plain(&compressed);
        writer.manifest.flags |= FLAG_COMPRESSED;
        writer.finish(7, None).unwrap();
        let bytes = s.backend.get("main").unwrap().unwrap();
        let mut manifest = Manifest::decode("main", &bytes, 7, None).unwrap();
        manifest.plain_len = 5;
        let mut reader = StreamReader::new(
            Arc::clone(&s.backend),
            Arc::clone(&s.counters),
            "main".into(),
            manifest,
            None,
            None,
        );
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).is_err());
    }

    #[test]
    fn verification_keeps_small_values_and_checks_large_ones() {
        let s = setup();
        store(&s, &data(3000), 1024, None, None);
        let manifest = manifest_of(&s);
        let kept = verify_chunks(&*s.backend, &s.counters, "main", &manifest, 4).unwrap();
        assert_eq!(kept.map(|k| k.len()), Some(3));
        assert!(
            verify_chunks(&*s.backend, &s.counters, "main", &manifest, 2)
                .unwrap()
                .is_none()
        );
        s.backend.delete(&manifest.chunk_key("main", 2)).unwrap();
        assert!(verify_chunks(&*s.backend, &s.counters, "main", &manifest, 4).is_err());
    }
}
