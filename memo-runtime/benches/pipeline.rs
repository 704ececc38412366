//! memo's own cost, side by side with the work it cannot avoid.
//!
//! - `hit`: a memoized hit of a ~100-byte struct on the embedded backend, in
//!   the clear and encrypted, next to a raw `MemoryBackend::get` of the same
//!   bytes (the floor).
//! - `miss_store`: a miss that computes (trivially) and stores the struct.
//! - `large_64mib`: storing and loading 64 MiB of rows with `large_data`
//!   (compressed, and compressed + encrypted), next to the raw cost of the
//!   same postcard, deflate, inflate, AES-CBC and SHA-256/HMAC work done
//!   alone on the same bytes. The ratios show the pipeline's overhead.
//!
//! Run with `cargo bench -p memo-runtime --bench pipeline`.

// `criterion_main!` generates an undocumented `pub fn main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hmac::{Hmac, Mac};
use memo_runtime::{
    Backend, Config, EncryptionKey, MemoryBackend, Options, cache_memoize, configure,
    make_cache_key,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
    active: bool,
}

fn profile() -> Profile {
    Profile {
        id: 1234567,
        name: "Ada Lovelace".into(),
        email: "ada@analytical.example".into(),
        roles: vec!["admin".into(), "reviewer".into(), "ops".into()],
        score: 98.25,
        active: true,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    user: String,
    path: String,
    status: u16,
    bytes: u32,
    latency_ms: f32,
}

/// About 64 MiB of serialized rows: log-like records, compressible the way
/// real cached data is (repeated vocabulary, varying numbers).
fn rows() -> Vec<Row> {
    const USERS: [&str; 8] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ];
    const PATHS: [&str; 6] = [
        "/api/v1/profile",
        "/api/v1/orders",
        "/static/app.js",
        "/login",
        "/api/v1/search?q=cache",
        "/healthz",
    ];
    let mut rows = Vec::new();
    let mut size = 0usize;
    let mut i = 0u64;
    while size < 64 << 20 {
        let row = Row {
            id: i,
            user: format!("{}-{}", USERS[(i % 8) as usize], i % 1000),
            path: PATHS[(i * 7 % 6) as usize].to_owned(),
            status: [200, 200, 200, 304, 404, 500][(i % 6) as usize],
            bytes: (i * 7919 % 100_000) as u32,
            latency_ms: (i % 997) as f32 * 0.37,
        };
        size += postcard::to_stdvec(&row).unwrap().len();
        rows.push(row);
        i += 1;
    }
    rows
}

const KEY: &[u8; 32] = b"benchmark key of thirty-two byte";

/// zlib at level 1 in one go, with the compressor memo uses (flate2 on
/// miniz_oxide), straight into one growing vector.
fn deflate_level1(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::new(1), true);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    while compress
        .compress_vec(
            &data[compress.total_in() as usize..],
            &mut out,
            FlushCompress::Finish,
        )
        .unwrap()
        != Status::StreamEnd
    {
        out.reserve(out.capacity());
    }
    out
}

/// The inverse of [`deflate_level1`], for `len` plain bytes.
fn inflate(compressed: &[u8], len: usize) -> Vec<u8> {
    let mut decompress = Decompress::new(true);
    let mut out = Vec::with_capacity(len);
    while decompress
        .decompress_vec(
            &compressed[decompress.total_in() as usize..],
            &mut out,
            FlushDecompress::Finish,
        )
        .unwrap()
        != Status::StreamEnd
    {
        out.reserve(out.capacity().max(1024));
    }
    out
}

fn configure_memory() -> MemoryBackend {
    let backend = MemoryBackend::with_max_bytes(1 << 30);
    configure(Config::new(backend.clone()).encryption_key(EncryptionKey::new(KEY).unwrap()));
    backend
}

fn hit(c: &mut Criterion) {
    let backend = configure_memory();
    let mut group = c.benchmark_group("hit");
    let size = postcard::to_stdvec(&profile()).unwrap().len();
    group.throughput(Throughput::Elements(1));
    for encrypt in [false, true] {
        let options = Options::new().encrypt(encrypt);
        let _: Profile = cache_memoize("bench:hit", profile, &options);
        let name = if encrypt {
            "memo_encrypted"
        } else {
            "memo_clear"
        };
        group.bench_function(BenchmarkId::new(name, format!("{size}B")), |b| {
            b.iter(|| {
                let value: Profile =
                    cache_memoize(black_box("bench:hit"), || unreachable!("cached"), &options);
                black_box(value)
            });
        });
    }
    let full = make_cache_key("bench:hit", &Options::new());
    group.bench_function(
        BenchmarkId::new("raw_backend_get", format!("{size}B")),
        |b| b.iter(|| black_box(backend.get(black_box(&full)).unwrap())),
    );
    group.finish();
}

fn miss_store(c: &mut Criterion) {
    configure_memory();
    let mut group = c.benchmark_group("miss_store");
    for encrypt in [false, true] {
        let options = Options::new().encrypt(encrypt).force_overwrite(true);
        let name = if encrypt {
            "memo_encrypted"
        } else {
            "memo_clear"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                let value: Profile = cache_memoize(black_box("bench:miss"), profile, &options);
                black_box(value)
            });
        });
    }
    group.finish();
}

fn large(c: &mut Criterion) {
    configure_memory();
    let rows = rows();
    let serialized = postcard::to_stdvec(&rows).unwrap();
    let mut group = c.benchmark_group("large_64mib");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(serialized.len() as u64));

    for encrypt in [false, true] {
        let suffix = if encrypt {
            "compressed_encrypted"
        } else {
            "compressed"
        };
        let store = Options::new()
            .large_data(true)
            .encrypt(encrypt)
            .force_overwrite(true);
        let load = Options::new().large_data(true).encrypt(encrypt);
        group.bench_function(format!("memo_store_{suffix}"), |b| {
            b.iter(|| {
                let stored: Vec<Row> = cache_memoize("bench:large", || rows.clone(), &store);
                black_box(stored.len())
            });
        });
        let _: Vec<Row> = cache_memoize("bench:large", || rows.clone(), &store);
        group.bench_function(format!("memo_load_{suffix}"), |b| {
            b.iter(|| {
                let loaded: Vec<Row> =
                    cache_memoize("bench:large", || unreachable!("cached"), &load);
                black_box(loaded.len())
            });
        });
    }

    group.bench_function("raw_clone_rows", |b| b.iter(|| black_box(rows.clone())));
    group.bench_function("raw_postcard_serialize", |b| {
        b.iter(|| black_box(postcard::to_stdvec(&rows).unwrap()));
    });
    group.bench_function("raw_postcard_deserialize", |b| {
        b.iter(|| black_box(postcard::from_bytes::<Vec<Row>>(&serialized).unwrap()));
    });
    group.bench_function("raw_deflate_level1", |b| {
        b.iter(|| black_box(deflate_level1(&serialized)));
    });
    let compressed = deflate_level1(&serialized);
    group.bench_function("raw_inflate", |b| {
        b.iter(|| black_box(inflate(&compressed, serialized.len())));
    });
    let key = [7u8; 32];
    let iv = [9u8; 16];
    group.bench_function("raw_aes256_cbc_encrypt", |b| {
        b.iter(|| {
            black_box(
                cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
                    .encrypt_padded_vec_mut::<Pkcs7>(&compressed),
            )
        });
    });
    let ciphertext = cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(&compressed);
    group.bench_function("raw_aes256_cbc_decrypt", |b| {
        b.iter(|| {
            black_box(
                cbc::Decryptor::<aes::Aes256>::new(&key.into(), &iv.into())
                    .decrypt_padded_vec_mut::<Pkcs7>(&ciphertext)
                    .unwrap(),
            )
        });
    });
    group.bench_function("raw_sha256", |b| {
        b.iter(|| black_box(Sha256::digest(&compressed)));
    });
    group.bench_function("raw_hmac_sha256", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(&ciphertext);
            black_box(mac.finalize().into_bytes())
        });
    });
    group.finish();
    println!(
        "large_64mib: {} rows, {} serialized bytes, {} compressed bytes (ratio {:.2})",
        rows.len(),
        serialized.len(),
        compressed.len(),
        serialized.len() as f64 / compressed.len() as f64
    );
}

criterion_group!(benches, hit, miss_store, large);
criterion_main!(benches);
