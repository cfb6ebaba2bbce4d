//! A reference continuous-batching scheduler over the [`KvCacheManager`]:
//! waiting, running and swapped queues, token and sequence budgets, chunked
//! prefill, preemption by recompute or swap, and parallel sampling.
//!
//! Each step ([`Scheduler::step`]) works in this order:
//! 1. the running sequences, in queue order, each get its next prefill chunk
//!    or one decode token; a sequence that cannot grow preempts victims (chosen
//!    by the [`VictimPolicy`] among the running sequences not yet scheduled this
//!    step, preempted as the [`PreemptionModePolicy`] says) or, with the
//!    `isolate_growth` guard, waits this step when it would take more than one
//!    (if every running sequence waited, the pass is redone without guards);
//! 2. when nothing was preempted, swapped sequences come back (first in queue order);
//! 3. when nothing was preempted, waiting requests are admitted in queue order
//!    (requests preempted by recompute first), stopping at the first that does
//!    not fit.
//!
//! The engine runs the plan (`ops` first, then the batch) and reports the
//! sampled tokens with [`Scheduler::on_step_output`], which appends them, forks
//! the parallel samples after a prefill and frees finished sequences. A
//! sampled token enters the manager when the step that computes its KV is
//! planned, so the manager's tokens are always the computed ones plus the
//! current step's.
//!
//! Invariants (checked by [`Scheduler::check_invariants`]): every running
//! sequence is on the device holding exactly the tokens the scheduler put
//! there, every swapped one is in the host tier, every waiting one holds no
//! block, each queue is sorted, and the manager's invariants hold.
//!
//! Start reading at [`Scheduler::step`].

use std::cmp::Reverse;

use crate::error::{KvError, SchedulerError};
use crate::ids::{SeqId, TokenId};
use crate::manager::{Admission, KvCacheManager, SeqMap};
use crate::prefix::PrefixKeys;

mod policy;
mod types;

pub use policy::{
    AlwaysRecompute, AlwaysSwap, Automatic, Candidate, Fcfs, LatestArrival, LowestPriority, MostBlocks,
    PreemptionCost, PreemptionMode, PreemptionModePolicy, PriorityOrder, QueueOrder, VictimPolicy,
};
pub use types::{
    Preempted, Request, RequestId, SampledToken, ScheduledSeq, SchedulerConfig, SchedulerStats, StepPlan,
    MAX_SAMPLES,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Swapped,
}

/// One sequence (one sample of a request).
#[derive(Debug)]
struct SeqState {
    id: SeqId,
    /// Prompt and generated tokens.
    tokens: Vec<TokenId>,
    prompt_len: u32,
    max_new: u32,
    priority: i32,
    arrival: u64,
    /// Queue order key (smallest first), then the sequence id.
    key: ((i64, u64), SeqId),
    /// Tokens whose KV the engine has computed (or computes in the last planned step).
    num_computed: u32,
    /// Tokens the manager holds for it.
    in_kv: u32,
    status: Status,
    /// Samples still to fork from this one (sample 0, until its prompt is computed).
    forks_left: u32,
    /// Sampled tokens the last plan asked of it (0: none).
    samples_expected: u32,
    /// Preempted by recompute: admitted before never-run requests.
    resumed: bool,
}

impl SeqState {
    fn pending(&self) -> u32 {
        self.tokens.len() as u32 - self.num_computed
    }

    fn generated(&self) -> u32 {
        self.tokens.len() as u32 - self.prompt_len
    }
}

enum Outcome {
    Scheduled,
    Deferred,
    PreemptedItself,
}

/// The reference scheduler. It owns the manager; read it with [`Self::kv`].
///
/// ```
/// use pagedkv::{KvCacheConfig, KvCacheManager, Request, RequestId, SampledToken, Scheduler,
///               SchedulerConfig, StepPlan};
/// let kv = KvCacheManager::new(KvCacheConfig { num_blocks: 64, block_size: 16, ..Default::default() }).unwrap();
/// let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
/// sched.add_request(Request { id: RequestId(1), prompt: (0..40).collect(), max_new_tokens: 3,
///                             priority: 0, arrival: 0, n: 2 }).unwrap();
/// let mut plan = StepPlan::default();
/// let mut out = Vec::new();
/// while !sched.is_idle() {
///     sched.step(&mut plan);
///     // ... run plan.ops, then the batch: plan.scheduled with plan.slots_of(i) and
///     //     sched.block_table(seq) ...
///     out.clear();
///     for s in &plan.scheduled {
///         let (req, _) = RequestId::of(s.seq);
///         for i in 0..s.num_samples {
///             // sample 0 of an n-sample request reports one token per sample
///             let seq = if s.num_samples > 1 { req.seq(i) } else { s.seq };
///             out.push(SampledToken { seq, token: 7, stop: false });
///         }
///     }
///     sched.on_step_output(&out).unwrap();
///     sched.check_invariants().unwrap();
/// }
/// assert_eq!(sched.stats().finished, 2);
/// ```
#[derive(Debug)]
pub struct Scheduler {
    kv: KvCacheManager,
    config: SchedulerConfig,
    victim: Box<dyn VictimPolicy>,
    mode: Box<dyn PreemptionModePolicy>,
    order: Box<dyn QueueOrder>,
    slab: Vec<Option<SeqState>>,
    free_slab: Vec<usize>,
    spare_tokens: Vec<Vec<TokenId>>,
    index: SeqMap<usize>,
    /// Live sequences per request id (keyed by `SeqId(request)`).
    live: SeqMap<u32>,
    running: Vec<usize>,
    waiting: Vec<usize>,
    swapped: Vec<usize>,
    finished: Vec<SeqId>,
    rejected: Vec<RequestId>,
    expected_outputs: u64,
    preempted_this_step: bool,
    scratch: Vec<(u8, (i64, u64), usize)>,
    seen: Vec<SeqId>,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler over `kv` with the default policies: latest-arrival victims,
    /// recompute preemption, first-come-first-served queues.
    pub fn new(kv: KvCacheManager, config: SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate(kv.config().max_model_len)?;
        Ok(Scheduler {
            kv,
            config,
            victim: Box::new(LatestArrival),
            mode: Box::new(AlwaysRecompute),
            order: Box::new(Fcfs),
            slab: Vec::new(),
            free_slab: Vec::new(),
            spare_tokens: Vec::new(),
            index: SeqMap::default(),
            live: SeqMap::default(),
            running: Vec::new(),
            waiting: Vec::new(),
            swapped: Vec::new(),
            finished: Vec::new(),
            rejected: Vec::new(),
            expected_outputs: 0,
            preempted_this_step: false,
            scratch: Vec::new(),
            seen: Vec::new(),
            stats: SchedulerStats::default(),
        })
    }

    /// Replaces the victim policy (before adding requests).
    pub fn with_victim_policy(mut self, p: impl VictimPolicy + 'static) -> Self {
        self.victim = Box::new(p);
        self
    }

    /// Replaces the preemption-mode policy.
    pub fn with_preemption_mode(mut self, p: impl PreemptionModePolicy + 'static) -> Self {
        self.mode = Box::new(p);
        self
    }

    /// Replaces the queue order (before adding requests: queues are kept sorted by it).
    pub fn with_queue_order(mut self, p: impl QueueOrder + 'static) -> Self {
        self.order = Box::new(p);
        self
    }

    /// The manager, read-only.
    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    /// The budgets and guards.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Counters since construction.
    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }

    /// A sequence's blocks for the attention kernel (running sequences).
    pub fn block_table(&self, seq: SeqId) -> Result<&[crate::ids::BlockId], KvError> {
        self.kv.block_table(seq)
    }

    /// A live sequence's tokens, prompt and generated (the engine's input ids:
    /// `tokens[start..start + num_new_tokens]` of a scheduled sequence).
    pub fn tokens(&self, seq: SeqId) -> Option<&[TokenId]> {
        self.state(seq).map(|s| &s.tokens[..])
    }

    /// Sequences running, waiting and swapped out.
    pub fn queue_lens(&self) -> (usize, usize, usize) {
        (self.running.len(), self.waiting.len(), self.swapped.len())
    }

    /// Whether no request is left (nothing running, waiting or swapped).
    pub fn is_idle(&self) -> bool {
        self.index.is_empty()
    }

    fn state(&self, seq: SeqId) -> Option<&SeqState> {
        self.index.get(&seq).and_then(|&i| self.slab[i].as_ref())
    }

    fn s(&self, idx: usize) -> &SeqState {
        self.slab[idx].as_ref().expect("queues hold live slab entries")
    }

    fn s_mut(&mut self, idx: usize) -> &mut SeqState {
        self.slab[idx].as_mut().expect("queues hold live slab entries")
    }

    /// Enqueues a request, or rejects it when it can never run (nothing is
    /// enqueued then, and the plan of the next step lists it as rejected).
    ///
    /// Errors: `Rejected` (admission says never, with the reason),
    /// `InvalidRequest`, `DuplicateRequest`.
    pub fn add_request(&mut self, r: Request) -> Result<(), SchedulerError> {
        let invalid = |reason: String| {
            Err(SchedulerError::InvalidRequest {
                request: r.id,
                reason,
            })
        };
        if r.id.0 >= RequestId::LIMIT {
            return invalid(format!(
                "its id must be below 2^56 (the sample index takes the low 8 bits of a SeqId), got {}",
                r.id.0
            ));
        }
        if r.n == 0 || r.n > MAX_SAMPLES || r.n > self.config.max_num_seqs {
            return invalid(format!(
                "n = {} samples; use 1..={} (at most max_num_seqs = {})",
                r.n, MAX_SAMPLES, self.config.max_num_seqs
            ));
        }
        if r.max_new_tokens == 0 {
            return invalid("max_new_tokens is 0; ask for at least one token".into());
        }
        if self.live.contains_key(&SeqId(r.id.0)) {
            return Err(SchedulerError::DuplicateRequest { request: r.id });
        }
        if let Admission::Never(reason) = self
            .kv
            .check_admission(r.prompt.len() as u64, r.max_new_tokens as u64)
        {
            self.rejected.push(r.id);
            self.stats.rejected += 1;
            return Err(SchedulerError::Rejected {
                request: r.id,
                reason,
            });
        }
        let mut tokens = self.spare_tokens.pop().unwrap_or_default();
        tokens.clear();
        tokens.extend_from_slice(&r.prompt);
        let id = r.id.seq(0);
        let state = SeqState {
            id,
            tokens,
            prompt_len: r.prompt.len() as u32,
            max_new: r.max_new_tokens,
            priority: r.priority,
            arrival: r.arrival,
            key: (self.order.queue_key(r.priority, r.arrival), id),
            num_computed: 0,
            in_kv: 0,
            status: Status::Waiting,
            forks_left: r.n - 1,
            samples_expected: 0,
            resumed: false,
        };
        let idx = self.insert_state(state);
        self.live.insert(SeqId(r.id.0), 1);
        self.enqueue_waiting(idx);
        Ok(())
    }

    fn insert_state(&mut self, state: SeqState) -> usize {
        let id = state.id;
        let idx = match self.free_slab.pop() {
            Some(i) => {
                self.slab[i] = Some(state);
                i
            }
            None => {
                self.slab.push(Some(state));
                self.slab.len() - 1
            }
        };
        self.index.insert(id, idx);
        idx
    }

    fn enqueue_waiting(&mut self, idx: usize) {
        let k = |s: &SeqState| (!s.resumed, s.key);
        let key = k(self.s(idx));
        let slab = &self.slab;
        let pos = self
            .waiting
            .partition_point(|&i| k(slab[i].as_ref().expect("live")) < key);
        self.waiting.insert(pos, idx);
    }

    fn insert_by_key(slab: &[Option<SeqState>], list: &mut Vec<usize>, idx: usize) {
        let key = slab[idx].as_ref().expect("live").key;
        let pos = list.partition_point(|&i| slab[i].as_ref().expect("live").key < key);
        list.insert(pos, idx);
    }

    /// Plans the next step into `plan` (cleared first): the block operations
    /// to run first, the batch with each sequence's new slots, and the
    /// sequences preempted, finished and rejected. Call
    /// [`Self::on_step_output`] after the engine ran it, before the next step.
    /// A decode-only step allocates nothing once `plan` has grown.
    pub fn step(&mut self, plan: &mut StepPlan) {
        plan.clear();
        plan.finished.append(&mut self.finished);
        plan.rejected.append(&mut self.rejected);
        self.stats.steps += 1;
        self.preempted_this_step = false;
        let mut budget = self.config.max_num_batched_tokens;
        let max_seqs = self.config.max_num_seqs as usize;

        // The guards only make sequences wait; if every running sequence
        // waited, nothing would ever free a block, so the step runs again
        // without them (deferring changes nothing, so this is safe).
        for force in [false, true] {
            let mut i = 0;
            while i < self.running.len() && plan.scheduled.len() < max_seqs && budget > 0 {
                match self.schedule_running(i, force, &mut budget, plan) {
                    Outcome::Scheduled | Outcome::Deferred => i += 1,
                    Outcome::PreemptedItself => {}
                }
            }
            if !plan.scheduled.is_empty() || self.running.is_empty() || self.preempted_this_step {
                break;
            }
        }
        if !self.preempted_this_step {
            self.swap_in_some(&mut budget, plan);
            self.admit_some(&mut budget, plan);
        }
        self.kv.drain_ops(&mut plan.ops);
    }

    /// Plans `running[i]`; may preempt running sequences after position `i`.
    fn schedule_running(&mut self, i: usize, force: bool, budget: &mut u32, plan: &mut StepPlan) -> Outcome {
        let idx = self.running[i];
        let (n, append_to) = {
            let s = self.s(idx);
            let n = s.pending().min(*budget);
            if n == 0 || (!self.config.enable_chunked_prefill && n < s.pending()) {
                return Outcome::Deferred;
            }
            (n, (s.num_computed + n).max(s.in_kv))
        };
        let mut victims = 0u32;
        loop {
            let s = self.slab[idx].as_mut().expect("live");
            if append_to <= s.in_kv {
                break;
            }
            match self
                .kv
                .append(s.id, &s.tokens[s.in_kv as usize..append_to as usize])
            {
                Ok(()) => {
                    s.in_kv = append_to;
                    break;
                }
                Err(KvError::OutOfBlocks { .. }) => {}
                Err(e) => panic!("scheduler invariant: a running sequence is on the device: {e}"),
            }
            let id = s.id;
            let need = self
                .kv
                .append_blocks_needed(id, (append_to - s.in_kv) as u64)
                .expect("running sequences are on the device");
            let deficit = need.saturating_sub(self.kv.num_free_blocks() as u64);
            if self.config.isolate_growth && !force {
                let (count, enough) = self.victims_needed(i, deficit);
                if victims + count > 1 || !enough {
                    self.stats.deferred += 1;
                    return Outcome::Deferred;
                }
            }
            let victim = self.pick_victim(i);
            // Under the whole-prompt guard a prompt in the middle of its prefill
            // is not preempted for another's growth: the grower waits instead.
            if let (Some(v), true) = (victim, self.config.admit_whole_prompt && !force) {
                if self.candidate(v).0 == 0 {
                    self.stats.deferred += 1;
                    return Outcome::Deferred;
                }
            }
            match victim {
                Some(v) => {
                    self.preempt(v, plan);
                    victims += 1;
                }
                None => {
                    self.preempt(idx, plan);
                    return Outcome::PreemptedItself;
                }
            }
        }
        self.push_entry(idx, n, budget, plan);
        Outcome::Scheduled
    }

    fn candidate(&self, idx: usize) -> (u8, (i64, u64)) {
        let s = self.s(idx);
        let num_blocks = self.kv.table(s.id).map_or(0, |t| t.num_blocks() as u32);
        let c = Candidate {
            priority: s.priority,
            arrival: s.arrival,
            num_blocks,
            num_computed: s.num_computed,
        };
        // Under the whole-prompt guard, a sequence in the middle of its prefill goes last.
        let protected = self.config.admit_whole_prompt && s.pending() > 1;
        (!protected as u8, self.victim.victim_key(&c))
    }

    /// The victim for `running[i]`: the policy's first among those after it.
    fn pick_victim(&self, i: usize) -> Option<usize> {
        self.running[i + 1..]
            .iter()
            .map(|&v| (self.candidate(v), Reverse(v)))
            .max()
            .map(|(_, Reverse(v))| v)
    }

    /// How many victims, in policy order, `running[i]` would need to free
    /// `deficit` blocks, and whether all of them together would.
    fn victims_needed(&mut self, i: usize, deficit: u64) -> (u32, bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for &v in &self.running[i + 1..] {
            let (p, k) = self.candidate(v);
            scratch.push((p, k, v));
        }
        scratch.sort_unstable_by(|a, b| b.cmp(a));
        let (mut freed, mut count) = (0u64, 0u32);
        for &(_, _, v) in &scratch {
            if freed >= deficit {
                break;
            }
            let t = self.kv.table(self.s(v).id).expect("running");
            freed += t
                .blocks()
                .iter()
                .filter(|&&b| self.kv.pool().ref_count(b) == Ok(1))
                .count() as u64;
            count += 1;
        }
        self.scratch = scratch;
        (count, freed >= deficit)
    }

    /// Preempts a running sequence (swap or recompute, as the policy says).
    fn preempt(&mut self, idx: usize, plan: &mut StepPlan) {
        let pos = self.running.iter().position(|&r| r == idx).expect("running");
        self.running.remove(pos);
        self.preempted_this_step = true;
        let s = self.s(idx);
        let id = s.id;
        let computed = &s.tokens[..s.num_computed as usize];
        let cost = PreemptionCost {
            recompute_tokens: s.num_computed as u64,
            expected_cached_tokens: self.kv.cached_prefix_len(computed, &PrefixKeys::default()),
            swap_blocks: self.kv.swap_out_blocks_needed(id).ok(),
            free_host_blocks: self.kv.num_free_host_blocks() as u64,
            block_size: self.kv.block_size(),
        };
        let mode = match self.mode.choose(&cost) {
            PreemptionMode::Swap if self.kv.swap_out(id).is_ok() => PreemptionMode::Swap,
            _ => {
                self.kv.free(id).expect("a running sequence is allocated");
                PreemptionMode::Recompute
            }
        };
        let s = self.slab[idx].as_mut().expect("live");
        s.samples_expected = 0;
        if mode == PreemptionMode::Swap {
            s.status = Status::Swapped;
            self.stats.preempted_swap += 1;
            Self::insert_by_key(&self.slab, &mut self.swapped, idx);
        } else {
            self.stats.preempted_recompute += 1;
            self.stats.recomputed_tokens += s.num_computed as u64;
            s.num_computed = 0;
            s.in_kv = 0;
            s.status = Status::Waiting;
            s.resumed = true;
            self.enqueue_waiting(idx);
        }
        plan.preempted.push(Preempted { seq: id, mode });
    }

    /// Brings swapped sequences back while they fit (watermark kept unless
    /// nothing runs), first in queue order.
    fn swap_in_some(&mut self, budget: &mut u32, plan: &mut StepPlan) {
        let max_seqs = self.config.max_num_seqs as usize;
        let bs = self.kv.block_size() as u64;
        if self.swapped.is_empty() {
            return;
        }
        let mut reserved = self.reserved_forks();
        while let Some(&idx) = self.swapped.first() {
            let s = self.s(idx);
            let room = self.running.len() + reserved + 1 + s.forks_left as usize <= max_seqs;
            if plan.scheduled.len() >= max_seqs || !room || *budget == 0 {
                return;
            }
            let n = s.pending().min(*budget);
            if n == 0 || (!self.config.enable_chunked_prefill && n < s.pending()) {
                return;
            }
            let append_to = (s.num_computed + n).max(s.in_kv) as u64;
            let grow =
                crate::sizing::blocks_for(append_to, bs) - crate::sizing::blocks_for(s.in_kv as u64, bs);
            let needed = self.kv.swap_in_blocks_needed(s.id).expect("swapped") + grow;
            let watermark = if self.running.is_empty() {
                0
            } else {
                self.kv.watermark_blocks() as u64
            };
            if needed + watermark > self.kv.num_free_blocks() as u64 || self.kv.swap_in(s.id).is_err() {
                return;
            }
            self.swapped.remove(0);
            let s = self.slab[idx].as_mut().expect("live");
            reserved += s.forks_left as usize;
            s.status = Status::Running;
            let (id, from) = (s.id, s.in_kv as usize);
            let appended = self.kv.append(id, &s.tokens[from..append_to as usize]);
            Self::insert_by_key(&self.slab, &mut self.running, idx);
            match appended {
                Ok(()) => {
                    self.s_mut(idx).in_kv = append_to as u32;
                    self.push_entry(idx, n, budget, plan);
                }
                // A copy-on-write of a tail shared again: it grows next step,
                // with the running sequences (and may preempt then).
                Err(KvError::OutOfBlocks { .. }) => {}
                Err(e) => panic!("scheduler invariant: a swapped-in sequence is on the device: {e}"),
            }
        }
    }

    /// Samples running sequences will fork after their prefill (they count
    /// against `max_num_seqs` already).
    fn reserved_forks(&self) -> usize {
        self.running.iter().map(|&i| self.s(i).forks_left as usize).sum()
    }

    /// Admits waiting requests in queue order while they fit.
    fn admit_some(&mut self, budget: &mut u32, plan: &mut StepPlan) {
        let max_seqs = self.config.max_num_seqs as usize;
        let keys = PrefixKeys::default();
        if self.waiting.is_empty() {
            return;
        }
        let mut reserved = self.reserved_forks();
        while let Some(&idx) = self.waiting.first() {
            let s = self.slab[idx].as_ref().expect("live");
            let len = s.tokens.len() as u32;
            let room = self.running.len() + reserved + 1 + s.forks_left as usize <= max_seqs;
            if plan.scheduled.len() >= max_seqs || !room || *budget == 0 {
                return;
            }
            if !self.config.enable_chunked_prefill && len > *budget {
                return;
            }
            // With prefix caching on, blocks are still taken chunk by chunk: a
            // block is cached as soon as it is allocated, so allocating a
            // prompt's later chunks early would let another prompt hit blocks
            // not computed yet. The guard then only checks that all of it fits.
            let whole = self.config.admit_whole_prompt;
            let alloc_len = if whole && !self.kv.config().enable_prefix_caching {
                len
            } else {
                len.min(*budget)
            };
            let checked = if whole { len } else { alloc_len };
            // The watermark is kept unless nothing runs (then anything that fits the pool may start).
            let now = self
                .kv
                .check_admission_for(&s.tokens[..checked as usize], &keys, 0)
                == Admission::Now;
            let prompt = &s.tokens[..alloc_len as usize];
            if !now && !self.running.is_empty() {
                return;
            }
            let id = s.id;
            let a = match self.kv.allocate(id, prompt) {
                Ok(a) => a,
                Err(KvError::OutOfBlocks { .. }) => return,
                Err(e) => panic!("scheduler invariant: a waiting sequence holds no blocks: {e}"),
            };
            self.waiting.remove(0);
            let s = self.s_mut(idx);
            reserved += s.forks_left as usize;
            s.num_computed = a.cached_tokens;
            s.in_kv = alloc_len;
            s.status = Status::Running;
            let n = (len - s.num_computed)
                .min(*budget)
                .min(alloc_len - s.num_computed);
            Self::insert_by_key(&self.slab, &mut self.running, idx);
            self.push_entry(idx, n, budget, plan);
        }
    }

    /// Adds a planned sequence to the batch with its new slots.
    fn push_entry(&mut self, idx: usize, n: u32, budget: &mut u32, plan: &mut StepPlan) {
        let s = self.slab[idx].as_mut().expect("live");
        let start = s.num_computed;
        let from = plan.slots.len() as u32;
        self.kv
            .slots_into(s.id, start as u64..(start + n) as u64, &mut plan.slots)
            .expect("planned tokens are in the manager");
        s.num_computed += n;
        let samples = if s.pending() == 0 { 1 + s.forks_left } else { 0 };
        s.samples_expected = samples;
        self.expected_outputs += samples as u64;
        let is_decode = n == 1 && samples > 0 && start >= s.prompt_len;
        plan.scheduled.push(ScheduledSeq {
            seq: s.id,
            start,
            num_new_tokens: n,
            is_prefill: !is_decode,
            num_samples: samples,
            slots: from..plan.slots.len() as u32,
        });
        plan.num_batched_tokens += n;
        *budget -= n;
    }

    /// Takes the tokens the engine sampled for the last plan: one per sample
    /// (`num_samples` of each scheduled sequence; for an `n`-sample request
    /// finishing its prompt, `request.seq(0..n)`). Appends them, forks the
    /// parallel samples (sharing the prompt's blocks), and frees the sequences
    /// that stopped or reached `max_new_tokens`.
    ///
    /// Errors (nothing changes): `OutputCountMismatch`, `UnexpectedOutput`.
    pub fn on_step_output(&mut self, outputs: &[SampledToken]) -> Result<(), SchedulerError> {
        if outputs.len() as u64 != self.expected_outputs {
            return Err(SchedulerError::OutputCountMismatch {
                expected: self.expected_outputs,
                got: outputs.len() as u64,
            });
        }
        self.seen.clear();
        self.seen.extend(outputs.iter().map(|o| o.seq));
        self.seen.sort_unstable();
        if let Some(w) = self.seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(SchedulerError::UnexpectedOutput { seq: w[0] });
        }
        for o in outputs {
            if !self.expects(o.seq) {
                return Err(SchedulerError::UnexpectedOutput { seq: o.seq });
            }
        }
        // Forks first: a child copies its parent's computed tokens.
        for o in outputs {
            if !self.index.contains_key(&o.seq) {
                self.fork_sample(o);
            }
        }
        for o in outputs {
            let Some(&idx) = self.index.get(&o.seq) else {
                continue; // a child forked above that finished at once
            };
            let s = self.s_mut(idx);
            if s.samples_expected == 0 {
                continue; // a child forked above
            }
            s.samples_expected = 0;
            s.forks_left = 0;
            s.tokens.push(o.token);
            self.finish_if_done(idx, o.stop);
        }
        self.expected_outputs = 0;
        Ok(())
    }

    fn expects(&self, seq: SeqId) -> bool {
        if let Some(s) = self.state(seq) {
            return s.samples_expected > 0;
        }
        let (req, sample) = RequestId::of(seq);
        sample > 0
            && self
                .state(req.seq(0))
                .is_some_and(|p| sample < p.samples_expected)
    }

    fn fork_sample(&mut self, o: &SampledToken) {
        let (req, _) = RequestId::of(o.seq);
        let pidx = self.index[&req.seq(0)];
        let p = self.slab[pidx].as_ref().expect("live");
        self.kv
            .fork(p.id, o.seq)
            .expect("a parent finishing its prompt is on the device");
        let mut tokens = self.spare_tokens.pop().unwrap_or_default();
        tokens.clear();
        tokens.extend_from_slice(&p.tokens[..p.num_computed as usize]);
        tokens.push(o.token);
        let child = SeqState {
            id: o.seq,
            tokens,
            key: (p.key.0, o.seq),
            forks_left: 0,
            samples_expected: 0,
            resumed: false,
            status: Status::Running,
            ..*p
        };
        let idx = self.insert_state(child);
        *self.live.get_mut(&SeqId(req.0)).expect("the parent is live") += 1;
        Self::insert_by_key(&self.slab, &mut self.running, idx);
        self.finish_if_done(idx, o.stop);
    }

    fn finish_if_done(&mut self, idx: usize, stop: bool) {
        let s = self.s(idx);
        if !stop && s.generated() < s.max_new {
            return;
        }
        let id = s.id;
        self.kv
            .free(id)
            .expect("a sequence that just ran is on the device");
        let pos = self.running.iter().position(|&r| r == idx).expect("running");
        self.running.remove(pos);
        self.index.remove(&id);
        let s = self.slab[idx].take().expect("live");
        self.spare_tokens.push(s.tokens);
        self.free_slab.push(idx);
        let key = SeqId(RequestId::of(id).0 .0);
        let live = self.live.get_mut(&key).expect("live request");
        *live -= 1;
        if *live == 0 {
            self.live.remove(&key);
        }
        self.finished.push(id);
        self.stats.finished += 1;
    }

    /// Checks the scheduler's invariants (module docs) and the manager's.
    pub fn check_invariants(&self) -> Result<(), crate::error::InvariantViolation> {
        use crate::error::InvariantViolation as V;
        self.kv.check_invariants()?;
        let queues = [
            (&self.running, Status::Running),
            (&self.waiting, Status::Waiting),
            (&self.swapped, Status::Swapped),
        ];
        let mut n = 0;
        for (q, status) in queues {
            n += q.len();
            for &idx in q {
                let s = self.slab[idx]
                    .as_ref()
                    .ok_or_else(|| V::new(format!("queue entry {idx} is empty")))?;
                if s.status != status || self.index.get(&s.id) != Some(&idx) {
                    return Err(V::new(format!(
                        "{:?} is queued as {status:?} but is {:?}",
                        s.id, s.status
                    )));
                }
                let ok = match status {
                    Status::Running => self.kv.num_tokens(s.id) == Ok(s.in_kv as u64),
                    Status::Swapped => self
                        .kv
                        .swapped_table(s.id)
                        .is_ok_and(|t| t.num_tokens() == s.in_kv),
                    Status::Waiting => !self.kv.contains(s.id) && !self.kv.is_swapped(s.id) && s.in_kv == 0,
                };
                let counts = s.in_kv as usize <= s.tokens.len()
                    && (status == Status::Waiting || s.num_computed <= s.in_kv);
                if !ok || !counts {
                    return Err(V::new(format!(
                        "{:?} ({status:?}) disagrees with the manager",
                        s.id
                    )));
                }
            }
        }
        if n != self.index.len()
            || self.kv.num_seqs() + self.kv.num_swapped() != self.running.len() + self.swapped.len()
        {
            return Err(V::new(
                "the queues, the index and the manager disagree on the sequences".to_string(),
            ));
        }
        Ok(())
    }
}
