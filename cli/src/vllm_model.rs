//! What vLLM 0.33.0 derives from a model's config, written for pagedkv:
//! which layers slide or chunk, whether the model is MLA, the dtype behind
//! `dtype=auto`, the maximum model length, and `vllm serve`'s default
//! `max_num_batched_tokens`. Each rule names the vLLM source it follows.

use pagedkv::{AttentionKind, KvDtype};

use crate::error::InputError;
use crate::hf_config::ModelConfig;

/// The model types vLLM treats as multi-head latent attention when the config
/// has `kv_lora_rank` (`is_deepseek_mla` in
/// `vllm/transformers_utils/model_arch_config_convertor.py`); other configs
/// with `kv_lora_rank` are planned with their KV heads.
pub const MLA_MODEL_TYPES: [&str; 24] = [
    "axk1",
    "deepseek_v2",
    "deepseek_v3",
    "deepseek_v32",
    "deepseek_v4",
    "deepseek_v41",
    "dots3_note",
    "deepseek_mtp",
    "k3_dspark",
    "glm5_next",
    "glm5_next_text",
    "glm_moe_dsa",
    "glm4_moe_lite",
    "glm4_moe_lite_mtp",
    "kimi_k2",
    "kimi_linear",
    "longcat_flash",
    "pangu_ultra_moe",
    "pangu_ultra_moe_mtp",
    "bailing_hybrid",
    "bailing_hybrid_mtp",
    "bailing_hybrid_v3_mtp",
    "hy_v4",
    "hy_v4_mtp",
];

/// Whether vLLM runs this config as MLA.
pub fn uses_mla(c: &ModelConfig) -> bool {
    c.mla.is_some()
        && c.text_model_type
            .as_deref()
            .is_some_and(|t| MLA_MODEL_TYPES.contains(&t))
}

fn window_kind(c: &ModelConfig, field: &str) -> Result<AttentionKind, InputError> {
    let w = c.sliding_window.ok_or_else(|| {
        InputError::new(
            field.to_string(),
            "marks sliding-window layers but the config has no sliding_window; add it (e.g. 4096)",
        )
    })?;
    let window = u32::try_from(w).map_err(|_| {
        InputError::new(
            "sliding_window",
            format!("{w} is too large (at most {})", u32::MAX),
        )
    })?;
    Ok(AttentionKind::SlidingWindow { window })
}

fn chunk_kind(c: &ModelConfig) -> Result<Option<AttentionKind>, InputError> {
    c.attention_chunk_size
        .map(|n| {
            u32::try_from(n)
                .map(|chunk| AttentionKind::ChunkedLocal { chunk })
                .map_err(|_| InputError::new("attention_chunk_size", format!("{n} is too large")))
        })
        .transpose()
}

/// Which earlier tokens each of `num_layers` layers reads, as vLLM's model code
/// decides it for the config's model type:
///
/// - `gpt_oss`: even layers slide (`models/gpt_oss.py`: `layer_idx % 2 == 0`);
/// - `llama4`: layers with `no_rope_layers[i] == 0` are global, the others
///   chunked when `attention_chunk_size` is set (`models/llama4.py`); an empty
///   or missing list is transformers' default, every 4th layer global;
/// - an explicit `layer_types` list otherwise (`sliding_attention`,
///   `full_attention`, `chunked_attention`; `models/llama.py`, `gemma2.py`, ...);
/// - without one, transformers' defaults: `gemma2` alternates from a sliding
///   layer 0, `gemma3` slides except every `sliding_window_pattern`-th (6);
/// - any other model with a `sliding_window` slides on every layer
///   (`engine/arg_utils.py`: the model-level window applies to all layers).
pub fn layer_kinds(c: &ModelConfig, num_layers: u32) -> Result<Vec<AttentionKind>, InputError> {
    let n = num_layers as usize;
    let model_type = c.text_model_type.as_deref().unwrap_or("");
    let sliding = || window_kind(c, "sliding_window");
    match model_type {
        "gpt_oss" => (0..n)
            .map(|i| {
                if i % 2 == 0 && c.sliding_window.is_some() {
                    sliding()
                } else {
                    Ok(AttentionKind::Full)
                }
            })
            .collect(),
        "llama4" | "llama4_text" => {
            let interval = c.no_rope_layer_interval.unwrap_or(4).max(1) as usize;
            let default: Vec<u64> = (0..n).map(|i| u64::from((i + 1) % interval != 0)).collect();
            let no_rope = c.no_rope_layers.as_ref().unwrap_or(&default);
            if no_rope.len() != n {
                return Err(InputError::new(
                    "no_rope_layers",
                    format!(
                        "has {} entries for {n} layers; give one per layer (or pass --layers {})",
                        no_rope.len(),
                        no_rope.len()
                    ),
                ));
            }
            let chunk = chunk_kind(c)?;
            Ok(no_rope
                .iter()
                .map(|&r| match (r, chunk) {
                    (0, _) | (_, None) => AttentionKind::Full,
                    (_, Some(k)) => k,
                })
                .collect())
        }
        _ if c.layer_types.is_some() => {
            let types = c.layer_types.as_ref().expect("checked");
            if types.len() != n {
                return Err(InputError::new(
                    "layer_types",
                    format!(
                        "has {} entries for {n} layers; give one per layer (or pass --layers {})",
                        types.len(),
                        types.len()
                    ),
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(AttentionKind::Full),
                    "sliding_attention" => window_kind(c, "layer_types"),
                    "chunked_attention" => chunk_kind(c)?.ok_or_else(|| {
                        InputError::new(
                            "layer_types",
                            "marks chunked layers but the config has no attention_chunk_size; add it (e.g. 8192)",
                        )
                    }),
                    other => Err(InputError::new(
                        "layer_types",
                        format!("layer type {other:?} keeps no attention KV cache pagedkv can plan (full_attention, sliding_attention, chunked_attention)"),
                    )),
                })
                .collect()
        }
        "gemma2" => (0..n)
            .map(|i| {
                if i % 2 == 0 && c.sliding_window.is_some() {
                    sliding()
                } else {
                    Ok(AttentionKind::Full)
                }
            })
            .collect(),
        "gemma3" | "gemma3_text" => {
            let pattern = c.sliding_window_pattern.unwrap_or(6).max(1) as usize;
            (0..n)
                .map(|i| {
                    if (i + 1) % pattern != 0 && c.sliding_window.is_some() {
                        sliding()
                    } else {
                        Ok(AttentionKind::Full)
                    }
                })
                .collect()
        }
        _ => match c.sliding_window {
            Some(_) => {
                let k = sliding()?;
                Ok(vec![k; n])
            }
            None => Ok(vec![AttentionKind::Full; n]),
        },
    }
}

/// The model types that refuse float16 in vLLM (`_FLOAT16_NOT_SUPPORTED_MODELS`).
const NO_FLOAT16: [&str; 4] = ["gemma2", "gemma3", "gemma3_text", "glm4"];

/// The dtype vLLM runs a model in under `dtype=auto` on a CUDA GPU
/// (`_resolve_auto_dtype` in `vllm/config/model.py`): the config's, except
/// float32 (downcast to bfloat16), float16 for the model types that refuse it,
/// and no dtype at all (vLLM reads float32, then downcasts). The note says
/// what changed.
pub fn auto_dtype(c: &ModelConfig) -> Result<(KvDtype, Option<String>), InputError> {
    let model_type = c.text_model_type.as_deref().unwrap_or("");
    Ok(match c.model_dtype()? {
        None => (
            KvDtype::Bf16,
            Some("the config has no torch_dtype: planned in bfloat16, as vLLM does with dtype=auto (it would first look for the weights' dtype in their safetensors files)".to_string()),
        ),
        Some(KvDtype::F32) => (
            KvDtype::Bf16,
            Some("the config's float32 is downcast to bfloat16, as vLLM does with dtype=auto".to_string()),
        ),
        Some(KvDtype::F16) if NO_FLOAT16.contains(&model_type) => (
            KvDtype::Bf16,
            Some(format!("vLLM does not run {model_type} in float16: planned in bfloat16")),
        ),
        Some(d) => (d, None),
    })
}

/// The longest sequence the config allows, and the key it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedMaxLen {
    /// Tokens.
    pub tokens: u64,
    /// Where from, e.g. `max_position_embeddings` or `max_position_embeddings × rope factor 4`.
    pub source: String,
}

/// RoPE types whose `max_position_embeddings` is already scaled (vLLM does not apply `factor`).
const ROPE_PRESCALED: [&str; 6] = [
    "su",
    "longrope",
    "llama3",
    "yarn",
    "deepseek_yarn",
    "deepseek_llama_scaling",
];

/// vLLM's derived maximum model length (`_get_and_verify_max_len`): the
/// smallest of the length keys (`model_max_length` overriding), capped at the
/// sliding window under `--disable-sliding-window`, times the RoPE scaling
/// factor of types that do not pre-scale (not for Gemma 3); LongRoPE
/// defaults to `original_max_position_embeddings`. None: no length key (vLLM
/// then assumes 2048).
pub fn derived_max_model_len(c: &ModelConfig, disable_sliding_window: bool) -> Option<DerivedMaxLen> {
    let (mut tokens, mut source) = {
        let mut best: Option<(u64, &str)> = None;
        for &(key, v) in &c.max_len_keys {
            if best.map_or(true, |(b, _)| v < b) {
                best = Some((v, key));
            }
        }
        if let Some(&(key, v)) = c
            .max_len_keys
            .iter()
            .find(|(k, v)| *k == "model_max_length" && *v > 0)
        {
            best = Some((v, key));
        }
        let (v, k) = best?;
        (v, k.to_string())
    };
    if disable_sliding_window {
        if let Some(w) = c.sliding_window.filter(|&w| w < tokens) {
            tokens = w;
            source = "sliding_window (--disable-sliding-window)".to_string();
        }
    }
    let gemma3 = c.text_model_type.as_deref().is_some_and(|t| t.contains("gemma3"));
    if let Some(rope) = c.rope.as_ref().filter(|_| !gemma3) {
        if !ROPE_PRESCALED.contains(&rope.rope_type.as_str()) {
            if let Some(f) = rope.factor.filter(|f| *f != 1.0) {
                tokens = (tokens as f64 * f) as u64;
                source = format!("{source} × rope factor {f}");
            }
        }
        if rope.rope_type == "longrope" {
            if let Some(orig) = rope.original_max_position_embeddings {
                return Some(DerivedMaxLen {
                    tokens: orig,
                    source: "original_max_position_embeddings (LongRoPE)".to_string(),
                });
            }
        }
    }
    Some(DerivedMaxLen { tokens, source })
}

/// `vllm serve`'s default `max_num_batched_tokens` and `max_num_seqs` for a
/// GPU of `device_bytes` named `name` (`get_batch_defaults` in
/// `vllm/engine/arg_utils.py`, OpenAI server): 16384/1024 on 160 GiB and
/// more, 8192/1024 on 70 GiB and more except A100s, 2048/256 otherwise (and
/// when the GPU is unknown).
pub fn serve_batch_defaults(device: Option<(u64, &str)>) -> (u64, u64) {
    const GIB: u64 = 1 << 30;
    match device {
        Some((bytes, _)) if bytes >= 160 * GIB => (16_384, 1024),
        Some((bytes, name)) if bytes >= 70 * GIB && !name.to_ascii_lowercase().contains("a100") => {
            (8192, 1024)
        }
        _ => (2048, 256),
    }
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

    fn count(kinds: &[AttentionKind]) -> (usize, usize, usize) {
        let f = kinds.iter().filter(|k| **k == AttentionKind::Full).count();
        let s = kinds
            .iter()
            .filter(|k| matches!(k, AttentionKind::SlidingWindow { .. }))
            .count();
        (f, s, kinds.len() - f - s)
    }

    #[test]
    fn shipped_configs_slide_and_chunk_as_in_vllm() {
        let gpt = layer_kinds(&fixture("gpt-oss-20b"), 24).unwrap();
        assert_eq!(gpt[0], AttentionKind::SlidingWindow { window: 128 });
        assert_eq!(gpt[1], AttentionKind::Full);
        assert_eq!(count(&gpt), (12, 12, 0));
        let gemma = layer_kinds(&fixture("gemma-2-9b"), 42).unwrap();
        assert_eq!(gemma[0], AttentionKind::SlidingWindow { window: 4096 });
        assert_eq!(count(&gemma), (21, 21, 0));
        let scout = layer_kinds(&fixture("Llama-4-Scout-17B-16E-Instruct"), 48).unwrap();
        assert_eq!(scout[3], AttentionKind::Full);
        assert_eq!(scout[0], AttentionKind::ChunkedLocal { chunk: 8192 });
        assert_eq!(count(&scout), (12, 0, 36));
        let mistral = layer_kinds(&fixture("Mistral-7B-v0.1"), 32).unwrap();
        assert_eq!(count(&mistral), (0, 32, 0));
        for full in [
            "Qwen3-32B",
            "Qwen2.5-7B-Instruct",
            "Qwen2-VL-2B-Instruct",
            "Llama-3.1-8B-Instruct",
            "DeepSeek-V2-Lite",
        ] {
            let c = fixture(full);
            assert_eq!(
                count(&layer_kinds(&c, c.num_layers).unwrap()).0,
                c.num_layers as usize,
                "{full}"
            );
        }
    }

    #[test]
    fn layer_types_must_match_the_layer_count() {
        let c = fixture("gpt-oss-20b");
        // gpt_oss follows vLLM's even/odd rule for any count; an explicit list elsewhere must match.
        assert_eq!(layer_kinds(&c, 10).unwrap().len(), 10);
        let mut other = c.clone();
        other.text_model_type = Some("llama".into());
        let err = layer_kinds(&other, 10).unwrap_err();
        assert_eq!(err.field, "layer_types");
        other.layer_types = Some(vec!["linear_attention".into(); 10]);
        assert!(layer_kinds(&other, 10)
            .unwrap_err()
            .reason
            .contains("linear_attention"));
    }

    #[test]
    fn dtype_auto_follows_vllm() {
        assert_eq!(auto_dtype(&fixture("gemma-2-9b")).unwrap().0, KvDtype::Bf16);
        assert!(auto_dtype(&fixture("gemma-2-9b"))
            .unwrap()
            .1
            .unwrap()
            .contains("float32"));
        assert_eq!(auto_dtype(&fixture("Qwen3-32B")).unwrap(), (KvDtype::Bf16, None));
        let mut none = fixture("Qwen3-32B");
        none.torch_dtype = None;
        assert_eq!(auto_dtype(&none).unwrap().0, KvDtype::Bf16);
        let mut half = fixture("gemma-2-9b");
        half.torch_dtype = Some("float16".into());
        assert_eq!(auto_dtype(&half).unwrap().0, KvDtype::Bf16);
        let mut llama = fixture("Llama-3.1-8B-Instruct");
        llama.torch_dtype = Some("float16".into());
        assert_eq!(auto_dtype(&llama).unwrap(), (KvDtype::F16, None));
    }

    #[test]
    fn derived_max_len_follows_vllm() {
        let len = |name: &str| derived_max_model_len(&fixture(name), false).unwrap().tokens;
        assert_eq!(len("Llama-3.1-8B-Instruct"), 131_072); // llama3 RoPE is pre-scaled
        assert_eq!(len("gpt-oss-20b"), 131_072); // yarn too
        assert_eq!(len("DeepSeek-V2-Lite"), 163_840);
        assert_eq!(len("Llama-4-Scout-17B-16E-Instruct"), 10_485_760);
        assert_eq!(len("gemma-2-9b"), 8192);
        assert_eq!(len("Qwen3-32B"), 40_960);
        // --disable-sliding-window caps it at the window.
        let capped = derived_max_model_len(&fixture("gemma-2-9b"), true).unwrap();
        assert_eq!(capped.tokens, 4096);
        // Linear RoPE scaling multiplies.
        let mut linear = fixture("Llama-3.1-8B-Instruct");
        linear.rope.as_mut().unwrap().rope_type = "linear".into();
        let d = derived_max_model_len(&linear, false).unwrap();
        assert_eq!(d.tokens, 131_072 * 8);
        assert!(d.source.contains("rope factor 8"), "{}", d.source);
    }

    #[test]
    fn mla_only_for_vllms_model_types() {
        assert!(uses_mla(&fixture("DeepSeek-V2-Lite")));
        let mut other = fixture("DeepSeek-V2-Lite");
        other.text_model_type = Some("my_model".into());
        assert!(!uses_mla(&other));
    }

    #[test]
    fn serve_defaults_by_gpu() {
        const GIB: u64 = 1 << 30;
        assert_eq!(serve_batch_defaults(None), (2048, 256));
        assert_eq!(
            serve_batch_defaults(Some((2364 * GIB / 100, "rtx4090"))),
            (2048, 256)
        );
        assert_eq!(
            serve_batch_defaults(Some((7911 * GIB / 100, "h100-80gb"))),
            (8192, 1024)
        );
        assert_eq!(
            serve_batch_defaults(Some((7915 * GIB / 100, "a100-80gb"))),
            (2048, 256)
        );
        assert_eq!(serve_batch_defaults(Some((180 * GIB, "b200"))), (16_384, 1024));
    }
}
