//! What a run measures: one [`StepSample`] per step and a [`RunSummary`].
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
//!   slots past prompt + output);
//! - `free_slots`: slots no running request holds (with prefix caching, cached
//!   blocks no sequence uses count as free: they are reusable at once).
//!
//! The summary's shares weigh every step by the memory it holds:
//! `token_share = Σ_steps token_slots / Σ_steps reserved_slots`. This is the
//! PagedAttention paper's "share of KV memory holding token states" (96.3 %
//! for vLLM, 20.4–38.2 % for reservation systems) measured over the memory
//! requests hold; `pool_token_share` divides by the whole pool instead.

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
    /// Requests arrived and waiting.
    pub waiting: u32,
    /// Tokens the step's forward pass processed (prompt tokens + one per decoding sequence).
    pub batched_tokens: u32,
    /// Preemptions so far.
    pub preemptions: u64,
    /// Requests finished so far.
    pub finished: u64,
}

/// Linear step-time model: `base_s + per_token_s × batched tokens`.
///
/// The defaults are assumptions, fitted roughly to a 13B fp16 model on an
/// A100: a step reads all 26 GB of weights (≈17 ms at 1.5 TB/s, so 20 ms with
/// overheads), and each batched token costs ≈26 GFLOP (≈0.15 ms at ≈175
/// TFLOPS achieved). Use them for relative throughput between policies, not
/// as a prediction for a real engine.
///
/// ```
/// use pagedkv::sim::metrics::StepTimeModel;
/// let m = StepTimeModel::default();
/// assert!((m.step_time(100) - 0.035).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimeModel {
    /// Fixed cost of a step, seconds (0.020).
    pub base_s: f64,
    /// Cost per batched token, seconds (0.000_15).
    pub per_token_s: f64,
}

impl Default for StepTimeModel {
    fn default() -> Self {
        StepTimeModel {
            base_s: 0.020,
            per_token_s: 0.000_15,
        }
    }
}

impl StepTimeModel {
    /// Seconds a step of `batched_tokens` takes.
    pub fn step_time(&self, batched_tokens: u64) -> f64 {
        self.base_s + self.per_token_s * batched_tokens as f64
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
    /// Σ token_slots / Σ total_slots: token states as a share of the whole memory.
    pub pool_token_share: f64,
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
    /// Share of looked-up prompt tokens found in the prefix cache (0 without caching).
    pub prefix_hit_rate: f64,
    /// Prompt tokens prefilled (recomputation included, cache hits excluded).
    pub prefill_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Generated tokens per step.
    pub tokens_per_step: f64,
    /// Generated tokens per simulated second under the step-time model.
    pub tokens_per_s: f64,
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

/// Accumulates a run's samples and counters; shared by every runner.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) summary: RunSummary,
    pub(crate) samples: Vec<StepSample>,
    pub(crate) time: f64,
    sum_reserved: u128,
    sum_tokens: u128,
    sum_frag: u128,
    sum_waste: u128,
    sum_total: u128,
    sum_free: u128,
    sum_running: u128,
}

impl Recorder {
    pub(crate) fn new(policy: String, requests: u64) -> Self {
        Recorder {
            summary: RunSummary {
                policy,
                requests,
                ..Default::default()
            },
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

    /// Records a step and advances the clock by its modelled time.
    pub(crate) fn step(&mut self, mut s: StepSample, time: &StepTimeModel) {
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
        self.summary.max_running = self.summary.max_running.max(s.running);
        self.summary.steps += 1;
        self.time += time.step_time(s.batched_tokens as u64);
        self.samples.push(s);
    }

    pub(crate) fn finish(mut self) -> RunResult {
        let ratio = |a: u128, b: u128| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let s = &mut self.summary;
        s.duration_s = self.time;
        s.token_share = ratio(self.sum_tokens, self.sum_reserved);
        s.fragmentation_share = ratio(self.sum_frag, self.sum_reserved);
        s.waste_share = ratio(self.sum_waste, self.sum_reserved);
        s.pool_token_share = ratio(self.sum_tokens, self.sum_total);
        s.free_share = ratio(self.sum_free, self.sum_total);
        s.mean_running = ratio(self.sum_running, s.steps as u128);
        s.tokens_per_step = ratio(s.generated_tokens as u128, s.steps as u128);
        s.tokens_per_s = if self.time > 0.0 {
            s.generated_tokens as f64 / self.time
        } else {
            0.0
        };
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
    fn shares_weigh_steps_by_memory() {
        let mut r = Recorder::new("p".into(), 1);
        let time = StepTimeModel::default();
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
        r.step(sample(10, 10, 0), &time);
        r.step(sample(90, 45, 5), &time);
        r.summary.generated_tokens = 2;
        let res = r.finish();
        let s = &res.summary;
        assert_eq!(s.token_share, 55.0 / 100.0);
        assert_eq!(s.fragmentation_share, 5.0 / 100.0);
        assert_eq!(s.waste_share, 40.0 / 100.0);
        assert_eq!(s.pool_token_share, 55.0 / 200.0);
        assert_eq!((s.steps, res.samples[1].step), (2, 1));
        assert!((s.duration_s - 2.0 * time.step_time(10)).abs() < 1e-12);
        assert_eq!(s.tokens_per_step, 1.0);
    }
}
