//! The block pool: a fixed number of physical blocks, their reference counts,
//! and an intrusive doubly linked queue of free blocks.
//!
//! Invariants (checked by [`BlockPool::check_invariants`]):
//! - a block is in the free queue exactly when its reference count is 0;
//! - `num_free` equals the length of the free queue, and free + used = total;
//! - the queue links are consistent: `next(prev(b)) == b`, the head has no
//!   `prev`, the tail has no `next`, and walking from the head reaches the tail
//!   in `num_free` steps.
//!
//! Blocks are taken from the head and returned at the tail, so the queue is in
//! least-recently-freed-first order and can serve directly as an eviction order.
//! Because a block can also leave the middle of the queue in O(1)
//! ([`BlockPool::take_free`]), a cached free block can be reused in place.
//!
//! Metadata is one 12-byte record per block in one flat array
//! ([`BlockPool::METADATA_BYTES_PER_BLOCK`]); nothing is allocated after construction.

use crate::error::{InvariantViolation, PoolError};
use crate::ids::BlockId;

/// The "no block" link value.
const NIL: u32 = u32::MAX;

/// Largest pool accepted: 2^30 blocks (12 GiB of metadata). Larger pools are
/// almost certainly a units mistake (bytes where blocks were meant).
pub const MAX_BLOCKS: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockMeta {
    /// References held by sequences; 0 means the block is in the free queue.
    ref_count: u32,
    /// Previous block in the free queue, or NIL.
    prev: u32,
    /// Next block in the free queue, or NIL.
    next: u32,
}

/// A fixed-size pool of blocks with reference counts and an O(1) free queue.
///
/// ```
/// use pagedkv::{BlockId, BlockPool};
/// let mut pool = BlockPool::new(4).unwrap();
/// let a = pool.allocate().unwrap();
/// assert_eq!(a, BlockId(0));
/// pool.incref(a).unwrap();               // shared by a second holder
/// assert!(!pool.decref(a).unwrap());     // still held
/// assert!(pool.decref(a).unwrap());      // now free, at the tail of the queue
/// assert_eq!(pool.num_free(), 4);
/// assert!(pool.decref(a).is_err());      // double free is an error, not a panic
/// ```
#[derive(Clone, Debug)]
pub struct BlockPool {
    meta: Vec<BlockMeta>,
    head: u32,
    tail: u32,
    num_free: u32,
}

impl BlockPool {
    /// Bytes of pool metadata per block (`size_of` of the per-block record).
    pub const METADATA_BYTES_PER_BLOCK: usize = std::mem::size_of::<BlockMeta>();

    /// A pool of `num_blocks` free blocks, queued in id order (so the first
    /// allocation returns block 0: runs are reproducible).
    pub fn new(num_blocks: u32) -> Result<Self, PoolError> {
        if num_blocks == 0 || num_blocks > MAX_BLOCKS {
            return Err(PoolError::InvalidSize { num_blocks });
        }
        let meta = (0..num_blocks)
            .map(|i| BlockMeta {
                ref_count: 0,
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i + 1 == num_blocks { NIL } else { i + 1 },
            })
            .collect();
        Ok(BlockPool {
            meta,
            head: 0,
            tail: num_blocks - 1,
            num_free: num_blocks,
        })
    }

    /// Total blocks.
    #[inline]
    pub fn num_blocks(&self) -> u32 {
        self.meta.len() as u32
    }

    /// Blocks in the free queue.
    #[inline]
    pub fn num_free(&self) -> u32 {
        self.num_free
    }

    /// Blocks held by at least one reference.
    #[inline]
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.num_free
    }

    fn meta(&self, block: BlockId) -> Result<&BlockMeta, PoolError> {
        self.meta.get(block.index()).ok_or(PoolError::UnknownBlock {
            block,
            num_blocks: self.num_blocks(),
        })
    }

    /// The block's reference count (0 for a free block).
    #[inline]
    pub fn ref_count(&self, block: BlockId) -> Result<u32, PoolError> {
        self.meta(block).map(|m| m.ref_count)
    }

    /// Whether the block is in the free queue.
    pub fn is_free(&self, block: BlockId) -> Result<bool, PoolError> {
        self.meta(block).map(|m| m.ref_count == 0)
    }

    /// The block at the head of the free queue (the next to be allocated).
    pub fn peek_free(&self) -> Option<BlockId> {
        (self.head != NIL).then_some(BlockId(self.head))
    }

    /// Takes the block at the head of the free queue and gives it one reference.
    #[inline]
    pub fn allocate(&mut self) -> Result<BlockId, PoolError> {
        if self.head == NIL {
            return Err(PoolError::Exhausted {
                num_blocks: self.num_blocks(),
            });
        }
        let block = BlockId(self.head);
        self.unlink(block.0);
        self.meta[block.index()].ref_count = 1;
        Ok(block)
    }

    /// Takes a specific free block out of the middle of the queue in O(1) and
    /// gives it one reference (a prefix-cache hit on a freed block).
    pub fn take_free(&mut self, block: BlockId) -> Result<(), PoolError> {
        if self.meta(block)?.ref_count != 0 {
            return Err(PoolError::NotFree { block });
        }
        self.unlink(block.0);
        self.meta[block.index()].ref_count = 1;
        Ok(())
    }

    /// Adds a reference to an allocated block (sharing it). Returns the new count.
    #[inline]
    pub fn incref(&mut self, block: BlockId) -> Result<u32, PoolError> {
        let m = self.meta(block)?;
        if m.ref_count == 0 {
            return Err(PoolError::NotAllocated { block });
        }
        if m.ref_count == u32::MAX {
            return Err(PoolError::RefCountOverflow { block });
        }
        let m = &mut self.meta[block.index()];
        m.ref_count += 1;
        Ok(m.ref_count)
    }

    /// Drops a reference; at zero the block joins the tail of the free queue.
    /// Returns whether the block became free. Dropping a reference of a free
    /// block is [`PoolError::DoubleFree`] and changes nothing.
    #[inline]
    pub fn decref(&mut self, block: BlockId) -> Result<bool, PoolError> {
        self.drop_ref(block, false)
    }

    /// Like [`Self::decref`], but a block that becomes free goes to the head of
    /// the queue, to be reused first: the prefix cache frees blocks that hold
    /// nothing worth keeping (no cached hash) this way, so the LRU order of the
    /// cached ones is kept.
    #[inline]
    pub fn decref_evict_first(&mut self, block: BlockId) -> Result<bool, PoolError> {
        self.drop_ref(block, true)
    }

    #[inline(always)]
    fn drop_ref(&mut self, block: BlockId, to_head: bool) -> Result<bool, PoolError> {
        if self.meta(block)?.ref_count == 0 {
            return Err(PoolError::DoubleFree { block });
        }
        let m = &mut self.meta[block.index()];
        m.ref_count -= 1;
        if m.ref_count > 0 {
            return Ok(false);
        }
        if to_head {
            self.push_head(block.0);
        } else {
            self.push_tail(block.0);
        }
        Ok(true)
    }

    /// Free blocks from head (next allocated, least recently freed) to tail.
    pub fn free_blocks(&self) -> FreeBlocks<'_> {
        FreeBlocks {
            pool: self,
            next: self.head,
            remaining: self.num_free,
        }
    }

    fn unlink(&mut self, i: u32) {
        let BlockMeta { prev, next, .. } = self.meta[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.meta[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.meta[next as usize].prev = prev;
        }
        let m = &mut self.meta[i as usize];
        m.prev = NIL;
        m.next = NIL;
        self.num_free -= 1;
    }

    fn push_tail(&mut self, i: u32) {
        let tail = self.tail;
        {
            let m = &mut self.meta[i as usize];
            m.prev = tail;
            m.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.meta[tail as usize].next = i;
        }
        self.tail = i;
        self.num_free += 1;
    }

    fn push_head(&mut self, i: u32) {
        let head = self.head;
        {
            let m = &mut self.meta[i as usize];
            m.prev = NIL;
            m.next = head;
        }
        if head == NIL {
            self.tail = i;
        } else {
            self.meta[head as usize].prev = i;
        }
        self.head = i;
        self.num_free += 1;
    }

    /// Checks every pool invariant listed in the module docs. O(num_blocks).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let n = self.num_blocks();
        let mut walked = 0u32;
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            if cur >= n {
                return Err(InvariantViolation::new(format!(
                    "free queue link {cur} is out of range"
                )));
            }
            if walked == self.num_free {
                return Err(InvariantViolation::new(format!(
                    "free queue is longer than num_free ({}) or has a cycle",
                    self.num_free
                )));
            }
            let m = self.meta[cur as usize];
            if m.ref_count != 0 {
                return Err(InvariantViolation::new(format!(
                    "block {cur} is in the free queue with ref count {}",
                    m.ref_count
                )));
            }
            if m.prev != prev {
                return Err(InvariantViolation::new(format!(
                    "block {cur}: prev link {} but reached from {prev}",
                    m.prev
                )));
            }
            walked += 1;
            prev = cur;
            cur = m.next;
        }
        if walked != self.num_free {
            return Err(InvariantViolation::new(format!(
                "free queue holds {walked} blocks but num_free is {}",
                self.num_free
            )));
        }
        if prev != self.tail {
            return Err(InvariantViolation::new(format!(
                "free queue ends at {prev} but tail is {}",
                self.tail
            )));
        }
        let zero = self.meta.iter().filter(|m| m.ref_count == 0).count() as u32;
        if zero != self.num_free {
            return Err(InvariantViolation::new(format!(
                "{zero} blocks have ref count 0 but {} are queued free: a block left the queue without a reference",
                self.num_free
            )));
        }
        if let Some((i, m)) = self
            .meta
            .iter()
            .enumerate()
            .find(|(_, m)| m.ref_count != 0 && (m.prev != NIL || m.next != NIL))
        {
            return Err(InvariantViolation::new(format!(
                "used block {i} still has free-queue links ({}, {})",
                m.prev, m.next
            )));
        }
        Ok(())
    }
}

/// Iterator over the free queue, head to tail. See [`BlockPool::free_blocks`].
#[derive(Debug)]
pub struct FreeBlocks<'a> {
    pool: &'a BlockPool,
    next: u32,
    remaining: u32,
}

impl Iterator for FreeBlocks<'_> {
    type Item = BlockId;

    fn next(&mut self) -> Option<BlockId> {
        // `remaining` bounds the walk even if the links were ever corrupted.
        if self.next == NIL || self.remaining == 0 {
            return None;
        }
        let cur = self.next;
        self.next = self.pool.meta[cur as usize].next;
        self.remaining -= 1;
        Some(BlockId(cur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_at_most_16_bytes_per_block() {
        const { assert!(BlockPool::METADATA_BYTES_PER_BLOCK <= 16) };
        assert_eq!(BlockPool::METADATA_BYTES_PER_BLOCK, 12);
    }

    #[test]
    fn one_block_pool() {
        let mut pool = BlockPool::new(1).unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(pool.num_free(), 0);
        assert_eq!(pool.peek_free(), None);
        assert!(matches!(
            pool.allocate(),
            Err(PoolError::Exhausted { num_blocks: 1 })
        ));
        pool.check_invariants().unwrap();
        assert!(pool.decref(b).unwrap());
        assert_eq!(pool.free_blocks().collect::<Vec<_>>(), vec![b]);
        pool.check_invariants().unwrap();
    }

    #[test]
    fn fifo_order_and_reproducible_ids() {
        let mut pool = BlockPool::new(4).unwrap();
        let ids: Vec<_> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(ids, [BlockId(0), BlockId(1), BlockId(2), BlockId(3)]);
        for b in [ids[2], ids[0], ids[3]] {
            pool.decref(b).unwrap();
        }
        // Least recently freed first.
        assert_eq!(
            pool.free_blocks().collect::<Vec<_>>(),
            [BlockId(2), BlockId(0), BlockId(3)]
        );
        assert_eq!(pool.allocate().unwrap(), BlockId(2));
        pool.check_invariants().unwrap();
    }

    #[test]
    fn take_from_the_middle_head_and_tail() {
        let mut pool = BlockPool::new(5).unwrap();
        pool.take_free(BlockId(2)).unwrap();
        pool.take_free(BlockId(0)).unwrap();
        pool.take_free(BlockId(4)).unwrap();
        pool.check_invariants().unwrap();
        assert_eq!(pool.free_blocks().collect::<Vec<_>>(), [BlockId(1), BlockId(3)]);
        assert!(matches!(
            pool.take_free(BlockId(2)),
            Err(PoolError::NotFree { .. })
        ));
        assert_eq!(pool.ref_count(BlockId(2)).unwrap(), 1);
    }

    #[test]
    fn refused_calls_change_nothing() {
        let mut pool = BlockPool::new(3).unwrap();
        let a = pool.allocate().unwrap();
        let before = format!("{pool:?}");
        assert!(matches!(
            pool.decref(BlockId(1)),
            Err(PoolError::DoubleFree { .. })
        ));
        assert!(matches!(
            pool.incref(BlockId(2)),
            Err(PoolError::NotAllocated { .. })
        ));
        assert!(matches!(
            pool.incref(BlockId(9)),
            Err(PoolError::UnknownBlock { .. })
        ));
        assert!(matches!(pool.take_free(a), Err(PoolError::NotFree { .. })));
        assert_eq!(before, format!("{pool:?}"));
        pool.check_invariants().unwrap();
    }

    #[test]
    fn evict_first_goes_to_the_head() {
        let mut pool = BlockPool::new(3).unwrap();
        let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
        pool.decref(a).unwrap();
        assert!(pool.decref_evict_first(b).unwrap());
        assert_eq!(pool.free_blocks().collect::<Vec<_>>(), [b, BlockId(2), a]);
        pool.check_invariants().unwrap();
        assert!(matches!(
            pool.decref_evict_first(b),
            Err(PoolError::DoubleFree { .. })
        ));
        let mut one = BlockPool::new(1).unwrap();
        let c = one.allocate().unwrap();
        one.decref_evict_first(c).unwrap();
        assert_eq!(one.peek_free(), Some(c));
        one.check_invariants().unwrap();
    }

    #[test]
    fn invalid_sizes() {
        assert!(matches!(BlockPool::new(0), Err(PoolError::InvalidSize { .. })));
        assert!(matches!(
            BlockPool::new(MAX_BLOCKS + 1),
            Err(PoolError::InvalidSize { .. })
        ));
    }
}
