//! Rendering simulation results: an aligned table, CSV, or one JSON object.
//!
//! JSON field names are stable; shares are fractions in [0, 1].

use std::fmt::Write as _;

use pagedkv::sim::{RunResult, RunSummary, Scenario, StepSample, Workload};
use serde_json::{json, Value};

/// Most time-series points per policy in the JSON output.
pub const MAX_SERIES_POINTS: usize = 500;

/// Every `k`-th sample so that at most `max` remain (the last one included).
pub fn downsample(samples: &[StepSample], max: usize) -> Vec<StepSample> {
    if samples.len() <= max {
        return samples.to_vec();
    }
    let k = samples.len().div_ceil(max.max(2) - 1);
    let mut out: Vec<StepSample> = samples.iter().step_by(k).copied().collect();
    if out.last() != samples.last() {
        out.push(*samples.last().expect("non-empty"));
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The columns: header, then how to render a summary.
type Column = (&'static str, fn(&RunSummary) -> String);

const COLUMNS: [Column; 14] = [
    ("policy", |s| s.policy.clone()),
    ("tokens", |s| pct(s.token_share)),
    ("frag", |s| pct(s.fragmentation_share)),
    ("waste", |s| pct(s.waste_share)),
    ("pool used", |s| pct(s.pool_token_share)),
    ("batch", |s| format!("{:.1}", s.mean_running)),
    ("preempt", |s| s.preemptions.to_string()),
    ("recomputed", |s| s.recomputed_tokens.to_string()),
    ("prefix hit", |s| pct(s.prefix_hit_rate)),
    ("finished", |s| s.finished.to_string()),
    ("rejected", |s| s.rejected().to_string()),
    ("steps", |s| s.steps.to_string()),
    ("tok/step", |s| format!("{:.1}", s.tokens_per_step)),
    ("tok/s", |s| format!("{:.0}", s.tokens_per_s)),
];

/// The aligned table with a short header and the definitions below it.
pub fn render_text(workload: &Workload, scenario: &Scenario, results: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "pagedkv simulate: {} ({} requests",
        workload.name,
        workload.requests.len()
    );
    if workload.filtered_out > 0 {
        let _ = write!(out, ", {} dropped by the vLLM filter", workload.filtered_out);
    }
    let _ = writeln!(out, ", seed {})", workload.seed);
    let slots = scenario.token_slots().unwrap_or(0);
    let _ = writeln!(
        out,
        "engine: {}; KV memory {} token slots, max_model_len {}, max_num_seqs {}, max_num_batched_tokens {}\n",
        scenario.name, slots, scenario.max_model_len, scenario.max_num_seqs, scenario.max_num_batched_tokens
    );
    let cells: Vec<Vec<String>> = results
        .iter()
        .map(|r| COLUMNS.iter().map(|(_, f)| f(&r.summary)).collect())
        .collect();
    let widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|row| row[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: Vec<String>| -> String {
        let mut l = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == 0 {
                let _ = write!(l, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(l, "  {cell:>w$}", w = widths[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        line(COLUMNS.iter().map(|(h, _)| h.to_string()).collect())
    );
    for row in cells {
        let _ = writeln!(out, "{}", line(row));
    }
    if let Some(r) = results.first() {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "\nrejected: {} longer than max_model_len, {} larger than the KV memory, {} with an empty prompt (every policy sees the same requests)",
            s.rejected_too_long, s.rejected_too_large, s.rejected_empty
        );
    }
    out.push_str(
        "tokens/frag/waste: share of reserved KV memory holding token states / never-used reserved slots / slots reserved for \
         future tokens (slot-steps over all steps); pool used: token states over the whole KV memory; batch: mean running \
         sequences; tok/s: generated tokens under the linear step-time model (an assumption).\n",
    );
    out
}

/// The summary table as CSV, one row per policy.
pub fn render_csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "policy,token_share,fragmentation_share,waste_share,pool_token_share,free_share,mean_running,max_running,\
         preemptions,recomputed_tokens,swapped_blocks,prefix_hit_rate,requests,finished,rejected_too_long,\
         rejected_too_large,rejected_empty,steps,duration_s,prefill_tokens,generated_tokens,tokens_per_step,tokens_per_s\n",
    );
    for r in results {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{},{},{},{},{:.6},{},{},{},{},{},{},{:.3},{},{},{:.3},{:.1}",
            s.policy,
            s.token_share,
            s.fragmentation_share,
            s.waste_share,
            s.pool_token_share,
            s.free_share,
            s.mean_running,
            s.max_running,
            s.preemptions,
            s.recomputed_tokens,
            s.swapped_blocks,
            s.prefix_hit_rate,
            s.requests,
            s.finished,
            s.rejected_too_long,
            s.rejected_too_large,
            s.rejected_empty,
            s.steps,
            s.duration_s,
            s.prefill_tokens,
            s.generated_tokens,
            s.tokens_per_step,
            s.tokens_per_s
        );
    }
    out
}

fn summary_json(s: &RunSummary) -> Value {
    json!({
        "policy": s.policy,
        "token_share": s.token_share,
        "fragmentation_share": s.fragmentation_share,
        "waste_share": s.waste_share,
        "pool_token_share": s.pool_token_share,
        "free_share": s.free_share,
        "mean_running": s.mean_running,
        "max_running": s.max_running,
        "preemptions": s.preemptions,
        "recomputed_tokens": s.recomputed_tokens,
        "swapped_blocks": s.swapped_blocks,
        "prefix_hit_rate": s.prefix_hit_rate,
        "requests": s.requests,
        "finished": s.finished,
        "rejected": {
            "longer_than_max_model_len": s.rejected_too_long,
            "larger_than_kv_memory": s.rejected_too_large,
            "empty_prompt": s.rejected_empty,
        },
        "steps": s.steps,
        "duration_s": s.duration_s,
        "prefill_tokens": s.prefill_tokens,
        "generated_tokens": s.generated_tokens,
        "tokens_per_step": s.tokens_per_step,
        "tokens_per_s": s.tokens_per_s,
    })
}

fn sample_json(s: &StepSample) -> Value {
    json!({
        "step": s.step, "time": s.time, "total_slots": s.total_slots, "reserved_slots": s.reserved_slots,
        "token_slots": s.token_slots, "internal_fragmentation": s.internal_fragmentation,
        "reservation_waste": s.reservation_waste, "free_slots": s.free_slots, "running": s.running,
        "waiting": s.waiting, "batched_tokens": s.batched_tokens, "preemptions": s.preemptions, "finished": s.finished,
    })
}

/// One JSON object: workload, scenario, and per policy its summary and a
/// time series of at most [`MAX_SERIES_POINTS`] samples.
pub fn render_json(workload: &Workload, scenario: &Scenario, results: &[RunResult]) -> Value {
    json!({
        "workload": {
            "name": workload.name,
            "requests": workload.requests.len(),
            "filtered_out": workload.filtered_out,
            "seed": workload.seed,
        },
        "scenario": {
            "name": scenario.name,
            "token_slots": scenario.token_slots().unwrap_or(0),
            "blocks_of_16": scenario.num_blocks(16).unwrap_or(0),
            "max_model_len": scenario.max_model_len,
            "max_num_seqs": scenario.max_num_seqs,
            "max_num_batched_tokens": scenario.max_num_batched_tokens,
            "step_time_base_s": scenario.time_model.base_s,
            "step_time_per_token_s": scenario.time_model.per_token_s,
        },
        "runs": results.iter().map(|r| {
            let mut v = summary_json(&r.summary);
            v["series"] = Value::Array(downsample(&r.samples, MAX_SERIES_POINTS).iter().map(sample_json).collect());
            v
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_the_ends_and_the_bound() {
        let samples: Vec<StepSample> = (0..1234)
            .map(|i| StepSample {
                step: i,
                ..Default::default()
            })
            .collect();
        let d = downsample(&samples, 100);
        assert!(d.len() <= 100, "{}", d.len());
        assert_eq!((d[0].step, d.last().unwrap().step), (0, 1233));
        assert_eq!(downsample(&samples[..10], 100).len(), 10);
    }
}
