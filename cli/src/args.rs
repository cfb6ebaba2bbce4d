//! The command line: `pagedkv plan [OPTIONS]`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pagedkv::KvDtype;

use crate::gpus::{find_gpu, GpuPreset};
use crate::size::parse_size;

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
    /// Size the KV cache: how many blocks and tokens fit on one GPU, whether
    /// max_model_len fits, how many sequences run at once. Exit 0: fits;
    /// 1: does not fit (with the fixes); 2: unusable input.
    Plan(Box<PlanArgs>),
    /// Replay a request trace (default: the embedded ShareGPT first turns) through
    /// allocation policies and compare their KV memory: token states, fragmentation,
    /// reservation waste, batch size, preemptions. Exit 0: done; 2: unusable input.
    Simulate(Box<crate::sim_args::SimulateArgs>),
}

/// `--kv-dtype`: a dtype, or `auto` for the model's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtypeChoice {
    /// The config's `torch_dtype`/`dtype`.
    Auto,
    /// This dtype.
    Dtype(KvDtype),
}

pub fn parse_dtype_choice(s: &str) -> Result<DtypeChoice, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(DtypeChoice::Auto);
    }
    s.parse::<KvDtype>().map(DtypeChoice::Dtype).map_err(|_| {
        format!("unknown KV dtype {s:?}; use auto, bf16, fp16, fp32, fp8 (fp8_e4m3), fp8_e5m2 or int8")
    })
}

fn parse_gpu(s: &str) -> Result<GpuPreset, String> {
    find_gpu(s)
}

/// Options of `pagedkv plan`. Sizes are per GPU and accept bytes or a unit:
/// KiB/MiB/GiB (1024-based), KB/MB/GB (1000-based), decimals allowed (7.87GiB).
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A Hugging Face config.json giving the model's shape (and dtype, max length, size).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Transformer layers (num_hidden_layers); overrides the config.
    #[arg(long, value_name = "N")]
    pub layers: Option<u32>,
    /// Key/value heads (num_key_value_heads); overrides the config.
    #[arg(long, value_name = "N")]
    pub kv_heads: Option<u32>,
    /// Elements per head (head_dim); overrides the config.
    #[arg(long, value_name = "N")]
    pub head_dim: Option<u32>,
    /// KV cache element type: auto (the config's torch_dtype), bf16, fp16, fp32, fp8, fp8_e5m2, int8.
    #[arg(long, value_name = "DTYPE", default_value = "auto", value_parser = parse_dtype_choice)]
    pub kv_dtype: DtypeChoice,
    /// Tokens per KV block.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub block_size: u32,
    /// A preset GPU (its usable memory): rtx4090, l40s, a100-40gb, a100-80gb, h100-80gb, h200.
    #[arg(long, value_name = "NAME", value_parser = parse_gpu, conflicts_with = "gpu_memory")]
    pub gpu: Option<GpuPreset>,
    /// Memory of one GPU as the engine sees it (torch's total capacity), e.g. 23.64GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory: Option<u64>,
    /// Fraction of the GPU's memory the engine may use, in (0, 1].
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = 0.9,
        allow_negative_numbers = true
    )]
    pub gpu_memory_utilization: f64,
    /// Model weights on one GPU (vLLM: "Model loading took X GiB"); estimated from the config when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub weights: Option<u64>,
    /// Peak activation memory of the profiling run; estimated from the config when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub activation_peak: Option<u64>,
    /// Memory outside PyTorch's allocator (CUDA context, NCCL); 0.25GiB when absent.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub non_torch: Option<u64>,
    /// Give the KV cache this budget directly (vLLM's kv_cache_memory_bytes) instead of a GPU profile.
    #[arg(
        long,
        value_name = "SIZE",
        value_parser = parse_size,
        conflicts_with_all = ["gpu", "gpu_memory", "gpu_memory_utilization", "weights", "activation_peak", "non_torch"]
    )]
    pub kv_cache_memory: Option<u64>,
    /// Longest sequence (prompt + output) to serve; default: the config's max_position_embeddings.
    #[arg(long, value_name = "N")]
    pub max_model_len: Option<u64>,
    /// Sequences the engine runs at once; checked against how many full-length ones fit.
    #[arg(long, value_name = "N")]
    pub max_num_seqs: Option<u64>,
    /// Average sequence length for the concurrency estimate; default: half of max_model_len.
    #[arg(long, value_name = "N")]
    pub avg_seq_len: Option<u64>,
    /// Tokens per forward pass, which sets the estimated activation peak.
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub max_num_batched_tokens: u64,
    /// GPUs sharing every layer: KV heads and weights are split across them.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tensor_parallel_size: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}
