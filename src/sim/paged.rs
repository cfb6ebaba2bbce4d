//! Paged allocation through [`KvCacheManager`]: a minimal FCFS
//! continuous-batching loop.
//!
//! **This is the seam the reference scheduler (`src/scheduler/`) replaces.**
//! [`run_paged`] is the only function that decides what runs each step for
//! a paged policy; everything around it (workloads, metrics, reports, the
//! baselines) stays. A replacement must, per step: admit, prefill, decode,
//! preempt and finish sequences through one `KvCacheManager`, and call
//! [`step_sample`] + `Recorder::step` once per forward pass (with the step's
//! batched tokens), counting rejections, preemptions, recomputed tokens,
//! swapped blocks, prefill and generated tokens in the recorder's summary.
//!
//! What this loop does (and the scheduler will do better):
//! - one forward pass per step: every running sequence decodes one token
//!   (in admission order), then waiting requests are admitted in arrival
//!   order while `check_admission_for` says `Now` and the batch stays within
//!   `max_num_seqs` sequences and `max_num_batched_tokens` tokens; an
//!   admitted prompt is prefilled whole in its first step (no chunking);
//! - `n` parallel samples are forked from the prompt when it is admitted and
//!   diverge (copy-on-write) at their first generated token;
//! - when a decode runs out of blocks, the running request that arrived last
//!   is preempted by recompute: its blocks are freed and it goes back to the
//!   front of the queue, keeping its generated tokens, which it prefills
//!   again when readmitted. A request preempted while running alone can
//!   never finish and is rejected;
//! - only recompute preemption of the latest arrival; swap, automatic mode
//!   and other victims need the scheduler and are refused with a message.
//!
//! With prefix caching off, token ids do not matter to the manager, so zeros
//! are passed instead of synthesizing them.

use std::collections::VecDeque;

use crate::ids::{SeqId, TokenId};
use crate::manager::{Admission, AdmissionRefusal, KvCacheConfig, KvCacheManager, KvUsage};
use crate::pool::MAX_BLOCKS;
use crate::prefix::PrefixKeys;
use crate::sim::error::SimError;
use crate::sim::metrics::{Recorder, Rejection, RunResult, StepSample};
use crate::sim::policy::{PagedPolicy, Policy, PreemptionMode, Victim};
use crate::sim::workload::{SimRequest, Workload};
use crate::sim::{Progress, Scenario};
use crate::KvError;

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

/// A request waiting or running: its index and the tokens each sample has generated.
#[derive(Clone, Copy, Debug)]
struct Group {
    req: usize,
    generated: u32,
}

fn seq_id(req: usize, sample: u32) -> SeqId {
    SeqId(((req as u64) << 16) | sample as u64)
}

/// The state of one run.
struct Run<'w> {
    reqs: &'w [SimRequest],
    kv: KvCacheManager,
    caching: bool,
    keys: PrefixKeys,
    rec: Recorder,
    waiting: VecDeque<Group>,
    running: Vec<Group>,
    running_seqs: u64,
    /// Prompt (+ generated) tokens of the waiting head, reused while it waits.
    head: Option<(usize, u32, Vec<TokenId>)>,
    zeros: Vec<TokenId>,
}

/// Replays `workload` under paged allocation. The seam: see the module docs.
pub(crate) fn run_paged(
    scenario: &Scenario,
    workload: &Workload,
    policy: &PagedPolicy,
    progress: &mut Progress<'_>,
) -> Result<RunResult, SimError> {
    let name = Policy::Paged(*policy).name();
    if policy.preemption != PreemptionMode::Recompute || policy.victim != Victim::LatestArrival {
        return Err(SimError::Policy {
            policy: name,
            reason: "the simulator's minimal paged runner preempts only by recompute of the latest arrival; \
                     swap, automatic mode and other victims come with the reference scheduler"
                .into(),
        });
    }
    let num_blocks = scenario.num_blocks(policy.block_size)?;
    let num_blocks = u32::try_from(num_blocks)
        .ok()
        .filter(|&n| n <= MAX_BLOCKS)
        .ok_or_else(|| SimError::InvalidConfig {
            field: "block_size",
            reason: format!(
                "{num_blocks} blocks of {} tokens exceed a pool's {MAX_BLOCKS}; use a larger block size",
                policy.block_size
            ),
        })?;
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size: policy.block_size,
        max_model_len: scenario.max_model_len,
        watermark: policy.watermark,
        enable_prefix_caching: policy.prefix_caching,
        ..Default::default()
    })?;
    let reqs = &workload.requests[..];
    let mut run = Run {
        reqs,
        kv,
        caching: policy.prefix_caching,
        keys: PrefixKeys::default(),
        rec: Recorder::new(name, reqs.len() as u64),
        waiting: VecDeque::new(),
        running: Vec::new(),
        running_seqs: 0,
        head: None,
        zeros: Vec::new(),
    };
    let mut next = 0;
    loop {
        while next < reqs.len() && reqs[next].arrival <= run.rec.time {
            run.waiting.push_back(Group {
                req: next,
                generated: 0,
            });
            next += 1;
        }
        if run.running.is_empty() && run.waiting.is_empty() {
            match reqs.get(next) {
                Some(r) => {
                    run.rec.time = r.arrival;
                    continue;
                }
                None => break,
            }
        }
        let mut batched = run.decode()?;
        batched += run.admit(scenario, batched)?;
        let mut sample = step_sample(&run.kv.usage(), policy.block_size);
        sample.running = run.running_seqs as u32;
        sample.waiting = run.waiting.len() as u32;
        sample.batched_tokens = batched as u32;
        run.rec.step(sample, &scenario.time_model);
        run.finish_done()?;
        progress.tick(&run.rec.summary);
    }
    debug_assert!(run.kv.check_invariants().is_ok());
    run.rec.summary.prefix_hit_rate = run.kv.stats().prefix_hit_rate();
    Ok(run.rec.finish())
}

impl Run<'_> {
    /// One token for every running sequence, preempting on shortage. Returns the tokens batched.
    fn decode(&mut self) -> Result<u64, SimError> {
        let mut batched = 0;
        let mut i = 0;
        'groups: while i < self.running.len() {
            let g = self.running[i];
            let req = &self.reqs[g.req];
            for s in 0..req.n {
                let token = if self.caching {
                    req.output_token(s, g.generated)
                } else {
                    0
                };
                loop {
                    match self.kv.append(seq_id(g.req, s), &[token]) {
                        Ok(()) => break,
                        Err(KvError::OutOfBlocks { .. }) => {
                            let victim = self.victim();
                            self.preempt(victim)?;
                            if victim == i {
                                continue 'groups; // the next group moved into slot i
                            }
                            if victim < i {
                                i -= 1;
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            self.running[i].generated += 1;
            batched += req.n as u64;
            i += 1;
        }
        self.rec.summary.generated_tokens += batched;
        Ok(batched)
    }

    /// Index in `running` of the request that arrived last.
    fn victim(&self) -> usize {
        let (i, _) = self
            .running
            .iter()
            .enumerate()
            .max_by_key(|(_, g)| g.req)
            .expect("a sequence is decoding, so one is running");
        i
    }

    /// Recompute preemption: free the group's blocks and queue it first.
    fn preempt(&mut self, i: usize) -> Result<(), SimError> {
        let g = self.running.remove(i);
        let n = self.reqs[g.req].n;
        for s in 0..n {
            self.rec.summary.recomputed_tokens += self.kv.num_tokens(seq_id(g.req, s))?;
            self.kv.free(seq_id(g.req, s))?;
        }
        self.running_seqs -= n as u64;
        self.rec.summary.preemptions += 1;
        if self.running.is_empty() {
            // It ran alone and still did not fit: it never will.
            self.rec.reject(Rejection::TooLarge);
        } else {
            self.waiting.push_front(g);
        }
        Ok(())
    }

    /// Tokens sample 0 of `g` starts with: the prompt and what it already generated.
    fn head_tokens(&mut self, g: Group) -> &[TokenId] {
        let req = &self.reqs[g.req];
        let len = req.prompt.len() as usize + g.generated as usize;
        if !self.caching {
            if self.zeros.len() < len {
                self.zeros.resize(len, 0);
            }
            return &self.zeros[..len];
        }
        if !matches!(&self.head, Some((r, gen, _)) if *r == g.req && *gen == g.generated) {
            let mut tokens = Vec::with_capacity(len);
            req.prompt.tokens_into(&mut tokens);
            tokens.extend((0..g.generated).map(|k| req.output_token(0, k)));
            self.head = Some((g.req, g.generated, tokens));
        }
        &self.head.as_ref().expect("just set").2
    }

    /// Admits waiting requests in order while they fit. Returns the prefill tokens batched.
    fn admit(&mut self, scenario: &Scenario, decoded: u64) -> Result<u64, SimError> {
        let mut batched = 0u64;
        while let Some(&g) = self.waiting.front() {
            let req = &self.reqs[g.req];
            let n = req.n as u64;
            let remaining = (req.output_len - g.generated) as u64;
            let tokens = self.head_tokens(g).to_vec();
            let admission = if self.caching {
                self.kv.check_admission_for(&tokens, &self.keys, remaining)
            } else {
                self.kv.check_admission(tokens.len() as u64, remaining)
            };
            let never = match admission {
                Admission::Later => break,
                Admission::Now if n > scenario.max_num_seqs as u64 => Some(Rejection::TooLarge),
                Admission::Now => None,
                Admission::Never(AdmissionRefusal::EmptyPrompt) => Some(Rejection::Empty),
                Admission::Never(AdmissionRefusal::ExceedsMaxModelLen { .. }) => Some(Rejection::TooLong),
                Admission::Never(_) => Some(Rejection::TooLarge),
            };
            if let Some(why) = never {
                self.rec.reject(why);
                self.waiting.pop_front();
                continue;
            }
            let cached = if self.caching {
                self.kv.cached_prefix_len(&tokens, &self.keys)
            } else {
                0
            };
            let prefill = tokens.len() as u64 - cached + (n - 1) * g.generated as u64;
            if self.running_seqs + n > scenario.max_num_seqs as u64
                || decoded + batched + prefill > scenario.max_num_batched_tokens as u64
            {
                break;
            }
            let alloc = self.kv.allocate_with(seq_id(g.req, 0), &tokens, &self.keys)?;
            if let Err(e) = self.fork_samples(g, &tokens) {
                for s in 0..req.n {
                    if self.kv.contains(seq_id(g.req, s)) {
                        self.kv.free(seq_id(g.req, s))?;
                    }
                }
                match e {
                    KvError::OutOfBlocks { .. } => break,
                    other => return Err(other.into()),
                }
            }
            let prefill = tokens.len() as u64 - alloc.cached_tokens as u64 + (n - 1) * g.generated as u64;
            self.rec.summary.prefill_tokens += prefill;
            batched += prefill;
            self.waiting.pop_front();
            self.running.push(g);
            self.running_seqs += n;
        }
        Ok(batched)
    }

    /// Samples 1..n share the prompt; a resumed group replays each sample's own output.
    fn fork_samples(&mut self, g: Group, tokens: &[TokenId]) -> Result<(), KvError> {
        let req = &self.reqs[g.req];
        let prompt_len = req.prompt.len() as u64;
        for s in 1..req.n {
            self.kv.fork(seq_id(g.req, 0), seq_id(g.req, s))?;
            if g.generated > 0 {
                self.kv.truncate(seq_id(g.req, s), prompt_len)?;
                let own: Vec<TokenId> = if self.caching {
                    (0..g.generated).map(|k| req.output_token(s, k)).collect()
                } else {
                    tokens[..g.generated as usize].to_vec()
                };
                self.kv.append(seq_id(g.req, s), &own)?;
            }
        }
        Ok(())
    }

    /// Frees the requests that generated all their tokens.
    fn finish_done(&mut self) -> Result<(), SimError> {
        let mut i = 0;
        while i < self.running.len() {
            let g = self.running[i];
            let req = &self.reqs[g.req];
            if g.generated < req.output_len {
                i += 1;
                continue;
            }
            for s in 0..req.n {
                self.kv.free(seq_id(g.req, s))?;
            }
            self.running.remove(i);
            self.running_seqs -= req.n as u64;
            self.rec.summary.finished += 1;
        }
        Ok(())
    }
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
        assert_eq!(got, [(5, 3), (6, 2), (7, 1), (8, 0), (9, 3)]);
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
    fn a_group_that_cannot_fit_alone_is_rejected_not_looped() {
        // n = 4 samples of 4 + 20 tokens = 24 blocks of 4 > 16 blocks.
        let r = run(
            &scenario(16, 4),
            "paged4-wm0",
            SyntheticSpec {
                n: 4,
                ..fixed(1, 4, 20)
            },
        );
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
        assert_eq!(
            r.samples[0].token_slots, 8,
            "three samples, one copy of the prompt"
        );
        assert_eq!(r.samples[0].running, 3);
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
    fn unsupported_modes_are_refused_with_a_reason() {
        let Policy::Paged(p) = "paged16-swap".parse().unwrap() else {
            panic!()
        };
        let w = fixed(1, 4, 4).generate().unwrap();
        let err = run_paged(&scenario(8, 16), &w, &p, &mut Progress::none()).unwrap_err();
        assert!(err.to_string().contains("scheduler"), "{err}");
    }
}
