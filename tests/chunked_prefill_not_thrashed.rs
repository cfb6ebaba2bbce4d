//! vLLM PR #21793: a long prompt admitted with chunked prefill is preempted
//! again and again before it ever finishes. Here two short requests decode
//! and grow while a long prompt (the latest arrival, so the default victim)
//! is prefilled in chunks. Without the `admit_whole_prompt` guard its blocks
//! are taken chunk by chunk and it is the victim whenever anyone needs a block;
//! with the guard it starts only when all of its prompt fits, holds it from the
//! start, and is never preempted in the middle of its prefill.

mod common;
use common::*;
use pagedkv::{RequestId, Scheduler};

fn run(guards: bool) -> Run {
    let mut sched = Scheduler::new(manager(40, 4, 0), config(8, guards)).unwrap();
    let reqs = vec![request(0, 40, 40, 0), request(1, 40, 40, 1), request(2, 64, 2, 2)];
    drive(&mut sched, reqs, 2_000)
}

#[test]
fn without_the_guard_the_long_prompt_thrashes() {
    let r = run(false);
    let long = RequestId(2).seq(0);
    let mid: Vec<_> = r.preemptions.iter().filter(|p| p.1 == long && p.3).collect();
    assert!(
        mid.len() >= 2,
        "expected repeated mid-prefill preemptions, got {:?}",
        r.preemptions
    );
}

#[test]
fn with_the_guard_the_long_prompt_is_never_preempted_mid_prefill() {
    let r = run(true);
    let long = RequestId(2).seq(0);
    assert!(
        !r.preemptions.iter().any(|p| p.1 == long && p.3),
        "preempted mid-prefill: {:?}",
        r.preemptions
    );
    assert_eq!(r.finished.len(), 3);
}

#[test]
fn whole_prompt_admission_without_protection_preempts_mid_prefill_as_vllm_does() {
    // vLLM 0.33.0 checks the whole prompt at admission (scheduler_reserve_full_isl)
    // but lets the victim policy pick a prompt in the middle of its prefill.
    let run = |protect: bool| {
        let config = pagedkv::SchedulerConfig {
            isolate_growth: false,
            protect_mid_prefill: protect,
            ..config(8, true)
        };
        let mut sched = Scheduler::new(manager(40, 4, 0), config).unwrap();
        let reqs = vec![request(0, 40, 40, 0), request(1, 40, 40, 1), request(2, 64, 2, 2)];
        drive(&mut sched, reqs, 2_000)
    };
    let long = RequestId(2).seq(0);
    let mid = |r: &Run| r.preemptions.iter().filter(|p| p.1 == long && p.3).count();
    let (unprotected, protected) = (run(false), run(true));
    assert!(mid(&unprotected) >= 1, "{:?}", unprotected.preemptions);
    assert_eq!(mid(&protected), 0, "{:?}", protected.preemptions);
    assert_eq!(unprotected.finished.len(), 3);
}
