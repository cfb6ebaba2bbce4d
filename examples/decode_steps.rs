//! Where a hybrid decode step's time goes: the cost of each step of the
//! 16-step cycle that `benches/hybrid.rs` averages over (block size 16, 256
//! sequences of 1001+ tokens, all the same length, a 512-token window), for
//! one full-attention group, two full groups, and full + sliding window.
//!
//! `cargo run --release --example decode_steps [SEQUENCES]` (default 256, the
//! bench's batch; other batch sizes show how a step's cost grows with the
//! batch, as its per-sequence state outgrows each cache level)
//!
//! Prints, per configuration, the median time of `append_decode_into` at
//! each position of the cycle (position 0: every sequence starts a block in
//! each group; with the window, position 15: every sequence releases the
//! block the window moved past), then the mean of the other positions. Run it
//! on a quiet machine; the medians are over 400 cycles of 64 steps.

use std::time::Instant;

use pagedkv::{AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, SeqHandle, SeqId, Slot};

const BLOCK_SIZE: u32 = 16;
const START: usize = 1000;
const ROUNDS: usize = 400;
const STEPS: u64 = 64;

fn per_position(groups: Vec<AttentionKind>, seqs: u64) -> Vec<u64> {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: (seqs * 128 * groups.len() as u64) as u32,
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        groups,
        ..Default::default()
    })
    .expect("valid config");
    let mut ops = BlockOps::default();
    let prompt: Vec<u32> = (0..START as u32).collect();
    let mut slots: Vec<Vec<Slot>> = (0..kv.num_groups())
        .map(|_| Vec::with_capacity(seqs as usize))
        .collect();
    let mut times = vec![Vec::new(); BLOCK_SIZE as usize];
    for _ in 0..ROUNDS {
        for s in 0..seqs {
            kv.allocate(SeqId(s), &prompt).expect("room");
        }
        kv.drain_ops(&mut ops);
        for s in 0..seqs {
            kv.append(SeqId(s), &[1]).expect("room");
        }
        kv.drain_ops(&mut ops);
        let batch: Vec<(SeqHandle, u32)> = (0..seqs)
            .map(|s| (kv.handle(SeqId(s)).expect("allocated"), 1))
            .collect();
        for step in 0..STEPS {
            slots.iter_mut().for_each(Vec::clear);
            let t = Instant::now();
            kv.append_decode_into(&batch, &mut slots).expect("room");
            let ns = t.elapsed().as_nanos() as u64;
            kv.drain_ops(&mut ops);
            times[((START as u64 + 1 + step) % BLOCK_SIZE as u64) as usize].push(ns);
        }
        for s in 0..seqs {
            kv.free(SeqId(s)).expect("allocated");
        }
        kv.drain_ops(&mut ops);
    }
    times
        .iter_mut()
        .map(|v| {
            v.sort_unstable();
            v[v.len() / 2]
        })
        .collect()
}

fn main() {
    let seqs: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 256,
        Some(Ok(n)) if (1..=65_536).contains(&n) => n,
        Some(_) => {
            eprintln!("usage: decode_steps [SEQUENCES (1 to 65536, default 256)]");
            std::process::exit(2);
        }
    };
    let window = AttentionKind::SlidingWindow { window: 512 };
    println!(
        "append_decode_into of {seqs} sequences, median ns at each position of the {BLOCK_SIZE}-step cycle"
    );
    for (name, groups) in [
        ("one full group", vec![AttentionKind::Full]),
        ("two full groups", vec![AttentionKind::Full, AttentionKind::Full]),
        ("full + window 512", vec![AttentionKind::Full, window]),
    ] {
        let m = per_position(groups, seqs);
        let others: Vec<u64> = m[1..BLOCK_SIZE as usize - 1].to_vec();
        let mean = others.iter().sum::<u64>() / others.len() as u64;
        let avg = m.iter().sum::<u64>() / m.len() as u64;
        println!(
            "{name:>18}: position 0 {} ns, positions 1-14 {mean} ns, position 15 {} ns, cycle average {avg} ns",
            m[0],
            m[BLOCK_SIZE as usize - 1]
        );
    }
}
