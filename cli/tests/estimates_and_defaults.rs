//! Without --weights and --activation-peak the tool estimates them from the
//! config and says so; max_model_len defaults to max_position_embeddings; a
//! max_num_seqs that cannot hold full-length sequences is called out.

mod common;
use common::{number_after, pagedkv};
use serde_json::Value;

#[test]
fn estimated_weights_and_activations_are_labelled() {
    let run = pagedkv(&[
        "plan",
        "--config",
        "data/configs/Llama-3.1-8B-Instruct.json",
        "--gpu",
        "h100-80gb",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let weights = run.stdout.lines().find(|l| l.contains("− weights")).unwrap();
    assert!(
        weights.contains("estimate: 8.03B parameters × 2 bytes (bf16)"),
        "{weights}"
    );
    let activations = run
        .stdout
        .lines()
        .find(|l| l.contains("− activation peak"))
        .unwrap();
    assert!(activations.contains("estimate"), "{activations}");
    let non_torch = run.stdout.lines().find(|l| l.contains("− non-torch")).unwrap();
    assert!(non_torch.contains("default"), "{non_torch}");
    // max_model_len defaults to the config's max_position_embeddings.
    assert!(
        run.stdout
            .contains("131072 tokens = 8192 blocks per sequence (config max_position_embeddings)"),
        "{}",
        run.stdout
    );
    // vLLM 0.33.0's defaults: utilization 0.92, and `vllm serve`'s 8192 batched tokens on an H100.
    assert!(run.stdout.contains("× utilization 0.92"), "{}", run.stdout);
    assert!(activations.contains("8192 batched tokens"), "{activations}");
}

#[test]
fn estimates_are_marked_in_json_and_split_over_tensor_parallel_ranks() {
    let get = |tp: &str| -> Value {
        let run = pagedkv(&[
            "plan",
            "--config",
            "data/configs/Qwen2.5-7B-Instruct.json",
            "--gpu",
            "a100-40gb",
            "--tensor-parallel-size",
            tp,
            "--json",
        ]);
        serde_json::from_str(&run.stdout).unwrap()
    };
    let (one, two) = (get("1"), get("2"));
    assert_eq!(one["budget"]["weights_origin"]["kind"], "estimate");
    assert_eq!(one["budget"]["activation_peak_origin"]["kind"], "estimate");
    let w1 = one["budget"]["weights_bytes"].as_u64().unwrap();
    let w2 = two["budget"]["weights_bytes"].as_u64().unwrap();
    assert_eq!(w2, w1.div_ceil(2));
    // 4 KV heads over 2 GPUs: half the bytes per token.
    assert_eq!(
        two["spec"]["bytes_per_token"].as_u64().unwrap() * 2,
        one["spec"]["bytes_per_token"].as_u64().unwrap()
    );
}

#[test]
fn multimodal_estimate_says_what_it_leaves_out() {
    let run = pagedkv(&[
        "plan",
        "--config",
        "data/configs/Qwen2-VL-2B-Instruct.json",
        "--gpu",
        "rtx4090",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("the vision encoder is not counted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("encoder profiling run is not included"),
        "{}",
        run.stdout
    );
}

#[test]
fn too_many_seqs_for_full_length_is_called_out_with_the_number_that_fits() {
    let run = pagedkv(&[
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
        "8",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // 7672 blocks, 7671 usable (vLLM's null block), 2048 per 32768-token sequence.
    assert!(
        run.stdout.contains(
            "max_num_seqs=8 does NOT fit at full length: only 3 sequences of 32768 tokens fit at once"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("max_num_seqs=3 never does"), "{}", run.stdout);
}

#[test]
fn max_model_len_above_the_configs_needs_the_flag() {
    let base = [
        "plan",
        "--config",
        "data/configs/Qwen2-VL-2B-Instruct.json",
        "--kv-cache-memory",
        "4GiB",
        "--max-model-len",
        "60000",
    ];
    let run = pagedkv(&base);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .starts_with("error: invalid --max-model-len: 60000 is greater than"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("max_position_embeddings=32768"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--allow-long-max-model-len"),
        "{}",
        run.stderr
    );
    let mut allowed = base.to_vec();
    allowed.push("--allow-long-max-model-len");
    let run = pagedkv(&allowed);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[test]
fn sliding_window_sizes_the_layers_under_v1_and_is_only_reported_under_v0() {
    let mistral = |engine: &str| {
        pagedkv(&[
            "plan",
            "--config",
            "data/configs/Mistral-7B-v0.1.json",
            "--kv-cache-memory",
            "8GiB",
            "--avg-seq-len",
            "1000",
            "--engine",
            engine,
        ])
    };
    // vLLM 0.33.0: every layer keeps its 4096-token window plus 2 × 2048 tokens in
    // flight: a 32768-token sequence takes ceil(8191 / 16) + 1 = 513 blocks, a
    // 1000-token one 63 + 1 = 64, of the 4095 usable (8 GiB / 2 MiB, less the null block).
    let run = mistral("vllm-v1");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(number_after(&run.stdout, "sliding window"), 4_096);
    assert!(
        run.stdout.contains("32768 tokens = 513 blocks per sequence"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("7 sequences of 32768 tokens"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("63 sequences of 1000 tokens (given)"),
        "{}",
        run.stdout
    );
    // vLLM's V0 engine counted every token: 4096 blocks hold 65536 tokens, 2 full sequences.
    let run = mistral("vllm-v0");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(number_after(&run.stdout, "token capacity"), 65_536);
    assert!(run.stdout.contains("reported only"), "{}", run.stdout);
    assert!(
        run.stdout.contains("65 sequences of 1000 tokens (given)"),
        "{}",
        run.stdout
    );
}
