//! The README's first command works as written: Qwen2-VL-2B on an RTX 4090 at
//! utilization 0.95 holds about 122,750 tokens, so max_model_len 60000 fits
//! and two full-length sequences run at once.

mod common;
use common::{number_after, pagedkv, workspace_root};

const README_ARGS: &str = "plan --config data/configs/Qwen2-VL-2B-Instruct.json --gpu rtx4090 --gpu-memory-utilization 0.95 --weights 7.87GiB --non-torch 0.25GiB --activation-peak 11.06GiB --max-model-len 60000 --max-num-seqs 2";

#[test]
fn readme_still_shows_this_command() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let command = format!("cargo run --release -p pagedkv-cli -- {README_ARGS}");
    assert!(
        readme.contains(&command),
        "README.md no longer contains:\n{command}"
    );
}

#[test]
fn readme_command_fits_with_two_full_length_sequences() {
    let args: Vec<&str> = README_ARGS.split(' ').collect();
    let run = pagedkv(&args);
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.stderr.is_empty(), "{}", run.stderr);
    let capacity = number_after(&run.stdout, "token capacity");
    assert!(
        (capacity as f64 - 122_750.0).abs() / 122_750.0 < 0.005,
        "capacity {capacity}"
    );
    assert_eq!(number_after(&run.stdout, "bytes per token"), 28_672);
    assert!(run.stdout.contains("FITS"), "{}", run.stdout);
    assert!(
        run.stdout.contains("2 sequences of 60000 tokens"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("max_num_seqs=2 fits"), "{}", run.stdout);
    assert!(run.stdout.contains("3.28 GiB"), "KV budget:\n{}", run.stdout);
}
