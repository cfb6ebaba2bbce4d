//! Edge cases found by trying pagedkv as a new user would, each pinned by a
//! test that failed before its fix (issue 10): extreme ids and counts,
//! admission that refused requests the scheduler runs, events that piled up,
//! cached blocks nobody wrote, and arrival times past i64.

use pagedkv::scheduler::{Candidate, LatestArrival, VictimPolicy};
use pagedkv::{
    Admission, BlockOps, KvCacheConfig, KvCacheManager, KvError, KvEvent, PrefixKeys, Request, RequestId,
    SampledToken, Scheduler, SchedulerConfig, SchedulerError, SeqId, StepPlan,
};

fn manager(num_blocks: u32, block_size: u32, watermark: f64, caching: bool) -> KvCacheManager {
    KvCacheManager::new(KvCacheConfig {
        num_blocks,
        block_size,
        max_model_len: 1024,
        watermark,
        enable_prefix_caching: caching,
        enable_kv_events: caching,
        ..Default::default()
    })
    .unwrap()
}

/// Runs the scheduler to completion, sampling token 7 for every sample asked;
/// returns the most blocks in use at once and the finished sequences.
fn run_to_completion(sched: &mut Scheduler) -> (u64, Vec<SeqId>) {
    let mut plan = StepPlan::default();
    let (mut peak, mut finished) = (0, Vec::new());
    for _ in 0..10_000 {
        if sched.is_idle() {
            return (peak, finished);
        }
        sched.step(&mut plan);
        peak = peak.max(sched.kv().usage().used_blocks);
        let out: Vec<SampledToken> = plan
            .scheduled
            .iter()
            .flat_map(|e| (0..e.num_samples).map(|k| e.sample_seq(k)))
            .map(|seq| SampledToken {
                seq,
                token: 7,
                stop: false,
            })
            .collect();
        sched.on_step_output(&mut plan, &out).unwrap();
        finished.extend_from_slice(&plan.finished);
        sched.check_invariants().unwrap();
    }
    panic!("not idle after 10 000 steps");
}

fn request(id: u64, prompt_len: u32, max_new_tokens: u32) -> Request {
    Request {
        id: RequestId(id),
        prompt: (0..prompt_len)
            .map(|t| t.wrapping_add((id as u32).wrapping_mul(1000)))
            .collect(),
        max_new_tokens,
        arrival: id,
        ..Default::default()
    }
}

/// Item 1: `SeqId(u64::MAX)` was the duplicate check's "never seen" sentinel.
#[test]
fn the_largest_sequence_id_passes_the_invariant_check() {
    let mut kv = manager(4, 4, 0.0, false);
    kv.allocate(SeqId(u64::MAX), &[1, 2, 3]).unwrap();
    kv.check_invariants().unwrap();
    // The scheduler itself produces that id: sample 255 of the largest request id.
    assert_eq!(RequestId(RequestId::LIMIT - 1).seq(255), SeqId(u64::MAX));
    let kv = manager(64, 4, 0.0, false);
    let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    sched
        .add_request(Request {
            n: 256,
            ..request(RequestId::LIMIT - 1, 3, 2)
        })
        .unwrap();
    let (_, finished) = run_to_completion(&mut sched);
    assert!(finished.contains(&SeqId(u64::MAX)));
}

/// Item 2: `append_blocks_needed(seq, u64::MAX)` overflowed (panic in debug, `Ok(0)` in release).
#[test]
fn an_absurd_append_count_is_refused_like_append() {
    let mut kv = manager(4, 4, 0.0, false);
    kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
    let refused = Err(KvError::ExceedsMaxModelLen {
        seq: SeqId(1),
        tokens: u64::MAX,
        max_model_len: 1024,
    });
    assert_eq!(kv.append_blocks_needed(SeqId(1), u64::MAX), refused);
    assert!(matches!(
        kv.append_blocks_needed(SeqId(1), 1022),
        Err(KvError::ExceedsMaxModelLen { tokens: 1025, .. })
    ));
    assert_eq!(kv.append_blocks_needed(SeqId(1), 1021), Ok(256 - 1));
}

/// Item 3: A scheduler handed a manager that already held sequences panicked in `step`.
#[test]
fn a_scheduler_refuses_a_manager_in_use() {
    let mut kv = manager(8, 4, 0.0, false);
    kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
    let err = Scheduler::new(kv.clone(), SchedulerConfig::default()).unwrap_err();
    assert_eq!(err, SchedulerError::ManagerInUse { sequences: 1 });
    assert!(err.to_string().contains("fresh KvCacheManager"), "{err}");
    kv.free(SeqId(1)).unwrap();
    let sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    // ... and hands it back.
    assert_eq!(sched.into_kv().num_free_blocks(), 8);
}

/// Item 4: The last sampled token is never stored: 8 + 9 tokens fit 4 blocks of 4.
#[test]
fn a_request_whose_peak_fills_the_pool_exactly_runs() {
    let kv = manager(4, 4, 0.0, false);
    assert_eq!(kv.check_admission_len(8, 9), Ok(Admission::Now));
    assert_eq!(kv.check_runnable(8, 9), Ok(()));
    assert!(kv.check_runnable(8, 10).is_err());
    let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    sched.add_request(request(1, 8, 9)).unwrap();
    let (peak, finished) = run_to_completion(&mut sched);
    assert_eq!((peak, finished.len()), (4, 1));
}

/// Item 5: A prompt above the watermark was refused as never runnable, though the
/// scheduler runs a request alone without the watermark.
#[test]
fn a_prompt_above_the_watermark_runs_alone() {
    let kv = manager(10, 4, 0.1, false);
    assert_eq!(kv.watermark_blocks(), 1);
    assert_eq!(kv.check_admission_len(37, 2), Ok(Admission::Now));
    let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    sched.add_request(request(1, 37, 2)).unwrap();
    let (peak, finished) = run_to_completion(&mut sched);
    assert_eq!((peak, finished.len()), (10, 1));
}

/// Item 6: With KV events on, the scheduler never drained them.
#[test]
fn the_scheduler_hands_out_kv_events_every_step() {
    let kv = manager(64, 4, 0.0, true);
    let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    for id in 0..20 {
        sched.add_request(request(id, 10, 20)).unwrap();
    }
    let mut plan = StepPlan::default();
    let mut stored = 0;
    while !sched.is_idle() {
        sched.step(&mut plan);
        stored += plan
            .events
            .iter()
            .filter(|e| matches!(e, KvEvent::BlockStored { .. }))
            .count();
        let out: Vec<SampledToken> = plan
            .scheduled
            .iter()
            .filter(|e| e.num_samples > 0)
            .map(|e| SampledToken {
                seq: e.seq,
                token: 7,
                stop: false,
            })
            .collect();
        sched.on_step_output(&mut plan, &out).unwrap();
    }
    assert!(stored >= 20, "{stored} BlockStored events");
    // Nothing is left queued in the manager: events between steps are drained on demand.
    sched.reset_prefix_cache();
    let mut events = Vec::new();
    sched.drain_events(&mut events);
    assert!(matches!(events[..], [KvEvent::AllCleared]), "{events:?}");
    sched.drain_events(&mut events);
    assert!(events.is_empty());
}

/// Item 7: A sequence freed before its step ran left its prompt blocks cached.
#[test]
fn blocks_whose_step_never_ran_are_never_hit() {
    let mut kv = manager(16, 4, 0.0, true);
    let prompt: Vec<u32> = (0..13).collect();
    kv.allocate(SeqId(1), &prompt).unwrap();
    kv.free(SeqId(1)).unwrap(); // aborted before its step was handed over
    let keys = PrefixKeys::default();
    assert_eq!(kv.cached_prefix_len(&prompt, &keys), 0);
    assert_eq!(kv.allocate(SeqId(2), &prompt).unwrap().cached_tokens, 0);
    kv.drain_ops(&mut BlockOps::default()); // seq 2's step is handed over: it runs
    kv.free(SeqId(2)).unwrap();
    assert_eq!(kv.allocate(SeqId(3), &prompt).unwrap().cached_tokens, 12);
    kv.check_invariants().unwrap();
}

/// Item 8: `LatestArrival` cast arrivals to i64: those at or above 2^63 ranked as the earliest.
#[test]
fn latest_arrival_orders_every_u64_arrival() {
    let c = |arrival| Candidate {
        priority: 0,
        arrival,
        num_blocks: 1,
        num_computed: 1,
    };
    for (early, late) in [(5, 1 << 63), (1 << 63, u64::MAX), (0, u64::MAX)] {
        assert!(LatestArrival.victim_key(&c(late)) > LatestArrival.victim_key(&c(early)));
    }
}

/// Found by `fuzz/fuzz_targets/manager_ops.rs` (a soak run, `tools/soak.sh`):
/// an absurd append count on a swapped sequence of several groups summed
/// past `u64::MAX` (a panic with overflow checks, a wrapped small count
/// without them, saying a sequence that can never fit would).
#[test]
fn swap_in_and_append_need_saturates_over_groups() {
    use pagedkv::AttentionKind;
    let mut kv = KvCacheManager::new(KvCacheConfig {
        num_blocks: 16,
        block_size: 1,
        num_host_blocks: 16,
        max_model_len: 64,
        groups: vec![AttentionKind::Full, AttentionKind::Full],
        ..Default::default()
    })
    .unwrap();
    kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
    kv.drain_ops(&mut BlockOps::default());
    kv.swap_out(SeqId(1)).unwrap();
    assert_eq!(kv.swap_in_and_append_blocks_needed(SeqId(1), 2), Ok(6 + 4));
    assert_eq!(
        kv.swap_in_and_append_blocks_needed(SeqId(1), u64::MAX),
        Ok(u64::MAX)
    );
    assert_eq!(
        kv.swap_in_and_append_blocks_needed(SeqId(1), u64::MAX - 5),
        Ok(u64::MAX)
    );
}
