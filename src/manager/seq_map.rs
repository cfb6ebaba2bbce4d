//! The map from sequence id to per-sequence state, keyed by a cheap hasher.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::ids::SeqId;

/// A multiplicative hasher for engine-chosen `u64` sequence ids: one multiply and
/// a fold, several times cheaper than SipHash on the hot path. Sequence ids come
/// from the engine, not from untrusted clients, so flooding is not a concern.
#[derive(Default, Clone, Copy)]
pub(crate) struct SeqIdHasher(u64);

impl Hasher for SeqIdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Fold the well-mixed high bits into the low bits the table indexes by.
        self.0 = h ^ (h >> 29);
    }
}

pub(crate) type SeqMap<V> = HashMap<SeqId, V, BuildHasherDefault<SeqIdHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn seq_hasher_spreads_strided_ids() {
        let b = BuildHasherDefault::<SeqIdHasher>::default();
        let mut low: Vec<u64> = (0..64u64).map(|i| b.hash_one(SeqId(i << 20)) & 63).collect();
        low.sort_unstable();
        low.dedup();
        assert!(
            low.len() > 32,
            "strided ids collide in the low bits: {}",
            low.len()
        );
    }
}
