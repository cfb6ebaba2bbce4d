//! Hybrid layouts and vLLM V1's rules: numbers from vLLM 0.33.0 (the CLI's
//! fixtures hold the full matrix; these pin the library alone), and property
//! tests of the grouping and the fit search against brute force.

use proptest::prelude::*;

use super::*;

const SW128: AttentionKind = AttentionKind::SlidingWindow { window: 128 };
const SW4096: AttentionKind = AttentionKind::SlidingWindow { window: 4096 };
const CHUNK8K: AttentionKind = AttentionKind::ChunkedLocal { chunk: 8192 };

fn alternating(n: u32, heads: u32, head_dim: u32, sliding: AttentionKind) -> ModelLayout {
    let kinds: Vec<_> = (0..n)
        .map(|i| if i % 2 == 0 { sliding } else { AttentionKind::Full })
        .collect();
    ModelLayout::from_kinds(&CacheSpec::new(n, heads, head_dim, KvDtype::Bf16), &kinds).unwrap()
}

fn v1(layout: &ModelLayout, budget: u64) -> CachePlan {
    CachePlan::for_engine(
        layout,
        16,
        &MemoryBudget::direct(budget),
        EngineRules::vllm_v1(2048),
    )
    .unwrap()
}

#[test]
fn seed_under_v1_holds_back_the_null_block() {
    let layout = ModelLayout::uniform(&CacheSpec::new(28, 2, 128, KvDtype::Bf16));
    let plan = v1(&layout, 2_246_049_792);
    assert_eq!((plan.num_blocks(), plan.usable_blocks()), (4896, 4895));
    let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(128_000).unwrap_err() else {
        panic!()
    };
    // vLLM 0.33.0: 3.42 GiB needed, 2.09 GiB available, estimate 78320.
    assert_eq!((a.needed_kv_bytes, a.kv_bytes), (3_670_016_000, 2_245_591_040));
    assert_eq!(
        (a.estimated_max_model_len, a.largest_max_model_len),
        (78_320, 78_320)
    );
    let msg = PlanError::MaxModelLenTooLarge(a.clone()).to_string();
    assert!(msg.starts_with(
        "To serve at least one request with the model's max seq len (128000), (3.42 GiB KV cache is needed, \
         which is larger than the available KV cache memory (2.09 GiB). Based on the available memory, \
         the estimated maximum model length is 78320. Try increasing `gpu_memory_utilization`"
    ), "{msg}");
    assert!(msg.contains("\n  - set max_model_len to at most 78320"), "{msg}");
    // Exactly the bytes that fit: 8000 blocks plus the null block.
    assert_eq!(a.min_kv_bytes, 8001 * 458_752);
    assert!(v1(&layout, a.min_kv_bytes).fits(128_000));
    assert!(!v1(&layout, a.min_kv_bytes - 1).fits(128_000));
    assert!(plan.fits(78_320) && !plan.fits(78_321));
}

#[test]
fn gpt_oss_20b_groups_and_fit() {
    // vLLM 0.33.0, 2 GiB, bf16, TP 1: 2 groups of 12, 393216 bytes per block,
    // 5461 blocks, 8457 blocks per 131072-token request, estimate 83120.
    let layout = alternating(24, 8, 64, SW128);
    let plan = v1(&layout, 2 * GIB);
    let shape: Vec<_> = plan
        .groups()
        .iter()
        .map(|g| (g.kind, g.num_layers(), g.num_padded_layers))
        .collect();
    assert_eq!(shape, [(SW128, 12, 12), (AttentionKind::Full, 12, 12)]);
    assert_eq!(plan.breakdown().bytes_per_block, 393_216);
    assert_eq!(plan.breakdown().bytes_per_token, 49_152);
    assert_eq!(plan.num_blocks(), 5461);
    assert_eq!(plan.blocks_per_seq(131_072), 8457);
    assert_eq!(plan.largest_max_model_len(131_072), 83_120);
    // TP 2 fits, and the advice says so.
    let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(131_072).unwrap_err() else {
        panic!()
    };
    let (tp, alt) = a.tensor_parallel.unwrap();
    assert!(tp == 2 && alt.fits);
    assert!(a.fp8.unwrap().fits);
    // Under V0 every layer counts every token: 131072 tokens need 8192 blocks of 24 layers.
    let v0 = CachePlan::for_engine(&layout, 16, &MemoryBudget::direct(2 * GIB), EngineRules::VllmV0).unwrap();
    assert_eq!(v0.groups().len(), 1);
    assert_eq!(v0.breakdown().bytes_per_block, 2 * 393_216);
    assert_eq!(v0.largest_max_model_len(131_072), 2730 * 16);
}

#[test]
fn gemma_2_9b_and_llama_4_scout() {
    // gemma-2-9b in bf16: 21 sliding (4096) + 21 full layers of 8 × 256.
    let gemma = v1(&alternating(42, 8, 256, SW4096), 2 * GIB);
    assert_eq!(gemma.breakdown().bytes_per_block, 2_752_512);
    assert_eq!((gemma.num_blocks(), gemma.blocks_per_seq(8192)), (780, 1025));
    assert_eq!(gemma.largest_max_model_len(8192), 6224);
    // Llama 4 Scout: every 4th layer global, the rest chunked (8192): 3 chunked groups + 1 full.
    let kinds: Vec<_> = (0..48)
        .map(|i| {
            if (i + 1) % 4 == 0 {
                AttentionKind::Full
            } else {
                CHUNK8K
            }
        })
        .collect();
    let layout = ModelLayout::from_kinds(&CacheSpec::new(48, 8, 128, KvDtype::Bf16), &kinds).unwrap();
    let scout = v1(&layout, 2 * GIB);
    let kinds: Vec<_> = scout.groups().iter().map(|g| (g.kind, g.num_layers())).collect();
    assert_eq!(
        kinds,
        [
            (CHUNK8K, 12),
            (CHUNK8K, 12),
            (CHUNK8K, 12),
            (AttentionKind::Full, 12)
        ]
    );
    assert_eq!(scout.groups()[0].layers[..3], [0, 4, 8]);
    assert_eq!(scout.breakdown().bytes_per_block, 786_432);
    assert_eq!(scout.blocks_per_seq(10_485_760), 657_664);
    assert_eq!(scout.largest_max_model_len(10_485_760), 10_912);
}

#[test]
fn hybrid_manager_off_sizes_sliding_layers_as_full() {
    let layout = alternating(24, 8, 64, SW128);
    let rules = EngineRules::VllmV1(VllmV1Rules {
        max_in_flight_tokens: 4096,
        hybrid_kv_cache_manager: false,
    });
    let plan = CachePlan::for_engine(&layout, 16, &MemoryBudget::direct(2 * GIB), rules).unwrap();
    assert_eq!(plan.groups().len(), 1);
    assert_eq!(plan.groups()[0].kind, AttentionKind::Full);
    assert_eq!(plan.blocks_per_seq(131_072), 8192);
    // All-sliding models keep their window (vLLM promotes only next to full layers).
    let mistral = ModelLayout::from_kinds(&CacheSpec::new(32, 8, 128, KvDtype::Bf16), &[SW4096; 32]).unwrap();
    let plan = CachePlan::for_engine(&mistral, 16, &MemoryBudget::direct(2 * GIB), rules).unwrap();
    assert_eq!(plan.blocks_per_seq(32_768), 513);
}

#[test]
fn only_the_null_block_is_refused() {
    let layout = ModelLayout::uniform(&CacheSpec::new(28, 2, 128, KvDtype::Bf16));
    let one = CachePlan::for_engine(
        &layout,
        16,
        &MemoryBudget::direct(458_752),
        EngineRules::vllm_v1(2048),
    );
    assert!(matches!(one, Err(PlanError::OnlyNullBlock { .. })), "{one:?}");
    assert!(one.unwrap_err().to_string().contains("null block"));
    assert!(CachePlan::for_engine(
        &layout,
        16,
        &MemoryBudget::direct(2 * 458_752),
        EngineRules::vllm_v1(2048)
    )
    .is_ok());
}

#[test]
fn v1_utilization_advice_is_the_lowest_that_fits_with_rounding_up() {
    let layout = alternating(24, 8, 64, SW128);
    let device = |u: f64| {
        MemoryBudget::device(DeviceMemory {
            device_bytes: 3939 * GIB / 100,
            gpu_memory_utilization: u,
            weights_bytes: 13 * GIB,
            non_torch_bytes: GIB / 4,
            activation_peak_bytes: GIB,
            cudagraph_bytes: GIB / 2,
        })
    };
    let rules = EngineRules::vllm_v1(8192);
    let plan = CachePlan::for_engine(&layout, 16, &device(0.42), rules).unwrap();
    let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(131_072).unwrap_err() else {
        panic!()
    };
    let Some(UtilizationAdvice::Fits(u)) = a.utilization else {
        panic!("{a:?}")
    };
    let at = |u: f64| CachePlan::for_engine(&layout, 16, &device(u), rules).unwrap();
    assert!(at(u).fits(131_072));
    assert!(!at(((u * 100.0).round() - 1.0) / 100.0).fits(131_072));
    // The CUDA graph memory is spent before the cache.
    assert_eq!(
        rules.kv_bytes(&device(0.5)),
        (3939 * GIB / 100) as i128 / 2 + 1 - (13 * GIB + GIB / 4 + GIB + GIB / 2) as i128
    );
}

#[test]
fn format_gib_rounds_like_python() {
    assert_eq!(format_gib(0), "0.0");
    assert_eq!(format_gib(GIB), "1.0");
    assert_eq!(format_gib(GIB + GIB / 10), "1.1");
    assert_eq!(format_gib(5_096_079_360), "4.75");
    assert_eq!(format_gib(3 * (GIB / 8)), "0.38"); // 0.375: half to even
    assert_eq!(format_gib(5 * (GIB / 8)), "0.62"); // 0.625: half to even
    assert_eq!(format_gib(u64::MAX), "17179869184.0");
}

fn arb_layout() -> impl Strategy<Value = ModelLayout> {
    let kind = prop_oneof![
        3 => Just(AttentionKind::Full),
        2 => (1u32..300).prop_map(|window| AttentionKind::SlidingWindow { window }),
        1 => (1u32..300).prop_map(|chunk| AttentionKind::ChunkedLocal { chunk }),
    ];
    (prop::collection::vec(kind, 1..40), 1u32..4).prop_map(|(kinds, pp)| {
        let n = kinds.len() as u32;
        let spec = CacheSpec::new(n, 4, 32, KvDtype::Bf16).with_pipeline_parallel(pp.min(n));
        ModelLayout::from_kinds(&spec, &kinds).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::proptest_cases(200)))]

    /// The groups partition the layers, hold one kind each, have one padded
    /// size, and follow vLLM's group-size rule.
    #[test]
    fn groups_partition_the_layers(layout in arb_layout()) {
        let groups = groups::vllm_groups(&layout);
        let mut seen: Vec<u32> = groups.iter().flat_map(|g| g.layers.iter().copied()).collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..layout.layers.len() as u32).collect::<Vec<_>>());
        let size = groups[0].num_padded_layers;
        for g in &groups {
            prop_assert!(g.validate().is_ok());
            prop_assert_eq!(g.num_padded_layers, size);
            prop_assert!(g.layers.iter().all(|&l| layout.layers[l as usize].kind == g.kind));
            prop_assert!(g.layers.windows(2).all(|w| w[0] < w[1]));
        }
        // Per kind, the layer counts: the group size is the smallest, or the
        // largest when it is under 1.5 × the smallest.
        let mut counts = std::collections::HashMap::new();
        for l in &layout.layers {
            *counts.entry(l.kind).or_insert(0u32) += 1;
        }
        if counts.len() > 1 {
            let (min, max) = (*counts.values().min().unwrap(), *counts.values().max().unwrap());
            let expect = if (max as f64) < min as f64 * 1.5 { max } else { min };
            prop_assert_eq!(size, expect);
            let padded: u32 = groups.iter().map(|g| g.num_padding_layers()).sum();
            let expected_padding: u32 = counts.values().map(|&c| c.div_ceil(size) * size - c).sum();
            prop_assert_eq!(padded, expected_padding);
        } else {
            prop_assert_eq!(groups.len(), 1);
        }
    }

    /// `fits` and the binary search agree with a walk over every length, and
    /// the fixes offered pass the same check.
    #[test]
    fn largest_fitting_length_is_exact(
        layout in arb_layout(),
        blocks in 2u64..400,
        in_flight in 1u64..600,
        bs in prop::sample::select(vec![1u32, 4, 16]),
    ) {
        let rules = EngineRules::VllmV1(VllmV1Rules { max_in_flight_tokens: in_flight, hybrid_kv_cache_manager: true });
        let probe = CachePlan::for_engine(&layout, bs, &MemoryBudget::direct(u64::MAX / 4), rules).unwrap();
        let budget = MemoryBudget::direct(blocks * probe.breakdown().bytes_per_block + 7);
        let plan = CachePlan::for_engine(&layout, bs, &budget, rules).unwrap();
        let upper = 3000u64;
        let walk = (1..=upper).take_while(|&l| plan.fits(l)).last().unwrap_or(0);
        prop_assert_eq!(plan.largest_max_model_len(upper), walk);
        prop_assert!((1..=upper).all(|l| plan.fits(l) == (l <= walk)));
        if walk < upper {
            let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(upper).unwrap_err() else {
                panic!("not a capacity refusal")
            };
            prop_assert_eq!(a.largest_max_model_len, walk);
            let fixed = CachePlan::for_engine(&layout, bs, &MemoryBudget::direct(a.min_kv_bytes), rules).unwrap();
            prop_assert!(fixed.fits(upper));
            if let Some((tp, alt)) = a.tensor_parallel {
                let p = CachePlan::for_engine(&layout.with_tensor_parallel(tp), bs, &budget, rules).unwrap();
                prop_assert_eq!(p.fits(upper), alt.fits);
            }
        } else {
            prop_assert!(plan.check_max_model_len(upper).is_ok());
        }
    }
}
