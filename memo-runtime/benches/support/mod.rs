//! What the network benchmarks share besides the servers (which come from
//! the tests' `servers` module).

/// `len` bytes no compressor can shrink (xorshift), so every pipeline
/// moves all of them.
pub(crate) fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
