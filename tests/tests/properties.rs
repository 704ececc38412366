//! Properties over arbitrary inputs: any serde value round-trips exactly
//! through every storage pipeline, and any key becomes a stored key that
//! collides with no other and fits memcached's rules.
//!
//! Case counts are kept small so CI stays fast; each case covers every
//! combination of mode (one entry, `large_data`, iterator), compression,
//! encryption and chunk size. `PROPTEST_CASES` raises the count for a
//! longer local run.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use memo_runtime::__fuzz::{chunk_key, lock_key};
use memo_runtime::{
    CacheKey, Config, EncryptionKey, MemoryBackend, Options, cache_memoize, cache_memoize_iter,
    configure, make_cache_key, stats,
};
use memo_tests::serial;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Unit,
    Text(String),
    Pair(i32, Vec<u16>),
    Polygon {
        label: String,
        points: Vec<(f32, f32)>,
    },
    Group(Vec<Shape>),
    Maybe(Option<Box<Shape>>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    balance: i128,
    name: String,
    initial: char,
    blob: Vec<u8>,
    tags: Vec<String>,
    attributes: BTreeMap<String, i64>,
    score: f64,
    active: bool,
    shape: Shape,
    unit: (),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    records: Vec<Record>,
    bytes: Vec<u8>,
    text: String,
}

/// Strings with any Unicode, and strings dense in the characters the
/// formats treat specially.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z:%\\\\ \\x00-\\x1f\\x7fé😀\u{feff}]{0,40}",
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    let leaf = prop_oneof![
        Just(Shape::Unit),
        text().prop_map(Shape::Text),
        (any::<i32>(), prop::collection::vec(any::<u16>(), 0..8))
            .prop_map(|(a, b)| Shape::Pair(a, b)),
        (
            text(),
            prop::collection::vec((-1e30f32..1e30, -1e30f32..1e30), 0..4)
        )
            .prop_map(|(label, points)| Shape::Polygon { label, points }),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Shape::Group),
            prop::option::of(inner.prop_map(Box::new)).prop_map(Shape::Maybe),
        ]
    })
}

fn record() -> impl Strategy<Value = Record> {
    (
        (any::<u64>(), any::<i128>(), text(), any::<char>()),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(text(), 0..4),
        prop::collection::btree_map(text(), any::<i64>(), 0..4),
        (-1e300f64..1e300, any::<bool>(), shape()),
    )
        .prop_map(
            |((id, balance, name, initial), blob, tags, attributes, (score, active, shape))| {
                Record {
                    id,
                    balance,
                    name,
                    initial,
                    blob,
                    tags,
                    attributes,
                    score,
                    active,
                    shape,
                    unit: (),
                }
            },
        )
}

/// Byte vectors from empty to several chunks of the smallest chunk size;
/// random bytes, so compression cannot shrink them below one chunk.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..5000),
        (0usize..6000).prop_map(|len| vec![0xa5; len]),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    (prop::collection::vec(record(), 0..4), bytes(), text()).prop_map(|(records, bytes, text)| {
        Payload {
            records,
            bytes,
            text,
        }
    })
}

/// `default` cases, or `PROPTEST_CASES` when set.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

const CHUNK_SIZES: [usize; 3] = [1024, 1500, 4096];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Entry,
    LargeData,
    Iterator,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

fn fresh_key(mode: Mode) -> [String; 2] {
    let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    [format!("{mode:?}"), n.to_string()]
}

/// Stores `payload` (its records, in iterator mode) and reads it back;
/// returns whether the read was a hit.
fn round_trip(payload: &Payload, mode: Mode, options: &Options) -> bool {
    let key = fresh_key(mode);
    let computed = Cell::new(0);
    let read = || match mode {
        Mode::Iterator => {
            let records: Vec<Record> = cache_memoize_iter(
                &key[..],
                || {
                    computed.set(computed.get() + 1);
                    payload.records.clone()
                },
                options,
            )
            .collect();
            assert_eq!(records, payload.records, "{mode:?} {options:?}");
        }
        _ => {
            let got: Payload = cache_memoize(
                &key[..],
                || {
                    computed.set(computed.get() + 1);
                    payload.clone()
                },
                options,
            );
            assert_eq!(&got, payload, "{mode:?} {options:?}");
        }
    };
    read();
    assert_eq!(computed.get(), 1, "the first call computes");
    read();
    computed.get() == 1
}

fn every_combination(payload: &Payload) {
    let key = EncryptionKey::new([0x42; 32]).unwrap();
    for chunk_size in CHUNK_SIZES {
        configure(
            Config::new(MemoryBackend::new())
                .chunk_size(chunk_size)
                .encryption_key(key.clone()),
        );
        for mode in [Mode::Entry, Mode::LargeData, Mode::Iterator] {
            for compress in [false, true] {
                for encrypt in [false, true] {
                    let options = Options::new()
                        .large_data(mode == Mode::LargeData)
                        .compress(compress)
                        .encrypt(encrypt);
                    let errors_before = stats().errors;
                    let hit = round_trip(payload, mode, &options);
                    // One entry larger than a chunk is refused (counted as
                    // an error); everything else must be a hit.
                    let refused = stats().errors > errors_before;
                    assert!(
                        hit || (mode == Mode::Entry && refused),
                        "{mode:?} {options:?} chunk {chunk_size}: second call missed"
                    );
                    assert_eq!(stats().invalid, 0, "nothing read back is invalid");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(16),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_value_round_trips_through_every_pipeline(payload in payload()) {
        let _serial = serial();
        every_combination(&payload);
    }
}

#[test]
fn edge_sizes_round_trip_through_every_pipeline() {
    // Payloads whose serialized size sits on and around chunk and AES
    // block boundaries.
    let _serial = serial();
    for len in [
        0, 1, 15, 16, 17, 1000, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 12_000,
    ] {
        let payload = Payload {
            records: Vec::new(),
            bytes: (0..len).map(|i| (i * 131 % 251) as u8).collect(),
            text: String::new(),
        };
        every_combination(&payload);
    }
}

/// Key components dense in separators, escapes, spaces and control
/// characters, and long enough to be shortened.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-c:%\\\\ x0-9\\x00-\\x1f\\x7f]{0,12}",
        "[:%]{0,4}(%25|%3A|\\\\x20|\\\\x5c)[a:]{0,3}",
        "[a-zé]{100,200}",
    ]
}

fn fits_memcached(key: &str) -> bool {
    key.len() <= 250 && key.bytes().all(|b| b > b' ' && b != 0x7f)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Sequences of two or more components are escaped and joined
    /// injectively. (A one-component sequence is used as is, like a plain
    /// string key, as Djblets does.)
    #[test]
    fn distinct_component_sequences_never_share_a_stored_key(
        a in prop::collection::vec(component(), 2..6),
        b in prop::collection::vec(component(), 2..6),
        namespace in "[a-z.:]{0,12}",
    ) {
        prop_assume!(a != b);
        let _serial = serial();
        let enc = EncryptionKey::new([7u8; 16]).unwrap();
        configure(Config::new(MemoryBackend::new()).namespace(&namespace).encryption_key(enc));
        for options in [Options::new(), Options::new().encrypt(true)] {
            let key_a = make_cache_key(CacheKey::from(a.clone()), &options);
            let key_b = make_cache_key(CacheKey::from(b.clone()), &options);
            prop_assert_ne!(&key_a, &key_b);
        }
        let (a, b) = (CacheKey::from(a), CacheKey::from(b));
        prop_assert_ne!(a.normalized(), b.normalized());
    }

    #[test]
    fn every_stored_and_derived_key_fits_memcached(
        parts in prop::collection::vec(component(), 0..6),
        raw in any::<String>(),
        namespace in "[a-z:. ]{0,30}",
        index in any::<u32>(),
        write_id in any::<[u8; 8]>(),
    ) {
        let _serial = serial();
        let enc = EncryptionKey::new([7u8; 16]).unwrap();
        configure(Config::new(MemoryBackend::new()).namespace(&namespace).encryption_key(enc));
        for options in [Options::new(), Options::new().encrypt(true)] {
            for key in [CacheKey::from(parts.clone()), CacheKey::from(raw.clone())] {
                let full = make_cache_key(key, &options);
                prop_assert!(fits_memcached(&full), "{full:?}");
                prop_assert!(full.len() <= 240);
                let ns = (!namespace.is_empty()).then_some(namespace.as_str());
                let lock = lock_key(ns, &full);
                prop_assert!(fits_memcached(&lock), "{lock:?}");
                let chunk = chunk_key(ns, &full, write_id, index);
                prop_assert!(fits_memcached(&chunk), "{chunk:?}");
                prop_assert_ne!(&chunk, &full);
            }
        }
    }

    /// Raw string keys (escaped and shortened, never hashed whole unless
    /// long) are injective too: escaping escapes its own escape character.
    #[test]
    fn distinct_raw_keys_never_share_a_stored_key(
        a in prop_oneof![any::<String>(), "[a\\\\x20 %:\\x00-\\x1f]{0,300}"],
        b in prop_oneof![any::<String>(), "[a\\\\x20 %:\\x00-\\x1f]{0,300}"],
    ) {
        prop_assume!(a != b);
        let _serial = serial();
        configure(Config::new(MemoryBackend::new()).namespace("ns"));
        prop_assert_ne!(make_cache_key(a.as_str(), &Options::new()), make_cache_key(b.as_str(), &Options::new()));
    }
}

#[test]
fn a_one_component_sequence_is_the_same_key_as_the_string() {
    let _serial = serial();
    configure(Config::new(MemoryBackend::new()));
    let options = Options::new();
    assert_eq!(
        make_cache_key(["a:b%c"], &options),
        make_cache_key("a:b%c", &options)
    );
    assert_ne!(
        make_cache_key(["a", "b"], &options),
        make_cache_key(["a:b", ""], &options)
    );
}
