//! Fuzzes the KV cache manager with arbitrary configurations (KV cache groups,
//! prefix caching, KV events, a host tier with or without prefix offload, the
//! eviction policies, a watermark) and arbitrary call
//! sequences, including every caller mistake the API can be handed: unknown
//! and duplicate ids, absurd lengths and counts, out-of-range positions and
//! groups, orders the engine contract forbids.
//!
//! Checks after every call: nothing panics, `check_invariants()` holds, and a
//! refused call (any `Err`) changed nothing observable.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run manager_ops -s none` (in `fuzz/`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pagedkv::{
    AttentionKind, BlockOps, Eviction, KvCacheConfig, KvCacheManager, KvEvent, MmSpan, PrefixKeys,
    PrefixOffload, SeqHandle, SeqId, Slot,
};

#[derive(Arbitrary, Debug)]
struct Setup {
    num_blocks: u8,
    block_size: u8,
    max_model_len: u16,
    watermark: u8,
    host_blocks: u8,
    caching: bool,
    events: bool,
    groups: Vec<Kind>,
    prefill_chunk: Option<u16>,
    offload: u8,
    eviction: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Full,
    Window(u8),
    Chunk(u8),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Allocate {
        seq: u8,
        len: u16,
        tenant: u8,
        token: u8,
    },
    Append {
        seq: u8,
        len: u8,
        token: u8,
    },
    AppendSlots {
        seq: u8,
        len: u8,
        start: u16,
        end: u16,
        groups: u8,
    },
    Fork {
        parent: u8,
        child: u8,
    },
    Truncate {
        seq: u8,
        to: u16,
    },
    Free {
        seq: u8,
    },
    SwapOut {
        seq: u8,
    },
    SwapIn {
        seq: u8,
    },
    Drain,
    Admission {
        len: u16,
        max_new: u32,
        token: u8,
        tenant: u8,
    },
    AdmissionLen {
        len: u64,
        max_new: u64,
    },
    Runnable {
        len: u64,
        max_new: u64,
    },
    BlocksNeeded {
        seq: u8,
        n: u64,
    },
    Slots {
        seq: u8,
        group: u8,
        start: u64,
        end: u64,
    },
    Reset,
    Events,
    /// `append_decode_into` over handles of these sequences (a handle kept
    /// from before a free or swap is stale), into `groups` slot lists.
    Decode {
        seqs: Vec<u8>,
        token: u8,
        refresh: bool,
        groups: u8,
    },
}

fn keys(tenant: u8) -> PrefixKeys {
    match tenant % 4 {
        0 => PrefixKeys::default(),
        1 => PrefixKeys::salted("a"),
        2 => PrefixKeys {
            adapter: Some(7),
            ..Default::default()
        },
        _ => PrefixKeys {
            mm_spans: vec![MmSpan {
                offset: 3,
                len: 5,
                hash: 11,
            }],
            ..Default::default()
        },
    }
}

/// Prompts from a tiny alphabet around a shared stem, so prefixes repeat.
fn tokens(len: usize, token: u8) -> Vec<u32> {
    (0..len)
        .map(|i| if i < len / 2 { i as u32 } else { (token % 3) as u32 })
        .collect()
}

/// Everything observable that a refused call must leave as it was.
fn snapshot(kv: &KvCacheManager) -> String {
    let mut ids: Vec<SeqId> = kv.seq_ids().collect();
    ids.sort();
    let mut tables = Vec::new();
    for &s in &ids {
        for g in 0..kv.num_groups() {
            tables.push(format!("{:?}", kv.group(g).unwrap().table(s).unwrap()));
        }
    }
    let mut swapped: Vec<SeqId> = kv.swapped_ids().collect();
    swapped.sort();
    format!(
        "{tables:?} {swapped:?} {:?} {:?} {:?} {:?} {}",
        kv.usage(),
        kv.pool().free_blocks().collect::<Vec<_>>(),
        kv.pending_copies(),
        kv.pending_swaps(),
        kv.num_cached_blocks(),
    )
}

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    let groups: Vec<AttentionKind> = setup
        .groups
        .iter()
        .take(4)
        .map(|k| match *k {
            Kind::Full => AttentionKind::Full,
            Kind::Window(w) => AttentionKind::SlidingWindow { window: w as u32 },
            Kind::Chunk(c) => AttentionKind::ChunkedLocal { chunk: c as u32 },
        })
        .collect();
    let config = KvCacheConfig {
        num_blocks: setup.num_blocks as u32,
        block_size: setup.block_size as u32 % 20,
        max_model_len: setup.max_model_len as u32 % 600,
        watermark: setup.watermark as f64 / 300.0,
        num_host_blocks: setup.host_blocks as u32 % 40,
        enable_prefix_caching: setup.caching,
        enable_kv_events: setup.events,
        groups,
        prefill_chunk_tokens: setup.prefill_chunk.map(u32::from),
        prefix_offload: match setup.offload % 3 {
            0 => PrefixOffload::Off,
            1 => PrefixOffload::OnEvict,
            _ => PrefixOffload::OnFree,
        },
        eviction: match setup.eviction % 3 {
            0 => Eviction::Lru,
            1 => Eviction::SegmentedLru,
            _ => Eviction::Exclusive,
        },
        ..Default::default()
    };
    // An unusable configuration must be refused, never panic.
    let Ok(mut kv) = KvCacheManager::new(config) else {
        return;
    };
    let mut ops_buf = BlockOps::default();
    let mut events: Vec<KvEvent> = Vec::new();
    let mut slots: Vec<Vec<Slot>> = vec![Vec::new(); 6];
    let mut one: Vec<Slot> = Vec::new();
    let mut handles: [Option<SeqHandle>; 8] = [None; 8];
    let mut batch: Vec<(SeqHandle, u32)> = Vec::new();
    for op in ops.into_iter().take(400) {
        let before = snapshot(&kv);
        let refused = match op {
            Op::Allocate {
                seq,
                len,
                tenant,
                token,
            } => {
                let prompt = tokens(len as usize % 700, token);
                kv.allocate_with(SeqId(seq as u64 % 8), &prompt, &keys(tenant))
                    .is_err()
            }
            Op::Append { seq, len, token } => kv
                .append(SeqId(seq as u64 % 8), &tokens(len as usize % 40, token))
                .is_err(),
            Op::AppendSlots {
                seq,
                len,
                start,
                end,
                groups,
            } => {
                for s in &mut slots {
                    s.clear();
                }
                let n = groups as usize % 6;
                kv.append_and_group_slots_into(
                    SeqId(seq as u64 % 8),
                    &tokens(len as usize % 40, 1),
                    start as u64..end as u64,
                    &mut slots[..n],
                )
                .is_err()
            }
            Op::Fork { parent, child } => kv
                .fork(SeqId(parent as u64 % 8), SeqId(child as u64 % 8))
                .is_err(),
            Op::Truncate { seq, to } => kv.truncate(SeqId(seq as u64 % 8), to as u64).is_err(),
            Op::Free { seq } => kv.free(SeqId(seq as u64 % 8)).is_err(),
            Op::SwapOut { seq } => kv.swap_out(SeqId(seq as u64 % 8)).is_err(),
            Op::SwapIn { seq } => kv.swap_in(SeqId(seq as u64 % 8)).is_err(),
            Op::Drain => {
                kv.drain_ops(&mut ops_buf);
                false
            }
            Op::Admission {
                len,
                max_new,
                token,
                tenant,
            } => {
                let _ = kv.check_admission(&tokens(len as usize % 700, token), &keys(tenant), max_new as u64);
                true // pure: must change nothing
            }
            Op::AdmissionLen { len, max_new } => {
                let _ = kv.check_admission_len(len, max_new);
                true
            }
            Op::Runnable { len, max_new } => {
                let _ = kv.check_runnable(len, max_new);
                true
            }
            Op::BlocksNeeded { seq, n } => {
                let _ = kv.append_blocks_needed(SeqId(seq as u64 % 8), n);
                let _ = kv.swap_out_blocks_needed(SeqId(seq as u64 % 8));
                let _ = kv.swap_in_and_append_blocks_needed(SeqId(seq as u64 % 8), n);
                let _ = kv.blocks_freed_by_free(SeqId(seq as u64 % 8));
                true
            }
            Op::Slots {
                seq,
                group,
                start,
                end,
            } => {
                one.clear();
                if let Ok(view) = kv.group(group as usize % 6) {
                    let _ = view.slots_into(SeqId(seq as u64 % 8), start..end, &mut one);
                    let _ = view.slot(SeqId(seq as u64 % 8), start);
                    let _ = view.new_slots_into(SeqId(seq as u64 % 8), end, &mut one);
                }
                let _ = kv.cached_prefix_len(&tokens(start as usize % 300, group), &keys(group));
                true
            }
            Op::Reset => {
                kv.reset_prefix_cache();
                false
            }
            Op::Events => {
                kv.drain_events(&mut events);
                false
            }
            Op::Decode {
                seqs,
                token,
                refresh,
                groups,
            } => {
                batch.clear();
                for &s in seqs.iter().take(8) {
                    let i = s as usize % 8;
                    if refresh || handles[i].is_none() {
                        if let Ok(h) = kv.handle(SeqId(i as u64)) {
                            handles[i] = Some(h);
                        }
                    }
                    if let Some(h) = handles[i] {
                        batch.push((h, token as u32));
                    }
                }
                for s in &mut slots {
                    s.clear();
                }
                let n = if groups % 4 == 0 {
                    groups as usize % 6
                } else {
                    kv.num_groups()
                };
                match kv.append_decode_into(&batch, &mut slots[..n]) {
                    Ok(()) => {
                        assert!(
                            slots[..n].iter().all(|s| s.len() == batch.len()),
                            "a slot per entry and group"
                        );
                        false
                    }
                    Err(e) => {
                        // The entries before the refused one applied, with their slots.
                        assert!(e.done < batch.len().max(1));
                        assert!(slots[..n].iter().all(|s| s.len() == e.done), "{e:?}");
                        e.done == 0
                    }
                }
            }
        };
        if let Err(e) = kv.check_invariants() {
            panic!("invariant broken: {e}");
        }
        if refused {
            assert_eq!(snapshot(&kv), before, "a refused or pure call changed the state");
        }
    }
});
