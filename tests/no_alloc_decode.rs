//! A warm decode loop makes no heap allocation (DESIGN.md, "Rules for the hot
//! path"): 256 sequences each append one token per step for thousands of
//! steps (a new block every `block_size`-th step), the step's copies are
//! drained into a reused `BlockOps` and the batch's slot mapping is built in a
//! reused `Vec<u64>`.
//!
//! The warm-up is one full pass of the same workload (admit, decode, free);
//! it grows the manager's recycled table storage, its sequence map and copy
//! queue, and the caller's buffers. The measured pass then repeats the whole
//! workload, admission and frees included, and must not allocate, reallocate
//! or free heap memory even once.
//!
//! A hybrid model (a full-attention and a sliding-window KV cache group sharing
//! one pool) is held to the same rule, its window releasing a block every
//! `block_size` steps per sequence, and so is the scheduler's decode step on it.
//!
//! The scheduler's decode step is held to the same rule: with 256 requests
//! decoding, `Scheduler::step(&mut plan)` + `on_step_output(&outputs)` with a
//! reused plan and outputs buffer makes no heap allocation once warm (one full
//! pass of the same workload grows the sequences' recycled token and table
//! storage, the queues and the plan).
//!
//! A counting global allocator wraps the system allocator. It counts only on
//! the thread that is measuring (a thread-local flag and thread-local
//! counters), so tests that the harness runs on other threads do not disturb
//! the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pagedkv::kv_events::{EventSource, KvEventEncoder};
use pagedkv::{
    AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, PrefixOffload, Request, RequestId, SampledToken,
    Scheduler, SchedulerConfig, SeqHandle, SeqId, Slot, StepPlan,
};

struct CountingAllocator;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// alloc, alloc_zeroed and realloc calls while measuring.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    /// dealloc calls while measuring.
    static DEALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note(counter: &'static std::thread::LocalKey<Cell<usize>>) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        let _ = counter.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping touches only `const`-initialised thread-locals
// without destructors, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(&DEALLOCS);
        // SAFETY: `ptr` was allocated by `System` with `layout` (every method forwards to it).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result with the heap allocations and frees this
/// thread made meanwhile.
fn count_heap_calls<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCS.with(|c| c.set(0));
    DEALLOCS.with(|c| c.set(0));
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, ALLOCS.with(Cell::get), DEALLOCS.with(Cell::get))
}

const SEQS: u64 = 256;
const STEPS: u32 = 2_000;
const PROMPT: u32 = 20;
const BLOCK_SIZE: u32 = 16;
/// Parallel samples per request in the fork variant.
const SAMPLES: u64 = 4;

/// The hybrid models' window: a new block every 16 steps, one released every 16.
const WINDOW: u32 = 64;

fn hybrid() -> Vec<AttentionKind> {
    vec![
        AttentionKind::Full,
        AttentionKind::SlidingWindow { window: WINDOW },
    ]
}

fn manager_with(prefix_caching: bool, groups: Vec<AttentionKind>) -> KvCacheManager {
    let blocks_per_seq = (PROMPT + STEPS).div_ceil(BLOCK_SIZE);
    KvCacheManager::new(KvCacheConfig {
        num_blocks: SEQS as u32 * blocks_per_seq * groups.len() as u32,
        block_size: BLOCK_SIZE,
        max_model_len: PROMPT + STEPS,
        watermark: 0.0,
        enable_prefix_caching: prefix_caching,
        groups,
        ..Default::default()
    })
    .unwrap()
}

/// What the engine keeps across steps.
struct Engine {
    kv: KvCacheManager,
    ops: BlockOps,
    slots: Vec<Slot>,
    /// Every group's slots (hybrid models).
    group_slots: Vec<Vec<Slot>>,
    /// The batched decode's handles and tokens.
    batch: Vec<(SeqHandle, u32)>,
    prompt: Vec<u32>,
}

impl Engine {
    fn new(prefix_caching: bool) -> Self {
        Self::with_groups(prefix_caching, vec![AttentionKind::Full])
    }

    fn with_groups(prefix_caching: bool, groups: Vec<AttentionKind>) -> Self {
        Engine {
            group_slots: vec![Vec::new(); groups.len()],
            kv: manager_with(prefix_caching, groups),
            ops: BlockOps::default(),
            slots: Vec::new(),
            batch: Vec::new(),
            prompt: (0..PROMPT).collect(),
        }
    }

    /// One pass of the hybrid engine: admit `SEQS` sequences, decode `STEPS`
    /// steps taking every group's slot of the new token in one call, free
    /// them all (with `check`, first check what each group holds: that
    /// allocates, so not in the measured pass). Returns the blocks the
    /// windows released.
    fn hybrid_pass(&mut self, check: bool) -> u64 {
        self.groups_pass(check, false)
    }

    /// `hybrid_pass`, with `batched` the steps in one `append_decode_into`
    /// over the sequences' handles each.
    fn groups_pass(&mut self, check: bool, batched: bool) -> u64 {
        let kv = &mut self.kv;
        let released = kv.stats().window_released_blocks;
        for s in 0..SEQS {
            kv.allocate(SeqId(s), &self.prompt).unwrap();
        }
        kv.drain_ops(&mut self.ops);
        self.batch.clear();
        self.batch
            .extend((0..SEQS).map(|s| (kv.handle(SeqId(s)).unwrap(), 0)));
        for step in 0..STEPS {
            for out in &mut self.group_slots {
                out.clear();
            }
            let len = (PROMPT + step) as u64;
            if batched {
                self.batch.iter_mut().for_each(|(_, t)| *t = step);
                kv.append_decode_into(&self.batch, &mut self.group_slots).unwrap();
            } else {
                for s in 0..SEQS {
                    kv.append_and_group_slots_into(SeqId(s), &[step], len..len + 1, &mut self.group_slots)
                        .unwrap();
                }
            }
            kv.drain_ops(&mut self.ops);
            assert!(self.group_slots.iter().all(|g| g.len() == SEQS as usize));
        }
        if check && kv.num_groups() == 2 {
            // The window keeps its blocks, the full group all of them.
            let by_group = kv.blocks_by_group();
            assert_eq!(by_group[0], SEQS * (PROMPT + STEPS).div_ceil(BLOCK_SIZE) as u64);
            assert!(
                by_group[1] <= SEQS * (WINDOW / BLOCK_SIZE + 1) as u64,
                "{by_group:?}"
            );
        }
        for s in 0..SEQS {
            kv.free(SeqId(s)).unwrap();
        }
        kv.stats().window_released_blocks - released
    }

    /// One pass: admit `SEQS` sequences (as `SEQS / SAMPLES` requests forked
    /// into `SAMPLES` parallel samples when `fork`), decode `STEPS` steps, free
    /// them all. Returns the copies the steps ran.
    fn pass(&mut self, fork: bool) -> usize {
        let kv = &mut self.kv;
        if fork {
            // Forked after the prefill step, as parallel sampling does; the
            // prompt ends in a partially filled shared block, so the first
            // decode step copies it for all but the last sample of each request.
            for r in (0..SEQS).step_by(SAMPLES as usize) {
                kv.allocate(SeqId(r), &self.prompt).unwrap();
            }
            kv.drain_ops(&mut self.ops); // the prefill step
            for r in (0..SEQS).step_by(SAMPLES as usize) {
                for s in 1..SAMPLES {
                    kv.fork(SeqId(r), SeqId(r + s)).unwrap();
                }
            }
        } else {
            for s in 0..SEQS {
                kv.allocate(SeqId(s), &self.prompt).unwrap();
            }
        }
        let mut copies = 0;
        for step in 0..STEPS {
            for s in 0..SEQS {
                kv.append(SeqId(s), &[step]).unwrap();
            }
            kv.drain_ops(&mut self.ops);
            copies += self.ops.copies.len();
            self.slots.clear();
            for s in 0..SEQS {
                kv.new_slots_into(SeqId(s), 1, &mut self.slots).unwrap();
            }
            assert_eq!(self.slots.len(), SEQS as usize);
        }
        assert_eq!(kv.usage().logical_tokens, SEQS * (PROMPT + STEPS) as u64);
        for s in 0..SEQS {
            kv.free(SeqId(s)).unwrap();
        }
        copies
    }
}

fn assert_warm_pass_does_not_allocate(fork: bool, prefix_caching: bool) {
    let mut engine = Engine::new(prefix_caching);
    let warm_copies = engine.pass(fork);
    let (copies, allocs, deallocs) = count_heap_calls(|| engine.pass(fork));
    assert_eq!(copies, warm_copies);
    assert_eq!(
        (allocs, deallocs),
        (0, 0),
        "the warm pass made {allocs} heap allocations and {deallocs} frees"
    );
    engine.kv.check_invariants().unwrap();
    assert_eq!(engine.kv.usage().free_blocks, engine.kv.usage().num_blocks);
}

#[test]
fn warm_decode_loop_makes_no_heap_allocation() {
    assert_warm_pass_does_not_allocate(false, false);
}

/// With prefix caching on, blocks are hashed and cached as they fill, the
/// second pass hits the first pass's cached prompt block, and freed blocks are
/// evicted as new ones fill: still no heap allocation once warm.
#[test]
fn warm_decode_loop_with_prefix_caching_makes_no_heap_allocation() {
    assert_warm_pass_does_not_allocate(false, true);
    assert_warm_pass_does_not_allocate(true, true);
    let mut engine = Engine::new(true);
    engine.pass(false);
    engine.pass(false);
    assert!(engine.kv.stats().prefix_hit_tokens >= SEQS * BLOCK_SIZE as u64);
    assert!(engine.kv.num_cached_blocks() > 0);
}

/// With the tiered prefix cache (offload on evict to a host tier smaller than
/// what is evicted), a warm pass of sequences with distinct tokens evicts the
/// previous pass's cached blocks on the device, copies them to the host at
/// each drain (evicting older offloaded blocks there) and still makes no heap
/// allocation: the offload queue and the host's copy list are reused.
#[test]
fn warm_decode_loop_offloading_evicted_blocks_makes_no_heap_allocation() {
    // Off too: evicting cached blocks alone must not allocate either.
    for offload in [PrefixOffload::Off, PrefixOffload::OnEvict] {
        warm_eviction_pass(offload);
    }
}

fn warm_eviction_pass(offload: PrefixOffload) {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_host_blocks: 2048,
        prefix_offload: offload,
        ..manager_with(true, vec![AttentionKind::Full]).config().clone()
    })
    .unwrap();
    let mut ops = BlockOps::default();
    let mut prompt: Vec<u32> = Vec::with_capacity(PROMPT as usize);
    // Distinct tokens per pass and sequence, so every full block is cached.
    let mut pass = |kv: &mut KvCacheManager, ops: &mut BlockOps, n: u32| {
        for s in 0..SEQS {
            prompt.clear();
            prompt.extend((0..PROMPT).map(|i| (n * SEQS as u32 + s as u32) * 100_000 + i));
            kv.allocate(SeqId(s), &prompt).unwrap();
        }
        for step in 0..STEPS {
            for s in 0..SEQS {
                kv.append(
                    SeqId(s),
                    &[(n * SEQS as u32 + s as u32) * 100_000 + PROMPT + step],
                )
                .unwrap();
            }
            kv.drain_ops(ops);
        }
        for s in 0..SEQS {
            kv.free(SeqId(s)).unwrap();
        }
        kv.drain_ops(ops);
    };
    // Two passes: the first fills the cache, the second evicts (and offloads) its blocks.
    pass(&mut kv, &mut ops, 0);
    pass(&mut kv, &mut ops, 1);
    let before = *kv.stats();
    let (_, allocs, deallocs) = count_heap_calls(|| pass(&mut kv, &mut ops, 2));
    let after = kv.stats();
    assert!(after.prefix_evictions > before.prefix_evictions, "{after:?}");
    assert!(
        offload == PrefixOffload::Off
            || (after.offload_copies > before.offload_copies && after.host_evictions > before.host_evictions),
        "the measured pass offloaded nothing: {after:?}"
    );
    assert_eq!(
        (allocs, deallocs),
        (0, 0),
        "the warm pass evicting cached blocks ({offload:?}) made {allocs} heap allocations and {deallocs} frees"
    );
    kv.check_invariants().unwrap();
}

#[test]
fn warm_hybrid_decode_loop_makes_no_heap_allocation() {
    for caching in [false, true] {
        let mut engine = Engine::with_groups(caching, hybrid());
        let warm_released = engine.hybrid_pass(true);
        assert!(warm_released >= SEQS * ((PROMPT + STEPS - WINDOW) / BLOCK_SIZE - 1) as u64);
        let (released, allocs, deallocs) = count_heap_calls(|| engine.hybrid_pass(false));
        assert_eq!(released, warm_released);
        assert_eq!(
            (allocs, deallocs),
            (0, 0),
            "the warm hybrid pass (caching {caching}) made {allocs} heap allocations and {deallocs} frees"
        );
        engine.kv.check_invariants().unwrap();
        assert_eq!(engine.kv.usage().free_blocks, engine.kv.usage().num_blocks);
    }
}

/// The batched decode over dense handles, one group and hybrid, caching off
/// and on: no heap allocation once warm.
#[test]
fn warm_batched_decode_loop_makes_no_heap_allocation() {
    for groups in [vec![AttentionKind::Full], hybrid()] {
        for caching in [false, true] {
            let mut engine = Engine::with_groups(caching, groups.clone());
            let warm_released = engine.groups_pass(true, true);
            let (released, allocs, deallocs) = count_heap_calls(|| engine.groups_pass(false, true));
            assert_eq!(released, warm_released);
            assert_eq!(
                (allocs, deallocs),
                (0, 0),
                "the warm batched pass ({groups:?}, caching {caching}) made {allocs} heap allocations and {deallocs} frees"
            );
            engine.kv.check_invariants().unwrap();
            assert_eq!(engine.kv.usage().free_blocks, engine.kv.usage().num_blocks);
        }
    }
}

#[test]
fn warm_decode_loop_with_forks_and_copy_on_write_makes_no_heap_allocation() {
    let mut engine = Engine::new(false);
    let copies = engine.pass(true);
    // The copies really flow through drain_ops: all but one sample per request copy.
    assert_eq!(copies as u64, SEQS / SAMPLES * (SAMPLES - 1));
    assert_warm_pass_does_not_allocate(true, false);
}

/// Encoding a step's KV events in vLLM's wire format reuses one buffer: with
/// prefix caching and KV events on, 256 sequences of distinct prompts decode
/// (each fills a block every 16th step: 256 `BlockStored` in one batch) and
/// are freed (then evicted: `BlockRemoved`); once a pass has grown the
/// buffer, encoding every step's events of the next pass makes no heap
/// allocation. (Only the encoding is counted: the manager builds the events.)
#[test]
fn encoding_a_warm_steps_kv_events_makes_no_heap_allocation() {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: SEQS as u32 * (PROMPT + STEPS).div_ceil(BLOCK_SIZE),
        block_size: BLOCK_SIZE,
        max_model_len: PROMPT + STEPS,
        watermark: 0.0,
        enable_prefix_caching: true,
        enable_kv_events: true,
        ..Default::default()
    })
    .unwrap();
    let encoder = KvEventEncoder::new(EventSource::default()).unwrap();
    let (mut ops, mut events, mut payload) = (BlockOps::default(), Vec::new(), Vec::new());
    let mut pass = |pass: u32| -> (usize, usize, usize) {
        let (mut encoded, mut allocs, mut deallocs) = (0, 0, 0);
        for s in 0..SEQS {
            // Distinct per sequence and per pass: every filled block is new.
            let prompt: Vec<u32> = (0..PROMPT)
                .map(|t| t ^ ((s as u32) << 16) ^ (pass << 28))
                .collect();
            kv.allocate(SeqId(s), &prompt).unwrap();
        }
        for step in 0..STEPS / 4 {
            for s in 0..SEQS {
                kv.append(SeqId(s), &[step ^ ((s as u32) << 16)]).unwrap();
            }
            kv.drain_ops(&mut ops);
            kv.drain_events(&mut events);
            let ((), a, d) = count_heap_calls(|| encoder.encode_into(step as f64, &events, &mut payload));
            encoded += events.len();
            allocs += a;
            deallocs += d;
        }
        for s in 0..SEQS {
            kv.free(SeqId(s)).unwrap();
        }
        (encoded, allocs, deallocs)
    };
    let (warm_events, _, _) = pass(0);
    let (events_encoded, allocs, deallocs) = pass(1);
    assert!(
        events_encoded >= warm_events,
        "{events_encoded} events, warm-up {warm_events}"
    );
    assert!(events_encoded > SEQS as usize * 10, "{events_encoded} events");
    assert_eq!(
        (allocs, deallocs),
        (0, 0),
        "encoding {events_encoded} events made {allocs} heap allocations and {deallocs} frees"
    );
}

/// Decode steps per request in the scheduler workload (enough to spill every
/// table past its inline storage and fill many blocks).
const SCHED_NEW_TOKENS: u32 = 300;

/// What an engine driving the scheduler keeps across steps.
struct SchedEngine {
    sched: Scheduler,
    plan: StepPlan,
    out: Vec<SampledToken>,
}

impl SchedEngine {
    fn new(groups: Vec<AttentionKind>) -> Self {
        let blocks_per_seq = (PROMPT + SCHED_NEW_TOKENS).div_ceil(BLOCK_SIZE);
        let kv = KvCacheManager::new(KvCacheConfig {
            num_blocks: SEQS as u32 * blocks_per_seq * groups.len() as u32,
            block_size: BLOCK_SIZE,
            max_model_len: PROMPT + SCHED_NEW_TOKENS,
            watermark: 0.0,
            groups,
            ..Default::default()
        })
        .unwrap();
        let config = SchedulerConfig {
            max_num_seqs: SEQS as u32,
            max_num_batched_tokens: SEQS as u32 * PROMPT,
            ..Default::default()
        };
        SchedEngine {
            sched: Scheduler::new(kv, config).unwrap(),
            plan: StepPlan::default(),
            out: Vec::new(),
        }
    }

    /// One engine step: plan, "run", report one sampled token per sequence.
    fn step(&mut self) {
        self.sched.step(&mut self.plan);
        self.out.clear();
        for e in &self.plan.scheduled {
            self.out.push(SampledToken {
                seq: e.seq,
                token: e.start + e.num_new_tokens,
                stop: false,
            });
        }
        self.sched.on_step_output(&mut self.plan, &self.out).unwrap();
    }

    /// One pass: admit `SEQS` requests and prefill them (not measured: the
    /// requests' prompts are the caller's allocations), then decode until all
    /// finish, the last step's plan listing them. Returns the decode steps
    /// taken and the heap allocations and frees they made.
    fn pass(&mut self) -> (u32, usize, usize) {
        for r in 0..SEQS {
            self.sched
                .add_request(Request {
                    id: RequestId(r),
                    prompt: (0..PROMPT).collect(),
                    max_new_tokens: SCHED_NEW_TOKENS,
                    priority: 0,
                    arrival: r,
                    n: 1,
                    ..Default::default()
                })
                .unwrap();
        }
        self.step();
        assert_eq!(self.plan.scheduled.len(), SEQS as usize);
        assert!(self.plan.scheduled.iter().all(|e| e.is_prefill));
        let (mut steps, mut allocs, mut deallocs) = (0, 0, 0);
        while !self.sched.is_idle() {
            let ((), a, d) = count_heap_calls(|| self.step());
            assert_eq!(self.plan.scheduled.len(), SEQS as usize, "all decode together");
            assert!(self
                .plan
                .scheduled
                .iter()
                .all(|e| !e.is_prefill && e.num_new_tokens == 1));
            assert_eq!(self.plan.num_batched_tokens, SEQS as u32);
            steps += 1;
            allocs += a;
            deallocs += d;
        }
        // The last step's plan lists the sequences it finished.
        assert_eq!(self.plan.finished.len(), SEQS as usize);
        (steps, allocs, deallocs)
    }
}

#[test]
fn warm_scheduler_decode_step_makes_no_heap_allocation() {
    warm_scheduler_decode_step(vec![AttentionKind::Full]);
}

#[test]
fn warm_hybrid_scheduler_decode_step_makes_no_heap_allocation() {
    warm_scheduler_decode_step(hybrid());
}

fn warm_scheduler_decode_step(groups: Vec<AttentionKind>) {
    let num_groups = groups.len();
    let mut engine = SchedEngine::new(groups);
    let (warm_steps, ..) = engine.pass();
    assert_eq!(
        warm_steps,
        SCHED_NEW_TOKENS - 1,
        "the prefill step samples the first token"
    );
    let (steps, allocs, deallocs) = engine.pass();
    assert_eq!(steps, warm_steps);
    assert_eq!(
        (allocs, deallocs),
        (0, 0),
        "{steps} warm scheduler decode steps made {allocs} heap allocations and {deallocs} frees"
    );
    engine.sched.check_invariants().unwrap();
    assert_eq!(
        engine.sched.kv().usage().free_blocks,
        engine.sched.kv().usage().num_blocks
    );
    assert_eq!(engine.sched.stats().finished, 2 * SEQS);
    assert_eq!(engine.plan.num_groups as usize, num_groups);
}

#[test]
fn the_counter_sees_allocations() {
    let (v, allocs, deallocs) = count_heap_calls(|| {
        let v = std::hint::black_box(vec![1u8; 64]);
        v.len()
    });
    assert_eq!(v, 64);
    assert_eq!((allocs, deallocs), (1, 1));
}
