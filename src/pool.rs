//! The block pool: a fixed number of physical blocks, their reference counts,
//! and the free blocks in two places: a stack of blocks holding nothing worth
//! keeping, and an intrusive doubly linked queue of blocks whose content may
//! be reused (prefix-cached blocks, in LRU order).
//!
//! Invariants (checked by [`BlockPool::check_invariants`]):
//! - a block is free (in the stack or the queue, not both) exactly when its
//!   reference count is 0;
//! - `num_free` is the stack's length plus the queue's, and free + used = total;
//! - each stacked block records its position in the stack;
//! - the queue links are consistent: `next(prev(b)) == b`, the head has no
//!   `prev`, the tail has no `next`, and walking from the head reaches the tail
//!   in as many steps as the queue holds blocks.
//!
//! Allocation pops the stack, and takes the head of the queue only when the
//! stack is empty, so the free order is: the stack, top first, then the queue
//! from its head. [`BlockPool::decref`] returns a block to the tail of the
//! queue (least-recently-freed-first: the eviction order of cached blocks);
//! [`BlockPool::decref_evict_first`] pushes it on the stack (a block without
//! a hash needs no LRU position, and a stack is where allocation is cheapest:
//! one pop, no links to follow). A block can leave the middle of either in
//! O(1) ([`BlockPool::take_free`]), so a cached free block can be reused in place.
//!
//! Metadata is one 12-byte record per block in one flat array
//! ([`BlockPool::METADATA_BYTES_PER_BLOCK`]) plus the stack's 4 bytes per
//! block, reserved up front; nothing is allocated after construction.

use crate::error::{InvariantViolation, PoolError};
use crate::ids::BlockId;

/// The "no block" link value.
const NIL: u32 = u32::MAX;

/// The `next` of a block on the free stack (its `prev` is its position there).
const IN_STACK: u32 = u32::MAX - 1;

/// Largest pool accepted: 2^30 blocks (12 GiB of metadata). Larger pools are
/// almost certainly a units mistake (bytes where blocks were meant).
pub const MAX_BLOCKS: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockMeta {
    /// References held by sequences; 0 means the block is free.
    ref_count: u32,
    /// Previous block in the free queue, or NIL; on the stack, the block's position there.
    prev: u32,
    /// Next block in the free queue, or NIL; `IN_STACK` on the stack.
    next: u32,
}

/// A fixed-size pool of blocks with reference counts, an O(1) free stack and
/// an O(1) free queue.
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
/// assert_eq!(pool.allocate().unwrap(), BlockId(1)); // the stack is used first
/// ```
#[derive(Clone, Debug)]
pub struct BlockPool {
    meta: Vec<BlockMeta>,
    /// Free blocks holding nothing worth keeping: `stack[..stacked]`, the
    /// top (`stack[stacked - 1]`) allocated first. The array has room for
    /// every block, so pushes and pops only move `stacked` (no length to
    /// store and reload, no capacity check, no zeroing of room made up front).
    stack: Box<[u32]>,
    stacked: u32,
    head: u32,
    tail: u32,
    /// Blocks in the queue.
    num_queued: u32,
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
        // Block 0 on top of the stack.
        let meta = (0..num_blocks)
            .map(|i| BlockMeta {
                ref_count: 0,
                prev: num_blocks - 1 - i,
                next: IN_STACK,
            })
            .collect();
        Ok(BlockPool {
            meta,
            stack: (0..num_blocks).rev().collect(),
            stacked: num_blocks,
            head: NIL,
            tail: NIL,
            num_queued: 0,
        })
    }

    /// Total blocks.
    #[inline]
    pub fn num_blocks(&self) -> u32 {
        self.meta.len() as u32
    }

    /// Free blocks (on the stack or in the queue).
    #[inline]
    pub fn num_free(&self) -> u32 {
        self.stacked + self.num_queued
    }

    /// Blocks held by at least one reference.
    #[inline]
    pub fn num_used(&self) -> u32 {
        self.num_blocks() - self.num_free()
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

    /// Whether the block is free.
    pub fn is_free(&self, block: BlockId) -> Result<bool, PoolError> {
        self.meta(block).map(|m| m.ref_count == 0)
    }

    /// The next block [`Self::allocate`] returns: the top of the stack, else
    /// the head of the queue.
    pub fn peek_free(&self) -> Option<BlockId> {
        match self.stacked {
            0 => (self.head != NIL).then_some(BlockId(self.head)),
            top => Some(BlockId(self.stack[top as usize - 1])),
        }
    }

    /// Takes the top of the free stack, or when it is empty the head of the
    /// free queue (the least recently freed cached block: the one to evict),
    /// and gives it one reference.
    #[inline]
    pub fn allocate(&mut self) -> Result<BlockId, PoolError> {
        if self.stacked > 0 {
            self.stacked -= 1;
            let b = self.stack[self.stacked as usize];
            self.meta[b as usize] = BlockMeta {
                ref_count: 1,
                prev: NIL,
                next: NIL,
            };
            return Ok(BlockId(b));
        }
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

    /// Allocates `n` blocks at once, appended to `out` in the order
    /// [`Self::allocate`] would return them, or none when fewer are free
    /// ([`PoolError::Exhausted`]). Blocks come off the stack in one slice
    /// copy; only the rest come from the queue one by one.
    ///
    /// ```
    /// use pagedkv::{BlockId, BlockPool};
    /// let mut pool = BlockPool::new(4).unwrap();
    /// let mut table = Vec::new();
    /// pool.allocate_n(3, &mut table).unwrap();
    /// assert_eq!(table, [BlockId(0), BlockId(1), BlockId(2)]);
    /// assert!(pool.allocate_n(2, &mut table).is_err());
    /// assert_eq!(table.len(), 3);
    /// ```
    pub fn allocate_n(&mut self, n: u32, out: &mut impl Extend<BlockId>) -> Result<(), PoolError> {
        if n > self.num_free() {
            return Err(PoolError::Exhausted {
                num_blocks: self.num_blocks(),
            });
        }
        let from_stack = n.min(self.stacked);
        let keep = self.stacked - from_stack;
        let taken = &self.stack[keep as usize..self.stacked as usize];
        let meta = &mut self.meta[..];
        for &b in taken {
            meta[b as usize] = BlockMeta {
                ref_count: 1,
                prev: NIL,
                next: NIL,
            };
        }
        out.extend(taken.iter().rev().map(|&b| BlockId(b)));
        self.stacked = keep;
        for _ in from_stack..n {
            let block = BlockId(self.head);
            self.unlink(block.0);
            self.meta[block.index()].ref_count = 1;
            out.extend(std::iter::once(block));
        }
        Ok(())
    }

    /// Takes a specific free block out of the middle of the stack or the
    /// queue in O(1) and gives it one reference (a prefix-cache hit on a
    /// freed block).
    pub fn take_free(&mut self, block: BlockId) -> Result<(), PoolError> {
        if self.meta(block)?.ref_count != 0 {
            return Err(PoolError::NotFree { block });
        }
        self.take_known_free(block.0);
        Ok(())
    }

    /// [`Self::take_free`] of a block known to be free.
    #[inline(always)]
    fn take_known_free(&mut self, b: u32) {
        let BlockMeta { prev, next, .. } = self.meta[b as usize];
        if next == IN_STACK {
            // The last block fills its place.
            self.stacked -= 1;
            let last = self.stack[self.stacked as usize];
            if last != b {
                self.stack[prev as usize] = last;
                self.meta[last as usize].prev = prev;
            }
        } else {
            self.unlink(b);
        }
        self.meta[b as usize] = BlockMeta {
            ref_count: 1,
            prev: NIL,
            next: NIL,
        };
    }

    /// One more reference to each of `blocks` ([`Self::hold`] of each).
    #[inline]
    pub(crate) fn hold_all(&mut self, blocks: impl IntoIterator<Item = BlockId>) {
        for b in blocks {
            self.hold(b);
        }
    }

    /// One more reference to `block`: a free block is taken from the stack
    /// or the queue as [`Self::take_free`] takes it (then this returns
    /// true), a block in use is shared as [`Self::incref`] shares it. Panics
    /// on an unknown block or a count overflow (a broken caller invariant).
    #[inline(always)]
    pub(crate) fn hold(&mut self, block: BlockId) -> bool {
        let m = &mut self.meta[block.index()];
        if m.ref_count == 0 {
            self.take_known_free(block.0);
            true
        } else {
            m.ref_count = m.ref_count.checked_add(1).expect("reference count overflow");
            false
        }
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

    /// Like [`Self::decref`], but a block that becomes free goes on the stack,
    /// to be reused first (most recently freed first): blocks that hold
    /// nothing worth keeping (no cached hash, or prefix caching off) are freed
    /// this way, so the queue keeps only the cached ones, in LRU order.
    #[inline]
    pub fn decref_evict_first(&mut self, block: BlockId) -> Result<bool, PoolError> {
        self.drop_ref(block, true)
    }

    /// [`Self::decref_evict_first`] of each block, last first, for blocks the
    /// caller knows to be allocated (a table's, distinct): returns how many
    /// became free. Panics on a free or unknown block (a broken caller
    /// invariant).
    #[inline]
    pub(crate) fn release_all_evict_first(&mut self, blocks: &[BlockId]) -> u64 {
        self.release_all(blocks, |_| false)
    }

    /// Drops one reference to each block, last first, for blocks the caller
    /// knows to be allocated (a table's, distinct); returns how many became
    /// free. `freed(b)` is called for each block that becomes free: it joins
    /// the queue's tail when that returns true (as [`Self::decref`] puts it),
    /// else the stack (as [`Self::decref_evict_first`] does), in the order of
    /// those calls made one by one.
    /// Panics on a free or unknown block (a broken caller invariant).
    ///
    /// The loop keeps the stack's top and the queue's ends in registers, and
    /// writes a freed block's record in one store.
    #[inline]
    pub(crate) fn release_all(&mut self, blocks: &[BlockId], mut freed: impl FnMut(BlockId) -> bool) -> u64 {
        let (stack, meta) = (&mut self.stack[..], &mut self.meta[..]);
        let (mut top, mut head, mut tail) = (self.stacked, self.head, self.tail);
        let mut queued = 0;
        for &b in blocks.iter().rev() {
            let m = &mut meta[b.index()];
            match m.ref_count {
                0 => released_free(b),
                1 => {}
                _ => {
                    m.ref_count -= 1;
                    continue;
                }
            }
            if freed(b) {
                *m = BlockMeta {
                    ref_count: 0,
                    prev: tail,
                    next: NIL,
                };
                match tail {
                    NIL => head = b.0,
                    t => meta[t as usize].next = b.0,
                }
                tail = b.0;
                queued += 1;
            } else {
                *m = BlockMeta {
                    ref_count: 0,
                    prev: top,
                    next: IN_STACK,
                };
                stack[top as usize] = b.0;
                top += 1;
            }
        }
        let freed = top - self.stacked + queued;
        (self.stacked, self.head, self.tail) = (top, head, tail);
        self.num_queued += queued;
        freed as u64
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
            m.prev = self.stacked;
            m.next = IN_STACK;
            self.stack[self.stacked as usize] = block.0;
            self.stacked += 1;
        } else {
            self.push_tail(block.0);
        }
        Ok(true)
    }

    /// Free blocks in allocation order: the stack from its top, then the
    /// queue from its head (least recently freed) to its tail.
    pub fn free_blocks(&self) -> FreeBlocks<'_> {
        FreeBlocks {
            pool: self,
            stacked: self.stacked as usize,
            next: self.head,
            remaining: self.num_queued,
        }
    }

    /// Free blocks in the queue, from its head (the next cached block to
    /// evict) to its tail.
    pub fn queued_blocks(&self) -> FreeBlocks<'_> {
        FreeBlocks {
            pool: self,
            stacked: 0,
            next: self.head,
            remaining: self.num_queued,
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
        self.num_queued -= 1;
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
        self.num_queued += 1;
    }

    /// Checks every pool invariant listed in the module docs. O(num_blocks).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let n = self.num_blocks();
        for (pos, &b) in self.stack[..self.stacked as usize].iter().enumerate() {
            let m = self
                .meta
                .get(b as usize)
                .ok_or_else(|| InvariantViolation::new(format!("free stack entry {b} is out of range")))?;
            if m.ref_count != 0 || m.next != IN_STACK || m.prev != pos as u32 {
                return Err(InvariantViolation::new(format!(
                    "block {b} at free stack position {pos} has ref count {}, links ({}, {})",
                    m.ref_count, m.prev, m.next
                )));
            }
        }
        let mut walked = 0u32;
        let mut prev = NIL;
        let mut cur = self.head;
        while cur != NIL {
            if cur >= n {
                return Err(InvariantViolation::new(format!(
                    "free queue link {cur} is out of range"
                )));
            }
            if walked == self.num_queued {
                return Err(InvariantViolation::new(format!(
                    "free queue is longer than num_queued ({}) or has a cycle",
                    self.num_queued
                )));
            }
            let m = self.meta[cur as usize];
            if m.ref_count != 0 || m.next == IN_STACK {
                return Err(InvariantViolation::new(format!(
                    "block {cur} is in the free queue with ref count {} (or marked as stacked)",
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
        if walked != self.num_queued {
            return Err(InvariantViolation::new(format!(
                "free queue holds {walked} blocks but num_queued is {}",
                self.num_queued
            )));
        }
        if prev != self.tail {
            return Err(InvariantViolation::new(format!(
                "free queue ends at {prev} but tail is {}",
                self.tail
            )));
        }
        let zero = self.meta.iter().filter(|m| m.ref_count == 0).count() as u32;
        if zero != self.num_free() {
            return Err(InvariantViolation::new(format!(
                "{zero} blocks have ref count 0 but {} are free (stacked or queued): a block left them without a reference",
                self.num_free()
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

/// A released block was free already: a table held a free block (a broken
/// caller invariant of [`BlockPool::release_all`]). Out of line,
/// so the release loop keeps no state for the message.
#[cold]
#[inline(never)]
fn released_free(b: BlockId) -> ! {
    panic!("released block {b:?} is free: a table held a free block")
}

/// Iterator over free blocks in allocation order. See [`BlockPool::free_blocks`].
#[derive(Debug)]
pub struct FreeBlocks<'a> {
    pool: &'a BlockPool,
    /// Stack entries still to visit (from the top down).
    stacked: usize,
    next: u32,
    remaining: u32,
}

impl Iterator for FreeBlocks<'_> {
    type Item = BlockId;

    fn next(&mut self) -> Option<BlockId> {
        if self.stacked > 0 {
            self.stacked -= 1;
            return Some(BlockId(self.pool.stack[self.stacked]));
        }
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::proptest_cases(256)))]

        /// `release_all` leaves the pool exactly as one `decref` or
        /// `decref_evict_first` per block (last first) does: the same free
        /// order in the stack and the queue, the same counts, and it reports
        /// the blocks freed and asks about each freed block once.
        #[test]
        fn release_all_matches_one_call_per_block(
            num_blocks in 1u32..40,
            setup in proptest::collection::vec((0u8..4, 0u32..40), 0..80),
            picks in proptest::collection::vec((0u32..40, proptest::bool::ANY), 0..40),
        ) {
            let mut pool = BlockPool::new(num_blocks).unwrap();
            // A mixed state: blocks in use (some shared), free ones on the
            // stack and in the queue.
            for (op, b) in setup {
                let b = BlockId(b % num_blocks);
                match op {
                    0 => { let _ = pool.allocate(); }
                    1 => { let _ = pool.incref(b); }
                    2 => { let _ = pool.decref(b); }
                    _ => { let _ = pool.decref_evict_first(b); }
                }
            }
            // A table: distinct blocks in use, each kept (queued) or not.
            let mut table = Vec::new();
            let mut keep = vec![false; num_blocks as usize];
            for (b, k) in picks {
                let b = BlockId(b % num_blocks);
                if pool.ref_count(b).unwrap() > 0 && !table.contains(&b) {
                    table.push(b);
                    keep[b.index()] = k;
                }
            }
            let mut one_by_one = pool.clone();
            let mut expected = (0, Vec::new());
            for &b in table.iter().rev() {
                let freed = if keep[b.index()] {
                    one_by_one.decref(b).unwrap()
                } else {
                    one_by_one.decref_evict_first(b).unwrap()
                };
                if freed {
                    expected.0 += 1;
                    expected.1.push(b);
                }
            }
            let mut asked = Vec::new();
            let returned = pool.release_all(&table, |b| {
                asked.push(b);
                keep[b.index()]
            });
            pool.check_invariants().unwrap();
            proptest::prop_assert_eq!((returned, asked), expected);
            proptest::prop_assert_eq!(pool.free_blocks().collect::<Vec<_>>(), one_by_one.free_blocks().collect::<Vec<_>>());
            proptest::prop_assert_eq!(pool.queued_blocks().collect::<Vec<_>>(), one_by_one.queued_blocks().collect::<Vec<_>>());
            proptest::prop_assert_eq!(&pool.meta, &one_by_one.meta);
        }
    }

    #[test]
    fn metadata_is_at_most_16_bytes_per_block() {
        // 12 bytes of record and 4 of free stack.
        const { assert!(BlockPool::METADATA_BYTES_PER_BLOCK + 4 <= 16) };
        assert_eq!(BlockPool::METADATA_BYTES_PER_BLOCK, 12);
    }

    #[test]
    fn take_from_the_middle_of_the_stack() {
        let mut pool = BlockPool::new(4).unwrap();
        pool.take_free(BlockId(1)).unwrap();
        pool.check_invariants().unwrap();
        pool.take_free(BlockId(0)).unwrap(); // the top
        pool.take_free(BlockId(3)).unwrap(); // the bottom
        pool.check_invariants().unwrap();
        assert_eq!(pool.free_blocks().collect::<Vec<_>>(), [BlockId(2)]);
        for b in [1, 0, 3] {
            pool.decref_evict_first(BlockId(b)).unwrap();
        }
        pool.decref(BlockId(2)).unwrap_err();
        assert_eq!(
            pool.free_blocks().collect::<Vec<_>>(),
            [BlockId(3), BlockId(0), BlockId(1), BlockId(2)]
        );
        assert_eq!(pool.queued_blocks().count(), 0);
        pool.check_invariants().unwrap();
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
        // A block taken from the stack's middle is replaced by its top.
        assert_eq!(pool.free_blocks().collect::<Vec<_>>(), [BlockId(3), BlockId(1)]);
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
