//! The cost of encoding KV events in vLLM's wire format, per event, beside a
//! floor measured in the same run: copying the same encoded bytes into a
//! reused `Vec<u8>` (what any encoder must at least write).
//!
//! (h) a decode step's batch: 256 `BlockStored` of one 16-token block each
//!     (every sequence of a 4096-sequence batch fills a block every 16th step)
//!     and 256 `BlockRemoved` of one block (the evictions that made room);
//! (i) a prefill's batch: one `BlockStored` of 128 blocks (a 2048-token prompt).
//!
//! Both reuse the output buffer, as `KvEventEncoder` does once warm (no heap
//! allocation). Run: `cargo bench --bench kv_events` (release). Results: BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagedkv::kv_events::{EventSource, KvEventEncoder};
use pagedkv::{BlockHash, KvEvent};

const BLOCK_SIZE: u32 = 16;

/// A pseudo-random 128-bit hash (uniform, as real block hashes are).
fn hash(i: u64) -> BlockHash {
    let x = (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    BlockHash::from_u128(x ^ (x >> 64))
}

/// One stored run of `blocks` blocks of a sequence, with a parent, plain keys.
fn stored(seed: u64, blocks: u32) -> KvEvent {
    KvEvent::BlockStored {
        block_hashes: (0..blocks as u64).map(|b| hash(seed * 1000 + b)).collect(),
        parent_block_hash: Some(hash(seed + 7)),
        // Token ids of a 32k-128k vocabulary (uint16 and uint32 encodings).
        token_ids: (0..blocks * BLOCK_SIZE)
            .map(|t| (t * 7919 + seed as u32) % 128_000)
            .collect(),
        block_size: BLOCK_SIZE,
        extra_keys: vec![Vec::new(); blocks as usize],
        first_block_index: 40,
        adapter: None,
        group: 0,
        tier: pagedkv::CacheTier::Device,
    }
}

fn bench_batch(c: &mut Criterion, group: &str, events: &[KvEvent]) {
    let encoder = KvEventEncoder::new(EventSource::default()).expect("default source");
    let mut payload = Vec::new();
    encoder.encode_into(1.7e9, events, &mut payload);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(events.len() as u64));
    let mut out: Vec<u8> = Vec::with_capacity(payload.len());
    g.bench_function("floor_copy_encoded_bytes", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&payload));
            black_box(out.len())
        })
    });
    g.bench_function("encode_into_reused_vec", |b| {
        b.iter(|| {
            encoder.encode_into(black_box(1.7e9), black_box(events), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

/// (h) a decode step: 256 one-block stores and 256 one-block removals.
fn decode_step(c: &mut Criterion) {
    let mut events: Vec<KvEvent> = (0..256).map(|s| stored(s, 1)).collect();
    events.extend((0..256).map(|s| KvEvent::BlockRemoved {
        block_hashes: vec![hash(1_000_000 + s)],
        group: 0,
        tier: pagedkv::CacheTier::Device,
    }));
    bench_batch(c, "h_encode_decode_step_512_events", &events);
}

/// (i) a prefill: one store of 128 blocks (2048 tokens).
fn prefill(c: &mut Criterion) {
    bench_batch(c, "i_encode_prefill_128_blocks", &[stored(1, 128)]);
}

criterion_group!(benches, decode_step, prefill);
criterion_main!(benches);
