//! Taking the engine's sampled tokens: validating them against the last plan,
//! forking the parallel samples after a prefill, appending the tokens and
//! freeing finished sequences.

use super::{Cold, RequestId, SampledToken, Scheduler, SchedulerError, SeqState, Status, StepPlan};
use crate::ids::SeqId;

impl Scheduler {
    /// Takes the tokens the engine sampled for the last plan: one per sample
    /// (`num_samples` of each scheduled sequence; for an `n`-sample request
    /// finishing its prompt, `request.seq(0..n)`). Appends them, forks the
    /// parallel samples (sharing the prompt's blocks), frees the sequences
    /// that stopped or reached `max_new_tokens` and lists them in
    /// `plan.finished` (pass the plan this step ran). Tokens of requests
    /// cancelled since the plan was made are dropped, whether reported or not.
    ///
    /// Errors (nothing changes): `OutputCountMismatch`, `UnexpectedOutput`.
    pub fn on_step_output(
        &mut self,
        plan: &mut StepPlan,
        outputs: &[SampledToken],
    ) -> Result<(), SchedulerError> {
        if self.cancelled_in_flight.is_empty() {
            return self.take_step_output(plan, outputs);
        }
        let mut kept = std::mem::take(&mut self.kept_outputs);
        kept.clear();
        let cancelled = &self.cancelled_in_flight;
        kept.extend(
            outputs
                .iter()
                .filter(|o| !cancelled.contains(&RequestId::of(o.seq).0)),
        );
        let taken = self.take_step_output(plan, &kept);
        if taken.is_ok() {
            self.cancelled_in_flight.clear();
        }
        self.kept_outputs = kept;
        taken
    }

    fn take_step_output(
        &mut self,
        plan: &mut StepPlan,
        outputs: &[SampledToken],
    ) -> Result<(), SchedulerError> {
        if outputs.len() != self.expected.len() {
            return Err(SchedulerError::OutputCountMismatch {
                expected: self.expected.len() as u64,
                got: outputs.len() as u64,
            });
        }
        // The usual case: one output per sample in plan order. Equal to the
        // list of distinct expected outputs, they need no further check
        // (while the expectations are fresh, each names a live sequence that
        // still expects it: a cancel drops its request's entries).
        let in_plan_order =
            !self.expected_stale && outputs.iter().zip(&self.expected).all(|(o, e)| o.seq == e.seq);
        if in_plan_order {
            self.take_outputs_in_plan_order(outputs);
        } else {
            self.check_outputs(outputs)?;
            self.take_outputs(outputs);
        }
        plan.finished.append(&mut self.finished);
        self.expected.clear();
        self.expected_stale = false;
        self.expected_forks = false;
        Ok(())
    }

    /// `take_outputs` for outputs equal to `self.expected`: no lookups.
    fn take_outputs_in_plan_order(&mut self, outputs: &[SampledToken]) {
        let expected = std::mem::take(&mut self.expected);
        // Forks first: a child copies its parent's computed tokens.
        if self.expected_forks {
            for (o, e) in outputs.iter().zip(&expected) {
                if e.sample > 0 {
                    self.fork_sample(o);
                }
            }
        }
        // The finished are freed after the loop (in output order, as if at
        // once: freeing one touches no other's state), so the loop makes no
        // call and keeps the slab in registers.
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        let slab = &mut self.slab[..];
        for (o, e) in outputs.iter().zip(&expected) {
            if e.sample > 0 {
                continue; // a child forked above
            }
            let s = slab[e.idx as usize]
                .as_mut()
                .expect("expected sequences are live");
            debug_assert!(s.samples_expected as u32 > e.sample, "a fresh expectation");
            s.samples_expected = 0;
            s.forks_left = 0;
            s.tokens.push(o.token);
            s.last_token = o.token;
            if o.stop || s.generated() >= s.max_new {
                done.push(e.idx);
            }
        }
        for &idx in &done {
            self.finish(idx as usize);
        }
        self.done = done;
        self.expected = expected;
    }

    /// Outputs in any order: each one expected, none twice.
    fn check_outputs(&mut self, outputs: &[SampledToken]) -> Result<(), SchedulerError> {
        self.seen.clear();
        self.seen.extend(outputs.iter().map(|o| o.seq));
        self.seen.sort_unstable();
        if let Some(w) = self.seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(SchedulerError::UnexpectedOutput { seq: w[0] });
        }
        for o in outputs {
            if !self.expects(o.seq) {
                return Err(SchedulerError::UnexpectedOutput { seq: o.seq });
            }
        }
        Ok(())
    }

    /// Forks the new samples, appends every sampled token, frees the finished.
    fn take_outputs(&mut self, outputs: &[SampledToken]) {
        // Forks first: a child copies its parent's computed tokens.
        for o in outputs {
            if !self.index.contains_key(&o.seq) {
                self.fork_sample(o);
            }
        }
        for o in outputs {
            let Some(&idx) = self.index.get(&o.seq) else {
                continue; // a child forked above that finished at once
            };
            let s = self.s_mut(idx);
            if s.samples_expected == 0 {
                continue; // a child forked above
            }
            s.samples_expected = 0;
            s.forks_left = 0;
            s.tokens.push(o.token);
            s.last_token = o.token;
            self.finish_if_done(idx, o.stop);
        }
    }

    fn expects(&self, seq: SeqId) -> bool {
        if let Some(s) = self.state(seq) {
            return s.samples_expected > 0;
        }
        let (req, sample) = RequestId::of(seq);
        sample > 0
            && self
                .state(req.seq(0))
                .is_some_and(|p| sample < p.samples_expected as u32)
    }

    fn fork_sample(&mut self, o: &SampledToken) {
        let (req, _) = RequestId::of(o.seq);
        let pidx = self.index[&req.seq(0)];
        let p = self.slab[pidx].as_ref().expect("live");
        self.kv
            .fork(p.id, o.seq)
            .expect("a parent finishing its prompt is on the device");
        let mut tokens = self.spare_tokens.pop().unwrap_or_default();
        tokens.clear();
        tokens.reserve((p.prompt_len + p.max_new) as usize);
        tokens.extend_from_slice(&p.tokens[..p.num_computed as usize]);
        tokens.push(o.token);
        let child = SeqState {
            id: o.seq,
            tokens,
            last_token: o.token,
            forks_left: 0,
            samples_expected: 0,
            has_handle: false,
            ..*p
        };
        let handle = self.kv.handle(o.seq).ok();
        let pc = &self.cold[pidx];
        let cold = Cold {
            key: (pc.key.0, o.seq),
            resumed: false,
            status: Status::Running,
            ..pc.clone()
        };
        let idx = self.insert_state(child, cold);
        self.set_handle(idx, handle);
        *self.live.get_mut(&SeqId(req.0)).expect("the parent is live") += 1;
        Self::insert_by_key(&self.cold, &mut self.running, idx);
        self.finish_if_done(idx, o.stop);
    }

    #[inline]
    fn finish_if_done(&mut self, idx: usize, stop: bool) {
        let s = self.s(idx);
        if stop || s.generated() >= s.max_new {
            self.finish(idx);
        }
    }

    /// Frees a sequence that stopped or reached `max_new_tokens`.
    fn finish(&mut self, idx: usize) {
        let id = self.s(idx).id;
        self.kv
            .free(id)
            .expect("a sequence that just ran is on the device");
        let pos = self.running.iter().position(|&r| r == idx).expect("running");
        self.running.remove(pos);
        self.retire(idx);
        self.finished.push(id);
        self.stats.finished += 1;
    }

    /// Forgets a sequence that left every queue (and the manager): its slab
    /// entry, its id, its count in the request's live sequences.
    pub(super) fn retire(&mut self, idx: usize) {
        let s = self.slab[idx].take().expect("live");
        self.index.remove(&s.id);
        // Kept for the next request, up to a bound (see `MAX_SPARE_TOKENS`).
        if self.spare_tokens.len() < super::MAX_SPARE_TOKENS && s.tokens.capacity() <= 1 << 16 {
            self.spare_tokens.push(s.tokens);
        }
        self.free_slab.push(idx);
        let key = SeqId(RequestId::of(s.id).0 .0);
        let live = self.live.get_mut(&key).expect("live request");
        *live -= 1;
        if *live == 0 {
            self.live.remove(&key);
        }
    }
}
