//! Which server holds a key: rendezvous hashing on a hash fixed by memo
//! (FNV-1a then a SplitMix64 mix), so every process places a key on the
//! same server, and losing or adding one server moves only that server's
//! share of the keys. An entry's version key is placed with the entry, so
//! a lookup reads both from one server.

use crate::common::hash::fnv1a;
use crate::format::key::placed_by;

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
    // A version key goes where its entry goes (see `placed_by`).
    let (first, second) = placed_by(key);
    let key_hash = fnv1a(first.bytes().chain(second.bytes()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_key_goes_where_its_entry_goes() {
        let seeds: Vec<u64> = (0..7).map(|n| seed(&format!("10.0.0.{n}:11211"))).collect();
        for n in 0..200 {
            let entry = format!("shop:item:{n}");
            let version = format!("shop:\\V:item:{n}");
            assert_eq!(pick(&seeds, &entry), pick(&seeds, &version), "{entry}");
            let bare = format!("item:{n}");
            assert_eq!(pick(&seeds, &bare), pick(&seeds, &format!("\\V:{bare}")));
        }
        // Other derived keys spread by themselves.
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|n| pick(&seeds, &format!("shop:\\C0123456789abcdef-{n}:item")))
            .collect();
        assert!(spread.len() > 3);
    }
}
