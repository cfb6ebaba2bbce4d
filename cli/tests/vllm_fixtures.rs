//! `pagedkv plan --engine vllm-v1` against vLLM 0.33.0's own sizing code.
//!
//! `fixtures/vllm_plan.json` was computed by vLLM's functions
//! (`tools/vllm_oracle/gen_plan_fixtures.py`; the command is in the file) for
//! every shipped config × KV budget {2 GiB, 10 GiB} × `--kv-cache-dtype`
//! {auto, fp8} × tensor parallel {1, 2}, the seed case, and 20 pipeline-parallel
//! cases (5 configs × 2 and 3 stages × the two budgets). Each case runs the
//! CLI and compares bytes per token and per block, the KV cache groups, the
//! block count, the blocks a request takes, the verdict, vLLM's refusal
//! message word for word, the estimated maximum model length, and for the
//! plans that fit the capacity vLLM logs. CI never needs vLLM: the file is
//! committed.

mod common;
use common::pagedkv;
use serde_json::Value;

fn fixtures() -> Value {
    let text = include_str!("fixtures/vllm_plan.json");
    serde_json::from_str(text).expect("the fixture file is JSON")
}

fn plan_json(args: &[String]) -> (i32, Value) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = pagedkv(&refs);
    let v = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}{}", run.stdout, run.stderr));
    (run.code, v)
}

/// Checks one vLLM case against the CLI's JSON; returns what differs.
fn compare(case: &Value, code: i32, v: &Value) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut same = |what: &str, ours: &Value, theirs: &Value| {
        if ours != theirs {
            diffs.push(format!("{what}: pagedkv {ours} vs vLLM {theirs}"));
        }
    };
    same(
        "bytes_per_token",
        &v["spec"]["bytes_per_token"],
        &case["bytes_per_token"],
    );
    same(
        "bytes_per_block",
        &v["spec"]["bytes_per_block"],
        &case["bytes_per_block"],
    );
    same("num_blocks", &v["blocks"]["num_blocks"], &case["num_blocks"]);
    same(
        "blocks_per_request",
        &v["blocks"]["blocks_per_seq"],
        &case["blocks_per_request"],
    );
    same("max_model_len", &v["max_model_len"], &case["max_model_len"]);
    same(
        "max_in_flight_tokens",
        &v["max_in_flight_tokens"],
        &case["max_in_flight_tokens"],
    );
    let groups: Vec<Value> = v["spec"]["groups"]
        .as_array()
        .map(|gs| {
            gs.iter()
                .map(|g| serde_json::json!({"kind": g["kind"], "layers": g["layers"].as_array().map_or(0, Vec::len)}))
                .collect()
        })
        .unwrap_or_default();
    same("groups", &Value::from(groups), &case["groups"]);
    let fits = case["fits"].as_bool().unwrap();
    same("fits", &Value::from(code == 0), &Value::from(fits));
    if fits {
        same(
            "kv_cache_size_tokens",
            &v["concurrency"]["vllm_kv_cache_size_tokens"],
            &case["kv_cache_size_tokens"],
        );
        let ours = v["concurrency"]["vllm_max_concurrency"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let theirs = case["max_concurrency"].as_f64().unwrap();
        if (ours - theirs).abs() > 1e-5 {
            diffs.push(format!("max_concurrency: pagedkv {ours} vs vLLM {theirs}"));
        }
    } else {
        let message = v["error"].as_str().unwrap_or("").lines().next().unwrap_or("");
        same("error", &Value::from(message), &case["error"]);
        same(
            "estimated_max_model_len",
            &v["advice"]["estimated_max_model_len"],
            &case["estimated_max_model_len"],
        );
        same(
            "needed_kv_bytes",
            &v["advice"]["needed_kv_bytes"],
            &case["needed_bytes"],
        );
        same(
            "available_kv_bytes",
            &v["advice"]["available_kv_bytes"],
            &case["available_bytes"],
        );
    }
    diffs
}

fn case_args(case: &Value, mnbt: u64) -> Vec<String> {
    let mut args: Vec<String> = vec!["plan".into()];
    match case["config"].as_str() {
        Some(name) => args.extend(["--config".into(), format!("data/configs/{name}")]),
        None => args.extend(
            [
                "--layers",
                "28",
                "--kv-heads",
                "2",
                "--head-dim",
                "128",
                "--max-model-len",
                "128000",
            ]
            .map(String::from),
        ),
    }
    args.extend([
        "--kv-cache-memory-bytes".into(),
        case["kv_cache_memory_bytes"].to_string(),
        "--kv-cache-dtype".into(),
        match (case["config"].is_null(), case["kv_cache_dtype"].as_str().unwrap()) {
            (true, "auto") => "bfloat16".to_string(),
            (_, d) => d.to_string(),
        },
        "-tp".into(),
        case["tensor_parallel_size"].to_string(),
        "--max-num-batched-tokens".into(),
        mnbt.to_string(),
        "--json".into(),
    ]);
    args
}

#[test]
fn every_shipped_config_matches_vllm_0_33_0() {
    let f = fixtures();
    assert_eq!(f["vllm"], "0.33.0");
    let mnbt = f["max_num_batched_tokens"].as_u64().unwrap();
    let cases = f["cases"].as_array().unwrap();
    let configs: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c["config"].as_str().unwrap()).collect();
    // Every config shipped in data/configs has its cases.
    let shipped: std::collections::BTreeSet<String> =
        std::fs::read_dir(common::workspace_root().join("data/configs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
    assert_eq!(
        configs
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        shipped,
        "regenerate the fixtures (tools/vllm_oracle/README.md)"
    );
    assert_eq!(cases.len(), shipped.len() * 8);
    let mut failures = Vec::new();
    for case in cases {
        let args = case_args(case, mnbt);
        let (code, v) = plan_json(&args);
        assert!(code == 0 || code == 1, "{args:?}: exit {code}\n{v}");
        let diffs = compare(case, code, &v);
        if !diffs.is_empty() {
            failures.push(format!("{}: {}", args[1..].join(" "), diffs.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_seed_matches_vllm_under_v1() {
    let f = fixtures();
    let seed = &f["seed"];
    let args = case_args(seed, f["max_num_batched_tokens"].as_u64().unwrap());
    let (code, v) = plan_json(&args);
    assert_eq!(code, 1);
    assert_eq!(compare(seed, code, &v), Vec::<String>::new());
    assert_eq!(seed["estimated_max_model_len"], 78_320);
}

#[test]
fn pipeline_parallel_cases_match_vllm_0_33_0() {
    let f = fixtures();
    let mnbt = f["max_num_batched_tokens"].as_u64().unwrap();
    let cases = f["pp_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    let mut failures = Vec::new();
    for case in cases {
        let args: Vec<String> = [
            "plan".to_string(),
            "--config".into(),
            format!("data/configs/{}", case["config"].as_str().unwrap()),
            "--kv-cache-memory-bytes".into(),
            case["kv_cache_memory_bytes"].to_string(),
            "-pp".into(),
            case["pipeline_parallel_size"].to_string(),
            "--max-num-batched-tokens".into(),
            mnbt.to_string(),
            "--json".into(),
        ]
        .into();
        let (code, v) = plan_json(&args);
        let mut diffs = Vec::new();
        let mut same = |what: &str, ours: &Value, theirs: &Value| {
            if ours != theirs {
                diffs.push(format!("{what}: pagedkv {ours} vs vLLM {theirs}"));
            }
        };
        same(
            "bytes_per_block",
            &v["spec"]["bytes_per_block"],
            &case["bytes_per_block"],
        );
        same("num_blocks", &v["blocks"]["num_blocks"], &case["num_blocks"]);
        same(
            "max_in_flight_tokens",
            &v["max_in_flight_tokens"],
            &case["max_in_flight_tokens"],
        );
        same("fits", &Value::from(code == 0), &case["fits"]);
        if case["fits"] == false {
            let message = v["error"].as_str().unwrap_or("").lines().next().unwrap_or("");
            same("error", &Value::from(message), &case["error"]);
        }
        if !diffs.is_empty() {
            failures.push(format!("{}: {}", args[1..].join(" "), diffs.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
