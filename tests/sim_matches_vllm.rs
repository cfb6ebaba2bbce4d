//! `paged16-vllm` reproduces vLLM 0.33.0's synchronous v1 scheduler step for
//! step: on the ShareGPT first-turn trace, for every case of
//! `tests/fixtures/vllm_0.33.0/cases.csv` (pool sizes, token budgets, batch
//! and length limits), the simulator's counts equal those vLLM's own
//! `Scheduler`, `KVCacheManager` and `BlockPool` produced (the fixtures, made
//! by `tools/vllm_oracle/gen_scheduler_fixtures.sh`): steps, preemptions, recomputed,
//! prefill and generated tokens, finished and rejected requests, and the
//! per-step means of the batch and of the memory holding tokens.

use std::path::{Path, PathBuf};

use pagedkv::sim::{self, trace, KvSize, Policy, Scenario};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm_0.33.0")
}

struct Case {
    name: String,
    num_blocks: u64,
    limit: usize,
    max_num_batched_tokens: u32,
    max_num_seqs: u32,
    max_model_len: u32,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let n = |i: usize| f[i].trim().parse::<u64>().unwrap();
            Case {
                name: f[0].to_string(),
                num_blocks: n(1),
                limit: n(2) as usize,
                max_num_batched_tokens: n(3) as u32,
                max_num_seqs: n(4) as u32,
                max_model_len: n(5) as u32,
            }
        })
        .collect()
}

#[test]
fn paged16_vllm_equals_vllm_0_33_0_on_every_fixture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/traces/sharegpt_first_turn.csv");
    let full = trace::load_trace(&path, &trace::TraceOptions::default()).unwrap();
    let policy: Policy = "paged16-vllm".parse().unwrap();
    let cases = cases();
    assert!(cases.len() >= 5, "several pool sizes and budgets");
    let mut report = Vec::new();
    for c in &cases {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("{}.json", c.name))).unwrap(),
        )
        .unwrap();
        // The fixture is what the case says, from vLLM's real scheduler with its defaults.
        assert_eq!(v["engine"], "vllm-0.33.0-v1-scheduler");
        assert_eq!(v["scheduler_class"], "Scheduler", "synchronous scheduling");
        assert_eq!(v["requests"].as_u64(), Some(c.limit as u64));
        assert_eq!(v["num_blocks_usable"].as_u64(), Some(c.num_blocks));
        assert_eq!(
            v["max_num_batched_tokens"].as_u64(),
            Some(c.max_num_batched_tokens as u64)
        );
        assert_eq!(
            (v["watermark"].as_f64(), v["prefix_caching"].as_bool()),
            (Some(0.0), Some(true))
        );
        assert_eq!(
            v["stub_touches_during_replay"].as_u64(),
            Some(0),
            "no stub ran during the replay"
        );

        let scenario = Scenario {
            kv: KvSize::Blocks {
                num_blocks: c.num_blocks,
                block_size: 16,
            },
            max_model_len: c.max_model_len,
            max_num_seqs: c.max_num_seqs,
            max_num_batched_tokens: c.max_num_batched_tokens,
            ..Scenario::default()
        };
        let workload = full.clone().truncated(c.limit);
        let s = sim::simulate(&scenario, &workload, &policy).unwrap().summary;
        let rejected = v["rejected"]["empty"].as_u64().unwrap() + v["rejected"]["too_long"].as_u64().unwrap();
        let int = |k: &str| v[k].as_u64().unwrap();
        let ours = (
            s.steps,
            s.preemptions,
            s.recomputed_tokens,
            s.prefill_tokens,
            s.generated_tokens,
            s.finished,
            s.rejected(),
        );
        let theirs = (
            int("steps"),
            int("preemptions"),
            int("recomputed_tokens"),
            int("prefill_tokens"),
            int("generated_tokens"),
            int("finished"),
            rejected,
        );
        assert_eq!(
            ours, theirs,
            "{}: (steps, preemptions, recomputed, prefill, generated, finished, rejected)",
            c.name
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(s.mean_running, v["mean_running"].as_f64().unwrap()),
            "{}: mean batch",
            c.name
        );
        assert!(
            close(s.pool_token_share, v["pool_token_share"].as_f64().unwrap()),
            "{}: share of the pool holding tokens {} vs {}",
            c.name,
            s.pool_token_share,
            v["pool_token_share"]
        );
        assert!(
            close(s.token_share, v["token_share"].as_f64().unwrap()),
            "{}: token share",
            c.name
        );
        report.push(format!("{}: {ours:?}", c.name));
        // pagedkv's own scheduler with vLLM's pool settings differs wherever its
        // guards act (so the fixtures tell the two apart).
        if c.name == "thrash" {
            let own: Policy = "paged16-prefix-wm0".parse().unwrap();
            let o = sim::simulate(&scenario, &workload, &own).unwrap().summary;
            assert_ne!(
                (o.steps, o.preemptions, o.recomputed_tokens),
                (s.steps, s.preemptions, s.recomputed_tokens)
            );
            report.push(format!(
                "  paged16-prefix-wm0: steps {}, preemptions {}, recomputed {}",
                o.steps, o.preemptions, o.recomputed_tokens
            ));
        }
    }
    println!("{}", report.join("\n"));
}
