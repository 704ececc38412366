//! The invalidation barrier in this process: after `invalidate`,
//! `_invalidate`, `_refresh`, a `force_overwrite` call or `invalidate_tag`
//! returns, no call that starts afterwards is served a value that this
//! process read or began computing before it.
//!
//! What a backend holds is guarded by version tokens (`version`), which
//! every process checks. What only this process holds is guarded here, by
//! epochs:
//!
//! - Each stored key falls in one of [`STRIPES`] stripes (by a hash of the
//!   key), and each stripe has an epoch. A call takes a [`Ticket`], the
//!   epoch of its key's stripe, before it reads or computes anything. An
//!   invalidation bumps the epoch once it has written its token and
//!   deleted the entry, so every call that starts after it returns holds a
//!   newer ticket than every call that was under way. A tag's invalidation
//!   bumps every stripe.
//! - **Flights** are keyed by the ticket's epoch as well as the key, so a
//!   caller never joins a computation that began before the latest
//!   invalidation of its key.
//! - **Local copies** carry the ticket of the call that made them, and are
//!   served only while their stripe's epoch is unchanged.
//!
//! A stripe is shared by every key that hashes to it: an invalidation of
//! one key also turns away the flights and copies of the others in its
//! stripe. That costs those keys a round trip or a recomputation, never a
//! wrong value, and keeps the barrier's memory fixed however many keys a
//! process sees.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many stripes the keys fall in: enough that an invalidation rarely
/// disturbs another key under way, few enough to stay a few pages.
pub(crate) const STRIPES: usize = 1024;

/// The epochs, by stripe.
pub(crate) struct Barrier {
    epochs: Box<[AtomicU64]>,
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

impl Default for Barrier {
    fn default() -> Self {
        Barrier {
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
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

    /// Whether no invalidation of the ticket's stripe ended since it was
    /// taken.
    pub(crate) fn current(&self, ticket: Ticket) -> bool {
        self.epochs[ticket.stripe()].load(Ordering::SeqCst) == ticket.epoch
    }

    /// Bumps the epoch of `stripe`: every ticket taken before is no longer
    /// current.
    pub(crate) fn bump(&self, stripe: usize) {
        self.epochs[stripe].fetch_add(1, Ordering::SeqCst);
    }

    /// Bumps every stripe, for an invalidation that reaches keys it cannot
    /// name (a tag's).
    pub(crate) fn bump_all(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
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
        let after = barrier.ticket("a");
        assert!(barrier.current(after));
        assert_ne!(before.epoch(), after.epoch());
    }

    #[test]
    fn a_bump_of_every_stripe_turns_away_every_ticket() {
        let barrier = Barrier::default();
        let tickets: Vec<Ticket> = (0..100).map(|n| barrier.ticket(&format!("k{n}"))).collect();
        barrier.bump_all();
        assert!(tickets.iter().all(|ticket| !barrier.current(*ticket)));
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
