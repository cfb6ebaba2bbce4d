//! `pagedkv plan`: turn the flags and config into a [`ModelLayout`] and a
//! [`MemoryBudget`], let the library size the cache under the chosen engine's
//! rules, and keep what the report needs.
//!
//! All arithmetic on blocks, groups, refusals and concurrency is the
//! library's ([`CachePlan::for_engine`], [`PlanError`], [`ConcurrencyAdvice`]);
//! this file only resolves inputs (with their origin: given, read from the
//! config, estimated or defaulted), applies the engine's input checks
//! ([`crate::checks`]) and sorts the outcome into fits / does not fit.

use pagedkv::{
    AttentionKind, CachePlan, CacheSpec, ConcurrencyAdvice, EngineRules, KvDtype, ModelLayout, PlanError,
    VllmV1Rules,
};

use crate::args::{DtypeChoice, Engine, MaxModelLen, PlanArgs};
use crate::budget::resolve_budget;
pub use crate::budget::Budget;
use crate::checks;
use crate::error::InputError;
use crate::hf_config::ModelConfig;
use crate::vllm_model::{self, DerivedMaxLen};

/// Where an input value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Given on the command line.
    Given,
    /// Read from this config field.
    Config(String),
    /// Estimated; the text says how.
    Estimate(String),
    /// A default; the text says which.
    Default(String),
}

impl Origin {
    /// A short label for the table: `given`, `config max_position_embeddings`, `estimate: ...`.
    pub fn label(&self) -> String {
        match self {
            Origin::Given => "given".to_string(),
            Origin::Config(field) => format!("config {field}"),
            Origin::Estimate(how) => format!("estimate: {how}"),
            Origin::Default(what) => format!("default: {what}"),
        }
    }

    /// The JSON tag: `given`, `config`, `estimate`, `default`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Given => "given",
            Origin::Config(_) => "config",
            Origin::Estimate(_) => "estimate",
            Origin::Default(_) => "default",
        }
    }
}

/// Every input of the plan, resolved, with its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Inputs {
    /// The config path, or `flags` when the shape came from flags only.
    pub model: String,
    /// The config's `model_type`, if any.
    pub model_type: Option<String>,
    /// Whose rules decide.
    pub engine: Engine,
    /// Those rules, for the library.
    pub rules: EngineRules,
    /// The layers handed to the library (kinds, storage, dtype, parallelism).
    pub layout: ModelLayout,
    /// The first layer's storage with every layer counted (tensor parallelism included).
    pub spec: CacheSpec,
    /// How the KV dtype was chosen.
    pub kv_dtype_origin: Origin,
    /// Attention (query) heads, when known from the config.
    pub num_attention_heads: Option<u32>,
    /// The config's sliding window, if any.
    pub sliding_window: Option<u64>,
    /// Tokens per block.
    pub block_size: u32,
    /// The memory budget.
    pub budget: Budget,
    /// The longest sequence to serve (for `--max-model-len auto`: the upper bound of the search).
    pub max_model_len: u64,
    /// Where `max_model_len` came from.
    pub max_model_len_origin: Origin,
    /// `--max-model-len auto`: the plan picks the longest that fits.
    pub auto_max_model_len: bool,
    /// Tokens per forward pass (activation estimate; tokens in flight under vllm-v1).
    pub max_num_batched_tokens: u64,
    /// Where it came from.
    pub max_num_batched_tokens_origin: Origin,
    /// The average sequence length for the concurrency estimate.
    pub avg_seq_len: u64,
    /// Where `avg_seq_len` came from.
    pub avg_seq_len_origin: Origin,
    /// `--max-num-seqs`, if given.
    pub max_num_seqs: Option<u64>,
    /// Caveats of the estimates and the config reading, one sentence each.
    pub notes: Vec<String>,
}

/// What the library made of the inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// One `max_model_len` sequence fits.
    Fits {
        /// The sized cache.
        plan: CachePlan,
        /// How many sequences fit at once.
        concurrency: ConcurrencyAdvice,
    },
    /// The cache was sized but one `max_model_len` sequence does not fit
    /// ([`PlanError::MaxModelLenTooLarge`], with the fixes).
    TooLong {
        /// The sized cache.
        plan: CachePlan,
        /// The refusal.
        error: PlanError,
    },
    /// Nothing (or less than a usable block) is left for the KV cache
    /// ([`PlanError::NoKvMemory`], [`PlanError::BelowOneBlock`], [`PlanError::OnlyNullBlock`]).
    NoCache {
        /// The refusal, with the breakdown.
        error: PlanError,
    },
}

/// The inputs and the outcome: everything the table and the JSON show.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The resolved inputs.
    pub inputs: Inputs,
    /// The library's answer.
    pub outcome: Outcome,
}

impl Report {
    /// 0 when the configuration fits, 1 when it does not.
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Fits { .. } => 0,
            Outcome::TooLong { .. } | Outcome::NoCache { .. } => 1,
        }
    }

    /// The plan, when the cache could be sized.
    pub fn plan(&self) -> Option<&CachePlan> {
        match &self.outcome {
            Outcome::Fits { plan, .. } | Outcome::TooLong { plan, .. } => Some(plan),
            Outcome::NoCache { .. } => None,
        }
    }
}

/// A library `InvalidConfig` as an input error naming the flag that sets the field.
pub fn invalid(err: PlanError) -> InputError {
    match err {
        PlanError::InvalidConfig { field, reason } => {
            let flag = match field {
                "num_layers" => Some("--layers"),
                "num_kv_heads" => Some("--kv-heads"),
                "head_dim" => Some("--head-dim"),
                "block_size" => Some("--block-size"),
                "gpu_memory_utilization" => Some("--gpu-memory-utilization"),
                "gpu_memory" => Some("--gpu-memory"),
                "tensor_parallel_size" => Some("--tensor-parallel-size"),
                "pipeline_parallel_size" => Some("--pipeline-parallel-size"),
                "kv_cache_memory" => Some("--kv-cache-memory"),
                "max_model_len" => Some("--max-model-len"),
                _ => None,
            };
            match flag {
                Some(flag) => InputError::new(format!("{field} ({flag})"), reason),
                None => InputError::new(field, reason),
            }
        }
        PlanError::PageSizeMismatch { .. } => InputError::new("model layers", err.to_string()),
        other => InputError::new("configuration", other.to_string()),
    }
}

/// The model's layers: shape from the config (or flags), kinds per vLLM's
/// rules for the model type, storage from the flags' overrides.
fn resolve_layout(
    args: &PlanArgs,
    config: Option<&ModelConfig>,
    dtype: KvDtype,
    notes: &mut Vec<String>,
) -> Result<ModelLayout, InputError> {
    let m = &args.model;
    let v1 = args.engine == Engine::VllmV1;
    let (spec, heads) = match config {
        Some(c) => {
            let layers = m.layers.unwrap_or(c.num_layers);
            let use_mla = match args.engine {
                Engine::VllmV1 => vllm_model::uses_mla(c),
                Engine::VllmV0 => c.mla.is_some(),
            };
            if c.mla.is_some() && !use_mla {
                notes.push(format!(
                    "the config has kv_lora_rank, but vLLM runs model type {:?} with its KV heads, not as MLA: planned with {} KV heads of {}",
                    c.text_model_type.as_deref().unwrap_or("(none)"),
                    c.num_kv_heads,
                    c.head_dim
                ));
            }
            let spec = match c.mla.filter(|_| use_mla) {
                Some(mla) => {
                    if m.kv_heads.is_some() || m.head_dim.is_some() {
                        return Err(InputError::new(
                            if m.kv_heads.is_some() { "--kv-heads" } else { "--head-dim" },
                            "the config is an MLA model (kv_lora_rank): it caches one latent per token, not KV heads; drop the flag",
                        ));
                    }
                    CacheSpec::mla(layers, mla.kv_lora_rank, mla.qk_rope_head_dim, dtype)
                }
                None => {
                    if c.kv_heads_defaulted && m.kv_heads.is_none() {
                        notes.push(format!(
                            "the config has no num_key_value_heads: planned as multi-head attention ({} KV heads, one per attention head), as vLLM does",
                            c.num_kv_heads
                        ));
                    }
                    CacheSpec::new(
                        layers,
                        m.kv_heads.unwrap_or(c.num_kv_heads),
                        m.head_dim.unwrap_or(c.head_dim),
                        dtype,
                    )
                }
            };
            (spec, Some(c.num_attention_heads))
        }
        None => {
            let missing = |flag: &str| {
                InputError::new(
                    flag,
                    "no model shape: pass --config PATH (a Hugging Face config.json), or all of --layers, --kv-heads and --head-dim",
                )
            };
            let spec = CacheSpec::new(
                m.layers.ok_or_else(|| missing("--layers"))?,
                m.kv_heads.ok_or_else(|| missing("--kv-heads"))?,
                m.head_dim.ok_or_else(|| missing("--head-dim"))?,
                dtype,
            );
            (spec, None)
        }
    };
    let spec = spec
        .with_tensor_parallel(m.tensor_parallel_size)
        .with_pipeline_parallel(m.pipeline_parallel_size);
    // Validated before anything is built layer by layer.
    spec.validate().map_err(invalid)?;
    let mut kinds = match config {
        Some(c) if v1 => vllm_model::layer_kinds(c, spec.num_layers)?,
        _ => vec![AttentionKind::Full; spec.num_layers as usize],
    };
    if m.disable_sliding_window {
        for k in &mut kinds {
            if let AttentionKind::SlidingWindow { .. } = k {
                *k = AttentionKind::Full;
            }
        }
    }
    let mut layout = ModelLayout::from_kinds(&spec, &kinds).map_err(invalid)?;
    layout.num_attention_heads = heads;
    layout.validate().map_err(invalid)?;
    Ok(layout)
}

fn resolve_kv_dtype(
    args: &PlanArgs,
    config: Option<&ModelConfig>,
    notes: &mut Vec<String>,
) -> Result<(KvDtype, Origin), InputError> {
    let d = match (args.model.kv_dtype, config, args.engine) {
        (DtypeChoice::Dtype(d), _, _) => (d, Origin::Given),
        (DtypeChoice::Auto, Some(c), Engine::VllmV1) => {
            let (d, note) = vllm_model::auto_dtype(c)?;
            notes.extend(note);
            (d, Origin::Config("torch_dtype, by --kv-dtype auto".into()))
        }
        (DtypeChoice::Auto, Some(c), Engine::VllmV0) => match c.model_dtype()? {
            Some(d) => (d, Origin::Config("torch_dtype, by --kv-dtype auto".into())),
            None => {
                return Err(InputError::new(
                    "--kv-dtype",
                    "auto uses the config's torch_dtype (or dtype), which it does not have; pass --kv-dtype bf16|fp16|fp32|fp8|int8",
                ))
            }
        },
        (DtypeChoice::Auto, None, _) => {
            return Err(InputError::new(
                "--kv-dtype",
                "auto uses the config's torch_dtype, and there is no --config; pass --kv-dtype bf16|fp16|fp32|fp8|int8",
            ))
        }
    };
    if args.engine == Engine::VllmV1 && matches!(d.0, KvDtype::Int8 | KvDtype::F32) {
        notes.push(format!(
            "KV dtype {}: not one of vLLM's --kv-cache-dtype choices (auto, float16, bfloat16, fp8, fp8_e4m3, fp8_e5m2): this plans pagedkv's own {} cache",
            d.0, d.0
        ));
    }
    Ok(d)
}

/// The engine's rules: vLLM V1's tokens in flight are `max_num_batched_tokens`
/// × the batches in flight (2 with async scheduling; with pipeline
/// parallelism the stages + 1, or the stages alone without async scheduling).
fn rules(args: &PlanArgs, max_num_batched_tokens: u64) -> EngineRules {
    match args.engine {
        Engine::VllmV0 => EngineRules::VllmV0,
        Engine::VllmV1 => {
            let pp = args.model.pipeline_parallel_size.max(1) as u64;
            let batches = if args.no_async_scheduling { pp } else { pp + 1 };
            EngineRules::VllmV1(VllmV1Rules {
                max_in_flight_tokens: max_num_batched_tokens.saturating_mul(batches),
                hybrid_kv_cache_manager: !args.disable_hybrid_kv_cache_manager,
            })
        }
    }
}

/// Resolves every input from the flags and the config; the error names the flag or field.
pub fn resolve(args: &PlanArgs) -> Result<Inputs, InputError> {
    let config = args
        .model
        .config
        .as_deref()
        .map(ModelConfig::from_file)
        .transpose()?;
    resolve_with(args, config.as_ref())
}

/// [`resolve`] with the config already read (`args.model.config` is then
/// only its name in messages).
pub fn resolve_with(args: &PlanArgs, config: Option<&ModelConfig>) -> Result<Inputs, InputError> {
    let mut notes = Vec::new();

    checks::block_size(args)?;
    let (dtype, kv_dtype_origin) = resolve_kv_dtype(args, config, &mut notes)?;
    let layout = resolve_layout(args, config, dtype, &mut notes)?;

    let derived: Option<DerivedMaxLen> = config.and_then(|c| match args.engine {
        Engine::VllmV1 => vllm_model::derived_max_model_len(c, args.model.disable_sliding_window),
        Engine::VllmV0 => c.max_position_embeddings.map(|tokens| DerivedMaxLen {
            tokens,
            source: "max_position_embeddings".into(),
        }),
    });
    let (max_model_len, max_model_len_origin, auto_max_model_len) = match (args.max_model_len, &derived) {
        (Some(MaxModelLen::Tokens(n)), _) => {
            checks::max_model_len(n, derived.as_ref(), args.allow_long_max_model_len)?;
            (n, Origin::Given, false)
        }
        (Some(MaxModelLen::Auto), Some(d)) => (d.tokens, Origin::Config(d.source.clone()), true),
        (None, Some(d)) => (d.tokens, Origin::Config(d.source.clone()), false),
        (_, None) => {
            return Err(InputError::new(
                "--max-model-len",
                "not given and no config max_position_embeddings to default to; pass --max-model-len N",
            ))
        }
    };
    if max_model_len == 0 {
        return Err(InputError::new("--max-model-len", "must be at least 1 token"));
    }
    if args.max_num_seqs == Some(0) {
        return Err(InputError::new("--max-num-seqs", "must be at least 1"));
    }
    let (avg_seq_len, avg_seq_len_origin) = match args.avg_seq_len {
        Some(n) if !auto_max_model_len && (n == 0 || n > max_model_len) => {
            return Err(InputError::new(
                "--avg-seq-len",
                format!("{n} is outside 1..={max_model_len} (max_model_len)"),
            ))
        }
        Some(0) => return Err(InputError::new("--avg-seq-len", "must be at least 1 token")),
        Some(n) => (n, Origin::Given),
        None => (
            (max_model_len / 2).max(1),
            Origin::Default("half of max_model_len, set --avg-seq-len".to_string()),
        ),
    };

    let device = args
        .memory
        .gpu
        .map(|g| (g.bytes(), g.name))
        .or(args.memory.gpu_memory.map(|b| (b, "")));
    let (serve_tokens, serve_seqs) = vllm_model::serve_batch_defaults(device);
    let (max_num_batched_tokens, max_num_batched_tokens_origin) = match args.max_num_batched_tokens {
        Some(0) => return Err(InputError::new("--max-num-batched-tokens", "must be at least 1")),
        Some(n) => (n, Origin::Given),
        None => {
            // vLLM caps its default at max_num_seqs × max_model_len.
            let seqs = args.max_num_seqs.unwrap_or(serve_seqs);
            let n = serve_tokens.min(seqs.saturating_mul(max_model_len));
            let which = match device {
                None => "vllm serve's, the GPU not given; set --max-num-batched-tokens".to_string(),
                Some(_) => "vllm serve's for this GPU".to_string(),
            };
            (n, Origin::Default(which))
        }
    };
    let max_num_seqs_for_estimate = args.max_num_seqs.unwrap_or(serve_seqs);
    let budget = resolve_budget(
        args,
        config,
        max_num_batched_tokens,
        max_num_seqs_for_estimate,
        &mut notes,
    )?;
    if let Some(c) = config {
        if c.section.is_some() || c.has_vision {
            let section = c.section.unwrap_or("the top level of the config");
            notes.push(format!(
                "multimodal model: the language model's shape was read from {section}; the vision encoder keeps no KV cache"
            ));
        }
    }
    checks::engine_notes(args, &layout, &mut notes);

    Ok(Inputs {
        model: args
            .model
            .config
            .as_ref()
            .map_or_else(|| "flags".to_string(), |p| p.display().to_string()),
        model_type: config.and_then(|c| c.model_type.clone()),
        engine: args.engine,
        rules: rules(args, max_num_batched_tokens),
        spec: layout.representative_spec(),
        layout,
        kv_dtype_origin,
        num_attention_heads: config.map(|c| c.num_attention_heads),
        sliding_window: config.and_then(|c| c.sliding_window),
        block_size: args.model.block_size,
        budget,
        max_model_len,
        max_model_len_origin,
        auto_max_model_len,
        max_num_batched_tokens,
        max_num_batched_tokens_origin,
        avg_seq_len,
        avg_seq_len_origin,
        max_num_seqs: args.max_num_seqs,
        notes,
    })
}

/// Sizes the cache with the library and sorts the outcome.
pub fn compute(mut inputs: Inputs) -> Result<Report, InputError> {
    let budget = inputs.budget.memory_budget();
    let plan = match CachePlan::for_engine(&inputs.layout, inputs.block_size, &budget, inputs.rules) {
        Ok(plan) => plan,
        Err(
            error @ (PlanError::NoKvMemory(_)
            | PlanError::BelowOneBlock { .. }
            | PlanError::OnlyNullBlock { .. }),
        ) => {
            return Ok(Report {
                inputs,
                outcome: Outcome::NoCache { error },
            })
        }
        Err(other) => return Err(invalid(other)),
    };
    if inputs.auto_max_model_len {
        // vLLM's auto-fit: the longest that fits, up to the config's maximum.
        let fitted = plan.largest_max_model_len(inputs.max_model_len);
        if fitted == 0 {
            inputs.notes.push("--max-model-len auto: vLLM's auto-fit refuses this budget (\"Cannot auto-fit max_model_len: not enough GPU memory available to serve even a single token. Try increasing `gpu_memory_utilization`.\"); the check below is for the config's maximum".to_string());
        }
        if fitted > 0 && fitted < inputs.max_model_len {
            inputs.max_model_len_origin = Origin::Estimate(format!(
                "--max-model-len auto, the longest that fits (the config allows {})",
                inputs.max_model_len
            ));
            inputs.max_model_len = fitted;
            if inputs.avg_seq_len_origin.kind() == "default" {
                inputs.avg_seq_len = (fitted / 2).max(1);
            }
        }
        inputs.avg_seq_len = inputs.avg_seq_len.min(inputs.max_model_len);
    }
    let outcome = match plan.check_max_model_len(inputs.max_model_len) {
        Ok(()) => {
            let concurrency = plan.concurrency(
                inputs.max_model_len,
                Some(inputs.avg_seq_len),
                inputs.max_num_seqs,
            );
            Outcome::Fits { plan, concurrency }
        }
        Err(error @ PlanError::MaxModelLenTooLarge(_)) => Outcome::TooLong { plan, error },
        Err(other) => return Err(invalid(other)),
    };
    Ok(Report { inputs, outcome })
}
