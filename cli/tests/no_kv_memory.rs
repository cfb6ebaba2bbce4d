//! When weights, activations and non-torch memory exceed the usable memory,
//! the tool exits 1 and shows the breakdown.

mod common;
use common::plan_seed;

#[test]
fn nothing_left_for_the_cache_exits_1_with_the_breakdown() {
    let run = plan_seed(&[
        "--gpu",
        "rtx4090",
        "--gpu-memory-utilization",
        "0.5",
        "--weights",
        "7.87GiB",
        "--non-torch",
        "0.25GiB",
        "--activation-peak",
        "11.06GiB",
        "--max-model-len",
        "4096",
    ]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(
        "weights 7.87 GiB + activations 11.06 GiB + non-torch 0.25 GiB = 19.18 GiB exceed 0.50 × 23.64 GiB = 11.82 GiB"
    ), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("Raise gpu_memory_utilization to at least 0.82"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("= KV cache             -7.36 GiB"),
        "{}",
        run.stdout
    );
    // No plan, so no block table.
    assert!(!run.stdout.contains("token capacity"), "{}", run.stdout);
}

#[test]
fn less_than_one_block_exits_1() {
    let run = plan_seed(&["--kv-cache-memory", "458751", "--max-model-len", "16"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("smaller than one block (458752 bytes)"),
        "{}",
        run.stdout
    );
}
