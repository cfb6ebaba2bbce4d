//! The public sizing helpers are total: any input, however absurd (a block
//! size of 0, `u64::MAX` tokens, four billion layers, a layer index past the
//! last), gives an answer or a typed error, never a panic, an overflow or a
//! division by zero (CI runs this in debug, with overflow checks). Each call's
//! answer is also checked against what it must mean. Found wanting by a
//! soak: `bytes_per_token` overflowed, `blocks_for(n, 0)` divided by zero,
//! `layer_spec(i)` indexed past the layers.
//!
//! `PAGEDKV_PROPTEST_CASES` raises the case count (default 512).

mod proptest_cases;

use pagedkv::{
    blocks_for, AttentionKind, CachePlan, CacheSpec, KvCacheConfig, KvDtype, MemoryBudget, ModelLayout,
};
use proptest::prelude::*;

fn cases() -> u32 {
    proptest_cases::from_env(512)
}

/// Mostly edge values (0, 1, the maximum, just under it), some ordinary ones.
fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u32::MAX as u64),
        0u64..5_000,
        any::<u64>(),
    ]
}

fn any_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        0u32..300,
        any::<u32>()
    ]
}

fn kind() -> impl Strategy<Value = AttentionKind> {
    prop_oneof![
        Just(AttentionKind::Full),
        any_u32().prop_map(|window| AttentionKind::SlidingWindow { window }),
        any_u32().prop_map(|chunk| AttentionKind::ChunkedLocal { chunk }),
    ]
}

fn dtype() -> impl Strategy<Value = KvDtype> {
    prop_oneof![
        Just(KvDtype::F32),
        Just(KvDtype::F16),
        Just(KvDtype::Bf16),
        Just(KvDtype::Fp8E4m3),
        Just(KvDtype::Fp8E5m2),
        Just(KvDtype::Int8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn block_arithmetic_is_total(k in kind(), tokens in any_u64(), step in any_u64(), bs in any_u32()) {
        let blocks = blocks_for(tokens, bs as u64);
        if bs > 0 {
            prop_assert!(blocks.saturating_mul(bs as u64) >= tokens, "{blocks} blocks of {bs} hold {tokens} tokens");
        } else {
            prop_assert_eq!(blocks, if tokens == 0 { 0 } else { u64::MAX });
        }
        // Never more than the whole sequence, whatever the window.
        let most = k.max_blocks_per_seq(tokens, step, bs);
        prop_assert!(most <= blocks, "{k:?}: {most} > {blocks}");
        let vllm = k.vllm_max_blocks_per_seq(tokens, step, bs);
        if k == AttentionKind::Full {
            prop_assert_eq!(vllm, blocks);
        }
        // The first block a query reads is never past the query's own block.
        let first = k.first_needed_block(tokens, bs);
        prop_assert!(bs == 0 || first <= tokens / bs as u64);
        prop_assert!(k.first_needed_pos(tokens) <= tokens);
        let _ = k.first_len_reading_from(tokens, bs);
        let _ = (k.validate(), k.label());
    }

    #[test]
    fn cache_specs_are_total(
        (layers, heads, dim) in (any_u32(), any_u32(), any_u32()),
        mla in proptest::option::of((any_u32(), any_u32())),
        (tp, pp, bs) in (any_u32(), any_u32(), any_u32()),
        dtype in dtype(),
    ) {
        let mut spec = match mla {
            Some((rank, rope)) => CacheSpec::mla(layers, rank, rope, dtype),
            None => CacheSpec::new(layers, heads, dim, dtype),
        };
        spec = spec.with_tensor_parallel(tp).with_pipeline_parallel(pp);
        let (per_token, per_block) = (spec.bytes_per_token(), spec.bytes_per_block(bs));
        prop_assert!(bs == 0 || per_block >= per_token, "a block holds at least a token");
        let _ = (spec.kv_heads_per_rank(), spec.layers_per_stage());
        let valid = spec.validate().is_ok();
        if valid {
            prop_assert!(per_token > 0 && per_token < u64::MAX, "a valid spec has a real size: {per_token}");
        }
        let budget = MemoryBudget::direct(1 << 34);
        if let Ok(plan) = CachePlan::new(&spec, bs, &budget) {
            prop_assert!(valid, "a plan only from a valid spec");
            prop_assert!(plan.num_blocks() as u128 * plan.breakdown().bytes_per_block as u128 <= 1 << 34);
            let _ = KvCacheConfig::from_plan(&plan, heads);
        }
    }

    #[test]
    fn layouts_are_total(
        kinds in proptest::collection::vec(kind(), 0..12),
        (heads, dim, tp, pp, bs) in (any_u32(), any_u32(), any_u32(), 0u32..20, any_u32()),
        (i, stage) in (0usize..20, any_u32()),
    ) {
        let spec = CacheSpec::new(kinds.len() as u32, heads, dim, KvDtype::Bf16)
            .with_tensor_parallel(tp)
            .with_pipeline_parallel(pp);
        let layout = ModelLayout::from_kinds(&spec, &kinds).expect("one kind per layer");
        prop_assert_eq!(layout.layer_spec(i).is_some(), i < kinds.len());
        prop_assert_eq!(layout.page_bytes(i, bs).is_some(), i < kinds.len());
        let layers = layout.stage_layers(stage);
        prop_assert!(layers.end <= kinds.len(), "stage {stage} of {pp}: {layers:?}");
        prop_assert!(stage < pp.max(1) || layers.is_empty());
        // The stages split the layers in order, as vLLM's `get_pp_indices`
        // does (the reference: equal parts, the remainder one layer each over
        // the stages before the last), and the largest stage's bytes are the
        // layout's.
        let (n, stages) = (kinds.len(), pp.max(1) as usize);
        let (base, rem) = (n / stages, n % stages);
        let mut next = 0;
        let mut most = 0u64;
        for s in 0..stages {
            let r = layout.stage_layers(s as u32);
            let size = base + usize::from(rem > 0 && s + 1 < stages && s + 1 + rem >= stages);
            prop_assert_eq!(r.clone(), next..next + size, "stage {} of {}", s, stages);
            next = r.end;
            let bytes = r.map(|l| layout.page_bytes(l, 1).expect("a layer")).fold(0u64, u64::saturating_add);
            most = most.max(bytes);
        }
        prop_assert_eq!(next, n);
        prop_assert_eq!(layout.bytes_per_token(), most);
        let _ = (layout.validate(), layout.all_full().bytes_per_token());
        let _ = pagedkv::sim::metrics::LocalLayers::of(&layout);
        let _ = MemoryBudget::direct(u64::MAX).with_host_swap(u64::MAX).validate();
    }
}
