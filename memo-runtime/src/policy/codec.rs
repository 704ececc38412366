//! Where a value is (de)serialized: on the caller's thread in the
//! synchronous world, off the executor once it is large in the async one.
//!
//! The postcard encoding and decoding of a value are full passes over it
//! that cannot yield. On a current-thread runtime a 64 MiB value would stall
//! every other task for as long as the pass takes, so the async world moves
//! every pass over a large value to tokio's blocking pool and back. That is
//! why every async entry point requires `T: Send + 'static` (as moka's
//! future cache does): only an owned value can be lent to another thread
//! from a future that may be dropped half-way. The synchronous world runs
//! on its caller's thread anyway and keeps every pass inline, so its values
//! may borrow.
//!
//! The passes are methods of the world's driver ([`Serde`], [`Encode`]),
//! so the policy names none of this:
//!
//! - [`Serde::decode_value`]: a value envelope found in the cache;
//! - [`Serde::load_value`]: a chunked value, decoded in the same blocking
//!   job that reads its chunks;
//! - [`Serde::decode_shared`]: the bytes a coalescing leader shares;
//! - [`Serde::publish`]: sharing a found value with the waiters;
//! - [`Encode::encode`]: a computed value, serialized once into the bytes
//!   that the waiters, the local copy and the store then all use.
//!
//! A value's encoded size is not known in advance: the encoding is first
//! tried inline into a buffer that gives up past `INLINE` bytes, and
//! only a value larger than that moves to the blocking pool.
//!
//! The markers [`Borrowed`] and [`Owned`] say something else: whether the
//! compute function is `'static`, so that a refresh the caller wins can run
//! detached from it (see `detach`).

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Call;
use super::drive::Driver;
use super::flight::LeaderGuard;
use super::stream::LoadError;
use crate::backend::world::Blocking;
use crate::format::envelope::{self, Invalid, Stamp};

/// Encoded or decoded values up to this size are handled inline: copying
/// them to the blocking pool would cost more than the pass itself.
#[cfg(feature = "async")]
pub(crate) const INLINE: usize = 64 * 1024;

/// The compute function of a call may borrow from the caller: a won
/// refresh runs in the foreground (`detach`).
pub(crate) struct Borrowed;

/// The compute function of a call is `'static` and `Send`: a won refresh
/// runs detached (`detach`).
pub(crate) struct Owned;

/// The whole value, to store. A function rather than a closure, whose type
/// would carry the caller's key type and so not be `'static` for a
/// borrowed key.
pub(crate) fn as_value<T>(value: &T) -> Option<&T> {
    Some(value)
}

/// The `Ok` value, to store; see [`as_value`].
pub(crate) fn as_ok<T, E>(result: &Result<T, E>) -> Option<&T> {
    result.as_ref().ok()
}

/// A result ready now, or one being made on the blocking pool.
pub(crate) enum Offloaded<X> {
    Ready(X),
    #[cfg(feature = "async")]
    Blocking(Job<X>),
}

impl<X> Offloaded<X> {
    /// The result. A pass that panicked on the blocking pool panics here,
    /// as it would have inline (the panic is the caller's own `Serialize`
    /// or `Deserialize`).
    pub(crate) async fn get(self) -> X {
        match self {
            Offloaded::Ready(x) => x,
            #[cfg(feature = "async")]
            Offloaded::Blocking(job) => job.get().await,
        }
    }
}

/// A pass moved to the blocking pool, with the work kept where this side
/// can take it back: a runtime that shuts down before the pool starts the
/// job cancels it, and the work (and the value it owns) would otherwise be
/// lost with it.
#[cfg(feature = "async")]
pub(crate) struct Job<X> {
    handle: tokio::task::JoinHandle<Option<X>>,
    work: Arc<std::sync::Mutex<Option<Work<X>>>>,
}

/// What a [`Job`] runs.
#[cfg(feature = "async")]
type Work<X> = Box<dyn FnOnce() -> X + Send>;

#[cfg(feature = "async")]
impl<X: Send + 'static> Job<X> {
    /// Starts `work` on the blocking pool of the current runtime.
    pub(crate) fn start(work: impl FnOnce() -> X + Send + 'static) -> Offloaded<X> {
        let work: Arc<std::sync::Mutex<Option<Work<X>>>> =
            Arc::new(std::sync::Mutex::new(Some(Box::new(work))));
        let slot = Arc::clone(&work);
        let handle = tokio::task::spawn_blocking(move || {
            let work = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()?;
            Some(work())
        });
        Offloaded::Blocking(Job { handle, work })
    }
}

#[cfg(feature = "async")]
impl<X> Job<X> {
    /// The job's result; if the job never ran (its runtime shut down
    /// first), the work runs here instead.
    async fn get(self) -> X {
        match self.handle.await {
            Ok(Some(x)) => return x,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            // Cancelled before it started, so the work is still here.
            Ok(None) | Err(_) => {}
        }
        let work = self
            .work
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match work {
            Some(work) => work(),
            // The job takes the work only to run it, and then returned
            // its result above or panicked.
            None => unreachable!("a blocking job took its work and neither returned nor panicked"),
        }
    }
}

/// How a world decodes values of type `T`, and shares found ones.
pub(crate) trait Serde<T: Serialize + DeserializeOwned>: Driver {
    /// Decodes a value envelope found under the call's key; inline by
    /// default.
    fn decode_value(
        &self,
        call: &Call<'_>,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(T, Stamp), Invalid>> + Send {
        async move { envelope::decode_stamped::<T>(call.key.full(), &bytes, call.encryption.as_ref()) }
    }

    /// Reads back and decodes the chunked value whose manifest is `main`.
    fn load_value(
        &self,
        call: &Call<'_>,
        main: Vec<u8>,
    ) -> impl Future<Output = Result<T, LoadError>> + Send;

    /// Decodes the bytes a coalescing leader shared.
    fn decode_shared(&self, bytes: Arc<[u8]>) -> impl Future<Output = Result<T, Invalid>> + Send {
        async move { envelope::decode_exact::<T>(&bytes) }
    }

    /// Hands `value` to the flight's waiters, if it has any, and gives it
    /// back.
    fn publish(&self, flight: Option<LeaderGuard>, value: T) -> Offloaded<T> {
        super::publish(flight, &value);
        Offloaded::Ready(value)
    }
}

/// How a world serializes what a compute function returned (`R`, of which
/// `C` picks the value, a `T`, to store).
pub(crate) trait Encode<T, R, C> {
    /// The result, with the postcard bytes of its value when this world
    /// serializes once up front; `None` leaves each use to serialize the
    /// value itself, inline.
    fn encode(&self, result: R, cacheable: &C) -> Offloaded<(R, Option<Arc<[u8]>>)> {
        let _ = cacheable;
        Offloaded::Ready((result, None))
    }
}

/// The synchronous world runs on its caller's thread: every pass inline.
impl<T: Serialize + DeserializeOwned> Serde<T> for Blocking {
    // Not `ready(..)`, which would hold a `T` and be `Send` only for a
    // `Send` value.
    async fn load_value(&self, call: &Call<'_>, main: Vec<u8>) -> Result<T, LoadError> {
        call.load_chunked_now::<T>(&main)
    }
}

/// The synchronous world serializes where each use needs it.
impl<T, R, C> Encode<T, R, C> for Blocking {}

/// The postcard bytes of `value` if they fit in `INLINE`: `Ok(None)`
/// when they do not (nothing is kept of the attempt).
#[cfg(feature = "async")]
fn encode_within_budget<T: Serialize>(value: &T) -> Result<Option<Vec<u8>>, postcard::Error> {
    /// Collects bytes until the budget runs out, then fails.
    struct Budget(Vec<u8>, bool);
    impl std::io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() + buf.len() > INLINE {
                self.1 = true;
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut budget = Budget(Vec::new(), false);
    let outcome = postcard::to_io(value, &mut budget).map(drop);
    match outcome {
        Ok(()) => Ok(Some(budget.0)),
        Err(_) if budget.1 => Ok(None),
        Err(err) => Err(err),
    }
}

/// The bytes of `value`, or why they cannot be had (logged by the caller's
/// uses as an unstorable value).
#[cfg(feature = "async")]
fn encode_whole<T: Serialize>(value: &T) -> Option<Arc<[u8]>> {
    postcard::to_allocvec(value).ok().map(Arc::from)
}

#[cfg(feature = "async")]
mod off {
    use super::*;
    use crate::backend::world::Tokio;

    fn on_runtime() -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    impl<T: Serialize + DeserializeOwned + Send + 'static> Serde<T> for Tokio {
        fn decode_value(
            &self,
            call: &Call<'_>,
            bytes: Vec<u8>,
        ) -> impl Future<Output = Result<(T, Stamp), Invalid>> + Send {
            let key = call.key.full().to_owned();
            let encryption = call.encryption.clone();
            async move {
                if bytes.len() <= INLINE || !on_runtime() {
                    return envelope::decode_stamped::<T>(&key, &bytes, encryption.as_ref());
                }
                Job::start(move || envelope::decode_stamped::<T>(&key, &bytes, encryption.as_ref()))
                    .get()
                    .await
            }
        }

        fn load_value(
            &self,
            call: &Call<'_>,
            main: Vec<u8>,
        ) -> impl Future<Output = Result<T, LoadError>> + Send {
            super::super::drive::load_chunked_off::<T>(call, main)
        }

        async fn decode_shared(&self, bytes: Arc<[u8]>) -> Result<T, Invalid> {
            if bytes.len() <= INLINE || !on_runtime() {
                return envelope::decode_exact::<T>(&bytes);
            }
            Job::start(move || envelope::decode_exact::<T>(&bytes))
                .get()
                .await
        }

        fn publish(&self, flight: Option<LeaderGuard>, value: T) -> Offloaded<T> {
            let Some(guard) = flight.filter(LeaderGuard::has_waiters) else {
                return Offloaded::Ready(value);
            };
            match encode_within_budget(&value) {
                Ok(Some(bytes)) => {
                    guard.publish(Arc::from(bytes));
                    Offloaded::Ready(value)
                }
                Ok(None) if on_runtime() => Job::start(move || {
                    if let Some(bytes) = encode_whole(&value) {
                        guard.publish(bytes);
                    }
                    value
                }),
                _ => {
                    super::super::publish(Some(guard), &value);
                    Offloaded::Ready(value)
                }
            }
        }
    }

    impl<T, R, C> Encode<T, R, C> for Tokio
    where
        T: Serialize + Send + 'static,
        R: Send + 'static,
        C: Fn(&R) -> Option<&T> + Copy + Send + 'static,
    {
        fn encode(&self, result: R, cacheable: &C) -> Offloaded<(R, Option<Arc<[u8]>>)> {
            let Some(value) = cacheable(&result) else {
                return Offloaded::Ready((result, None));
            };
            match encode_within_budget(value) {
                Ok(Some(bytes)) => Offloaded::Ready((result, Some(Arc::from(bytes)))),
                Ok(None) if on_runtime() => {
                    let cacheable = *cacheable;
                    Job::start(move || {
                        let bytes = cacheable(&result).and_then(encode_whole);
                        (result, bytes)
                    })
                }
                // Not serializable: each use reports it, as before.
                _ => Offloaded::Ready((result, None)),
            }
        }
    }
}

#[cfg(all(test, feature = "async"))]
mod tests {
    use super::*;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_job_returns_what_its_work_made() {
        let runtime = current_thread();
        let made = runtime.block_on(async { Job::start(|| vec![7u8; 100_000]).get().await });
        assert_eq!(made, vec![7u8; 100_000]);
    }

    #[test]
    fn a_job_its_runtime_cancelled_runs_where_it_is_awaited() {
        let runtime = current_thread();
        let handle = runtime.handle().clone();
        drop(runtime);
        // A runtime that has shut down cancels a blocking job at once.
        let job = {
            let _entered = handle.enter();
            Job::start(|| String::from("the value the job owns"))
        };
        let other = current_thread();
        assert_eq!(other.block_on(job.get()), "the value the job owns");
    }
}
