//! The chunked pipeline: storing a large value or an iterator as chunks
//! and a manifest, and reading them back, a few chunks at a time.
//!
//! ```text
//! postcard bytes -> zlib (optional) -> AES-CBC (optional) -> chunks -> set_many batches
//! ```
//!
//! and back the same way on load. What the chunks and the manifest hold is
//! the format's (`format::manifest`); this module drives the backend: it
//! batches writes, writes the manifest last (so a writer that stops half-way
//! leaves only orphan chunks no reader can reach), lets a superseded
//! write's chunks expire after a grace period, and fetches and verifies
//! chunks in batches with the index chunks each batch needs.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::backend::{Backend, BackendError, BackendErrorKind};
use crate::common::counters::Counters;
use crate::format::compress::{Deflater, Inflater};
use crate::format::crypto::{self, BLOCK, Decryptor, EncryptionKey, Encryptor};
use crate::format::envelope::{self, FLAG_COMPRESSED, FLAG_ITERATOR, Invalid};
use crate::format::key::{Derived, EntryKey};
use crate::format::manifest::{DIGEST, MAX_OVERHEAD, Manifest, fanout};
use crate::format::serial;

/// How many chunks travel in one `get_many`/`set_many` round trip. Together
/// with the chunk being filled, this bounds the pipeline's memory to about
/// five chunks (5 MiB at the default chunk size).
pub const BATCH_CHUNKS: usize = 4;

/// How long the chunks of a superseded write stay readable, for readers
/// that were streaming them when the new write landed.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(5 * 60);

/// What every step of the pipeline shares: the backend it stores in, the
/// counters it counts in, the entry it stores, and the key it seals with.
#[derive(Clone)]
pub(crate) struct Pipeline {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) key: EntryKey,
    pub(crate) encryption: Option<EncryptionKey>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("key", &self.key)
            .field("encrypted", &self.encryption.is_some())
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Gives every chunk of the write `manifest` describes `ttl` more to
    /// live (less than its own, for a superseded write).
    pub(crate) fn expire_chunks(
        &self,
        manifest: &Manifest,
        ttl: Duration,
    ) -> Result<(), BackendError> {
        for chunk in manifest.stored_keys(&self.key) {
            self.backend.touch(&chunk, ttl)?;
        }
        Ok(())
    }

    /// Deletes every chunk of the write `manifest` describes.
    pub(crate) fn delete_chunks(&self, manifest: &Manifest) -> Result<(), BackendError> {
        for chunk in manifest.stored_keys(&self.key) {
            self.backend.delete(&chunk)?;
        }
        Ok(())
    }
}

/// Why a chunked value could not be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// A backend call failed; the manifest was not written.
    #[error("storing chunks failed: {0}")]
    Backend(#[from] BackendError),
    /// The value cannot be described by one manifest (2^32 chunks or
    /// more).
    #[error("value too large to store: {0}")]
    TooLarge(String),
    /// The manifest could not be encoded.
    #[error(transparent)]
    Encode(#[from] envelope::EncodeError),
}

/// Why a chunked value could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
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
pub(crate) struct StreamWriter {
    pipeline: Pipeline,
    write_hex: String,
    ttl: Duration,
    chunk_size: usize,
    /// Digests not yet grouped into an index chunk, per level (0 = data).
    pending: Vec<Vec<[u8; DIGEST]>>,
    /// How many chunks each level has so far.
    counts: Vec<u32>,
    /// The value needs more chunks than a manifest can count.
    too_large: bool,
    deflater: Option<Deflater>,
    encryptor: Option<Encryptor>,
    partial_block: Vec<u8>,
    chunk: Vec<u8>,
    batch: Vec<(String, Vec<u8>)>,
    manifest: Manifest,
    failed: Option<BackendError>,
}

impl StreamWriter {
    /// A writer storing the pipeline's entry for `ttl` in chunks of
    /// `chunk_size` (at least 64, two digests, as
    /// [`Config::chunk_size`](crate::Config::chunk_size) ensures), compressed
    /// at `compression` if given, as an iterator's items or one value.
    pub(crate) fn new(
        pipeline: Pipeline,
        ttl: Duration,
        chunk_size: usize,
        compression: Option<u8>,
        iterator: bool,
    ) -> StreamWriter {
        let encryption = pipeline.encryption.as_ref();
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
        let encryptor = encryption.map(|key| key.encryptor(&iv));
        StreamWriter {
            pipeline,
            write_hex: crypto::hex(&write_id),
            ttl,
            chunk_size: chunk_size.clamp(2 * DIGEST, u32::MAX as usize),
            pending: vec![Vec::new()],
            counts: vec![0],
            too_large: false,
            deflater: compression.map(Deflater::new),
            encryptor,
            partial_block: Vec::new(),
            chunk: Vec::new(),
            batch: Vec::new(),
            manifest: Manifest {
                write_id,
                chunk_size: u32::try_from(chunk_size.clamp(2 * DIGEST, u32::MAX as usize))
                    .unwrap_or(u32::MAX),
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

    /// Appends one framed iterator item (its postcard bytes).
    pub(crate) fn write_item(&mut self, item: &[u8]) {
        self.manifest.item_count += 1;
        let (frame, len) = serial::varint(item.len() as u64);
        self.write_plain(&frame[..len]);
        self.write_plain(item);
    }

    /// Appends serialized bytes.
    pub(crate) fn write_plain(&mut self, data: &[u8]) {
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
        let Some(next) = index.checked_add(1) else {
            self.too_large = true;
            self.failed = Some(BackendError::new("more chunks than a manifest can count"));
            return;
        };
        self.manifest.stored_len += chunk.len() as u64;
        self.manifest.chunk_count = next;
        let key = self.pipeline.key.derived(Derived::Chunk {
            write: &self.write_hex,
            index,
        });
        self.push_digest(0, Sha256::digest(&chunk).into());
        self.batch.push((key, chunk));
        if self.batch.len() >= BATCH_CHUNKS {
            self.flush_batch();
        }
    }

    /// Records the digest of a chunk of `level`. A level holding a full
    /// chunk's worth of digests when another arrives first becomes an index
    /// chunk of the level above, so a level lists at most a fan-out of
    /// digests only while it is the top one.
    fn push_digest(&mut self, level: usize, digest: [u8; DIGEST]) {
        let fanout = self.chunk_size / DIGEST;
        if self.pending[level].len() == fanout {
            self.seal_index(level);
        }
        self.pending[level].push(digest);
        self.counts[level] = self.counts[level].saturating_add(1);
    }

    /// Stores the pending digests of `level` as the next index chunk of the
    /// level above.
    fn seal_index(&mut self, level: usize) {
        let digests = std::mem::take(&mut self.pending[level]);
        if self.pending.len() == level + 1 {
            self.pending.push(Vec::new());
            self.counts.push(0);
        }
        let node: Vec<u8> = digests.concat();
        let key = self.pipeline.key.derived(Derived::Index {
            write: &self.write_hex,
            level: level as u32 + 1,
            index: self.counts[level + 1],
        });
        self.push_digest(level + 1, Sha256::digest(&node).into());
        self.batch.push((key, node));
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
        match self.pipeline.backend.set_many(&items, self.ttl) {
            Ok(()) => {
                self.pipeline.counters.wrote(bytes);
                self.pipeline.counters.backend_ok();
            }
            Err(err) => self.failed = Some(err),
        }
        self.batch.clear();
    }

    /// Ends the stream, stores the last chunks and then the manifest.
    pub(crate) fn finish(mut self, fingerprint: u64) -> Result<(), StoreError> {
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
        // Group each level that is not the top one into index chunks, up
        // to the first level with at most a fan-out of chunks.
        let fanout = self.chunk_size / DIGEST;
        let mut level = 0;
        while self.counts[level] as usize > fanout {
            self.seal_index(level);
            level += 1;
        }
        self.manifest.digests = std::mem::take(&mut self.pending[level]);
        self.flush_batch();
        if self.too_large {
            self.failed = None;
            return Err(StoreError::TooLarge(format!(
                "more than {} chunks",
                u32::MAX
            )));
        }
        if let Some(err) = self.failed.take() {
            return Err(StoreError::Backend(err));
        }
        let Pipeline {
            backend,
            counters,
            key,
            encryption,
        } = &self.pipeline;
        let encryption = encryption.as_ref();
        let envelope = self.manifest.encode(key.full(), fingerprint, encryption)?;
        if envelope.len() > self.chunk_size + MAX_OVERHEAD {
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
        let previous = match backend.get(key.stored()) {
            Ok(Some(bytes)) => Manifest::decode_any(key.full(), &bytes, encryption),
            Ok(None) => None,
            Err(err) => {
                counters.backend_failed("get", &err);
                None
            }
        };
        backend.set(key.stored(), &envelope, self.ttl)?;
        counters.wrote(envelope.len());
        if let Some(previous) = previous.filter(|p| p.write_id != self.manifest.write_id) {
            let grace = SUPERSEDED_GRACE.min(self.ttl);
            if let Err(err) = self.pipeline.expire_chunks(&previous, grace) {
                counters.backend_failed("touch", &err);
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
            self.pipeline.counters.backend_failed("set_many", &err);
        }
    }
}

/// Fetches the chunks of `manifest` in batches and checks each one's length
/// and digest, without decoding anything. When the value has at most
/// `keep_up_to` chunks, the verified chunks are returned for the reader to
/// use, saving a second fetch.
pub(crate) fn verify_chunks(
    pipeline: &Pipeline,
    manifest: &Manifest,
    keep_up_to: usize,
) -> Result<Option<VecDeque<Vec<u8>>>, LoadError> {
    let keep = manifest.chunk_count as usize <= keep_up_to;
    let mut kept = VecDeque::new();
    let mut fetcher = ChunkFetcher::default();
    while let Some(chunk) = fetcher.next(pipeline, manifest)? {
        if keep {
            kept.push_back(chunk);
        }
    }
    Ok(keep.then_some(kept))
}

/// Fetches verified data chunks in order, a batch at a time, with the index
/// chunks each batch needs fetched in the same round trip.
#[derive(Default)]
struct ChunkFetcher {
    next_index: u32,
    queue: VecDeque<Vec<u8>>,
    /// Chunks per level of the tree (data chunks first), once known.
    levels: Vec<u64>,
    /// The index chunk held at each level from 1 (slot 0 unused): its
    /// position in its level and its bytes.
    nodes: Vec<Option<(u64, Vec<u8>)>>,
}

impl ChunkFetcher {
    fn next(
        &mut self,
        pipeline: &Pipeline,
        manifest: &Manifest,
    ) -> Result<Option<Vec<u8>>, LoadError> {
        if self.queue.is_empty() {
            self.fetch_batch(pipeline, manifest)?;
        }
        let chunk = self.queue.pop_front();
        if chunk.is_some() {
            self.next_index += 1;
        }
        Ok(chunk)
    }

    fn fetch_batch(&mut self, pipeline: &Pipeline, manifest: &Manifest) -> Result<(), LoadError> {
        let Pipeline {
            backend,
            counters,
            key,
            ..
        } = pipeline;
        if self.levels.is_empty() {
            self.levels = manifest.levels();
            self.nodes = vec![None; self.levels.len()];
        }
        let depth = self.levels.len().saturating_sub(1);
        let fanout = fanout(manifest.chunk_size);
        let first = self.next_index;
        let mut end = manifest
            .chunk_count
            .min(first.saturating_add(BATCH_CHUNKS as u32));
        if first >= end {
            return Ok(());
        }
        if depth > 0 {
            // A batch stays within one level-1 index chunk, so one chunk
            // per level covers it.
            let boundary = (u64::from(first) / fanout + 1) * fanout;
            end = end.min(u32::try_from(boundary).unwrap_or(u32::MAX));
        }
        // The index chunk at each level that covers `first`, when not held.
        let mut wanted: Vec<(usize, u64)> = Vec::new();
        let mut span = 1u64;
        for level in 1..=depth {
            span = span.saturating_mul(fanout);
            let position = u64::from(first) / span;
            if self.nodes[level].as_ref().map(|(at, _)| *at) != Some(position) {
                wanted.push((level, position));
            }
        }
        let mut keys: Vec<String> = wanted
            .iter()
            .map(|&(level, position)| {
                manifest.index_key(
                    key,
                    level as u32,
                    u32::try_from(position).unwrap_or(u32::MAX),
                )
            })
            .collect();
        keys.extend((first..end).map(|index| manifest.chunk_key(key, index)));
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values = backend.get_many(&key_refs)?;
        counters.backend_ok();
        if values.len() != keys.len() {
            return Err(BackendError::new(format!(
                "get_many returned {} values for {} keys",
                values.len(),
                keys.len()
            ))
            .with_kind(BackendErrorKind::Protocol)
            .into());
        }
        let mut values = values.into_iter();
        // Top-down, so that each index chunk is checked against a digest
        // already trusted: the manifest's, or the verified chunk above.
        let mut fetched: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        for (&(level, position), value) in wanted.iter().zip(&mut values) {
            let bad =
                Invalid::IndexChunk(level as u32, u32::try_from(position).unwrap_or(u32::MAX));
            let node = value.ok_or_else(|| bad.clone())?;
            counters.read(node.len());
            fetched.push((level, position, node));
        }
        for (level, position, node) in fetched.into_iter().rev() {
            let bad =
                Invalid::IndexChunk(level as u32, u32::try_from(position).unwrap_or(u32::MAX));
            let children = self.levels[level - 1]
                .saturating_sub(position.saturating_mul(fanout))
                .min(fanout);
            let expected = self
                .digest_of(manifest, level, position)
                .ok_or_else(|| bad.clone())?;
            if node.len() as u64 != children * DIGEST as u64
                || !crypto::tags_equal(&Sha256::digest(&node), &expected)
            {
                return Err(bad.into());
            }
            self.nodes[level] = Some((position, node));
        }
        for (index, value) in (first..end).zip(values) {
            let chunk = value.ok_or(Invalid::MissingChunk(index))?;
            counters.read(chunk.len());
            let expected = self
                .digest_of(manifest, 0, u64::from(index))
                .ok_or(Invalid::ChunkDigest(index))?;
            if chunk.len() as u64 != manifest.chunk_len(index)
                || !crypto::tags_equal(&Sha256::digest(&chunk), &expected)
            {
                return Err(Invalid::ChunkDigest(index).into());
            }
            self.queue.push_back(chunk);
        }
        Ok(())
    }

    /// The trusted digest of chunk `position` of `level`: from the
    /// manifest for the top level, else from the held index chunk above.
    fn digest_of(&self, manifest: &Manifest, level: usize, position: u64) -> Option<[u8; DIGEST]> {
        let depth = self.levels.len().saturating_sub(1);
        if level == depth {
            return manifest
                .digests
                .get(usize::try_from(position).ok()?)
                .copied();
        }
        let fanout = fanout(manifest.chunk_size);
        let (at, node) = self.nodes.get(level + 1)?.as_ref()?;
        if *at != position / fanout {
            return None;
        }
        let offset = usize::try_from(position % fanout).ok()? * DIGEST;
        node.get(offset..offset + DIGEST)?.try_into().ok()
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
pub(crate) struct StreamReader {
    pipeline: Pipeline,
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
        pipeline: Pipeline,
        manifest: Manifest,
        preloaded: Option<VecDeque<Vec<u8>>>,
    ) -> StreamReader {
        let compressed = manifest.flags & FLAG_COMPRESSED != 0;
        StreamReader {
            decryptor: (pipeline.encryption.as_ref()).map(|key| key.decryptor(&manifest.iv)),
            pipeline,
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
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Why the last read failed.
    pub(crate) fn take_error(&mut self) -> Option<LoadError> {
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
            None => self.fetcher.next(&self.pipeline, &self.manifest)?,
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
            // Input used up: fetch the next chunk, unless the decoder still
            // holds output from it (then the empty input below drains it;
            // the end of the last chunk is not the end of the stream).
            if self.stored_pos == self.stored.len()
                && !self.inflater.as_ref().is_some_and(Inflater::pending)
                && !self.next_stored()?
            {
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

    fn entry() -> EntryKey {
        EntryKey::from_parts(None, "main", "main")
    }

    struct Setup {
        backend: Arc<dyn Backend>,
        counters: Arc<Counters>,
    }

    fn pipeline(s: &Setup, enc: Option<&EncryptionKey>) -> Pipeline {
        Pipeline {
            backend: Arc::clone(&s.backend),
            counters: Arc::clone(&s.counters),
            key: entry(),
            encryption: enc.cloned(),
        }
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
        let mut writer = StreamWriter::new(pipeline(s, enc), TTL, chunk_size, compression, false);
        for piece in data.chunks(1000) {
            writer.write_plain(piece);
        }
        writer.finish(7).unwrap();
    }

    fn load(s: &Setup, enc: Option<&EncryptionKey>) -> Result<Vec<u8>, LoadError> {
        let bytes = s.backend.get("main").unwrap().expect("manifest stored");
        let manifest = Manifest::decode("main", &bytes, 7, enc)?;
        let mut reader = StreamReader::new(pipeline(s, enc), manifest, None);
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
        let third = manifest.chunk_key(&entry(), 3);
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
        let old = s
            .backend
            .get(&first.chunk_key(&entry(), 5))
            .unwrap()
            .unwrap();
        store(&s, &vec![1u8; 10_000], 1024, None, None);
        let second = manifest_of(&s);
        assert_ne!(first.write_id, second.write_id);
        for index in 0..10 {
            assert_ne!(
                first.chunk_key(&entry(), index),
                second.chunk_key(&entry(), index)
            );
        }
        // Copying the first write's chunk over the second's is caught.
        s.backend
            .set(&second.chunk_key(&entry(), 5), &old, TTL)
            .unwrap();
        assert!(load(&s, None).is_err());
    }

    #[test]
    fn an_overwrite_lets_the_previous_writes_chunks_expire_soon() {
        let s = setup();
        store(&s, &data(10_000), 1024, None, None);
        let first = manifest_of(&s);
        let mut writer = StreamWriter::new(
            pipeline(&s, None),
            Duration::from_millis(300),
            1024,
            None,
            false,
        );
        writer.write_plain(&data(5_000));
        writer.finish(7).unwrap();
        // Still there for a reader in flight...
        assert!(
            s.backend
                .get(&first.chunk_key(&entry(), 0))
                .unwrap()
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(500));
        // ...then gone long before their own 60 s TTL.
        for index in 0..first.chunk_count {
            assert_eq!(
                s.backend.get(&first.chunk_key(&entry(), index)).unwrap(),
                None
            );
        }
    }

    #[test]
    fn trees_of_index_chunks_round_trip_and_no_item_exceeds_a_chunk() {
        let key = EncryptionKey::new([5u8; 32]).unwrap();
        // Fan-outs of 2, 3 and 32: trees up to a dozen levels deep.
        for chunk_size in [64, 100, 1024] {
            for len in [0, 63, 64, 65, 128, 129, 4096, 20_000, 70_000] {
                for compression in [None, Some(1)] {
                    for enc in [None, Some(&key)] {
                        let s = setup();
                        let input = data(len);
                        store(&s, &input, chunk_size, compression, enc);
                        assert_eq!(load(&s, enc).unwrap(), input, "{len} in {chunk_size}");
                        let bytes = s.backend.get("main").unwrap().unwrap();
                        assert!(bytes.len() <= chunk_size + MAX_OVERHEAD);
                        let manifest = Manifest::decode("main", &bytes, 7, enc).unwrap();
                        assert!(manifest.digests.len() <= chunk_size / DIGEST);
                        let levels = manifest.levels();
                        let keys: Vec<String> = manifest.stored_keys(&entry()).collect();
                        assert_eq!(keys.len() as u64, levels.iter().sum::<u64>());
                        for key in &keys {
                            let item = s.backend.get(key).unwrap().expect("every chunk stored");
                            assert!(item.len() <= chunk_size, "{key}: {}", item.len());
                        }
                        if chunk_size == 64 && len >= 4096 && compression.is_none() {
                            assert!(manifest.depth() >= 5, "{levels:?}");
                        }
                        pipeline(&s, None).delete_chunks(&manifest).unwrap();
                        for key in &keys {
                            assert_eq!(s.backend.get(key).unwrap(), None);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_missing_or_altered_index_chunk_is_invalid() {
        let s = setup();
        store(&s, &data(10_000), 100, None, None);
        let manifest = manifest_of(&s);
        assert!(manifest.depth() >= 2);
        for level in 1..=manifest.depth() {
            let index = manifest.index_key(&entry(), level, 0);
            let original = s.backend.get(&index).unwrap().unwrap();
            let mut flipped = original.clone();
            flipped[5] ^= 1;
            s.backend.set(&index, &flipped, TTL).unwrap();
            assert!(matches!(
                load(&s, None),
                Err(LoadError::Invalid(Invalid::IndexChunk(l, 0))) if l == level
            ));
            s.backend.set(&index, &original[..DIGEST], TTL).unwrap();
            assert!(load(&s, None).is_err());
            s.backend.delete(&index).unwrap();
            assert!(load(&s, None).is_err());
            s.backend.set(&index, &original, TTL).unwrap();
            assert_eq!(load(&s, None).unwrap(), data(10_000));
        }
    }

    #[test]
    fn a_reader_fetches_each_batch_with_its_index_chunks_in_one_round_trip() {
        struct Counting(MemoryBackend, std::sync::atomic::AtomicUsize);
        impl Backend for Counting {
            fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
                self.0.get(key)
            }
            fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.get_many(keys)
            }
            fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), BackendError> {
                self.0.set(key, value, ttl)
            }
            fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, BackendError> {
                self.0.add(key, value, ttl)
            }
            fn touch(&self, key: &str, ttl: Duration) -> Result<bool, BackendError> {
                self.0.touch(key, ttl)
            }
            fn delete(&self, key: &str) -> Result<bool, BackendError> {
                self.0.delete(key)
            }
        }
        let counting = Arc::new(Counting(MemoryBackend::new(), Default::default()));
        let s = Setup {
            backend: Arc::clone(&counting) as Arc<dyn Backend>,
            counters: Arc::default(),
        };
        // Fan-out 32: batches of 4 never straddle a level-1 index chunk.
        store(&s, &data(1024 * 1024), 1024, None, None);
        assert_eq!(manifest_of(&s).depth(), 1);
        assert_eq!(load(&s, None).unwrap(), data(1024 * 1024));
        let trips = counting.1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(trips, 1024 / BATCH_CHUNKS);
    }

    #[test]
    fn trailing_compressed_bytes_are_rejected() {
        // A stream whose zlib data ends before the last chunk does is
        // malformed even when every digest matches (a hostile writer).
        let s = setup();
        let mut writer = StreamWriter::new(pipeline(&s, None), TTL, 1024, None, false);
        let mut compressed = Vec::new();
        let mut deflater = Deflater::new(1);
        deflater.write(b"hello", &mut |out| compressed.extend_from_slice(out));
        deflater.finish(&mut |out| compressed.extend_from_slice(out));
        compressed.extend_from_slice(b"junk");
        writer.write_plain(&compressed);
        writer.manifest.flags |= FLAG_COMPRESSED;
        writer.finish(7).unwrap();
        let bytes = s.backend.get("main").unwrap().unwrap();
        let mut manifest = Manifest::decode("main", &bytes, 7, None).unwrap();
        manifest.plain_len = 5;
        let mut reader = StreamReader::new(pipeline(&s, None), manifest, None);
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).is_err());
    }

    #[test]
    fn verification_keeps_small_values_and_checks_large_ones() {
        let s = setup();
        store(&s, &data(3000), 1024, None, None);
        let manifest = manifest_of(&s);
        let kept = verify_chunks(&pipeline(&s, None), &manifest, 4).unwrap();
        assert_eq!(kept.map(|k| k.len()), Some(3));
        assert!(
            verify_chunks(&pipeline(&s, None), &manifest, 2)
                .unwrap()
                .is_none()
        );
        s.backend.delete(&manifest.chunk_key(&entry(), 2)).unwrap();
        assert!(verify_chunks(&pipeline(&s, None), &manifest, 4).is_err());
    }
}
