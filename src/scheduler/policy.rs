//! The scheduler's policies as small traits, with the usual choices built in:
//! which running sequence to preempt, how to preempt it, and in which order
//! waiting requests are admitted.

use std::fmt::Debug;

/// What a policy knows about a running sequence it may preempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The request's priority: lower values run first (as in vLLM).
    pub priority: i32,
    /// The request's arrival time (any monotonic unit the engine chooses).
    pub arrival: u64,
    /// Device blocks the sequence holds (shared ones included).
    pub num_blocks: u32,
    /// Tokens whose KV is computed.
    pub num_computed: u32,
}

/// Chooses victims: the running sequence with the **largest** key is preempted first.
///
/// ```
/// use pagedkv::scheduler::{Candidate, LatestArrival, VictimPolicy};
/// let early = Candidate { priority: 0, arrival: 1, num_blocks: 9, num_computed: 100 };
/// let late = Candidate { arrival: 5, ..early };
/// assert!(LatestArrival.victim_key(&late) > LatestArrival.victim_key(&early));
/// ```
pub trait VictimPolicy: Debug + Send {
    /// The sequence's rank as a victim (largest goes first).
    fn victim_key(&self, c: &Candidate) -> (i64, u64);
}

/// Latest arrival first (vLLM's default): the work lost is the youngest.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatestArrival;

impl VictimPolicy for LatestArrival {
    fn victim_key(&self, c: &Candidate) -> (i64, u64) {
        // The whole u64 range orders correctly: the first component ties.
        (0, c.arrival)
    }
}

/// Lowest priority (largest priority value) first, then latest arrival.
#[derive(Clone, Copy, Debug, Default)]
pub struct LowestPriority;

impl VictimPolicy for LowestPriority {
    fn victim_key(&self, c: &Candidate) -> (i64, u64) {
        (c.priority as i64, c.arrival)
    }
}

/// Most blocks first (frees the most memory per preemption), then latest arrival.
#[derive(Clone, Copy, Debug, Default)]
pub struct MostBlocks;

impl VictimPolicy for MostBlocks {
    fn victim_key(&self, c: &Candidate) -> (i64, u64) {
        (c.num_blocks as i64, c.arrival)
    }
}

/// How a victim is preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PreemptionMode {
    /// Free its blocks; it keeps its tokens and is prefilled again later
    /// (prefix caching may restore part of it).
    Recompute,
    /// Move its blocks to the host tier; it is swapped back in later.
    Swap,
}

/// What preempting one sequence would cost each way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreemptionCost {
    /// Tokens whose KV would be lost (to prefill again) by recompute.
    pub recompute_tokens: u64,
    /// Of those, the leading tokens the prefix cache holds now (an optimistic
    /// estimate of the hit on re-admission; 0 with prefix caching off).
    pub expected_cached_tokens: u64,
    /// Host blocks a swap-out would take (`None`: no host tier).
    pub swap_blocks: Option<u64>,
    /// Free host blocks now.
    pub free_host_blocks: u64,
    /// Tokens per block.
    pub block_size: u32,
}

/// Chooses the preemption mode for one victim. The scheduler falls back to
/// recompute when a swap is refused (no host tier, host pool full).
pub trait PreemptionModePolicy: Debug + Send {
    /// The mode for a victim with this cost.
    fn choose(&self, cost: &PreemptionCost) -> PreemptionMode;
}

/// Always recompute (vLLM v1, mistral.rs).
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysRecompute;

impl PreemptionModePolicy for AlwaysRecompute {
    fn choose(&self, _: &PreemptionCost) -> PreemptionMode {
        PreemptionMode::Recompute
    }
}

/// Swap whenever the host tier has room (vLLM v0's default for single sequences).
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysSwap;

impl PreemptionModePolicy for AlwaysSwap {
    fn choose(&self, c: &PreemptionCost) -> PreemptionMode {
        match c.swap_blocks {
            Some(n) if n <= c.free_host_blocks => PreemptionMode::Swap,
            _ => PreemptionMode::Recompute,
        }
    }
}

/// Swap when the host tier has room and recompute would cost more tokens
/// than the transfer:
///
/// `recompute_tokens − expected_cached_tokens > swap_blocks × block_size × transfer_cost_per_token`
///
/// where `transfer_cost_per_token` is what moving one token's KV out and back
/// in costs, in units of recomputing one token (measure it on your hardware:
/// PCIe time per token's KV bytes ÷ prefill time per token).
///
/// ```
/// use pagedkv::scheduler::{Automatic, PreemptionCost, PreemptionMode, PreemptionModePolicy};
/// let auto = Automatic { transfer_cost_per_token: 0.5 };
/// let cost = PreemptionCost { recompute_tokens: 100, expected_cached_tokens: 0,
///     swap_blocks: Some(7), free_host_blocks: 64, block_size: 16 };
/// assert_eq!(auto.choose(&cost), PreemptionMode::Swap);       // 100 > 56
/// let cached = PreemptionCost { expected_cached_tokens: 64, ..cost };
/// assert_eq!(auto.choose(&cached), PreemptionMode::Recompute); // 36 <= 56
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Automatic {
    /// Round-trip transfer cost of one token's KV, in recomputed tokens (0.5).
    pub transfer_cost_per_token: f64,
}

impl Default for Automatic {
    fn default() -> Self {
        Automatic {
            transfer_cost_per_token: 0.5,
        }
    }
}

impl PreemptionModePolicy for Automatic {
    fn choose(&self, c: &PreemptionCost) -> PreemptionMode {
        let Some(blocks) = c.swap_blocks.filter(|&n| n <= c.free_host_blocks) else {
            return PreemptionMode::Recompute;
        };
        let recompute = c.recompute_tokens.saturating_sub(c.expected_cached_tokens) as f64;
        let transfer = (blocks * c.block_size as u64) as f64 * self.transfer_cost_per_token;
        if recompute > transfer {
            PreemptionMode::Swap
        } else {
            PreemptionMode::Recompute
        }
    }
}

/// Orders waiting requests (and the running batch): the **smallest** key goes first.
pub trait QueueOrder: Debug + Send {
    /// The request's place in the queue.
    fn queue_key(&self, priority: i32, arrival: u64) -> (i64, u64);
}

/// First come, first served.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fcfs;

impl QueueOrder for Fcfs {
    fn queue_key(&self, _: i32, arrival: u64) -> (i64, u64) {
        (0, arrival)
    }
}

/// Lowest priority value first, then first come.
#[derive(Clone, Copy, Debug, Default)]
pub struct PriorityOrder;

impl QueueOrder for PriorityOrder {
    fn queue_key(&self, priority: i32, arrival: u64) -> (i64, u64) {
        (priority as i64, arrival)
    }
}
