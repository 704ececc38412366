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
//!
//! The pipeline is synchronous: it drives the engine's blocking face
//! (`Backend`) and is CPU-bound between round trips (hashing, zlib, AES).
//! Async callers never run it on an executor thread: the tokio driver
//! (`policy::drive`) and `cache_memoize_stream` run it on tokio's blocking
//! pool, where blocking is what the pool is for. An engine configured with
//! `Config::new_async` serves it through its own async client, run on
//! memo's background runtime.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, BackendError};
use crate::common::counters::Counters;
use crate::format::crypto::EncryptionKey;
use crate::format::envelope::{self, Invalid};
use crate::format::key::EntryKey;
use crate::format::manifest::Manifest;

mod read;
mod write;

pub(crate) use read::{StreamReader, verify_chunks};
pub(crate) use write::StreamWriter;

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
    /// The guard the manifest, the write that makes the value visible, is
    /// stored behind (`format::guard`); `None` for a pipeline that only
    /// reads, or when the call's version tokens could not be had, and then
    /// no manifest is stored.
    pub(crate) guard: Option<Vec<u8>>,
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
    #[cfg(test)]
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
    /// The entry's version tokens could not be read or written, so there
    /// is nothing to store it behind.
    #[error("its version could not be read or written")]
    NoVersion,
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::backend::MemoryBackend;
    use crate::format::compress::Deflater;
    use crate::format::envelope::FLAG_COMPRESSED;
    use crate::format::manifest::{DIGEST, MAX_OVERHEAD};

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
            // No guard: these tests read the manifest straight back.
            guard: Some(Vec::new()),
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
