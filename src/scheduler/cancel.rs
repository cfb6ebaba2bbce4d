//! Cancelling a request: every sequence of it leaves its queue and the
//! manager at once, wherever it is (waiting, running, swapped out).
//!
//! A request the last plan scheduled is still in the step the engine runs:
//! its blocks are freed now (the step writes them before anything reuses
//! them: the engine runs a plan before asking for the next one), its
//! outputs are dropped by the next `on_step_output` whether reported or not,
//! and its id stays reserved until then so a new request with that id cannot
//! receive them.

use super::{RequestId, Scheduler, SchedulerError, Status, MAX_SAMPLES};
use crate::ids::SeqId;

impl Scheduler {
    /// Cancels a request (a client went away, a stop condition the engine
    /// checks itself): frees every sample's blocks and forgets it.
    ///
    /// Errors (nothing changes): `UnknownRequest` when it is not queued,
    /// running or swapped out.
    ///
    /// ```
    /// use pagedkv::{KvCacheConfig, KvCacheManager, Request, RequestId, Scheduler, SchedulerConfig, StepPlan};
    /// let kv = KvCacheManager::new(KvCacheConfig { num_blocks: 16, block_size: 4, ..Default::default() }).unwrap();
    /// let mut sched = Scheduler::new(kv, SchedulerConfig::default()).unwrap();
    /// sched.add_request(Request { id: RequestId(1), prompt: vec![1; 10], max_new_tokens: 5, ..Default::default() }).unwrap();
    /// let mut plan = StepPlan::default();
    /// sched.step(&mut plan);                   // the prefill is planned...
    /// sched.cancel(RequestId(1)).unwrap();     // ...and the client goes away
    /// assert_eq!(sched.kv().num_free_blocks(), 16);
    /// sched.on_step_output(&mut plan, &[]).unwrap(); // its sampled token, if reported, is dropped
    /// assert!(sched.is_idle());
    /// ```
    pub fn cancel(&mut self, request: RequestId) -> Result<(), SchedulerError> {
        if !self.live.contains_key(&SeqId(request.0)) {
            return Err(SchedulerError::UnknownRequest { request });
        }
        let before = self.expected.len();
        self.expected.retain(|e| RequestId::of(e.seq).0 != request);
        if self.expected.len() != before {
            self.cancelled_in_flight.push(request);
        }
        for sample in 0..MAX_SAMPLES {
            let Some(&idx) = self.index.get(&request.seq(sample)) else {
                continue;
            };
            let s = self.s(idx);
            let (id, status) = (s.id, self.cold[idx].status);
            let queued = |q: &usize| *q == idx;
            match status {
                Status::Running => {
                    let pos = self
                        .running
                        .iter()
                        .position(queued)
                        .expect("queued by its status");
                    self.running.remove(pos);
                }
                Status::Waiting | Status::Swapped => {
                    let queue = if status == Status::Waiting {
                        &mut self.waiting
                    } else {
                        &mut self.swapped
                    };
                    let pos = queue.iter().position(queued).expect("queued by its status");
                    queue.remove(pos);
                }
            }
            if status != Status::Waiting {
                self.kv
                    .free(id)
                    .expect("running and swapped sequences are in the manager");
            }
            self.retire(idx);
        }
        self.stats.cancelled += 1;
        Ok(())
    }
}
