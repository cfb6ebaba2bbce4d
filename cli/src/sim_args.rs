//! The command line of `pagedkv simulate`.

use std::path::PathBuf;

use clap::Args;
use pagedkv::sim::synthetic::LengthDist;
use pagedkv::sim::ThinkTime;

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

/// `--think-time`: seconds as `fixed:S` (or just `S`), `exp:MEAN`, `uniform:MIN-MAX` or `lognormal:MEDIAN,SIGMA`.
pub fn parse_think_time(s: &str) -> Result<ThinkTime, String> {
    let usage = "use fixed:S, exp:MEAN, uniform:MIN-MAX or lognormal:MEDIAN,SIGMA (seconds, e.g. exp:10)";
    let num = |x: &str| {
        x.trim()
            .parse::<f64>()
            .map_err(|_| format!("{x:?} in {s:?} is not a number of seconds; {usage}"))
    };
    let t = match s.split_once(':') {
        None => ThinkTime::Fixed(num(s)?),
        Some(("fixed", x)) => ThinkTime::Fixed(num(x)?),
        Some(("exp", x)) => ThinkTime::Exponential { mean: num(x)? },
        Some(("uniform", x)) => {
            let (a, b) = x.split_once('-').ok_or_else(|| format!("{s:?}: {usage}"))?;
            ThinkTime::Uniform {
                min: num(a)?,
                max: num(b)?,
            }
        }
        Some(("lognormal", x)) => {
            let (m, sg) = x.split_once(',').ok_or_else(|| format!("{s:?}: {usage}"))?;
            ThinkTime::LogNormal {
                median: num(m)?,
                sigma: num(sg)?,
            }
        }
        Some((kind, _)) => return Err(format!("unknown distribution {kind:?}; {usage}")),
    };
    t.validate().map_err(|e| format!("{s:?}: {e}"))?;
    Ok(t)
}

/// `--rate`: requests per second (a list of them is split by clap).
pub fn parse_rate(x: &str) -> Result<f64, String> {
    x.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| format!("{x:?} is not a positive number of requests per second (e.g. 2 or 1,2,4,8)"))
}

/// The capacities of `--sweep-blocks`, in blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacities(pub Vec<u64>);

/// `--sweep-blocks`: `A,B,C`, or `A..B` (8 capacities spaced geometrically) or `A..B:N` (N of them).
pub fn parse_capacities(s: &str) -> Result<Capacities, String> {
    let usage = "use a list of block counts (1000,4000,16000) or a range A..B or A..B:N (N capacities spaced geometrically)";
    let int = |x: &str| {
        x.trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{x:?} is not a positive number of blocks; {usage}"))
    };
    let caps = match s.split_once("..") {
        None => s.split(',').map(int).collect::<Result<Vec<_>, _>>()?,
        Some((a, rest)) => {
            let (b, n) = match rest.split_once(':') {
                Some((b, n)) => (b, int(n)?),
                None => (rest, 8),
            };
            let (a, b) = (int(a)?, int(b)?);
            if a >= b || n < 2 {
                return Err(format!(
                    "{s:?}: the range must grow (A < B) and hold N ≥ 2 capacities; {usage}"
                ));
            }
            let ratio = (b as f64 / a as f64).powf(1.0 / (n - 1) as f64);
            let mut v: Vec<u64> = (0..n)
                .map(|i| (a as f64 * ratio.powi(i as i32)).round() as u64)
                .collect();
            *v.last_mut().expect("n ≥ 2") = b;
            v.dedup();
            v
        }
    };
    Ok(Capacities(caps))
}

/// Options of `pagedkv simulate`. Without any option it replays the embedded
/// ShareGPT first-turn trace (11,811 requests, all arriving at t = 0) on an
/// OPT-13B-like model on an A100-40GB and compares the default policies.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A trace: CSV (conversation,prompt_tokens,output_tokens or
    /// conversation,turn,user_tokens,output_tokens; optional arrival column) or
    /// Mooncake JSON lines (timestamp, input_length, output_length, hash_ids).
    /// Default: the embedded ShareGPT first-turn trace.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["synthetic", "mooncake", "multiturn"])]
    pub trace: Option<PathBuf>,
    /// Replay the embedded Mooncake trace (3,993 requests over 17 minutes with
    /// real arrival times and prefix sharing) on the Mooncake paper's engine
    /// (LLaMA3-70B on 8 A800-80GB GPUs) unless the engine flags say otherwise.
    #[arg(long, conflicts_with_all = ["synthetic", "multiturn"])]
    pub mooncake: bool,
    /// Replay the embedded multi-turn ShareGPT trace (41,690 turns; prompts replay the history).
    #[arg(long, conflicts_with = "synthetic")]
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
    /// Poisson arrivals at this many requests (conversations, for closed-loop chats) per
    /// second; a comma-separated list (1,2,4,8) sweeps the load. Default: the trace's
    /// arrival times, else everything at t = 0 (a saturated server).
    #[arg(long, value_name = "REQ_PER_S[,...]", value_parser = parse_rate, value_delimiter = ',')]
    pub rate: Option<Vec<f64>>,
    /// Multiply every arrival time by F (0.5 replays twice as fast, 2 half as fast).
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub time_scale: f64,
    /// Multi-turn chats: every turn arrives on its own (open loop) instead of when the
    /// previous reply has finished plus a think time (closed loop, the default).
    #[arg(long)]
    pub open_loop: bool,
    /// Closed-loop chats: the time between a reply and the next turn, seconds:
    /// fixed:S, exp:MEAN, uniform:MIN-MAX or lognormal:MEDIAN,SIGMA.
    #[arg(long, value_name = "DIST", default_value = "exp:10", value_parser = parse_think_time)]
    pub think_time: ThinkTime,
    /// Seed of token ids, synthetic lengths, arrivals and think times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Comma-separated policies: paged<B> with -prefix, -offload (with -prefix: evicted prefix
    /// blocks go to the host tier and are reloaded on a hit), -swap, -auto, -most-blocks, -wm<F>, or
    /// -vllm (vLLM 0.33.0's scheduling; alone or with -offload); reserve-max, reserve-pow2, reserve-oracle with -buddy or
    /// -anywhere. Default: paged16, reserve-max, reserve-pow2, reserve-oracle, paged1, paged8,
    /// paged32, paged64, paged128 (Mooncake: paged16-vllm, paged16-prefix, paged16, reserve-pow2,
    /// reserve-oracle; --sweep-blocks: paged16-vllm, paged16-prefix).
    #[arg(long, value_name = "LIST")]
    pub policies: Option<String>,

    /// A Hugging Face config.json giving the model's shape. Default: OPT-13B's (40 layers,
    /// 40 KV heads of 128, fp16); with Mooncake traces LLaMA3-70B's (80 layers, 8 KV heads of
    /// 128, bf16, tensor parallelism 8).
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
    /// KV cache element type: auto (the config's; the default model's without a config), bf16, fp16, fp32, fp8, int8.
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
    /// Model weights on one GPU. Default: estimated from --config, else the default model's
    /// (26GB for OPT-13B; 17.5GB, LLaMA3-70B's 140 GB over 8 GPUs).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub weights: Option<u64>,
    /// Peak activation memory. Default: estimated from --config, else 0.5GiB (OPT-13B) or 2GiB (LLaMA3-70B).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub activation_peak: Option<u64>,
    /// Memory outside PyTorch's allocator (0.25GiB; 1GiB with LLaMA3-70B on 8 GPUs).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub non_torch: Option<u64>,
    /// Give the KV cache this budget directly instead of a GPU profile.
    #[arg(long, value_name = "SIZE", value_parser = parse_size,
          conflicts_with_all = ["gpu", "gpu_memory", "weights", "activation_peak", "non_torch", "num_blocks"])]
    pub kv_cache_memory: Option<u64>,
    /// GPUs sharing every layer (1; 8 with LLaMA3-70B).
    #[arg(long, value_name = "N")]
    pub tensor_parallel_size: Option<u32>,
    /// Size the KV memory as this many blocks of --block-size tokens instead of from a model and GPU.
    #[arg(long, value_name = "N",
          conflicts_with_all = ["config", "layers", "kv_heads", "head_dim", "gpu", "gpu_memory", "weights", "activation_peak", "non_torch", "sweep_blocks"])]
    pub num_blocks: Option<u64>,
    /// Tokens per block of --num-blocks and --sweep-blocks.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub block_size: u32,
    /// Longest sequence (prompt + output); longer requests are rejected and counted
    /// (2048; 131072 with Mooncake traces).
    #[arg(long, value_name = "N")]
    pub max_model_len: Option<u32>,
    /// Most sequences in a batch (256).
    #[arg(long, value_name = "N")]
    pub max_num_seqs: Option<u32>,
    /// Most tokens in one forward pass, at least --max-num-seqs; longer prompts are
    /// prefilled in chunks (2048; 8192 with Mooncake traces).
    #[arg(long, value_name = "N")]
    pub max_num_batched_tokens: Option<u32>,
    /// Step-time model: fixed milliseconds per step (20 for OPT-13B on an A100; 11 for LLaMA3-70B on 8 A800s).
    #[arg(long, value_name = "MS")]
    pub step_time_base_ms: Option<f64>,
    /// Step-time model: milliseconds per computed prompt token (0.15; 0.113).
    #[arg(long, value_name = "MS")]
    pub step_time_prefill_ms: Option<f64>,
    /// Step-time model: milliseconds per decoded token (0.15; 0.113).
    #[arg(long, value_name = "MS")]
    pub step_time_decode_ms: Option<f64>,
    /// Step-time model: device memory bandwidth for reading the decodes' KV, GB/s (1555; 2039).
    #[arg(long, value_name = "GB_PER_S")]
    pub hbm_gbps: Option<f64>,
    /// Step-time model: host ↔ device bandwidth for swap copies, GB/s (25: PCIe 4.0 ×16).
    #[arg(long, value_name = "GB_PER_S")]
    pub pcie_gbps: Option<f64>,
    /// Host blocks of the host tier (swap preemption and -offload policies share it), of each
    /// policy's block size. Default: 4GiB of host memory (vLLM's swap_space) with a model; as many
    /// blocks as the device with --num-blocks.
    #[arg(long, value_name = "N", conflicts_with = "host_memory")]
    pub host_blocks: Option<u64>,
    /// Host memory of the host tier, e.g. 64GiB (needs a model: with --num-blocks give --host-blocks).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "num_blocks")]
    pub host_memory: Option<u64>,
    /// Goodput: most milliseconds to the first token (2000; 10000 with Mooncake traces).
    #[arg(long, value_name = "MS")]
    pub slo_ttft_ms: Option<f64>,
    /// Goodput: most milliseconds per output token after the first (100).
    #[arg(long, value_name = "MS")]
    pub slo_tpot_ms: Option<f64>,
    /// Sweep the KV memory: prefix hit rate per policy at each capacity in blocks of
    /// --block-size (A,B,C or A..B[:N]), beside the infinite-cache and offline-optimal bounds.
    #[arg(long, value_name = "BLOCKS", value_parser = parse_capacities, conflicts_with = "kv_cache_memory")]
    pub sweep_blocks: Option<Capacities>,

    /// Print one JSON object (summaries, latencies and a down-sampled time series per policy).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the summary table as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Write an SVG plot: KV-memory composition over time per policy; with several --rate
    /// values, throughput against latency; with --sweep-blocks, hit rate against capacity.
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

    #[test]
    fn think_times_rates_and_capacities_parse_or_say_the_syntax() {
        assert_eq!(
            parse_think_time("exp:10").unwrap(),
            ThinkTime::Exponential { mean: 10.0 }
        );
        assert_eq!(parse_think_time("2.5").unwrap(), ThinkTime::Fixed(2.5));
        assert_eq!(
            parse_think_time("uniform:1-3").unwrap(),
            ThinkTime::Uniform { min: 1.0, max: 3.0 }
        );
        for bad in ["fixed:-1", "uniform:3-1", "zipf:2", "exp:x"] {
            assert!(parse_think_time(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate(" 4").unwrap(), 4.0);
        assert!(parse_rate("0").unwrap_err().contains("\"0\""));
        assert_eq!(parse_capacities("10,20").unwrap().0, [10, 20]);
        assert_eq!(
            parse_capacities("100..1600:5").unwrap().0,
            [100, 200, 400, 800, 1600]
        );
        assert_eq!(parse_capacities("100..800").unwrap().0.len(), 8);
        for bad in ["0", "5..5", "10..x", "1..9:1"] {
            assert!(parse_capacities(bad).is_err(), "{bad}");
        }
    }
}
