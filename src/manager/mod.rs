//! The KV cache manager: sequences, their block tables, sharing and
//! copy-on-write, admission control, and the block operations the engine runs.
//!
//! A model's layers form one or more KV cache groups (one per attention kind:
//! full, sliding window, chunked local; see [`crate::AttentionKind`]). Every
//! group draws from the one block pool, and a sequence holds one
//! [`BlockTable`] per group: the same token positions, different blocks. A
//! sliding-window or chunked local group releases the blocks its attention
//! will never read again as the sequence grows, leaving [`BlockId::NULL`]
//! placeholders in its table.
//!
//! Invariants (checked by [`KvCacheManager::check_invariants`]):
//! - every pool invariant (see [`crate::pool`]);
//! - each block's reference count equals the number of block tables holding it
//!   (a table never holds a block twice, and a block belongs to one group);
//! - each table holds exactly `blocks_for(num_tokens)` entries and at most
//!   `max_model_len` tokens, so a sequence wastes fewer than `block_size` slots
//!   per group; its leading entries are placeholders only where its group's
//!   attention reads them no more, every other entry a real block;
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
//! device ↔ host association of blocks with identical content. With prefix
//! offload on (see `offload.rs`), also: the host index of offloaded blocks is
//! a bijection, no swapped table holds a host block carrying offloaded
//! content, and queued offloads name device blocks.
//!
//! Start reading at [`KvCacheManager::append`] (in `append.rs`): it is the hot
//! path and shows the copy-on-write and window-release rules.

use crate::error::KvError;
use crate::ids::{BlockId, SeqId, TokenId};
use crate::pool::BlockPool;
use crate::prefix::{KvEvent, PrefixKeys};
use crate::sizing::{blocks_for, AttentionKind};
use crate::table::BlockTable;

mod accounting;
mod admission;
mod append;
mod caching;
mod eviction;
mod lookup;
mod offload;
#[cfg(test)]
mod offload_tests;
mod seq_map;
mod shared;
mod swap;
#[cfg(test)]
mod swap_tests;
mod tables;
#[cfg(test)]
mod tests;
mod types;

pub use eviction::{BlockUse, Eviction, EvictionPolicy, QueueEnd};
pub use lookup::GroupView;
pub(crate) use seq_map::{SeqMap, SeqSlab};
pub use shared::SharedKvCacheManager;
pub use types::{
    Admission, AdmissionRefusal, Allocation, BlockCopy, BlockOps, KvCacheConfig, KvStats, KvUsage,
    PrefixOffload, MAX_GROUPS,
};

/// Freed sequences whose storage is kept for reuse: a warm decode loop
/// allocates nothing, and a burst of frees does not pin memory for good.
const MAX_SPARE: usize = 256;

/// Freed storage larger than this (in blocks per table) is not kept.
const MAX_SPARE_BLOCKS: usize = 4096;

/// One allocated sequence: its block table in each group, and (with prefix
/// caching on) its tokens and block hashes, boxed so that the map entries the
/// hot path walks stay small.
#[derive(Debug, Clone)]
// The step fields, then the tables (whose hot fields come first): what a
// decode step touches sits at the start, after the slab entry's hot word.
#[repr(C)]
struct Seq {
    /// The step (drain epoch) of the last allocate or append: the sequence's
    /// newest tokens are uncomputed while it is the current one.
    appended_epoch: u32,
    /// Tokens held when that step's first allocate or append came: the ones
    /// computed by earlier steps (what a window's release is measured from).
    step_start_len: u32,
    tables: Tables,
    cache: Option<Box<SeqCache>>,
}

impl Seq {
    #[inline]
    fn num_tokens(&self) -> u32 {
        self.tables[0].num_tokens.get()
    }

    /// Records that this step appends to the sequence, holding `len` tokens
    /// when its first append of the step comes.
    #[inline(always)]
    fn mark_step(&mut self, epoch: u32, len: u32) {
        if self.appended_epoch != epoch {
            self.appended_epoch = epoch;
            self.step_start_len = len;
        }
    }
}

impl seq_map::CatchUp for Seq {
    #[inline(always)]
    fn catch_up(&self) {
        self.tables.catch_up();
    }
}

use caching::{PrefixState, SeqCache};
use swap::HostTier;
use tables::Tables;

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
///
/// A hybrid model: a full-attention group and a sliding-window group of 8
/// tokens share one pool; the window's table releases blocks as the sequence grows.
///
/// ```
/// use pagedkv::{AttentionKind, BlockId, BlockOps, KvCacheConfig, KvCacheManager, SeqId};
/// let mut kv = KvCacheManager::new(KvCacheConfig {
///     num_blocks: 64, block_size: 4,
///     groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 8 }],
///     ..Default::default()
/// }).unwrap();
/// kv.allocate(SeqId(1), &[0; 8]).unwrap();            // 2 blocks in each group
/// let mut ops = BlockOps::default();
/// for t in 0..12 {
///     kv.drain_ops(&mut ops);                         // the previous step runs
///     kv.append(SeqId(1), &[t]).unwrap();             // one decode step
/// }
/// assert_eq!(kv.block_table(SeqId(1)).unwrap().len(), 5);       // all 20 tokens
/// // The last token (position 19) reads positions 12..=19: blocks 3 and 4.
/// let window = kv.group(1).unwrap().block_table(SeqId(1)).unwrap();
/// assert_eq!(&window[..3], &[BlockId::NULL; 3]);                // read no more: released
/// assert_eq!(kv.usage().used_blocks, 5 + 2);
/// ```
#[derive(Debug, Clone)]
pub struct KvCacheManager {
    config: KvCacheConfig,
    watermark_blocks: u32,
    pool: BlockPool,
    seqs: SeqSlab<Seq>,
    /// Storage of freed sequences, reused by the next allocation or fork
    /// (at most `MAX_SPARE`, see `recycle`).
    spare: Vec<(Tables, Option<Box<SeqCache>>)>,
    copies: Vec<BlockCopy>,
    /// The host (swap) tier; `None` when `num_host_blocks` is 0.
    host: Option<HostTier>,
    /// Swapped-out sequences; their tables hold host block ids.
    swapped: SeqMap<Seq>,
    /// Prefix index and KV events; `None` when prefix caching is off.
    prefix: Option<PrefixState>,
    stats: KvStats,
    /// Counts `drain_ops` calls (from 1, wrapping back to 1): a sequence
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
            seqs: SeqSlab::default(),
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

    /// The attention kind of each KV cache group, in group order.
    #[inline]
    pub fn groups(&self) -> &[AttentionKind] {
        &self.config.groups
    }

    /// KV cache groups (1 unless the model mixes attention kinds).
    #[inline]
    pub fn num_groups(&self) -> usize {
        self.config.groups.len()
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

    /// Keeps a freed sequence's storage for the next allocation or fork, up
    /// to [`MAX_SPARE`] of them, and none whose table storage grew past
    /// [`MAX_SPARE_BLOCKS`] blocks: after a burst of frees, or one very long
    /// sequence, the memory goes back to the allocator instead of staying
    /// reserved for good.
    fn recycle(&mut self, tables: Tables, cache: Option<Box<SeqCache>>) {
        let large = tables.iter().any(|t| t.blocks.capacity() > MAX_SPARE_BLOCKS);
        if self.spare.len() < MAX_SPARE && !large {
            self.spare.push((tables, cache));
        }
    }

    /// Fresh tables for a new sequence, one per group, reusing a freed
    /// sequence's storage when there is one.
    fn new_seq_storage(&mut self) -> (Tables, Option<Box<SeqCache>>) {
        let (mut tables, cache) = self.spare.pop().unwrap_or_default();
        let bs = self.config.block_size;
        let groups = &self.config.groups;
        tables.reset(groups.len(), |g, storage| {
            let mut t = BlockTable::with_storage(storage, bs);
            t.release_at = release_at(groups[g], 0, bs);
            t
        });
        (tables, cache)
    }

    /// Allocates blocks for a new sequence's prompt (with prefix caching on,
    /// reusing its longest cached prefix under the default [`PrefixKeys`]):
    /// in every KV cache group, a block for every prompt block (all of the
    /// prompt's tokens are computed in the step this allocation is for).
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
    /// In a sliding-window or chunked local group the hit needs only the
    /// blocks the group still reads at the hit point; the others become
    /// placeholders. The prompt's other full blocks become hittable once the
    /// step that computes them is handed to the engine (the next `drain_ops`).
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
        let per_group = self.blocks_for(tokens);
        let needed = per_group * self.num_groups() as u64;
        self.check_start(seq, needed)?;

        let (mut tables, _) = self.new_seq_storage();
        for t in tables.iter_mut() {
            self.pool
                .allocate_n(per_group as u32, &mut t.blocks)
                .expect("free blocks were counted before allocating");
            t.num_tokens.set(tokens as u32);
        }
        self.stats.blocks_taken += needed;
        self.seqs.insert(
            seq,
            Seq {
                tables,
                appended_epoch: self.epoch,
                step_start_len: 0,
                cache: None,
            },
        );
        self.stats.sequences_allocated += 1;
        Ok(Allocation {
            num_blocks: needed as u32,
            cached_tokens: 0,
        })
    }

    /// Makes `child` share every block of `parent` in every group (parallel
    /// sampling, beam search). Needs no free block: the first divergent write
    /// copies.
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
        if src.appended_epoch == self.epoch {
            return Err(KvError::NotYetComputed { seq: parent });
        }
        let (mut tables, spare_cache) = self.new_seq_storage();
        let src = self.seqs.get(&parent).expect("checked above");
        for (t, from) in tables.iter_mut().zip(&src.tables) {
            t.blocks.extend_from_slice(&from.blocks);
            t.num_tokens.set(from.num_tokens.get());
            t.num_released = from.num_released;
            t.release_at = from.release_at;
            t.tail_maybe_shared = true;
        }
        let cache = src.cache.as_deref().map(|parent| {
            let mut c = spare_cache.unwrap_or_default();
            c.clone_from_parent(parent);
            c
        });
        let (appended_epoch, step_start_len) = (src.appended_epoch, src.step_start_len);
        for t in &tables {
            for &b in t.live_blocks() {
                self.pool.incref(b).expect("a live table's blocks are allocated");
            }
        }
        self.seqs.insert(
            child,
            Seq {
                tables,
                appended_epoch,
                step_start_len,
                cache,
            },
        );
        for t in self
            .seqs
            .get_mut(&parent)
            .expect("checked above")
            .tables
            .iter_mut()
        {
            t.tail_maybe_shared = true;
        }
        self.stats.forks += 1;
        Ok(())
    }

    /// Shortens a sequence to `new_len` tokens (rejected speculative tokens,
    /// beam trimming), dropping this sequence's references to blocks past the
    /// end, last block first, in every group. Shared blocks stay with their
    /// other holders.
    ///
    /// Errors (nothing changes): `UnknownSequence`, `SequenceSwapped`,
    /// `TruncateBeyondLength`, and `TruncateIntoReleasedWindow` when a
    /// sliding-window or chunked local group already released blocks the
    /// shortened sequence's next token would read (roll back at most what the
    /// current window still holds: a speculative draft always qualifies).
    pub fn truncate(&mut self, seq: SeqId, new_len: u64) -> Result<(), KvError> {
        let bs = self.config.block_size;
        let Some(s) = self.seqs.get(&seq) else {
            return Err(self.absent(seq));
        };
        let num_tokens = s.num_tokens() as u64;
        if new_len > num_tokens {
            return Err(KvError::TruncateBeyondLength {
                seq,
                new_len,
                num_tokens,
            });
        }
        for (group, (t, kind)) in s.tables.iter().zip(&self.config.groups).enumerate() {
            let min_len = kind.first_len_reading_from(t.num_released as u64, bs);
            if new_len < min_len {
                return Err(KvError::TruncateIntoReleasedWindow {
                    seq,
                    group: group as u32,
                    new_len,
                    min_len,
                });
            }
        }
        let s = self.seqs.get_mut(&seq).expect("checked above");
        let keep = blocks_for(new_len, bs as u64) as usize;
        for t in s.tables.iter_mut() {
            while t.blocks.len() > keep {
                let b = t.blocks.pop().expect("len > keep >= 0");
                release(
                    &mut self.pool,
                    &mut self.prefix,
                    &mut self.host,
                    &mut self.stats,
                    b,
                );
            }
            t.num_tokens.set(new_len as u32);
            let last = t.blocks.last().copied().filter(|b| !b.is_null());
            // A new partially filled tail may be written in place: its host copy goes stale.
            if let (Some(h), Some(b), true) = (&mut self.host, last, new_len % bs as u64 != 0) {
                h.forget_device(b);
            }
            // An inner block can be shared; it may now be the partially filled last one.
            t.tail_maybe_shared =
                last.is_some_and(|b| self.pool.ref_count(b).expect("tables hold pool blocks") > 1);
        }
        s.step_start_len = s.step_start_len.min(new_len as u32);
        if let Some(p) = &mut self.prefix {
            let cache = s
                .cache
                .as_deref_mut()
                .expect("caching on: the sequence has a cache");
            p.truncated(cache, &mut s.tables, &self.pool);
        }
        Ok(())
    }

    /// Frees a sequence: drops its references in every group, last block
    /// first (so a prefix outlives its suffix in the free queue's eviction
    /// order).
    ///
    /// A swapped-out sequence can be freed too: its host blocks are released
    /// (they return to the host pool at the next [`Self::drain_ops`]).
    pub fn free(&mut self, seq: SeqId) -> Result<(), KvError> {
        let Some(Seq { tables, cache, .. }) = self.seqs.remove(&seq) else {
            return self.free_swapped(seq);
        };
        if self.prefix.is_none() && self.host.is_none() {
            // The plain allocator: nothing to keep cached, no host copy to forget.
            for t in &tables {
                self.stats.blocks_returned += self.pool.release_all_evict_first(t.live_blocks());
            }
        } else {
            self.release_kept(&tables);
        }
        self.recycle(tables, cache);
        self.stats.sequences_freed += 1;
        Ok(())
    }

    /// `free`'s release of a sequence's blocks when prefix caching or the
    /// host tier is on (out of line: the plain allocator's `free` stays small).
    #[inline(never)]
    fn release_kept(&mut self, tables: &Tables) {
        if let Some(p) = self
            .prefix
            .as_mut()
            .filter(|p| self.host.is_none() && p.releases_plainly())
        {
            // Prefix caching on its own (LRU, no duplicate, no offload): a
            // freed cached block joins the queue's tail, any other the stack,
            // and a pending one leaves the index (as `release` does, per block).
            for t in tables {
                self.stats.blocks_returned += self.pool.release_all(t.live_blocks(), |b| {
                    let cached = p.index.hash_of(b).is_some();
                    if !cached {
                        p.index.remove_block(b);
                    }
                    cached
                });
            }
            return;
        }
        for t in tables {
            for &b in t.live_blocks().iter().rev() {
                release(
                    &mut self.pool,
                    &mut self.prefix,
                    &mut self.host,
                    &mut self.stats,
                    b,
                );
            }
        }
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
    /// Blocks a window released may be handed out by the next step: run the
    /// steps in order (on one stream), as engines do.
    pub fn drain_ops(&mut self, ops: &mut BlockOps) {
        ops.clear();
        ops.copies.extend_from_slice(&self.copies);
        self.copies.clear();
        // Before the host blocks released this step return to the host pool.
        offload::offload_queued(
            &mut self.prefix,
            &mut self.host,
            &mut self.stats,
            self.config.block_size,
        );
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
            // Once every 2^32 drains: no sequence may keep a stale epoch that
            // would read as the new one.
            for s in self.seqs.values_mut() {
                s.appended_epoch = 0;
            }
            self.epoch = 1;
        }
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

/// The length (tokens before an append) from which a table of `kind` that
/// released `released` blocks releases the next one (`u32::MAX`: never).
#[inline]
fn release_at(kind: AttentionKind, released: u32, block_size: u32) -> u32 {
    kind.first_len_reading_from(released as u64 + 1, block_size)
        .min(u32::MAX as u64) as u32
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
    stats.blocks_taken += 1;
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
fn release(
    pool: &mut BlockPool,
    prefix: &mut Option<PrefixState>,
    host: &mut Option<HostTier>,
    stats: &mut KvStats,
    b: BlockId,
) {
    let cached = match prefix {
        // Nothing is kept: the block goes on the pool's free stack.
        None => false,
        Some(p) => {
            // A cached block about to become free hands its hash to a
            // duplicate in use (the content stays findable, no event).
            if p.index.has_duplicates() && pool.ref_count(b) == Ok(1) {
                p.index.promote_duplicate(b);
            }
            p.index.hash_of(b).is_some()
        }
    };
    // A cached block joins the LRU tail, unless a non-default eviction policy
    // says otherwise (the default is not even asked: the hot path stays as is).
    let to_tail = cached
        && !prefix
            .as_ref()
            .is_some_and(|p| p.eviction != Eviction::Lru && p.device_position(b) == QueueEnd::EvictFirst);
    let freed = if to_tail {
        pool.decref(b)
    } else {
        pool.decref_evict_first(b)
    }
    .expect("a live table's blocks are allocated");
    if freed {
        stats.blocks_returned += 1;
        // A pending block freed before its step was handed over was never
        // written: it must not become hittable. A freed duplicate stops being one.
        match (cached, prefix) {
            (false, Some(p)) => {
                p.index.remove_block(b);
            }
            (true, Some(p)) => p.freed_cached(b),
            _ => {}
        }
        if let Some(h) = host {
            h.forget_device(b);
        }
    }
}
