//! The reservation baselines: systems that reserve a request's KV memory up
//! front, as serving systems did before paged attention.
//!
//! The KV memory is a pool of token slots the size of the paged pool. Each
//! sample of an admitted request gets one reservation of `kind.reservation`
//! slots, placed as the [`Placement`] says: one contiguous range, first fit
//! (the default) or from a buddy allocator (rounded up to a power of two), or
//! any free slots. Steps follow the paged runs' convention: each step is one
//! forward pass in which every running request, in admission order, computes
//! its next prefill chunk or decodes one token per sample, within
//! `max_num_batched_tokens`; then waiting requests are admitted in arrival
//! order (FCFS; the head blocks the queue, also when no free range is large
//! enough) within `max_num_seqs`, their first chunk computed in the same step.
//! The step that completes a prompt samples the first token; each decode
//! stores the last token's KV and samples the next, so a request finishes
//! holding prompt + output − 1 tokens of KV, and releases its reservations
//! after that step. Reservations never grow, so nothing is ever preempted.

use std::collections::VecDeque;
use std::ops::Range;

use smallvec::SmallVec;

use crate::sim::error::SimError;
use crate::sim::metrics::{Recorder, Rejection, RunResult, StepSample, StepWork};
use crate::sim::placement::Slots;
use crate::sim::policy::{Policy, ReservePolicy};
use crate::sim::sessions::ArrivalQueue;
use crate::sim::workload::Workload;
use crate::sim::{Progress, Scenario};

/// One admitted request.
#[derive(Clone, Debug)]
struct Running {
    /// Index in the workload.
    req: usize,
    /// Parallel samples, each with its own reservation (nothing is shared).
    n: u64,
    prompt: u64,
    output: u32,
    /// Tokens whose KV each sample holds.
    computed: u64,
    /// Tokens each sample sampled.
    generated: u32,
    /// The reserved ranges, one per sample.
    ranges: SmallVec<[Range<u64>; 1]>,
}

impl Running {
    /// KV tokens a sample holds when it finishes.
    fn final_kv(&self) -> u64 {
        self.prompt + self.output as u64 - 1
    }
}

/// Replays `workload` under a reservation baseline.
pub(crate) fn run_reserve(
    scenario: &Scenario,
    workload: &Workload,
    policy: ReservePolicy,
    progress: &mut Progress<'_>,
) -> Result<RunResult, SimError> {
    let total_slots = scenario.token_slots()?;
    let max_model_len = scenario.max_model_len as u64;
    let max_seqs = scenario.max_num_seqs as u64;
    let reqs = &workload.requests;
    let mut rec = Recorder::new(Policy::Reserve(policy).name(), reqs.len() as u64);
    let mut slots = Slots::new(total_slots, policy.placement);
    let time_model = &scenario.time_model;

    let mut arrivals = ArrivalQueue::new(reqs);
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let mut running_seqs = 0u64;
    let mut sampled: Vec<(usize, bool)> = Vec::new();
    loop {
        while let Some((i, t)) = arrivals.pop(rec.time) {
            let req = &reqs[i];
            let (prompt, total, n) = (req.prompt.len() as u64, req.total_len(), req.n as u64);
            let never = if prompt == 0 || req.output_len == 0 {
                Some(Rejection::Empty)
            } else if total > max_model_len {
                Some(Rejection::TooLong)
            } else if n > max_seqs
                || !slots.could_ever_place(n, policy.kind.reservation(total, max_model_len))
            {
                Some(Rejection::TooLarge)
            } else {
                None
            };
            match never {
                Some(why) => {
                    rec.reject(why);
                    arrivals.done(i, t);
                }
                None => {
                    rec.latency.arrived(i, t, req.output_len);
                    waiting.push_back(i);
                }
            }
        }
        if running.is_empty() && waiting.is_empty() {
            match arrivals.next_time() {
                Some(t) => {
                    rec.time = rec.time.max(t);
                    continue;
                }
                None if arrivals.is_empty() => break,
                None => unreachable!("a follow-up is released only when its previous turn is done"),
            }
        }
        let mut budget = scenario.max_num_batched_tokens as u64;
        let local = &scenario.time_model.local_layers;
        let mut work = StepWork::default();
        sampled.clear();
        let start = rec.time;
        // Running requests in admission order: the next prefill chunk, or one decode per sample.
        for r in &mut running {
            if r.computed < r.prompt {
                let chunk = (r.prompt - r.computed).min(budget);
                if chunk == 0 {
                    break;
                }
                r.computed += chunk;
                budget -= chunk;
                work.prefill_tokens += chunk;
            } else {
                if budget < r.n {
                    break;
                }
                work.context_tokens += r.n * (r.computed + 1);
                local.add_reads(r.computed, r.n, &mut work.local_read_tokens);
                r.computed += 1;
                budget -= r.n;
                work.decode_tokens += r.n;
            }
            rec.latency.scheduled(r.req, start);
            if r.computed >= r.prompt {
                r.generated += 1;
                sampled.push((r.req, r.generated == r.output));
            }
        }
        // Admit in arrival order while the head fits.
        while let Some(&i) = waiting.front() {
            let req = &reqs[i];
            let (prompt, n) = (req.prompt.len() as u64, req.n as u64);
            if budget == 0 || running_seqs + n > max_seqs {
                break;
            }
            let size = policy.kind.reservation(req.total_len(), max_model_len);
            let mut ranges: SmallVec<[Range<u64>; 1]> = SmallVec::new();
            for _ in 0..n {
                match slots.reserve(size) {
                    Some(r) => ranges.push(r),
                    None => break,
                }
            }
            if ranges.len() as u64 != n {
                for r in ranges {
                    slots.release(r);
                }
                break;
            }
            waiting.pop_front();
            running_seqs += n;
            let chunk = prompt.min(budget);
            budget -= chunk;
            work.prefill_tokens += chunk;
            rec.latency.scheduled(i, start);
            let mut r = Running {
                req: i,
                n,
                prompt,
                output: req.output_len,
                computed: chunk,
                generated: 0,
                ranges,
            };
            if r.computed == prompt {
                r.generated = 1;
                sampled.push((i, r.output == 1));
            }
            running.push(r);
        }
        rec.summary.prefill_tokens += work.prefill_tokens;
        let mut sample = StepSample {
            total_slots,
            reserved_slots: total_slots - slots.free(),
            free_slots: slots.free(),
            waiting: waiting.len() as u32,
            batched_tokens: (work.prefill_tokens + work.decode_tokens) as u32,
            ..Default::default()
        };
        for r in &running {
            let held: u64 = r.ranges.iter().map(|x| x.end - x.start).sum();
            sample.running += r.n as u32;
            sample.token_slots += r.n * r.computed;
            sample.reservation_waste += r.n * (r.final_kv() - r.computed);
            sample.internal_fragmentation += held - r.n * r.final_kv();
        }
        let end = rec.step_end(&work, time_model);
        rec.step(sample, end);
        for &(i, last) in &sampled {
            let n = reqs[i].n as u64;
            rec.summary.generated_tokens += n;
            rec.latency.token(i, end);
            if last {
                rec.latency.finished(i);
                rec.summary.finished += 1;
                arrivals.done(i, end);
            }
        }
        // Finished requests release their reservations after the step.
        running.retain_mut(|r| {
            if r.generated < r.output {
                return true;
            }
            for range in r.ranges.drain(..) {
                slots.release(range);
            }
            running_seqs -= r.n;
            false
        });
        progress.tick(&rec.summary);
    }
    Ok(rec.finish(scenario.slo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::policy::{Placement, ReserveKind};
    use crate::sim::synthetic::{LengthDist, SyntheticSpec};
    use crate::sim::KvSize;

    fn scenario(slots: u64) -> Scenario {
        Scenario {
            kv: KvSize::Blocks {
                num_blocks: slots,
                block_size: 1,
            },
            max_model_len: 64,
            max_num_seqs: 8,
            max_num_batched_tokens: 64,
            ..Scenario::default()
        }
    }

    fn run_placed(slots: u64, kind: ReserveKind, placement: Placement, spec: SyntheticSpec) -> RunResult {
        let w = spec.generate().unwrap();
        let policy = ReservePolicy { kind, placement };
        run_reserve(&scenario(slots), &w, policy, &mut Progress::none()).unwrap()
    }

    fn run(slots: u64, kind: ReserveKind, spec: SyntheticSpec) -> RunResult {
        run_placed(slots, kind, Placement::FirstFit, spec)
    }

    fn fixed(num_requests: usize, prompt: u32, output: u32) -> SyntheticSpec {
        SyntheticSpec {
            num_requests,
            prompt_len: LengthDist::Fixed(prompt),
            output_len: LengthDist::Fixed(output),
            ..Default::default()
        }
    }

    #[test]
    fn oracle_accounting_of_one_request_follows_the_paged_step_convention() {
        let r = run(100, ReserveKind::Oracle, fixed(1, 10, 3));
        let s: Vec<_> = r
            .samples
            .iter()
            .map(|s| (s.token_slots, s.reservation_waste, s.internal_fragmentation))
            .collect();
        // The prefill step samples the first token; the last one's KV is never stored,
        // so one reserved slot is never used.
        assert_eq!(s, [(10, 2, 1), (11, 1, 1), (12, 0, 1)]);
        let sum = &r.summary;
        assert_eq!(
            (sum.finished, sum.generated_tokens, sum.prefill_tokens, sum.steps),
            (1, 3, 10, 3)
        );
        assert!(r
            .samples
            .iter()
            .all(|s| s.reserved_slots == 13 && s.free_slots == 87));
    }

    #[test]
    fn max_and_pow2_reserve_more_and_count_it_as_fragmentation() {
        let max = run(200, ReserveKind::MaxLen, fixed(1, 10, 3));
        let pow2 = run(200, ReserveKind::PowerOfTwo, fixed(1, 10, 3));
        assert_eq!(max.samples[0].internal_fragmentation, 64 - 12);
        assert_eq!(pow2.samples[0].internal_fragmentation, 16 - 12);
        for s in max.samples.iter().chain(&pow2.samples) {
            assert_eq!(
                s.reserved_slots,
                s.token_slots + s.reservation_waste + s.internal_fragmentation
            );
        }
        assert!(max.summary.token_share < pow2.summary.token_share);
    }

    #[test]
    fn admission_waits_for_memory_and_rejects_what_never_fits() {
        // 64 slots, reserve-max: one request at a time, 3 steps each.
        let r = run(64, ReserveKind::MaxLen, fixed(3, 10, 3));
        assert_eq!(r.summary.max_running, 1);
        assert_eq!((r.summary.finished, r.summary.steps), (3, 9));
        // Too long for max_model_len 64; too large for 20 slots.
        assert_eq!(
            run(100, ReserveKind::Oracle, fixed(2, 60, 10))
                .summary
                .rejected_too_long,
            2
        );
        assert_eq!(
            run(20, ReserveKind::Oracle, fixed(2, 20, 10))
                .summary
                .rejected_too_large,
            2
        );
    }

    #[test]
    fn parallel_samples_reserve_each() {
        let r = run(
            100,
            ReserveKind::Oracle,
            SyntheticSpec {
                n: 3,
                ..fixed(1, 10, 2)
            },
        );
        assert_eq!(r.samples[0].reserved_slots, 36);
        assert_eq!(r.samples[0].running, 3);
        assert_eq!(r.summary.generated_tokens, 6);
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks() {
        let s = Scenario {
            max_num_batched_tokens: 8,
            ..scenario(100)
        };
        let w = fixed(1, 20, 2).generate().unwrap();
        let r = run_reserve(
            &s,
            &w,
            ReservePolicy::new(ReserveKind::Oracle),
            &mut Progress::none(),
        )
        .unwrap();
        let tokens: Vec<u64> = r.samples.iter().map(|x| x.token_slots).collect();
        assert_eq!(tokens, [8, 16, 20, 21]);
        assert_eq!(r.summary.generated_tokens, 2);
    }

    #[test]
    fn contiguous_placement_blocks_the_head_on_external_fragmentation() {
        // 100 slots; requests of 30, 30 and 40 slots (prompt + output) fill it,
        // then one of 50 waits. The first and third finish first: 70 slots are
        // free, in ranges of 30 and 40, so the 50 waits for the second under
        // first fit but starts at once anywhere.
        let mut reqs = fixed(4, 10, 1).generate().unwrap();
        for (r, (p, o)) in reqs
            .requests
            .iter_mut()
            .zip([(10, 20), (5, 25), (20, 20), (10, 40)])
        {
            r.prompt =
                crate::sim::workload::Prompt::new(vec![crate::sim::workload::Segment { key: r.id, len: p }]);
            r.output_len = o;
        }
        let s = scenario(100);
        let run = |placement| {
            let policy = ReservePolicy {
                kind: ReserveKind::Oracle,
                placement,
            };
            run_reserve(&s, &reqs, policy, &mut Progress::none()).unwrap()
        };
        let (first_fit, anywhere) = (run(Placement::FirstFit), run(Placement::Anywhere));
        assert_eq!(anywhere.summary.max_running, 3);
        assert!(first_fit.summary.steps > anywhere.summary.steps);
        let buddy = run_placed(100, ReserveKind::Oracle, Placement::Buddy, fixed(1, 10, 3));
        assert_eq!(
            buddy.samples[0].reserved_slots, 16,
            "13 slots rounded up to a buddy block of 16"
        );
        assert_eq!(buddy.samples[0].internal_fragmentation, 16 - 12);
    }
}
