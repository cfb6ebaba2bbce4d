//! Unit tests of the tiered prefix cache (offload to the host tier, reload).

use super::super::*;
use crate::prefix::CacheTier;

fn kv(num_blocks: u32, num_host_blocks: u32, offload: PrefixOffload) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: 4,
        max_model_len: 1024,
        watermark: 0.0,
        enable_prefix_caching: true,
        enable_kv_events: true,
        num_host_blocks,
        prefix_offload: offload,
        ..Default::default()
    })
    .unwrap()
}

fn toks(r: std::ops::Range<u32>) -> Vec<TokenId> {
    r.collect()
}

fn step(kv: &mut KvCacheManager) -> BlockOps {
    let mut ops = BlockOps::default();
    kv.drain_ops(&mut ops);
    kv.check_invariants().unwrap();
    ops
}

fn events(kv: &mut KvCacheManager) -> Vec<(bool, CacheTier, usize)> {
    let mut out = Vec::new();
    kv.drain_events(&mut out);
    out.iter()
        .map(|e| match e {
            KvEvent::BlockStored {
                tier, block_hashes, ..
            } => (true, *tier, block_hashes.len()),
            KvEvent::BlockRemoved {
                tier, block_hashes, ..
            } => (false, *tier, block_hashes.len()),
            e => panic!("{e:?}"),
        })
        .collect()
}

#[test]
fn an_evicted_block_is_offloaded_then_reloaded_as_a_hit() {
    let mut kv = kv(3, 4, PrefixOffload::OnEvict);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap(); // 3 blocks, 2 full
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    assert_eq!(events(&mut kv), [(true, CacheTier::Device, 2)]);
    kv.allocate(SeqId(2), &toks(100..112)).unwrap(); // takes all 3: evicts both cached ones
    let ops = step(&mut kv);
    assert_eq!(ops.swap_out.len(), 2, "{ops:?}");
    assert_eq!(kv.num_host_cached_blocks(), 2);
    assert_eq!(kv.stats().offload_copies, 2);
    let e = events(&mut kv);
    assert!(
        e.contains(&(false, CacheTier::Device, 1)) && e.contains(&(true, CacheTier::Host, 1)),
        "{e:?}"
    );
    kv.free(SeqId(2)).unwrap();

    let keys = PrefixKeys::default();
    let prompt = toks(0..10);
    assert_eq!(
        kv.cached_prefix_len(&prompt, &keys),
        8,
        "host hits count as cached"
    );
    assert_eq!(kv.cached_prefix_tiers_in_group(&prompt, &keys, 0), (0, 8));
    assert_eq!(kv.check_admission(&prompt, &keys, 0), Admission::Now);
    let a = kv.allocate(SeqId(3), &prompt).unwrap();
    assert_eq!(
        (a.cached_tokens, a.num_blocks),
        (8, 3),
        "reloaded blocks are allocated like any other"
    );
    let ops = step(&mut kv);
    assert_eq!(ops.swap_in.len(), 2);
    // The reloaded copies are the sequence's first two blocks, in order.
    let table = kv.block_table(SeqId(3)).unwrap().to_vec();
    assert_eq!(ops.swap_in.iter().map(|c| c.dst).collect::<Vec<_>>(), table[..2]);
    assert_eq!(kv.stats().prefix_host_hit_tokens, 8);
    assert_eq!(kv.stats().reload_copies, 2);
    // Back on the device (announced there); the host keeps its copies.
    assert!(events(&mut kv).contains(&(true, CacheTier::Device, 2)));
    assert_eq!(kv.cached_prefix_tiers_in_group(&prompt, &keys, 0), (8, 0));
    // 2 kept + 2 of seq 2's 3 blocks the reload evicted (the host blocks the
    // reload read are held; the third offload took the first one's host block).
    assert_eq!(kv.num_host_cached_blocks(), 4);
    assert_eq!(kv.stats().host_evictions, 1);
    // Evicted again, they need no second copy.
    kv.free(SeqId(3)).unwrap();
    kv.allocate(SeqId(4), &toks(200..212)).unwrap();
    let ops = step(&mut kv);
    assert!(ops.swap_out.is_empty(), "{ops:?}");
}

/// Without KV events (the reload takes a shortcut then), in one group and in
/// two: the reloaded blocks land in the table where the copies go, and are
/// device hits again after the step.
#[test]
fn a_reload_without_events_caches_its_blocks_on_the_device_again() {
    for groups in [
        vec![AttentionKind::Full],
        vec![AttentionKind::Full, AttentionKind::Full],
    ] {
        let n = groups.len() as u32;
        let mut kv = KvCacheManager::new(KvCacheConfig {
            num_blocks: 3 * n,
            block_size: 4,
            max_model_len: 1024,
            watermark: 0.0,
            enable_prefix_caching: true,
            num_host_blocks: 8 * n,
            prefix_offload: PrefixOffload::OnEvict,
            groups,
            ..Default::default()
        })
        .unwrap();
        kv.allocate(SeqId(1), &toks(0..9)).unwrap();
        step(&mut kv);
        kv.free(SeqId(1)).unwrap();
        kv.allocate(SeqId(2), &toks(100..112)).unwrap(); // evicts both cached blocks of each group
        step(&mut kv);
        kv.free(SeqId(2)).unwrap();
        let (keys, prompt) = (PrefixKeys::default(), toks(0..10));
        for g in 0..n {
            assert_eq!(kv.cached_prefix_tiers_in_group(&prompt, &keys, g), (0, 8));
        }
        assert_eq!(kv.allocate(SeqId(3), &prompt).unwrap().cached_tokens, 8);
        let ops = step(&mut kv);
        assert_eq!(ops.swap_in.len(), 2 * n as usize, "{ops:?}");
        for g in 0..n {
            let table = kv
                .group(g as usize)
                .unwrap()
                .block_table(SeqId(3))
                .unwrap()
                .to_vec();
            let copied: Vec<BlockId> = ops
                .swap_in
                .iter()
                .filter(|c| c.group == g)
                .map(|c| c.dst)
                .collect();
            assert_eq!(copied, table[..2], "group {g}");
            assert_eq!(
                kv.cached_prefix_tiers_in_group(&prompt, &keys, g),
                (8, 0),
                "group {g}: back on the device"
            );
        }
    }
}

#[test]
fn offload_off_loses_evicted_blocks() {
    let mut kv = kv(3, 4, PrefixOffload::Off);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    kv.allocate(SeqId(2), &toks(100..112)).unwrap();
    assert!(step(&mut kv).swap_out.is_empty());
    kv.free(SeqId(2)).unwrap();
    assert_eq!(kv.cached_prefix_len(&toks(0..10), &PrefixKeys::default()), 0);
}

#[test]
fn on_free_copies_when_a_cached_block_is_freed() {
    let mut kv = kv(8, 4, PrefixOffload::OnFree);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    assert_eq!(step(&mut kv).swap_out.len(), 2);
    assert_eq!(kv.num_cached_blocks(), 2, "still cached on the device too");
    // Eviction later costs no copy.
    kv.allocate(SeqId(2), &toks(100..132)).unwrap(); // all 8 blocks
    assert!(step(&mut kv).swap_out.is_empty());
}

#[test]
fn a_swap_takes_the_host_blocks_offloaded_blocks_hold() {
    let mut kv = kv(3, 3, PrefixOffload::OnEvict);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    kv.allocate(SeqId(2), &toks(100..109)).unwrap(); // 3 blocks: evicts both
    step(&mut kv);
    assert_eq!(kv.num_host_cached_blocks(), 2);
    assert_eq!(
        kv.num_free_host_blocks(),
        3,
        "offloaded blocks stay free for swap"
    );
    kv.swap_out(SeqId(2)).unwrap(); // 3 host blocks: the empty one, then the offloaded ones
    step(&mut kv);
    assert_eq!(kv.num_host_cached_blocks(), 0);
    assert_eq!(kv.stats().host_evictions, 2);
    assert_eq!(kv.cached_prefix_len(&toks(0..10), &PrefixKeys::default()), 0);
    let e = events(&mut kv);
    assert_eq!(
        e.iter().filter(|x| **x == (false, CacheTier::Host, 1)).count(),
        2,
        "{e:?}"
    );
}

#[test]
fn a_full_host_tier_drops_offloads_and_reloads_are_held_until_the_drain() {
    let mut kv = kv(2, 1, PrefixOffload::OnEvict);
    kv.allocate(SeqId(1), &toks(0..5)).unwrap(); // 2 blocks, 1 full
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    kv.allocate(SeqId(2), &toks(100..105)).unwrap(); // evicts it: offloaded to the one host block
    step(&mut kv);
    kv.free(SeqId(2)).unwrap();
    // Reload block [0..4) and evict [100..104) in the same step: the host
    // block is held by the reload, so the offload is dropped.
    let a = kv.allocate(SeqId(3), &toks(0..6)).unwrap();
    assert_eq!(a.cached_tokens, 4);
    let ops = step(&mut kv);
    assert_eq!((ops.swap_in.len(), ops.swap_out.len()), (1, 0), "{ops:?}");
    assert_eq!(kv.stats().offloads_dropped, 1);
    assert_eq!(kv.num_host_cached_blocks(), 1);
}

#[test]
fn a_reload_is_not_offered_while_a_queued_copy_names_a_free_block() {
    let mut kv = kv(6, 4, PrefixOffload::OnEvict);
    kv.allocate(SeqId(1), &toks(0..5)).unwrap();
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    kv.allocate(SeqId(2), &toks(100..121)).unwrap(); // 6 blocks: evicts block [0..4)
    step(&mut kv);
    kv.truncate(SeqId(2), 18).unwrap();
    kv.free(SeqId(2)).unwrap();
    kv.allocate(SeqId(3), &toks(300..303)).unwrap();
    step(&mut kv);
    kv.fork(SeqId(3), SeqId(4)).unwrap();
    kv.append(SeqId(4), &[1]).unwrap(); // copy-on-write queued
    kv.free(SeqId(4)).unwrap(); // its destination is free again
    let keys = PrefixKeys::default();
    assert_eq!(kv.cached_prefix_len(&toks(0..6), &keys), 0);
    assert_eq!(kv.allocate(SeqId(5), &toks(0..6)).unwrap().cached_tokens, 0);
    step(&mut kv);
    assert_eq!(
        kv.cached_prefix_len(&toks(0..6), &keys),
        4,
        "offered again after the drain"
    );
}

#[test]
fn reset_drops_both_tiers() {
    let mut kv = kv(3, 4, PrefixOffload::OnEvict);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    kv.allocate(SeqId(2), &toks(100..112)).unwrap(); // evicts both
    step(&mut kv);
    kv.free(SeqId(2)).unwrap();
    assert_eq!(kv.num_host_cached_blocks(), 2);
    kv.reset_prefix_cache();
    assert_eq!((kv.num_cached_blocks(), kv.num_host_cached_blocks()), (0, 0));
    assert_eq!(kv.cached_prefix_len(&toks(0..10), &PrefixKeys::default()), 0);
    kv.check_invariants().unwrap();
}

#[test]
fn offload_needs_prefix_caching_and_a_host_tier() {
    let c = KvCacheConfig {
        num_blocks: 4,
        prefix_offload: PrefixOffload::OnEvict,
        ..Default::default()
    };
    let e = KvCacheManager::new(c).unwrap_err();
    assert!(e.to_string().contains("prefix_offload"), "{e}");
}
