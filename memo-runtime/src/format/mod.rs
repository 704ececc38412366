//! The storage format: pure functions from values to bytes and back, with
//! no backend calls, so each is easy to test, fuzz and bench.
//!
//! - `key`: the caller's key to the stored key, and the derived keys of
//!   locks, versions, tags and chunks;
//! - `guard`: the version tokens in front of every main entry, which make
//!   invalidation a barrier across processes;
//! - `envelope`: the header, checksum or MAC that binds every stored value
//!   to its key, type and format version;
//! - `serial`: postcard, decoded exactly, from bytes or from a stream;
//! - `compress`: streaming zlib;
//! - `crypto`: AES-CBC with HMAC-SHA256, encrypt-then-MAC;
//! - `manifest`: the main entry of a chunked value and its tree of digests;
//! - `schema`: the fingerprint of a type's serde shape.

pub(crate) mod compress;
pub(crate) mod crypto;
pub(crate) mod envelope;
pub(crate) mod guard;
pub(crate) mod key;
pub(crate) mod manifest;
pub(crate) mod schema;
pub(crate) mod serial;
