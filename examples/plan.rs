//! The capacity planner from Rust: a model's attention shape and a GPU's
//! memory profile → how many KV blocks fit, and whether `max_model_len` does.
//! `pagedkv plan` (the CLI) prints the same numbers.
//!
//! Run: `cargo run --example plan`

use pagedkv::{CachePlan, CacheSpec, DeviceMemory, KvCacheConfig, KvDtype, MemoryBudget, PlanError, GIB};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Qwen2-VL-2B's attention: 28 layers, 2 KV heads of 128, bf16.
    let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
    // An RTX 4090 (23.64 GiB as torch sees it) at 95% utilization, with what
    // the weights, non-torch memory and the profiling pass's activations take,
    // and 4 GiB of host memory for swapped-out blocks.
    let gib = |x: f64| (x * GIB as f64) as u64;
    let budget = MemoryBudget::device(DeviceMemory {
        device_bytes: gib(23.64),
        gpu_memory_utilization: 0.95,
        weights_bytes: gib(7.87),
        non_torch_bytes: gib(0.25),
        activation_peak_bytes: gib(11.06),
        cudagraph_bytes: 0,
    })
    .with_host_swap(4 * GIB);
    let plan = CachePlan::new(&spec, 16, &budget)?;

    println!("bytes per token       {}", spec.bytes_per_token());
    println!("bytes per block       {}", plan.breakdown().bytes_per_block);
    println!(
        "KV cache              {:.2} GiB",
        plan.breakdown().kv_bytes as f64 / GIB as f64
    );
    println!(
        "blocks                {} of {} tokens",
        plan.num_blocks(),
        plan.block_size()
    );
    println!("token capacity        {}", plan.token_capacity());
    println!("host (swap) blocks    {}", plan.num_host_blocks());
    println!("sequences of 60000    {} at once", plan.max_concurrency(60_000));

    // The manager's configuration comes from the plan; it checks max_model_len first.
    let config = KvCacheConfig::from_plan(&plan, 60_000)?;
    println!(
        "max_model_len 60000   fits: KvCacheConfig {{ num_blocks: {}, num_host_blocks: {}, .. }}",
        config.num_blocks, config.num_host_blocks
    );

    // A context the cache cannot hold is refused up front, with what would fix it.
    match KvCacheConfig::from_plan(&plan, 128_000) {
        Err(e @ PlanError::MaxModelLenTooLarge(_)) => println!("max_model_len 128000  refused:\n{e}"),
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("128000 tokens cannot fit in this plan".into()),
    }
    Ok(())
}
