//! Reading back a cached iterator: the manifest, every chunk verified
//! before the first item is handed out, then the length-framed items.

use std::io::{self, Read};

use serde::de::DeserializeOwned;

use std::future::Future;

use super::stream::{self, LoadError, StreamReader};
use super::{Call, Lookup};
use crate::backend::world::Blocking;
use crate::format::envelope::{self, Invalid, fingerprint};
use crate::format::manifest::Manifest;
use crate::format::serial;

/// Reads the manifest and verifies every chunk of a cached iterator; the
/// item reader on success.
pub(crate) fn open_items<T: DeserializeOwned>(call: &Call<'_>) -> Option<ItemReader> {
    let bytes = call.get_main()?;
    let opened = Manifest::decode(
        call.key.full(),
        &bytes,
        fingerprint::<T>(true),
        call.encryption.as_ref(),
    )
    .map_err(LoadError::Invalid)
    .and_then(|manifest| {
        let kept = stream::verify_chunks(&call.pipeline(), &manifest, stream::BATCH_CHUNKS)?;
        Ok(ItemReader {
            reader: call.reader(manifest, kept),
            read: 0,
            item: Vec::new(),
        })
    });
    opened.map_err(|err| call.load_failed(err)).ok()
}

/// Looks up the items of an iterator of `T`, on the caller's thread.
pub(crate) struct ItemsLookup<T>(std::marker::PhantomData<fn() -> T>);

impl<T> ItemsLookup<T> {
    pub(crate) fn new() -> Self {
        ItemsLookup(std::marker::PhantomData)
    }
}

impl<T: DeserializeOwned> Lookup<Blocking> for ItemsLookup<T> {
    type Found = ItemReader;

    fn lookup(
        &self,
        call: &Call<'_>,
        _driver: &Blocking,
    ) -> impl Future<Output = Option<ItemReader>> + Send {
        std::future::ready(open_items::<T>(call))
    }
}

/// Decodes length-framed items from a chunked stream.
pub(crate) struct ItemReader {
    reader: StreamReader,
    read: u64,
    /// The current item's bytes, reused from item to item.
    item: Vec<u8>,
}

impl ItemReader {
    /// The next item; `Ok(None)` at a verified end.
    pub(crate) fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LoadError> {
        let outcome = self.next_inner::<T>();
        if let Some(err) = self.reader.take_error() {
            return Err(err);
        }
        outcome
    }

    /// The next item's postcard bytes, not decoded; `Ok(None)` at a
    /// verified end. For streams, which decode in the caller's task.
    #[cfg(feature = "async")]
    pub(crate) fn next_bytes(&mut self) -> Result<Option<&[u8]>, LoadError> {
        let outcome = self.next_frame();
        if let Some(err) = self.reader.take_error() {
            return Err(err);
        }
        Ok(outcome?.then_some(self.item.as_slice()))
    }

    fn next_inner<T: DeserializeOwned>(&mut self) -> Result<Option<T>, LoadError> {
        if !self.next_frame()? {
            return Ok(None);
        }
        Ok(Some(envelope::decode_exact::<T>(&self.item)?))
    }

    /// Reads the next framed item into `item`; `false` at a verified end.
    fn next_frame(&mut self) -> Result<bool, LoadError> {
        let stream = |err: io::Error| LoadError::Invalid(Invalid::Stream(err.to_string()));
        let Some(len) = serial::read_varint(&mut self.reader).map_err(stream)? else {
            let expected = self.reader.manifest().item_count;
            if self.read != expected {
                return Err(Invalid::Stream(format!(
                    "{} items, the manifest says {expected}",
                    self.read
                ))
                .into());
            }
            return Ok(false);
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
        Ok(true)
    }
}
