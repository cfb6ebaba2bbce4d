//! Reading a model's attention shape (and, for estimates, its size) from a
//! Hugging Face `config.json`.
//!
//! Only the fields the planner needs are read, leniently: unknown fields are
//! ignored, `null` counts as absent. Multimodal models keep their language
//! model under `text_config` (Llava, Qwen2.5-VL in recent transformers,
//! Gemma 3, ...) or `llm_config` (InternVL); that section is used when present,
//! with `torch_dtype`/`dtype`, `tie_word_embeddings` and
//! `max_position_embeddings` falling back to the top level.

use std::path::Path;

use pagedkv::{KvDtype, MlaSpec};
use serde_json::{Map, Value};

use crate::error::InputError;

/// The mixture-of-experts shape, for the weight estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeShape {
    /// Routed experts per MoE layer (`n_routed_experts`, `num_local_experts` or `num_experts`).
    pub num_experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`), when given.
    pub experts_per_token: Option<u64>,
    /// Intermediate size of one expert (`moe_intermediate_size`, else `intermediate_size`).
    pub expert_intermediate_size: u64,
    /// Always-active shared experts' total intermediate size
    /// (`n_shared_experts × moe_intermediate_size` or `shared_expert_intermediate_size`).
    pub shared_intermediate_size: u64,
    /// Leading layers with a dense MLP instead of experts (`first_k_dense_replace`).
    pub dense_layers: u64,
}

/// The extra MLA projection sizes, for the weight estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaProjections {
    /// Rank of the compressed query (`q_lora_rank`); None when queries are not compressed.
    pub q_lora_rank: Option<u64>,
    /// Non-rotary part of each query/key head (`qk_nope_head_dim`).
    pub qk_nope_head_dim: u64,
    /// Value head dim (`v_head_dim`).
    pub v_head_dim: u64,
}

/// A config's RoPE scaling (`rope_scaling`, or `rope_parameters` in newer configs).
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// `rope_type` (or the older `type`), e.g. `llama3`, `yarn`, `linear`.
    pub rope_type: String,
    /// `factor`, when given.
    pub factor: Option<f64>,
    /// `original_max_position_embeddings`, when given.
    pub original_max_position_embeddings: Option<u64>,
}

/// The keys vLLM 0.33.0 reads a model's maximum length from, in its order
/// (`derive_max_model_len_and_key`); the smallest present wins.
pub const MAX_LEN_KEYS: [&str; 9] = [
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
];

/// What the planner reads from a `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The section the language model was read from: None for the top level,
    /// `Some("text_config")` or `Some("llm_config")` for a multimodal model.
    pub section: Option<&'static str>,
    /// `model_type`, when given.
    pub model_type: Option<String>,
    /// The language model's `model_type` (its section's, else the top level's):
    /// what vLLM's per-model rules (MLA, sliding layers) look at.
    pub text_model_type: Option<String>,
    /// `num_hidden_layers`.
    pub num_layers: u32,
    /// `num_attention_heads`.
    pub num_attention_heads: u32,
    /// `num_key_value_heads`, falling back to `num_attention_heads` (MHA).
    pub num_kv_heads: u32,
    /// True when `num_key_value_heads` was absent and fell back to the attention heads.
    pub kv_heads_defaulted: bool,
    /// `head_dim`, falling back to `hidden_size / num_attention_heads`.
    pub head_dim: u32,
    /// True when `head_dim` was derived from `hidden_size / num_attention_heads`.
    pub head_dim_derived: bool,
    /// `torch_dtype` (or the newer `dtype`) as written, e.g. `bfloat16`.
    pub torch_dtype: Option<String>,
    /// `max_position_embeddings`.
    pub max_position_embeddings: Option<u64>,
    /// Multi-head latent attention (`kv_lora_rank`, `qk_rope_head_dim`), DeepSeek-V2/V3.
    pub mla: Option<MlaSpec>,
    /// MLA projection sizes, when `mla` is set.
    pub mla_projections: Option<MlaProjections>,
    /// `sliding_window` when sliding-window attention is on (not when
    /// `use_sliding_window` is false, as in Qwen2, nor when it is 0, which vLLM
    /// reads as off).
    pub sliding_window: Option<u64>,
    /// `layer_types` (`sliding_attention`, `full_attention`, `chunked_attention`, ...), when given.
    pub layer_types: Option<Vec<String>>,
    /// `no_rope_layers` (Llama 4: 0 marks a global-attention layer), when given and not empty.
    pub no_rope_layers: Option<Vec<u64>>,
    /// `no_rope_layer_interval` (Llama 4's default pattern, 4), when given.
    pub no_rope_layer_interval: Option<u64>,
    /// `sliding_window_pattern` (Gemma 3's default pattern, 6), when given.
    pub sliding_window_pattern: Option<u64>,
    /// `attention_chunk_size` (Llama 4's chunked local attention), when given and not 0.
    pub attention_chunk_size: Option<u64>,
    /// The maximum-length keys present (from [`MAX_LEN_KEYS`]) with their values.
    pub max_len_keys: Vec<(&'static str, u64)>,
    /// RoPE scaling, when given.
    pub rope: Option<RopeScaling>,
    /// `hidden_size`.
    pub hidden_size: Option<u64>,
    /// `intermediate_size` (the dense MLP's).
    pub intermediate_size: Option<u64>,
    /// `vocab_size`.
    pub vocab_size: Option<u64>,
    /// `tie_word_embeddings` (false when absent, the transformers default for most models).
    pub tie_word_embeddings: bool,
    /// Mixture-of-experts shape, when the model has experts.
    pub moe: Option<MoeShape>,
    /// The weights are quantized (`quantization_config` present).
    pub quantized: bool,
    /// The model has a vision tower (`vision_config` present).
    pub has_vision: bool,
}

/// Looks fields up in the language-model section, then (for some) the top level.
struct Fields<'a> {
    root: &'a Map<String, Value>,
    section: &'a Map<String, Value>,
    section_name: Option<&'static str>,
    path: &'a str,
}

impl Fields<'_> {
    /// The field's name as the user would find it in the file (`text_config.head_dim`).
    fn qualified(&self, name: &str) -> String {
        match self.section_name {
            Some(s) => format!("{s}.{name}"),
            None => name.to_string(),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.section.get(name).filter(|v| !v.is_null())
    }

    fn get_or_root(&self, name: &str) -> Option<&Value> {
        self.get(name)
            .or_else(|| self.root.get(name).filter(|v| !v.is_null()))
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, InputError> {
        self.get(name).map(|v| self.as_u64(name, v)).transpose()
    }

    fn as_u64(&self, name: &str, v: &Value) -> Result<u64, InputError> {
        v.as_u64().ok_or_else(|| {
            InputError::new(
                self.qualified(name),
                format!("expected a non-negative integer in {}, found {v}", self.path),
            )
        })
    }

    fn u32(&self, name: &str) -> Result<Option<u32>, InputError> {
        match self.u64(name)? {
            None => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                InputError::new(
                    self.qualified(name),
                    format!("{n} in {} is too large (more than {})", self.path, u32::MAX),
                )
            }),
        }
    }

    fn required_u32(&self, name: &str, flag: &str) -> Result<u32, InputError> {
        self.u32(name)?.ok_or_else(|| {
            InputError::new(
                self.qualified(name),
                format!("missing from {}; add it or pass {flag}", self.path),
            )
        })
    }

    /// A list of strings (`layer_types`).
    fn strings(&self, name: &str) -> Result<Option<Vec<String>>, InputError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let err = || {
            InputError::new(
                self.qualified(name),
                format!("expected a list of strings in {}, found {v}", self.path),
            )
        };
        let items = v.as_array().ok_or_else(err)?;
        items
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(err))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A list of non-negative integers (`no_rope_layers`).
    fn integers(&self, name: &str) -> Result<Option<Vec<u64>>, InputError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let items = v.as_array().ok_or_else(|| {
            InputError::new(
                self.qualified(name),
                format!("expected a list of integers in {}, found {v}", self.path),
            )
        })?;
        items
            .iter()
            .map(|x| self.as_u64(name, x))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn rope(&self) -> Result<Option<RopeScaling>, InputError> {
        let name = if self.get("rope_scaling").is_some() {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let Some(v) = self.get(name) else { return Ok(None) };
        let Some(m) = v.as_object() else {
            return Err(InputError::new(
                self.qualified(name),
                format!("expected an object in {}, found {v}", self.path),
            ));
        };
        let rope_type = m
            .get("rope_type")
            .or_else(|| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        Ok(Some(RopeScaling {
            rope_type,
            factor: m.get("factor").and_then(Value::as_f64),
            original_max_position_embeddings: m
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64),
        }))
    }

    fn bool_or_root(&self, name: &str) -> Result<Option<bool>, InputError> {
        match self.get_or_root(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                InputError::new(
                    self.qualified(name),
                    format!("expected true or false in {}, found {v}", self.path),
                )
            }),
        }
    }
}

impl ModelConfig {
    /// Reads and parses the `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, InputError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InputError::new("--config", format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &str) -> Result<Self, InputError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| InputError::new("--config", format!("{path} is not valid JSON: {e}")))?;
        let root = value
            .as_object()
            .ok_or_else(|| InputError::new("--config", format!("{path} is not a JSON object")))?;
        let (section, section_name) = ["text_config", "llm_config"]
            .into_iter()
            .find_map(|name| match root.get(name) {
                Some(Value::Object(m)) => Some((m, Some(name))),
                _ => None,
            })
            .unwrap_or((root, None));
        let f = Fields {
            root,
            section,
            section_name,
            path,
        };

        let num_layers = f.required_u32("num_hidden_layers", "--layers N")?;
        let num_attention_heads = f.required_u32("num_attention_heads", "--kv-heads N and --head-dim N")?;
        let (num_kv_heads, kv_heads_defaulted) = match f.u32("num_key_value_heads")? {
            Some(n) => (n, false),
            None => (num_attention_heads, true),
        };
        let hidden_size = f.u64("hidden_size")?;
        let (head_dim, head_dim_derived) = match f.u32("head_dim")? {
            Some(d) => (d, false),
            None => {
                let hidden = hidden_size.ok_or_else(|| {
                    InputError::new(
                        f.qualified("head_dim"),
                        format!("missing from {path}, and there is no hidden_size to derive it from; pass --head-dim N"),
                    )
                })?;
                if num_attention_heads == 0 {
                    return Err(InputError::new(
                        f.qualified("num_attention_heads"),
                        format!("is 0 in {path}; head_dim cannot be derived from it, pass --head-dim N"),
                    ));
                }
                let d = u32::try_from(hidden / num_attention_heads as u64).map_err(|_| {
                    InputError::new(
                        f.qualified("hidden_size"),
                        format!("{hidden} in {path} is too large"),
                    )
                })?;
                (d, true)
            }
        };

        let torch_dtype = match f.get_or_root("torch_dtype").or_else(|| f.get_or_root("dtype")) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(InputError::new(
                    f.qualified("torch_dtype"),
                    format!("expected a string such as \"bfloat16\" in {path}, found {other}"),
                ))
            }
        };
        let max_position_embeddings = match f.get_or_root("max_position_embeddings") {
            None => None,
            Some(v) => Some(f.as_u64("max_position_embeddings", v)?),
        };

        let (mla, mla_projections) = match f.u32("kv_lora_rank")? {
            None => (None, None),
            Some(kv_lora_rank) => {
                let qk_rope_head_dim = f.u32("qk_rope_head_dim")?.ok_or_else(|| {
                    InputError::new(
                        f.qualified("qk_rope_head_dim"),
                        format!("missing from {path}, which has kv_lora_rank (an MLA model) and needs both"),
                    )
                })?;
                let projections = MlaProjections {
                    q_lora_rank: f.u64("q_lora_rank")?,
                    qk_nope_head_dim: f.u64("qk_nope_head_dim")?.unwrap_or(head_dim as u64),
                    v_head_dim: f.u64("v_head_dim")?.unwrap_or(head_dim as u64),
                };
                (
                    Some(MlaSpec {
                        kv_lora_rank,
                        qk_rope_head_dim,
                    }),
                    Some(projections),
                )
            }
        };

        let sliding_window = match f.bool_or_root("use_sliding_window")? {
            Some(false) => None,
            _ => f.u64("sliding_window")?.filter(|&w| w > 0),
        };
        let mut max_len_keys = Vec::new();
        for key in MAX_LEN_KEYS {
            // max_position_embeddings falls back to the top level (multimodal configs).
            let v = if key == "max_position_embeddings" {
                max_position_embeddings
            } else {
                f.u64(key)?
            };
            if let Some(v) = v {
                max_len_keys.push((key, v));
            }
        }

        let intermediate_size = f.u64("intermediate_size")?;
        let mut num_experts = None;
        for name in ["n_routed_experts", "num_local_experts", "num_experts"] {
            if let Some(n) = f.u64(name)? {
                num_experts = Some(n);
                break;
            }
        }
        let moe = match num_experts {
            None | Some(0) => None,
            Some(num_experts) => {
                let expert = f.u64("moe_intermediate_size")?.or(intermediate_size).unwrap_or(0);
                let shared = f.u64("n_shared_experts")?.unwrap_or(0) * expert
                    + f.u64("shared_expert_intermediate_size")?.unwrap_or(0);
                Some(MoeShape {
                    num_experts,
                    experts_per_token: f.u64("num_experts_per_tok")?,
                    expert_intermediate_size: expert,
                    shared_intermediate_size: shared,
                    dense_layers: f.u64("first_k_dense_replace")?.unwrap_or(0),
                })
            }
        };

        let model_type = root.get("model_type").and_then(Value::as_str).map(str::to_string);
        Ok(ModelConfig {
            section: section_name,
            text_model_type: section
                .get("model_type")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| model_type.clone()),
            model_type,
            num_layers,
            num_attention_heads,
            num_kv_heads,
            kv_heads_defaulted,
            head_dim,
            head_dim_derived,
            torch_dtype,
            max_position_embeddings,
            mla,
            mla_projections,
            sliding_window,
            layer_types: f.strings("layer_types")?,
            no_rope_layers: f.integers("no_rope_layers")?.filter(|l| !l.is_empty()),
            no_rope_layer_interval: f.u64("no_rope_layer_interval")?,
            sliding_window_pattern: f.u64("sliding_window_pattern")?,
            attention_chunk_size: f.u64("attention_chunk_size")?.filter(|&c| c > 0),
            max_len_keys,
            rope: f.rope()?,
            hidden_size,
            intermediate_size,
            vocab_size: f.u64("vocab_size")?,
            tie_word_embeddings: f.bool_or_root("tie_word_embeddings")?.unwrap_or(false),
            moe,
            quantized: root.contains_key("quantization_config")
                || section.contains_key("quantization_config"),
            has_vision: root.contains_key("vision_config"),
        })
    }

    /// The model's own dtype (`torch_dtype`/`dtype`) as a KV dtype; None when
    /// the config does not say.
    pub fn model_dtype(&self) -> Result<Option<KvDtype>, InputError> {
        match &self.torch_dtype {
            None => Ok(None),
            Some(s) => s.parse::<KvDtype>().map(Some).map_err(|_| {
                InputError::new(
                    "torch_dtype",
                    format!("the config's {s:?} is not a dtype pagedkv knows; pass --kv-dtype bf16|fp16|fp32|fp8|int8"),
                )
            }),
        }
    }
}

#[cfg(test)]
#[path = "hf_config_tests.rs"]
mod tests;
