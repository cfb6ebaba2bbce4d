//! The allocation policies a run can use, and their names (`paged16`,
//! `paged16-prefix`, `reserve-max`, ...).

use std::fmt;
use std::str::FromStr;

use crate::sim::error::SimError;

/// What a reservation baseline reserves per sequence when it admits a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReserveKind {
    /// `max_model_len` slots (Orca (Max) in the paper; FasterTransformer-style).
    MaxLen,
    /// The next power of two of prompt + output, capped at `max_model_len` (Orca (Pow2)).
    PowerOfTwo,
    /// Exactly prompt + output: an oracle that knows the output length (Orca (Oracle)).
    Oracle,
}

impl ReserveKind {
    /// Slots reserved for one sequence of `total` = prompt + output tokens.
    ///
    /// ```
    /// use pagedkv::sim::ReserveKind;
    /// assert_eq!(ReserveKind::MaxLen.reservation(300, 2048), 2048);
    /// assert_eq!(ReserveKind::PowerOfTwo.reservation(300, 2048), 512);
    /// assert_eq!(ReserveKind::PowerOfTwo.reservation(1500, 1800), 1800);
    /// assert_eq!(ReserveKind::Oracle.reservation(300, 2048), 300);
    /// ```
    pub fn reservation(self, total: u64, max_model_len: u64) -> u64 {
        match self {
            ReserveKind::MaxLen => max_model_len,
            ReserveKind::PowerOfTwo => total.next_power_of_two().min(max_model_len),
            ReserveKind::Oracle => total,
        }
    }
}

/// How a running sequence is preempted when blocks run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreemptionMode {
    /// Drop its blocks; recompute its prompt and output when it resumes.
    Recompute,
    /// Copy its blocks to the host tier and back.
    Swap,
    /// Recompute single sequences, swap groups of parallel samples (vLLM's rule).
    Auto,
}

/// Which running sequence is preempted first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Victim {
    /// The one that arrived last (FCFS).
    LatestArrival,
    /// The one holding the most blocks.
    MostBlocks,
}

/// The order in which cached free blocks are evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently freed first, a prefix after its suffix (the manager's order).
    Lru,
}

/// Paged allocation and its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PagedPolicy {
    /// Tokens per block (1–128 in the comparison).
    pub block_size: u32,
    /// Share the blocks of cached prompt prefixes.
    pub prefix_caching: bool,
    /// How to preempt.
    pub preemption: PreemptionMode,
    /// Whom to preempt.
    pub victim: Victim,
    /// Fraction of blocks admission keeps free for running sequences (0.01).
    pub watermark: f64,
    /// Eviction order of cached blocks.
    pub eviction: Eviction,
}

impl PagedPolicy {
    /// Paged allocation at `block_size` with the defaults: no prefix caching,
    /// recompute the latest arrival, watermark 0.01, LRU eviction.
    pub const fn new(block_size: u32) -> Self {
        PagedPolicy {
            block_size,
            prefix_caching: false,
            preemption: PreemptionMode::Recompute,
            victim: Victim::LatestArrival,
            watermark: 0.01,
            eviction: Eviction::Lru,
        }
    }
}

/// An allocation policy.
///
/// Names: `paged<B>` with optional suffixes `-prefix`, `-swap` / `-auto` /
/// `-recompute`, `-most-blocks`, `-wm<F>` (watermark fraction); and
/// `reserve-max`, `reserve-pow2`, `reserve-oracle`.
///
/// ```
/// use pagedkv::sim::{Policy, ReserveKind};
/// let p: Policy = "paged32-prefix-wm0.05".parse().unwrap();
/// let Policy::Paged(paged) = p else { panic!() };
/// assert_eq!((paged.block_size, paged.prefix_caching, paged.watermark), (32, true, 0.05));
/// assert_eq!(p.to_string(), "paged32-prefix-wm0.05");
/// assert_eq!("reserve-pow2".parse::<Policy>().unwrap(), Policy::Reserve(ReserveKind::PowerOfTwo));
/// assert!("paged0".parse::<Policy>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// Paged allocation through [`crate::KvCacheManager`].
    Paged(PagedPolicy),
    /// Reserve memory per request up front.
    Reserve(ReserveKind),
}

impl Policy {
    /// The default comparison: the paper's four systems (paged at block 16 and
    /// the three reservation baselines), then paged at block sizes 1, 8, 32, 64, 128.
    pub fn default_set() -> Vec<Policy> {
        let mut set = vec![
            Policy::Paged(PagedPolicy::new(16)),
            Policy::Reserve(ReserveKind::MaxLen),
            Policy::Reserve(ReserveKind::PowerOfTwo),
            Policy::Reserve(ReserveKind::Oracle),
        ];
        set.extend([1, 8, 32, 64, 128].map(|b| Policy::Paged(PagedPolicy::new(b))));
        set
    }

    /// The policy's name.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Reserve(ReserveKind::MaxLen) => f.write_str("reserve-max"),
            Policy::Reserve(ReserveKind::PowerOfTwo) => f.write_str("reserve-pow2"),
            Policy::Reserve(ReserveKind::Oracle) => f.write_str("reserve-oracle"),
            Policy::Paged(p) => {
                write!(f, "paged{}", p.block_size)?;
                if p.prefix_caching {
                    f.write_str("-prefix")?;
                }
                match p.preemption {
                    PreemptionMode::Recompute => {}
                    PreemptionMode::Swap => f.write_str("-swap")?,
                    PreemptionMode::Auto => f.write_str("-auto")?,
                }
                if p.victim == Victim::MostBlocks {
                    f.write_str("-most-blocks")?;
                }
                if p.watermark != 0.01 {
                    write!(f, "-wm{}", p.watermark)?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Policy {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        let name = s.trim().to_ascii_lowercase();
        let bad = |reason: String| SimError::Policy {
            policy: s.to_string(),
            reason,
        };
        match name.as_str() {
            "reserve-max" => return Ok(Policy::Reserve(ReserveKind::MaxLen)),
            "reserve-pow2" => return Ok(Policy::Reserve(ReserveKind::PowerOfTwo)),
            "reserve-oracle" => return Ok(Policy::Reserve(ReserveKind::Oracle)),
            _ => {}
        }
        let usage = "use paged<B>[-prefix][-recompute|-swap|-auto][-most-blocks][-wm<F>] (B in 1..=128, \
                     e.g. paged16-prefix) or reserve-max, reserve-pow2, reserve-oracle";
        let rest = name
            .strip_prefix("paged")
            .ok_or_else(|| bad(format!("unknown policy; {usage}")))?;
        let mut parts = rest.split('-');
        let block_size: u32 = parts
            .next()
            .and_then(|b| b.parse().ok())
            .filter(|b| (1..=128).contains(b))
            .ok_or_else(|| bad(format!("the block size must be an integer in 1..=128; {usage}")))?;
        let mut p = PagedPolicy::new(block_size);
        let mut parts = parts.peekable();
        while let Some(part) = parts.next() {
            match part {
                "prefix" => p.prefix_caching = true,
                "recompute" => p.preemption = PreemptionMode::Recompute,
                "swap" => p.preemption = PreemptionMode::Swap,
                "auto" => p.preemption = PreemptionMode::Auto,
                "most" if parts.peek() == Some(&"blocks") => {
                    parts.next();
                    p.victim = Victim::MostBlocks;
                }
                wm if wm.starts_with("wm") => {
                    p.watermark = wm[2..]
                        .parse::<f64>()
                        .ok()
                        .filter(|w| (0.0..1.0).contains(w))
                        .ok_or_else(|| {
                            bad(format!("watermark {:?} is not a fraction in [0, 1)", &wm[2..]))
                        })?;
                }
                other => return Err(bad(format!("unknown option {other:?}; {usage}"))),
            }
        }
        Ok(Policy::Paged(p))
    }
}

/// Parses a comma-separated list of policy names (`paged16,reserve-max`).
///
/// ```
/// let set = pagedkv::sim::parse_policies("paged16, reserve-oracle").unwrap();
/// assert_eq!(set.len(), 2);
/// assert!(pagedkv::sim::parse_policies("").is_err());
/// ```
pub fn parse_policies(list: &str) -> Result<Vec<Policy>, SimError> {
    let set: Vec<Policy> = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if set.is_empty() {
        return Err(SimError::Policy {
            policy: list.to_string(),
            reason: "no policy named; e.g. paged16,reserve-max".into(),
        });
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in [
            "paged1",
            "paged16-prefix",
            "paged128-swap-most-blocks",
            "paged8-auto-wm0",
            "reserve-max",
            "reserve-oracle",
        ] {
            assert_eq!(name.parse::<Policy>().unwrap().to_string(), name);
        }
        for p in Policy::default_set() {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
    }

    #[test]
    fn bad_names_say_what_works() {
        for bad in ["paged", "paged129", "paged16-lru2", "reserve-min", "paged16-wm2"] {
            let err = bad.parse::<Policy>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
