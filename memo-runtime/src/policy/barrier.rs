//! The invalidation barrier of one process: after `invalidate`,
//! `_invalidate`, `_refresh` or a `force_overwrite` call returns, no call
//! that starts afterwards is served a value whose computation or read
//! started before it.
//!
//! One mechanism serves the three ways an older value could come back:
//!
//! - **Epochs.** Each stored key falls in one of [`STRIPES`] stripes (by a
//!   hash of the key), and each stripe has an epoch. A call takes a
//!   [`Ticket`], the epoch of its key's stripe, before it reads or
//!   computes anything. An invalidation bumps the epoch before it deletes
//!   and again once it has, so every call that starts after it returns
//!   holds a newer ticket than every call that was under way.
//! - **Flights** are keyed by the ticket's epoch as well as the key, so a
//!   caller never joins a computation that started before the latest
//!   invalidation of its key.
//! - **Local copies** carry the ticket of the call that made them, and are
//!   served only while their stripe's epoch is unchanged.
//! - **Stores** of a value commit through [`Barrier::commit`]: the writer
//!   registers in its stripe, then checks its ticket; an invalidation bumps
//!   the epoch, then waits for the registered writers to finish
//!   ([`Barrier::writing`]) before it deletes. Both sides use sequentially
//!   consistent operations, so either the writer sees the new epoch and
//!   stores nothing, or the invalidation sees the writer and deletes after
//!   it. The computation's own caller still gets its value.
//!
//! A stripe is shared by every key that hashes to it: an invalidation of
//! one key also turns away the stores, flights and copies of the others in
//! its stripe that were under way. That costs those keys a recomputation or
//! a round trip, never a wrong value, and keeps the barrier's memory fixed
//! however many keys a process sees.
//!
//! Only this process's calls are covered. What reaches the cache from
//! elsewhere (another process, or a store that the backend applies after
//! its client gave up on it) is outside what an in-process epoch can see.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many stripes the keys fall in: enough that an invalidation rarely
/// disturbs another key under way, few enough to stay a few pages.
pub(crate) const STRIPES: usize = 1024;

/// The epochs and the writers under way, by stripe.
pub(crate) struct Barrier {
    epochs: Box<[AtomicU64]>,
    /// Apart from the epochs: a store changes these, while every local hit
    /// reads an epoch.
    writers: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier").finish_non_exhaustive()
    }
}

/// Where a call stood when it started: its key's stripe and that stripe's
/// epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    stripe: u32,
    epoch: u64,
}

impl Ticket {
    /// The epoch this ticket was taken at; part of a flight's key.
    pub(crate) fn epoch(self) -> u64 {
        self.epoch
    }

    /// The stripe of the ticket's key.
    pub(crate) fn stripe(self) -> usize {
        self.stripe as usize
    }
}

/// A store registered in its stripe: an invalidation of the stripe waits
/// until it is dropped, even when the store panics or its future is
/// dropped.
#[must_use = "the store is registered only while this is held"]
pub(crate) struct Writing<'b> {
    writers: &'b AtomicU64,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.writers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Barrier {
    fn default() -> Self {
        Barrier {
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            writers: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The stripe of a stored key. Any hash will do that spreads keys and is
/// the same for every call in this process: foldhash's fixed-seed one is
/// cheap on short keys.
pub(crate) fn stripe_of(stored_key: &str) -> usize {
    let hash = foldhash::fast::FixedState::default().hash_one(stored_key);
    (hash % STRIPES as u64) as usize
}

impl Barrier {
    /// The ticket of a call for `stored_key`, taken before it reads or
    /// computes.
    pub(crate) fn ticket(&self, stored_key: &str) -> Ticket {
        let stripe = stripe_of(stored_key);
        Ticket {
            stripe: stripe as u32,
            epoch: self.epochs[stripe].load(Ordering::SeqCst),
        }
    }

    /// Whether no invalidation of the ticket's stripe began since it was
    /// taken.
    pub(crate) fn current(&self, ticket: Ticket) -> bool {
        self.epochs[ticket.stripe()].load(Ordering::SeqCst) == ticket.epoch
    }

    /// Registers a store made under `ticket`, or `None` when an
    /// invalidation began since the ticket was taken: then the value must
    /// not be stored.
    pub(crate) fn commit(&self, ticket: Ticket) -> Option<Writing<'_>> {
        let writers = &self.writers[ticket.stripe()];
        writers.fetch_add(1, Ordering::SeqCst);
        let writing = Writing { writers };
        self.current(ticket).then_some(writing)
    }

    /// Bumps the epoch of `stripe`: every ticket taken before is no longer
    /// current.
    pub(crate) fn bump(&self, stripe: usize) {
        self.epochs[stripe].fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a store registered in `stripe` is under way.
    pub(crate) fn writing(&self, stripe: usize) -> bool {
        self.writers[stripe].load(Ordering::SeqCst) != 0
    }
}

/// What a store that outlives its call's borrow (the chunked pipeline)
/// commits through: the engine's barrier and the call's ticket.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    barrier: Arc<Barrier>,
    ticket: Ticket,
}

impl Commit {
    /// Commits under `ticket` through `barrier`.
    pub(crate) fn new(barrier: Arc<Barrier>, ticket: Ticket) -> Commit {
        Commit { barrier, ticket }
    }

    /// A barrier of its own, which nothing ever raises: for code that
    /// drives the pipeline outside any engine (tests and fuzzing).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn alone(stored_key: &str) -> Commit {
        let barrier = Arc::<Barrier>::default();
        let ticket = barrier.ticket(stored_key);
        Commit { barrier, ticket }
    }

    /// [`Barrier::commit`] for this ticket.
    pub(crate) fn begin(&self) -> Option<Writing<'_>> {
        self.barrier.commit(self.ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_turns_away_the_tickets_taken_before_it_only() {
        let barrier = Barrier::default();
        let before = barrier.ticket("a");
        assert!(barrier.current(before));
        barrier.bump(before.stripe());
        assert!(!barrier.current(before));
        assert!(barrier.commit(before).is_none());
        let after = barrier.ticket("a");
        assert!(barrier.current(after));
        assert!(barrier.commit(after).is_some());
    }

    #[test]
    fn a_store_is_seen_as_under_way_until_its_registration_drops() {
        let barrier = Barrier::default();
        let ticket = barrier.ticket("k");
        let writing = barrier.commit(ticket).expect("current");
        assert!(barrier.writing(ticket.stripe()));
        drop(writing);
        assert!(!barrier.writing(ticket.stripe()));
        // A refused store is not left registered either.
        barrier.bump(ticket.stripe());
        assert!(barrier.commit(ticket).is_none());
        assert!(!barrier.writing(ticket.stripe()));
    }

    #[test]
    fn a_panicking_store_leaves_no_registration() {
        let barrier = Barrier::default();
        let ticket = barrier.ticket("p");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _writing = barrier.commit(ticket);
            panic!("the store panicked");
        }));
        assert!(caught.is_err());
        assert!(!barrier.writing(ticket.stripe()));
    }

    #[test]
    fn keys_spread_over_the_stripes() {
        let mut used = std::collections::HashSet::new();
        for n in 0..4 * STRIPES {
            used.insert(stripe_of(&format!("key:{n}")));
        }
        assert!(used.len() > STRIPES * 9 / 10, "{} stripes used", used.len());
    }
}
