//! Scheduler step costs beside floors measured in the same run.
//!
//! - `decode_256`: a step of 256 running decodes (append, slots, plan) plus
//!   `on_step_output`, against two floors: the manager's decode appends and
//!   slot lookups by `SeqId` for the same 256 sequences, and the one batched
//!   call over their handles (`append_decode_into`) the scheduler makes;
//!   and a bound: that batched call plus only the per-sequence work any
//!   scheduler with this plan and this output must do (the batch's tokens,
//!   the plan entries, the engine's sampled tokens, each appended to its
//!   sequence's token list and checked for a stop), without queues, budgets,
//!   guards or validation.
//! - `preempt_swap`: a step whose first decode must swap the other sequence
//!   out (4 blocks) to get a block (setup untimed).
//!
//! Run: `cargo bench --bench scheduler`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use pagedkv::scheduler::{AlwaysSwap, ScheduledSeq};
use pagedkv::{
    BlockOps, KvCacheConfig, KvCacheManager, Request, RequestId, SampledToken, Scheduler, SchedulerConfig,
    SeqId, StepPlan,
};

const SEQS: u64 = 256;

fn manager(num_blocks: u32, host: u32) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: 16,
        num_host_blocks: host,
        max_model_len: 1 << 16,
        watermark: 0.0,
        ..Default::default()
    })
    .expect("valid")
}

fn decode_256(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_decode_256");
    // Floor: the manager's own decode work for the same batch.
    let mut kv = manager(1 << 16, 0);
    for s in 0..SEQS {
        kv.allocate(SeqId(s), &[1; 32]).expect("room");
    }
    let (mut ops, mut slots) = (BlockOps::default(), Vec::new());
    let mut n = 0u64;
    g.bench_function("floor_manager_append_and_slots", |b| {
        b.iter(|| {
            slots.clear();
            for s in 0..SEQS {
                kv.append(SeqId(s), &[1]).expect("room");
                kv.new_slots_into(SeqId(s), 1, &mut slots).expect("live");
            }
            kv.drain_ops(&mut ops);
            black_box(&slots);
            n += 1;
            if n % 2_000 == 0 {
                for s in 0..SEQS {
                    kv.truncate(SeqId(s), 32).expect("live");
                }
            }
        })
    });

    // Floor: the batched manager call the scheduler makes for the same batch.
    let mut kv = manager(1 << 16, 0);
    for s in 0..SEQS {
        kv.allocate(SeqId(s), &[1; 32]).expect("room");
    }
    let batch: Vec<_> = (0..SEQS)
        .map(|s| (kv.handle(SeqId(s)).expect("live"), 1))
        .collect();
    let mut group_slots = vec![Vec::new()];
    let mut n = 0u64;
    g.bench_function("floor_manager_batched_decode", |b| {
        b.iter(|| {
            group_slots[0].clear();
            kv.append_decode_into(&batch, &mut group_slots).expect("room");
            kv.drain_ops(&mut ops);
            black_box(&group_slots);
            n += 1;
            if n % 2_000 == 0 {
                for s in 0..SEQS {
                    kv.truncate(SeqId(s), 32).expect("live");
                }
            }
        })
    });

    // Bound: the least any scheduler producing this plan from this output can
    // do around the batched call: put each sequence's last token in the
    // batch, write its plan entry, take its sampled token (the engine's side,
    // as in the scheduler row), append it to the sequence's token list and
    // check its stop conditions. No queues, budgets, guards or validation.
    struct Lite {
        seq: SeqId,
        tokens: Vec<u32>,
        num_computed: u32,
        max_len: u32,
    }
    let mut kv = manager(1 << 16, 0);
    let mut lites: Vec<Lite> = (0..SEQS)
        .map(|s| {
            kv.allocate(SeqId(s), &[1; 32]).expect("room");
            let mut tokens = Vec::with_capacity(4_096);
            tokens.extend_from_slice(&[1; 32]);
            Lite {
                seq: SeqId(s),
                tokens,
                num_computed: 32,
                max_len: 1 << 20,
            }
        })
        .collect();
    let mut batch: Vec<_> = lites
        .iter()
        .map(|l| (kv.handle(l.seq).expect("live"), 0))
        .collect();
    let mut group_slots = vec![Vec::new()];
    let mut plan = StepPlan::default();
    let mut out: Vec<SampledToken> = Vec::new();
    let mut finished = Vec::new();
    let mut n = 0u64;
    g.bench_function("bound_batched_decode_plan_and_output", |b| {
        b.iter(|| {
            group_slots[0].clear();
            plan.scheduled.clear();
            for (e, l) in batch.iter_mut().zip(&lites) {
                e.1 = *l.tokens.last().expect("prompt");
            }
            kv.append_decode_into(&batch, &mut group_slots).expect("room");
            kv.drain_ops(&mut ops);
            plan.scheduled
                .extend(lites.iter_mut().zip(0u32..).map(|(l, slot)| {
                    let start = l.num_computed;
                    l.num_computed += 1;
                    ScheduledSeq {
                        seq: l.seq,
                        start,
                        num_new_tokens: 1,
                        is_prefill: false,
                        num_samples: 1,
                        slots: slot..slot + 1,
                    }
                }));
            black_box((&plan.scheduled, &group_slots));
            out.clear();
            out.extend(plan.scheduled.iter().map(|e| SampledToken {
                seq: e.seq,
                token: 1,
                stop: false,
            }));
            for (o, l) in black_box(&out).iter().zip(lites.iter_mut()) {
                l.tokens.push(o.token);
                if o.stop || l.tokens.len() as u32 >= l.max_len {
                    finished.push(l.seq);
                }
            }
            n += 1;
            if n % 2_000 == 0 {
                for l in lites.iter_mut() {
                    kv.truncate(l.seq, 32).expect("live");
                    l.tokens.truncate(32);
                    l.num_computed = 32;
                }
            }
        })
    });
    assert!(finished.is_empty());

    // The scheduler: 256 decoding requests, rebuilt (untimed) every CYCLE steps.
    const CYCLE: u64 = 1_000;
    let config = SchedulerConfig {
        max_num_seqs: SEQS as u32,
        max_num_batched_tokens: 1 << 14,
        ..Default::default()
    };
    let step = |sched: &mut Scheduler, plan: &mut StepPlan, out: &mut Vec<SampledToken>| {
        sched.step(plan);
        out.clear();
        out.extend(plan.scheduled.iter().map(|e| SampledToken {
            seq: e.seq,
            token: 1,
            stop: false,
        }));
        sched.on_step_output(plan, out).expect("one per sequence");
    };
    let fresh = |plan: &mut StepPlan, out: &mut Vec<SampledToken>| {
        let mut sched = Scheduler::new(manager(1 << 16, 0), config.clone()).expect("valid");
        for r in 0..SEQS {
            sched
                .add_request(Request {
                    id: RequestId(r),
                    prompt: vec![1; 32],
                    max_new_tokens: 4_000,
                    priority: 0,
                    arrival: r,
                    n: 1,
                    ..Default::default()
                })
                .expect("fits");
        }
        for _ in 0..64 {
            step(&mut sched, plan, out); // prefill, then warm the buffers
        }
        assert_eq!(plan.scheduled.len(), SEQS as usize);
        sched
    };
    let mut plan = StepPlan::default();
    let mut out: Vec<SampledToken> = Vec::new();
    g.bench_function("scheduler_step_and_output", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let mut sched = fresh(&mut plan, &mut out);
                let n = left.min(CYCLE);
                let t = std::time::Instant::now();
                for _ in 0..n {
                    step(&mut sched, &mut plan, &mut out);
                }
                total += t.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

fn preempt_swap(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler_preempt_swap");
    let config = SchedulerConfig {
        max_num_seqs: 8,
        max_num_batched_tokens: 1 << 12,
        ..Default::default()
    };
    g.bench_function("step_preempting_by_swap_out", |b| {
        b.iter_batched(
            || {
                // Two sequences of 4 blocks each fill an 8-block pool exactly;
                // the next decode of the first must swap the second out.
                let mut sched = Scheduler::new(manager(8, 64), config.clone())
                    .expect("valid")
                    .with_preemption_mode(AlwaysSwap);
                for r in 0..2 {
                    sched
                        .add_request(Request {
                            id: RequestId(r),
                            prompt: vec![1; 64],
                            max_new_tokens: 60,
                            priority: 0,
                            arrival: r,
                            n: 1,
                            ..Default::default()
                        })
                        .expect("fits");
                }
                let mut plan = StepPlan::default();
                sched.step(&mut plan);
                let out: Vec<_> = plan
                    .scheduled
                    .iter()
                    .map(|e| SampledToken {
                        seq: e.seq,
                        token: 1,
                        stop: false,
                    })
                    .collect();
                sched.on_step_output(&mut plan, &out).expect("valid");
                (sched, plan)
            },
            |(mut sched, mut plan)| {
                sched.step(&mut plan); // preempts by swap
                assert_eq!(plan.ops.swap_out.len(), 4);
                black_box(&plan);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode_256, preempt_swap);
criterion_main!(benches);
