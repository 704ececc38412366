//! The per-process copies of hot entries (`Options::local`): a bounded map
//! in front of the shared backend, one per configuration (kept beside its
//! counters and flights, so `configure` starts afresh).
//!
//! An entry is keyed by the stored key and records the type fingerprint it
//! was kept for, so a caller of another type under the same key never takes
//! it; the payload is either the value's serialized bytes (the functional
//! API, where `T` need not be `Clone`) or the decoded value itself (the
//! attribute's `local`, which hands out clones). Each entry expires at its
//! own instant, the earlier of the call's `local` duration and the shared
//! entry's logical expiry, and a lookup checks that instant itself, so a
//! copy is never served past the value's own expiry. The budget is in bytes
//! (the size of the value as stored), set by `Config::local_capacity`.
//!
//! # Why not moka
//!
//! A local hit is meant to cost little more than the clone of the value,
//! and moka's `get` records every read for its admission policy (a channel
//! send, an epoch pin, clock reads, and the periodic draining of that
//! channel), which took about a quarter of a local hit. This map is a
//! handful of shards, each a `HashMap` under a `Mutex`: a hit is one hash,
//! one uncontended lock and a clone of an `Arc`. What it gives up is moka's
//! choice of victims: when the budget is exceeded, it drops expired copies
//! first and then arbitrary ones (a `HashMap`'s order follows its random
//! hash keys), not the least recently used. For copies of hot entries, which
//! a miss recomputes at the cost of one backend round trip, that is a good
//! trade.
//!
//! # The per-thread front
//!
//! A lock, even uncontended, and the `Arc` of the copy are two pairs of
//! atomic read-modify-writes on every hit. So each thread keeps its last
//! few small hits ([`Front`]: 8 slots, copies of at most 1 KiB as stored)
//! and serves them again while the map's generation, which every change to
//! any shard bumps under that shard's lock before making it, is the one
//! read when the copy was taken from the map under the same lock: no write
//! since, so it is still the map's copy. The price is memory outside the
//! budget: up to 8 `Arc`s per thread, held until replaced (never served
//! once the map has changed). A copy the map has dropped since may so be
//! dropped for the last time as its thread exits, among that thread's
//! other thread-local destructors: a value whose `Drop` reaches for
//! thread-local state should not be kept with the attribute's `local`.
//!
//! A lookup can also hand out a [`Held`] copy, valid by the same rule, for
//! the hits a thread remembers by the caller's own key (`policy::recall`),
//! which are served before the key is even namespaced.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a local copy holds. Nominally `pub` (in a private module) because
/// the `Keep` trait, which the attribute's generated code names through
/// `__private`, hands it around.
#[derive(Debug, Clone)]
pub enum Payload {
    /// The value's postcard bytes, decoded on every hit.
    Encoded(Arc<[u8]>),
    /// The decoded value, cloned out on every hit.
    Typed(Arc<dyn Any + Send + Sync>),
}

/// One kept value.
#[derive(Clone)]
pub(crate) struct Kept {
    /// The type fingerprint the value was kept for.
    pub(crate) fingerprint: u64,
    /// When the copy stops being served.
    pub(crate) until: Instant,
    /// The logical expiry (ms since the Unix epoch) and computation time
    /// (µs) of the shared entry, for refresh-ahead on local hits.
    pub(crate) stamp: (u64, u64),
    /// What the budget charges for it.
    pub(crate) weight: u32,
    /// The value.
    pub(crate) payload: Payload,
}

impl Kept {
    /// What the budget charges for this copy under `key`.
    fn charge(&self, key: &str) -> u64 {
        u64::from(self.weight) + key.len() as u64 + u64::from(OVERHEAD)
    }
}

/// How many shards the copies are spread over: enough that threads
/// hitting different keys rarely meet on one lock.
const SHARDS: usize = 32;

/// One kept copy and the stored key it was kept under: the map is keyed by
/// the key's 64-bit hash, so a lookup compares the key itself before
/// taking the copy, and two keys whose hashes collide share a slot (the
/// later one replaces the earlier) but never each other's copy.
struct Slot {
    key: Box<str>,
    kept: Kept,
}

/// One shard: its copies, by the hash of their stored key.
type Shard = HashMap<u64, Slot, BuildHasherDefault<KeyHash>>;

/// The hasher of a shard's map: its keys already are seeded hashes of the
/// stored keys ([`KeyHasher`]), so it takes them as they are.
#[derive(Default)]
struct KeyHash(u64);

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed; fold anything else in anyway.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// The generation of a map, on a cache line of its own: read on every
/// local hit, written only by changes.
#[repr(align(128))]
struct Generation(AtomicU64);

/// A shard's lock and its count of local hits, on a cache line of its own,
/// so that threads working in different shards never write one line.
#[repr(align(128))]
struct ShardCell {
    map: Mutex<Shard>,
    hits: AtomicU64,
}

/// The local copies of one configuration.
pub(crate) struct LocalCopies {
    shards: Box<[ShardCell]>,
    /// This map's name in the threads' fronts ([`Front`]): unique in the
    /// process, never reused.
    id: u64,
    /// Bumped by every change to any shard, under that shard's lock and
    /// before the change: a front entry filled at one generation is the
    /// map's current copy while the generation is still the same.
    generation: Arc<Generation>,
    /// The local hits counted by each thread's front, one counter per
    /// thread (written by that thread alone), and the hits of threads
    /// gone.
    stripes: Mutex<(Vec<Arc<AtomicU64>>, u64)>,
    /// The seeds of [`KeyHasher`], drawn at random per map: what a stored
    /// key is looked up by. Keys may come from outside (user ids in a
    /// template), so the hash is keyed, as `HashMap`'s own is, rather than
    /// guessable.
    seeds: [u64; 2],
    /// What every copy in every shard weighs, in all.
    weight: AtomicU64,
    capacity: u64,
}

impl std::fmt::Debug for LocalCopies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCopies")
            .field("weight", &self.weight.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Two random seeds for a map's [`KeyHasher`], from `RandomState`, which
/// draws its keys from the operating system once per thread and varies
/// them for every state it makes.
fn seeds() -> [u64; 2] {
    let state = RandomState::new();
    [state.hash_one(0u8), state.hash_one(1u8)]
}

/// The multiply-and-fold mixing step (as in `foldhash` and `wyhash`): the
/// 128-bit product of the two words, its halves xor-ed together.
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A seeded hash of a stored key: one multiply per eight bytes where
/// SipHash, used before, runs several rounds of mixing, which showed on
/// every local hit.
///
/// Its input is a stream: bytes are taken eight at a time, little-endian,
/// whatever the pieces they arrive in, and the length is mixed in at the
/// end, so a key hashes the same in pieces as joined, and two keys that
/// differ only by trailing zero bytes do not hash alike. It is not a
/// cryptographic hash: its seeds keep the values unguessable from outside,
/// which is what a hash map's defence against chosen collisions needs, and
/// a collision is never more than a miss (the map compares the key kept
/// with each copy).
pub(crate) struct KeyHasher {
    seeds: [u64; 2],
    state: u64,
    /// The bytes of an unfinished word, from its low byte up.
    tail: u64,
    tail_len: u32,
    len: u64,
}

impl KeyHasher {
    fn new(seeds: [u64; 2]) -> KeyHasher {
        KeyHasher {
            seeds,
            state: seeds[0],
            tail: 0,
            tail_len: 0,
            len: 0,
        }
    }

    fn word(&mut self, word: u64) {
        // The multiplier is the seed with an odd constant's bits xor-ed in,
        // so that a zero seed still mixes.
        self.state = fold(self.state ^ word, self.seeds[1] ^ 0x9e37_79b9_7f4a_7c15);
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        if self.tail_len > 0 {
            while self.tail_len < 8 {
                let Some((&byte, rest)) = bytes.split_first() else {
                    return;
                };
                self.tail |= u64::from(byte) << (8 * self.tail_len);
                self.tail_len += 1;
                bytes = rest;
            }
            let word = self.tail;
            self.tail = 0;
            self.tail_len = 0;
            self.word(word);
        }
        while let Some((chunk, rest)) = bytes.split_first_chunk::<8>() {
            self.word(u64::from_le_bytes(*chunk));
            bytes = rest;
        }
        for (at, &byte) in bytes.iter().enumerate() {
            self.tail |= u64::from(byte) << (8 * at);
        }
        self.tail_len = bytes.len() as u32;
    }

    pub(crate) fn finish(&self) -> u64 {
        let last = fold(
            self.state ^ self.tail,
            self.seeds[1] ^ 0x9e37_79b9_7f4a_7c15,
        );
        fold(last ^ self.len, self.seeds[0] ^ 0xc2b2_ae3d_27d4_eb4f)
    }
}

/// What each copy costs beyond its value: the key and the bookkeeping.
const OVERHEAD: u32 = 128;

/// A stored key given in pieces (the namespace, `:`, the escaped
/// components and their separators), hashed and compared as the string
/// they join into, without building it.
pub(crate) trait KeyPieces {
    /// Calls `piece` with each piece in order.
    fn pieces(&self, piece: &mut dyn FnMut(&[u8]));
}

impl KeyPieces for str {
    fn pieces(&self, piece: &mut dyn FnMut(&[u8])) {
        piece(self.as_bytes());
    }
}

/// Whether `key` is the string `pieces` join into.
fn same_key(key: &str, pieces: &(impl KeyPieces + ?Sized)) -> bool {
    let mut rest = key.as_bytes();
    let mut same = true;
    pieces.pieces(&mut |piece| {
        if same {
            match rest.split_at_checked(piece.len()) {
                Some((head, tail)) if head == piece => rest = tail,
                _ => same = false,
            }
        }
    });
    same && rest.is_empty()
}

impl LocalCopies {
    /// Copies weighing at most `capacity` bytes in all (at times a little
    /// more, for the moment between a copy being kept and others evicted).
    pub(crate) fn new(capacity: u64) -> LocalCopies {
        LocalCopies {
            shards: (0..SHARDS)
                .map(|_| ShardCell {
                    map: Mutex::default(),
                    hits: AtomicU64::new(0),
                })
                .collect(),
            seeds: seeds(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            generation: Arc::new(Generation(AtomicU64::new(0))),
            stripes: Mutex::default(),
            weight: AtomicU64::new(0),
            capacity,
        }
    }

    /// The hash a stored key is looked up by. [`KeyHasher`] takes its
    /// input as a stream, so the pieces of a key hash as the joined string
    /// would.
    pub(crate) fn hash(&self, key: &(impl KeyPieces + ?Sized)) -> u64 {
        let mut hasher = self.hasher();
        key.pieces(&mut |piece| hasher.write(piece));
        hasher.finish()
    }

    /// A hasher to feed a stored key to: [`hash`](Self::hash) for a caller
    /// that walks the key's pieces itself.
    pub(crate) fn hasher(&self) -> KeyHasher {
        KeyHasher::new(self.seeds)
    }

    /// A hash's shard: bits the shard's own map does not index by (it
    /// takes the low bits for the bucket and the top seven for its tags).
    fn shard_of(hash: u64) -> usize {
        (hash >> 32) as usize % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic under this lock can only have come from the allocator;
        // the map itself is whole, so a poisoned shard stays usable.
        self.shards[index]
            .map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The copy kept under `key` for a type of `fingerprint`, unless it has
    /// run out.
    pub(crate) fn get(&self, key: &str, fingerprint: u64) -> Option<Kept> {
        let hash = self.hash(key);
        let mut shard = self.lock(Self::shard_of(hash));
        self.live(&mut shard, hash, key, Instant::now())
            .filter(|kept| kept.fingerprint == fingerprint)
            .cloned()
    }

    /// A local hit for a key given in pieces, whose hash is `hash`, at
    /// `now`: the payload of the copy kept for a type of `fingerprint`,
    /// unless it has run out or `holds` refuses it; counted as a hit.
    #[cfg(test)]
    pub(crate) fn hit(
        &self,
        hash: u64,
        key: &(impl KeyPieces + ?Sized),
        fingerprint: u64,
        now: Instant,
        holds: impl Fn(&Payload) -> bool,
    ) -> Option<Payload> {
        match self.lookup(hash, key, fingerprint, now, holds, false)?.0 {
            Found::Front(ticket) => take_front(ticket, |payload| Some(payload.clone())),
            Found::Map(payload) => Some(payload),
        }
    }

    /// A local hit for a key given in pieces, whose hash is `hash`, at
    /// `now`: the copy kept for a type of `fingerprint`, unless it has run
    /// out or `holds` refuses it. Found in this thread's front when the
    /// copy there is still the map's (no lock taken, no count shared with
    /// other threads written); else in the map, counted as a hit there,
    /// and then kept in the front for the next hit.
    ///
    /// When `hold` is set and the copy is small enough for a front, also
    /// a [`Held`] copy: the same payload, to be served again by a caller
    /// that keeps it for as long as it says it is current.
    pub(crate) fn lookup(
        &self,
        hash: u64,
        key: &(impl KeyPieces + ?Sized),
        fingerprint: u64,
        now: Instant,
        holds: impl Fn(&Payload) -> bool,
        hold: bool,
    ) -> Option<(Found, Option<Held>)> {
        let generation = self.generation.0.load(Ordering::Acquire);
        let ticket = Ticket {
            map: self.id,
            generation,
            hash,
        };
        let in_front = FRONT
            .try_with(|front| {
                let front = front.try_borrow().ok()?;
                let slot = front.slot(ticket)?;
                (now < slot.kept.until
                    && slot.kept.fingerprint == fingerprint
                    && holds(&slot.kept.payload)
                    && same_key(&slot.key, key))
                .then(|| {
                    hold.then(|| Held {
                        payload: slot.kept.payload.clone(),
                        until: slot.kept.until,
                        generation: Arc::clone(&self.generation),
                        at: generation,
                        stripe: front.stripe.clone(),
                    })
                })
            })
            .ok()
            .flatten();
        if let Some(held) = in_front {
            return Some((Found::Front(ticket), held));
        }
        let index = Self::shard_of(hash);
        let mut shard = self.lock(index);
        let kept = self
            .live(&mut shard, hash, key, now)
            .filter(|kept| kept.fingerprint == fingerprint && holds(&kept.payload))?;
        // Counted under the shard's lock, which every writer of this count
        // holds: a plain store, not a locked add.
        let hits = &self.shards[index].hits;
        hits.store(hits.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let payload = kept.payload.clone();
        let mut held = None;
        if kept.weight <= FRONT_MAX_BYTES {
            // The generation read under this shard's lock: any change to
            // this copy bumps it under the same lock, so after this read.
            let generation = self.generation.0.load(Ordering::Acquire);
            self.keep_in_front(hash, generation, key, kept, now);
            if hold {
                held = Some(Held {
                    payload: payload.clone(),
                    until: kept.until,
                    generation: Arc::clone(&self.generation),
                    at: generation,
                    stripe: self.front_stripe(),
                });
            }
        }
        Some((Found::Map(payload), held))
    }

    /// This thread's hit counter in this map, if its front is this map's.
    fn front_stripe(&self) -> Option<Arc<AtomicU64>> {
        FRONT
            .try_with(|front| {
                let front = front.try_borrow().ok()?;
                front.stripe.clone().filter(|_| front.map == self.id)
            })
            .ok()
            .flatten()
    }

    /// Keeps `kept` in this thread's front, unless its slot holds another
    /// key of this map's current generation kept less than [`RECENCY`]
    /// ago, so that keys hit in turn do not keep replacing each other.
    fn keep_in_front(
        &self,
        hash: u64,
        generation: u64,
        key: &(impl KeyPieces + ?Sized),
        kept: &Kept,
        now: Instant,
    ) {
        let _ = FRONT.try_with(|front| {
            // Borrowed already: a hit nested in a clone of this thread's
            // (which reads the front); it is simply not kept.
            let Ok(mut front) = front.try_borrow_mut() else {
                return;
            };
            if front.map != self.id {
                *front = Front {
                    map: self.id,
                    stripe: Some(self.stripe()),
                    slots: Default::default(),
                };
            }
            let slot = &mut front.slots[front_index(hash)];
            if let Some(old) = slot {
                if old.hash == hash && same_key(&old.key, key) {
                    // The same key again: its key string stays.
                    old.generation = generation;
                    old.kept = kept.clone();
                    old.kept_at = now;
                    return;
                }
                if old.generation == generation
                    && now.saturating_duration_since(old.kept_at) < RECENCY
                {
                    return;
                }
            }
            let mut joined = Vec::new();
            key.pieces(&mut |piece| joined.extend_from_slice(piece));
            let Ok(joined) = String::from_utf8(joined) else {
                return;
            };
            *slot = Some(FrontSlot {
                generation,
                hash,
                key: joined.into_boxed_str(),
                kept: kept.clone(),
                kept_at: now,
            });
        });
    }

    /// A new hit counter for the calling thread, registered with the map;
    /// the counters of threads gone are folded into one.
    fn stripe(&self) -> Arc<AtomicU64> {
        let stripe = Arc::new(AtomicU64::new(0));
        let mut stripes = self
            .stripes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (live, gone) = &mut *stripes;
        live.retain(|stripe| {
            if Arc::strong_count(stripe) > 1 {
                return true;
            }
            // Its thread dropped its reference after its last count.
            std::sync::atomic::fence(Ordering::Acquire);
            *gone += stripe.load(Ordering::Relaxed);
            false
        });
        live.push(Arc::clone(&stripe));
        stripe
    }

    /// The copy in `shard` under `hash` if it is `key`'s and has not run
    /// out at `now`; one that has is dropped.
    fn live<'s>(
        &self,
        shard: &'s mut Shard,
        hash: u64,
        key: &(impl KeyPieces + ?Sized),
        now: Instant,
    ) -> Option<&'s Kept> {
        let slot = shard.get(&hash)?;
        if !same_key(&slot.key, key) {
            // Another key with the same hash: a miss.
            return None;
        }
        if now >= slot.kept.until {
            let charge = slot.kept.charge(&slot.key);
            self.changing();
            shard.remove(&hash);
            self.weight.fetch_sub(charge, Ordering::Relaxed);
            return None;
        }
        shard.get(&hash).map(|slot| &slot.kept)
    }

    /// The local hits counted by [`lookup`](Self::lookup) and
    /// [`take_front`].
    pub(crate) fn hits(&self) -> u64 {
        let in_shards: u64 = self
            .shards
            .iter()
            .map(|shard| shard.hits.load(Ordering::Relaxed))
            .sum();
        let stripes = self
            .stripes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_fronts: u64 = stripes
            .0
            .iter()
            .map(|stripe| stripe.load(Ordering::Relaxed))
            .sum();
        in_shards + in_fronts + stripes.1
    }

    /// Marks a change to a shard, whose lock the caller holds, before it
    /// is made: every front entry kept so far stops being served.
    fn changing(&self) {
        self.generation.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Keeps `kept` under `key`, replacing any earlier copy; nothing when it
    /// would run out at once, or alone weighs more than the budget.
    pub(crate) fn insert(&self, key: &str, kept: Kept) {
        self.insert_hashed(self.hash(key), key, kept);
    }

    fn insert_hashed(&self, hash: u64, key: &str, kept: Kept) {
        let index = Self::shard_of(hash);
        let charge = kept.charge(key);
        let mut shard = self.lock(index);
        self.changing();
        // Whatever held the slot goes: an earlier copy of this key, or of
        // another key with the same hash.
        if let Some(old) = shard.remove(&hash) {
            self.weight
                .fetch_sub(old.kept.charge(&old.key), Ordering::Relaxed);
        }
        if Instant::now() >= kept.until || charge > self.capacity {
            return;
        }
        shard.insert(
            hash,
            Slot {
                key: Box::from(key),
                kept,
            },
        );
        let total = self.weight.fetch_add(charge, Ordering::Relaxed) + charge;
        drop(shard);
        if total > self.capacity {
            self.evict(hash, index);
        }
    }

    /// Brings the total weight under the budget: expired copies first, in
    /// every shard, then arbitrary ones, sparing `fresh`, the copy just
    /// kept; each pass goes from the shard after `index` round to it. Down
    /// to seven eighths of the budget, so that the sweeps (a pass over the
    /// shards) happen once in many inserts rather than on each. One shard
    /// is locked at a time.
    fn evict(&self, fresh: u64, index: usize) {
        let target = self.capacity - self.capacity / 8;
        let under = || self.weight.load(Ordering::Relaxed) <= target;
        let now = Instant::now();
        for expired_only in [true, false] {
            for offset in 1..=SHARDS {
                let mut shard = self.lock((index + offset) % SHARDS);
                if expired_only {
                    self.changing();
                    let mut freed = 0;
                    shard.retain(|_, slot| {
                        let keep = now < slot.kept.until;
                        if !keep {
                            freed += slot.kept.charge(&slot.key);
                        }
                        keep
                    });
                    self.weight.fetch_sub(freed, Ordering::Relaxed);
                } else {
                    while !under() {
                        let Some(victim) = shard.keys().copied().find(|hash| *hash != fresh) else {
                            break;
                        };
                        self.changing();
                        if let Some(slot) = shard.remove(&victim) {
                            self.weight
                                .fetch_sub(slot.kept.charge(&slot.key), Ordering::Relaxed);
                        }
                    }
                }
                if under() {
                    return;
                }
            }
        }
    }

    /// Drops the copy kept under `key`, whatever its type (and nothing of
    /// another key that shares its hash).
    pub(crate) fn remove(&self, key: &str) {
        let hash = self.hash(key);
        let mut shard = self.lock(Self::shard_of(hash));
        if shard.get(&hash).is_some_and(|slot| *slot.key == *key) {
            self.changing();
            if let Some(old) = shard.remove(&hash) {
                self.weight
                    .fetch_sub(old.kept.charge(&old.key), Ordering::Relaxed);
            }
        }
    }

    /// The stamp of the copy in the slot of `hash`, if it is `key`'s (tests).
    #[cfg(test)]
    fn get_hashed_stamp(&self, hash: u64, key: &str) -> Option<(u64, u64)> {
        let mut shard = self.lock(Self::shard_of(hash));
        self.live(&mut shard, hash, key, Instant::now())
            .map(|kept| kept.stamp)
    }

    /// How many copies are kept (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        (0..SHARDS).map(|index| self.lock(index).len()).sum()
    }
}

/// A copy held outside the map, as a thread's front holds one: the map's
/// copy for as long as the map's generation is the one read when it was
/// taken (every change to the map bumps it first) and the copy's own
/// expiry has not come. Its hits are counted on the thread's counter of
/// the map, when it has one; a copy without one is never served.
pub(crate) struct Held {
    payload: Payload,
    until: Instant,
    generation: Arc<Generation>,
    at: u64,
    stripe: Option<Arc<AtomicU64>>,
}

impl Held {
    /// The payload, if the copy is still the map's and has not run out at
    /// `now`.
    #[inline]
    pub(crate) fn current(&self, now: Instant) -> Option<&Payload> {
        (now < self.until
            && self.stripe.is_some()
            && self.generation.0.load(Ordering::Acquire) == self.at)
            .then_some(&self.payload)
    }

    /// The payload, current or not: for a copy just found
    /// [`current`](Self::current).
    #[inline]
    pub(crate) fn payload(&self) -> &Payload {
        &self.payload
    }

    /// Counts a local hit of this copy; on the calling thread's counter,
    /// so only the thread that took the copy may count.
    #[inline]
    pub(crate) fn count_hit(&self) {
        if let Some(stripe) = &self.stripe {
            stripe.store(stripe.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }
}

/// What [`LocalCopies::lookup`] found: a copy in this thread's front, to
/// take with [`take_front`], or one from the map.
pub(crate) enum Found {
    Front(Ticket),
    Map(Payload),
}

/// Which front entry a lookup found, and the map and generation it was
/// found current for.
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    map: u64,
    generation: u64,
    hash: u64,
}

/// The value `take` reads from the front entry a lookup on this thread
/// just found, counted as a local hit on this thread's counter; `None` if
/// the entry is gone (nothing runs in between on this thread that could
/// replace it) or `take` finds nothing. The front is borrowed only shared
/// meanwhile: a `Clone` of the caller's that calls memo again looks it up
/// too, and keeps nothing new in it.
pub(crate) fn take_front<T>(ticket: Ticket, take: impl FnOnce(&Payload) -> Option<T>) -> Option<T> {
    FRONT
        .try_with(|front| {
            let front = front.try_borrow().ok()?;
            let slot = front.slot(ticket)?;
            if let Some(stripe) = &front.stripe {
                // This thread is the counter's only writer.
                stripe.store(stripe.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            }
            take(&slot.kept.payload)
        })
        .ok()
        .flatten()
}

/// How many copies a thread's front keeps: a few hot keys.
const FRONT_SLOTS: usize = 8;
/// The heaviest copy a front keeps: a front holds its copies outside the
/// budget, so only small ones.
const FRONT_MAX_BYTES: u32 = 1024;
/// How long a front entry keeps its slot against another key's.
const RECENCY: Duration = Duration::from_secs(1);

/// A thread's latest local hits of one map, served again without its lock
/// while the map's generation says nothing changed since (the way the
/// embedded store's `Recent` serves its reads).
#[derive(Default)]
struct Front {
    /// The map the entries are of (0: none).
    map: u64,
    /// This thread's hit counter in that map.
    stripe: Option<Arc<AtomicU64>>,
    slots: [Option<FrontSlot>; FRONT_SLOTS],
}

struct FrontSlot {
    generation: u64,
    hash: u64,
    key: Box<str>,
    kept: Kept,
    kept_at: Instant,
}

impl Front {
    /// The entry a ticket names, if the front still holds it.
    fn slot(&self, ticket: Ticket) -> Option<&FrontSlot> {
        if self.map != ticket.map {
            return None;
        }
        self.slots[front_index(ticket.hash)]
            .as_ref()
            .filter(|slot| slot.generation == ticket.generation && slot.hash == ticket.hash)
    }
}

fn front_index(hash: u64) -> usize {
    (hash >> 40) as usize % FRONT_SLOTS
}

thread_local! {
    static FRONT: RefCell<Front> = RefCell::default();
}

/// This process's name on the invalidation channel, so that it ignores its
/// own messages (its copy was dropped before publishing, and may since
/// hold a newer value).
fn process_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut id = [0u8; 8];
        // A failed draw only makes two processes likelier to share a name.
        let _ = getrandom::fill(&mut id);
        u64::from_le_bytes(id) | 1
    })
}

/// The message that tells other processes to drop their copy of `key`.
pub(crate) fn invalidation(key: &str) -> Vec<u8> {
    format!("{:016x}\n{key}", process_id()).into_bytes()
}

/// The key a message from another process invalidates; `None` for this
/// process's own messages and anything malformed.
pub(crate) fn invalidated(message: &[u8]) -> Option<&str> {
    let message = std::str::from_utf8(message).ok()?;
    let (sender, key) = message.split_once('\n')?;
    let sender = u64::from_str_radix(sender, 16).ok()?;
    (sender != process_id()).then_some(key)
}

/// The channel invalidations travel on: one per namespace, named under
/// the namespace like every key memo stores.
pub(crate) fn channel(namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}:memo:invalidations"),
        None => "memo:invalidations".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn kept(fingerprint: u64, for_: Duration) -> Kept {
        Kept {
            fingerprint,
            until: Instant::now() + for_,
            stamp: (0, 0),
            weight: 3,
            payload: Payload::Encoded(Arc::from(&b"abc"[..])),
        }
    }

    #[test]
    fn a_copy_serves_its_own_type_until_it_runs_out() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_millis(80)));
        assert!(copies.get("k", 1).is_some());
        assert!(copies.get("k", 2).is_none());
        std::thread::sleep(Duration::from_millis(100));
        assert!(copies.get("k", 1).is_none());
    }

    #[test]
    fn a_replacement_sets_its_own_expiry_and_remove_drops_it() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("k", kept(1, Duration::from_secs(60)));
        copies.insert("k", kept(1, Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(70));
        assert!(copies.get("k", 1).is_none());
        copies.insert("k", kept(1, Duration::from_secs(60)));
        copies.remove("k");
        assert!(copies.get("k", 1).is_none());
        copies.insert("k", kept(1, Duration::ZERO));
        assert!(copies.get("k", 1).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_kept() {
        let copies = LocalCopies::new(10 * u64::from(OVERHEAD + 8));
        for i in 0..1_000 {
            copies.insert(&format!("k{i}"), kept(1, Duration::from_secs(60)));
            assert!(copies.len() <= 10, "{}", copies.len());
        }
        assert!(copies.len() >= 5, "{}", copies.len());
        assert!(copies.weight.load(Ordering::Relaxed) <= copies.capacity);
        // The newest copy survives the eviction it caused.
        assert!(copies.get("k999", 1).is_some());
    }

    #[test]
    fn expired_copies_are_evicted_before_live_ones() {
        let copies = LocalCopies::new(10 * u64::from(OVERHEAD + 8));
        copies.insert("live", kept(1, Duration::from_secs(60)));
        for i in 0..8 {
            copies.insert(&format!("short{i}"), kept(1, Duration::from_millis(20)));
        }
        std::thread::sleep(Duration::from_millis(40));
        for i in 0..4 {
            copies.insert(&format!("new{i}"), kept(1, Duration::from_secs(60)));
        }
        assert!(copies.get("live", 1).is_some());
        for i in 0..4 {
            assert!(copies.get(&format!("new{i}"), 1).is_some(), "new{i}");
        }
    }

    #[test]
    fn weights_return_to_zero_when_copies_go() {
        let copies = LocalCopies::new(1 << 20);
        copies.insert("a", kept(1, Duration::from_secs(60)));
        copies.insert("a", kept(1, Duration::from_secs(60)));
        copies.insert("b", kept(1, Duration::from_millis(10)));
        copies.remove("a");
        std::thread::sleep(Duration::from_millis(20));
        assert!(copies.get("b", 1).is_none());
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
        assert_eq!(copies.len(), 0);
    }

    #[test]
    fn similar_keys_spread_over_every_shard() {
        let copies = LocalCopies::new(1 << 20);
        let mut used = [0usize; SHARDS];
        for i in 0..3_200 {
            used[LocalCopies::shard_of(copies.hash(format!("app:user:{i}").as_str()))] += 1;
        }
        // 100 a shard on average; none starved or flooded.
        assert!(used.iter().all(|n| (50..200).contains(n)), "{used:?}");
    }

    #[test]
    fn the_key_hash_streams_mixes_the_length_and_depends_on_the_seeds() {
        let copies = LocalCopies::new(1 << 20);
        let key = "shop:app:user:%3A42:ユーザー:a-rather-longer-component";
        let bytes = key.as_bytes();
        let whole = copies.hash(key);
        let in_pieces = |cuts: &[usize]| {
            let mut hasher = KeyHasher::new(copies.seeds);
            let mut start = 0;
            for &end in cuts {
                hasher.write(&bytes[start..end]);
                start = end;
            }
            hasher.write(&bytes[start..]);
            hasher.finish()
        };
        // Every split in two and three, across every word boundary.
        for a in 0..=bytes.len() {
            assert_eq!(in_pieces(&[a]), whole, "{a}");
            for b in (a..=bytes.len()).step_by(3) {
                assert_eq!(in_pieces(&[a, b]), whole, "{a} {b}");
            }
        }
        // Trailing zero bytes change the hash (the length is mixed in),
        // whatever the length modulo a word.
        for len in 0..24 {
            let key = "k".repeat(len);
            assert_ne!(
                copies.hash(key.as_str()),
                copies.hash(format!("{key}\0").as_str())
            );
        }
        // Another map draws other seeds.
        assert_ne!(LocalCopies::new(1 << 20).hash(key), whole);
        // A zero seed still mixes.
        let zero = |key: &str| {
            let mut hasher = KeyHasher::new([0, 0]);
            hasher.write(key.as_bytes());
            hasher.finish()
        };
        assert_ne!(zero("a"), zero("b"));
        assert_ne!(zero(""), zero("\0"));
    }

    #[test]
    fn similar_keys_spread_over_buckets_and_tags() {
        let copies = LocalCopies::new(1 << 20);
        let mut low = [0usize; 64];
        let mut top = [0usize; 128];
        for i in 0..6_400 {
            let hash = copies.hash(format!("app:user:{i}").as_str());
            low[(hash & 63) as usize] += 1;
            top[(hash >> 57) as usize] += 1;
        }
        // 100 and 50 on average: the map's buckets (low bits) and tags
        // (top seven bits) both spread.
        assert!(low.iter().all(|n| (50..200).contains(n)), "{low:?}");
        assert!(top.iter().all(|n| (15..100).contains(n)), "{top:?}");
    }

    /// A key in pieces, split at every given offset.
    struct Split<'a>(&'a str, &'a [usize]);

    impl KeyPieces for Split<'_> {
        fn pieces(&self, piece: &mut dyn FnMut(&[u8])) {
            let mut start = 0;
            for &end in self.1 {
                piece(&self.0.as_bytes()[start..end]);
                start = end;
            }
            piece(&self.0.as_bytes()[start..]);
        }
    }

    #[test]
    fn a_key_in_pieces_hashes_and_compares_as_the_joined_string() {
        let copies = LocalCopies::new(1 << 20);
        let key = "shop:app:user:%3A42:a-rather-longer-component-than-eight";
        for cuts in [&[][..], &[0], &[4, 5], &[1, 2, 3, 9, 17, 18], &[key.len()]] {
            let split = Split(key, cuts);
            assert_eq!(copies.hash(&split), copies.hash(key), "{cuts:?}");
            assert!(same_key(key, &split));
            assert!(!same_key(&key[1..], &split));
            assert!(!same_key(&format!("{key}x"), &split));
        }
        assert!(same_key("", ""));
        assert!(!same_key("a", ""));
        copies.insert(key, kept(1, Duration::from_secs(60)));
        let hash = copies.hash(&Split(key, &[3, 11]));
        assert!(
            copies
                .hit(hash, &Split(key, &[3, 11]), 1, Instant::now(), |_| true)
                .is_some()
        );
    }

    #[test]
    fn keys_whose_hashes_collide_never_take_each_others_copy() {
        let copies = LocalCopies::new(1 << 20);
        let now = Instant::now();
        // Two keys forced onto one hash.
        copies.insert_hashed(7, "a", kept(1, Duration::from_secs(60)));
        assert!(copies.hit(7, "a", 1, now, |_| true).is_some());
        assert!(copies.hit(7, "b", 1, now, |_| true).is_none());
        // The later key takes the slot; the earlier one is then a miss,
        // never the later one's value.
        let mut other = kept(1, Duration::from_secs(60));
        other.stamp = (42, 0);
        copies.insert_hashed(7, "b", other);
        assert!(copies.hit(7, "a", 1, now, |_| true).is_none());
        assert_eq!(copies.get_hashed_stamp(7, "b"), Some((42, 0)));
        assert_eq!(copies.len(), 1);
        // Weights follow the replacement: one copy's worth left.
        assert_eq!(
            copies.weight.load(Ordering::Relaxed),
            u64::from(3 + OVERHEAD) + 1
        );
        // Removing a key does not drop another's copy that shares its slot
        // (here by the real hash, which "a" and "b" do not share: the slot
        // at 7 stays).
        copies.remove("a");
        assert!(copies.hit(7, "b", 1, now, |_| true).is_some());
    }

    #[test]
    fn removing_a_key_spares_a_colliding_key_in_its_slot() {
        let copies = LocalCopies::new(1 << 20);
        let hash_of_a = copies.hash("a");
        copies.insert_hashed(hash_of_a, "b", kept(1, Duration::from_secs(60)));
        copies.remove("a");
        assert!(
            copies
                .hit(hash_of_a, "b", 1, Instant::now(), |_| true)
                .is_some()
        );
        copies.insert("a", kept(1, Duration::from_secs(60)));
        assert!(
            copies
                .hit(hash_of_a, "b", 1, Instant::now(), |_| true)
                .is_none()
        );
        copies.remove("a");
        assert_eq!(copies.len(), 0);
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn local_hits_are_counted_per_shard_and_summed() {
        let copies = LocalCopies::new(1 << 20);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            copies.insert(key, kept(1, Duration::from_secs(60)));
        }
        for key in ["a", "b", "c", "a"] {
            assert!(
                copies
                    .hit(copies.hash(key), key, 1, now, |_| true)
                    .is_some()
            );
        }
        // Misses, refusals and the slow path's `get` are not counted.
        assert!(
            copies
                .hit(copies.hash("d"), "d", 1, now, |_| true)
                .is_none()
        );
        assert!(
            copies
                .hit(copies.hash("a"), "a", 2, now, |_| true)
                .is_none()
        );
        assert!(
            copies
                .hit(copies.hash("a"), "a", 1, now, |_| false)
                .is_none()
        );
        assert!(copies.get("a", 1).is_some());
        assert_eq!(copies.hits(), 4);
    }

    #[test]
    fn a_hit_at_or_past_the_copys_instant_is_a_miss_and_drops_it() {
        let copies = LocalCopies::new(1 << 20);
        let copy = kept(1, Duration::from_secs(60));
        let until = copy.until;
        copies.insert("k", copy);
        let hash = copies.hash("k");
        let just_before = until - Duration::from_nanos(1);
        assert!(copies.hit(hash, "k", 1, just_before, |_| true).is_some());
        assert!(copies.hit(hash, "k", 1, until, |_| true).is_none());
        assert_eq!(copies.len(), 0);
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
    }

    /// A copy holding `value`, kept for a minute, weighing `weight`.
    fn numbered(value: u64, weight: u32) -> Kept {
        Kept {
            weight,
            payload: Payload::Encoded(Arc::from(&value.to_le_bytes()[..])),
            ..kept(1, Duration::from_secs(60))
        }
    }

    fn number(payload: &Payload) -> u64 {
        match payload {
            Payload::Encoded(bytes) => u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            Payload::Typed(_) => panic!("typed"),
        }
    }

    /// What a lookup of `key` finds at `now`: whether it came from the
    /// front, and the number it holds (counted as a hit).
    fn look(copies: &LocalCopies, hash: u64, key: &str, now: Instant) -> Option<(bool, u64)> {
        match copies.lookup(hash, key, 1, now, |_| true, false)?.0 {
            Found::Front(ticket) => take_front(ticket, |payload| Some((true, number(payload)))),
            Found::Map(payload) => Some((false, number(&payload))),
        }
    }

    #[test]
    fn the_front_serves_a_copy_only_while_the_map_holds_it() {
        let copies = LocalCopies::new(1 << 20);
        let now = Instant::now();
        let hash = copies.hash("k");
        copies.insert("k", numbered(1, 8));
        assert_eq!(look(&copies, hash, "k", now), Some((false, 1)));
        assert_eq!(look(&copies, hash, "k", now), Some((true, 1)));
        // Replaced: the new copy, from the map, then from the front.
        copies.insert("k", numbered(2, 8));
        assert_eq!(look(&copies, hash, "k", now), Some((false, 2)));
        assert_eq!(look(&copies, hash, "k", now), Some((true, 2)));
        // Removed: gone from the front too.
        copies.remove("k");
        assert_eq!(look(&copies, hash, "k", now), None);
        // Any change to the map, here another key's copy, sends the next
        // hit back to the map.
        copies.insert("k", numbered(3, 8));
        assert_eq!(look(&copies, hash, "k", now), Some((false, 3)));
        assert_eq!(look(&copies, hash, "k", now), Some((true, 3)));
        copies.insert("other", numbered(9, 8));
        assert_eq!(look(&copies, hash, "k", now), Some((false, 3)));
        // Another type, or a payload `holds` refuses, is not served.
        assert!(copies.lookup(hash, "k", 2, now, |_| true, false).is_none());
        assert!(copies.lookup(hash, "k", 1, now, |_| false, false).is_none());
        // Nor is another key: by hash, or by the key itself.
        assert_eq!(look(&copies, hash, "k2", now), None);
        assert_eq!(look(&copies, hash ^ 1, "k", now), None);
        // At the copy's instant, neither serves it.
        let later = now + Duration::from_secs(61);
        assert_eq!(look(&copies, hash, "k", later), None);
        // Every hit was counted, front or map.
        assert_eq!(copies.hits(), 7);
    }

    #[test]
    fn the_front_keeps_only_small_copies_and_only_its_maps() {
        let copies = LocalCopies::new(1 << 20);
        let now = Instant::now();
        copies.insert_hashed(7, "big", numbered(1, FRONT_MAX_BYTES + 1));
        assert_eq!(look(&copies, 7, "big", now), Some((false, 1)));
        assert_eq!(look(&copies, 7, "big", now), Some((false, 1)));
        copies.insert_hashed(7, "k", numbered(2, FRONT_MAX_BYTES));
        assert_eq!(look(&copies, 7, "k", now), Some((false, 2)));
        assert_eq!(look(&copies, 7, "k", now), Some((true, 2)));
        // Another map (a new configuration) with the same key and hash, at
        // the same generation: not the first map's copy.
        let other = LocalCopies::new(1 << 20);
        other.insert_hashed(7, "k", numbered(3, 8));
        assert_eq!(
            other.generation.0.load(Ordering::Relaxed),
            copies.generation.0.load(Ordering::Relaxed) - 1
        );
        other.changing();
        assert_eq!(look(&other, 7, "k", now), Some((false, 3)));
        assert_eq!(look(&other, 7, "k", now), Some((true, 3)));
        assert_eq!(look(&copies, 7, "k", now), Some((false, 2)));
    }

    #[test]
    fn a_thread_that_saw_a_replacement_never_reads_the_copy_before_it() {
        let copies = Arc::new(LocalCopies::new(1 << 20));
        let hash = copies.hash("k");
        copies.insert("k", numbered(0, 8));
        let published = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (copies, published) = (Arc::clone(&copies), Arc::clone(&published));
                std::thread::spawn(move || {
                    let mut from_front = 0;
                    loop {
                        let seen = published.load(Ordering::Acquire);
                        if let Some((front, value)) = look(&copies, hash, "k", Instant::now()) {
                            assert!(value >= seen, "read {value} after {seen} was written");
                            from_front += usize::from(front);
                        }
                        if seen == 2_000 {
                            return from_front;
                        }
                    }
                })
            })
            .collect();
        for value in 1..=2_000 {
            copies.insert("k", numbered(value, 8));
            published.store(value, Ordering::Release);
            if value % 64 == 0 {
                std::thread::yield_now();
            }
        }
        let from_front: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
        // The front was in play, not just the map.
        assert!(from_front > 0);
    }

    #[test]
    fn the_hits_of_threads_gone_stay_counted() {
        let copies = Arc::new(LocalCopies::new(1 << 20));
        let hash = copies.hash("k");
        copies.insert("k", numbered(1, 8));
        for _ in 0..3 {
            let copies = Arc::clone(&copies);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    assert!(look(&copies, hash, "k", Instant::now()).is_some());
                }
            })
            .join()
            .unwrap();
        }
        assert_eq!(copies.hits(), 15);
        // A new thread's counter folds the gone ones into one.
        let copies2 = Arc::clone(&copies);
        std::thread::spawn(move || {
            look(&copies2, hash, "k", Instant::now());
            look(&copies2, hash, "k", Instant::now());
        })
        .join()
        .unwrap();
        assert_eq!(copies.hits(), 17);
        assert!(copies.stripes.lock().unwrap().0.len() <= 2);
    }

    #[test]
    fn a_copy_heavier_than_the_budget_is_not_kept() {
        let copies = LocalCopies::new(u64::from(OVERHEAD));
        copies.insert("k", kept(1, Duration::from_secs(60)));
        assert!(copies.get("k", 1).is_none());
        assert_eq!(copies.weight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_process_ignores_its_own_invalidations_and_garbage() {
        let own = invalidation("ns:key");
        assert_eq!(invalidated(&own), None);
        let other = format!("{:016x}\nns:key", process_id() ^ 2);
        assert_eq!(invalidated(other.as_bytes()), Some("ns:key"));
        for garbage in [&b""[..], b"\n", b"zz\nkey", b"\xff\xfe"] {
            assert_eq!(invalidated(garbage), None);
        }
    }
}
