//! Rendering a [`Report`] as a readable table or as one JSON object.
//!
//! The JSON field names are stable (scripts depend on them); sizes are in
//! bytes, token and block counts are integers, and every input carries its
//! origin (`given`, `config`, `estimate`, `default`).

use std::fmt::Write as _;

use pagedkv::{blocks_for, ByteSize, CapacityAdvice, PlanError, UtilizationAdvice};
use serde_json::{json, Value};

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

fn spec_section(out: &mut String, i: &Inputs) {
    let s = &i.spec;
    let _ = writeln!(out, "KV cache spec");
    row(out, "layers", s.num_layers);
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
    row(out, "block size", format!("{} tokens", i.block_size));
    row(out, "bytes per token", s.bytes_per_token());
    row(out, "bytes per block", s.bytes_per_block(i.block_size));
    if let Some(w) = i.sliding_window {
        row(
            out,
            "sliding window",
            format!("{w} tokens (reported only: the plan counts every token up to max_model_len)"),
        );
    }
}

fn budget_section(out: &mut String, b: &Budget) {
    let _ = writeln!(out, "Memory budget (one GPU)");
    match b {
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
            weights,
            non_torch,
            activation_peak,
        } => {
            let device = match gpu {
                Some(g) => format!("{} preset: {}", g.name, g.product),
                None => "given".to_string(),
            };
            size_row(out, "device memory", d.device_bytes, Some(device));
            size_row(
                out,
                &format!("× utilization {:.2}", d.gpu_memory_utilization),
                d.usable_bytes(),
                None,
            );
            size_row(out, "− weights", d.weights_bytes, Some(weights.label()));
            size_row(out, "− non-torch", d.non_torch_bytes, Some(non_torch.label()));
            size_row(
                out,
                "− activation peak",
                d.activation_peak_bytes,
                Some(activation_peak.label()),
            );
            let kv = d.kv_bytes();
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

fn advice_lines(a: &CapacityAdvice) -> Vec<String> {
    let mut v = vec![format!("max_model_len {}", a.largest_max_model_len)];
    match a.utilization {
        Some(UtilizationAdvice::Fits(u)) => v.push(format!("gpu_memory_utilization {u:.2}")),
        Some(UtilizationAdvice::CannotFit { .. }) => v.push("no gpu_memory_utilization is enough".into()),
        None => v.push(format!("kv_cache_memory {} bytes", a.needed_kv_bytes)),
    }
    v
}

/// The readable table.
pub fn render_text(r: &Report) -> String {
    let i = &r.inputs;
    let mut out = String::new();
    let model_type = i
        .model_type
        .as_deref()
        .map(|t| format!(" ({t})"))
        .unwrap_or_default();
    let _ = writeln!(out, "pagedkv plan: {}{model_type}\n", i.model);
    spec_section(&mut out, i);
    out.push('\n');
    budget_section(&mut out, &i.budget);
    out.push('\n');

    if let Some(plan) = r.plan() {
        let b = plan.breakdown();
        let _ = writeln!(out, "Blocks");
        row(
            &mut out,
            "blocks",
            format!("{} of {} tokens", plan.num_blocks(), plan.block_size()),
        );
        row(
            &mut out,
            "token capacity",
            format!("{} tokens", plan.token_capacity()),
        );
        row(
            &mut out,
            "left over",
            format!("{} bytes (less than one block)", b.unused_bytes),
        );
        out.push('\n');
    }

    let _ = writeln!(out, "Capacity");
    row(
        &mut out,
        "max_model_len",
        format!(
            "{} tokens = {} blocks ({})",
            i.max_model_len,
            blocks_for(i.max_model_len, i.block_size as u64),
            i.max_model_len_origin.label()
        ),
    );
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
            let _ = writeln!(
                out,
                "  FITS: one sequence of max_model_len {} tokens fits in the {}-token cache.",
                i.max_model_len,
                plan.token_capacity()
            );
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

/// One JSON object with the same numbers as the table.
pub fn render_json(r: &Report) -> Value {
    let i = &r.inputs;
    let s = &i.spec;
    let spec = json!({
        "num_layers": s.num_layers,
        "num_kv_heads": s.mla.map_or(Some(s.num_kv_heads), |_| None),
        "num_attention_heads": i.num_attention_heads,
        "head_dim": s.mla.map_or(Some(s.head_dim_k), |_| None),
        "mla": s.mla.map(|m| json!({"kv_lora_rank": m.kv_lora_rank, "qk_rope_head_dim": m.qk_rope_head_dim})),
        "kv_dtype": s.dtype.name(),
        "kv_dtype_origin": origin_json(&i.kv_dtype_origin),
        "tensor_parallel_size": s.tensor_parallel_size,
        "block_size": i.block_size,
        "bytes_per_token": s.bytes_per_token(),
        "bytes_per_block": s.bytes_per_block(i.block_size),
        "sliding_window": i.sliding_window,
    });
    let budget = match &i.budget {
        Budget::Direct { kv_cache_bytes } => json!({
            "mode": "direct",
            "kv_cache_bytes": kv_cache_bytes,
        }),
        Budget::Device {
            gpu,
            memory: d,
            weights,
            non_torch,
            activation_peak,
        } => json!({
            "mode": "device",
            "gpu": gpu.map(|g| g.name),
            "device_bytes": d.device_bytes,
            "gpu_memory_utilization": d.gpu_memory_utilization,
            "usable_bytes": d.usable_bytes(),
            "weights_bytes": d.weights_bytes,
            "weights_origin": origin_json(weights),
            "non_torch_bytes": d.non_torch_bytes,
            "non_torch_origin": origin_json(non_torch),
            "activation_peak_bytes": d.activation_peak_bytes,
            "activation_peak_origin": origin_json(activation_peak),
            "kv_cache_bytes": d.kv_bytes().max(0) as u64,
        }),
    };
    let blocks = r.plan().map(|p| {
        json!({
            "num_blocks": p.num_blocks(),
            "token_capacity": p.token_capacity(),
            "unused_bytes": p.breakdown().unused_bytes,
        })
    });
    let (verdict, concurrency, error, advice) = match &r.outcome {
        Outcome::Fits { concurrency: c, .. } => (
            "fits",
            Some(json!({
                "full_length_seqs": c.full_length_seqs,
                "avg_seq_len": c.avg_seq_len,
                "avg_length_seqs": c.avg_length_seqs,
                "max_num_seqs": c.max_num_seqs,
                "max_num_seqs_fits": c.max_num_seqs.map(|m| m <= c.full_length_seqs),
            })),
            None,
            None,
        ),
        Outcome::TooLong { error, .. } => {
            let advice = match error {
                PlanError::MaxModelLenTooLarge(a) => Some(json!({
                    "largest_max_model_len": a.largest_max_model_len,
                    "needed_kv_bytes": a.needed_kv_bytes,
                    "gpu_memory_utilization": match a.utilization {
                        Some(UtilizationAdvice::Fits(u)) => Some(u),
                        _ => None,
                    },
                    "fp8_token_capacity": a.fp8.map(|a| a.token_capacity),
                    "doubled_tensor_parallel": a.tensor_parallel.map(|(tp, a)| json!({"tensor_parallel_size": tp, "token_capacity": a.token_capacity})),
                    "summary": advice_lines(a),
                })),
                _ => None,
            };
            ("max_model_len_too_large", None, Some(error.to_string()), advice)
        }
        Outcome::NoCache { error } => {
            let v = match error {
                PlanError::NoKvMemory(_) => "no_kv_memory",
                _ => "below_one_block",
            };
            (v, None, Some(error.to_string()), None)
        }
    };
    json!({
        "model": i.model,
        "model_type": i.model_type,
        "fits": r.exit_code() == 0,
        "verdict": verdict,
        "exit_code": r.exit_code(),
        "spec": spec,
        "budget": budget,
        "blocks": blocks,
        "max_model_len": i.max_model_len,
        "max_model_len_origin": origin_json(&i.max_model_len_origin),
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
