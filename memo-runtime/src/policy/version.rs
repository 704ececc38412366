//! The barrier across processes: the version tokens a call reads with its
//! entry and stores its value behind (see `format::guard`), and the tags.
//!
//! - A lookup reads the main entry, the entry's version key and each tag's
//!   key in one `get_many`, and serves the entry only when its guard holds
//!   exactly the tokens read. It remembers the tokens.
//! - Before it computes, a call makes sure it knows every token: a missing
//!   one is written (`add`, so that concurrent callers agree on one) and
//!   read back if another caller's `add` won. Only then does the
//!   computation start, so the value is stored behind tokens that were
//!   current before it began.
//! - `invalidate`, a `force_overwrite` call and `invalidate_tag` write a
//!   new token. Every entry stored behind the old one, whenever its store
//!   lands and from whichever process, is a miss from then on.
//!
//! This asks nothing of a backend but `get_many`, `set` and `add`, which a
//! custom store has; no compare-and-set and no lease is needed, so a
//! writer that dies mid-computation holds nobody up. A stale store still
//! lands (it costs its bytes until it expires or is replaced), but nobody
//! is served it. In this process, `barrier` turns away the local copies and
//! flights that began before an invalidation.

use std::time::Duration;

use super::Call;
use super::engine::Engine;
use super::options::Options;
use crate::backend::BackendError;
use crate::backend::world::World;
use crate::format::guard::{self, Token};
use crate::format::key::Derived;

/// Where a call stands with its version tokens: one per guard key (the
/// entry's version key, then each tag's key), `None` where none was read.
pub(crate) type Seen = Vec<Option<Token>>;

impl Call<'_> {
    /// The keys whose tokens this call's entry is stored behind: its
    /// version key, then each tag's key.
    pub(crate) fn guard_keys(&self) -> &[String] {
        self.guard_keys.get_or_init(|| {
            let config = self.config();
            let tags = self.options.tag_list();
            if tags.len() > guard::MAX_TAGS {
                crate::common::diag::warning!(
                    "memo: {} tags given for {}; only the first {} are kept",
                    tags.len(),
                    self.key.stored(),
                    guard::MAX_TAGS
                );
            }
            std::iter::once(self.key.derived(Derived::Version))
                .chain(
                    tags.iter()
                        .take(guard::MAX_TAGS)
                        .map(|tag| config.tag_key(tag, self.encryption.as_ref())),
                )
                .collect()
        })
    }

    /// How long a version or tag key is kept: at least as long as the
    /// entries stored behind it, so that it does not expire under them
    /// (which would only cost them a recomputation).
    pub(crate) fn guard_ttl(&self) -> Duration {
        self.backend_ttl().max(self.config().default_expiration)
    }

    /// Reads the main entry with its tokens in one round trip: the entry
    /// behind its guard when the guard holds the tokens read, `None`
    /// otherwise (absent, stored behind other tokens, or the backend
    /// failed).
    pub(crate) async fn fetch_main(&self, io: &impl World) -> Option<Vec<u8>> {
        let keys = self.lookup_keys();
        let found = match io.backend().get_many(&keys).await {
            Ok(found) if found.len() == keys.len() => found,
            Ok(found) => {
                self.counters()
                    .backend_failed("get_many", &short_answer(found.len(), keys.len()));
                return None;
            }
            Err(err) => {
                self.counters().backend_failed("get_many", &err);
                return None;
            }
        };
        self.counters().backend_ok();
        self.found_main(found)
    }

    /// The keys a lookup reads in one `get_many`: the main entry's, then
    /// its guard keys.
    pub(crate) fn lookup_keys(&self) -> Vec<&str> {
        let guards = self.guard_keys();
        let mut keys = Vec::with_capacity(1 + guards.len());
        keys.push(self.key.stored());
        keys.extend(guards.iter().map(String::as_str));
        keys
    }

    /// What [`fetch_main`](Self::fetch_main) makes of the values read for
    /// [`lookup_keys`](Self::lookup_keys), one each: remembers the tokens,
    /// and returns the entry behind its guard if the guard holds them. A
    /// batch reads many calls' keys in one `get_many` and hands each call
    /// its share.
    pub(crate) fn found_main(&self, mut found: Vec<Option<Vec<u8>>>) -> Option<Vec<u8>> {
        if found.is_empty() {
            return None;
        }
        let seen = self.tokens_of(&found[1..]);
        let main = found.swap_remove(0);
        let behind = main.as_deref().and_then(|main| guard::behind(main, &seen));
        self.remember(seen);
        let mut main = main?;
        self.counters().read(main.len());
        match behind {
            Some(at) => {
                main.drain(..at);
                Some(main)
            }
            // Written by a format without guards: unexpected, and counted.
            None if guard::strip(&main).is_none() => {
                self.counters()
                    .invalid_entry(self.key.stored(), &"no guard of version tokens");
                None
            }
            None => {
                crate::common::diag::debug!(
                    "memo: the entry under {} was stored before its latest invalidation; a miss",
                    self.key.stored()
                );
                None
            }
        }
    }

    /// The tokens in what the guard keys held; one that is there but is
    /// not a token counts as an entry that did not check out.
    pub(crate) fn tokens_of(&self, found: &[Option<Vec<u8>>]) -> Seen {
        found
            .iter()
            .map(|bytes| {
                let bytes = bytes.as_deref()?;
                let token = guard::read_token(bytes);
                if token.is_none() {
                    self.counters()
                        .invalid_entry(self.key.stored(), &"a version token that is not one");
                }
                token
            })
            .collect()
    }

    pub(crate) fn remember(&self, seen: Seen) {
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(seen);
    }

    pub(crate) fn seen(&self) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The tokens a value computed from now on is stored behind: those the
    /// last lookup read, with each missing one written now (or read back,
    /// when another caller wrote it first). `None` when they cannot all be
    /// had (the backend failed): the value is then not stored. Called
    /// before the computation starts.
    pub(crate) async fn ensure_tokens(&self, io: &impl World) -> Option<Vec<Token>> {
        let keys = self.guard_keys();
        let backend = io.backend();
        let mut seen = match self.seen() {
            Some(seen) if seen.len() == keys.len() => seen,
            _ => {
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                match backend.get_many(&refs).await {
                    Ok(found) if found.len() == keys.len() => self.tokens_of(&found),
                    Ok(found) => {
                        self.counters()
                            .backend_failed("get_many", &short_answer(found.len(), keys.len()));
                        return None;
                    }
                    Err(err) => {
                        self.counters().backend_failed("get_many", &err);
                        return None;
                    }
                }
            }
        };
        for (key, token) in keys.iter().zip(seen.iter_mut()) {
            if token.is_some() {
                continue;
            }
            let fresh = guard::new_token();
            let added = backend
                .add(key, &guard::token_bytes(fresh), self.guard_ttl())
                .await;
            *token = match added {
                Ok(true) => Some(fresh),
                Ok(false) => match backend.get(key).await {
                    Ok(bytes) => self.tokens_of(&[bytes])[0],
                    Err(err) => {
                        self.counters().backend_failed("get", &err);
                        None
                    }
                },
                Err(err) => {
                    self.counters().backend_failed("add", &err);
                    None
                }
            };
        }
        self.remember(seen.clone());
        seen.into_iter().collect()
    }

    /// The guard to store a value behind: the tokens made sure of before
    /// its computation, or `None` (nothing may be stored).
    pub(crate) fn guard_prefix(&self) -> Option<Vec<u8>> {
        let tokens: Vec<Token> = self.seen()?.into_iter().collect::<Option<_>>()?;
        (tokens.len() == self.guard_keys().len()).then(|| guard::prefix(&tokens))
    }

    /// Writes a new token to the entry's version key: every entry stored
    /// behind an older one is a miss from now on, in every process. The
    /// call then stores behind the new token.
    pub(crate) async fn new_version(&self, io: &impl World) -> Result<(), BackendError> {
        let token = guard::new_token();
        let key = &self.guard_keys()[0];
        io.backend()
            .set(key, &guard::token_bytes(token), self.guard_ttl())
            .await?;
        let mut seen = vec![None; self.guard_keys().len()];
        seen[0] = Some(token);
        self.remember(seen);
        Ok(())
    }
}

/// The failure of a `get_many` that answered `got` values for `asked` keys.
pub(crate) fn short_answer(got: usize, asked: usize) -> BackendError {
    BackendError::new(format!("get_many answered {got} values for {asked} keys"))
}

/// Invalidates every entry stored with `tag`, as a barrier: a new token
/// for the tag, so that none is served in any process, and in this process
/// no local copy or flight that began before (every stripe, since the
/// entries of a tag cannot be named). `options` give the encryption
/// settings the tag was stored under, and its expiration how long the new
/// token is kept at least.
pub(crate) async fn invalidate_tag(
    engine: &Engine,
    tag: &str,
    options: &Options,
    io: &impl World,
) -> Result<(), BackendError> {
    let config = &engine.config;
    let encryption = config.encryption_for(options.encrypt, options.encryption_key.as_ref());
    super::observe::invalidated(super::observe::Dropped::Tag, tag, encryption.is_some());
    let key = config.tag_key(tag, encryption.as_ref());
    let ttl = options
        .expiration
        .unwrap_or(config.default_expiration)
        .max(config.default_expiration);
    let outcome = io
        .backend()
        .set(&key, &guard::token_bytes(guard::new_token()), ttl)
        .await;
    engine.dropped_everything();
    outcome?;
    engine.publish_invalidation_of_everything();
    Ok(())
}
