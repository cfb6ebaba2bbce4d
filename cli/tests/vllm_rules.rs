//! What `--engine vllm-v1` checks and assumes as vLLM 0.33.0 does, and vLLM's
//! spellings of the flags.

mod common;
use common::{pagedkv, Run};
use serde_json::Value;

fn json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let run = pagedkv(&all);
    let v = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}{}", run.stdout, run.stderr));
    (run.code, v)
}

fn refused(run: &Run, flag: &str, says: &str) {
    let shown = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 2, "{shown}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{shown}");
    assert!(run.stderr.contains(flag), "{shown}");
    assert!(run.stderr.contains(says), "{shown}");
}

const QWEN2_VL: &str = "data/configs/Qwen2-VL-2B-Instruct.json";

#[test]
fn tensor_parallelism_must_divide_the_attention_heads() {
    // Qwen2-VL-2B: 12 attention heads, 2 KV heads. TP 8 would replicate the KV
    // heads, but 12 attention heads do not split over 8 ranks.
    let run = pagedkv(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "-tp",
        "8",
    ]);
    refused(&run, "--tensor-parallel-size", "12 attention heads");
    let run = pagedkv(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "-tp",
        "3",
    ]);
    refused(&run, "--tensor-parallel-size", "2 KV heads");
    let (code, v) = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "-tp",
        "4",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["spec"]["tensor_parallel_size"], 4);
    // 2 KV heads over 4 ranks: one (replicated) head per GPU.
    assert_eq!(v["spec"]["bytes_per_token"], 28 * 256 * 2);
}

#[test]
fn block_sizes_no_cuda_backend_takes_are_refused_unless_allowed() {
    let base = [
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "--block-size",
        "8",
    ];
    refused(&pagedkv(&base), "--block-size", "not a multiple of 16");
    let mut allowed = base.to_vec();
    allowed.push("--allow-non-cuda-block-size");
    assert_eq!(pagedkv(&allowed).code, 0);
    // The seed's engine took any block size.
    let mut v0 = base.to_vec();
    v0.extend(["--engine", "vllm-v0"]);
    assert_eq!(pagedkv(&v0).code, 0);
    let (_, v) = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "--block-size",
        "32",
    ]);
    assert_eq!(v["spec"]["bytes_per_block"], 32 * 28_672);
}

#[test]
fn kv_dtype_auto_runs_float32_and_missing_dtypes_in_bf16() {
    // gemma-2-9b's config says float32; vLLM runs it (and caches it) in bfloat16.
    let (_, auto) = json(&[
        "plan",
        "--config",
        "data/configs/gemma-2-9b.json",
        "--kv-cache-memory",
        "10G",
    ]);
    assert_eq!(auto["spec"]["kv_dtype"], "bf16");
    assert_eq!(auto["spec"]["bytes_per_token"], 42 * 8 * 512 * 2);
    assert!(
        auto["notes"]
            .to_string()
            .contains("float32 is downcast to bfloat16"),
        "{}",
        auto["notes"]
    );
    // The seed's engine took the config's float32.
    let (_, v0) = json(&[
        "plan",
        "--config",
        "data/configs/gemma-2-9b.json",
        "--kv-cache-memory",
        "10G",
        "--engine",
        "vllm-v0",
    ]);
    assert_eq!(v0["spec"]["kv_dtype"], "fp32");
    // The weights estimate follows the model dtype too: bf16, not float32.
    let run = pagedkv(&[
        "plan",
        "--config",
        "data/configs/gemma-2-9b.json",
        "--gpu",
        "a100-40gb",
    ]);
    let weights = run.stdout.lines().find(|l| l.contains("− weights")).unwrap();
    assert!(weights.contains("× 2 bytes (bf16)"), "{weights}");
    // A config without a dtype gets bf16, with a note.
    let dir = tempdir("no-dtype");
    let text = std::fs::read_to_string(common::workspace_root().join("data/configs/Qwen3-32B.json"))
        .unwrap()
        .replace("\"torch_dtype\": \"bfloat16\",", "");
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    let (code, v) = json(&[
        "plan",
        "--config",
        path.to_str().unwrap(),
        "--kv-cache-memory",
        "20G",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["spec"]["kv_dtype"], "bf16");
    assert!(
        v["notes"].to_string().contains("no torch_dtype"),
        "{}",
        v["notes"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pagedkv-vllm-rules-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mla_only_for_the_model_types_vllm_treats_as_mla() {
    let (_, mla) = json(&[
        "plan",
        "--config",
        "data/configs/DeepSeek-V2-Lite.json",
        "--kv-cache-memory",
        "4GiB",
    ]);
    assert_eq!(mla["spec"]["mla"]["kv_lora_rank"], 512);
    // The same config under a model type vLLM does not run as MLA: its KV heads.
    let dir = tempdir("not-mla");
    let text = std::fs::read_to_string(common::workspace_root().join("data/configs/DeepSeek-V2-Lite.json"))
        .unwrap()
        .replace("\"model_type\": \"deepseek_v2\"", "\"model_type\": \"my_model\"");
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    let (_, v) = json(&[
        "plan",
        "--config",
        path.to_str().unwrap(),
        "--kv-cache-memory",
        "4GiB",
    ]);
    assert!(v["spec"]["mla"].is_null(), "{}", v["spec"]);
    assert_eq!(v["spec"]["num_kv_heads"], 16);
    assert!(v["notes"].to_string().contains("not as MLA"), "{}", v["notes"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn int8_and_fp32_are_labelled_as_not_vllm_choices() {
    for dtype in ["int8", "fp32"] {
        let (code, v) = json(&[
            "plan",
            "--config",
            QWEN2_VL,
            "--kv-cache-memory",
            "4GiB",
            "--kv-cache-dtype",
            dtype,
        ]);
        assert_eq!(code, 0);
        assert!(
            v["notes"]
                .to_string()
                .contains("not one of vLLM's --kv-cache-dtype choices"),
            "{dtype}: {}",
            v["notes"]
        );
    }
    let (_, v) = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "4GiB",
        "--kv-cache-dtype",
        "fp8",
    ]);
    assert!(!v["notes"].to_string().contains("choices"), "{}", v["notes"]);
}

#[test]
fn a_config_without_kv_heads_is_planned_as_multi_head_attention() {
    let dir = tempdir("mha");
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        r#"{"model_type": "llama", "num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512,
            "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 2048, "torch_dtype": "float16"}"#,
    )
    .unwrap();
    let (code, v) = json(&[
        "plan",
        "--config",
        path.to_str().unwrap(),
        "--kv-cache-memory",
        "1GiB",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["spec"]["num_kv_heads"], 8);
    assert!(
        v["notes"].to_string().contains("planned as multi-head attention"),
        "{}",
        v["notes"]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cuda_graph_memory_is_a_budget_component_zero_unless_given() {
    let base = [
        "plan",
        "--config",
        QWEN2_VL,
        "--gpu",
        "rtx4090",
        "--weights",
        "5GiB",
        "--activation-peak",
        "2GiB",
    ];
    let (_, none) = json(&base);
    assert_eq!(none["budget"]["cudagraph_bytes"], 0);
    assert_eq!(none["budget"]["cudagraph_origin"]["kind"], "default");
    assert!(
        none["notes"].to_string().contains("--cudagraph-memory"),
        "{}",
        none["notes"]
    );
    let mut given = base.to_vec();
    given.extend(["--cudagraph-memory", "1GiB"]);
    let (_, v) = json(&given);
    assert_eq!(v["budget"]["cudagraph_bytes"], 1u64 << 30);
    assert_eq!(
        v["budget"]["kv_cache_bytes"].as_u64().unwrap() + (1 << 30),
        none["budget"]["kv_cache_bytes"].as_u64().unwrap()
    );
}

#[test]
fn utilization_defaults_and_rounding_per_engine() {
    let base = [
        "plan",
        "--config",
        QWEN2_VL,
        "--gpu",
        "rtx4090",
        "--weights",
        "5GiB",
        "--activation-peak",
        "2GiB",
    ];
    let (_, v1) = json(&base);
    assert_eq!(v1["budget"]["gpu_memory_utilization"], 0.92);
    // ceil(25383256719 × 0.92)
    assert_eq!(v1["budget"]["usable_bytes"], 23_352_596_182u64);
    let mut v0_args = base.to_vec();
    v0_args.extend(["--engine", "vllm-v0"]);
    let (_, v0) = json(&v0_args);
    assert_eq!(v0["budget"]["gpu_memory_utilization"], 0.9);
    assert_eq!(
        v0["budget"]["usable_bytes"],
        (25_383_256_719f64 * 0.9).floor() as u64
    );
}

#[test]
fn vllm_spellings_of_flags_and_sizes() {
    let pagedkv_spelling = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "10GiB",
        "--kv-dtype",
        "fp8",
        "--tensor-parallel-size",
        "2",
        "--pipeline-parallel-size",
        "2",
        "--max-model-len",
        "32000",
    ]);
    let vllm_spelling = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory-bytes",
        "10G",
        "--kv-cache-dtype",
        "fp8",
        "-tp",
        "2",
        "-pp=2",
        "--max-model-len",
        "32k",
    ]);
    assert_eq!(pagedkv_spelling, vllm_spelling);
    assert_eq!(vllm_spelling.1["spec"]["pipeline_parallel_size"], 2);
    // 10g is 10^10 bytes, 32K is 32768 tokens (vLLM's human_readable_int).
    let (_, v) = json(&[
        "plan",
        "--config",
        QWEN2_VL,
        "--kv-cache-memory",
        "10g",
        "--max-model-len",
        "32K",
    ]);
    assert_eq!(v["budget"]["kv_cache_bytes"], 10_000_000_000u64);
    assert_eq!(v["max_model_len"], 32_768);
}

#[test]
fn disable_sliding_window_and_hybrid_manager() {
    let gemma = "data/configs/gemma-2-9b.json";
    let (_, hybrid) = json(&["plan", "--config", gemma, "--kv-cache-memory", "10G"]);
    assert_eq!(hybrid["spec"]["groups"].as_array().unwrap().len(), 2);
    assert_eq!(hybrid["max_model_len"], 8192);
    // vLLM's --disable-sliding-window: every layer full, max_model_len capped at the window.
    let (code, v) = json(&[
        "plan",
        "--config",
        gemma,
        "--kv-cache-memory",
        "10G",
        "--disable-sliding-window",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["max_model_len"], 4096);
    assert_eq!(v["spec"]["groups"].as_array().unwrap().len(), 1);
    assert_eq!(v["blocks"]["blocks_per_seq"], 256);
    let run = pagedkv(&[
        "plan",
        "--config",
        gemma,
        "--kv-cache-memory",
        "10G",
        "--disable-sliding-window",
        "--max-model-len",
        "8192",
    ]);
    refused(&run, "--max-model-len", "sliding_window");
    // vLLM's --disable-hybrid-kv-cache-manager: one group, sliding layers sized as full.
    let (_, v) = json(&[
        "plan",
        "--config",
        gemma,
        "--kv-cache-memory",
        "10G",
        "--disable-hybrid-kv-cache-manager",
    ]);
    let groups = v["spec"]["groups"].as_array().unwrap();
    assert_eq!((groups.len(), groups[0]["kind"].as_str()), (1, Some("full")));
    assert_eq!(v["blocks"]["blocks_per_seq"], 512);
}

#[test]
fn in_flight_tokens_follow_async_scheduling_and_batched_tokens() {
    let gpt = "data/configs/gpt-oss-20b.json";
    let blocks = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--config",
            gpt,
            "--kv-cache-memory",
            "10G",
            "--max-num-batched-tokens",
            "8192",
        ];
        args.extend_from_slice(extra);
        let (_, v) = json(&args);
        (
            v["max_in_flight_tokens"].as_u64().unwrap(),
            v["blocks"]["blocks_per_seq"].as_u64().unwrap(),
        )
    };
    // 2 × 8192 in flight: a sliding layer keeps ceil((127 + 16384) / 16) + 1 = 1033 blocks.
    assert_eq!(blocks(&[]), (16_384, 8192 + 1033));
    assert_eq!(blocks(&["--no-async-scheduling"]), (8192, 8192 + 521));
    // The default batched tokens: vllm serve's for the GPU (8192 on an H100, 2048 on an RTX 4090).
    let (_, h100) = json(&["plan", "--config", gpt, "--gpu", "h100-80gb"]);
    assert_eq!(h100["max_num_batched_tokens"], 8192);
    let (_, rtx) = json(&["plan", "--config", gpt, "--gpu", "rtx4090", "--weights", "13GiB"]);
    assert_eq!(rtx["max_num_batched_tokens"], 2048);
}

#[test]
fn max_model_len_auto_picks_the_longest_that_fits() {
    let scout = "data/configs/Llama-4-Scout-17B-16E-Instruct.json";
    // vLLM 0.33.0's estimate for 2 GiB (see fixtures/vllm_plan.json): 10912.
    let (code, v) = json(&[
        "plan",
        "--config",
        scout,
        "--kv-cache-memory",
        "2GiB",
        "--max-num-batched-tokens",
        "2048",
        "--max-model-len",
        "auto",
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["max_model_len"], 10_912);
    assert_eq!(v["max_model_len_origin"]["kind"], "estimate");
    // Too little for even one token (the 4 groups need 4 blocks and the null block 1;
    // 3 blocks' worth are given): exit 1, as vLLM's auto-fit refuses.
    let run = pagedkv(&[
        "plan",
        "--config",
        scout,
        "--kv-cache-memory",
        &(3 * 786_432).to_string(),
        "--max-model-len",
        "auto",
    ]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("DOES NOT FIT"), "{}", run.stdout);
    // Without a config there is no maximum to search up to.
    let run = pagedkv(&[
        "plan",
        "--layers",
        "2",
        "--kv-heads",
        "1",
        "--head-dim",
        "16",
        "--kv-dtype",
        "bf16",
        "--kv-cache-memory",
        "1GiB",
        "--max-model-len",
        "auto",
    ]);
    refused(&run, "--max-model-len", "config");
}
