//! `pagedkv simulate` end to end: the no-argument comparison, JSON, the plot,
//! and a malformed trace.

mod common;
use common::{pagedkv, workspace_root};

#[test]
fn no_arguments_print_the_default_comparison() {
    let run = pagedkv(&["simulate"]);
    assert_eq!(run.code, 0, "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("<embedded sharegpt_first_turn.csv> (11811 requests"),
        "{}",
        run.stdout
    );
    let header = run
        .stdout
        .lines()
        .find(|l| l.starts_with("policy"))
        .expect("a table header");
    for column in ["tokens", "frag", "waste", "batch", "preempt", "rejected", "tok/s"] {
        assert!(header.contains(column), "{header}");
    }
    for policy in [
        "paged16 ",
        "reserve-max ",
        "reserve-pow2 ",
        "reserve-oracle ",
        "paged1 ",
        "paged128 ",
    ] {
        assert!(
            run.stdout.lines().any(|l| l.starts_with(policy)),
            "{policy} missing:\n{}",
            run.stdout
        );
    }
    // Aligned: every row of the table is as long as the header or shorter only by trailing cells.
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("policy"))
        .take(10)
        .collect();
    assert!(rows.iter().all(|r| r.len() == header.len()), "{rows:#?}");
    // The README shows this very table.
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    for row in rows {
        assert!(
            readme.contains(row),
            "README.md's simulate table is stale; this row is missing:\n{row}"
        );
    }
}

#[test]
fn json_parses_and_carries_summaries_and_series() {
    let run = pagedkv(&[
        "simulate",
        "--limit",
        "500",
        "--policies",
        "paged16,reserve-oracle",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    assert_eq!(v["workload"]["requests"], 500);
    assert_eq!(v["scenario"]["token_slots"], 13_745);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["policy"], "paged16");
    assert!(runs[0]["token_share"].as_f64().unwrap() > 0.96);
    let series = runs[1]["series"].as_array().unwrap();
    assert!(!series.is_empty() && series.len() <= 500);
}

#[test]
fn csv_has_one_row_per_policy() {
    let run = pagedkv(&[
        "simulate",
        "--limit",
        "100",
        "--policies",
        "paged8,reserve-max",
        "--csv",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("policy,pool_token_share,"));
    assert!(lines[0].contains(",ttft_p99_s,") && lines[0].ends_with(",requests_per_s"));
    assert!(lines[1].starts_with("paged8,") && lines[2].starts_with("reserve-max,"));
}

#[test]
fn plot_writes_an_svg() {
    let path = std::env::temp_dir().join(format!("pagedkv-sim-{}.svg", std::process::id()));
    let run = pagedkv(&[
        "simulate",
        "--limit",
        "300",
        "--policies",
        "paged16,reserve-pow2",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let svg = std::fs::read_to_string(&path).expect("the plot was written");
    std::fs::remove_file(&path).ok();
    assert!(svg.contains("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("paged16") && svg.contains("reserve-pow2") && svg.contains("token states"));
}

#[test]
fn malformed_trace_exits_2_with_file_line_and_reason() {
    let path = std::env::temp_dir().join(format!("pagedkv-bad-trace-{}.csv", std::process::id()));
    std::fs::write(&path, "conversation,prompt_tokens,output_tokens\n0,10,20\n1,12\n").unwrap();
    let run = pagedkv(&["simulate", "--trace", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(run.code, 2, "{}", run.stdout);
    let expected = format!("{}:3: 2 fields, but the header has 3 columns", path.display());
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

#[test]
fn bad_arguments_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["simulate", "--policies", "paged16,lru"][..], "--policies"),
        (&["simulate", "--rate", "0"][..], "--rate"),
        (
            &["simulate", "--max-num-batched-tokens", "100"][..],
            "--max-num-batched-tokens",
        ),
        (&["simulate", "--num-requests", "5"][..], "--synthetic"),
    ] {
        let run = pagedkv(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(flag), "{args:?}: {}", run.stderr);
    }
    assert!(workspace_root()
        .join("data/traces/sharegpt_first_turn.csv")
        .exists());
}

#[test]
fn synthetic_multiturn_with_prefix_caching_hits_the_history() {
    let run = pagedkv(&[
        "simulate",
        "--synthetic",
        "--num-requests",
        "200",
        "--turns",
        "4",
        "--system-prompt-len",
        "200",
        "--rate",
        "1",
        "--think-time",
        "fixed:1",
        "--num-blocks",
        "5000",
        "--seed",
        "3",
        "--policies",
        "paged16-prefix,paged16",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let hit = v["runs"][0]["prefix_hit_rate"].as_f64().unwrap();
    assert!(hit > 0.5, "{hit}");
    assert_eq!(v["runs"][1]["prefix_hit_rate"].as_f64().unwrap(), 0.0);
    assert_eq!(v["workload"]["closed_loop"], true);
    let ttft = &v["runs"][0]["latency"]["ttft_s"];
    assert!(ttft["p50"].as_f64().unwrap() <= ttft["p99"].as_f64().unwrap());
}

/// `pagedkv simulate --config data/configs/{model}.json --kv-cache-memory {memory}`
/// with `more` flags; exits 0.
fn simulate_model(model: &str, memory: &str, more: &[&str]) -> common::Run {
    let config = workspace_root().join(format!("data/configs/{model}.json"));
    let mut args = vec![
        "simulate",
        "--config",
        config.to_str().unwrap(),
        "--kv-cache-memory",
        memory,
    ];
    args.extend_from_slice(more);
    let run = pagedkv(&args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run
}

/// A JSON run's KV bytes held per token of context.
fn kv_per_token(run: &serde_json::Value) -> f64 {
    run["kv_bytes_per_context_token"].as_f64().unwrap()
}

/// A hybrid model (gpt-oss-20b: 128-token sliding windows alternating with
/// full attention) runs as two KV cache groups, and each paged policy runs
/// again with every layer planned as full attention in the same memory.
#[test]
fn a_hybrid_config_reports_the_memory_saved_against_full_attention() {
    let run = simulate_model(
        "gpt-oss-20b",
        "1GiB",
        &[
            "--max-model-len",
            "8192",
            "--limit",
            "1500",
            "--policies",
            "paged16,reserve-oracle",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    let groups = v["scenario"]["kv_cache_groups"].as_array().unwrap();
    let kinds: Vec<&str> = groups.iter().map(|g| g["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sliding_window(128)", "full"]);
    assert!(groups.iter().all(|g| g["layers"] == 12));
    // 24 layers x 8 KV heads x 64 x 2 (K and V) x 2 bytes = 48 KiB a token;
    // a block of 16 tokens holds one group's 12 layers.
    assert_eq!(v["scenario"]["bytes_per_block_of_16"], 16 * 24 * 1024);
    let hybrid = &v["runs"][0];
    let full = v["full_attention"]["runs"].as_array().unwrap();
    assert_eq!(full.len(), 1, "only paged policies run again");
    let full = &full[0];
    assert_eq!(full["policy"], "paged16");
    let per_token = kv_per_token;
    // No prefix sharing here: full attention holds at least every token's 48 KiB,
    // the hybrid model at least the full half's 24 KiB, and well below full attention.
    assert!(per_token(full) >= 49_152.0, "{}", per_token(full));
    assert!(per_token(hybrid) >= 24_576.0, "{}", per_token(hybrid));
    assert!(
        per_token(hybrid) < 0.8 * per_token(full),
        "{} vs {}",
        per_token(hybrid),
        per_token(full)
    );
    // The memory binds: the released window blocks run a larger batch with fewer preemptions.
    assert!(hybrid["mean_running"].as_f64() > full["mean_running"].as_f64());
    assert!(hybrid["preemptions"].as_u64() < full["preemptions"].as_u64());
    assert!(
        v["runs"][1]["kv_bytes_per_context_token"].is_null(),
        "reservations hold no blocks"
    );

    let text = simulate_model(
        "gpt-oss-20b",
        "1GiB",
        &["--limit", "200", "--policies", "paged16"],
    );
    assert!(
        text.stdout
            .contains("KV cache groups: sliding_window(128) (12 layers), full (12 layers)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("against every layer planned as full attention"),
        "{}",
        text.stdout
    );
}

/// A window longer than every sequence (gemma-2-9b's 4096 under max_model_len
/// 2048) releases nothing: the hybrid run is the full-attention run, but for
/// prompts the hybrid run takes chunk by chunk (it allocates a long prompt's
/// blocks as its chunks run). Watermark 0: a 1% watermark rounds to different
/// block counts in pools of different block sizes.
#[test]
fn a_window_longer_than_every_sequence_saves_nothing() {
    let run = simulate_model(
        "gemma-2-9b",
        "2GiB",
        &["--limit", "800", "--policies", "paged16-wm0", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("one JSON object");
    let (hybrid, full) = (&v["runs"][0], &v["full_attention"]["runs"][0]);
    for field in ["preemptions", "steps", "finished", "generated_tokens"] {
        assert_eq!(hybrid[field], full[field], "{field}");
    }
    let per_token = kv_per_token;
    let gap = (per_token(hybrid) - per_token(full)).abs() / per_token(full);
    assert!(gap < 1e-4, "{} vs {}", per_token(hybrid), per_token(full));
}

/// README.md shows this command's comparison with full attention.
#[test]
fn readme_hybrid_comparison_is_current() {
    let run = simulate_model(
        "gpt-oss-20b",
        "2GiB",
        &["--max-model-len", "8192", "--policies", "paged16,paged16-vllm"],
    );
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("against every layer"))
        .take(4)
        .chain(run.stdout.lines().filter(|l| l.starts_with("KV cache groups")))
        .collect();
    assert_eq!(rows.len(), 5, "{}", run.stdout);
    for row in rows {
        assert!(
            readme.contains(row),
            "README.md's hybrid simulate output is stale; missing:\n{row}"
        );
    }
}
