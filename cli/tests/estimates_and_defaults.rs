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
            .contains("131072 tokens = 8192 blocks (config max_position_embeddings)"),
        "{}",
        run.stdout
    );
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
        "60000",
        "--max-num-seqs",
        "8",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "max_num_seqs=8 does NOT fit at full length: only 2 sequences of 60000 tokens fit at once"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("max_num_seqs=2 never does"), "{}", run.stdout);
}

#[test]
fn sliding_window_is_reported_and_average_length_counted() {
    let run = pagedkv(&[
        "plan",
        "--config",
        "data/configs/Mistral-7B-v0.1.json",
        "--kv-cache-memory",
        "8GiB",
        "--avg-seq-len",
        "1000",
    ]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(number_after(&run.stdout, "sliding window"), 4_096);
    // 8 GiB / (32 × 8 × 256 × 2 × 16 bytes) = 4096 blocks; 1000 tokens = 63 blocks.
    assert_eq!(number_after(&run.stdout, "token capacity"), 65_536);
    assert!(
        run.stdout.contains("65 sequences of 1000 tokens (given)"),
        "{}",
        run.stdout
    );
}
