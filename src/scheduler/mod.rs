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
//! the parallel samples after a prefill, frees finished sequences and lists
//! them in that step's plan. A
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

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{BatchError, KvError, SchedulerError};
use crate::ids::{SeqHandle, SeqId, TokenId};
use crate::manager::{KvCacheManager, SeqMap};
use crate::prefix::{KvEvent, PrefixKeys};

mod admission;
mod cancel;
mod output;
mod policy;
mod preemption;
#[cfg(test)]
mod tests;
mod types;

use preemption::Outcome;

pub use policy::{
    AlwaysRecompute, AlwaysSwap, Automatic, Candidate, Fcfs, LatestArrival, LowestPriority, MostBlocks,
    PreemptionCost, PreemptionMode, PreemptionModePolicy, PriorityOrder, QueueOrder, VictimPolicy,
};
pub use types::{
    Preempted, Request, RequestId, SampledToken, ScheduledSeq, SchedulerConfig, SchedulerStats, StepPlan,
    MAX_SAMPLES,
};

/// Token lists of finished sequences kept for reuse (those of up to 2^16 tokens).
const MAX_SPARE_TOKENS: usize = 256;

/// The longest run of decodes handed to the manager in one call.
const DECODE_RUN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Waiting,
    Running,
    Swapped,
}

/// One sequence (one sample of a request): what a decode step and its
/// outputs read and write, kept in one 64-byte cache line (the slab's hot
/// half), so planning a decode and taking its token touch one line each.
#[derive(Debug)]
#[repr(align(64))]
struct SeqState {
    /// Prompt and generated tokens.
    tokens: Vec<TokenId>,
    id: SeqId,
    /// Its handle in the manager while it runs (for the batched decode), as
    /// slot index and generation; the owner tag is the scheduler's
    /// (`Scheduler::handle_owner`), valid when `has_handle`.
    handle_index: u32,
    handle_gen: u32,
    /// The last of `tokens` (what a decode appends), kept here so planning
    /// a decode does not read the token list.
    last_token: TokenId,
    /// Tokens whose KV the engine has computed (or computes in the last planned step).
    num_computed: u32,
    /// Tokens the manager holds for it.
    in_kv: u32,
    prompt_len: u32,
    max_new: u32,
    /// Sampled tokens the last plan asked of it (0: none; at most `MAX_SAMPLES`).
    samples_expected: u16,
    /// Samples still to fork from this one (sample 0, until its prompt is
    /// computed; below `MAX_SAMPLES`).
    forks_left: u8,
    has_handle: bool,
}

const _: () = assert!(std::mem::size_of::<Option<SeqState>>() == 64);
const _: () = assert!(std::mem::size_of::<Expected>() == 16);
const _: () = assert!(MAX_SAMPLES <= u16::MAX as u32 && MAX_SAMPLES - 1 <= u8::MAX as u32);

/// The rest of a sequence's state, read when it is queued, admitted,
/// preempted or forked (the slab's cold half, `Scheduler::cold`, same index).
#[derive(Debug, Clone)]
struct Cold {
    priority: i32,
    arrival: u64,
    /// Queue order key (smallest first), then the sequence id.
    key: ((i64, u64), SeqId),
    status: Status,
    /// Preempted by recompute: admitted before never-run requests.
    resumed: bool,
    /// The request's prefix keys (`None`: the defaults), shared by its samples.
    keys: Option<Arc<PrefixKeys>>,
}

impl Cold {
    fn keys(&self) -> &PrefixKeys {
        static DEFAULT: PrefixKeys = PrefixKeys {
            cache_salt: None,
            adapter: None,
            mm_spans: Vec::new(),
        };
        self.keys.as_deref().unwrap_or(&DEFAULT)
    }
}

/// One sampled token a plan asked for: of sequence `seq`, the `sample`-th
/// sample of the sequence in slab entry `idx` (sample > 0: a child to fork).
#[derive(Clone, Copy, Debug)]
struct Expected {
    seq: SeqId,
    /// The slab entry (an index below 2^32: 16 bytes an entry).
    idx: u32,
    sample: u32,
}

impl SeqState {
    fn pending(&self) -> u32 {
        self.tokens.len() as u32 - self.num_computed
    }

    fn generated(&self) -> u32 {
        self.tokens.len() as u32 - self.prompt_len
    }
}

/// The reference scheduler. It owns the manager; read it with [`Self::kv`].
///
/// ```
/// use pagedkv::{KvCacheConfig, KvCacheManager, Request, RequestId, SampledToken, Scheduler,
///               SchedulerConfig, StepPlan};
/// let kv = KvCacheManager::new(KvCacheConfig { num_blocks: 64, block_size: 16, ..Default::default() }).unwrap();
/// let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
/// sched.add_request(Request { id: RequestId(1), prompt: (0..40).collect(), max_new_tokens: 3,
///                             n: 2, ..Default::default() }).unwrap();
/// let mut plan = StepPlan::default();
/// let mut out = Vec::new();
/// while !sched.is_idle() {
///     sched.step(&mut plan);
///     // ... run plan.ops, then the batch: plan.scheduled with plan.slots_of(i) and
///     //     sched.block_table(seq) ...
///     out.clear();
///     for s in &plan.scheduled {
///         // sample 0 finishing an n-sample prompt reports one token per sample
///         for k in 0..s.num_samples {
///             out.push(SampledToken { seq: s.sample_seq(k), token: 7, stop: false });
///         }
///     }
///     sched.on_step_output(&mut plan, &out).unwrap(); // plan.finished: what this step finished
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
    /// The owner tag of the manager's handles (set with the first handle kept).
    handle_owner: u32,
    /// The cold half of each slab entry (stale for free entries).
    cold: Vec<Cold>,
    free_slab: Vec<usize>,
    spare_tokens: Vec<Vec<TokenId>>,
    index: SeqMap<usize>,
    /// Live sequences per request id (keyed by `SeqId(request)`).
    live: SeqMap<u32>,
    running: Vec<usize>,
    /// Taken from the front as requests are admitted: a deque, so admitting
    /// from a long queue does not shift it.
    waiting: VecDeque<usize>,
    swapped: VecDeque<usize>,
    /// Sequences finished by the outputs being taken, moved into the plan.
    finished: Vec<SeqId>,
    /// Slab entries of the sequences finished by the outputs being taken
    /// (freed after the outputs are taken).
    done: Vec<u32>,
    rejected: Vec<RequestId>,
    /// Requests cancelled while the last plan, which the engine still runs,
    /// held some of their sequences: their outputs are dropped, and their ids
    /// stay reserved until `on_step_output`.
    cancelled_in_flight: Vec<RequestId>,
    /// The outputs of the live sequences, when some were cancelled in flight.
    kept_outputs: Vec<SampledToken>,
    /// The outputs the plans since the last `on_step_output` asked for, in
    /// plan order (so outputs reported in that order are checked without lookups).
    expected: Vec<Expected>,
    /// A step was planned while outputs were still expected: check outputs
    /// the general way.
    expected_stale: bool,
    /// Some of `expected` are samples to fork (sample > 0).
    expected_forks: bool,
    preempted_this_step: bool,
    scratch: Vec<(u8, (i64, u64), usize)>,
    /// The step's run of plain decodes, handed to the manager in one call.
    batch: Vec<(SeqHandle, TokenId)>,
    /// The owner tag every entry of `batch` carries.
    batch_owner: u32,
    seen: Vec<SeqId>,
    /// The step's slot mapping being built, one buffer per KV cache group
    /// (group 0's is the plan's own buffer, swapped in for the step).
    slots: Vec<Vec<crate::ids::Slot>>,
    stats: SchedulerStats,
}

impl Scheduler {
    /// A scheduler over `kv` with the default policies: latest-arrival victims,
    /// recompute preemption, first-come-first-served queues.
    ///
    /// Errors: `InvalidConfig` for unusable budgets; `ManagerInUse` when `kv`
    /// already holds sequences (the scheduler must own every sequence it
    /// plans: hand it a fresh manager, or one whose sequences were freed).
    pub fn new(kv: KvCacheManager, config: SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate(kv.config().max_model_len)?;
        let sequences = (kv.num_seqs() + kv.num_swapped()) as u64;
        if sequences > 0 {
            return Err(SchedulerError::ManagerInUse { sequences });
        }
        let num_groups = kv.num_groups();
        Ok(Scheduler {
            kv,
            config,
            victim: Box::new(LatestArrival),
            mode: Box::new(AlwaysRecompute),
            order: Box::new(Fcfs),
            slab: Vec::new(),
            handle_owner: 0,
            cold: Vec::new(),
            free_slab: Vec::new(),
            spare_tokens: Vec::new(),
            index: SeqMap::default(),
            live: SeqMap::default(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            swapped: VecDeque::new(),
            finished: Vec::new(),
            done: Vec::new(),
            rejected: Vec::new(),
            cancelled_in_flight: Vec::new(),
            kept_outputs: Vec::new(),
            expected: Vec::new(),
            expected_stale: false,
            expected_forks: false,
            preempted_this_step: false,
            scratch: Vec::new(),
            batch: Vec::new(),
            batch_owner: 0,
            seen: Vec::new(),
            slots: vec![Vec::new(); num_groups],
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

    /// Hands the manager back, with every sequence of the requests still
    /// queued or running (free them, or pass the manager to a new scheduler
    /// only once it holds none).
    pub fn into_kv(self) -> KvCacheManager {
        self.kv
    }

    /// Drops the hash of every free cached block, so that no later prompt hits
    /// them (after a weight update or an adapter reload); blocks in use keep
    /// theirs until freed. Returns the number of blocks uncached. See
    /// [`KvCacheManager::reset_prefix_cache`].
    pub fn reset_prefix_cache(&mut self) -> usize {
        self.kv.reset_prefix_cache()
    }

    /// Moves the KV events queued since the last step (or the last call) into
    /// `out`, cleared first. [`Self::step`] does this into `plan.events`
    /// already; this is for events raised between steps (a cancellation, a
    /// reset) that a router should hear of at once.
    pub fn drain_events(&mut self, out: &mut Vec<KvEvent>) {
        self.kv.drain_events(out);
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

    /// Keeps `h` (the manager's handle of the sequence in slab entry `idx`, if any).
    fn set_handle(&mut self, idx: usize, h: Option<SeqHandle>) {
        let s = self.slab[idx].as_mut().expect("live");
        s.has_handle = h.is_some();
        if let Some(h) = h {
            debug_assert!(self.handle_owner == 0 || self.handle_owner == h.owner);
            self.handle_owner = h.owner;
            (s.handle_index, s.handle_gen) = (h.index, h.gen);
        }
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
        if self.live.contains_key(&SeqId(r.id.0)) || self.cancelled_in_flight.contains(&r.id) {
            return Err(SchedulerError::DuplicateRequest { request: r.id });
        }
        let max_new = self.capped_max_new(r.prompt.len() as u64, r.max_new_tokens);
        if let Err(reason) =
            self.kv
                .check_runnable_chunked(r.prompt.len() as u64, max_new as u64, self.prefill_chunk())
        {
            self.rejected.push(r.id);
            self.stats.rejected += 1;
            return Err(SchedulerError::Rejected {
                request: r.id,
                reason,
            });
        }
        // Room for every token the request may reach (admission bounds it by
        // max_model_len): 4 bytes a token, nothing beside the KV it will hold,
        // and decoding never grows the list.
        let mut tokens = self.spare_tokens.pop().unwrap_or_default();
        tokens.clear();
        tokens.reserve(r.prompt.len() + max_new as usize);
        tokens.extend_from_slice(&r.prompt);
        let id = r.id.seq(0);
        let state = SeqState {
            id,
            last_token: tokens.last().copied().unwrap_or(0),
            tokens,
            prompt_len: r.prompt.len() as u32,
            max_new,
            num_computed: 0,
            in_kv: 0,
            forks_left: (r.n - 1) as u8,
            samples_expected: 0,
            handle_index: 0,
            handle_gen: 0,
            has_handle: false,
        };
        let cold = Cold {
            priority: r.priority,
            arrival: r.arrival,
            key: (self.order.queue_key(r.priority, r.arrival), id),
            status: Status::Waiting,
            resumed: false,
            keys: (!r.keys.is_empty()).then(|| Arc::new(r.keys)),
        };
        let idx = self.insert_state(state, cold);
        self.live.insert(SeqId(r.id.0), 1);
        self.enqueue_waiting(idx);
        Ok(())
    }

    /// `max_new_tokens` after the `cap_output_at_max_model_len` rule: capped
    /// at `max_model_len − prompt` when the prompt is shorter than `max_model_len`.
    fn capped_max_new(&self, prompt_len: u64, max_new_tokens: u32) -> u32 {
        let max_len = self.kv.config().max_model_len as u64;
        if self.config.cap_output_at_max_model_len && prompt_len < max_len {
            max_new_tokens.min((max_len - prompt_len) as u32)
        } else {
            max_new_tokens
        }
    }

    /// The largest prefill chunk this scheduler plans: its token budget (the
    /// whole prompt without chunked prefill). Admission counts a windowed
    /// group's need with it.
    fn prefill_chunk(&self) -> u64 {
        if self.config.enable_chunked_prefill {
            self.config.max_num_batched_tokens as u64
        } else {
            u64::MAX
        }
    }

    fn insert_state(&mut self, state: SeqState, cold: Cold) -> usize {
        let id = state.id;
        let idx = match self.free_slab.pop() {
            Some(i) => {
                self.slab[i] = Some(state);
                self.cold[i] = cold;
                i
            }
            None => {
                self.slab.push(Some(state));
                self.cold.push(cold);
                self.slab.len() - 1
            }
        };
        self.index.insert(id, idx);
        idx
    }

    fn enqueue_waiting(&mut self, idx: usize) {
        let k = |c: &Cold| (!c.resumed, c.key);
        let cold = &self.cold;
        let key = k(&cold[idx]);
        let pos = self.waiting.partition_point(|&i| k(&cold[i]) < key);
        self.waiting.insert(pos, idx);
    }

    fn insert_by_key(cold: &[Cold], list: &mut Vec<usize>, idx: usize) {
        let key = cold[idx].key;
        let pos = list.partition_point(|&i| cold[i].key < key);
        list.insert(pos, idx);
    }

    fn insert_by_key_deque(cold: &[Cold], list: &mut VecDeque<usize>, idx: usize) {
        let key = cold[idx].key;
        let pos = list.partition_point(|&i| cold[i].key < key);
        list.insert(pos, idx);
    }

    /// Plans the next step into `plan` (cleared first): the block operations
    /// to run first, the batch with each sequence's new slots, and the
    /// sequences preempted, finished and rejected. Call
    /// [`Self::on_step_output`] after the engine ran it, before the next step.
    /// A decode-only step allocates nothing once `plan` has grown.
    pub fn step(&mut self, plan: &mut StepPlan) {
        plan.clear();
        plan.num_groups = self.slots.len() as u32;
        std::mem::swap(&mut plan.slots, &mut self.slots[0]);
        self.expected_stale |= !self.expected.is_empty();
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
                // A run of plain decodes goes to the manager in one call; the
                // first it cannot grow is planned alone (it may preempt).
                // (In runs of at most DECODE_RUN, so the sequences' state read to
                // build the batch is still in cache when it is recorded.)
                let room = (max_seqs - plan.scheduled.len())
                    .min(budget as usize)
                    .min(DECODE_RUN);
                let run = self.decode_run(i, room, &mut budget, plan);
                if run > 0 {
                    let done = self.decode_batch(i, run, &mut budget, plan);
                    i += done;
                    if done == run {
                        continue;
                    }
                }
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
        // Group-major: group 0's mapping, then each other group's.
        std::mem::swap(&mut plan.slots, &mut self.slots[0]);
        for g in self.slots[1..].iter_mut() {
            plan.slots.extend_from_slice(g);
            g.clear();
        }
        self.kv.drain_ops(&mut plan.ops);
        self.kv.drain_events(&mut plan.events);
    }

    /// Plans the plain decodes among `running[i..]`, in order, up to `room`
    /// of them (sequences with one token to compute, not yet in the manager,
    /// no sample to fork), as if their appends succeed, filling
    /// `self.batch[..run]` with their handles and tokens. Returns how many (`run`).
    ///
    /// One pass over the run, which stops at the first sequence that is not
    /// a plain decode, writes every list through zipped slices: the batch is
    /// a buffer that only grows, whose entries keep their owner tag; the
    /// expectations and the plan entries are grown by `room` placeholders
    /// holding the fields every decode shares (one or two vector stores
    /// each), and cut back to the run. The loop stores only the fields that
    /// differ, and reads each slab entry once (a second pass to append the
    /// plan entries read them again). Pushing to the lists in the loop sent
    /// each list's length through memory on every sequence.
    fn decode_run(&mut self, i: usize, room: usize, budget: &mut u32, plan: &mut StepPlan) -> usize {
        let room = room.min(self.running.len() - i);
        let owner = self.handle_owner;
        // Every batch entry carries the owner tag already: the loop writes
        // only the slot index, the generation and the token.
        if self.batch.len() < room || self.batch_owner != owner {
            let unset = SeqHandle {
                index: 0,
                gen: 0,
                owner,
            };
            let len = self.batch.len().max(room);
            self.batch.clear();
            self.batch.resize(len, (unset, 0));
            self.batch_owner = owner;
        }
        let from_expected = self.expected.len();
        self.expected.resize(
            from_expected + room,
            Expected {
                seq: SeqId(0),
                idx: 0,
                sample: 0,
            },
        );
        let from_plan = plan.scheduled.len();
        plan.scheduled.resize(
            from_plan + room,
            ScheduledSeq {
                seq: SeqId(0),
                start: 0,
                num_new_tokens: 1,
                is_prefill: false,
                num_samples: 1,
                slots: 0..0,
            },
        );
        let from = self.slots[0].len() as u32;
        let mut run = 0;
        let slab = &mut self.slab[..];
        let entries = self.running[i..i + room]
            .iter()
            .zip(self.batch.iter_mut())
            .zip(self.expected[from_expected..].iter_mut())
            .zip(plan.scheduled[from_plan..].iter_mut().zip(from..));
        for (((&idx, b), e), (p, slot)) in entries {
            let s = slab[idx].as_mut().expect("live");
            if !(s.has_handle
                && s.tokens.len() as u32 == s.num_computed + 1
                && s.in_kv == s.num_computed
                && s.forks_left == 0)
            {
                break;
            }
            debug_assert_eq!(s.tokens.last(), Some(&s.last_token));
            debug_assert_eq!(s.samples_expected, 0);
            debug_assert_eq!(b.0.owner, owner);
            (b.0.index, b.0.gen, b.1) = (s.handle_index, s.handle_gen, s.last_token);
            // `sample` is the placeholder's 0.
            (e.seq, e.idx) = (s.id, idx as u32);
            let start = s.num_computed;
            (p.seq, p.start, p.is_prefill, p.slots) = (s.id, start, start < s.prompt_len, slot..slot + 1);
            s.in_kv += 1;
            s.num_computed += 1;
            s.samples_expected = 1;
            run += 1;
        }
        self.expected.truncate(from_expected + run);
        plan.scheduled.truncate(from_plan + run);
        plan.num_batched_tokens += run as u32;
        *budget -= run as u32;
        run
    }

    /// Appends the decodes `decode_run` planned (`running[i..i + run]`) in
    /// one manager call; returns how many it grew. When one ran out of
    /// blocks, it and those after it are taken out of the plan again (it is
    /// planned alone next).
    fn decode_batch(&mut self, i: usize, run: usize, budget: &mut u32, plan: &mut StepPlan) -> usize {
        let done = match self.kv.append_decode_into(&self.batch[..run], &mut self.slots) {
            Ok(()) => return run,
            Err(BatchError {
                done,
                error: KvError::OutOfBlocks { .. },
            }) => done,
            Err(e) => {
                panic!("scheduler invariant: a running sequence is on the device under its handle: {e}")
            }
        };
        let undo = run - done;
        for &idx in &self.running[i + done..i + run] {
            let s = self.slab[idx].as_mut().expect("live");
            s.in_kv -= 1;
            s.num_computed -= 1;
            s.samples_expected = 0;
        }
        plan.scheduled.truncate(plan.scheduled.len() - undo);
        self.expected.truncate(self.expected.len() - undo);
        plan.num_batched_tokens -= undo as u32;
        *budget += undo as u32;
        done
    }

    /// Adds a planned sequence to the batch with its new slots.
    fn push_entry(&mut self, idx: usize, n: u32, budget: &mut u32, plan: &mut StepPlan) {
        let s = self.s(idx);
        let (id, start) = (s.id, s.num_computed as u64);
        let from = self.slots[0].len() as u32;
        for (g, out) in self.slots.iter_mut().enumerate() {
            self.kv
                .group(g)
                .and_then(|view| view.slots_into(id, start..start + n as u64, out))
                .expect("planned tokens are in the manager");
        }
        let to = self.slots[0].len() as u32;
        self.record_entry(idx, n, from..to, budget, plan);
    }

    /// Adds a planned sequence to the batch whose new slots are
    /// `self.slots[0][slots]` (and likewise in every group), and notes the
    /// samples it will report.
    #[inline]
    fn record_entry(
        &mut self,
        idx: usize,
        n: u32,
        slots: std::ops::Range<u32>,
        budget: &mut u32,
        plan: &mut StepPlan,
    ) {
        let s = self.slab[idx].as_mut().expect("live");
        let start = s.num_computed;
        s.num_computed += n;
        let samples = if s.pending() == 0 {
            1 + s.forks_left as u32
        } else {
            0
        };
        s.samples_expected = samples as u16;
        if samples == 1 {
            self.expected.push(Expected {
                seq: s.id,
                idx: idx as u32,
                sample: 0,
            });
        } else {
            let (req, _) = RequestId::of(s.id);
            self.expected_forks |= samples > 1;
            self.expected.extend((0..samples).map(|sample| Expected {
                seq: req.seq(sample),
                idx: idx as u32,
                sample,
            }));
        }
        let is_decode = n == 1 && samples > 0 && start >= s.prompt_len;
        plan.scheduled.push(ScheduledSeq {
            seq: s.id,
            start,
            num_new_tokens: n,
            is_prefill: !is_decode,
            num_samples: samples,
            slots,
        });
        plan.num_batched_tokens += n;
        *budget -= n;
    }

    /// Checks the scheduler's invariants (module docs) and the manager's.
    pub fn check_invariants(&self) -> Result<(), crate::error::InvariantViolation> {
        use crate::error::InvariantViolation as V;
        self.kv.check_invariants()?;
        let queues: [(Vec<usize>, Status); 3] = [
            (self.running.clone(), Status::Running),
            (self.waiting.iter().copied().collect(), Status::Waiting),
            (self.swapped.iter().copied().collect(), Status::Swapped),
        ];
        let mut n = 0;
        for (q, status) in queues {
            n += q.len();
            for &idx in &q {
                let s = self.slab[idx]
                    .as_ref()
                    .ok_or_else(|| V::new(format!("queue entry {idx} is empty")))?;
                if self.cold[idx].status != status || self.index.get(&s.id) != Some(&idx) {
                    return Err(V::new(format!(
                        "{:?} is queued as {status:?} but is {:?}",
                        s.id, self.cold[idx].status
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
