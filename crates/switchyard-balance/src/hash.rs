//! Small, stable, fast hashes for balancing keys and endpoint ids. Stable means
//! the same input gives the same number in every process and version, which
//! `std`'s randomly seeded hasher does not: affinity must survive restarts.

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The splitmix64 finaliser: spreads the bits of `x` over the whole word, so
/// that nearby inputs (similar keys, consecutive ids) land far apart.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hash of a balancing key: FNV-1a, then mixed.
pub fn key_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn mixing_separates_neighbours() {
        let (a, b) = (mix(1), mix(2));
        assert!((a ^ b).count_ones() > 16, "{a:x} {b:x}");
    }
}
