//! The one non-cryptographic hash memo fixes for good: 64-bit FNV-1a.
//!
//! Fixed here, unlike std's `DefaultHasher`, so that what it decides (which
//! memcached server holds a key, the fingerprint of a type whose shape
//! cannot be traced) never changes between builds or processes.

/// 64-bit FNV-1a of `bytes`.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_pinned() {
        // Pinned values: if these change, every deployed cache is reshuffled.
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
