//! Small primitives every layer may use: the parsed cache URL, the errors of
//! setting memo up, the counters behind `stats()`, the diagnostic lines (`diag`), the fixed hash, decimal
//! digits written by hand, and the limits memcached puts on keys (which
//! every stored key follows, whatever the backend). Nothing here decides
//! what a call does: that is the policy's.

pub(crate) mod counters;
pub(crate) mod diag;
pub(crate) mod error;
pub(crate) mod hash;
pub(crate) mod url;

/// memcached's hard limit on key length, in bytes: stored and derived keys
/// are built to fit it, and the memcached client refuses longer ones.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// The decimal digits of `value`, as its `to_string()` reads, written at
/// the end of `buf`: without the formatting machinery, which showed in
/// profiles where digits are written on every call (the attribute's
/// integer key arguments, RESP's length headers).
#[inline]
pub(crate) fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        // `value % 10` is a single digit.
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits_are_to_string_s_at_every_power_of_ten_and_the_extremes() {
        let mut values = vec![0, 1, 9, u64::MAX - 1, u64::MAX];
        let mut power = 1u64;
        while let Some(next) = power.checked_mul(10) {
            values.extend([power - 1, power, power + 1]);
            power = next;
        }
        values.extend([power - 1, power, power + 1]);
        for value in values {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(value, &mut buf), value.to_string().as_bytes());
        }
    }
}
