//! Prefix-cache hit rate of the real multi-turn ShareGPT trace at several pool
//! sizes, beside the hit rate of an unbounded cache.
//!
//! `cargo run --release --example prefix_hit_rate`
//!
//! Workload: 64 conversations are active at once; each round, every active
//! conversation sends its next turn (its prompt is the whole history plus the
//! new user message), the reply is appended token by token in chunks, and the
//! sequence is freed; a finished conversation is replaced by the next one of the
//! trace. Requests run one at a time, so the pool holds one running sequence
//! plus whatever the cache keeps: the numbers isolate cache capacity and LRU
//! order (the simulator adds concurrency). Token ids are synthetic: a seeded hash
//! of (conversation, turn, role, position), so only true history repeats.

use std::collections::VecDeque;

use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId, TokenId};

const BLOCK_SIZE: u32 = 16;
const ACTIVE: usize = 64;

struct Conversation {
    id: u32,
    turns: Vec<(u32, u32)>, // (user tokens, output tokens)
    next: usize,
    history: Vec<TokenId>,
}

fn token(conversation: u32, turn: u32, role: u32, pos: u32) -> TokenId {
    let mut x = ((conversation as u64) << 40) ^ ((turn as u64) << 24) ^ ((role as u64) << 22) ^ pos as u64;
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) % 151_643) as TokenId
}

fn load() -> Vec<Conversation> {
    let text = include_str!("../data/traces/sharegpt_multiturn.csv");
    let mut out: Vec<Conversation> = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<u32> = line
            .split(',')
            .map(|x| x.parse().expect("numeric field"))
            .collect();
        if out.last().map_or(true, |c| c.id != f[0]) {
            out.push(Conversation {
                id: f[0],
                turns: Vec::new(),
                next: 0,
                history: Vec::new(),
            });
        }
        out.last_mut().expect("pushed").turns.push((f[2], f[3]));
    }
    out
}

/// What one replay measured.
struct Replay {
    /// Prompt tokens found cached, over all prompt tokens of the trace.
    hit_rate: f64,
    /// Requests whose prompt (or reply) did not fit in the whole pool.
    too_long: u64,
    evictions: u64,
}

fn replay(num_blocks: u32) -> Replay {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .expect("valid config");
    let mut pending: VecDeque<Conversation> = load().into();
    let mut active: Vec<Conversation> = Vec::new();
    let (mut seq, mut prompt_tokens, mut too_long) = (0u64, 0u64, 0u64);
    let mut ops = BlockOps::default();
    loop {
        while active.len() < ACTIVE {
            match pending.pop_front() {
                Some(c) => active.push(c),
                None => break,
            }
        }
        if active.is_empty() {
            break;
        }
        for c in &mut active {
            let turn = c.next as u32;
            let (user, output) = c.turns[c.next];
            c.next += 1;
            let mut prompt = std::mem::take(&mut c.history);
            prompt.extend((0..user).map(|p| token(c.id, turn, 0, p)));
            if prompt.is_empty() {
                continue;
            }
            seq += 1;
            prompt_tokens += prompt.len() as u64;
            // A prompt longer than the pool cannot run: its tokens count as misses.
            if kv.allocate(SeqId(seq), &prompt).is_ok() {
                kv.drain_ops(&mut ops); // the prefill step
                let reply: Vec<TokenId> = (0..output).map(|p| token(c.id, turn, 1, p)).collect();
                for chunk in reply.chunks(16) {
                    if kv.append(SeqId(seq), chunk).is_err() {
                        too_long += 1;
                        break;
                    }
                    kv.drain_ops(&mut ops);
                }
                kv.free(SeqId(seq)).expect("allocated");
            } else {
                too_long += 1;
            }
            prompt.extend((0..output).map(|p| token(c.id, turn, 1, p)));
            c.history = prompt;
        }
        active.retain(|c| c.next < c.turns.len());
    }
    let s = kv.stats();
    Replay {
        hit_rate: s.prefix_hit_tokens as f64 / prompt_tokens as f64,
        too_long,
        evictions: s.prefix_evictions,
    }
}

fn main() {
    println!("multi-turn ShareGPT trace, {ACTIVE} conversations interleaved, block size {BLOCK_SIZE}");
    println!(
        "{:>10} {:>12} {:>9} {:>9} {:>12}",
        "blocks", "tokens", "hit rate", "too long", "evictions"
    );
    for num_blocks in [2_048u32, 4_896, 16_384, 65_536, 1 << 20] {
        let r = replay(num_blocks);
        println!(
            "{num_blocks:>10} {:>12} {:>8.1}% {:>9} {:>12}",
            num_blocks as u64 * BLOCK_SIZE as u64,
            r.hit_rate * 100.0,
            r.too_long,
            r.evictions
        );
    }
}
