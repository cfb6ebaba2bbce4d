//! Edge cases of the scheduler: an empty step, parallel samples forked after
//! the prefill, rejections and invalid requests with their messages, the
//! budgets, and outputs reported out of plan order or wrongly.

use super::*;
use crate::manager::{AdmissionRefusal, KvCacheConfig};

impl Request {
    fn with_id(self, id: u64) -> Request {
        Request {
            id: RequestId(id),
            ..self
        }
    }
}

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
        ..Default::default()
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
    s.on_step_output(&mut plan, &[]).unwrap();
    let stray = SampledToken {
        seq: SeqId(1),
        token: 1,
        stop: false,
    };
    assert_eq!(
        s.on_step_output(&mut plan, &[stray]),
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
    s.on_step_output(&mut plan, &out).unwrap();
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
    {
        let out = outputs(&plan, 8);
        s.on_step_output(&mut plan, &out)
    }
    .unwrap();
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
        {
            let out = outputs(&plan, 1);
            s.on_step_output(&mut plan, &out)
        }
        .unwrap();
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
        s.on_step_output(&mut plan, &dup),
        Err(SchedulerError::UnexpectedOutput { seq: dup[0].seq })
    );
    let mut stray = out.clone();
    stray[4].seq = RequestId(3).seq(2); // sample 2 of a 2-sample request
    assert_eq!(
        s.on_step_output(&mut plan, &stray),
        Err(SchedulerError::UnexpectedOutput { seq: stray[4].seq })
    );
    assert!(matches!(
        s.on_step_output(&mut plan, &out[1..]),
        Err(SchedulerError::OutputCountMismatch { expected: 5, got: 4 })
    ));
    assert_eq!(state(&s), before, "refusals changed nothing");
    s.check_invariants().unwrap();
    // Reversed order is accepted like plan order.
    let reversed: Vec<_> = out.iter().rev().copied().collect();
    s.on_step_output(&mut plan, &reversed).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.queue_lens(), (5, 0, 0));
    for seq in [RequestId(0).seq(0), RequestId(3).seq(0), RequestId(3).seq(1)] {
        assert_eq!(s.tokens(seq).unwrap().last(), Some(&9));
    }
    s.step(&mut plan);
    assert_eq!(plan.scheduled.len(), 5);
}

#[test]
fn cancel_frees_waiting_running_and_swapped_requests() {
    // 12 blocks of 4 and a host tier; every preemption swaps.
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 12,
        block_size: 4,
        max_model_len: 256,
        watermark: 0.0,
        num_host_blocks: 12,
        ..Default::default()
    })
    .unwrap();
    let config = SchedulerConfig {
        max_num_seqs: 3,
        ..Default::default()
    };
    let mut s = Scheduler::new(kv, config)
        .unwrap()
        .with_preemption_mode(AlwaysSwap);
    // Three requests that outgrow the pool together, and a fourth left waiting.
    for r in 1..=4 {
        s.add_request(request(r, 12, 30, 1)).unwrap();
    }
    let mut plan = StepPlan::default();
    let mut swapped = None;
    for _ in 0..100 {
        s.step(&mut plan);
        let out = outputs(&plan, 5);
        s.on_step_output(&mut plan, &out).unwrap();
        if let Some(p) = plan.preempted.first() {
            swapped = Some(RequestId::of(p.seq).0);
            break;
        }
    }
    let swapped = swapped.expect("a preemption by swap");
    assert_eq!(s.queue_lens(), (2, 1, 1));
    s.cancel(swapped).unwrap();
    assert_eq!(s.queue_lens(), (2, 1, 0));
    assert_eq!(s.kv().num_swapped(), 0);
    s.cancel(RequestId(4)).unwrap(); // waiting: it held nothing
    assert_eq!(s.queue_lens(), (2, 0, 0));
    s.check_invariants().unwrap();

    // Running and in the plan the engine is running now: its token, if
    // reported, is dropped, and its id is not reusable until then.
    s.step(&mut plan);
    let running = RequestId::of(plan.scheduled[0].seq).0;
    s.cancel(running).unwrap();
    assert_eq!(
        s.cancel(running),
        Err(SchedulerError::UnknownRequest { request: running })
    );
    assert_eq!(
        s.add_request(request(running.0, 4, 2, 1)),
        Err(SchedulerError::DuplicateRequest { request: running })
    );
    let out = outputs(&plan, 5);
    assert_eq!(out.len(), 2);
    s.on_step_output(&mut plan, &out).unwrap(); // the cancelled one's token is dropped
    assert!(plan.finished.is_empty());
    s.check_invariants().unwrap();
    s.add_request(request(running.0, 4, 2, 1)).unwrap();
    assert_eq!(s.stats().cancelled, 3);
    assert_eq!(
        s.cancel(RequestId(99)),
        Err(SchedulerError::UnknownRequest {
            request: RequestId(99)
        })
    );
    let mut left = 0;
    while !s.is_idle() {
        s.step(&mut plan);
        let out = outputs(&plan, 5);
        s.on_step_output(&mut plan, &out).unwrap();
        left += plan.finished.len();
    }
    assert_eq!(left, 2);
    assert_eq!(s.kv().num_free_blocks(), 12);
}

#[test]
fn prefix_keys_keep_tenants_apart_through_the_scheduler() {
    let kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 64,
        block_size: 4,
        max_model_len: 256,
        enable_prefix_caching: true,
        ..Default::default()
    })
    .unwrap();
    let mut s = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    let salted = |id: u64, tenant: &str| {
        Request {
            keys: PrefixKeys::salted(tenant),
            ..request(0, 17, 1, 1)
        }
        .with_id(id)
    };
    let mut plan = StepPlan::default();
    let mut run = |s: &mut Scheduler, r: Request| {
        s.add_request(r).unwrap();
        s.step(&mut plan);
        let first = plan.scheduled[0].start;
        let out = outputs(&plan, 5);
        s.on_step_output(&mut plan, &out).unwrap();
        first
    };
    assert_eq!(run(&mut s, salted(1, "a")), 0);
    assert_eq!(run(&mut s, salted(2, "b")), 0, "another tenant hits nothing");
    assert_eq!(
        run(&mut s, salted(3, "a")),
        16,
        "the same tenant hits its 4 full blocks"
    );
    assert_eq!(
        run(&mut s, request(0, 17, 1, 1).with_id(4)),
        0,
        "nor do unsalted requests"
    );
    assert_eq!(
        run(&mut s, request(0, 17, 1, 1).with_id(5)),
        16,
        "which share among themselves"
    );
}
