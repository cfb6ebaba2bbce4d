//! One sequence's block table in one KV cache group: its physical blocks in
//! logical order and its token count.
//!
//! Invariants: a table holds exactly `blocks_for(num_tokens)` entries, so at
//! most its last block is partially filled; its first `num_released` entries
//! are the [`BlockId::NULL`] placeholder (blocks a sliding-window or chunked
//! local group will never read again) and every other entry is a real block.
//! Position `pos` lives in block `blocks[pos / block_size]` at offset
//! `pos % block_size`, i.e. at slot
//! `blocks[pos / block_size] * block_size + pos % block_size`.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use smallvec::SmallVec;

use crate::ids::{BlockId, Slot};

/// Blocks stored inline before a table spills to the heap (64 tokens at block
/// size 16; four keep a table at 56 bytes, which keeps a sequence's slab
/// entry at 112).
pub(crate) const INLINE_BLOCKS: usize = 4;

/// The storage behind a table; recycled by the manager so warm loops do not allocate.
pub(crate) type BlockVec = SmallVec<[BlockId; INLINE_BLOCKS]>;

/// A table's token count. Atomic only so that the manager can bring a count
/// its two-group decode loop left behind up to date through a shared
/// reference (see `manager::tables`): every access is a plain load or store
/// (`Relaxed`), or goes through `&mut`.
#[derive(Default)]
pub(crate) struct Count(AtomicU32);

impl Count {
    pub(crate) fn new(n: u32) -> Self {
        Count(AtomicU32::new(n))
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> u32 {
        self.0.load(Relaxed)
    }

    /// [`Self::get`] through `&mut` (a plain load, for the hot loops).
    #[inline(always)]
    pub(crate) fn value(&mut self) -> u32 {
        *self.0.get_mut()
    }

    #[inline(always)]
    pub(crate) fn set(&mut self, n: u32) {
        *self.0.get_mut() = n;
    }

    /// Sets the count through a shared reference (bringing a count left
    /// behind up to date: the value it stands for does not change).
    #[inline(always)]
    pub(crate) fn catch_up(&self, n: u32) {
        self.0.store(n, Relaxed);
    }
}

impl Clone for Count {
    fn clone(&self) -> Self {
        Count::new(self.get())
    }
}

impl fmt::Debug for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

/// A sequence's blocks and token count in one KV cache group, read-only to callers.
///
/// ```
/// use pagedkv::{KvCacheConfig, KvCacheManager, SeqId};
/// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
/// kv.allocate(SeqId(1), &[10, 11, 12, 13, 14]).unwrap();
/// let table = kv.table(SeqId(1)).unwrap();
/// assert_eq!(table.num_tokens(), 5);
/// assert_eq!(table.blocks().len(), 2);
/// assert_eq!(table.slot(4), Some(table.blocks()[1].0 as u64 * 4));
/// ```
#[derive(Clone, Debug)]
// The fields a decode step reads and writes first (the slab entry holds
// group 0's table: they share a cache line with its hot word), the flag
// among them (it is where `Option<Seq>` keeps its tag).
#[repr(C)]
pub struct BlockTable {
    pub(crate) num_tokens: Count,
    /// False only when the last block is known to be held by this table alone,
    /// so a write into it needs no copy-on-write check. Set by fork and
    /// truncate; cleared once a check finds the block exclusive or a fresh
    /// block becomes the last.
    pub(crate) tail_maybe_shared: bool,
    /// `slot - pos` for the positions of the last block: `last × block_size
    /// − (num_blocks − 1) × block_size`, wrapping. Kept by the manager's hot
    /// path while it knows the table unchanged (see `manager::append`).
    pub(crate) tail_base: u64,
    /// The length (tokens before an append) from which the next append
    /// releases a block: `u32::MAX` for full attention. Lets an append skip
    /// the release check with one comparison.
    pub(crate) release_at: u32,
    pub(crate) block_size: u32,
    pub(crate) blocks: BlockVec,
    /// Leading entries that are `BlockId::NULL`.
    pub(crate) num_released: u32,
}

/// Equal blocks, token counts and flags (`tail_base`, derived, is left out).
impl PartialEq for BlockTable {
    fn eq(&self, other: &Self) -> bool {
        self.blocks == other.blocks
            && self.num_tokens.get() == other.num_tokens.get()
            && self.block_size == other.block_size
            && self.tail_maybe_shared == other.tail_maybe_shared
            && self.num_released == other.num_released
            && self.release_at == other.release_at
    }
}

impl Eq for BlockTable {}

impl BlockTable {
    pub(crate) fn with_storage(mut blocks: BlockVec, block_size: u32) -> Self {
        blocks.clear();
        BlockTable {
            blocks,
            num_tokens: Count::new(0),
            block_size,
            tail_maybe_shared: false,
            num_released: 0,
            release_at: u32::MAX,
            tail_base: 0,
        }
    }

    /// The blocks in logical order, [`BlockId::NULL`] where released; copy
    /// straight into the engine's block-table tensor (`BlockId` is a
    /// transparent `u32`).
    #[inline]
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// The blocks the table still holds (after the released placeholders).
    #[inline]
    pub fn live_blocks(&self) -> &[BlockId] {
        &self.blocks[self.num_released as usize..]
    }

    /// Tokens held.
    #[inline]
    pub fn num_tokens(&self) -> u32 {
        self.num_tokens.get()
    }

    /// Table entries (`blocks_for(num_tokens)`), placeholders included.
    #[inline]
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Leading entries released by a sliding-window or chunked local group
    /// (they hold [`BlockId::NULL`]); 0 for full attention.
    #[inline]
    pub fn num_released(&self) -> u32 {
        self.num_released
    }

    /// Tokens in the last block (block_size when it is full; 0 for an empty table).
    #[inline]
    pub fn tokens_in_last_block(&self) -> u32 {
        match self.num_tokens.get() % self.block_size {
            0 if self.num_tokens.get() > 0 => self.block_size,
            r => r,
        }
    }

    /// The slot of token position `pos`, or `None` past the end or in a
    /// released block.
    #[inline]
    pub fn slot(&self, pos: u32) -> Option<Slot> {
        if pos >= self.num_tokens.get() {
            return None;
        }
        let block = self.blocks[(pos / self.block_size) as usize];
        (!block.is_null()).then(|| block.0 as u64 * self.block_size as u64 + (pos % self.block_size) as u64)
    }

    /// Makes the fresh block `b` (held by this table alone) the last, for
    /// the positions from `len` (a multiple of the block size: the previous
    /// last block is full), and sets `tail_base` for them.
    #[inline(always)]
    pub(crate) fn push_fresh_block(&mut self, b: BlockId, len: u32) {
        self.blocks.push(b);
        self.tail_maybe_shared = false;
        self.tail_base = (b.0 as u64 * self.block_size as u64).wrapping_sub(len as u64);
    }

    /// Appends the slots of positions `range` to `out` (no allocation once `out`
    /// has capacity). Returns `false`, writing nothing, if the range passes the
    /// end or starts in a released block.
    #[inline]
    pub fn slots_into(&self, range: Range<u32>, out: &mut Vec<Slot>) -> bool {
        let bs = self.block_size;
        if range.end > self.num_tokens.get() || range.start > range.end {
            return false;
        }
        if range.start < range.end && range.start / bs < self.num_released {
            return false;
        }
        out.extend(range.map(|pos| {
            let block = self.blocks[(pos / bs) as usize];
            block.0 as u64 * bs as u64 + (pos % bs) as u64
        }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(blocks: &[u32], num_tokens: u32, block_size: u32) -> BlockTable {
        let blocks: BlockVec = blocks.iter().map(|&b| BlockId(b)).collect();
        BlockTable {
            num_released: blocks.iter().take_while(|b| b.is_null()).count() as u32,
            blocks,
            num_tokens: Count::new(num_tokens),
            block_size,
            tail_maybe_shared: false,
            release_at: u32::MAX,
            tail_base: 0,
        }
    }

    #[test]
    fn slots_follow_the_table() {
        let t = table(&[7, 2, 5], 10, 4);
        let slots: Vec<_> = (0..10).map(|p| t.slot(p).unwrap()).collect();
        assert_eq!(slots, [28, 29, 30, 31, 8, 9, 10, 11, 20, 21]);
        assert_eq!(t.slot(10), None);
        let mut out = vec![99];
        assert!(t.slots_into(3..6, &mut out));
        assert_eq!(out, [99, 31, 8, 9]);
        assert!(!t.slots_into(8..11, &mut out));
        assert_eq!(out.len(), 4);
        assert_eq!(t.tokens_in_last_block(), 2);
    }

    #[test]
    fn released_blocks_have_no_slots() {
        let t = table(&[u32::MAX, u32::MAX, 5], 10, 4);
        assert_eq!(t.num_released(), 2);
        assert_eq!(t.live_blocks(), [BlockId(5)]);
        assert_eq!(t.slot(7), None);
        assert_eq!(t.slot(8), Some(20));
        let mut out = Vec::new();
        assert!(!t.slots_into(7..9, &mut out));
        assert!(t.slots_into(8..10, &mut out));
        assert!(t.slots_into(3..3, &mut out), "an empty range is fine anywhere");
        assert_eq!(out, [20, 21]);
    }

    #[test]
    fn block_size_one() {
        let t = table(&[3, 1, 4], 3, 1);
        assert_eq!((0..3).map(|p| t.slot(p).unwrap()).collect::<Vec<_>>(), [3, 1, 4]);
        assert_eq!(t.tokens_in_last_block(), 1);
    }

    #[test]
    fn empty_and_full() {
        assert_eq!(table(&[], 0, 16).tokens_in_last_block(), 0);
        assert_eq!(table(&[0], 16, 16).tokens_in_last_block(), 16);
    }
}
