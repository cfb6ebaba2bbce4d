//! The memory budget of `pagedkv plan`: the KV budget given directly, or a
//! device profile (memory × utilization − weights − non-torch − activation peak
//! − CUDA graphs), each part with its origin; estimated from the config where
//! not given.

use pagedkv::{DeviceMemory, KvDtype, MemoryBudget, GIB};

use crate::args::{Engine, PlanArgs};
use crate::error::InputError;
use crate::estimate;
use crate::gpus::{known_names, GpuPreset};
use crate::hf_config::ModelConfig;
use crate::plan::{invalid, Origin};
use crate::vllm_model;

/// Memory outside PyTorch's allocator assumed when `--non-torch` is absent.
pub const DEFAULT_NON_TORCH_BYTES: u64 = GIB / 4;

/// The memory budget and where each of its parts came from.
// One per run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Origin of `memory.gpu_memory_utilization`.
        utilization: Origin,
        /// Origin of `memory.weights_bytes`.
        weights: Origin,
        /// Origin of `memory.non_torch_bytes`.
        non_torch: Origin,
        /// Origin of `memory.activation_peak_bytes`.
        activation_peak: Origin,
        /// Origin of `memory.cudagraph_bytes`.
        cudagraph: Origin,
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

/// The dtype the weights and activations are in: the model's (vLLM's auto rule under v1).
pub(crate) fn model_dtype(
    args: &PlanArgs,
    config: &ModelConfig,
    notes: &mut Vec<String>,
) -> Result<KvDtype, InputError> {
    if args.engine == Engine::VllmV1 {
        return vllm_model::auto_dtype(config).map(|(d, _)| d);
    }
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

pub(crate) fn resolve_budget(
    args: &PlanArgs,
    config: Option<&ModelConfig>,
    max_num_batched_tokens: u64,
    max_num_seqs: u64,
    notes: &mut Vec<String>,
) -> Result<Budget, InputError> {
    let mem = &args.memory;
    if let Some(kv_cache_bytes) = mem.kv_cache_memory {
        return Ok(Budget::Direct { kv_cache_bytes });
    }
    let (gpu, device_bytes) = match (mem.gpu, mem.gpu_memory) {
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
    let gpus = args.model.tensor_parallel_size.max(1) * args.model.pipeline_parallel_size.max(1);
    let no_config = |flag: &str| {
        InputError::new(
            flag,
            format!("required without --config: there is no model to estimate it from; pass {flag} SIZE"),
        )
    };

    let (weights_bytes, weights) = match (mem.weights, config) {
        (Some(b), _) => (b, Origin::Given),
        (None, None) => return Err(no_config("--weights")),
        (None, Some(c)) => {
            let est = estimate::count_params(c)?;
            let dtype = model_dtype(args, c, notes)?;
            let mut how = format!(
                "{:.2}B parameters × {} bytes ({dtype})",
                est.params as f64 / 1e9,
                dtype.bytes()
            );
            if gpus > 1 {
                how.push_str(&format!(" / {gpus} GPUs"));
            }
            notes.extend(est.caveats.iter().map(|c| format!("weights estimate: {c}")));
            (
                estimate::weights_bytes(est.params, dtype, gpus),
                Origin::Estimate(how),
            )
        }
    };
    let (activation_peak_bytes, activation_peak) = match (mem.activation_peak, config) {
        (Some(b), _) => (b, Origin::Given),
        (None, None) => return Err(no_config("--activation-peak")),
        (None, Some(c)) => {
            let dtype = model_dtype(args, c, notes)?;
            let bytes = estimate::activation_peak_bytes(c, dtype, max_num_batched_tokens, max_num_seqs)?;
            if c.has_vision {
                notes.push("activation estimate: a multimodal model's encoder profiling run is not included and can dominate; measure it and pass --activation-peak".to_string());
            }
            let how = format!("{max_num_batched_tokens} batched tokens (--max-num-batched-tokens)");
            (bytes, Origin::Estimate(how))
        }
    };
    let (non_torch_bytes, non_torch) = match mem.non_torch {
        Some(b) => (b, Origin::Given),
        None => (
            DEFAULT_NON_TORCH_BYTES,
            Origin::Default("CUDA context and NCCL, set --non-torch".to_string()),
        ),
    };
    let (cudagraph_bytes, cudagraph) = match mem.cudagraph_memory {
        Some(b) => (b, Origin::Given),
        None => {
            if args.engine == Engine::VllmV1 {
                notes.push("CUDA graphs: vLLM ≥ 0.21 profiles its CUDA graph memory and takes it from the KV cache (it logs the estimate at start-up); counted as 0 here, pass --cudagraph-memory SIZE".to_string());
            }
            (
                0,
                Origin::Default("not counted, set --cudagraph-memory".to_string()),
            )
        }
    };
    let (gpu_memory_utilization, utilization) = match mem.gpu_memory_utilization {
        Some(u) => (u, Origin::Given),
        None => (
            args.engine.default_utilization(),
            Origin::Default(format!("{}'s gpu_memory_utilization", args.engine.name())),
        ),
    };
    let memory = DeviceMemory {
        device_bytes,
        gpu_memory_utilization,
        weights_bytes,
        non_torch_bytes,
        activation_peak_bytes,
        cudagraph_bytes,
    };
    MemoryBudget::device(memory).validate().map_err(invalid)?;
    Ok(Budget::Device {
        gpu,
        memory,
        utilization,
        weights,
        non_torch,
        activation_peak,
        cudagraph,
    })
}
