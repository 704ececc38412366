//! Replays the fuzzers' seed corpora (`fuzz/corpus/<target>/*`) through
//! the same entry points the cargo-fuzz targets call, so every decoder of
//! bytes read from a backend is exercised on each `cargo test`, without
//! nightly or libFuzzer.
//!
//! Each input must return without panicking, and without its decoder
//! allocating more than the input can justify: a counting allocator
//! records the peak of live heap bytes during each call, which must stay
//! within a fixed allowance (stream buffers, the zlib state, the embedded
//! backend) plus a small multiple of the input's length. A forged length
//! or count that made a decoder allocate ahead of the data would exceed
//! it.
//!
//! To regenerate the seed files after a format change:
//! `cargo test -p memo-tests --test fuzz_corpus -- --ignored`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memo_runtime::__fuzz::{TARGETS, seeds};
use memo_tests::serial;

/// Live heap bytes, and their high-water mark since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to the system allocator; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's obligations are passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What any input may use whatever its length: 64 KiB stream buffers, the
/// zlib compressor and decompressor states, the embedded backend's tables.
const ALLOWANCE: usize = 1 << 20;
/// Bytes a decoder may hold per byte of input (copies, decryption,
/// decompression into the value, the harness re-sealing it).
const PER_INPUT_BYTE: usize = 64;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Runs `input` through `run` and returns the peak of heap bytes it added.
fn replay(target: &str, run: fn(&[u8]), input: &[u8], what: &str) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| run(input));
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert!(outcome.is_ok(), "{target}: {what} panicked");
    let limit = ALLOWANCE + PER_INPUT_BYTE * input.len();
    assert!(
        used <= limit,
        "{target}: {what} ({} bytes) peaked at {used} heap bytes, more than {limit}",
        input.len()
    );
    used
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("no corpus at {}: {err}", dir.display()))
        .map(|entry| entry.expect("readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_decodes_without_panicking_or_overallocating() {
    let _serial = serial();
    let mut total = 0;
    for (target, run) in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "{target}: empty corpus");
        let mut worst = 0;
        for file in &files {
            let input = std::fs::read(file).expect("readable corpus file");
            worst = worst.max(replay(target, *run, &input, &file.display().to_string()));
        }
        println!("{target}: {} inputs, peak {worst} heap bytes", files.len());
        total += files.len();
    }
    println!("{total} corpus inputs replayed");
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let mut dirs: Vec<String> = std::fs::read_dir(corpus_root())
        .expect("fuzz/corpus exists")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn generated_seeds_decode_without_panicking() {
    // The seeds as this build generates them, so a format change that the
    // stored corpus predates is still covered.
    let _serial = serial();
    for (target, run) in TARGETS {
        for (i, seed) in seeds(target).iter().enumerate() {
            replay(target, *run, seed, &format!("generated seed {i}"));
        }
    }
}

#[test]
fn forged_lengths_and_counts_are_refused_before_allocating() {
    let _serial = serial();
    // Envelope: a header claiming a 4 GiB body over 30 bytes.
    let mut envelope = b"MEMO\x01\x01\x00\x00".to_vec();
    envelope.extend_from_slice(&[0; 8]);
    envelope.extend_from_slice(&u32::MAX.to_le_bytes());
    envelope.extend_from_slice(&[0; 30]);
    // Postcard: a string and a byte vector claiming 2^60 bytes.
    let mut postcard = Vec::new();
    let mut n = 1u64 << 60;
    while n >= 0x80 {
        postcard.push(n as u8 | 0x80);
        n >>= 7;
    }
    postcard.push(n as u8);
    postcard.extend_from_slice(b"short");
    // Chunked, iterator: item counts and plain lengths of 2^60.
    let mut chunked = vec![1, 63, 2, 0];
    chunked.extend_from_slice(&postcard);
    let mut iter = vec![0, 63, 5, 0];
    iter.extend_from_slice(&postcard);
    let cases: [(&str, &[u8]); 4] = [
        ("envelope", &envelope),
        ("envelope", &postcard),
        ("chunked", &chunked),
        ("chunked_iter", &iter),
    ];
    for (target, input) in cases {
        let run = TARGETS.iter().find(|(name, _)| *name == target).unwrap().1;
        replay(target, run, input, "forged input");
    }
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand after a format change"]
fn regenerate_seed_corpora() {
    let _serial = serial();
    for (target, _) in TARGETS {
        let dir = corpus_root().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for old in std::fs::read_dir(&dir).unwrap() {
            let path = old.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (i, seed) in seeds(target).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed).unwrap();
        }
    }
}
