//! Rendering simulation results: aligned tables, CSV, or one JSON object,
//! for a single run per policy, a rate sweep and a capacity sweep.
//!
//! JSON field names are stable; shares are fractions in [0, 1]; times are seconds.

use std::fmt::Write as _;

use pagedkv::sim::{LatencySummary, Percentiles, RunResult, RunSummary, Scenario, StepSample, Workload};
use serde_json::{json, Value};

use crate::simulate::{CapacitySweep, FullAttentionRuns, RatePoint, Setup};

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

/// Seconds with three significant digits (`0.0423`, `1.27`, `1270`).
fn secs(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 0.01 {
        format!("{x:.4}")
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A number with at most 4 decimals and no trailing zeros (`0.113`, `20`).
fn short(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn ms(x: f64) -> String {
    format!("{:.1}", 1e3 * x)
}

/// An aligned table: the first column left-aligned, the others right-aligned.
fn table(out: &mut String, header: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |row: &[String]| -> String {
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
    let _ = writeln!(out, "{}", line(header));
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
}

/// The columns of the memory table: header, then how to render a summary.
type Column = (&'static str, fn(&RunSummary) -> String);

const MEMORY: [Column; 14] = [
    ("policy", |s| s.policy.clone()),
    ("tokens", |s| pct(s.pool_token_share)),
    ("waste", |s| pct(s.pool_waste_share)),
    ("frag", |s| pct(s.pool_fragmentation_share)),
    ("free", |s| pct(s.free_share)),
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

const LATENCY: [Column; 16] = [
    ("policy", |s| s.policy.clone()),
    ("TTFT mean", |s| secs(s.latency.ttft.mean)),
    ("p50", |s| secs(s.latency.ttft.p50)),
    ("p90", |s| secs(s.latency.ttft.p90)),
    ("p99", |s| secs(s.latency.ttft.p99)),
    ("TPOT mean", |s| ms(s.latency.tpot.mean)),
    ("p50", |s| ms(s.latency.tpot.p50)),
    ("p90", |s| ms(s.latency.tpot.p90)),
    ("p99", |s| ms(s.latency.tpot.p99)),
    ("E2E mean", |s| secs(s.latency.e2e.mean)),
    ("p50", |s| secs(s.latency.e2e.p50)),
    ("p90", |s| secs(s.latency.e2e.p90)),
    ("p99", |s| secs(s.latency.e2e.p99)),
    ("queue p50", |s| secs(s.latency.queueing.p50)),
    ("goodput", |s| pct(goodput_share(s))),
    ("req/s", |s| format!("{:.2}", s.latency.requests_per_s)),
];

fn goodput_share(s: &RunSummary) -> f64 {
    if s.requests == 0 {
        0.0
    } else {
        s.latency.goodput_requests as f64 / s.requests as f64
    }
}

fn render(columns: &[Column], summaries: &[&RunSummary]) -> (Vec<String>, Vec<Vec<String>>) {
    let header = columns.iter().map(|(h, _)| h.to_string()).collect();
    let rows = summaries
        .iter()
        .map(|s| columns.iter().map(|(_, f)| f(s)).collect())
        .collect();
    (header, rows)
}

fn heading(out: &mut String, setup: &Setup) {
    let (workload, scenario) = (&setup.workload, &setup.scenario);
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
        "engine: {}; KV memory {} token slots, max_model_len {}, max_num_seqs {}, max_num_batched_tokens {}",
        scenario.name, slots, scenario.max_model_len, scenario.max_num_seqs, scenario.max_num_batched_tokens
    );
    if let Some(line) = groups_line(scenario) {
        let _ = writeln!(out, "{line}");
    }
    let t = &scenario.time_model;
    let _ = writeln!(
        out,
        "arrivals: {}; step time {} ms + {} ms per prompt token + {} ms per decode + KV reads at {} GB/s; \
         SLO: TTFT ≤ {} s, TPOT ≤ {} ms\n",
        setup.arrivals,
        short(t.base_s * 1e3),
        short(t.prefill_token_s * 1e3),
        short(t.decode_token_s * 1e3),
        short(t.hbm_bytes_per_s / 1e9),
        short(scenario.slo.ttft_s),
        short(scenario.slo.tpot_s * 1e3),
    );
    for note in &setup.notes {
        let _ = writeln!(out, "note: {note}\n");
    }
}

fn kib(bytes: u64) -> String {
    short(bytes as f64 / 1024.0)
}

/// For a model in several KV cache groups: the groups and the pool at 16-token blocks.
fn groups_line(scenario: &Scenario) -> Option<String> {
    let plan = scenario.plan(16).ok().flatten()?;
    if plan.groups().len() < 2 && !plan.groups().iter().any(|g| g.kind.releases_blocks()) {
        return None;
    }
    let groups: Vec<String> = plan
        .groups()
        .iter()
        .map(|g| format!("{} ({} layers)", g.kind, g.num_layers()))
        .collect();
    let mut line = format!(
        "KV cache groups: {}; one pool of {} blocks of 16 tokens, {} KiB a block",
        groups.join(", "),
        plan.num_blocks(),
        kib(plan.breakdown().bytes_per_block)
    );
    if let Some(full) = scenario.full_attention().and_then(|f| f.plan(16).ok().flatten()) {
        let _ = write!(
            line,
            " (every layer as full attention: {} blocks of {} KiB)",
            full.num_blocks(),
            kib(full.breakdown().bytes_per_block)
        );
    }
    Some(line)
}

/// The paged policies beside their runs with every layer planned as full attention.
fn render_full_attention(out: &mut String, results: &[RunResult], full: &FullAttentionRuns) {
    let _ = writeln!(
        out,
        "\nagainst every layer planned as full attention (same memory, same policy; KV/token: KV bytes held per token \
         of context on the device, mean over steps)"
    );
    let header: Vec<String> = [
        "policy", "KV/token", "all full", "saved", "batch", "all full", "preempt", "all full", "tok/s",
        "all full", "TTFT p90", "all full",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let per_token = |s: &RunSummary| {
        s.kv_bytes_per_context_token
            .map_or("-".to_string(), |b| format!("{:.0}", b))
    };
    let rows: Vec<Vec<String>> = full
        .runs
        .iter()
        .map(|(i, f)| {
            let h = &results[*i].summary;
            let saved = match (h.kv_bytes_per_context_token, f.kv_bytes_per_context_token) {
                (Some(a), Some(b)) if b > 0.0 => pct(1.0 - a / b),
                _ => "-".into(),
            };
            vec![
                h.policy.clone(),
                per_token(h),
                per_token(f),
                saved,
                format!("{:.1}", h.mean_running),
                format!("{:.1}", f.mean_running),
                h.preemptions.to_string(),
                f.preemptions.to_string(),
                format!("{:.0}", h.tokens_per_s),
                format!("{:.0}", f.tokens_per_s),
                secs(h.latency.ttft.p90),
                secs(f.latency.ttft.p90),
            ]
        })
        .collect();
    table(out, &header, &rows);
}

const LEGEND: &str = "\
tokens/waste/frag/free: shares of the whole KV memory (slot-steps over all steps) holding token states / reserved
  for tokens not generated yet / reserved but never used / free; batch: mean running sequences; prefix hit: prompt
  tokens found cached at admission; tok/s and latencies: under the step-time model (an assumption).
paged<B>: pagedkv's own scheduler (whole-prompt admission, mid-prefill and growth guards, 1% watermark);
paged<B>-vllm: vLLM 0.33.0's v1 scheduling (prefix caching, watermark 0, no guards); -offload: evicted
  prefix blocks are copied to the host tier and reloaded on a hit; reserve-*: contiguous reservations, first fit.
";

/// The memory and latency tables with a short header and the definitions below them
/// (and, for a hybrid model, the comparison with every layer as full attention).
pub fn render_text(setup: &Setup, results: &[RunResult], full: Option<&FullAttentionRuns>) -> String {
    let mut out = String::new();
    heading(&mut out, setup);
    let summaries: Vec<&RunSummary> = results.iter().map(|r| &r.summary).collect();
    let (h, rows) = render(&MEMORY, &summaries);
    table(&mut out, &h, &rows);
    let _ = writeln!(
        out,
        "\nlatency (TTFT, E2E and queueing in s, TPOT in ms; goodput: share of requests meeting both SLOs)"
    );
    let (h, rows) = render(&LATENCY, &summaries);
    table(&mut out, &h, &rows);
    if let Some(s) = summaries.first() {
        let _ = writeln!(
            out,
            "\nrejected: {} longer than max_model_len, {} larger than the KV memory, {} with an empty prompt or output",
            s.rejected_too_long, s.rejected_too_large, s.rejected_empty
        );
    }
    if let Some(full) = full {
        render_full_attention(&mut out, results, full);
        out.push('\n');
    }
    render_tiers(&mut out, &summaries);
    out.push_str(LEGEND);
    out
}

/// The tiered prefix cache's account of the `-offload` policies: hits by
/// tier, bytes moved each way, modelled transfer time against the prefill
/// time the host hits saved.
fn render_tiers(out: &mut String, summaries: &[&RunSummary]) {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .filter_map(|s| Some((s, s.tiers.as_ref()?)))
        .map(|(s, t)| {
            vec![
                s.policy.clone(),
                t.host_blocks.to_string(),
                pct(s.prefix_hit_rate),
                pct(s.prefix_hit_rate * (1.0 - t.host_share())),
                pct(s.prefix_hit_rate * t.host_share()),
                format!("{:.1}", t.offload_bytes / 1e9),
                format!("{:.1}", t.reload_bytes / 1e9),
                format!("{:.1}", t.transfer_s),
                format!("{:.1}", t.prefill_saved_s),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\ntiered prefix cache (prefix hit split by tier in the manager's proportion of hit tokens; GB moved per GPU; \
         seconds under the step-time model)"
    );
    let header: Vec<String> = [
        "policy",
        "host blocks",
        "prefix hit",
        "device",
        "host",
        "GB out",
        "GB in",
        "transfer s",
        "prefill saved s",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    table(out, &header, &rows);
    out.push('\n');
}

/// A rate sweep: per rate and policy, throughput and latency.
pub fn render_rates_text(setup: &Setup, points: &[RatePoint]) -> String {
    let mut out = String::new();
    heading(&mut out, setup);
    let header: Vec<String> = [
        "rate", "policy", "req/s", "tok/s", "TTFT p50", "p90", "p99", "TPOT p50", "p90", "p99", "E2E p50",
        "p99", "goodput", "preempt",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for p in points {
        for s in &p.runs {
            let l = &s.latency;
            rows.push(vec![
                p.rate.to_string(),
                s.policy.clone(),
                format!("{:.2}", l.requests_per_s),
                format!("{:.0}", s.tokens_per_s),
                secs(l.ttft.p50),
                secs(l.ttft.p90),
                secs(l.ttft.p99),
                ms(l.tpot.p50),
                ms(l.tpot.p90),
                ms(l.tpot.p99),
                secs(l.e2e.p50),
                secs(l.e2e.p99),
                pct(goodput_share(s)),
                s.preemptions.to_string(),
            ]);
        }
    }
    table(&mut out, &header, &rows);
    out.push_str("\nrate: offered Poisson arrivals per second; req/s and tok/s: achieved; TTFT and E2E in s, TPOT in ms.\n");
    out
}

/// A capacity sweep: prefix hit rate per policy against the bounds.
pub fn render_capacities_text(setup: &Setup, sweep: &CapacitySweep) -> String {
    let mut out = String::new();
    heading(&mut out, setup);
    let mut header = vec![
        format!("blocks of {}", sweep.block_size),
        "tokens".into(),
        "optimal".into(),
    ];
    header.extend(setup.policies.iter().map(|p| p.name()));
    let rows: Vec<Vec<String>> = sweep
        .capacities
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let mut row = vec![
                c.to_string(),
                (c * sweep.block_size as u64).to_string(),
                pct(sweep.optimal[i]),
            ];
            row.extend(sweep.runs.iter().map(|r| pct(r[i].prefix_hit_rate)));
            row
        })
        .collect();
    table(&mut out, &header, &rows);
    let _ = writeln!(
        out,
        "\nprefix hit rate: prompt tokens found cached at admission / prompt tokens. infinite cache: {} (every block \
         seen before is found); optimal: Belady's offline optimum with that many blocks (evict the block used \
         farthest in the future), an upper bound for any eviction policy serving the requests in arrival order \
         (closed-loop turns ordered as if replies took no time).",
        pct(sweep.infinite)
    );
    out
}

/// The single-run summary table as CSV, one row per policy.
pub fn render_csv(results: &[RunResult]) -> String {
    let mut out = csv_header("");
    for r in results {
        let _ = writeln!(out, "{}", csv_row("", &r.summary));
    }
    out
}

/// A rate sweep as CSV: one row per rate and policy.
pub fn render_rates_csv(points: &[RatePoint]) -> String {
    let mut out = csv_header("rate,");
    for p in points {
        for s in &p.runs {
            let _ = writeln!(out, "{}", csv_row(&format!("{},", p.rate), s));
        }
    }
    out
}

/// A capacity sweep as CSV: one row per capacity.
pub fn render_capacities_csv(setup: &Setup, sweep: &CapacitySweep) -> String {
    let mut out = String::from("blocks,block_size,tokens,infinite_hit_rate,optimal_hit_rate");
    for p in &setup.policies {
        let _ = write!(out, ",{}", p.name());
    }
    out.push('\n');
    for (i, &c) in sweep.capacities.iter().enumerate() {
        let _ = write!(
            out,
            "{c},{},{},{:.6},{:.6}",
            sweep.block_size,
            c * sweep.block_size as u64,
            sweep.infinite,
            sweep.optimal[i]
        );
        for r in &sweep.runs {
            let _ = write!(out, ",{:.6}", r[i].prefix_hit_rate);
        }
        out.push('\n');
    }
    out
}

const LATENCY_FIELDS: [&str; 4] = ["ttft", "tpot", "e2e", "queueing"];

fn csv_header(prefix: &str) -> String {
    let mut h = format!(
        "{prefix}policy,pool_token_share,pool_waste_share,pool_fragmentation_share,free_share,token_share,\
         fragmentation_share,waste_share,mean_running,max_running,preemptions,recomputed_tokens,swapped_blocks,\
         prefix_hit_rate,requests,finished,rejected_too_long,rejected_too_large,rejected_empty,steps,duration_s,\
         prefill_tokens,generated_tokens,tokens_per_step,tokens_per_s"
    );
    for f in LATENCY_FIELDS {
        for q in ["mean", "p50", "p90", "p99"] {
            let _ = write!(h, ",{f}_{q}_s");
        }
    }
    h.push_str(",goodput_requests,goodput_per_s,requests_per_s\n");
    h
}

fn percentiles(l: &LatencySummary) -> [&Percentiles; 4] {
    [&l.ttft, &l.tpot, &l.e2e, &l.queueing]
}

fn csv_row(prefix: &str, s: &RunSummary) -> String {
    let mut row = format!(
        "{prefix}{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{},{},{},{},{:.6},{},{},{},{},{},{},{:.3},{},{},{:.3},{:.1}",
        s.policy,
        s.pool_token_share,
        s.pool_waste_share,
        s.pool_fragmentation_share,
        s.free_share,
        s.token_share,
        s.fragmentation_share,
        s.waste_share,
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
    for p in percentiles(&s.latency) {
        let _ = write!(row, ",{:.6},{:.6},{:.6},{:.6}", p.mean, p.p50, p.p90, p.p99);
    }
    let l = &s.latency;
    let _ = write!(
        row,
        ",{},{:.4},{:.4}",
        l.goodput_requests, l.goodput_per_s, l.requests_per_s
    );
    row
}

fn percentiles_json(p: &Percentiles) -> Value {
    json!({ "count": p.count, "mean": p.mean, "p50": p.p50, "p90": p.p90, "p99": p.p99 })
}

fn summary_json(s: &RunSummary) -> Value {
    let l = &s.latency;
    json!({
        "policy": s.policy,
        "pool_token_share": s.pool_token_share,
        "pool_waste_share": s.pool_waste_share,
        "pool_fragmentation_share": s.pool_fragmentation_share,
        "free_share": s.free_share,
        "token_share": s.token_share,
        "fragmentation_share": s.fragmentation_share,
        "waste_share": s.waste_share,
        "mean_running": s.mean_running,
        "max_running": s.max_running,
        "preemptions": s.preemptions,
        "recomputed_tokens": s.recomputed_tokens,
        "swapped_blocks": s.swapped_blocks,
        "prefix_hit_rate": s.prefix_hit_rate,
        "prefix_hit_tokens": s.prefix_hit_tokens,
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
        "kv_bytes_per_context_token": s.kv_bytes_per_context_token,
        "tiers": s.tiers.as_ref().map(|t| json!({
            "host_blocks": t.host_blocks,
            "hit_tokens": t.hit_tokens,
            "host_hit_tokens": t.host_hit_tokens,
            "offloaded_blocks": t.offloaded_blocks,
            "reloaded_blocks": t.reloaded_blocks,
            "offload_bytes": t.offload_bytes,
            "reload_bytes": t.reload_bytes,
            "transfer_s": t.transfer_s,
            "prefill_saved_s": t.prefill_saved_s,
        })),
        "latency": {
            "ttft_s": percentiles_json(&l.ttft),
            "tpot_s": percentiles_json(&l.tpot),
            "e2e_s": percentiles_json(&l.e2e),
            "queueing_s": percentiles_json(&l.queueing),
            "slo": { "ttft_s": l.slo.ttft_s, "tpot_s": l.slo.tpot_s },
            "goodput_requests": l.goodput_requests,
            "goodput_per_s": l.goodput_per_s,
            "requests_per_s": l.requests_per_s,
        },
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

fn workload_json(w: &Workload) -> Value {
    json!({
        "name": w.name,
        "requests": w.requests.len(),
        "filtered_out": w.filtered_out,
        "seed": w.seed,
        "closed_loop": w.is_closed_loop(),
    })
}

fn scenario_json(setup: &Setup) -> Value {
    let scenario: &Scenario = &setup.scenario;
    let t = &scenario.time_model;
    json!({
        "name": scenario.name,
        "token_slots": scenario.token_slots().unwrap_or(0),
        "blocks_of_16": scenario.num_blocks(16).unwrap_or(0),
        "kv_cache_groups": scenario.plan(16).ok().flatten().map(|p| p.groups().iter().map(|g| json!({
            "kind": g.kind.to_string(),
            "layers": g.num_layers(),
            "padded_layers": g.num_padded_layers,
        })).collect::<Vec<_>>()),
        "bytes_per_block_of_16": scenario.bytes_per_block(16).ok().flatten(),
        "max_model_len": scenario.max_model_len,
        "max_num_seqs": scenario.max_num_seqs,
        "max_num_batched_tokens": scenario.max_num_batched_tokens,
        "arrivals": setup.arrivals,
        "step_time": {
            "base_s": t.base_s,
            "prefill_token_s": t.prefill_token_s,
            "decode_token_s": t.decode_token_s,
            "kv_bytes_per_token": t.kv_bytes_per_token,
            "hbm_bytes_per_s": t.hbm_bytes_per_s,
            "pcie_bytes_per_s": t.pcie_bytes_per_s,
            "local_layers": t.local_layers.kinds.iter().flatten().map(|(kind, share)| json!({
                "kind": kind.to_string(),
                "share_of_kv_bytes": share,
            })).collect::<Vec<_>>(),
        },
        "slo": { "ttft_s": scenario.slo.ttft_s, "tpot_s": scenario.slo.tpot_s },
    })
}

/// One JSON object: workload, scenario, and per policy its summary and a
/// time series of at most [`MAX_SERIES_POINTS`] samples.
/// For a hybrid model, `full_attention` holds the paged policies' summaries
/// with every layer planned as full attention.
pub fn render_json(setup: &Setup, results: &[RunResult], full: Option<&FullAttentionRuns>) -> Value {
    let mut v = json!({
        "workload": workload_json(&setup.workload),
        "scenario": scenario_json(setup),
        "runs": results.iter().map(|r| {
            let mut v = summary_json(&r.summary);
            v["series"] = Value::Array(downsample(&r.samples, MAX_SERIES_POINTS).iter().map(sample_json).collect());
            v
        }).collect::<Vec<_>>(),
    });
    if let Some(full) = full {
        v["full_attention"] = json!({
            "scenario": full.scenario.name,
            "blocks_of_16": full.scenario.num_blocks(16).unwrap_or(0),
            "runs": full.runs.iter().map(|(_, s)| summary_json(s)).collect::<Vec<_>>(),
        });
    }
    v
}

/// A rate sweep as one JSON object: per rate, the policies' summaries.
pub fn render_rates_json(setup: &Setup, points: &[RatePoint]) -> Value {
    json!({
        "workload": workload_json(&setup.workload),
        "scenario": scenario_json(setup),
        "rates": points.iter().map(|p| json!({
            "rate": p.rate,
            "runs": p.runs.iter().map(summary_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// A capacity sweep as one JSON object.
pub fn render_capacities_json(setup: &Setup, sweep: &CapacitySweep) -> Value {
    json!({
        "workload": workload_json(&setup.workload),
        "scenario": scenario_json(setup),
        "block_size": sweep.block_size,
        "capacities": sweep.capacities,
        "infinite_hit_rate": sweep.infinite,
        "optimal_hit_rate": sweep.optimal,
        "runs": setup.policies.iter().zip(&sweep.runs).map(|(p, r)| json!({
            "policy": p.name(),
            "prefix_hit_rate": r.iter().map(|s| s.prefix_hit_rate).collect::<Vec<_>>(),
            "summaries": r.iter().map(summary_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
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

    #[test]
    fn seconds_keep_three_digits() {
        assert_eq!(
            [0.0, 0.00423, 0.0423, 1.274, 12.74, 1274.0].map(secs),
            ["0", "0.0042", "0.04", "1.27", "12.7", "1274"]
        );
    }
}
