//! The command line of `pagedkv simulate`.

use std::path::PathBuf;

use clap::Args;
use pagedkv::sim::synthetic::LengthDist;

use crate::args::{parse_dtype_choice, DtypeChoice};
use crate::gpus::{find_gpu, GpuPreset};
use crate::size::parse_size;

/// `--prompt-len` / `--output-len`: `fixed:N`, `uniform:MIN-MAX` or `lognormal:MEDIAN,SIGMA[,MAX]`.
pub fn parse_dist(s: &str) -> Result<LengthDist, String> {
    let usage = "use fixed:N, uniform:MIN-MAX or lognormal:MEDIAN,SIGMA[,MAX] (e.g. lognormal:128,1.0,1024)";
    let (kind, rest) = s.split_once(':').ok_or_else(|| format!("{s:?}: {usage}"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("{x:?} in {s:?} is not a number; {usage}"))
    };
    let int = |x: &str| {
        x.trim()
            .parse::<u32>()
            .map_err(|_| format!("{x:?} in {s:?} is not a token count; {usage}"))
    };
    match kind.trim() {
        "fixed" => Ok(LengthDist::Fixed(int(rest)?)),
        "uniform" => {
            let (a, b) = rest.split_once('-').ok_or_else(|| format!("{s:?}: {usage}"))?;
            Ok(LengthDist::Uniform {
                min: int(a)?,
                max: int(b)?,
            })
        }
        "lognormal" => {
            let parts: Vec<&str> = rest.split(',').collect();
            match parts[..] {
                [m, sg] => Ok(LengthDist::LogNormal {
                    median: num(m)?,
                    sigma: num(sg)?,
                    max: u32::MAX,
                }),
                [m, sg, mx] => Ok(LengthDist::LogNormal {
                    median: num(m)?,
                    sigma: num(sg)?,
                    max: int(mx)?,
                }),
                _ => Err(format!("{s:?}: {usage}")),
            }
        }
        _ => Err(format!("unknown distribution {kind:?}; {usage}")),
    }
}

/// Options of `pagedkv simulate`. Without any option it replays the embedded
/// ShareGPT first-turn trace (11,811 requests, all arriving at t = 0) on an
/// OPT-13B-like model on an A100-40GB and compares the default policies.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A CSV trace (conversation,prompt_tokens,output_tokens or
    /// conversation,turn,user_tokens,output_tokens; optional arrival column).
    /// Default: the embedded ShareGPT first-turn trace.
    #[arg(long, value_name = "PATH", conflicts_with = "synthetic")]
    pub trace: Option<PathBuf>,
    /// Replay the embedded multi-turn ShareGPT trace (41,690 turns; prompts replay the history).
    #[arg(long, conflicts_with_all = ["trace", "synthetic"])]
    pub multiturn: bool,
    /// Keep only the trace rows vLLM's benchmark keeps (prompt ≥ 4, output ≥ 4, prompt ≤ 1024, total ≤ 2048).
    #[arg(long)]
    pub vllm_filter: bool,
    /// Replay only the first N requests.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Generate a synthetic workload instead of a trace (see --num-requests and the length options).
    #[arg(long)]
    pub synthetic: bool,
    /// Synthetic: requests (each turn counts one).
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "synthetic")]
    pub num_requests: usize,
    /// Synthetic: user message length: fixed:N, uniform:MIN-MAX, lognormal:MEDIAN,SIGMA[,MAX].
    #[arg(long, value_name = "DIST", default_value = "lognormal:128,1.0,1024", value_parser = parse_dist, requires = "synthetic")]
    pub prompt_len: LengthDist,
    /// Synthetic: tokens generated per sample (same syntax).
    #[arg(long, value_name = "DIST", default_value = "lognormal:256,0.7,1024", value_parser = parse_dist, requires = "synthetic")]
    pub output_len: LengthDist,
    /// Synthetic: tokens of a system prompt shared by a fraction of the conversations.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "synthetic")]
    pub system_prompt_len: u32,
    /// Synthetic: the fraction of conversations that start with the system prompt.
    #[arg(long, value_name = "FRACTION", default_value_t = 1.0, requires = "synthetic")]
    pub system_prompt_fraction: f64,
    /// Synthetic: turns per chat; turn k's prompt replays the earlier turns.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "synthetic")]
    pub turns: u32,
    /// Parallel samples per request (trace or synthetic).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub n: u32,
    /// Poisson arrivals at this many requests per second. Default: the trace's
    /// arrival column, else everything at t = 0 (a saturated server).
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Seed of token ids, synthetic lengths and arrivals.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Comma-separated policies, e.g. paged16,paged16-prefix,reserve-max,reserve-pow2,reserve-oracle.
    /// Default: paged16, reserve-max, reserve-pow2, reserve-oracle, paged1, paged8, paged32, paged64, paged128.
    #[arg(long, value_name = "LIST")]
    pub policies: Option<String>,

    /// A Hugging Face config.json giving the model's shape. Default: OPT-13B's (40 layers, 40 KV heads of 128, fp16).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Transformer layers; overrides the config.
    #[arg(long, value_name = "N")]
    pub layers: Option<u32>,
    /// Key/value heads; overrides the config.
    #[arg(long, value_name = "N")]
    pub kv_heads: Option<u32>,
    /// Elements per head; overrides the config.
    #[arg(long, value_name = "N")]
    pub head_dim: Option<u32>,
    /// KV cache element type: auto (the config's; fp16 without a config), bf16, fp16, fp32, fp8, int8.
    #[arg(long, value_name = "DTYPE", default_value = "auto", value_parser = parse_dtype_choice)]
    pub kv_dtype: DtypeChoice,
    /// A preset GPU: rtx4090, l40s, a100-40gb (default), a100-80gb, h100-80gb, h200.
    #[arg(long, value_name = "NAME", value_parser = parse_gpu, conflicts_with = "gpu_memory")]
    pub gpu: Option<GpuPreset>,
    /// Memory of one GPU as the engine sees it, e.g. 39.39GiB.
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
    /// Model weights on one GPU. Default: estimated from --config, else 26GB (OPT-13B in fp16).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub weights: Option<u64>,
    /// Peak activation memory. Default: estimated from --config, else 0.5GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub activation_peak: Option<u64>,
    /// Memory outside PyTorch's allocator (0.25GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub non_torch: Option<u64>,
    /// Give the KV cache this budget directly instead of a GPU profile.
    #[arg(long, value_name = "SIZE", value_parser = parse_size,
          conflicts_with_all = ["gpu", "gpu_memory", "weights", "activation_peak", "non_torch", "num_blocks"])]
    pub kv_cache_memory: Option<u64>,
    /// GPUs sharing every layer.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub tensor_parallel_size: u32,
    /// Size the KV memory as this many blocks of --block-size tokens instead of from a model and GPU.
    #[arg(long, value_name = "N",
          conflicts_with_all = ["config", "layers", "kv_heads", "head_dim", "gpu", "gpu_memory", "weights", "activation_peak", "non_torch"])]
    pub num_blocks: Option<u64>,
    /// Tokens per block of --num-blocks.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "num_blocks")]
    pub block_size: u32,
    /// Longest sequence (prompt + output); longer requests are rejected and counted.
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub max_model_len: u32,
    /// Most sequences in a batch.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_num_seqs: u32,
    /// Most tokens in one forward pass (at least --max-model-len: prompts are prefilled whole).
    #[arg(long, value_name = "N")]
    pub max_num_batched_tokens: Option<u32>,
    /// Step-time model: fixed milliseconds per step (assumption for a 13B model on an A100).
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    pub step_time_base_ms: f64,
    /// Step-time model: milliseconds per batched token.
    #[arg(long, value_name = "MS", default_value_t = 0.15)]
    pub step_time_per_token_ms: f64,

    /// Print one JSON object (summaries and a down-sampled time series per policy).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the summary table as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Write an SVG plot: KV-memory composition and batch size over time, one panel per policy.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

fn parse_gpu(s: &str) -> Result<GpuPreset, String> {
    find_gpu(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distributions_parse_or_say_the_syntax() {
        assert_eq!(parse_dist("fixed:12").unwrap(), LengthDist::Fixed(12));
        assert_eq!(
            parse_dist("uniform:3-9").unwrap(),
            LengthDist::Uniform { min: 3, max: 9 }
        );
        assert_eq!(
            parse_dist("lognormal:100,0.5,900").unwrap(),
            LengthDist::LogNormal {
                median: 100.0,
                sigma: 0.5,
                max: 900
            }
        );
        for bad in ["12", "fixed:x", "uniform:3", "lognormal:1", "zipf:3"] {
            assert!(parse_dist(bad).unwrap_err().contains("fixed:N"), "{bad}");
        }
    }
}
