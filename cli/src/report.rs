//! Rendering a [`Report`] as a readable table or as one JSON object.
//!
//! The JSON field names are stable (scripts depend on them); sizes are in
//! bytes, token and block counts are integers, and every input carries its
//! origin (`given`, `config`, `estimate`, `default`).

use std::fmt::Write as _;

use pagedkv::{
    AttentionKind, ByteSize, CachePlan, CapacityAdvice, EngineRules, MemoryBudget, PlanError,
    UtilizationAdvice,
};
use serde_json::{json, Value};

use crate::args::Engine;
use crate::plan::{Budget, Inputs, Origin, Outcome, Report};

const LABEL_WIDTH: usize = 22;

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<LABEL_WIDTH$}{value}");
}

fn size_row(out: &mut String, label: &str, bytes: u64, note: Option<String>) {
    match note {
        Some(n) => row(out, label, format!("{:>10}  ({n})", ByteSize(bytes).to_string())),
        None => row(out, label, format!("{:>10}", ByteSize(bytes).to_string())),
    }
}

/// The plan's shape when the budget could not be sized (nothing left for the
/// cache): the same layout and rules over an unlimited budget, for the spec rows.
fn shape_only(i: &Inputs) -> Option<CachePlan> {
    CachePlan::for_engine(
        &i.layout,
        i.block_size,
        &MemoryBudget::direct(u64::MAX / 2),
        i.rules,
    )
    .ok()
}

/// "12 sliding_window(128), 12 full": the layers per kind, in order of first appearance.
fn kinds_summary(i: &Inputs) -> Option<String> {
    let mut counts: Vec<(AttentionKind, usize)> = Vec::new();
    for l in &i.layout.layers {
        match counts.iter_mut().find(|(k, _)| *k == l.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((l.kind, 1)),
        }
    }
    (counts.len() > 1 || counts[0].0 != AttentionKind::Full).then(|| {
        counts
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

fn engine_label(e: Engine) -> &'static str {
    match e {
        Engine::VllmV1 => "vllm-v1 (vLLM 0.33.0)",
        Engine::VllmV0 => "vllm-v0 (vLLM's V0 engine)",
    }
}

fn spec_section(out: &mut String, i: &Inputs, plan: Option<&CachePlan>) {
    let s = &i.spec;
    let _ = writeln!(out, "KV cache spec");
    match kinds_summary(i) {
        Some(kinds) => row(out, "layers", format!("{}: {kinds}", s.num_layers)),
        None => row(out, "layers", s.num_layers),
    }
    match s.mla {
        Some(m) => row(
            out,
            "attention",
            format!(
                "MLA: one latent of {} + {} (rope) per token per layer, replicated on every GPU",
                m.kv_lora_rank, m.qk_rope_head_dim
            ),
        ),
        None => {
            let heads = match i.num_attention_heads {
                Some(h) => format!(" ({h} attention heads)"),
                None => String::new(),
            };
            row(out, "KV heads", format!("{}{heads}", s.num_kv_heads));
            row(out, "head dim", s.head_dim_k);
        }
    }
    row(
        out,
        "KV dtype",
        format!("{} ({})", s.dtype, i.kv_dtype_origin.label()),
    );
    if s.tensor_parallel_size > 1 {
        let per_rank = if s.mla.is_some() {
            "latent replicated".to_string()
        } else {
            format!("{} KV heads per GPU", s.kv_heads_per_rank())
        };
        row(
            out,
            "tensor parallel",
            format!("{} GPUs ({per_rank})", s.tensor_parallel_size),
        );
    }
    if s.pipeline_parallel_size > 1 {
        row(
            out,
            "pipeline parallel",
            format!(
                "{} stages (the largest holds {} layers)",
                s.pipeline_parallel_size,
                s.layers_per_stage()
            ),
        );
    }
    row(out, "block size", format!("{} tokens", i.block_size));
    if let Some(p) = plan {
        {
            let b = p.breakdown();
            row(out, "bytes per token", b.bytes_per_token);
            let groups = p.groups();
            if groups.len() > 1 {
                let kinds: Vec<String> = groups.iter().map(|g| g.kind.to_string()).collect();
                row(
                    out,
                    "KV cache groups",
                    format!(
                        "{} of {} layers: {}",
                        groups.len(),
                        groups[0].num_padded_layers,
                        kinds.join(", ")
                    ),
                );
                let padding: u32 = groups.iter().map(|g| g.num_padding_layers()).sum();
                if padding > 0 {
                    row(out, "padding", format!("{padding} layer slots unused per block"));
                }
            }
            if groups.len() > 1 {
                let page = i.layout.page_bytes(0, i.block_size).unwrap_or(0); // (a planned layout has layers)
                row(
                    out,
                    "bytes per block",
                    format!(
                        "{} ({} layers × {page}-byte pages)",
                        b.bytes_per_block,
                        b.bytes_per_block / page
                    ),
                );
            } else {
                row(out, "bytes per block", b.bytes_per_block);
            }
        }
    }
    if let Some(w) = i.sliding_window {
        let how = match i.engine {
            Engine::VllmV0 => "reported only: vllm-v0 counts every token up to max_model_len",
            Engine::VllmV1
                if i.layout
                    .layers
                    .iter()
                    .any(|l| matches!(l.kind, AttentionKind::SlidingWindow { .. })) =>
            {
                "sliding layers keep the window and the tokens in flight"
            }
            Engine::VllmV1 => "not used: the layers are planned as full attention",
        };
        row(out, "sliding window", format!("{w} tokens ({how})"));
    }
}

fn budget_section(out: &mut String, i: &Inputs) {
    let _ = writeln!(out, "Memory budget (one GPU)");
    match &i.budget {
        Budget::Direct { kv_cache_bytes } => {
            row(
                out,
                "KV cache",
                format!(
                    "{:>10}  (given: {kv_cache_bytes} bytes)",
                    ByteSize(*kv_cache_bytes).to_string()
                ),
            );
        }
        Budget::Device {
            gpu,
            memory: d,
            utilization,
            weights,
            non_torch,
            activation_peak,
            cudagraph,
        } => {
            let device = match gpu {
                Some(g) => format!("{} preset: {}", g.name, g.product),
                None => "given".to_string(),
            };
            size_row(out, "device memory", d.device_bytes, Some(device));
            let (usable, rounding) = match i.rules {
                EngineRules::VllmV0 => (d.usable_bytes(), "floored"),
                _ => (d.usable_bytes_rounded_up(), "rounded up"),
            };
            size_row(
                out,
                &format!("× utilization {:.2}", d.gpu_memory_utilization),
                usable,
                Some(format!("{}, {rounding}", utilization.label())),
            );
            size_row(out, "− weights", d.weights_bytes, Some(weights.label()));
            size_row(out, "− non-torch", d.non_torch_bytes, Some(non_torch.label()));
            size_row(
                out,
                "− activation peak",
                d.activation_peak_bytes,
                Some(activation_peak.label()),
            );
            if i.engine == Engine::VllmV1 || d.cudagraph_bytes > 0 {
                size_row(out, "− CUDA graphs", d.cudagraph_bytes, Some(cudagraph.label()));
            }
            let kv = i.rules.kv_bytes(&i.budget.memory_budget());
            if kv >= 0 {
                size_row(out, "= KV cache", kv as u64, None);
            } else {
                row(
                    out,
                    "= KV cache",
                    format!("{:>10}", format!("-{}", ByteSize(kv.unsigned_abs() as u64))),
                );
            }
        }
    }
}

/// "sliding_window(128): 265, full: 8192" per group kind.
fn blocks_per_group(plan: &CachePlan, i: &Inputs) -> String {
    let mut parts: Vec<(AttentionKind, u64, usize)> = Vec::new();
    for g in plan.groups() {
        let blocks = match i.rules {
            EngineRules::VllmV1(r) => {
                g.kind
                    .vllm_max_blocks_per_seq(i.max_model_len, r.max_in_flight_tokens, i.block_size)
            }
            _ => pagedkv::blocks_for(i.max_model_len, i.block_size as u64),
        };
        match parts.iter_mut().find(|(k, _, _)| *k == g.kind) {
            Some((_, _, n)) => *n += 1,
            None => parts.push((g.kind, blocks, 1)),
        }
    }
    parts
        .iter()
        .map(|(k, b, n)| match n {
            1 => format!("{k}: {b}"),
            n => format!("{k}: {b} in each of {n} groups"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// vLLM V1's start-up log line: "GPU KV cache size: N tokens, Maximum concurrency for L tokens per request: X.XXx"
/// (`get_kv_cache_capacity`: all blocks, its null block included, over the blocks a request takes).
fn vllm_log_capacity(plan: &CachePlan, max_model_len: u64) -> (u64, f64) {
    let concurrency = plan.num_blocks() as f64 / plan.blocks_per_seq(max_model_len).max(1) as f64;
    ((concurrency * max_model_len as f64) as u64, concurrency)
}

/// The readable table.
pub fn render_text(r: &Report) -> String {
    let i = &r.inputs;
    let plan = r.plan();
    let mut out = String::new();
    let model_type = i
        .model_type
        .as_deref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "pagedkv plan: {}{model_type}, engine {}\n",
        i.model,
        engine_label(i.engine)
    );
    let shape = shape_only(i);
    spec_section(&mut out, i, plan.or(shape.as_ref()));
    out.push('\n');
    budget_section(&mut out, i);
    out.push('\n');

    if let Some(plan) = plan {
        let b = plan.breakdown();
        let _ = writeln!(out, "Blocks");
        let held = match plan.rules().reserved_blocks() {
            0 => String::new(),
            n => format!(" ({n} held back as vLLM's null block)"),
        };
        row(
            &mut out,
            "blocks",
            format!("{} of {} tokens{held}", plan.num_blocks(), plan.block_size()),
        );
        if plan.groups().len() == 1 {
            let usable_tokens = plan.usable_blocks() * plan.block_size() as u64;
            row(&mut out, "token capacity", format!("{usable_tokens} tokens"));
        }
        row(
            &mut out,
            "left over",
            format!("{} bytes (less than one block)", b.unused_bytes),
        );
        out.push('\n');
    }

    let _ = writeln!(out, "Capacity");
    let max_len_blocks = match plan {
        Some(p) if p.groups().len() > 1 || i.engine == Engine::VllmV1 => {
            format!("{} blocks per sequence", p.blocks_per_seq(i.max_model_len))
        }
        _ => format!(
            "{} blocks",
            pagedkv::blocks_for(i.max_model_len, i.block_size as u64)
        ),
    };
    row(
        &mut out,
        "max_model_len",
        format!(
            "{} tokens = {max_len_blocks} ({})",
            i.max_model_len,
            i.max_model_len_origin.label()
        ),
    );
    let windowed = i.layout.layers.iter().any(|l| l.kind != AttentionKind::Full);
    if let (Some(p), EngineRules::VllmV1(r), true) = (plan, i.rules, windowed) {
        row(&mut out, "per group", blocks_per_group(p, i));
        row(
            &mut out,
            "tokens in flight",
            format!(
                "{} ({} batched tokens, {})",
                r.max_in_flight_tokens,
                i.max_num_batched_tokens,
                i.max_num_batched_tokens_origin.label()
            ),
        );
    }
    if let Outcome::Fits { concurrency: c, .. } = &r.outcome {
        row(
            &mut out,
            "full length at once",
            format!("{} of {} tokens", seqs(c.full_length_seqs), c.max_model_len),
        );
        if let (Some(l), Some(n)) = (c.avg_seq_len, c.avg_length_seqs) {
            row(
                &mut out,
                "average length",
                format!("{} of {l} tokens ({})", seqs(n), i.avg_seq_len_origin.label()),
            );
        }
    }
    if let Some(m) = i.max_num_seqs {
        row(&mut out, "max_num_seqs", format!("{m} (given)"));
    }
    out.push('\n');

    let _ = writeln!(out, "Verdict");
    match &r.outcome {
        Outcome::Fits { plan, concurrency: c } => {
            if plan.groups().len() == 1 {
                let _ = writeln!(
                    out,
                    "  FITS: one sequence of max_model_len {} tokens fits in the {}-token cache.",
                    i.max_model_len,
                    plan.usable_blocks() * plan.block_size() as u64
                );
            } else {
                let _ = writeln!(
                    out,
                    "  FITS: one sequence of max_model_len {} tokens takes {} of the {} usable blocks.",
                    i.max_model_len,
                    plan.blocks_per_seq(i.max_model_len),
                    plan.usable_blocks()
                );
            }
            if i.engine == Engine::VllmV1 {
                let (tokens, concurrency) = vllm_log_capacity(plan, i.max_model_len);
                let _ = writeln!(
                    out,
                    "  vLLM 0.33.0 would log: GPU KV cache size: {tokens} tokens, maximum concurrency for {} tokens per request: {concurrency:.2}x.",
                    i.max_model_len
                );
            }
            if let Some(m) = c.max_num_seqs {
                if m > c.full_length_seqs {
                    let _ = writeln!(
                        out,
                        "  max_num_seqs={m} does NOT fit at full length: only {} of {} tokens fit at once (more run only while sequences are short; the rest are preempted).",
                        seqs(c.full_length_seqs), c.max_model_len
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "  max_num_seqs={m} fits: {} full-length sequences fit at once.",
                        c.full_length_seqs
                    );
                }
            }
            out.push('\n');
            let _ = writeln!(out, "Advice");
            let _ = writeln!(out, "  {c}.");
        }
        Outcome::TooLong { error, .. } | Outcome::NoCache { error } => {
            let _ = writeln!(out, "  DOES NOT FIT.");
            let _ = writeln!(out, "{error}");
        }
    }
    if !i.notes.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "Notes");
        for n in &i.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

fn origin_json(o: &Origin) -> Value {
    json!({ "kind": o.kind(), "detail": o.label() })
}

fn advice_lines(a: &CapacityAdvice) -> Vec<String> {
    let mut v = Vec::new();
    if a.largest_max_model_len > 0 {
        v.push(format!("max_model_len {}", a.largest_max_model_len));
    }
    match a.utilization {
        Some(UtilizationAdvice::Fits(u)) => v.push(format!("gpu_memory_utilization {u:.2}")),
        Some(UtilizationAdvice::CannotFit { .. }) => v.push("no gpu_memory_utilization is enough".into()),
        None => v.push(format!("kv_cache_memory {} bytes", a.min_kv_bytes)),
    }
    if a.fp8.is_some_and(|f| f.fits) {
        v.push("kv_cache_dtype fp8".into());
    }
    if let Some((tp, _)) = a.tensor_parallel.filter(|(_, t)| t.fits) {
        v.push(format!("tensor_parallel_size {tp}"));
    }
    v
}

/// One JSON object with the same numbers as the table.
pub fn render_json(r: &Report) -> Value {
    let i = &r.inputs;
    let s = &i.spec;
    let plan = r.plan();
    let shape = shape_only(i);
    let sized = plan.or(shape.as_ref());
    let spec = json!({
        "num_layers": s.num_layers,
        "num_kv_heads": s.mla.map_or(Some(s.num_kv_heads), |_| None),
        "num_attention_heads": i.num_attention_heads,
        "head_dim": s.mla.map_or(Some(s.head_dim_k), |_| None),
        "mla": s.mla.map(|m| json!({"kv_lora_rank": m.kv_lora_rank, "qk_rope_head_dim": m.qk_rope_head_dim})),
        "kv_dtype": s.dtype.name(),
        "kv_dtype_origin": origin_json(&i.kv_dtype_origin),
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "block_size": i.block_size,
        "bytes_per_token": i.layout.bytes_per_token(),
        "bytes_per_block": sized.map(|p| p.breakdown().bytes_per_block),
        "sliding_window": i.sliding_window,
        "layer_kinds": i.layout.layers.iter().map(|l| l.kind.to_string()).collect::<Vec<_>>(),
        "groups": sized.map(|p| p.groups().iter().map(|g| json!({
            "kind": g.kind.to_string(),
            "layers": g.layers,
            "num_padded_layers": g.num_padded_layers,
        })).collect::<Vec<_>>()),
    });
    let budget = match &i.budget {
        Budget::Direct { kv_cache_bytes } => json!({
            "mode": "direct",
            "kv_cache_bytes": kv_cache_bytes,
        }),
        Budget::Device {
            gpu,
            memory: d,
            utilization,
            weights,
            non_torch,
            activation_peak,
            cudagraph,
        } => json!({
            "mode": "device",
            "gpu": gpu.map(|g| g.name),
            "device_bytes": d.device_bytes,
            "gpu_memory_utilization": d.gpu_memory_utilization,
            "gpu_memory_utilization_origin": origin_json(utilization),
            "usable_bytes": match i.rules { EngineRules::VllmV0 => d.usable_bytes(), _ => d.usable_bytes_rounded_up() },
            "weights_bytes": d.weights_bytes,
            "weights_origin": origin_json(weights),
            "non_torch_bytes": d.non_torch_bytes,
            "non_torch_origin": origin_json(non_torch),
            "activation_peak_bytes": d.activation_peak_bytes,
            "activation_peak_origin": origin_json(activation_peak),
            "cudagraph_bytes": d.cudagraph_bytes,
            "cudagraph_origin": origin_json(cudagraph),
            "kv_cache_bytes": i.rules.kv_bytes(&i.budget.memory_budget()).max(0) as u64,
        }),
    };
    let blocks = plan.map(|p| {
        json!({
            "num_blocks": p.num_blocks(),
            "usable_blocks": p.usable_blocks(),
            "token_capacity": p.token_capacity(),
            "unused_bytes": p.breakdown().unused_bytes,
            "blocks_per_seq": p.blocks_per_seq(i.max_model_len),
        })
    });
    let (verdict, concurrency, error, advice) = match &r.outcome {
        Outcome::Fits { concurrency: c, plan } => {
            let (log_tokens, log_concurrency) = vllm_log_capacity(plan, i.max_model_len);
            (
                "fits",
                Some(json!({
                    "full_length_seqs": c.full_length_seqs,
                    "avg_seq_len": c.avg_seq_len,
                    "avg_length_seqs": c.avg_length_seqs,
                    "max_num_seqs": c.max_num_seqs,
                    "max_num_seqs_fits": c.max_num_seqs.map(|m| m <= c.full_length_seqs),
                    "vllm_kv_cache_size_tokens": (i.engine == Engine::VllmV1).then_some(log_tokens),
                    "vllm_max_concurrency": (i.engine == Engine::VllmV1).then_some(log_concurrency),
                })),
                None,
                None,
            )
        }
        Outcome::TooLong { error, .. } => {
            let advice = match error {
                PlanError::MaxModelLenTooLarge(a) => Some(json!({
                    "estimated_max_model_len": a.estimated_max_model_len,
                    "largest_max_model_len": a.largest_max_model_len,
                    "needed_kv_bytes": a.needed_kv_bytes,
                    "available_kv_bytes": a.kv_bytes,
                    "min_kv_cache_bytes": a.min_kv_bytes,
                    "gpu_memory_utilization": match a.utilization {
                        Some(UtilizationAdvice::Fits(u)) => Some(u),
                        _ => None,
                    },
                    "fp8_token_capacity": a.fp8.map(|f| f.token_capacity),
                    "fp8_fits": a.fp8.map(|f| f.fits),
                    "doubled_tensor_parallel": a.tensor_parallel.map(|(tp, t)| json!({
                        "tensor_parallel_size": tp,
                        "token_capacity": t.token_capacity,
                        "fits": t.fits,
                    })),
                    "summary": advice_lines(a),
                })),
                _ => None,
            };
            ("max_model_len_too_large", None, Some(error.to_string()), advice)
        }
        Outcome::NoCache { error } => {
            let v = match error {
                PlanError::NoKvMemory(_) => "no_kv_memory",
                PlanError::OnlyNullBlock { .. } => "only_null_block",
                _ => "below_one_block",
            };
            (v, None, Some(error.to_string()), None)
        }
    };
    let in_flight = match i.rules {
        EngineRules::VllmV1(r) => Some(r.max_in_flight_tokens),
        _ => None,
    };
    json!({
        "model": i.model,
        "model_type": i.model_type,
        "engine": i.engine.name(),
        "fits": r.exit_code() == 0,
        "verdict": verdict,
        "exit_code": r.exit_code(),
        "spec": spec,
        "budget": budget,
        "blocks": blocks,
        "max_model_len": i.max_model_len,
        "max_model_len_origin": origin_json(&i.max_model_len_origin),
        "max_num_batched_tokens": i.max_num_batched_tokens,
        "max_num_batched_tokens_origin": origin_json(&i.max_num_batched_tokens_origin),
        "max_in_flight_tokens": in_flight,
        "concurrency": concurrency,
        "error": error,
        "advice": advice,
        "notes": i.notes,
    })
}

/// "1 sequence", "2 sequences".
fn seqs(n: u64) -> String {
    if n == 1 {
        "1 sequence".to_string()
    } else {
        format!("{n} sequences")
    }
}
