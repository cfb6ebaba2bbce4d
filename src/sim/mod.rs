//! Trace-driven simulator: replay a workload through an allocation policy and
//! measure what the KV memory holds, step by step, and what it does to
//! latency under a step-time model.
//!
//! ```
//! use pagedkv::sim::{self, synthetic::SyntheticSpec, Policy, Scenario};
//! let workload = SyntheticSpec { num_requests: 200, ..Default::default() }.generate().unwrap();
//! let scenario = Scenario::default(); // OPT-13B on an A100-40GB, max_model_len 2048
//! let results = sim::compare(&scenario, &workload, &Policy::default_set()[..4]).unwrap();
//! let (paged, max) = (&results[0].summary, &results[1].summary);
//! assert!(paged.token_share > 0.95 && max.pool_token_share < paged.pool_token_share);
//! assert!(paged.latency.ttft.p50 < max.latency.ttft.p50);
//! ```
//!
//! Modules: [`workload`] (requests, their token ids, arrivals, closed-loop
//! follow-ups and think times), [`trace`] (CSV traces) and [`mooncake`]
//! (Mooncake's JSON lines), [`synthetic`] (generated workloads), [`policy`]
//! (what is compared), [`metrics`] (samples, summaries, the step-time
//! model), [`latency`] (TTFT, TPOT, end-to-end, goodput), [`prefix_bounds`]
//! (infinite-cache and offline-optimal hit rates), and the runners:
//! `reserve.rs` (reservation baselines, placed by `placement.rs`) and
//! `paged.rs` (paged allocation: the reference
//! [`crate::scheduler::Scheduler`] over a [`crate::KvCacheManager`], the
//! simulator playing the engine), both drawing arrivals from `sessions.rs`.

pub mod error;
pub mod latency;
pub mod metrics;
pub mod mooncake;
mod paged;
mod placement;
pub mod policy;
pub mod prefix_bounds;
mod reserve;
pub mod rng;
mod sessions;
pub mod synthetic;
pub mod trace;
pub mod workload;

pub use error::SimError;
pub use latency::{LatencySummary, Percentiles, Slo};
pub use metrics::{RunResult, RunSummary, StepSample, StepTimeModel, StepWork, TierSummary};
pub use policy::{
    parse_policies, Eviction, PagedPolicy, Placement, Policy, PreemptionMode, ReserveKind, ReservePolicy,
    Victim,
};
pub use workload::{Arrivals, FollowUp, SimRequest, ThinkTime, Workload};

use crate::sizing::{
    AttentionKind, CachePlan, CacheSpec, DeviceMemory, EngineRules, KvDtype, MemoryBudget, ModelLayout, GIB,
};

/// How big the KV memory is.
#[derive(Clone, Debug, PartialEq)]
pub enum KvSize {
    /// Sized by the planner: a model's cache spec and a memory budget. Each
    /// block size gets `CachePlan::new(spec, block_size, budget).num_blocks()`.
    Plan {
        /// The model's KV shape.
        spec: CacheSpec,
        /// The memory.
        budget: MemoryBudget,
    },
    /// A model given layer by layer (hybrid attention: sliding-window or
    /// chunked local layers beside full ones), sized under `rules` (vLLM's
    /// grouping into KV cache groups sharing one pool; pagedkv's manager uses
    /// every block, vLLM's null block included). The manager gets one group
    /// per planned KV cache group.
    Layout {
        /// The model's layers.
        layout: ModelLayout,
        /// The memory.
        budget: MemoryBudget,
        /// The rules that group the layers and round the budget.
        rules: EngineRules,
    },
    /// `num_blocks` blocks of `block_size` tokens; other block sizes get the
    /// same number of token slots (rounded down to whole blocks).
    Blocks {
        /// Blocks.
        num_blocks: u64,
        /// Tokens per block.
        block_size: u32,
    },
}

/// The engine a workload runs on: KV memory, limits and the step-time model.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// A label for reports.
    pub name: String,
    /// The KV memory.
    pub kv: KvSize,
    /// Longest sequence, prompt and output together (2048).
    pub max_model_len: u32,
    /// Most sequences in a batch (256, vLLM's default).
    pub max_num_seqs: u32,
    /// Most tokens in one forward pass (2048); at least `max_num_seqs`.
    /// Longer prompts are prefilled in chunks.
    pub max_num_batched_tokens: u32,
    /// Seconds per step.
    pub time_model: StepTimeModel,
    /// The latency objectives goodput counts against.
    pub slo: Slo,
    /// Host memory for swapped-out blocks (vLLM's `swap_space`, 4 GiB), used
    /// by the swap and automatic preemption modes. With [`KvSize::Blocks`] the
    /// byte size of a block is unknown: the host tier then gets as many blocks
    /// as the device.
    pub swap_space_bytes: u64,
    /// Host blocks of the host tier, overriding `swap_space_bytes` (`None`:
    /// sized from it). One host pool serves swap preemption and the tiered
    /// prefix cache (`-offload` policies).
    pub host_blocks: Option<u64>,
}

/// Bytes per token of the default model: OPT-13B's 40 layers × (K + V) × 5120 × 2 bytes.
pub const OPT_13B_BYTES_PER_TOKEN: u64 = 819_200;

impl Default for Scenario {
    /// The PagedAttention paper's setting: an OPT-13B-like model (40 layers,
    /// 40 heads × 128 = hidden 5120, fp16 KV: 800 KiB per token) on an
    /// A100-40GB (39.39 GiB as the card reports it), `gpu_memory_utilization`
    /// 0.9, 26 GB of weights, 0.25 GiB outside the framework and a 0.5 GiB
    /// activation peak (assumed): 11.26 GB (10.49 GiB) of KV cache, 13,745
    /// token slots (859 blocks of 16); `max_model_len` 2048.
    ///
    /// ```
    /// let s = pagedkv::sim::Scenario::default();
    /// assert_eq!(s.token_slots().unwrap(), 13_745);
    /// assert_eq!(s.num_blocks(16).unwrap(), 859);
    /// ```
    fn default() -> Self {
        Scenario {
            name: "OPT-13B on A100-40GB (the PagedAttention paper's setting)".into(),
            kv: KvSize::Plan {
                spec: CacheSpec::new(40, 40, 128, KvDtype::F16),
                budget: MemoryBudget::device(DeviceMemory {
                    device_bytes: 3939 * GIB / 100,
                    gpu_memory_utilization: 0.9,
                    weights_bytes: 26_000_000_000,
                    non_torch_bytes: GIB / 4,
                    activation_peak_bytes: GIB / 2,
                    cudagraph_bytes: 0,
                }),
            },
            max_model_len: 2048,
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            time_model: StepTimeModel::default(),
            slo: Slo::default(),
            swap_space_bytes: 4 * GIB,
            host_blocks: None,
        }
    }
}

/// KV bytes per token of LLaMA3-70B in bf16 over all GPUs: 80 layers × 8 KV
/// heads × 128 × (K + V) × 2 bytes = 320 KiB (40 KiB on each of 8 GPUs).
pub const LLAMA3_70B_KV_BYTES_PER_TOKEN: u64 = 327_680;

impl Scenario {
    /// The Mooncake paper's setting (Qin et al., FAST 2025), the default for
    /// Mooncake traces: LLaMA3-70B's KV shape (80 layers, 8 KV heads of 128,
    /// bf16: 320 KiB per token) on one node of 8 A800-80GB GPUs with tensor
    /// parallelism 8 (40 KiB per token on each GPU), `max_model_len` 131,072.
    ///
    /// The KV budget of one GPU, through the planner's [`MemoryBudget`]:
    /// 80 GiB (the card's 81,920 MiB; PyTorch reports ≈79.15 GiB on the
    /// A100-80GB it shares its memory with, which would give 1.3% fewer
    /// blocks) × `gpu_memory_utilization` 0.9 = 72 GiB, − 17.5 GB of weights
    /// (LLaMA3-70B's 140 GB in bf16 split over 8 GPUs) − 1 GiB outside the
    /// framework (CUDA context, NCCL buffers of TP 8, CUDA graphs) − 2 GiB of activation
    /// peak (a profile forward of 8,192 tokens; both assumptions) = 52.70 GiB:
    /// 56,588,185,856 bytes: 1,381,547 tokens, 86,346 blocks of 16.
    ///
    /// Budgets: `max_num_seqs` 256, `max_num_batched_tokens` 8,192 (longer
    /// prompts are prefilled in chunks). The step-time model is scaled to
    /// the node: 11 ms per step (17.5 GB of weights per GPU at the A800's
    /// 2,039 GB/s is 8.6 ms, plus 160 tensor-parallel all-reduces), 0.113 ms
    /// per computed token (2 × 70.6 GFLOP / 8 GPUs at 156 TFLOPS, half the
    /// A800's bf16 peak), 40 KiB of KV per token and GPU read at 2,039 GB/s.
    /// Latency objectives: first token within 10 s (a 16k-token prompt alone
    /// takes 1.8 s to prefill here), 100 ms per output token.
    ///
    /// ```
    /// let s = pagedkv::sim::Scenario::mooncake();
    /// assert_eq!(s.token_slots().unwrap(), 1_381_547);
    /// assert_eq!(s.num_blocks(16).unwrap(), 86_346);
    /// assert_eq!(s.max_model_len, 131_072);
    /// ```
    pub fn mooncake() -> Self {
        let tp = 8;
        Scenario {
            name: "LLaMA3-70B on 8x A800-80GB, TP 8 (the Mooncake paper's setting)".into(),
            kv: KvSize::Plan {
                spec: CacheSpec::new(80, 8, 128, KvDtype::Bf16).with_tensor_parallel(tp),
                budget: MemoryBudget::device(DeviceMemory {
                    device_bytes: 80 * GIB,
                    gpu_memory_utilization: 0.9,
                    weights_bytes: 140_000_000_000 / tp as u64,
                    non_torch_bytes: GIB,
                    activation_peak_bytes: 2 * GIB,
                    cudagraph_bytes: 0,
                }),
            },
            max_model_len: 131_072,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            time_model: StepTimeModel {
                base_s: 0.011,
                prefill_token_s: 0.000_113,
                decode_token_s: 0.000_113,
                kv_bytes_per_token: (LLAMA3_70B_KV_BYTES_PER_TOKEN / tp as u64) as f64,
                hbm_bytes_per_s: 2.039e12,
                pcie_bytes_per_s: 25e9,
                ..StepTimeModel::default()
            },
            slo: Slo {
                ttft_s: 10.0,
                tpot_s: 0.1,
            },
            swap_space_bytes: 4 * GIB,
            host_blocks: None,
        }
    }

    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, reason: String| Err(SimError::InvalidConfig { field, reason });
        if self.max_model_len == 0 {
            return bad("max_model_len", "must be at least 1 token".into());
        }
        if self.max_num_seqs == 0 {
            return bad("max_num_seqs", "must be at least 1".into());
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return bad(
                "max_num_batched_tokens",
                format!(
                    "{} is below max_num_seqs ({}): every running sequence decodes each step, so set it to \
                     at least {} (prompts longer than it are prefilled in chunks)",
                    self.max_num_batched_tokens, self.max_num_seqs, self.max_num_seqs
                ),
            );
        }
        self.time_model.validate()?;
        if !(self.slo.ttft_s > 0.0 && self.slo.tpot_s > 0.0) {
            return bad(
                "slo",
                format!(
                    "{:?}: both objectives must be positive seconds, e.g. 2 s and 0.1 s",
                    self.slo
                ),
            );
        }
        if let KvSize::Blocks { num_blocks: 0, .. } | KvSize::Blocks { block_size: 0, .. } = self.kv {
            return bad(
                "num_blocks",
                "the KV memory needs at least one block of at least one token".into(),
            );
        }
        Ok(())
    }

    /// The capacity plan at `block_size` (`None` for [`KvSize::Blocks`]).
    pub fn plan(&self, block_size: u32) -> Result<Option<CachePlan>, SimError> {
        Ok(match &self.kv {
            KvSize::Plan { spec, budget } => Some(CachePlan::new(spec, block_size, budget)?),
            KvSize::Layout {
                layout,
                budget,
                rules,
            } => Some(CachePlan::for_engine(layout, block_size, budget, *rules)?),
            KvSize::Blocks { .. } => None,
        })
    }

    /// The manager's KV cache groups at `block_size`: the plan's (one full
    /// attention group unless the model is given layer by layer).
    pub fn groups(&self, block_size: u32) -> Result<Vec<AttentionKind>, SimError> {
        Ok(match self.plan(block_size)? {
            Some(plan) => plan.groups().iter().map(|g| g.kind).collect(),
            None => vec![AttentionKind::Full],
        })
    }

    /// Bytes of one block at `block_size` on one GPU (`None` for [`KvSize::Blocks`]).
    pub fn bytes_per_block(&self, block_size: u32) -> Result<Option<u64>, SimError> {
        Ok(self.plan(block_size)?.map(|p| p.breakdown().bytes_per_block))
    }

    /// The same scenario with every layer planned as full attention: what an
    /// engine without hybrid support makes of the model and budget (`None`
    /// unless the model is given layer by layer).
    ///
    /// ```
    /// use pagedkv::sim::{KvSize, Scenario};
    /// use pagedkv::{AttentionKind, CacheSpec, EngineRules, KvDtype, MemoryBudget, ModelLayout, GIB};
    /// let spec = CacheSpec::new(24, 8, 64, KvDtype::Bf16);
    /// let kinds: Vec<_> = (0..24)
    ///     .map(|l| if l % 2 == 0 { AttentionKind::SlidingWindow { window: 128 } } else { AttentionKind::Full })
    ///     .collect();
    /// let s = Scenario {
    ///     kv: KvSize::Layout {
    ///         layout: ModelLayout::from_kinds(&spec, &kinds).unwrap(),
    ///         budget: MemoryBudget::direct(4 * GIB),
    ///         rules: EngineRules::vllm_v1(2048),
    ///     },
    ///     ..Scenario::default()
    /// };
    /// assert_eq!(s.groups(16).unwrap().len(), 2);
    /// let full = s.full_attention().unwrap();
    /// assert_eq!(full.groups(16).unwrap(), [AttentionKind::Full]);
    /// // Two groups of 12 layers: one block is half the bytes of a 24-layer block.
    /// assert_eq!(s.num_blocks(16).unwrap(), 2 * full.num_blocks(16).unwrap());
    /// ```
    pub fn full_attention(&self) -> Option<Scenario> {
        match &self.kv {
            KvSize::Layout {
                layout,
                budget,
                rules,
            } => Some(Scenario {
                name: format!("{} (every layer planned as full attention)", self.name),
                kv: KvSize::Layout {
                    layout: layout.all_full(),
                    budget: *budget,
                    rules: *rules,
                },
                ..self.clone()
            }),
            _ => None,
        }
    }

    /// Token slots of the KV memory (the reservation baselines' pool). A
    /// model given layer by layer counts as full attention in every layer:
    /// a reservation reserves every layer's KV for the whole length.
    pub fn token_slots(&self) -> Result<u64, SimError> {
        match &self.kv {
            KvSize::Plan { spec, budget } => Ok(CachePlan::new(spec, 1, budget)?.num_blocks()),
            KvSize::Layout {
                layout,
                budget,
                rules,
            } => Ok(CachePlan::for_engine(&layout.all_full(), 1, budget, *rules)?.num_blocks()),
            KvSize::Blocks {
                num_blocks,
                block_size,
            } => Ok(num_blocks * *block_size as u64),
        }
    }

    /// Host blocks of `block_size` tokens the swap space holds.
    ///
    /// ```
    /// let s = pagedkv::sim::Scenario::default(); // 4 GiB of 800 KiB tokens
    /// assert_eq!(s.num_host_blocks(16).unwrap(), 4 * 1024 * 1024 / (800 * 16));
    /// ```
    pub fn num_host_blocks(&self, block_size: u32) -> Result<u64, SimError> {
        if let Some(n) = self.host_blocks {
            return Ok(n);
        }
        match &self.kv {
            KvSize::Plan { spec, budget } => {
                let budget = (*budget).with_host_swap(self.swap_space_bytes);
                Ok(CachePlan::new(spec, block_size, &budget)?.num_host_blocks())
            }
            KvSize::Layout {
                layout,
                budget,
                rules,
            } => {
                let budget = (*budget).with_host_swap(self.swap_space_bytes);
                Ok(CachePlan::for_engine(layout, block_size, &budget, *rules)?.num_host_blocks())
            }
            KvSize::Blocks { .. } => self.num_blocks(block_size),
        }
    }

    /// Blocks of `block_size` tokens the KV memory holds (every KV cache group draws from them).
    pub fn num_blocks(&self, block_size: u32) -> Result<u64, SimError> {
        match &self.kv {
            KvSize::Plan { .. } | KvSize::Layout { .. } => Ok(self
                .plan(block_size)?
                .expect("a planned scenario has a plan")
                .num_blocks()),
            KvSize::Blocks { .. } if block_size == 0 => Err(SimError::InvalidConfig {
                field: "block_size",
                reason: "must be at least 1 token".into(),
            }),
            KvSize::Blocks { .. } => Ok(self.token_slots()? / block_size as u64),
        }
    }
}

/// A progress callback, called every few hundred steps with (requests done, requests in all).
pub struct Progress<'a> {
    report: Option<&'a mut dyn FnMut(u64, u64)>,
    steps: u64,
}

impl<'a> Progress<'a> {
    /// No reporting.
    pub fn none() -> Self {
        Progress {
            report: None,
            steps: 0,
        }
    }

    /// Report through `f(done, total)`.
    pub fn new(f: &'a mut dyn FnMut(u64, u64)) -> Self {
        Progress {
            report: Some(f),
            steps: 0,
        }
    }

    pub(crate) fn tick(&mut self, summary: &RunSummary) {
        self.steps += 1;
        if self.steps % 512 == 0 {
            if let Some(f) = self.report.as_mut() {
                f(summary.finished + summary.rejected(), summary.requests);
            }
        }
    }
}

/// Replays `workload` on `scenario` under `policy`. Deterministic: the same
/// inputs give the same result.
pub fn simulate(scenario: &Scenario, workload: &Workload, policy: &Policy) -> Result<RunResult, SimError> {
    simulate_with_progress(scenario, workload, policy, &mut Progress::none())
}

/// [`simulate`] reporting progress.
pub fn simulate_with_progress(
    scenario: &Scenario,
    workload: &Workload,
    policy: &Policy,
    progress: &mut Progress<'_>,
) -> Result<RunResult, SimError> {
    scenario.validate()?;
    if let Some(r) = workload
        .requests
        .iter()
        .find(|r| r.n == 0 || r.n > u16::MAX as u32)
    {
        return Err(SimError::InvalidConfig {
            field: "n",
            reason: format!("request {} has {} parallel samples; use 1..=65535", r.id, r.n),
        });
    }
    match policy {
        Policy::Paged(p) => paged::run_paged(scenario, workload, p, progress),
        Policy::Reserve(r) => reserve::run_reserve(scenario, workload, *r, progress),
    }
}

/// Runs every policy on the same workload, in order.
pub fn compare(
    scenario: &Scenario,
    workload: &Workload,
    policies: &[Policy],
) -> Result<Vec<RunResult>, SimError> {
    policies.iter().map(|p| simulate(scenario, workload, p)).collect()
}

/// A rate, factor or time as the simulator prints it (in headers and error
/// messages): plain, or in scientific notation when huge or tiny (`{}` of a
/// valid `1e308` prints 309 digits).
///
/// ```
/// use pagedkv::sim::short_number;
/// assert_eq!(short_number(2.5), "2.5");
/// assert_eq!(short_number(1e308), "1e308");
/// assert_eq!(short_number(1e-300), "1e-300");
/// ```
pub fn short_number(v: f64) -> String {
    if v != 0.0 && !(1e-6..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod number_tests {
    use super::short_number;

    #[test]
    fn numbers_stay_short() {
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(1e308), "1e308");
        assert_eq!(short_number(1e-300), "1e-300");
        assert_eq!(short_number(4000.0), "4000");
    }
}
