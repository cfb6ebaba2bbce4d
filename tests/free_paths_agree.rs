//! `free` has two ways of releasing a sequence's blocks with prefix caching
//! on: one pass over each table (`BlockPool::release_all`) when the cache is
//! device-only with LRU eviction and no duplicate in use, and one call per
//! block otherwise. `Eviction::SegmentedLru` differs from LRU only in the host
//! tier, so a device-only cache with it takes the per-block path with the
//! same meaning. Driven by the same calls, the two managers must stay
//! identical after every one: the result, every table, the free order (stack
//! and LRU queue), the cached blocks, the counters and the drained operations.
//!
//! proptest draws the groups (full attention alone, or with a sliding window),
//! whether KV events are on, and calls over a small id space on prompts built
//! from two shared stems, so prefix hits, evictions, pending blocks freed
//! before their step is handed over, forks and duplicates are all frequent.

mod proptest_cases;

use pagedkv::{
    AttentionKind, BlockId, BlockOps, Eviction, KvCacheConfig, KvCacheManager, KvEvent, SeqId, TokenId,
};
use proptest::prelude::*;

fn cases() -> u32 {
    proptest_cases::from_env(256)
}

#[derive(Clone, Debug)]
enum Op {
    Allocate { seq: u64, prompt: Vec<TokenId> },
    Append { seq: u64, tokens: u8 },
    Fork { parent: u64, child: u64 },
    Truncate { seq: u64, len: u8 },
    Free { seq: u64 },
    Drain,
}

/// A stem shared by many prompts, then a short tail of its own.
fn prompt() -> impl Strategy<Value = Vec<TokenId>> {
    (0u32..2, 0usize..=16, 0u32..3, 1usize..8).prop_map(|(stem, stem_len, tail, tail_len)| {
        let stem = (0..stem_len as u32).map(move |i| stem * 1000 + i);
        let tail = (0..tail_len as u32).map(move |i| 5000 + tail * 100 + i);
        stem.chain(tail).collect()
    })
}

fn op() -> impl Strategy<Value = Op> {
    let seq = 0u64..6;
    prop_oneof![
        3 => (seq.clone(), prompt()).prop_map(|(seq, prompt)| Op::Allocate { seq, prompt }),
        3 => (seq.clone(), 1u8..6).prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        1 => (seq.clone(), seq.clone()).prop_map(|(parent, child)| Op::Fork { parent, child }),
        1 => (seq.clone(), 0u8..24).prop_map(|(seq, len)| Op::Truncate { seq, len }),
        3 => seq.prop_map(|seq| Op::Free { seq }),
        3 => Just(Op::Drain),
    ]
}

/// Runs `op`, returning what a caller sees of it.
fn apply(kv: &mut KvCacheManager, op: &Op) -> String {
    match op {
        Op::Allocate { seq, prompt } => format!("{:?}", kv.allocate(SeqId(*seq), prompt)),
        Op::Append { seq, tokens } => {
            let tokens: Vec<TokenId> = (0..*tokens as u32).map(|i| 7000 + i).collect();
            format!("{:?}", kv.append(SeqId(*seq), &tokens))
        }
        Op::Fork { parent, child } => format!("{:?}", kv.fork(SeqId(*parent), SeqId(*child))),
        Op::Truncate { seq, len } => format!("{:?}", kv.truncate(SeqId(*seq), *len as u64)),
        Op::Free { seq } => format!("{:?}", kv.free(SeqId(*seq))),
        Op::Drain => {
            let mut ops = BlockOps::default();
            kv.drain_ops(&mut ops);
            let mut events: Vec<KvEvent> = Vec::new();
            kv.drain_events(&mut events);
            format!("{ops:?} {events:?}")
        }
    }
}

/// Everything the two paths could leave differently: free order, tables
/// (every group), cached blocks, counters.
fn state(kv: &KvCacheManager) -> String {
    let free: Vec<BlockId> = kv.pool().free_blocks().collect();
    let queued: Vec<BlockId> = kv.pool().queued_blocks().collect();
    let tables: Vec<_> = (0..6)
        .map(|s| {
            (0..kv.config().groups.len())
                .map(|g| {
                    kv.group(g)
                        .and_then(|v| v.block_table(SeqId(s)))
                        .map(<[_]>::to_vec)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    format!(
        "free {free:?} queued {queued:?} tables {tables:?} cached {} stats {:?}",
        kv.num_cached_blocks(),
        kv.stats()
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn free_in_one_pass_matches_one_call_per_block(
        window in proptest::option::of(2u32..12),
        events in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let config = |eviction| KvCacheConfig {
            num_blocks: 20,
            block_size: 4,
            max_model_len: 64,
            watermark: 0.0,
            enable_prefix_caching: true,
            enable_kv_events: events,
            groups: match window {
                None => vec![AttentionKind::Full],
                Some(window) => vec![AttentionKind::Full, AttentionKind::SlidingWindow { window }],
            },
            eviction,
            ..Default::default()
        };
        let mut one_pass = KvCacheManager::new(config(Eviction::Lru)).unwrap();
        let mut per_block = KvCacheManager::new(config(Eviction::SegmentedLru)).unwrap();
        for op in &ops {
            let (a, b) = (apply(&mut one_pass, op), apply(&mut per_block, op));
            prop_assert_eq!(&a, &b, "{:?}", op);
            prop_assert_eq!(state(&one_pass), state(&per_block), "after {:?}", op);
            one_pass.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
}
