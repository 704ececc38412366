//! Which server holds a key: rendezvous hashing on a hash fixed by memo
//! (FNV-1a then a SplitMix64 mix), so every process places a key on the
//! same server, and losing or adding one server moves only that server's
//! share of the keys.

use crate::common::hash::fnv1a;

/// The seed a server's scores derive from: the hash of its address as
/// given.
pub(super) fn seed(address: &str) -> u64 {
    fnv1a(address.bytes())
}

/// The index of the server holding `key`, among servers with these
/// `seeds`: the one whose hash with the key scores highest.
pub(super) fn pick(seeds: &[u64], key: &str) -> usize {
    if seeds.len() == 1 {
        return 0;
    }
    let key_hash = fnv1a(key.bytes());
    let mut best = 0;
    let mut best_score = 0;
    for (index, seed) in seeds.iter().enumerate() {
        let score = mix(key_hash ^ seed);
        if index == 0 || score > best_score {
            best = index;
            best_score = score;
        }
    }
    best
}

/// Groups `keys` (by position) per server, in server order.
pub(super) fn partition<'k>(seeds: &[u64], keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); seeds.len()];
    for (position, key) in keys.enumerate() {
        groups[pick(seeds, key)].push(position);
    }
    groups
}

/// SplitMix64's finalizer: spreads FNV's weak high bits, so that each
/// server's score is an independent-looking function of the key.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
