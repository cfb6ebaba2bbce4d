//! Fuzzes the trace readers: arbitrary text as a ShareGPT-style CSV trace
//! (`sim::trace::parse_trace`) and as Mooncake JSON lines
//! (`sim::mooncake::parse_mooncake`), with arbitrary options (seed, vLLM
//! filter, closed or open loop).
//!
//! Checks: nothing panics; a malformed input is an error naming the file; a
//! parsed workload replays through the simulator (a small paged pool, and a
//! reservation baseline) without panicking when it is small enough to run
//! quickly, and every request is finished or rejected.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run traces -s none` (in `fuzz/`; seed
//! the corpus from `data/traces/`, see the README's Fuzzing section).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pagedkv::sim::mooncake::parse_mooncake;
use pagedkv::sim::trace::{parse_trace, TraceOptions};
use pagedkv::sim::{self, KvSize, Policy, Scenario, ThinkTime, Workload};

fn replay(w: &Workload) {
    let tokens: u64 = w
        .requests
        .iter()
        .map(|r| r.prompt.len() as u64 + r.output_len as u64 * r.n.max(1) as u64)
        .sum();
    if w.requests.len() > 64 || tokens > 20_000 {
        return;
    }
    let scenario = Scenario {
        kv: KvSize::Blocks {
            num_blocks: 64,
            block_size: 4,
        },
        max_model_len: 512,
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        ..Scenario::default()
    };
    for policy in ["paged4-prefix", "paged4-vllm", "reserve-oracle"] {
        let p: Policy = policy.parse().expect("a known policy");
        let r = sim::simulate(&scenario, w, &p).expect("a parsed workload replays");
        let s = &r.summary;
        assert_eq!(
            s.finished + s.rejected(),
            w.requests.len() as u64,
            "{policy}: every request finishes or is rejected"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let options = TraceOptions {
        seed: flags as u64,
        vllm_filter: flags & 1 != 0,
        think_time: if flags & 2 != 0 {
            ThinkTime::Fixed(0.5)
        } else {
            TraceOptions::default().think_time
        },
        open_loop: flags & 4 != 0,
    };
    for (name, parsed) in [
        ("fuzz.csv", parse_trace("fuzz.csv", text, &options)),
        ("fuzz.jsonl", parse_mooncake("fuzz.jsonl", text, &options)),
    ] {
        match parsed {
            Ok(w) => replay(&w),
            Err(e) => assert!(e.to_string().contains(name), "the error names the file: {e}"),
        }
    }
});
