//! `pagedkv simulate`: resolve the flags into a [`Workload`], a [`Scenario`]
//! and policies, and run the library's simulator ([`pagedkv::sim`]): once,
//! over a sweep of arrival rates, or over a sweep of KV capacities.
//!
//! The model and memory flags are those of `pagedkv plan` and go through the
//! same resolution (`plan::resolve`); what is missing defaults to the
//! scenario the workload calls for: the PagedAttention paper's setting
//! (OPT-13B on an A100-40GB, [`Scenario::default`]) for ShareGPT and
//! synthetic workloads, the Mooncake paper's (LLaMA3-70B on 8 A800-80GB,
//! [`Scenario::mooncake`]) for Mooncake traces.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pagedkv::sim::metrics::LocalLayers;
use pagedkv::sim::prefix_bounds::BlockTrace;
use pagedkv::sim::synthetic::SyntheticSpec;
use pagedkv::sim::trace::{self, TraceOptions};
use pagedkv::sim::{
    self, mooncake, parse_policies, short_number, Arrivals, KvSize, Policy, RunResult, RunSummary, Scenario,
    SimError, Slo, StepTimeModel, Workload,
};
use pagedkv::KvMemory;

use crate::args::{DtypeChoice, MaxModelLen, MemoryArgs, ModelArgs, PlanArgs};
use crate::error::InputError;
use crate::plan;
use crate::sim_args::SimulateArgs;

/// The default trace, embedded so that `pagedkv simulate` runs anywhere.
pub const FIRST_TURN_TRACE: &str = include_str!("../../data/traces/sharegpt_first_turn.csv");
/// The multi-turn trace (`--multiturn`).
pub const MULTITURN_TRACE: &str = include_str!("../../data/traces/sharegpt_multiturn.csv");
/// The Mooncake trace (`--mooncake`).
pub const MOONCAKE_TRACE: &str = include_str!("../../data/traces/mooncake_synthetic_trace.jsonl");

/// What to run.
#[derive(Clone, Debug, PartialEq)]
pub enum Sweep {
    /// Every policy once.
    None,
    /// Every policy at each Poisson arrival rate (requests per second).
    Rates(Vec<f64>),
    /// Every policy at each KV capacity (blocks of `block_size` tokens).
    Blocks {
        /// Blocks of the KV memory.
        capacities: Vec<u64>,
        /// Tokens per block.
        block_size: u32,
    },
}

/// Everything a run needs.
pub struct Setup {
    /// The requests (for a rate sweep, before arrivals are drawn).
    pub workload: Workload,
    /// The engine.
    pub scenario: Scenario,
    /// The policies, in order.
    pub policies: Vec<Policy>,
    /// Once, or a sweep.
    pub sweep: Sweep,
    /// How the requests arrive, for the report.
    pub arrivals: String,
    /// Caveats for the report, one sentence each.
    pub notes: Vec<String>,
    /// For a hybrid model (KV cache groups), the same engine with every
    /// layer planned as full attention: the paged policies run on it too.
    pub full_attention: Option<Scenario>,
    time_scale: f64,
}

/// The policies at one arrival rate.
pub struct RatePoint {
    /// Requests per second.
    pub rate: f64,
    /// One summary per policy, in order.
    pub runs: Vec<RunSummary>,
}

/// Prefix hit rates against the KV capacity, with the trace's bounds.
pub struct CapacitySweep {
    /// Tokens per block.
    pub block_size: u32,
    /// Blocks of KV memory, ascending.
    pub capacities: Vec<u64>,
    /// The hit rate of a cache that never evicts.
    pub infinite: f64,
    /// The offline optimum's hit rate at each capacity.
    pub optimal: Vec<f64>,
    /// Per policy, one summary per capacity.
    pub runs: Vec<Vec<RunSummary>>,
}

/// The paged policies run again with every layer planned as full attention.
pub struct FullAttentionRuns {
    /// The scenario they ran on.
    pub scenario: Scenario,
    /// (index into the runs, the summary on the full-attention scenario).
    pub runs: Vec<(usize, RunSummary)>,
}

/// What a setup produced.
#[allow(clippy::large_enum_variant)] // one per command run: boxing buys nothing
pub enum Outcome {
    /// One run per policy, and for a hybrid model the paged policies' runs
    /// with every layer planned as full attention.
    Runs(Vec<RunResult>, Option<FullAttentionRuns>),
    /// A rate sweep.
    Rates(Vec<RatePoint>),
    /// A capacity sweep.
    Capacities(CapacitySweep),
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

/// Whether the workload comes from a Mooncake trace (it then runs on the Mooncake engine by default).
fn is_mooncake(args: &SimulateArgs) -> Result<bool, InputError> {
    if args.mooncake {
        return Ok(true);
    }
    let Some(path) = &args.trace else {
        return Ok(false);
    };
    // A Mooncake trace is JSON lines: its first non-blank character is '{'.
    let head = std::fs::read(path)
        .map_err(|e| InputError::new("--trace", format!("cannot read {}: {e}", path.display())))?;
    Ok(head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

/// The requests, arrival times not yet set from `--rate`.
fn base_workload(args: &SimulateArgs) -> Result<Workload, InputError> {
    let options = TraceOptions {
        seed: args.seed,
        vllm_filter: args.vllm_filter,
        think_time: args.think_time,
        open_loop: args.open_loop,
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
            think_time: args.think_time,
            open_loop: args.open_loop,
            seed: args.seed,
        }
        .generate()
        .map_err(sim_input)?
    } else if let Some(path) = &args.trace {
        trace::load_trace(path, &options).map_err(trace_err)?
    } else if args.mooncake {
        mooncake::parse_mooncake(
            "<embedded mooncake_synthetic_trace.jsonl>",
            MOONCAKE_TRACE,
            &options,
        )
        .map_err(trace_err)?
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
    if let Some(limit) = args.limit {
        w = w.truncated(limit);
    }
    Ok(w)
}

/// `workload` with Poisson arrivals at `rate` (if any) and the time scale applied.
fn arrive(workload: &Workload, rate: Option<f64>, time_scale: f64) -> Result<Workload, InputError> {
    let mut w = workload.clone();
    if let Some(rate) = rate {
        w = w
            .with_arrivals(Arrivals::Poisson { rate })
            .map_err(|e| InputError::new("--rate", e.to_string()))?;
    }
    if time_scale != 1.0 {
        w = w.time_scaled(time_scale).map_err(sim_input)?;
    }
    Ok(w)
}

/// The KV memory: `--num-blocks`, the base scenario's when no model or memory
/// flag is given, else the plan's resolution with the base's model and GPU
/// filling what the flags leave out.
fn kv_size(args: &SimulateArgs, base: &Scenario) -> Result<KvSize, InputError> {
    if let Some(num_blocks) = args.num_blocks {
        return Ok(KvSize::Blocks {
            num_blocks,
            block_size: args.block_size,
        });
    }
    let no_shape = args.config.is_none()
        && args.layers.is_none()
        && args.kv_heads.is_none()
        && args.head_dim.is_none()
        && args.kv_dtype == DtypeChoice::Auto
        && args.tensor_parallel_size.is_none();
    let no_memory = args.gpu.is_none()
        && args.gpu_memory.is_none()
        && args.kv_cache_memory.is_none()
        && args.weights.is_none()
        && args.activation_peak.is_none()
        && args.non_torch.is_none()
        && args.gpu_memory_utilization == 0.9;
    let KvSize::Plan { spec, budget } = &base.kv else {
        unreachable!("the base scenarios are sized by a plan")
    };
    if no_shape && no_memory {
        return Ok(base.kv.clone());
    }
    let KvMemory::Device(device) = budget.kv else {
        unreachable!("the base scenarios have a device profile")
    };
    let no_model =
        args.config.is_none() && args.layers.is_none() && args.kv_heads.is_none() && args.head_dim.is_none();
    let base_model = |given: Option<u32>, default| {
        if no_model {
            Some(given.unwrap_or(default))
        } else {
            given
        }
    };
    let kv_dtype = match (args.kv_dtype, args.config.is_none()) {
        (DtypeChoice::Auto, true) => DtypeChoice::Dtype(spec.dtype),
        (d, _) => d,
    };
    let no_device = args.gpu.is_none() && args.gpu_memory.is_none() && args.kv_cache_memory.is_none();
    let no_config = args.config.is_none();
    let plan_args = PlanArgs {
        model: ModelArgs {
            config: args.config.clone(),
            layers: base_model(args.layers, spec.num_layers),
            kv_heads: base_model(args.kv_heads, spec.num_kv_heads),
            head_dim: base_model(args.head_dim, spec.head_dim_k),
            kv_dtype,
            tensor_parallel_size: args.tensor_parallel_size.unwrap_or(if no_model {
                spec.tensor_parallel_size
            } else {
                1
            }),
            ..ModelArgs::default()
        },
        memory: MemoryArgs {
            gpu: args.gpu,
            gpu_memory: args.gpu_memory.or(no_device.then_some(device.device_bytes)),
            gpu_memory_utilization: Some(args.gpu_memory_utilization),
            weights: args.weights.or(no_config.then_some(device.weights_bytes)),
            activation_peak: args
                .activation_peak
                .or(no_config.then_some(device.activation_peak_bytes)),
            non_torch: args.non_torch.or(no_config.then_some(device.non_torch_bytes)),
            kv_cache_memory: args.kv_cache_memory,
            ..MemoryArgs::default()
        },
        max_model_len: Some(MaxModelLen::Tokens(
            args.max_model_len.unwrap_or(base.max_model_len) as u64,
        )),
        max_num_seqs: Some(args.max_num_seqs.unwrap_or(base.max_num_seqs) as u64),
        max_num_batched_tokens: Some(
            args.max_num_batched_tokens.unwrap_or(base.max_num_batched_tokens) as u64
        ),
        ..PlanArgs::default()
    };
    let inputs = plan::resolve(&plan_args)?;
    // A model that mixes attention kinds is sized as the chosen engine sizes
    // it (KV cache groups sharing one pool); a uniform one as before.
    if inputs.layout.layers.iter().any(|l| l.kind.releases_blocks()) {
        return Ok(KvSize::Layout {
            layout: inputs.layout,
            budget: inputs.budget.memory_budget(),
            rules: inputs.rules,
        });
    }
    Ok(KvSize::Plan {
        spec: inputs.spec,
        budget: inputs.budget.memory_budget(),
    })
}

/// The step-time model: the base scenario's, the KV bytes of the resolved model, the flags.
fn time_model(args: &SimulateArgs, base: &Scenario, kv: &KvSize) -> StepTimeModel {
    let mut t = base.time_model;
    match (kv, *kv == base.kv) {
        (KvSize::Plan { spec, .. }, false) => t.kv_bytes_per_token = spec.bytes_per_token() as f64,
        // Every layer's bytes per token; a decode reads that much per token
        // of context in full-attention layers, and at most the window in
        // local ones (charged by the model's `local_layers`).
        (KvSize::Layout { layout, .. }, false) => {
            t.kv_bytes_per_token = layout.bytes_per_token() as f64;
            t.local_layers = LocalLayers::of(layout);
        }
        _ => {}
    }
    let ms = |x: Option<f64>, d: f64| x.map_or(d, |v| v / 1e3);
    t.base_s = ms(args.step_time_base_ms, t.base_s);
    t.prefill_token_s = ms(args.step_time_prefill_ms, t.prefill_token_s);
    t.decode_token_s = ms(args.step_time_decode_ms, t.decode_token_s);
    t.hbm_bytes_per_s = args.hbm_gbps.map_or(t.hbm_bytes_per_s, |g| g * 1e9);
    t.pcie_bytes_per_s = args.pcie_gbps.map_or(t.pcie_bytes_per_s, |g| g * 1e9);
    t
}

/// Resolves every flag; the error names the flag (or the trace's file and line).
pub fn resolve(args: &SimulateArgs) -> Result<Setup, InputError> {
    let mooncake = is_mooncake(args)?;
    let base = if mooncake {
        Scenario::mooncake()
    } else {
        Scenario::default()
    };
    let workload = base_workload(args)?;
    let kv = kv_size(args, &base)?;
    let name = match (&kv, &args.config) {
        (
            KvSize::Blocks {
                num_blocks,
                block_size,
            },
            _,
        ) => format!("{num_blocks} blocks of {block_size} tokens"),
        (_, Some(path)) => path.display().to_string(),
        (kv, None) if *kv == base.kv => base.name.clone(),
        _ => "flags".to_string(),
    };
    let slo = Slo {
        ttft_s: args.slo_ttft_ms.map_or(base.slo.ttft_s, |ms| ms / 1e3),
        tpot_s: args.slo_tpot_ms.map_or(base.slo.tpot_s, |ms| ms / 1e3),
    };
    let mut notes = Vec::new();
    let own_timing = args.step_time_base_ms.is_some()
        && args.step_time_prefill_ms.is_some()
        && args.step_time_decode_ms.is_some();
    if matches!(kv, KvSize::Plan { .. } | KvSize::Layout { .. }) && kv != base.kv && !own_timing {
        notes.push(format!(
            "the step-time model keeps the default engine's constants ({}) but this model's KV bytes; set \
             --step-time-base-ms, --step-time-prefill-ms, --step-time-decode-ms and --hbm-gbps for this model and GPU",
            base.name
        ));
    }
    let scenario = Scenario {
        name,
        time_model: time_model(args, &base, &kv),
        kv,
        max_model_len: args.max_model_len.unwrap_or(base.max_model_len),
        max_num_seqs: args.max_num_seqs.unwrap_or(base.max_num_seqs),
        max_num_batched_tokens: args.max_num_batched_tokens.unwrap_or(base.max_num_batched_tokens),
        slo,
        swap_space_bytes: args.host_memory.unwrap_or(base.swap_space_bytes),
        host_blocks: args.host_blocks,
    };
    if args.host_memory.is_some() && matches!(scenario.kv, KvSize::Blocks { .. }) {
        return Err(InputError::new(
            "--host-memory",
            "a size in bytes needs a model to count blocks; with --num-blocks give --host-blocks N",
        ));
    }
    scenario.validate().map_err(sim_input)?;
    scenario
        .token_slots()
        .map_err(|e| InputError::new("memory", e.to_string()))?;
    let sweep = match (&args.rate, &args.sweep_blocks) {
        (Some(rates), Some(_)) if rates.len() > 1 => {
            return Err(InputError::new(
                "--sweep-blocks",
                "sweep either the rate or the capacity, not both; give --rate one value",
            ))
        }
        (_, Some(capacities)) => Sweep::Blocks {
            capacities: capacities.0.clone(),
            block_size: args.block_size,
        },
        (Some(rates), None) if rates.len() > 1 => Sweep::Rates(rates.clone()),
        _ => Sweep::None,
    };
    let policies = match &args.policies {
        Some(list) => parse_policies(list).map_err(sim_input)?,
        None if matches!(sweep, Sweep::Blocks { .. }) => {
            parse_policies("paged16-vllm,paged16-prefix").expect("valid")
        }
        None if mooncake => {
            parse_policies("paged16-vllm,paged16-prefix,paged16,reserve-pow2,reserve-oracle").expect("valid")
        }
        None => Policy::default_set(),
    };
    if args.block_size == 0 {
        return Err(InputError::new("--block-size", "must be at least 1 token"));
    }
    if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
        return Err(InputError::new(
            "--time-scale",
            format!(
                "{}: give a positive factor, e.g. 0.5 to replay twice as fast",
                args.time_scale
            ),
        ));
    }
    let single_rate = match (&sweep, &args.rate) {
        (Sweep::Rates(_), _) => None,
        (_, Some(r)) => r.first().copied(),
        (_, None) => None,
    };
    let mut arrivals = match (&sweep, single_rate) {
        (Sweep::Rates(r), _) => format!(
            "Poisson at {} requests/s",
            r.iter().map(|&x| short_number(x)).collect::<Vec<_>>().join(", ")
        ),
        (_, Some(r)) => format!("Poisson at {} requests/s", short_number(r)),
        _ if mooncake || args.trace.is_some() => "the trace's arrival times".to_string(),
        _ => "all at t = 0".to_string(),
    };
    if workload.is_closed_loop() {
        arrivals += &format!(
            " (conversations; later turns arrive after the previous reply plus a think time, {:?})",
            args.think_time
        );
    }
    if args.time_scale != 1.0 {
        arrivals += &format!(", time × {}", short_number(args.time_scale));
    }
    let workload = match sweep {
        Sweep::Rates(_) => workload,
        _ => arrive(&workload, single_rate, args.time_scale)?,
    };
    let full_attention = match sweep {
        Sweep::None => scenario.full_attention(),
        _ => None,
    };
    Ok(Setup {
        workload,
        scenario,
        policies,
        sweep,
        arrivals,
        notes,
        full_attention,
        time_scale: args.time_scale,
    })
}

/// A progress bar on stderr when it is a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(total: u64) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} requests ({elapsed})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Bar(Some(bar))
    }

    fn run(
        &self,
        label: String,
        scenario: &Scenario,
        w: &Workload,
        p: &Policy,
    ) -> Result<RunResult, SimError> {
        match &self.0 {
            Some(bar) => {
                bar.set_message(label);
                bar.set_position(0);
                let mut report = |done: u64, _total: u64| bar.set_position(done);
                let mut progress = sim::Progress::new(&mut report);
                sim::simulate_with_progress(scenario, w, p, &mut progress)
            }
            None => sim::simulate(scenario, w, p),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Runs the setup. Input errors found only while running (a rate the
/// workload refuses) come back as `Err(Ok(..))`; simulator failures as `Err(Err(..))`.
pub fn run(setup: &Setup) -> Result<Outcome, Result<InputError, SimError>> {
    let bar = Bar::new(setup.workload.requests.len() as u64);
    match &setup.sweep {
        Sweep::None => {
            let mut results = Vec::with_capacity(setup.policies.len());
            for p in &setup.policies {
                results.push(
                    bar.run(p.name(), &setup.scenario, &setup.workload, p)
                        .map_err(Err)?,
                );
            }
            let full = match &setup.full_attention {
                Some(scenario) => {
                    let mut runs = Vec::new();
                    for (i, p) in setup.policies.iter().enumerate() {
                        if let Policy::Paged(_) = p {
                            let r = bar
                                .run(format!("{} (all full)", p.name()), scenario, &setup.workload, p)
                                .map_err(Err)?;
                            runs.push((i, r.summary));
                        }
                    }
                    Some(FullAttentionRuns {
                        scenario: scenario.clone(),
                        runs,
                    })
                }
                None => None,
            };
            Ok(Outcome::Runs(results, full))
        }
        Sweep::Rates(rates) => {
            let mut points = Vec::new();
            for &rate in rates {
                let w = arrive(&setup.workload, Some(rate), setup.time_scale).map_err(Ok)?;
                let mut runs = Vec::new();
                for p in &setup.policies {
                    let r = bar
                        .run(format!("{} @ {rate}/s", p.name()), &setup.scenario, &w, p)
                        .map_err(Err)?;
                    runs.push(r.summary);
                }
                points.push(RatePoint { rate, runs });
            }
            Ok(Outcome::Rates(points))
        }
        Sweep::Blocks {
            capacities,
            block_size,
        } => {
            let mut capacities = capacities.clone();
            capacities.sort_unstable();
            capacities.dedup();
            let trace =
                BlockTrace::new(&setup.workload, *block_size, setup.scenario.max_model_len).map_err(Err)?;
            let optimal = capacities.iter().map(|&c| trace.optimal_hit_rate(c)).collect();
            let mut runs = Vec::new();
            for p in &setup.policies {
                let mut row = Vec::new();
                for &c in &capacities {
                    let scenario = Scenario {
                        kv: KvSize::Blocks {
                            num_blocks: c,
                            block_size: *block_size,
                        },
                        ..setup.scenario.clone()
                    };
                    let r = bar
                        .run(
                            format!("{} @ {c} blocks", p.name()),
                            &scenario,
                            &setup.workload,
                            p,
                        )
                        .map_err(Err)?;
                    row.push(r.summary);
                }
                runs.push(row);
            }
            Ok(Outcome::Capacities(CapacitySweep {
                block_size: *block_size,
                capacities,
                infinite: trace.infinite_hit_rate(),
                optimal,
                runs,
            }))
        }
    }
}
