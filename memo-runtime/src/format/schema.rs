//! The type fingerprint: a digest of a type's serde *shape*, so that a type
//! changed between two deploys never decodes the other deploy's entries.
//!
//! postcard is not self-describing: a struct whose fields were reordered
//! (`{cents: u64, qty: u32}` → `{qty: u32, cents: u64}`), whose field went
//! from `u32` to `i32`, that gained a field, or an enum whose variants were
//! reordered, would decode the previous deploy's bytes into wrong values.
//! The fingerprint therefore covers, besides the type name and whether it is
//! an iterator's item type, everything the type's `Deserialize` impl asks of
//! the data model: field names and order, the kind of every primitive
//! (`u32` and `i32` differ), options, sequences, maps, tuples, the names of
//! newtype, tuple and unit structs, and every enum's variant names, order
//! and contents, recursively, including named types nested anywhere inside.
//!
//! # How the shape is found
//!
//! [`Tracer`] is a `Deserializer` that answers every request with a sample
//! value (numbers are `1` so that `NonZero*` accept them, strings and byte
//! strings are empty, sequences and maps hold one element) and records what
//! was requested. A type that refuses a sample (a UUID wants 16 bytes, a
//! parsed string wants digits) is traced again with the next sample of
//! that kind for that visitor type (`"0"`, a UUID, an RFC 3339 timestamp, a
//! date, an address...; 16, 4, 8, 32 bytes). One pass can explore one variant of each
//! enum occurrence, so passes repeat until every variant of every enum
//! reachable from the type has been seen. Recursion ends because a named
//! type met again inside itself is traced in *reference mode*: nothing is
//! recorded there, options are `None`, sequences and maps empty, and enums
//! take a variant known to end (found by trial: a pass that nests too deep
//! is retried with the next variant). Named types are told apart by name
//! and by the type of their visitor, so two instantiations of one generic
//! type (`Page<A>`, `Page<B>`) are two entries, not a conflict.
//!
//! A hand-written tracer rather than `serde-reflection`: that crate explores
//! only the first variant of nested enums (so a change in a later variant of
//! a nested enum would go unnoticed), treats two instantiations of a generic
//! type as a conflict, and recurses without bound into an enum whose first
//! variant is recursive (`enum Expr { Add(Box<Expr>, Box<Expr>), Lit(i64) }`),
//! which overflows the stack: an abort that `catch_unwind` cannot stop.
//!
//! The shape is traced once per type and cached in a map keyed by the
//! type's `TypeId` (lifetimes erased, so no `'static` bound is needed),
//! shared by all threads, with a per-thread copy in front so that a lookup
//! is one thread-local hash probe touching no shared memory. The digest is SHA-256 over
//! a canonical encoding in which named types are numbered in the order a
//! depth-first walk meets them, so it is the same in every process of every
//! build whose types have the same names and shapes.
//!
//! # What cannot be traced
//!
//! Some types cannot be traced; their fingerprint then covers only the type
//! name and the mode (the same value as before shapes were traced), so a
//! change of their shape between deploys is not detected — bump the
//! memoized function's `version` when changing them:
//!
//! - types whose `Deserialize` calls `deserialize_any` or
//!   `deserialize_ignored_any` (untagged, internally or adjacently tagged
//!   enums, `#[serde(flatten)]`, `serde_json::Value`): postcard cannot
//!   store them either, so they fail to encode in any case;
//! - custom impls that reject every sample value the tracer offers (a
//!   string in a format none of the samples has, a number that must lie in
//!   a range excluding 0 and 1, a sequence that must not be empty on a
//!   recursive path);
//! - impls that panic while traced (the panic is caught; the default panic
//!   hook still prints its message once; under `panic = "abort"` such an
//!   impl aborts the process at its first memoized call, as it would when
//!   it met that value in the data);
//! - types nested more than 64 levels deep, recursive types with no finite
//!   value, and types so wide that tracing would take more than a bounded
//!   amount of work;
//! - a name shared by two different named types reached from one type
//!   whose visitors are the same type (only possible with hand-written
//!   impls).
//!
//! A change of meaning that keeps the shape (cents becoming euros in the
//! same `u64`) is not visible to any tracer; `version` covers it too.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{OnceLock, RwLock};

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use sha2::{Digest, Sha256};

use crate::common::hash::fnv1a;

/// Nesting deeper than this ends a pass: recursion that a variant choice
/// did not stop, or a type too deep to trace on a small thread stack.
const MAX_DEPTH: usize = 64;
/// Deserializer requests allowed for one type over all passes, so that a
/// very wide type costs bounded time once rather than unbounded time.
const MAX_WORK: usize = 200_000;
/// Passes allowed for one type.
const MAX_PASSES: usize = 4096;

/// The fingerprint of `T` in the given mode (value or iterator item).
pub(crate) fn fingerprint<T: DeserializeOwned>(iterator: bool) -> u64 {
    let id = typeid::of::<T>();
    // Each thread keeps its own copy of the pairs it has used, so that a hit
    // touches no memory shared with other threads. During thread teardown
    // the copy may be gone; the shared map answers then.
    let local = LOCAL
        .try_with(|local| local.borrow().get(&id).copied())
        .ok()
        .flatten();
    let pair = match local {
        Some(pair) => pair,
        None => {
            let pair = shared::<T>(id);
            let _ = LOCAL.try_with(|local| local.borrow_mut().insert(id, pair));
            pair
        }
    };
    pair[usize::from(iterator)]
}

type Map = HashMap<TypeId, [u64; 2], BuildHasherDefault<IdHasher>>;

thread_local! {
    static LOCAL: RefCell<Map> = RefCell::default();
}

/// Both modes' fingerprints of `T`, from the map shared by all threads,
/// traced on first use.
fn shared<T: DeserializeOwned>(id: TypeId) -> [u64; 2] {
    let cache = cache();
    // A poisoned lock only means a panic elsewhere while inserting; the map
    // itself is always whole, so its contents stay usable.
    let cached = cache
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&id)
        .copied();
    if let Some(pair) = cached {
        return pair;
    }
    // Traced outside the lock: a slow or reentrant trace must not hold up
    // other types' lookups.
    let pair = compute::<T>();
    cache
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(id, pair);
    pair
}

type Cache = RwLock<Map>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

/// A `TypeId` is already a well-mixed hash; hashing it again would only
/// cost time on the hit path.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation keeps the low half, which is as random as the rest.
        self.0 ^= value as u64 ^ (value >> 64) as u64;
    }
}

/// Both modes' fingerprints of `T`.
fn compute<T: DeserializeOwned>() -> [u64; 2] {
    let name = std::any::type_name::<T>();
    match catch_unwind(AssertUnwindSafe(trace::<T>)) {
        Ok(Ok(shape)) => [false, true].map(|iterator| shape_digest(name, &shape, iterator)),
        Ok(Err(stop)) => {
            crate::common::diag::debug!(
                "the shape of {name} cannot be traced ({stop}); its fingerprint covers its name only"
            );
            [false, true].map(|iterator| name_digest(name, iterator))
        }
        Err(_) => {
            crate::common::diag::debug!(
                "tracing the shape of {name} panicked; its fingerprint covers its name only"
            );
            [false, true].map(|iterator| name_digest(name, iterator))
        }
    }
}

/// FNV-1a of the mode and the type name: the fingerprint of a type whose
/// shape cannot be traced.
fn name_digest(name: &str, iterator: bool) -> u64 {
    fnv1a(std::iter::once(u8::from(iterator)).chain(name.bytes()))
}

/// SHA-256, truncated to 64 bits, of the mode, the type name and its shape.
fn shape_digest(name: &str, shape: &[u8], iterator: bool) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"memo shape 1\0");
    hasher.update([u8::from(iterator)]);
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update(shape);
    let digest = hasher.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Traces `T` into the canonical encoding of its shape.
fn trace<T: DeserializeOwned>() -> Result<Vec<u8>, Stop> {
    let mut trace = Trace::default();
    let mut explored = 0;
    for _ in 0..MAX_PASSES {
        trace.start_pass();
        let mut root = Shape::Unknown;
        match T::deserialize(Tracer {
            trace: &mut trace,
            out: &mut root,
        }) {
            Ok(_) => {
                if !trace.any_pending() {
                    return Ok(trace.canonical(&root));
                }
                let now = trace.explored_variants();
                if now == explored {
                    return Err(Stop::Incomplete);
                }
                explored = now;
            }
            Err(Stop::TooDeep) => trace.next_base_case()?,
            Err(Stop::Refused(msg)) if !trace.next_sample() => return Err(Stop::Refused(msg)),
            Err(Stop::Refused(_)) => {}
            Err(stop) => return Err(stop),
        }
    }
    Err(Stop::Budget)
}

/// Why a trace ended without a shape.
#[derive(Debug)]
enum Stop {
    /// Nesting beyond [`MAX_DEPTH`] that no other variant choice avoids.
    TooDeep,
    /// More work than [`MAX_WORK`] or passes than [`MAX_PASSES`].
    Budget,
    /// Some enum variants stay unreachable.
    Incomplete,
    /// Two different shapes recorded for one named type.
    Conflict(&'static str),
    /// A request the tracer cannot answer with a sample.
    Unsupported(&'static str),
    /// The type's own `Deserialize` refused a sample.
    Refused(String),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooDeep => f.write_str("nested too deep, or recursive without a finite value"),
            Self::Budget => f.write_str("too large to trace"),
            Self::Incomplete => f.write_str("some enum variants are unreachable"),
            Self::Conflict(name) => write!(f, "two shapes for the name {name}"),
            Self::Unsupported(what) => write!(f, "{what} is not traceable"),
            Self::Refused(msg) => write!(f, "a sample value was refused: {msg}"),
        }
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Self::Refused(msg.to_string())
    }
}

/// A named type: its serde name and its visitor's type.
type Key = (&'static str, TypeId);

/// What one request of the data model asked for.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Nothing was asked (a visitor that never reads its access).
    Unknown,
    Primitive(&'static str),
    Option(Box<Shape>),
    Seq(Box<Shape>),
    Map(Box<Shape>, Box<Shape>),
    Tuple(Vec<Shape>),
    Named(Key),
}

/// The recorded shape of a named type.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    Unit,
    Newtype(Shape),
    Tuple(Vec<Shape>),
    Struct(&'static [&'static str], Vec<Shape>),
    /// Variant names and the contents of the variants explored so far.
    Enum(&'static [&'static str], Vec<Option<Content>>),
}

/// The contents of one enum variant.
#[derive(Debug, Clone, PartialEq)]
enum Content {
    Unit,
    Newtype(Shape),
    Tuple(Vec<Shape>),
    Struct(&'static [&'static str], Vec<Shape>),
}

/// What one type's trace knows, across passes.
#[derive(Default)]
struct Trace {
    records: HashMap<Key, Record>,
    /// Named types being explored (outside reference mode), outermost first.
    stack: Vec<Key>,
    /// How many reference-mode named types enclose the current request.
    reference: usize,
    depth: usize,
    work: usize,
    /// The variant an enum takes in reference mode, and its variant count.
    base_case: HashMap<Key, (u32, u32)>,
    /// The last enum that took its base case in this pass.
    last_base_case: Option<Key>,
    /// The sample offered to a visitor type that refused the earlier ones.
    samples: HashMap<TypeId, usize>,
    /// The visitor type last offered a sample in this pass, and how many
    /// samples its kind has.
    last_sample: Option<(TypeId, usize)>,
}

impl Trace {
    fn start_pass(&mut self) {
        self.stack.clear();
        self.reference = 0;
        self.depth = 0;
        self.last_base_case = None;
        self.last_sample = None;
    }

    fn tick(&mut self) -> Result<(), Stop> {
        self.work += 1;
        if self.work > MAX_WORK {
            return Err(Stop::Budget);
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Stop> {
        self.tick()?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Stop::TooDeep);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Whether a named type met now is traced in reference mode.
    fn referencing(&self, key: Key) -> bool {
        self.reference > 0 || self.stack.contains(&key)
    }

    /// After a pass nested too deep: the enum whose base case was taken last
    /// tries its next variant.
    fn next_base_case(&mut self) -> Result<(), Stop> {
        let key = self.last_base_case.ok_or(Stop::TooDeep)?;
        let entry = self.base_case.get_mut(&key).ok_or(Stop::TooDeep)?;
        entry.0 += 1;
        if entry.0 >= entry.1 {
            return Err(Stop::TooDeep);
        }
        Ok(())
    }

    /// After a pass whose type refused a sample: the visitor last offered
    /// one gets the next sample of its kind. Validation runs as the value
    /// arrives, so the refusing visitor is almost always the last one.
    fn next_sample(&mut self) -> bool {
        let Some((visitor, count)) = self.last_sample else {
            return false;
        };
        let index = self.samples.entry(visitor).or_insert(0);
        *index += 1;
        *index < count
    }

    fn record(&mut self, key: Key, record: Record) -> Result<(), Stop> {
        match self.records.get(&key) {
            Some(existing) if *existing != record => Err(Stop::Conflict(key.0)),
            Some(_) => Ok(()),
            None => {
                self.records.insert(key, record);
                Ok(())
            }
        }
    }

    fn record_variant(
        &mut self,
        key: Key,
        variants: &'static [&'static str],
        index: u32,
        content: Option<Content>,
    ) -> Result<(), Stop> {
        let record = self
            .records
            .entry(key)
            .or_insert_with(|| Record::Enum(variants, vec![None; variants.len()]));
        let Record::Enum(names, contents) = record else {
            return Err(Stop::Conflict(key.0));
        };
        if *names != variants {
            return Err(Stop::Conflict(key.0));
        }
        // A visitor that never reads the variant's contents leaves none;
        // recorded as a unit so that the variant counts as explored.
        let content = content.unwrap_or(Content::Unit);
        match contents.get_mut(index as usize) {
            None => Err(Stop::Conflict(key.0)),
            Some(Some(existing)) if *existing != content => Err(Stop::Conflict(key.0)),
            Some(Some(_)) => Ok(()),
            Some(slot @ None) => {
                *slot = Some(content);
                Ok(())
            }
        }
    }

    /// The variant an enum explores outside reference mode: its first
    /// unexplored one, else the first whose contents lead to a type with
    /// unexplored variants, else the first.
    fn explore(&self, key: Key) -> u32 {
        let Some(Record::Enum(_, contents)) = self.records.get(&key) else {
            return 0;
        };
        if let Some(index) = contents.iter().position(Option::is_none) {
            return index as u32;
        }
        let leads_to_pending = |content: &Content| {
            let mut seen = vec![key];
            content_shapes(content)
                .iter()
                .any(|shape| self.shape_pending(shape, &mut seen))
        };
        contents
            .iter()
            .position(|content| content.as_ref().is_some_and(leads_to_pending))
            .map_or(0, |index| index as u32)
    }

    fn any_pending(&self) -> bool {
        self.records
            .keys()
            .any(|key| self.pending(*key, &mut Vec::new()))
    }

    /// Whether `key`, or a named type reachable from it, has unexplored
    /// variants.
    fn pending(&self, key: Key, seen: &mut Vec<Key>) -> bool {
        if seen.contains(&key) {
            return false;
        }
        seen.push(key);
        match self.records.get(&key) {
            None => false,
            Some(Record::Enum(_, contents)) => contents.iter().any(|content| match content {
                None => true,
                Some(content) => content_shapes(content)
                    .iter()
                    .any(|shape| self.shape_pending(shape, seen)),
            }),
            Some(record) => record_shapes(record)
                .iter()
                .any(|shape| self.shape_pending(shape, seen)),
        }
    }

    fn shape_pending(&self, shape: &Shape, seen: &mut Vec<Key>) -> bool {
        match shape {
            Shape::Unknown | Shape::Primitive(_) => false,
            Shape::Option(inner) | Shape::Seq(inner) => self.shape_pending(inner, seen),
            Shape::Map(key, value) => {
                self.shape_pending(key, seen) || self.shape_pending(value, seen)
            }
            Shape::Tuple(items) => items.iter().any(|item| self.shape_pending(item, seen)),
            Shape::Named(key) => self.pending(*key, seen),
        }
    }

    fn explored_variants(&self) -> usize {
        self.records
            .values()
            .map(|record| match record {
                Record::Enum(_, contents) => contents.iter().flatten().count(),
                _ => 0,
            })
            .sum()
    }

    /// The canonical encoding of `root` and every named type it reaches,
    /// numbered in the order a depth-first walk meets them.
    fn canonical(&self, root: &Shape) -> Vec<u8> {
        let mut encoder = Encoder {
            out: Vec::new(),
            numbers: HashMap::new(),
            queue: Vec::new(),
        };
        encoder.shape(root);
        let mut next = 0;
        while let Some(&key) = encoder.queue.get(next) {
            next += 1;
            encoder.text(key.0);
            match self.records.get(&key) {
                None => encoder.out.push(0),
                Some(Record::Unit) => encoder.out.push(1),
                Some(Record::Newtype(shape)) => {
                    encoder.out.push(2);
                    encoder.shape(shape);
                }
                Some(Record::Tuple(items)) => {
                    encoder.out.push(3);
                    encoder.shapes(items);
                }
                Some(Record::Struct(fields, shapes)) => {
                    encoder.out.push(4);
                    encoder.fields(fields, shapes);
                }
                Some(Record::Enum(variants, contents)) => {
                    encoder.out.push(5);
                    encoder.number(variants.len());
                    for (name, content) in variants.iter().zip(contents) {
                        encoder.text(name);
                        match content {
                            None => encoder.out.push(0),
                            Some(Content::Unit) => encoder.out.push(1),
                            Some(Content::Newtype(shape)) => {
                                encoder.out.push(2);
                                encoder.shape(shape);
                            }
                            Some(Content::Tuple(items)) => {
                                encoder.out.push(3);
                                encoder.shapes(items);
                            }
                            Some(Content::Struct(fields, shapes)) => {
                                encoder.out.push(4);
                                encoder.fields(fields, shapes);
                            }
                        }
                    }
                }
            }
        }
        encoder.out
    }
}

/// Room for the shapes of `len` elements. A length comes from the type's
/// code, not from data, but a hand-written impl may claim any: one beyond
/// the work budget could never be traced anyway, and must not be allocated.
fn slots(len: usize) -> Result<Vec<Shape>, Stop> {
    if len > MAX_WORK {
        return Err(Stop::Budget);
    }
    Ok(vec![Shape::Unknown; len])
}

fn content_shapes(content: &Content) -> &[Shape] {
    match content {
        Content::Unit => &[],
        Content::Newtype(shape) => std::slice::from_ref(shape),
        Content::Tuple(shapes) | Content::Struct(_, shapes) => shapes,
    }
}

fn record_shapes(record: &Record) -> &[Shape] {
    match record {
        Record::Unit | Record::Enum(..) => &[],
        Record::Newtype(shape) => std::slice::from_ref(shape),
        Record::Tuple(shapes) | Record::Struct(_, shapes) => shapes,
    }
}

/// Writes shapes as tagged, length-prefixed bytes; named types become
/// their number.
struct Encoder {
    out: Vec<u8>,
    numbers: HashMap<Key, usize>,
    queue: Vec<Key>,
}

impl Encoder {
    fn number(&mut self, n: usize) {
        self.out.extend_from_slice(&(n as u64).to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.number(text.len());
        self.out.extend_from_slice(text.as_bytes());
    }

    fn shapes(&mut self, shapes: &[Shape]) {
        self.number(shapes.len());
        for shape in shapes {
            self.shape(shape);
        }
    }

    fn fields(&mut self, names: &[&str], shapes: &[Shape]) {
        self.number(names.len());
        for name in names {
            self.text(name);
        }
        self.shapes(shapes);
    }

    fn shape(&mut self, shape: &Shape) {
        match shape {
            Shape::Unknown => self.out.push(0),
            Shape::Primitive(kind) => {
                self.out.push(1);
                self.text(kind);
            }
            Shape::Option(inner) => {
                self.out.push(2);
                self.shape(inner);
            }
            Shape::Seq(inner) => {
                self.out.push(3);
                self.shape(inner);
            }
            Shape::Map(key, value) => {
                self.out.push(4);
                self.shape(key);
                self.shape(value);
            }
            Shape::Tuple(items) => {
                self.out.push(5);
                self.shapes(items);
            }
            Shape::Named(key) => {
                self.out.push(6);
                let count = self.numbers.len();
                let number = *self.numbers.entry(*key).or_insert_with(|| {
                    self.queue.push(*key);
                    count
                });
                self.number(number);
            }
        }
    }
}

/// A `Deserializer` that answers with samples and records the request in
/// `out`.
struct Tracer<'t> {
    trace: &'t mut Trace,
    out: &'t mut Shape,
}

impl<'t> Tracer<'t> {
    /// Records a primitive; the index of the sample to offer `V` among
    /// `samples`.
    fn primitive<V>(self, kind: &'static str, samples: usize) -> Result<usize, Stop> {
        self.trace.tick()?;
        *self.out = Shape::Primitive(kind);
        let visitor = typeid::of::<V>();
        let index = self.trace.samples.get(&visitor).copied().unwrap_or(0);
        self.trace.last_sample = Some((visitor, samples));
        Ok(index.min(samples.saturating_sub(1)))
    }

    /// Traces a named type whose contents `visit` reads from `slots`.
    fn named<T>(
        self,
        key: Key,
        count: usize,
        visit: impl FnOnce(&mut Trace, &mut [Shape]) -> Result<T, Stop>,
        record: impl FnOnce(Vec<Shape>) -> Record,
    ) -> Result<T, Stop> {
        let trace = self.trace;
        trace.enter()?;
        let referencing = trace.referencing(key);
        if referencing {
            trace.reference += 1;
        } else {
            trace.stack.push(key);
        }
        let mut shapes = slots(count)?;
        let value = visit(trace, &mut shapes)?;
        if referencing {
            trace.reference -= 1;
        } else {
            trace.stack.pop();
            trace.record(key, record(shapes))?;
        }
        trace.leave();
        *self.out = Shape::Named(key);
        Ok(value)
    }
}

/// A sequence whose elements fill `slots`, one each.
struct Elements<'t> {
    trace: &'t mut Trace,
    slots: std::slice::IterMut<'t, Shape>,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        match self.slots.next() {
            None => Ok(None),
            Some(slot) => seed
                .deserialize(Tracer {
                    trace: self.trace,
                    out: slot,
                })
                .map(Some),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len())
    }
}

/// A map of at most one entry, whose key and value fill the two slots.
struct Entries<'t> {
    trace: &'t mut Trace,
    slots: std::slice::IterMut<'t, Shape>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        match self.slots.next() {
            None => Ok(None),
            Some(slot) => seed
                .deserialize(Tracer {
                    trace: self.trace,
                    out: slot,
                })
                .map(Some),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        match self.slots.next() {
            None => Err(Stop::Unsupported("a map value without its key")),
            Some(slot) => seed.deserialize(Tracer {
                trace: self.trace,
                out: slot,
            }),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len() / 2)
    }
}

/// The chosen variant of an enum; its contents land in `content`.
struct Variant<'t> {
    trace: &'t mut Trace,
    index: u32,
    content: &'t mut Option<Content>,
}

impl<'de, 't> EnumAccess<'de> for Variant<'t> {
    type Error = Stop;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Stop> {
        let value = seed.deserialize(self.index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = Stop;

    fn unit_variant(self) -> Result<(), Stop> {
        *self.content = Some(Content::Unit);
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Stop> {
        let mut shape = Shape::Unknown;
        let value = seed.deserialize(Tracer {
            trace: self.trace,
            out: &mut shape,
        })?;
        *self.content = Some(Content::Newtype(shape));
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        let mut shapes = slots(len)?;
        let value = visitor.visit_seq(Elements {
            trace: self.trace,
            slots: shapes.iter_mut(),
        })?;
        *self.content = Some(Content::Tuple(shapes));
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let mut shapes = vec![Shape::Unknown; fields.len()];
        let value = visitor.visit_seq(Elements {
            trace: self.trace,
            slots: shapes.iter_mut(),
        })?;
        *self.content = Some(Content::Struct(fields, shapes));
        Ok(value)
    }
}

/// Sample strings, tried in turn for a visitor that refuses the previous
/// one: empty, then forms that common parsed types (numbers, UUIDs,
/// timestamps, dates, times, addresses) accept.
const STRINGS: [&str; 9] = [
    "",
    "0",
    "a",
    "00000000-0000-0000-0000-000000000000",
    "1970-01-01T00:00:00Z",
    "1970-01-01",
    "00:00:00",
    "0.0.0.0",
    "::",
];

/// Sample byte strings, tried in turn: empty, then the lengths of common
/// fixed-size binary types (UUIDs, IPv4 and IPv6 addresses, hashes).
const BYTES: [&[u8]; 5] = [&[], &[0; 16], &[0; 4], &[0; 8], &[0; 32]];

macro_rules! primitives {
    ($($method:ident => $visit:ident, $kind:literal, $samples:expr;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            let samples = $samples;
            let index = self.primitive::<V>($kind, samples.len())?;
            visitor.$visit(samples[index])
        }
    )*};
}

// Strings and byte strings are offered as borrowed: the samples are
// `'static`, so types that insist on borrowing (`&str` inside a custom
// impl) accept them too.
impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Stop;

    primitives! {
        deserialize_bool => visit_bool, "bool", [false, true];
        deserialize_i8 => visit_i8, "i8", [1, 0];
        deserialize_i16 => visit_i16, "i16", [1, 0];
        deserialize_i32 => visit_i32, "i32", [1, 0];
        deserialize_i64 => visit_i64, "i64", [1, 0];
        deserialize_i128 => visit_i128, "i128", [1, 0];
        deserialize_u8 => visit_u8, "u8", [1, 0];
        deserialize_u16 => visit_u16, "u16", [1, 0];
        deserialize_u32 => visit_u32, "u32", [1, 0];
        deserialize_u64 => visit_u64, "u64", [1, 0];
        deserialize_u128 => visit_u128, "u128", [1, 0];
        deserialize_f32 => visit_f32, "f32", [1.0, 0.0];
        deserialize_f64 => visit_f64, "f64", [1.0, 0.0];
        deserialize_char => visit_char, "char", ['a', '0'];
        deserialize_str => visit_borrowed_str, "str", STRINGS;
        deserialize_bytes => visit_borrowed_bytes, "bytes", BYTES;
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        let index = self.primitive::<V>("str", STRINGS.len())?;
        visitor.visit_string(STRINGS[index].to_owned())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        let index = self.primitive::<V>("bytes", BYTES.len())?;
        visitor.visit_byte_buf(BYTES[index].to_vec())
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.primitive::<V>("unit", 1)?;
        visitor.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop::Unsupported("deserialize_any"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop::Unsupported("deserialize_ignored_any"))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop::Unsupported("deserialize_identifier"))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        let Tracer { trace, out } = self;
        trace.enter()?;
        let mut inner = Shape::Unknown;
        let value = if trace.reference > 0 {
            visitor.visit_none()?
        } else {
            visitor.visit_some(Tracer {
                trace: &mut *trace,
                out: &mut inner,
            })?
        };
        trace.leave();
        *out = Shape::Option(Box::new(inner));
        Ok(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        let Tracer { trace, out } = self;
        trace.enter()?;
        let mut slot = [Shape::Unknown];
        let len = if trace.reference > 0 { 0 } else { 1 };
        let value = visitor.visit_seq(Elements {
            trace: &mut *trace,
            slots: slot[..len].iter_mut(),
        })?;
        trace.leave();
        let [element] = slot;
        *out = Shape::Seq(Box::new(element));
        Ok(value)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        let Tracer { trace, out } = self;
        trace.enter()?;
        let mut slots = [Shape::Unknown, Shape::Unknown];
        let len = if trace.reference > 0 { 0 } else { 2 };
        let value = visitor.visit_map(Entries {
            trace: &mut *trace,
            slots: slots[..len].iter_mut(),
        })?;
        trace.leave();
        let [key, entry] = slots;
        *out = Shape::Map(Box::new(key), Box::new(entry));
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        let Tracer { trace, out } = self;
        trace.enter()?;
        let mut shapes = slots(len)?;
        let value = visitor.visit_seq(Elements {
            trace: &mut *trace,
            slots: shapes.iter_mut(),
        })?;
        trace.leave();
        *out = Shape::Tuple(shapes);
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let key = (name, typeid::of::<V>());
        self.named(key, 0, |_, _| visitor.visit_unit(), |_| Record::Unit)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let key = (name, typeid::of::<V>());
        self.named(
            key,
            1,
            |trace, shapes| {
                visitor.visit_newtype_struct(Tracer {
                    trace,
                    out: &mut shapes[0],
                })
            },
            |mut shapes| Record::Newtype(shapes.pop().unwrap_or(Shape::Unknown)),
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let key = (name, typeid::of::<V>());
        self.named(
            key,
            len,
            |trace, shapes| {
                visitor.visit_seq(Elements {
                    trace,
                    slots: shapes.iter_mut(),
                })
            },
            Record::Tuple,
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let key = (name, typeid::of::<V>());
        self.named(
            key,
            fields.len(),
            |trace, shapes| {
                visitor.visit_seq(Elements {
                    trace,
                    slots: shapes.iter_mut(),
                })
            },
            |shapes| Record::Struct(fields, shapes),
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let key = (name, typeid::of::<V>());
        let count = u32::try_from(variants.len()).map_err(|_| Stop::Budget)?;
        if count == 0 {
            return Err(Stop::Unsupported("an enum without variants"));
        }
        let Tracer { trace, out } = self;
        trace.enter()?;
        let mut content = None;
        let value = if trace.referencing(key) {
            let index = trace.base_case.entry(key).or_insert((0, count)).0;
            trace.last_base_case = Some(key);
            trace.reference += 1;
            let value = visitor.visit_enum(Variant {
                trace: &mut *trace,
                index,
                content: &mut content,
            })?;
            trace.reference -= 1;
            value
        } else {
            let index = trace.explore(key);
            trace.stack.push(key);
            let value = visitor.visit_enum(Variant {
                trace: &mut *trace,
                index,
                content: &mut content,
            })?;
            trace.stack.pop();
            trace.record_variant(key, variants, index, content)?;
            value
        };
        trace.leave();
        *out = Shape::Named(key);
        Ok(value)
    }

    fn is_human_readable(&self) -> bool {
        // As postcard, which stores the values: types that serialize
        // differently for humans must show their compact shape.
        false
    }
}

#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// The traced shape's fingerprint, or `None` when `T` fell back to its
    /// name.
    fn traced<T: DeserializeOwned>() -> Option<u64> {
        let fp = fingerprint::<T>(false);
        (fp != name_digest(std::any::type_name::<T>(), false)).then_some(fp)
    }

    /// The shape alone, without the type name, so that two declarations
    /// of one type (in different test modules) can be compared.
    fn shape<T: DeserializeOwned>() -> Vec<u8> {
        trace::<T>().expect("traceable")
    }

    mod before {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub(super) struct Order {
            pub cents: u64,
            pub qty: u32,
        }

        #[derive(Deserialize)]
        pub(super) enum Status {
            Open,
            Paid(u64),
            Shipped { at: u64 },
        }

        #[derive(Deserialize)]
        pub(super) struct Line {
            pub item: Item,
        }

        #[derive(Deserialize)]
        pub(super) struct Item {
            pub sku: u32,
        }
    }

    mod reordered {
        #[derive(serde::Deserialize)]
        pub(super) struct Order {
            pub qty: u32,
            pub cents: u64,
        }

        #[derive(serde::Deserialize)]
        pub(super) enum Status {
            Paid(u64),
            Open,
            Shipped { at: u64 },
        }
    }

    mod signed {
        #[derive(serde::Deserialize)]
        pub(super) struct Order {
            pub cents: u64,
            pub qty: i32,
        }
    }

    mod added {
        #[derive(serde::Deserialize)]
        pub(super) struct Order {
            pub cents: u64,
            pub qty: u32,
            pub note: String,
        }
    }

    mod renamed {
        #[derive(serde::Deserialize)]
        pub(super) struct Order {
            pub cents: u64,
            pub quantity: u32,
        }

        #[derive(serde::Deserialize)]
        pub(super) enum Status {
            Open,
            Paid(u64),
            Shipped { on: u64 },
        }
    }

    mod nested {
        #[derive(serde::Deserialize)]
        pub(super) struct Line {
            pub item: Item,
        }

        #[derive(serde::Deserialize)]
        pub(super) struct Item {
            pub sku: u64,
        }
    }

    fn differ<A: DeserializeOwned, B: DeserializeOwned>() {
        assert_ne!(shape::<A>(), shape::<B>());
        assert_ne!(traced::<A>(), None);
        assert_ne!(traced::<B>(), None);
    }

    #[test]
    fn same_shape_same_encoding() {
        assert_eq!(shape::<before::Order>(), shape::<before::Order>());
        assert_eq!(shape::<before::Status>(), shape::<before::Status>());
        #[derive(Deserialize)]
        struct Order {
            cents: u64,
            qty: u32,
        }
        // Different names, same shape: the name keeps them apart.
        assert_eq!(shape::<Order>(), shape::<before::Order>());
        assert_ne!(
            fingerprint::<Order>(false),
            fingerprint::<before::Order>(false)
        );
    }

    #[test]
    fn reordered_fields_differ() {
        differ::<before::Order, reordered::Order>();
    }

    #[test]
    fn signedness_differs() {
        differ::<before::Order, signed::Order>();
    }

    #[test]
    fn added_field_differs() {
        differ::<before::Order, added::Order>();
    }

    #[test]
    fn renamed_field_differs() {
        differ::<before::Order, renamed::Order>();
    }

    #[test]
    fn reordered_variants_differ() {
        differ::<before::Status, reordered::Status>();
    }

    #[test]
    fn renamed_field_in_a_later_variant_differs() {
        differ::<before::Status, renamed::Status>();
    }

    #[test]
    fn nested_struct_change_differs() {
        differ::<before::Line, nested::Line>();
    }

    #[test]
    fn containers_and_primitives_differ() {
        differ::<Option<u32>, u32>();
        differ::<Vec<u8>, Vec<u16>>();
        differ::<Vec<u8>, (u8,)>();
        differ::<(u8, u16), (u16, u8)>();
        differ::<std::collections::BTreeMap<u8, u16>, Vec<(u8, u16)>>();
        differ::<Option<before::Order>, Option<reordered::Order>>();
        differ::<Vec<before::Status>, Vec<reordered::Status>>();
    }

    #[test]
    fn a_nested_enums_later_variants_are_explored() {
        #[derive(Deserialize)]
        enum Outer {
            A,
            B(Vec<before::Status>),
        }
        mod other {
            #[derive(serde::Deserialize)]
            pub(crate) enum Outer {
                A,
                B(Vec<super::renamed::Status>),
            }
        }
        differ::<Outer, other::Outer>();
    }

    #[test]
    fn stable_across_calls_and_modes() {
        let first = fingerprint::<before::Order>(false);
        for _ in 0..3 {
            assert_eq!(fingerprint::<before::Order>(false), first);
        }
        assert_ne!(fingerprint::<before::Order>(true), first);
        assert_eq!(
            first,
            shape_digest(
                std::any::type_name::<before::Order>(),
                &shape::<before::Order>(),
                false
            )
        );
    }

    #[test]
    fn generic_instantiations_are_traced_apart() {
        #[derive(Deserialize)]
        struct Page<T> {
            items: Vec<T>,
        }
        #[derive(Deserialize)]
        struct Both {
            a: Page<u8>,
            b: Page<String>,
            c: Result<u8, String>,
            d: Result<String, u8>,
        }
        assert!(traced::<Both>().is_some());
    }

    #[test]
    fn recursive_types_terminate() {
        #[derive(Deserialize)]
        struct Node {
            children: Vec<Node>,
            parent: Option<Box<Node>>,
        }
        #[derive(Deserialize)]
        enum Expr {
            Add(Box<Expr>, Box<Expr>),
            Neg(Box<Expr>),
            Lit(i64),
        }
        #[derive(Deserialize)]
        enum Ping {
            Pong(Box<Pong>),
            Stop,
        }
        #[derive(Deserialize)]
        enum Pong {
            Ping(Box<Ping>),
            Stop,
        }
        #[derive(Deserialize)]
        struct Tree(Vec<Tree>);
        assert!(traced::<Node>().is_some());
        assert!(traced::<Expr>().is_some());
        assert!(traced::<Ping>().is_some());
        assert!(traced::<Tree>().is_some());
        assert!(traced::<Vec<Option<Expr>>>().is_some());
    }

    #[test]
    fn a_recursive_type_without_finite_values_falls_back() {
        #[derive(Deserialize)]
        struct Endless {
            next: Box<Endless>,
        }
        #[derive(Deserialize)]
        enum Loop {
            A(Box<Loop>),
            B(Box<Loop>),
        }
        assert_eq!(traced::<Endless>(), None);
        assert_eq!(traced::<Loop>(), None);
    }

    #[test]
    fn untraceable_types_fall_back_to_the_name() {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Untagged {
            A(u32),
            B(String),
        }
        #[derive(Deserialize)]
        #[serde(tag = "kind")]
        enum Tagged {
            A { x: u32 },
        }
        struct Picky(String);
        impl<'de> Deserialize<'de> for Picky {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                if text != "a secret word" {
                    return Err(de::Error::custom("not the word"));
                }
                Ok(Self(text))
            }
        }
        assert_eq!(traced::<Untagged>(), None);
        assert_eq!(traced::<Tagged>(), None);
        assert_eq!(traced::<Picky>(), None);
        assert_eq!(traced::<Vec<Picky>>(), None);
    }

    /// Like `uuid::Uuid` in a binary format: exactly 16 bytes.
    struct Id([u8; 16]);

    impl<'de> Deserialize<'de> for Id {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Bytes;
            impl Visitor<'_> for Bytes {
                type Value = Id;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("16 bytes")
                }
                fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Id, E> {
                    bytes
                        .try_into()
                        .map(Id)
                        .map_err(|_| E::invalid_length(bytes.len(), &self))
                }
            }
            d.deserialize_bytes(Bytes)
        }
    }

    /// A number stored as its decimal text.
    struct Decimal(u64);

    impl<'de> Deserialize<'de> for Decimal {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = <&str>::deserialize(d)?;
            text.parse().map(Decimal).map_err(de::Error::custom)
        }
    }

    #[test]
    fn refused_samples_are_retried_with_others() {
        #[derive(Deserialize)]
        struct Account {
            id: Id,
            balance: Decimal,
            owner: String,
            limit: std::num::NonZeroU64,
            parent: Option<Box<Account>>,
        }
        assert!(traced::<Id>().is_some());
        assert!(traced::<Decimal>().is_some());
        assert!(traced::<Account>().is_some());
        assert!(traced::<Vec<(Decimal, Id)>>().is_some());
    }

    #[test]
    fn a_tuple_claiming_a_huge_length_falls_back() {
        struct Huge;
        impl<'de> Deserialize<'de> for Huge {
            fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Any;
                impl<'de> Visitor<'de> for Any {
                    type Value = Huge;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("anything")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Huge, A::Error> {
                        Ok(Huge)
                    }
                }
                d.deserialize_tuple(usize::MAX, Any)
            }
        }
        assert_eq!(traced::<Huge>(), None);
    }

    #[test]
    fn threads_agree() {
        let here = fingerprint::<Vec<before::Status>>(true);
        let there = std::thread::spawn(|| fingerprint::<Vec<before::Status>>(true))
            .join()
            .unwrap();
        assert_eq!(here, there);
    }

    #[test]
    fn a_panicking_impl_falls_back() {
        struct Bomb;
        impl<'de> Deserialize<'de> for Bomb {
            fn deserialize<D: de::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                panic!("refuses to be traced")
            }
        }
        assert_eq!(traced::<Bomb>(), None);
        assert_eq!(traced::<Option<Bomb>>(), None);
    }

    #[test]
    fn too_deep_falls_back() {
        type D4<T> = Option<Option<Option<Option<T>>>>;
        type D16<T> = D4<D4<D4<D4<T>>>>;
        type D64 = D16<D16<D16<D16<u8>>>>;
        assert!(traced::<D16<u8>>().is_some());
        assert!(traced::<D64>().is_some());
        assert_eq!(traced::<Option<D64>>(), None);
    }

    #[test]
    fn std_types_are_traced() {
        assert!(traced::<std::time::Duration>().is_some());
        assert!(traced::<std::num::NonZeroU32>().is_some());
        assert!(traced::<std::net::IpAddr>().is_some());
        assert!(traced::<std::collections::HashMap<String, Vec<u8>>>().is_some());
        assert!(traced::<Box<str>>().is_some());
        assert!(traced::<()>().is_some());
        assert!(traced::<char>().is_some());
    }

    #[test]
    fn cached_lookup_is_cheap() {
        // Warm, then time many hits: the hit path must stay far below the
        // cost of a cache round trip.
        fingerprint::<before::Order>(false);
        let rounds = 100_000;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(fingerprint::<before::Order>(std::hint::black_box(false)));
        }
        let per_hit = start.elapsed() / rounds;
        assert!(
            per_hit < std::time::Duration::from_micros(1),
            "{per_hit:?} per hit"
        );
    }
}
