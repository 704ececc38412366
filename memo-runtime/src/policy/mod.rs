//! The policy: the one memoize algorithm, and what a failure means.
//!
//! On every call memo takes the engine in force (`engine`: the
//! configuration, the flights, the local copies and the invalidation
//! barrier together), resolves the key (`Config::resolve`), takes its
//! ticket at the barrier (`barrier`), consults the call's local copy
//! (`hot`, `local`), and asks the backend: one hit path. A value that
//! checks out (and is fresh) is a hit, with no further work. Otherwise,
//! unless the call opts out, it joins the key's flight (`flight`):
//! concurrent calls for one key in one process
//! share one computation. The leader goes on from what the first lookup
//! found, unless some flight ended in between (it may have stored the
//! value), in which case it looks again. Anything else (absent, expired, corrupt, of another type, a
//! backend error or timeout) is a miss: with `Options::lock` the leader
//! takes the cross-process lock and looks again, then the compute function
//! runs, its value is returned, and memo tries to store it. The leader
//! hands its value, hit or computed, to the waiters as postcard bytes. A
//! leader that panics, returns `Err` or is dropped hands the flight over to
//! a waiter; a waiter waits at most [`COALESCE_TIMEOUT`] (or the call's
//! lock timeout), then runs the policy alone. Backend failures are logged
//! once per episode and counted in `stats()`; they never reach the caller,
//! and the only panics are the caller's own.
//!
//! # One policy for both worlds
//!
//! The algorithm is written once, as async code generic over a
//! `Driver` (in `drive`): the synchronous API runs it with the blocking
//! driver, whose futures complete on their first poll (blocking backend
//! calls, thread sleeps and condition-variable waits inside the poll, on the
//! caller's own thread), under a `block_on` that polls once; the async API
//! runs it with the tokio driver. A sans-IO state machine would have served
//! too, but async code keeps the algorithm readable top to bottom, as the
//! steps read in this paragraph, and the compiler writes the state machine.
//!
//! - this file: [`Call`], one call's resolved settings and every step, and
//!   [`memoize`];
//! - `engine`: the policy's state per configuration, and the one
//!   per-thread snapshot of it;
//! - `barrier`: what makes `invalidate` and `force_overwrite` a barrier;
//! - `flight`: the single-flight registry; `local`: the local copies;
//! - `drive`: the two drivers, and what differs between the worlds;
//! - `detach` and `pool`: a refresh won by a detached call (`'static`
//!   compute function), run detached from its caller on a bounded
//!   background pool or a spawned task: a parameter of [`memoize`]
//!   (`Borrowed` or `Owned`), not a second copy of it, since the general
//!   API's compute function may borrow from its caller and so keeps the
//!   foreground refresh;
//! - `codec`: where each world (de)serializes a value: inline in the
//!   synchronous one, off the executor once large in the async one;
//! - `stream`: the chunked pipeline, for large values and iterators;
//! - `items`: reading back the framed items of an iterator;
//! - `many`: the batch policy, this one's steps for many keys with their
//!   backend calls merged;
//! - `options`: [`Options`], the settings of one call, re-exported by the
//!   API layer.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, Write};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::BackendError;
use crate::backend::world::{Blocking, World};
use crate::common::counters::Counters;
use crate::config::Resolved;
use crate::format::crypto::EncryptionKey;
use crate::format::envelope::{self, Kind, Stamp, fingerprint};
use crate::format::key::{CacheKey, EntryKey};
use crate::format::manifest::Manifest;
use crate::format::serial;
use crate::lock::{CacheLock, LockError, LockOptions};

pub(crate) mod barrier;
pub(crate) mod codec;
pub(crate) mod detach;
pub(crate) mod drive;
pub(crate) mod engine;
pub(crate) mod flight;
pub(crate) mod hot;
pub(crate) mod items;
pub(crate) mod local;
pub(crate) mod many;
pub(crate) mod observe;
pub(crate) mod options;
pub(crate) mod pool;
pub(crate) mod stream;
pub(crate) mod version;

use barrier::Ticket;
use codec::{Encode, Serde};
use detach::{Compute, Ownership, RefreshJob};
use drive::Driver;
use engine::Handle;
use flight::{Joined, LeaderGuard, Outcome};
use hot::{Keep, RefreshWatch, Verdict};
use observe::{CallOutcome, Observed};
use options::Options;

use stream::{LoadError, Pipeline, StoreError, StreamReader, StreamWriter};

/// How long a coalesced caller waits for its flight's leader when the call
/// has no lock (with one, it waits the lock's timeout): long enough for any
/// computation worth caching, short enough that a leader stuck for good (or
/// a cycle of memoized calls waiting on each other) costs a bounded delay.
/// A waiter that gives up runs the whole policy alone, storing what it
/// computes.
pub const COALESCE_TIMEOUT: Duration = Duration::from_secs(30);

/// One call's resolved settings.
///
/// It borrows the caller's [`Options`] for `'o`: a call runs within its
/// caller's frame. Only a call that outlives that frame (an iterator's, a
/// stream's, a refresh run detached) owns a copy.
pub(crate) struct Call<'o> {
    pub(crate) engine: Arc<Handle>,
    pub(crate) key: EntryKey,
    /// Where the call stood against the invalidation barrier when it
    /// started.
    pub(crate) ticket: Ticket,
    pub(crate) encryption: Option<EncryptionKey>,
    ttl: Duration,
    options: Cow<'o, Options>,
    /// The keys of the version tokens the entry is stored behind, made on
    /// first use (a local hit needs none).
    guard_keys: std::sync::OnceLock<Vec<String>>,
    /// The tokens the last lookup read (see `version`).
    seen: std::sync::Mutex<Option<version::Seen>>,
}

impl<'o> Call<'o> {
    /// The call of `key` under `options`, borrowed.
    pub(crate) fn new(engine: Arc<Handle>, key: CacheKey, options: &'o Options) -> Call<'o> {
        Call::with_options(engine, key, Cow::Borrowed(options))
    }

    /// The call of `key` under `options`, owned: for a call that outlives
    /// its caller's frame.
    pub(crate) fn owning(engine: Arc<Handle>, key: CacheKey, options: Options) -> Call<'static> {
        Call::with_options(engine, key, Cow::Owned(options))
    }

    /// This call, owning a copy of its options if it borrowed them: for
    /// a refresh that may run detached.
    pub(crate) fn into_owned(self) -> Call<'static> {
        Call {
            engine: self.engine,
            key: self.key,
            ticket: self.ticket,
            encryption: self.encryption,
            ttl: self.ttl,
            options: Cow::Owned(self.options.into_owned()),
            guard_keys: self.guard_keys,
            seen: self.seen,
        }
    }

    fn with_options(engine: Arc<Handle>, key: CacheKey, options: Cow<'o, Options>) -> Call<'o> {
        let config = &engine.config;
        let Resolved { key, encryption } =
            config.resolve(key, options.encrypt, options.encryption_key.as_ref());
        let ticket = engine.barrier.ticket(key.stored());
        // One draw per call, so that what it stores (a value, or a
        // manifest and its chunks) and the value's stamp share one expiry.
        let ttl = options.expiration.unwrap_or(config.default_expiration);
        Call {
            ttl: options.jitter.shorten(ttl, hot::unit_draw),
            key,
            ticket,
            encryption,
            options,
            engine,
            guard_keys: std::sync::OnceLock::new(),
            seen: std::sync::Mutex::new(None),
        }
    }

    /// The call's configuration.
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.engine.config
    }

    fn counters(&self) -> &Counters {
        &self.config().counters
    }

    /// The blocking driver for this call's configuration.
    pub(crate) fn blocking(&self) -> &Blocking {
        &self.engine.blocking
    }

    /// The tokio driver for this call's configuration.
    #[cfg(feature = "async")]
    pub(crate) fn tokio(&self) -> &crate::backend::world::Tokio {
        &self.engine.tokio
    }

    /// The main entry's bytes, or `None` (absent, or the backend failed).
    pub(crate) fn get_main(&self) -> Option<Vec<u8>> {
        crate::backend::world::block_on(self.fetch_main(self.blocking()))
    }

    /// Counts and logs an entry read back that did not check out.
    fn found_invalid(&self, why: &dyn std::fmt::Display) {
        self.counters().invalid_entry(self.key.stored(), why);
    }

    pub(crate) fn load_failed(&self, err: LoadError) {
        match err {
            LoadError::Backend(err) => self.counters().backend_failed("get_many", &err),
            LoadError::Invalid(why) => self.found_invalid(&why),
        }
    }

    /// A cached value that checks out, in either stored form, with its
    /// stamp (none for a chunked value, which expires with its entry).
    async fn load<D, T>(&self, driver: &D) -> Option<(T, Stamp)>
    where
        D: Serde<T>,
        T: Serialize + DeserializeOwned,
    {
        let bytes = self.fetch_main(driver).await?;
        self.decode_main(driver, bytes).await
    }

    /// The value in a main entry found behind its guard, in either stored
    /// form, with its stamp; `None`, counted and logged, if it does not
    /// check out.
    async fn decode_main<D, T>(&self, driver: &D, bytes: Vec<u8>) -> Option<(T, Stamp)>
    where
        D: Serde<T>,
        T: Serialize + DeserializeOwned,
    {
        let loaded = match envelope::peek_kind(&bytes) {
            Ok(Kind::Value) => driver
                .decode_value(self, bytes)
                .await
                .map_err(LoadError::Invalid),
            Ok(Kind::Manifest) => driver
                .load_value(self, bytes)
                .await
                .map(|value| (value, Stamp::NONE)),
            Err(why) => Err(LoadError::Invalid(why)),
        };
        loaded.map_err(|err| self.load_failed(err)).ok()
    }

    /// Decodes a chunked value on this thread, streaming it from the
    /// backend with memory bounded by a few chunks.
    pub(crate) fn load_chunked_now<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, LoadError> {
        let encryption = self.encryption.as_ref();
        let manifest =
            Manifest::decode(self.key.full(), bytes, fingerprint::<T>(false), encryption)?;
        let mut reader = self.reader(manifest, None);
        // The value counts only if the stream also ends cleanly right after
        // it: every chunk read, lengths and padding right, nothing trailing.
        let value = serial::deserialize_from_reader::<T, _>(&mut reader);
        match reader.take_error() {
            Some(err) => Err(err),
            None => value.map_err(LoadError::Invalid),
        }
    }

    pub(crate) fn reader(
        &self,
        manifest: Manifest,
        preloaded: Option<VecDeque<Vec<u8>>>,
    ) -> StreamReader {
        StreamReader::new(self.pipeline(), manifest, preloaded)
    }

    /// The chunked pipeline of this call, to read with: no guard, which
    /// only a writer needs (see `writer`).
    pub(crate) fn pipeline(&self) -> Pipeline {
        Pipeline {
            backend: Arc::clone(&self.config().backend),
            counters: Arc::clone(&self.config().counters),
            key: self.key.clone(),
            encryption: self.encryption.clone(),
            guard: None,
        }
    }

    pub(crate) fn writer(&self, iterator: bool) -> StreamWriter {
        let pipeline = Pipeline {
            guard: self.guard_prefix(),
            ..self.pipeline()
        };
        StreamWriter::new(
            pipeline,
            self.ttl,
            self.config().chunk_size,
            self.options
                .compress
                .then_some(self.config().compression_level),
            iterator,
        )
    }

    /// Whether the call stores what it computes: not with a zero TTL.
    pub(crate) fn will_store(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The envelope that stores `value` in one entry, sealed from its
    /// postcard bytes `plain` when they were made; why not, for the caller
    /// to report, when it cannot be encoded or does not fit one entry.
    pub(crate) fn seal_value<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
        stamp: Stamp,
        plain: Option<&Arc<[u8]>>,
    ) -> Result<Vec<u8>, StoreError> {
        let chunk_size = self.config().chunk_size;
        let encoded = match plain {
            // Too large for one entry: not sealed only to be dropped.
            Some(plain) if plain.len() > chunk_size => {
                Err(envelope::EncodeError::TooLarge(plain.len()))
            }
            Some(plain) => envelope::seal_stamped(
                self.key.full(),
                Kind::Value,
                0,
                fingerprint::<T>(false),
                plain,
                self.encryption.as_ref(),
                stamp,
            ),
            None => {
                envelope::encode_stamped(self.key.full(), value, self.encryption.as_ref(), stamp)
            }
        };
        match encoded {
            Err(err) => Err(StoreError::Encode(err)),
            Ok(encoded) if encoded.len() > chunk_size => Err(StoreError::TooLarge(format!(
                "{} bytes exceed the chunk size of {chunk_size}; memoize it with large_data",
                encoded.len(),
            ))),
            Ok(encoded) => Ok(encoded),
        }
    }

    /// Stores `value`; failures are logged and counted, never returned.
    /// The value is read before the future is returned, so the future does
    /// not hold on to it (nor need it to be `Sync` to be `Send`).
    /// `plain`, when given, holds the value's postcard bytes, made once.
    fn store<T: Serialize + DeserializeOwned>(
        &self,
        driver: &impl Driver,
        value: &T,
        stamp: Stamp,
        plain: Option<&Arc<[u8]>>,
    ) -> impl Future<Output = ()> + Send {
        enum Store<C> {
            Nothing,
            Chunked(C),
            Value(Vec<u8>),
        }
        enum Either<L, R> {
            Left(L),
            Right(R),
        }
        let plan = if !self.will_store() {
            Store::Nothing
        } else if self.options.large_data {
            match plain {
                Some(plain) => Store::Chunked(Either::Left(driver.store_chunked_plain(
                    self,
                    Arc::clone(plain),
                    fingerprint::<T>(false),
                ))),
                None => Store::Chunked(Either::Right(driver.store_chunked(self, value))),
            }
        } else {
            match self.seal_value(value, stamp, plain) {
                Err(err) => {
                    self.store_finished(Err(err));
                    Store::Nothing
                }
                Ok(encoded) => Store::Value(encoded),
            }
        };
        async move {
            let outcome = match plan {
                Store::Nothing => return,
                Store::Chunked(Either::Left(stored)) => stored.await,
                Store::Chunked(Either::Right(stored)) => stored.await,
                Store::Value(encoded) => match self.guard_prefix() {
                    None => Err(StoreError::NoVersion),
                    Some(mut stored) => {
                        stored.extend_from_slice(&encoded);
                        driver
                            .backend()
                            .set(self.key.stored(), &stored, self.backend_ttl())
                            .await
                            .map(|()| self.counters().wrote(stored.len()))
                            .map_err(StoreError::from)
                    }
                },
            };
            self.store_finished(outcome);
        }
    }

    /// Stores `value` chunked on this thread, streaming its serialization
    /// into the pipeline with memory bounded by a few chunks.
    pub(crate) fn store_chunked_now<T: Serialize + DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<(), StoreError> {
        let mut writer = self.writer(false);
        let serialized = {
            // Dropping the buffer flushes it into the writer, which
            // cannot fail (a backend failure only stops it storing).
            let mut buffered = io::BufWriter::with_capacity(64 * 1024, WriteInto(&mut writer));
            postcard::to_io(value, &mut buffered)
                .map(drop)
                .map_err(envelope::EncodeError::from)
        };
        match serialized {
            Ok(()) => writer.finish(fingerprint::<T>(false)),
            Err(err) => Err(StoreError::Encode(err)),
        }
    }

    /// Counts and logs how storing a value ended.
    pub(crate) fn store_finished(&self, outcome: Result<(), StoreError>) {
        match outcome {
            Ok(()) => {
                self.counters().backend_ok();
                self.counters().stored();
            }
            Err(StoreError::Backend(err)) => self.counters().backend_failed("set", &err),
            // What kept the version from being had (a backend failure, a
            // token that did not read back) was counted where it happened.
            Err(StoreError::NoVersion) => crate::common::diag::debug!(
                "memo: not caching {}: its version could not be read or written",
                self.key.stored()
            ),
            Err(err) => {
                self.counters().unstorable();
                crate::common::diag::warning!("memo: not caching {}: {err}", self.key.stored());
            }
        }
    }

    fn lock(&self, options: LockOptions) -> CacheLock {
        CacheLock::for_stored_key(self.config(), self.key.stored(), options)
    }

    /// Takes the call's lock if it has one. `Some(lock)` when held; `None`
    /// when the call has no lock, or the lock could not be had (held
    /// elsewhere without blocking, timed out, backend down): the caller
    /// then computes without it.
    async fn take_lock(&self, io: &impl World) -> Option<CacheLock> {
        // A call that stores nothing has nothing to make others wait for.
        let options = self.options.lock.filter(|_| self.will_store())?;
        let mut lock = self.lock(options);
        match lock.acquire_via(io).await {
            Ok(true) => Some(lock),
            Ok(false) => {
                crate::common::diag::debug!(
                    "memo: {} is locked elsewhere; computing without it",
                    lock.full_cache_key()
                );
                None
            }
            Err(LockError::Timeout { key, waited }) => {
                crate::common::diag::warning!(
                    "memo: waited {waited:?} for {key}; computing without it"
                );
                None
            }
            Err(LockError::Backend(err)) => {
                self.counters().backend_failed("lock", &err);
                None
            }
            Err(err) => {
                crate::common::diag::debug!("memo: {err}; computing without the lock");
                None
            }
        }
    }

    /// Looks the entry up with `lookup` (unless the call overwrites); on a
    /// miss, takes the call's lock, if it has one, and looks again, since
    /// another caller may have stored the entry while this one waited.
    /// Returns what was found, and the lock to hold while computing.
    pub(crate) async fn find_or_lock<D: Driver, L: Lookup<D>>(
        &self,
        driver: &D,
        lookup: &L,
    ) -> (Option<L::Found>, Option<CacheLock>) {
        self.find_or_lock_after(driver, lookup, None).await
    }

    /// [`find_or_lock`](Self::find_or_lock), given what a lookup made
    /// just before found (`Some`), which then stands for the first lookup.
    async fn find_or_lock_after<D: Driver, L: Lookup<D>>(
        &self,
        driver: &D,
        lookup: &L,
        looked: Option<Option<L::Found>>,
    ) -> (Option<L::Found>, Option<CacheLock>) {
        // A value kept only to fall back on is a miss here: the lock is
        // taken and the entry looked up again, and it stands only if nothing
        // better is found.
        let mut fallback = None;
        if !self.options.force_overwrite {
            let found = match looked {
                Some(found) => found,
                None => lookup.lookup(self, driver).await,
            };
            match found {
                Some(found) if L::settles(&found) => return (Some(found), None),
                found => fallback = found,
            }
        }
        let lock = self.take_lock(driver).await;
        let found = match &lock {
            Some(_) if !self.options.force_overwrite => lookup.lookup(self, driver).await,
            _ => None,
        };
        (found.or(fallback), lock)
    }

    /// Whether this call shares its computation with concurrent calls for
    /// the same key. A refresh does not: it must compute, and handing its
    /// value to readers that did not ask for a refresh, or theirs to it,
    /// would defeat it.
    fn coalesces(&self) -> bool {
        self.options.coalesce && !self.options.force_overwrite
    }

    /// The flight this call joins for a value of fingerprint `fp`. The
    /// type's fingerprint is part of it, as it is part of the envelope:
    /// postcard bytes of one type can decode as another. So is the
    /// ticket's epoch: a caller never joins a computation that began
    /// before the key's latest invalidation.
    pub(crate) fn flight_key(&self, fp: u64) -> String {
        format!("{fp:016x}:{:x}:{}", self.ticket.epoch(), self.key.stored())
    }

    /// How long a waiter waits for its flight's leader.
    fn coalesce_deadline(&self) -> Instant {
        let wait = self
            .options
            .lock
            .map_or(COALESCE_TIMEOUT, |lock| lock.timeout);
        let now = Instant::now();
        now.checked_add(wait)
            .or_else(|| now.checked_add(COALESCE_TIMEOUT))
            .unwrap_or(now)
    }

    pub(crate) fn hit(&self) {
        self.counters().hit();
    }

    pub(crate) fn miss(&self) {
        self.counters().miss();
    }

    /// Drops the entry and, if it is chunked, its chunks, as a barrier: a
    /// new version token first, so that no entry stored behind the old one
    /// is served in any process (see `version`), and in this process no
    /// local copy or flight that began before (see `barrier`).
    pub(crate) async fn invalidate(&self, io: &impl World) -> Result<(), BackendError> {
        observe::invalidated(
            observe::Dropped::Key,
            self.key.stored(),
            self.encryption.is_some(),
        );
        let outcome = match self.new_version(io).await {
            Ok(()) => self.delete(io).await,
            Err(err) => Err(err),
        };
        self.lower_barrier();
        outcome?;
        self.tell_others();
        Ok(())
    }

    /// A call that overwrites writes a new version token before it
    /// computes: its store then wins over every store begun before it, in
    /// any process, and none of those is served once it returns. A token
    /// that cannot be written leaves the call to compute all the same (it
    /// then stores only if it can read the entry's current token); it is
    /// logged.
    async fn overwrite(&self, io: &impl World) {
        if let Err(err) = self.new_version(io).await {
            self.counters().backend_failed("set", &err);
        }
        // A copy kept while the version was written goes too.
        if self.keeps_locally() {
            self.drop_local();
        }
    }

    /// What was read, kept or joined in this process before now is not
    /// served to a call that starts after this.
    pub(crate) fn lower_barrier(&self) {
        self.engine.barrier.bump(self.ticket.stripe());
        self.drop_local();
    }

    /// Deletes the entry and, if it is chunked, its chunks.
    async fn delete(&self, io: &impl World) -> Result<(), BackendError> {
        let backend = io.backend();
        if let Some(bytes) = backend.get(self.key.stored()).await? {
            // Any manifest under this key names chunks to remove, whatever type
            // it was written for and whatever tokens it was stored behind.
            let entry = crate::format::guard::strip(&bytes).unwrap_or(&bytes);
            let manifest = Manifest::decode_any(self.key.full(), entry, self.encryption.as_ref());
            backend.delete(self.key.stored()).await?;
            if let Some(manifest) = manifest {
                for chunk in manifest.stored_keys(&self.key) {
                    backend.delete(&chunk).await?;
                }
            }
        }
        Ok(())
    }
}

/// A way of finding an entry, for [`Call::find_or_lock`]: a value, or an
/// iterator's items.
pub(crate) trait Lookup<D: Driver>: Sync {
    /// What a hit yields.
    type Found;

    /// Looks the entry up.
    fn lookup(
        &self,
        call: &Call<'_>,
        driver: &D,
    ) -> impl Future<Output = Option<Self::Found>> + Send;

    /// Whether `found` settles the lookup, or is only a value to fall back
    /// on should the computation fail.
    fn settles(found: &Self::Found) -> bool {
        let _ = found;
        true
    }
}

/// Looks up a value of type `T` that this call may serve (fresh, due for
/// an early refresh, or stale within the call's window), with its stamp
/// and verdict.
struct ValueLookup<T>(PhantomData<fn() -> T>);

impl<D, T> Lookup<D> for ValueLookup<T>
where
    D: Serde<T>,
    T: Serialize + DeserializeOwned,
{
    type Found = (T, Stamp, Verdict);

    async fn lookup(&self, call: &Call<'_>, driver: &D) -> Option<Self::Found> {
        let (value, stamp) = call.load(driver).await?;
        match call.judge(stamp) {
            Verdict::Expired => None,
            verdict => Some((value, stamp, verdict)),
        }
    }

    fn settles(found: &Self::Found) -> bool {
        found.2 != Verdict::FailSafe
    }
}

/// `io::Write` into a [`StreamWriter`], which never fails (a backend
/// failure only stops it storing).
struct WriteInto<'a>(&'a mut StreamWriter);

impl Write for WriteInto<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_plain(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Releases the lock a call holds while it computes: at the end of the
/// call, or, when the call panics or its future is dropped, as it unwinds.
pub(crate) struct HeldLock<'d, D: Driver> {
    pub(crate) lock: Option<CacheLock>,
    pub(crate) driver: &'d D,
}

impl<D: Driver> HeldLock<'_, D> {
    async fn release(mut self) {
        if let Some(mut lock) = self.lock.take() {
            let outcome = lock.release_via(self.driver).await;
            lock.released(outcome);
        }
    }
}

impl<D: Driver> Drop for HeldLock<'_, D> {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.driver.drop_lock(lock);
        }
    }
}

/// The one memoize algorithm behind `cache_memoize`, `try_cache_memoize`,
/// their async twins and their `_detached` twins: `R` is what the compute
/// function returns, `cacheable` picks the part of it worth storing,
/// `from_cache` makes an `R` of a cached value, `keep` says what a local
/// copy holds, and `ownership` whether a refresh this caller wins runs in
/// the foreground or detached (`detach`).
///
/// The call is observed as a whole (`observe`): its span covers every step,
/// and its outcome is reported once, as it ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn memoize<D, T, R, P, C, K, O>(
    driver: &D,
    call: Call<'_>,
    compute: P,
    cacheable: C,
    from_cache: impl Fn(T) -> R,
    keep: K,
    ownership: O,
) -> R
where
    D: Serde<T> + Encode<T, R, C>,
    T: Serialize + DeserializeOwned,
    P: Compute<Output = R>,
    C: Fn(&R) -> Option<&T>,
    K: Keep<T>,
    O: Ownership<RefreshJob<D, T, P, C, K>>,
{
    let observed = Observed::start(&call);
    let (result, outcome) = observed
        .cover(serve(
            driver, call, compute, cacheable, from_cache, keep, ownership, &observed,
        ))
        .await;
    observed.end(outcome);
    result
}

/// The steps of [`memoize`], returning how the call was served too: the
/// hit here, and the rest in [`settle`].
#[allow(clippy::too_many_arguments)]
async fn serve<D, T, R, P, C, K, O>(
    driver: &D,
    call: Call<'_>,
    compute: P,
    cacheable: C,
    from_cache: impl Fn(T) -> R,
    keep: K,
    ownership: O,
    observed: &Observed,
) -> (R, CallOutcome)
where
    D: Serde<T> + Encode<T, R, C>,
    T: Serialize + DeserializeOwned,
    P: Compute<Output = R>,
    C: Fn(&R) -> Option<&T>,
    K: Keep<T>,
    O: Ownership<RefreshJob<D, T, P, C, K>>,
{
    // The type's fingerprint is part of the flight, as it is part of the
    // envelope: postcard bytes of one type can decode as another, so calls
    // of two types under one key never share a value.
    let fp = fingerprint::<T>(false);
    // The local copy was looked up before this future was built (see
    // `Call::serve_local`).
    if call.options.force_overwrite {
        call.overwrite(driver).await;
    }
    let mut first = None;
    if call.coalesces() {
        // A hit needs no flight: look first, and join only to compute.
        let ended = call.engine.flights.ended();
        let found = ValueLookup::<T>(PhantomData).lookup(&call, driver).await;
        if let Some((value, stamp, Verdict::Fresh)) = found {
            call.hit();
            call.keep_locally(&keep, fp, &value, stamp, None);
            return (from_cache(value), CallOutcome::Hit);
        }
        first = Some(FirstLookup { ended, found });
    }
    // Boxed: every step past a hit (flights, locks, the computation and its
    // store) makes a state of several kilobytes, which a hit would
    // otherwise build and move at each level of the future.
    Box::pin(settle(
        driver, call, compute, cacheable, from_cache, keep, ownership, observed, fp, first,
    ))
    .await
}

/// What a call's first lookup found (`found`: nothing fresh), and the
/// count of ended flights just before it (`ended`).
struct FirstLookup<T> {
    ended: u64,
    found: Option<(T, Stamp, Verdict)>,
}

/// The steps of [`serve`] past a hit: joins the flight (after the `first`
/// lookup, when the call coalesces), and takes the lock, computes and
/// stores, or serves what a flight, an early refresh, a stale window or a
/// fail-safe window gives it.
#[allow(clippy::too_many_arguments)]
async fn settle<D, T, R, P, C, K, O>(
    driver: &D,
    call: Call<'_>,
    compute: P,
    cacheable: C,
    from_cache: impl Fn(T) -> R,
    keep: K,
    ownership: O,
    observed: &Observed,
    fp: u64,
    first: Option<FirstLookup<T>>,
) -> (R, CallOutcome)
where
    D: Serde<T> + Encode<T, R, C>,
    T: Serialize + DeserializeOwned,
    P: Compute<Output = R>,
    C: Fn(&R) -> Option<&T>,
    K: Keep<T>,
    O: Ownership<RefreshJob<D, T, P, C, K>>,
{
    // A forced overwrite computes whatever it finds.
    let computed = if call.options.force_overwrite {
        CallOutcome::Refresh
    } else {
        CallOutcome::Miss
    };
    let lookup = ValueLookup::<T>(PhantomData);
    let mut flight = None;
    // What the first lookup found, when it stands for the leader's own.
    let mut looked = None;
    if let Some(FirstLookup { ended, found }) = first {
        // The ticket's epoch too: a caller never joins a computation that
        // began before the key's latest invalidation.
        let joined = call.engine.flights.join(&call.flight_key(fp));
        let outcome = match joined {
            Joined::Leader(guard) => {
                // Unless a flight ended (and stored its value) since, what
                // was found stands: no second lookup, no second failure.
                if call.engine.flights.ended() == ended {
                    looked = Some(found);
                }
                Outcome::Lead(guard)
            }
            Joined::Waiter(waiter) => driver.wait(waiter, call.coalesce_deadline()).await,
        };
        match outcome {
            Outcome::Lead(guard) => flight = Some(guard),
            Outcome::Value(bytes) => match driver.decode_shared(bytes).await {
                Ok(value) => {
                    call.hit();
                    return (from_cache(value), CallOutcome::Coalesced);
                }
                // A value this type cannot read back: compute alone.
                Err(why) => crate::common::diag::debug!(
                    "memo: the value shared for {} does not decode here ({why}); computing",
                    call.key.stored()
                ),
            },
            Outcome::TimedOut => crate::common::diag::warning!(
                "memo: gave up waiting for the computation of {} in this process; computing",
                call.key.stored()
            ),
        }
    }
    let (found, lock) = call.find_or_lock_after(driver, &lookup, looked).await;
    let lock = HeldLock { lock, driver };
    let (value, stamp, verdict) = match found {
        Some((value, stamp, Verdict::Fresh)) => {
            call.hit();
            lock.release().await;
            call.keep_locally(&keep, fp, &value, stamp, None);
            let value = driver.publish(flight, value).get().await;
            return (from_cache(value), CallOutcome::Hit);
        }
        Some((last_good, _, Verdict::FailSafe)) => {
            call.miss();
            let result = compute_then_store(
                driver, &call, compute, &cacheable, &keep, fp, flight, lock, None,
            )
            .await;
            if cacheable(&result).is_some() {
                return (result, computed);
            }
            call.counters().fail_safe_served();
            crate::common::diag::warning!(
                "memo: recomputing {} failed; serving its last good value",
                call.key.stored()
            );
            return (from_cache(last_good), CallOutcome::FailSafe);
        }
        Some(found) => found,
        None => {
            call.miss();
            let result = compute_then_store(
                driver, &call, compute, &cacheable, &keep, fp, flight, lock, None,
            )
            .await;
            return (result, computed);
        }
    };
    // Early or stale: every caller waiting here gets the value at once; at
    // most one refreshes.
    lock.release().await;
    let value = driver.publish(flight, value).get().await;
    let Some(refresh) = call.lead_refresh(driver, fp, verdict).await else {
        if verdict == Verdict::Stale {
            call.counters().stale_served();
            return (from_cache(value), CallOutcome::Stale);
        }
        call.hit();
        call.keep_locally(&keep, fp, &value, stamp, None);
        return (from_cache(value), CallOutcome::Hit);
    };
    if verdict == Verdict::Early {
        call.counters().early_refresh();
    }
    let counters = Arc::clone(&call.config().counters);
    let link = observed.link(&call);
    let job = RefreshJob {
        driver: driver.clone(),
        // It may run detached, past the caller's frame: a won refresh is
        // the one step that copies the options.
        call: call.into_owned(),
        compute,
        cacheable,
        keep,
        refresh,
        fp,
        link,
        value: PhantomData,
    };
    let job = match ownership.detach(job) {
        Ok(()) => {
            // The caller is served the value it found, as the losers are.
            let outcome = match verdict {
                Verdict::Stale => {
                    counters.stale_served();
                    CallOutcome::Stale
                }
                _ => {
                    counters.hit();
                    CallOutcome::Hit
                }
            };
            return (from_cache(value), outcome);
        }
        Err(job) => job,
    };
    if verdict == Verdict::Stale {
        job.call.miss();
    }
    // The refresh flight is held until the refresh returns, so that no
    // other caller here refreshes meanwhile.
    let lock = HeldLock {
        lock: job.refresh.lock,
        driver,
    };
    let result = compute_then_store(
        driver,
        &job.call,
        job.compute,
        &job.cacheable,
        &job.keep,
        fp,
        None,
        lock,
        Some(job.refresh.flight),
    )
    .await;
    (result, CallOutcome::Refresh)
}

/// Runs the computation and stores what it returns, for a caller that
/// found nothing (holding the coalescing `flight`, if any) or one that won
/// a refresh (holding the `refreshing` flight), in the foreground or
/// detached: stamps it, keeps it locally, stores it, tells other processes,
/// releases the lock, ends the refresh flight and hands the value to the
/// waiters.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn compute_then_store<D, T, R, P, C, K>(
    driver: &D,
    call: &Call<'_>,
    compute: P,
    cacheable: &C,
    keep: &K,
    fp: u64,
    flight: Option<LeaderGuard>,
    lock: HeldLock<'_, D>,
    refreshing: Option<LeaderGuard>,
) -> R
where
    D: Driver + Encode<T, R, C>,
    T: Serialize + DeserializeOwned,
    P: Compute<Output = R>,
    C: Fn(&R) -> Option<&T>,
    K: Keep<T>,
{
    // The tokens the value will be stored behind are had before it is
    // computed, so that an invalidation after this point turns it away.
    if call.will_store() {
        call.ensure_tokens(driver).await;
    }
    let mut watch = RefreshWatch {
        call,
        armed: refreshing.is_some(),
    };
    let started = Instant::now();
    let result = compute.start().await;
    let took = started.elapsed();
    observe::computed(call, took);
    watch.armed = false;
    // Serialized once, off the executor for a large owned value, for the
    // waiters, the local copy and the store alike.
    let (result, plain) = driver.encode(result, cacheable).get().await;
    let Some(value) = cacheable(&result) else {
        // An `Err`: the flight is handed over as its guard drops here.
        drop(flight);
        if call.options.force_overwrite {
            call.lower_barrier();
        }
        lock.release().await;
        if let Some(refreshing) = refreshing {
            // The old value stays for the next caller to try again: counted
            // once the lock and the refresh flight are let go, so that a
            // caller who sees the count can win the next refresh.
            drop(refreshing);
            call.counters().refresh_failed();
        }
        return result;
    };
    let stamp = call.stamp(took);
    // Serialized for the waiters before storing, so that no borrow of the
    // value lives across an `.await`; published after storing, so that a
    // call arriving once the flight has ended finds the value stored.
    let shared = flight.map(|guard| (share(&guard, value, plain.as_ref()), guard));
    call.keep_locally(keep, fp, value, stamp, plain.as_ref());
    let stored = call.store(driver, value, stamp, plain.as_ref());
    stored.await;
    if call.options.force_overwrite {
        call.lower_barrier();
        call.tell_others();
    }
    lock.release().await;
    drop(refreshing);
    if let Some((Some(bytes), guard)) = shared {
        guard.publish(bytes);
    }
    // An encrypted value's plaintext, made up front, is wiped as the
    // envelope's own is, unless a waiter or the local copy still holds it.
    if let Some(mut plain) = plain.filter(|_| call.encryption.is_some()) {
        if let Some(bytes) = Arc::get_mut(&mut plain) {
            zeroize::Zeroize::zeroize(bytes);
        }
    }
    result
}

/// The value for the flight's waiters, if it has any: `plain`, its
/// postcard bytes when they were made already, or serialized now.
fn share<T: Serialize>(
    guard: &LeaderGuard,
    value: &T,
    plain: Option<&Arc<[u8]>>,
) -> Option<Arc<[u8]>> {
    if !guard.has_waiters() {
        // Dropping the guard later promotes a waiter that joined since; it
        // finds the value in the cache.
        return None;
    }
    if let Some(plain) = plain {
        return Some(Arc::clone(plain));
    }
    postcard::to_allocvec(value)
        .map_err(|err| {
            crate::common::diag::debug!("memo: cannot share the value of {}: {err}", guard.key());
        })
        .ok()
        .map(Arc::from)
}

/// Hands `value` to the flight's waiters, if it has any.
fn publish<T: Serialize>(flight: Option<LeaderGuard>, value: &T) {
    if let Some(guard) = flight {
        if let Some(bytes) = share(&guard, value, None) {
            guard.publish(bytes);
        }
    }
}
