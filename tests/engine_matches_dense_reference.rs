//! The engine example (`examples/engine.rs`) as a test: a CPU paged-attention
//! engine for a hybrid model (full-attention and sliding-window layers in two
//! KV cache groups sharing one pool), driven by the scheduler, must sample
//! exactly the tokens, with the same logits, as the same model with a dense
//! per-sequence KV cache and a window mask, while its workload goes through
//! every path that moves KV data.

#[allow(dead_code)]
#[path = "../examples/engine.rs"]
mod engine;

#[test]
fn paged_engine_matches_dense_reference() {
    let workload = engine::Workload::demo();
    let samples: u64 = workload.requests.iter().map(|r| r.n as u64).sum();
    let report = engine::run(&workload).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(report.verified_sequences, samples);
    assert!(report.max_abs_dlogit <= 1e-5, "{report}");
    // The workload must keep exercising every path that moves KV data, or the
    // comparison proves less than it says.
    assert!(report.preempted_swap > 0, "no preemption by swap:\n{report}");
    assert!(
        report.swap_out_copies > 0 && report.swap_in_copies > 0,
        "no swap copies:\n{report}"
    );
    assert!(
        report.preempted_recompute > 0,
        "no preemption by recompute:\n{report}"
    );
    assert!(
        report.forks > 0 && report.cow_copies > 0,
        "no copy-on-write:\n{report}"
    );
    assert!(report.prefix_hit_tokens > 0, "no prefix-cache hit:\n{report}");
    // Evicted prefix blocks go to the host tier and come back for a hit: the
    // reloaded K/V must be exactly what was computed before the eviction.
    assert!(
        report.offload_copies > 0 && report.reload_copies > 0 && report.host_hit_tokens > 0,
        "no offload and reload of prefix blocks:\n{report}"
    );
    // The sliding-window layers' blocks are released as sequences outgrow the
    // window, and other sequences take them: the pool really is shared.
    assert!(
        report.window_released_blocks > 0 && report.window_blocks_reused > 0,
        "no window block released and reused:\n{report}"
    );
    // A block becomes hittable only once the step computing it was handed
    // over: no sequence ever reads KV the same step writes.
    assert_eq!(
        report.same_step_reads, 0,
        "a sequence read blocks filled in the same step:\n{report}"
    );
    // Each step's KV events go out as one batch in vLLM's wire format, and a
    // router following them never sees a removal of a block it does not hold
    // nor, in the full-attention group, a block whose parent it lacks.
    assert!(
        report.event_batches > 0 && report.events_stored_blocks > 0 && report.events_removed_blocks > 0,
        "no KV events:\n{report}"
    );
    assert_eq!(
        report.events_rejected, 0,
        "a router would reject events:\n{report}"
    );
    // The README shows this run's output (`cargo run --release --example engine`).
    assert!(
        include_str!("../README.md").contains(&report.to_string()),
        "README's engine output is stale; paste the new one:\n{report}"
    );
}

#[test]
fn paged_engine_matches_dense_reference_at_every_block_size() {
    for block_size in [1u32, 2, 8, 16] {
        let demo = engine::Workload::demo();
        // The same token capacity as the demo's pool (144 device, 48 host tokens).
        let tokens = |blocks: u64| blocks * demo.block_size as u64 / block_size as u64;
        let workload = engine::Workload {
            block_size,
            num_blocks: tokens(demo.num_blocks),
            num_host_blocks: tokens(demo.num_host_blocks),
            ..demo
        };
        let report = engine::run(&workload).unwrap_or_else(|e| panic!("block size {block_size}: {e}"));
        assert!(
            report.max_abs_dlogit <= 1e-5,
            "block size {block_size}:\n{report}"
        );
        assert!(
            report.preempted_swap + report.preempted_recompute > 0,
            "block size {block_size}:\n{report}"
        );
    }
}

#[test]
fn paged_engine_matches_dense_reference_with_every_prefix_offload() {
    for offload in [
        pagedkv::PrefixOffload::Off,
        pagedkv::PrefixOffload::OnEvict,
        pagedkv::PrefixOffload::OnFree,
    ] {
        let workload = engine::Workload {
            prefix_offload: offload,
            ..engine::Workload::demo()
        };
        let report = engine::run(&workload).unwrap_or_else(|e| panic!("{offload:?}: {e}"));
        assert!(report.bitwise_equal, "{offload:?}:\n{report}");
        assert_eq!(report.events_rejected, 0, "{offload:?}:\n{report}");
        let reloaded = report.reload_copies > 0;
        assert_eq!(
            reloaded,
            offload != pagedkv::PrefixOffload::Off,
            "{offload:?}:\n{report}"
        );
    }
}
