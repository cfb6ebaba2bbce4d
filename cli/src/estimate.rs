//! Estimates of what vLLM's memory profile measures, for when the user does not
//! give them: the weights (parameter count × dtype bytes) and the activation
//! peak of the profiling forward pass.
//!
//! Both are rough. The parameter count covers the language model only (no
//! vision tower, no biases); MoE and MLA layers are approximated from their
//! projection sizes. The activation peak is a per-token sum of the largest
//! live tensors in one layer, plus the sampler's logits. Measured values (vLLM
//! logs "Model loading took X GiB" and the activation peak at start-up) beat
//! both: pass them with `--weights` and `--activation-peak`.

use pagedkv::KvDtype;

use crate::error::InputError;
use crate::hf_config::ModelConfig;

/// A parameter count and how it was obtained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEstimate {
    /// Parameters of the language model.
    pub params: u64,
    /// What the count leaves out or approximates, one note per item.
    pub caveats: Vec<String>,
}

fn need(value: Option<u64>, field: &str, flag: &str) -> Result<u64, InputError> {
    value.ok_or_else(|| {
        InputError::new(
            field,
            format!("missing from the config, so the {flag} cannot be estimated; pass {flag} SIZE"),
        )
    })
}

/// Counts the language model's parameters from the config's shape: embeddings
/// (and an untied LM head), per layer the attention projections, the MLP (or
/// experts) and two norms, and the final norm.
///
/// Counted in `f64` (exact below 2^53 parameters, i.e. for every real model) so
/// that an absurd config saturates instead of overflowing.
pub fn count_params(c: &ModelConfig) -> Result<ParamEstimate, InputError> {
    let hidden = need(c.hidden_size, "hidden_size", "--weights")? as f64;
    let vocab = need(c.vocab_size, "vocab_size", "--weights")? as f64;
    let layers = c.num_layers as f64;
    let heads = c.num_attention_heads as f64;
    let head_dim = c.head_dim as f64;
    let mut caveats = Vec::new();

    let attention = match (c.mla, c.mla_projections) {
        (Some(mla), Some(p)) => {
            let rope = mla.qk_rope_head_dim as f64;
            let (nope, v_head_dim) = (p.qk_nope_head_dim as f64, p.v_head_dim as f64);
            let q = match p.q_lora_rank.map(|r| r as f64) {
                Some(r) => hidden * r + r + r * heads * (nope + rope),
                None => hidden * heads * (nope + rope),
            };
            let rank = mla.kv_lora_rank as f64;
            let kv_a = hidden * (rank + rope) + rank;
            let kv_b = rank * heads * (nope + v_head_dim);
            let o = heads * v_head_dim * hidden;
            caveats.push("MLA attention counted from its projection sizes".to_string());
            q + kv_a + kv_b + o
        }
        _ => {
            let q = hidden * heads * head_dim;
            let kv = 2.0 * hidden * c.num_kv_heads as f64 * head_dim;
            q + kv + heads * head_dim * hidden
        }
    };

    let dense_mlp = |inter: u64| 3.0 * hidden * inter as f64; // gate, up, down
    let mlp_total = match c.moe {
        None => layers * dense_mlp(need(c.intermediate_size, "intermediate_size", "--weights")?),
        Some(m) => {
            let dense_layers = m.dense_layers.min(c.num_layers as u64);
            let dense = if dense_layers > 0 {
                dense_layers as f64 * dense_mlp(need(c.intermediate_size, "intermediate_size", "--weights")?)
            } else {
                0.0
            };
            let experts = m.num_experts as f64 * dense_mlp(m.expert_intermediate_size)
                + dense_mlp(m.shared_intermediate_size)
                + hidden * m.num_experts as f64; // router
            caveats.push(format!(
                "MoE approximated: {} experts of intermediate size {} in {} of {} layers, all held in memory",
                m.num_experts,
                m.expert_intermediate_size,
                c.num_layers as u64 - dense_layers,
                c.num_layers
            ));
            dense + (c.num_layers as u64 - dense_layers) as f64 * experts
        }
    };

    let norms = layers * 2.0 * hidden + hidden;
    let embeddings = vocab * hidden * if c.tie_word_embeddings { 1.0 } else { 2.0 };
    if c.has_vision {
        caveats.push("the vision encoder is not counted".to_string());
    }
    if c.quantized {
        caveats.push("the config has a quantization_config: this counts unquantized weights".to_string());
    }
    Ok(ParamEstimate {
        // `as` saturates: an absurd config gives u64::MAX, not a wrapped count.
        params: (embeddings + layers * attention + mlp_total + norms) as u64,
        caveats,
    })
}

/// Bytes of weights on one GPU: parameters × `dtype` bytes, split over
/// `tensor_parallel_size` ranks (rounded up).
pub fn weights_bytes(params: u64, dtype: KvDtype, tensor_parallel_size: u32) -> u64 {
    params
        .saturating_mul(dtype.bytes())
        .div_ceil(tensor_parallel_size.max(1) as u64)
}

/// The activation peak of a profiling forward pass over `max_num_batched_tokens`
/// tokens, on one GPU: per token, the residual stream and norms (4 × hidden),
/// the q/k/v projections and the MLP's gate/up output and activation
/// (3 × intermediate; for MoE, the routed experts' share), in `dtype`; plus the
/// sampler's float32 logits for `max_num_seqs` rows. Not split over tensor-parallel
/// ranks (an overestimate there), and without a multimodal encoder's profile.
pub fn activation_peak_bytes(
    c: &ModelConfig,
    dtype: KvDtype,
    max_num_batched_tokens: u64,
    max_num_seqs: u64,
) -> Result<u64, InputError> {
    let hidden = need(c.hidden_size, "hidden_size", "--activation-peak")? as f64;
    let vocab = need(c.vocab_size, "vocab_size", "--activation-peak")? as f64;
    let heads = c.num_attention_heads as f64;
    let head_dim = c.head_dim as f64;
    let inter = match c.moe {
        Some(m) => (c.intermediate_size.unwrap_or(0) as f64).max(
            m.experts_per_token.unwrap_or(1) as f64 * m.expert_intermediate_size as f64
                + m.shared_intermediate_size as f64,
        ),
        None => need(c.intermediate_size, "intermediate_size", "--activation-peak")? as f64,
    };
    let qkv = heads * head_dim + 2.0 * c.num_kv_heads as f64 * head_dim;
    let per_token = 4.0 * hidden + qkv + 3.0 * inter;
    let logits = max_num_seqs.min(max_num_batched_tokens) as f64 * vocab * 4.0;
    // In f64 like the parameter count; `as` saturates for absurd inputs.
    Ok((max_num_batched_tokens as f64 * per_token * dtype.bytes() as f64 + logits) as u64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(name: &str) -> ModelConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../data/configs")
            .join(format!("{name}.json"));
        ModelConfig::from_file(&path).unwrap()
    }

    fn billions(name: &str) -> f64 {
        count_params(&fixture(name)).unwrap().params as f64 / 1e9
    }

    #[test]
    fn param_counts_match_the_published_sizes() {
        // Published sizes: Llama-3.1-8B 8.03B, Qwen2.5-7B 7.62B (7.61B), Mistral-7B 7.24B,
        // Qwen2-VL-2B's language model 1.54B (2.21B with the vision tower), DeepSeek-V2-Lite 15.7B.
        let cases = [
            ("Llama-3.1-8B-Instruct", 8.03),
            ("Qwen2.5-7B-Instruct", 7.61),
            ("Mistral-7B-v0.1", 7.24),
            ("Qwen2-VL-2B-Instruct", 1.54),
            ("DeepSeek-V2-Lite", 15.7),
        ];
        for (name, published) in cases {
            let b = billions(name);
            assert!(
                (b - published).abs() / published < 0.01,
                "{name}: {b} vs {published}"
            );
        }
    }

    #[test]
    fn caveats_say_what_is_approximate() {
        let vl = count_params(&fixture("Qwen2-VL-2B-Instruct")).unwrap();
        assert!(vl.caveats.iter().any(|c| c.contains("vision encoder")));
        let ds = count_params(&fixture("DeepSeek-V2-Lite")).unwrap();
        assert!(ds.caveats.iter().any(|c| c.starts_with("MoE approximated")));
        let llama = count_params(&fixture("Llama-3.1-8B-Instruct")).unwrap();
        assert!(llama.caveats.is_empty(), "{:?}", llama.caveats);
    }

    #[test]
    fn weights_split_over_tensor_parallel_ranks() {
        assert_eq!(weights_bytes(1_000, KvDtype::Bf16, 1), 2_000);
        assert_eq!(weights_bytes(1_001, KvDtype::Bf16, 4), 501);
        assert_eq!(weights_bytes(1_000, KvDtype::F32, 0), 4_000);
    }

    #[test]
    fn activation_peak_grows_with_batched_tokens() {
        let c = fixture("Llama-3.1-8B-Instruct");
        let a = activation_peak_bytes(&c, KvDtype::Bf16, 8_192, 256).unwrap();
        // 8192 × (4×4096 + 4096 + 2×1024 + 3×14336) × 2 + 256 × 128256 × 4
        assert_eq!(a, 8_192 * 65_536 * 2 + 256 * 128_256 * 4);
        let b = activation_peak_bytes(&c, KvDtype::Bf16, 2_048, 256).unwrap();
        assert!(b < a);
    }

    #[test]
    fn absurd_configs_saturate_instead_of_overflowing() {
        let c = ModelConfig::from_json(
            r#"{"num_hidden_layers": 4000000000, "num_attention_heads": 4000000000, "head_dim": 1,
                "hidden_size": 18446744073709551615, "intermediate_size": 18446744073709551615,
                "vocab_size": 18446744073709551615}"#,
            "huge.json",
        )
        .unwrap();
        let p = count_params(&c).unwrap().params;
        assert_eq!(p, u64::MAX);
        assert_eq!(weights_bytes(p, KvDtype::Bf16, 1), u64::MAX);
        assert_eq!(
            activation_peak_bytes(&c, KvDtype::Bf16, u64::MAX, u64::MAX).unwrap(),
            u64::MAX
        );
    }

    #[test]
    fn missing_shape_fields_name_the_flag_to_pass() {
        let c = ModelConfig::from_json(
            r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 64}"#,
            "c.json",
        )
        .unwrap();
        let err = count_params(&c).unwrap_err();
        assert_eq!(err.field, "hidden_size");
        assert!(err.reason.contains("--weights"));
    }
}
