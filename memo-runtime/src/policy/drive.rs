//! The policy's two worlds: what differs between a synchronous call and an
//! async one, and nothing else.
//!
//! The memoize policy is written once, as async code generic over a
//! [`Driver`]: the backend layer's `World` (the engine as futures, a sleep)
//! plus how to wait on a flight, how to run the heavy stages of a chunked
//! value, and how to let go of a lock whose holder is going away.
//!
//! - `Blocking` (the synchronous world) does everything inline: its
//!   futures complete on their first poll, and the synchronous API drives
//!   them with `block_on` on the caller's own thread.
//! - `Tokio` (the async world) waits on tokio timers and wakers, and runs
//!   the CPU-heavy stages of a chunked value (hashing, compression,
//!   encryption, and the chunk I/O between them) on tokio's blocking pool,
//!   so that no poll runs long. The postcard (de)serialization of a large
//!   value leaves the executor too (`codec`); where a value is only lent
//!   (`store_chunked`, for a value not serialized up front), the pass runs
//!   under `block_in_place` on a multi-thread runtime, so the worker's
//!   other tasks move to another thread meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Call;
use super::flight::{Outcome, Waiter};
use super::pool::{self, Detached};
use super::stream::StoreError;
use crate::backend::world::{Blocking, World};
use crate::lock::CacheLock;

/// How the policy runs in one world.
pub(crate) trait Driver: World + Clone {
    /// Waits for the flight's leader until `deadline`.
    fn wait(&self, waiter: Waiter, deadline: Instant) -> impl Future<Output = Outcome> + Send;

    /// Stores `value` as a chunked value. The value is read before the
    /// future is returned, so the future does not hold on to it.
    fn store_chunked<T: Serialize + DeserializeOwned>(
        &self,
        call: &Call<'_>,
        value: &T,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Stores a value already serialized to `plain` (postcard bytes of a
    /// type of fingerprint `fp`) as a chunked value.
    fn store_chunked_plain(
        &self,
        call: &Call<'_>,
        plain: Arc<[u8]>,
        fp: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Lets go of a lock whose holder is going away without releasing it
    /// (its computation panicked, or its future was dropped).
    fn drop_lock(&self, lock: CacheLock);

    /// Where a job detached from its caller runs in this world.
    type Detached: Detached;

    /// Room to run a job detached from its caller, if there is any: a place
    /// in the bounded background pool (synchronous), the caller's runtime
    /// (async).
    fn detached(&self) -> Option<Self::Detached>;
}

impl Driver for Blocking {
    async fn wait(&self, waiter: Waiter, deadline: Instant) -> Outcome {
        waiter.wait_deadline(deadline)
    }

    fn store_chunked<T: Serialize + DeserializeOwned>(
        &self,
        call: &Call<'_>,
        value: &T,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        std::future::ready(call.store_chunked_now(value))
    }

    fn store_chunked_plain(
        &self,
        call: &Call<'_>,
        plain: Arc<[u8]>,
        fp: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut writer = call.writer(false);
        writer.write_plain(&plain);
        std::future::ready(writer.finish(fp))
    }

    fn drop_lock(&self, lock: CacheLock) {
        lock.release_quietly(false);
    }

    type Detached = pool::Slot;

    fn detached(&self) -> Option<pool::Slot> {
        pool::slot()
    }
}

#[cfg(feature = "async")]
pub(crate) use tokio_driver::load_chunked_off;

#[cfg(feature = "async")]
mod tokio_driver {
    use super::*;

    /// Reads back the plain (decrypted, decompressed, checked) bytes of the
    /// chunked value whose manifest is `main`: a blocking job.
    fn read_plain(
        pipeline: super::super::stream::Pipeline,
        main: &[u8],
        expected: u64,
    ) -> Result<Vec<u8>, LoadError> {
        let manifest = Manifest::decode(
            pipeline.key.full(),
            main,
            expected,
            pipeline.encryption.as_ref(),
        )?;
        let mut reader = super::super::stream::StreamReader::new(pipeline, manifest, None);
        let mut plain = Vec::new();
        match std::io::Read::read_to_end(&mut reader, &mut plain) {
            Ok(_) => Ok(plain),
            Err(err) => Err(reader.take_error().unwrap_or_else(|| {
                crate::format::envelope::Invalid::Stream(err.to_string()).into()
            })),
        }
    }

    /// Reads back and decodes a chunked value of an owned `T` in one job on
    /// the blocking pool: the postcard pass too leaves the executor.
    pub(crate) fn load_chunked_off<T: DeserializeOwned + Send + 'static>(
        call: &Call<'_>,
        main: Vec<u8>,
    ) -> impl Future<Output = Result<T, LoadError>> + Send + use<T> {
        let pipeline = call.pipeline();
        let expected = fingerprint::<T>(false);
        async move {
            off_executor(move || {
                let plain = read_plain(pipeline, &main, expected)?;
                Ok(envelope::decode_exact::<T>(&plain)?)
            })
            .await?
        }
    }
    use super::super::stream::LoadError;
    use crate::backend::world::{Tokio, off_executor};
    use crate::format::envelope::{self, fingerprint};
    use crate::format::manifest::Manifest;

    /// Runs the postcard (de)serialization of a large value, which borrows
    /// the caller's `T` and so cannot move to the blocking pool: on a
    /// multi-thread runtime the worker first hands its other tasks to
    /// another thread (`block_in_place`), so they keep running; on a
    /// current-thread runtime it runs inline, at memory speed.
    fn in_place<R>(work: impl FnOnce() -> R) -> R {
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(work)
            }
            _ => work(),
        }
    }

    impl Driver for Tokio {
        async fn wait(&self, waiter: Waiter, deadline: Instant) -> Outcome {
            // Dropping the wait when the timer fires leaves the flight.
            tokio::time::timeout_at(deadline.into(), waiter.wait_async())
                .await
                .unwrap_or(Outcome::TimedOut)
        }

        fn store_chunked_plain(
            &self,
            call: &Call<'_>,
            plain: Arc<[u8]>,
            fp: u64,
        ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
            let writer = call.writer(false);
            async move {
                off_executor(move || {
                    let mut writer = writer;
                    writer.write_plain(&plain);
                    writer.finish(fp)
                })
                .await?
            }
        }

        fn store_chunked<T: Serialize + DeserializeOwned>(
            &self,
            call: &Call<'_>,
            value: &T,
        ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
            let writer = call.writer(false);
            let serialized =
                in_place(|| postcard::to_allocvec(value)).map_err(envelope::EncodeError::from);
            let expected = fingerprint::<T>(false);
            async move {
                let plain = serialized?;
                off_executor(move || {
                    let mut writer = writer;
                    writer.write_plain(&plain);
                    writer.finish(expected)
                })
                .await?
            }
        }

        fn drop_lock(&self, lock: CacheLock) {
            lock.release_quietly(true);
        }

        type Detached = tokio::runtime::Handle;

        fn detached(&self) -> Option<tokio::runtime::Handle> {
            tokio::runtime::Handle::try_current().ok()
        }
    }
}
