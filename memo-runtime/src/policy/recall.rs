//! A thread's last few hits, served again at the very start of a
//! synchronous call while nothing they rest on has changed: the cheapest
//! layer of the hit path, in front of [`quick_local_hit`] and
//! [`quick_memory_hit`], which fill it.
//!
//! A hit found by those still resolves the configuration, hashes the full
//! key, and (on the embedded store) reads two clocks and the envelope's
//! header. Each thread remembers its last hits by the caller's own key,
//! with what they were found under, and serves one again when the same
//! call comes back:
//!
//! - always under the same configuration (its generation, which every
//!   [`configure`](crate::configure) bumps), for the same type `T`, and for
//!   a call of the same kind (a local copy, or a plain hit on the embedded
//!   store) whose options let a value be served as found;
//! - a local copy ([`Held`]) while the map's generation is unchanged (the
//!   copy is still the map's) and its own expiry has not come;
//! - an entry of the embedded store ([`Mark`]) while no write has begun or
//!   ended in the store since it was read, within its expiry, a second of
//!   the read and the value's logical expiry. That expiry is a wall-clock
//!   instant; it is turned into a monotonic one when the entry is
//!   remembered, so that a hit reads one clock: for the second at most
//!   that the entry is served from here, a step of the wall clock does not
//!   move it.
//!
//! A hit served here counts as the hit it stands for. The price is memory
//! outside the budgets: up to [`SLOTS`] small copies and entries per
//! thread, each held until its slot is taken or its thread exits. As with
//! the local copies' per-thread front, a copy may so be dropped for the
//! last time among its thread's thread-local destructors.
//!
//! [`quick_local_hit`]: super::hot::quick_local_hit
//! [`quick_memory_hit`]: super::hot::quick_memory_hit

use std::any::TypeId;
use std::cell::{Ref, RefCell};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::options::Options;
use crate::backend::memory::{Mark, Stored};
use crate::common::counters::Counters;
use crate::common::local::{Held, Payload};
use crate::format::envelope;
use crate::format::key::CacheKey;

/// How many hits a thread remembers, one per slot by a hash of the key.
const SLOTS: usize = 8;

/// How long a remembered hit keeps its slot against another key's, so
/// that keys hit in turn do not keep replacing each other.
const RECENCY: Duration = Duration::from_secs(1);

/// A thread's remembered hits, one slot per hash of the key.
type Slots = [Option<Recalled>; SLOTS];

thread_local! {
    static RECALL: RefCell<Slots> = const { RefCell::new([const { None }; SLOTS]) };
}

/// One remembered hit.
struct Recalled {
    /// The caller's key, as one string (see [`caller_key`]).
    key: Box<str>,
    /// The configuration's generation when the hit was found.
    config: u64,
    /// The type the hit was found for.
    type_id: TypeId,
    /// When it was remembered.
    at: Instant,
    what: What,
}

enum What {
    /// A local copy.
    Local(Held),
    /// An entry of the embedded store, whose value lies at `body`.
    Stored {
        entry: Arc<Stored>,
        body: Range<usize>,
        mark: Mark,
        counters: Arc<Counters>,
    },
}

impl Recalled {
    /// Whether this hit could still be served at `now`, under the
    /// configuration of generation `config`, to a call for its key and type.
    fn current(&self, config: u64, now: Instant) -> bool {
        self.config == config
            && match &self.what {
                What::Local(held) => held.current(now).is_some(),
                What::Stored { mark, .. } => mark.current(now),
            }
    }
}

/// The caller's key as one string, when it is given as one: the string of
/// [`CacheKey::Raw`] or the lone component of [`CacheKey::Parts`], which
/// are the same key. Keys of several components are not remembered.
fn caller_key(key: &CacheKey) -> Option<&str> {
    match key {
        CacheKey::Raw(key) => Some(key),
        CacheKey::Parts(parts) => match parts.as_slice() {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// Whether a call with `options` serves what it finds as it is: it keeps
/// no chunked value, overwrites nothing, does not refresh ahead and does
/// not ask for encryption (the configuration may still force it, which the
/// hits remembered here were found without).
pub(crate) fn served_as_found(options: &Options) -> bool {
    !(options.large_data
        || options.force_overwrite
        || options.refresh_ahead.is_some()
        || options.encrypt == Some(true))
}

/// A slot by a multiply-rotate hash of the key, eight bytes at a time:
/// enough to spread keys (a collision only costs a lookup further down
/// the hit path).
#[inline]
fn slot_of(key: &str) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes = key.as_bytes();
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let mut hash = bytes.len() as u64;
    if bytes.len() < 8 {
        for &byte in bytes {
            hash = (hash.rotate_left(8) ^ u64::from(byte)).wrapping_mul(K);
        }
    } else {
        // Whole words, then the last eight bytes (overlapping the last
        // whole word when the length is not a multiple of eight): no
        // copy of variable length.
        let mut at = 0;
        while at + 8 < bytes.len() {
            hash = (hash.rotate_left(5) ^ word(at)).wrapping_mul(K);
            at += 8;
        }
        hash = (hash.rotate_left(5) ^ word(bytes.len() - 8)).wrapping_mul(K);
    }
    (hash >> 58) as usize % SLOTS
}

/// A hit this thread remembers, found current for a call: the thread's
/// slots stay borrowed (shared) while it lives, so that its value is
/// cloned or decoded straight into the call's result. A `Clone` or
/// `Deserialize` of the caller's that calls memo again meanwhile finds
/// the slots too, and remembers nothing new. Its borrow is `'static` only
/// as far as the type says: a `Hit` is dropped before the call that found
/// it returns, and is never stored (see [`find`]).
pub(crate) struct Hit(Ref<'static, Recalled>);

impl Hit {
    /// The local copy's payload, for the hit of a local copy.
    #[inline]
    pub(crate) fn local(&self) -> Option<&Payload> {
        match &self.0.what {
            What::Local(held) => Some(held.payload()),
            What::Stored { .. } => None,
        }
    }

    /// Counts the hit of a local copy, once its value is taken.
    #[inline]
    pub(crate) fn count_local(&self) {
        if let What::Local(held) = &self.0.what {
            held.count_hit();
        }
    }

    /// The value of the hit: taken from a local copy's payload by `take`
    /// (the call's `Keep::take`), or decoded from the embedded store's
    /// entry; counted as the hit it stands for.
    pub(crate) fn take<T: DeserializeOwned>(
        &self,
        take: impl FnOnce(&Payload) -> Option<T>,
    ) -> Option<T> {
        match &self.0.what {
            What::Local(held) => {
                let value = take(held.payload())?;
                held.count_hit();
                Some(value)
            }
            What::Stored {
                entry,
                body,
                counters,
                ..
            } => {
                let value = envelope::decode_exact::<T>(&entry.bytes()[body.clone()]).ok()?;
                counters.backend_ok();
                counters.read(entry.bytes().len());
                counters.hit();
                Some(value)
            }
        }
    }
}

/// The hit this thread remembers for this call, if it is still current.
#[inline]
pub(crate) fn find<T>(key: &CacheKey, options: &Options) -> Option<Hit> {
    if !served_as_found(options) {
        return None;
    }
    let key = caller_key(key)?;
    let config = crate::config::generation();
    let type_id = typeid::of::<T>();
    let local = options.local.is_some();
    let slots = RECALL
        .try_with(|slots| {
            // SAFETY: the slots are dropped only by this thread's
            // thread-local destructors, once `try_with` no longer reaches
            // them. The reference is held only by a `Hit`, which is a
            // local of the call that found it: never stored, never sent
            // (`Ref` is `!Send`), dropped before that call returns. A
            // call made inside another thread-local's destructor holds it
            // within that destructor's run, and destructors run one after
            // another, so the slots' own cannot begin meanwhile.
            unsafe { &*std::ptr::from_ref::<RefCell<Slots>>(slots) }
        })
        .ok()?;
    let slot = Ref::filter_map(slots.try_borrow().ok()?, |slots| {
        slots[slot_of(key)].as_ref()
    })
    .ok()?;
    if slot.config != config || slot.type_id != type_id || *slot.key != *key {
        return None;
    }
    let now = Instant::now();
    let current = match &slot.what {
        What::Local(held) => local && held.current(now).is_some(),
        What::Stored { mark, .. } => !local && mark.current(now),
    };
    current.then_some(Hit(slot))
}

/// What a hit found below the remembered ones needs to be remembered:
/// taken as such a lookup starts.
pub(crate) struct Finding {
    /// The configuration's generation, read before the configuration is:
    /// what is found is remembered under it.
    config: u64,
    /// The clock reading the lookup checks expiries against.
    pub(crate) now: Instant,
    /// Whether a hit would be remembered (see [`accepts`]), so whether
    /// to hold one for remembering.
    pub(crate) hold: bool,
}

impl Finding {
    /// A lookup under `key` starting now.
    pub(crate) fn start(key: &CacheKey) -> Finding {
        let config = crate::config::generation();
        let now = Instant::now();
        Finding {
            config,
            now,
            hold: accepts(key, now),
        }
    }
}

/// Whether a hit found at `now` under `key` would be remembered: its
/// slot is free, holds this key, or holds a hit no longer current or
/// remembered longer than [`RECENCY`] ago. Asked before a hit is held for
/// remembering, which takes references shared with every other thread.
fn accepts(key: &CacheKey, now: Instant) -> bool {
    let Some(key) = caller_key(key) else {
        return false;
    };
    RECALL
        .try_with(|slots| {
            let Ok(slots) = slots.try_borrow() else {
                return false;
            };
            match &slots[slot_of(key)] {
                None => true,
                Some(old) => {
                    *old.key == *key
                        || now.saturating_duration_since(old.at) >= RECENCY
                        || !old.current(crate::config::generation(), now)
                }
            }
        })
        .unwrap_or(false)
}

/// Remembers a local hit of a `T` under `key`, found by `finding`.
pub(crate) fn remember_local<T>(key: &CacheKey, finding: &Finding, held: Held) {
    remember::<T>(key, finding, What::Local(held));
}

/// Remembers a plain hit of a `T` under `key` on the embedded store, found
/// by `finding`: `entry`'s value lies at `body`, and is served again while
/// `mark` holds.
pub(crate) fn remember_stored<T>(
    key: &CacheKey,
    finding: &Finding,
    entry: Arc<Stored>,
    body: Range<usize>,
    mark: Mark,
    counters: &Arc<Counters>,
) {
    remember::<T>(
        key,
        finding,
        What::Stored {
            entry,
            body,
            mark,
            counters: Arc::clone(counters),
        },
    );
}

fn remember<T>(key: &CacheKey, finding: &Finding, what: What) {
    let Finding { config, now, .. } = *finding;
    let Some(key) = caller_key(key) else {
        return;
    };
    let type_id = typeid::of::<T>();
    let _ = RECALL.try_with(|slots| {
        // Borrowed already: a hit nested in a clone of this thread's; it
        // is simply not remembered.
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        let slot = &mut slots[slot_of(key)];
        let key = match slot.take() {
            Some(old) if *old.key == *key => old.key,
            Some(old)
                if now.saturating_duration_since(old.at) < RECENCY && old.current(config, now) =>
            {
                *slot = Some(old);
                return;
            }
            _ => Box::from(key),
        };
        *slot = Some(Recalled {
            key,
            config,
            type_id,
            at: now,
            what,
        });
    });
}
