//! Fuzzes the reference scheduler: arbitrary caches (KV cache groups, prefix
//! caching, a host tier with or without prefix offload), budgets, guards and
//! policies, and arbitrary sequences of requests, steps, outputs (right ones, and wrong ones: a bad
//! count, duplicates, unknown sequences), cancellations, resets and event
//! drains.
//!
//! Checks after every call: nothing panics and `check_invariants()` holds; a
//! refused `on_step_output` leaves the scheduler able to take the right
//! outputs next.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run scheduler_ops -s none` (in `fuzz/`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pagedkv::scheduler::{AlwaysSwap, Automatic, LowestPriority, MostBlocks, PriorityOrder};
use pagedkv::{
    AttentionKind, KvCacheConfig, KvCacheManager, KvEvent, PrefixKeys, PrefixOffload, Request, RequestId,
    SampledToken, Scheduler, SchedulerConfig, SeqId, StepPlan,
};

#[derive(Arbitrary, Debug)]
struct Setup {
    num_blocks: u8,
    block_size: u8,
    host_blocks: u8,
    caching: bool,
    events: bool,
    window: Option<u8>,
    max_num_seqs: u8,
    max_num_batched_tokens: u16,
    chunked: bool,
    whole_prompt: bool,
    isolate: bool,
    policy: u8,
    chunk: Option<u8>,
    offload: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Add {
        id: u8,
        len: u16,
        max_new: u16,
        n: u8,
        priority: i8,
        tenant: u8,
    },
    /// Plan a step and report its outputs; `mess` garbles them.
    Step {
        mess: u8,
        stop: u8,
    },
    Cancel {
        id: u8,
    },
    Reset,
    Events,
}

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (s, ops) = input;
    let mut groups = vec![AttentionKind::Full];
    if let Some(w) = s.window {
        groups.push(AttentionKind::SlidingWindow { window: w as u32 });
    }
    if let Some(c) = s.chunk {
        groups.push(AttentionKind::ChunkedLocal { chunk: c as u32 });
    }
    let Ok(kv) = KvCacheManager::new(KvCacheConfig {
        num_blocks: s.num_blocks as u32,
        block_size: s.block_size as u32 % 17,
        max_model_len: 256,
        num_host_blocks: s.host_blocks as u32 % 32,
        enable_prefix_caching: s.caching,
        enable_kv_events: s.events,
        groups,
        prefix_offload: match s.offload % 3 {
            0 => PrefixOffload::Off,
            1 => PrefixOffload::OnEvict,
            _ => PrefixOffload::OnFree,
        },
        ..Default::default()
    }) else {
        return;
    };
    let config = SchedulerConfig {
        max_num_seqs: s.max_num_seqs as u32 % 9,
        max_num_batched_tokens: s.max_num_batched_tokens as u32 % 400,
        enable_chunked_prefill: s.chunked,
        admit_whole_prompt: s.whole_prompt,
        isolate_growth: s.isolate,
        ..Default::default()
    };
    let Ok(sched) = Scheduler::new(kv, config) else {
        return;
    };
    let mut sched = match s.policy % 4 {
        0 => sched,
        1 => sched.with_preemption_mode(AlwaysSwap),
        2 => sched
            .with_preemption_mode(Automatic::default())
            .with_victim_policy(MostBlocks),
        _ => sched
            .with_victim_policy(LowestPriority)
            .with_queue_order(PriorityOrder),
    };
    let mut plan = StepPlan::default();
    let mut out: Vec<SampledToken> = Vec::new();
    let mut events: Vec<KvEvent> = Vec::new();
    let mut token = 0u32;
    for op in ops.into_iter().take(300) {
        match op {
            Op::Add {
                id,
                len,
                max_new,
                n,
                priority,
                tenant,
            } => {
                let _ = sched.add_request(Request {
                    id: RequestId(id as u64 % 16),
                    prompt: (0..len as u32 % 300).map(|t| t % 5).collect(),
                    max_new_tokens: max_new as u32 % 64,
                    priority: priority as i32,
                    arrival: token as u64,
                    n: n as u32 % 6,
                    keys: if tenant % 2 == 0 {
                        PrefixKeys::default()
                    } else {
                        PrefixKeys::salted("t")
                    },
                });
            }
            Op::Step { mess, stop } => {
                sched.step(&mut plan);
                out.clear();
                for e in &plan.scheduled {
                    for k in 0..e.num_samples {
                        token += 1;
                        out.push(SampledToken {
                            seq: e.sample_seq(k),
                            token: token % 7,
                            stop: stop != 0 && token % stop as u32 == 0,
                        });
                    }
                }
                let right = out.clone();
                match mess % 8 {
                    1 => {
                        out.pop();
                    }
                    2 if !out.is_empty() => out.push(out[0]),
                    3 => out.push(SampledToken {
                        seq: SeqId(u64::MAX),
                        token: 1,
                        stop: false,
                    }),
                    4 => out.reverse(),
                    _ => {}
                }
                if sched.on_step_output(&mut plan, &out).is_err() {
                    // Refused: the right outputs are still taken.
                    sched
                        .on_step_output(&mut plan, &right)
                        .expect("a refused output changes nothing");
                }
            }
            Op::Cancel { id } => {
                let _ = sched.cancel(RequestId(id as u64 % 16));
            }
            Op::Reset => {
                sched.reset_prefix_cache();
            }
            Op::Events => sched.drain_events(&mut events),
        }
        if let Err(e) = sched.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
});
