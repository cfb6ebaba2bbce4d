//! The command line: `pagedkv plan [OPTIONS]`.
//!
//! The model flags ([`ModelArgs`]) and the memory flags ([`MemoryArgs`]) are
//! flattened structs, so that another command can take them whole. vLLM's own
//! spellings work beside pagedkv's (`--kv-cache-dtype`, `--kv-cache-memory-bytes`,
//! `-tp`, `-pp`); `-tp`/`-pp` are rewritten before parsing ([`vllm_short_flags`]),
//! as clap's short flags are one letter.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use pagedkv::KvDtype;

use crate::gpus::{find_gpu, GpuPreset};
use crate::size::{parse_count, parse_fraction, parse_size, parse_small_count};

/// pagedkv: paged KV-cache planning for LLM inference engines.
#[derive(Debug, Parser)]
#[command(name = "pagedkv", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Size the KV cache: how many blocks fit on one GPU, whether max_model_len
    /// fits, how many sequences run at once, with vLLM's verdict. Exit 0: fits;
    /// 1: does not fit (with the fixes); 2: unusable input.
    Plan(Box<PlanArgs>),
    /// Replay a request trace (default: the embedded ShareGPT first turns) through
    /// allocation policies and compare their KV memory: token states, fragmentation,
    /// reservation waste, batch size, preemptions. Exit 0: done; 2: unusable input.
    Simulate(Box<crate::sim_args::SimulateArgs>),
}

/// `--kv-dtype`: a dtype, or `auto` for the model's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DtypeChoice {
    /// The config's `torch_dtype`/`dtype` (under vLLM V1 rules: float32 and a
    /// missing dtype become bfloat16).
    #[default]
    Auto,
    /// This dtype.
    Dtype(KvDtype),
}

pub fn parse_dtype_choice(s: &str) -> Result<DtypeChoice, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(DtypeChoice::Auto);
    }
    s.parse::<KvDtype>().map(DtypeChoice::Dtype).map_err(|_| {
        format!("unknown KV dtype {s:?}; use auto, bfloat16 (bf16), float16 (fp16), fp8 (fp8_e4m3), fp8_e5m2, or pagedkv's own fp32, int8")
    })
}

fn parse_gpu(s: &str) -> Result<GpuPreset, String> {
    find_gpu(s)
}

/// Whose rules the verdict and the fixes follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// vLLM 0.33.0 (its V1 engine): null block, sliding-window and chunked
    /// layers sized by window, gpu_memory_utilization 0.92, its refusal message.
    #[default]
    #[value(name = "vllm-v1")]
    VllmV1,
    /// vLLM's V0 engine, as `pagedkv plan` first planned: every layer sized as
    /// full attention, no null block, gpu_memory_utilization 0.9.
    #[value(name = "vllm-v0")]
    VllmV0,
}

impl Engine {
    /// vLLM's default `gpu_memory_utilization` for this engine.
    pub fn default_utilization(self) -> f64 {
        match self {
            Engine::VllmV1 => 0.92,
            Engine::VllmV0 => 0.9,
        }
    }

    /// The name `--engine` takes.
    pub fn name(self) -> &'static str {
        match self {
            Engine::VllmV1 => "vllm-v1",
            Engine::VllmV0 => "vllm-v0",
        }
    }
}

/// The model: a config and/or shape flags, the KV element type, the block
/// size and the parallelism.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A Hugging Face config.json giving the model's shape (and dtype, max length, attention kinds).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Transformer layers (num_hidden_layers); overrides the config.
    #[arg(long, value_name = "N", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub layers: Option<u32>,
    /// Key/value heads (num_key_value_heads); overrides the config.
    #[arg(long, value_name = "N", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub kv_heads: Option<u32>,
    /// Elements per head (head_dim); overrides the config.
    #[arg(long, value_name = "N", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub head_dim: Option<u32>,
    /// KV cache element type: auto (the model's), bfloat16, float16, fp8, fp8_e5m2 (vLLM's
    /// choices), or pagedkv's own fp32, int8.
    #[arg(long, visible_alias = "kv-cache-dtype", value_name = "DTYPE", default_value = "auto", value_parser = parse_dtype_choice)]
    pub kv_dtype: DtypeChoice,
    /// Tokens per KV block (vLLM's CUDA backends take multiples of 16).
    #[arg(long, value_name = "N", default_value = "16", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub block_size: u32,
    /// Plan a block size that is not a multiple of 16 (for an attention backend other than vLLM's CUDA ones).
    #[arg(long)]
    pub allow_non_cuda_block_size: bool,
    /// GPUs sharing every layer (vLLM: -tp): KV heads and weights are split across them.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub tensor_parallel_size: u32,
    /// GPUs splitting the layers (vLLM: -pp); the stage with the most layers sets the blocks.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_small_count, allow_hyphen_values = true)]
    pub pipeline_parallel_size: u32,
    /// Treat sliding-window layers as full attention, as vLLM's --disable-sliding-window does
    /// (max_model_len then defaults to at most the window).
    #[arg(long)]
    pub disable_sliding_window: bool,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            config: None,
            layers: None,
            kv_heads: None,
            head_dim: None,
            kv_dtype: DtypeChoice::Auto,
            block_size: 16,
            allow_non_cuda_block_size: false,
            tensor_parallel_size: 1,
            pipeline_parallel_size: 1,
            disable_sliding_window: false,
        }
    }
}

/// The memory of one GPU, or the KV budget itself. Sizes are bytes or a
/// number with a unit: KiB/MiB/GiB (1024-based), KB/MB/GB (1000-based),
/// vLLM's K/M/G/T (1024-based) and k/m/g/t (1000-based); decimals allowed
/// with the long units (7.87GiB).
#[derive(Debug, Default, Args)]
pub struct MemoryArgs {
    /// A preset GPU (its memory): rtx4090, l40s, a100-40gb, a100-80gb, h100-80gb, h200.
    #[arg(long, value_name = "NAME", value_parser = parse_gpu, conflicts_with = "gpu_memory")]
    pub gpu: Option<GpuPreset>,
    /// Memory of one GPU as the engine sees it (torch's total capacity), e.g. 23.64GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub gpu_memory: Option<u64>,
    /// Fraction of the GPU's memory the engine may use, in (0, 1] (default: 0.92 for vllm-v1, 0.9 for vllm-v0).
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction, allow_hyphen_values = true)]
    pub gpu_memory_utilization: Option<f64>,
    /// Model weights on one GPU (vLLM: "Model loading took X GiB"); estimated from the config when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub weights: Option<u64>,
    /// Peak activation memory of the profiling run; estimated from the config when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub activation_peak: Option<u64>,
    /// Memory outside PyTorch's allocator (CUDA context, NCCL); 0.25GiB when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub non_torch: Option<u64>,
    /// CUDA graph memory vLLM sets aside before the KV cache (it logs its estimate at start-up); 0 when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub cudagraph_memory: Option<u64>,
    /// Give the KV cache this budget directly (vLLM's --kv-cache-memory-bytes) instead of a GPU profile.
    #[arg(
        long,
        visible_alias = "kv-cache-memory-bytes",
        value_name = "SIZE",
        value_parser = parse_size,
        allow_hyphen_values = true,
        conflicts_with_all = ["gpu", "gpu_memory", "gpu_memory_utilization", "weights", "activation_peak", "non_torch", "cudagraph_memory"]
    )]
    pub kv_cache_memory: Option<u64>,
}

/// Options of `pagedkv plan`. Token counts accept vLLM's suffixes: 32k = 32000, 32K = 32768.
#[derive(Debug, Default, Args)]
pub struct PlanArgs {
    /// Whose rules decide the verdict and the fixes.
    #[arg(long, value_enum, default_value_t = Engine::VllmV1)]
    pub engine: Engine,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The memory.
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Longest sequence (prompt + output) to serve; default: the config's max_position_embeddings
    /// (vLLM's derived maximum); `auto`: the longest that fits (vLLM's auto-fit).
    #[arg(long, value_name = "N", value_parser = parse_max_model_len, allow_hyphen_values = true)]
    pub max_model_len: Option<MaxModelLen>,
    /// Accept a --max-model-len above the config's maximum (vLLM: VLLM_ALLOW_LONG_MAX_MODEL_LEN=1).
    #[arg(long)]
    pub allow_long_max_model_len: bool,
    /// Sequences the engine runs at once; checked against how many full-length ones fit.
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    pub max_num_seqs: Option<u64>,
    /// Average sequence length for the concurrency estimate; default: half of max_model_len.
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    pub avg_seq_len: Option<u64>,
    /// Tokens per forward pass: the activation estimate, and (vllm-v1) the tokens in flight that
    /// sliding-window and chunked layers keep. Default: `vllm serve`'s for the GPU (2048; 8192 on
    /// 70+ GiB GPUs other than the A100; 16384 on 160+ GiB).
    #[arg(long, value_name = "N", value_parser = parse_count, allow_hyphen_values = true)]
    pub max_num_batched_tokens: Option<u64>,
    /// vLLM without async scheduling (--no-async-scheduling): one batch in flight instead of two.
    #[arg(long)]
    pub no_async_scheduling: bool,
    /// vLLM's --disable-hybrid-kv-cache-manager: sliding and chunked layers of a model with
    /// full-attention layers are sized as full attention.
    #[arg(long)]
    pub disable_hybrid_kv_cache_manager: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `--max-model-len`: a token count, or `auto` (vLLM's `-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxModelLen {
    /// This many tokens.
    Tokens(u64),
    /// The longest that fits, up to the config's maximum.
    Auto,
}

fn parse_max_model_len(s: &str) -> Result<MaxModelLen, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") || t == "-1" {
        return Ok(MaxModelLen::Auto);
    }
    parse_count(t).map(MaxModelLen::Tokens)
}

/// vLLM's multi-letter short flags (`-tp 2`, `-pp=2`) as the long flags clap knows.
pub fn vllm_short_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            for (short, long) in [
                ("-tp", "--tensor-parallel-size"),
                ("-pp", "--pipeline-parallel-size"),
            ] {
                if a == short {
                    return long.to_string();
                }
                if let Some(value) = a.strip_prefix(short).and_then(|r| r.strip_prefix('=')) {
                    return format!("{long}={value}");
                }
            }
            a
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_short_flags_become_long_ones() {
        let args = ["pagedkv", "plan", "-tp", "2", "-pp=4", "--tp", "-tpx"].map(String::from);
        assert_eq!(
            vllm_short_flags(args),
            [
                "pagedkv",
                "plan",
                "--tensor-parallel-size",
                "2",
                "--pipeline-parallel-size=4",
                "--tp",
                "-tpx"
            ]
        );
    }

    #[test]
    fn max_model_len_takes_auto_and_suffixes() {
        assert_eq!(parse_max_model_len("auto"), Ok(MaxModelLen::Auto));
        assert_eq!(parse_max_model_len("-1"), Ok(MaxModelLen::Auto));
        assert_eq!(parse_max_model_len("32k"), Ok(MaxModelLen::Tokens(32_000)));
        assert_eq!(parse_max_model_len("32K"), Ok(MaxModelLen::Tokens(32_768)));
        assert!(parse_max_model_len("-5").unwrap_err().contains("negative"));
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
