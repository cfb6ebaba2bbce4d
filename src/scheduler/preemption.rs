//! Growing the running sequences: each gets its next prefill chunk or decode
//! token, and one that cannot grow preempts victims (policy order, among the
//! running sequences after it) by swap or recompute, or waits under the
//! head-of-line and whole-prompt guards.

use std::cmp::Reverse;

use super::{Candidate, Preempted, PreemptionCost, PreemptionMode, Scheduler, Status, StepPlan};
use crate::error::KvError;

/// What planning one running sequence did.
pub(super) enum Outcome {
    Scheduled,
    Deferred,
    PreemptedItself,
}

impl Scheduler {
    /// Plans `running[i]`; may preempt running sequences after position `i`.
    pub(super) fn schedule_running(
        &mut self,
        i: usize,
        force: bool,
        budget: &mut u32,
        plan: &mut StepPlan,
    ) -> Outcome {
        let idx = self.running[i];
        let (n, append_to) = {
            let s = self.s(idx);
            let n = s.pending().min(*budget);
            if n == 0 || (!self.config.enable_chunked_prefill && n < s.pending()) {
                return Outcome::Deferred;
            }
            (n, (s.num_computed + n).max(s.in_kv))
        };
        let mut victims = 0u32;
        let from = self.slots[0].len() as u32;
        loop {
            let s = self.slab[idx].as_mut().expect("live");
            // One lookup: the tokens not yet in the manager (none when its
            // blocks were taken earlier), then the slots of this step's tokens
            // in every group.
            let start = s.num_computed as u64;
            match self.kv.append_and_group_slots_into(
                s.id,
                &s.tokens[s.in_kv as usize..append_to as usize],
                start..start + n as u64,
                &mut self.slots,
            ) {
                Ok(()) => {
                    s.in_kv = append_to;
                    break;
                }
                Err(KvError::OutOfBlocks { .. }) => {}
                Err(e) => panic!("scheduler invariant: a running sequence is on the device: {e}"),
            }
            let id = s.id;
            let need = self
                .kv
                .append_blocks_needed(id, (append_to - s.in_kv) as u64)
                .expect("running sequences are on the device");
            let deficit = need.saturating_sub(self.kv.num_free_blocks() as u64);
            if self.config.isolate_growth && !force {
                let (count, enough) = self.victims_needed(i, deficit);
                if victims + count > 1 || !enough {
                    self.stats.deferred += 1;
                    return Outcome::Deferred;
                }
            }
            let victim = self.pick_victim(i);
            // Under the whole-prompt guard a prompt in the middle of its prefill
            // is not preempted for another's growth: the grower waits instead.
            if let (Some(v), true) = (victim, self.protects_mid_prefill() && !force) {
                if self.candidate(v).0 == 0 {
                    self.stats.deferred += 1;
                    return Outcome::Deferred;
                }
            }
            match victim {
                Some(v) => {
                    self.preempt(v, plan);
                    victims += 1;
                }
                None => {
                    self.preempt(idx, plan);
                    return Outcome::PreemptedItself;
                }
            }
        }
        let to = self.slots[0].len() as u32;
        self.record_entry(idx, n, from..to, budget, plan);
        Outcome::Scheduled
    }

    fn candidate(&self, idx: usize) -> (u8, (i64, u64)) {
        let s = self.s(idx);
        let num_blocks = self.kv.num_blocks_held(s.id).unwrap_or(0) as u32;
        let cold = &self.cold[idx];
        let c = Candidate {
            priority: cold.priority,
            arrival: cold.arrival,
            num_blocks,
            num_computed: s.num_computed,
        };
        // Under the whole-prompt guard, a sequence in the middle of its prefill goes last.
        let protected = self.protects_mid_prefill() && s.pending() > 1;
        (!protected as u8, self.victim.victim_key(&c))
    }

    fn protects_mid_prefill(&self) -> bool {
        self.config.admit_whole_prompt && self.config.protect_mid_prefill
    }

    /// The victim for `running[i]`: the policy's first among those after it.
    fn pick_victim(&self, i: usize) -> Option<usize> {
        self.running[i + 1..]
            .iter()
            .map(|&v| (self.candidate(v), Reverse(v)))
            .max()
            .map(|(_, Reverse(v))| v)
    }

    /// How many victims, in policy order, `running[i]` would need to free
    /// `deficit` blocks, and whether all of them together would.
    fn victims_needed(&mut self, i: usize, deficit: u64) -> (u32, bool) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for &v in &self.running[i + 1..] {
            let (p, k) = self.candidate(v);
            scratch.push((p, k, v));
        }
        scratch.sort_unstable_by(|a, b| b.cmp(a));
        let (mut freed, mut count) = (0u64, 0u32);
        for &(_, _, v) in &scratch {
            if freed >= deficit {
                break;
            }
            freed += self
                .kv
                .blocks_freed_by_free(self.s(v).id)
                .expect("running sequences are on the device");
            count += 1;
        }
        self.scratch = scratch;
        (count, freed >= deficit)
    }

    /// Preempts a running sequence (swap or recompute, as the policy says).
    fn preempt(&mut self, idx: usize, plan: &mut StepPlan) {
        let pos = self.running.iter().position(|&r| r == idx).expect("running");
        self.running.remove(pos);
        self.preempted_this_step = true;
        let s = self.s(idx);
        let id = s.id;
        let computed = &s.tokens[..s.num_computed as usize];
        let cost = PreemptionCost {
            recompute_tokens: s.num_computed as u64,
            expected_cached_tokens: self.kv.cached_prefix_len(computed, self.cold[idx].keys()),
            swap_blocks: self.kv.swap_out_blocks_needed(id).ok(),
            free_host_blocks: self.kv.num_free_host_blocks() as u64,
            block_size: self.kv.block_size(),
        };
        let mode = match self.mode.choose(&cost) {
            PreemptionMode::Swap if self.kv.swap_out(id).is_ok() => PreemptionMode::Swap,
            _ => {
                self.kv.free(id).expect("a running sequence is allocated");
                PreemptionMode::Recompute
            }
        };
        let s = self.slab[idx].as_mut().expect("live");
        s.samples_expected = 0;
        s.has_handle = false;
        if mode == PreemptionMode::Swap {
            self.cold[idx].status = Status::Swapped;
            self.stats.preempted_swap += 1;
            Self::insert_by_key_deque(&self.cold, &mut self.swapped, idx);
        } else {
            self.stats.preempted_recompute += 1;
            self.stats.recomputed_tokens += s.num_computed as u64;
            s.num_computed = 0;
            s.in_kv = 0;
            self.cold[idx].status = Status::Waiting;
            self.cold[idx].resumed = true;
            self.enqueue_waiting(idx);
        }
        plan.preempted.push(Preempted { seq: id, mode });
    }
}
