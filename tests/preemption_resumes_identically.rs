//! A sequence preempted in the middle of its decode resumes exactly where it
//! was, whether it was preempted by recompute (its blocks freed, its tokens
//! prefilled again) or by swap (its blocks copied to host memory and back).
//!
//! Three requests decode in a pool too small for all of them to finish
//! together, once with [`AlwaysRecompute`] and once with [`AlwaysSwap`], and
//! once in a pool large enough that nothing is preempted (the reference). The
//! engine stand-in keeps device and host memory where each slot holds a hash
//! of the sequence's tokens up to that position, runs each plan's operations
//! in the contract's order (swap-out, swap-in, copy-on-write copies), writes
//! the new tokens' values at their slots, then reads every scheduled
//! sequence's whole context back through its block table. Its sampler is
//! deterministic and draws each token from the value it read at the last
//! position, so a resumed sequence reading wrong KV would also sample
//! differently. Every request must finish with the same tokens as in the
//! reference run.

use std::collections::BTreeMap;

use pagedkv::scheduler::{AlwaysRecompute, AlwaysSwap, PreemptionMode, SchedulerStats};
use pagedkv::{
    KvCacheConfig, KvCacheManager, Request, RequestId, SampledToken, Scheduler, SchedulerConfig, SeqId,
    StepPlan,
};

const BLOCK_SIZE: u32 = 4;
const MAX_NEW: u32 = 24;
/// Prompt lengths; at most 10 blocks each at the end, 11 blocks of prompts in all.
const PROMPTS: [u32; 3] = [10, 12, 14];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    /// 64 blocks: nothing is preempted.
    Reference,
    /// 12 blocks, preempting by recompute.
    Recompute,
    /// 12 blocks and 32 host blocks, preempting by swap.
    Swap,
}

/// The value of a slot: a hash of the sequence's tokens up to and including it.
fn mix(prev: u64, token: u32) -> u64 {
    (prev ^ token as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(23)
        | 1
}

fn prefix_values(tokens: &[u32]) -> Vec<u64> {
    let mut v = 0;
    tokens
        .iter()
        .map(|&t| {
            v = mix(v, t);
            v
        })
        .collect()
}

/// What a run produced.
#[derive(Debug, Default)]
struct Outcome {
    /// Each finished sequence's tokens, prompt and generated.
    finished: BTreeMap<SeqId, Vec<u32>>,
    stats: SchedulerStats,
    /// (victim, mode, tokens it had generated when preempted).
    preempted: Vec<(SeqId, PreemptionMode, usize)>,
    swap_out_copies: usize,
    swap_in_copies: usize,
    /// Positions a sequence read back correctly after it had been preempted.
    reads_after_resume: usize,
}

fn run(setting: Setting) -> Outcome {
    let (num_blocks, num_host_blocks) = match setting {
        Setting::Reference => (64, 0),
        Setting::Recompute => (12, 0),
        Setting::Swap => (12, 32),
    };
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: BLOCK_SIZE,
        num_host_blocks,
        max_model_len: 256,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap();
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        ..Default::default()
    };
    let mut sched = Scheduler::new(kv, config).unwrap();
    sched = match setting {
        Setting::Swap => sched.with_preemption_mode(AlwaysSwap),
        _ => sched.with_preemption_mode(AlwaysRecompute),
    };

    let bs = BLOCK_SIZE as usize;
    let mut device = vec![0u64; num_blocks as usize * bs];
    let mut host = vec![0u64; num_host_blocks as usize * bs];
    // The engine's own record of every live sequence's tokens.
    let mut tokens: BTreeMap<SeqId, Vec<u32>> = BTreeMap::new();
    let mut prompt_len: BTreeMap<SeqId, usize> = BTreeMap::new();
    for (i, &len) in PROMPTS.iter().enumerate() {
        let prompt: Vec<u32> = (0..len).map(|t| t * 31 + 1000 * i as u32).collect();
        let id = RequestId(i as u64);
        tokens.insert(id.seq(0), prompt.clone());
        prompt_len.insert(id.seq(0), prompt.len());
        sched
            .add_request(Request {
                id,
                prompt,
                max_new_tokens: MAX_NEW,
                priority: 0,
                arrival: i as u64,
                n: 1,
                ..Default::default()
            })
            .unwrap();
    }

    let mut outcome = Outcome::default();
    let mut was_preempted: Vec<SeqId> = Vec::new();
    let mut plan = StepPlan::default();
    let mut out = Vec::new();
    for _ in 0..1_000 {
        if sched.is_idle() {
            break;
        }
        sched.step(&mut plan);
        sched.check_invariants().unwrap();
        for p in &plan.preempted {
            let generated = tokens[&p.seq].len() - prompt_len[&p.seq];
            outcome.preempted.push((p.seq, p.mode, generated));
            was_preempted.push(p.seq);
        }

        // The block operations, in the contract's order.
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
        outcome.swap_out_copies += plan.ops.swap_out.len();
        outcome.swap_in_copies += plan.ops.swap_in.len();

        // Write every new token's value, then attend (read the whole context).
        for (i, e) in plan.scheduled.iter().enumerate() {
            let toks = &tokens[&e.seq];
            assert_eq!(sched.tokens(e.seq).unwrap(), &toks[..], "{:?}'s tokens", e.seq);
            let values = prefix_values(toks);
            for (k, &slot) in plan.slots_of(i).iter().enumerate() {
                device[slot as usize] = values[e.start as usize + k];
            }
        }
        out.clear();
        for e in &plan.scheduled {
            let values = prefix_values(&tokens[&e.seq]);
            let table = sched.block_table(e.seq).unwrap();
            let end = (e.start + e.num_new_tokens) as usize;
            let mut last = 0;
            for (p, want) in values.iter().enumerate().take(end) {
                let got = device[table[p / bs].index() * bs + p % bs];
                assert_eq!(
                    got, *want,
                    "{:?} reads wrong KV at position {p} ({setting:?})",
                    e.seq
                );
                last = got;
            }
            if was_preempted.contains(&e.seq) {
                outcome.reads_after_resume += end;
            }
            if e.num_samples > 0 {
                assert_eq!(e.num_samples, 1);
                // The sampler sees only what the KV read gave it.
                out.push(SampledToken {
                    seq: e.seq,
                    token: (last >> 11) as u32 % 50_000,
                    stop: false,
                });
            }
        }
        for o in &out {
            tokens.get_mut(&o.seq).unwrap().push(o.token);
        }
        sched.on_step_output(&mut plan, &out).unwrap();
        sched.check_invariants().unwrap();
        for f in &plan.finished {
            let t = tokens.remove(f).expect("a live sequence finished");
            outcome.finished.insert(*f, t);
        }
    }
    assert!(sched.is_idle(), "{setting:?}: not done after 1000 steps");
    assert!(tokens.is_empty());
    assert_eq!(sched.kv().num_free_blocks(), num_blocks);
    outcome.stats = *sched.stats();
    outcome
}

fn assert_same_tokens_as_reference(o: &Outcome) {
    let reference = run(Setting::Reference);
    assert_eq!(
        reference.stats.preempted_recompute + reference.stats.preempted_swap,
        0
    );
    assert_eq!(reference.finished.len(), PROMPTS.len());
    for (seq, t) in &reference.finished {
        assert_eq!(t.len(), prompt_len_of(*seq) + MAX_NEW as usize);
    }
    assert_eq!(
        o.finished, reference.finished,
        "tokens differ from the run without preemption"
    );
    assert!(o.reads_after_resume > 0, "no preempted sequence ran again");
    // A sequence in the middle of its decode was preempted, not only a waiting prompt.
    assert!(
        o.preempted.iter().any(|&(_, _, generated)| generated > 0),
        "{:?}",
        o.preempted
    );
}

fn prompt_len_of(seq: SeqId) -> usize {
    PROMPTS[RequestId::of(seq).0 .0 as usize] as usize
}

#[test]
fn preempted_by_recompute_resumes_with_identical_tokens() {
    let o = run(Setting::Recompute);
    assert!(o.stats.preempted_recompute > 0, "{:?}", o.stats);
    assert_eq!(o.stats.preempted_swap, 0);
    assert!(o.stats.recomputed_tokens > 0);
    assert!(o.preempted.iter().all(|p| p.1 == PreemptionMode::Recompute));
    assert_eq!(o.swap_out_copies + o.swap_in_copies, 0);
    assert_same_tokens_as_reference(&o);
}

#[test]
fn preempted_by_swap_resumes_with_identical_tokens() {
    let o = run(Setting::Swap);
    assert!(o.stats.preempted_swap > 0, "{:?}", o.stats);
    assert_eq!(o.stats.preempted_recompute, 0);
    assert!(o.preempted.iter().all(|p| p.1 == PreemptionMode::Swap));
    // Its blocks really went through host memory and back.
    assert!(o.swap_out_copies > 0 && o.swap_in_copies > 0, "{o:?}");
    assert_same_tokens_as_reference(&o);
}
