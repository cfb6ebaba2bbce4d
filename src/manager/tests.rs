use std::ops::Range;

use crate::sizing::AttentionKind;

use super::*;
use crate::pool::MAX_BLOCKS;

/// Hands the step to the engine: the tokens appended so far count as computed
/// (fork and swap-out need that), and queued copies are drained.
fn settle(kv: &mut KvCacheManager) {
    kv.drain_ops(&mut BlockOps::default());
}

fn kv(num_blocks: u32, block_size: u32) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        max_model_len: 1024,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap()
}

fn toks(n: usize) -> Vec<TokenId> {
    (0..n as u32).collect()
}

/// Everything observable about the state except the counters.
fn snapshot(kv: &KvCacheManager) -> String {
    let mut seqs: Vec<_> = kv.seq_ids().map(|s| (s, kv.table(s).unwrap().clone())).collect();
    seqs.sort_by_key(|(s, _)| *s);
    let free: Vec<_> = kv.pool().free_blocks().collect();
    format!("{seqs:?} {free:?} {:?} {:?}", kv.pending_copies(), kv.usage())
}

#[test]
fn one_block_pool() {
    let mut kv = kv(1, 16);
    kv.allocate(SeqId(1), &toks(16)).unwrap();
    let before = snapshot(&kv);
    assert_eq!(
        kv.append(SeqId(1), &[1]),
        Err(KvError::OutOfBlocks { needed: 1, free: 0 })
    );
    assert_eq!(snapshot(&kv), before);
    assert_eq!(kv.check_admission_len(1, 0).unwrap(), Admission::Later);
    kv.free(SeqId(1)).unwrap();
    assert_eq!(kv.check_admission_len(16, 0).unwrap(), Admission::Now);
    // The last sampled token is never stored: 16 + 1 new tokens store 16.
    assert_eq!(kv.check_admission_len(16, 1).unwrap(), Admission::Now);
    assert!(matches!(
        kv.check_admission_len(16, 2).unwrap(),
        Admission::Never(AdmissionRefusal::ExceedsPool { tokens: 17, .. })
    ));
    kv.check_invariants().unwrap();
}

#[test]
fn block_size_one() {
    let mut kv = kv(8, 1);
    kv.allocate(SeqId(1), &toks(3)).unwrap();
    assert_eq!(
        kv.block_table(SeqId(1)).unwrap(),
        [BlockId(0), BlockId(1), BlockId(2)]
    );
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    // Every block is full at block size 1: appends never copy.
    kv.append(SeqId(2), &[9]).unwrap();
    kv.append(SeqId(1), &[8]).unwrap();
    assert_eq!(kv.stats().cow_copies, 0);
    assert_eq!(kv.usage().used_blocks, 5);
    assert_eq!(kv.usage().internal_fragmentation, 0);
    kv.check_invariants().unwrap();
}

#[test]
fn exactly_full_pool() {
    let mut kv = kv(4, 4);
    kv.allocate(SeqId(1), &toks(10)).unwrap(); // 3 blocks
    kv.append(SeqId(1), &[1, 2]).unwrap(); // fills block 3 exactly: no new block
    assert_eq!(kv.num_free_blocks(), 1);
    kv.append(SeqId(1), &[3, 4, 5, 6]).unwrap(); // the 4th block, exactly full
    assert_eq!(kv.num_free_blocks(), 0);
    assert_eq!(kv.usage().internal_fragmentation, 0);
    assert_eq!(
        kv.append(SeqId(1), &[7]),
        Err(KvError::OutOfBlocks { needed: 1, free: 0 })
    );
    assert_eq!(kv.num_tokens(SeqId(1)).unwrap(), 16);
    kv.check_invariants().unwrap();
}

#[test]
fn copy_on_write_only_for_shared_partial_blocks() {
    let mut kv = kv(16, 4);
    kv.allocate(SeqId(1), &toks(6)).unwrap(); // blocks 0 (full), 1 (2 of 4)
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    assert_eq!(kv.pool().ref_count(BlockId(0)).unwrap(), 2);
    assert_eq!(kv.pool().ref_count(BlockId(1)).unwrap(), 2);
    kv.append(SeqId(1), &[100]).unwrap();
    let mut ops = BlockOps::default();
    kv.drain_ops(&mut ops);
    assert_eq!(
        ops.copies,
        [BlockCopy {
            src: BlockId(1),
            dst: BlockId(2),
            num_slots: 2,
            group: 0
        }]
    );
    assert_eq!(kv.block_table(SeqId(1)).unwrap(), [BlockId(0), BlockId(2)]);
    // The other holder is now alone in block 1: it writes in place.
    kv.append(SeqId(2), &[200]).unwrap();
    kv.drain_ops(&mut ops);
    assert!(ops.is_empty());
    assert_eq!(kv.block_table(SeqId(2)).unwrap(), [BlockId(0), BlockId(1)]);
    // The full block stays shared for good.
    assert_eq!(kv.pool().ref_count(BlockId(0)).unwrap(), 2);
    assert_eq!(kv.stats().cow_copies, 1);
    kv.check_invariants().unwrap();
}

#[test]
fn full_shared_last_block_is_not_copied() {
    let mut kv = kv(8, 4);
    kv.allocate(SeqId(1), &toks(4)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    kv.append(SeqId(1), &[1]).unwrap();
    kv.append(SeqId(2), &[2]).unwrap();
    assert!(kv.pending_copies().is_empty());
    assert_eq!(kv.usage().used_blocks, 3);
}

#[test]
fn copy_on_write_needs_a_free_block() {
    let mut kv = kv(2, 4);
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    let before = snapshot(&kv);
    assert_eq!(
        kv.append(SeqId(1), &[1]),
        Err(KvError::OutOfBlocks { needed: 1, free: 0 })
    );
    // Filling past the block needs the copy plus one more.
    assert_eq!(
        kv.append(SeqId(2), &[1, 2, 3]),
        Err(KvError::OutOfBlocks { needed: 2, free: 0 })
    );
    assert_eq!(snapshot(&kv), before);
    kv.check_invariants().unwrap();
}

#[test]
fn truncate_releases_only_own_references() {
    let mut kv = kv(8, 4);
    kv.allocate(SeqId(1), &toks(12)).unwrap(); // 3 full blocks
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    kv.truncate(SeqId(1), 5).unwrap(); // keeps blocks 0, 1; block 1 now partial for seq 1
    assert_eq!(kv.pool().ref_count(BlockId(2)).unwrap(), 1);
    assert_eq!(kv.usage().used_blocks, 3);
    // Block 1 is full for seq 2, so it is not internal fragmentation.
    assert_eq!(kv.usage().internal_fragmentation, 0);
    // Appending into the shared block 1 (partial for seq 1) copies its 1 slot.
    kv.append(SeqId(1), &[42]).unwrap();
    assert_eq!(
        kv.pending_copies(),
        [BlockCopy {
            src: BlockId(1),
            dst: BlockId(3),
            num_slots: 1,
            group: 0
        }]
    );
    assert_eq!(kv.usage().internal_fragmentation, 2);
    assert_eq!(
        kv.truncate(SeqId(1), 7),
        Err(KvError::TruncateBeyondLength {
            seq: SeqId(1),
            new_len: 7,
            num_tokens: 6
        })
    );
    kv.truncate(SeqId(2), 0).unwrap();
    assert!(kv.block_table(SeqId(2)).unwrap().is_empty());
    kv.append(SeqId(2), &[1]).unwrap();
    kv.check_invariants().unwrap();
}

#[test]
fn shared_partial_block_counts_once_in_usage() {
    let mut kv = kv(8, 4);
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(3)).unwrap();
    let u = kv.usage();
    assert_eq!(u.used_blocks, 2);
    assert_eq!(u.logical_tokens, 18);
    assert_eq!(u.stored_tokens, 6);
    assert_eq!(u.internal_fragmentation, 2);
    kv.truncate(SeqId(3), 5).unwrap();
    assert_eq!(kv.usage().stored_tokens, 6);
}

#[test]
fn free_returns_blocks_tail_first() {
    // Caching off, freed blocks go on the pool's stack, tail first: the next
    // sequence gets the same blocks in the same order.
    let mut kv = kv(4, 2);
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    kv.free(SeqId(1)).unwrap();
    let order: Vec<_> = kv.pool().free_blocks().collect();
    assert_eq!(order, [BlockId(0), BlockId(1), BlockId(2), BlockId(3)]);
    kv.allocate(SeqId(2), &toks(5)).unwrap();
    assert_eq!(
        kv.block_table(SeqId(2)).unwrap(),
        [BlockId(0), BlockId(1), BlockId(2)]
    );
    kv.free(SeqId(2)).unwrap();
    assert_eq!(kv.free(SeqId(1)), Err(KvError::UnknownSequence { seq: SeqId(1) }));
}

#[test]
fn refused_calls_change_nothing() {
    let mut kv = kv(4, 4);
    kv.allocate(SeqId(1), &toks(5)).unwrap();
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    let before = snapshot(&kv);
    let calls: Vec<(&str, KvError)> = vec![
        ("dup allocate", kv.allocate(SeqId(1), &toks(1)).unwrap_err()),
        ("empty", kv.allocate(SeqId(3), &[]).unwrap_err()),
        ("too long", kv.allocate(SeqId(3), &toks(1025)).unwrap_err()),
        ("no room", kv.allocate(SeqId(3), &toks(13)).unwrap_err()),
        ("unknown append", kv.append(SeqId(9), &[1]).unwrap_err()),
        ("past max len", kv.append(SeqId(1), &toks(1020)).unwrap_err()),
        ("dup fork", kv.fork(SeqId(1), SeqId(2)).unwrap_err()),
        ("unknown fork", kv.fork(SeqId(9), SeqId(3)).unwrap_err()),
        ("truncate up", kv.truncate(SeqId(1), 6).unwrap_err()),
        ("unknown free", kv.free(SeqId(9)).unwrap_err()),
        ("bad slot", kv.slot(SeqId(1), 5).unwrap_err()),
        ("cow and growth", kv.append(SeqId(1), &toks(12)).unwrap_err()),
        ("fork onto itself", kv.fork(SeqId(1), SeqId(1)).unwrap_err()),
        ("unknown truncate", kv.truncate(SeqId(9), 0).unwrap_err()),
        (
            "new slots past start",
            kv.new_slots_into(SeqId(1), 6, &mut vec![]).unwrap_err(),
        ),
        (
            "reversed range",
            kv.slots_into(SeqId(1), Range { start: 3, end: 2 }, &mut vec![])
                .unwrap_err(),
        ),
    ];
    for (what, err) in &calls {
        assert!(!err.to_string().is_empty(), "{what}");
    }
    assert!(matches!(calls[0].1, KvError::DuplicateSequence { .. }));
    assert!(matches!(
        calls[2].1,
        KvError::ExceedsMaxModelLen { tokens: 1025, .. }
    ));
    assert!(matches!(calls[3].1, KvError::OutOfBlocks { needed: 4, free: 2 }));
    // Three more blocks plus the copy of the shared partial block.
    assert_eq!(calls[11].1, KvError::OutOfBlocks { needed: 4, free: 2 });
    assert_eq!(calls[12].1, KvError::DuplicateSequence { seq: SeqId(1) });
    assert_eq!(kv.check_admission_len(4, 0).unwrap(), Admission::Now);
    let mut out = vec![];
    assert!(kv.slots_into(SeqId(1), 3..6, &mut out).is_err());
    assert!(out.is_empty());
    assert_eq!(snapshot(&kv), before);
    kv.check_invariants().unwrap();
}

#[test]
fn admission_now_later_never() {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 200,
        block_size: 16,
        max_model_len: 4096,
        watermark: 0.01,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(kv.watermark_blocks(), 2);
    assert_eq!(kv.check_admission_len(100, 100).unwrap(), Admission::Now);
    assert!(matches!(
        kv.check_admission_len(4000, 100).unwrap(),
        Admission::Never(AdmissionRefusal::ExceedsMaxModelLen { tokens: 4100, .. })
    ));
    // With nothing on the device the watermark is not kept: a prompt of the
    // whole pool starts (a scheduler would run it alone).
    assert_eq!(kv.check_admission_len(200 * 16, 0).unwrap(), Admission::Now);
    assert_eq!(kv.check_admission_len(198 * 16, 0).unwrap(), Admission::Now);
    assert!(matches!(
        kv.check_admission_len(0, 5).unwrap(),
        Admission::Never(AdmissionRefusal::EmptyPrompt)
    ));
    kv.allocate(SeqId(1), &toks(100 * 16)).unwrap();
    // Now the 2-block watermark stays free, and allocate keeps it as admission does.
    assert_eq!(kv.check_admission_len(98 * 16, 0).unwrap(), Admission::Now);
    assert_eq!(kv.check_admission_len(99 * 16, 0).unwrap(), Admission::Later);
    let before = snapshot(&kv);
    assert_eq!(
        kv.allocate(SeqId(2), &toks(99 * 16)),
        Err(KvError::BelowWatermark {
            seq: SeqId(2),
            needed: 99,
            free: 100,
            watermark_blocks: 2
        })
    );
    assert_eq!(snapshot(&kv), before);
    kv.allocate(SeqId(2), &toks(98 * 16)).unwrap();
    let Admission::Never(why) = kv.check_admission_len(3000, 2000).unwrap() else {
        panic!()
    };
    assert!(why.to_string().contains("max_model_len"), "{why}");
}

#[test]
fn slots_for_new_tokens() {
    let mut kv = kv(8, 4);
    kv.allocate(SeqId(1), &toks(3)).unwrap();
    kv.append(SeqId(1), &[7, 8, 9]).unwrap();
    let mut out = Vec::new();
    kv.new_slots_into(SeqId(1), 3, &mut out).unwrap();
    assert_eq!(out, [3, 4, 5]);
    assert_eq!(kv.slot(SeqId(1), 0).unwrap(), 0);
}

#[test]
fn invalid_configs_name_the_field() {
    let base = KvCacheConfig {
        num_blocks: 10,
        ..Default::default()
    };
    let cases = [
        (
            KvCacheConfig {
                num_blocks: 0,
                ..base.clone()
            },
            "num_blocks",
        ),
        (
            KvCacheConfig {
                num_blocks: MAX_BLOCKS + 1,
                ..base.clone()
            },
            "num_blocks",
        ),
        (
            KvCacheConfig {
                block_size: 0,
                ..base.clone()
            },
            "block_size",
        ),
        (
            KvCacheConfig {
                max_model_len: 0,
                ..base.clone()
            },
            "max_model_len",
        ),
        (
            KvCacheConfig {
                watermark: 1.0,
                ..base.clone()
            },
            "watermark",
        ),
        (
            KvCacheConfig {
                watermark: f64::NAN,
                ..base.clone()
            },
            "watermark",
        ),
    ];
    for (config, field) in cases {
        match KvCacheManager::new(config) {
            Err(KvError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(KvCacheManager::new(KvCacheConfig::default()).is_err());
}

#[test]
fn sequence_entries_stay_small() {
    // The decode fast path touches one slab entry per sequence: its id,
    // generation and hot word, its table inline (one group, with the slot
    // base of its last block), the step bookkeeping, the cache pointer.
    let size = std::mem::size_of::<super::seq_map::Entry<Seq>>();
    assert!(size <= 112, "{size}");
}

#[test]
fn uncomputed_tokens_cannot_be_forked_or_swapped_out() {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 16,
        block_size: 4,
        num_host_blocks: 16,
        ..Default::default()
    })
    .unwrap();
    kv.allocate(SeqId(1), &toks(6)).unwrap();
    let before = snapshot(&kv);
    let fresh = Err(KvError::NotYetComputed { seq: SeqId(1) });
    assert_eq!(kv.fork(SeqId(1), SeqId(2)), fresh);
    assert_eq!(kv.swap_out(SeqId(1)), fresh);
    assert_eq!(snapshot(&kv), before);
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    kv.append(SeqId(1), &[9]).unwrap(); // a decode token, not computed yet
    assert_eq!(kv.fork(SeqId(1), SeqId(3)), fresh);
    assert_eq!(kv.swap_out(SeqId(1)), fresh);
    kv.swap_out(SeqId(2)).unwrap(); // its sharer appended nothing
    settle(&mut kv);
    kv.fork(SeqId(1), SeqId(3)).unwrap();
    kv.swap_out(SeqId(1)).unwrap();
    kv.check_invariants().unwrap();
}

#[test]
fn length_only_admission_is_refused_with_prefix_caching_on() {
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 16,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .unwrap();
    let err = kv.check_admission_len(10, 10).unwrap_err();
    assert_eq!(err, KvError::AdmissionNeedsPrompt);
    assert!(
        err.to_string()
            .contains("check_admission with the prompt's tokens"),
        "{err}"
    );
    assert_eq!(kv.check_runnable(10, 10), Ok(()));
    assert_eq!(
        kv.check_admission(&toks(10), &PrefixKeys::default(), 10),
        Admission::Now
    );
}

#[test]
fn a_hybrid_plan_configures_its_groups() {
    use crate::sizing::{
        AttentionKind, CachePlan, CacheSpec, EngineRules, KvDtype, MemoryBudget, ModelLayout,
    };
    // gpt-oss-20b's attention: 24 layers alternating 128-token windows and full attention.
    let spec = CacheSpec::new(24, 8, 64, KvDtype::Bf16);
    let kinds: Vec<_> = (0..24)
        .map(|l| match l % 2 {
            0 => AttentionKind::SlidingWindow { window: 128 },
            _ => AttentionKind::Full,
        })
        .collect();
    let layout = ModelLayout::from_kinds(&spec, &kinds).unwrap();
    let plan = CachePlan::for_engine(
        &layout,
        16,
        &MemoryBudget::direct(1 << 30),
        EngineRules::vllm_v1(2048),
    )
    .unwrap();
    let config = KvCacheConfig::from_plan(&plan, 32_768).unwrap();
    let kinds: Vec<_> = plan.groups().iter().map(|g| g.kind).collect();
    assert_eq!(config.groups, kinds);
    assert_eq!(config.groups.len(), 2);
    assert!(config
        .groups
        .contains(&AttentionKind::SlidingWindow { window: 128 }));
    assert_eq!(config.num_blocks as u64, plan.num_blocks());
    let mut kv = KvCacheManager::new(config).unwrap();
    kv.allocate(SeqId(1), &toks(300)).unwrap();
    assert_eq!(kv.blocks_by_group(), [19, 19]);
    kv.check_invariants().unwrap();
}

#[test]
fn a_window_takes_and_returns_no_more_blocks_per_token_than_full_attention() {
    // Over a sequence's life (allocate, decode 2000 tokens, free), a
    // sliding-window group takes and returns one block per 16 tokens, as full
    // attention does: it only returns them earlier, so it holds far fewer.
    let run = |kind: AttentionKind| {
        let mut kv = KvCacheManager::new(KvCacheConfig {
            num_blocks: 256,
            block_size: 16,
            max_model_len: 4096,
            watermark: 0.0,
            groups: vec![kind],
            ..Default::default()
        })
        .unwrap();
        kv.allocate(SeqId(1), &toks(20)).unwrap();
        let mut held = 0;
        for t in 0..2000 {
            settle(&mut kv);
            kv.append(SeqId(1), &[t]).unwrap();
            held = held.max(kv.usage().used_blocks);
        }
        kv.free(SeqId(1)).unwrap();
        let s = kv.stats();
        (s.blocks_taken, s.blocks_returned, held)
    };
    let (full_taken, full_returned, full_held) = run(AttentionKind::Full);
    let (win_taken, win_returned, win_held) = run(AttentionKind::SlidingWindow { window: 64 });
    assert_eq!((full_taken, full_returned), (127, 127));
    assert_eq!((win_taken, win_returned), (full_taken, full_returned));
    assert_eq!(full_held, 127);
    assert_eq!(
        win_held,
        AttentionKind::SlidingWindow { window: 64 }.max_blocks_per_seq(2020, 1, 16)
    );
}

#[test]
fn handles_of_other_managers_and_freed_sequences_are_refused() {
    let mut a = kv(8, 4);
    let mut b = kv(8, 4);
    a.allocate(SeqId(1), &toks(3)).unwrap();
    b.allocate(SeqId(1), &toks(3)).unwrap();
    let ha = a.handle(SeqId(1)).unwrap();
    let hb = b.handle(SeqId(1)).unwrap();
    assert_ne!(ha, hb, "each manager tags its handles");
    let stale = |r: Result<(), crate::error::BatchError>| {
        matches!(
            r,
            Err(crate::error::BatchError {
                done: 0,
                error: KvError::StaleHandle { .. }
            })
        )
    };
    let before = snapshot(&a);
    assert!(stale(a.append_decode_into(&[(hb, 1)], &mut [Vec::new()])));
    assert_eq!(snapshot(&a), before);
    // A clone is another manager: the original's handles are foreign to it.
    let mut c = a.clone();
    assert!(matches!(c.seq_of(ha), Err(KvError::StaleHandle { .. })));
    let hc = c.handle(SeqId(1)).unwrap();
    c.append_decode_into(&[(hc, 1)], &mut [Vec::new()]).unwrap();
    // Freed, then the slot reused by another sequence: still stale.
    a.free(SeqId(1)).unwrap();
    a.allocate(SeqId(2), &toks(3)).unwrap();
    assert_eq!(a.handle(SeqId(2)).unwrap().index(), ha.index());
    assert!(matches!(a.seq_of(ha), Err(KvError::StaleHandle { .. })));
    assert!(stale(a.append_decode_into(&[(ha, 1)], &mut [Vec::new()])));
    a.check_invariants().unwrap();
}

#[test]
fn a_batch_stops_at_the_first_refusal() {
    // Three sequences with full last blocks and one free block: the first
    // takes it, the second is refused, the third is not looked at.
    let mut kv = kv(4, 2);
    for s in 1..=3 {
        kv.allocate(SeqId(s), &toks(2)).unwrap();
    }
    settle(&mut kv);
    let batch: Vec<_> = (1..=3).map(|s| (kv.handle(SeqId(s)).unwrap(), 9)).collect();
    let mut slots = vec![Vec::new()];
    let err = kv.append_decode_into(&batch, &mut slots).unwrap_err();
    assert_eq!(err.done, 1);
    assert!(matches!(err.error, KvError::OutOfBlocks { .. }), "{err}");
    assert_eq!(slots[0], [kv.slot(SeqId(1), 2).unwrap()]);
    assert_eq!(
        [1, 2, 3].map(|s| kv.num_tokens(SeqId(s)).unwrap()),
        [3, 2, 2],
        "entries after the refused one are untouched"
    );
    // More buffers than groups is refused before anything runs.
    let err = kv
        .append_decode_into(&batch[1..], &mut [Vec::new(), Vec::new()])
        .unwrap_err();
    assert!(matches!(err.error, KvError::UnknownGroup { .. }));
    kv.check_invariants().unwrap();
}

/// Four sequences of `prompt_len(s)` tokens decoded 40 steps in two managers
/// of `config`, one by `SeqId` (`append_and_group_slots_into`), one batched
/// (`append_decode_into`), sequence 0 forked at step 20: the same slots and
/// the same `state` after every step. Returns the batched manager.
fn decode_by_id_vs_batched(
    config: KvCacheConfig,
    prompt_len: impl Fn(u64) -> usize,
    state: impl Fn(&KvCacheManager) -> String,
    label: &str,
) -> KvCacheManager {
    let groups = config.groups.len().max(1);
    let (mut by_id, mut batched) = (
        KvCacheManager::new(config.clone()).unwrap(),
        KvCacheManager::new(config).unwrap(),
    );
    for kv in [&mut by_id, &mut batched] {
        for s in 0..4 {
            kv.allocate(SeqId(s), &toks(prompt_len(s))).unwrap();
        }
        settle(kv);
    }
    let batch: Vec<_> = (0..4).map(|s| (batched.handle(SeqId(s)).unwrap(), 5)).collect();
    for step in 0..40 {
        let mut want = vec![Vec::new(); groups];
        for s in 0..4 {
            let len = by_id.num_tokens(SeqId(s)).unwrap();
            by_id
                .append_and_group_slots_into(SeqId(s), &[5], len..len + 1, &mut want)
                .unwrap();
        }
        let mut got = vec![Vec::new(); groups];
        batched.append_decode_into(&batch, &mut got).unwrap();
        assert_eq!(got, want, "{label} step {step}");
        assert_eq!(state(&batched), state(&by_id), "{label} step {step}");
        batched.check_invariants().unwrap();
        settle(&mut by_id);
        settle(&mut batched);
        if step == 20 {
            // A fork flags the parent's tail: the next decode copies it.
            for kv in [&mut by_id, &mut batched] {
                kv.fork(SeqId(0), SeqId(9)).unwrap();
            }
        }
    }
    assert_eq!(snapshot(&by_id), snapshot(&batched), "{label}");
    batched
}

#[test]
fn batched_decode_matches_appends_by_id_in_every_group() {
    let config = KvCacheConfig {
        num_blocks: 256,
        block_size: 4,
        max_model_len: 64,
        watermark: 0.0,
        groups: vec![
            AttentionKind::Full,
            AttentionKind::SlidingWindow { window: 8 },
            AttentionKind::ChunkedLocal { chunk: 8 },
        ],
        ..Default::default()
    };
    decode_by_id_vs_batched(config, |s| 1 + s as usize * 3, snapshot, "three groups");
}

#[test]
fn two_group_batched_decode_matches_appends_by_id() {
    // The two-group loop's own paths (a token in the last block, a block
    // taken in each group, one block a window moved past released in the
    // loop) and its fallbacks against the SeqId path: the same slots, tables,
    // free-block order (release order) and counters after every step.
    for window in [
        AttentionKind::SlidingWindow { window: 8 },
        AttentionKind::SlidingWindow { window: 3 },
        AttentionKind::SlidingWindow { window: 1 },
        AttentionKind::ChunkedLocal { chunk: 8 },
    ] {
        let config = KvCacheConfig {
            num_blocks: 128,
            block_size: 4,
            max_model_len: 64,
            watermark: 0.0,
            groups: vec![AttentionKind::Full, window],
            ..Default::default()
        };
        let state = |kv: &KvCacheManager| {
            let window_tables: Vec<_> = (0..4)
                .map(|s| kv.group(1).unwrap().table(SeqId(s)).unwrap().clone())
                .collect();
            format!("{} {window_tables:?} {:?}", snapshot(kv), kv.stats())
        };
        let batched = decode_by_id_vs_batched(config, |s| 1 + s as usize * 5, state, &window.to_string());
        assert!(batched.stats().window_released_blocks > 0, "{window}");
    }
}

/// The two-group loop leaves group 1's count behind (see `tables.rs`):
/// every reader, through a shared borrow on another thread too, sees it
/// caught up, and the manager stays `Sync`.
#[test]
fn group_counts_left_behind_by_the_decode_loop_read_current() {
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 64,
        block_size: 4,
        max_model_len: 64,
        watermark: 0.0,
        groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 8 }],
        ..Default::default()
    })
    .unwrap();
    kv.allocate(SeqId(1), &toks(5)).unwrap();
    let batch = [(kv.handle(SeqId(1)).unwrap(), 9)];
    let mut slots = vec![Vec::new(), Vec::new()];
    for _ in 0..2 {
        kv.drain_ops(&mut BlockOps::default());
        kv.append_decode_into(&batch, &mut slots).unwrap(); // positions 5, 6: the fast case
    }
    let kv = &kv;
    let (count, last) = std::thread::scope(|sc| {
        sc.spawn(|| {
            let g = kv.group(1).unwrap();
            (
                g.table(SeqId(1)).unwrap().num_tokens(),
                g.slot(SeqId(1), 6).unwrap(),
            )
        })
        .join()
        .unwrap()
    });
    assert_eq!(count, 7);
    assert_eq!(last, slots[1][1]);
    assert_eq!(
        kv.group(1)
            .unwrap()
            .table(SeqId(1))
            .unwrap()
            .tokens_in_last_block(),
        3
    );
    kv.check_invariants().unwrap();
}

#[test]
fn freed_storage_kept_for_reuse_is_bounded() {
    let mut kv = kv(4096, 1);
    for s in 0..(MAX_SPARE as u64 + 44) {
        kv.allocate(SeqId(s), &toks(3)).unwrap();
    }
    for s in 0..(MAX_SPARE as u64 + 44) {
        kv.free(SeqId(s)).unwrap();
    }
    assert_eq!(kv.spare.len(), MAX_SPARE);
    // A table that grew past MAX_SPARE_BLOCKS is not kept.
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 8192,
        block_size: 1,
        max_model_len: 8192,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap();
    kv.allocate(SeqId(1), &toks(MAX_SPARE_BLOCKS + 1)).unwrap();
    kv.free(SeqId(1)).unwrap();
    assert!(kv.spare.is_empty());
    kv.check_invariants().unwrap();
}

#[test]
fn admission_counts_the_block_that_vouches_for_a_window_hit() {
    // One sliding-window group of 1 (no full-attention group vouches for a
    // hit), block size 1, 21 blocks, every one cached: a 22-token prompt
    // whose first token hits holds that block too, so a chunk of 21 after
    // the hit needs 22 blocks (admission said Now while allocate refused:
    // the scheduler then retried the same chunk forever).
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 21,
        block_size: 1,
        max_model_len: 64,
        watermark: 0.0,
        enable_prefix_caching: true,
        groups: vec![AttentionKind::SlidingWindow { window: 1 }],
        ..Default::default()
    })
    .unwrap();
    // Cached: a 21-token prompt sharing only its first token with `zeros`.
    let mut first = [9u32; 21];
    first[0] = 0;
    kv.allocate(SeqId(1), &first).unwrap();
    settle(&mut kv);
    kv.free(SeqId(1)).unwrap();
    let zeros = [0u32; 22];
    let keys = PrefixKeys::default();
    let prompt = &zeros[..22];
    assert_eq!(kv.cached_prefix_len(prompt, &keys), 1);
    assert_eq!(kv.check_admission_chunked(prompt, &keys, 0, 21), Admission::Later);
    assert!(matches!(
        kv.allocate(SeqId(2), prompt),
        Err(KvError::OutOfBlocks { needed: 22, free: 21 })
    ));
    // A chunk of 20 after the hit fits, and allocates.
    assert_eq!(
        kv.check_admission_chunked(&zeros[..21], &keys, 0, 20),
        Admission::Now
    );
    assert_eq!(kv.allocate(SeqId(2), &zeros[..21]).unwrap().cached_tokens, 1);
    kv.check_invariants().unwrap();
}
