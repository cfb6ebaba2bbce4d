//! A tiny deterministic PRNG (SplitMix64) and the few distributions the
//! simulator samples: uniform, exponential (Poisson inter-arrival gaps) and
//! normal (lognormal lengths).
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", 2014) passes BigCrush, needs 8 bytes of state and no crate,
//! and is also the mixing function behind the synthesized token ids: the same
//! seed gives the same stream on every platform.

/// The SplitMix64 finalizer: a bijective 64-bit mix.
///
/// ```
/// use pagedkv::sim::rng::mix64;
/// assert_ne!(mix64(1), mix64(2));
/// assert_eq!(mix64(7), mix64(7));
/// ```
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Golden-ratio increment of SplitMix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// A SplitMix64 generator.
///
/// ```
/// use pagedkv::sim::rng::SplitMix64;
/// let (mut a, mut b) = (SplitMix64::new(42), SplitMix64::new(42));
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.next_f64();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`, 53 bits of precision.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `lo..=hi` (`lo <= hi`).
    pub fn uniform_u32(&mut self, lo: u32, hi: u32) -> u32 {
        let span = (hi - lo) as u64 + 1;
        lo + ((self.next_u64() as u128 * span as u128) >> 64) as u32
    }

    /// Exponential with rate `lambda` (mean `1 / lambda`): the gap between
    /// Poisson arrivals at `lambda` per second.
    pub fn exponential(&mut self, lambda: f64) -> f64 {
        // 1 - u is in (0, 1], so the log is finite.
        -(1.0 - self.next_f64()).ln() / lambda
    }

    /// Standard normal (Box–Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values_of_splitmix64() {
        // First outputs for seed 0 from the reference implementation.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn distributions_have_the_right_means() {
        let mut r = SplitMix64::new(3);
        let n = 200_000;
        let exp: f64 = (0..n).map(|_| r.exponential(4.0)).sum::<f64>() / n as f64;
        assert!((exp - 0.25).abs() < 0.005, "{exp}");
        let normal: f64 = (0..n).map(|_| r.normal()).sum::<f64>() / n as f64;
        assert!(normal.abs() < 0.01, "{normal}");
        let uni: f64 = (0..n).map(|_| r.uniform_u32(10, 20) as f64).sum::<f64>() / n as f64;
        assert!((uni - 15.0).abs() < 0.05, "{uni}");
        assert!((0..1000).all(|_| (10..=20).contains(&r.uniform_u32(10, 20))));
    }
}
