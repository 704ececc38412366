//! Single flight: concurrent calls for one key in one process share one
//! computation.
//!
//! When many threads or tasks of one process miss the same key at once,
//! only one of them (the leader) should look the key up, take the
//! cross-process lock, compute and store; the others (the waiters) wait for
//! its value. This module is that rendezvous and nothing else: it knows no
//! backend, no codec and no configuration. The memoize policy uses it first,
//! before the cache lookup and before any cross-process lock: a caller
//! [`join`](Flights::join)s the flight of its stored key; the
//! [`Leader`](Joined::Leader) runs the whole policy (lookup, with
//! `Options::lock` the lock and re-lookup, compute, store) and
//! [`publish`](LeaderGuard::publish)es the value it returns, hit or freshly
//! computed; a [`Waiter`](Joined::Waiter) waits for that value, from a thread
//! ([`Waiter::wait`]) or a task ([`Waiter::wait_async`]). Only the leader
//! touches the cross-process lock, so a process sends one lock attempt per
//! key, not one per caller.
//!
//! Values travel as serialized bytes in an `Arc<[u8]>`: every waiter gets a
//! clone of the same `Arc` and deserializes its own `T`, so `T` need not be
//! `Clone` (nor `Send` or `Sync`) and one registry serves every value type.
//!
//! A leader that gives up hands over: [`abandon`](LeaderGuard::abandon), or
//! simply dropping the [`LeaderGuard`] (its computation panicked, returned
//! `Err`, or its future was dropped because the request was cancelled),
//! promotes exactly one waiter, the one that joined first, to leader; the
//! others keep waiting on the new leader. Without hand-over a cancelled
//! request or a panic would strand every waiter of its key; with it, waiters
//! never hang on a leader that has gone. A leader that hangs instead is
//! bounded by the waiter's own deadline ([`Waiter::wait_timeout`], or, for
//! a task, dropping the waiting future from a timer). So is a cycle of
//! memoized calls in which each leader waits on a flight led by the next:
//! only a deadline breaks it, so the policy should always wait with one.
//!
//! A flight lives in the registry from the first `join` until it is
//! published, or until its last leader gives up with nobody waiting; a call
//! that joins after either starts a new flight (and finds the value in the
//! cache, if it was stored). A publish reaches every waiter registered
//! before it.
//!
//! No lock of this module is held while user code, a waker or a condition
//! variable runs, and the critical sections only move a few words around:
//! joining is one mutex lock and one hash lookup (plus the insert of a new
//! flight), finishing is one lock and one removal. The registry is split
//! into shards by key so that unrelated keys rarely meet on one mutex. A
//! panic elsewhere cannot poison it: every lock recovers the data with
//! `PoisonError::into_inner`, which is sound because no critical section
//! here runs foreign code or can stop half-way through an update.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Number of independently locked parts of the registry.
const SHARDS: usize = 16;

/// The in-flight computations of one configuration, by stored key.
///
/// Cheap to create and `Send + Sync`; the guards it hands out own a share of
/// it, so they may outlive a borrow and move into spawned tasks.
#[derive(Default)]
pub(crate) struct Flights {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    shards: [Mutex<Shard>; SHARDS],
    /// How many flights have ended, of any key: a caller that looked a key
    /// up before joining can tell whether a flight ended (and stored a
    /// value) since, and must look again.
    ended: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Shard {
    /// Flights that have not been published yet, by stored key.
    flights: HashMap<Arc<str>, Flight>,
    /// Values published to waiters that have not collected them yet, by
    /// flight id. Kept apart from `flights` so that a later `join` of the
    /// same key starts a new flight while the old one's waiters still
    /// collect its value.
    published: HashMap<u64, Published>,
    /// Source of flight and waiter ids. Wrapping is harmless unless an id
    /// were still in use 2^64 joins later: centuries at a billion a second.
    next_id: u64,
}

struct Flight {
    key: Arc<str>,
    id: u64,
    leader: Leader,
    /// Waiters by id, which is their join order; the waker of a task that
    /// has polled, `None` for a thread (woken through `cond`) or a task that
    /// has not polled yet.
    waiters: BTreeMap<u64, Option<Waker>>,
    /// Created by the first thread that blocks on this flight, so flights
    /// that only tasks (or nobody) wait on never allocate one.
    cond: Option<Arc<Condvar>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leader {
    /// A [`LeaderGuard`] exists for this flight.
    Active,
    /// The leader gave up and this waiter has been chosen; it becomes
    /// `Active` when the waiter notices.
    Promoted(u64),
}

struct Published {
    value: Arc<[u8]>,
    /// Waiters that have not collected the value yet.
    remaining: usize,
}

/// What [`Flights::join`] makes of a caller.
#[must_use = "dropping a leader hands over, dropping a waiter leaves the flight"]
pub(crate) enum Joined {
    /// Nobody is computing this key: do the work and publish it.
    Leader(LeaderGuard),
    /// Someone is: wait for its value.
    Waiter(Waiter),
}

/// How waiting ended.
#[must_use = "a promoted waiter that drops this hands over"]
pub(crate) enum Outcome {
    /// The leader's published value.
    Value(Arc<[u8]>),
    /// The leader gave up and this caller was promoted: do the work and
    /// publish it, exactly as a leader from [`Flights::join`].
    Lead(LeaderGuard),
    /// The deadline passed first. The caller has left the flight: it does
    /// the work itself, without publishing (it has nothing to publish to),
    /// while the leader keeps serving the remaining waiters.
    TimedOut,
}

/// The duty to compute a key's value for everyone waiting on it.
///
/// End it with [`publish`](Self::publish) or [`abandon`](Self::abandon);
/// dropping it abandons.
#[must_use = "dropping a leader hands its flight over at once"]
pub(crate) struct LeaderGuard {
    seat: Seat,
    finished: bool,
}

/// A place in a flight's queue of waiters.
///
/// Dropping it without waiting leaves the flight (and hands over, if it had
/// just been promoted).
#[must_use = "dropping a waiter leaves the flight"]
pub(crate) struct Waiter {
    seat: Seat,
    id: u64,
    /// Set once an outcome has been handed to the caller, after which the
    /// flight no longer counts this waiter.
    settled: bool,
}

/// [`Waiter::wait_async`]: waits without blocking a thread.
///
/// Dropping it before it completes leaves the flight like dropping the
/// [`Waiter`]; that is also how a task bounds its wait (drop it when a
/// timer fires, then compute without leading). Polling it again after it
/// has completed returns `Pending` forever.
// Only async callers wait with a future (and the tests).
#[cfg_attr(not(feature = "async"), allow(dead_code))]
#[must_use = "futures do nothing unless polled"]
pub(crate) struct WaitFuture {
    waiter: Option<Waiter>,
}

/// Where a guard's flight lives.
#[derive(Clone)]
struct Seat {
    inner: Arc<Inner>,
    shard: usize,
    key: Arc<str>,
    flight: u64,
}

/// What a waiter finds when it looks at its flight.
enum Check {
    Done(Settled),
    /// Still queued.
    Waiting,
}

enum Settled {
    /// Promoted; the flight is now marked as led by this caller.
    Lead,
    Value(Arc<[u8]>),
    /// Neither queued, promoted nor served: cannot happen while the
    /// invariants hold; treated like a timeout (compute alone) so that
    /// nothing hangs.
    Lost,
}

/// Whom to wake once the shard's lock is released.
#[derive(Default)]
struct Wakeup {
    waker: Option<Waker>,
    waiters: BTreeMap<u64, Option<Waker>>,
    cond: Option<Arc<Condvar>>,
}

impl Inner {
    fn flight_ended(&self) {
        self.ended
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

impl Flights {
    /// How many flights have ended so far. A caller that reads this before
    /// a lookup and again after joining a flight as its leader knows
    /// whether some flight ended in between.
    pub(crate) fn ended(&self) -> u64 {
        self.inner.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Joins the flight of `key` as a waiter if there is one, and starts
    /// nothing otherwise: for a caller that must not lead (a batch, before
    /// it leads its own keys).
    pub(crate) fn wait_for(&self, key: &str) -> Option<Waiter> {
        let shard = shard_of(key);
        let mut guard = lock(&self.inner.shards[shard]);
        let Shard {
            flights, next_id, ..
        } = &mut *guard;
        let flight = flights.get_mut(key)?;
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        Some(self.seat_waiter(shard, flight, id))
    }

    /// Seats waiter `id` on `flight`, of shard `shard`, whose lock the
    /// caller holds.
    fn seat_waiter(&self, shard: usize, flight: &mut Flight, id: u64) -> Waiter {
        flight.waiters.insert(id, None);
        Waiter {
            seat: Seat {
                inner: Arc::clone(&self.inner),
                shard,
                key: Arc::clone(&flight.key),
                flight: flight.id,
            },
            id,
            settled: false,
        }
    }

    /// Joins the flight of `key`, starting it if there is none.
    pub(crate) fn join(&self, key: &str) -> Joined {
        let shard = shard_of(key);
        let mut guard = lock(&self.inner.shards[shard]);
        let Shard {
            flights, next_id, ..
        } = &mut *guard;
        let id = *next_id;
        *next_id = next_id.wrapping_add(1);
        if let Some(flight) = flights.get_mut(key) {
            let waiter = self.seat_waiter(shard, flight, id);
            drop(guard);
            return Joined::Waiter(waiter);
        }
        let key: Arc<str> = Arc::from(key);
        flights.insert(
            Arc::clone(&key),
            Flight {
                key: Arc::clone(&key),
                id,
                leader: Leader::Active,
                waiters: BTreeMap::new(),
                cond: None,
            },
        );
        drop(guard);
        Joined::Leader(LeaderGuard {
            seat: Seat {
                inner: Arc::clone(&self.inner),
                shard,
                key,
                flight: id,
            },
            finished: false,
        })
    }

    /// Whether no flight and no undelivered value is left.
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.inner.shards.iter().all(|shard| {
            let shard = lock(shard);
            shard.flights.is_empty() && shard.published.is_empty()
        })
    }
}

impl LeaderGuard {
    /// The stored key this flight is for.
    pub(crate) fn key(&self) -> &str {
        &self.seat.key
    }

    /// Whether anyone waits on this flight right now, so that a leader
    /// with nobody to serve can skip serializing its value. A waiter that
    /// joins after a `false` is promoted when the guard drops instead, and
    /// finds the value in the cache.
    pub(crate) fn has_waiters(&self) -> bool {
        let guard = self.seat.lock();
        guard
            .flights
            .get(&*self.seat.key)
            .is_some_and(|flight| flight.id == self.seat.flight && !flight.waiters.is_empty())
    }

    /// Delivers `value` to every waiter of the flight and ends it: the next
    /// `join` of this key starts a new flight.
    pub(crate) fn publish(mut self, value: Arc<[u8]>) {
        self.finished = true;
        let wakeup = {
            let mut guard = self.seat.lock();
            let shard = &mut *guard;
            let flight = match shard.flights.remove(&*self.seat.key) {
                Some(flight) if flight.id == self.seat.flight => {
                    self.seat.inner.flight_ended();
                    flight
                }
                // Only this guard ends its flight, so another flight under
                // the key cannot happen; put it back untouched all the same.
                Some(other) => {
                    shard.flights.insert(Arc::clone(&other.key), other);
                    return;
                }
                None => return,
            };
            if !flight.waiters.is_empty() {
                shard.published.insert(
                    flight.id,
                    Published {
                        // Cloned, not moved, so that the last reference
                        // (possibly a large buffer) is freed outside the lock.
                        value: Arc::clone(&value),
                        remaining: flight.waiters.len(),
                    },
                );
            }
            Wakeup {
                waker: None,
                waiters: flight.waiters,
                cond: flight.cond,
            }
        };
        wakeup.fire();
    }

    /// Gives the flight up without a value: the first waiter, if any, is
    /// promoted to leader; with none the flight ends. Same as dropping.
    // The policy abandons by dropping; the name is for readers and tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn abandon(self) {}
}

impl Drop for LeaderGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.seat.hand_over();
        }
    }
}

impl fmt::Debug for LeaderGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("key", &self.seat.key)
            .field("flight", &self.seat.flight)
            .finish()
    }
}

impl Waiter {
    /// Blocks the thread until the leader publishes or this waiter is
    /// promoted. Has no deadline: it returns [`Outcome::TimedOut`] only if
    /// the registry lost track of this waiter, which its invariants rule
    /// out, rather than sleep forever.
    // The policy always waits with a deadline; these serve the tests.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn wait(self) -> Outcome {
        self.wait_until(None)
    }

    /// [`wait`](Self::wait), but gives up after `timeout` with
    /// [`Outcome::TimedOut`]. An outcome that arrived by the deadline wins
    /// over the timeout (a promotion at the last moment is taken up, not
    /// passed on). A timeout too large to represent waits without one.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn wait_timeout(self, timeout: Duration) -> Outcome {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// [`wait_timeout`](Self::wait_timeout) with an absolute deadline, for a
    /// caller whose whole call has one.
    pub(crate) fn wait_deadline(self, deadline: Instant) -> Outcome {
        self.wait_until(Some(deadline))
    }

    /// Waits in a task: the returned future completes with
    /// [`Outcome::Value`] or [`Outcome::Lead`] (or, like [`wait`](Self::wait),
    /// `TimedOut` on a lost waiter) and never blocks the thread polling it.
    /// It has no deadline of its own; see [`WaitFuture`].
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn wait_async(self) -> WaitFuture {
        WaitFuture { waiter: Some(self) }
    }

    fn wait_until(self, deadline: Option<Instant>) -> Outcome {
        // A handle of our own, so the guard does not borrow `self`, which
        // `settle` consumes.
        let inner = Arc::clone(&self.seat.inner);
        let mut guard = lock(&inner.shards[self.seat.shard]);
        if let Check::Done(settled) = self.check(&mut guard) {
            drop(guard);
            return self.settle(settled);
        }
        let Some(cond) = self
            .flight(&mut guard)
            .map(|flight| Arc::clone(flight.cond.get_or_insert_default()))
        else {
            return self.leave(guard);
        };
        loop {
            guard = match deadline {
                None => cond.wait(guard).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // An outcome that arrived in time is taken up; only a
                        // waiter still queued leaves.
                        if let Check::Done(settled) = self.check(&mut guard) {
                            drop(guard);
                            return self.settle(settled);
                        }
                        return self.leave(guard);
                    }
                    match cond.wait_timeout(guard, left) {
                        Ok((guard, _)) => guard,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
            };
            if let Check::Done(settled) = self.check(&mut guard) {
                drop(guard);
                return self.settle(settled);
            }
        }
    }

    /// Leaves the queue with [`Outcome::TimedOut`]; called with the shard
    /// locked and this waiter still queued.
    fn leave(mut self, mut guard: MutexGuard<'_, Shard>) -> Outcome {
        let stale = self.unqueue(&mut guard);
        drop(guard);
        drop(stale);
        self.settled = true;
        Outcome::TimedOut
    }

    /// This waiter's flight, if it is still unpublished; called with the
    /// shard locked.
    fn flight<'s>(&self, shard: &'s mut Shard) -> Option<&'s mut Flight> {
        shard
            .flights
            .get_mut(&*self.seat.key)
            .filter(|flight| flight.id == self.seat.flight)
    }

    /// Looks at the flight, taking up a promotion or a value; called with
    /// the shard locked.
    fn check(&self, shard: &mut Shard) -> Check {
        let seat = &self.seat;
        if let Some(flight) = self.flight(shard) {
            if flight.leader == Leader::Promoted(self.id) {
                flight.leader = Leader::Active;
                return Check::Done(Settled::Lead);
            }
            if flight.waiters.contains_key(&self.id) {
                return Check::Waiting;
            }
        }
        let Some(published) = shard.published.get_mut(&seat.flight) else {
            return Check::Done(Settled::Lost);
        };
        published.remaining = published.remaining.saturating_sub(1);
        let value = if published.remaining == 0 {
            // The last collector takes the value out, so the shard never
            // keeps it longer than a waiter needs it.
            match shard.published.remove(&seat.flight) {
                Some(published) => published.value,
                None => return Check::Done(Settled::Lost),
            }
        } else {
            Arc::clone(&published.value)
        };
        Check::Done(Settled::Value(value))
    }

    /// Removes this waiter from its flight's queue; called with the shard
    /// locked. Returns the waker it had registered, to be dropped unlocked.
    fn unqueue(&self, shard: &mut Shard) -> Option<Waker> {
        self.flight(shard)?.waiters.remove(&self.id).flatten()
    }

    fn settle(mut self, settled: Settled) -> Outcome {
        self.settled = true;
        match settled {
            Settled::Lead => Outcome::Lead(LeaderGuard {
                seat: self.seat.clone(),
                finished: false,
            }),
            Settled::Value(value) => Outcome::Value(value),
            Settled::Lost => Outcome::TimedOut,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Wakers and values leave the lock before they are dropped.
        let (wakeup, stale, value) = {
            let mut guard = self.seat.lock();
            match self.check(&mut guard) {
                Check::Waiting => (Wakeup::default(), self.unqueue(&mut guard), None),
                Check::Done(Settled::Lead) => (self.seat.hand_over_locked(&mut guard), None, None),
                Check::Done(Settled::Value(value)) => (Wakeup::default(), None, Some(value)),
                Check::Done(Settled::Lost) => (Wakeup::default(), None, None),
            }
        };
        drop((stale, value));
        wakeup.fire();
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("key", &self.seat.key)
            .field("flight", &self.seat.flight)
            .field("id", &self.id)
            .finish()
    }
}

impl Future for WaitFuture {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(waiter) = self.waiter.as_ref() else {
            return Poll::Pending;
        };
        // Cloned and dropped outside the lock: both run executor code.
        let fresh = cx.waker().clone();
        let (settled, stale) = {
            let mut guard = waiter.seat.lock();
            match waiter.check(&mut guard) {
                Check::Done(settled) => (Some(settled), Some(fresh)),
                Check::Waiting => match waiter
                    .flight(&mut guard)
                    .and_then(|flight| flight.waiters.get_mut(&waiter.id))
                {
                    Some(slot) => (None, slot.replace(fresh)),
                    // Queued yet not found: cannot happen; leave rather
                    // than sleep without a waker.
                    None => (Some(Settled::Lost), waiter.unqueue(&mut guard)),
                },
            }
        };
        drop(stale);
        match (settled, self.waiter.take()) {
            (Some(settled), Some(waiter)) => Poll::Ready(waiter.settle(settled)),
            (None, waiter) => {
                self.waiter = waiter;
                Poll::Pending
            }
            (Some(_), None) => Poll::Pending,
        }
    }
}

impl fmt::Debug for WaitFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitFuture")
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl Seat {
    fn lock(&self) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[self.shard])
    }

    /// The leader of this flight gives up.
    fn hand_over(&self) {
        let wakeup = {
            let mut guard = self.lock();
            self.hand_over_locked(&mut guard)
        };
        wakeup.fire();
    }

    /// Promotes the first waiter, or ends the flight if there is none;
    /// called with the shard locked.
    fn hand_over_locked(&self, shard: &mut Shard) -> Wakeup {
        let Some(flight) = shard
            .flights
            .get_mut(&*self.key)
            .filter(|flight| flight.id == self.flight)
        else {
            return Wakeup::default();
        };
        match flight.waiters.pop_first() {
            Some((next, waker)) => {
                flight.leader = Leader::Promoted(next);
                Wakeup {
                    waker,
                    waiters: BTreeMap::new(),
                    // Threads share the flight's condition variable, so all
                    // of them wake; only the promoted one finds news.
                    cond: flight.cond.clone(),
                }
            }
            None => {
                let ended = shard.flights.remove(&*self.key);
                self.inner.flight_ended();
                Wakeup {
                    cond: ended.and_then(|flight| flight.cond),
                    ..Wakeup::default()
                }
            }
        }
    }
}

impl Wakeup {
    fn fire(self) {
        if let Some(waker) = self.waker {
            waker.wake();
        }
        for waker in self.waiters.into_values().flatten() {
            waker.wake();
        }
        if let Some(cond) = self.cond {
            cond.notify_all();
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// FNV-1a: cheap, and a key crafted to collide only puts its flights on one
/// shard's mutex, which is never worse than an unsharded registry.
fn shard_of(key: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Barrier, mpsc};
    use std::task::Wake;
    use std::thread;

    struct Unpark(thread::Thread);

    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }

    /// A bug here shows up as a hang; every blocking step of a test is
    /// bounded by this so that it fails instead.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Drives a future on this thread, parking between polls.
    fn block_on<F: Future>(future: F) -> F::Output {
        let deadline = Instant::now() + PATIENCE;
        let mut future = pin!(future);
        let waker = Waker::from(Arc::new(Unpark(thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the future was never woken to completion");
            thread::park_timeout(left);
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    fn bytes(text: &str) -> Arc<[u8]> {
        Arc::from(text.as_bytes())
    }

    fn leader(flights: &Flights, key: &str) -> LeaderGuard {
        match flights.join(key) {
            Joined::Leader(guard) => guard,
            Joined::Waiter(waiter) => panic!("expected to lead, joined as {waiter:?}"),
        }
    }

    fn waiter(flights: &Flights, key: &str) -> Waiter {
        match flights.join(key) {
            Joined::Waiter(waiter) => waiter,
            Joined::Leader(guard) => panic!("expected to wait, leads {guard:?}"),
        }
    }

    fn value(outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::Value(value) => value.to_vec(),
            Outcome::Lead(guard) => panic!("expected a value, was promoted: {guard:?}"),
            Outcome::TimedOut => panic!("expected a value, timed out"),
        }
    }

    fn lead(outcome: Outcome) -> LeaderGuard {
        match outcome {
            Outcome::Lead(guard) => guard,
            Outcome::Value(value) => panic!("expected promotion, got {value:?}"),
            Outcome::TimedOut => panic!("expected promotion, timed out"),
        }
    }

    /// What a caller of the policy does with the flight: lead and compute
    /// with `work` (publishing on `Some`, giving up on `None`), or wait and
    /// take over when promoted. Returns the value it ended with.
    fn call(
        flights: &Flights,
        key: &str,
        ready: &Barrier,
        work: &(dyn Fn() -> Option<Vec<u8>> + Sync),
    ) -> Option<Vec<u8>> {
        let joined = flights.join(key);
        ready.wait();
        let guard = match joined {
            Joined::Leader(guard) => guard,
            Joined::Waiter(waiter) => match waiter.wait_timeout(PATIENCE) {
                Outcome::Value(value) => return Some(value.to_vec()),
                Outcome::Lead(guard) => guard,
                Outcome::TimedOut => return None,
            },
        };
        // The guard moves into the computation, as it would into the
        // policy's: a panic unwinds through it, a `None` drops it, and
        // either way it hands over.
        catch_unwind(AssertUnwindSafe(move || {
            let value = work()?;
            guard.publish(Arc::from(value.as_slice()));
            Some(value)
        }))
        .ok()
        .flatten()
    }

    #[test]
    fn sixty_four_threads_share_one_computation() {
        let flights = Flights::default();
        let ready = Barrier::new(64);
        let computed = AtomicUsize::new(0);
        let work = || {
            computed.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
            Some(b"forty-two".to_vec())
        };
        let results: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = (0..64)
                .map(|_| scope.spawn(|| call(&flights, "k", &ready, &work)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert!(
            results
                .iter()
                .all(|r| r.as_deref() == Some(&b"forty-two"[..]))
        );
        assert!(flights.is_idle());
    }

    /// A leader that fails (by `how`) lets exactly one waiter compute, and
    /// everyone else gets that waiter's value.
    fn failing_leader_hands_over(how: fn() -> Option<Vec<u8>>) {
        let flights = Flights::default();
        let ready = Barrier::new(16);
        let attempts = AtomicUsize::new(0);
        let work = || {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                thread::sleep(Duration::from_millis(10));
                how()
            } else {
                Some(b"second".to_vec())
            }
        };
        let results: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| call(&flights, "k", &ready, &work)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(results.iter().filter(|r| r.is_none()).count(), 1);
        assert_eq!(
            results
                .iter()
                .filter(|r| r.as_deref() == Some(&b"second"[..]))
                .count(),
            15
        );
        assert!(flights.is_idle());
    }

    #[test]
    fn panicking_leader_hands_over_to_one_waiter() {
        failing_leader_hands_over(|| panic!("the computation panicked"));
    }

    #[test]
    fn abandoning_leader_hands_over_to_one_waiter() {
        failing_leader_hands_over(|| None);
    }

    #[test]
    fn explicit_abandon_promotes_first_waiter_in_join_order() {
        let flights = Flights::default();
        let first = leader(&flights, "k");
        let a = waiter(&flights, "k");
        let b = waiter(&flights, "k");
        first.abandon();
        let promoted = lead(a.wait_timeout(PATIENCE));
        assert_eq!(promoted.key(), "k");
        // b is still waiting, on the promoted leader.
        let mut b = b.wait_async();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        assert!(poll_once(&mut b, &waker).is_pending());
        promoted.publish(bytes("from a"));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        match poll_once(&mut b, &waker) {
            Poll::Ready(outcome) => assert_eq!(value(outcome), b"from a"),
            Poll::Pending => panic!("published value not delivered"),
        }
        assert!(flights.is_idle());
    }

    #[test]
    fn leader_future_dropped_mid_way_hands_over() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let mut request = Box::pin(async move {
            let guard = guard;
            std::future::pending::<()>().await;
            guard.publish(bytes("never"));
        });
        assert!(
            request
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
        let w = waiter(&flights, "k");
        let other = waiter(&flights, "k");
        thread::scope(|scope| {
            let promoted = scope.spawn(|| block_on(w.wait_async()));
            let rest = scope.spawn(|| block_on(other.wait_async()));
            thread::sleep(Duration::from_millis(10));
            // The request is cancelled: its future, guard included, dropped.
            drop(request);
            let guard = lead(promoted.join().unwrap());
            guard.publish(bytes("recomputed"));
            assert_eq!(value(rest.join().unwrap()), b"recomputed");
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn dropped_waiting_future_leaves_no_trace() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let mut gone = waiter(&flights, "k").wait_async();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        assert!(poll_once(&mut gone, &waker).is_pending());
        let stays = waiter(&flights, "k");
        drop(gone);
        thread::scope(|scope| {
            let stays = scope.spawn(|| stays.wait());
            thread::sleep(Duration::from_millis(5));
            guard.publish(bytes("v"));
            assert_eq!(value(stays.join().unwrap()), b"v");
        });
        // The dropped future is neither woken nor counted as a collector.
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(flights.is_idle());
    }

    #[test]
    fn dropped_waiters_then_abandon_ends_the_flight() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let mut pending = waiter(&flights, "k").wait_async();
        assert!(poll_once(&mut pending, Waker::noop()).is_pending());
        drop(pending);
        drop(waiter(&flights, "k"));
        guard.abandon();
        assert!(flights.is_idle());
        // Nobody was stranded as a promoted ghost: the next caller leads.
        leader(&flights, "k").abandon();
        assert!(flights.is_idle());
    }

    #[test]
    fn promoted_then_dropped_waiter_hands_over_again() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut first = waiter(&flights, "k").wait_async();
        assert!(poll_once(&mut first, &waker).is_pending());
        let second = waiter(&flights, "k");
        let third = waiter(&flights, "k");
        guard.abandon();
        // The first waiter was promoted and woken, but its task is cancelled
        // before it polls again.
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        drop(first);
        // A promoted sync waiter dropped before waiting hands over as well.
        drop(second);
        let guard = lead(third.wait_timeout(PATIENCE));
        let late = waiter(&flights, "k");
        drop(guard);
        lead(late.wait_timeout(PATIENCE)).publish(bytes("last"));
        assert!(flights.is_idle());
    }

    #[test]
    fn chain_of_failing_leaders_reaches_every_waiter() {
        let flights = Flights::default();
        let ready = Barrier::new(32);
        let attempts = AtomicUsize::new(0);
        // Every computation fails: each waiter in turn is promoted, fails,
        // and hands over; nobody hangs and nothing is left behind.
        let work = || {
            attempts.fetch_add(1, Ordering::SeqCst);
            None
        };
        let results: Vec<_> = thread::scope(|scope| {
            let handles: Vec<_> = (0..32)
                .map(|_| scope.spawn(|| call(&flights, "k", &ready, &work)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(attempts.load(Ordering::SeqCst), 32);
        assert!(results.iter().all(Option::is_none));
        assert!(flights.is_idle());
    }

    #[test]
    fn wait_timeout_leaves_and_leader_still_serves_the_rest() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let impatient = waiter(&flights, "k");
        let patient = waiter(&flights, "k");
        let started = Instant::now();
        assert!(matches!(
            impatient.wait_timeout(Duration::from_millis(20)),
            Outcome::TimedOut
        ));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(matches!(
            waiter(&flights, "k").wait_timeout(Duration::ZERO),
            Outcome::TimedOut
        ));
        thread::scope(|scope| {
            let patient = scope.spawn(|| patient.wait_timeout(PATIENCE));
            thread::sleep(Duration::from_millis(5));
            guard.publish(bytes("v"));
            assert_eq!(value(patient.join().unwrap()), b"v");
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn timed_out_waiters_are_never_promoted() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let gone = waiter(&flights, "k");
        let next = waiter(&flights, "k");
        assert!(matches!(
            gone.wait_timeout(Duration::from_millis(1)),
            Outcome::TimedOut
        ));
        guard.abandon();
        lead(next.wait_timeout(PATIENCE)).publish(bytes("v"));
        assert!(flights.is_idle());
    }

    #[test]
    fn outcome_settled_before_the_deadline_wins() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let promoted = waiter(&flights, "k");
        let served = waiter(&flights, "k");
        guard.abandon();
        // Both deadlines have passed already; each still gets its news.
        let past = Instant::now();
        let guard = lead(promoted.wait_deadline(past));
        guard.publish(bytes("v"));
        assert_eq!(value(served.wait_deadline(past)), b"v");
        assert!(flights.is_idle());
    }

    #[test]
    fn huge_timeout_waits_like_no_timeout() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let w = waiter(&flights, "k");
        thread::scope(|scope| {
            let w = scope.spawn(|| w.wait_timeout(Duration::MAX));
            thread::sleep(Duration::from_millis(5));
            guard.publish(bytes("v"));
            assert_eq!(value(w.join().unwrap()), b"v");
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn different_keys_never_block_each_other() {
        let flights = Flights::default();
        // Enough keys that several share a shard.
        let guards: Vec<_> = (0..100)
            .map(|i| leader(&flights, &format!("key-{i}")))
            .collect();
        let (sent, received) = mpsc::channel();
        thread::scope(|scope| {
            scope.spawn(|| {
                let guard = leader(&flights, "other");
                let w = waiter(&flights, "other");
                guard.publish(bytes("other"));
                sent.send(value(w.wait())).unwrap();
            });
            let got = received.recv_timeout(PATIENCE);
            assert_eq!(got.as_deref(), Ok(&b"other"[..]));
        });
        // Each key is its own flight with its own value.
        let waiters: Vec<_> = (0..100)
            .map(|i| waiter(&flights, &format!("key-{i}")))
            .collect();
        for (i, guard) in guards.into_iter().enumerate() {
            guard.publish(bytes(&format!("value-{i}")));
        }
        for (i, w) in waiters.into_iter().enumerate() {
            assert_eq!(value(w.wait()), format!("value-{i}").as_bytes());
        }
        assert!(flights.is_idle());
    }

    #[test]
    fn join_after_publish_starts_a_new_flight() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let before = waiter(&flights, "k");
        guard.publish(bytes("old"));
        let guard = leader(&flights, "k");
        let after = waiter(&flights, "k");
        // The earlier waiter still gets the first value, undisturbed by the
        // new flight of the same key.
        assert_eq!(value(before.wait()), b"old");
        guard.publish(bytes("new"));
        assert_eq!(value(after.wait()), b"new");
        assert!(flights.is_idle());
    }

    #[test]
    fn publish_without_waiters_keeps_nothing() {
        let flights = Flights::default();
        let value = bytes("v");
        leader(&flights, "k").publish(Arc::clone(&value));
        assert_eq!(Arc::strong_count(&value), 1);
        assert!(flights.is_idle());
    }

    #[test]
    fn waiters_share_one_buffer() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let waiters: Vec<_> = (0..3).map(|_| waiter(&flights, "k")).collect();
        let value = bytes("shared");
        guard.publish(Arc::clone(&value));
        let got: Vec<_> = waiters
            .into_iter()
            .map(|w| match w.wait() {
                Outcome::Value(got) => got,
                _ => panic!("expected the value"),
            })
            .collect();
        assert!(got.iter().all(|got| Arc::ptr_eq(got, &value)));
        drop(got);
        assert_eq!(Arc::strong_count(&value), 1);
        assert!(flights.is_idle());
    }

    #[test]
    fn waiters_dropped_after_publish_release_the_value() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let a = waiter(&flights, "k");
        let mut b = waiter(&flights, "k").wait_async();
        assert!(poll_once(&mut b, Waker::noop()).is_pending());
        let value = bytes("v");
        guard.publish(Arc::clone(&value));
        drop(a);
        drop(b);
        assert_eq!(Arc::strong_count(&value), 1);
        assert!(flights.is_idle());
    }

    #[test]
    fn sync_and_async_waiters_share_one_flight() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let threads: Vec<_> = (0..8).map(|_| waiter(&flights, "k")).collect();
        let tasks: Vec<_> = (0..8).map(|_| waiter(&flights, "k").wait_async()).collect();
        thread::scope(|scope| {
            let handles: Vec<_> = threads
                .into_iter()
                .map(|w| scope.spawn(move || w.wait()))
                .chain(
                    tasks
                        .into_iter()
                        .map(|task| scope.spawn(move || block_on(task))),
                )
                .collect();
            thread::sleep(Duration::from_millis(10));
            guard.publish(bytes("mixed"));
            for handle in handles {
                assert_eq!(value(handle.join().unwrap()), b"mixed");
            }
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn promotion_reaches_a_sync_waiter_among_async_ones() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let sync = waiter(&flights, "k");
        let tasks: Vec<_> = (0..4).map(|_| waiter(&flights, "k").wait_async()).collect();
        thread::scope(|scope| {
            let sync = scope.spawn(move || sync.wait());
            let tasks: Vec<_> = tasks
                .into_iter()
                .map(|task| scope.spawn(move || block_on(task)))
                .collect();
            thread::sleep(Duration::from_millis(10));
            drop(guard);
            lead(sync.join().unwrap()).publish(bytes("by the thread"));
            for task in tasks {
                assert_eq!(value(task.join().unwrap()), b"by the thread");
            }
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn latest_waker_is_the_one_woken() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let mut task = waiter(&flights, "k").wait_async();
        let (old, new) = (Arc::new(Count::default()), Arc::new(Count::default()));
        // The task moved to another worker between polls.
        assert!(poll_once(&mut task, &Waker::from(Arc::clone(&old))).is_pending());
        assert!(poll_once(&mut task, &Waker::from(Arc::clone(&new))).is_pending());
        guard.publish(bytes("v"));
        assert_eq!(old.0.load(Ordering::SeqCst), 0);
        assert_eq!(new.0.load(Ordering::SeqCst), 1);
        match poll_once(&mut task, Waker::noop()) {
            Poll::Ready(outcome) => assert_eq!(value(outcome), b"v"),
            Poll::Pending => panic!("value not delivered"),
        }
        // No waker outlives the flight.
        assert_eq!(Arc::strong_count(&old), 1);
        assert_eq!(Arc::strong_count(&new), 1);
        assert!(flights.is_idle());
    }

    #[test]
    fn many_tasks_on_one_thread_share_one_computation() {
        let flights = Flights::default();
        let computed = Arc::new(AtomicUsize::new(0));
        // A single-threaded executor in miniature: every task is polled in
        // turn on this thread, and nothing may block it.
        let tasks: Vec<Pin<Box<dyn Future<Output = Vec<u8>>>>> = (0..256)
            .map(|_| {
                let joined = flights.join("k");
                let computed = Arc::clone(&computed);
                let task: Pin<Box<dyn Future<Output = Vec<u8>>>> = Box::pin(async move {
                    let guard = match joined {
                        Joined::Leader(guard) => guard,
                        Joined::Waiter(waiter) => match waiter.wait_async().await {
                            Outcome::Value(value) => return value.to_vec(),
                            Outcome::Lead(guard) => guard,
                            Outcome::TimedOut => panic!("timed out without a deadline"),
                        },
                    };
                    computed.fetch_add(1, Ordering::SeqCst);
                    guard.publish(bytes("v"));
                    b"v".to_vec()
                });
                task
            })
            .collect();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut tasks: Vec<_> = tasks.into_iter().map(Some).collect();
        // The leader joined first and is polled last, so every waiter has
        // parked on the flight before the value exists.
        for _ in 0..2 {
            for slot in tasks.iter_mut().rev() {
                if let Some(task) = slot
                    && let Poll::Ready(got) = task.as_mut().poll(&mut Context::from_waker(&waker))
                {
                    assert_eq!(got, b"v");
                    *slot = None;
                }
            }
        }
        assert!(tasks.iter().all(Option::is_none));
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 255);
        assert!(flights.is_idle());
    }

    #[test]
    fn completed_future_polled_again_stays_pending() {
        let flights = Flights::default();
        let guard = leader(&flights, "k");
        let mut task = waiter(&flights, "k").wait_async();
        guard.publish(bytes("v"));
        match poll_once(&mut task, Waker::noop()) {
            Poll::Ready(outcome) => assert_eq!(value(outcome), b"v"),
            Poll::Pending => panic!("value not delivered"),
        }
        assert!(poll_once(&mut task, Waker::noop()).is_pending());
        assert!(flights.is_idle());
    }

    #[test]
    fn a_poisoned_shard_keeps_working() {
        let flights = Flights::default();
        let shard = &flights.inner.shards[shard_of("k")];
        let poisoned = catch_unwind(AssertUnwindSafe(|| {
            let _guard = shard.lock();
            panic!("poison the shard");
        }));
        assert!(poisoned.is_err() && shard.is_poisoned());
        let guard = leader(&flights, "k");
        let w = waiter(&flights, "k");
        guard.publish(bytes("v"));
        assert_eq!(value(w.wait()), b"v");
        assert!(flights.is_idle());
    }

    #[test]
    fn stress_mixed_outcomes_never_hang_or_leak() {
        let flights = Flights::default();
        let keys = ["a", "b", "c"];
        thread::scope(|scope| {
            for t in 0..12usize {
                let flights = &flights;
                scope.spawn(move || {
                    for round in 0..200usize {
                        let key = keys[(t + round) % keys.len()];
                        let guard = match flights.join(key) {
                            Joined::Leader(guard) => guard,
                            Joined::Waiter(w) => {
                                let outcome = match (t + round) % 3 {
                                    0 => w.wait(),
                                    1 => w.wait_timeout(Duration::from_millis(1)),
                                    _ => block_on(w.wait_async()),
                                };
                                match outcome {
                                    Outcome::Lead(guard) => guard,
                                    Outcome::Value(_) | Outcome::TimedOut => continue,
                                }
                            }
                        };
                        match round % 3 {
                            0 => guard.publish(bytes(key)),
                            1 => guard.abandon(),
                            _ => {
                                thread::yield_now();
                                drop(guard);
                            }
                        }
                    }
                });
            }
        });
        assert!(flights.is_idle());
    }

    #[test]
    fn handles_are_send_and_static() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        fn assert_send<T: Send + Unpin + 'static>() {}
        assert_send_sync::<Flights>();
        assert_send::<LeaderGuard>();
        assert_send::<Waiter>();
        assert_send::<WaitFuture>();
        assert_send::<Outcome>();
    }
}
