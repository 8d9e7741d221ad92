//! The generators' randomness: a hash of `(seed, counter, tag)`, so that every event is a pure
//! function of the seed and its number and a restart regenerates the same events.

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finaliser: a bijection on u64 with good avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hash of `(seed, counter, tag)`. For a fixed seed and tag it is a bijection of `counter`.
pub(crate) fn hash(seed: u64, counter: u64, tag: u64) -> u64 {
    mix64(mix64(seed ^ tag.wrapping_mul(GOLDEN)) ^ counter.wrapping_add(GOLDEN))
}

/// A uniform number in `[0, 1)` from a hash.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}
