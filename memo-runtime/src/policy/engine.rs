//! The engine: one configuration together with the policy's state under
//! it, the computations in flight, the local copies, and the invalidation
//! barrier. Every call runs against one engine, from start to end.
//!
//! An engine is built for each configuration, by the first call that
//! starts after its [`configure`](crate::configure), and shared by every
//! later call until the next one: a new configuration starts with no
//! flights, no local copies and a fresh barrier, as it starts with fresh
//! counters. The configuration itself stays in the config layer, where the
//! locks (below the policy) read it too.
//!
//! Reading the engine is on every call's path. Each thread keeps a snapshot
//! of the engine in force, checked against the configuration's generation
//! (one atomic load of a word that only `configure` writes): this is the
//! one per-thread cache of the runtime. The snapshot is a [`Handle`] of the
//! thread's own, so the count a call writes as it takes and drops its
//! handle is on a line no other thread writes; the engine's own count is
//! written only when a thread takes a new snapshot.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::barrier::Barrier;
use super::flight::Flights;
use super::local::{self, LocalCopies};
use crate::backend::world::Blocking;
use crate::config::{self, Config};

/// One configuration and the policy's state under it.
pub(crate) struct Engine {
    pub(crate) config: Arc<Config>,
    /// The configuration's generation, which this engine was built for.
    generation: u64,
    /// The synchronous and async worlds over the configuration's backend,
    /// made once: a call borrows its world rather than counting the
    /// backend's `Arc` up and down, a write every thread would share.
    pub(crate) blocking: Blocking,
    #[cfg(feature = "async")]
    pub(crate) tokio: crate::backend::world::Tokio,
    pub(crate) flights: Flights,
    pub(crate) barrier: Arc<Barrier>,
    /// Made on first use, which also subscribes to other processes'
    /// invalidations where the backend carries them.
    local: OnceLock<LocalCopies>,
    /// Where invalidations for other processes' local copies are queued:
    /// one thread publishes them in order, started on first use, ending
    /// with the engine. `None` inside when the thread could not be started.
    publisher: OnceLock<Option<Sender<Vec<u8>>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The engine of the configuration in force, shared by every thread.
static SHARED: Mutex<Option<Arc<Engine>>> = Mutex::new(None);

thread_local! {
    /// This thread's snapshot of [`SHARED`].
    static SNAPSHOT: RefCell<Option<Arc<Handle>>> = const { RefCell::new(None) };
}

/// A thread's own handle on an engine: what a call holds.
#[derive(Debug)]
pub(crate) struct Handle(Arc<Engine>);

impl Deref for Handle {
    type Target = Arc<Engine>;

    fn deref(&self) -> &Arc<Engine> {
        &self.0
    }
}

/// The engine of the configuration in force: that of the last
/// [`configure`](crate::configure) that returned before this call started.
pub(crate) fn current() -> Arc<Handle> {
    let generation = config::generation();
    let found = SNAPSHOT.try_with(|snapshot| {
        // Nothing called while the borrow is held comes back here, so it
        // cannot fail; a failure would only cost a read of the shared slot.
        let mut snapshot = snapshot.try_borrow_mut().ok()?;
        match &*snapshot {
            Some(handle) if handle.generation == generation => Some(Arc::clone(handle)),
            _ => {
                let handle = Arc::new(Handle(shared(generation)));
                *snapshot = Some(Arc::clone(&handle));
                Some(handle)
            }
        }
    });
    // During this thread's teardown the snapshot is gone.
    found
        .ok()
        .flatten()
        .unwrap_or_else(|| Arc::new(Handle(shared(generation))))
}

/// The shared engine of `generation` or a later one, built if the slot
/// holds an older one.
fn shared(generation: u64) -> Arc<Engine> {
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(engine) = slot
        .as_ref()
        .filter(|engine| engine.generation >= generation)
    {
        return Arc::clone(engine);
    }
    let (config, generation) = config::current();
    let engine = Arc::new(Engine::new(config, generation));
    // The engine it replaces is dropped outside the lock: its publisher
    // thread may go down with it.
    let old = slot.replace(Arc::clone(&engine));
    drop(slot);
    drop(old);
    engine
}

impl Engine {
    /// A fresh engine for `config`, not installed anywhere.
    pub(crate) fn new(config: Arc<Config>, generation: u64) -> Engine {
        Engine {
            blocking: Blocking(Arc::clone(&config.backend)),
            #[cfg(feature = "async")]
            tokio: crate::backend::world::Tokio(Arc::clone(&config.async_backend)),
            config,
            generation,
            flights: Flights::default(),
            barrier: Arc::default(),
            local: OnceLock::new(),
            publisher: OnceLock::new(),
        }
    }

    /// The local copies, made on first use; with a backend that carries
    /// invalidations (Redis), a subscriber then drops the copies other
    /// processes invalidate, for as long as this engine lives.
    pub(crate) fn local(self: &Arc<Self>) -> &LocalCopies {
        self.local.get_or_init(|| {
            if let Some(bus) = self.config.backend.__invalidations() {
                let engine = Arc::downgrade(self);
                bus.subscribe(
                    &local::channel(self.config.namespace.as_deref()),
                    Box::new(move |message| {
                        let Some(engine) = engine.upgrade() else {
                            return false;
                        };
                        if let Some(key) = local::invalidated(message) {
                            engine.dropped_elsewhere(key);
                        }
                        true
                    }),
                );
            }
            LocalCopies::new(self.config.local_capacity)
        })
    }

    /// The local copies, if any were made.
    pub(crate) fn local_if_made(&self) -> Option<&LocalCopies> {
        self.local.get()
    }

    /// Another process invalidated `stored_key` (an empty key: a tag, so
    /// anything): no copy made before now is served again here.
    fn dropped_elsewhere(&self, stored_key: &str) {
        if stored_key.is_empty() {
            self.dropped_everything();
            return;
        }
        self.barrier.bump(super::barrier::stripe_of(stored_key));
        if let Some(copies) = self.local.get() {
            copies.remove(stored_key);
        }
    }

    /// An invalidation that reaches keys it cannot name (a tag's): no copy
    /// made and no flight begun before now is served again here.
    pub(crate) fn dropped_everything(&self) {
        self.barrier.bump_all();
        if let Some(copies) = self.local.get() {
            copies.clear();
        }
    }

    /// Tells other processes that an invalidation reached keys it cannot
    /// name (a tag's): they drop every local copy.
    pub(crate) fn publish_invalidation_of_everything(&self) {
        self.publish_invalidation("");
    }

    /// Tells other processes to drop their local copies of `stored_key`,
    /// when the backend can (Redis): queued for this engine's publisher
    /// thread, so that the caller, sync or async, never waits for it.
    pub(crate) fn publish_invalidation(&self, stored_key: &str) {
        if self.config.backend.__invalidations().is_none() {
            return;
        }
        let publisher = self.publisher.get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
            let backend = Arc::clone(&self.config.backend);
            let channel = local::channel(self.config.namespace.as_deref());
            std::thread::Builder::new()
                .name("memo-invalidate".into())
                .spawn(move || {
                    for message in receiver {
                        if let Some(bus) = backend.__invalidations() {
                            if let Err(err) = bus.publish(&channel, &message) {
                                crate::common::diag::warning!(
                                    "memo: cannot tell other processes of an invalidation: {err}"
                                );
                            }
                        }
                    }
                })
                .map_err(|err| {
                    crate::common::diag::warning!(
                        "memo: cannot start the invalidation publisher: {err}"
                    );
                })
                .ok()
                .map(|_| sender)
        });
        if let Some(sender) = publisher {
            // The thread only ends once every sender is gone.
            let _ = sender.send(local::invalidation(stored_key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_one_handle_on_the_engine_in_force() {
        let first = current();
        let second = current();
        // Unless a `configure` of another test came in between, the same
        // handle; in any case, an engine of the generation in force or later.
        if first.generation == second.generation {
            assert!(Arc::ptr_eq(&first, &second));
        }
        assert!(second.generation >= first.generation);
    }

    #[test]
    fn threads_share_the_engine_through_handles_of_their_own() {
        let mine = current();
        let theirs = std::thread::spawn(current).join().unwrap();
        assert!(
            !Arc::ptr_eq(&mine, &theirs),
            "each thread has its own handle"
        );
        if mine.generation == theirs.generation {
            assert!(Arc::ptr_eq(&mine.0, &theirs.0), "one engine");
        }
    }
}
