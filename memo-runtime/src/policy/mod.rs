//! The policy: the one memoize algorithm, and what a failure means.
//!
//! On every call memo reads the current configuration, resolves the key
//! (`Config::resolve`), and asks the backend; a value that checks out is a
//! hit. Anything else (absent, expired, corrupt, of another type, a backend
//! error or timeout) is a miss: the compute function runs, its value is
//! returned, and memo tries to store it, under the call's lock when it has
//! one (lookup, lock, look again, compute, store). Backend failures are
//! logged once per episode and counted in `stats()`; they never reach the
//! caller, and the only panics are the caller's own.
//!
//! - this file: [`Call`], one call's resolved settings and every step;
//! - `stream`: the chunked pipeline, for large values and iterators;
//! - `items`: reading back the framed items of an iterator;
//! - `options`: [`Options`], the settings of one call, re-exported by the
//!   API layer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::BackendError;
use crate::common::counters::Counters;
use crate::config::{Config, Resolved};
use crate::format::crypto::EncryptionKey;
use crate::format::envelope::{self, Kind, fingerprint};
use crate::format::key::{CacheKey, EntryKey};
use crate::format::manifest::Manifest;
use crate::format::serial;
use crate::lock::{CacheLock, CacheLockGuard, LockError, LockOptions};

#[allow(dead_code)]
pub(crate) mod coalesce;
pub(crate) mod items;
pub(crate) mod options;
pub(crate) mod stream;

use options::Options;

use stream::{LoadError, Pipeline, StoreError, StreamReader, StreamWriter};

/// One call's resolved settings.
pub(crate) struct Call {
    pub(crate) config: Arc<Config>,
    pub(crate) key: EntryKey,
    pub(crate) encryption: Option<EncryptionKey>,
    ttl: Duration,
    options: Options,
}

impl Call {
    pub(crate) fn new(config: Arc<Config>, key: CacheKey, options: &Options) -> Call {
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
    pub(crate) fn get_main(&self) -> Option<Vec<u8>> {
        match self.config.backend.get(self.key.stored()) {
            Ok(found) => {
                self.counters().backend_ok();
                if let Some(bytes) = &found {
                    self.counters().read(bytes.len());
                }
                found
            }
            Err(err) => {
                self.counters().backend_failed("get", &err);
                None
            }
        }
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

    /// A cached value that checks out, in either stored form.
    pub(crate) fn load<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.get_main()?;
        let encryption = self.encryption.as_ref();
        let loaded = match envelope::peek_kind(&bytes) {
            Ok(Kind::Value) => envelope::decode_value::<T>(self.key.full(), &bytes, encryption)
                .map_err(LoadError::Invalid),
            Ok(Kind::Manifest) => self.load_chunked(&bytes),
            Err(why) => Err(LoadError::Invalid(why)),
        };
        loaded.map_err(|err| self.load_failed(err)).ok()
    }

    fn load_chunked<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, LoadError> {
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

    /// The chunked pipeline's view of this call.
    pub(crate) fn pipeline(&self) -> Pipeline {
        Pipeline {
            backend: Arc::clone(&self.config.backend),
            counters: Arc::clone(&self.config.counters),
            key: self.key.clone(),
            encryption: self.encryption.clone(),
        }
    }

    pub(crate) fn writer(&self, iterator: bool) -> StreamWriter {
        StreamWriter::new(
            self.pipeline(),
            self.ttl,
            self.config.chunk_size,
            self.options
                .compress
                .then_some(self.config.compression_level),
            iterator,
        )
    }

    /// Whether the call stores what it computes: not with a zero TTL.
    pub(crate) fn will_store(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Stores `value`; failures are logged and counted, never returned.
    fn store<T: Serialize + DeserializeOwned>(&self, value: &T) {
        if !self.will_store() {
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
                    .map_err(envelope::EncodeError::from)
            };
            let outcome = match serialized {
                Ok(()) => writer.finish(fingerprint::<T>(false)),
                Err(err) => Err(StoreError::Encode(err)),
            };
            self.store_finished(outcome);
            return;
        }
        let encoded = match envelope::encode_value(self.key.full(), value, self.encryption.as_ref())
        {
            Ok(encoded) => encoded,
            Err(err) => return self.store_finished(Err(StoreError::Encode(err))),
        };
        if encoded.len() > self.config.chunk_size {
            return self.store_finished(Err(StoreError::TooLarge(format!(
                "{} bytes exceed the chunk size of {}; memoize it with large_data",
                encoded.len(),
                self.config.chunk_size
            ))));
        }
        let outcome = self
            .config
            .backend
            .set(self.key.stored(), &encoded, self.ttl)
            .map(|()| self.counters().wrote(encoded.len()))
            .map_err(StoreError::from);
        self.store_finished(outcome);
    }

    /// Counts and logs how storing a value ended.
    pub(crate) fn store_finished(&self, outcome: Result<(), StoreError>) {
        match outcome {
            Ok(()) => {
                self.counters().backend_ok();
                self.counters().stored();
            }
            Err(StoreError::Backend(err)) => self.counters().backend_failed("set", &err),
            Err(err) => {
                self.counters().unstorable();
                log::warn!("memo: not caching {}: {err}", self.key.stored());
            }
        }
    }

    fn lock(&self, options: LockOptions) -> CacheLock {
        CacheLock::for_stored_key(&self.config, self.key.stored(), options)
    }

    /// Takes the call's lock if it has one. `Some(guard)` when held; `None`
    /// when the call has no lock, or the lock could not be had (held
    /// elsewhere without blocking, timed out, backend down): the caller
    /// then computes without it.
    fn take_lock(&self) -> Option<CacheLockGuard> {
        // A call that stores nothing has nothing to make others wait for.
        let options = self.options.lock.filter(|_| self.will_store())?;
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
    pub(crate) fn find_or_lock<V>(
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

    pub(crate) fn hit(&self) {
        self.counters().hit();
    }

    pub(crate) fn miss(&self) {
        self.counters().miss();
    }

    /// Drops the entry and, if it is chunked, its chunks.
    pub(crate) fn invalidate(&self) -> Result<(), BackendError> {
        let backend = &self.config.backend;
        if let Some(bytes) = backend.get(self.key.stored())? {
            // Any manifest under this key names chunks to remove, whatever type
            // it was written for.
            let manifest = Manifest::decode_any(self.key.full(), &bytes, self.encryption.as_ref());
            backend.delete(self.key.stored())?;
            if let Some(manifest) = manifest {
                self.pipeline().delete_chunks(&manifest)?;
            }
        }
        Ok(())
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

/// The one memoize algorithm behind `cache_memoize` and `try_cache_memoize`: `R` is
/// what the compute function returns, and `cacheable` picks the part of it
/// worth storing.
pub(crate) fn memoize<T, R>(
    key: CacheKey,
    options: &Options,
    compute: impl FnOnce() -> R,
    cacheable: impl Fn(&R) -> Option<&T>,
    from_cache: impl Fn(T) -> R,
) -> R
where
    T: Serialize + DeserializeOwned,
{
    let call = Call::new(crate::config::config(), key, options);
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
