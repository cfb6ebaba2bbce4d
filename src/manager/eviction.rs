//! Eviction order of cached blocks, as a small policy: where a block holding
//! cached content joins its tier's free queue.
//!
//! Each tier keeps its free blocks in one intrusive queue (the device pool's,
//! the host pool's) with O(1) insertion at either end and O(1) removal from
//! the middle (a hit); blocks are taken from the head. A policy only answers
//! which end a cached block joins, given whether its content has been reused
//! (hit by a later prompt, on the device or reloaded from the host), so every
//! policy keeps the queues' O(1) paths; [`Eviction::Lru`] (the default)
//! answers without looking and the manager does not even ask it. Otherwise
//! the manager asks for both tiers: for a device block as it becomes free,
//! for a host block as it is offloaded or its reload is done.
//!
//! The device queue stays LRU under every built-in policy: freeing a
//! sequence's blocks last block first keeps a full-attention group's cache
//! closed under prefixes (a router never sees a parent removed before its
//! children), which a reordering policy would break. The host tier has no
//! such constraint (routers index it as continuations of the device's prefix).

use crate::prefix::CacheTier;

/// The end of a free queue a block joins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueEnd {
    /// The head: taken (evicted) first.
    EvictFirst,
    /// The tail: taken last (most recently used).
    EvictLast,
}

/// What a policy may weigh about a cached block joining a free queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockUse {
    /// Its content has been hit since it was computed (on the device, or
    /// reloaded from the host).
    pub reused: bool,
    /// (Host tier) the device holds the same content now: the host copy only
    /// saves a copy when the device evicts it again.
    pub on_device: bool,
}

/// Where a block holding cached content joins the free queue of its tier.
///
/// ```
/// use pagedkv::{BlockUse, CacheTier, Eviction, EvictionPolicy, QueueEnd};
/// let fresh = BlockUse::default();
/// let reloaded = BlockUse { reused: true, on_device: true };
/// assert_eq!(Eviction::Lru.position(CacheTier::Host, reloaded), QueueEnd::EvictLast);
/// assert_eq!(Eviction::Exclusive.position(CacheTier::Host, reloaded), QueueEnd::EvictFirst);
/// assert_eq!(Eviction::Exclusive.position(CacheTier::Host, fresh), QueueEnd::EvictLast);
/// assert_eq!(Eviction::SegmentedLru.position(CacheTier::Host, fresh), QueueEnd::EvictFirst);
/// assert_eq!(Eviction::SegmentedLru.position(CacheTier::Device, fresh), QueueEnd::EvictLast);
/// ```
pub trait EvictionPolicy {
    /// The end a cached block of `tier` joins when it becomes free (or, on
    /// the host, when it is offloaded or its reload is done).
    fn position(&self, tier: CacheTier, block: BlockUse) -> QueueEnd;
}

/// The built-in eviction policies (`KvCacheConfig::eviction`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Eviction {
    /// Least recently used first, in both tiers (the default). The host
    /// tier is inclusive: a reloaded block keeps its host copy as recently used.
    #[default]
    Lru,
    /// In the host tier, blocks whose content was never reused are evicted
    /// before any reused one (a probation segment at the head, a protected
    /// LRU segment behind it), so one-off suffixes offloaded from the device
    /// do not push shared prefixes out. The device queue stays LRU.
    SegmentedLru,
    /// The host tier is (nearly) exclusive of the device: a host copy whose
    /// content was just reloaded to the device is evicted first (the device
    /// holds it; evicted there, it is offloaded again), so the host's room
    /// goes to content the device does not hold. With `PrefixOffload::OnEvict`.
    /// The device queue stays LRU.
    Exclusive,
}

impl EvictionPolicy for Eviction {
    #[inline]
    fn position(&self, tier: CacheTier, block: BlockUse) -> QueueEnd {
        match (self, tier) {
            (Eviction::SegmentedLru, CacheTier::Host) if !block.reused => QueueEnd::EvictFirst,
            (Eviction::Exclusive, CacheTier::Host) if block.on_device => QueueEnd::EvictFirst,
            _ => QueueEnd::EvictLast,
        }
    }
}
