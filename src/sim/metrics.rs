//! What a run measures: one [`StepSample`] per step and a [`RunSummary`]
//! (with the latencies of [`super::latency`]); the [`StepTimeModel`] that
//! turns a step's work into seconds.
//!
//! Every step's KV memory (in token slots, so that block sizes compare) splits as
//!
//! ```text
//! total_slots    = reserved_slots + free_slots
//! reserved_slots = token_slots + internal_fragmentation + reservation_waste
//! ```
//!
//! - `token_slots`: slots holding a token's keys and values (a slot shared by
//!   several sequences counts once);
//! - `reservation_waste`: slots reserved for tokens a request will generate
//!   later (reservation baselines only; paged allocation reserves nothing ahead);
//! - `internal_fragmentation`: reserved slots that will never hold a token
//!   (the unfilled tail of a paged sequence's last block; a reservation's
//!   slots past the KV it will hold, prompt + output − 1: the last sampled
//!   token's KV is never stored);
//! - `free_slots`: slots no running request holds (with prefix caching, cached
//!   blocks no sequence uses count as free: they are reusable at once).
//!
//! The summary's shares weigh every step alike: `pool_token_share = Σ_steps
//! token_slots / Σ_steps total_slots` is the share of the whole KV memory
//! holding token states, the PagedAttention paper's Figure 2 measure (96.3 %
//! for vLLM, 20.4–38.2 % for reservation systems); `pool_waste_share`,
//! `pool_fragmentation_share` and `free_share` split the rest (free memory
//! that a waiting request cannot use is external fragmentation). The
//! `token_share`, `waste_share` and `fragmentation_share` divide by the
//! memory requests hold (`Σ reserved_slots`) instead.

use crate::sim::error::SimError;
use crate::sim::latency::{LatencyLog, LatencySummary, Slo};
use crate::{AttentionKind, ModelLayout};

/// The KV memory and the batch at the end of one step (before finished
/// requests release their memory).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepSample {
    /// Step number, from 0.
    pub step: u64,
    /// Simulated time at the start of the step, seconds.
    pub time: f64,
    /// Token slots of the KV memory.
    pub total_slots: u64,
    /// Slots held by running requests.
    pub reserved_slots: u64,
    /// Slots holding token states.
    pub token_slots: u64,
    /// Reserved slots that will never hold a token.
    pub internal_fragmentation: u64,
    /// Reserved slots waiting for tokens not generated yet.
    pub reservation_waste: u64,
    /// Slots no running request holds.
    pub free_slots: u64,
    /// Sequences in the batch (each parallel sample counts).
    pub running: u32,
    /// Requests arrived and waiting (preempted by recompute included).
    pub waiting: u32,
    /// Tokens the step's forward pass processed (prompt tokens + one per decoding sequence).
    pub batched_tokens: u32,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Requests finished so far.
    pub finished: u64,
    /// Tokens of the sequences on the device (each sequence counts its own;
    /// paged runs only).
    pub context_tokens: u64,
    /// Blocks in use (every KV cache group; paged runs only).
    pub used_blocks: u64,
}

/// What one step computed, the input of the [`StepTimeModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepWork {
    /// Prompt tokens computed (prefill chunks, and tokens recomputed after a
    /// preemption); cached prompt tokens are not computed and not counted.
    pub prefill_tokens: u64,
    /// Sequences that decoded one token.
    pub decode_tokens: u64,
    /// Tokens of KV the decoding sequences attend to (their context lengths).
    pub context_tokens: u64,
    /// Tokens of KV moved between device and host (swap out and in).
    pub transfer_tokens: u64,
    /// Per entry of [`StepTimeModel::local_layers`]: tokens of KV the
    /// decoding sequences attend to in those layers (a sliding window reads
    /// at most its window, a chunked layer its chunk so far).
    pub local_read_tokens: [u64; LOCAL_KINDS],
}

/// Kinds of local (sliding-window or chunked) layers the step-time model
/// tells apart; a model with more counts the rest as full attention.
pub const LOCAL_KINDS: usize = 2;

/// Layers whose attention reads only part of the context, with their share
/// of the KV bytes per token: what the step-time model charges for decode
/// attention in them. Empty for a model of full-attention layers.
///
/// ```
/// use pagedkv::sim::metrics::LocalLayers;
/// use pagedkv::{AttentionKind, CacheSpec, KvDtype, ModelLayout};
/// // gpt-oss-20b: 24 layers, sliding (128 tokens) and full alternating.
/// let kinds: Vec<_> = (0..24)
///     .map(|i| if i % 2 == 0 { AttentionKind::SlidingWindow { window: 128 } } else { AttentionKind::Full })
///     .collect();
/// let layout = ModelLayout::from_kinds(&CacheSpec::new(24, 8, 64, KvDtype::Bf16), &kinds).unwrap();
/// let local = LocalLayers::of(&layout);
/// assert_eq!(local.kinds[0], Some((AttentionKind::SlidingWindow { window: 128 }, 0.5)));
/// // A decode at position 10,000 reads 128 tokens in half the layers:
/// let mut reads = [0; 2];
/// local.add_reads(10_000, 1, &mut reads);
/// assert_eq!(reads, [128, 0]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LocalLayers {
    /// Up to [`LOCAL_KINDS`] local kinds, each with its share (0..=1) of the
    /// KV bytes per token.
    pub kinds: [Option<(AttentionKind, f64)>; LOCAL_KINDS],
}

impl LocalLayers {
    /// The local layers of `layout`, by kind, weighted by their bytes per
    /// token (kinds past [`LOCAL_KINDS`] are left out: read as full attention).
    pub fn of(layout: &ModelLayout) -> Self {
        let total = (0..layout.layers.len())
            .map(|i| layout.spec_at(i).bytes_per_token())
            .fold(0u64, u64::saturating_add);
        let mut local = LocalLayers::default();
        if total == 0 {
            return local;
        }
        let mut kinds: Vec<(AttentionKind, u64)> = Vec::new();
        for (i, layer) in layout.layers.iter().enumerate() {
            if !layer.kind.releases_blocks() {
                continue;
            }
            let bytes = layout.spec_at(i).bytes_per_token();
            match kinds.iter_mut().find(|(k, _)| *k == layer.kind) {
                Some((_, b)) => *b = b.saturating_add(bytes),
                None => kinds.push((layer.kind, bytes)),
            }
        }
        for (slot, (kind, bytes)) in local.kinds.iter_mut().zip(kinds) {
            *slot = Some((kind, bytes as f64 / total as f64));
        }
        local
    }

    /// Adds to `reads` the tokens `n` queries at position `pos` read in each
    /// local kind.
    #[inline]
    pub fn add_reads(&self, pos: u64, n: u64, reads: &mut [u64; LOCAL_KINDS]) {
        for (r, k) in reads.iter_mut().zip(&self.kinds) {
            if let Some((kind, _)) = k {
                *r += n * (pos + 1 - kind.first_needed_pos(pos));
            }
        }
    }

    /// The share of the KV bytes per token in full-attention layers.
    pub fn full_share(&self) -> f64 {
        1.0 - self.kinds.iter().flatten().map(|(_, s)| s).sum::<f64>()
    }
}

/// The step-time model: what one forward pass costs, in seconds.
///
/// ```text
/// step = base_s
///      + prefill_token_s × prefill tokens
///      + decode_token_s  × decoded tokens
///      + kv_bytes_per_token × attended tokens   / hbm_bytes_per_s
///      + kv_bytes_per_token × transferred tokens / pcie_bytes_per_s
/// ```
///
/// Attended tokens are the decoding sequences' context lengths, except in
/// local layers (`local_layers`: sliding windows, chunked attention), which
/// read at most their window: each kind's share of the bytes per token is
/// charged for the tokens it reads (`StepWork::local_read_tokens`).
///
/// `base_s` stands for reading the weights once per step (memory-bound),
/// the token terms for the matrix multiplications (compute-bound), the
/// context term for decode attention reading each sequence's KV cache, and
/// the transfer term for swap copies over PCIe. Cached prompt tokens cost
/// nothing (they are not computed); recomputed tokens cost prefill. The
/// defaults are the PagedAttention paper's OPT-13B on an A100-40GB,
/// assumptions rather than measurements:
///
/// - `base_s` 20 ms: 26 GB of fp16 weights at the A100-40GB's 1,555 GB/s
///   HBM bandwidth is 16.7 ms, plus kernel-launch and sampling overheads;
/// - `prefill_token_s` = `decode_token_s` = 0.15 ms: 2 × 13B = 26 GFLOP per
///   token at ≈175 TFLOPS achieved (56% of the A100's 312 TFLOPS fp16 peak);
/// - `kv_bytes_per_token` 819,200 (OPT-13B: 40 layers × (K + V) × 5120 × 2
///   bytes), `hbm_bytes_per_s` 1.555e12 (A100-40GB datasheet);
/// - `pcie_bytes_per_s` 25e9: PCIe 4.0 ×16 (32 GB/s per direction) at ≈80%.
///
/// Use it to compare policies, not to predict a real engine's latency.
///
/// ```
/// use pagedkv::sim::metrics::{StepTimeModel, StepWork};
/// let m = StepTimeModel::default();
/// let prefill = StepWork { prefill_tokens: 100, ..Default::default() };
/// assert!((m.step_time(&prefill) - 0.035).abs() < 1e-12);
/// let decode = StepWork { decode_tokens: 10, context_tokens: 1_000_000, ..Default::default() };
/// assert!(m.step_time(&decode) > 0.5, "1M tokens of 800 KiB read at 1.555 TB/s");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimeModel {
    /// Fixed cost of a step, seconds (0.020).
    pub base_s: f64,
    /// Cost per computed prompt token, seconds (0.000_15).
    pub prefill_token_s: f64,
    /// Cost per decoded token, seconds (0.000_15).
    pub decode_token_s: f64,
    /// KV bytes of one token on one GPU (819,200: OPT-13B in fp16).
    pub kv_bytes_per_token: f64,
    /// Device memory bandwidth, bytes/s (1.555e12).
    pub hbm_bytes_per_s: f64,
    /// Host ↔ device bandwidth for swap copies, bytes/s (25e9).
    pub pcie_bytes_per_s: f64,
    /// Layers reading only part of the context (none: every layer is full
    /// attention). A property of the model, not of how its memory is
    /// planned: the all-full-attention comparison keeps it.
    pub local_layers: LocalLayers,
}

impl Default for StepTimeModel {
    fn default() -> Self {
        StepTimeModel {
            base_s: 0.020,
            prefill_token_s: 0.000_15,
            decode_token_s: 0.000_15,
            kv_bytes_per_token: OPT_13B_KV_BYTES_PER_TOKEN as f64,
            hbm_bytes_per_s: 1.555e12,
            pcie_bytes_per_s: 25e9,
            local_layers: LocalLayers::default(),
        }
    }
}

/// KV bytes per token of OPT-13B in fp16: 40 layers × (K + V) × 5120 × 2 bytes.
pub const OPT_13B_KV_BYTES_PER_TOKEN: u64 = 819_200;

impl StepTimeModel {
    /// Seconds a step doing `work` takes.
    #[inline]
    pub fn step_time(&self, work: &StepWork) -> f64 {
        let bytes = self.kv_bytes_per_token;
        let local = &self.local_layers;
        let attended = match local.kinds {
            [None, None] => work.context_tokens as f64,
            _ => {
                let reads = local.kinds.iter().zip(work.local_read_tokens);
                local.full_share() * work.context_tokens as f64
                    + reads
                        .map(|(k, r)| k.map_or(0.0, |(_, s)| s * r as f64))
                        .sum::<f64>()
            }
        };
        self.base_s
            + self.prefill_token_s * work.prefill_tokens as f64
            + self.decode_token_s * work.decode_tokens as f64
            + bytes * attended / self.hbm_bytes_per_s
            + bytes * work.transfer_tokens as f64 / self.pcie_bytes_per_s
    }

    /// Checks that every term is finite and ≥ 0 (the time terms at most an
    /// hour: more is a unit mistake), the bandwidths > 0 and one cost > 0; the
    /// error names the field.
    pub fn validate(&self) -> Result<(), SimError> {
        let fields = [
            ("step_time_base", self.base_s),
            ("step_time_prefill_token", self.prefill_token_s),
            ("step_time_decode_token", self.decode_token_s),
            ("kv_bytes_per_token", self.kv_bytes_per_token),
        ];
        for (field, v) in fields {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(SimError::InvalidConfig {
                    field,
                    reason: format!("{v} must be a finite number ≥ 0"),
                });
            }
        }
        for (field, v) in &fields[..3] {
            if *v > 3600.0 {
                return Err(SimError::InvalidConfig {
                    field,
                    reason: format!(
                        "{} s is over an hour; these terms are seconds here (the CLI's flags take ms), e.g. 0.02 for 20 ms",
                        super::short_number(*v)
                    ),
                });
            }
        }
        for (field, v) in [
            ("hbm_bandwidth", self.hbm_bytes_per_s),
            ("pcie_gbps", self.pcie_bytes_per_s),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(SimError::InvalidConfig {
                    field,
                    reason: format!("{v} bytes/s: a bandwidth must be positive, e.g. 25 GB/s for PCIe 4.0"),
                });
            }
        }
        if self.base_s + self.prefill_token_s + self.decode_token_s <= 0.0 {
            return Err(SimError::InvalidConfig {
                field: "step_time_base",
                reason: "every step would take no time; give the base or a per-token cost, e.g. 20 ms".into(),
            });
        }
        Ok(())
    }
}

/// Totals and shares of one run. See the module docs for the definitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// The policy's name (`paged16`, `reserve-max`, ...).
    pub policy: String,
    /// Requests in the workload.
    pub requests: u64,
    /// Requests that generated all their tokens.
    pub finished: u64,
    /// Rejected: prompt + output longer than `max_model_len`.
    pub rejected_too_long: u64,
    /// Rejected: fits `max_model_len` but not the KV memory (or, with `n`
    /// samples, more sequences than `max_num_seqs`).
    pub rejected_too_large: u64,
    /// Rejected: empty prompt.
    pub rejected_empty: u64,
    /// Steps (forward passes).
    pub steps: u64,
    /// Simulated seconds, idle gaps between arrivals included.
    pub duration_s: f64,
    /// Σ token_slots / Σ reserved_slots over steps.
    pub token_share: f64,
    /// Σ internal_fragmentation / Σ reserved_slots.
    pub fragmentation_share: f64,
    /// Σ reservation_waste / Σ reserved_slots.
    pub waste_share: f64,
    /// Σ token_slots / Σ total_slots: token states as a share of the whole memory (the headline).
    pub pool_token_share: f64,
    /// Σ reservation_waste / Σ total_slots.
    pub pool_waste_share: f64,
    /// Σ internal_fragmentation / Σ total_slots.
    pub pool_fragmentation_share: f64,
    /// Σ free_slots / Σ total_slots.
    pub free_share: f64,
    /// Mean sequences in the batch per step.
    pub mean_running: f64,
    /// Most sequences in one step.
    pub max_running: u32,
    /// Preemptions.
    pub preemptions: u64,
    /// Tokens whose KV was dropped by preemption and computed again.
    pub recomputed_tokens: u64,
    /// Blocks copied to the host tier by swap preemption.
    pub swapped_blocks: u64,
    /// Prompt tokens found cached when their request was first admitted, as a
    /// share of the prompt tokens of admitted requests (0 without caching).
    pub prefix_hit_rate: f64,
    /// Prompt tokens found cached at first admission.
    pub prefix_hit_tokens: u64,
    /// Prompt tokens prefilled (recomputation included, cache hits excluded).
    pub prefill_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Generated tokens per step.
    pub tokens_per_step: f64,
    /// Generated tokens per simulated second under the step-time model.
    pub tokens_per_s: f64,
    /// Latencies and goodput of the finished requests.
    pub latency: LatencySummary,
    /// KV bytes held per token of the sequences on the device (Σ used
    /// blocks × bytes per block / Σ their tokens over steps; a paged run of a
    /// planned model). Below the model's bytes per token when sliding-window
    /// groups release what they no longer read (or prefixes are shared).
    pub kv_bytes_per_context_token: Option<f64>,
    /// The tiered prefix cache's account (an `-offload` policy only).
    pub tiers: Option<Box<TierSummary>>,
}

/// What the tiered prefix cache did in a run: hits by tier, blocks and bytes
/// moved each way, and the modelled transfer time against the prefill time
/// the host hits saved. Token counts are the manager's, over every
/// allocation (a prompt admitted in chunks is looked up with its first
/// chunk; one resumed after recompute preemption is looked up again), so the
/// split by tier is given as the host's share of the hit tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TierSummary {
    /// Host blocks of the host tier (shared with swap preemption).
    pub host_blocks: u64,
    /// Prompt tokens the manager found cached, in either tier.
    pub hit_tokens: u64,
    /// Of them, tokens served from the host tier (reloaded, not recomputed).
    pub host_hit_tokens: u64,
    /// Cached blocks copied device → host when evicted.
    pub offloaded_blocks: u64,
    /// Blocks copied host → device for hits.
    pub reloaded_blocks: u64,
    /// Bytes of those copies (per GPU: the step-time model's KV bytes per token).
    pub offload_bytes: f64,
    /// Bytes reloaded (per GPU).
    pub reload_bytes: f64,
    /// Seconds the step-time model charges for them at the host ↔ device bandwidth.
    pub transfer_s: f64,
    /// Seconds of prefill the host hits saved (their tokens × the prefill cost per token).
    pub prefill_saved_s: f64,
}

impl TierSummary {
    /// The share of the hit tokens served from the host tier.
    pub fn host_share(&self) -> f64 {
        if self.hit_tokens == 0 {
            0.0
        } else {
            self.host_hit_tokens as f64 / self.hit_tokens as f64
        }
    }
}

impl RunSummary {
    /// All rejected requests.
    pub fn rejected(&self) -> u64 {
        self.rejected_too_long + self.rejected_too_large + self.rejected_empty
    }
}

/// A run: its summary and one sample per step.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// Totals and shares.
    pub summary: RunSummary,
    /// One sample per step.
    pub samples: Vec<StepSample>,
}

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    TooLong,
    TooLarge,
    Empty,
}

/// Accumulates a run's samples, counters and request times; shared by every runner.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) summary: RunSummary,
    pub(crate) samples: Vec<StepSample>,
    /// The simulated clock: the start of the next step, seconds.
    pub(crate) time: f64,
    pub(crate) latency: LatencyLog,
    /// Prompt tokens of admitted requests (the prefix hit rate's denominator).
    pub(crate) admitted_prompt_tokens: u64,
    sum_reserved: u128,
    sum_tokens: u128,
    sum_frag: u128,
    sum_waste: u128,
    sum_total: u128,
    sum_free: u128,
    sum_running: u128,
    sum_used_blocks: u128,
    sum_context: u128,
    /// Bytes of one block, when known: for `kv_bytes_per_context_token`.
    pub(crate) bytes_per_block: Option<u64>,
}

impl Recorder {
    pub(crate) fn new(policy: String, requests: u64) -> Self {
        Recorder {
            summary: RunSummary {
                policy,
                requests,
                ..Default::default()
            },
            latency: LatencyLog::new(requests as usize),
            ..Default::default()
        }
    }

    pub(crate) fn reject(&mut self, why: Rejection) {
        match why {
            Rejection::TooLong => self.summary.rejected_too_long += 1,
            Rejection::TooLarge => self.summary.rejected_too_large += 1,
            Rejection::Empty => self.summary.rejected_empty += 1,
        }
    }

    /// The end of a step doing `work` that starts now.
    #[inline]
    pub(crate) fn step_end(&self, work: &StepWork, time: &StepTimeModel) -> f64 {
        self.time + time.step_time(work)
    }

    /// Records a step that ends at `end` (from [`Self::step_end`]) and moves the clock there.
    pub(crate) fn step(&mut self, mut s: StepSample, end: f64) {
        debug_assert_eq!(
            s.reserved_slots,
            s.token_slots + s.internal_fragmentation + s.reservation_waste,
            "reserved = tokens + fragmentation + waste"
        );
        debug_assert_eq!(
            s.total_slots,
            s.reserved_slots + s.free_slots,
            "total = reserved + free"
        );
        s.step = self.summary.steps;
        s.time = self.time;
        s.preemptions = self.summary.preemptions;
        s.finished = self.summary.finished;
        self.sum_reserved += s.reserved_slots as u128;
        self.sum_tokens += s.token_slots as u128;
        self.sum_frag += s.internal_fragmentation as u128;
        self.sum_waste += s.reservation_waste as u128;
        self.sum_total += s.total_slots as u128;
        self.sum_free += s.free_slots as u128;
        self.sum_running += s.running as u128;
        self.sum_used_blocks += s.used_blocks as u128;
        self.sum_context += s.context_tokens as u128;
        self.summary.max_running = self.summary.max_running.max(s.running);
        self.summary.steps += 1;
        self.time = end;
        self.samples.push(s);
    }

    pub(crate) fn finish(mut self, slo: Slo) -> RunResult {
        let ratio = |a: u128, b: u128| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let s = &mut self.summary;
        s.duration_s = self.time;
        s.token_share = ratio(self.sum_tokens, self.sum_reserved);
        s.fragmentation_share = ratio(self.sum_frag, self.sum_reserved);
        s.waste_share = ratio(self.sum_waste, self.sum_reserved);
        s.pool_token_share = ratio(self.sum_tokens, self.sum_total);
        s.pool_waste_share = ratio(self.sum_waste, self.sum_total);
        s.pool_fragmentation_share = ratio(self.sum_frag, self.sum_total);
        s.free_share = ratio(self.sum_free, self.sum_total);
        s.mean_running = ratio(self.sum_running, s.steps as u128);
        s.tokens_per_step = ratio(s.generated_tokens as u128, s.steps as u128);
        s.tokens_per_s = if self.time > 0.0 {
            s.generated_tokens as f64 / self.time
        } else {
            0.0
        };
        s.prefix_hit_rate = ratio(s.prefix_hit_tokens as u128, self.admitted_prompt_tokens as u128);
        s.latency = self.latency.summarize(slo, self.time);
        s.kv_bytes_per_context_token = self
            .bytes_per_block
            .filter(|_| self.sum_context > 0)
            .map(|b| self.sum_used_blocks as f64 * b as f64 / self.sum_context as f64);
        RunResult {
            summary: self.summary,
            samples: self.samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_time_terms_are_at_most_an_hour() {
        assert!(StepTimeModel::default().validate().is_ok());
        let slow = StepTimeModel {
            base_s: 3600.0,
            ..Default::default()
        };
        assert!(slow.validate().is_ok());
        for m in [
            StepTimeModel {
                base_s: 1e300,
                ..Default::default()
            },
            StepTimeModel {
                decode_token_s: 3601.0,
                ..Default::default()
            },
        ] {
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains("over an hour"), "{err}");
        }
    }

    #[test]
    fn local_layers_are_charged_for_their_window_only() {
        let window = AttentionKind::SlidingWindow { window: 128 };
        let chunked = AttentionKind::ChunkedLocal { chunk: 1000 };
        let full = StepTimeModel {
            base_s: 0.0,
            decode_token_s: 0.0,
            ..Default::default()
        };
        let hybrid = StepTimeModel {
            local_layers: LocalLayers {
                kinds: [Some((window, 0.5)), Some((chunked, 0.25))],
            },
            ..full
        };
        let mut work = StepWork {
            decode_tokens: 2,
            context_tokens: 10_001 + 51,
            ..Default::default()
        };
        for pos in [10_000, 50] {
            hybrid.local_layers.add_reads(pos, 1, &mut work.local_read_tokens);
        }
        // Window: 128 + 51 tokens; chunk: 10,000 % 1000 + 1 and 51 tokens.
        assert_eq!(work.local_read_tokens, [128 + 51, 1 + 51]);
        let attended = 0.25 * 10_052.0 + 0.5 * 179.0 + 0.25 * 52.0;
        let want = attended * full.kv_bytes_per_token / full.hbm_bytes_per_s;
        assert!((hybrid.step_time(&work) - want).abs() < 1e-12);
        // Without local layers the reads are the whole context.
        let all = 10_052.0 * full.kv_bytes_per_token / full.hbm_bytes_per_s;
        assert!((full.step_time(&work) - all).abs() < 1e-12);
    }

    #[test]
    fn shares_weigh_steps_by_memory() {
        let mut r = Recorder::new("p".into(), 1);
        let time = StepTimeModel::default();
        let work = StepWork {
            prefill_tokens: 10,
            ..Default::default()
        };
        let sample = |reserved, tokens, frag| StepSample {
            total_slots: 100,
            reserved_slots: reserved,
            token_slots: tokens,
            internal_fragmentation: frag,
            reservation_waste: reserved - tokens - frag,
            free_slots: 100 - reserved,
            running: 1,
            batched_tokens: 10,
            ..Default::default()
        };
        r.step(sample(10, 10, 0), r.step_end(&work, &time));
        r.step(sample(90, 45, 5), r.step_end(&work, &time));
        r.summary.generated_tokens = 2;
        let res = r.finish(Slo::default());
        let s = &res.summary;
        assert_eq!(s.token_share, 55.0 / 100.0);
        assert_eq!(s.fragmentation_share, 5.0 / 100.0);
        assert_eq!(s.waste_share, 40.0 / 100.0);
        assert_eq!(s.pool_token_share, 55.0 / 200.0);
        assert_eq!(s.pool_waste_share, 40.0 / 200.0);
        assert_eq!(s.pool_fragmentation_share, 5.0 / 200.0);
        assert_eq!(s.free_share, 100.0 / 200.0);
        assert_eq!((s.steps, res.samples[1].step), (2, 1));
        assert!((s.duration_s - 2.0 * time.step_time(&work)).abs() < 1e-12);
        assert_eq!(s.tokens_per_step, 1.0);
    }
}
