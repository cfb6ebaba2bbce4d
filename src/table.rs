//! One sequence's block table: its physical blocks in logical order and its
//! token count.
//!
//! Invariant: a table holds exactly `blocks_for(num_tokens)` blocks, so at most
//! its last block is partially filled. Position `pos` lives in block
//! `blocks[pos / block_size]` at offset `pos % block_size`, i.e. at slot
//! `blocks[pos / block_size] * block_size + pos % block_size`.

use std::ops::Range;

use smallvec::SmallVec;

use crate::ids::{BlockId, Slot};

/// Blocks stored inline before a table spills to the heap (96 tokens at block
/// size 16); 6 keeps a sequence's map entry within one 64-byte cache line.
pub(crate) const INLINE_BLOCKS: usize = 6;

/// The storage behind a table; recycled by the manager so warm loops do not allocate.
pub(crate) type BlockVec = SmallVec<[BlockId; INLINE_BLOCKS]>;

/// A sequence's blocks and token count, read-only to callers.
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockTable {
    pub(crate) blocks: BlockVec,
    pub(crate) num_tokens: u32,
    pub(crate) block_size: u32,
    /// False only when the last block is known to be held by this table alone,
    /// so a write into it needs no copy-on-write check. Set by fork and
    /// truncate; cleared once a check finds the block exclusive or a fresh
    /// block becomes the last.
    pub(crate) tail_maybe_shared: bool,
    /// The manager's step (drain epoch) of the last allocate or append: the
    /// sequence's newest tokens are uncomputed while it is the current one.
    pub(crate) appended_epoch: u32,
}

impl BlockTable {
    pub(crate) fn with_storage(mut blocks: BlockVec, block_size: u32) -> Self {
        blocks.clear();
        BlockTable {
            blocks,
            num_tokens: 0,
            block_size,
            tail_maybe_shared: false,
            appended_epoch: 0,
        }
    }

    /// The physical blocks in logical order; copy straight into the engine's
    /// block-table tensor (`BlockId` is a transparent `u32`).
    #[inline]
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens held.
    #[inline]
    pub fn num_tokens(&self) -> u32 {
        self.num_tokens
    }

    /// Blocks held (`blocks_for(num_tokens)`).
    #[inline]
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Tokens in the last block (block_size when it is full; 0 for an empty table).
    #[inline]
    pub fn tokens_in_last_block(&self) -> u32 {
        match self.num_tokens % self.block_size {
            0 if self.num_tokens > 0 => self.block_size,
            r => r,
        }
    }

    /// The slot of token position `pos`, or `None` past the end.
    #[inline]
    pub fn slot(&self, pos: u32) -> Option<Slot> {
        if pos >= self.num_tokens {
            return None;
        }
        let block = self.blocks[(pos / self.block_size) as usize];
        Some(block.0 as u64 * self.block_size as u64 + (pos % self.block_size) as u64)
    }

    /// Appends the slots of positions `range` to `out` (no allocation once `out`
    /// has capacity). Returns `false`, writing nothing, if the range passes the end.
    pub fn slots_into(&self, range: Range<u32>, out: &mut Vec<Slot>) -> bool {
        if range.end > self.num_tokens || range.start > range.end {
            return false;
        }
        let bs = self.block_size;
        out.extend(range.map(|pos| {
            let block = self.blocks[(pos / bs) as usize];
            block.0 as u64 * bs as u64 + (pos % bs) as u64
        }));
        true
    }

    pub(crate) fn into_storage(self) -> BlockVec {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(blocks: &[u32], num_tokens: u32, block_size: u32) -> BlockTable {
        BlockTable {
            blocks: blocks.iter().map(|&b| BlockId(b)).collect(),
            num_tokens,
            block_size,
            tail_maybe_shared: false,
            appended_epoch: 0,
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
