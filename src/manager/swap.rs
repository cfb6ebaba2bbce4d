//! The host (swap) tier: a second block pool in host memory, and moving whole
//! sequences between it and the device (`swap_out`, `swap_in`).
//!
//! Sharing survives the move. A device block and a host block with the same
//! content are *associated* (`host_of[d] == h` ⇔ `dev_of[h] == d`) while both
//! are held and the device block has not been written in place since. Swapping
//! out a sequence copies each device block that has no associated host block
//! (once) and shares the associated one otherwise; swapping in does the
//! reverse. So the n samples of a request, swapped out one after another,
//! share the same host blocks with one device → host copy per device block,
//! and swapped back in they share device blocks again with one host → device
//! copy per host block. A sharer swapped back in while another still runs on
//! the device shares that device block without any copy.
//!
//! An association is dropped when either block is freed and when the device
//! block may be written in place (a write into a partially filled tail held
//! alone, a truncate that makes a partially filled tail). A sequence whose
//! partially filled device tail has a host association is flagged
//! `tail_maybe_shared`, so a later sharer coming back cannot meet an in-place write.
//!
//! Host blocks released during a step (by `swap_in` or `free`) stay allocated
//! until the next `drain_ops`: the engine runs swap-outs before swap-ins, so a
//! host block a queued swap-in still reads must not be handed to a swap-out.
//!
//! Device blocks released by `swap_out` keep their hash in the free queue like
//! any freed block. The full blocks a sequence gets back at `swap_in` are
//! indexed like blocks that fill (pending until the next `drain_ops`): a hash
//! evicted while the sequence was away is cached again (a `BlockStored`), one
//! still cached in a free block moves to the swapped-in copy, one cached in a
//! block in use gets the copy as a duplicate.

use super::offload::take_host_block;
use super::{
    release, release_at, take_block, BlockOps, Eviction, KvCacheConfig, KvCacheManager, PrefixOffload, Seq,
};
use crate::error::{InvariantViolation, KvError};
use crate::ids::{BlockId, SeqId};
use crate::manager::types::BlockCopy;
use crate::pool::BlockPool;
use crate::prefix::PrefixIndex;
use crate::sizing::AttentionKind;
use crate::table::BlockTable;

/// The "no associated block" value.
const NIL: u32 = u32::MAX;

/// The host pool, the device ↔ host association and the queued swap copies.
#[derive(Debug, Clone)]
pub(super) struct HostTier {
    pub(super) pool: BlockPool,
    /// Per device block: the host block holding the same content, or NIL.
    host_of: Vec<u32>,
    /// Per host block: the device block holding the same content, or NIL.
    dev_of: Vec<u32>,
    /// Host blocks no sequence holds any more (or read by a reload this
    /// step), returned to the pool at the next drain.
    pub(super) release_on_drain: Vec<BlockId>,
    pub(super) swap_out: Vec<BlockCopy>,
    pub(super) swap_in: Vec<BlockCopy>,
    /// With prefix offload on: which free host block holds which offloaded
    /// block's content (see `offload.rs`).
    pub(super) cached: Option<PrefixIndex>,
    /// Per host block: whether the offloaded content it holds was reused.
    pub(super) reused: Vec<bool>,
    /// Where offloaded blocks join the host queue.
    pub(super) eviction: Eviction,
    /// Scratch for `allocate_cached`: the blocks of a hit reloaded from here
    /// (group, position, host block).
    pub(super) reloads: Vec<(u32, u32, BlockId)>,
    /// Scratch for `allocate_cached`: the device blocks taken for `reloads`.
    pub(super) reload_dst: Vec<BlockId>,
}

impl HostTier {
    pub(super) fn new(config: &KvCacheConfig) -> Option<Self> {
        let pool = BlockPool::new(config.num_host_blocks).ok()?;
        Some(HostTier {
            pool,
            host_of: vec![NIL; config.num_blocks as usize],
            dev_of: vec![NIL; config.num_host_blocks as usize],
            release_on_drain: Vec::new(),
            swap_out: Vec::new(),
            swap_in: Vec::new(),
            cached: (config.prefix_offload != PrefixOffload::Off)
                .then(|| PrefixIndex::new(config.num_host_blocks)),
            reused: vec![false; config.num_host_blocks as usize],
            eviction: config.eviction,
            reloads: Vec::new(),
            reload_dst: Vec::new(),
        })
    }

    /// The device block's content is about to change or it was freed: its host
    /// copy (if any) no longer matches it.
    #[inline]
    pub(super) fn forget_device(&mut self, d: BlockId) {
        let h = std::mem::replace(&mut self.host_of[d.index()], NIL);
        if h != NIL {
            self.dev_of[h as usize] = NIL;
        }
    }

    fn forget_host(&mut self, h: BlockId) {
        let d = std::mem::replace(&mut self.dev_of[h.index()], NIL);
        if d != NIL {
            self.host_of[d as usize] = NIL;
        }
    }

    fn associate(&mut self, d: BlockId, h: BlockId) {
        self.host_of[d.index()] = h.0;
        self.dev_of[h.index()] = d.0;
    }

    fn host_of(&self, d: BlockId) -> Option<BlockId> {
        let h = self.host_of[d.index()];
        (h != NIL).then_some(BlockId(h))
    }

    fn dev_of(&self, h: BlockId) -> Option<BlockId> {
        let d = self.dev_of[h.index()];
        (d != NIL).then_some(BlockId(d))
    }

    /// Drops one swapped table's reference to a host block; the last one
    /// holds it until the next drain.
    fn release_host(&mut self, h: BlockId) {
        if self.pool.ref_count(h) == Ok(1) {
            self.forget_host(h);
            self.release_on_drain.push(h);
        } else {
            self.pool
                .decref(h)
                .expect("a swapped table's blocks are allocated");
        }
    }

    pub(super) fn drain_into(&mut self, ops: &mut BlockOps) {
        ops.swap_out.extend_from_slice(&self.swap_out);
        ops.swap_in.extend_from_slice(&self.swap_in);
        self.swap_out.clear();
        self.swap_in.clear();
        let mut held = std::mem::take(&mut self.release_on_drain);
        for h in held.drain(..) {
            self.return_held(h);
        }
        self.release_on_drain = held;
    }
}

impl KvCacheManager {
    /// The error for a sequence that is not on the device.
    #[cold]
    pub(super) fn absent(&self, seq: SeqId) -> KvError {
        if self.swapped.contains_key(&seq) {
            KvError::SequenceSwapped { seq }
        } else {
            KvError::UnknownSequence { seq }
        }
    }

    /// Host blocks in the host tier (0 without one).
    pub fn num_host_blocks(&self) -> u32 {
        self.host.as_ref().map_or(0, |h| h.pool.num_blocks())
    }

    /// Free host blocks now (host blocks released this step count after the next drain).
    pub fn num_free_host_blocks(&self) -> u32 {
        self.host.as_ref().map_or(0, |h| h.pool.num_free())
    }

    /// The host pool, read-only (`None` without a host tier).
    pub fn host_pool(&self) -> Option<&BlockPool> {
        self.host.as_ref().map(|h| &h.pool)
    }

    /// Whether the sequence is swapped out to the host tier.
    pub fn is_swapped(&self, seq: SeqId) -> bool {
        self.swapped.contains_key(&seq)
    }

    /// Swapped-out sequences.
    pub fn num_swapped(&self) -> usize {
        self.swapped.len()
    }

    /// Iterates swapped-out sequence ids (in no particular order).
    pub fn swapped_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.swapped.keys().copied()
    }

    /// A swapped-out sequence's table in group 0: its **host** blocks, in
    /// logical order ([`crate::manager::GroupView::swapped_table`] for other groups).
    pub fn swapped_table(&self, seq: SeqId) -> Result<&BlockTable, KvError> {
        self.swapped_seq(seq).map(|s| &s.tables[0])
    }

    pub(super) fn swapped_seq(&self, seq: SeqId) -> Result<&Seq, KvError> {
        match self.swapped.get(&seq) {
            Some(s) => Ok(s),
            None if self.seqs.contains_key(&seq) => Err(KvError::NotSwapped { seq }),
            None => Err(KvError::UnknownSequence { seq }),
        }
    }

    /// Device blocks an `append` of `num_new_tokens` tokens would take now
    /// beyond what it frees, over every group (new blocks, plus one per group
    /// for a copy-on-write of a shared partial tail, less the blocks a
    /// window's release frees). Pure; a scheduler uses it to decide
    /// preemptions before appending.
    ///
    /// Errors: `UnknownSequence`, `SequenceSwapped`, and
    /// [`KvError::ExceedsMaxModelLen`] when the append itself would be refused
    /// for its length.
    ///
    /// ```
    /// use pagedkv::{KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
    /// assert_eq!(kv.append_blocks_needed(SeqId(1), 1).unwrap(), 0);
    /// assert_eq!(kv.append_blocks_needed(SeqId(1), 2).unwrap(), 1);
    /// kv.drain_ops(&mut Default::default());
    /// kv.fork(SeqId(1), SeqId(2)).unwrap();
    /// assert_eq!(kv.append_blocks_needed(SeqId(2), 1).unwrap(), 1); // copy-on-write
    /// ```
    pub fn append_blocks_needed(&self, seq: SeqId, num_new_tokens: u64) -> Result<u64, KvError> {
        let Some(s) = self.seqs.get(&seq) else {
            return Err(self.absent(seq));
        };
        if num_new_tokens == 0 {
            return Ok(0);
        }
        let len = s.num_tokens() as u64;
        // The refusal `append` would give (an absurd count saturates, never wraps).
        let new_len = len.saturating_add(num_new_tokens);
        self.check_len(seq, new_len)?;
        let (needed, freed) = self.append_need(s, self.release_base(s), new_len);
        Ok(needed.saturating_sub(freed))
    }

    /// Host blocks `swap_out(seq)` would take now, over every group (blocks
    /// already copied to the host by a sharer are shared, not copied again). Pure.
    pub fn swap_out_blocks_needed(&self, seq: SeqId) -> Result<u64, KvError> {
        let Some(s) = self.seqs.get(&seq) else {
            return Err(self.absent(seq));
        };
        let Some(host) = &self.host else {
            return Err(KvError::NoHostTier { seq });
        };
        // As `swap_out` does: blocks a window no longer reads are released, not copied.
        let len = self.release_base(s);
        let bs = self.config.block_size;
        Ok(s.tables
            .iter()
            .zip(&self.config.groups)
            .flat_map(|(t, kind)| {
                let from = if len >= t.release_at as u64 {
                    kind.first_needed_block(len, bs) as usize
                } else {
                    t.num_released as usize
                };
                &t.blocks[from..]
            })
            .filter(|&&d| host.host_of(d).is_none())
            .count() as u64)
    }

    /// Device blocks `swap_in(seq)` would take now, over every group (blocks
    /// already back on the device through a sharer are shared, not copied
    /// again). Pure.
    pub fn swap_in_blocks_needed(&self, seq: SeqId) -> Result<u64, KvError> {
        let s = self.swapped_seq(seq)?;
        let host = self
            .host
            .as_ref()
            .expect("a swapped sequence implies a host tier");
        Ok(s.tables
            .iter()
            .flat_map(|t| t.live_blocks())
            .filter(|&&h| host.dev_of(h).is_none())
            .count() as u64)
    }

    /// Device blocks a swapped-out sequence needs to come back and then grow
    /// by `num_new_tokens` tokens: `swap_in_blocks_needed` plus the new blocks
    /// of every group (an upper bound: it counts no window release; an absurd
    /// count saturates at `u64::MAX`, never wraps). Pure.
    pub fn swap_in_and_append_blocks_needed(&self, seq: SeqId, num_new_tokens: u64) -> Result<u64, KvError> {
        let swap_in = self.swap_in_blocks_needed(seq)?;
        let s = self.swapped_seq(seq)?;
        let per_group = self.blocks_for((s.num_tokens() as u64).saturating_add(num_new_tokens));
        Ok(s.tables.iter().fold(swap_in, |sum, t| {
            sum.saturating_add(per_group.saturating_sub(t.blocks.len() as u64))
        }))
    }

    /// Whether [`Self::swap_in`] would succeed now: the sequence is swapped
    /// out and `swap_in_blocks_needed` blocks are free with the watermark to
    /// spare (kept while other sequences are on the device, as admission does).
    pub fn can_swap_in(&self, seq: SeqId) -> bool {
        self.swap_in_blocks_needed(seq)
            .is_ok_and(|n| n + self.reserve_for_growth() <= self.pool.num_free() as u64)
    }

    /// Moves a sequence's blocks to the host tier: each device block is copied
    /// to a host block (queued in [`BlockOps::swap_out`]) unless a sharer
    /// already copied it, then released. Blocks a sliding-window or chunked
    /// local group no longer reads (its next token's window starts after them)
    /// are released without a copy. The sequence keeps its tokens and
    /// block hashes; until [`Self::swap_in`] it cannot be appended to, forked
    /// or read (`SequenceSwapped`), but it can be freed.
    ///
    /// Only sequences whose tokens were handed to the engine to compute can
    /// move (not one allocated or appended to since the last `drain_ops`):
    /// the swap-out copy runs before the step that would compute them.
    ///
    /// Errors (nothing changes): `UnknownSequence`, `SequenceSwapped`,
    /// `NoHostTier`, `NotYetComputed`, `HostOutOfBlocks`, `PendingWrite`.
    ///
    /// ```
    /// use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 8, block_size: 4, num_host_blocks: 8, ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5]).unwrap();     // 2 blocks
    /// let mut ops = BlockOps::default();
    /// kv.drain_ops(&mut ops);                               // its prefill step
    /// kv.fork(SeqId(1), SeqId(2)).unwrap();                 // both shared
    /// kv.swap_out(SeqId(1)).unwrap();
    /// kv.swap_out(SeqId(2)).unwrap();                       // shares the host copies
    /// kv.drain_ops(&mut ops);
    /// assert_eq!(ops.swap_out.len(), 2);                    // one copy per device block
    /// assert_eq!(kv.num_free_blocks(), 8);
    /// assert!(kv.append(SeqId(1), &[6]).is_err());          // swapped: not runnable
    /// kv.swap_in(SeqId(1)).unwrap();
    /// kv.swap_in(SeqId(2)).unwrap();                        // shares the device copies
    /// kv.drain_ops(&mut ops);
    /// assert_eq!(ops.swap_in.len(), 2);
    /// assert_eq!(kv.block_table(SeqId(1)).unwrap(), kv.block_table(SeqId(2)).unwrap());
    /// kv.check_invariants().unwrap();
    /// ```
    pub fn swap_out(&mut self, seq: SeqId) -> Result<(), KvError> {
        let Some(s) = self.seqs.get(&seq) else {
            return Err(self.absent(seq));
        };
        if self.host.is_none() {
            return Err(KvError::NoHostTier { seq });
        }
        if s.appended_epoch == self.epoch {
            return Err(KvError::NotYetComputed { seq });
        }
        let host = self.host.as_mut().expect("checked above");
        let holds = |b: BlockId| s.tables.iter().any(|t| t.live_blocks().contains(&b));
        if let Some(c) = self.copies.iter().chain(&host.swap_in).find(|c| holds(c.dst)) {
            return Err(KvError::PendingWrite { seq, block: c.dst });
        }
        // Every token is computed: blocks a window no longer reads are released
        // instead of copied (the next append would release them anyway).
        let bs = self.config.block_size;
        let len = s.num_tokens() as u64;
        let keep_from = |t: &BlockTable, kind: &AttentionKind| {
            if len >= t.release_at as u64 {
                kind.first_needed_block(len, bs) as usize
            } else {
                t.num_released as usize
            }
        };
        let needed = s
            .tables
            .iter()
            .zip(&self.config.groups)
            .flat_map(|(t, k)| &t.blocks[keep_from(t, k)..])
            .filter(|&&d| host.host_of(d).is_none())
            .count() as u64;
        let free = host.pool.num_free() as u64;
        if needed > free {
            return Err(KvError::HostOutOfBlocks { seq, needed, free });
        }

        let mut s = self.seqs.remove(&seq).expect("checked above");
        s.tables.catch_up();
        for (t, kind) in s.tables.iter_mut().zip(&self.config.groups) {
            let release_to = keep_from(t, kind);
            // Last block first, as `release_windows` and `free` release.
            for i in (t.num_released as usize..release_to).rev() {
                let b = std::mem::replace(&mut t.blocks[i], BlockId::NULL);
                release(
                    &mut self.pool,
                    &mut self.prefix,
                    &mut self.host,
                    &mut self.stats,
                    b,
                );
                self.stats.window_released_blocks += 1;
            }
            t.num_released = release_to as u32;
            t.release_at = release_at(*kind, release_to as u32, bs);
        }
        for (group, t) in s.tables.iter_mut().enumerate() {
            let released = t.num_released as usize;
            // Last block first, as `free` releases, to keep the eviction order.
            for b in t.blocks[released..].iter_mut().rev() {
                let d = *b;
                let host = self.host.as_mut().expect("checked above");
                let h = match host.host_of(d) {
                    Some(h) => {
                        host.pool.incref(h).expect("an associated host block is held");
                        h
                    }
                    None => {
                        let h = take_host_block(host, &mut self.prefix, &mut self.stats)
                            .expect("free host blocks were counted");
                        host.swap_out.push(BlockCopy {
                            src: d,
                            dst: h,
                            num_slots: bs,
                            group: group as u32,
                        });
                        self.stats.swap_out_copies += 1;
                        if self.pool.ref_count(d).expect("tables hold pool blocks") > 1 {
                            // Other device holders remain: later sharers reuse this copy.
                            host.associate(d, h);
                        }
                        h
                    }
                };
                release(
                    &mut self.pool,
                    &mut self.prefix,
                    &mut self.host,
                    &mut self.stats,
                    d,
                );
                *b = h;
            }
            t.tail_maybe_shared = false;
        }
        self.swapped.insert(seq, s);
        self.stats.swap_outs += 1;
        Ok(())
    }

    /// Brings a swapped-out sequence back: each host block is copied to a
    /// fresh device block (queued in [`BlockOps::swap_in`]) unless a sharer
    /// already brought it back or still holds its device original, which is
    /// then shared without a copy. Like `allocate`, it keeps the watermark
    /// free while other sequences are on the device ([`Self::can_swap_in`]
    /// says whether it would succeed).
    ///
    /// Errors (nothing changes): `UnknownSequence`, `NotSwapped`, `OutOfBlocks`,
    /// `BelowWatermark`, `SwapInWouldOverwrite`.
    pub fn swap_in(&mut self, seq: SeqId) -> Result<(), KvError> {
        let needed = self.swap_in_blocks_needed(seq)?;
        if let Some(block) = self.queued_copy_on_free_block() {
            return Err(KvError::SwapInWouldOverwrite { seq, block });
        }
        self.check_start(seq, needed)?;

        let mut s = self.swapped.remove(&seq).expect("checked above");
        let bs = self.config.block_size;
        for (group, t) in s.tables.iter_mut().enumerate() {
            let released = t.num_released as usize;
            for b in t.blocks[released..].iter_mut() {
                let h = *b;
                let host = self
                    .host
                    .as_mut()
                    .expect("a swapped sequence implies a host tier");
                let d = match host.dev_of(h) {
                    Some(d) => {
                        self.pool.incref(d).expect("an associated device block is held");
                        d
                    }
                    None => {
                        let d = take_block(&mut self.pool, &mut self.prefix, &mut self.stats);
                        let host = self.host.as_mut().expect("checked");
                        host.swap_in.push(BlockCopy {
                            src: h,
                            dst: d,
                            num_slots: bs,
                            group: group as u32,
                        });
                        self.stats.swap_in_copies += 1;
                        if host.pool.ref_count(h).expect("held") > 1 {
                            // Other swapped holders remain: they will share `d`.
                            host.associate(d, h);
                        }
                        d
                    }
                };
                self.host.as_mut().expect("checked").release_host(h);
                *b = d;
            }
            // A partially filled tail that is shared, or that a swapped sharer may
            // come back to share, must copy before it is written.
            let partial = t.num_tokens.get() % bs != 0;
            t.tail_maybe_shared = partial
                && t.blocks.last().is_some_and(|&d| {
                    self.pool.ref_count(d).is_ok_and(|r| r > 1)
                        || self.host.as_ref().is_some_and(|h| h.host_of(d).is_some())
                        || self.prefix.as_ref().is_some_and(|p| p.index.hash_of(d).is_some())
                });
        }
        if let Some(p) = &mut self.prefix {
            let cache = s.cache.as_deref().expect("caching on: the sequence has a cache");
            p.index_swapped_in(cache, &s.tables);
        }
        self.seqs.insert(seq, s);
        self.stats.swap_ins += 1;
        Ok(())
    }

    /// A free device block a queued copy-on-write copy reads or writes: a
    /// fresh block taken now could be it, and a swap-in into it would run
    /// before the copy (which would then read, or overwrite, the new content).
    pub(super) fn queued_copy_on_free_block(&self) -> Option<BlockId> {
        self.copies.iter().find_map(|c| {
            [c.src, c.dst]
                .into_iter()
                .find(|&b| self.pool.ref_count(b) == Ok(0))
        })
    }

    /// `free` of a sequence that is not on the device.
    pub(super) fn free_swapped(&mut self, seq: SeqId) -> Result<(), KvError> {
        let Seq { tables, cache, .. } = self
            .swapped
            .remove(&seq)
            .ok_or(KvError::UnknownSequence { seq })?;
        let host = self
            .host
            .as_mut()
            .expect("a swapped sequence implies a host tier");
        for t in &tables {
            for &h in t.live_blocks().iter().rev() {
                host.release_host(h);
            }
        }
        self.recycle(tables, cache);
        self.stats.sequences_freed += 1;
        Ok(())
    }

    /// Swap copies queued and not yet drained: (swap-out, swap-in).
    pub fn pending_swaps(&self) -> (&[BlockCopy], &[BlockCopy]) {
        match &self.host {
            Some(h) => (&h.swap_out, &h.swap_in),
            None => (&[], &[]),
        }
    }

    /// Host-tier invariants (see the module docs).
    pub(super) fn check_host_invariants(&self) -> Result<(), InvariantViolation> {
        let bad = |what: String| Err(InvariantViolation::new(what));
        let Some(host) = &self.host else {
            return match self.swapped.keys().next() {
                Some(seq) => bad(format!("{seq:?} is swapped out but there is no host tier")),
                None => Ok(()),
            };
        };
        host.pool.check_invariants()?;
        let n = host.pool.num_blocks() as usize;
        let mut refs = vec![0u32; n];
        for &h in &host.release_on_drain {
            if h.index() >= n {
                return bad(format!("held host block {h:?} is not in the host pool"));
            }
            refs[h.index()] += 1;
        }
        for (&seq, s) in &self.swapped {
            if self.seqs.contains_key(&seq) {
                return bad(format!("{seq:?} is both on the device and swapped out"));
            }
            for t in &s.tables {
                if t.blocks.len() as u64 != self.blocks_for(t.num_tokens.get() as u64) {
                    return bad(format!(
                        "swapped {seq:?} holds {} host blocks for {} tokens",
                        t.blocks.len(),
                        t.num_tokens.get()
                    ));
                }
                let live = t.live_blocks();
                if t.blocks[..t.num_released as usize].iter().any(|b| !b.is_null()) {
                    return bad(format!(
                        "swapped {seq:?} holds a block among its released entries"
                    ));
                }
                for (i, &h) in live.iter().enumerate() {
                    if h.index() >= n {
                        return bad(format!("swapped {seq:?} holds unknown host block {h:?}"));
                    }
                    if live[..i].contains(&h) {
                        return bad(format!("swapped {seq:?} holds host block {h:?} twice"));
                    }
                    refs[h.index()] += 1;
                }
            }
        }
        for (i, &r) in refs.iter().enumerate() {
            let rc = host.pool.ref_count(BlockId(i as u32)).expect("in range");
            if rc != r {
                return bad(format!(
                    "host block {i} has ref count {rc} but {r} swapped tables (or the drain) hold it"
                ));
            }
        }
        for (d, &h) in host.host_of.iter().enumerate() {
            if h == NIL {
                continue;
            }
            let (dev, hb) = (BlockId(d as u32), BlockId(h));
            if host.dev_of.get(h as usize) != Some(&(d as u32)) {
                return bad(format!(
                    "device block {d} is associated with host block {h} but not back"
                ));
            }
            if self.pool.ref_count(dev) == Ok(0) || host.pool.ref_count(hb) == Ok(0) {
                return bad(format!("association {dev:?} <-> host {hb:?} names a free block"));
            }
            if host.release_on_drain.contains(&hb) {
                return bad(format!(
                    "association {dev:?} <-> host {hb:?} names a released host block"
                ));
            }
        }
        let linked = host.dev_of.iter().filter(|&&d| d != NIL).count();
        let linked_back = host.host_of.iter().filter(|&&h| h != NIL).count();
        if linked != linked_back {
            return bad(format!(
                "{linked} host blocks but {linked_back} device blocks are associated"
            ));
        }
        let bs = self.config.block_size;
        for (&seq, s) in &self.seqs {
            for t in &s.tables {
                let last = t.blocks.last().copied().filter(|b| !b.is_null());
                if let (Some(d), true) = (last, t.num_tokens.get() % bs != 0) {
                    if host.host_of(d).is_some() && !t.tail_maybe_shared {
                        return bad(format!(
                            "{seq:?}'s partially filled tail {d:?} has a host copy but is not flagged: an in-place write would make the copy stale"
                        ));
                    }
                }
            }
        }
        let hn = n;
        let dn = self.pool.num_blocks() as usize;
        if let Some(c) = host
            .swap_out
            .iter()
            .find(|c| c.src.index() >= dn || c.dst.index() >= hn)
            .or_else(|| {
                host.swap_in
                    .iter()
                    .find(|c| c.src.index() >= hn || c.dst.index() >= dn)
            })
        {
            return bad(format!("queued swap copy {c:?} names an unknown block"));
        }
        Ok(())
    }
}
