//! The functional API: look up, or compute and store.
//!
//! This is the only place with policy. On every call memo reads the current
//! configuration, builds the full key, and asks the backend; a value that
//! checks out is a hit. Anything else (absent, expired, corrupt, of another
//! type, a backend error or timeout) is a miss: the compute function runs,
//! its value is returned, and memo tries to store it. Backend failures are
//! logged once per episode and counted in [`stats`](crate::stats()); they
//! never reach the caller, and the only panics are the caller's own.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::BackendError;
use crate::chunk::{self, LoadError, Manifest, StoreError, StreamReader, StreamWriter};
use crate::codec::{self, Invalid, Kind, fingerprint};
use crate::common::counters::Counters;
use crate::config::{Config, Resolved, config};
use crate::crypto::EncryptionKey;
use crate::key::{CacheKey, EntryKey};
use crate::lock::{CacheLock, CacheLockGuard, LockError, LockOptions};

/// A failure of an explicit cache operation such as [`invalidate`].
/// (Memoized calls never fail because of the cache.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend failed.
    #[error("cache backend failed: {0}")]
    Backend(#[from] BackendError),
}

/// How one memoized call uses the cache.
///
/// ```
/// use std::time::Duration;
/// use memo_runtime::{LockOptions, Options};
///
/// let options = Options::new()
///     .expiration(Duration::from_secs(3600))
///     .large_data(true)
///     .encrypt(true)
///     .lock(LockOptions::new());
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "options do nothing until passed to a memoized call"]
pub struct Options {
    pub(crate) expiration: Option<Duration>,
    pub(crate) force_overwrite: bool,
    pub(crate) large_data: bool,
    pub(crate) compress: bool,
    pub(crate) encrypt: Option<bool>,
    pub(crate) encryption_key: Option<EncryptionKey>,
    pub(crate) lock: Option<LockOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            expiration: None,
            force_overwrite: false,
            large_data: false,
            compress: true,
            encrypt: None,
            encryption_key: None,
            lock: None,
        }
    }
}

impl Options {
    /// The defaults: the configuration's expiration, no overwrite, no
    /// chunking, compression for chunked values, encryption as the
    /// configuration says, no lock.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the value lives in the cache; without this, the
    /// configuration's default.
    ///
    /// Zero stores nothing, as Django's timeout of 0 does: the call still
    /// looks the key up, but on a miss it computes and returns the value
    /// without storing it (values, large values and iterators alike) and
    /// without taking the call's lock. A huge expiration (up to
    /// `Duration::MAX`) is passed on to the backend, which clamps it to
    /// what it can hold.
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.expiration = Some(expiration);
        self
    }

    /// Computes and stores even when a value is cached (a refresh).
    pub fn force_overwrite(mut self, force: bool) -> Self {
        self.force_overwrite = force;
        self
    }

    /// Stores the value compressed and split into chunks, for values that
    /// may exceed the backend's item limit (memcached's 1 MiB). Reading
    /// back handles either form, so turning this on or off for an existing
    /// key is safe.
    pub fn large_data(mut self, large: bool) -> Self {
        self.large_data = large;
        self
    }

    /// Whether chunked values and iterators are zlib-compressed (default
    /// `true`). Small values are never compressed: it would cost more than
    /// it saves.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Encrypts the key and value. When the configuration forces
    /// encryption, every call is encrypted whatever this says.
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = Some(encrypt);
        self
    }

    /// The key to encrypt this call with, instead of the configuration's.
    /// Setting a key does not by itself turn encryption on.
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// On a miss, takes a cache lock so that concurrent callers (threads or
    /// processes) compute the value once: the others wait, then read it.
    /// A caller whose wait times out computes anyway.
    pub fn lock(mut self, lock: LockOptions) -> Self {
        self.lock = Some(lock);
        self
    }
}

/// The full key under which `key` is stored: namespaced, then hashed when
/// the call encrypts, else escaped and shortened to memcached's rules (see
/// [`CacheKey`]).
///
/// ```
/// use memo_runtime::{configure, make_cache_key, Config, EncryptionKey, MemoryBackend, Options};
///
/// configure(Config::new(MemoryBackend::new()).namespace("example.com"));
/// assert_eq!(
///     make_cache_key(["%test%", "%1:2:3%"], &Options::new()),
///     "example.com:%25test%25:%251%3A2%3A3%25",
/// );
/// let key = EncryptionKey::new(b"0123456789abcdef").unwrap();
/// assert_eq!(
///     make_cache_key("abc123", &Options::new().encrypt(true).encryption_key(key)),
///     "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9",
/// );
/// ```
pub fn make_cache_key(key: impl Into<CacheKey>, options: &Options) -> String {
    Call::new(config(), key.into(), options)
        .key
        .stored()
        .to_owned()
}

/// One call's resolved settings.
struct Call {
    config: Arc<Config>,
    key: EntryKey,
    encryption: Option<EncryptionKey>,
    ttl: Duration,
    options: Options,
}

impl Call {
    fn new(config: Arc<Config>, key: CacheKey, options: &Options) -> Call {
        let Resolved { key, encryption } =
            config.resolve(&key, options.encrypt, options.encryption_key.as_ref());
        Call {
            ttl: options.expiration.unwrap_or(config.default_expiration),
            key,
            encryption,
            options: options.clone(),
            config,
        }
    }

    fn counters(&self) -> &Counters {
        &self.config.counters
    }

    /// The main entry's bytes, or `None` (absent, or the backend failed).
    fn get_main(&self) -> Option<Vec<u8>> {
        match self.config.backend.get(self.key.stored()) {
            Ok(found) => {
                self.counters().backend_ok();
                if let Some(bytes) = &found {
                    Counters::add(&self.counters().bytes_read, bytes.len() as u64);
                }
                found
            }
            Err(err) => {
                self.counters().backend_failed("get", &err);
                None
            }
        }
    }

    fn invalid(&self, why: &dyn std::fmt::Display) {
        self.counters().invalid_entry(self.key.stored(), why);
    }

    fn load_failed(&self, err: LoadError) {
        match err {
            LoadError::Backend(err) => self.counters().backend_failed("get_many", &err),
            LoadError::Invalid(why) => self.invalid(&why),
        }
    }

    /// A cached value that checks out, in either stored form.
    fn load<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.get_main()?;
        let encryption = self.encryption.as_ref();
        let loaded = match codec::peek_kind(&bytes) {
            Ok(Kind::Value) => codec::decode_value::<T>(self.key.bound(), &bytes, encryption)
                .map_err(LoadError::Invalid),
            Ok(Kind::Manifest) => self.load_chunked(&bytes),
            Err(why) => Err(LoadError::Invalid(why)),
        };
        loaded.map_err(|err| self.load_failed(err)).ok()
    }

    fn load_chunked<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, LoadError> {
        let encryption = self.encryption.as_ref();
        let manifest =
            Manifest::decode(self.key.bound(), bytes, fingerprint::<T>(false), encryption)?;
        let mut reader = self.reader(manifest, None);
        // The value counts only if the stream also ends cleanly right after
        // it: every chunk read, lengths and padding right, nothing trailing.
        let value = codec::deserialize_from_reader::<T, _>(&mut reader);
        match reader.take_error() {
            Some(err) => Err(err),
            None => value.map_err(LoadError::Invalid),
        }
    }

    fn reader(&self, manifest: Manifest, preloaded: Option<VecDeque<Vec<u8>>>) -> StreamReader {
        StreamReader::new(
            Arc::clone(&self.config.backend),
            Arc::clone(&self.config.counters),
            self.key.clone(),
            manifest,
            self.encryption.as_ref(),
            preloaded,
        )
    }

    fn writer(&self, iterator: bool) -> StreamWriter {
        StreamWriter::new(
            Arc::clone(&self.config.backend),
            Arc::clone(&self.config.counters),
            self.key.clone(),
            self.ttl,
            self.config.chunk_size,
            self.options
                .compress
                .then_some(self.config.compression_level),
            self.encryption.as_ref(),
            iterator,
        )
    }

    /// Whether the call stores what it computes: not with a zero TTL.
    fn stores(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Stores `value`; failures are logged and counted, never returned.
    fn store<T: Serialize + DeserializeOwned>(&self, value: &T) {
        if !self.stores() {
            return;
        }
        if self.options.large_data {
            let mut writer = self.writer(false);
            let serialized = {
                // Dropping the buffer flushes it into the writer, which
                // cannot fail (a backend failure only stops it storing).
                let mut buffered = io::BufWriter::with_capacity(64 * 1024, WriteInto(&mut writer));
                postcard::to_io(value, &mut buffered)
                    .map(drop)
                    .map_err(codec::EncodeError::from)
            };
            let outcome = match serialized {
                Ok(()) => writer.finish(fingerprint::<T>(false), self.encryption.as_ref()),
                Err(err) => Err(StoreError::Encode(err)),
            };
            self.stored(outcome);
            return;
        }
        let encoded = match codec::encode_value(self.key.bound(), value, self.encryption.as_ref()) {
            Ok(encoded) => encoded,
            Err(err) => return self.stored(Err(StoreError::Encode(err))),
        };
        if encoded.len() > self.config.chunk_size {
            return self.stored(Err(StoreError::TooLarge(format!(
                "{} bytes exceed the chunk size of {}; memoize it with large_data",
                encoded.len(),
                self.config.chunk_size
            ))));
        }
        let outcome = self
            .config
            .backend
            .set(self.key.stored(), &encoded, self.ttl)
            .map(|()| Counters::add(&self.counters().bytes_written, encoded.len() as u64))
            .map_err(StoreError::from);
        self.stored(outcome);
    }

    fn stored(&self, outcome: Result<(), StoreError>) {
        match outcome {
            Ok(()) => {
                self.counters().backend_ok();
                Counters::add(&self.counters().stores, 1);
            }
            Err(StoreError::Backend(err)) => self.counters().backend_failed("set", &err),
            Err(err) => {
                Counters::add(&self.counters().errors, 1);
                log::warn!("memo: not caching {}: {err}", self.key.stored());
            }
        }
    }

    fn lock(&self, options: LockOptions) -> CacheLock {
        CacheLock::for_full_key(&self.config, self.key.stored(), options)
    }

    /// Takes the call's lock if it has one. `Some(guard)` when held; `None`
    /// when the call has no lock, or the lock could not be had (held
    /// elsewhere without blocking, timed out, backend down): the caller
    /// then computes without it.
    fn take_lock(&self) -> Option<CacheLockGuard> {
        // A call that stores nothing has nothing to make others wait for.
        let options = self.options.lock.filter(|_| self.stores())?;
        match self.lock(options).acquire_guard() {
            Ok(guard) => Some(guard),
            Err(LockError::Timeout { key, waited }) => {
                log::warn!("memo: waited {waited:?} for {key}; computing without it");
                None
            }
            Err(LockError::Backend(err)) => {
                self.counters().backend_failed("lock", &err);
                None
            }
            Err(err) => {
                log::debug!("memo: {err}; computing without the lock");
                None
            }
        }
    }

    /// Looks the entry up with `lookup` (unless the call overwrites); on a
    /// miss, takes the call's lock, if it has one, and looks again, since
    /// another caller may have stored the entry while this one waited.
    /// Returns what was found, and the lock to hold while computing.
    fn find_or_lock<V>(
        &self,
        lookup: impl Fn(&Call) -> Option<V>,
    ) -> (Option<V>, Option<CacheLockGuard>) {
        let lookup = || {
            (!self.options.force_overwrite)
                .then(|| lookup(self))
                .flatten()
        };
        if let Some(found) = lookup() {
            return (Some(found), None);
        }
        let guard = self.take_lock();
        let found = guard.as_ref().and_then(|_| lookup());
        (found, guard)
    }

    fn hit(&self) {
        Counters::add(&self.counters().hits, 1);
    }

    fn miss(&self) {
        Counters::add(&self.counters().misses, 1);
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

/// The shared path of [`cache_memoize`] and [`try_cache_memoize`]: `R` is
/// what the compute function returns, and `cacheable` picks the part of it
/// worth storing.
fn memoize<T, R>(
    key: CacheKey,
    options: &Options,
    compute: impl FnOnce() -> R,
    cacheable: impl Fn(&R) -> Option<&T>,
    from_cache: impl Fn(T) -> R,
) -> R
where
    T: Serialize + DeserializeOwned,
{
    let call = Call::new(config(), key, options);
    let (found, guard) = call.find_or_lock(Call::load::<T>);
    if let Some(value) = found {
        call.hit();
        return from_cache(value);
    }
    call.miss();
    let result = compute();
    if let Some(value) = cacheable(&result) {
        call.store(value);
    }
    drop(guard);
    result
}

/// Returns the value cached under `key`, or computes it with `compute`,
/// stores it and returns it.
///
/// The value is serialized with serde (postcard) in an envelope that binds
/// it to its key and type; a cached value that does not check out is a
/// miss. The cache never makes this call fail: when the backend is down the
/// value is computed.
///
/// ```
/// use memo_runtime::{cache_memoize, Options};
///
/// fn expensive(n: u64) -> Vec<u64> {
///     (0..n).map(|i| i * i).collect()
/// }
///
/// let squares: Vec<u64> = cache_memoize(["squares", "10"], || expensive(10), &Options::new());
/// assert_eq!(squares[3], 9);
/// ```
pub fn cache_memoize<K, T, F>(key: K, compute: F, options: &Options) -> T
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> T,
{
    memoize(
        key.into(),
        options,
        compute,
        |value: &T| Some(value),
        |value| value,
    )
}

/// Like [`cache_memoize`] for a fallible computation: only `Ok` values are
/// cached; an `Err` is returned as is and nothing is stored. `E` needs no
/// serde.
///
/// ```
/// use memo_runtime::{try_cache_memoize, Options};
///
/// let parsed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize("parse:42", || "42".parse(), &Options::new());
/// assert_eq!(parsed, Ok(42));
/// let failed: Result<u32, std::num::ParseIntError> =
///     try_cache_memoize("parse:x", || "x".parse(), &Options::new());
/// assert!(failed.is_err());
/// ```
pub fn try_cache_memoize<K, T, E, F>(key: K, compute: F, options: &Options) -> Result<T, E>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Result<T, E>,
{
    memoize(
        key.into(),
        options,
        compute,
        |result: &Result<T, E>| result.as_ref().ok(),
        Ok,
    )
}

/// Drops the entry memoized under `key` (and its chunks, if chunked). The
/// next call computes afresh. Removing an entry that is not there is fine.
///
/// ```
/// use memo_runtime::{cache_memoize, invalidate, Options};
///
/// let options = Options::new();
/// let _: u8 = cache_memoize("invalidate-doc", || 1, &options);
/// invalidate("invalidate-doc", &options).unwrap();
/// let again: u8 = cache_memoize("invalidate-doc", || 2, &options);
/// assert_eq!(again, 2);
/// ```
pub fn invalidate(key: impl Into<CacheKey>, options: &Options) -> Result<(), Error> {
    let call = Call::new(config(), key.into(), options);
    let backend = &call.config.backend;
    if let Some(bytes) = backend.get(call.key.stored())? {
        // Any manifest under this key names chunks to remove, whatever type
        // it was written for.
        let manifest = Manifest::decode_any(call.key.bound(), &bytes, call.encryption.as_ref());
        backend.delete(call.key.stored())?;
        if let Some(manifest) = manifest {
            manifest.delete_chunks(&**backend, &call.key)?;
        }
    }
    Ok(())
}

/// Memoizes an iterator: the items are cached as they stream.
///
/// Nothing runs until the first `next()`. On a miss, `compute` runs and
/// each item reaches the caller as soon as the source yields it, while it
/// is serialized, compressed, encrypted and stored in chunks on the way
/// through; the entry becomes visible to readers only once the source is
/// exhausted and every chunk is stored, so an iterator dropped half-way, or
/// a source that panics, leaves nothing a reader would take as complete.
///
/// On a hit, the stored chunks are first fetched and verified (each against
/// its digest in the manifest) without decoding, then the items are decoded
/// as the caller pulls them. Memory stays bounded by a few chunks either
/// way, whatever the total size. If the entry vanishes between the
/// verification and the read (evicted), `compute` runs and the iterator
/// continues where it was, skipping the items already yielded: like all
/// memoization, this takes `compute` to produce the same items each time.
/// (An overwrite by another writer does not cause this: the chunks it
/// supersedes stay readable for [`SUPERSEDED_GRACE`](crate::SUPERSEDED_GRACE).)
///
/// ```
/// use memo_runtime::{cache_memoize_iter, Options};
///
/// let squares: Vec<u64> =
///     cache_memoize_iter("squares-iter", || (0..5u64).map(|i| i * i), &Options::new()).collect();
/// assert_eq!(squares, [0, 1, 4, 9, 16]);
/// let again: Vec<u64> =
///     cache_memoize_iter("squares-iter", || -> Vec<u64> { unreachable!() }, &Options::new())
///         .collect();
/// assert_eq!(again, squares);
/// ```
pub fn cache_memoize_iter<K, T, I, F>(key: K, compute: F, options: &Options) -> MemoIter<T, I, F>
where
    K: Into<CacheKey>,
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    MemoIter {
        state: IterState::Start {
            key: key.into(),
            options: options.clone(),
        },
        compute: Some(compute),
    }
}

/// The iterator [`cache_memoize_iter`] returns.
pub struct MemoIter<T, I: IntoIterator<Item = T>, F> {
    state: IterState<T, I::IntoIter>,
    compute: Option<F>,
}

enum IterState<T, S> {
    Start {
        key: CacheKey,
        options: Options,
    },
    Hit {
        call: Box<Call>,
        items: ItemReader,
        yielded: u64,
        _item: std::marker::PhantomData<fn() -> T>,
    },
    Miss {
        call: Box<Call>,
        source: S,
        writer: Option<StreamWriter>,
        scratch: Vec<u8>,
        _lock: Option<CacheLockGuard>,
    },
    Fallback {
        source: std::iter::Skip<S>,
    },
    Done,
}

impl<T, I, F> MemoIter<T, I, F>
where
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    fn start(&mut self, key: CacheKey, options: Options) {
        let call = Box::new(Call::new(config(), key, &options));
        let (found, lock) = call.find_or_lock(open_items::<T>);
        if let Some(items) = found {
            call.hit();
            self.state = IterState::Hit {
                call,
                items,
                yielded: 0,
                _item: std::marker::PhantomData,
            };
            return;
        }
        call.miss();
        let compute = self.compute.take().expect("compute runs once");
        let writer = call.stores().then(|| call.writer(true));
        self.state = IterState::Miss {
            source: compute().into_iter(),
            call,
            writer,
            scratch: Vec::new(),
            _lock: lock,
        };
    }
}

/// Reads the manifest and verifies every chunk of a cached iterator; the
/// item reader on success.
fn open_items<T: DeserializeOwned>(call: &Call) -> Option<ItemReader> {
    let bytes = call.get_main()?;
    let opened = Manifest::decode(
        call.key.bound(),
        &bytes,
        fingerprint::<T>(true),
        call.encryption.as_ref(),
    )
    .map_err(LoadError::Invalid)
    .and_then(|manifest| {
        let kept = chunk::verify_chunks(
            &*call.config.backend,
            &call.config.counters,
            &call.key,
            &manifest,
            chunk::BATCH_CHUNKS,
        )?;
        Ok(ItemReader {
            reader: call.reader(manifest, kept),
            read: 0,
            item: Vec::new(),
        })
    });
    opened.map_err(|err| call.load_failed(err)).ok()
}

/// Decodes length-framed items from a chunked stream.
struct ItemReader {
    reader: StreamReader,
    read: u64,
    /// The current item's bytes, reused from item to item.
    item: Vec<u8>,
}

impl ItemReader {
    /// The next item; `Ok(None)` at a verified end.
    fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LoadError> {
        let outcome = self.next_inner::<T>();
        if let Some(err) = self.reader.take_error() {
            return Err(err);
        }
        outcome
    }

    fn next_inner<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LoadError> {
        let stream = |err: io::Error| LoadError::Invalid(Invalid::Stream(err.to_string()));
        let Some(len) = codec::read_varint(&mut self.reader).map_err(stream)? else {
            let expected = self.reader.manifest().item_count;
            if self.read != expected {
                return Err(Invalid::Stream(format!(
                    "{} items, the manifest says {expected}",
                    self.read
                ))
                .into());
            }
            return Ok(None);
        };
        if len > self.reader.manifest().plain_len {
            return Err(Invalid::Stream("item longer than the stream".into()).into());
        }
        self.item.clear();
        (&mut self.reader)
            .take(len)
            .read_to_end(&mut self.item)
            .map_err(stream)?;
        if self.item.len() as u64 != len {
            return Err(Invalid::Stream("truncated item".into()).into());
        }
        self.read += 1;
        Ok(Some(codec::decode_exact::<T>(&self.item)?))
    }
}

impl<T, I, F> Iterator for MemoIter<T, I, F>
where
    T: Serialize + DeserializeOwned,
    I: IntoIterator<Item = T>,
    F: FnOnce() -> I,
{
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            match &mut self.state {
                IterState::Start { .. } => {
                    let IterState::Start { key, options } =
                        std::mem::replace(&mut self.state, IterState::Done)
                    else {
                        unreachable!("matched Start above")
                    };
                    self.start(key, options);
                }
                IterState::Hit {
                    call,
                    items,
                    yielded,
                    ..
                } => match items.next::<T>() {
                    Ok(Some(item)) => {
                        *yielded += 1;
                        return Some(item);
                    }
                    Ok(None) => {
                        self.state = IterState::Done;
                        return None;
                    }
                    Err(err) => {
                        call.load_failed(err);
                        log::warn!(
                            "memo: cached items of {} became unreadable after {} items; recomputing",
                            call.key.stored(),
                            yielded
                        );
                        let skip = usize::try_from(*yielded).unwrap_or(usize::MAX);
                        let compute = self.compute.take().expect("compute runs once");
                        self.state = IterState::Fallback {
                            source: compute().into_iter().skip(skip),
                        };
                    }
                },
                IterState::Miss {
                    call,
                    source,
                    writer,
                    scratch,
                    ..
                } => match source.next() {
                    Some(item) => {
                        if let Some(active) = writer.as_mut() {
                            scratch.clear();
                            match postcard::to_io(&item, &mut *scratch) {
                                Ok(_) => active.write_item(scratch),
                                Err(err) => {
                                    call.stored(Err(StoreError::Encode(err.into())));
                                    *writer = None;
                                }
                            }
                        }
                        return Some(item);
                    }
                    None => {
                        if let Some(active) = writer.take() {
                            let outcome =
                                active.finish(fingerprint::<T>(true), call.encryption.as_ref());
                            call.stored(outcome);
                        }
                        self.state = IterState::Done;
                        return None;
                    }
                },
                IterState::Fallback { source } => {
                    let item = source.next();
                    if item.is_none() {
                        self.state = IterState::Done;
                    }
                    return item;
                }
                IterState::Done => return None,
            }
        }
    }
}

impl<T, I: IntoIterator<Item = T>, F> std::fmt::Debug for MemoIter<T, I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            IterState::Start { .. } => "not started",
            IterState::Hit { .. } => "reading from the cache",
            IterState::Miss { .. } => "computing and storing",
            IterState::Fallback { .. } => "recomputing",
            IterState::Done => "done",
        };
        f.debug_struct("MemoIter").field("state", &state).finish()
    }
}
