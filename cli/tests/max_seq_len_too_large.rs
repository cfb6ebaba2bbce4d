//! The seed case: 28 layers × 2 KV heads × 128 in bf16 with 2246049792 bytes of
//! KV cache. Under the seed's engine (`--engine vllm-v0`) it holds 78336 tokens,
//! so max_model_len 128000 exits 1 with that engine's sentence and the fixes;
//! under vLLM 0.33.0 (the default) one of the 4896 blocks is the null block,
//! the largest length that fits is 78320 and the refusal is today's.

mod common;
use common::{number_after, pagedkv, plan_seed};

const VLLM_SENTENCE: &str = "The model's max seq len (128000) is larger than the maximum number of tokens that can be stored in KV cache (78336).";

#[test]
fn direct_budget_gives_vllms_message_and_fixes() {
    let run = plan_seed(&[
        "--engine",
        "vllm-v0",
        "--kv-cache-memory",
        "2246049792",
        "--max-model-len",
        "128000",
    ]);
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
        "--engine",
        "vllm-v0",
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

/// vLLM 0.33.0's refusal of the seed, word for word (from its own
/// `_check_enough_kv_cache_memory`, see `fixtures/vllm_plan.json`).
const VLLM_V1_REFUSAL: &str = "To serve at least one request with the model's max seq len (128000), (3.42 GiB KV cache is needed, which is larger than the available KV cache memory (2.09 GiB). Based on the available memory, the estimated maximum model length is 78320. Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.";

#[test]
fn direct_budget_under_vllm_v1_holds_back_the_null_block() {
    let run = plan_seed(&["--kv-cache-memory", "2246049792", "--max-model-len", "128000"]);
    assert_eq!(run.code, 1, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!("\n{VLLM_V1_REFUSAL}\n")),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(VLLM_SENTENCE), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("4896 of 16 tokens (1 held back as vLLM's null block)"),
        "{}",
        run.stdout
    );
    assert_eq!(number_after(&run.stdout, "token capacity"), 78_320);
    assert!(
        run.stdout.contains("\n  - set max_model_len to at most 78320"),
        "{}",
        run.stdout
    );
    // 78320 fits, 78321 does not.
    for (len, code) in [("78320", 0), ("78321", 1)] {
        let run = plan_seed(&["--kv-cache-memory", "2246049792", "--max-model-len", len]);
        assert_eq!(run.code, code, "{len}:\n{}", run.stdout);
    }
}

/// Each fix the v1 refusal offers, applied alone, makes `pagedkv plan` pass.
#[test]
fn every_v1_fix_passes_vllms_check() {
    let seed = |extra: &[&str]| {
        let mut args = vec![
            "plan",
            "--layers",
            "28",
            "--kv-heads",
            "2",
            "--head-dim",
            "128",
            "--kv-dtype",
        ];
        args.extend_from_slice(extra);
        pagedkv(&args)
    };
    let device = [
        "--gpu",
        "rtx4090",
        "--weights",
        "7.87GiB",
        "--non-torch",
        "0.25GiB",
        "--activation-peak",
        "11.06GiB",
        "--gpu-memory-utilization",
        "0.9",
        "--max-model-len",
        "128000",
    ];
    let refused = seed(&[&["bf16"], &device[..]].concat());
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    let util: String = refused
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("- raise gpu_memory_utilization to "))
        .expect("a utilization fix")
        .to_string();
    let mut at_util = device.to_vec();
    let i = at_util.iter().position(|a| *a == "0.9").unwrap();
    at_util[i] = &util;
    let run = seed(&[&["bf16"], &at_util[..]].concat());
    assert_eq!(run.code, 0, "utilization {util}:\n{}", run.stdout);
    // One step lower does not fit.
    let lower = format!("{:.2}", util.parse::<f64>().unwrap() - 0.01);
    at_util[i] = &lower;
    assert_eq!(
        seed(&[&["bf16"], &at_util[..]].concat()).code,
        1,
        "utilization {lower}"
    );
    let largest = number_after(&refused.stdout, "- set max_model_len to at most");
    let mut shorter = device.to_vec();
    let largest_text = largest.to_string();
    *shorter.last_mut().unwrap() = &largest_text;
    assert_eq!(seed(&[&["bf16"], &shorter[..]].concat()).code, 0);
    assert!(refused.stdout.contains("- an fp8 KV cache"), "{}", refused.stdout);
    assert_eq!(seed(&[&["fp8"], &device[..]].concat()).code, 0);
    // Twice the tensor parallelism, with the weights split as the fix says.
    assert!(
        refused
            .stdout
            .contains("- tensor_parallel_size=2 (weights split across GPUs"),
        "{}",
        refused.stdout
    );
    let mut split = device.to_vec();
    split[3] = "3.935GiB";
    assert_eq!(seed(&[&["bf16", "-tp", "2"], &split[..]].concat()).code, 0);
    // A direct budget: the bytes offered are exactly enough.
    let direct = seed(&[
        "bf16",
        "--kv-cache-memory",
        "2246049792",
        "--max-model-len",
        "128000",
    ]);
    let bytes = number_after(&direct.stdout, "- give the KV cache at least");
    let (enough, short) = (bytes.to_string(), (bytes - 1).to_string());
    assert_eq!(
        seed(&["bf16", "--kv-cache-memory", &enough, "--max-model-len", "128000"]).code,
        0
    );
    assert_eq!(
        seed(&["bf16", "--kv-cache-memory", &short, "--max-model-len", "128000"]).code,
        1
    );
}
