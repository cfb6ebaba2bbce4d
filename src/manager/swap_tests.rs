//! Edge cases of the host tier: refusals that change nothing, shared blocks
//! moving once, mixed device/host sharers, freeing swapped sequences.

use super::*;

/// Hands the step to the engine: the tokens appended so far count as computed
/// (fork and swap-out need that), and queued copies are drained.
fn settle(kv: &mut KvCacheManager) {
    kv.drain_ops(&mut BlockOps::default());
}

fn kv(num_blocks: u32, block_size: u32, host: u32) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        num_host_blocks: host,
        watermark: 0.0,
        max_model_len: 1024,
        ..Default::default()
    })
    .unwrap()
}

fn toks(n: u32) -> Vec<u32> {
    (0..n).collect()
}

/// Everything observable that a refused call must leave alone.
fn state(kv: &KvCacheManager) -> String {
    let mut dev: Vec<_> = kv.seq_ids().map(|s| (s, kv.table(s).unwrap().clone())).collect();
    dev.sort_by_key(|x| x.0);
    let mut host: Vec<_> = kv
        .swapped_ids()
        .map(|s| (s, kv.swapped_table(s).unwrap().clone()))
        .collect();
    host.sort_by_key(|x| x.0);
    let free: Vec<_> = kv.pool().free_blocks().collect();
    let hfree: Vec<_> = kv
        .host_pool()
        .map(|p| p.free_blocks().collect())
        .unwrap_or_default();
    format!(
        "{dev:?}{host:?}{free:?}{hfree:?}{:?}{:?}",
        kv.pending_copies(),
        kv.pending_swaps()
    )
}

#[test]
fn host_pool_exhausted_is_typed_and_changes_nothing() {
    let mut kv = kv(8, 4, 2);
    kv.allocate(SeqId(1), &toks(9)).unwrap(); // 3 blocks
    let before = state(&kv);
    settle(&mut kv);
    let err = kv.swap_out(SeqId(1)).unwrap_err();
    assert_eq!(
        err,
        KvError::HostOutOfBlocks {
            seq: SeqId(1),
            needed: 3,
            free: 2
        }
    );
    assert!(err.to_string().contains("recompute"));
    assert_eq!(state(&kv), before);
    kv.check_invariants().unwrap();
}

#[test]
fn no_host_tier_and_wrong_states_are_refused() {
    let mut plain = kv(8, 4, 0);
    plain.allocate(SeqId(1), &toks(3)).unwrap();
    assert_eq!(
        plain.swap_out(SeqId(1)),
        Err(KvError::NoHostTier { seq: SeqId(1) })
    );
    assert_eq!(
        plain.swap_in(SeqId(1)),
        Err(KvError::NotSwapped { seq: SeqId(1) })
    );

    let mut kv = kv(8, 4, 8);
    settle(&mut kv);
    assert_eq!(
        kv.swap_out(SeqId(9)),
        Err(KvError::UnknownSequence { seq: SeqId(9) })
    );
    assert_eq!(
        kv.swap_in(SeqId(9)),
        Err(KvError::UnknownSequence { seq: SeqId(9) })
    );
    kv.allocate(SeqId(1), &toks(3)).unwrap();
    settle(&mut kv);
    kv.swap_out(SeqId(1)).unwrap();
    let before = state(&kv);
    let swapped = KvError::SequenceSwapped { seq: SeqId(1) };
    assert_eq!(kv.swap_out(SeqId(1)), Err(swapped.clone()));
    assert_eq!(kv.append(SeqId(1), &[1]), Err(swapped.clone()));
    assert_eq!(kv.fork(SeqId(1), SeqId(2)), Err(swapped.clone()));
    assert_eq!(kv.truncate(SeqId(1), 1), Err(swapped.clone()));
    assert_eq!(kv.block_table(SeqId(1)), Err(swapped.clone()));
    assert_eq!(
        kv.allocate(SeqId(1), &[1]),
        Err(KvError::DuplicateSequence { seq: SeqId(1) })
    );
    assert_eq!(state(&kv), before);
    kv.allocate(SeqId(3), &[1]).unwrap();
    settle(&mut kv);
    assert_eq!(
        kv.fork(SeqId(3), SeqId(1)),
        Err(KvError::DuplicateSequence { seq: SeqId(1) })
    );
    kv.check_invariants().unwrap();
}

#[test]
fn forked_family_moves_once_and_stays_shared() {
    let mut kv = kv(16, 4, 16);
    let mut ops = BlockOps::default();
    kv.allocate(SeqId(0), &toks(10)).unwrap(); // 3 blocks, last partial
    settle(&mut kv);
    for c in 1..4 {
        kv.fork(SeqId(0), SeqId(c)).unwrap();
    }
    for c in 0..4 {
        kv.swap_out(SeqId(c)).unwrap();
        kv.check_invariants().unwrap();
    }
    kv.drain_ops(&mut ops);
    assert_eq!(ops.swap_out.len(), 3, "one copy per device block");
    assert!(ops.swap_out.iter().all(|c| c.num_slots == 4));
    assert_eq!(kv.num_free_blocks(), 16);
    assert_eq!(kv.num_free_host_blocks(), 13);
    let t0 = kv.swapped_table(SeqId(0)).unwrap().blocks().to_vec();
    for c in 1..4 {
        assert_eq!(kv.swapped_table(SeqId(c)).unwrap().blocks(), &t0[..]);
    }
    for c in 0..4 {
        kv.swap_in(SeqId(c)).unwrap();
        kv.check_invariants().unwrap();
    }
    kv.drain_ops(&mut ops);
    assert_eq!(ops.swap_in.len(), 3, "one copy per host block");
    assert_eq!(kv.num_free_blocks(), 13);
    assert_eq!(kv.num_free_host_blocks(), 16);
    // Sharing restored: the shared partial tail copies on the first write.
    kv.append(SeqId(2), &[99]).unwrap();
    assert_eq!(kv.pending_copies().len(), 1);
    kv.check_invariants().unwrap();
}

#[test]
fn mixed_sharers_reuse_the_device_original_without_copies() {
    let mut kv = kv(8, 4, 8);
    let mut ops = BlockOps::default();
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    settle(&mut kv);
    kv.swap_out(SeqId(2)).unwrap(); // seq 1 keeps the device blocks
    kv.drain_ops(&mut ops);
    assert_eq!(ops.swap_out.len(), 2);
    let dev = kv.block_table(SeqId(1)).unwrap().to_vec();
    kv.swap_in(SeqId(2)).unwrap(); // the originals are unchanged: share them
    kv.drain_ops(&mut ops);
    assert!(ops.swap_in.is_empty());
    assert_eq!(kv.block_table(SeqId(2)).unwrap(), &dev[..]);
    assert_eq!(kv.num_free_host_blocks(), 8);
    kv.check_invariants().unwrap();

    // Once seq 1 writes into the partial tail in place, the host copy is stale.
    settle(&mut kv);
    kv.swap_out(SeqId(2)).unwrap();
    kv.append(SeqId(1), &[7]).unwrap(); // seq 1 now holds the tail alone: in place
    kv.drain_ops(&mut ops);
    assert!(ops.copies.is_empty());
    kv.swap_in(SeqId(2)).unwrap();
    kv.drain_ops(&mut ops);
    assert_eq!(ops.swap_in.len(), 1, "the stale tail comes from the host copy");
    assert_eq!(kv.block_table(SeqId(2)).unwrap()[0], dev[0]);
    assert_ne!(kv.block_table(SeqId(2)).unwrap()[1], dev[1]);
    kv.check_invariants().unwrap();
}

#[test]
fn free_of_a_swapped_sequence_releases_host_blocks_at_drain() {
    let mut kv = kv(8, 4, 4);
    let mut ops = BlockOps::default();
    kv.allocate(SeqId(1), &toks(8)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    settle(&mut kv);
    kv.swap_out(SeqId(1)).unwrap();
    settle(&mut kv);
    kv.swap_out(SeqId(2)).unwrap();
    kv.free(SeqId(1)).unwrap();
    assert_eq!(kv.num_free_host_blocks(), 2, "still held by seq 2");
    kv.free(SeqId(2)).unwrap();
    assert_eq!(kv.num_free_host_blocks(), 2, "returned at the next drain");
    kv.check_invariants().unwrap();
    kv.drain_ops(&mut ops);
    assert_eq!(kv.num_free_host_blocks(), 4);
    assert_eq!(kv.free(SeqId(2)), Err(KvError::UnknownSequence { seq: SeqId(2) }));
    assert_eq!(kv.stats().sequences_freed, 2);
    kv.check_invariants().unwrap();
}

#[test]
fn unsafe_orders_within_a_step_are_refused() {
    let mut kv = kv(8, 4, 8);
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    kv.allocate(SeqId(3), &toks(4)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    kv.append(SeqId(2), &[9]).unwrap(); // copy-on-write queued into seq 2's tail
    let before = state(&kv);
    // Its new token is not computed yet (and a queued copy writes its tail).
    assert_eq!(
        kv.swap_out(SeqId(2)),
        Err(KvError::NotYetComputed { seq: SeqId(2) })
    );
    assert_eq!(state(&kv), before);

    // The copy's source is freed this step: a swap-in could take and overwrite it.
    kv.swap_out(SeqId(3)).unwrap();
    kv.free(SeqId(1)).unwrap();
    let before = state(&kv);
    assert!(matches!(
        kv.swap_in(SeqId(3)),
        Err(KvError::SwapInWouldOverwrite { .. })
    ));
    assert_eq!(state(&kv), before);
    let mut ops = BlockOps::default();
    kv.drain_ops(&mut ops);
    kv.swap_in(SeqId(3)).unwrap();
    // A queued swap-in writes seq 3's blocks: swapping it out again this step
    // would read them before they are written.
    let before = state(&kv);
    assert!(matches!(kv.swap_out(SeqId(3)), Err(KvError::PendingWrite { .. })));
    assert_eq!(state(&kv), before);
    kv.check_invariants().unwrap();
}

#[test]
fn append_blocks_needed_matches_append() {
    let mut kv = kv(16, 4, 0);
    kv.allocate(SeqId(1), &toks(4)).unwrap();
    for n in 0..10u64 {
        let need = kv.append_blocks_needed(SeqId(1), n).unwrap();
        let free = kv.num_free_blocks();
        kv.append(SeqId(1), &vec![0; n as usize]).unwrap();
        assert_eq!((free - kv.num_free_blocks()) as u64, need);
    }
}
