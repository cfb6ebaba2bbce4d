//! `pagedkv simulate`: resolve the flags into a [`Workload`], a [`Scenario`]
//! and policies, and run the library's simulator ([`pagedkv::sim`]).
//!
//! The model and memory flags are those of `pagedkv plan` and go through the
//! same resolution (`plan::resolve`); what is missing defaults to the
//! PagedAttention paper's setting (OPT-13B on an A100-40GB).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pagedkv::sim::synthetic::SyntheticSpec;
use pagedkv::sim::trace::{self, TraceOptions};
use pagedkv::sim::{
    self, parse_policies, Arrivals, KvSize, Policy, RunResult, Scenario, SimError, StepTimeModel, Workload,
};
use pagedkv::KvDtype;

use crate::args::{DtypeChoice, MaxModelLen, MemoryArgs, ModelArgs, PlanArgs};
use crate::error::InputError;
use crate::gpus::find_gpu;
use crate::plan;
use crate::sim_args::SimulateArgs;

/// The default trace, embedded so that `pagedkv simulate` runs anywhere.
pub const FIRST_TURN_TRACE: &str = include_str!("../../data/traces/sharegpt_first_turn.csv");
/// The multi-turn trace (`--multiturn`).
pub const MULTITURN_TRACE: &str = include_str!("../../data/traces/sharegpt_multiturn.csv");

/// Everything a run needs.
pub struct Setup {
    /// The requests.
    pub workload: Workload,
    /// The engine.
    pub scenario: Scenario,
    /// The policies, in order.
    pub policies: Vec<Policy>,
}

fn sim_input(e: SimError) -> InputError {
    match e {
        SimError::InvalidConfig { field, reason } => {
            InputError::new(format!("--{}", field.replace('_', "-")), reason)
        }
        SimError::Policy { policy, reason } => InputError::new("--policies", format!("{policy:?}: {reason}")),
        other => InputError::new("input", other.to_string()),
    }
}

fn workload(args: &SimulateArgs) -> Result<Workload, InputError> {
    let options = TraceOptions {
        seed: args.seed,
        vllm_filter: args.vllm_filter,
    };
    // A malformed trace line is reported as file:line: reason.
    let trace_err = |e: SimError| InputError::new("--trace", e.to_string());
    let mut w = if args.synthetic {
        SyntheticSpec {
            num_requests: args.num_requests,
            prompt_len: args.prompt_len,
            output_len: args.output_len,
            system_prompt_len: args.system_prompt_len,
            system_prompt_fraction: args.system_prompt_fraction,
            n: args.n,
            turns: args.turns,
            seed: args.seed,
        }
        .generate()
        .map_err(sim_input)?
    } else if let Some(path) = &args.trace {
        trace::load_trace(path, &options).map_err(trace_err)?
    } else if args.multiturn {
        trace::parse_trace("<embedded sharegpt_multiturn.csv>", MULTITURN_TRACE, &options)
            .map_err(trace_err)?
    } else {
        trace::parse_trace("<embedded sharegpt_first_turn.csv>", FIRST_TURN_TRACE, &options)
            .map_err(trace_err)?
    };
    if args.n != 1 {
        if args.n == 0 || args.n > u16::MAX as u32 {
            return Err(InputError::new(
                "--n",
                format!("{} parallel samples; use 1..=65535", args.n),
            ));
        }
        w.requests.iter_mut().for_each(|r| r.n = args.n);
    }
    if let Some(rate) = args.rate {
        w = w.with_arrivals(Arrivals::Poisson { rate }).map_err(|e| match e {
            SimError::InvalidConfig { reason, .. } => InputError::new("--rate", reason),
            other => InputError::new("--rate", other.to_string()),
        })?;
    }
    if let Some(limit) = args.limit {
        w = w.truncated(limit);
    }
    Ok(w)
}

/// The KV memory: `--num-blocks`, else the plan's resolution with the paper's defaults filled in.
fn kv_size(args: &SimulateArgs) -> Result<KvSize, InputError> {
    if let Some(num_blocks) = args.num_blocks {
        return Ok(KvSize::Blocks {
            num_blocks,
            block_size: args.block_size,
        });
    }
    let no_shape =
        args.config.is_none() && args.layers.is_none() && args.kv_heads.is_none() && args.head_dim.is_none();
    let no_memory = args.gpu.is_none() && args.gpu_memory.is_none() && args.kv_cache_memory.is_none();
    let opt13b = |given: Option<u32>, default| {
        if no_shape {
            Some(given.unwrap_or(default))
        } else {
            given
        }
    };
    let kv_dtype = match (args.kv_dtype, args.config.is_none()) {
        (DtypeChoice::Auto, true) => DtypeChoice::Dtype(KvDtype::F16),
        (d, _) => d,
    };
    let no_config = args.config.is_none();
    let plan_args = PlanArgs {
        model: ModelArgs {
            config: args.config.clone(),
            layers: opt13b(args.layers, 40),
            kv_heads: opt13b(args.kv_heads, 40),
            head_dim: opt13b(args.head_dim, 128),
            kv_dtype,
            tensor_parallel_size: args.tensor_parallel_size,
            ..ModelArgs::default()
        },
        memory: MemoryArgs {
            gpu: if no_memory {
                Some(find_gpu("a100-40gb").expect("a preset"))
            } else {
                args.gpu
            },
            gpu_memory: args.gpu_memory,
            gpu_memory_utilization: Some(args.gpu_memory_utilization),
            weights: args.weights.or(no_config.then_some(26_000_000_000)),
            activation_peak: args.activation_peak.or(no_config.then_some(1 << 29)),
            non_torch: args.non_torch,
            kv_cache_memory: args.kv_cache_memory,
            ..MemoryArgs::default()
        },
        max_model_len: Some(MaxModelLen::Tokens(args.max_model_len as u64)),
        max_num_seqs: Some(args.max_num_seqs as u64),
        max_num_batched_tokens: Some(
            args.max_num_batched_tokens
                .unwrap_or(args.max_model_len.max(2048)) as u64,
        ),
        ..PlanArgs::default()
    };
    let inputs = plan::resolve(&plan_args)?;
    Ok(KvSize::Plan {
        spec: inputs.spec,
        budget: inputs.budget.memory_budget(),
    })
}

/// Resolves every flag; the error names the flag (or the trace's file and line).
pub fn resolve(args: &SimulateArgs) -> Result<Setup, InputError> {
    let workload = workload(args)?;
    let kv = kv_size(args)?;
    let name = match (&kv, &args.config) {
        (
            KvSize::Blocks {
                num_blocks,
                block_size,
            },
            _,
        ) => format!("{num_blocks} blocks of {block_size} tokens"),
        (_, Some(path)) => path.display().to_string(),
        _ if args.layers.is_none()
            && args.gpu.is_none()
            && args.kv_cache_memory.is_none()
            && args.gpu_memory.is_none() =>
        {
            Scenario::default().name
        }
        _ => "flags".to_string(),
    };
    let scenario = Scenario {
        name,
        kv,
        max_model_len: args.max_model_len,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args
            .max_num_batched_tokens
            .unwrap_or(args.max_model_len.max(2048)),
        time_model: StepTimeModel {
            base_s: args.step_time_base_ms / 1e3,
            per_token_s: args.step_time_per_token_ms / 1e3,
        },
        ..Scenario::default()
    };
    scenario.validate().map_err(sim_input)?;
    scenario
        .token_slots()
        .map_err(|e| InputError::new("memory", e.to_string()))?;
    let policies = match &args.policies {
        Some(list) => parse_policies(list).map_err(sim_input)?,
        None => Policy::default_set(),
    };
    Ok(Setup {
        workload,
        scenario,
        policies,
    })
}

/// Runs every policy, with a progress bar on stderr when it is a terminal.
pub fn run(setup: &Setup) -> Result<Vec<RunResult>, SimError> {
    let total = setup.workload.requests.len() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} requests ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let mut results = Vec::with_capacity(setup.policies.len());
    for policy in &setup.policies {
        let result = match &bar {
            Some(bar) => {
                bar.set_message(policy.name());
                bar.set_position(0);
                let mut report = |done: u64, _total: u64| bar.set_position(done);
                let mut progress = sim::Progress::new(&mut report);
                sim::simulate_with_progress(&setup.scenario, &setup.workload, policy, &mut progress)?
            }
            None => sim::simulate(&setup.scenario, &setup.workload, policy)?,
        };
        results.push(result);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(results)
}
