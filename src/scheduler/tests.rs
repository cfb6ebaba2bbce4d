//! Edge cases of the scheduler: an empty step, parallel samples forked after
//! the prefill, rejections and invalid requests with their messages, the
//! budgets, and outputs reported out of plan order or wrongly.

use super::*;
use crate::manager::{AdmissionRefusal, KvCacheConfig};

fn sched(num_blocks: u32, block_size: u32, config: SchedulerConfig) -> Scheduler {
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        max_model_len: 256,
        watermark: 0.0,
        ..Default::default()
    })
    .unwrap();
    Scheduler::new(kv, config).unwrap()
}

fn request(id: u64, prompt_len: u32, max_new_tokens: u32, n: u32) -> Request {
    Request {
        id: RequestId(id),
        prompt: (0..prompt_len).map(|t| t + 100 * id as u32).collect(),
        max_new_tokens,
        priority: 0,
        arrival: id,
        n,
    }
}

/// One token per sample asked by `plan`, in plan order.
fn outputs(plan: &StepPlan, token: TokenId) -> Vec<SampledToken> {
    let mut out = Vec::new();
    for e in &plan.scheduled {
        for k in 0..e.num_samples {
            let seq = e.sample_seq(k);
            out.push(SampledToken {
                seq,
                token,
                stop: false,
            });
        }
    }
    out
}

#[test]
fn an_empty_scheduler_plans_an_empty_step() {
    let mut s = sched(8, 4, SchedulerConfig::default());
    assert!(s.is_idle());
    let mut plan = StepPlan::default();
    s.step(&mut plan);
    assert!(plan.scheduled.is_empty() && plan.slots.is_empty() && plan.ops.is_empty());
    assert!(plan.preempted.is_empty() && plan.finished.is_empty() && plan.rejected.is_empty());
    assert_eq!(plan.num_batched_tokens, 0);
    s.on_step_output(&[]).unwrap();
    let stray = SampledToken {
        seq: SeqId(1),
        token: 1,
        stop: false,
    };
    assert_eq!(
        s.on_step_output(&[stray]),
        Err(SchedulerError::OutputCountMismatch { expected: 0, got: 1 })
    );
    assert_eq!(s.stats().steps, 1);
    assert_eq!(s.queue_lens(), (0, 0, 0));
    s.check_invariants().unwrap();
}

#[test]
fn n_samples_fork_after_the_prefill_and_share_the_prompt() {
    let mut s = sched(16, 4, SchedulerConfig::default());
    s.add_request(request(1, 6, 3, 3)).unwrap();
    let mut plan = StepPlan::default();
    s.step(&mut plan);
    // Only sample 0 runs the prefill; it reports one token per sample.
    assert_eq!(plan.scheduled.len(), 1);
    let e = &plan.scheduled[0];
    assert_eq!(
        (e.seq, e.num_new_tokens, e.num_samples, e.is_prefill),
        (RequestId(1).seq(0), 6, 3, true)
    );
    let mut out = outputs(&plan, 7);
    for (k, o) in out.iter_mut().enumerate() {
        o.token = 10 + k as u32;
    }
    s.on_step_output(&out).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.queue_lens(), (3, 0, 0));
    let prompt: Vec<TokenId> = (100..106).collect();
    for k in 0..3 {
        let seq = RequestId(1).seq(k);
        let mut want = prompt.clone();
        want.push(10 + k);
        assert_eq!(s.tokens(seq).unwrap(), &want[..]);
    }
    // The children share every prompt block with sample 0 (no block taken by the fork).
    let table0 = s.block_table(RequestId(1).seq(0)).unwrap().to_vec();
    for k in 1..3 {
        assert_eq!(s.block_table(RequestId(1).seq(k)).unwrap(), &table0[..]);
    }
    assert_eq!(s.kv().usage().used_blocks, 2);
    // Next step: three decodes of one token; the shared partial block is copied.
    s.step(&mut plan);
    assert_eq!(plan.scheduled.len(), 3);
    assert!(plan
        .scheduled
        .iter()
        .all(|e| e.num_new_tokens == 1 && e.num_samples == 1));
    assert_eq!(
        plan.ops.copies.len(),
        2,
        "two of the three holders copy the shared tail"
    );
    s.on_step_output(&outputs(&plan, 8)).unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn never_fitting_requests_are_rejected_with_the_reason() {
    let mut s = sched(8, 4, SchedulerConfig::default());
    // Longer than max_model_len (256).
    let err = s.add_request(request(1, 200, 100, 1)).unwrap_err();
    match &err {
        SchedulerError::Rejected { request, reason } => {
            assert_eq!(*request, RequestId(1));
            assert_eq!(
                *reason,
                AdmissionRefusal::ExceedsMaxModelLen {
                    tokens: 300,
                    max_model_len: 256
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("max_model_len (256)"), "{err}");
    // More blocks than the pool (8 blocks of 4 tokens).
    let err = s.add_request(request(2, 20, 20, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::Rejected {
                reason: AdmissionRefusal::ExceedsPool {
                    blocks_needed: 10,
                    num_blocks: 8,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("only 8 blocks (32 tokens)"), "{err}");
    assert!(s.is_idle());
    assert_eq!(s.stats().rejected, 2);
    let mut plan = StepPlan::default();
    s.step(&mut plan);
    assert_eq!(plan.rejected, [RequestId(1), RequestId(2)]);
    s.step(&mut plan);
    assert!(plan.rejected.is_empty(), "reported once");
}

#[test]
fn invalid_and_duplicate_requests_are_refused_and_change_nothing() {
    let mut s = sched(
        8,
        4,
        SchedulerConfig {
            max_num_seqs: 4,
            ..Default::default()
        },
    );
    let err = s.add_request(request(1, 4, 2, 0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("n = 0 samples; use 1..=256 (at most max_num_seqs = 4)"),
        "{err}"
    );
    assert!(matches!(
        s.add_request(request(1, 4, 2, 5)),
        Err(SchedulerError::InvalidRequest { .. })
    ));
    let err = s.add_request(request(1, 4, 0, 1)).unwrap_err();
    assert!(err.to_string().contains("max_new_tokens is 0"), "{err}");
    let err = s.add_request(request(RequestId::LIMIT, 4, 2, 1)).unwrap_err();
    assert!(err.to_string().contains("below 2^56"), "{err}");
    assert!(s.is_idle());
    s.add_request(request(1, 4, 2, 1)).unwrap();
    assert_eq!(
        s.add_request(request(1, 4, 2, 1)),
        Err(SchedulerError::DuplicateRequest {
            request: RequestId(1)
        })
    );
    assert_eq!(s.queue_lens(), (0, 1, 0));
    s.check_invariants().unwrap();
}

#[test]
fn budgets_are_never_exceeded() {
    let config = SchedulerConfig {
        max_num_seqs: 2,
        max_num_batched_tokens: 10,
        ..Default::default()
    };
    let mut s = sched(64, 4, config);
    for r in 0..5 {
        s.add_request(request(r, 8, 4, 1)).unwrap();
    }
    let mut plan = StepPlan::default();
    let mut steps = 0;
    let mut most_tokens = 0;
    while !s.is_idle() {
        s.step(&mut plan);
        steps += 1;
        assert!(plan.scheduled.len() <= 2, "{:?}", plan.scheduled);
        assert!(plan.num_batched_tokens <= 10);
        assert_eq!(
            plan.num_batched_tokens,
            plan.scheduled.iter().map(|e| e.num_new_tokens).sum::<u32>()
        );
        assert!(s.queue_lens().0 <= 2);
        most_tokens = most_tokens.max(plan.num_batched_tokens);
        s.on_step_output(&outputs(&plan, 1)).unwrap();
        s.check_invariants().unwrap();
        assert!(steps < 100);
    }
    assert_eq!(most_tokens, 10, "the token budget was used");
    assert_eq!(s.stats().finished, 5);
}

#[test]
fn outputs_in_any_order_are_taken_and_wrong_ones_change_nothing() {
    let mut s = sched(32, 4, SchedulerConfig::default());
    for r in 0..3 {
        s.add_request(request(r, 4, 3, 1)).unwrap();
    }
    s.add_request(request(3, 5, 3, 2)).unwrap();
    let mut plan = StepPlan::default();
    s.step(&mut plan);
    let out = outputs(&plan, 9);
    assert_eq!(out.len(), 5);
    let state = |s: &Scheduler| {
        let seqs = (0..4).flat_map(|r| (0..2).map(move |k| RequestId(r).seq(k)));
        let tokens: Vec<_> = seqs.map(|q| s.tokens(q).map(<[TokenId]>::to_vec)).collect();
        format!("{tokens:?} {:?} {:?}", s.queue_lens(), s.kv().usage())
    };
    let before = state(&s);
    // A duplicate, an unexpected sequence and a wrong count are refused.
    let mut dup = out.clone();
    dup[1] = dup[0];
    assert_eq!(
        s.on_step_output(&dup),
        Err(SchedulerError::UnexpectedOutput { seq: dup[0].seq })
    );
    let mut stray = out.clone();
    stray[4].seq = RequestId(3).seq(2); // sample 2 of a 2-sample request
    assert_eq!(
        s.on_step_output(&stray),
        Err(SchedulerError::UnexpectedOutput { seq: stray[4].seq })
    );
    assert!(matches!(
        s.on_step_output(&out[1..]),
        Err(SchedulerError::OutputCountMismatch { expected: 5, got: 4 })
    ));
    assert_eq!(state(&s), before, "refusals changed nothing");
    s.check_invariants().unwrap();
    // Reversed order is accepted like plan order.
    let reversed: Vec<_> = out.iter().rev().copied().collect();
    s.on_step_output(&reversed).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.queue_lens(), (5, 0, 0));
    for seq in [RequestId(0).seq(0), RequestId(3).seq(0), RequestId(3).seq(1)] {
        assert_eq!(s.tokens(seq).unwrap().last(), Some(&9));
    }
    s.step(&mut plan);
    assert_eq!(plan.scheduled.len(), 5);
}

#[test]
fn capping_at_max_model_len_serves_what_would_be_rejected() {
    let capped = SchedulerConfig {
        cap_output_at_max_model_len: true,
        ..SchedulerConfig::default()
    };
    let mut s = sched(128, 4, capped);
    // 200 + 100 > max_model_len 256: served with 56 new tokens instead of rejected.
    s.add_request(request(1, 200, 100, 1)).unwrap();
    // A prompt of max_model_len tokens leaves no room for output: still rejected.
    let err = s.add_request(request(2, 256, 1, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            SchedulerError::Rejected {
                reason: AdmissionRefusal::ExceedsMaxModelLen { tokens: 257, .. },
                ..
            }
        ),
        "{err:?}"
    );
    let mut plan = StepPlan::default();
    let mut generated = 0;
    while !s.is_idle() {
        s.step(&mut plan);
        let out = outputs(&plan, 7);
        generated += out.len();
        s.on_step_output(&out).unwrap();
        s.check_invariants().unwrap();
    }
    assert_eq!(generated, 56);
    assert_eq!((s.stats().finished, s.stats().rejected), (1, 1));
    // Off (the default), the same request is rejected.
    let mut s = sched(128, 4, SchedulerConfig::default());
    assert!(s.add_request(request(1, 200, 100, 1)).is_err());
}

#[test]
fn a_cached_prefix_costs_no_budget_when_a_prompt_is_admitted_in_chunks() {
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 32,
        block_size: 4,
        max_model_len: 256,
        watermark: 0.0,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .unwrap();
    let config = SchedulerConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 8,
        ..SchedulerConfig::default()
    };
    let mut s = Scheduler::new(kv, config).unwrap();
    let mut plan = StepPlan::default();
    let prefix: Vec<TokenId> = (0..32).collect();
    s.add_request(Request {
        prompt: prefix.clone(),
        ..request(1, 0, 1, 1)
    })
    .unwrap();
    while !s.is_idle() {
        s.step(&mut plan);
        s.on_step_output(&outputs(&plan, 7)).unwrap();
    }
    // 32 cached tokens and 4 new ones: the first chunk is the 4 new tokens, not
    // the first 8 of the prompt (which would lose all but one block of the hit).
    let mut prompt = prefix;
    prompt.extend([500, 501, 502, 503]);
    s.add_request(Request {
        prompt,
        ..request(2, 0, 1, 1)
    })
    .unwrap();
    s.step(&mut plan);
    let e = &plan.scheduled[0];
    assert_eq!((e.start, e.num_new_tokens, e.num_samples), (32, 4, 1));
    s.on_step_output(&outputs(&plan, 7)).unwrap();
    s.check_invariants().unwrap();
}
