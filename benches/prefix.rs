//! Prefix-caching costs, each beside a floor measured in the same run:
//! (e) finding a fully cached 2048-token prompt (hashing included) beside
//!     std's SipHash over the same bytes; hashing throughput in bytes/s;
//! (f) allocate a 2048-token prompt whose first half is cached, hand its
//!     step over (`drain_ops`: the new half becomes cached), then free it,
//!     beside the same calls with prefix caching off;
//! (g) a decode step of 256 sequences with prefix caching on, beside off;
//! (j) allocate a fully cached 2048-token prompt (hash, lookup, take the hit
//!     blocks, one new block for the token left to compute) and free it,
//!     beside a radix trie over token ids (a stand-in for TGI's radix
//!     allocator, written here) doing the same lookup, allocation and free.
//! (h) allocating a 2048-token prompt whose prefix is cached on the device
//!     (the floor) beside the same prompt cached only in the host tier
//!     (reloaded: 128 host hits, fresh device blocks, swap-in copies queued),
//!     in a full cache (every fresh block evicts a cached one, offloaded at
//!     the drain). Between timed calls both cases fill and free 512 blocks
//!     (the host case in its manager, the device case in a shadow copy), so
//!     both start equally cold. The bound: the host hit costs at most
//!     2x the floor.
//!
//! Run: `cargo bench --bench prefix` (release). Results: BENCHMARKS.md.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hasher};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pagedkv::{
    hash_block, BlockOps, HashAlgorithm, KvCacheConfig, KvCacheManager, PrefixKeys, PrefixOffload, SeqId,
};

mod common;

const BLOCK_SIZE: u32 = 16;
const PROMPT: u32 = 2048;

fn manager(num_blocks: u32, caching: bool) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        enable_prefix_caching: caching,
        ..Default::default()
    })
    .expect("valid bench config")
}

/// (e) the lookup of a fully cached 2048-token prompt: 128 blocks hashed and found.
fn lookup_2048(c: &mut Criterion) {
    let mut g = c.benchmark_group("e_lookup_cached_2048_tokens");
    let prompt: Vec<u32> = (0..PROMPT).map(|t| t * 31 + 7).collect();
    let bytes: Vec<u8> = prompt.iter().flat_map(|t| t.to_le_bytes()).collect();
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("floor_std_siphash_8KiB", |b| {
        b.iter(|| {
            let mut h = DefaultHasher::new();
            h.write(black_box(&bytes));
            h.finish()
        })
    });
    let keys = PrefixKeys::default();
    g.bench_function("xxh3_128_chain_128_blocks", |b| {
        b.iter(|| {
            let mut parent = None;
            for (i, block) in black_box(&prompt).chunks_exact(BLOCK_SIZE as usize).enumerate() {
                parent = Some(hash_block(
                    HashAlgorithm::Xxh3_128,
                    parent,
                    block,
                    i as u32,
                    BLOCK_SIZE,
                    &keys,
                ));
            }
            parent
        })
    });
    // Cache all 128 blocks, then look up the prompt plus one token (the one
    // left to compute), so every one of the 128 blocks is hashed and found.
    let mut kv = manager(4096, true);
    let mut query = prompt.clone();
    query.push(1);
    kv.allocate(SeqId(0), &query).expect("room");
    kv.drain_ops(&mut Default::default()); // the prefill step runs: its blocks become hittable
    assert_eq!(kv.cached_prefix_len(&query, &keys), PROMPT as u64);
    g.bench_function("cached_prefix_len", |b| {
        b.iter(|| kv.cached_prefix_len(black_box(&query), &keys))
    });
    g.finish();
}

/// (f) allocate a 2048-token prompt with a 50% prefix hit, then free it. The
/// second half differs every iteration, so freed blocks keep being cached and
/// evicted as in steady state.
fn alloc_half_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("f_alloc_free_2048_half_cached");
    let shared: Vec<u32> = (0..PROMPT / 2).map(|t| t * 13 + 1).collect();
    let mut n = 0u32;
    let mut next_prompt = move || {
        n = n.wrapping_add(1);
        let mut p = shared.clone();
        p.extend((0..PROMPT / 2).map(|t| t ^ (n << 12)));
        p
    };
    let mut ops = BlockOps::default();
    for (name, caching) in [("floor_caching_off", false), ("caching_on", true)] {
        let mut kv = manager(4096, caching);
        let warm = next_prompt();
        kv.allocate(SeqId(0), &warm).expect("room");
        kv.drain_ops(&mut ops); // the prefill step runs: its blocks become hittable
        kv.free(SeqId(0)).expect("allocated");
        g.bench_function(name, |b| {
            b.iter_batched(
                &mut next_prompt,
                |p| {
                    let a = kv.allocate(SeqId(1), &p).expect("room");
                    assert_eq!(a.cached_tokens, if caching { PROMPT / 2 } else { 0 });
                    kv.drain_ops(&mut ops);
                    kv.free(SeqId(1)).expect("allocated");
                    a
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// (g) the decode step of `allocator` (c), prefix caching off and on.
fn decode_step_caching(c: &mut Criterion) {
    let mut g = c.benchmark_group("g_decode_step_256_seqs_caching");
    for (name, caching) in [("floor_caching_off", false), ("caching_on", true)] {
        g.bench_function(name, |b| {
            common::bench_decode_steps(
                b,
                manager(256 * 128, caching),
                256,
                1000,
                64,
                common::DecodeCall::AppendById,
            )
        });
    }
    g.finish();
}

/// The floor of (j): a radix trie over token ids, as TGI's radix allocator
/// keeps its prefix cache: each node holds a run of tokens (a multiple of the
/// block size) and their blocks, children keyed by their first token, a
/// reference count per node; a lookup walks the trie comparing tokens; blocks
/// beyond the hit come from a free stack.
struct RadixTrie {
    nodes: Vec<TrieNode>,
    free: Vec<u32>,
    block_size: usize,
}

struct TrieNode {
    key: Vec<u32>,
    blocks: Vec<u32>,
    children: HashMap<u32, usize>,
    ref_count: u32,
}

impl RadixTrie {
    fn new(num_blocks: u32, block_size: usize) -> Self {
        let root = TrieNode {
            key: Vec::new(),
            blocks: Vec::new(),
            children: HashMap::new(),
            ref_count: 0,
        };
        RadixTrie {
            nodes: vec![root],
            free: (0..num_blocks).rev().collect(),
            block_size,
        }
    }

    /// Caches `tokens` (whole blocks) under the root as one node.
    fn insert(&mut self, tokens: &[u32]) {
        let blocks = (0..tokens.len() / self.block_size)
            .map(|_| self.free.pop().expect("room"))
            .collect();
        self.nodes.push(TrieNode {
            key: tokens.to_vec(),
            blocks,
            children: HashMap::new(),
            ref_count: 0,
        });
        let id = self.nodes.len() - 1;
        self.nodes[0].children.insert(tokens[0], id);
    }

    /// Walks the trie over `tokens`: the deepest node matched and the blocks
    /// of the whole blocks matched, appended to `table`.
    fn lookup(&self, tokens: &[u32], table: &mut Vec<u32>) -> usize {
        let (mut node, mut at) = (0, 0);
        while let Some(&child) = tokens.get(at).and_then(|t| self.nodes[node].children.get(t)) {
            let c = &self.nodes[child];
            let shared = c
                .key
                .iter()
                .zip(&tokens[at..])
                .take_while(|(a, b)| a == b)
                .count();
            let whole = shared / self.block_size;
            table.extend_from_slice(&c.blocks[..whole]);
            at += whole * self.block_size;
            node = child;
            if shared < c.key.len() {
                break;
            }
        }
        node
    }

    /// Allocates `prompt` (leaving its last token to compute): the hit
    /// blocks, referenced through their node, then fresh blocks.
    fn allocate(&mut self, prompt: &[u32], table: &mut Vec<u32>) -> usize {
        let node = self.lookup(&prompt[..prompt.len() - 1], table);
        self.nodes[node].ref_count += 1;
        let total = prompt.len().div_ceil(self.block_size);
        while table.len() < total {
            table.push(self.free.pop().expect("room"));
        }
        node
    }

    fn free(&mut self, node: usize, hit_blocks: usize, table: &mut Vec<u32>) {
        self.nodes[node].ref_count -= 1;
        self.free.extend(table.drain(hit_blocks..).rev());
        table.clear();
    }
}

/// (j) a fully cached 2048-token prompt allocated and freed: 127 blocks hit
/// (the last token is left to compute, so its block is new), one taken.
fn alloc_free_cached_2048(c: &mut Criterion) {
    let mut g = c.benchmark_group("j_alloc_free_cached_2048_tokens");
    let prompt: Vec<u32> = (0..PROMPT).map(|t| t * 31 + 7).collect();
    let mut trie = RadixTrie::new(4096, BLOCK_SIZE as usize);
    trie.insert(&prompt);
    let mut table = Vec::with_capacity(128);
    g.bench_function("floor_radix_trie", |b| {
        b.iter(|| {
            let node = trie.allocate(black_box(&prompt), &mut table);
            assert_eq!(table.len(), 128);
            black_box(&table);
            trie.free(node, 127, &mut table);
        })
    });
    let mut kv = manager(4096, true);
    kv.allocate(SeqId(0), &prompt).expect("room");
    kv.drain_ops(&mut Default::default());
    kv.free(SeqId(0)).expect("allocated");
    g.bench_function("manager_allocate_free", |b| {
        b.iter(|| {
            let a = kv.allocate(SeqId(1), black_box(&prompt)).expect("room");
            debug_assert_eq!(a.cached_tokens, PROMPT - BLOCK_SIZE);
            kv.free(SeqId(1)).expect("allocated");
            a
        })
    });
    g.finish();
}

/// (h) a prefix hit of 2048 tokens served by the device (the floor) and by the
/// host tier, in a full cache with offload on evict. Only `allocate` is
/// timed; the untimed reset frees the prompt and, for the host case, evicts
/// its device copies again (a 512-block prompt takes the whole pool).
fn hit_by_tier(c: &mut Criterion) {
    let mut g = c.benchmark_group("h_hit_2048_tokens_by_tier");
    let num_blocks = 512;
    let prompt: Vec<u32> = (0..=PROMPT).map(|t| t * 31 + 7).collect(); // 2048 cached + 1 to compute
    let filler: Vec<u32> = (0..num_blocks * BLOCK_SIZE).map(|t| t ^ 0x5a5a_0000).collect();
    let mut ops = BlockOps::default();
    for (name, on_host) in [("floor_device_hit", false), ("host_hit_reload", true)] {
        let mut kv = KvCacheManager::new(KvCacheConfig {
            num_blocks,
            block_size: BLOCK_SIZE,
            max_model_len: 1 << 20,
            watermark: 0.0,
            enable_prefix_caching: true,
            num_host_blocks: 1024,
            prefix_offload: PrefixOffload::OnEvict,
            ..Default::default()
        })
        .expect("valid bench config");
        // Fill the cache: every free block holds cached content.
        let fill = |kv: &mut KvCacheManager, ops: &mut BlockOps, tokens: &[u32]| {
            kv.allocate(SeqId(9), tokens).expect("room");
            kv.drain_ops(ops);
            kv.free(SeqId(9)).expect("allocated");
            kv.drain_ops(ops);
        };
        fill(&mut kv, &mut ops, &filler);
        fill(&mut kv, &mut ops, &prompt);
        // The same untimed memory traffic between timed calls in both cases
        // (512 blocks filled and freed), so both start equally cold: the
        // host case fills its own manager (evicting the prompt's device
        // copies, which the host keeps), the device case a shadow one.
        let mut shadow = kv.clone();
        let mut reset = |kv: &mut KvCacheManager, ops: &mut BlockOps| {
            kv.free(SeqId(1)).expect("allocated");
            kv.drain_ops(ops);
            if on_host {
                fill(kv, ops, &filler);
            } else {
                fill(&mut shadow, ops, &filler);
            }
        };
        if on_host {
            fill(&mut kv, &mut ops, &filler);
        }
        let keys = PrefixKeys::default();
        assert_eq!(
            kv.cached_prefix_tiers_in_group(&prompt, &keys, 0),
            if on_host { (0, 2048) } else { (2048, 0) }
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = std::time::Instant::now();
                    let a = kv.allocate(SeqId(1), black_box(&prompt)).expect("room");
                    total += t.elapsed();
                    assert_eq!(a.cached_tokens, PROMPT);
                    reset(&mut kv, &mut ops);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = lookup_2048, alloc_half_hit, decode_step_caching, alloc_free_cached_2048, hit_by_tier
}
criterion_main!(benches);
