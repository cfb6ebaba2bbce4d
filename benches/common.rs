//! Helpers shared by the benchmark binaries.

#![allow(dead_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Bencher;
use pagedkv::{BlockOps, KvCacheManager, SeqId};

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

/// Decode steps of `seqs` sequences of `start` prompt tokens: each step every
/// sequence appends one token, then the ops are drained. Lengths go back to
/// `start` (untimed) every `cycle` steps.
pub fn bench_decode_steps(b: &mut Bencher<'_>, mut kv: KvCacheManager, seqs: u64, start: u64, cycle: u64) {
    for s in 0..seqs {
        // Distinct prompts, so prefix caching (when on) shares nothing.
        let prompt: Vec<u32> = (0..start as u32).map(|t| t ^ ((s as u32) << 16)).collect();
        kv.allocate(SeqId(s), &prompt).expect("room");
    }
    let mut state = (kv, BlockOps::default());
    b.iter_custom(|iters| {
        timed_cycles(
            &mut state,
            iters,
            cycle,
            |(kv, ops), steps| {
                for _ in 0..steps {
                    for s in 0..seqs {
                        kv.append(SeqId(s), &[1]).expect("room");
                    }
                    kv.drain_ops(ops);
                    black_box(&*ops);
                }
            },
            |(kv, _)| {
                for s in 0..seqs {
                    kv.truncate(SeqId(s), start).expect("allocated");
                }
            },
        )
    })
}
