//! Unit tests of prefix caching in the manager.

use super::super::*;
use crate::prefix::{ExtraKey, MmSpan};

fn kv(num_blocks: u32, block_size: u32, events: bool) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        max_model_len: 1024,
        watermark: 0.0,
        enable_prefix_caching: true,
        enable_kv_events: events,
        ..Default::default()
    })
    .unwrap()
}

fn toks(r: std::ops::Range<u32>) -> Vec<TokenId> {
    r.collect()
}

/// Hands the step to the engine (which runs it): the blocks filled so far
/// become hittable.
fn run_step(kv: &mut KvCacheManager) {
    kv.drain_ops(&mut BlockOps::default());
}

#[test]
fn hit_on_free_blocks_reuses_them_in_place() {
    let mut kv = kv(8, 4, false);
    let a = kv.allocate(SeqId(1), &toks(0..10)).unwrap();
    assert_eq!((a.num_blocks, a.cached_tokens), (3, 0));
    let first = kv.block_table(SeqId(1)).unwrap().to_vec();
    run_step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    // The partial tail (no hash) is reused first; the prefix waits at the LRU tail.
    assert_eq!(kv.pool().peek_free(), Some(first[2]));
    let b = kv.allocate(SeqId(2), &toks(0..9)).unwrap();
    assert_eq!(b.cached_tokens, 8);
    assert_eq!(&kv.block_table(SeqId(2)).unwrap()[..2], &first[..2]);
    assert_eq!(kv.stats().prefix_hit_tokens, 8);
    assert_eq!(kv.stats().prefix_queried_tokens, 19);
    kv.check_invariants().unwrap();
}

#[test]
fn hit_on_blocks_in_use_shares_them() {
    let mut kv = kv(8, 4, false);
    kv.allocate(SeqId(1), &toks(0..8)).unwrap();
    run_step(&mut kv);
    let b = kv.allocate(SeqId(2), &toks(0..12)).unwrap();
    assert_eq!(b.cached_tokens, 8);
    assert_eq!(b.num_blocks, 1, "two blocks shared, one new");
    assert_eq!(kv.usage().used_blocks, 3);
    assert_eq!(kv.pool().ref_count(kv.block_table(SeqId(1)).unwrap()[0]), Ok(2));
    kv.check_invariants().unwrap();
}

#[test]
fn a_full_hit_recomputes_the_last_block() {
    let mut kv = kv(8, 4, false);
    kv.allocate(SeqId(1), &toks(0..8)).unwrap();
    run_step(&mut kv);
    let b = kv.allocate(SeqId(2), &toks(0..8)).unwrap();
    run_step(&mut kv);
    assert_eq!(b.cached_tokens, 4);
    assert_ne!(
        kv.block_table(SeqId(1)).unwrap()[1],
        kv.block_table(SeqId(2)).unwrap()[1]
    );
    // Same content computed twice: one cached entry, the second block is its duplicate.
    assert_eq!(kv.num_cached_blocks(), 2);
    assert_eq!(kv.cached_block_hash(kv.block_table(SeqId(2)).unwrap()[1]), None);
    kv.check_invariants().unwrap();
}

#[test]
fn eviction_is_lru_and_prefix_outlives_suffix() {
    let mut kv = kv(4, 2, false);
    kv.allocate(SeqId(1), &toks(0..5)).unwrap(); // 3 blocks, 2 cached
    run_step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    assert_eq!(kv.num_cached_blocks(), 2);
    kv.allocate(SeqId(2), &toks(100..107)).unwrap(); // 4 blocks: evicts both
    assert_eq!(kv.stats().prefix_evictions, 2);
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 3);
    kv.free(SeqId(2)).unwrap();
    kv.allocate(SeqId(3), &toks(200..203)).unwrap(); // 2 blocks: tail, then LRU
                                                     // The oldest cached block of seq 2 is its suffix (freed first): the
                                                     // prefix [100, 101] is still cached.
    assert_eq!(kv.cached_prefix_len(&toks(100..103), &PrefixKeys::default()), 2);
    assert_eq!(kv.cached_prefix_len(&toks(100..105), &PrefixKeys::default()), 4);
    kv.check_invariants().unwrap();
}

#[test]
fn refused_allocation_changes_nothing() {
    let mut kv = kv(3, 4, true);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    run_step(&mut kv);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    let before = format!(
        "{:?} {:?}",
        kv.usage(),
        kv.pool().free_blocks().collect::<Vec<_>>()
    );
    assert_eq!(
        kv.allocate(SeqId(2), &toks(50..59)),
        Err(KvError::OutOfBlocks { needed: 3, free: 0 })
    );
    // With its prefix held by seq 1, the same shape needs only the tail block.
    assert_eq!(
        kv.allocate(SeqId(2), &toks(0..13)),
        Err(KvError::OutOfBlocks { needed: 2, free: 0 })
    );
    assert_eq!(
        before,
        format!(
            "{:?} {:?}",
            kv.usage(),
            kv.pool().free_blocks().collect::<Vec<_>>()
        )
    );
    kv.drain_events(&mut events);
    assert!(events.is_empty());
    assert_eq!(kv.num_cached_blocks(), 2);
    kv.check_invariants().unwrap();
}

#[test]
fn appended_blocks_are_cached_when_they_fill() {
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..3)).unwrap();
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 0);
    kv.append(SeqId(1), &[3]).unwrap(); // fast path fills block 0
    assert_eq!(kv.num_cached_blocks(), 0, "pending until its step is handed over");
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 1);
    kv.append(SeqId(1), &toks(4..13)).unwrap(); // slow path: blocks 1, 2 fill
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 3);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert_eq!(events.len(), 2);
    match &events[1] {
        KvEvent::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            ..
        } => {
            assert_eq!(block_hashes.len(), 2);
            assert_eq!(*token_ids, toks(4..12));
            assert_eq!(*block_size, 4);
            assert_eq!(
                *parent_block_hash,
                kv.cached_block_hash(kv.block_table(SeqId(1)).unwrap()[0])
            );
        }
        e => panic!("unexpected {e:?}"),
    }
    kv.check_invariants().unwrap();
}

#[test]
fn truncate_into_a_cached_block_keeps_it_cached_and_copies_before_writing() {
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..8)).unwrap();
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 2);
    let cached_tail = kv.block_table(SeqId(1)).unwrap()[1];
    kv.truncate(SeqId(1), 6).unwrap(); // rejected speculative tokens
    assert_eq!(kv.num_cached_blocks(), 2, "the tail's content is intact");
    kv.check_invariants().unwrap();
    assert_eq!(
        kv.append_blocks_needed(SeqId(1), 2),
        Ok(1),
        "the copy takes a block"
    );
    let free = kv.num_free_blocks();
    kv.append(SeqId(1), &[60, 70]).unwrap(); // copies the tail before writing
    assert_eq!(
        kv.num_free_blocks(),
        free,
        "the copy took one, the cached original is free"
    );
    assert_eq!(kv.stats().cow_copies, 1);
    let mut ops = BlockOps::default();
    kv.drain_ops(&mut ops);
    assert_eq!(ops.copies.len(), 1);
    assert_eq!((ops.copies[0].src, ops.copies[0].num_slots), (cached_tail, 2));
    kv.check_invariants().unwrap();
    // Both continuations are found: the truncated one was not lost.
    assert_eq!(
        kv.cached_prefix_len(&[0, 1, 2, 3, 4, 5, 6, 7, 9], &PrefixKeys::default()),
        8
    );
    assert_eq!(
        kv.cached_prefix_len(&[0, 1, 2, 3, 4, 5, 60, 70, 9], &PrefixKeys::default()),
        8
    );
    // No block was announced removed.
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert!(
        !events.iter().any(|e| matches!(e, KvEvent::BlockRemoved { .. })),
        "{events:?}"
    );
}

#[test]
fn truncate_into_a_pending_block_drops_its_hash_silently() {
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..4)).unwrap();
    run_step(&mut kv);
    kv.append(SeqId(1), &toks(4..8)).unwrap(); // block 1 fills: pending
    kv.truncate(SeqId(1), 6).unwrap();
    kv.append(SeqId(1), &[60, 70]).unwrap(); // written in place: nobody could see it
    assert_eq!(kv.stats().cow_copies, 0);
    run_step(&mut kv);
    kv.check_invariants().unwrap();
    assert_eq!(
        kv.cached_prefix_len(&[0, 1, 2, 3, 4, 5, 6, 7, 9], &PrefixKeys::default()),
        4
    );
    assert_eq!(
        kv.cached_prefix_len(&[0, 1, 2, 3, 4, 5, 60, 70, 9], &PrefixKeys::default()),
        8
    );
}

#[test]
fn shared_tail_after_truncate_keeps_its_hash_and_every_write_copies() {
    let mut kv = kv(8, 4, false);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    run_step(&mut kv);
    kv.fork(SeqId(1), SeqId(2)).unwrap();
    kv.truncate(SeqId(1), 6).unwrap();
    kv.truncate(SeqId(2), 6).unwrap();
    assert_eq!(kv.num_cached_blocks(), 2, "shared: a write copies first");
    kv.check_invariants().unwrap();
    kv.append(SeqId(2), &[99]).unwrap(); // copy-on-write
    assert_eq!(kv.stats().cow_copies, 1);
    kv.free(SeqId(2)).unwrap();
    kv.check_invariants().unwrap();
    kv.append(SeqId(1), &[98]).unwrap(); // alone now, but cached: copied too
    assert_eq!(kv.stats().cow_copies, 2);
    assert_eq!(
        kv.num_cached_blocks(),
        2,
        "the original block stays cached (free)"
    );
    kv.check_invariants().unwrap();
}

/// The same content computed twice (a full prompt hit recomputes its last
/// block) keeps one cached copy; when that copy is freed the hash moves to the
/// duplicate, so nothing is lost and no event says otherwise.
#[test]
fn a_duplicate_takes_the_hash_over_when_the_cached_copy_is_freed() {
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..8)).unwrap();
    run_step(&mut kv);
    kv.allocate(SeqId(2), &toks(0..8)).unwrap(); // its block 1 duplicates seq 1's
    run_step(&mut kv);
    let (first, second) = (
        kv.block_table(SeqId(1)).unwrap()[1],
        kv.block_table(SeqId(2)).unwrap()[1],
    );
    assert_ne!(first, second);
    assert_eq!(kv.num_cached_blocks(), 2);
    assert_eq!(
        kv.cached_block_hash(second),
        None,
        "a duplicate, not a second entry"
    );
    kv.check_invariants().unwrap();
    kv.free(SeqId(1)).unwrap();
    let h = kv
        .cached_block_hash(second)
        .expect("the duplicate took the hash over");
    assert_eq!(kv.cached_block_hash(first), None);
    assert_eq!(
        kv.pool().peek_free(),
        Some(first),
        "holding nothing cached, reused first"
    );
    kv.check_invariants().unwrap();
    kv.allocate(SeqId(3), &toks(100..120)).unwrap(); // eviction pressure: no cached block is lost
    run_step(&mut kv);
    assert_eq!(kv.cached_block_hash(second), Some(h));
    assert_eq!(kv.cached_prefix_len(&toks(0..9), &PrefixKeys::default()), 8);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert!(
        !events.iter().any(|e| matches!(e, KvEvent::BlockRemoved { .. })),
        "{events:?}"
    );
}

/// A block that fills with content cached in a free block takes the entry:
/// the copy in use is the one worth keeping, and the free one is reused first.
#[test]
fn a_block_filling_with_content_cached_in_a_free_block_takes_the_entry() {
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..4)).unwrap();
    run_step(&mut kv);
    kv.allocate(SeqId(2), &toks(0..3)).unwrap(); // no hit: one token short of a block
    kv.free(SeqId(1)).unwrap(); // its block stays cached, free
    run_step(&mut kv);
    let old = kv
        .pool()
        .free_blocks()
        .find(|&b| kv.cached_block_hash(b).is_some())
        .unwrap();
    kv.append(SeqId(2), &[3]).unwrap(); // fills with the same content
    run_step(&mut kv);
    let new = kv.block_table(SeqId(2)).unwrap()[0];
    assert!(kv.cached_block_hash(new).is_some());
    assert_eq!(kv.cached_block_hash(old), None);
    assert_eq!(kv.pool().peek_free(), Some(old));
    assert_eq!(kv.num_cached_blocks(), 1);
    kv.check_invariants().unwrap();
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert_eq!(
        events.len(),
        1,
        "stored once, never removed nor stored again: {events:?}"
    );
}

#[test]
fn salts_adapters_and_images_isolate() {
    let mut kv = kv(32, 2, false);
    let p = toks(0..5);
    kv.allocate_with(SeqId(1), &p, &PrefixKeys::salted("a")).unwrap();
    run_step(&mut kv);
    assert_eq!(
        kv.allocate_with(SeqId(2), &p, &PrefixKeys::salted("b"))
            .unwrap()
            .cached_tokens,
        0
    );
    run_step(&mut kv);
    assert_eq!(
        kv.allocate_with(SeqId(3), &p, &PrefixKeys::salted("a"))
            .unwrap()
            .cached_tokens,
        4
    );
    run_step(&mut kv);
    assert_eq!(kv.allocate(SeqId(4), &p).unwrap().cached_tokens, 0);
    run_step(&mut kv);
    let lora = PrefixKeys {
        adapter: Some(1),
        ..Default::default()
    };
    assert_eq!(kv.allocate_with(SeqId(5), &p, &lora).unwrap().cached_tokens, 0);
    run_step(&mut kv);
    let img = |hash| PrefixKeys {
        mm_spans: vec![MmSpan {
            offset: 2,
            len: 1,
            hash,
        }],
        ..Default::default()
    };
    // Block 0 is untouched by the image: it hits seq 4's block; block 1 differs.
    assert_eq!(kv.allocate_with(SeqId(6), &p, &img(7)).unwrap().cached_tokens, 2);
    run_step(&mut kv);
    assert_eq!(kv.allocate_with(SeqId(7), &p, &img(7)).unwrap().cached_tokens, 4);
    run_step(&mut kv);
    assert_eq!(kv.allocate_with(SeqId(8), &p, &img(8)).unwrap().cached_tokens, 2);
    run_step(&mut kv);
    kv.check_invariants().unwrap();
}

#[test]
fn events_report_extra_keys_and_reset() {
    let mut kv = kv(8, 2, true);
    let keys = PrefixKeys {
        cache_salt: Some("t".into()),
        adapter: Some(3),
        mm_spans: vec![MmSpan {
            offset: 3,
            len: 1,
            hash: 5,
        }],
    };
    kv.allocate_with(SeqId(1), &toks(0..5), &keys).unwrap();
    run_step(&mut kv);
    kv.free(SeqId(1)).unwrap();
    assert_eq!(kv.reset_prefix_cache(), 2);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert_eq!(events.len(), 2);
    let KvEvent::BlockStored { extra_keys, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(
        *extra_keys,
        vec![
            vec![ExtraKey::CacheSalt("t".into()), ExtraKey::Adapter(3)],
            vec![ExtraKey::Multimodal { hash: 5, offset: 3 }]
        ]
    );
    assert_eq!(events[1], KvEvent::AllCleared);
}

#[test]
fn admission_counts_held_prefix_blocks() {
    let mut kv = kv(4, 4, false);
    kv.allocate(SeqId(1), &toks(0..12)).unwrap();
    run_step(&mut kv);
    let keys = PrefixKeys::default();
    assert_eq!(kv.check_admission(&toks(0..14), &keys, 2), Admission::Now);
    assert_eq!(kv.check_admission(&toks(50..64), &keys, 2), Admission::Later);
    assert!(matches!(
        kv.check_admission(&toks(0..14), &keys, 4),
        Admission::Never(AdmissionRefusal::ExceedsPool { .. })
    ));
}

#[test]
fn kv_events_need_prefix_caching() {
    let err = KvCacheManager::new(KvCacheConfig {
        num_blocks: 4,
        enable_kv_events: true,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("enable_prefix_caching"), "{err}");
}

#[test]
fn caching_off_ignores_keys_and_caches_nothing() {
    let mut on = kv(8, 4, false);
    let mut off = KvCacheManager::new(KvCacheConfig {
        enable_prefix_caching: false,
        ..on.config().clone()
    })
    .unwrap();
    for kv in [&mut on, &mut off] {
        kv.allocate(SeqId(1), &toks(0..9)).unwrap();
        run_step(kv);
        kv.free(SeqId(1)).unwrap();
    }
    assert_eq!(off.allocate(SeqId(2), &toks(0..9)).unwrap().cached_tokens, 0);
    assert_eq!(on.allocate(SeqId(2), &toks(0..9)).unwrap().cached_tokens, 8);
    assert_eq!(off.reset_prefix_cache(), 0);
    assert_eq!(off.num_cached_blocks(), 0);
    off.check_invariants().unwrap();
}

#[test]
fn blocks_of_a_step_never_handed_over_are_never_hit() {
    // A prompt allocated and freed before its step ran (an aborted request)
    // leaves nothing cached: nobody wrote those blocks.
    let mut kv = kv(8, 4, true);
    kv.allocate(SeqId(1), &toks(0..9)).unwrap();
    kv.free(SeqId(1)).unwrap();
    run_step(&mut kv);
    assert_eq!(kv.num_cached_blocks(), 0);
    assert_eq!(kv.allocate(SeqId(2), &toks(0..9)).unwrap().cached_tokens, 0);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    assert!(events.is_empty(), "{events:?}");
    // Freed pending blocks went to the head of the free queue, uncached.
    kv.check_invariants().unwrap();
    // Two prompts in one step share nothing that step writes...
    let c = kv.allocate(SeqId(3), &toks(0..9)).unwrap();
    assert_eq!(c.cached_tokens, 0);
    run_step(&mut kv);
    // ...and the next step hits what the first one computed (the duplicate stays uncached).
    assert_eq!(kv.num_cached_blocks(), 2);
    assert_eq!(kv.allocate(SeqId(4), &toks(0..9)).unwrap().cached_tokens, 8);
    kv.drain_events(&mut events);
    assert_eq!(events.len(), 1, "one BlockStored for seq 2's blocks: {events:?}");
    kv.check_invariants().unwrap();
}

#[test]
fn a_block_refilled_before_its_step_is_committed_with_its_new_content() {
    let mut kv = kv(4, 4, true);
    kv.allocate(SeqId(1), &toks(0..4)).unwrap(); // block 0 pending as [0..4)
    kv.truncate(SeqId(1), 2).unwrap(); // rewritten in place: its pending hash goes
    kv.append(SeqId(1), &[50, 51]).unwrap(); // refilled: pending as [0, 1, 50, 51]
    run_step(&mut kv);
    let keys = PrefixKeys::default();
    assert_eq!(kv.cached_prefix_len(&[0, 1, 2, 3, 9], &keys), 0);
    assert_eq!(kv.cached_prefix_len(&[0, 1, 50, 51, 9], &keys), 4);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    let [KvEvent::BlockStored { token_ids, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(*token_ids, vec![0, 1, 50, 51]);
    kv.check_invariants().unwrap();
}

#[test]
fn a_block_refilled_in_another_group_before_its_step_is_announced_in_that_group() {
    // An aborted prompt leaves pending entries for blocks 0 (group 0) and 1
    // (group 1); the next prompt gets block 1 for group 0 with the same
    // content. Its BlockStored must name group 0, and group 1's its own block.
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 8,
        block_size: 2,
        watermark: 0.0,
        enable_prefix_caching: true,
        enable_kv_events: true,
        groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 1 }],
        ..Default::default()
    })
    .unwrap();
    kv.allocate(SeqId(0), &[10, 11]).unwrap();
    kv.free(SeqId(0)).unwrap(); // aborted before its step
    kv.allocate(SeqId(0), &[10, 11, 0]).unwrap();
    run_step(&mut kv);
    let mut events = Vec::new();
    kv.drain_events(&mut events);
    let mut groups: Vec<u32> = events
        .iter()
        .map(|e| match e {
            KvEvent::BlockStored { group, .. } => *group,
            e => panic!("{e:?}"),
        })
        .collect();
    groups.sort();
    assert_eq!(groups, [0, 1], "{events:?}");
    kv.check_invariants().unwrap();
}

fn hybrid(num_blocks: u32, groups: Vec<AttentionKind>) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: 4,
        watermark: 0.0,
        enable_prefix_caching: true,
        groups,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn a_window_releases_its_last_block_first() {
    // As `free` does and vLLM's `remove_skipped_blocks`: of the blocks a
    // window releases at once, the earliest is evicted last (pinned by
    // tests/vllm_hybrid_fixtures.rs; the first order differed from vLLM's).
    let mut kv = hybrid(8, vec![AttentionKind::SlidingWindow { window: 4 }]);
    kv.allocate(SeqId(1), &toks(0..16)).unwrap();
    let blocks = kv.block_table(SeqId(1)).unwrap().to_vec();
    run_step(&mut kv);
    kv.append(SeqId(1), &[99]).unwrap(); // position 16 reads 13..=16: blocks 0..3 go
    assert_eq!(kv.block_table(SeqId(1)).unwrap()[..3], [BlockId::NULL; 3]);
    let queued: Vec<BlockId> = kv.pool().queued_blocks().collect();
    assert_eq!(queued, [blocks[2], blocks[1], blocks[0]]);
    kv.check_invariants().unwrap();
}

#[test]
fn a_chunked_local_hit_at_a_chunk_boundary_needs_no_block_of_its_group() {
    // With a full-attention group vouching for the prefix, the chunked local
    // group reads nothing before a hit at a chunk boundary and holds nothing
    // there, as vLLM's hybrid manager (it used to keep the block before the
    // hit, and to need it cached).
    let groups = vec![AttentionKind::Full, AttentionKind::ChunkedLocal { chunk: 8 }];
    let mut kv = hybrid(32, groups.clone());
    kv.allocate(SeqId(1), &toks(0..17)).unwrap();
    run_step(&mut kv);
    let mut prompt = toks(0..8);
    prompt.extend(100..105);
    let a = kv.allocate(SeqId(2), &prompt).unwrap();
    assert_eq!(a.cached_tokens, 8);
    assert_eq!(
        a.num_blocks,
        2 + 2,
        "the full group's 2 new blocks, the chunked group's 2"
    );
    let local = kv.group(1).unwrap().block_table(SeqId(2)).unwrap().to_vec();
    assert_eq!(local[..2], [BlockId::NULL; 2]);
    assert!(!local[2].is_null() && !local[3].is_null());
    kv.check_invariants().unwrap();

    // Nor need it be cached: with group 1's copies of the prefix evicted and
    // group 0's still cached, the hit stands (it used to fall to 0).
    let mut kv = hybrid(12, groups);
    kv.allocate(SeqId(1), &toks(0..17)).unwrap();
    run_step(&mut kv);
    kv.append(SeqId(1), &[7]).unwrap(); // position 17 reads 16..: group 1 releases blocks 0..4
    run_step(&mut kv);
    assert_eq!(
        kv.group(1).unwrap().block_table(SeqId(1)).unwrap()[..4],
        [BlockId::NULL; 4]
    );
    kv.allocate(SeqId(3), &toks(200..212)).unwrap(); // takes every free block: evicts them
    run_step(&mut kv);
    let keys = PrefixKeys::default();
    assert_eq!(kv.cached_prefix_len_in_group(&prompt, &keys, 1), 0);
    assert_eq!(kv.cached_prefix_len_in_group(&prompt, &keys, 0), 8);
    assert_eq!(kv.cached_prefix_len(&prompt, &keys), 8);
    kv.free(SeqId(3)).unwrap();
    assert_eq!(kv.allocate(SeqId(2), &prompt).unwrap().cached_tokens, 8);
    kv.check_invariants().unwrap();

    // Without a full-attention group nothing vouches for the prefix: pagedkv
    // keeps the block before the hit (vLLM would count a chunk it never cached).
    let mut kv = hybrid(32, vec![AttentionKind::ChunkedLocal { chunk: 8 }]);
    let a = kv.allocate(SeqId(1), &toks(0..13)).unwrap();
    assert_eq!(a.cached_tokens, 0, "nothing is cached: no hit");
    run_step(&mut kv);
    let a = kv.allocate(SeqId(2), &prompt).unwrap();
    assert_eq!(a.cached_tokens, 8);
    let local = kv.block_table(SeqId(2)).unwrap().to_vec();
    assert!(local[0].is_null() && !local[1].is_null(), "{local:?}");
    kv.check_invariants().unwrap();
}
