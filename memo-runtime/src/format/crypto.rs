//! Authenticated encryption of keys and values.
//!
//! Keys become the hex HMAC-SHA256 of the full key under the user's key
//! (Djblets' rule, so the cache never sees a readable key). Values are
//! encrypted with AES-CBC under a fresh random IV and then authenticated with
//! HMAC-SHA256 over the header, the IV and the ciphertext (encrypt-then-MAC):
//! the MAC is checked, in constant time, before a single byte is decrypted,
//! so a tampered value is rejected without ever reaching the padding check
//! (no padding oracle) or the decoder.
//!
//! The AES and MAC keys are derived from the user's key with HMAC under
//! labels that are not valid UTF-8, so no cache key (always a Rust `String`)
//! can ever make the key-hashing HMAC reveal a derived key.

use std::fmt;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

pub(crate) use crate::common::error::KeyError;

type HmacSha256 = Hmac<Sha256>;

/// The AES block size, which is also the IV size.
pub(crate) const BLOCK: usize = 16;
/// The size of a MAC tag.
pub(crate) const TAG: usize = 32;

const ENC_LABEL: &[u8] = b"\xffmemo/v1/aes-cbc";
const MAC_LABEL: &[u8] = b"\xffmemo/v1/hmac-sha256";

/// A 16, 24 or 32 byte AES key, for AES-128, AES-192 or AES-256.
///
/// The key bytes and the keys derived from them are wiped from memory when
/// the last clone is dropped, and `Debug` never prints them.
///
/// ```
/// use memo_runtime::EncryptionKey;
///
/// let key = EncryptionKey::new(b"0123456789abcdef").unwrap();
/// assert_eq!(format!("{key:?}"), "EncryptionKey(AES-128, ..)");
/// assert!(EncryptionKey::new(b"too short").is_err());
/// ```
#[derive(Clone)]
pub struct EncryptionKey {
    inner: std::sync::Arc<KeyMaterial>,
}

struct KeyMaterial {
    raw: Zeroizing<Vec<u8>>,
    enc: Zeroizing<Vec<u8>>,
    mac: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey(AES-{}, ..)", self.inner.raw.len() * 8)
    }
}

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.raw.ct_eq(&other.inner.raw).into()
    }
}

impl Eq for EncryptionKey {}

impl EncryptionKey {
    /// A key from its bytes; anything but 16, 24 or 32 bytes is an error.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<EncryptionKey, KeyError> {
        let raw = bytes.as_ref();
        if !matches!(raw.len(), 16 | 24 | 32) {
            return Err(KeyError(raw.len()));
        }
        let mut enc = Zeroizing::new(hmac_sha256(raw, &[ENC_LABEL]).to_vec());
        enc.truncate(raw.len());
        let mac = Zeroizing::new(hmac_sha256(raw, &[MAC_LABEL]));
        Ok(EncryptionKey {
            inner: std::sync::Arc::new(KeyMaterial {
                raw: Zeroizing::new(raw.to_vec()),
                enc,
                mac,
            }),
        })
    }

    /// A fresh random AES-256 key from the operating system's CSPRNG.
    pub fn generate() -> EncryptionKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(&mut *bytes);
        EncryptionKey::new(*bytes).expect("32 bytes is a valid AES key length")
    }

    /// The hex HMAC-SHA256 of `full_key`: what the cache sees of an
    /// encrypted key.
    pub(crate) fn hash_key(&self, full_key: &str) -> String {
        hex(&hmac_sha256(&self.inner.raw, &[full_key.as_bytes()]))
    }

    /// The MAC over `parts`, under the derived MAC key.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> [u8; TAG] {
        hmac_sha256(&*self.inner.mac, parts)
    }

    /// A CBC encryptor for `iv`.
    pub(crate) fn encryptor(&self, iv: &[u8; BLOCK]) -> Encryptor {
        let key = &self.inner.enc[..];
        match key.len() {
            16 => Encryptor::Aes128(cbc::Encryptor::new(key.into(), iv.into())),
            24 => Encryptor::Aes192(cbc::Encryptor::new(key.into(), iv.into())),
            _ => Encryptor::Aes256(cbc::Encryptor::new(key.into(), iv.into())),
        }
    }

    /// A CBC decryptor for `iv`.
    pub(crate) fn decryptor(&self, iv: &[u8; BLOCK]) -> Decryptor {
        let key = &self.inner.enc[..];
        match key.len() {
            16 => Decryptor::Aes128(cbc::Decryptor::new(key.into(), iv.into())),
            24 => Decryptor::Aes192(cbc::Decryptor::new(key.into(), iv.into())),
            _ => Decryptor::Aes256(cbc::Decryptor::new(key.into(), iv.into())),
        }
    }

    /// Encrypts `plaintext` under a fresh IV and authenticates
    /// `associated || iv || ciphertext`: returns `iv || ciphertext || tag`.
    pub(crate) fn seal(&self, associated: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
        let iv = random_iv();
        let mut out = Vec::with_capacity(BLOCK + plaintext.len() + BLOCK + TAG);
        out.extend_from_slice(&iv);
        let ciphertext = self.encryptor(&iv).encrypt_padded_vec(plaintext);
        out.extend_from_slice(&ciphertext);
        let mut parts: Vec<&[u8]> = associated.to_vec();
        parts.push(&out);
        let tag = self.mac(&parts);
        out.extend_from_slice(&tag);
        out
    }

    /// Checks the tag of a value made by [`seal`](Self::seal) with the same
    /// `associated` data and decrypts it. `None` when the key is wrong or
    /// anything was changed, truncated or extended.
    pub(crate) fn open(&self, associated: &[&[u8]], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < BLOCK + BLOCK + TAG || (sealed.len() - TAG) % BLOCK != 0 {
            return None;
        }
        let (body, tag) = sealed.split_at(sealed.len() - TAG);
        let mut parts: Vec<&[u8]> = associated.to_vec();
        parts.push(body);
        if !bool::from(self.mac(&parts).ct_eq(tag)) {
            return None;
        }
        let (iv, ciphertext) = body.split_at(BLOCK);
        let iv: &[u8; BLOCK] = iv.try_into().ok()?;
        self.decryptor(iv)
            .decrypt_padded_vec(ciphertext)
            .map(Zeroizing::new)
    }
}

/// AES-CBC encryption for whichever key size the user chose.
pub(crate) enum Encryptor {
    Aes128(cbc::Encryptor<aes::Aes128>),
    Aes192(cbc::Encryptor<aes::Aes192>),
    Aes256(cbc::Encryptor<aes::Aes256>),
}

impl Encryptor {
    fn encrypt_padded_vec(self, plaintext: &[u8]) -> Vec<u8> {
        match self {
            Encryptor::Aes128(c) => c.encrypt_padded_vec_mut::<Pkcs7>(plaintext),
            Encryptor::Aes192(c) => c.encrypt_padded_vec_mut::<Pkcs7>(plaintext),
            Encryptor::Aes256(c) => c.encrypt_padded_vec_mut::<Pkcs7>(plaintext),
        }
    }

    /// Encrypts whole blocks in place; `data.len()` must be a multiple of
    /// [`BLOCK`]. The chaining state carries over to the next call, so a
    /// stream can be encrypted piece by piece.
    pub(crate) fn encrypt_blocks(&mut self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % BLOCK, 0);
        for block in data.chunks_exact_mut(BLOCK) {
            let block = aes::Block::from_mut_slice(block);
            match self {
                Encryptor::Aes128(c) => c.encrypt_block_mut(block),
                Encryptor::Aes192(c) => c.encrypt_block_mut(block),
                Encryptor::Aes256(c) => c.encrypt_block_mut(block),
            }
        }
    }
}

/// AES-CBC decryption for whichever key size the user chose.
pub(crate) enum Decryptor {
    Aes128(cbc::Decryptor<aes::Aes128>),
    Aes192(cbc::Decryptor<aes::Aes192>),
    Aes256(cbc::Decryptor<aes::Aes256>),
}

impl Decryptor {
    fn decrypt_padded_vec(self, ciphertext: &[u8]) -> Option<Vec<u8>> {
        match self {
            Decryptor::Aes128(c) => c.decrypt_padded_vec_mut::<Pkcs7>(ciphertext).ok(),
            Decryptor::Aes192(c) => c.decrypt_padded_vec_mut::<Pkcs7>(ciphertext).ok(),
            Decryptor::Aes256(c) => c.decrypt_padded_vec_mut::<Pkcs7>(ciphertext).ok(),
        }
    }

    /// Decrypts whole blocks in place, carrying the chaining state over.
    pub(crate) fn decrypt_blocks(&mut self, data: &mut [u8]) {
        debug_assert_eq!(data.len() % BLOCK, 0);
        let blocks = aes::cipher::inout::InOutBuf::from(data);
        let (blocks, _) = blocks.into_chunks();
        match self {
            Decryptor::Aes128(c) => c.decrypt_blocks_inout_mut(blocks),
            Decryptor::Aes192(c) => c.decrypt_blocks_inout_mut(blocks),
            Decryptor::Aes256(c) => c.decrypt_blocks_inout_mut(blocks),
        }
    }
}

/// Removes PKCS#7 padding from the last decrypted block(s); `None` when the
/// padding is malformed (only reachable after the MAC checked out, so this
/// reveals nothing to an attacker).
pub(crate) fn unpad(data: &[u8]) -> Option<&[u8]> {
    let pad = usize::from(*data.last()?);
    if pad == 0 || pad > BLOCK || pad > data.len() {
        return None;
    }
    let (body, padding) = data.split_at(data.len() - pad);
    padding
        .iter()
        .all(|&b| usize::from(b) == pad)
        .then_some(body)
}

/// PKCS#7 padding for a final partial block of `len % BLOCK` bytes.
pub(crate) fn padding(len: usize) -> Vec<u8> {
    let pad = BLOCK - len % BLOCK;
    vec![pad as u8; pad]
}

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality of two tags.
pub(crate) fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Fills `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(err) = getrandom::fill(buf) {
        // Without an entropy source no IV or token can be made safely; this
        // is a broken host, not a cache condition a caller could handle.
        panic!("memo: the operating system's random number generator failed: {err}");
    }
}

pub(crate) fn random_iv() -> [u8; BLOCK] {
    let mut iv = [0u8; BLOCK];
    fill_random(&mut iv);
    iv
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        // Zeroizing wipes each field on its own drop; this makes the
        // ordering explicit and keeps the struct from being made Copy later.
        self.raw.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EncryptionKey {
        EncryptionKey::new(b"0123456789abcdef").unwrap()
    }

    #[test]
    fn only_aes_key_lengths_are_accepted() {
        for len in [0, 1, 15, 17, 23, 25, 31, 33, 64] {
            assert_eq!(
                EncryptionKey::new(vec![0u8; len]).unwrap_err(),
                KeyError(len)
            );
        }
        for len in [16, 24, 32] {
            let key = EncryptionKey::new(vec![1u8; len]).unwrap();
            let sealed = key.seal(&[b"ad"], b"secret");
            assert_eq!(&key.open(&[b"ad"], &sealed).unwrap()[..], b"secret");
        }
    }

    #[test]
    fn key_hash_matches_djblets() {
        assert_eq!(
            key().hash_key("example.com:abc123"),
            "10c4714f5c6c49045ed25c8da7d04a4be2254fa275fc3b63bdeebe887aee52f9"
        );
    }

    #[test]
    fn sealing_uses_a_fresh_iv_each_time() {
        let a = key().seal(&[], b"same plaintext");
        let b = key().seal(&[], b"same plaintext");
        assert_ne!(a, b);
        assert_ne!(a[..BLOCK], b[..BLOCK]);
    }

    #[test]
    fn any_tampering_fails_to_open() {
        let key = key();
        let sealed = key.seal(&[b"header"], b"a value worth protecting");
        for i in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert!(key.open(&[b"header"], &bad).is_none(), "flip at {i}");
            }
        }
        for len in 0..sealed.len() {
            assert!(
                key.open(&[b"header"], &sealed[..len]).is_none(),
                "cut at {len}"
            );
        }
        let mut longer = sealed.clone();
        longer.extend_from_slice(&[0; BLOCK]);
        assert!(key.open(&[b"header"], &longer).is_none());
        assert!(key.open(&[b"other header"], &sealed).is_none());
        let other = EncryptionKey::new(b"fedcba9876543210").unwrap();
        assert!(other.open(&[b"header"], &sealed).is_none());
    }

    #[test]
    fn no_plaintext_survives_sealing() {
        let plaintext = b"PLAINTEXT-MARKER-PLAINTEXT-MARKER";
        let sealed = key().seal(&[], plaintext);
        assert!(
            !sealed
                .windows(8)
                .any(|w| plaintext.windows(8).any(|p| p == w))
        );
    }

    #[test]
    fn derived_keys_differ_from_the_raw_key() {
        let key = key();
        assert_ne!(&key.inner.enc[..], &key.inner.raw[..]);
        assert_ne!(&key.inner.mac[..16], &key.inner.raw[..]);
    }

    #[test]
    fn streamed_blocks_match_one_shot_encryption() {
        let key = key();
        let iv = [9u8; BLOCK];
        let plaintext: Vec<u8> = (0..100u8).collect();
        let one_shot = key.encryptor(&iv).encrypt_padded_vec(&plaintext);
        let mut streamed = plaintext.clone();
        streamed.extend(padding(plaintext.len()));
        let mut enc = key.encryptor(&iv);
        let (first, rest) = streamed.split_at_mut(32);
        enc.encrypt_blocks(first);
        enc.encrypt_blocks(rest);
        assert_eq!(streamed, one_shot);
        let mut dec = key.decryptor(&iv);
        let (first, rest) = streamed.split_at_mut(48);
        dec.decrypt_blocks(first);
        dec.decrypt_blocks(rest);
        assert_eq!(unpad(&streamed).unwrap(), &plaintext[..]);
    }

    #[test]
    fn malformed_padding_is_rejected() {
        assert!(unpad(&[]).is_none());
        assert!(unpad(&[1, 2, 0]).is_none());
        assert!(unpad(&[3, 3, 2]).is_none());
        assert!(unpad(&[17; 17]).is_none());
        assert_eq!(unpad(&[7, 2, 2]).unwrap(), &[7]);
    }
}
