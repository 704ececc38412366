//! The read side of the pipeline: chunks fetched and verified in batches,
//! then decrypted and decompressed into the serialized bytes.

use std::collections::VecDeque;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::{BATCH_CHUNKS, LoadError, Pipeline};
use crate::backend::{BackendError, BackendErrorKind};
use crate::format::compress::Inflater;
use crate::format::crypto::{self, BLOCK, Decryptor};
use crate::format::envelope::{FLAG_COMPRESSED, Invalid};
use crate::format::manifest::{DIGEST, Manifest, fanout};

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
