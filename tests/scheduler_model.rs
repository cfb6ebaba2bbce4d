//! Property test of the scheduler on random request traces, with an engine
//! that really runs the plans on simulated device and host memory.
//!
//! proptest draws a small cache (4..=32 blocks, so preemption is common), its
//! KV cache groups (full attention, or hybrid: full + a sliding window, full +
//! chunked local attention, a sliding window alone), an
//! optional host tier, prefix caching on or off (with the host tier, prefix
//! offload off, on evict or on free: evicted prefix blocks go through host
//! memory and come back on hits), budgets, both guards on or
//! off, each victim policy, preemption mode and queue order, and a trace of
//! requests (prompt length, max new tokens, priority, arrival step, n). The
//! engine adds each request at its arrival step, runs every plan — swap-out,
//! swap-in and copy-on-write copies block by block, then writes each new
//! token's content at its slot — and samples fresh tokens. It checks:
//!
//! - content: a slot holds a hash of the sequence's tokens up to that position
//!   (so a block holds the right tokens *and* the right prefix), tagged with
//!   its group; every scheduled sequence must read back, through each group's
//!   block table, every position of its context that group still holds (all
//!   for full attention; a window's released blocks must be ones it no longer
//!   reads), whether it was preempted by swap (its blocks went through host
//!   memory) or by recompute (prefilled again, partly from the prefix cache);
//!   its tokens must be its prompt plus exactly the tokens sampled for it;
//! - budgets: tokens per step ≤ `max_num_batched_tokens`, sequences per step
//!   and running ≤ `max_num_seqs`;
//! - rejections: `add_request` rejects exactly the requests that can never
//!   fit (longer than `max_model_len`, more blocks at the peak than the
//!   pool); every other one finishes, all its samples, within a bounded number
//!   of steps (no livelock), and `plan.finished` lists exactly the sequences
//!   each step finished;
//! - tenants: each request has one of three prefix keys (no salt, salt "a",
//!   salt "b"), and a slot's content hash starts from the request's tenant,
//!   so a prefix hit across tenants reads the wrong content;
//! - cancellation: some requests are cancelled at a drawn step, before the
//!   step is planned or while it is in flight (the engine then may or may not
//!   report their tokens); they leave every queue and the manager, are never
//!   scheduled again, and the pool ends all free;
//! - `check_invariants()` of the scheduler and the manager after every step.
//!
//! Default 1500 cases (about half a second); `PAGEDKV_PROPTEST_CASES` sets the count.

mod proptest_cases;

use std::collections::{BTreeMap, HashMap};

use pagedkv::scheduler::{
    AlwaysRecompute, AlwaysSwap, Automatic, Fcfs, LatestArrival, LowestPriority, MostBlocks, PriorityOrder,
};
use pagedkv::{
    AttentionKind, KvCacheConfig, KvCacheManager, PrefixKeys, PrefixOffload, Request, RequestId,
    SampledToken, Scheduler, SchedulerConfig, SchedulerError, SeqId, StepPlan,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

fn cases() -> u32 {
    proptest_cases::from_env(1500)
}

#[derive(Clone, Debug)]
struct Setup {
    num_blocks: u32,
    block_size: u32,
    host_blocks: u32,
    watermark: f64,
    prefix_caching: bool,
    max_num_seqs: u32,
    max_num_batched_tokens: u32,
    chunked: bool,
    whole_prompt: bool,
    protect_mid_prefill: bool,
    isolate: bool,
    victim: u8,
    mode: u8,
    priority_order: bool,
    groups: Vec<AttentionKind>,
    /// The tiered prefix cache (with prefix caching and a host tier).
    offload: PrefixOffload,
}

const MAX_MODEL_LEN: u32 = 64;

thread_local! {
    /// Host-tier reloads over the cases run on this thread (the test asserts some happened).
    static RELOADS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[derive(Clone, Debug)]
struct Req {
    prompt_len: u32,
    max_new: u32,
    priority: i32,
    arrival: u64,
    n: u32,
    /// Prompts draw from a small alphabet so that prefixes repeat (cache hits).
    alphabet: u32,
    /// 0: default keys; 1, 2: salted "a", "b".
    tenant: u8,
    /// Cancel at this step (if still live): before planning it when even,
    /// while it is in flight when odd.
    cancel_at: Option<u64>,
}

fn groups() -> impl Strategy<Value = Vec<AttentionKind>> {
    let swa = (1u32..=9).prop_map(|window| AttentionKind::SlidingWindow { window });
    let local = (2u32..=8).prop_map(|chunk| AttentionKind::ChunkedLocal { chunk });
    prop_oneof![
        3 => Just(vec![AttentionKind::Full]),
        2 => swa.clone().prop_map(|w| vec![AttentionKind::Full, w]),
        1 => local.prop_map(|c| vec![AttentionKind::Full, c]),
        1 => swa.prop_map(|w| vec![w]),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        (
            4u32..=32,
            prop::sample::select(vec![1u32, 2, 4, 8]),
            prop::sample::select(vec![0u32, 6, 32]),
        ),
        (
            prop::sample::select(vec![0.0, 0.1]),
            any::<bool>(),
            1u32..=8,
            4u32..=48,
            any::<bool>(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u8..3,
            0u8..3,
            any::<bool>(),
        ),
        groups(),
        prop::sample::select(vec![
            PrefixOffload::Off,
            PrefixOffload::OnEvict,
            PrefixOffload::OnFree,
        ]),
    )
        .prop_map(
            |((nb, bs, hb), (wm, pc, seqs, tokens, chunked), (wp, pm, iso, v, m, po), groups, offload)| {
                Setup {
                    num_blocks: nb,
                    block_size: bs,
                    host_blocks: hb,
                    watermark: wm,
                    prefix_caching: pc,
                    max_num_seqs: seqs,
                    max_num_batched_tokens: if chunked { tokens } else { MAX_MODEL_LEN + tokens },
                    chunked,
                    whole_prompt: wp,
                    protect_mid_prefill: pm,
                    isolate: iso,
                    victim: v,
                    mode: m,
                    priority_order: po,
                    groups,
                    offload: if pc && hb > 0 { offload } else { PrefixOffload::Off },
                }
            },
        )
}

fn req() -> impl Strategy<Value = Req> {
    (
        1u32..=48,
        1u32..=20,
        0i32..3,
        0u64..24,
        prop_oneof![3 => Just(1u32), 1 => 2u32..=3],
        1u32..=3,
        0u8..3,
        prop_oneof![4 => Just(None), 1 => (0u64..48).prop_map(Some)],
    )
        .prop_map(
            |(prompt_len, max_new, priority, arrival, n, alphabet, tenant, cancel_at)| Req {
                prompt_len,
                max_new,
                priority,
                arrival,
                n,
                alphabet,
                tenant,
                cancel_at,
            },
        )
}

fn keys(tenant: u8) -> PrefixKeys {
    match tenant {
        0 => PrefixKeys::default(),
        t => PrefixKeys::salted(format!("tenant-{t}")),
    }
}

/// A value as one group's memory holds it (groups hold different layers).
fn tagged(value: u64, group: usize) -> u64 {
    value.rotate_left(5) ^ group as u64
}

/// The content of a sequence's slots: the chained hash of its tokens,
/// starting from its tenant (so a cross-tenant prefix hit reads wrong content).
fn slot_values(tenant: u8, toks: &[u32]) -> Vec<u64> {
    let mut v = tenant as u64 + 1;
    toks.iter()
        .map(|&t| {
            v = mix(v, t);
            v
        })
        .collect()
}

/// The content of a slot: a hash of the tokens up to and including it.
fn mix(prev: u64, token: u32) -> u64 {
    (prev ^ token as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(23)
        | 1
}

/// The documented "never": longer than max_model_len, or more blocks at the
/// peak (prompt + every generated token but the last, whose KV is never
/// stored, in every group; a window holds at most its span and one prefill
/// chunk) than the pool. The watermark does not make a request
/// never-runnable: the scheduler runs a request alone without it. Every
/// request this admits must finish (checked below), so the rule is tight in
/// both directions.
fn never_fits(s: &Setup, r: &Req) -> bool {
    let total = (r.prompt_len + r.max_new) as u64;
    let stored = total - 1;
    let bs = s.block_size as u64;
    let chunk = if s.chunked {
        s.max_num_batched_tokens as u64
    } else {
        u64::MAX
    };
    // A sequence recomputed after preemption prefills its whole context again.
    let step = chunk.min(stored);
    let peak: u64 = s
        .groups
        .iter()
        .map(|&kind| {
            let all = stored.div_ceil(bs);
            let (window, aligned) = match kind {
                AttentionKind::SlidingWindow { window } => (window as u64, false),
                AttentionKind::ChunkedLocal { chunk } => (chunk as u64, chunk as u64 % bs == 0),
                _ => return all,
            };
            let span = window - 1 + step;
            let blocks = if aligned {
                span.div_ceil(bs)
            } else {
                (span + bs - 1).div_ceil(bs)
            };
            blocks.min(all)
        })
        .sum();
    total > MAX_MODEL_LEN as u64 || peak > s.num_blocks as u64
}

/// The first position a query at `pos` reads, from the definitions.
fn first_read(kind: AttentionKind, pos: u64) -> u64 {
    match kind {
        AttentionKind::SlidingWindow { window } => pos.saturating_sub(window as u64 - 1),
        AttentionKind::ChunkedLocal { chunk } => pos / chunk as u64 * chunk as u64,
        _ => 0,
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

fn run(s: Setup, reqs: Vec<Req>) -> Result<(), TestCaseError> {
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: s.num_blocks,
        block_size: s.block_size,
        num_host_blocks: s.host_blocks,
        max_model_len: MAX_MODEL_LEN,
        watermark: s.watermark,
        enable_prefix_caching: s.prefix_caching,
        groups: s.groups.clone(),
        prefix_offload: s.offload,
        ..Default::default()
    })
    .map_err(fail)?;
    let config = SchedulerConfig {
        max_num_seqs: s.max_num_seqs,
        max_num_batched_tokens: s.max_num_batched_tokens,
        enable_chunked_prefill: s.chunked,
        admit_whole_prompt: s.whole_prompt,
        protect_mid_prefill: s.protect_mid_prefill,
        isolate_growth: s.isolate,
        cap_output_at_max_model_len: false,
    };
    let mut sched = Scheduler::new(kv, config).map_err(fail)?;
    sched = match s.victim {
        0 => sched.with_victim_policy(LatestArrival),
        1 => sched.with_victim_policy(LowestPriority),
        _ => sched.with_victim_policy(MostBlocks),
    };
    sched = match s.mode {
        0 => sched.with_preemption_mode(AlwaysRecompute),
        1 => sched.with_preemption_mode(AlwaysSwap),
        _ => sched.with_preemption_mode(Automatic::default()),
    };
    sched = if s.priority_order {
        sched.with_queue_order(PriorityOrder)
    } else {
        sched.with_queue_order(Fcfs)
    };

    let bs = s.block_size as usize;
    let num_groups = s.groups.len();
    let mut device = vec![0u64; s.num_blocks as usize * bs];
    let mut host = vec![0u64; s.host_blocks as usize * bs];
    // The oracle: every live sequence's expected tokens.
    let mut expected: BTreeMap<SeqId, Vec<u32>> = BTreeMap::new();
    let mut samples_left: HashMap<RequestId, u32> = HashMap::new();
    let mut max_new: HashMap<RequestId, u32> = HashMap::new();
    let mut next_token = 1_000u32;
    let mut plan = StepPlan::default();
    let mut out = Vec::new();
    let work: u64 = reqs
        .iter()
        .map(|r| (r.n * (r.prompt_len + r.max_new)) as u64)
        .sum();
    let last_arrival = reqs.iter().map(|r| r.arrival).max().unwrap_or(0);
    let bound = last_arrival + 4 * work + 100;
    let mut step = 0u64;
    loop {
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| r.arrival == step) {
            let id = RequestId(i as u64);
            let prompt: Vec<u32> = (0..r.prompt_len)
                .map(|p| (p * 7 + i as u32 % r.alphabet) % r.alphabet)
                .collect();
            let res = sched.add_request(Request {
                id,
                prompt: prompt.clone(),
                max_new_tokens: r.max_new,
                priority: r.priority,
                arrival: r.arrival,
                n: r.n,
                keys: keys(r.tenant),
            });
            match res {
                Ok(()) => {
                    prop_assert!(r.n <= s.max_num_seqs);
                    prop_assert!(
                        !never_fits(&s, r),
                        "admitted a request that can never fit: {:?}",
                        r
                    );
                    expected.insert(id.seq(0), prompt);
                    samples_left.insert(id, r.n);
                    max_new.insert(id, r.max_new);
                }
                Err(SchedulerError::Rejected { .. }) => {
                    prop_assert!(never_fits(&s, r), "rejected a request that fits: {:?}", r)
                }
                Err(SchedulerError::InvalidRequest { .. }) if r.n > s.max_num_seqs => {}
                Err(e) => return Err(fail(e)),
            }
        }
        // Cancellations before the step is planned.
        let cancel = |sched: &mut Scheduler,
                      expected: &mut BTreeMap<SeqId, Vec<u32>>,
                      samples_left: &mut HashMap<RequestId, u32>,
                      step: u64,
                      odd: bool|
         -> Result<(), TestCaseError> {
            for (i, r) in reqs.iter().enumerate() {
                let id = RequestId(i as u64);
                if r.cancel_at.is_some_and(|c| c == step && (c % 2 == 1) == odd)
                    && samples_left.contains_key(&id)
                {
                    sched.cancel(id).map_err(fail)?;
                    samples_left.remove(&id);
                    expected.retain(|seq, _| RequestId::of(*seq).0 != id);
                    prop_assert_eq!(
                        sched.cancel(id),
                        Err(SchedulerError::UnknownRequest { request: id })
                    );
                    sched.check_invariants().map_err(fail)?;
                }
            }
            Ok(())
        };
        cancel(&mut sched, &mut expected, &mut samples_left, step, false)?;
        if step > last_arrival && sched.is_idle() {
            break;
        }
        prop_assert!(
            step <= bound,
            "livelock: {} requests still live after {} steps",
            samples_left.len(),
            step
        );
        step += 1;

        sched.step(&mut plan);
        sched.check_invariants().map_err(fail)?;
        // Budgets.
        prop_assert!(plan.num_batched_tokens <= s.max_num_batched_tokens);
        prop_assert_eq!(
            plan.scheduled.iter().map(|e| e.num_new_tokens).sum::<u32>(),
            plan.num_batched_tokens
        );
        prop_assert!(plan.scheduled.len() <= s.max_num_seqs as usize);
        prop_assert!(sched.queue_lens().0 <= s.max_num_seqs as usize);
        for &f in &plan.finished {
            prop_assert!(!expected.contains_key(&f), "{:?} reported finished twice", f);
        }

        // Run the plan: swap-out, swap-in, copies, then the new tokens.
        for c in &plan.ops.swap_out {
            let (d, h) = (c.src.index() * bs, c.dst.index() * bs);
            host[h..h + bs].copy_from_slice(&device[d..d + bs]);
        }
        for c in &plan.ops.swap_in {
            let (h, d) = (c.src.index() * bs, c.dst.index() * bs);
            device[d..d + bs].copy_from_slice(&host[h..h + bs]);
        }
        for c in &plan.ops.copies {
            let (a, b) = (c.src.index() * bs, c.dst.index() * bs);
            device.copy_within(a..a + c.num_slots as usize, b);
        }
        for (i, e) in plan.scheduled.iter().enumerate() {
            let toks = &expected[&e.seq];
            prop_assert_eq!(sched.tokens(e.seq).unwrap(), &toks[..], "{:?}'s tokens", e.seq);
            let values = slot_values(reqs[RequestId::of(e.seq).0 .0 as usize].tenant, toks);
            prop_assert_eq!(plan.num_groups as usize, num_groups);
            for g in 0..num_groups {
                prop_assert_eq!(plan.group_slots_of(g, i).len(), e.num_new_tokens as usize);
                for (k, &slot) in plan.group_slots_of(g, i).iter().enumerate() {
                    device[slot as usize] = tagged(values[e.start as usize + k], g);
                }
            }
        }
        // Attention runs after every new token of the step is written.
        for e in &plan.scheduled {
            let toks = &expected[&e.seq];
            let values = slot_values(reqs[RequestId::of(e.seq).0 .0 as usize].tenant, toks);
            // The whole context each group reads back through its block table.
            for g in 0..num_groups {
                let view = sched.kv().group(g).map_err(fail)?;
                let table = view.block_table(e.seq).map_err(fail)?;
                let first = first_read(view.kind(), e.start as u64) as usize;
                for p in first..(e.start + e.num_new_tokens) as usize {
                    prop_assert!(
                        !table[p / bs].is_null(),
                        "{:?} group {} released position {} it reads",
                        e.seq,
                        g,
                        p
                    );
                    let slot = table[p / bs].index() * bs + p % bs;
                    prop_assert_eq!(
                        device[slot],
                        tagged(values[p], g),
                        "{:?} group {} position {} reads wrong content",
                        e.seq,
                        g,
                        p
                    );
                }
            }
        }
        // Sample.
        out.clear();
        for e in &plan.scheduled {
            for k in 0..e.num_samples {
                let seq = e.sample_seq(k);
                next_token += 1;
                out.push(SampledToken {
                    seq,
                    token: next_token,
                    stop: next_token % 23 == 0,
                });
            }
        }
        for o in &out {
            let (req, _) = RequestId::of(o.seq);
            if !expected.contains_key(&o.seq) {
                let parent = expected[&req.seq(0)].clone();
                expected.insert(o.seq, parent);
            }
        }
        for o in &out {
            expected.get_mut(&o.seq).unwrap().push(o.token);
        }
        // Cancellations while the step is in flight: the engine ran it and may
        // report the cancelled requests' tokens or leave them out.
        cancel(&mut sched, &mut expected, &mut samples_left, step, true)?;
        if step % 3 == 0 {
            out.retain(|o| expected.contains_key(&o.seq));
        }
        sched.on_step_output(&mut plan, &out).map_err(fail)?;
        sched.check_invariants().map_err(fail)?;
        let mut finished: Vec<SeqId> = out
            .iter()
            .map(|o| o.seq)
            .filter(|seq| expected.contains_key(seq) && sched.tokens(*seq).is_none())
            .collect();
        finished.sort();
        let mut reported = plan.finished.clone();
        reported.sort();
        prop_assert_eq!(
            reported,
            finished,
            "plan.finished lists exactly what the step finished"
        );
        // Finished sequences leave the oracle; check they generated within limits.
        for o in &out {
            if expected.contains_key(&o.seq) && sched.tokens(o.seq).is_none() {
                let (req, _) = RequestId::of(o.seq);
                let toks = expected.remove(&o.seq).unwrap();
                let generated = toks.len() as u32 - reqs[req.0 as usize].prompt_len;
                prop_assert!(generated >= 1 && generated <= max_new[&req]);
                prop_assert!(o.stop || generated == max_new[&req]);
                let left = samples_left.get_mut(&req).unwrap();
                *left -= 1;
                if *left == 0 {
                    samples_left.remove(&req);
                }
            }
        }
    }
    prop_assert!(samples_left.is_empty(), "unfinished requests: {:?}", samples_left);
    prop_assert_eq!(sched.kv().num_free_blocks(), s.num_blocks);
    RELOADS.with(|r| r.set(r.get() + sched.kv().stats().reload_copies));
    Ok(())
}

#[test]
fn every_admitted_request_finishes_with_identical_content() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases()));
    runner
        .run(&(setup(), prop::collection::vec(req(), 1..=10)), |(s, reqs)| {
            run(s, reqs)
        })
        .unwrap();
    // Some recomputed sequences re-prefilled from blocks the host tier kept.
    let reloads = RELOADS.with(|r| r.get());
    assert!(reloads > 0, "no case reloaded a block from the host tier");
}

/// A livelock found by `PAGEDKV_PROPTEST_CASES=40000` (one sliding-window
/// group of width 1, prefix caching, block size 1, a prompt longer than the
/// pool): every request must still finish.
#[test]
fn window_of_one_with_caching_and_a_prompt_longer_than_the_pool_finishes() {
    let s = Setup {
        num_blocks: 21,
        block_size: 1,
        host_blocks: 0,
        watermark: 0.0,
        prefix_caching: true,
        max_num_seqs: 2,
        max_num_batched_tokens: 21,
        chunked: true,
        whole_prompt: false,
        protect_mid_prefill: false,
        isolate: false,
        victim: 0,
        mode: 0,
        priority_order: false,
        groups: vec![AttentionKind::SlidingWindow { window: 1 }],
        offload: PrefixOffload::Off,
    };
    let req = |prompt_len, max_new, arrival, alphabet, tenant| Req {
        prompt_len,
        max_new,
        priority: 0,
        arrival,
        n: 1,
        alphabet,
        tenant,
        cancel_at: None,
    };
    let reqs = vec![
        req(23, 1, 0, 1, 0),
        req(22, 1, 10, 1, 0),
        req(5, 9, 3, 1, 1),
        req(2, 5, 4, 3, 0),
    ];
    run(s, reqs).unwrap();
}
