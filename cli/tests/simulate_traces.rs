//! `pagedkv simulate` on production traces and sweeps: the embedded Mooncake
//! trace on the Mooncake paper's engine, a malformed Mooncake line, unknown
//! policy suffixes, a rate sweep and a capacity sweep with their plots.

mod common;
use common::pagedkv;

#[test]
fn mooncake_runs_on_the_papers_engine_with_latencies() {
    let run = pagedkv(&[
        "simulate",
        "--mooncake",
        "--limit",
        "300",
        "--policies",
        "paged16-vllm,reserve-oracle",
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["workload"]["requests"], 300);
    assert!(v["scenario"]["name"].as_str().unwrap().contains("LLaMA3-70B"));
    assert_eq!(v["scenario"]["max_model_len"], 131_072);
    assert_eq!(v["scenario"]["token_slots"], 1_381_547);
    assert!(v["scenario"]["arrivals"].as_str().unwrap().contains("trace"));
    let paged = &v["runs"][0];
    assert!(paged["prefix_hit_rate"].as_f64().unwrap() > 0.0);
    // One of the first 300 prompts is longer than max_model_len (131,072).
    assert_eq!(paged["finished"], 299);
    assert_eq!(paged["rejected"]["longer_than_max_model_len"], 1);
    let l = &paged["latency"];
    let ttft = &l["ttft_s"];
    assert!(ttft["p50"].as_f64().unwrap() > 0.0 && ttft["p50"].as_f64() <= ttft["p99"].as_f64());
    assert_eq!(v["runs"][1]["prefix_hit_rate"].as_f64(), Some(0.0));
}

#[test]
fn a_malformed_mooncake_line_exits_2_naming_file_line_and_field() {
    let path = std::env::temp_dir().join(format!("pagedkv-bad-mooncake-{}.jsonl", std::process::id()));
    std::fs::write(
        &path,
        concat!(
            r#"{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [1, 2]}"#,
            "\n",
            r#"{"timestamp": 10, "input_length": 600, "output_length": -4, "hash_ids": [1, 2]}"#,
            "\n"
        ),
    )
    .unwrap();
    let run = pagedkv(&["simulate", "--trace", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(run.code, 2, "{}", run.stdout);
    let expected = format!("{}:2: field output_length:", path.display());
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn an_unknown_policy_suffix_lists_the_known_ones() {
    let run = pagedkv(&["simulate", "--policies", "paged16-turbo"]);
    assert_eq!(run.code, 2);
    for known in ["-prefix", "-swap", "-auto", "-most-blocks", "-wm", "-vllm"] {
        assert!(run.stderr.contains(known), "{known}: {}", run.stderr);
    }
    let run = pagedkv(&["simulate", "--policies", "reserve-max-bestfit"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("-buddy") && run.stderr.contains("-anywhere"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_rate_sweep_reports_each_rate_and_plots_throughput_against_latency() {
    let svg = std::env::temp_dir().join(format!("pagedkv-rates-{}.svg", std::process::id()));
    let run = pagedkv(&[
        "simulate",
        "--limit",
        "300",
        "--rate",
        "1,8",
        "--policies",
        "paged16,paged16-vllm",
        "--csv",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 2, "{}", run.stdout);
    assert!(lines[0].starts_with("rate,policy,"));
    assert!(lines[1].starts_with("1,paged16,") && lines[4].starts_with("8,paged16-vllm,"));
    // Eight times the load: longer waits for the first token.
    let p90 = |l: &str| -> f64 {
        let header: Vec<&str> = lines[0].split(',').collect();
        let i = header.iter().position(|h| *h == "ttft_p90_s").unwrap();
        l.split(',').nth(i).unwrap().parse().unwrap()
    };
    assert!(p90(lines[3]) > p90(lines[1]), "{}", run.stdout);
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).ok();
    assert!(text.contains("throughput") && text.contains("paged16-vllm"));
}

#[test]
fn a_capacity_sweep_reports_hit_rates_within_the_bounds() {
    let svg = std::env::temp_dir().join(format!("pagedkv-capacity-{}.svg", std::process::id()));
    let run = pagedkv(&[
        "simulate",
        "--multiturn",
        "--limit",
        "400",
        "--sweep-blocks",
        "200,800,3200",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["capacities"], serde_json::json!([200, 800, 3200]));
    let infinite = v["infinite_hit_rate"].as_f64().unwrap();
    let optimal: Vec<f64> = v["optimal_hit_rate"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert!(infinite > 0.5, "{infinite}");
    assert!(optimal.windows(2).all(|w| w[0] <= w[1]) && optimal[2] <= infinite);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs[0]["policy"], "paged16-vllm");
    assert_eq!(runs[1]["policy"], "paged16-prefix");
    for r in runs {
        let hits = r["prefix_hit_rate"].as_array().unwrap();
        assert!(hits[2].as_f64().unwrap() > hits[0].as_f64().unwrap(), "{r}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).ok();
    assert!(text.contains("infinite cache") && text.contains("offline optimum"));
}

#[test]
fn bad_sweep_and_session_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["simulate", "--time-scale", "0"][..], "--time-scale"),
        (&["simulate", "--rate", "1,x"][..], "--rate"),
        (&["simulate", "--think-time", "zipf:3"][..], "--think-time"),
        (&["simulate", "--sweep-blocks", "5..2"][..], "--sweep-blocks"),
        (
            &["simulate", "--rate", "1,2", "--sweep-blocks", "100,200"][..],
            "--sweep-blocks",
        ),
        (&["simulate", "--slo-ttft-ms", "0"][..], "--slo"),
        (&["simulate", "--pcie-gbps", "0"][..], "--pcie-gbps"),
    ] {
        let run = pagedkv(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(flag), "{args:?}: {}", run.stderr);
    }
}

/// The tiered prefix cache: an `-offload` policy on a small device cache
/// reports its tiers (JSON and text), hits more than the device alone, and the
/// host-tier flags are checked.
#[test]
fn offload_policies_report_hits_by_tier_and_bytes_moved() {
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "simulate",
            "--mooncake",
            "--limit",
            "400",
            "--kv-cache-memory",
            "4GiB",
            "--host-memory",
            "32GiB",
            "--policies",
            "paged16-vllm,paged16-vllm-offload,paged16-vllm-offload-exclusive",
        ];
        a.extend_from_slice(extra);
        a
    };
    let run = pagedkv(&args(&["--json"]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(v["runs"][0]["tiers"].is_null());
    let device = v["runs"][0]["prefix_hit_rate"].as_f64().unwrap();
    for run in [&v["runs"][1], &v["runs"][2]] {
        let t = &run["tiers"];
        assert!(t["host_hit_tokens"].as_u64().unwrap() > 0, "{t}");
        assert!(t["offload_bytes"].as_f64().unwrap() > 0.0 && t["reload_bytes"].as_f64().unwrap() > 0.0);
        assert!(t["transfer_s"].as_f64().unwrap() > 0.0 && t["prefill_saved_s"].as_f64().unwrap() > 0.0);
        assert!(run["prefix_hit_rate"].as_f64().unwrap() > device, "{run}");
    }
    let text = pagedkv(&args(&[]));
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("tiered prefix cache"), "{}", text.stdout);
    for (args, flag) in [
        (
            &["simulate", "--num-blocks", "100", "--host-memory", "1GiB"][..],
            "--host-memory",
        ),
        (&["simulate", "--host-blocks", "x"][..], "--host-blocks"),
        (&["simulate", "--policies", "paged16-offload"][..], "-offload"),
        (
            &["simulate", "--policies", "paged16-prefix-exclusive"][..],
            "-exclusive",
        ),
    ] {
        let run = pagedkv(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stdout);
        assert!(run.stderr.contains(flag), "{args:?}: {}", run.stderr);
    }
}
