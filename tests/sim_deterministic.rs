//! A simulation is a function of its inputs: the same seed gives identical
//! results (every sample of every step), another seed gives different ones.

use pagedkv::sim::synthetic::{LengthDist, SyntheticSpec};
use pagedkv::sim::{self, Arrivals, KvSize, Policy, RunResult, Scenario, ThinkTime};

fn scenario() -> Scenario {
    Scenario {
        kv: KvSize::Blocks {
            num_blocks: 400,
            block_size: 16,
        },
        ..Scenario::default()
    }
}

fn run(seed: u64) -> Vec<RunResult> {
    let workload = SyntheticSpec {
        num_requests: 300,
        system_prompt_len: 100,
        system_prompt_fraction: 0.5,
        turns: 3,
        n: 2,
        output_len: LengthDist::LogNormal {
            median: 100.0,
            sigma: 0.7,
            max: 500,
        },
        seed,
        // Closed-loop chats: a turn arrives a second after the previous reply.
        think_time: ThinkTime::Fixed(1.0),
        ..Default::default()
    }
    .generate()
    .unwrap()
    .with_arrivals(Arrivals::Poisson { rate: 0.5 })
    .unwrap();
    let policies: Vec<Policy> = ["paged16", "paged16-prefix", "paged64", "reserve-pow2"]
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    sim::compare(&scenario(), &workload, &policies).unwrap()
}

#[test]
fn same_seed_same_results_other_seed_other_results() {
    let a = run(7);
    assert_eq!(a, run(7));
    let b = run(8);
    assert_ne!(a[0].summary, b[0].summary);
    assert!(a.iter().all(|r| r.summary.finished > 0));
    // The workload shares system prompts and chat history: caching finds some of it.
    assert!(
        a[1].summary.prefix_hit_rate > 0.2,
        "{}",
        a[1].summary.prefix_hit_rate
    );
}
