//! Whose rules size the cache: vLLM's V0 engine (the planner's first rule set)
//! or vLLM 0.33.0's V1 engine.
//!
//! The rules decide four things: how the usable memory is rounded, how the
//! layers are grouped, how many blocks one sequence of `max_model_len` tokens
//! needs, and how many blocks the engine keeps for itself.

use super::groups::{single_group, vllm_groups};
use super::{AttentionKind, KvCacheGroup, KvMemory, MemoryBudget, ModelLayout};

/// The settings of vLLM 0.33.0's V1 engine that change the sizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VllmV1Rules {
    /// Tokens scheduled but not yet processed (vLLM's `max_in_flight_tokens`):
    /// `max_num_batched_tokens` × the batches in flight, 2 under the default
    /// async scheduling (pipeline stages + 1 with pipeline parallelism, the
    /// stages alone without async scheduling). Sliding-window and chunked
    /// layers keep blocks for them.
    pub max_in_flight_tokens: u64,
    /// vLLM's hybrid KV cache manager (on by default). Off
    /// (`--disable-hybrid-kv-cache-manager`), a model with full-attention
    /// layers has its sliding and chunked layers sized as full attention too.
    pub hybrid_kv_cache_manager: bool,
}

/// Whose rules turn a budget into blocks and decide whether `max_model_len` fits.
///
/// ```
/// use pagedkv::{CachePlan, CacheSpec, EngineRules, KvDtype, MemoryBudget, ModelLayout};
/// let layout = ModelLayout::uniform(&CacheSpec::new(28, 2, 128, KvDtype::Bf16));
/// let budget = MemoryBudget::direct(2_246_049_792);
/// let v0 = CachePlan::for_engine(&layout, 16, &budget, EngineRules::VllmV0).unwrap();
/// let v1 = CachePlan::for_engine(&layout, 16, &budget, EngineRules::vllm_v1(2048)).unwrap();
/// // Same 4896 blocks; vLLM 0.33.0 keeps one as its null block.
/// assert_eq!((v0.num_blocks(), v1.num_blocks()), (4896, 4896));
/// assert_eq!((v0.largest_max_model_len(128_000), v1.largest_max_model_len(128_000)), (78_336, 78_320));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineRules {
    /// vLLM's V0 engine, the rules `pagedkv plan` first followed: every layer
    /// sized as full attention in one group, usable memory
    /// `floor(total × utilization)`, every block holds tokens, and
    /// `max_model_len` fits when `ceil(max_model_len / block_size)` blocks do.
    VllmV0,
    /// vLLM 0.33.0's V1 engine: usable memory `ceil(total × utilization)`,
    /// one block held back as the null block, sliding-window and chunked layers
    /// in their own KV cache groups sized by their window and the tokens in
    /// flight, all groups sharing one pool.
    VllmV1(VllmV1Rules),
}

impl EngineRules {
    /// vLLM 0.33.0's defaults: async scheduling (2 batches of
    /// `max_num_batched_tokens` in flight), hybrid KV cache manager on.
    pub const fn vllm_v1(max_num_batched_tokens: u64) -> Self {
        EngineRules::VllmV1(VllmV1Rules {
            max_in_flight_tokens: max_num_batched_tokens.saturating_mul(2),
            hybrid_kv_cache_manager: true,
        })
    }

    /// The name `pagedkv plan --engine` takes: `vllm-v0`, `vllm-v1`.
    pub const fn name(self) -> &'static str {
        match self {
            EngineRules::VllmV0 => "vllm-v0",
            EngineRules::VllmV1(_) => "vllm-v1",
        }
    }

    /// Blocks the engine keeps for itself (vLLM V1's null block).
    pub const fn reserved_blocks(self) -> u64 {
        match self {
            EngineRules::VllmV0 => 0,
            EngineRules::VllmV1(_) => 1,
        }
    }

    /// Bytes the budget leaves for the KV cache on one GPU, rounded as the
    /// engine rounds `total × utilization`; negative when nothing is left.
    pub fn kv_bytes(self, budget: &MemoryBudget) -> i128 {
        match (self, budget.kv) {
            (_, KvMemory::Direct { kv_cache_bytes }) => kv_cache_bytes as i128,
            (EngineRules::VllmV0, KvMemory::Device(d)) => d.kv_bytes(),
            (EngineRules::VllmV1(_), KvMemory::Device(d)) => d.kv_bytes_rounded_up(),
        }
    }

    /// The KV cache groups of `layout` under these rules.
    pub(super) fn groups(self, layout: &ModelLayout) -> Vec<KvCacheGroup> {
        match self {
            EngineRules::VllmV0 => single_group(&layout.all_full()),
            EngineRules::VllmV1(r) => {
                let has_full = layout.layers.iter().any(|l| l.kind == AttentionKind::Full);
                if !r.hybrid_kv_cache_manager && has_full {
                    single_group(&layout.all_full())
                } else {
                    vllm_groups(layout)
                }
            }
        }
    }

    /// Blocks one sequence of `max_model_len` tokens needs from the pool: the
    /// sum over the groups of what one layer of each group keeps.
    pub(super) fn blocks_per_seq(self, groups: &[KvCacheGroup], max_model_len: u64, block_size: u32) -> u64 {
        let per_group = |g: &KvCacheGroup| match self {
            EngineRules::VllmV0 => AttentionKind::Full.vllm_max_blocks_per_seq(max_model_len, 0, block_size),
            EngineRules::VllmV1(r) => {
                g.kind
                    .vllm_max_blocks_per_seq(max_model_len, r.max_in_flight_tokens, block_size)
            }
        };
        groups
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(per_group(g)))
    }
}
