//! Unusable input exits 2 with one line on stderr that names the flag or
//! field, and never a panic.

mod common;
use common::pagedkv;

const SHAPE: [&str; 8] = [
    "plan",
    "--layers",
    "28",
    "--kv-heads",
    "2",
    "--head-dim",
    "128",
    "--kv-dtype",
];

fn shaped(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = SHAPE.iter().map(|s| s.to_string()).collect();
    v.push("bf16".into());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn check(args: Vec<String>, must_name: &str) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = pagedkv(&refs);
    let shown = format!("args {args:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 2, "{shown}");
    assert!(run.stdout.is_empty(), "{shown}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{shown}");
    assert!(run.stderr.starts_with("error: "), "{shown}");
    assert!(run.stderr.contains(must_name), "{shown}");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("backtrace"),
        "{shown}"
    );
}

#[test]
fn utilization_outside_0_1() {
    for u in ["1.5", "0", "-0.2", "NaN"] {
        check(
            shaped(&[
                "--gpu",
                "rtx4090",
                "--weights",
                "1GiB",
                "--activation-peak",
                "1GiB",
                "--max-model-len",
                "1000",
                "--gpu-memory-utilization",
                u,
            ]),
            "gpu-memory-utilization",
        );
    }
}

#[test]
fn unknown_gpu_lists_the_known_ones() {
    let args = shaped(&[
        "--gpu",
        "rtx9090",
        "--weights",
        "1GiB",
        "--activation-peak",
        "1GiB",
        "--max-model-len",
        "1000",
    ]);
    check(args.clone(), "--gpu");
    check(args, "rtx4090, a100-40gb, l40s, h100-80gb, a100-80gb, h200");
}

#[test]
fn unparsable_sizes_and_numbers() {
    check(
        shaped(&["--kv-cache-memory", "7.8.7GiB", "--max-model-len", "10"]),
        "--kv-cache-memory",
    );
    check(
        shaped(&["--kv-cache-memory", "12XB", "--max-model-len", "10"]),
        "unknown unit",
    );
    check(
        shaped(&["--kv-cache-memory", "1GiB", "--max-model-len", "lots"]),
        "--max-model-len",
    );
    check(
        shaped(&["--kv-cache-memory", "0", "--max-model-len", "10"]),
        "kv-cache-memory",
    );
}

#[test]
fn unknown_dtype() {
    check(
        vec![
            "plan".into(),
            "--layers".into(),
            "2".into(),
            "--kv-heads".into(),
            "2".into(),
            "--head-dim".into(),
            "64".into(),
            "--kv-dtype".into(),
            "fp4".into(),
            "--kv-cache-memory".into(),
            "1GiB".into(),
            "--max-model-len".into(),
            "10".into(),
        ],
        "--kv-dtype",
    );
}

#[test]
fn missing_fields() {
    // No model shape at all.
    check(
        vec![
            "plan".into(),
            "--kv-cache-memory".into(),
            "1GiB".into(),
            "--kv-dtype".into(),
            "bf16".into(),
        ],
        "--layers",
    );
    // No GPU memory.
    check(shaped(&["--max-model-len", "10"]), "--gpu");
    // No max_model_len and no config to default it from.
    check(shaped(&["--kv-cache-memory", "1GiB"]), "--max-model-len");
    // Weights cannot be estimated without a config.
    check(
        shaped(&["--gpu", "rtx4090", "--max-model-len", "10"]),
        "--weights",
    );
}

#[test]
fn bad_config_files() {
    let dir = std::env::temp_dir().join(format!("pagedkv-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("truncated.json", r#"{"num_hidden_layers": 28,"#, "not valid JSON"),
        (
            "no-layers.json",
            r#"{"num_attention_heads": 12, "hidden_size": 1536}"#,
            "num_hidden_layers",
        ),
        (
            "nested.json",
            r#"{"text_config": {"num_hidden_layers": 2, "num_attention_heads": 4}}"#,
            "text_config.head_dim",
        ),
        (
            "string.json",
            r#"{"num_hidden_layers": "28", "num_attention_heads": 4, "head_dim": 64}"#,
            "num_hidden_layers",
        ),
    ];
    for (name, json, must_name) in cases {
        let path = dir.join(name);
        std::fs::write(&path, json).unwrap();
        check(
            vec![
                "plan".into(),
                "--config".into(),
                path.display().to_string(),
                "--kv-cache-memory".into(),
                "1GiB".into(),
                "--kv-dtype".into(),
                "bf16".into(),
                "--max-model-len".into(),
                "100".into(),
            ],
            must_name,
        );
    }
    check(
        vec![
            "plan".into(),
            "--config".into(),
            "data/configs/does-not-exist.json".into(),
            "--kv-cache-memory".into(),
            "1GiB".into(),
        ],
        "--config",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn conflicting_budgets() {
    check(
        shaped(&[
            "--kv-cache-memory",
            "1GiB",
            "--gpu",
            "rtx4090",
            "--max-model-len",
            "10",
        ]),
        "--kv-cache-memory",
    );
}

#[test]
fn negative_and_non_numeric_values_name_their_flag() {
    let counts = [
        "--layers",
        "--kv-heads",
        "--head-dim",
        "--block-size",
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--max-model-len",
        "--max-num-seqs",
        "--avg-seq-len",
        "--max-num-batched-tokens",
    ];
    let sizes = [
        "--kv-cache-memory",
        "--kv-cache-memory-bytes",
        "--gpu-memory",
        "--weights",
        "--activation-peak",
        "--non-torch",
        "--cudagraph-memory",
    ];
    for flag in counts.iter().chain(&sizes).chain(&["--gpu-memory-utilization"]) {
        for bad in ["-5", "-1G", "lots", "1e9"] {
            let run = pagedkv(&["plan", flag, bad]);
            let shown = format!("{flag} {bad}: code {} stderr {}", run.code, run.stderr);
            assert_eq!(run.code, 2, "{shown}");
            assert_eq!(run.stderr.trim_end().lines().count(), 1, "{shown}");
            // clap names the flag by its own spelling (aliases resolve to the main name).
            let main = if *flag == "--kv-cache-memory-bytes" {
                "--kv-cache-memory"
            } else {
                flag
            };
            assert!(run.stderr.contains(main), "{shown}");
            assert!(!run.stderr.contains("panicked"), "{shown}");
        }
    }
    // -tp and -pp are vLLM's spellings of the same flags.
    let run = pagedkv(&["plan", "-tp", "-2"]);
    assert!(
        run.code == 2 && run.stderr.contains("--tensor-parallel-size"),
        "{}",
        run.stderr
    );
    let run = pagedkv(&["plan", "-pp", "x"]);
    assert!(
        run.code == 2 && run.stderr.contains("--pipeline-parallel-size"),
        "{}",
        run.stderr
    );
}
