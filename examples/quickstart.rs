//! The README's quick start: size a pool, admit a request, share its prompt
//! with a second sample, and hand the engine what it needs for one step.
//!
//! Run: `cargo run --example quickstart`

use pagedkv::{
    Admission, BlockOps, CachePlan, CacheSpec, KvCacheConfig, KvCacheManager, KvDtype, MemoryBudget,
    PrefixKeys, SeqId, GIB,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Qwen2-VL-2B's attention (28 layers, 2 KV heads of 128, bf16) with 2 GiB of KV cache.
    let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
    let plan = CachePlan::new(&spec, 16, &MemoryBudget::direct(2 * GIB))?;
    let mut kv = KvCacheManager::new(KvCacheConfig::from_plan(&plan, 32_768)?)?;

    let prompt: Vec<u32> = (0..100).collect();
    match kv.check_admission(&prompt, &PrefixKeys::default(), 256) {
        Admission::Now => {
            kv.allocate(SeqId(1), &prompt)?;
        }
        Admission::Later => return Ok(()), // keep the request waiting
        Admission::Never(why) => return Err(why.to_string().into()), // reject it, saying why
    }
    let mut ops = BlockOps::default();
    kv.drain_ops(&mut ops); // hand the prefill step to the engine, which computes the prompt

    kv.fork(SeqId(1), SeqId(2))?; // a second sample shares the prompt's 7 blocks
    kv.append(SeqId(2), &[42])?; // it diverges: copy-on-write of the partial last block
    kv.drain_ops(&mut ops); // run these block copies on the GPU before the decode step
    let mut slots = Vec::new();
    kv.new_slots_into(SeqId(2), 1, &mut slots)?; // where token 42's keys and values go
    let table = kv.block_table(SeqId(2))?; // what the attention kernel reads through
    println!(
        "{} blocks fit; copies {:?}; slot {:?}; table {:?}",
        plan.num_blocks(),
        ops.copies,
        slots,
        table
    );

    kv.free(SeqId(1))?;
    kv.free(SeqId(2))?;
    kv.check_invariants()?;
    Ok(())
}
