//! Identifier newtypes.
//!
//! Every identifier is a `#[repr(transparent)]` wrapper over the plain integer an
//! engine copies into a device tensor, so a block table (`&[BlockId]`) can be
//! reinterpreted as `&[u32]` without conversion, and a `BlockId` is never
//! confused with a token count or a sequence id.

use std::fmt;

/// A physical KV-cache block on the device (index into the block pool).
///
/// ```
/// use pagedkv::BlockId;
/// let b = BlockId(7);
/// assert_eq!(b.index(), 7);
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The placeholder a block table holds where a sliding-window or chunked
    /// local attention group released a block it will never read again (and
    /// where a prefix hit needs no block). An attention kernel that honours the
    /// window never reads it; `u32::MAX` is outside every pool
    /// ([`crate::MAX_BLOCKS`] is 2^30), so a kernel that did would fault
    /// rather than read another sequence's data. Engines whose kernels
    /// dereference every table entry may upload any in-bounds block id instead.
    ///
    /// ```
    /// use pagedkv::BlockId;
    /// assert!(BlockId::NULL.is_null() && !BlockId(0).is_null());
    /// ```
    pub const NULL: BlockId = BlockId(u32::MAX);

    /// The block's index as a `usize`, for indexing flat per-block arrays.
    #[inline]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether this is the [`BlockId::NULL`] placeholder.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == u32::MAX
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            f.write_str("null")
        } else {
            write!(f, "b{}", self.0)
        }
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A sequence (one request, or one of its parallel samples), chosen by the engine.
///
/// ```
/// use pagedkv::SeqId;
/// assert_eq!(SeqId(42).get(), 42);
/// ```
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SeqId(pub u64);

impl SeqId {
    /// The raw id.
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq{}", self.0)
    }
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A token id from the model's vocabulary.
pub type TokenId = u32;

/// A slot in the KV cache: `block * block_size + offset`. The attention kernel
/// writes a token's keys and values at its slot. `u64` like vLLM's int64 slot
/// mapping, so no realistic cache overflows it.
pub type Slot = u64;

/// A dense handle to a sequence on the device: its slot in the manager's
/// sequence slab, the slot's generation and the manager it came from. Hot calls
/// that take a handle index the slab directly instead of looking the
/// [`SeqId`] up in a map. A handle goes stale when its sequence is freed or
/// swapped out (the slot's generation moves on); a stale handle, or one from
/// another manager (a clone of a manager counts as another), is refused with [`crate::KvError::StaleHandle`], never
/// resolved to another sequence.
///
/// ```
/// use pagedkv::{KvCacheConfig, KvCacheManager, KvError, SeqId};
/// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
/// kv.allocate(SeqId(1), &[1, 2, 3]).unwrap();
/// let h = kv.handle(SeqId(1)).unwrap();
/// assert_eq!(kv.seq_of(h).unwrap(), SeqId(1));
/// kv.free(SeqId(1)).unwrap();
/// kv.allocate(SeqId(2), &[1, 2, 3]).unwrap();      // may reuse the slot
/// assert!(matches!(kv.seq_of(h), Err(KvError::StaleHandle { .. })));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqHandle {
    pub(crate) index: u32,
    pub(crate) gen: u32,
    pub(crate) owner: u32,
}

impl SeqHandle {
    /// The slot index (dense: below the peak number of sequences on the
    /// device), usable to index an engine's own per-sequence arrays while
    /// the handle is live.
    #[inline]
    pub const fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for SeqHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.gen)
    }
}
