//! Replays the real multi-turn ShareGPT trace (`data/traces/sharegpt_multiturn.csv`)
//! through the manager with prefix caching on and a cache large enough to keep
//! a conversation's history: every turn after the first must find every full
//! block of its history cached, and nothing past it.
//!
//! Token ids are synthetic (a seeded hash of conversation, turn, role and
//! position) since the trace holds lengths only; the prompt of turn k is the
//! whole history (earlier prompts and replies) plus the turn's user tokens.

use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId, TokenId};

const BLOCK_SIZE: u32 = 16;

struct Turn {
    conversation: u32,
    user_tokens: u32,
    output_tokens: u32,
}

fn load_turns() -> Vec<Turn> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/traces/sharegpt_multiturn.csv");
    let text = std::fs::read_to_string(path).expect("the trace ships in data/traces");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<u32> = line
                .split(',')
                .map(|x| x.parse().expect("numeric field"))
                .collect();
            Turn {
                conversation: f[0],
                user_tokens: f[2],
                output_tokens: f[3],
            }
        })
        .collect()
}

/// A token id in a Qwen-sized vocabulary, a pure function of where it stands.
fn token(conversation: u32, turn: u32, role: u32, pos: u32) -> TokenId {
    let mut x = ((conversation as u64) << 40) ^ ((turn as u64) << 24) ^ ((role as u64) << 22) ^ pos as u64;
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((x ^ (x >> 31)) % 151_643) as TokenId
}

#[test]
fn every_turn_hits_all_full_blocks_of_its_history() {
    let turns = load_turns();
    assert_eq!(turns.len(), 41_690);
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 32_768, // 512k tokens: more than any conversation holds
        block_size: BLOCK_SIZE,
        max_model_len: 1 << 20,
        watermark: 0.0,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .unwrap();
    let bs = BLOCK_SIZE as u64;
    let mut ops = BlockOps::default();
    let mut history: Vec<TokenId> = Vec::new();
    let (mut current, mut turn_no) = (u32::MAX, 0u32);
    let (mut later_turns, mut expected_hit_tokens) = (0u64, 0u64);
    for (i, t) in turns.iter().enumerate() {
        if t.conversation != current {
            (current, turn_no) = (t.conversation, 0);
            history.clear();
        }
        let h = history.len() as u64;
        let mut prompt = history.clone();
        prompt.extend((0..t.user_tokens).map(|p| token(current, turn_no, 0, p)));
        if prompt.is_empty() {
            turn_no += 1;
            continue;
        }
        let p = prompt.len() as u64;
        let seq = SeqId(i as u64);
        let got = kv.allocate(seq, &prompt).unwrap().cached_tokens as u64;
        kv.drain_ops(&mut ops); // the prefill step
                                // All full blocks of the history, but at least one prompt token left to compute.
        let expected = (h / bs).min((p - 1) / bs) * bs;
        assert_eq!(
            got, expected,
            "conversation {current} turn {turn_no}: history {h}, prompt {p}"
        );
        expected_hit_tokens += expected;
        later_turns += (turn_no > 0) as u64;
        let reply: Vec<TokenId> = (0..t.output_tokens)
            .map(|p| token(current, turn_no, 1, p))
            .collect();
        for chunk in reply.chunks(64) {
            kv.append(seq, chunk).unwrap();
            kv.drain_ops(&mut ops);
        }
        kv.free(seq).unwrap();
        history = prompt;
        history.extend_from_slice(&reply);
        turn_no += 1;
    }
    assert!(later_turns > 29_000, "{later_turns} later turns");
    assert_eq!(kv.stats().prefix_hit_tokens, expected_hit_tokens);
    // 85.5% of all prompt tokens (first turns included) are history.
    assert!(
        kv.stats().prefix_hit_rate() > 0.85,
        "hit rate {}",
        kv.stats().prefix_hit_rate()
    );
    kv.check_invariants().unwrap();
}
