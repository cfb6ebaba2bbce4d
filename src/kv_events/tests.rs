//! Golden bytes: each case rebuilds, from pagedkv's `KvEvent`s, a batch that
//! `data/kv_events/generate_fixtures.py` built with vLLM 0.33.0's own code,
//! and compares the encodings byte for byte. Keep the cases in sync with the
//! generator's `cases()`.

use super::*;
use crate::prefix::{MmSpan, PrefixKeys};

const GOLDEN: &str = include_str!("../../data/kv_events/vllm-0.33.0.golden");

const H1: u128 = 0x0123456789ABCDEF_FEDCBA9876543210;
const H2: u128 = 0x1111111111111111_0000000000000005;
const H3: u128 = 0x2222222222222222_0000000000000080;
const H4: u128 = 0x3333333333333333_0000000000010000;
const H5: u128 = 0x4444444444444444_00000000FFFFFFFF;
const H6: u128 = 0x5555555555555555_0000000100000000;
const H7: u128 = 0x6666666666666666_000000000000FFFF;

fn golden(name: &str) -> Vec<u8> {
    let line = GOLDEN
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no golden case {name}"));
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
        .collect()
}

fn h(v: u128) -> BlockHash {
    BlockHash::from_u128(v)
}

/// A store event as the manager emits it: blocks `first..first + hashes.len()`
/// of a sequence with `tokens` and `keys`.
fn stored(
    tokens: &[u32],
    keys: &PrefixKeys,
    hashes: &[u128],
    parent: Option<u128>,
    first: u32,
    bs: u32,
) -> KvEvent {
    let n = hashes.len() as u32;
    let start = (first * bs) as usize;
    KvEvent::BlockStored {
        block_hashes: hashes.iter().map(|&v| h(v)).collect(),
        parent_block_hash: parent.map(h),
        token_ids: tokens[start..start + (n * bs) as usize].to_vec(),
        block_size: bs,
        extra_keys: (first..first + n)
            .map(|i| keys.extra_keys_for(i, (i * bs) as u64, ((i + 1) * bs) as u64))
            .collect(),
        first_block_index: first,
        adapter: keys.adapter,
        group: 0,
        tier: crate::CacheTier::Device,
    }
}

fn removed(hashes: &[u128]) -> KvEvent {
    KvEvent::BlockRemoved {
        block_hashes: hashes.iter().map(|&v| h(v)).collect(),
        group: 0,
        tier: crate::CacheTier::Device,
    }
}

/// The same event in KV cache group `g`.
fn in_group(mut e: KvEvent, g: u32) -> KvEvent {
    match &mut e {
        KvEvent::BlockStored { group, .. } | KvEvent::BlockRemoved { group, .. } => *group = g,
        _ => {}
    }
    e
}

fn source(rank: Option<u32>, loras: &[(u64, &str)]) -> EventSource {
    EventSource {
        data_parallel_rank: rank,
        groups: vec![
            EventGroup::default(),
            EventGroup::from(AttentionKind::SlidingWindow { window: 4096 }),
        ],
        lora_names: loras.iter().map(|&(id, n)| (id, n.to_string())).collect(),
        ..Default::default()
    }
}

/// Encodes events of group 0 on the GPU through the public path.
fn encode(src: EventSource, ts: f64, events: &[KvEvent]) -> Vec<u8> {
    KvEventEncoder::new(src).unwrap().encode(ts, events).to_vec()
}

fn images() -> PrefixKeys {
    PrefixKeys {
        cache_salt: Some("tenant-a".into()),
        adapter: Some(7),
        mm_spans: vec![
            MmSpan {
                offset: 3,
                len: 2,
                hash: 0xABCDEF,
            },
            MmSpan {
                offset: 6,
                len: 4,
                hash: 0x0123_4567_89AB_CDEF_0011_2233_4455_6677,
            },
        ],
    }
}

fn range(r: std::ops::Range<u32>) -> Vec<u32> {
    r.collect()
}

fn check(name: &str, bytes: Vec<u8>) {
    let want = golden(name);
    assert!(
        bytes == want,
        "{name}: encoding differs from vLLM's\n ours: {}\nvLLM: {}",
        hex(&bytes),
        hex(&want)
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const NONE: &PrefixKeys = &PrefixKeys {
    cache_salt: None,
    adapter: None,
    mm_spans: Vec::new(),
};

#[test]
fn block_stored_matches_vllm() {
    let e = stored(&range(1..9), NONE, &[H1, H2], None, 0, 4);
    check("stored_plain", encode(source(Some(0), &[]), 1700000000.25, &[e]));

    let mut toks = vec![7; 4];
    toks.extend([0, 127, 128, 255, 256, 65535, 65536, u32::MAX, 9, 10, 11, 12]);
    let e = stored(&toks, NONE, &[H4, H5, H6], Some(H3), 1, 4);
    check("stored_int_widths", encode(source(Some(1), &[]), 1.0, &[e]));
}

#[test]
fn extra_keys_follow_vllm_order_and_relative_offsets() {
    let keys = images();
    let loras = &[(7, "sql-lora")];
    let e = stored(&range(100..112), &keys, &[H1, H2, H3], None, 0, 4);
    check("stored_extra_keys", encode(source(Some(0), loras), 2.5, &[e]));
    // Later blocks: the LoRA name on each, no salt, offsets from each block's start.
    let e = stored(&range(200..216), &keys, &[H4, H5], Some(H7), 2, 4);
    check(
        "stored_later_blocks_lora_salt",
        encode(source(Some(0), loras), 3.0, &[e]),
    );

    let far = PrefixKeys {
        mm_spans: vec![MmSpan {
            offset: 0,
            len: 300,
            hash: 0x42,
        }],
        ..Default::default()
    };
    let e = stored(&range(0..300), &far, &[H1, H2, H3], None, 0, 100);
    check("stored_mm_far_offsets", encode(source(Some(0), &[]), 5.5, &[e]));
}

#[test]
fn long_names_and_lists_switch_msgpack_formats_as_vllm() {
    let long = "a-rather-long-adapter-name-of-forty-chars";
    let keys = PrefixKeys {
        adapter: Some(300),
        ..Default::default()
    };
    let e = stored(&range(0..20), &keys, &[H6], None, 0, 20);
    check(
        "stored_long_name_array16",
        encode(source(Some(0), &[(300, long)]), 5.0, &[e]),
    );

    let name = format!("lora-{}", "x".repeat(295));
    let keys = PrefixKeys {
        adapter: Some(1 << 40),
        ..Default::default()
    };
    let e = stored(&range(0..4), &keys, &[H2], None, 0, 4);
    check(
        "stored_str16_name_uint64_id",
        encode(source(Some(0), &[(1 << 40, &name)]), 5.75, &[e]),
    );
}

#[test]
fn group_and_medium_fields_match_vllm() {
    // A host tier's source, and events of group 1 (a sliding window of 4096).
    let cpu = EventSource {
        medium: Medium::Cpu,
        ..source(Some(0), &[])
    };
    let e = in_group(stored(&range(0..8), NONE, &[H2], Some(H1), 1, 4), 1);
    check("stored_sliding_window_cpu", encode(cpu.clone(), 4.0, &[e]));
    let e = in_group(removed(&[H1, H2, H3]), 1);
    check("removed_many_cpu_group1", encode(cpu, 7.0, &[e]));
}

/// Events of the host tier ([`CacheTier::Host`], blocks the manager
/// offloaded) are published on the source's host medium ("CPU"), whatever the
/// device's medium: the same bytes as vLLM's CPU events.
#[test]
fn host_tier_events_are_published_as_cpu() {
    let host = |mut e: KvEvent| {
        match &mut e {
            KvEvent::BlockStored { tier, .. } | KvEvent::BlockRemoved { tier, .. } => *tier = CacheTier::Host,
            _ => {}
        }
        e
    };
    let gpu = source(Some(0), &[]);
    assert_eq!(gpu.medium, Medium::Gpu);
    let e = host(in_group(stored(&range(0..8), NONE, &[H2], Some(H1), 1, 4), 1));
    check("stored_sliding_window_cpu", encode(gpu.clone(), 4.0, &[e]));
    let e = host(in_group(removed(&[H1, H2, H3]), 1));
    check("removed_many_cpu_group1", encode(gpu, 7.0, &[e]));
}

#[test]
fn removed_cleared_and_batches_match_vllm() {
    check(
        "removed_one",
        encode(source(Some(0), &[]), 6.0, &[removed(&[H1])]),
    );
    check(
        "cleared",
        encode(source(Some(0), &[]), 8.0, &[KvEvent::AllCleared]),
    );
    check("empty_no_rank", encode(source(None, &[]), 0.0, &[]));
    let events = [
        stored(&range(0..4), NONE, &[H7], None, 0, 4),
        removed(&[H2]),
        KvEvent::AllCleared,
    ];
    check("mixed_rank3", encode(source(Some(3), &[]), 1234.5, &events));
}

#[test]
fn every_golden_case_is_checked() {
    let names: Vec<&str> = GOLDEN
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let src = include_str!("tests.rs");
    for n in &names {
        assert!(src.contains(&format!("\"{n}\"")), "golden case {n} has no test");
    }
    assert_eq!(names.len(), 13);
}

#[test]
fn an_unnamed_adapter_is_published_under_its_decimal_id() {
    let keys = PrefixKeys {
        adapter: Some(1234567),
        ..Default::default()
    };
    let e = stored(&range(0..8), &keys, &[H1, H2], None, 0, 4);
    assert_eq!(
        encode(source(Some(0), &[]), 1.0, std::slice::from_ref(&e)),
        encode(source(Some(0), &[(1234567, "1234567")]), 1.0, &[e])
    );
    let zero = PrefixKeys {
        adapter: Some(0),
        ..Default::default()
    };
    let e = stored(&range(0..4), &zero, &[H1], None, 0, 4);
    assert_eq!(
        encode(source(Some(0), &[]), 1.0, std::slice::from_ref(&e)),
        encode(source(Some(0), &[(0, "0")]), 1.0, &[e])
    );
}

#[test]
fn a_store_without_blocks_omits_extra_keys() {
    // vLLM's to_event_extra_keys([]) is None, and None is omitted: 10 entries.
    let e = stored(&[], NONE, &[], None, 0, 4);
    let bytes = encode(source(Some(0), &[]), 1.0, &[e]);
    let at = 1 + 9 + 1; // batch header, ts, events header
    assert_eq!(&bytes[at..at + 3], &[0xde, 0, 10]);
    assert!(!bytes.windows(10).any(|w| w == b"extra_keys"));
}

#[test]
fn encoding_reuses_its_buffer_once_warm() {
    let keys = images();
    let events = [
        stored(&range(100..112), &keys, &[H1, H2, H3], None, 0, 4),
        removed(&[H1]),
        KvEvent::AllCleared,
    ];
    let mut enc = KvEventEncoder::new(source(Some(0), &[(7, "sql-lora")])).unwrap();
    let first = enc.encode(1.0, &events).to_vec();
    let (ptr, cap) = (enc.buf.as_ptr(), enc.buf.capacity());
    for ts in [2.0, 3.0, 4.0] {
        let len = enc.encode(ts, &events).len();
        assert_eq!(len, first.len());
        assert_eq!(
            (enc.buf.as_ptr(), enc.buf.capacity()),
            (ptr, cap),
            "no reallocation"
        );
    }
    let mut out = Vec::new();
    enc.encode_into(1.0, &events, &mut out);
    assert_eq!(out, first);
}

#[test]
fn unusable_sources_are_refused_naming_the_field() {
    let bad = [
        EventSource {
            groups: vec![],
            ..Default::default()
        },
        EventSource {
            groups: vec![EventGroup {
                kind: KvCacheSpecKind::SlidingWindow,
                sliding_window: None,
            }],
            ..Default::default()
        },
        EventSource {
            groups: vec![EventGroup {
                kind: KvCacheSpecKind::FullAttention,
                sliding_window: Some(8),
            }],
            ..Default::default()
        },
    ];
    for src in bad {
        let err = KvEventEncoder::new(src).unwrap_err();
        assert!(err.to_string().starts_with("invalid groups:"), "{err}");
    }
    let mut src = EventSource::default();
    src.lora_names.insert(3, String::new());
    let err = src.validate().unwrap_err();
    assert!(err.to_string().contains("adapter 3"), "{err}");
}

#[test]
fn manager_events_encode() {
    use crate::{KvCacheConfig, KvCacheManager, SeqId};
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 4,
        block_size: 4,
        enable_prefix_caching: true,
        enable_kv_events: true,
        ..Default::default()
    })
    .unwrap();
    let keys = PrefixKeys {
        adapter: Some(7),
        ..Default::default()
    };
    let mut ops = crate::BlockOps::default();
    let mut events = Vec::new();
    let mut all = Vec::new();
    kv.allocate_with(SeqId(1), &range(0..9), &keys).unwrap();
    kv.drain_ops(&mut ops); // the step is handed over: its blocks are cached
    kv.drain_events(&mut events);
    all.append(&mut events);
    kv.append(SeqId(1), &range(9..12)).unwrap();
    kv.drain_ops(&mut ops);
    kv.drain_events(&mut events);
    all.append(&mut events);
    let events = all;
    assert_eq!(events.len(), 2);
    let hashes: Vec<BlockHash> = kv
        .block_table(SeqId(1))
        .unwrap()
        .iter()
        .filter_map(|&b| kv.cached_block_hash(b))
        .collect();
    // The second event starts at block 2, chained to block 1, under the adapter.
    let want = KvEvent::BlockStored {
        block_hashes: vec![hashes[2]],
        parent_block_hash: Some(hashes[1]),
        token_ids: range(8..12),
        block_size: 4,
        extra_keys: vec![vec![]],
        first_block_index: 2,
        adapter: Some(7),
        group: 0,
        tier: crate::CacheTier::Device,
    };
    assert_eq!(events[1], want);
    let bytes = encode(source(Some(0), &[(7, "sql-lora")]), 1.0, &events);
    assert!(
        bytes.windows(8).filter(|w| w == b"sql-lora").count() >= 4,
        "name and extra key per event"
    );
}
