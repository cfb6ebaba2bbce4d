//! Tenant isolation of the prefix cache, as properties: sequences allocated
//! under different cache salts never share a block, whatever their tokens;
//! under the same salt, a common prefix is shared block for block.

mod proptest_cases;

use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId, TokenId};
use proptest::prelude::*;

const BS: u32 = 4;

fn cases() -> u32 {
    proptest_cases::from_env(128)
}

fn manager() -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks: 512,
        block_size: BS,
        max_model_len: 4096,
        watermark: 0.0,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .unwrap()
}

fn salt(i: u8) -> PrefixKeys {
    match i {
        0 => PrefixKeys::default(),
        i => PrefixKeys::salted(format!("tenant-{i}")),
    }
}

/// Prompts drawn from a tiny alphabet around a few shared stems, so that equal
/// prefixes are common.
fn prompt() -> impl Strategy<Value = Vec<TokenId>> {
    (0..3usize, 0..24usize, prop::collection::vec(0..2u32, 0..10)).prop_map(|(stem, len, tail)| {
        let mut p: Vec<TokenId> = (0..len as u32).map(|i| i * 7 + stem as u32).collect();
        p.extend(tail);
        if p.is_empty() {
            p.push(1);
        }
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn different_salts_never_share_a_block(
        reqs in prop::collection::vec((0..3u8, prompt(), any::<bool>()), 1..40)
    ) {
        let mut kv = manager();
        let mut live: Vec<(SeqId, u8)> = Vec::new();
        for (i, (tenant, prompt, free_after)) in reqs.into_iter().enumerate() {
            let seq = SeqId(i as u64);
            kv.allocate_with(seq, &prompt, &salt(tenant)).unwrap();
            kv.drain_ops(&mut BlockOps::default()); // its step runs: later prompts may hit it
            live.push((seq, tenant));
            for &(a, ta) in &live {
                for &(b, tb) in &live {
                    if ta == tb {
                        continue;
                    }
                    let ba = kv.block_table(a).unwrap();
                    let bb = kv.block_table(b).unwrap();
                    prop_assert!(
                        ba.iter().all(|x| !bb.contains(x)),
                        "tenants {} and {} share a block: {:?} / {:?}", ta, tb, ba, bb
                    );
                }
            }
            if free_after {
                kv.free(seq).unwrap();
                live.pop();
            }
            kv.check_invariants().unwrap();
        }
    }

    #[test]
    fn the_same_salt_shares_the_common_prefix(
        tenant in 0..3u8, other in 0..3u8, common in prompt(), a_tail in prompt(), b_tail in prompt()
    ) {
        let mut kv = manager();
        let mut a = common.clone();
        a.extend(&a_tail);
        let mut b = common.clone();
        b.extend(&b_tail);
        kv.allocate_with(SeqId(1), &a, &salt(tenant)).unwrap();
        kv.drain_ops(&mut BlockOps::default());
        let got = kv.allocate_with(SeqId(2), &b, &salt(other)).unwrap();
        // The longest common prefix, in whole blocks, with a token of b left to compute.
        let lcp = a.iter().zip(&b).take_while(|(x, y)| x == y).count() as u32;
        let full = (lcp / BS).min((a.len() as u32) / BS).min((b.len() as u32 - 1) / BS);
        if tenant == other {
            prop_assert_eq!(got.cached_tokens, full * BS);
            let ta = kv.block_table(SeqId(1)).unwrap();
            let tb = kv.block_table(SeqId(2)).unwrap();
            prop_assert_eq!(&ta[..full as usize], &tb[..full as usize]);
        } else {
            prop_assert_eq!(got.cached_tokens, 0);
        }
        kv.check_invariants().unwrap();
    }
}
