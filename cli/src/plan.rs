//! `pagedkv plan`: turn the flags and config into a [`CacheSpec`] and a
//! [`MemoryBudget`], let the library size the cache, and keep what the report needs.
//!
//! All arithmetic on blocks, capacity, refusals and concurrency is the
//! library's ([`CachePlan`], [`PlanError`], [`ConcurrencyAdvice`]); this file
//! only resolves inputs (with their origin: given, read from the config,
//! estimated or defaulted) and sorts the outcome into fits / does not fit.

use pagedkv::{CachePlan, CacheSpec, ConcurrencyAdvice, DeviceMemory, KvDtype, MemoryBudget, PlanError, GIB};

use crate::args::{DtypeChoice, PlanArgs};
use crate::error::InputError;
use crate::estimate::{self, DEFAULT_MAX_NUM_SEQS};
use crate::gpus::{known_names, GpuPreset};
use crate::hf_config::ModelConfig;

/// Memory outside PyTorch's allocator assumed when `--non-torch` is absent.
pub const DEFAULT_NON_TORCH_BYTES: u64 = GIB / 4;

/// Where an input value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Given on the command line.
    Given,
    /// Read from this config field.
    Config(&'static str),
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

/// The memory budget and where each of its parts came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Budget {
    /// `--kv-cache-memory`: the KV budget itself.
    Direct {
        /// Bytes for the KV cache on one GPU.
        kv_cache_bytes: u64,
    },
    /// A device profile, as vLLM measures it at start-up.
    Device {
        /// The preset the device size came from, if any.
        gpu: Option<GpuPreset>,
        /// The profile handed to the library.
        memory: DeviceMemory,
        /// Origin of `memory.weights_bytes`.
        weights: Origin,
        /// Origin of `memory.non_torch_bytes`.
        non_torch: Origin,
        /// Origin of `memory.activation_peak_bytes`.
        activation_peak: Origin,
    },
}

impl Budget {
    /// The library's budget.
    pub fn memory_budget(&self) -> MemoryBudget {
        match self {
            Budget::Direct { kv_cache_bytes } => MemoryBudget::direct(*kv_cache_bytes),
            Budget::Device { memory, .. } => MemoryBudget::device(*memory),
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
    /// The attention shape handed to the library (tensor parallelism included).
    pub spec: CacheSpec,
    /// How the KV dtype was chosen.
    pub kv_dtype_origin: Origin,
    /// Attention (query) heads, when known from the config.
    pub num_attention_heads: Option<u32>,
    /// The config's sliding window, reported but not used in sizing.
    pub sliding_window: Option<u64>,
    /// Tokens per block.
    pub block_size: u32,
    /// The memory budget.
    pub budget: Budget,
    /// The longest sequence to serve.
    pub max_model_len: u64,
    /// Where `max_model_len` came from.
    pub max_model_len_origin: Origin,
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
    /// Nothing (or less than a block) is left for the KV cache
    /// ([`PlanError::NoKvMemory`], [`PlanError::BelowOneBlock`]).
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
fn invalid(err: PlanError) -> InputError {
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
                "kv_cache_memory" => Some("--kv-cache-memory"),
                "max_model_len" => Some("--max-model-len"),
                _ => None,
            };
            match flag {
                Some(flag) => InputError::new(format!("{field} ({flag})"), reason),
                None => InputError::new(field, reason),
            }
        }
        other => InputError::new("configuration", other.to_string()),
    }
}

fn resolve_spec(
    args: &PlanArgs,
    config: Option<&ModelConfig>,
    dtype: KvDtype,
) -> Result<CacheSpec, InputError> {
    let spec = match config {
        Some(c) => match c.mla {
            Some(m) => {
                if args.kv_heads.is_some() || args.head_dim.is_some() {
                    return Err(InputError::new(
                        if args.kv_heads.is_some() { "--kv-heads" } else { "--head-dim" },
                        "the config is an MLA model (kv_lora_rank): it caches one latent per token, not KV heads; drop the flag",
                    ));
                }
                CacheSpec::mla(
                    args.layers.unwrap_or(c.num_layers),
                    m.kv_lora_rank,
                    m.qk_rope_head_dim,
                    dtype,
                )
            }
            None => CacheSpec::new(
                args.layers.unwrap_or(c.num_layers),
                args.kv_heads.unwrap_or(c.num_kv_heads),
                args.head_dim.unwrap_or(c.head_dim),
                dtype,
            ),
        },
        None => {
            let missing = |flag: &str| {
                InputError::new(
                    flag,
                    "no model shape: pass --config PATH (a Hugging Face config.json), or all of --layers, --kv-heads and --head-dim",
                )
            };
            CacheSpec::new(
                args.layers.ok_or_else(|| missing("--layers"))?,
                args.kv_heads.ok_or_else(|| missing("--kv-heads"))?,
                args.head_dim.ok_or_else(|| missing("--head-dim"))?,
                dtype,
            )
        }
    };
    let spec = spec.with_tensor_parallel(args.tensor_parallel_size);
    spec.validate().map_err(invalid)?;
    Ok(spec)
}

fn resolve_kv_dtype(args: &PlanArgs, config: Option<&ModelConfig>) -> Result<(KvDtype, Origin), InputError> {
    match (args.kv_dtype, config) {
        (DtypeChoice::Dtype(d), _) => Ok((d, Origin::Given)),
        (DtypeChoice::Auto, Some(c)) => match c.model_dtype()? {
            Some(d) => Ok((d, Origin::Config("torch_dtype, by --kv-dtype auto"))),
            None => Err(InputError::new(
                "--kv-dtype",
                "auto uses the config's torch_dtype (or dtype), which it does not have; pass --kv-dtype bf16|fp16|fp32|fp8|int8",
            )),
        },
        (DtypeChoice::Auto, None) => Err(InputError::new(
            "--kv-dtype",
            "auto uses the config's torch_dtype, and there is no --config; pass --kv-dtype bf16|fp16|fp32|fp8|int8",
        )),
    }
}

/// The dtype the weights and activations are in: the config's, else bf16 (noted).
fn model_dtype(config: &ModelConfig, notes: &mut Vec<String>) -> Result<KvDtype, InputError> {
    match config.model_dtype() {
        Ok(Some(d)) => Ok(d),
        Ok(None) => {
            notes
                .push("the config has no torch_dtype: weights and activations estimated in bf16".to_string());
            Ok(KvDtype::Bf16)
        }
        Err(e) => Err(InputError::new(
            e.field,
            format!(
                "{}; or pass --weights and --activation-peak so that nothing is estimated",
                e.reason
            ),
        )),
    }
}

fn resolve_budget(
    args: &PlanArgs,
    config: Option<&ModelConfig>,
    notes: &mut Vec<String>,
) -> Result<Budget, InputError> {
    if let Some(kv_cache_bytes) = args.kv_cache_memory {
        return Ok(Budget::Direct { kv_cache_bytes });
    }
    let (gpu, device_bytes) = match (args.gpu, args.gpu_memory) {
        (Some(g), _) => (Some(g), g.bytes()),
        (None, Some(bytes)) => (None, bytes),
        (None, None) => {
            return Err(InputError::new(
                "--gpu",
                format!(
                    "no GPU memory given: pass --gpu NAME ({}), --gpu-memory SIZE, or the KV budget itself with --kv-cache-memory SIZE",
                    known_names()
                ),
            ))
        }
    };
    let tp = args.tensor_parallel_size;
    let no_config = |flag: &str| {
        InputError::new(
            flag,
            format!("required without --config: there is no model to estimate it from; pass {flag} SIZE"),
        )
    };

    let (weights_bytes, weights) = match (args.weights, config) {
        (Some(b), _) => (b, Origin::Given),
        (None, None) => return Err(no_config("--weights")),
        (None, Some(c)) => {
            let est = estimate::count_params(c)?;
            let dtype = model_dtype(c, notes)?;
            let mut how = format!(
                "{:.2}B parameters × {} bytes ({dtype})",
                est.params as f64 / 1e9,
                dtype.bytes()
            );
            if tp > 1 {
                how.push_str(&format!(" / {tp} GPUs"));
            }
            notes.extend(est.caveats.iter().map(|c| format!("weights estimate: {c}")));
            (
                estimate::weights_bytes(est.params, dtype, tp),
                Origin::Estimate(how),
            )
        }
    };
    let (activation_peak_bytes, activation_peak) = match (args.activation_peak, config) {
        (Some(b), _) => (b, Origin::Given),
        (None, None) => return Err(no_config("--activation-peak")),
        (None, Some(c)) => {
            let dtype = model_dtype(c, notes)?;
            let seqs = args.max_num_seqs.unwrap_or(DEFAULT_MAX_NUM_SEQS);
            let bytes = estimate::activation_peak_bytes(c, dtype, args.max_num_batched_tokens, seqs)?;
            if c.has_vision {
                notes.push("activation estimate: a multimodal model's encoder profiling run is not included and can dominate; measure it and pass --activation-peak".to_string());
            }
            let how = format!(
                "{} batched tokens (--max-num-batched-tokens)",
                args.max_num_batched_tokens
            );
            (bytes, Origin::Estimate(how))
        }
    };
    let (non_torch_bytes, non_torch) = match args.non_torch {
        Some(b) => (b, Origin::Given),
        None => (
            DEFAULT_NON_TORCH_BYTES,
            Origin::Default("CUDA context and NCCL, set --non-torch".to_string()),
        ),
    };
    let memory = DeviceMemory {
        device_bytes,
        gpu_memory_utilization: args.gpu_memory_utilization,
        weights_bytes,
        non_torch_bytes,
        activation_peak_bytes,
        cudagraph_bytes: 0,
    };
    MemoryBudget::device(memory).validate().map_err(invalid)?;
    Ok(Budget::Device {
        gpu,
        memory,
        weights,
        non_torch,
        activation_peak,
    })
}

/// Resolves every input from the flags and the config; the error names the flag or field.
pub fn resolve(args: &PlanArgs) -> Result<Inputs, InputError> {
    let config = args.config.as_deref().map(ModelConfig::from_file).transpose()?;
    let config = config.as_ref();
    let mut notes = Vec::new();

    let (dtype, kv_dtype_origin) = resolve_kv_dtype(args, config)?;
    let spec = resolve_spec(args, config, dtype)?;

    let (max_model_len, max_model_len_origin) =
        match (args.max_model_len, config.and_then(|c| c.max_position_embeddings)) {
            (Some(n), _) => (n, Origin::Given),
            (None, Some(n)) => (n, Origin::Config("max_position_embeddings")),
            (None, None) => {
                return Err(InputError::new(
                    "--max-model-len",
                    "not given and no config max_position_embeddings to default to; pass --max-model-len N",
                ))
            }
        };
    if max_model_len == 0 {
        return Err(InputError::new("--max-model-len", "must be at least 1 token"));
    }
    let (avg_seq_len, avg_seq_len_origin) = match args.avg_seq_len {
        Some(n) if n == 0 || n > max_model_len => {
            return Err(InputError::new(
                "--avg-seq-len",
                format!("{n} is outside 1..={max_model_len} (max_model_len)"),
            ))
        }
        Some(n) => (n, Origin::Given),
        None => (
            (max_model_len / 2).max(1),
            Origin::Default("half of max_model_len, set --avg-seq-len".to_string()),
        ),
    };
    if args.max_num_seqs == Some(0) {
        return Err(InputError::new("--max-num-seqs", "must be at least 1"));
    }

    let budget = resolve_budget(args, config, &mut notes)?;
    if let Some(c) = config {
        if c.section.is_some() || c.has_vision {
            let section = c.section.unwrap_or("the top level of the config");
            notes.push(format!(
                "multimodal model: the language model's shape was read from {section}; the vision encoder keeps no KV cache"
            ));
        }
    }

    Ok(Inputs {
        model: args
            .config
            .as_ref()
            .map_or_else(|| "flags".to_string(), |p| p.display().to_string()),
        model_type: config.and_then(|c| c.model_type.clone()),
        spec,
        kv_dtype_origin,
        num_attention_heads: config.map(|c| c.num_attention_heads),
        sliding_window: config.and_then(|c| c.sliding_window),
        block_size: args.block_size,
        budget,
        max_model_len,
        max_model_len_origin,
        avg_seq_len,
        avg_seq_len_origin,
        max_num_seqs: args.max_num_seqs,
        notes,
    })
}

/// Sizes the cache with the library and sorts the outcome.
pub fn compute(inputs: Inputs) -> Result<Report, InputError> {
    let outcome = match CachePlan::new(&inputs.spec, inputs.block_size, &inputs.budget.memory_budget()) {
        Ok(plan) => match plan.check_max_model_len(inputs.max_model_len) {
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
        },
        Err(error @ (PlanError::NoKvMemory(_) | PlanError::BelowOneBlock { .. })) => {
            Outcome::NoCache { error }
        }
        Err(other) => return Err(invalid(other)),
    };
    Ok(Report { inputs, outcome })
}
