//! KV cache groups: a decode step of 256 sequences on a hybrid model (a
//! full-attention group and a sliding-window group sharing one pool) beside
//! the same step on one full-attention group, on one sliding-window group, on
//! two full-attention groups (the second table's cost without any window
//! release), and the `Vec<u32>` free-stack floor of the one-group step.
//!
//! Sequences start at 1000 tokens with a 512-token window, so the window group
//! releases a block every 16 steps per sequence, as it takes one. Every 64
//! steps the sequences are freed and allocated again, untimed, and one untimed
//! step lets each window release what the whole-prompt allocation held.
//!
//! Run: `cargo bench --bench hybrid` (release). Results: BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

mod common;
use common::timed_cycles;

use criterion::{criterion_group, criterion_main, Criterion};
use pagedkv::{AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, SeqHandle, SeqId, Slot};

const SEQS: u64 = 256;
const START: u64 = 1000;
const CYCLE: u64 = 64;
const WINDOW: u32 = 512;
const BLOCK_SIZE: u32 = 16;

fn manager(groups: Vec<AttentionKind>) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks: 256 * 128 * groups.len() as u32,
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        groups,
        ..Default::default()
    })
    .expect("valid bench config")
}

/// Allocates the sequences and runs one decode step (untimed): a window
/// group releases what the whole-prompt allocation held.
fn admit(kv: &mut KvCacheManager, ops: &mut BlockOps, prompt: &[u32]) {
    for s in 0..SEQS {
        kv.allocate(SeqId(s), prompt).expect("room");
    }
    kv.drain_ops(ops);
    for s in 0..SEQS {
        kv.append(SeqId(s), &[1]).expect("room");
    }
    kv.drain_ops(ops);
}

/// Decode steps: by `SeqId` without slots (`batched` false), or in one
/// `append_decode_into` over the sequences' handles with every group's slots.
fn decode_steps(kv: KvCacheManager, batched: bool, b: &mut criterion::Bencher<'_>) {
    let prompt: Vec<u32> = (0..START as u32).collect();
    let slots: Vec<Vec<Slot>> = (0..kv.num_groups())
        .map(|_| Vec::with_capacity(SEQS as usize))
        .collect();
    let mut state = (kv, BlockOps::default(), slots, Vec::new());
    let handles = |kv: &KvCacheManager, batch: &mut Vec<(SeqHandle, u32)>| {
        batch.clear();
        batch.extend((0..SEQS).map(|s| (kv.handle(SeqId(s)).expect("allocated"), 1)));
    };
    admit(&mut state.0, &mut state.1, &prompt);
    handles(&state.0, &mut state.3);
    b.iter_custom(|iters| {
        timed_cycles(
            &mut state,
            iters,
            CYCLE,
            |(kv, ops, slots, batch), steps| {
                for _ in 0..steps {
                    if batched {
                        slots.iter_mut().for_each(Vec::clear);
                        kv.append_decode_into(batch, slots).expect("room");
                    } else {
                        for s in 0..SEQS {
                            kv.append(SeqId(s), &[1]).expect("room");
                        }
                    }
                    kv.drain_ops(ops);
                    black_box((&*ops, &*slots));
                }
            },
            |(kv, ops, _, batch)| {
                for s in 0..SEQS {
                    kv.free(SeqId(s)).expect("allocated");
                }
                admit(kv, ops, &prompt);
                handles(kv, batch);
            },
        )
    })
}

/// A decode step of 256 sequences: one group, two groups, one window group.
fn hybrid_decode_step_256(c: &mut Criterion) {
    let mut g = c.benchmark_group("h_decode_step_256_seqs");
    g.bench_function("floor_vec_u32_stack", |b| {
        let mut stack: Vec<u32> = (0..256 * 128).rev().collect();
        let first = (START + 1).div_ceil(BLOCK_SIZE as u64);
        let tables: Vec<Vec<u32>> = (0..SEQS)
            .map(|_| {
                let mut t = Vec::with_capacity(128);
                t.extend((0..first).map(|_| stack.pop().expect("room")));
                t
            })
            .collect();
        let mut state = (stack, tables, vec![START + 1; SEQS as usize]);
        b.iter_custom(|iters| {
            timed_cycles(
                &mut state,
                iters,
                CYCLE,
                |(stack, tables, lens), steps| {
                    for _ in 0..steps {
                        for (t, len) in tables.iter_mut().zip(lens.iter_mut()) {
                            if *len % BLOCK_SIZE as u64 == 0 {
                                t.push(stack.pop().expect("room"));
                            }
                            *len += 1;
                        }
                        black_box(&*tables);
                    }
                },
                |(stack, tables, lens)| {
                    for (t, len) in tables.iter_mut().zip(lens.iter_mut()) {
                        while t.len() as u64 > first {
                            stack.push(t.pop().expect("non-empty"));
                        }
                        *len = START + 1;
                    }
                },
            )
        })
    });
    let window = AttentionKind::SlidingWindow { window: WINDOW };
    for (name, groups) in [
        ("full_one_group", vec![AttentionKind::Full]),
        ("full_and_window_two_groups", vec![AttentionKind::Full, window]),
        ("window_one_group", vec![window]),
        ("two_full_groups", vec![AttentionKind::Full, AttentionKind::Full]),
    ] {
        g.bench_function(name, |b| decode_steps(manager(groups.clone()), false, b));
        g.bench_function(format!("{name}_batched"), |b| {
            decode_steps(manager(groups.clone()), true, b)
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = hybrid_decode_step_256
}
criterion_main!(benches);
