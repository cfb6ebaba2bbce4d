//! The KV cache manager: sequences, their block tables, sharing and
//! copy-on-write, admission control, and the block operations the engine runs.
//!
//! Invariants (checked by [`KvCacheManager::check_invariants`]):
//! - every pool invariant (see [`crate::pool`]);
//! - each block's reference count equals the number of block tables holding it
//!   (a table never holds a block twice);
//! - each table holds exactly `blocks_for(num_tokens)` blocks and at most
//!   `max_model_len` tokens, so a sequence wastes fewer than `block_size` slots;
//! - every queued copy names blocks of this pool.
//!
//! Every mutating call checks first and mutates after: a call that returns an
//! error has changed nothing.
//!
//! With prefix caching on (see `caching.rs`), also:
//! - every hash in the prefix index names a block that carries it, and the
//!   hash each sequence computed for its full blocks matches its tokens;
//! - a partially filled block that a sequence may write in place carries no hash.
//!
//! With a host tier (`num_host_blocks > 0`, see `swap.rs`), also: the host
//! pool's invariants, host ref counts equal to the swapped tables holding each
//! host block (plus blocks held until the next drain), and a consistent
//! device ↔ host association of blocks with identical content.
//!
//! Start reading at [`KvCacheManager::append`]: it is the hot path and shows the
//! copy-on-write rule.

use std::ops::Range;

use crate::error::KvError;
use crate::ids::{BlockId, SeqId, Slot, TokenId};
use crate::pool::BlockPool;
use crate::prefix::{KvEvent, PrefixKeys};
use crate::sizing::blocks_for;
use crate::table::{BlockTable, BlockVec};

mod accounting;
mod admission;
mod caching;
mod lookup;
mod seq_map;
mod shared;
mod swap;
#[cfg(test)]
mod swap_tests;
#[cfg(test)]
mod tests;
mod types;

pub(crate) use seq_map::SeqMap;
pub use shared::SharedKvCacheManager;
pub use types::{
    Admission, AdmissionRefusal, Allocation, BlockCopy, BlockOps, KvCacheConfig, KvStats, KvUsage,
};

/// One allocated sequence: its block table, and (with prefix caching on) its
/// tokens and block hashes, boxed so that the map entries the hot path walks
/// stay one cache line (see the `sequence_entries_fit_a_cache_line` test).
#[derive(Debug, Clone)]
struct Seq {
    table: BlockTable,
    cache: Option<Box<SeqCache>>,
}

use caching::{PrefixState, SeqCache};
use swap::HostTier;

/// The paged KV cache manager.
///
/// ```
/// use pagedkv::{Admission, BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
/// let mut kv = KvCacheManager::new(KvCacheConfig {
///     num_blocks: 64, block_size: 16, max_model_len: 512, ..Default::default()
/// }).unwrap();
/// let prompt: Vec<u32> = (0..20).collect();
/// assert_eq!(kv.check_admission(&prompt, &PrefixKeys::default(), 100), Admission::Now);
/// kv.allocate(SeqId(1), &prompt).unwrap();      // 2 blocks
/// let mut ops = BlockOps::default();
/// kv.drain_ops(&mut ops);                       // the prefill step: the engine runs it
/// kv.fork(SeqId(1), SeqId(2)).unwrap();         // shares both
/// kv.append(SeqId(2), &[7]).unwrap();           // shared partial block: copy-on-write
/// kv.drain_ops(&mut ops);
/// assert_eq!(ops.copies.len(), 1);              // run before the step's kernels
/// assert_eq!(kv.block_table(SeqId(2)).unwrap().len(), 2);
/// kv.free(SeqId(1)).unwrap();
/// kv.free(SeqId(2)).unwrap();
/// assert_eq!(kv.usage().free_blocks, 64);
/// kv.check_invariants().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    config: KvCacheConfig,
    watermark_blocks: u32,
    pool: BlockPool,
    seqs: SeqMap<Seq>,
    /// Storage of freed sequences, reused by the next allocation or fork.
    spare: Vec<(BlockVec, Option<Box<SeqCache>>)>,
    copies: Vec<BlockCopy>,
    /// The host (swap) tier; `None` when `num_host_blocks` is 0.
    host: Option<HostTier>,
    /// Swapped-out sequences; their tables hold host block ids.
    swapped: SeqMap<Seq>,
    /// Prefix index and KV events; `None` when prefix caching is off.
    prefix: Option<PrefixState>,
    stats: KvStats,
    /// Counts `drain_ops` calls (from 1, wrapping back to 1): a table
    /// appended to in the current step carries the current epoch.
    epoch: u32,
}

impl KvCacheManager {
    /// A manager over a fresh pool of `config.num_blocks` blocks.
    pub fn new(config: KvCacheConfig) -> Result<Self, KvError> {
        config.validate()?;
        let pool =
            BlockPool::new(config.num_blocks).expect("validate() bounds num_blocks to the pool's range");
        let watermark_blocks = (config.watermark * config.num_blocks as f64).floor() as u32;
        let prefix = config.enable_prefix_caching.then(|| PrefixState::new(&config));
        let host = HostTier::new(&config);
        Ok(KvCacheManager {
            config,
            watermark_blocks,
            pool,
            seqs: SeqMap::default(),
            spare: Vec::new(),
            copies: Vec::new(),
            host,
            swapped: SeqMap::default(),
            prefix,
            stats: KvStats::default(),
            epoch: 1,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &KvCacheConfig {
        &self.config
    }

    /// Tokens per block.
    #[inline]
    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// Free blocks kept back from new admissions for running sequences to grow.
    pub fn watermark_blocks(&self) -> u32 {
        self.watermark_blocks
    }

    /// Free blocks now.
    #[inline]
    pub fn num_free_blocks(&self) -> u32 {
        self.pool.num_free()
    }

    /// The pool, read-only (for policies and tests that inspect it).
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    #[inline]
    fn blocks_for(&self, num_tokens: u64) -> u64 {
        blocks_for(num_tokens, self.config.block_size as u64)
    }

    /// Allocates blocks for a new sequence's prompt (with prefix caching on,
    /// reusing its longest cached prefix under the default [`PrefixKeys`]).
    ///
    /// Errors (nothing changes): [`KvError::DuplicateSequence`],
    /// [`KvError::EmptyPrompt`], [`KvError::ExceedsMaxModelLen`],
    /// [`KvError::OutOfBlocks`], [`KvError::BelowWatermark`] (while other
    /// sequences are on the device, the watermark's blocks stay free: the
    /// rule [`Self::check_admission`] answers by, so a request admitted `Now`
    /// always allocates).
    pub fn allocate(&mut self, seq: SeqId, prompt: &[TokenId]) -> Result<Allocation, KvError> {
        self.allocate_with(seq, prompt, &PrefixKeys::default())
    }

    /// [`Self::allocate`] with the keys that decide prefix sharing (tenant
    /// salt, LoRA adapter, multimodal spans). The keys are ignored when prefix
    /// caching is off.
    ///
    /// With prefix caching on, the leading full blocks of the prompt whose
    /// chained hashes are cached are shared instead of allocated, and
    /// [`Allocation::cached_tokens`] says how many prompt tokens the engine may
    /// skip. At least one prompt token is always left to compute (the engine
    /// needs its logits), so a fully cached prompt recomputes its last block.
    /// The prompt's other full blocks are cached at once: a sequence that hits
    /// them in the same step reads keys and values that step writes, so write
    /// a step's new K/V before attending (per layer, as paged attention does).
    pub fn allocate_with(
        &mut self,
        seq: SeqId,
        prompt: &[TokenId],
        keys: &PrefixKeys,
    ) -> Result<Allocation, KvError> {
        if self.seqs.contains_key(&seq) || self.swapped.contains_key(&seq) {
            return Err(KvError::DuplicateSequence { seq });
        }
        if prompt.is_empty() {
            return Err(KvError::EmptyPrompt { seq });
        }
        let tokens = prompt.len() as u64;
        self.check_len(seq, tokens)?;
        if self.prefix.is_some() {
            return self.allocate_cached(seq, prompt, keys);
        }
        let needed = self.blocks_for(tokens);
        self.check_start(seq, needed)?;

        let (storage, _) = self.spare.pop().unwrap_or_default();
        let mut table = BlockTable::with_storage(storage, self.config.block_size);
        for _ in 0..needed {
            table.blocks.push(
                self.pool
                    .allocate()
                    .expect("free blocks were counted before allocating"),
            );
        }
        table.num_tokens = tokens as u32;
        table.appended_epoch = self.epoch;
        self.seqs.insert(seq, Seq { table, cache: None });
        self.stats.sequences_allocated += 1;
        Ok(Allocation {
            num_blocks: needed as u32,
            cached_tokens: 0,
        })
    }

    /// Appends tokens to a sequence: one (decode) or many (chunked prefill,
    /// speculative tokens). Takes a new block only when the last one is full.
    ///
    /// Copy-on-write: if the last block is partially filled and shared with
    /// another sequence, this sequence gets a fresh block first and a
    /// [`BlockCopy`] of the filled slots is queued for [`Self::drain_ops`].
    /// Full shared blocks stay shared.
    ///
    /// Errors (nothing changes): [`KvError::UnknownSequence`],
    /// [`KvError::ExceedsMaxModelLen`], [`KvError::OutOfBlocks`].
    #[inline]
    pub fn append(&mut self, seq: SeqId, tokens: &[TokenId]) -> Result<(), KvError> {
        self.append_then_slots(seq, tokens, None)
    }

    /// [`Self::append`], then the slots of positions `range` of the sequence
    /// (as it is after the append) pushed to `out`, with one lookup of the
    /// sequence: a scheduler's per-sequence work in a step (for a decode,
    /// `len..len + 1`; for a prefill chunk whose blocks were taken earlier,
    /// `tokens` may be empty).
    ///
    /// Errors (nothing changes, nothing is pushed): those of `append`, and
    /// [`KvError::PositionOutOfRange`] when `range` passes the new length.
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
        self.append_then_slots(seq, tokens, Some((range, out)))
    }

    /// `append`, and with `slots` also the slots of a range after it.
    #[inline(always)]
    fn append_then_slots(
        &mut self,
        seq: SeqId,
        tokens: &[TokenId],
        slots: Option<(Range<u64>, &mut Vec<Slot>)>,
    ) -> Result<(), KvError> {
        let max_model_len = self.config.max_model_len;
        let epoch = self.epoch;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return Err(self.absent(seq));
        };
        let table = &mut s.table;
        let new_len = table.num_tokens as u64 + tokens.len() as u64;
        if new_len > max_model_len as u64 {
            return Err(KvError::ExceedsMaxModelLen {
                seq,
                tokens: new_len,
                max_model_len,
            });
        }
        if let Some((range, _)) = &slots {
            if range.start > range.end || range.end > new_len {
                return Err(KvError::PositionOutOfRange {
                    seq,
                    pos: range.end,
                    num_tokens: new_len,
                });
            }
        }
        // Fast path (almost every decode step): the tokens fit in the free
        // slots of a last block this table holds alone. No division, no pool access.
        let capacity = table.blocks.len() as u64 * self.config.block_size as u64;
        if new_len <= capacity && !table.tail_maybe_shared {
            table.num_tokens = new_len as u32;
            if !tokens.is_empty() {
                table.appended_epoch = epoch;
            }
            after_append(&mut self.prefix, s, tokens, slots);
            return Ok(());
        }
        if tokens.is_empty() && slots.is_none() {
            return Ok(());
        }
        if !tokens.is_empty() {
            self.append_slow(seq, new_len)?;
        }
        let s = self.seqs.get_mut(&seq).expect("looked up above");
        if !tokens.is_empty() {
            s.table.appended_epoch = epoch;
        }
        after_append(&mut self.prefix, s, tokens, slots);
        Ok(())
    }

    /// `append` when it takes blocks or may have to copy the last block.
    fn append_slow(&mut self, seq: SeqId, new_len: u64) -> Result<(), KvError> {
        let bs = self.config.block_size as u64;
        let table = &mut self
            .seqs
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence { seq })?
            .table;
        let old_len = table.num_tokens as u64;
        let grow = blocks_for(new_len, bs) - table.blocks.len() as u64;
        let filled = (old_len % bs) as u32;
        let last = table.blocks.last().copied();
        let cow = match last {
            Some(b) if filled != 0 && table.tail_maybe_shared => tail_needs_copy(&self.pool, &self.prefix, b),
            _ => false,
        };
        let needed = grow + cow as u64;
        if needed > self.pool.num_free() as u64 {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks {
                needed,
                free: self.pool.num_free() as u64,
            });
        }
        if cow {
            let src = last.expect("cow implies a last block");
            let dst = take_block(&mut self.pool, &mut self.prefix, &mut self.stats);
            release(&mut self.pool, &mut self.prefix, &mut self.host, src);
            *table.blocks.last_mut().expect("cow implies a last block") = dst;
            self.copies.push(BlockCopy {
                src,
                dst,
                num_slots: filled,
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
            table
                .blocks
                .push(take_block(&mut self.pool, &mut self.prefix, &mut self.stats));
        }
        // The last block is now fresh, copied, or found exclusive.
        table.tail_maybe_shared = false;
        table.num_tokens = new_len as u32;
        Ok(())
    }

    /// Makes `child` share every block of `parent` (parallel sampling, beam
    /// search). Needs no free block: the first divergent write copies.
    ///
    /// The parent's tokens must have been handed to the engine to compute
    /// (a `drain_ops` since its last allocate or append): a later
    /// copy-on-write copies slots as they are at the start of the step that
    /// runs it, so forking tokens not yet computed would copy nothing.
    ///
    /// Errors (nothing changes): `DuplicateSequence`, `UnknownSequence`,
    /// `SequenceSwapped`, `NotYetComputed`.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), KvError> {
        if self.seqs.contains_key(&child) || self.swapped.contains_key(&child) {
            return Err(KvError::DuplicateSequence { seq: child });
        }
        let Some(src) = self.seqs.get(&parent) else {
            return Err(self.absent(parent));
        };
        if self.appended_this_step(&src.table) {
            return Err(KvError::NotYetComputed { seq: parent });
        }
        let (storage, spare_cache) = self.spare.pop().unwrap_or_default();
        let mut table = BlockTable::with_storage(storage, self.config.block_size);
        table.blocks.extend_from_slice(&src.table.blocks);
        table.num_tokens = src.table.num_tokens;
        table.tail_maybe_shared = true;
        let cache = src.cache.as_deref().map(|parent| {
            let mut c = spare_cache.unwrap_or_default();
            c.clone_from_parent(parent);
            c
        });
        for &b in &table.blocks {
            self.pool.incref(b).expect("a live table's blocks are allocated");
        }
        self.seqs.insert(child, Seq { table, cache });
        self.seqs
            .get_mut(&parent)
            .expect("checked above")
            .table
            .tail_maybe_shared = true;
        self.stats.forks += 1;
        Ok(())
    }

    /// Shortens a sequence to `new_len` tokens (rejected speculative tokens,
    /// beam trimming), dropping this sequence's references to blocks past the
    /// end, last block first. Shared blocks stay with their other holders.
    pub fn truncate(&mut self, seq: SeqId, new_len: u64) -> Result<(), KvError> {
        let bs = self.config.block_size as u64;
        let Some(s) = self.seqs.get_mut(&seq) else {
            return Err(self.absent(seq));
        };
        let table = &mut s.table;
        let num_tokens = table.num_tokens as u64;
        if new_len > num_tokens {
            return Err(KvError::TruncateBeyondLength {
                seq,
                new_len,
                num_tokens,
            });
        }
        let keep = blocks_for(new_len, bs) as usize;
        while table.blocks.len() > keep {
            let b = table.blocks.pop().expect("len > keep >= 0");
            release(&mut self.pool, &mut self.prefix, &mut self.host, b);
        }
        table.num_tokens = new_len as u32;
        // A new partially filled tail may be written in place: its host copy goes stale.
        if let (Some(h), Some(&b), true) = (&mut self.host, table.blocks.last(), new_len % bs != 0) {
            h.forget_device(b);
        }
        // An inner block can be shared; it may now be the partially filled last one.
        table.tail_maybe_shared = table
            .blocks
            .last()
            .is_some_and(|&b| self.pool.ref_count(b).expect("tables hold pool blocks") > 1);
        if let Some(p) = &mut self.prefix {
            let cache = s
                .cache
                .as_deref_mut()
                .expect("caching on: the sequence has a cache");
            if p.truncated(cache, table, &self.pool) {
                table.tail_maybe_shared = true;
            }
        }
        Ok(())
    }

    /// Frees a sequence: drops its references, last block first (so a prefix
    /// outlives its suffix in the free queue's eviction order).
    ///
    /// A swapped-out sequence can be freed too: its host blocks are released
    /// (they return to the host pool at the next [`Self::drain_ops`]).
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        let Some(Seq { table, cache }) = self.seqs.remove(&seq) else {
            return self.free_swapped(seq);
        };
        if self.prefix.is_none() && self.host.is_none() {
            // The plain allocator: nothing to keep cached, no host copy to forget.
            for &b in table.blocks.iter().rev() {
                self.pool.decref(b).expect("a live table's blocks are allocated");
            }
        } else {
            for &b in table.blocks.iter().rev() {
                release(&mut self.pool, &mut self.prefix, &mut self.host, b);
            }
        }
        self.spare.push((table.into_storage(), cache));
        self.stats.sequences_freed += 1;
        Ok(())
    }

    /// Moves the block operations queued since the last call into `ops`
    /// (clearing it first). Once `ops` has capacity, this allocates nothing.
    /// The engine runs them, in order, before the step's kernels.
    ///
    /// Also returns to the host pool the host blocks released since the last
    /// call (held until now so that no swap-out can overwrite a host block a
    /// queued swap-in still reads).
    ///
    /// Draining hands the step to the engine, which must then run it: the
    /// blocks filled since the last call become hittable by later prompts
    /// (with prefix caching on; announced in KV events), and the sequences
    /// appended to since then may be forked and swapped out from now on.
    pub fn drain_ops(&mut self, ops: &mut BlockOps) {
        ops.clear();
        ops.copies.extend_from_slice(&self.copies);
        self.copies.clear();
        if let Some(h) = &mut self.host {
            h.drain_into(ops);
        }
        if let Some(p) = &mut self.prefix {
            p.commit_pending(&mut self.pool);
        }
        self.next_epoch();
    }

    /// Starts a new step for the "appended since the last drain" checks.
    fn next_epoch(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Once every 2^32 drains: no table may keep a stale epoch that
            // would read as the new one.
            for s in self.seqs.values_mut() {
                s.table.appended_epoch = 0;
            }
            self.epoch = 1;
        }
    }

    /// Whether the sequence's table was allocated or appended to since the
    /// last `drain_ops` (its new tokens are not computed yet).
    #[inline]
    fn appended_this_step(&self, t: &BlockTable) -> bool {
        t.appended_epoch == self.epoch
    }

    /// The copy-on-write copies (device → device) queued since the last
    /// [`Self::drain_ops`]; the queued swap copies are [`Self::pending_swaps`].
    pub fn pending_copies(&self) -> &[BlockCopy] {
        &self.copies
    }

    /// Counters since construction.
    pub fn stats(&self) -> &KvStats {
        &self.stats
    }

    /// Drains the KV events queued since the last call into `out` (cleared
    /// first). Empty unless `enable_kv_events` is on.
    pub fn drain_events(&mut self, out: &mut Vec<KvEvent>) {
        out.clear();
        if let Some(events) = self.prefix.as_mut().and_then(|p| p.events.as_mut()) {
            out.append(events);
        }
    }

    fn check_len(&self, seq: SeqId, tokens: u64) -> Result<(), KvError> {
        if tokens > self.config.max_model_len as u64 {
            return Err(KvError::ExceedsMaxModelLen {
                seq,
                tokens,
                max_model_len: self.config.max_model_len,
            });
        }
        Ok(())
    }

    /// Whether a new sequence (or one coming back from the host) may take
    /// `needed` blocks: they are free, with the watermark to spare while
    /// other sequences are on the device.
    fn check_start(&mut self, seq: SeqId, needed: u64) -> Result<(), KvError> {
        let free = self.pool.num_free() as u64;
        if needed > free {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks { needed, free });
        }
        if needed + self.reserve_for_growth() > free {
            return Err(KvError::BelowWatermark {
                seq,
                needed,
                free,
                watermark_blocks: self.watermark_blocks,
            });
        }
        Ok(())
    }
}

/// The rest of an append once the table holds the tokens: remember them for
/// prefix caching (hashing blocks they filled) and push the asked slots.
#[inline(always)]
fn after_append(
    prefix: &mut Option<PrefixState>,
    s: &mut Seq,
    tokens: &[TokenId],
    slots: Option<(Range<u64>, &mut Vec<Slot>)>,
) {
    if let (Some(p), false) = (prefix, tokens.is_empty()) {
        let cache = s
            .cache
            .as_deref_mut()
            .expect("caching on: the sequence has a cache");
        p.record_tokens(cache, &s.table, tokens);
    }
    if let Some((range, out)) = slots {
        // Both ends were checked against the new length, which is a u32.
        let ok = s.table.slots_into(range.start as u32..range.end as u32, out);
        debug_assert!(ok);
    }
}

/// Whether a write into the partially filled tail `b` must copy it first:
/// it is shared, or cached (its content stays cached: see
/// `caching::PrefixState::truncated`).
#[inline]
fn tail_needs_copy(pool: &BlockPool, prefix: &Option<PrefixState>, b: BlockId) -> bool {
    pool.ref_count(b).expect("tables hold pool blocks") > 1
        || prefix.as_ref().is_some_and(|p| p.index.hash_of(b).is_some())
}

/// A block from the head of the free queue; with prefix caching on, the hash
/// it carried (an evicted cached block) is dropped first.
#[inline]
fn take_block(pool: &mut BlockPool, prefix: &mut Option<PrefixState>, stats: &mut KvStats) -> BlockId {
    let b = pool
        .allocate()
        .expect("free blocks were counted before allocating");
    if let Some(p) = prefix {
        p.evicted(b, stats);
    }
    b
}

/// Drops one reference. With prefix caching on, a block that becomes free
/// keeps its hash and joins the LRU tail, or, holding nothing cached, goes to
/// the head to be reused first. A block that becomes free loses its
/// association with a host copy.
#[inline]
fn release(pool: &mut BlockPool, prefix: &mut Option<PrefixState>, host: &mut Option<HostTier>, b: BlockId) {
    let cached = match prefix {
        None => true,
        Some(p) => {
            // A cached block about to become free hands its hash to a
            // duplicate in use (the content stays findable, no event).
            if p.index.has_duplicates() && pool.ref_count(b) == Ok(1) {
                p.index.promote_duplicate(b);
            }
            p.index.hash_of(b).is_some()
        }
    };
    let freed = if cached {
        pool.decref(b)
    } else {
        pool.decref_evict_first(b)
    }
    .expect("a live table's blocks are allocated");
    if freed {
        // A pending block freed before its step was handed over was never
        // written: it must not become hittable. A freed duplicate stops being one.
        if let (false, Some(p)) = (cached, prefix) {
            p.index.remove_block(b);
        }
        if let Some(h) = host {
            h.forget_device(b);
        }
    }
}
