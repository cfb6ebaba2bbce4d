//! The seed case: 28 layers × 2 KV heads × 128 in bf16 with 2246049792 bytes of
//! KV cache holds 78336 tokens, so max_model_len 128000 exits 1 with vLLM's
//! sentence and the fixes.

mod common;
use common::{number_after, plan_seed};

const VLLM_SENTENCE: &str = "The model's max seq len (128000) is larger than the maximum number of tokens that can be stored in KV cache (78336).";

#[test]
fn direct_budget_gives_vllms_message_and_fixes() {
    let run = plan_seed(&["--kv-cache-memory", "2246049792", "--max-model-len", "128000"]);
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains(VLLM_SENTENCE), "{all}");
    assert_eq!(number_after(&run.stdout, "token capacity"), 78_336);
    assert!(all.contains("\n  - set max_model_len to at most 78336"), "{all}");
    assert!(all.contains("DOES NOT FIT"), "{all}");
    assert!(!all.contains("FITS:"), "{all}");
}

#[test]
fn device_profile_at_0_9_holds_about_78336_and_suggests_0_96() {
    let run = plan_seed(&[
        "--gpu",
        "rtx4090",
        "--gpu-memory-utilization",
        "0.9",
        "--weights",
        "7.87GiB",
        "--non-torch",
        "0.25GiB",
        "--activation-peak",
        "11.06GiB",
        "--max-model-len",
        "128000",
    ]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let capacity = number_after(&run.stdout, "token capacity");
    assert!(
        (capacity as f64 - 78_336.0).abs() / 78_336.0 < 0.005,
        "{capacity}"
    );
    assert!(
        run.stdout.contains("= KV cache              2.10 GiB"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("raise gpu_memory_utilization to 0.96"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!(
        "The model's max seq len (128000) is larger than the maximum number of tokens that can be stored in KV cache ({capacity})."
    )));
}
