//! Starting sequences when nothing was preempted: swapped sequences come back
//! first, then waiting requests are admitted, both in queue order while they
//! fit the budgets, `max_num_seqs` (counting samples still to fork) and the
//! pool (keeping the watermark unless nothing runs).

use super::{Scheduler, Status, StepPlan};
use crate::error::KvError;
use crate::manager::Admission;

impl Scheduler {
    /// Brings swapped sequences back while they fit (watermark kept unless
    /// nothing runs), first in queue order.
    pub(super) fn swap_in_some(&mut self, budget: &mut u32, plan: &mut StepPlan) {
        let max_seqs = self.config.max_num_seqs as usize;
        if self.swapped.is_empty() {
            return;
        }
        let mut reserved = self.reserved_forks();
        while let Some(&idx) = self.swapped.front() {
            let s = self.s(idx);
            let room = self.running.len() + reserved + 1 + s.forks_left as usize <= max_seqs;
            if plan.scheduled.len() >= max_seqs || !room || *budget == 0 {
                return;
            }
            let n = s.pending().min(*budget);
            if n == 0 || (!self.config.enable_chunked_prefill && n < s.pending()) {
                return;
            }
            let append_to = (s.num_computed + n).max(s.in_kv) as u64;
            let needed = self
                .kv
                .swap_in_and_append_blocks_needed(s.id, append_to - s.in_kv as u64)
                .expect("swapped");
            let watermark = if self.running.is_empty() {
                0
            } else {
                self.kv.watermark_blocks() as u64
            };
            if needed + watermark > self.kv.num_free_blocks() as u64 || self.kv.swap_in(s.id).is_err() {
                return;
            }
            self.swapped.pop_front();
            let handle = self.kv.handle(self.s(idx).id).ok();
            self.set_handle(idx, handle);
            let s = self.slab[idx].as_mut().expect("live");
            reserved += s.forks_left as usize;
            self.cold[idx].status = Status::Running;
            let (id, from) = (s.id, s.in_kv as usize);
            let appended = self.kv.append(id, &s.tokens[from..append_to as usize]);
            Self::insert_by_key(&self.cold, &mut self.running, idx);
            match appended {
                Ok(()) => {
                    self.s_mut(idx).in_kv = append_to as u32;
                    self.push_entry(idx, n, budget, plan);
                }
                // A copy-on-write of a tail shared again: it grows next step,
                // with the running sequences (and may preempt then).
                Err(KvError::OutOfBlocks { .. }) => {}
                Err(e) => panic!("scheduler invariant: a swapped-in sequence is on the device: {e}"),
            }
        }
    }

    /// Samples running sequences will fork after their prefill (they count
    /// against `max_num_seqs` already).
    fn reserved_forks(&self) -> usize {
        self.running.iter().map(|&i| self.s(i).forks_left as usize).sum()
    }

    /// Admits waiting requests in queue order while they fit.
    pub(super) fn admit_some(&mut self, budget: &mut u32, plan: &mut StepPlan) {
        let max_seqs = self.config.max_num_seqs as usize;
        if self.waiting.is_empty() {
            return;
        }
        let mut reserved = self.reserved_forks();
        while let Some(&idx) = self.waiting.front() {
            let s = self.slab[idx].as_ref().expect("live");
            let keys = self.cold[idx].keys();
            let len = s.tokens.len() as u32;
            let room = self.running.len() + reserved + 1 + s.forks_left as usize <= max_seqs;
            if plan.scheduled.len() >= max_seqs || !room || *budget == 0 {
                return;
            }
            if !self.config.enable_chunked_prefill && len > *budget {
                return;
            }
            // With prefix caching on, blocks are still taken chunk by chunk: a
            // block becomes hittable once the step that fills it is handed
            // over, so allocating a prompt's later chunks early would let
            // another prompt hit blocks not computed yet. With a sliding-window
            // or chunked local group, chunk by chunk too, so that the window
            // releases blocks as the prefill advances. The guard then only
            // checks that all of it fits (at its peak). A chunk is the
            // budget's worth of tokens past the cached prefix (the hit costs
            // no budget).
            let whole = self.config.admit_whole_prompt;
            let caching = self.kv.config().enable_prefix_caching;
            let by_chunk = caching || self.kv.groups().iter().any(|k| k.releases_blocks());
            let alloc_len = if whole && !by_chunk {
                len
            } else {
                let hit = if caching {
                    self.kv.cached_prefix_len(&s.tokens, keys) as u32
                } else {
                    0
                };
                len.min(hit.saturating_add(*budget))
            };
            let checked = if whole { len } else { alloc_len };
            // The watermark is kept unless nothing runs (then anything that fits the pool may start).
            let now =
                self.kv
                    .check_admission_chunked(&s.tokens[..checked as usize], keys, 0, self.prefill_chunk())
                    == Admission::Now;
            if !now && !self.running.is_empty() {
                return;
            }
            let id = s.id;
            let mut alloc_len = alloc_len;
            let a = loop {
                match self.kv.allocate_with(id, &s.tokens[..alloc_len as usize], keys) {
                    Ok(a) => break a,
                    // Nothing runs, so nothing will free a block: a shorter
                    // first chunk may fit where a budget's worth does not
                    // (the hit holds the block that vouches for it).
                    Err(KvError::OutOfBlocks { needed, free })
                        if self.running.is_empty() && (by_chunk || !whole) && needed > free =>
                    {
                        let over = (needed - free).saturating_mul(self.kv.block_size() as u64);
                        if over >= alloc_len as u64 {
                            return;
                        }
                        alloc_len -= over as u32;
                    }
                    Err(KvError::OutOfBlocks { .. } | KvError::BelowWatermark { .. }) => return,
                    Err(e) => panic!("scheduler invariant: a waiting sequence holds no blocks: {e}"),
                }
            };
            self.waiting.pop_front();
            let handle = self.kv.handle(id).ok();
            self.cold[idx].status = Status::Running;
            self.set_handle(idx, handle);
            let s = self.s_mut(idx);
            reserved += s.forks_left as usize;
            s.num_computed = a.cached_tokens;
            s.in_kv = alloc_len;
            let n = (len - s.num_computed)
                .min(*budget)
                .min(alloc_len - s.num_computed);
            Self::insert_by_key(&self.cold, &mut self.running, idx);
            self.push_entry(idx, n, budget, plan);
        }
    }
}
