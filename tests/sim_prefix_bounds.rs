//! The prefix-cache bounds hold for real runs: at every capacity a run's hit
//! rate is at most the offline optimum's, which is at most the infinite
//! cache's, and a pool that never needs to evict reaches the infinite
//! cache's rate (exactly when no two requests in flight share a block still
//! being computed, which becomes hittable only once its step is handed over:
//! the simulator and the bounds count the same tokens). On closed-loop
//! synthetic chats and on the first 400 requests of the Mooncake trace.

use pagedkv::sim::prefix_bounds::BlockTrace;
use pagedkv::sim::synthetic::{LengthDist, SyntheticSpec};
use pagedkv::sim::{self, trace, Arrivals, KvSize, Policy, Scenario, ThinkTime, Workload};

fn check(
    workload: &Workload,
    base: &Scenario,
    policies: &[&str],
    capacities: &[u64],
    (huge, slack): (u64, f64),
    shared: f64,
) {
    let t = BlockTrace::new(workload, 16, base.max_model_len).unwrap();
    let infinite = t.infinite_hit_rate();
    assert!(infinite > shared, "the workload shares prefixes: {infinite}");
    for policy in policies {
        let policy: Policy = policy.parse().unwrap();
        let hit = |num_blocks: u64| {
            let s = Scenario {
                kv: KvSize::Blocks {
                    num_blocks,
                    block_size: 16,
                },
                ..base.clone()
            };
            sim::simulate(&s, workload, &policy)
                .unwrap()
                .summary
                .prefix_hit_rate
        };
        for &c in capacities {
            let (run, opt) = (hit(c), t.optimal_hit_rate(c));
            assert!(
                run <= opt + 1e-12 && opt <= infinite + 1e-12,
                "{policy} at {c} blocks: {run} <= {opt} <= {infinite}"
            );
        }
        let all = hit(huge);
        assert!(
            all <= infinite + 1e-12 && all >= infinite - slack,
            "{policy}: {all} vs {infinite}"
        );
    }
}

#[test]
fn closed_loop_chats_stay_within_the_bounds() {
    let w = SyntheticSpec {
        num_requests: 240,
        turns: 4,
        system_prompt_len: 100,
        system_prompt_fraction: 0.5,
        output_len: LengthDist::LogNormal {
            median: 80.0,
            sigma: 0.7,
            max: 400,
        },
        think_time: ThinkTime::Fixed(2.0),
        seed: 3,
        ..Default::default()
    }
    .generate()
    .unwrap()
    .with_arrivals(Arrivals::Poisson { rate: 1.0 })
    .unwrap();
    check(
        &w,
        &Scenario::default(),
        &["paged16-prefix", "paged16-vllm"],
        &[150, 300, 600],
        (1 << 20, 1e-12),
        0.3,
    );
}

#[test]
fn a_mooncake_prefix_stays_within_the_bounds() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/traces/mooncake_synthetic_trace.jsonl"
    );
    let w = trace::load_trace(path.as_ref(), &Default::default())
        .unwrap()
        .truncated(400);
    // Requests arriving together share blocks still being computed: a few hits wait.
    check(
        &w,
        &Scenario::mooncake(),
        &["paged16-vllm"],
        &[6_000],
        (1 << 21, 0.005),
        0.05,
    );
}
