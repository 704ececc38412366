//! The cap on the connections one pool has open, in use or idle (see
//! `pool`): a count, a [`Slot`] per open connection that gives its place
//! back when the connection is dropped, and the wake-ups of the callers
//! waiting for a place. It sits below `conn`, whose connections carry
//! their slot, and `pool`, which hands slots out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::lock;

/// The longest a caller waiting for a connection sleeps before it looks
/// again, should a wake-up have been missed.
pub(crate) const RECHECK: Duration = Duration::from_millis(20);

/// The connections one pool has open, and the callers waiting for one to
/// come free (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    /// Connections open, in use or idle.
    open: AtomicUsize,
    /// Callers waiting for room; nobody is woken while there are none, so
    /// pooling a connection costs no lock beyond the pool's own.
    waiting: AtomicUsize,
    /// Bumped, under this lock, whenever room may have come (a connection
    /// closed or pooled), so that a waiter that saw one count cannot sleep
    /// through the change.
    changes: Mutex<u64>,
    changed: Condvar,
    #[cfg(feature = "async")]
    changed_async: tokio::sync::Notify,
}

impl Limiter {
    /// A slot for one more connection, unless `max` are open.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(Slot(Arc::clone(self)))
    }

    /// Wakes the waiters, if any: room may have come.
    pub(crate) fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut changes = lock(&self.changes);
        *changes = changes.wrapping_add(1);
        drop(changes);
        self.changed.notify_all();
        #[cfg(feature = "async")]
        self.changed_async.notify_waiters();
    }

    pub(crate) fn version(&self) -> u64 {
        *lock(&self.changes)
    }

    /// Sleeps until a change after `seen`, or `left` passed.
    pub(crate) fn sleep(&self, seen: u64, left: Duration) {
        let changes = lock(&self.changes);
        if *changes == seen {
            let _ = self.changed.wait_timeout(changes, left.min(RECHECK));
        }
    }

    /// Connections open now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A wake-up for an async waiter: enabled before it looks for room,
    /// so that no change after that is missed.
    #[cfg(feature = "async")]
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed_async.notified()
    }

    /// Counts a caller as waiting until the guard is dropped.
    pub(crate) fn waiter(&self) -> Waiter<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiter(self)
    }
}

/// A caller waiting for room ([`Limiter::waiter`]).
pub(crate) struct Waiter<'a>(&'a Limiter);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open connection's place under its pool's cap, given back when the
/// connection holding it is dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Limiter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.wake();
    }
}
