//! A minimal engine loop shared by the scheduler scenario tests.

#![allow(dead_code)]

use pagedkv::scheduler::PreemptionMode;
use pagedkv::{
    KvCacheConfig, KvCacheManager, Request, RequestId, SampledToken, Scheduler, SchedulerConfig, SeqId,
    StepPlan,
};

/// The token every sample draws (never a prompt token).
pub const SAMPLED: u32 = u32::MAX;

/// What happened over a run.
#[derive(Debug, Default)]
pub struct Run {
    pub steps: u64,
    /// (step, victim, mode, whether the victim was in the middle of its prefill).
    pub preemptions: Vec<(u64, SeqId, PreemptionMode, bool)>,
    pub finished: Vec<SeqId>,
}

impl Run {
    pub fn preemptions_of(&self, seq: SeqId) -> usize {
        self.preemptions.iter().filter(|p| p.1 == seq).count()
    }

    pub fn most_preemptions_in_one_step(&self) -> usize {
        let mut most = 0;
        for &(step, ..) in &self.preemptions {
            most = most.max(self.preemptions.iter().filter(|p| p.0 == step).count());
        }
        most
    }
}

pub fn manager(num_blocks: u32, block_size: u32, host: u32) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        num_host_blocks: host,
        max_model_len: 4096,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap()
}

pub fn config(max_num_batched_tokens: u32, guards: bool) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens,
        enable_chunked_prefill: true,
        admit_whole_prompt: guards,
        isolate_growth: guards,
    }
}

pub fn request(id: u64, prompt_len: u32, max_new: u32, arrival: u64) -> Request {
    Request {
        id: RequestId(id),
        prompt: (0..prompt_len).map(|t| t + 1000 * id as u32).collect(),
        max_new_tokens: max_new,
        priority: 0,
        arrival,
        n: 1,
        ..Default::default()
    }
}

/// Adds each request at the step its `arrival` says, and steps until idle (at most `max_steps`),
/// sampling [`SAMPLED`] for every sample asked.
pub fn drive(sched: &mut Scheduler, mut requests: Vec<Request>, max_steps: u64) -> Run {
    let mut run = Run::default();
    let mut plan = StepPlan::default();
    let mut out = Vec::new();
    while !sched.is_idle() || !requests.is_empty() {
        // Each request arrives at the step numbered by its `arrival`.
        let (now, later): (Vec<_>, Vec<_>) = requests.into_iter().partition(|r| r.arrival <= run.steps);
        requests = later;
        for r in now {
            sched.add_request(r).unwrap();
        }
        assert!(run.steps < max_steps, "not done after {max_steps} steps");
        // Who is mid-prefill before the step (holds computed prompt tokens, more to come).
        let mid: Vec<SeqId> = sched
            .kv()
            .seq_ids()
            .filter(|&s| sched.tokens(s).is_some_and(|t| !t.contains(&SAMPLED)))
            .collect();
        sched.step(&mut plan);
        run.steps += 1;
        sched.check_invariants().unwrap();
        for p in &plan.preempted {
            run.preemptions
                .push((run.steps, p.seq, p.mode, mid.contains(&p.seq)));
        }
        out.clear();
        for e in &plan.scheduled {
            for k in 0..e.num_samples {
                let seq = e.sample_seq(k);
                out.push(SampledToken {
                    seq,
                    token: SAMPLED,
                    stop: false,
                });
            }
        }
        sched.on_step_output(&mut plan, &out).unwrap();
        // The step's plan lists what it finished.
        run.finished.extend_from_slice(&plan.finished);
    }
    run
}
