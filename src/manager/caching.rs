//! Automatic prefix caching inside the manager: each sequence's tokens and
//! block hashes, prefix hits at allocation, caching blocks as they fill,
//! eviction in LRU order, and KV events.
//!
//! The rules that keep cached content safe:
//! - a block carries a hash only while its content is final. Blocks are hashed
//!   when they fill; a block that is about to be written in place (the
//!   partially filled tail after a truncate) loses its hash first;
//! - a block becomes hittable only once the step that computes it has been
//!   handed to the engine: filled blocks are *pending* until the next
//!   `drain_ops` commits them (and announces them in KV events). A sequence
//!   freed before that (its step abandoned) leaves nothing cached, and two
//!   prompts admitted in the same step never share blocks that step writes.
//!
//! Each KV cache group caches its own blocks (a block's hash is the same in
//! every group: it stands for the same tokens; the index is keyed by group).
//! A hit of `L` tokens needs, in each group, the blocks that group's attention
//! reads from position `L` on: all of them for full attention, the window
//! before `L` for a sliding window, `L`'s chunk for chunked local attention
//! (none at a chunk boundary), as vLLM 0.33.0's hybrid manager decides (pinned
//! by `tests/vllm_hybrid_fixtures.rs`); without a full-attention group, at
//! least the block before `L` too (its chained hash vouches for the whole
//! prefix). The hit is the longest `L` every group agrees on (see `find_hit`).
//!
//! Freed blocks keep their hash and wait in the free queue in LRU order (the
//! pool's queue); taking one for new content evicts it. So do blocks a window
//! released.

use std::ops::Range;
use std::sync::Arc;

use smallvec::SmallVec;

use super::offload::{Offload, StoredMeta};
use super::{release_at, take_block, Allocation, KvCacheConfig, KvCacheManager, KvStats, Seq, Tables};
use crate::error::{InvariantViolation, KvError};
use crate::ids::{BlockId, TokenId};
use crate::pool::BlockPool;
use crate::prefix::{
    hash_block, hash_blocks, BlockHash, CacheTier, ExtraKey, HashAlgorithm, KvEvent, PrefixIndex, PrefixKeys,
};
use crate::sizing::{blocks_for, AttentionKind};
use crate::table::BlockTable;

static NO_KEYS: PrefixKeys = PrefixKeys {
    cache_salt: None,
    adapter: None,
    mm_spans: Vec::new(),
};

/// The manager's prefix-caching state (present only when it is enabled).
#[derive(Debug, Clone)]
pub(super) struct PrefixState {
    pub(super) index: PrefixIndex,
    pub(super) algo: HashAlgorithm,
    pub(super) block_size: u32,
    /// Queued KV events; `None` when nobody asked for them.
    pub(super) events: Option<Vec<KvEvent>>,
    /// Blocks filled since the last drain, in fill order (group by group), with their hash.
    pending: Vec<(BlockId, BlockHash)>,
    /// With KV events on: what each pending block's `BlockStored` needs.
    pending_events: Vec<PendingEvent>,
    /// The token ids of the pending blocks (events only), `block_size` each.
    pending_tokens: Vec<TokenId>,
    /// With `prefix_offload` on: evicted (or freed) cached blocks waiting to
    /// be copied to the host tier at the next drain (see `offload.rs`).
    pub(super) offload: Option<Offload>,
    /// The eviction policy (`KvCacheConfig::eviction`).
    pub(super) eviction: crate::Eviction,
}

/// What a pending block's `BlockStored` event needs beside its hash.
#[derive(Debug, Clone)]
struct PendingEvent {
    parent: Option<BlockHash>,
    extra_keys: Vec<ExtraKey>,
    group: u32,
    /// The block's position in its sequence.
    index: u32,
    /// The sequence's LoRA adapter.
    adapter: Option<u64>,
}

/// What prefix caching remembers of one sequence: its tokens (to hash blocks
/// as they fill) and the chained hash of each full block. Empty when caching is off.
#[derive(Debug, Clone, Default)]
pub(super) struct SeqCache {
    tokens: Vec<TokenId>,
    hashes: Vec<BlockHash>,
    keys: Option<Arc<PrefixKeys>>,
}

impl SeqCache {
    /// Becomes a copy of the parent's (a forked child), reusing this storage.
    pub(super) fn clone_from_parent(&mut self, parent: &SeqCache) {
        self.tokens.clear();
        self.tokens.extend_from_slice(&parent.tokens);
        self.hashes.clear();
        self.hashes.extend_from_slice(&parent.hashes);
        self.keys.clone_from(&parent.keys);
    }

    fn keys(&self) -> &PrefixKeys {
        self.keys.as_deref().unwrap_or(&NO_KEYS)
    }
}

/// How much of a prompt is cached.
#[derive(Clone, Debug, Default)]
pub(super) struct CachedPrefix {
    /// Leading full blocks of the hit (every group agrees on them).
    pub(super) hit_blocks: u64,
    /// Blocks of the hit in each group that running sequences hold (they
    /// take no free block); empty unless asked for.
    pub(super) held_blocks: SmallVec<[u64; 4]>,
}

impl PrefixState {
    pub(super) fn new(config: &KvCacheConfig) -> Self {
        PrefixState {
            index: PrefixIndex::new(config.num_blocks),
            algo: config.hash_algorithm,
            block_size: config.block_size,
            events: config.enable_kv_events.then(Vec::new),
            pending: Vec::new(),
            pending_events: Vec::new(),
            pending_tokens: Vec::new(),
            offload: Offload::new(config),
            eviction: config.eviction,
        }
    }

    /// Whether freeing a block needs nothing beyond the pool and dropping a
    /// pending hash (see `release`): LRU eviction, no duplicate to promote,
    /// no offload when a cached block becomes free.
    #[inline]
    pub(super) fn releases_plainly(&self) -> bool {
        self.eviction == crate::Eviction::Lru
            && !self.index.has_duplicates()
            && !self.offload.as_ref().is_some_and(|o| o.on_free)
    }

    /// Where the eviction policy puts the cached device block `b` as it
    /// becomes free (the built-in policies: the LRU tail).
    pub(super) fn device_position(&self, b: BlockId) -> crate::QueueEnd {
        use crate::EvictionPolicy;
        let reused = self.offload.as_ref().is_some_and(|o| o.reused[b.index()]);
        self.eviction.position(
            crate::prefix::CacheTier::Device,
            crate::BlockUse {
                reused,
                on_device: true,
            },
        )
    }

    /// Hashes the sequence's full blocks that have no hash yet.
    fn hash_full_blocks(&self, cache: &mut SeqCache) {
        let bs = self.block_size as usize;
        let full = cache.tokens.len() / bs;
        let keys = cache.keys.as_deref().unwrap_or(&NO_KEYS);
        let from = cache.hashes.len();
        if from < full {
            hash_blocks(
                self.algo,
                cache.hashes.last().copied(),
                &cache.tokens[from * bs..full * bs],
                from as u32,
                self.block_size,
                keys,
                &mut cache.hashes,
            );
        }
    }

    /// Marks blocks `from..` of the sequence's hashed blocks, in every group,
    /// as pending: they become hittable at the next [`Self::commit_pending`].
    fn index_blocks(&mut self, cache: &SeqCache, tables: &Tables, from: usize) {
        for (group, t) in tables.iter().enumerate() {
            for (i, (&h, &b)) in cache.hashes.iter().zip(t.blocks()).enumerate().skip(from) {
                if b.is_null() {
                    continue; // released by a window: no content to cache
                }
                self.index_block(cache, group as u32, i, h, b);
            }
        }
    }

    /// Marks the full blocks of a sequence just swapped in that carry no hash
    /// (fresh copies of its host blocks) as pending, like blocks that fill:
    /// every full block a sequence holds stays findable.
    pub(super) fn index_swapped_in(&mut self, cache: &SeqCache, tables: &Tables) {
        for (group, t) in tables.iter().enumerate() {
            for (i, (&h, &b)) in cache.hashes.iter().zip(t.blocks()).enumerate() {
                if !b.is_null() && self.index.carried_hash_of(b).is_none() {
                    self.index_block(cache, group as u32, i, h, b);
                }
            }
        }
    }

    /// Marks block `b` (position `i` of the sequence, hash `h`) pending in
    /// `group`, with its `BlockStored` event when events are recorded.
    #[inline]
    pub(super) fn index_block(&mut self, cache: &SeqCache, group: u32, i: usize, h: BlockHash, b: BlockId) {
        self.index.insert_pending(group, h, b);
        self.pending.push((b, h));
        if self.events.is_some() {
            self.pend_stored_event(cache, group, i);
        }
    }

    /// The event part of [`Self::index_block`] (out of line: without events
    /// the rest inlines into its loops).
    #[inline(never)]
    fn pend_stored_event(&mut self, cache: &SeqCache, group: u32, i: usize) {
        let bs = self.block_size as usize;
        self.pending_events.push(PendingEvent {
            parent: i.checked_sub(1).map(|p| cache.hashes[p]),
            extra_keys: cache
                .keys()
                .extra_keys_for(i as u32, (i * bs) as u64, ((i + 1) * bs) as u64),
            group,
            index: i as u32,
            adapter: cache.keys().adapter,
        });
        self.pending_tokens
            .extend_from_slice(&cache.tokens[i * bs..(i + 1) * bs]);
    }

    /// Commits one pending block; true when its hash becomes newly cached in
    /// its group (a `BlockStored`). The same content computed twice keeps one
    /// cached copy and no event: when the cached copy is free, the entry moves
    /// to this block (in use) and the free one, now holding nothing cached, is
    /// queued to be reused first; when it is in use, this block becomes its
    /// duplicate (it takes the entry over if the cached copy is freed first).
    fn commit_one(&mut self, b: BlockId, h: BlockHash, pool: &mut BlockPool) -> bool {
        if self.index.pending_hash_of(b) != Some(h) {
            return false; // freed, or rewritten, since it filled
        }
        let group = self.index.group_of(b).expect("a pending block has a group");
        match self.index.get(group, h) {
            None => self.index.commit(b).is_some(),
            Some(x) if pool.ref_count(x) == Ok(0) => {
                self.index.commit_moving(b, x);
                pool.take_free(x).expect("a free cached block is in the queue");
                pool.decref_evict_first(x).expect("just taken");
                false
            }
            Some(_) => {
                self.index.commit_duplicate(b);
                false
            }
        }
    }

    /// Commits the blocks filled since the last call (their step has just
    /// been handed to the engine): each still pending becomes hittable, or,
    /// when its hash is cached in another block of its group already, keeps
    /// it cached (see `commit_one`). With KV events on, each run of
    /// consecutive newly cached blocks of one sequence and group is announced
    /// as one `BlockStored`.
    pub(super) fn commit_pending(&mut self, pool: &mut BlockPool) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        if self.events.is_none() {
            for &(b, h) in &pending {
                self.commit_one(b, h, pool);
            }
        } else {
            let infos = std::mem::take(&mut self.pending_events);
            let tokens = std::mem::take(&mut self.pending_tokens);
            let bs = self.block_size as usize;
            // The run being built: indexes into `pending` of consecutive committed blocks.
            let mut run: Option<Range<usize>> = None;
            for (i, &(b, h)) in pending.iter().enumerate() {
                // A stale entry (its block freed before the drain, then filled
                // again with the same content in another group) is skipped:
                // the block's own entry, later in the list, names its group.
                let committed = self.index.group_of(b) == Some(infos[i].group) && self.commit_one(b, h, pool);
                let continues = run.as_ref().is_some_and(|r| {
                    r.end == i
                        && infos[i].parent == Some(pending[i - 1].1)
                        && infos[i].group == infos[i - 1].group
                });
                match (committed, continues) {
                    (true, true) => run.as_mut().expect("continues").end += 1,
                    (true, false) => {
                        if let Some(r) = run.replace(i..i + 1) {
                            self.emit_stored(&pending, &infos, &tokens, r, bs);
                        }
                    }
                    (false, _) => {
                        if let Some(r) = run.take() {
                            self.emit_stored(&pending, &infos, &tokens, r, bs);
                        }
                    }
                }
            }
            if let Some(r) = run {
                self.emit_stored(&pending, &infos, &tokens, r, bs);
            }
            self.pending_events = infos;
            self.pending_events.clear();
            self.pending_tokens = tokens;
            self.pending_tokens.clear();
        }
        pending.clear();
        self.pending = pending;
    }

    fn emit_stored(
        &mut self,
        pending: &[(BlockId, BlockHash)],
        infos: &[PendingEvent],
        tokens: &[TokenId],
        run: Range<usize>,
        bs: usize,
    ) {
        let event = KvEvent::BlockStored {
            block_hashes: pending[run.clone()].iter().map(|&(_, h)| h).collect(),
            parent_block_hash: infos[run.start].parent,
            token_ids: tokens[run.start * bs..run.end * bs].to_vec(),
            block_size: self.block_size,
            extra_keys: infos[run.clone()].iter().map(|e| e.extra_keys.clone()).collect(),
            group: infos[run.start].group,
            first_block_index: infos[run.start].index,
            adapter: infos[run.start].adapter,
            tier: CacheTier::Device,
        };
        if let Some(meta) = self.offload.as_mut().and_then(|o| o.meta.as_mut()) {
            // What a host-tier `BlockStored` of each block will need once it is offloaded.
            for i in run.clone() {
                let info = &infos[i];
                meta.insert(
                    (info.group, pending[i].1),
                    StoredMeta {
                        parent: info.parent,
                        extra_keys: info.extra_keys.clone(),
                        index: info.index,
                        adapter: info.adapter,
                        tokens: tokens[i * bs..(i + 1) * bs].into(),
                    },
                );
            }
        }
        self.push_event(event);
    }

    pub(super) fn push_event(&mut self, event: KvEvent) {
        if let Some(events) = &mut self.events {
            events.push(event);
        }
    }

    /// Records tokens just appended to `tables`, caching the blocks they filled.
    #[inline]
    pub(super) fn record_tokens(&mut self, cache: &mut SeqCache, tables: &Tables, tokens: &[TokenId]) {
        cache.tokens.extend_from_slice(tokens);
        debug_assert_eq!(cache.tokens.len(), tables[0].num_tokens() as usize);
        let from = cache.hashes.len();
        // No division on the hot path: has the next block filled?
        if (from + 1) * self.block_size as usize <= cache.tokens.len() {
            self.hash_full_blocks(cache);
            self.index_blocks(cache, tables, from);
        }
    }

    /// Follows a truncate: forgets the dropped tokens and hashes. A new
    /// partially filled tail this sequence holds alone keeps a cached hash
    /// (its table is flagged: the next write copies the block first, leaving
    /// the cached content intact); a pending or duplicate hash it carries is
    /// dropped (it will be written in place).
    ///
    /// Keeping the hash keeps the cache closed under prefixes: the blocks
    /// after the tail (released by the truncate, or held by others) stay
    /// reachable, and a router never sees a block removed before its children.
    pub(super) fn truncated(&mut self, cache: &mut SeqCache, tables: &mut Tables, pool: &BlockPool) {
        let n = tables[0].num_tokens() as usize;
        cache.tokens.truncate(n);
        cache.hashes.truncate(n / self.block_size as usize);
        if n % self.block_size as usize != 0 {
            for t in tables {
                let last = *t.blocks().last().expect("a partial tail exists");
                if pool.ref_count(last) == Ok(1) {
                    if self.index.hash_of(last).is_some() {
                        t.tail_maybe_shared = true;
                    } else {
                        self.index.remove_block(last);
                    }
                }
            }
        }
    }

    /// Drops the block's pending or duplicate hash before its content changes
    /// in place (a cached block is copied first instead: see `truncated`).
    pub(super) fn uncache(&mut self, block: BlockId) {
        if let Some((h, group)) = self.index.remove_block(block) {
            debug_assert!(false, "cached block {block:?} written in place");
            self.push_event(KvEvent::BlockRemoved {
                block_hashes: vec![h],
                group,
                tier: CacheTier::Device,
            });
        }
    }

    /// [`Self::evicted`] of each of `blocks` (taken in one batch), the
    /// offload and event checks made once.
    pub(super) fn evicted_all(&mut self, blocks: &[BlockId], stats: &mut KvStats) {
        if self.events.is_some() || self.offload.is_none() {
            for &b in blocks {
                self.evicted(b, stats);
            }
            return;
        }
        let o = self.offload.as_mut().expect("checked above");
        for &b in blocks {
            let reused = std::mem::replace(&mut o.reused[b.index()], false);
            if let Some((h, group)) = self.index.remove_block(b) {
                stats.prefix_evictions += 1;
                o.queue.push((b, h, group, reused));
            }
        }
    }

    /// A free block was taken for new content: drop the hash it carried
    /// (with offload on, its content is queued for the host tier: the copy
    /// runs before the step that overwrites it).
    #[inline]
    pub(super) fn evicted(&mut self, block: BlockId, stats: &mut KvStats) {
        let reused = self
            .offload
            .as_mut()
            .is_some_and(|o| std::mem::replace(&mut o.reused[block.index()], false));
        if let Some((h, group)) = self.index.remove_block(block) {
            stats.prefix_evictions += 1;
            if let Some(o) = &mut self.offload {
                o.queue.push((block, h, group, reused));
            }
            if self.events.is_some() {
                // (Not built when nobody listens: an eviction allocates nothing.)
                self.push_event(KvEvent::BlockRemoved {
                    block_hashes: vec![h],
                    group,
                    tier: CacheTier::Device,
                });
            }
        }
    }
}

/// Takes the hit block `b` for a new sequence: from the free queue when it
/// is free (then this returns true), else one more reference.
#[inline(always)]
fn take_hit(pool: &mut BlockPool, stats: &mut KvStats, b: BlockId) -> bool {
    let free = pool.hold(b);
    stats.blocks_taken += free as u64;
    free
}

/// The first block a hit of `hit` blocks needs cached in a group of `kind`:
/// the first its attention reads at the hit point (vLLM's rule: a chunked
/// local group at a chunk boundary needs none). Unless `vouched` (a
/// full-attention group needs every block of the prefix), at least the block
/// before the hit point, whose chained hash vouches for the whole prefix:
/// pagedkv counts as a hit only content it has cached (vLLM, with chunked
/// local attention alone, counts every chunk before the last, cached or not).
pub(super) fn hit_from(kind: AttentionKind, hit: usize, block_size: u32, vouched: bool) -> usize {
    if hit == 0 {
        return 0;
    }
    let first = kind.first_needed_block(hit as u64 * block_size as u64, block_size) as usize;
    first.min(hit - !vouched as usize)
}

/// Whether a full-attention group vouches for every hit's prefix (see [`hit_from`]).
pub(super) fn full_vouches(groups: &[AttentionKind]) -> bool {
    groups.contains(&AttentionKind::Full)
}

impl KvCacheManager {
    /// The longest hit, in blocks (at most `max_blocks`), that every group
    /// agrees on: in each group, the blocks its attention reads from the hit
    /// point on are cached. Full groups give an upper bound by their leading
    /// run of cached blocks; each windowed group then lowers it to the longest
    /// length whose window is cached, until no group lowers it (each group's
    /// set of good lengths is searched downwards, so the fixpoint is the
    /// largest length good for all).
    ///
    /// With `host` (the host tier's index, when a reload is possible now), a
    /// block cached in either tier counts.
    fn find_hit(
        &self,
        p: &PrefixState,
        host: Option<&PrefixIndex>,
        hashes: &[BlockHash],
        max_blocks: usize,
    ) -> usize {
        let bs = self.config.block_size;
        let vouched = full_vouches(&self.config.groups);
        let missing = |g: usize, h: BlockHash| {
            p.index.get(g as u32, h).is_none() && !host.is_some_and(|c| c.get(g as u32, h).is_some())
        };
        let mut hit = max_blocks.min(hashes.len());
        for (g, kind) in self.config.groups.iter().enumerate() {
            if *kind == AttentionKind::Full {
                hit = (0..hit).find(|&i| missing(g, hashes[i])).unwrap_or(hit);
            }
        }
        loop {
            let before = hit;
            for (g, kind) in self.config.groups.iter().enumerate() {
                if *kind == AttentionKind::Full {
                    continue;
                }
                // The largest l <= hit whose blocks [first_needed(l), l) are cached:
                // a missing block m rules out every l in (m, hit], so jump to m.
                while hit > 0 {
                    let from = hit_from(*kind, hit, bs, vouched);
                    match (from..hit).rev().find(|&i| missing(g, hashes[i])) {
                        None => break,
                        Some(missing) => hit = missing,
                    }
                }
            }
            if hit == before {
                return hit;
            }
        }
    }

    /// The host tier's index of offloaded blocks, when a hit may reload from
    /// it now (offload on, and no queued copy-on-write copy names a free
    /// device block: see `offload.rs`).
    fn reload_index(&self) -> Option<&PrefixIndex> {
        let cached = self.host.as_ref()?.cached.as_ref()?;
        self.queued_copy_on_free_block().is_none().then_some(cached)
    }

    /// Whether starting work that takes `needed` free blocks passes
    /// `check_start` now (pure).
    fn start_fits(&self, needed: u64) -> bool {
        needed + self.reserve_for_growth() <= self.pool.num_free() as u64
    }

    /// Held blocks of a hit of `hit` blocks, in each group.
    fn held_blocks(&self, p: &PrefixState, hashes: &[BlockHash], hit: usize) -> SmallVec<[u64; 4]> {
        let bs = self.config.block_size;
        let vouched = full_vouches(&self.config.groups);
        let mut held = SmallVec::new();
        for (g, kind) in self.config.groups.iter().enumerate() {
            let from = hit_from(*kind, hit, bs, vouched);
            held.push(
                hashes[from..hit]
                    .iter()
                    .filter(|&&h| {
                        p.index
                            .get(g as u32, h)
                            .is_some_and(|b| self.pool.ref_count(b) != Ok(0))
                    })
                    .count() as u64,
            );
        }
        held
    }

    /// The host-tier part of a hit (out of line: the device-hit path of
    /// `allocate_cached` compiles the same whatever this does). For the
    /// reloaded blocks, one loop per step: take fresh device blocks
    /// (evicting cached ones, queued for the host tier), hold the host
    /// blocks, queue the copies, and enter the device blocks in the tables,
    /// indexed as pending (hittable at the next drain, like swapped-in
    /// blocks).
    #[inline(never)]
    fn reload_hits(&mut self, tables: &mut Tables, reloads: &[(u32, u32, BlockId)], cache: &SeqCache) {
        let bs = self.config.block_size;
        let host = self.host.as_mut().expect("a host hit implies a host tier");
        let p = self.prefix.as_mut().expect("checked above");
        // The device blocks first, in one batch (the order `allocate`
        // would give them; taking them touches no host block): the
        // free-queue walk leaves the loop below, whose blocks are then
        // independent of each other.
        let mut dst = std::mem::take(&mut host.reload_dst);
        dst.clear();
        self.pool
            .allocate_n(reloads.len() as u32, &mut dst)
            .expect("free blocks were counted before allocating");
        self.stats.blocks_taken += reloads.len() as u64;
        // Their cached content evicted in a loop of its own: each
        // eviction's index reads overlap the next ones'.
        p.evicted_all(&dst, &mut self.stats);
        // Then each step over all the blocks in turn (tight loops whose
        // blocks overlap): hold the host copies, queue the copies, enter the
        // device blocks in the table and index them as pending.
        host.hold_for_reload(reloads.iter().map(|r| r.2));
        host.swap_in.extend(
            reloads
                .iter()
                .zip(&dst)
                .map(|(&(g, _, hb), &d)| super::BlockCopy {
                    src: hb,
                    dst: d,
                    num_slots: bs,
                    group: g,
                }),
        );
        self.stats.reload_copies += reloads.len() as u64;
        // The device blocks enter the tables (one group whose reloads are one
        // run of positions, copied at once: positions ascend, so the first and
        // the last tell a run)...
        let first = reloads[0].1 as usize;
        if tables.len() == 1
            && reloads
                .last()
                .is_some_and(|r| r.1 as usize == first + reloads.len() - 1)
        {
            tables[0].blocks[first..first + dst.len()].copy_from_slice(&dst);
        } else {
            for (&(g, i, _), &d) in reloads.iter().zip(&dst) {
                tables[g as usize].blocks[i as usize] = d;
            }
        }
        // ...and are indexed as pending (without events, `index_block`'s two
        // writes in loops of their own).
        if p.events.is_some() {
            for (&(g, i, _), &d) in reloads.iter().zip(&dst) {
                p.index_block(cache, g, i as usize, cache.hashes[i as usize], d);
            }
        } else {
            for (&(g, i, _), &d) in reloads.iter().zip(&dst) {
                p.index.insert_pending(g, cache.hashes[i as usize], d);
            }
            p.pending.extend(
                reloads
                    .iter()
                    .zip(&dst)
                    .map(|(&(_, i, _), &d)| (d, cache.hashes[i as usize])),
            );
        }
        host.reload_dst = dst;
    }

    /// `allocate_with` when prefix caching is on; the caller checked the
    /// sequence id, the empty prompt and the length.
    pub(super) fn allocate_cached(
        &mut self,
        seq: super::SeqId,
        prompt: &[TokenId],
        keys: &PrefixKeys,
    ) -> Result<Allocation, KvError> {
        let bs = self.config.block_size;
        let vouched = full_vouches(&self.config.groups);
        let num_tokens = prompt.len() as u64;
        let (mut tables, cache) = self.new_seq_storage();
        let mut cache = cache.unwrap_or_default();
        cache.tokens.clear();
        cache.tokens.extend_from_slice(prompt);
        cache.hashes.clear();
        cache.keys = (!keys.is_empty()).then(|| Arc::new(keys.clone()));
        let p = self.prefix.as_ref().expect("caller checked prefix caching is on");
        p.hash_full_blocks(&mut cache);

        // Blocks of the hit the device misses, reloaded from the host: (group, position, host block).
        // (Storage reused across calls: a long host hit allocates nothing once warm.)
        let mut reloads = self
            .host
            .as_mut()
            .map(|h| std::mem::take(&mut h.reloads))
            .unwrap_or_default();
        let p = self.prefix.as_ref().expect("caller checked prefix caching is on");
        // The longest cached prefix every group agrees on, leaving at least
        // one token to compute (on the device or, offloading, in the host
        // tier). Each group's hit blocks are resolved into its table as they
        // are found (placeholders where a window needs none and where a block
        // is reloaded from the host, listed in `reloads`), counting those in
        // use, so taking them below needs no second lookup.
        let max_hit = (((num_tokens - 1) / bs as u64) as usize).min(cache.hashes.len());
        // (`reload_index`, borrowing only the host tier: the pool is taken from below.)
        let can_reload = self.queued_copy_on_free_block().is_none();
        let host_index = self
            .host
            .as_ref()
            .and_then(|h| h.cached.as_ref())
            .filter(|_| can_reload);
        let mut held = 0u64;
        // One full-attention group whose whole prompt fits even with no
        // block of the hit held (the most this allocation can need, so the
        // check below passes whatever the hit): device hit blocks are taken
        // as they are found, one pass. Taking a block changes no lookup.
        let total = blocks_for(num_tokens, bs as u64);
        let one_full_group = self.config.groups[..] == [AttentionKind::Full];
        let take_now = one_full_group && self.start_fits(total);
        let found_hit = (!one_full_group).then(|| self.find_hit(p, host_index, &cache.hashes, max_hit));
        let (pool, stats) = (&mut self.pool, &mut self.stats);
        // (Several groups: `take_now` is false, the hit is taken below.)
        let mut resolve = |t: &mut BlockTable, g: usize, i: usize, h: BlockHash| {
            if let Some(b) = p.index.get(g as u32, h) {
                held += (pool.ref_count(b) != Ok(0)) as u64;
                t.blocks.push(b);
            } else if let Some(hb) = host_index.and_then(|c| c.get(g as u32, h)) {
                reloads.push((g as u32, i as u32, hb));
                t.blocks.push(BlockId::NULL); // the reloaded copy, taken below
            } else {
                return false;
            }
            true
        };
        let hits = if one_full_group {
            // One full-attention group: the hit is the leading run found, in
            // one pass. Its device cache is closed under prefixes (a cached
            // block's parent is cached: see `eviction`), so once a block is
            // missing on the device the rest of the hit is in the host tier:
            // no more device lookups.
            // (The loops of `resolve`, without its per-block branches.)
            let t = &mut tables[0];
            let hashes = &cache.hashes[..max_hit];
            t.blocks.reserve(max_hit + 1);
            let mut i = 0;
            while let Some(b) = hashes.get(i).and_then(|&h| p.index.get(0, h)) {
                let free = if take_now {
                    take_hit(pool, stats, b)
                } else {
                    pool.ref_count(b) == Ok(0)
                };
                held += !free as u64;
                t.blocks.push(b);
                i += 1;
            }
            if let Some(c) = host_index {
                while let Some(hb) = hashes.get(i).and_then(|&h| c.get(0, h)) {
                    reloads.push((0, i as u32, hb));
                    t.blocks.push(BlockId::NULL); // the reloaded copy, taken below
                    i += 1;
                }
            }
            i
        } else {
            let hits = found_hit.expect("found above");
            for (g, (t, kind)) in tables.iter_mut().zip(&self.config.groups).enumerate() {
                let from = hit_from(*kind, hits, bs, vouched);
                t.blocks.extend(std::iter::repeat(BlockId::NULL).take(from));
                for i in from..hits {
                    let found = resolve(t, g, i, cache.hashes[i]);
                    debug_assert!(found, "find_hit found every hit block");
                }
            }
            hits
        };
        let placeholders: u64 = self
            .config
            .groups
            .iter()
            .map(|&k| hit_from(k, hits, bs, vouched) as u64)
            .sum();
        let needed = total * self.num_groups() as u64 - placeholders - held;
        // (Taken already: the most it could need was checked before taking.)
        let checked = if take_now {
            Ok(())
        } else {
            self.check_start(seq, needed)
        };
        if let Err(e) = checked {
            self.recycle(tables, Some(cache));
            if let Some(h) = &mut self.host {
                reloads.clear();
                h.reloads = reloads;
            }
            return Err(e);
        }

        // Hits first: a fresh allocation could otherwise evict a free hit
        // block (or, offloading, push a host hit block out of the host tier:
        // each reload holds its host block before its device block is taken,
        // and taking device blocks touches no host block).
        for (t, kind) in tables.iter_mut().zip(&self.config.groups) {
            let from = hit_from(*kind, hits, bs, vouched);
            if !take_now {
                for &b in &t.blocks[from..hits] {
                    if !b.is_null() {
                        // (Null: reloaded from the host, below.)
                        take_hit(&mut self.pool, &mut self.stats, b);
                    }
                }
            }
            t.num_released = from as u32;
            t.release_at = release_at(*kind, from as u32, bs);
        }
        if !reloads.is_empty() {
            self.reload_hits(&mut tables, &reloads, &cache);
        }
        for t in tables.iter_mut() {
            for _ in hits as u64..total {
                t.blocks
                    .push(take_block(&mut self.pool, &mut self.prefix, &mut self.stats));
            }
            t.num_tokens.set(num_tokens as u32);
        }
        let p = self.prefix.as_mut().expect("checked above");
        if let Some(o) = &mut p.offload {
            // The hit blocks' content is reused (what the host tier's eviction policy weighs).
            for (t, kind) in tables.iter().zip(&self.config.groups) {
                for &b in &t.blocks[hit_from(*kind, hits, bs, vouched)..hits] {
                    o.reused[b.index()] = true;
                }
            }
        }
        p.index_blocks(&cache, &tables, hits);
        if !reloads.is_empty() {
            // Positions reloaded in any group (one group: each reload is one).
            let positions = if self.config.groups.len() == 1 {
                reloads.len()
            } else {
                let mut positions: Vec<u32> = reloads.iter().map(|r| r.1).collect();
                positions.sort_unstable();
                positions.dedup();
                positions.len()
            };
            self.stats.prefix_host_hit_tokens += positions as u64 * bs as u64;
        }
        if let Some(h) = &mut self.host {
            reloads.clear();
            h.reloads = reloads;
        }

        let cached_tokens = hits as u64 * bs as u64;
        self.stats.sequences_allocated += 1;
        self.stats.prefix_lookups += 1;
        self.stats.prefix_queried_tokens += num_tokens;
        self.stats.prefix_hit_tokens += cached_tokens;
        self.seqs.insert(
            seq,
            Seq {
                tables,
                appended_epoch: self.epoch,
                // The cached tokens are computed: a window releases from there.
                step_start_len: cached_tokens as u32,
                cache: Some(cache),
            },
        );
        Ok(Allocation {
            num_blocks: needed as u32,
            cached_tokens: cached_tokens as u32,
        })
    }

    /// The cached prefix of a prompt, without changing anything.
    /// With `count_held` false, `held_blocks` stays 0 (and the pool is not read).
    pub(super) fn cached_prefix(
        &self,
        prompt: &[TokenId],
        keys: &PrefixKeys,
        count_held: bool,
    ) -> CachedPrefix {
        let mut out = CachedPrefix::default();
        let Some(p) = &self.prefix else { return out };
        if prompt.is_empty() {
            return out;
        }
        let bs = self.config.block_size as usize;
        let blocks = prompt[..prompt.len() - 1].chunks_exact(bs);
        let host = self.reload_index();
        if self.config.groups.len() == 1 && self.config.groups[0] == AttentionKind::Full {
            // One full-attention group: hash and look up block by block, stopping at the first miss.
            let mut parent = None;
            let mut held = 0;
            for (i, block) in blocks.enumerate() {
                let h = hash_block(p.algo, parent, block, i as u32, self.config.block_size, keys);
                match p.index.get(0, h) {
                    Some(b) if count_held => held += (self.pool.ref_count(b) != Ok(0)) as u64,
                    Some(_) => {}
                    // On the host: a hit, on a fresh device block (nothing held).
                    None if host.is_some_and(|c| c.get(0, h).is_some()) => {}
                    None => break,
                }
                out.hit_blocks += 1;
                parent = Some(h);
            }
            if count_held {
                out.held_blocks.push(held);
            }
            return out;
        }
        let mut hashes: SmallVec<[BlockHash; 64]> = SmallVec::new();
        for (i, block) in blocks.enumerate() {
            let h = hash_block(
                p.algo,
                hashes.last().copied(),
                block,
                i as u32,
                self.config.block_size,
                keys,
            );
            hashes.push(h);
        }
        let hit = self.find_hit(p, host, &hashes, hashes.len());
        out.hit_blocks = hit as u64;
        if count_held {
            out.held_blocks = self.held_blocks(p, &hashes, hit);
        }
        out
    }

    /// Leading tokens of `prompt` that [`Self::allocate_with`] would find
    /// cached now (0 when prefix caching is off). Pure.
    ///
    /// ```
    /// use pagedkv::{KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 8, block_size: 4, enable_prefix_caching: true, ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    /// kv.drain_ops(&mut Default::default());               // its step runs
    /// kv.free(SeqId(1)).unwrap();                          // blocks stay cached
    /// let keys = PrefixKeys::default();
    /// assert_eq!(kv.cached_prefix_len(&[1, 2, 3, 4, 5, 6, 7, 8, 0], &keys), 8);
    /// assert_eq!(kv.cached_prefix_len(&[1, 2, 3, 4, 5, 6, 7, 8], &keys), 4); // one token left to compute
    /// assert_eq!(kv.cached_prefix_len(&[1, 2, 3, 4, 5], &PrefixKeys::salted("other")), 0);
    /// ```
    pub fn cached_prefix_len(&self, prompt: &[TokenId], keys: &PrefixKeys) -> u64 {
        self.cached_prefix(prompt, keys, false).hit_blocks * self.config.block_size as u64
    }

    /// Leading tokens of `prompt` whose blocks KV cache group `group` alone
    /// has cached now, leaving one token to compute as [`Self::cached_prefix_len`]
    /// does (0 when prefix caching is off or `group` does not exist). This is
    /// the prefix a router sees that follows only that group's KV events
    /// (routers index the full-attention groups of a hybrid model); a hit also
    /// needs the other groups' windows, so `cached_prefix_len` can be shorter. Pure.
    ///
    /// ```
    /// use pagedkv::{AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 16, block_size: 4, enable_prefix_caching: true,
    ///     groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 4 }],
    ///     ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &(0..9).collect::<Vec<u32>>()).unwrap();
    /// kv.drain_ops(&mut BlockOps::default());
    /// let keys = PrefixKeys::default();
    /// assert_eq!(kv.cached_prefix_len_in_group(&(0..9).collect::<Vec<u32>>(), &keys, 0), 8);
    /// assert_eq!(kv.cached_prefix_len_in_group(&[0, 1, 2, 3, 9], &keys, 0), 4);
    /// assert_eq!(kv.cached_prefix_len_in_group(&[0, 1, 2, 3, 9], &keys, 2), 0);
    /// ```
    pub fn cached_prefix_len_in_group(&self, prompt: &[TokenId], keys: &PrefixKeys, group: u32) -> u64 {
        let Some(p) = &self.prefix else { return 0 };
        if prompt.is_empty() || group as usize >= self.config.groups.len() {
            return 0;
        }
        let bs = self.config.block_size;
        let mut parent = None;
        let mut hit = 0;
        for (i, block) in prompt[..prompt.len() - 1].chunks_exact(bs as usize).enumerate() {
            let h = hash_block(p.algo, parent, block, i as u32, bs, keys);
            if p.index.get(group, h).is_none() {
                break;
            }
            hit += bs as u64;
            parent = Some(h);
        }
        hit
    }

    /// The hash a block carries, if it is cached (prefix caching on).
    pub fn cached_block_hash(&self, block: BlockId) -> Option<BlockHash> {
        self.prefix.as_ref().and_then(|p| p.index.hash_of(block))
    }

    /// Blocks cached now, in use or free, in every group (0 when prefix caching is off).
    pub fn num_cached_blocks(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.index.len())
    }

    /// Blocks in use whose content duplicates a cached block's of their group
    /// (the same content computed twice). Each takes the hash over if the
    /// cached copy is freed first, so the content stays findable and no event
    /// announces a block the engine still holds as removed.
    pub fn num_duplicate_blocks(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.index.num_duplicates())
    }

    /// Drops the hash of every free cached block, so no later prompt hits
    /// them (after a weight update, say). Blocks in use keep their hashes until
    /// freed. Returns the number of blocks uncached.
    ///
    /// ```
    /// use pagedkv::{KvCacheConfig, KvCacheManager, PrefixKeys, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 8, block_size: 2, enable_prefix_caching: true, ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5]).unwrap();
    /// kv.drain_ops(&mut Default::default());
    /// kv.free(SeqId(1)).unwrap();
    /// assert_eq!(kv.reset_prefix_cache(), 2);
    /// assert_eq!(kv.cached_prefix_len(&[1, 2, 3, 4, 5], &PrefixKeys::default()), 0);
    /// ```
    ///
    /// With prefix offload on, every block offloaded to the host tier is
    /// dropped too (and the offloads queued this step are cancelled); the
    /// count is of device blocks only.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let Some(p) = self.prefix.as_mut() else { return 0 };
        let mut removed: Vec<(u32, BlockHash)> = Vec::new();
        for b in self.pool.free_blocks() {
            if let Some((h, group)) = p.index.remove_block(b) {
                removed.push((group, h));
            }
        }
        let n = removed.len();
        let mut host_removed: Vec<(u32, BlockHash)> = Vec::new();
        let host_cached = self.host.as_mut().and_then(|h| h.cached.as_mut());
        if let (Some(cached), Some(o)) = (host_cached, p.offload.as_mut()) {
            o.queue.clear();
            for i in 0..self.config.num_host_blocks {
                if let Some((h, group)) = cached.remove_block(BlockId(i)) {
                    host_removed.push((group, h));
                }
            }
            let device = &p.index;
            if let Some(meta) = &mut o.meta {
                meta.retain(|&(g, h), _| device.get(g, h).is_some());
            }
        }
        if p.index.is_empty() {
            p.push_event(KvEvent::AllCleared);
        } else {
            for (tier, mut removed) in [(CacheTier::Device, removed), (CacheTier::Host, host_removed)] {
                removed.sort_by_key(|&(g, _)| g);
                for run in removed.chunk_by(|a, b| a.0 == b.0) {
                    p.push_event(KvEvent::BlockRemoved {
                        block_hashes: run.iter().map(|&(_, h)| h).collect(),
                        group: run[0].0,
                        tier,
                    });
                }
            }
        }
        n
    }

    /// Prefix-caching invariants (see the module docs of `manager`).
    pub(super) fn check_prefix_invariants(&self) -> Result<(), InvariantViolation> {
        let Some(p) = &self.prefix else {
            return match self.seqs.iter().find(|(_, s)| s.cache.is_some()) {
                Some((seq, _)) => Err(InvariantViolation::new(format!(
                    "{seq:?} keeps tokens though prefix caching is off"
                ))),
                None => Ok(()),
            };
        };
        p.index.check_invariants()?;
        if let Some(b) = self
            .pool
            .free_blocks()
            .find(|&b| p.index.pending_hash_of(b).is_some())
        {
            return Err(InvariantViolation::new(format!(
                "free block {b:?} is pending: it would become hittable though no step computes it"
            )));
        }
        for (group, h, d) in p.index.duplicates() {
            let original = p.index.get(group, h).expect("checked by the index");
            if self.pool.ref_count(d) == Ok(0) || self.pool.ref_count(original) == Ok(0) {
                return Err(InvariantViolation::new(format!(
                    "duplicate {d:?} of {h:?} or its cached copy {original:?} (group {group}) is free: the hash would be lost on eviction"
                )));
            }
        }
        let bs = self.config.block_size as usize;
        for (&seq, s) in &self.seqs {
            let Some(cache) = s.cache.as_deref() else {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} has no token list though prefix caching is on"
                )));
            };
            let n = s.num_tokens() as usize;
            if cache.tokens.len() != n || cache.hashes.len() != n / bs {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} holds {n} tokens but remembers {} tokens and {} block hashes",
                    cache.tokens.len(),
                    cache.hashes.len()
                )));
            }
            let mut expect = cache.clone();
            expect.hashes.clear();
            p.hash_full_blocks(&mut expect);
            if expect.hashes != cache.hashes {
                return Err(InvariantViolation::new(format!(
                    "{seq:?}'s block hashes do not match its tokens"
                )));
            }
            for (g, t) in s.tables.iter().enumerate() {
                // Every full block held stays findable: cached, pending or a duplicate.
                for (i, &b) in t.live_blocks().iter().enumerate() {
                    let i = i + t.num_released as usize;
                    let Some(&mine) = cache.hashes.get(i) else { break };
                    if p.index.carried_hash_of(b) != Some(mine) {
                        return Err(InvariantViolation::new(format!(
                            "{seq:?} group {g} block {i} ({b:?}) is full but carries {:?}, not its hash {mine:?} (cached, pending or duplicate)",
                            p.index.carried_hash_of(b)
                        )));
                    }
                }
                for (i, &b) in t.live_blocks().iter().enumerate() {
                    let i = i + t.num_released as usize;
                    let carried = p.index.hash_of(b).or(p.index.pending_hash_of(b));
                    let Some(h) = carried else { continue };
                    if p.index.group_of(b) != Some(g as u32) {
                        return Err(InvariantViolation::new(format!(
                            "{seq:?}'s block {b:?} in group {g} is cached in group {:?}",
                            p.index.group_of(b)
                        )));
                    }
                    match cache.hashes.get(i) {
                        Some(&mine) if mine == h => {}
                        Some(&mine) => {
                            return Err(InvariantViolation::new(format!(
                                "{seq:?} group {g} block {i} ({b:?}) is cached as {h:?} but its tokens hash to {mine:?}"
                            )))
                        }
                        // The partial tail: cached content a write would change,
                        // allowed only while the next write is known to copy first.
                        None if t.tail_maybe_shared => {}
                        None => {
                            return Err(InvariantViolation::new(format!(
                                "{seq:?}'s partially filled tail {b:?} in group {g} is cached as {h:?} and would be written in place"
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "caching_tests.rs"]
mod tests;
