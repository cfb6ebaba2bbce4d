use super::*;

fn gib(x: f64) -> u64 {
    (x * GIB as f64) as u64
}

fn rtx4090(util: f64) -> MemoryBudget {
    MemoryBudget::device(DeviceMemory {
        device_bytes: gib(23.64),
        gpu_memory_utilization: util,
        weights_bytes: gib(7.87),
        non_torch_bytes: gib(0.25),
        activation_peak_bytes: gib(11.06),
        cudagraph_bytes: 0,
    })
}

const QWEN2_VL_2B: CacheSpec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);

#[test]
fn seed_direct_budget() {
    assert_eq!(QWEN2_VL_2B.bytes_per_token(), 28_672);
    let plan = CachePlan::new(&QWEN2_VL_2B, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
    assert_eq!(plan.num_blocks(), 4_896);
    assert_eq!(plan.token_capacity(), 78_336);
    assert_eq!(plan.breakdown().unused_bytes, 0);
    let err = plan.check_max_model_len(128_000).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("The model's max seq len (128000) is larger than the maximum number of tokens that can be stored in KV cache (78336)."), "{msg}");
    assert!(
        msg.contains("Ways to fit:\n  - set max_model_len to at most 78336"),
        "{msg}"
    );
    let PlanError::MaxModelLenTooLarge(advice) = err else {
        panic!("wrong variant")
    };
    // 128000 tokens = 8000 blocks of 458752 bytes.
    assert_eq!(advice.needed_kv_bytes, 8000 * 458_752);
    assert_eq!(advice.utilization, None);
    // fp8 halves the bytes: twice the blocks.
    assert_eq!(
        advice.fp8.map(|a| (a.token_capacity, a.fits)),
        Some((2 * 78_336, true))
    );
    // TP 2 splits the 2 KV heads: one per GPU, twice the tokens per GPU.
    assert_eq!(
        advice.tensor_parallel.map(|(tp, a)| (tp, a.token_capacity)),
        Some((2, 2 * 78_336))
    );
    assert!(plan.check_max_model_len(78_336).is_ok());
    assert!(plan.check_max_model_len(78_337).is_err());
}

#[test]
fn seed_from_components() {
    let plan = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(0.9)).unwrap();
    let kv_gib = plan.breakdown().kv_bytes as f64 / GIB as f64;
    assert!((kv_gib - 2.09).abs() < 0.01, "{kv_gib}");
    let cap = plan.token_capacity() as f64;
    assert!((cap - 78_336.0).abs() / 78_336.0 < 0.005, "{cap}");
    let err = plan.check_max_model_len(128_000).unwrap_err();
    let PlanError::MaxModelLenTooLarge(advice) = err else {
        panic!("wrong variant")
    };
    // 128000 tokens need 3.42 GiB of KV; with 19.18 GiB of non-KV memory that is
    // 22.60 GiB of 23.64 GiB: utilization 0.956, so the advice is 0.96.
    assert_eq!(advice.utilization, Some(UtilizationAdvice::Fits(0.96)));
    let msg = PlanError::MaxModelLenTooLarge(advice).to_string();
    assert!(msg.contains("raise gpu_memory_utilization to 0.96"), "{msg}");
}

#[test]
fn seed_practitioner_combination() {
    let plan = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(0.95)).unwrap();
    let cap = plan.token_capacity();
    assert!((cap as f64 - 122_750.0).abs() < 100.0, "{cap}");
    assert!(plan.check_max_model_len(60_000).is_ok());
    let advice = plan.concurrency(60_000, None, Some(2));
    assert_eq!(advice.full_length_seqs, 2);
    assert!(advice.to_string().contains("max_num_seqs=2 fits"), "{advice}");
    // And the planner itself suggests 0.95 for 60000 from 0.90.
    let at_90 = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(0.9)).unwrap();
    let PlanError::MaxModelLenTooLarge(a) = at_90.check_max_model_len(120_000).unwrap_err() else {
        panic!()
    };
    let Some(UtilizationAdvice::Fits(u)) = a.utilization else {
        panic!("{a:?}")
    };
    assert!(u <= 0.95, "{u}");
    let proof = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(u)).unwrap();
    assert!(proof.check_max_model_len(120_000).is_ok());
}

#[test]
fn suggested_utilization_is_the_lowest_that_fits() {
    let plan = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(0.9)).unwrap();
    for len in [80_000u64, 100_000, 110_000, 122_000] {
        let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(len).unwrap_err() else {
            panic!()
        };
        let Some(UtilizationAdvice::Fits(u)) = a.utilization else {
            panic!("{len}: {a:?}")
        };
        assert!(CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(u))
            .unwrap()
            .check_max_model_len(len)
            .is_ok());
        let lower = ((u * 100.0).round() - 1.0) / 100.0;
        assert!(CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(lower))
            .unwrap()
            .check_max_model_len(len)
            .is_err());
    }
}

#[test]
fn no_kv_memory_breakdown() {
    let budget = MemoryBudget::device(DeviceMemory {
        device_bytes: gib(23.64),
        gpu_memory_utilization: 0.5,
        weights_bytes: gib(7.87),
        non_torch_bytes: gib(0.25),
        activation_peak_bytes: gib(11.06),
        cudagraph_bytes: 0,
    });
    let err = CachePlan::new(&QWEN2_VL_2B, 16, &budget).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("weights 7.87 GiB + activations 11.06 GiB + non-torch 0.25 GiB = 19.18 GiB exceed 0.50 × 23.64 GiB = 11.82 GiB"),
        "{msg}"
    );
    assert!(
        msg.contains("Raise gpu_memory_utilization to at least 0.82"),
        "{msg}"
    );
}

#[test]
fn below_one_block() {
    let err = CachePlan::new(&QWEN2_VL_2B, 16, &MemoryBudget::direct(458_751)).unwrap_err();
    assert!(matches!(
        err,
        PlanError::BelowOneBlock {
            bytes_per_block: 458_752,
            ..
        }
    ));
    assert!(CachePlan::new(&QWEN2_VL_2B, 16, &MemoryBudget::direct(458_752)).is_ok());
}

#[test]
fn tensor_and_pipeline_parallel() {
    let llama8b = CacheSpec::new(32, 8, 128, KvDtype::Bf16);
    assert_eq!(llama8b.bytes_per_token(), 131_072);
    assert_eq!(llama8b.with_tensor_parallel(2).bytes_per_token(), 65_536);
    assert_eq!(llama8b.with_tensor_parallel(8).bytes_per_token(), 16_384);
    // 16 ranks over 8 KV heads: each head replicated twice, one head per rank.
    assert_eq!(llama8b.with_tensor_parallel(16).bytes_per_token(), 16_384);
    assert!(llama8b.with_tensor_parallel(3).validate().is_err());
    // 32 layers over 3 stages: the largest stage holds 11.
    assert_eq!(
        llama8b.with_pipeline_parallel(3).bytes_per_token(),
        11 * 8 * 256 * 2
    );
    // MLA latent is replicated, not split.
    let mla = CacheSpec::mla(27, 512, 64, KvDtype::Bf16);
    assert_eq!(
        mla.with_tensor_parallel(4).bytes_per_token(),
        mla.bytes_per_token()
    );
}

#[test]
fn distinct_k_and_v_head_dims() {
    let spec = CacheSpec {
        head_dim_k: 192,
        head_dim_v: 128,
        ..CacheSpec::new(2, 4, 0, KvDtype::F32)
    };
    assert_eq!(spec.bytes_per_token(), 2 * 4 * 320 * 4);
}

#[test]
fn invalid_inputs_name_the_field() {
    let cases: [(CacheSpec, u32, MemoryBudget, &str); 5] = [
        (
            CacheSpec::new(0, 2, 128, KvDtype::Bf16),
            16,
            MemoryBudget::direct(GIB),
            "num_layers",
        ),
        (
            CacheSpec::new(2, 0, 128, KvDtype::Bf16),
            16,
            MemoryBudget::direct(GIB),
            "num_kv_heads",
        ),
        (QWEN2_VL_2B, 0, MemoryBudget::direct(GIB), "block_size"),
        (QWEN2_VL_2B, 16, rtx4090(1.5), "gpu_memory_utilization"),
        (QWEN2_VL_2B, 16, rtx4090(0.0), "gpu_memory_utilization"),
    ];
    for (spec, bs, budget, field) in cases {
        match CachePlan::new(&spec, bs, &budget) {
            Err(PlanError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(1.0)).is_ok());
    // A zero direct budget is a caller mistake, not an internal invariant.
    match CachePlan::new(&QWEN2_VL_2B, 16, &MemoryBudget::direct(0)) {
        Err(PlanError::InvalidConfig { field, .. }) => assert_eq!(field, "kv_cache_memory"),
        other => panic!("{other:?}"),
    }
    assert!(rtx4090(f64::NAN).validate().is_err());
}

#[test]
fn host_blocks_and_concurrency() {
    let plan = CachePlan::new(
        &QWEN2_VL_2B,
        16,
        &MemoryBudget::direct(2_246_049_792).with_host_swap(4 * GIB),
    )
    .unwrap();
    assert_eq!(plan.num_host_blocks(), 4 * GIB / 458_752);
    assert_eq!(plan.max_concurrency(16), 4_896);
    assert_eq!(plan.max_concurrency(17), 2_448);
    assert_eq!(plan.max_concurrency(0), 4_896);
    let advice = plan.concurrency(32_768, Some(500), Some(8));
    assert_eq!(advice.full_length_seqs, 2);
    assert_eq!(advice.avg_length_seqs, Some(4_896 / 32));
    assert!(
        advice
            .to_string()
            .contains("max_num_seqs=8 can run out of blocks"),
        "{advice}"
    );
}

#[test]
fn dtype_names_round_trip() {
    for d in [
        KvDtype::F32,
        KvDtype::F16,
        KvDtype::Bf16,
        KvDtype::Fp8E4m3,
        KvDtype::Fp8E5m2,
        KvDtype::Int8,
    ] {
        assert_eq!(d.name().parse::<KvDtype>().unwrap(), d);
    }
    assert_eq!("torch.bfloat16".parse::<KvDtype>().unwrap(), KvDtype::Bf16);
    assert!("fp4".parse::<KvDtype>().is_err());
}

#[test]
fn absurd_shapes_and_lengths_are_errors_not_overflows() {
    let huge = CacheSpec::new(MAX_LAYERS, u32::MAX, u32::MAX, KvDtype::F32);
    match CachePlan::new(&huge, 16, &MemoryBudget::direct(GIB)) {
        Err(PlanError::InvalidConfig { field, .. }) => assert!(field.contains("head_dim"), "{field}"),
        other => panic!("{other:?}"),
    }
    // A mistyped layer count is refused before anything is sized layer by layer.
    match CachePlan::new(
        &CacheSpec::new(u32::MAX, 1, 1, KvDtype::F32),
        16,
        &MemoryBudget::direct(GIB),
    ) {
        Err(PlanError::InvalidConfig { field, .. }) => assert_eq!(field, "num_layers"),
        other => panic!("{other:?}"),
    }
    // The largest shape that passes validation still sizes without overflow.
    let big = CacheSpec::new(1 << 16, 1 << 8, 1 << 7, KvDtype::F32);
    assert!(big.validate().is_ok());
    assert!(CachePlan::new(&big, MAX_BLOCK_SIZE, &MemoryBudget::direct(u64::MAX)).is_ok());
    let plan = CachePlan::new(&QWEN2_VL_2B, 16, &rtx4090(0.9)).unwrap();
    let PlanError::MaxModelLenTooLarge(a) = plan.check_max_model_len(u64::MAX).unwrap_err() else {
        panic!()
    };
    assert_eq!(a.needed_kv_bytes, u64::MAX);
    assert!(matches!(a.utilization, Some(UtilizationAdvice::CannotFit { .. })));
}

#[test]
fn tensor_parallel_advice_states_its_assumption_per_budget_kind() {
    let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
    let direct = CachePlan::new(&spec, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
    let msg = direct.check_max_model_len(128_000).unwrap_err().to_string();
    assert!(msg.contains("the same KV cache budget on each GPU"), "{msg}");
    assert!(!msg.contains("weights split"), "{msg}");
}
