//! Plain data exchanged with the scheduler: requests, configuration, the step
//! plan, the engine's sampled outputs and counters.

use std::ops::Range;

use super::policy::PreemptionMode;
use crate::error::SchedulerError;
use crate::ids::{SeqId, Slot, TokenId};
use crate::manager::BlockOps;
use crate::prefix::{KvEvent, PrefixKeys};

/// Most parallel samples per request (the sample index takes the low 8 bits of a [`SeqId`]).
pub const MAX_SAMPLES: u32 = 256;

/// A request's id, chosen by the engine; below 2^56.
///
/// Sample `i` of request `r` runs as sequence `SeqId(r << 8 | i)`
/// ([`RequestId::seq`]); sample 0 runs the prefill, the others are forked from
/// it once its prompt is computed.
///
/// ```
/// use pagedkv::{scheduler::RequestId, SeqId};
/// assert_eq!(RequestId(3).seq(1), SeqId(3 << 8 | 1));
/// assert_eq!(RequestId::of(SeqId(3 << 8 | 1)), (RequestId(3), 1));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

impl RequestId {
    /// Largest request id + 1.
    pub const LIMIT: u64 = 1 << 56;

    /// The sequence id of sample `sample`.
    pub const fn seq(self, sample: u32) -> SeqId {
        SeqId(self.0 << 8 | (sample as u64 & 0xff))
    }

    /// The request and sample index a sequence id belongs to.
    pub const fn of(seq: SeqId) -> (RequestId, u32) {
        (RequestId(seq.0 >> 8), (seq.0 & 0xff) as u32)
    }
}

/// A generation request.
///
/// ```
/// use pagedkv::{PrefixKeys, Request, RequestId};
/// let r = Request {
///     id: RequestId(7),
///     prompt: vec![1, 2, 3],
///     max_new_tokens: 16,
///     keys: PrefixKeys::salted("tenant-a"), // shares cached blocks only with tenant-a
///     ..Default::default()
/// };
/// assert_eq!(r.n, 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The engine's id (below [`RequestId::LIMIT`]).
    pub id: RequestId,
    /// Prompt tokens (at least one).
    pub prompt: Vec<TokenId>,
    /// Most tokens each sample generates (at least 1).
    pub max_new_tokens: u32,
    /// Lower values run first under [`super::PriorityOrder`] (0 is the usual).
    pub priority: i32,
    /// Arrival time in any monotonic unit (steps, microseconds).
    pub arrival: u64,
    /// Parallel samples (1..=256), sharing the prompt's blocks.
    pub n: u32,
    /// The keys that decide prefix sharing beside the tokens: a tenant's
    /// cache salt, a LoRA adapter, multimodal spans (ignored when prefix
    /// caching is off). Every sample of the request uses them.
    pub keys: PrefixKeys,
}

impl Default for Request {
    /// An empty request of one sample: id 0, no prompt (fill it in), 1 new
    /// token, priority 0, arrival 0, default prefix keys.
    fn default() -> Self {
        Request {
            id: RequestId::default(),
            prompt: Vec::new(),
            max_new_tokens: 1,
            priority: 0,
            arrival: 0,
            n: 1,
            keys: PrefixKeys::default(),
        }
    }
}

/// Budgets and guards of a [`super::Scheduler`].
///
/// ```
/// let c = pagedkv::scheduler::SchedulerConfig::default();
/// assert!(c.admit_whole_prompt && c.isolate_growth && c.enable_chunked_prefill);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (256).
    pub max_num_seqs: u32,
    /// Most tokens (prefill chunks + decodes) per step (2048).
    pub max_num_batched_tokens: u32,
    /// Split prompts longer than the step's token budget over several steps
    /// (true). Off, `max_num_batched_tokens` must be at least `max_model_len`.
    pub enable_chunked_prefill: bool,
    /// Guard against chunked-prefill thrash (true): admit a prompt only when
    /// blocks for all of it are free now (allocated at once), and preempt a
    /// sequence in the middle of its prefill only when no other victim is left.
    /// (With prefix caching on, blocks are still taken chunk by chunk, since a
    /// block is cached as soon as it is allocated; the check is on the whole prompt.)
    /// Off: blocks are checked and taken chunk by chunk, as vLLM v1 does.
    pub admit_whole_prompt: bool,
    /// Guard against head-of-line preemption (true): when a sequence cannot
    /// grow and more than one victim would have to go, it waits this step
    /// (keeping its blocks) instead. When every running sequence would wait,
    /// the step is planned again without the guards, so nothing livelocks.
    /// Off: victims are preempted until it fits.
    pub isolate_growth: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            enable_chunked_prefill: true,
            admit_whole_prompt: true,
            isolate_growth: true,
        }
    }
}

impl SchedulerConfig {
    /// Checks the budgets against the manager's `max_model_len`.
    pub fn validate(&self, max_model_len: u32) -> Result<(), SchedulerError> {
        let bad = |field: &'static str, reason: String| Err(SchedulerError::InvalidConfig { field, reason });
        if self.max_num_seqs == 0 {
            return bad("max_num_seqs", "must be at least 1, e.g. 256".into());
        }
        if self.max_num_batched_tokens == 0 {
            return bad("max_num_batched_tokens", "must be at least 1, e.g. 2048".into());
        }
        if !self.enable_chunked_prefill && self.max_num_batched_tokens < max_model_len {
            return bad(
                "max_num_batched_tokens",
                format!(
                    "{} is below max_model_len ({max_model_len}) with chunked prefill off, so a long prompt could never run; \
                     raise it to {max_model_len} or set enable_chunked_prefill = true",
                    self.max_num_batched_tokens
                ),
            );
        }
        Ok(())
    }
}

/// One sequence in a step's batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub seq: SeqId,
    /// Position of its first token computed this step.
    pub start: u32,
    /// Tokens computed this step: a prefill chunk, or 1 for a decode.
    pub num_new_tokens: u32,
    /// Whether these tokens are (part of) a prefill, or a re-prefill after recompute.
    pub is_prefill: bool,
    /// Tokens to sample from this step's logits and report to `on_step_output`:
    /// 0 for a prefill chunk that does not finish the prompt, `n` when sample 0
    /// of an `n`-sample request finishes its prompt (one per sample), else 1.
    pub num_samples: u32,
    /// Where this sequence's new slots are in [`StepPlan::slots`].
    pub slots: Range<u32>,
}

impl ScheduledSeq {
    /// The sequence the `k`-th token sampled for this entry belongs to
    /// (`k < num_samples`): `seq` itself, or, when sample 0 finishes the
    /// prompt of an `n`-sample request, sample `k` of that request (forked
    /// from it by `on_step_output`).
    ///
    /// ```
    /// use pagedkv::{scheduler::{RequestId, ScheduledSeq}, SeqId};
    /// let prefill = ScheduledSeq { seq: RequestId(5).seq(0), start: 0, num_new_tokens: 40,
    ///                              is_prefill: true, num_samples: 3, slots: 0..40 };
    /// assert_eq!(prefill.sample_seq(2), RequestId(5).seq(2));
    /// assert_eq!(prefill.sampled_pos(), 40);
    /// let decode = ScheduledSeq { seq: RequestId(5).seq(2), start: 41, num_new_tokens: 1,
    ///                             is_prefill: false, num_samples: 1, slots: 40..41 };
    /// assert_eq!(decode.sample_seq(0), RequestId(5).seq(2));
    /// ```
    pub fn sample_seq(&self, k: u32) -> SeqId {
        if self.num_samples > 1 {
            RequestId::of(self.seq).0.seq(k)
        } else {
            self.seq
        }
    }

    /// The position a token sampled from this step's logits takes in its
    /// sequence (`start + num_new_tokens`).
    pub fn sampled_pos(&self) -> u32 {
        self.start + self.num_new_tokens
    }
}

/// A preempted sequence and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preempted {
    /// The victim.
    pub seq: SeqId,
    /// How it was preempted.
    pub mode: PreemptionMode,
}

/// What the engine runs this step. Reuse one value across steps: a warm
/// decode-only step fills it without allocating.
#[derive(Clone, Debug, Default)]
pub struct StepPlan {
    /// Block operations to run first, in order: swap-out, swap-in, copies.
    pub ops: BlockOps,
    /// The batch, in running order.
    pub scheduled: Vec<ScheduledSeq>,
    /// Slots of every new token, group-major: KV cache group `g`'s slot of
    /// the `k`-th token of the batch is `slots[g * num_batched_tokens + k]`
    /// (upload it as a `[num_groups, num_batched_tokens]` tensor). Each
    /// sequence's range in a group is [`ScheduledSeq::slots`], offset by the
    /// group ([`Self::group_slots_of`]).
    pub slots: Vec<Slot>,
    /// KV cache groups the slot mapping covers (1 unless the model mixes attention kinds).
    pub num_groups: u32,
    /// Sequences preempted this step.
    pub preempted: Vec<Preempted>,
    /// Sequences this step finished (stopped or reached `max_new_tokens`),
    /// filled by [`super::Scheduler::on_step_output`] for this plan; they are
    /// freed already.
    pub finished: Vec<SeqId>,
    /// Requests rejected since the last step (each also returned as an error by `add_request`).
    pub rejected: Vec<RequestId>,
    /// KV events (blocks cached and uncached) since the last step, for a
    /// cache-aware router; empty unless the manager has `enable_kv_events`.
    pub events: Vec<KvEvent>,
    /// Tokens computed this step (sum of `num_new_tokens`).
    pub num_batched_tokens: u32,
}

impl StepPlan {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.scheduled.clear();
        self.slots.clear();
        self.preempted.clear();
        self.finished.clear();
        self.rejected.clear();
        self.events.clear();
        self.num_batched_tokens = 0;
        self.num_groups = 0;
    }

    /// The slots of the `i`-th scheduled sequence's new tokens in group 0.
    pub fn slots_of(&self, i: usize) -> &[Slot] {
        self.group_slots_of(0, i)
    }

    /// The slots of the `i`-th scheduled sequence's new tokens in KV cache
    /// group `group` (empty for a group past `num_groups`).
    pub fn group_slots_of(&self, group: usize, i: usize) -> &[Slot] {
        let r = &self.scheduled[i].slots;
        let offset = group * self.num_batched_tokens as usize;
        self.slots
            .get(offset + r.start as usize..offset + r.end as usize)
            .unwrap_or(&[])
    }

    /// Group `group`'s slot mapping for the whole batch (`num_batched_tokens` slots).
    pub fn group_slots(&self, group: usize) -> &[Slot] {
        let n = self.num_batched_tokens as usize;
        self.slots.get(group * n..(group + 1) * n).unwrap_or(&[])
    }
}

/// One token the engine sampled for a sequence of the last plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampledToken {
    /// The sequence (for the samples forked after a prefill: `request.seq(i)`).
    pub seq: SeqId,
    /// The token.
    pub token: TokenId,
    /// Stop here (end of sequence, stop string); `max_new_tokens` stops by itself.
    pub stop: bool,
}

/// Counters since the scheduler was created. A refused call changes none of
/// them except `rejected`, which counts requests refused as never runnable
/// (`add_request` then returns `Rejected`, and the next plan lists them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// `step` calls.
    pub steps: u64,
    /// Preemptions by recompute.
    pub preempted_recompute: u64,
    /// Preemptions by swap.
    pub preempted_swap: u64,
    /// Computed tokens dropped by recompute preemptions.
    pub recomputed_tokens: u64,
    /// Sequences that waited a step under the head-of-line guard.
    pub deferred: u64,
    /// Sequences finished.
    pub finished: u64,
    /// Requests rejected.
    pub rejected: u64,
    /// Requests cancelled.
    pub cancelled: u64,
}
