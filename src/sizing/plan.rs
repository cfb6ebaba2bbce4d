//! [`CachePlan`]: a layout and a budget sized into blocks under an engine's rules.

use crate::error::PlanError;

use super::advice::utilization_to_fit;
use super::groups::check_page_sizes;
use super::{
    Alternative, CacheSpec, CapacityAdvice, ConcurrencyAdvice, DeviceMemory, EngineRules, KvCacheGroup,
    KvDtype, KvMemory, MemoryBudget, ModelLayout, NoKvMemory, MAX_BLOCK_SIZE,
};

/// The sizes a plan was computed from and what they come to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanBreakdown {
    /// Bytes one token takes in every layer on one GPU (the largest pipeline stage).
    pub bytes_per_token: u64,
    /// Bytes one block id takes on one GPU: the largest group's layers × their
    /// pages, on the largest pipeline stage (all layers of a uniform model).
    pub bytes_per_block: u64,
    /// Bytes given to the KV cache (before rounding down to whole blocks).
    pub kv_bytes: u64,
    /// Bytes of `kv_bytes` left over after the last whole block.
    pub unused_bytes: u64,
}

/// How many blocks fit, how many tokens they hold, and the checks on top.
///
/// ```
/// use pagedkv::{CachePlan, CacheSpec, KvDtype, MemoryBudget};
/// let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
/// let plan = CachePlan::new(&spec, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
/// assert_eq!(plan.num_blocks(), 4_896);
/// assert_eq!(plan.token_capacity(), 78_336);
/// let err = plan.check_max_model_len(128_000).unwrap_err();
/// assert!(err.to_string().starts_with(
///     "The model's max seq len (128000) is larger than the maximum number of tokens \
///      that can be stored in KV cache (78336)."));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CachePlan {
    spec: CacheSpec,
    layout: ModelLayout,
    rules: EngineRules,
    groups: Vec<KvCacheGroup>,
    block_size: u32,
    budget: MemoryBudget,
    /// Bytes per block on each pipeline stage (the largest is `breakdown.bytes_per_block`).
    stage_bytes_per_block: Vec<u64>,
    num_blocks: u64,
    num_host_blocks: u64,
    breakdown: PlanBreakdown,
}

/// Whether a sequence fits on one pipeline stage, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StageFit {
    stage: u32,
    /// KV bytes one `max_model_len` sequence needs on this stage.
    needed: u64,
    /// KV bytes it may use there (the budget less the engine's reserved blocks).
    available: u64,
}

impl CachePlan {
    /// Sizes a uniform model's cache as vLLM's V0 engine did (the planner's
    /// first rules, [`EngineRules::VllmV0`]): `floor(KV bytes / bytes per block)`
    /// blocks, every layer full attention.
    ///
    /// Fails with [`PlanError::NoKvMemory`] when weights, activations and
    /// non-torch memory leave nothing for the cache (the message gives the
    /// breakdown), and [`PlanError::BelowOneBlock`] when what is left does not
    /// hold a single block.
    pub fn new(spec: &CacheSpec, block_size: u32, budget: &MemoryBudget) -> Result<Self, PlanError> {
        spec.validate()?;
        let mut plan = Self::for_engine(
            &ModelLayout::uniform(spec),
            block_size,
            budget,
            EngineRules::VllmV0,
        )?;
        plan.spec = *spec;
        Ok(plan)
    }

    /// Sizes the cache of a model given layer by layer, under an engine's rules:
    /// the layers are grouped ([`groups`](Self::groups)), one block id takes
    /// the largest group's layers × their pages on the largest pipeline stage,
    /// and `floor(KV bytes / bytes per block)` blocks fit.
    ///
    /// Fails like [`new`](Self::new), with [`PlanError::OnlyNullBlock`] when
    /// the engine would keep the only block for itself, and
    /// [`PlanError::PageSizeMismatch`] when groups of different page sizes would
    /// have to share the pool.
    pub fn for_engine(
        layout: &ModelLayout,
        block_size: u32,
        budget: &MemoryBudget,
        rules: EngineRules,
    ) -> Result<Self, PlanError> {
        layout.validate()?;
        budget.validate()?;
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(PlanError::InvalidConfig {
                field: "block_size",
                reason: format!("{block_size} is outside 1..={MAX_BLOCK_SIZE}; 16 is the usual choice"),
            });
        }
        // The block arithmetic multiplies in u64: refuse shapes whose largest
        // block would overflow instead of panicking (or wrapping) there.
        let per_layer_max = (0..layout.layers.len())
            .map(|i| layout.spec_at(i).bytes_per_token())
            .max()
            .unwrap_or(0);
        if per_layer_max
            .checked_mul(layout.layers.len() as u64)
            .and_then(|t| t.checked_mul(MAX_BLOCK_SIZE as u64))
            .is_none()
        {
            return Err(PlanError::InvalidConfig {
                field: "num_layers × num_kv_heads × head_dim",
                reason: "one block's KV cache would exceed 2^64 bytes; check the model shape".into(),
            });
        }
        let groups = rules.groups(layout);
        if groups.len() > 1 {
            check_page_sizes(layout, block_size)?;
        }
        let stage_bytes_per_block: Vec<u64> = (0..layout.pipeline_parallel_size)
            .map(|s| {
                let stage = layout.stage_layers(s);
                groups
                    .iter()
                    .map(|g| {
                        g.layers
                            .iter()
                            .filter(|&&l| stage.contains(&(l as usize)))
                            .map(|&l| layout.page_bytes_at(l as usize, block_size))
                            .sum::<u64>()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let bytes_per_block = stage_bytes_per_block.iter().copied().max().unwrap_or(0);
        let reserved = rules.reserved_blocks();
        let kv = rules.kv_bytes(budget);
        if kv <= 0 {
            let KvMemory::Device(d) = budget.kv else {
                unreachable!("a direct budget is a u64 and only a device budget can go negative or zero")
            };
            let blocks = (reserved + 1).saturating_mul(bytes_per_block);
            return Err(PlanError::NoKvMemory(Box::new(NoKvMemory::new(d, blocks, rules))));
        }
        let kv_bytes = kv as u64;
        let num_blocks = kv_bytes / bytes_per_block;
        if num_blocks == 0 {
            return Err(PlanError::BelowOneBlock {
                kv_bytes,
                bytes_per_block,
            });
        }
        if num_blocks <= reserved {
            return Err(PlanError::OnlyNullBlock {
                kv_bytes,
                bytes_per_block,
            });
        }
        Ok(CachePlan {
            spec: layout.representative_spec(),
            layout: layout.clone(),
            rules,
            groups,
            block_size,
            budget: *budget,
            stage_bytes_per_block,
            num_blocks,
            num_host_blocks: budget.host_swap_bytes / bytes_per_block,
            breakdown: PlanBreakdown {
                bytes_per_token: layout.bytes_per_token(),
                bytes_per_block,
                kv_bytes,
                unused_bytes: kv_bytes - num_blocks * bytes_per_block,
            },
        })
    }

    /// Device blocks that fit: `floor(KV bytes / bytes per block)`, including
    /// the engine's reserved blocks (vLLM's null block; see
    /// [`usable_blocks`](Self::usable_blocks)).
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Blocks sequences can hold: [`num_blocks`](Self::num_blocks) less the
    /// engine's reserved blocks (one under vLLM V1, none under V0 or in
    /// pagedkv's own manager, which has no null block).
    pub fn usable_blocks(&self) -> u64 {
        self.num_blocks - self.rules.reserved_blocks()
    }

    /// Host (swap) blocks that fit in the host budget.
    pub fn num_host_blocks(&self) -> u64 {
        self.num_host_blocks
    }

    /// Tokens the device blocks hold in one group's table: `num_blocks × block_size`
    /// (a uniform model's token capacity; a hybrid model's groups share the blocks,
    /// see [`blocks_per_seq`](Self::blocks_per_seq)).
    pub fn token_capacity(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The attention shape the plan was made for (for a layout given layer by
    /// layer: the first layer's storage with every layer counted; see
    /// [`layout`](Self::layout)).
    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// The layers the plan was made for.
    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    /// The rules the plan follows.
    pub fn rules(&self) -> EngineRules {
        self.rules
    }

    /// The KV cache groups, in group order, each with its attention kind and
    /// real and padded layer counts. The engine keeps one block table per group
    /// per sequence; all groups draw from the one pool of
    /// [`num_blocks`](Self::num_blocks) blocks (see [`KvCacheGroup`] for what
    /// one block holds). A uniform model has one group of every layer.
    pub fn groups(&self) -> &[KvCacheGroup] {
        &self.groups
    }

    /// The budget the plan was made from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Sizes and leftovers.
    pub fn breakdown(&self) -> &PlanBreakdown {
        &self.breakdown
    }

    /// Blocks one sequence of `max_model_len` tokens takes from the pool under
    /// the plan's rules: per group, what one of its layers keeps (all of it for
    /// full attention; under vLLM V1, a sliding or chunked group's window plus
    /// the tokens in flight), summed over the groups.
    ///
    /// ```
    /// # use pagedkv::{AttentionKind, CachePlan, CacheSpec, EngineRules, KvDtype, MemoryBudget, ModelLayout, GIB};
    /// // Mistral-7B: 32 layers, all sliding (4096 tokens).
    /// let spec = CacheSpec::new(32, 8, 128, KvDtype::Bf16);
    /// let layout = ModelLayout::from_kinds(&spec, &[AttentionKind::SlidingWindow { window: 4096 }; 32]).unwrap();
    /// let v1 = CachePlan::for_engine(&layout, 16, &MemoryBudget::direct(2 * GIB), EngineRules::vllm_v1(2048)).unwrap();
    /// assert_eq!(v1.blocks_per_seq(32_768), (4095 + 4096_u64).div_ceil(16) + 1);
    /// assert!(v1.fits(32_768));
    /// let v0 = CachePlan::for_engine(&layout, 16, &MemoryBudget::direct(2 * GIB), EngineRules::VllmV0).unwrap();
    /// assert_eq!(v0.blocks_per_seq(32_768), 2048);
    /// assert!(!v0.fits(32_768));
    /// ```
    pub fn blocks_per_seq(&self, max_model_len: u64) -> u64 {
        self.rules
            .blocks_per_seq(&self.groups, max_model_len, self.block_size)
    }

    /// Whether one sequence of `max_model_len` tokens fits on every GPU.
    pub fn fits(&self, max_model_len: u64) -> bool {
        self.first_failing_stage(max_model_len).is_none()
    }

    /// The largest `max_model_len` in `1..=upper` that fits, 0 when none does
    /// (vLLM V1's "estimated maximum model length", found by its binary search).
    pub fn largest_max_model_len(&self, upper: u64) -> u64 {
        (0..self.layout.pipeline_parallel_size)
            .map(|s| self.largest_on_stage(s, upper))
            .min()
            .unwrap_or(0)
    }

    /// How many sequences of `tokens_per_seq` tokens fit in the cache at once
    /// (usable blocks over the blocks one takes). vLLM logs this as "maximum concurrency".
    ///
    /// ```
    /// # use pagedkv::{CachePlan, CacheSpec, KvDtype, MemoryBudget};
    /// # let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
    /// let plan = CachePlan::new(&spec, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
    /// assert_eq!(plan.max_concurrency(32_768), 2);
    /// ```
    pub fn max_concurrency(&self, tokens_per_seq: u64) -> u64 {
        let per_seq = self.blocks_per_seq(tokens_per_seq.max(1)).max(1);
        self.usable_blocks() / per_seq
    }

    /// Checks that one sequence of `max_model_len` tokens fits; otherwise the
    /// error carries the engine's message and the settings that would make it fit.
    pub fn check_max_model_len(&self, max_model_len: u64) -> Result<(), PlanError> {
        if max_model_len == 0 {
            return Err(PlanError::InvalidConfig {
                field: "max_model_len",
                reason: "must be at least 1 token".into(),
            });
        }
        match self.first_failing_stage(max_model_len) {
            None => Ok(()),
            Some(fail) => Err(PlanError::MaxModelLenTooLarge(Box::new(
                self.advice_for(max_model_len, fail),
            ))),
        }
    }

    /// Concurrency advice for a deployment running sequences of up to
    /// `max_model_len` tokens (average `avg_seq_len` when known).
    pub fn concurrency(
        &self,
        max_model_len: u64,
        avg_seq_len: Option<u64>,
        max_num_seqs: Option<u64>,
    ) -> ConcurrencyAdvice {
        ConcurrencyAdvice {
            max_model_len,
            full_length_seqs: self.max_concurrency(max_model_len),
            avg_seq_len,
            avg_length_seqs: avg_seq_len.map(|l| self.max_concurrency(l)),
            max_num_seqs,
        }
    }

    /// What stage `stage` needs and has for one sequence of `max_model_len`.
    fn stage_fit(&self, stage: u32, max_model_len: u64) -> StageFit {
        let bpb = self.stage_bytes_per_block[stage as usize];
        // Saturates for absurd lengths: "needs more than 2^64 bytes" is still a refusal.
        let needed = self.blocks_per_seq(max_model_len).saturating_mul(bpb);
        let reserved = self.rules.reserved_blocks().saturating_mul(bpb);
        StageFit {
            stage,
            needed,
            available: self.breakdown.kv_bytes.saturating_sub(reserved),
        }
    }

    /// The first stage (in order, as vLLM checks its workers) where one
    /// `max_model_len` sequence does not fit.
    fn first_failing_stage(&self, max_model_len: u64) -> Option<StageFit> {
        (0..self.layout.pipeline_parallel_size)
            .map(|s| self.stage_fit(s, max_model_len))
            .find(|f| f.needed > f.available)
    }

    /// vLLM's binary search for the largest length in `1..=upper` fitting on `stage`.
    fn largest_on_stage(&self, stage: u32, upper: u64) -> u64 {
        let fits = |len: u64| {
            let f = self.stage_fit(stage, len);
            f.needed <= f.available
        };
        if upper == 0 || !fits(1) {
            return 0;
        }
        let (mut left, mut right, mut best) = (1u64, upper, 1u64);
        while left <= right {
            let mid = left + (right - left) / 2;
            if fits(mid) {
                best = mid;
                left = mid + 1;
            } else {
                right = mid - 1;
            }
        }
        best
    }

    /// This plan's layout with another dtype or parallelism, budget and rules kept (None when that plan fails).
    fn alternative(
        &self,
        layout: &ModelLayout,
        budget: &MemoryBudget,
        max_model_len: u64,
    ) -> Option<Alternative> {
        let plan = CachePlan::for_engine(layout, self.block_size, budget, self.rules).ok()?;
        Some(Alternative {
            fits: plan.fits(max_model_len),
            largest_max_model_len: plan.largest_max_model_len(max_model_len),
            token_capacity: plan.token_capacity(),
        })
    }

    fn advice_for(&self, max_model_len: u64, fail: StageFit) -> CapacityAdvice {
        let blocks = self.blocks_per_seq(max_model_len);
        // The smallest KV budget per GPU that fits: the sequence's blocks plus
        // the reserved ones, on the stage with the largest blocks.
        let min_kv_bytes = blocks
            .saturating_add(self.rules.reserved_blocks())
            .saturating_mul(self.breakdown.bytes_per_block);
        let utilization = match self.budget.kv {
            KvMemory::Device(d) => Some(utilization_to_fit(&d, min_kv_bytes, self.rules)),
            KvMemory::Direct { .. } => None,
        };
        let fp8 = (self.layout.dtype.bytes() > 1)
            .then(|| {
                self.alternative(
                    &self.layout.with_dtype(KvDtype::Fp8E4m3),
                    &self.budget,
                    max_model_len,
                )
            })
            .flatten();
        let tp = self.layout.tensor_parallel_size.saturating_mul(2);
        let tp_budget = match self.budget.kv {
            // Weights split across the ranks; activations and non-torch memory are per GPU.
            KvMemory::Device(d) => MemoryBudget {
                kv: KvMemory::Device(DeviceMemory {
                    weights_bytes: d.weights_bytes / 2,
                    ..d
                }),
                ..self.budget
            },
            KvMemory::Direct { .. } => self.budget,
        };
        let tensor_parallel = self
            .alternative(&self.layout.with_tensor_parallel(tp), &tp_budget, max_model_len)
            .map(|a| (tp, a));
        let (estimated, largest) = match self.rules {
            EngineRules::VllmV0 => (self.token_capacity(), self.token_capacity()),
            _ => (
                self.largest_on_stage(fail.stage, max_model_len),
                self.largest_max_model_len(max_model_len),
            ),
        };
        CapacityAdvice {
            rules: self.rules,
            max_model_len,
            token_capacity: self.token_capacity(),
            estimated_max_model_len: estimated,
            largest_max_model_len: largest,
            needed_kv_bytes: fail.needed,
            kv_bytes: fail.available,
            min_kv_bytes,
            utilization,
            fp8,
            tensor_parallel,
        }
    }
}
