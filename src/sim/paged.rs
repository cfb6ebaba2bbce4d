//! Paged allocation through the reference [`Scheduler`] over a
//! [`KvCacheManager`]: the simulator plays the engine.
//!
//! Each simulated forward pass: requests that have arrived are added
//! (`add_request`; one that can never run is counted as rejected with the
//! scheduler's reason), the scheduler plans the step (prefill chunks and
//! decodes within `max_num_seqs` and `max_num_batched_tokens`, preemption by
//! recompute or swap to the host tier as the policy says, parallel samples
//! forked after their prompt), the step is sampled from the manager's usage,
//! and the "sampled" tokens are reported back (`on_step_output`). Token ids
//! come from the workload, so prefix caching sees real sharing (system
//! prompts, multi-turn history); with caching off they do not matter to the
//! manager and zeros are passed instead of synthesizing them.
//!
//! Policies map onto the scheduler's: preemption `Recompute` →
//! [`AlwaysRecompute`], `Swap` → [`AlwaysSwap`], `Auto` → [`Automatic`] (swap
//! when the host tier has room and recompute would cost more tokens than the
//! transfer); victim `LatestArrival` → [`LatestArrival`], `MostBlocks` →
//! [`MostBlocks`]. The host tier holds `Scenario::swap_space_bytes` (vLLM's
//! `swap_space`, 4 GiB by default; or `Scenario::host_blocks`) and exists
//! for the swap and automatic modes and for `-offload` policies (the tiered
//! prefix cache: evicted cached blocks are copied there and reloaded on a
//! hit; the copies are charged to the step time like swap copies). One host
//! pool serves both: a swap takes the room of offloaded blocks.

use crate::ids::TokenId;
use crate::manager::{AdmissionRefusal, KvCacheConfig, KvCacheManager, KvUsage, PrefixOffload};
use crate::pool::MAX_BLOCKS;
use crate::scheduler::{
    AlwaysRecompute, AlwaysSwap, Automatic, LatestArrival, MostBlocks, Request, RequestId, SampledToken,
    Scheduler, SchedulerConfig, StepPlan,
};
use crate::sim::error::SimError;
use crate::sim::metrics::{Recorder, Rejection, RunResult, StepSample, StepWork, TierSummary};
use crate::sim::policy::{Eviction, PagedPolicy, Policy, PreemptionMode, Victim};
use crate::sim::sessions::ArrivalQueue;
use crate::sim::workload::Workload;
use crate::sim::{Progress, Scenario};
use crate::SchedulerError;

/// The sample of one step from the manager's usage. Paged allocation reserves
/// nothing ahead, so `reservation_waste` is 0.
pub(crate) fn step_sample(u: &KvUsage, block_size: u32) -> StepSample {
    let bs = block_size as u64;
    StepSample {
        total_slots: u.num_blocks * bs,
        reserved_slots: u.used_blocks * bs,
        token_slots: u.stored_tokens,
        internal_fragmentation: u.internal_fragmentation,
        reservation_waste: 0,
        free_slots: u.free_blocks * bs,
        ..Default::default()
    }
}

fn pool_size(blocks: u64, field: &'static str, block_size: u32) -> Result<u32, SimError> {
    u32::try_from(blocks)
        .ok()
        .filter(|&n| n <= MAX_BLOCKS)
        .ok_or_else(|| SimError::InvalidConfig {
            field,
            reason: format!(
                "{blocks} blocks of {block_size} tokens exceed a pool's {MAX_BLOCKS}; use a larger block size"
            ),
        })
}

fn scheduler(scenario: &Scenario, policy: &PagedPolicy) -> Result<Scheduler, SimError> {
    let bs = policy.block_size;
    let num_blocks = pool_size(scenario.num_blocks(bs)?, "block_size", bs)?;
    let num_host_blocks = match policy.preemption {
        PreemptionMode::Recompute if !policy.offload => 0,
        _ => pool_size(scenario.num_host_blocks(bs)?, "swap_space_bytes", bs)?,
    };
    if policy.offload && num_host_blocks == 0 {
        return Err(SimError::InvalidConfig {
            field: "host_blocks",
            reason: format!(
                "{} offloads evicted prefix blocks to the host tier, which has no block; give it host memory",
                Policy::Paged(*policy)
            ),
        });
    }
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: bs,
        max_model_len: scenario.max_model_len,
        watermark: policy.watermark,
        enable_prefix_caching: policy.prefix_caching,
        num_host_blocks,
        groups: scenario.groups(bs)?,
        prefix_offload: if policy.offload {
            PrefixOffload::OnEvict
        } else {
            PrefixOffload::Off
        },
        eviction: match policy.eviction {
            Eviction::Lru => crate::Eviction::Lru,
            Eviction::SegmentedLru => crate::Eviction::SegmentedLru,
            Eviction::Exclusive => crate::Eviction::Exclusive,
        },
        ..Default::default()
    })?;
    let vllm = policy.vllm;
    let config = SchedulerConfig {
        max_num_seqs: scenario.max_num_seqs,
        max_num_batched_tokens: scenario.max_num_batched_tokens,
        protect_mid_prefill: !vllm,
        isolate_growth: !vllm,
        cap_output_at_max_model_len: vllm,
        ..Default::default()
    };
    let sched = Scheduler::new(kv, config)?;
    let sched = match policy.preemption {
        PreemptionMode::Recompute => sched.with_preemption_mode(AlwaysRecompute),
        PreemptionMode::Swap => sched.with_preemption_mode(AlwaysSwap),
        PreemptionMode::Auto => sched.with_preemption_mode(Automatic::default()),
    };
    Ok(match policy.victim {
        Victim::LatestArrival => sched.with_victim_policy(LatestArrival),
        Victim::MostBlocks => sched.with_victim_policy(MostBlocks),
    })
}

/// Replays `workload` under paged allocation through the reference scheduler.
pub(crate) fn run_paged(
    scenario: &Scenario,
    workload: &Workload,
    policy: &PagedPolicy,
    progress: &mut Progress<'_>,
) -> Result<RunResult, SimError> {
    let name = Policy::Paged(*policy).name();
    let mut sched = scheduler(scenario, policy)?;
    let caching = policy.prefix_caching;
    let bs = policy.block_size as u64;
    let reqs = &workload.requests[..];
    let mut rec = Recorder::new(name.clone(), reqs.len() as u64);
    rec.bytes_per_block = scenario.bytes_per_block(policy.block_size)?;
    // Tokens each sample generated so far, and samples still running, per request.
    let first_sample: Vec<usize> = reqs
        .iter()
        .scan(0usize, |acc, r| {
            let first = *acc;
            *acc += r.n as usize;
            Some(first)
        })
        .collect();
    let mut generated = vec![0u32; reqs.iter().map(|r| r.n as usize).sum()];
    let mut samples_left: Vec<u32> = reqs.iter().map(|r| r.n).collect();
    let mut admitted = vec![false; reqs.len()];
    // Tokens each sample generates: the trace's, capped in vLLM mode (as the scheduler caps them).
    let max_len = scenario.max_model_len;
    let out_len: Vec<u32> = reqs
        .iter()
        .map(|r| match r.prompt.len() {
            p if policy.vllm && p < max_len => r.output_len.min(max_len - p),
            _ => r.output_len,
        })
        .collect();
    let mut arrivals = ArrivalQueue::new(reqs);
    let mut order = 0u64;
    let (mut plan, mut outputs, mut prompt) = (StepPlan::default(), Vec::new(), Vec::<TokenId>::new());
    loop {
        while let Some((i, t)) = arrivals.pop(rec.time) {
            let r = &reqs[i];
            prompt.clear();
            if caching {
                r.prompt.tokens_into(&mut prompt);
            } else {
                prompt.resize(r.prompt.len() as usize, 0);
            }
            let request = Request {
                id: RequestId(i as u64),
                prompt: std::mem::take(&mut prompt),
                max_new_tokens: r.output_len,
                arrival: order,
                n: r.n,
                ..Default::default()
            };
            order += 1;
            let rejected = match sched.add_request(request) {
                Ok(()) => None,
                Err(SchedulerError::Rejected { reason, .. }) => Some(match reason {
                    AdmissionRefusal::EmptyPrompt => Rejection::Empty,
                    AdmissionRefusal::ExceedsMaxModelLen { .. } => Rejection::TooLong,
                    _ => Rejection::TooLarge,
                }),
                // No token to generate, or more samples than a batch holds.
                Err(SchedulerError::InvalidRequest { .. }) if r.output_len == 0 => Some(Rejection::Empty),
                Err(SchedulerError::InvalidRequest { .. }) => Some(Rejection::TooLarge),
                Err(e) => return Err(e.into()),
            };
            match rejected {
                Some(why) => {
                    rec.reject(why);
                    arrivals.done(i, t);
                }
                None => rec.latency.arrived(i, t, out_len[i]),
            }
        }
        if sched.is_idle() {
            match arrivals.next_time() {
                Some(t) => {
                    rec.time = rec.time.max(t);
                    continue;
                }
                None if arrivals.is_empty() => break,
                None => unreachable!("a follow-up is released only when its previous turn is done"),
            }
        }
        sched.step(&mut plan);
        if plan.scheduled.is_empty() && plan.ops.is_empty() && plan.preempted.is_empty() {
            return Err(SimError::Policy {
                policy: name,
                reason: format!(
                    "the scheduler planned an empty step with work queued (running, waiting, swapped = {:?}): \
                     a scheduler bug, please report it",
                    sched.queue_lens()
                ),
            });
        }
        let start = rec.time;
        let local = &scenario.time_model.local_layers;
        let mut work = StepWork {
            transfer_tokens: (plan.ops.swap_out.len() + plan.ops.swap_in.len()) as u64 * bs,
            ..Default::default()
        };
        for s in &plan.scheduled {
            let req = RequestId::of(s.seq).0 .0 as usize;
            if s.is_prefill {
                work.prefill_tokens += s.num_new_tokens as u64;
            } else {
                work.decode_tokens += 1;
                work.context_tokens += s.start as u64 + 1;
                local.add_reads(s.start as u64, 1, &mut work.local_read_tokens);
            }
            if !admitted[req] {
                // A request's first entry starts after its cached prefix.
                admitted[req] = true;
                rec.summary.prefix_hit_tokens += s.start as u64;
                rec.admitted_prompt_tokens += reqs[req].prompt.len() as u64;
            }
            rec.latency.scheduled(req, start);
        }
        rec.summary.prefill_tokens += work.prefill_tokens;
        let end = rec.step_end(&work, &scenario.time_model);
        outputs.clear();
        for s in &plan.scheduled {
            for i in 0..s.num_samples {
                // Sample 0 finishing a prompt reports one token per sample.
                let seq = s.sample_seq(i);
                let (rid, sample) = RequestId::of(seq);
                let req = rid.0 as usize;
                let k = &mut generated[first_sample[req] + sample as usize];
                let token = if caching {
                    reqs[req].output_token(sample, *k)
                } else {
                    0
                };
                *k += 1;
                rec.latency.token(req, end);
                if *k == out_len[req] {
                    samples_left[req] -= 1;
                    if samples_left[req] == 0 {
                        rec.summary.finished += 1;
                        rec.latency.finished(req);
                        arrivals.done(req, end);
                    }
                }
                outputs.push(SampledToken {
                    seq,
                    token,
                    stop: false,
                });
            }
        }
        rec.summary.generated_tokens += outputs.len() as u64;
        rec.summary.preemptions += plan.preempted.len() as u64;
        let usage = sched.kv().usage();
        let mut sample = step_sample(&usage, policy.block_size);
        sample.context_tokens = usage.logical_tokens;
        sample.used_blocks = usage.used_blocks;
        sample.running = plan.scheduled.len() as u32;
        sample.waiting = sched.queue_lens().1 as u32;
        sample.batched_tokens = plan.num_batched_tokens;
        rec.step(sample, end);
        sched.on_step_output(&mut plan, &outputs)?;
        progress.tick(&rec.summary);
    }
    debug_assert!(sched.check_invariants().is_ok());
    rec.summary.recomputed_tokens = sched.stats().recomputed_tokens;
    let kv = sched.kv().stats();
    rec.summary.swapped_blocks = kv.swap_out_copies + kv.swap_in_copies;
    if policy.offload {
        let t = &scenario.time_model;
        let block_bytes = t.kv_bytes_per_token * bs as f64;
        let (offload_bytes, reload_bytes) = (
            kv.offload_copies as f64 * block_bytes,
            kv.reload_copies as f64 * block_bytes,
        );
        rec.summary.tiers = Some(Box::new(TierSummary {
            host_blocks: sched.kv().num_host_blocks() as u64,
            hit_tokens: kv.prefix_hit_tokens,
            host_hit_tokens: kv.prefix_host_hit_tokens,
            offloaded_blocks: kv.offload_copies,
            reloaded_blocks: kv.reload_copies,
            offload_bytes,
            reload_bytes,
            transfer_s: (offload_bytes + reload_bytes) / t.pcie_bytes_per_s,
            prefill_saved_s: kv.prefix_host_hit_tokens as f64 * t.prefill_token_s,
        }));
    }
    Ok(rec.finish(scenario.slo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::synthetic::{LengthDist, SyntheticSpec};
    use crate::sim::KvSize;

    fn scenario(num_blocks: u64, block_size: u32) -> Scenario {
        Scenario {
            kv: KvSize::Blocks {
                num_blocks,
                block_size,
            },
            max_model_len: 256,
            max_num_seqs: 16,
            max_num_batched_tokens: 256,
            ..Scenario::default()
        }
    }

    fn fixed(num_requests: usize, prompt: u32, output: u32) -> SyntheticSpec {
        SyntheticSpec {
            num_requests,
            prompt_len: LengthDist::Fixed(prompt),
            output_len: LengthDist::Fixed(output),
            ..Default::default()
        }
    }

    fn run(s: &Scenario, policy: &str, spec: SyntheticSpec) -> RunResult {
        let Policy::Paged(p) = policy.parse().unwrap() else {
            panic!("paged")
        };
        run_paged(s, &spec.generate().unwrap(), &p, &mut Progress::none()).unwrap()
    }

    #[test]
    fn one_request_fills_blocks_as_it_grows() {
        let r = run(&scenario(10, 4), "paged4-wm0", fixed(1, 5, 4));
        let got: Vec<_> = r
            .samples
            .iter()
            .map(|s| (s.token_slots, s.internal_fragmentation))
            .collect();
        // The last sampled token is never fed back, so its KV is never stored.
        assert_eq!(got, [(5, 3), (6, 2), (7, 1), (8, 0)]);
        assert_eq!((r.summary.finished, r.summary.generated_tokens), (1, 4));
        assert_eq!(r.summary.preemptions, 0);
    }

    #[test]
    fn shortage_preempts_the_latest_arrival_which_resumes() {
        // 8 blocks of 4: two requests of 8 + 16 tokens need 12 blocks at the end.
        let r = run(&scenario(8, 4), "paged4-wm0", fixed(2, 8, 16));
        let s = &r.summary;
        assert_eq!(s.finished, 2);
        assert!(s.preemptions >= 1 && s.recomputed_tokens >= 8, "{s:?}");
        assert_eq!(
            s.generated_tokens, 32,
            "a preempted request keeps what it generated"
        );
    }

    #[test]
    fn a_group_larger_than_the_pool_finishes_sample_by_sample() {
        // n = 4 samples of 4 + 20 tokens: 21 blocks of 4 at once > 16 blocks,
        // but each sample alone fits, so preemption lets them take turns.
        let r = run(
            &scenario(16, 4),
            "paged4-wm0",
            SyntheticSpec {
                n: 4,
                ..fixed(1, 4, 20)
            },
        );
        let s = &r.summary;
        assert_eq!((s.finished, s.rejected(), s.generated_tokens), (1, 0, 80));
        assert!(s.preemptions >= 1, "{s:?}");
    }

    #[test]
    fn a_sequence_longer_than_the_pool_is_rejected() {
        let r = run(&scenario(4, 4), "paged4-wm0", fixed(1, 10, 10));
        assert_eq!((r.summary.finished, r.summary.rejected_too_large), (0, 1));
    }

    #[test]
    fn parallel_samples_share_the_prompt() {
        let r = run(
            &scenario(64, 4),
            "paged4-wm0",
            SyntheticSpec {
                n: 3,
                ..fixed(1, 8, 2)
            },
        );
        // Sample 0 prefills; the others are forked from it once it is computed.
        assert_eq!((r.samples[0].token_slots, r.samples[0].running), (8, 1));
        assert_eq!(
            (r.samples[1].token_slots, r.samples[1].running),
            (8 + 3, 3),
            "three samples, one copy of the prompt"
        );
        assert_eq!(r.summary.generated_tokens, 6);
    }

    #[test]
    fn prefix_caching_hits_a_shared_system_prompt() {
        let spec = SyntheticSpec {
            system_prompt_len: 64,
            ..fixed(20, 8, 4)
        };
        let r = run(&scenario(64, 16), "paged16-prefix", spec.clone());
        assert!(r.summary.prefix_hit_rate > 0.7, "{}", r.summary.prefix_hit_rate);
        let cold = run(&scenario(64, 16), "paged16", spec);
        assert!(r.summary.prefill_tokens < cold.summary.prefill_tokens);
    }

    #[test]
    fn offload_keeps_evicted_prefixes_in_the_host_tier() {
        // Chats whose history outgrows a small device cache: the host tier keeps it.
        let spec = SyntheticSpec {
            turns: 4,
            ..fixed(40, 48, 16)
        };
        let s = Scenario {
            host_blocks: Some(256),
            ..scenario(24, 16)
        };
        let device = run(&s, "paged16-prefix", spec.clone());
        let tiered = run(&s, "paged16-prefix-offload", spec);
        let t = tiered
            .summary
            .tiers
            .clone()
            .expect("an -offload run reports its tiers");
        assert!(device.summary.tiers.is_none());
        assert_eq!(t.host_blocks, 256);
        assert!(
            t.offloaded_blocks > 0 && t.reloaded_blocks > 0 && t.host_hit_tokens > 0,
            "{t:?}"
        );
        assert!(
            tiered.summary.prefix_hit_rate > device.summary.prefix_hit_rate,
            "{} vs {}",
            tiered.summary.prefix_hit_rate,
            device.summary.prefix_hit_rate
        );
        assert!(tiered.summary.prefill_tokens < device.summary.prefill_tokens);
        assert!(t.transfer_s > 0.0 && t.prefill_saved_s > 0.0);
    }

    #[test]
    fn swap_mode_moves_blocks_to_the_host_and_back() {
        let r = run(&scenario(8, 4), "paged4-wm0-swap", fixed(2, 8, 16));
        let s = &r.summary;
        assert_eq!(s.finished, 2);
        assert!(s.preemptions >= 1 && s.swapped_blocks >= 2, "{s:?}");
        assert_eq!(s.recomputed_tokens, 0, "swapping recomputes nothing");
        assert_eq!(s.generated_tokens, 32);
    }
}
