//! The reservation baselines: systems that reserve a request's KV memory up
//! front, as serving systems did before paged attention.
//!
//! The KV memory is a pool of token slots the size of the paged pool. Each
//! step is one forward pass: every running sequence decodes one token, then
//! waiting requests are admitted in arrival order (FCFS; the head blocks the
//! queue) while their reservation fits in the free slots and the batch stays
//! within `max_num_seqs` sequences and `max_num_batched_tokens` tokens; an
//! admitted request's whole prompt is prefilled in its first step. A request
//! finishes when it holds prompt + output tokens, and then releases its
//! reservation. Reservations never grow, so nothing is ever preempted.
//!
//! Contiguity is not modelled: any free slots can hold a reservation, which
//! flatters the baselines (no external fragmentation).

use std::collections::VecDeque;

use crate::sim::error::SimError;
use crate::sim::metrics::{Recorder, Rejection, RunResult, StepSample};
use crate::sim::policy::{Policy, ReserveKind};
use crate::sim::workload::Workload;
use crate::sim::{Progress, Scenario};

/// One admitted request.
#[derive(Clone, Copy, Debug)]
struct Running {
    /// Parallel samples, each with its own reservation (nothing is shared).
    n: u64,
    /// Tokens each sample holds.
    len: u64,
    /// Prompt + output: the length at which it finishes.
    target: u64,
    /// Slots reserved per sample.
    reservation: u64,
}

/// Replays `workload` under a reservation baseline.
pub(crate) fn run_reserve(
    scenario: &Scenario,
    workload: &Workload,
    kind: ReserveKind,
    progress: &mut Progress<'_>,
) -> Result<RunResult, SimError> {
    let total_slots = scenario.token_slots()?;
    let max_model_len = scenario.max_model_len as u64;
    let max_seqs = scenario.max_num_seqs as u64;
    let budget = scenario.max_num_batched_tokens as u64;
    let reqs = &workload.requests;
    let mut rec = Recorder::new(Policy::Reserve(kind).name(), reqs.len() as u64);

    let mut next = 0;
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let (mut reserved, mut running_seqs) = (0u64, 0u64);
    loop {
        while next < reqs.len() && reqs[next].arrival <= rec.time {
            waiting.push_back(next);
            next += 1;
        }
        if running.is_empty() && waiting.is_empty() {
            match reqs.get(next) {
                Some(r) => {
                    rec.time = r.arrival;
                    continue;
                }
                None => break,
            }
        }
        // Decode: every running sequence appends one token.
        let mut batched = 0u64;
        for r in &mut running {
            r.len += 1;
            batched += r.n;
        }
        rec.summary.generated_tokens += batched;
        // Admit in arrival order while the head fits.
        while let Some(&i) = waiting.front() {
            let req = &reqs[i];
            let (prompt, total, n) = (req.prompt.len() as u64, req.total_len(), req.n as u64);
            let per_seq = kind.reservation(total, max_model_len);
            let never = if prompt == 0 {
                Some(Rejection::Empty)
            } else if total > max_model_len {
                Some(Rejection::TooLong)
            } else if per_seq * n > total_slots || n > max_seqs {
                Some(Rejection::TooLarge)
            } else {
                None
            };
            if let Some(why) = never {
                rec.reject(why);
                waiting.pop_front();
                continue;
            }
            if reserved + per_seq * n > total_slots
                || running_seqs + n > max_seqs
                || batched + prompt > budget
            {
                break;
            }
            waiting.pop_front();
            reserved += per_seq * n;
            running_seqs += n;
            batched += prompt;
            rec.summary.prefill_tokens += prompt;
            running.push(Running {
                n,
                len: prompt,
                target: total,
                reservation: per_seq,
            });
        }
        let mut sample = StepSample {
            total_slots,
            reserved_slots: reserved,
            free_slots: total_slots - reserved,
            running: running_seqs as u32,
            waiting: waiting.len() as u32,
            batched_tokens: batched as u32,
            ..Default::default()
        };
        for r in &running {
            sample.token_slots += r.n * r.len;
            sample.reservation_waste += r.n * (r.target - r.len);
            sample.internal_fragmentation += r.n * (r.reservation - r.target);
        }
        rec.step(sample, &scenario.time_model);
        // Finished requests release their reservation after the step.
        let before = running.len();
        running.retain(|r| {
            if r.len < r.target {
                return true;
            }
            reserved -= r.n * r.reservation;
            running_seqs -= r.n;
            false
        });
        rec.summary.finished += (before - running.len()) as u64;
        progress.tick(&rec.summary);
    }
    Ok(rec.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn run(slots: u64, kind: ReserveKind, spec: SyntheticSpec) -> RunResult {
        let w = spec.generate().unwrap();
        run_reserve(&scenario(slots), &w, kind, &mut Progress::none()).unwrap()
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
    fn oracle_accounting_of_one_request() {
        let r = run(100, ReserveKind::Oracle, fixed(1, 10, 3));
        let s: Vec<_> = r
            .samples
            .iter()
            .map(|s| (s.token_slots, s.reservation_waste, s.internal_fragmentation))
            .collect();
        assert_eq!(s, [(10, 3, 0), (11, 2, 0), (12, 1, 0), (13, 0, 0)]);
        assert_eq!(
            (
                r.summary.finished,
                r.summary.generated_tokens,
                r.summary.prefill_tokens
            ),
            (1, 3, 10)
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
        assert_eq!(max.samples[0].internal_fragmentation, 64 - 13);
        assert_eq!(pow2.samples[0].internal_fragmentation, 16 - 13);
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
        // 64 slots, reserve-max: one request at a time.
        let r = run(64, ReserveKind::MaxLen, fixed(3, 10, 3));
        assert_eq!(r.summary.max_running, 1);
        assert_eq!((r.summary.finished, r.summary.steps), (3, 12));
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
}
