//! `--json` prints one JSON object with the same numbers as the table.

mod common;
use common::pagedkv;
use serde_json::Value;

fn json(args: &[&str]) -> (i32, Value) {
    let run = pagedkv(args);
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\nstderr: {}", run.stdout, run.stderr));
    (run.code, v)
}

#[test]
fn fitting_plan_as_json() {
    let (code, v) = json(&[
        "plan",
        "--config",
        "data/configs/Qwen2-VL-2B-Instruct.json",
        "--gpu",
        "rtx4090",
        "--gpu-memory-utilization",
        "0.95",
        "--weights",
        "7.87GiB",
        "--non-torch",
        "0.25GiB",
        "--activation-peak",
        "11.06GiB",
        "--max-model-len",
        "32768",
        "--max-num-seqs",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["engine"], "vllm-v1");
    assert_eq!(v["fits"], true);
    assert_eq!(v["verdict"], "fits");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["spec"]["bytes_per_token"], 28_672);
    assert_eq!(v["spec"]["num_kv_heads"], 2);
    assert_eq!(v["spec"]["kv_dtype"], "bf16");
    assert_eq!(v["budget"]["gpu"], "rtx4090");
    assert_eq!(v["budget"]["device_bytes"], 25_383_256_719u64);
    assert_eq!(v["budget"]["weights_origin"]["kind"], "given");
    let capacity = v["blocks"]["token_capacity"].as_u64().unwrap();
    assert!(
        (capacity as f64 - 122_750.0).abs() / 122_750.0 < 0.005,
        "{capacity}"
    );
    assert_eq!(capacity, v["blocks"]["num_blocks"].as_u64().unwrap() * 16);
    // vLLM keeps one block as its null block.
    assert_eq!(
        v["blocks"]["usable_blocks"].as_u64().unwrap() + 1,
        v["blocks"]["num_blocks"].as_u64().unwrap()
    );
    assert_eq!(v["blocks"]["blocks_per_seq"], 2048);
    assert_eq!(v["concurrency"]["full_length_seqs"], 3);
    assert_eq!(v["concurrency"]["max_num_seqs_fits"], true);
    assert_eq!(v["max_model_len"], 32_768);
    assert!(v["error"].is_null());
}

#[test]
fn refusal_as_json_carries_the_message_and_fixes() {
    let (code, v) = json(&[
        "plan",
        "--engine",
        "vllm-v0",
        "--layers",
        "28",
        "--kv-heads",
        "2",
        "--head-dim",
        "128",
        "--kv-dtype",
        "bf16",
        "--kv-cache-memory",
        "2246049792",
        "--max-model-len",
        "128000",
        "--json",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["fits"], false);
    assert_eq!(v["verdict"], "max_model_len_too_large");
    assert_eq!(v["blocks"]["token_capacity"], 78_336);
    assert_eq!(v["advice"]["largest_max_model_len"], 78_336);
    assert_eq!(v["advice"]["needed_kv_bytes"], 8_000u64 * 458_752);
    assert_eq!(v["advice"]["fp8_token_capacity"], 156_672);
    assert!(v["error"].as_str().unwrap().starts_with(
        "The model's max seq len (128000) is larger than the maximum number of tokens that can be stored in KV cache (78336)."
    ));
}

#[test]
fn v1_refusal_as_json_has_vllms_numbers() {
    let (code, v) = json(&[
        "plan",
        "--layers",
        "28",
        "--kv-heads",
        "2",
        "--head-dim",
        "128",
        "--kv-dtype",
        "bf16",
        "--kv-cache-memory",
        "2246049792",
        "--max-model-len",
        "128000",
        "--json",
    ]);
    assert_eq!(code, 1);
    assert_eq!(v["engine"], "vllm-v1");
    assert_eq!(v["blocks"]["num_blocks"], 4_896);
    assert_eq!(v["blocks"]["usable_blocks"], 4_895);
    assert_eq!(v["advice"]["estimated_max_model_len"], 78_320);
    assert_eq!(v["advice"]["largest_max_model_len"], 78_320);
    assert_eq!(v["advice"]["needed_kv_bytes"], 8_000u64 * 458_752);
    assert_eq!(v["advice"]["available_kv_bytes"], 4_895u64 * 458_752);
    // The direct budget that fits: the 8000 blocks plus the null block.
    assert_eq!(v["advice"]["min_kv_cache_bytes"], 8_001u64 * 458_752);
    assert_eq!(v["advice"]["fp8_fits"], true);
    assert!(v["error"].as_str().unwrap().starts_with(
        "To serve at least one request with the model's max seq len (128000), (3.42 GiB KV cache is needed"
    ));
}

#[test]
fn mla_model_as_json() {
    let (code, v) = json(&[
        "plan",
        "--config",
        "data/configs/DeepSeek-V2-Lite.json",
        "--kv-cache-memory",
        "1GiB",
        "--max-model-len",
        "8192",
        "--json",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["spec"]["mla"]["kv_lora_rank"], 512);
    assert_eq!(v["spec"]["mla"]["qk_rope_head_dim"], 64);
    assert!(v["spec"]["num_kv_heads"].is_null());
    assert_eq!(v["spec"]["bytes_per_token"], 27 * 576 * 2);
}
