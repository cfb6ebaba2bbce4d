//! Times the simulator on the ShareGPT first-turn trace (11,811 requests) in
//! the default scenario: one policy (paged16), then the default comparison.
//!
//! `cargo run --release --example simulate [-- PATH]`

use std::path::PathBuf;
use std::time::Instant;

use pagedkv::sim::{self, trace, Policy, Scenario};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/traces/sharegpt_first_turn.csv")
    });
    let workload = trace::load_trace(&path, &trace::TraceOptions::default())?;
    let scenario = Scenario::default();
    println!(
        "{}: {} requests; {}: {} token slots, {} blocks of 16",
        workload.name,
        workload.requests.len(),
        scenario.name,
        scenario.token_slots()?,
        scenario.num_blocks(16)?
    );

    let start = Instant::now();
    let one = sim::simulate(&scenario, &workload, &Policy::default_set()[0])?;
    println!(
        "one policy ({}): {:.3} s for {} steps",
        one.summary.policy,
        start.elapsed().as_secs_f64(),
        one.summary.steps
    );

    let start = Instant::now();
    let all = sim::compare(&scenario, &workload, &Policy::default_set())?;
    println!(
        "default comparison ({} policies): {:.3} s",
        all.len(),
        start.elapsed().as_secs_f64()
    );
    // Shares of the whole KV memory, as `pagedkv simulate` prints them.
    println!(
        "{:<16} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "policy", "tokens", "waste", "frag", "free", "batch", "preempt", "finished", "rejected", "steps"
    );
    for r in &all {
        let s = &r.summary;
        println!(
            "{:<16} {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>8.1} {:>8} {:>9} {:>8} {:>8}",
            s.policy,
            100.0 * s.pool_token_share,
            100.0 * s.pool_waste_share,
            100.0 * s.pool_fragmentation_share,
            100.0 * s.free_share,
            s.mean_running,
            s.preemptions,
            s.finished,
            s.rejected(),
            s.steps
        );
    }
    Ok(())
}
