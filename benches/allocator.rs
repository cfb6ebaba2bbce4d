//! Hot-path costs of the block pool and the manager, each beside a floor: the
//! same block-count work on a bare `Vec<u32>` free stack, so results read as ratios.
//!
//! Run: `cargo bench --bench allocator` (release). Results: BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

mod common;
use common::{timed_cycles, DecodeCall};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use pagedkv::{BlockOps, BlockPool, KvCacheConfig, KvCacheManager, SeqId};

const BLOCK_SIZE: u32 = 16;

fn manager(num_blocks: u32) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        ..Default::default()
    })
    .expect("valid bench config")
}

/// The floor: a free stack of block ids.
fn free_stack(n: u32) -> Vec<u32> {
    (0..n).rev().collect()
}

/// (a) one block out of the pool and back.
fn alloc_free_one_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("a_alloc_free_one_block");
    let mut stack = free_stack(4096);
    g.bench_function("floor_vec_u32_stack", |b| {
        b.iter(|| {
            let id = stack.pop().expect("non-empty");
            stack.push(black_box(id));
        })
    });
    let mut pool = BlockPool::new(4096).expect("valid");
    g.bench_function("block_pool", |b| {
        b.iter(|| {
            let id = pool.allocate().expect("non-empty");
            pool.decref(black_box(id)).expect("allocated");
        })
    });
    let mut kv = manager(4096);
    g.bench_function("manager_seq_of_one_token", |b| {
        b.iter(|| {
            kv.allocate(SeqId(1), black_box(&[7])).expect("room");
            kv.free(SeqId(1)).expect("allocated");
        })
    });
    g.finish();
}

/// (b) a 2048-token sequence (128 blocks) allocated and freed.
fn alloc_free_2048_tokens(c: &mut Criterion) {
    let mut g = c.benchmark_group("b_alloc_free_2048_tokens");
    let blocks = 2048 / BLOCK_SIZE as usize;
    let mut stack = free_stack(4096);
    let mut table: Vec<u32> = Vec::with_capacity(blocks);
    g.bench_function("floor_vec_u32_stack", |b| {
        b.iter(|| {
            for _ in 0..blocks {
                table.push(stack.pop().expect("non-empty"));
            }
            black_box(&table);
            while let Some(id) = table.pop() {
                stack.push(id);
            }
        })
    });
    let prompt: Vec<u32> = (0..2048).collect();
    let mut kv = manager(4096);
    g.bench_function("manager", |b| {
        b.iter(|| {
            kv.allocate(SeqId(1), black_box(&prompt)).expect("room");
            kv.free(SeqId(1)).expect("allocated");
        })
    });
    g.finish();
}

/// The decode-step floor: `Vec<u32>` tables on a free stack, lengths in a
/// `Vec<u64>`; each step every sequence takes a block when its last is full
/// (every 16th step), bumps its length and (with `slots`) pushes the new
/// token's slot into a reused buffer.
fn floor_decode_steps(b: &mut criterion::Bencher<'_>, seqs: u64, start: u64, cycle: u64, slots: bool) {
    let mut stack = free_stack(256 * 128);
    let tables: Vec<Vec<u32>> = (0..seqs)
        .map(|_| {
            let mut t = Vec::with_capacity(128);
            t.extend((0..start.div_ceil(16)).map(|_| stack.pop().expect("room")));
            t
        })
        .collect();
    let out: Vec<u64> = Vec::with_capacity(seqs as usize);
    let mut state = (stack, tables, vec![start; seqs as usize], out);
    b.iter_custom(|iters| {
        timed_cycles(
            &mut state,
            iters,
            cycle,
            |(stack, tables, lens, out), steps| {
                for _ in 0..steps {
                    out.clear();
                    for (t, len) in tables.iter_mut().zip(lens.iter_mut()) {
                        if *len % 16 == 0 {
                            t.push(stack.pop().expect("room"));
                        }
                        if slots {
                            let last = *t.last().expect("non-empty") as u64;
                            out.push(last * 16 + *len % 16);
                        }
                        *len += 1;
                    }
                    black_box((&*tables, &*out));
                }
            },
            |(stack, tables, lens, _)| {
                for (t, len) in tables.iter_mut().zip(lens.iter_mut()) {
                    while t.len() as u64 > start.div_ceil(16) {
                        stack.push(t.pop().expect("non-empty"));
                    }
                    *len = start;
                }
            },
        )
    })
}

/// (c) a decode step: 256 running sequences append one token each (every
/// 16th step takes a new block per sequence), then the ops are drained.
/// `manager` appends by `SeqId` without slots (the floor beside it:
/// `floor_vec_u32_stack`); the other two also get each new token's slot,
/// by `SeqId` or in one batched call over dense handles (their floor:
/// `floor_vec_u32_stack_slots`).
fn decode_step_256(c: &mut Criterion) {
    const SEQS: u64 = 256;
    const START: u64 = 1000;
    const CYCLE: u64 = 64; // steps before lengths are reset (untimed)
    let mut g = c.benchmark_group("c_decode_step_256_seqs");
    g.bench_function("floor_vec_u32_stack", |b| {
        floor_decode_steps(b, SEQS, START, CYCLE, false)
    });
    g.bench_function("floor_vec_u32_stack_slots", |b| {
        floor_decode_steps(b, SEQS, START, CYCLE, true)
    });
    for (name, call) in [
        ("manager", DecodeCall::AppendById),
        ("manager_slots_by_seq_id", DecodeCall::SlotsById),
        ("manager_batched_handles", DecodeCall::Batched),
    ] {
        g.bench_function(name, |b| {
            common::bench_decode_steps(b, manager(256 * 128), SEQS, START, CYCLE, call)
        });
    }
    g.finish();
}

/// (d) allocate a 100-token sequence, hand its prefill step over (drain),
/// fork it, diverge the child (copy-on-write of the shared partial block),
/// drain, free both.
fn fork_cow_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("d_fork_cow_free");
    let blocks = 100usize.div_ceil(BLOCK_SIZE as usize);
    let mut stack = free_stack(4096);
    let mut parent: Vec<u32> = Vec::with_capacity(blocks);
    let mut child: Vec<u32> = Vec::with_capacity(blocks);
    g.bench_function("floor_vec_u32_stack", |b| {
        // Parent takes its blocks, child copies the table and takes one fresh block.
        b.iter(|| {
            parent.extend((0..blocks).map(|_| stack.pop().expect("room")));
            child.extend_from_slice(&parent);
            *child.last_mut().expect("non-empty") = stack.pop().expect("room");
            black_box((&parent, &child));
            stack.push(child.pop().expect("non-empty"));
            child.clear();
            while let Some(id) = parent.pop() {
                stack.push(id);
            }
        })
    });
    let prompt: Vec<u32> = (0..100).collect();
    let mut kv = manager(4096);
    let mut ops = BlockOps::default();
    g.bench_function("manager", |b| {
        b.iter(|| {
            kv.allocate(SeqId(1), black_box(&prompt)).expect("room");
            kv.drain_ops(&mut ops); // the prefill step: its tokens may be forked from now on
            kv.fork(SeqId(1), SeqId(2)).expect("new child");
            kv.append(SeqId(2), &[5]).expect("room");
            kv.drain_ops(&mut ops);
            black_box(&ops);
            kv.free(SeqId(2)).expect("allocated");
            kv.free(SeqId(1)).expect("allocated");
        })
    });
    g.bench_function("manager_fork_only_parent_kept", |b| {
        kv.allocate(SeqId(1), &prompt).expect("room");
        kv.drain_ops(&mut ops);
        b.iter_batched(
            || (),
            |()| {
                kv.fork(SeqId(1), SeqId(2)).expect("new child");
                kv.append(SeqId(2), &[5]).expect("room");
                kv.drain_ops(&mut ops);
                kv.free(SeqId(2)).expect("allocated");
            },
            BatchSize::SmallInput,
        );
        kv.free(SeqId(1)).expect("allocated");
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = alloc_free_one_block, alloc_free_2048_tokens, decode_step_256, fork_cow_free
}
criterion_main!(benches);
