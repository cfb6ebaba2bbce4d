//! vLLM issue #31731: one KV-hungry request forces the preemption of everyone
//! else in a step. Eight short requests decode; then a long prompt of higher
//! priority arrives and takes big prefill chunks (blocks taken chunk by chunk).
//! Without the `isolate_growth` guard the long prompt's chunk evicts five
//! short requests in one step; with it, a sequence that would need more than
//! one victim waits a step instead. A step may still preempt one victim for
//! each of two growing decodes (each takes at most one), so the bound checked
//! is 2 against at least 4 without the guard.

mod common;
use common::*;
use pagedkv::scheduler::{LowestPriority, PriorityOrder};
use pagedkv::{Request, Scheduler, SchedulerConfig};

fn run(isolate: bool) -> Run {
    let config = SchedulerConfig {
        admit_whole_prompt: false,
        isolate_growth: isolate,
        ..config(64, false)
    };
    let mut sched = Scheduler::new(manager(32, 4, 0), config)
        .unwrap()
        .with_queue_order(PriorityOrder)
        .with_victim_policy(LowestPriority);
    let mut reqs: Vec<_> = (0..8)
        .map(|i| Request {
            priority: 1,
            ..request(i, 4, 30, 0)
        })
        .collect();
    reqs.push(request(8, 100, 1, 3));
    drive(&mut sched, reqs, 5_000)
}

#[test]
fn without_the_guard_one_request_evicts_several() {
    let r = run(false);
    assert!(
        r.most_preemptions_in_one_step() >= 4,
        "expected a mass eviction, got {:?}",
        r.preemptions
    );
}

#[test]
fn with_the_guard_the_long_prompt_waits_instead_of_evicting() {
    let r = run(true);
    assert!(r.most_preemptions_in_one_step() <= 2, "{:?}", r.preemptions);
    assert_eq!(r.finished.len(), 9);
}
