//! Small primitives every layer may use: the parsed cache URL, the errors of
//! setting memo up, the counters behind `stats()`, the single-flight registry
//! (`coalesce`, kept per configuration beside its counters), the per-process
//! copies of hot entries (`local`), the fixed hash, and the
//! limits memcached puts on keys (which every stored key follows, whatever
//! the backend).

pub(crate) mod coalesce;
pub(crate) mod counters;
pub(crate) mod error;
pub(crate) mod hash;
pub(crate) mod local;
pub(crate) mod url;

/// memcached's hard limit on key length, in bytes: stored and derived keys
/// are built to fit it, and the memcached client refuses longer ones.
pub(crate) const MAX_KEY_LEN: usize = 250;
