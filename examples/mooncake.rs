//! Times a full replay of the shipped Mooncake trace (3,993 requests, 61M
//! prompt tokens) through one paged policy in the Mooncake paper's setting
//! (`Scenario::mooncake`), and prints its prefix hit rate and latencies.
//!
//! `cargo run --release --example mooncake [-- POLICY [TIME_SCALE]]`

use std::path::PathBuf;
use std::time::Instant;

use pagedkv::sim::{self, trace, Policy, Scenario};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let policy: Policy = args.next().as_deref().unwrap_or("paged16-vllm").parse()?;
    let scale: f64 = args.next().map_or(Ok(1.0), |s| s.parse())?;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/traces/mooncake_synthetic_trace.jsonl");
    let start = Instant::now();
    let workload = trace::load_trace(&path, &trace::TraceOptions::default())?.time_scaled(scale)?;
    let parsed = start.elapsed().as_secs_f64();
    let scenario = Scenario::mooncake();
    let start = Instant::now();
    let run = sim::simulate(&scenario, &workload, &policy)?;
    let s = &run.summary;
    println!(
        "{}: {} requests, {} prompt tokens (parsed in {parsed:.3} s); {}",
        workload.name,
        workload.requests.len(),
        workload.prompt_tokens(),
        scenario.name
    );
    println!(
        "{}: {:.3} s for {} steps; prefix hit {:.1}%, finished {}, rejected {}, preempted {}, {:.0} s simulated",
        s.policy,
        start.elapsed().as_secs_f64(),
        s.steps,
        100.0 * s.prefix_hit_rate,
        s.finished,
        s.rejected(),
        s.preemptions,
        s.duration_s
    );
    let l = &s.latency;
    println!(
        "TTFT p50 {:.2} s p99 {:.2} s; TPOT p50 {:.1} ms p99 {:.1} ms; goodput {} of {} requests",
        l.ttft.p50,
        l.ttft.p99,
        l.tpot.p50 * 1e3,
        l.tpot.p99 * 1e3,
        l.goodput_requests,
        s.finished
    );
    Ok(())
}
