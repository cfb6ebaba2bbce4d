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
