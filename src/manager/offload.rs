//! The tiered prefix cache: cached device blocks offloaded to the host tier,
//! and reloaded for a later prompt's hit (`KvCacheConfig::prefix_offload`).
//!
//! One host pool serves swap and offload. Its blocks are, at any time:
//! - held by swapped-out sequences (their tables; never carrying a hash);
//! - free: holding nothing, or an *offloaded* block's content, which the host
//!   index (`HostTier::cached`) maps from its hash and group. Free host
//!   blocks wait in the host pool's queue in the eviction policy's order
//!   (LRU by default; those holding nothing at its head, see `eviction.rs`),
//!   so a swap-out or a new offload takes the least recently used offloaded
//!   block when no empty one is left, evicting its hash: a swap always gets
//!   the room an offloaded block takes;
//! - held until the next drain: released by a swapped sequence this step, or
//!   read by a reload queued this step (then it keeps its hash and goes back
//!   to the queue's most recently used end).
//!
//! Offload. A cached device block whose hash is dropped to hold new content
//! (`OnEvict`), or a cached block as it becomes free (`OnFree`), is queued
//! here with its hash. At the next `drain_ops` each queued block whose hash
//! the host does not hold yet gets a host block and a device → host copy in
//! [`crate::BlockOps::swap_out`]: the engine runs swap-outs first, so the copy
//! reads the content the block had at the start of the step, before the step
//! overwrites it. Blocks are offloaded only while committed (their content
//! final), so what lands on the host is exactly what the hash stands for.
//!
//! Reload. A prompt's hit may continue where the device misses: a block
//! cached in the host tier counts as cached (in each group, as the hit rule of
//! `caching.rs` says). `allocate` takes a fresh device block for it, queues a
//! host → device copy in [`crate::BlockOps::swap_in`] (run before the step's
//! kernels), and indexes the device copy as pending, as a swapped-in block
//! (hittable from the next drain). The host copy keeps its hash: evicted from
//! the device again, the block needs no new copy. A reload is not offered
//! while a queued copy-on-write copy names a free device block (a fresh block
//! could be that block, and the swap-in would run before the copy); the hit
//! then stops at the device's blocks, for admission too.
//!
//! KV events: the device's events as always, plus a `BlockStored` of tier
//! [`CacheTier::Host`] for each offloaded block (one block per event, with its
//! parent hash and tokens, as vLLM's CPU offloading publishes them) and a
//! `BlockRemoved` of tier `Host` when the host tier drops one. A router that
//! keeps one index per tier (Dynamo's lower-tier indexer) sees the host tier's
//! blocks as continuations of the device's prefix.

use std::collections::HashMap;

use super::swap::HostTier;
use super::{
    BlockCopy, BlockUse, EvictionPolicy, KvCacheConfig, KvCacheManager, KvStats, PrefixOffload, PrefixState,
    QueueEnd,
};
use crate::error::InvariantViolation;
use crate::ids::{BlockId, TokenId};
use crate::pool::BlockPool;
use crate::prefix::{hash_block, BlockHash, CacheTier, ExtraKey, KvEvent, PrefixKeys};

/// The device side of offloading (in the manager's prefix state).
#[derive(Debug, Clone)]
pub(super) struct Offload {
    /// Cached blocks are queued when they become free, not only when evicted.
    pub(super) on_free: bool,
    /// Device blocks to copy to the host tier at the next drain: (block,
    /// hash, group, whether its content was reused).
    pub(super) queue: Vec<(BlockId, BlockHash, u32, bool)>,
    /// Per device block: whether its cached content has been hit (for the
    /// host tier's eviction policy); cleared when the block is taken fresh.
    pub(super) reused: Vec<bool>,
    /// Entries of `queue` the drain has handled (0 outside a drain).
    done: usize,
    /// With KV events on: what a host-tier `BlockStored` of each hash cached
    /// in either tier (or queued) says, by group and hash.
    pub(super) meta: Option<HashMap<(u32, BlockHash), StoredMeta>>,
}

/// What a `BlockStored` of one block says beside its hash and group.
#[derive(Debug, Clone)]
pub(super) struct StoredMeta {
    pub(super) parent: Option<BlockHash>,
    pub(super) extra_keys: Vec<ExtraKey>,
    pub(super) index: u32,
    pub(super) adapter: Option<u64>,
    pub(super) tokens: Box<[TokenId]>,
}

impl Offload {
    pub(super) fn new(config: &KvCacheConfig) -> Option<Self> {
        (config.prefix_offload != PrefixOffload::Off).then(|| Offload {
            on_free: config.prefix_offload == PrefixOffload::OnFree,
            queue: Vec::new(),
            reused: vec![false; config.num_blocks as usize],
            done: 0,
            meta: config.enable_kv_events.then(HashMap::new),
        })
    }
}

impl PrefixState {
    /// A cached block just became free: with `OnFree`, queue it for the host tier.
    #[inline]
    pub(super) fn freed_cached(&mut self, block: BlockId) {
        if let Some(o) = self.offload.as_mut().filter(|o| o.on_free) {
            if let (Some(h), Some(g)) = (self.index.hash_of(block), self.index.group_of(block)) {
                o.queue.push((block, h, g, o.reused[block.index()]));
            }
        }
    }

    /// Forgets the event metadata of `(group, hash)` once neither tier caches
    /// it and no offload still to run names it (O(queued offloads), events on only).
    fn forget_meta(&mut self, group: u32, hash: BlockHash, host: &HostTier) {
        let on_device = self.index.get(group, hash).is_some();
        let on_host = host.cached.as_ref().is_some_and(|c| c.get(group, hash).is_some());
        let Some(o) = self.offload.as_mut() else { return };
        let Some(meta) = o.meta.as_mut() else { return };
        let queued = o.queue[o.done..]
            .iter()
            .any(|&(_, h, g, _)| (g, h) == (group, hash));
        if !on_device && !on_host && !queued {
            meta.remove(&(group, hash));
        }
    }

    fn host_stored_event(&self, group: u32, hash: BlockHash) -> KvEvent {
        let meta = self
            .offload
            .as_ref()
            .and_then(|o| o.meta.as_ref())
            .and_then(|m| m.get(&(group, hash)));
        KvEvent::BlockStored {
            block_hashes: vec![hash],
            parent_block_hash: meta.and_then(|m| m.parent),
            token_ids: meta.map_or_else(Vec::new, |m| m.tokens.to_vec()),
            block_size: self.block_size,
            extra_keys: vec![meta.map_or_else(Vec::new, |m| m.extra_keys.clone())],
            group,
            first_block_index: meta.map_or(0, |m| m.index),
            adapter: meta.and_then(|m| m.adapter),
            tier: CacheTier::Host,
        }
    }
}

/// Takes the host block at the head of the host queue (an empty one, or the
/// least recently used offloaded one, whose hash is dropped). `None` when
/// every host block is held.
pub(super) fn take_host_block(
    host: &mut HostTier,
    prefix: &mut Option<PrefixState>,
    stats: &mut KvStats,
) -> Option<BlockId> {
    let h = host.pool.allocate().ok()?;
    host.reused[h.index()] = false;
    if let Some((hash, group)) = host.cached.as_mut().and_then(|c| c.remove_block(h)) {
        stats.host_evictions += 1;
        if let Some(p) = prefix {
            if p.events.is_some() {
                p.push_event(KvEvent::BlockRemoved {
                    block_hashes: vec![hash],
                    group,
                    tier: CacheTier::Host,
                });
            }
            p.forget_meta(group, hash, host);
        }
    }
    Some(h)
}

/// Copies the blocks queued since the last drain to the host tier (called by
/// `drain_ops` before the host blocks released this step are returned, so no
/// copy lands in a host block a queued swap-in still reads).
pub(super) fn offload_queued(
    prefix: &mut Option<PrefixState>,
    host: &mut Option<HostTier>,
    stats: &mut KvStats,
    block_size: u32,
) {
    let Some(host) = host.as_mut() else { return };
    let Some(o) = prefix.as_mut().and_then(|p| p.offload.as_mut()) else {
        return;
    };
    if o.queue.is_empty() {
        return;
    }
    // On free, the device still holds what it offloads; on evict, it does not.
    let on_free = o.on_free;
    for i in 0..o.queue.len() {
        let o = prefix
            .as_mut()
            .and_then(|p| p.offload.as_mut())
            .expect("checked above");
        let (d, hash, group, reused) = o.queue[i];
        o.done = i + 1;
        let cached = host.cached.as_ref().expect("offload implies a host index");
        if let Some(h) = cached.get(group, hash) {
            // Already on the host (offloaded before, or reloaded from there): no copy.
            host.reused[h.index()] |= reused;
            if host.pool.ref_count(h) == Ok(0) {
                host.pool.take_free(h).expect("a free host block is in the queue");
                host.release_cached(h, on_free);
            }
            continue;
        }
        let Some(h) = take_host_block(host, prefix, stats) else {
            stats.offloads_dropped += 1;
            let p = prefix.as_mut().expect("offload implies prefix caching");
            p.forget_meta(group, hash, host);
            continue;
        };
        host.swap_out.push(BlockCopy {
            src: d,
            dst: h,
            num_slots: block_size,
            group,
        });
        stats.offload_copies += 1;
        let inserted = host
            .cached
            .as_mut()
            .expect("offload implies a host index")
            .insert(group, hash, h);
        debug_assert!(inserted, "the hash was not on the host");
        // Free and cached: where the eviction policy puts it (LRU: the tail).
        host.reused[h.index()] = reused;
        host.release_cached(h, on_free);
        let p = prefix.as_mut().expect("offload implies prefix caching");
        if p.events.is_some() {
            let e = p.host_stored_event(group, hash);
            p.push_event(e);
        }
    }
    let o = prefix
        .as_mut()
        .and_then(|p| p.offload.as_mut())
        .expect("checked above");
    o.queue.clear();
    o.done = 0;
}

impl HostTier {
    /// Holds the host `blocks` until the next drain, for the reloads reading
    /// them (one pass over the pool, then the flags and the release list).
    pub(super) fn hold_for_reload(&mut self, blocks: impl Iterator<Item = BlockId> + Clone) {
        self.pool.hold_all(blocks.clone());
        for h in blocks.clone() {
            self.reused[h.index()] = true;
        }
        self.release_on_drain.extend(blocks);
    }

    /// Drops the one reference of a host block holding an offloaded block:
    /// it joins the free queue where the eviction policy says.
    fn release_cached(&mut self, h: BlockId, on_device: bool) {
        let reused = self.reused[h.index()];
        match self
            .eviction
            .position(CacheTier::Host, BlockUse { reused, on_device })
        {
            QueueEnd::EvictLast => self.pool.decref(h),
            QueueEnd::EvictFirst => self.pool.decref_evict_first(h),
        }
        .expect("held once");
    }

    /// Returns a host block held until the drain: one holding an offloaded
    /// block to the most recently used end of the queue, an empty one to
    /// the head (reused first).
    pub(super) fn return_held(&mut self, h: BlockId) {
        let cached = self.cached.as_ref().is_some_and(|c| c.hash_of(h).is_some());
        if self.cached.is_none() || (cached && self.pool.ref_count(h) != Ok(1)) {
            self.pool.decref(h).expect("held until drain");
        } else if cached {
            self.release_cached(h, true); // reloaded: the device holds it
        } else {
            self.pool.decref_evict_first(h).expect("held until drain");
        }
    }
}

impl KvCacheManager {
    /// Blocks offloaded to the host tier now, in every group (0 without
    /// prefix offload).
    pub fn num_host_cached_blocks(&self) -> usize {
        self.host
            .as_ref()
            .and_then(|h| h.cached.as_ref())
            .map_or(0, |c| c.len())
    }

    /// The cached prefix of `prompt` as a router that keeps one index per tier
    /// sees it in KV cache group `group` (Dynamo's device index, then its
    /// lower-tier index continuing from the device's match): leading tokens
    /// whose blocks the device caches, then tokens whose blocks continue in
    /// the host tier, leaving one token to compute as
    /// [`Self::cached_prefix_len`] does. `(0, 0)` when prefix caching is off
    /// or `group` does not exist. Pure.
    ///
    /// ```
    /// use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, PrefixOffload, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 3, block_size: 4, num_host_blocks: 4, watermark: 0.0,
    ///     enable_prefix_caching: true, prefix_offload: PrefixOffload::OnEvict, ..Default::default()
    /// }).unwrap();
    /// let mut ops = BlockOps::default();
    /// let a: Vec<u32> = (0..8).collect();
    /// kv.allocate(SeqId(1), &a).unwrap();           // 2 blocks
    /// kv.drain_ops(&mut ops);
    /// kv.free(SeqId(1)).unwrap();                   // both cached, free
    /// kv.allocate(SeqId(2), &[9; 12]).unwrap();     // evicts both: offloaded
    /// kv.drain_ops(&mut ops);
    /// assert_eq!(ops.swap_out.len(), 2);            // device -> host, before the step
    /// kv.free(SeqId(2)).unwrap();
    /// let keys = PrefixKeys::default();
    /// assert_eq!(kv.cached_prefix_tiers_in_group(&[0, 1, 2, 3, 4, 5, 6, 7, 0], &keys, 0), (0, 8));
    /// let r = kv.allocate(SeqId(3), &[0, 1, 2, 3, 4, 5, 6, 7, 0]).unwrap();
    /// assert_eq!(r.cached_tokens, 8);               // reloaded, not recomputed
    /// kv.drain_ops(&mut ops);
    /// assert_eq!(ops.swap_in.len(), 2);             // host -> device, before the step
    /// kv.check_invariants().unwrap();
    /// ```
    pub fn cached_prefix_tiers_in_group(
        &self,
        prompt: &[TokenId],
        keys: &PrefixKeys,
        group: u32,
    ) -> (u64, u64) {
        let Some(p) = &self.prefix else { return (0, 0) };
        if prompt.is_empty() || group as usize >= self.config.groups.len() {
            return (0, 0);
        }
        let host = self.host.as_ref().and_then(|h| h.cached.as_ref());
        let bs = self.config.block_size;
        let (mut parent, mut device, mut on_host) = (None, 0, 0);
        for (i, block) in prompt[..prompt.len() - 1].chunks_exact(bs as usize).enumerate() {
            let h = hash_block(p.algo, parent, block, i as u32, bs, keys);
            if on_host == 0 && p.index.get(group, h).is_some() {
                device += bs as u64;
            } else if host.is_some_and(|c| c.get(group, h).is_some()) {
                on_host += bs as u64;
            } else {
                break;
            }
            parent = Some(h);
        }
        (device, on_host)
    }
}

/// Host-tier cache invariants: the host index is a bijection of committed
/// entries; a host block carrying a hash is held by no swapped table (only by
/// reloads until the drain); queued offloads name device blocks; with events
/// on, event metadata is kept for exactly the hashes cached in a tier or queued.
pub(super) fn check_offload_invariants(
    prefix: &Option<PrefixState>,
    host: &Option<HostTier>,
    device: &BlockPool,
) -> Result<(), InvariantViolation> {
    let bad = |what: String| Err(InvariantViolation::new(what));
    let offload = prefix.as_ref().and_then(|p| p.offload.as_ref());
    let cached = host.as_ref().and_then(|h| h.cached.as_ref());
    let (Some(p), Some(o), Some(host), Some(cached)) = (prefix.as_ref(), offload, host.as_ref(), cached)
    else {
        if offload.is_some() != cached.is_some() {
            return bad("offload is on in one tier only".into());
        }
        return Ok(());
    };
    cached.check_invariants()?;
    if cached.num_duplicates() > 0 {
        return bad("the host index holds duplicates".into());
    }
    for i in 0..host.pool.num_blocks() {
        let h = BlockId(i);
        if cached.pending_hash_of(h).is_some() {
            return bad(format!("host block {h:?} is pending"));
        }
        if cached.hash_of(h).is_none() {
            continue;
        }
        let held = host.release_on_drain.iter().filter(|&&x| x == h).count() as u32;
        let rc = host.pool.ref_count(h).expect("in range");
        if rc != held {
            return bad(format!(
                "host block {h:?} holds an offloaded block but has {rc} references, {held} of them reloads: a swapped sequence holds it"
            ));
        }
    }
    if let Some(&(d, ..)) = o
        .queue
        .iter()
        .find(|q| q.0.index() >= device.num_blocks() as usize)
    {
        return bad(format!("queued offload names unknown device block {d:?}"));
    }
    if let Some(meta) = &o.meta {
        for &(g, h) in meta.keys() {
            let queued = o.queue.iter().any(|&(_, qh, qg, _)| (qg, qh) == (g, h));
            if p.index.get(g, h).is_none() && cached.get(g, h).is_none() && !queued {
                return bad(format!(
                    "event metadata kept for {h:?} (group {g}), cached in no tier"
                ));
            }
        }
        let device_cached = (0..device.num_blocks())
            .map(BlockId)
            .filter_map(|b| Some((p.index.group_of(b)?, p.index.hash_of(b)?)));
        let host_cached = (0..host.pool.num_blocks())
            .filter_map(|h| Some((cached.group_of(BlockId(h))?, cached.hash_of(BlockId(h))?)));
        if let Some((g, h)) = device_cached.chain(host_cached).find(|k| !meta.contains_key(k)) {
            return bad(format!(
                "{h:?} (group {g}) is cached but its event metadata is lost"
            ));
        }
    }
    Ok(())
}
