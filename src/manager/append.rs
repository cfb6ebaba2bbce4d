//! Appending tokens: the hot path of every decode step and prefill chunk.
//!
//! In every KV cache group an append takes a new block only when the last
//! one is full, copies a shared partially filled last block first
//! (copy-on-write), and, in a sliding-window or chunked local group, first
//! releases the blocks that no query of this step or any later one reads:
//! those wholly before the window of the step's first new token.

use std::ops::Range;

use super::{
    release, release_at, tail_needs_copy, take_block, BlockCopy, HostTier, KvCacheConfig, KvCacheManager,
    KvStats, PrefixState, Seq, Tables,
};
use crate::error::{BatchError, KvError};
use crate::ids::{BlockId, SeqHandle, SeqId, Slot, TokenId};
use crate::pool::BlockPool;
use crate::sizing::{blocks_for, AttentionKind};
use crate::table::BlockTable;

/// What an append changes besides the sequence: the pool, the prefix cache,
/// the host tier and the counters (borrowed apart from the sequence map).
type Parts<'a> = (
    &'a mut BlockPool,
    &'a mut Option<PrefixState>,
    &'a mut Option<HostTier>,
    &'a mut KvStats,
);

impl KvCacheManager {
    /// Appends tokens to a sequence: one (decode) or many (chunked prefill,
    /// speculative tokens). Takes a new block only when the last one is full.
    ///
    /// Copy-on-write: if the last block is partially filled and shared with
    /// another sequence, this sequence gets a fresh block first and a
    /// [`BlockCopy`] of the filled slots is queued for [`Self::drain_ops`].
    /// Full shared blocks stay shared.
    ///
    /// Windows: in a sliding-window or chunked local group, the blocks wholly
    /// before the window of the step's first new token are released first
    /// (their table entries become [`BlockId::NULL`]); released blocks count
    /// as free for this call, so a steady sliding-window decode never runs
    /// out where it releases as much as it takes.
    ///
    /// Errors (nothing changes): [`KvError::UnknownSequence`],
    /// [`KvError::SequenceSwapped`], [`KvError::ExceedsMaxModelLen`],
    /// [`KvError::OutOfBlocks`].
    #[inline]
    pub fn append(&mut self, seq: SeqId, tokens: &[TokenId]) -> Result<(), KvError> {
        self.append_then_slots(seq, tokens, None)
    }

    /// [`Self::append`], then the slots of positions `range` of the sequence
    /// (as it is after the append) in group 0 pushed to `out`, with one lookup
    /// of the sequence: a scheduler's per-sequence work in a step (for a
    /// decode, `len..len + 1`; for a prefill chunk whose blocks were taken
    /// earlier, `tokens` may be empty). [`Self::append_and_group_slots_into`]
    /// gives every group's slots.
    ///
    /// Errors (nothing changes, nothing is pushed): those of `append`, and
    /// [`KvError::PositionOutOfRange`] when `range` passes the new length or
    /// starts in a block released from a window.
    ///
    /// ```
    /// use pagedkv::{KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4]).unwrap();
    /// let mut slots = Vec::new();
    /// kv.append_and_slots_into(SeqId(1), &[5], 4..5, &mut slots).unwrap(); // a decode
    /// assert_eq!(slots, [kv.slot(SeqId(1), 4).unwrap()]);
    /// assert!(kv.append_and_slots_into(SeqId(1), &[6], 4..7, &mut slots).is_err());
    /// assert_eq!((kv.num_tokens(SeqId(1)).unwrap(), slots.len()), (5, 1));
    /// ```
    #[inline]
    pub fn append_and_slots_into(
        &mut self,
        seq: SeqId,
        tokens: &[TokenId],
        range: Range<u64>,
        out: &mut Vec<Slot>,
    ) -> Result<(), KvError> {
        self.append_then_slots(seq, tokens, Some((range, std::slice::from_mut(out))))
    }

    /// [`Self::append_and_slots_into`] for several groups: the slots of group
    /// `g` are pushed to `outs[g]` (pass one buffer per group, or fewer to get
    /// the first groups only).
    ///
    /// Errors: those of `append_and_slots_into`, and [`KvError::UnknownGroup`]
    /// when `outs` has more buffers than there are groups.
    ///
    /// ```
    /// use pagedkv::{AttentionKind, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 16, block_size: 4,
    ///     groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 4 }],
    ///     ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();      // blocks 0 and 1
    /// let mut slots = vec![Vec::new(), Vec::new()];
    /// kv.append_and_group_slots_into(SeqId(1), &[4], 3..4, &mut slots).unwrap();
    /// assert_eq!(slots, [vec![3], vec![7]]);           // the same position, each group's block
    /// ```
    #[inline]
    pub fn append_and_group_slots_into(
        &mut self,
        seq: SeqId,
        tokens: &[TokenId],
        range: Range<u64>,
        outs: &mut [Vec<Slot>],
    ) -> Result<(), KvError> {
        if outs.len() > self.num_groups() {
            return Err(KvError::UnknownGroup {
                group: self.num_groups() as u32,
                num_groups: self.num_groups() as u32,
            });
        }
        self.append_then_slots(seq, tokens, Some((range, outs)))
    }

    /// A decode step's appends in one call: for each `(handle, token)` of
    /// `batch`, in order, appends the token to the handle's sequence and
    /// pushes the new token's slot in group `g` to `outs[g]` (pass one buffer
    /// per group, or fewer to get the first groups only). The same as
    /// [`Self::append_and_group_slots_into`] with `len..len + 1` for each
    /// entry, without the map lookups: a handle indexes the sequence slab.
    ///
    /// Errors: the first refused entry stops the batch ([`BatchError`]: the
    /// entries before it were applied, it and those after it changed
    /// nothing): [`KvError::StaleHandle`], [`KvError::ExceedsMaxModelLen`],
    /// [`KvError::OutOfBlocks`]; [`KvError::UnknownGroup`] (at entry 0) when
    /// `outs` has more buffers than there are groups.
    ///
    /// ```
    /// use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
    /// kv.allocate(SeqId(2), &[1, 2, 3, 4]).unwrap();
    /// let batch = [(kv.handle(SeqId(1)).unwrap(), 9), (kv.handle(SeqId(2)).unwrap(), 9)];
    /// let mut slots = vec![Vec::new()];
    /// kv.drain_ops(&mut BlockOps::default());              // the prefill step runs
    /// kv.append_decode_into(&batch, &mut slots).unwrap();  // one decode step
    /// assert_eq!(slots[0], [kv.slot(SeqId(1), 3).unwrap(), kv.slot(SeqId(2), 4).unwrap()]);
    /// ```
    pub fn append_decode_into(
        &mut self,
        batch: &[(SeqHandle, TokenId)],
        outs: &mut [Vec<Slot>],
    ) -> Result<(), BatchError> {
        if outs.len() > self.num_groups() {
            return Err(BatchError {
                done: 0,
                error: KvError::UnknownGroup {
                    group: self.num_groups() as u32,
                    num_groups: self.num_groups() as u32,
                },
            });
        }
        // The common decode in a tight loop over the slab, specialised for
        // one group and for two groups without prefix caching: a token in
        // the last block (below the hot word, see `fast_until`), or a new
        // block taken in the loop, or `simple_append` out of line (a window
        // release due). What none of them takes goes to `append_one` (the
        // general path, which checks and refuses).
        let epoch = self.epoch;
        let plain = self.num_groups() == 1 && outs.len() == 1 && self.prefix.is_none();
        let two = self.num_groups() == 2 && outs.len() == 2 && self.prefix.is_none();
        let mut done = 0;
        while done < batch.len() {
            done += if plain {
                self.decode_run_plain(&batch[done..], &mut outs[0], epoch)
            } else if two {
                let (a, b) = outs.split_at_mut(1);
                self.decode_run_two(&batch[done..], &mut a[0], &mut b[0], epoch)
            } else {
                self.decode_run(&batch[done..], outs, epoch)
            };
            if let Some(&(h, token)) = batch.get(done) {
                if let Err(error) = self.append_one(h, token, outs) {
                    return Err(BatchError { done, error });
                }
                done += 1;
            }
        }
        Ok(())
    }

    /// The leading fast entries of a batch (one group, no prefix caching):
    /// applies them and returns how many. Besides a token in the last block,
    /// a token starting a new block is fast too when nothing else is due
    /// (no window release, within `max_model_len`, a free block): one pop
    /// from the pool's free stack (prefix caching is off: every free block
    /// is there).
    #[inline(never)]
    fn decode_run_plain(&mut self, batch: &[(SeqHandle, TokenId)], out: &mut Vec<Slot>, epoch: u32) -> usize {
        let KvCacheManager {
            seqs,
            pool,
            prefix,
            host,
            stats,
            config,
            ..
        } = self;
        let (entries, owner) = seqs.entries_hot();
        let (bs, max_model_len) = (config.block_size, config.max_model_len);
        // Slots written by index into room made up front, the length set
        // once at the end (a push per slot stores and reloads it).
        let base = out.len();
        out.resize(base + batch.len(), 0);
        let slots = &mut out[base..];
        let mut done = 0;
        for &(h, _) in batch {
            let Some(e) = entries.get_mut(h.index as usize) else {
                break;
            };
            if !e.is(h, owner) {
                break;
            }
            let s = e.val.as_mut().expect("checked by is()");
            let t = &mut s.tables[0];
            let len = t.num_tokens.value();
            if len < e.hot {
                t.num_tokens.set(len + 1);
            } else if e.hot != 0
                && t.blocks.len() as u64 * bs as u64 == len as u64
                && len < t.release_at.min(max_model_len)
                && pool.num_free() >= 1
            {
                // The bound is the last block's end, not a window's or the
                // length limit: take the next block (one pop from the free
                // stack, where every free block is without prefix caching).
                t.push_fresh_block(take_block(pool, prefix, stats), len);
                t.num_tokens.set(len + 1);
                e.hot = max_model_len.min(len.saturating_add(bs)).min(t.release_at);
            } else if simple_append_cold(&mut e.hot, s, len, epoch, config, (pool, prefix, host, stats)) {
                slots[done] = s.tables[0].tail_base.wrapping_add(len as u64);
                done += 1;
                continue; // simple_append did the step bookkeeping
            } else {
                break;
            }
            slots[done] = t.tail_base.wrapping_add(len as u64);
            s.mark_step(epoch, len);
            done += 1;
        }
        out.truncate(base + done);
        done
    }

    /// [`Self::decode_run_plain`] for two groups (a hybrid model's full and
    /// window groups), both asked for slots.
    #[inline(never)]
    fn decode_run_two(
        &mut self,
        batch: &[(SeqHandle, TokenId)],
        out0: &mut Vec<Slot>,
        out1: &mut Vec<Slot>,
        epoch: u32,
    ) -> usize {
        let KvCacheManager {
            seqs,
            pool,
            prefix,
            host,
            stats,
            config,
            ..
        } = self;
        let (entries, owner) = seqs.entries_hot();
        let (bs, max_model_len) = (config.block_size, config.max_model_len);
        let (k0, k1) = (config.groups[0], config.groups[1]);
        // As in `decode_run_plain`: slots written by index.
        let (base0, base1) = (out0.len(), out1.len());
        out0.resize(base0 + batch.len(), 0);
        out1.resize(base1 + batch.len(), 0);
        let (slots0, slots1) = (&mut out0[base0..], &mut out1[base1..]);
        let mut done = 0;
        for &(h, _) in batch {
            let Some(e) = entries.get_mut(h.index as usize) else {
                break;
            };
            if !e.is(h, owner) {
                break;
            }
            let s = e.val.as_mut().expect("checked by is()");
            let t0 = s.tables.first_mut();
            let len = t0.num_tokens.value();
            if len < e.hot {
                // Group 1's table is not touched: its slot base is mirrored
                // in the entry (`Tables::tail1`), and its count is left
                // behind, brought up to date by the next other access to the
                // sequence (`Tables::catch_up`).
                t0.num_tokens.set(len + 1);
                slots0[done] = t0.tail_base.wrapping_add(len as u64);
                slots1[done] = s.tables.tail1().wrapping_add(len as u64);
                s.mark_step(epoch, len);
                done += 1;
                continue;
            }
            let Some((t0, t1)) = s.tables.pair_mut() else {
                break;
            };
            if e.hot != 0
                && t0.blocks.len() as u64 * bs as u64 == len as u64
                && len < t0.release_at.min(t1.release_at).min(max_model_len)
                && pool.num_free() >= 2
            {
                // As in `decode_run_plain`: both last blocks are full and no
                // window release is due.
                let mut until = max_model_len.min(len.saturating_add(bs));
                for (t, slots) in [(t0, &mut *slots0), (t1, &mut *slots1)] {
                    t.push_fresh_block(take_block(pool, prefix, stats), len);
                    t.num_tokens.set(len + 1);
                    until = until.min(t.release_at);
                    slots[done] = t.tail_base.wrapping_add(len as u64);
                }
                s.tables.mirror_tail1();
                e.hot = until;
            } else if e.hot != 0
                && s.appended_epoch != epoch
                && len < max_model_len
                && t0.blocks.len() as u64 * bs as u64 > len as u64
                && releases_at_most_one(t0, k0, len, bs)
                && releases_at_most_one(t1, k1, len, bs)
            {
                // A window moved past one block (one decode in block_size
                // with a window group) and the token lands in the last
                // block: the release here, as `release_windows` does it
                // (group order, before anything is taken; out of line it
                // costs twice as much).
                for (t, kind) in [(&mut *t0, k0), (&mut *t1, k1)] {
                    if len >= t.release_at {
                        release_next(t, kind, bs, (pool, prefix, host, stats));
                    }
                    t.num_tokens.set(len + 1);
                }
                let end = (t0.blocks.len() as u64 * bs as u64).min(u32::MAX as u64) as u32;
                e.hot = max_model_len.min(end).min(t0.release_at).min(t1.release_at);
                slots0[done] = t0.tail_base.wrapping_add(len as u64);
                slots1[done] = t1.tail_base.wrapping_add(len as u64);
            } else if simple_append_cold(&mut e.hot, s, len, epoch, config, (pool, prefix, host, stats)) {
                slots0[done] = s.tables[0].tail_base.wrapping_add(len as u64);
                slots1[done] = s.tables[1].tail_base.wrapping_add(len as u64);
                done += 1;
                continue; // simple_append did the step bookkeeping
            } else {
                break;
            }
            s.mark_step(epoch, len);
            done += 1;
        }
        out0.truncate(base0 + done);
        out1.truncate(base1 + done);
        done
    }

    /// [`Self::decode_run_plain`] for any groups and prefix caching.
    #[inline(never)]
    fn decode_run(&mut self, batch: &[(SeqHandle, TokenId)], outs: &mut [Vec<Slot>], epoch: u32) -> usize {
        let (entries, owner) = self.seqs.entries_hot();
        let prefix = &mut self.prefix;
        let mut done = 0;
        for &(h, token) in batch {
            let Some(e) = entries.get_mut(h.index as usize) else {
                break;
            };
            if !e.is(h, owner) {
                break;
            }
            let s = e.val.as_mut().expect("checked by is()");
            let len = s.tables[0].num_tokens.value();
            if len >= e.hot {
                break;
            }
            for (g, t) in s.tables.iter_mut().enumerate() {
                t.num_tokens.set(len + 1);
                if let Some(out) = outs.get_mut(g) {
                    out.push(t.tail_base.wrapping_add(len as u64));
                }
            }
            s.mark_step(epoch, len);
            if let Some(p) = prefix {
                let cache = s
                    .cache
                    .as_deref_mut()
                    .expect("caching on: the sequence has a cache");
                p.record_tokens(cache, &s.tables, std::slice::from_ref(&token));
            }
            done += 1;
        }
        done
    }

    /// One entry of [`Self::append_decode_into`] outside the fast case.
    #[inline(always)]
    fn append_one(&mut self, h: SeqHandle, token: TokenId, outs: &mut [Vec<Slot>]) -> Result<(), KvError> {
        let epoch = self.epoch;
        let Some((seq, hot, s)) = self.seqs.by_handle_hot(h) else {
            return Err(KvError::StaleHandle { handle: h });
        };
        let old_len = s.num_tokens();
        let parts = (&mut self.pool, &mut self.prefix, &mut self.host, &mut self.stats);
        if simple_append(hot, s, old_len, epoch, &self.config, parts) {
            for (t, out) in s.tables.iter().zip(outs.iter_mut()) {
                out.push(t.tail_base.wrapping_add(old_len as u64));
            }
            if let Some(p) = &mut self.prefix {
                let cache = s
                    .cache
                    .as_deref_mut()
                    .expect("caching on: the sequence has a cache");
                p.record_tokens(cache, &s.tables, std::slice::from_ref(&token));
            }
            return Ok(());
        }
        let old = old_len as u64;
        self.append_then_slots(seq, &[token], Some((old..old + 1, outs)))
    }

    /// `append`, and with `slots` also the slots of a range after it, for
    /// the first `outs.len()` groups.
    #[inline(always)]
    fn append_then_slots(
        &mut self,
        seq: SeqId,
        tokens: &[TokenId],
        slots: Option<(Range<u64>, &mut [Vec<Slot>])>,
    ) -> Result<(), KvError> {
        let max_model_len = self.config.max_model_len;
        let epoch = self.epoch;
        let bs = self.config.block_size;
        let Some((hot, s)) = self.seqs.get_hot(&seq) else {
            return Err(self.absent(seq));
        };
        let old_len = s.num_tokens() as u64;
        let new_len = old_len + tokens.len() as u64;
        if new_len > max_model_len as u64 {
            return Err(KvError::ExceedsMaxModelLen {
                seq,
                tokens: new_len,
                max_model_len,
            });
        }
        // The tokens computed by earlier steps: a window releases what the
        // first query of this step no longer reads (`release_base`, inlined
        // around the borrow of `s`).
        let base = if s.appended_epoch == epoch {
            s.step_start_len as u64
        } else {
            old_len
        };
        if let Some((range, outs)) = &slots {
            let out_of_range = range.start > range.end || range.end > new_len;
            // The range must start after the blocks each window holds
            // released once this append ran.
            let released = |g: usize| {
                let t = &s.tables[g];
                if !tokens.is_empty() && base >= t.release_at as u64 {
                    self.config.groups[g].first_needed_block(base, bs)
                } else {
                    t.num_released as u64
                }
            };
            let in_released =
                range.start < range.end && (0..outs.len()).any(|g| range.start / (bs as u64) < released(g));
            if out_of_range || in_released {
                return Err(KvError::PositionOutOfRange {
                    seq,
                    pos: if out_of_range { range.end } else { range.start },
                    num_tokens: new_len,
                });
            }
        }
        // Fast path (almost every decode step): in every group the tokens fit
        // in the free slots of a last block the table holds alone, and no
        // window boundary is crossed. No division, no pool access.
        let fits = |t: &crate::table::BlockTable| {
            new_len <= t.blocks.len() as u64 * bs as u64 && !t.tail_maybe_shared && base < t.release_at as u64
        };
        if s.tables.iter().all(fits) {
            for t in s.tables.iter_mut() {
                t.num_tokens.set(new_len as u32);
            }
            if !tokens.is_empty() {
                s.appended_epoch = epoch;
                s.step_start_len = base as u32;
            }
            if *hot == 0 {
                *hot = fast_until(s, bs, max_model_len);
            }
            after_append(&mut self.prefix, s, tokens, slots);
            return Ok(());
        }
        if tokens.is_empty() && slots.is_none() {
            return Ok(());
        }
        if !tokens.is_empty() {
            self.append_slow(seq, base, new_len)?;
        }
        let (hot, s) = self.seqs.get_hot(&seq).expect("looked up above");
        if !tokens.is_empty() {
            s.appended_epoch = epoch;
            s.step_start_len = base as u32;
        }
        *hot = fast_until(s, bs, max_model_len);
        after_append(&mut self.prefix, s, tokens, slots);
        Ok(())
    }

    /// What appending up to `new_len` tokens to a sequence on the device
    /// takes: (blocks taken for growth and copies, blocks the windows'
    /// releases free), `base` being the length the windows release from.
    pub(super) fn append_need(&self, s: &Seq, base: u64, new_len: u64) -> (u64, u64) {
        append_need(&self.config, &self.pool, &self.prefix, s, base, new_len)
    }

    /// The length a sequence's windows release from at its next append: the
    /// tokens computed by earlier steps.
    #[inline]
    pub(super) fn release_base(&self, s: &Seq) -> u64 {
        if s.appended_epoch == self.epoch {
            s.step_start_len as u64
        } else {
            s.num_tokens() as u64
        }
    }

    /// `append` when it takes blocks, may have to copy a last block, or
    /// crosses a window boundary. `base` is the length its window releases from.
    fn append_slow(&mut self, seq: SeqId, base: u64, new_len: u64) -> Result<(), KvError> {
        let bs = self.config.block_size;
        let bs64 = bs as u64;
        // Check first: blocks taken (growth, copies) against blocks free now
        // plus those the windows' releases free.
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSequence { seq })?;
        let (needed, freed) = append_need(&self.config, &self.pool, &self.prefix, s, base, new_len);
        let free = self.pool.num_free() as u64;
        if needed > free + freed {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks {
                needed: needed - freed,
                free,
            });
        }

        // Every group's releases first: their blocks may serve any group's growth.
        release_windows(
            &mut s.tables,
            &self.config.groups,
            base,
            bs,
            (&mut self.pool, &mut self.prefix, &mut self.host, &mut self.stats),
        );
        for (group, t) in s.tables.iter_mut().enumerate() {
            let old_len = t.num_tokens.get() as u64;
            let grow = blocks_for(new_len, bs64) - t.blocks.len() as u64;
            let filled = (old_len % bs64) as u32;
            let last = t.blocks.last().copied();
            let cow = match last {
                Some(b) if filled != 0 && t.tail_maybe_shared => tail_needs_copy(&self.pool, &self.prefix, b),
                _ => false,
            };
            if cow {
                let src = last.expect("cow implies a last block");
                let dst = take_block(&mut self.pool, &mut self.prefix, &mut self.stats);
                release(
                    &mut self.pool,
                    &mut self.prefix,
                    &mut self.host,
                    &mut self.stats,
                    src,
                );
                *t.blocks.last_mut().expect("cow implies a last block") = dst;
                self.copies.push(BlockCopy {
                    src,
                    dst,
                    num_slots: filled,
                    group: group as u32,
                });
                self.stats.cow_copies += 1;
            } else if filled != 0 {
                // An in-place write: the block's content changes, so it must not
                // stay cached (it can carry a hash only after a truncate into it),
                // nor stay associated with a host copy of its old content.
                if let (Some(p), Some(b)) = (&mut self.prefix, last) {
                    p.uncache(b);
                }
                if let (Some(h), Some(b)) = (&mut self.host, last) {
                    h.forget_device(b);
                }
            }
            for _ in 0..grow {
                t.blocks
                    .push(take_block(&mut self.pool, &mut self.prefix, &mut self.stats));
            }
            // The last block is now fresh, copied, or found exclusive.
            t.tail_maybe_shared = false;
            t.num_tokens.set(new_len as u32);
        }
        Ok(())
    }
}

/// [`KvCacheManager::append_need`], on the parts it reads (so that a caller
/// holding the sequence mutably can ask).
fn append_need(
    config: &KvCacheConfig,
    pool: &BlockPool,
    prefix: &Option<PrefixState>,
    s: &Seq,
    base: u64,
    new_len: u64,
) -> (u64, u64) {
    let bs = config.block_size;
    let bs64 = bs as u64;
    let (mut needed, mut freed) = (0u64, 0u64);
    for (t, kind) in s.tables.iter().zip(&config.groups) {
        let release_to = if base >= t.release_at as u64 {
            kind.first_needed_block(base, bs) as usize
        } else {
            t.num_released as usize
        };
        freed += t.blocks[t.num_released as usize..release_to]
            .iter()
            .filter(|&&b| pool.ref_count(b) == Ok(1))
            .count() as u64;
        let old_len = t.num_tokens.get() as u64;
        let grow = blocks_for(new_len, bs64).saturating_sub(t.blocks.len() as u64);
        let cow = old_len % bs64 != 0
            && t.tail_maybe_shared
            && t.blocks.last().is_some_and(|&b| tail_needs_copy(pool, prefix, b));
        needed += grow + cow as u64;
    }
    (needed, freed)
}

/// The next most common one-token append after the hot loops' (every
/// block_size-th decode, and where a window moves past a block), at
/// `old_len` tokens: every group takes a block (its last is full) or writes
/// its last block in place (held alone), windows release what they read no
/// more, and the pool has the blocks without counting the released ones.
/// Applies it (tables, step bookkeeping, the hot word; every table's
/// `tail_base` is then the new token's slot minus its position) and returns
/// true, or returns false having changed nothing: copy-on-write, a tight
/// pool or the length limit need the general path, which checks and refuses.
#[inline(always)]
fn simple_append(
    hot: &mut u32,
    s: &mut Seq,
    old_len: u32,
    epoch: u32,
    config: &KvCacheConfig,
    (pool, prefix, host, stats): Parts<'_>,
) -> bool {
    let bs = config.block_size;
    let base = if s.appended_epoch == epoch {
        s.step_start_len
    } else {
        old_len
    };
    let grow = s.tables[0].blocks.len() as u64 * bs as u64 == old_len as u64;
    let simple = old_len < config.max_model_len
        && (!grow || pool.num_free() as usize >= s.tables.len())
        && (grow || s.tables.iter().all(|t| !t.tail_maybe_shared));
    if !simple {
        return false;
    }
    if s.tables.iter().any(|t| base >= t.release_at) {
        release_windows(
            &mut s.tables,
            &config.groups,
            base as u64,
            bs,
            (pool, prefix, host, stats),
        );
    }
    // With every table grown, the next block_size - 1 appends are fast
    // (up to the windows and the length limit).
    let mut until = config.max_model_len.min(old_len.saturating_add(bs));
    for t in s.tables.iter_mut() {
        if grow {
            t.push_fresh_block(take_block(pool, prefix, stats), old_len);
            until = until.min(t.release_at);
        } else {
            // The new token is in the last block, held alone.
            let last = *t.blocks.last().expect("a table holding a token has a block");
            let start = (t.blocks.len() as u64 - 1) * bs as u64;
            t.tail_base = (last.0 as u64 * bs as u64).wrapping_sub(start);
        }
        t.num_tokens.set(old_len + 1);
    }
    s.appended_epoch = epoch;
    s.step_start_len = base;
    *hot = if grow {
        s.tables.mirror_tail1();
        until
    } else {
        fast_until(s, bs, config.max_model_len)
    };
    true
}

/// [`simple_append`] out of line, for the hot loops (one entry in
/// `block_size` takes it; inlined, it would crowd their registers).
#[inline(never)]
fn simple_append_cold(
    hot: &mut u32,
    s: &mut Seq,
    old_len: u32,
    epoch: u32,
    config: &KvCacheConfig,
    parts: Parts<'_>,
) -> bool {
    simple_append(hot, s, old_len, epoch, config, parts)
}

/// Whether an append at `len` tokens (the step's first) releases at most
/// one block of table `t` of `kind`: its window moved past no block, or
/// past exactly the next one.
#[inline(always)]
fn releases_at_most_one(t: &BlockTable, kind: AttentionKind, len: u32, bs: u32) -> bool {
    len < t.release_at || (len as u64) < kind.first_len_reading_from(t.num_released as u64 + 2, bs)
}

/// Releases the next block of table `t` of `kind`, whose window moved past
/// it (and no further: see [`releases_at_most_one`]); `release_windows`
/// for one block. (Kept apart on purpose: `release_windows`' loop, shared
/// with it as a loop over one block, made the two-group decode step 1–2%
/// slower in alternating criterion runs.)
#[inline(always)]
fn release_next(t: &mut BlockTable, kind: AttentionKind, bs: u32, (pool, prefix, host, stats): Parts<'_>) {
    let i = t.num_released;
    let b = std::mem::replace(&mut t.blocks[i as usize], BlockId::NULL);
    release(pool, prefix, host, stats, b);
    stats.window_released_blocks += 1;
    t.num_released = i + 1;
    t.release_at = release_at(kind, i + 1, bs);
}

/// Releases, in every sliding-window or chunked local group whose window
/// moved past a block, the blocks wholly before what the first query of a
/// step starting at `base` tokens reads (their entries become `BlockId::NULL`).
fn release_windows(
    tables: &mut Tables,
    groups: &[AttentionKind],
    base: u64,
    bs: u32,
    (pool, prefix, host, stats): Parts<'_>,
) {
    for (t, kind) in tables.iter_mut().zip(groups) {
        if base >= t.release_at as u64 {
            let release_to = kind.first_needed_block(base, bs) as u32;
            // Last block first, as `free` releases (and vLLM's
            // `remove_skipped_blocks`): the earlier blocks outlive the later
            // ones in the eviction order.
            for i in (t.num_released..release_to).rev() {
                let b = std::mem::replace(&mut t.blocks[i as usize], BlockId::NULL);
                release(pool, prefix, host, stats, b);
                stats.window_released_blocks += 1;
            }
            t.num_released = release_to;
            t.release_at = release_at(*kind, release_to, bs);
        }
    }
}

/// The length below which a one-token append to `s` needs no check (the
/// hot word of its slab entry), refreshing each table's `tail_base`: below
/// it, in every group, the next position is in the last block, which the
/// table holds alone (not flagged `tail_maybe_shared`: no copy-on-write, no
/// cached content, no host copy to forget), no window releases a block, and
/// the length stays within `max_model_len`. 0 when any of that fails now.
/// The bound stays true while only token counts change (appends under it);
/// any other change to the sequence resets the word (see `SeqSlab`).
fn fast_until(s: &mut Seq, block_size: u32, max_model_len: u32) -> u32 {
    let bs = block_size as u64;
    let mut until = max_model_len;
    for t in s.tables.iter_mut() {
        match t.blocks.last() {
            Some(&last) if !t.tail_maybe_shared && !last.is_null() => {
                let n = t.blocks.len() as u64;
                t.tail_base = (last.0 as u64 * bs).wrapping_sub((n - 1) * bs);
                until = until.min((n * bs).min(u32::MAX as u64) as u32).min(t.release_at);
            }
            _ => return 0,
        }
    }
    s.tables.mirror_tail1();
    until
}

/// The rest of an append once the tables hold the tokens: remember them for
/// prefix caching (hashing blocks they filled) and push the asked slots.
#[inline(always)]
fn after_append(
    prefix: &mut Option<PrefixState>,
    s: &mut Seq,
    tokens: &[TokenId],
    slots: Option<(Range<u64>, &mut [Vec<Slot>])>,
) {
    if let (Some(p), false) = (prefix, tokens.is_empty()) {
        let cache = s
            .cache
            .as_deref_mut()
            .expect("caching on: the sequence has a cache");
        p.record_tokens(cache, &s.tables, tokens);
    }
    if let Some((range, outs)) = slots {
        for (t, out) in s.tables.iter().zip(outs.iter_mut()) {
            // Both ends were checked against the new length (a u32) and the windows.
            let ok = t.slots_into(range.start as u32..range.end as u32, out);
            debug_assert!(ok);
        }
    }
}
