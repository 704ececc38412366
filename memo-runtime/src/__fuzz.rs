//! Entry points for fuzzing every decoder of bytes read from a backend.
//! Not a public API.
//!
//! Each function takes arbitrary bytes, feeds them to one decoder the way a
//! hostile or broken cache server could, and returns normally whatever the
//! bytes are: a panic, or an allocation larger than the input justifies, is
//! a bug. The cargo-fuzz targets under `fuzz/` call these, and
//! `tests/tests/fuzz_corpus.rs` replays the seed corpora through them as
//! ordinary tests.
//!
//! Random bytes almost never get past a checksum or a MAC, so most entry
//! points also *re-seal* the input: they wrap it in a valid envelope (or a
//! valid tag, or a manifest with the right digests) under a key the harness
//! holds, so the fuzzer reaches the decoders behind the integrity checks:
//! postcard, zlib, padding, the manifest fields and the item framing.
//!
//! [`chunked`] and [`chunked_iter`] read through the public API, so they
//! install a configuration of their own for the duration of the call and
//! put the previous one back afterwards; callers running tests in parallel
//! threads must serialize them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{Options, cache_memoize, cache_memoize_iter, make_cache_key};
use crate::backend::{Backend, MemoryBackend};
use crate::config::{Config, config, configure};
use crate::format::compress::Deflater;
use crate::format::crypto::{EncryptionKey, TAG};
use crate::format::envelope::{self, Kind, fingerprint};
use crate::format::key::EntryKey;
use crate::format::manifest::Manifest;
use crate::format::serial::write_varint;
use crate::lock::{CacheLock, LockError, LockOptions};
use crate::policy::stream::{Pipeline, StreamWriter};

/// The key every fuzzed value is stored under.
pub const KEY: &str = "fuzz:key";

const TTL: Duration = Duration::from_secs(60);

/// The key the harness seals with (any fixed key will do).
pub fn key() -> EncryptionKey {
    EncryptionKey::new(*b"memo fuzzing key, 32 bytes long!").expect("32 bytes")
}

/// A type with a bit of everything serde and postcard handle: nested
/// structs, enums with every variant shape, strings, bytes, maps, options,
/// floats and chars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// An integer.
    pub id: u64,
    /// A signed integer.
    pub delta: i32,
    /// A string.
    pub name: String,
    /// Bytes.
    pub data: Vec<u8>,
    /// Nested values.
    pub children: Vec<Child>,
    /// A map.
    pub index: BTreeMap<String, u16>,
    /// An option of a tuple.
    pub pair: Option<(char, f64)>,
    /// A flag.
    pub flag: bool,
}

/// An enum with every variant shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Child {
    /// A unit variant.
    Empty,
    /// A newtype variant.
    Text(String),
    /// A tuple variant.
    Pair(u8, Vec<u32>),
    /// A struct variant.
    Node {
        /// A label.
        label: String,
        /// Nested children.
        inner: Vec<Child>,
    },
}

/// Decodes `data` as a value envelope of several types, in the clear and
/// encrypted, as read and re-sealed around its bytes.
pub fn envelope(data: &[u8]) {
    let key = key();
    for encryption in [None, Some(&key)] {
        decode_as_all(data, encryption);
        // The same bytes as the body of a valid envelope for each type.
        macro_rules! resealed {
            ($($ty:ty),*) => {$(
                if let Ok(sealed) = envelope::seal_envelope(
                    KEY,
                    Kind::Value,
                    0,
                    fingerprint::<$ty>(false),
                    data,
                    encryption,
                ) {
                    let _ = envelope::decode_value::<$ty>(KEY, &sealed, encryption);
                }
            )*};
        }
        resealed!(
            u64,
            String,
            Vec<u8>,
            Vec<String>,
            Sample,
            Vec<Sample>,
            Option<Child>
        );
    }
    let _ = envelope::peek_kind(data);
}

fn decode_as_all(data: &[u8], encryption: Option<&EncryptionKey>) {
    let _ = envelope::decode_value::<u64>(KEY, data, encryption);
    let _ = envelope::decode_value::<String>(KEY, data, encryption);
    let _ = envelope::decode_value::<Vec<u8>>(KEY, data, encryption);
    let _ = envelope::decode_value::<Vec<String>>(KEY, data, encryption);
    let _ = envelope::decode_value::<Sample>(KEY, data, encryption);
    let _ = envelope::decode_value::<Vec<Sample>>(KEY, data, encryption);
    let _ = envelope::decode_value::<Option<Child>>(KEY, data, encryption);
}

/// Opens `data` as a sealed value (`EncryptionKey::open`); then, so that
/// decryption and the padding check are reached, opens it again with a
/// valid tag appended.
pub fn open_sealed(data: &[u8]) {
    let key = key();
    let associated: [&[u8]; 2] = [KEY.as_bytes(), b"header"];
    if let Some(plain) = key.open(&associated, data) {
        // Only a sealed input can open; the fuzzer cannot forge a tag.
        assert!(plain.len() < data.len());
    }
    let mut parts: Vec<&[u8]> = associated.to_vec();
    parts.push(data);
    let tag = key.mac(&parts);
    let mut tagged = data.to_vec();
    tagged.extend_from_slice(&tag);
    if let Some(plain) = key.open(&associated, &tagged) {
        assert!(plain.len() + TAG <= tagged.len());
    }
    let sealed = key.seal(&associated, data);
    let opened = key.open(&associated, &sealed).expect("a fresh seal opens");
    assert_eq!(&opened[..], data);
}

/// Parses `data` as a manifest: its first byte gives the envelope flags
/// (bit 7: encrypted), the rest is the body; then the whole input as a
/// manifest envelope, read and re-sealed.
pub fn manifest(data: &[u8]) {
    let key = key();
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let encrypted = flags & 0x80 != 0;
    if let Ok(manifest) = Manifest::from_body(body, flags & 0x7f, encrypted) {
        // Whatever was accepted is consistent and re-encodes to itself.
        assert!(manifest.digests.len() as u64 <= u64::from(manifest.chunk_size) / 32);
        assert!(manifest.digests.len() <= manifest.chunk_count as usize);
        assert_eq!(
            Manifest::from_body(&manifest.to_body(), manifest.flags, encrypted),
            Ok(manifest.clone())
        );
        let entry = EntryKey::from_parts(None, KEY, KEY);
        for index in [0, manifest.chunk_count.saturating_sub(1)] {
            let chunk_key = manifest.chunk_key(&entry, index);
            assert!(chunk_key.len() <= crate::common::MAX_KEY_LEN);
        }
        for chunk_key in manifest.stored_keys(&entry).take(1000) {
            assert!(chunk_key.len() <= crate::common::MAX_KEY_LEN);
        }
    }
    for iterator in [false, true] {
        let fp = fingerprint::<Sample>(iterator);
        for encryption in [None, Some(&key)] {
            let _ = Manifest::decode(KEY, data, fp, encryption);
            let flags = flags & (envelope::FLAG_COMPRESSED | envelope::FLAG_ITERATOR);
            if let Ok(sealed) =
                envelope::seal_envelope(KEY, Kind::Manifest, flags, fp, body, encryption)
            {
                let _ = Manifest::decode(KEY, &sealed, fp, encryption);
            }
        }
    }
}

/// How [`chunked`] and [`chunked_iter`] turn the input into a stored value.
///
/// Byte 0 picks the pipeline: bit 0 compress, bit 1 encrypt, bit 2 *raw*
/// (the payload is stored as is, so it reaches zlib and the AES padding as
/// stored bytes; otherwise it is the serialized stream and the harness
/// compresses and encrypts it, so it reaches postcard and the item framing).
/// Byte 1 is the chunk size less one. Byte 2 tampers with the manifest
/// (item count, plain length), byte 3 with one chunk (deleted, cut,
/// flipped, swapped). The rest is the payload.
#[derive(Debug, Clone, Copy)]
struct Plan {
    compress: bool,
    encrypt: bool,
    raw: bool,
    chunk_size: usize,
    manifest_tweak: u8,
    chunk_tweak: u8,
}

impl Plan {
    fn parse(data: &[u8]) -> Option<(Plan, &[u8])> {
        let (control, payload) = data.split_at_checked(4)?;
        Some((
            Plan {
                compress: control[0] & 1 != 0,
                encrypt: control[0] & 2 != 0,
                raw: control[0] & 4 != 0,
                chunk_size: usize::from(control[1]) + 1,
                manifest_tweak: control[2],
                chunk_tweak: control[3],
            },
            payload,
        ))
    }

    fn options(&self) -> Options {
        Options::new()
            .large_data(true)
            .compress(self.compress)
            .encrypt(self.encrypt)
            .encryption_key(key())
    }
}

/// Stores `payload` as the chunked value of [`KEY`] as `plan` says, on the
/// configured backend.
fn store_chunked(plan: Plan, payload: &[u8], iterator: bool, fp: u64) {
    let config = config();
    let key = key();
    let full_key = make_cache_key(KEY, &plan.options());
    let entry = EntryKey::from_parts(None, &full_key, KEY);
    let encryption = plan.encrypt.then_some(&key);
    let cooked = !plan.raw;
    let pipeline = Pipeline {
        backend: Arc::clone(&config.backend),
        counters: Arc::clone(&config.counters),
        key: entry.clone(),
        encryption: encryption.filter(|_| cooked).cloned(),
        // No guard: the harness reads the manifest straight back.
        guard: Some(Vec::new()),
    };
    let mut writer = StreamWriter::new(
        pipeline,
        TTL,
        plan.chunk_size,
        (cooked && plan.compress).then_some(1),
        iterator,
    );
    writer.write_plain(payload);
    let stored_encryption = encryption.filter(|_| cooked);
    if writer.finish(fp).is_err() {
        return;
    }
    let backend = &config.backend;
    let Ok(Some(bytes)) = backend.get(&full_key) else {
        return;
    };
    let Ok(mut manifest) = Manifest::decode(KEY, &bytes, fp, stored_encryption) else {
        return;
    };
    if plan.raw && plan.compress {
        manifest.flags |= envelope::FLAG_COMPRESSED;
    }
    let payload_len = payload.len() as u64;
    match plan.manifest_tweak % 8 {
        0 => {}
        1 => manifest.item_count = manifest.item_count.wrapping_add(1),
        2 => manifest.item_count = 1 << 60,
        3 => manifest.plain_len = manifest.plain_len.wrapping_sub(1),
        4 => manifest.plain_len += 1,
        5 => manifest.plain_len = 1 << 60,
        6 => manifest.item_count = u64::from(plan.manifest_tweak >> 3),
        _ => manifest.plain_len = payload_len / 2,
    }
    if manifest.chunk_count > 0 {
        let index = u32::from(plan.chunk_tweak >> 3) % manifest.chunk_count;
        let chunk_key = match plan.chunk_tweak & 0x80 {
            // An index chunk instead, when the value has any.
            0x80 if manifest.depth() > 0 => manifest.index_key(&entry, 1, 0),
            _ => manifest.chunk_key(&entry, index),
        };
        let chunk = backend.get(&chunk_key).ok().flatten().unwrap_or_default();
        let _ = match plan.chunk_tweak % 8 {
            0..=3 => Ok(()),
            4 => backend.delete(&chunk_key).map(drop),
            5 => backend.set(&chunk_key, &chunk[..chunk.len() / 2], TTL),
            6 => {
                let mut flipped = chunk;
                if let Some(byte) = flipped.first_mut() {
                    *byte ^= 0x40;
                }
                backend.set(&chunk_key, &flipped, TTL)
            }
            _ => {
                let other = manifest.chunk_key(&entry, (index + 1) % manifest.chunk_count);
                match backend.get(&other) {
                    Ok(Some(other)) => backend.set(&chunk_key, &other, TTL),
                    _ => Ok(()),
                }
            }
        };
    }
    if let Ok(envelope) = manifest.encode(KEY, fp, encryption) {
        let _ = backend.set(&full_key, &envelope, TTL);
    }
}

/// Runs `read` with a configuration of its own on a fresh memory backend,
/// then restores the configuration that was in force.
fn with_own_config(read: impl FnOnce()) {
    let previous = config();
    configure(Config::new(MemoryBackend::new()).chunk_size(4096));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read));
    configure((*previous).clone());
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Reassembles a chunked value made from `data` (see `Plan`) through
/// [`cache_memoize`] with `large_data`: the caller gets the stored value
/// or, when anything does not check out, its own.
pub fn chunked(data: &[u8]) {
    let Some((plan, payload)) = Plan::parse(data) else {
        return;
    };
    with_own_config(|| {
        store_chunked(plan, payload, false, fingerprint::<Sample>(false));
        let sentinel = Sample {
            id: u64::MAX,
            delta: 0,
            name: "computed".into(),
            data: Vec::new(),
            children: Vec::new(),
            index: BTreeMap::new(),
            pair: None,
            flag: false,
        };
        let options = plan.options();
        let got: Sample = cache_memoize(KEY, || sentinel.clone(), &options);
        if got == sentinel {
            return;
        }
        // A hit: the payload was a complete serialized value. Reading again
        // must give the same.
        let again: Sample = cache_memoize(KEY, || sentinel.clone(), &options);
        assert_eq!(got, again);
    });
}

/// Like [`chunked`], as a memoized iterator: reads the items back through
/// [`cache_memoize_iter`]. Whatever the stored bytes, the caller gets
/// either the stored items or its own, never a mix of the two.
pub fn chunked_iter(data: &[u8]) {
    let Some((plan, payload)) = Plan::parse(data) else {
        return;
    };
    with_own_config(|| {
        store_chunked(plan, payload, true, fingerprint::<Child>(true));
        let computed = vec![Child::Text("computed".into()), Child::Empty];
        let options = plan.options();
        let first: Vec<Child> = cache_memoize_iter(KEY, || computed.clone(), &options).collect();
        // Whatever the first read gave, it was stored again if it was
        // recomputed, so a second read is a hit of a well-formed list or
        // the same recomputation.
        let second: Vec<Child> = cache_memoize_iter(KEY, || computed.clone(), &options).collect();
        if first == computed {
            assert_eq!(second, computed);
        }
    });
}

/// A lock whose key holds arbitrary bytes (a foreign token, garbage):
/// acquiring it fails without blocking, and neither `release` nor
/// `update_expiration` may delete or extend it. Then the same after this
/// holder's own lock was replaced by those bytes.
pub fn lock(data: &[u8]) {
    let config = Config::new(MemoryBackend::new());
    let options = LockOptions::new().blocking(false);
    let backend = Arc::clone(&config.backend);

    let mut lock = CacheLock::for_stored_key(&config, KEY, options);
    let lock_key = lock.full_cache_key().to_owned();
    backend.set(&lock_key, data, TTL).expect("memory backend");
    assert!(!lock.acquire().expect("memory backend"));
    assert!(matches!(lock.release(), Err(LockError::NotHeld(_))));
    assert!(matches!(
        lock.update_expiration(None),
        Err(LockError::NotHeld(_))
    ));
    assert_eq!(
        backend.get(&lock_key).expect("memory backend").as_deref(),
        Some(data)
    );

    // Held, then taken over (as after an expiry) by a holder whose token is
    // `data`.
    backend.delete(&lock_key).expect("memory backend");
    let mut lock = CacheLock::for_stored_key(&config, KEY, options);
    assert!(lock.acquire().expect("memory backend"));
    backend.set(&lock_key, data, TTL).expect("memory backend");
    if data.first().is_some_and(|b| b & 1 == 1) {
        assert!(lock.update_expiration(Some(TTL)).is_err());
    }
    assert!(lock.release().is_err());
    assert_eq!(
        backend.get(&lock_key).expect("memory backend").as_deref(),
        Some(data)
    );
}

/// A fuzz entry point.
pub type Target = fn(&[u8]);

/// Every fuzz target, by name, with its entry point.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("open_sealed", open_sealed),
    ("manifest", manifest),
    ("chunked", chunked),
    ("chunked_iter", chunked_iter),
    ("lock", lock),
];

/// A small but varied [`Sample`].
pub fn sample(n: u64) -> Sample {
    Sample {
        id: n,
        delta: -(n as i32),
        name: format!("sample {n} — ünïcödé ✓ 🦀"),
        data: (0..n * 3).map(|i| i as u8).collect(),
        children: vec![
            Child::Empty,
            Child::Text("text".into()),
            Child::Pair(7, vec![1, 2, 300_000]),
            Child::Node {
                label: "node".into(),
                inner: vec![Child::Text(format!("inner {n}"))],
            },
        ],
        index: (0..n).map(|i| (format!("k{i}"), i as u16)).collect(),
        pair: Some(('é', n as f64 / 3.0)),
        flag: n % 2 == 0,
    }
}

/// Seed inputs for target `name`: valid encodings of each form, and a few
/// mutations of each (a flipped bit, a cut, an extra byte).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let key = key();
    let mut valid: Vec<Vec<u8>> = Vec::new();
    match name {
        "envelope" => {
            for encryption in [None, Some(&key)] {
                let encoded = [
                    envelope::encode_value(KEY, &42u64, encryption),
                    envelope::encode_value(KEY, &"a string".to_owned(), encryption),
                    envelope::encode_value(KEY, &vec![1u8, 2, 3], encryption),
                    envelope::encode_value(KEY, &sample(3), encryption),
                    envelope::encode_value(KEY, &vec![sample(1), sample(2)], encryption),
                    envelope::encode_value(KEY, &Some(Child::Text("x".into())), encryption),
                ];
                valid.extend(encoded.into_iter().map(|e| e.expect("encodes")));
            }
            valid.push(postcard::to_stdvec(&sample(2)).expect("encodes"));
            valid.push(Vec::new());
        }
        "open_sealed" => {
            let associated: [&[u8]; 2] = [KEY.as_bytes(), b"header"];
            for len in [0, 1, 15, 16, 17, 100] {
                valid.push(key.seal(&associated, &vec![0x5a; len]));
            }
            valid.push(vec![0u8; 32]);
            valid.push(vec![16u8; 48]);
        }
        "manifest" => {
            for (flags, payload) in [(0, 0), (envelope::FLAG_COMPRESSED, 5000), (0x80, 3000)] {
                let manifest = example_manifest(payload, flags & 0x80 != 0);
                let mut input = vec![flags];
                input.extend(manifest.to_body());
                valid.push(input);
            }
            // A tree of index chunks four levels deep.
            for encrypted in [false, true] {
                let mut input = vec![if encrypted { 0x80 } else { 0 }];
                input.extend(written_manifest(2000, 64, None, encrypted).to_body());
                valid.push(input);
            }
            // Forged counts and lengths that must be refused unallocated.
            let mut forged = example_manifest(0, false);
            forged.chunk_count = u32::MAX;
            forged.stored_len = 1 << 60;
            forged.plain_len = 1 << 60;
            let mut input = vec![envelope::FLAG_ITERATOR];
            input.extend(forged.to_body());
            valid.push(input);
        }
        "chunked" => {
            let value = postcard::to_stdvec(&sample(20)).expect("encodes");
            for control in [[0, 255, 0, 0], [1, 63, 0, 0], [3, 16, 0, 0], [2, 0, 0, 0]] {
                valid.push([&control[..], &value].concat());
            }
            for tweak in [[1, 31, 3, 0], [0, 15, 5, 0], [1, 7, 0, 12], [3, 63, 0, 13]] {
                valid.push([&tweak[..], &value].concat());
            }
            // Deep trees of index chunks, one of them altered.
            for tweak in [
                [0, 63, 0, 0x80],
                [2, 63, 0, 0x84],
                [0, 63, 0, 0x86],
                [1, 95, 0, 0x87],
            ] {
                valid.push([&tweak[..], &value].concat());
            }
            // Raw: the payload is the stored zlib stream itself.
            valid.push([&[5, 127, 0, 0][..], &deflate(&value)].concat());
            valid.push([&[6, 127, 0, 0][..], &[0u8; 64]].concat());
        }
        "chunked_iter" => {
            let mut framed = Vec::new();
            for n in 0..6u64 {
                let child = Child::Node {
                    label: format!("item {n}"),
                    inner: vec![Child::Pair(n as u8, vec![n as u32; 3])],
                };
                let item = postcard::to_stdvec(&child).expect("encodes");
                write_varint(item.len() as u64, &mut framed);
                framed.extend(item);
            }
            for control in [[0, 255, 6, 0], [1, 40, 6, 0], [3, 16, 6, 0], [2, 9, 6, 0]] {
                valid.push([&control[..], &framed].concat());
            }
            for tweak in [
                [1, 40, 1, 0],
                [0, 30, 2, 0],
                [1, 20, 4, 12],
                [0, 20, 0x3e, 0],
            ] {
                valid.push([&tweak[..], &framed].concat());
            }
            valid.push([&[5, 127, 6, 0][..], &deflate(&framed)].concat());
        }
        "lock" => {
            valid.push(Vec::new());
            valid.push(b"0123456789abcdef0123456789abcdef".to_vec());
            valid.push(vec![0xff; 300]);
            valid.push(b"\x01not a token".to_vec());
        }
        _ => panic!("no fuzz target named {name}"),
    }
    let mut all = Vec::new();
    for seed in valid {
        all.extend(mutations(&seed));
        all.push(seed);
    }
    all
}

fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    if seed.is_empty() {
        return Vec::new();
    }
    let mut flipped = seed.to_vec();
    flipped[seed.len() / 2] ^= 0x10;
    let mut longer = seed.to_vec();
    longer.push(0);
    vec![flipped, seed[..seed.len() / 2].to_vec(), longer]
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut deflater = Deflater::new(1);
    deflater.write(data, &mut |piece| out.extend_from_slice(piece));
    deflater.finish(&mut |piece| out.extend_from_slice(piece));
    out
}

/// The manifest of a real chunked write of `len` bytes.
fn example_manifest(len: usize, encrypted: bool) -> Manifest {
    written_manifest(len, 1024, Some(1), encrypted)
}

/// The manifest of a real chunked write of `len` bytes in chunks of
/// `chunk_size`.
fn written_manifest(
    len: usize,
    chunk_size: usize,
    compression: Option<u8>,
    encrypted: bool,
) -> Manifest {
    let config = Config::new(MemoryBackend::new());
    let key = key();
    let encryption = encrypted.then_some(&key);
    let pipeline = Pipeline {
        backend: Arc::clone(&config.backend),
        counters: Arc::clone(&config.counters),
        key: EntryKey::from_parts(None, KEY, KEY),
        encryption: encryption.cloned(),
        // No guard: the harness reads the manifest straight back.
        guard: Some(Vec::new()),
    };
    let mut writer = StreamWriter::new(pipeline, TTL, chunk_size, compression, false);
    writer.write_plain(&vec![7u8; len]);
    writer.finish(0).expect("memory backend");
    let bytes = config.backend.get(KEY).ok().flatten().expect("stored");
    Manifest::decode(KEY, &bytes, 0, encryption).expect("valid")
}

/// The lock key of the entry stored under `stored` in `namespace`, for the
/// property tests of derived keys.
pub fn lock_key(namespace: Option<&str>, stored: &str) -> String {
    crate::format::key::lock_key(namespace, stored)
}

/// The key of data chunk `index` of write `write_id` of the entry stored
/// (and bound) under `stored` in `namespace`.
pub fn chunk_key(namespace: Option<&str>, stored: &str, write_id: [u8; 8], index: u32) -> String {
    crate::format::key::EntryKey::from_parts(namespace, stored, stored).derived(
        crate::format::key::Derived::Chunk {
            write: &crate::format::crypto::hex(&write_id),
            index,
        },
    )
}

/// How many request batches this process has written to Redis servers,
/// single node and cluster alike (each one write, then its replies read):
/// the benchmarks count round trips per load with it.
#[cfg(feature = "redis")]
pub fn redis_round_trips() -> u64 {
    crate::backend::redis::round_trips()
}
