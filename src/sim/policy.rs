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
    /// The host tier keeps reused blocks over never-reused ones
    /// ([`crate::Eviction::SegmentedLru`]; suffix `-slru`, with `-offload`).
    SegmentedLru,
    /// The host tier evicts first the copies the device holds again
    /// ([`crate::Eviction::Exclusive`]; suffix `-exclusive`, with `-offload`).
    Exclusive,
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
    /// Run vLLM 0.33.0's synchronous v1 scheduling instead of pagedkv's own
    /// (the `-vllm` suffix): see [`PagedPolicy::vllm`].
    pub vllm: bool,
    /// The tiered prefix cache (the `-offload` suffix, with prefix caching):
    /// evicted cached blocks go to the host tier and come back on a hit
    /// ([`crate::PrefixOffload::OnEvict`]); the host tier is
    /// [`crate::sim::Scenario::num_host_blocks`].
    pub offload: bool,
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
            vllm: false,
            offload: false,
        }
    }

    /// vLLM 0.33.0's v1 scheduling at `block_size` (`paged<B>-vllm`):
    /// prefix caching on, watermark 0, recompute the latest arrival, and the
    /// scheduler as vLLM's: prompt blocks taken chunk by chunk, no protection
    /// of a prompt in the middle of its prefill, no growth isolation, and a
    /// request whose prompt fits but whose prompt + output does not is served
    /// with its output capped at `max_model_len` (as vLLM's server clamps
    /// `max_tokens`) instead of rejected.
    ///
    /// ```
    /// use pagedkv::sim::{PagedPolicy, Policy};
    /// let p = PagedPolicy::vllm(16);
    /// assert!(p.prefix_caching && p.watermark == 0.0);
    /// assert_eq!(Policy::Paged(p).to_string(), "paged16-vllm");
    /// ```
    pub const fn vllm(block_size: u32) -> Self {
        PagedPolicy {
            block_size,
            prefix_caching: true,
            preemption: PreemptionMode::Recompute,
            victim: Victim::LatestArrival,
            watermark: 0.0,
            eviction: Eviction::Lru,
            vllm: true,
            offload: false,
        }
    }
}

/// Where a reservation baseline places a request's reservation in the KV memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Placement {
    /// One contiguous range per sequence, the lowest free range large enough
    /// (first fit, as a contiguous-tensor server allocates); the queue head
    /// waits when no free range is large enough (external fragmentation).
    FirstFit,
    /// One contiguous range per sequence of a power-of-two size (the buddy
    /// system over the whole memory, rounded down to a power of two of slots).
    Buddy,
    /// Any free slots, contiguous or not: no external fragmentation (an upper
    /// bound for the reservation systems; pagedkv's baselines before 0.2).
    Anywhere,
}

/// A reservation baseline: how much it reserves, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReservePolicy {
    /// The reservation per sequence.
    pub kind: ReserveKind,
    /// Where it goes.
    pub placement: Placement,
}

impl ReservePolicy {
    /// `kind` placed first-fit.
    pub const fn new(kind: ReserveKind) -> Self {
        ReservePolicy {
            kind,
            placement: Placement::FirstFit,
        }
    }
}

/// An allocation policy.
///
/// Names: `paged<B>` with optional suffixes `-prefix`, `-offload` (with
/// `-prefix`: the tiered prefix cache), `-slru` (with `-offload`: the host
/// tier's [`crate::Eviction::SegmentedLru`]), `-swap` / `-auto` / `-recompute`,
/// `-most-blocks`, `-wm<F>` (watermark fraction), or `-vllm` (vLLM 0.33.0's
/// scheduling, [`PagedPolicy::vllm`]) alone or with `-offload`; and
/// `reserve-max`, `reserve-pow2`, `reserve-oracle`, placed first-fit, with
/// `-buddy` (buddy allocation) or `-anywhere` (no contiguity).
///
/// ```
/// use pagedkv::sim::{Placement, Policy, ReserveKind, ReservePolicy};
/// let p: Policy = "paged32-prefix-wm0.05".parse().unwrap();
/// let Policy::Paged(paged) = p else { panic!() };
/// assert_eq!((paged.block_size, paged.prefix_caching, paged.watermark), (32, true, 0.05));
/// assert_eq!(p.to_string(), "paged32-prefix-wm0.05");
/// assert_eq!("reserve-pow2".parse::<Policy>().unwrap(), Policy::Reserve(ReservePolicy::new(ReserveKind::PowerOfTwo)));
/// let buddy = ReservePolicy { kind: ReserveKind::Oracle, placement: Placement::Buddy };
/// assert_eq!("reserve-oracle-buddy".parse::<Policy>().unwrap(), Policy::Reserve(buddy));
/// assert!("paged0".parse::<Policy>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// Paged allocation through [`crate::KvCacheManager`].
    Paged(PagedPolicy),
    /// Reserve memory per request up front.
    Reserve(ReservePolicy),
}

impl Policy {
    /// The default comparison: the paper's four systems (paged at block 16 and
    /// the three reservation baselines, first-fit), then paged at block sizes
    /// 1, 8, 32, 64, 128.
    pub fn default_set() -> Vec<Policy> {
        let mut set = vec![Policy::Paged(PagedPolicy::new(16))];
        set.extend(
            [ReserveKind::MaxLen, ReserveKind::PowerOfTwo, ReserveKind::Oracle]
                .map(|k| Policy::Reserve(ReservePolicy::new(k))),
        );
        set.extend([1, 8, 32, 64, 128].map(|b| Policy::Paged(PagedPolicy::new(b))));
        set
    }

    /// The policy's name.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

/// The tiered prefix cache's suffixes of a paged policy's name (`-offload`, then its eviction policy).
fn write_tier_suffixes(f: &mut fmt::Formatter<'_>, p: &PagedPolicy) -> fmt::Result {
    if p.offload {
        f.write_str("-offload")?;
    }
    match p.eviction {
        Eviction::Lru => Ok(()),
        Eviction::SegmentedLru => f.write_str("-slru"),
        Eviction::Exclusive => f.write_str("-exclusive"),
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Reserve(r) => {
                f.write_str(match r.kind {
                    ReserveKind::MaxLen => "reserve-max",
                    ReserveKind::PowerOfTwo => "reserve-pow2",
                    ReserveKind::Oracle => "reserve-oracle",
                })?;
                match r.placement {
                    Placement::FirstFit => Ok(()),
                    Placement::Buddy => f.write_str("-buddy"),
                    Placement::Anywhere => f.write_str("-anywhere"),
                }
            }
            Policy::Paged(p) if p.vllm => {
                write!(f, "paged{}-vllm", p.block_size)?;
                write_tier_suffixes(f, p)?;
                Ok(())
            }
            Policy::Paged(p) => {
                write!(f, "paged{}", p.block_size)?;
                if p.prefix_caching {
                    f.write_str("-prefix")?;
                }
                write_tier_suffixes(f, p)?;
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

/// The suffixes a `paged<B>` name takes.
const PAGED_SUFFIXES: &str =
    "-prefix, -offload (with -prefix), -slru or -exclusive (with -offload), -recompute, -swap, -auto, -most-blocks, -wm<F> (a fraction in [0, 1)), \
                              or -vllm (alone or with -offload)";
/// The suffixes a `reserve-<kind>` name takes.
const RESERVE_SUFFIXES: &str = "-buddy, -anywhere (default: first-fit)";

impl FromStr for Policy {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, SimError> {
        let name = s.trim().to_ascii_lowercase();
        let bad = |reason: String| SimError::Policy {
            policy: s.to_string(),
            reason,
        };
        if let Some(rest) = name.strip_prefix("reserve-") {
            let mut parts = rest.split('-');
            let kind = match parts.next() {
                Some("max") => ReserveKind::MaxLen,
                Some("pow2") => ReserveKind::PowerOfTwo,
                Some("oracle") => ReserveKind::Oracle,
                other => {
                    return Err(bad(format!(
                        "unknown reservation {:?}; use reserve-max, reserve-pow2 or reserve-oracle, \
                         with {RESERVE_SUFFIXES}",
                        other.unwrap_or("")
                    )))
                }
            };
            let mut p = ReservePolicy::new(kind);
            for part in parts {
                p.placement = match part {
                    "buddy" => Placement::Buddy,
                    "anywhere" => Placement::Anywhere,
                    "firstfit" | "first-fit" => Placement::FirstFit,
                    other => {
                        return Err(bad(format!(
                            "unknown suffix -{other}; a reservation takes {RESERVE_SUFFIXES}"
                        )))
                    }
                };
            }
            return Ok(Policy::Reserve(p));
        }
        let usage = format!(
            "use paged<B> (B in 1..=128) with {PAGED_SUFFIXES}, e.g. paged16-prefix or paged16-vllm; \
             or reserve-max, reserve-pow2, reserve-oracle with {RESERVE_SUFFIXES}"
        );
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
        let mut others = 0;
        let mut vllm = false;
        while let Some(part) = parts.next() {
            others += 1;
            match part {
                "vllm" => {
                    vllm = true;
                    others -= 1;
                }
                "prefix" => p.prefix_caching = true,
                "offload" => {
                    p.offload = true;
                    others -= 1;
                }
                "slru" => {
                    p.eviction = Eviction::SegmentedLru;
                    others -= 1;
                }
                "exclusive" => {
                    p.eviction = Eviction::Exclusive;
                    others -= 1;
                }
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
                other => {
                    return Err(bad(format!(
                        "unknown suffix -{other}; paged<B> takes {PAGED_SUFFIXES}"
                    )))
                }
            }
        }
        if vllm {
            if others > 0 {
                return Err(bad(format!(
                    "-vllm fixes every setting (prefix caching on, watermark 0, recompute the latest \
                     arrival); write paged{block_size}-vllm alone"
                )));
            }
            if p.eviction != Eviction::Lru && !p.offload {
                return Err(bad(format!(
                    "-slru and -exclusive order the host tier of -offload; write paged{block_size}-vllm-offload-slru"
                )));
            }
            return Ok(Policy::Paged(PagedPolicy {
                offload: p.offload,
                eviction: p.eviction,
                ..PagedPolicy::vllm(block_size)
            }));
        }
        if p.eviction != Eviction::Lru && !p.offload {
            return Err(bad(format!(
                "-slru and -exclusive order the host tier of -offload; write paged{block_size}-prefix-offload-slru"
            )));
        }
        if p.offload && !p.prefix_caching {
            return Err(bad(format!(
                "-offload keeps evicted prefix-cache blocks in host memory; it needs -prefix (paged{block_size}-prefix-offload)"
            )));
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
            "reserve-pow2-buddy",
            "reserve-max-anywhere",
            "paged16-vllm",
            "paged16-prefix-offload",
            "paged16-vllm-offload",
            "paged16-prefix-offload-swap",
            "paged16-vllm-offload-slru",
            "paged16-prefix-offload-slru",
            "paged16-vllm-offload-exclusive",
        ] {
            assert_eq!(name.parse::<Policy>().unwrap().to_string(), name);
        }
        for p in Policy::default_set() {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
    }

    #[test]
    fn bad_names_say_what_works() {
        for bad in [
            "paged",
            "paged129",
            "paged16-lru2",
            "reserve-min",
            "paged16-wm2",
            "paged16-vllm-swap",
            "paged16-offload",
            "paged16-prefix-slru",
            "reserve-max-best",
        ] {
            let err = bad.parse::<Policy>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
        // An unknown suffix lists the known ones.
        let err = "paged16-fast".parse::<Policy>().unwrap_err().to_string();
        for known in ["-prefix", "-swap", "-auto", "-most-blocks", "-wm", "-vllm"] {
            assert!(err.contains(known), "{err}");
        }
        let err = "reserve-max-fast".parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains("-buddy") && err.contains("-anywhere"), "{err}");
    }
}
