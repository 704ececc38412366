//! The guard in front of every main entry: the version tokens the entry
//! was computed under, which makes invalidation a barrier across
//! processes.
//!
//! Each entry has a version key (`\V`, see `format::key`) and each tag a
//! tag key (`\T`); each holds a random token. A call reads the tokens
//! together with the entry, in the same `get_many`, before it computes;
//! it stores its value behind the tokens it read. `invalidate` and
//! `invalidate_tag` write a new token, so an entry stored behind an older
//! one (by a computation that began before the invalidation, in any
//! process) no longer matches and is a miss. A token that is missing
//! (never written, expired or evicted) matches nothing, so losing one
//! costs a recomputation, never a stale value. Tokens are random rather
//! than counters so that a version key lost and written again never
//! repeats an old token.
//!
//! The stored main entry is `MAGIC`, one byte counting the tokens, the
//! tokens (8 bytes each, little-endian), then the envelope or manifest as
//! `format::envelope` and `format::manifest` write it. A main entry without
//! the magic (written by an older format) is a miss.

/// Marks a guarded main entry.
const MAGIC: [u8; 4] = *b"mg\x01\x00";

/// The most tokens one entry carries: its own and its tags'.
pub(crate) const MAX_TOKENS: usize = 1 + MAX_TAGS;

/// The most tags one call may carry; more are ignored past this, logged.
pub(crate) const MAX_TAGS: usize = 16;

/// The longest guard: the magic, the count, and every token.
pub(crate) const MAX_LEN: usize = MAGIC.len() + 1 + 8 * MAX_TOKENS;

/// A version token.
pub(crate) type Token = u64;

/// A fresh random token. A failed draw of the OS generator falls back on
/// the clock and a counter: unpredictability is not needed, only that two
/// draws differ.
pub(crate) fn new_token() -> Token {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .rotate_left(32)
}

/// A token as a version key stores it.
pub(crate) fn token_bytes(token: Token) -> [u8; 8] {
    token.to_le_bytes()
}

/// The token a version key holds, or `None` for anything else.
pub(crate) fn read_token(bytes: &[u8]) -> Option<Token> {
    Some(Token::from_le_bytes(bytes.try_into().ok()?))
}

/// The guard to put in front of an entry stored behind `tokens`.
pub(crate) fn prefix(tokens: &[Token]) -> Vec<u8> {
    let count = tokens.len().min(MAX_TOKENS);
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + 8 * count);
    out.extend_from_slice(&MAGIC);
    out.push(count as u8);
    for token in &tokens[..count] {
        out.extend_from_slice(&token_bytes(*token));
    }
    out
}

/// Where the entry behind `bytes`' guard starts, if the guard holds
/// exactly `tokens`; `None` for an entry stored behind other tokens, or not
/// guarded at all. A token that is `None` (none was read) matches nothing.
pub(crate) fn behind(bytes: &[u8], tokens: &[Option<Token>]) -> Option<usize> {
    let (stored, entry) = split(bytes)?;
    let same = stored.len() == tokens.len() * 8
        && stored
            .chunks_exact(8)
            .zip(tokens)
            .all(|(bytes, token)| token.is_some() && read_token(bytes) == *token);
    same.then(|| bytes.len() - entry.len())
}

/// The entry behind `bytes`' guard, whatever tokens it holds, or `None`
/// when `bytes` have no guard: for housekeeping (finding a manifest's
/// chunks to remove), never for serving a value.
pub(crate) fn strip(bytes: &[u8]) -> Option<&[u8]> {
    split(bytes).map(|(_, entry)| entry)
}

/// The guard's tokens and the entry behind it.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = bytes.strip_prefix(&MAGIC)?;
    let (&count, rest) = rest.split_first()?;
    let count = usize::from(count);
    if count > MAX_TOKENS || rest.len() < 8 * count {
        return None;
    }
    Some(rest.split_at(8 * count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open<'b>(bytes: &'b [u8], tokens: &[Token]) -> Option<&'b [u8]> {
        let read: Vec<Option<Token>> = tokens.iter().copied().map(Some).collect();
        behind(bytes, &read).map(|at| &bytes[at..])
    }

    #[test]
    fn a_token_not_read_opens_nothing() {
        let tokens = [new_token(), new_token()];
        let mut stored = prefix(&tokens);
        stored.extend_from_slice(b"envelope");
        assert_eq!(
            behind(&stored, &[Some(tokens[0]), Some(tokens[1])]),
            Some(stored.len() - 8)
        );
        assert_eq!(behind(&stored, &[Some(tokens[0]), None]), None);
        assert_eq!(behind(&stored, &[None, Some(tokens[1])]), None);
    }

    #[test]
    fn an_entry_opens_only_behind_the_tokens_it_was_stored_behind() {
        let tokens = [new_token(), new_token(), new_token()];
        let mut stored = prefix(&tokens);
        stored.extend_from_slice(b"envelope");
        assert_eq!(open(&stored, &tokens), Some(&b"envelope"[..]));
        assert_eq!(strip(&stored), Some(&b"envelope"[..]));
        // Another token in any place, a token fewer or more: a miss.
        for at in 0..tokens.len() {
            let mut other = tokens;
            other[at] ^= 1;
            assert_eq!(open(&stored, &other), None);
        }
        assert_eq!(open(&stored, &tokens[..2]), None);
        assert_eq!(open(&stored, &[tokens[0], tokens[1], tokens[2], 7]), None);
    }

    #[test]
    fn anything_but_a_guard_is_a_miss() {
        let tokens = [1];
        let mut stored = prefix(&tokens);
        stored.extend_from_slice(b"x");
        for len in 0..stored.len() - 1 {
            assert_eq!(open(&stored[..len], &tokens), None, "cut at {len}");
        }
        assert_eq!(open(b"envelope without a guard", &tokens), None);
        let mut wrong = stored.clone();
        wrong[0] ^= 1;
        assert_eq!(open(&wrong, &tokens), None);
        // A count past the limit is refused however long the bytes are.
        let mut huge = MAGIC.to_vec();
        huge.push(u8::MAX);
        huge.extend(std::iter::repeat_n(0, 8 * 255));
        assert_eq!(strip(&huge), None);
    }

    #[test]
    fn an_entry_with_no_tokens_has_an_empty_guard() {
        let mut stored = prefix(&[]);
        stored.extend_from_slice(b"e");
        assert_eq!(open(&stored, &[]), Some(&b"e"[..]));
        assert_eq!(open(&stored, &[1]), None);
    }

    #[test]
    fn tokens_round_trip_and_differ() {
        let a = new_token();
        assert_eq!(read_token(&token_bytes(a)), Some(a));
        assert_ne!(a, new_token());
        assert_eq!(read_token(b"short"), None);
    }
}
