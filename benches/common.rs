//! Helpers shared by the benchmark binaries.

#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Bencher;
use pagedkv::{BlockOps, KvCacheManager, SeqId, Slot};

/// Runs `iters` timed steps in cycles of at most `cycle` steps, calling the
/// untimed `reset` between cycles; returns the time spent stepping.
pub fn timed_cycles<S>(
    state: &mut S,
    iters: u64,
    cycle: u64,
    step: impl Fn(&mut S, u64),
    reset: impl Fn(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(cycle);
        let t = Instant::now();
        step(state, n);
        total += t.elapsed();
        reset(state);
        left -= n;
    }
    total
}

/// How a decode step reaches the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeCall {
    /// `append(SeqId, ..)` per sequence, no slots (the step of earlier releases).
    AppendById,
    /// `append_and_group_slots_into(SeqId, ..)` per sequence: slots in every group.
    SlotsById,
    /// One `append_decode_into` over the batch's handles: slots in every group.
    Batched,
}

/// Decode steps of `seqs` sequences of `start` prompt tokens: each step every
/// sequence appends one token (and, but for `AppendById`, gets its slot in
/// every group), then the ops are drained. Lengths go back to `start`
/// (untimed) every `cycle` steps.
pub fn bench_decode_steps(
    b: &mut Bencher<'_>,
    mut kv: KvCacheManager,
    seqs: u64,
    start: u64,
    cycle: u64,
    call: DecodeCall,
) {
    for s in 0..seqs {
        // Distinct prompts, so prefix caching (when on) shares nothing.
        let prompt: Vec<u32> = (0..start as u32).map(|t| t ^ ((s as u32) << 16)).collect();
        kv.allocate(SeqId(s), &prompt).expect("room");
    }
    let batch: Vec<_> = (0..seqs)
        .map(|s| (kv.handle(SeqId(s)).expect("allocated"), 1))
        .collect();
    let slots: Vec<Vec<Slot>> = (0..kv.num_groups())
        .map(|_| Vec::with_capacity(seqs as usize))
        .collect();
    let mut state = (kv, BlockOps::default(), slots);
    b.iter_custom(|iters| {
        timed_cycles(
            &mut state,
            iters,
            cycle,
            |(kv, ops, slots), steps| {
                for _ in 0..steps {
                    slots.iter_mut().for_each(Vec::clear);
                    match call {
                        DecodeCall::AppendById => {
                            for s in 0..seqs {
                                kv.append(SeqId(s), &[1]).expect("room");
                            }
                        }
                        DecodeCall::SlotsById => {
                            for s in 0..seqs {
                                let len = kv.num_tokens(SeqId(s)).expect("allocated");
                                kv.append_and_group_slots_into(SeqId(s), &[1], len..len + 1, slots)
                                    .expect("room");
                            }
                        }
                        DecodeCall::Batched => kv.append_decode_into(&batch, slots).expect("room"),
                    }
                    kv.drain_ops(ops);
                    black_box((&*ops, &*slots));
                }
            },
            |(kv, _, _)| {
                for s in 0..seqs {
                    kv.truncate(SeqId(s), start).expect("allocated");
                }
            },
        )
    })
}
