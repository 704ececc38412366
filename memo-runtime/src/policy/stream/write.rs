//! The write side of the pipeline: bytes in, chunks and a manifest out.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{BATCH_CHUNKS, Pipeline, SUPERSEDED_GRACE, StoreError};
use crate::backend::BackendError;
use crate::format::compress::Deflater;
use crate::format::crypto::{self, BLOCK, Encryptor};
use crate::format::envelope::{FLAG_COMPRESSED, FLAG_ITERATOR};
use crate::format::key::Derived;
use crate::format::manifest::{DIGEST, MAX_OVERHEAD, Manifest};
use crate::format::serial;

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
    // Visible to the stream tests, which forge a flag.
    pub(super) manifest: Manifest,
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
            guard,
        } = &self.pipeline;
        let Some(guard) = guard else {
            return Err(StoreError::NoVersion);
        };
        let encryption = encryption.as_ref();
        let envelope = self.manifest.encode(key.full(), fingerprint, encryption)?;
        if guard.len() + envelope.len() > self.chunk_size + MAX_OVERHEAD {
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
            Ok(Some(bytes)) => {
                // Behind a guard, or not (an entry of an older format).
                let entry = crate::format::guard::strip(&bytes).unwrap_or(&bytes);
                Manifest::decode_any(key.full(), entry, encryption)
            }
            Ok(None) => None,
            Err(err) => {
                counters.backend_failed("get", &err);
                None
            }
        };
        let mut stored = Vec::with_capacity(guard.len() + envelope.len());
        stored.extend_from_slice(guard);
        stored.extend_from_slice(&envelope);
        backend.set(key.stored(), &stored, self.ttl)?;
        counters.wrote(stored.len());
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
