//! Trace-driven simulator: replay a workload through an allocation policy and
//! measure what the KV memory holds, step by step.
//!
//! ```
//! use pagedkv::sim::{self, synthetic::SyntheticSpec, Policy, Scenario};
//! let workload = SyntheticSpec { num_requests: 200, ..Default::default() }.generate().unwrap();
//! let scenario = Scenario::default(); // OPT-13B on an A100-40GB, max_model_len 2048
//! let results = sim::compare(&scenario, &workload, &Policy::default_set()[..4]).unwrap();
//! let (paged, max) = (&results[0].summary, &results[1].summary);
//! assert!(paged.token_share > 0.95 && max.token_share < paged.token_share);
//! ```
//!
//! Modules: [`workload`] (requests and their token ids), [`trace`] (CSV
//! traces), [`synthetic`] (generated workloads), [`policy`] (what is
//! compared), [`metrics`] (samples, summaries, the step-time model), and the
//! runners: `reserve.rs` (reservation baselines) and `paged.rs` (paged
//! allocation: the reference [`crate::scheduler::Scheduler`] over a
//! [`crate::KvCacheManager`], the simulator playing the engine).

pub mod error;
pub mod metrics;
mod paged;
pub mod policy;
mod reserve;
pub mod rng;
pub mod synthetic;
pub mod trace;
pub mod workload;

pub use error::SimError;
pub use metrics::{RunResult, RunSummary, StepSample, StepTimeModel};
pub use policy::{parse_policies, Eviction, PagedPolicy, Policy, PreemptionMode, ReserveKind, Victim};
pub use workload::{Arrivals, SimRequest, Workload};

use crate::sizing::{CachePlan, CacheSpec, DeviceMemory, KvDtype, MemoryBudget, GIB};

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
    /// Most tokens in one forward pass (2048, vLLM's default without chunked
    /// prefill: at least `max_model_len`, since a prompt is prefilled whole).
    pub max_num_batched_tokens: u32,
    /// Seconds per step.
    pub time_model: StepTimeModel,
    /// Host memory for swapped-out blocks (vLLM's `swap_space`, 4 GiB), used
    /// by the swap and automatic preemption modes. With [`KvSize::Blocks`] the
    /// byte size of a block is unknown: the host tier then gets as many blocks
    /// as the device.
    pub swap_space_bytes: u64,
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
            swap_space_bytes: 4 * GIB,
        }
    }
}

impl Scenario {
    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field, reason: String| Err(SimError::InvalidConfig { field, reason });
        if self.max_model_len == 0 {
            return bad("max_model_len", "must be at least 1 token".into());
        }
        if self.max_num_seqs == 0 {
            return bad("max_num_seqs", "must be at least 1".into());
        }
        if self.max_num_batched_tokens < self.max_model_len || self.max_num_batched_tokens < self.max_num_seqs
        {
            return bad(
                "max_num_batched_tokens",
                format!(
                    "{} is below max_model_len ({}) or max_num_seqs ({}): prompts are prefilled whole and every \
                     running sequence decodes each step, so set it to at least {}",
                    self.max_num_batched_tokens,
                    self.max_model_len,
                    self.max_num_seqs,
                    self.max_model_len.max(self.max_num_seqs)
                ),
            );
        }
        let t = &self.time_model;
        if !(t.base_s >= 0.0 && t.per_token_s >= 0.0 && t.base_s + t.per_token_s > 0.0) {
            return bad(
                "time_model",
                format!("{t:?}: both terms must be ≥ 0 and one > 0, e.g. 0.020 s + 0.00015 s/token"),
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

    /// Token slots of the KV memory (the reservation baselines' pool).
    pub fn token_slots(&self) -> Result<u64, SimError> {
        match &self.kv {
            KvSize::Plan { spec, budget } => Ok(CachePlan::new(spec, 1, budget)?.num_blocks()),
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
        match &self.kv {
            KvSize::Plan { spec, budget } => {
                let budget = (*budget).with_host_swap(self.swap_space_bytes);
                Ok(CachePlan::new(spec, block_size, &budget)?.num_host_blocks())
            }
            KvSize::Blocks { .. } => self.num_blocks(block_size),
        }
    }

    /// Blocks of `block_size` tokens the KV memory holds.
    pub fn num_blocks(&self, block_size: u32) -> Result<u64, SimError> {
        match &self.kv {
            KvSize::Plan { spec, budget } => Ok(CachePlan::new(spec, block_size, budget)?.num_blocks()),
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
        Policy::Reserve(kind) => reserve::run_reserve(scenario, workload, *kind, progress),
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
