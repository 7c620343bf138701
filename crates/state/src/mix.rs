//! splitmix64 (Sebastiano Vigna's finalizer): a bijection on u64 that spreads
//! nearby inputs over the whole range. Deterministic, so the state machine uses
//! it for generated lease ids; other crates use it for ids and key spreading.

/// Mixes `x` into a well-spread u64.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
