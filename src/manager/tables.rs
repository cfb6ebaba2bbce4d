//! A sequence's block tables, one per KV cache group: group 0's inline in
//! the sequence (most models have one group), the others in one boxed
//! slice. Most decode steps of a two-group model touch only the slab
//! entry's first cache line (its hot word, the step fields, group 0's count
//! and slot base) and group 1's slot base, mirrored in the entry
//! ([`Tables::mirror_tail1`]): group 1's table, in the boxed slice, is left
//! with its token count behind, and every access to the sequence other than
//! the hot loops catches it up first ([`Tables::catch_up`]). Reading and
//! writing group 1's table on every step cost the two-group step a cache
//! line a sequence; with every table in one spilled vector it was four.

use std::iter::{once, Chain, Once};
use std::ops::{Index, IndexMut};
use std::slice;

use crate::table::{BlockTable, BlockVec};

/// One [`BlockTable`] per KV cache group, in group order.
#[derive(Debug, Clone)]
#[repr(C)]
pub(super) struct Tables {
    /// Groups 1 and up.
    rest: Box<[BlockTable]>,
    /// Group 0 (its count and slot base in the slab entry's first cache line).
    first: BlockTable,
    /// Group 1's `tail_base` (see [`Self::mirror_tail1`]). After `first`:
    /// placed before it, it pushed a one-group step's fields across a cache
    /// line in some entries (a one-group decode step 4–6% slower).
    tail1: u64,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            rest: Box::default(),
            tail1: 0,
            first: BlockTable::with_storage(Default::default(), 0),
        }
    }
}

impl Tables {
    /// Tables, one per group.
    #[inline]
    pub(super) fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Group 0's table.
    #[inline(always)]
    pub(super) fn first_mut(&mut self) -> &mut BlockTable {
        &mut self.first
    }

    /// Group 1's `tail_base` as last mirrored (0 with one group).
    #[inline(always)]
    pub(super) fn tail1(&self) -> u64 {
        self.tail1
    }

    /// Copies group 1's `tail_base` into the mirror. The manager calls it
    /// wherever it sets a sequence's hot word nonzero, so the mirror is
    /// current whenever the hot word is (the word is reset on any other
    /// change to the sequence).
    #[inline(always)]
    pub(super) fn mirror_tail1(&mut self) {
        self.tail1 = self.rest.first().map_or(0, |t| t.tail_base);
    }

    /// Sets the token count of groups 1 and up to group 0's (every group
    /// holds the same tokens): the two-group decode loop leaves group 1's
    /// behind, and every other access to the sequence brings it up to date
    /// first (`SeqSlab`'s `CatchUp`), so no reader sees it behind.
    #[inline(always)]
    pub(super) fn catch_up(&self) {
        for t in self.rest.iter() {
            t.num_tokens.catch_up(self.first.num_tokens.get());
        }
    }

    /// Both tables of a sequence of exactly two groups.
    #[inline(always)]
    pub(super) fn pair_mut(&mut self) -> Option<(&mut BlockTable, &mut BlockTable)> {
        match &mut self.rest[..] {
            [second] => Some((&mut self.first, second)),
            _ => None,
        }
    }

    /// The tables in group order.
    #[inline]
    pub(super) fn iter(&self) -> Chain<Once<&BlockTable>, slice::Iter<'_, BlockTable>> {
        once(&self.first).chain(self.rest.iter())
    }

    /// The tables in group order, mutably.
    #[inline]
    pub(super) fn iter_mut(&mut self) -> Chain<Once<&mut BlockTable>, slice::IterMut<'_, BlockTable>> {
        once(&mut self.first).chain(self.rest.iter_mut())
    }

    /// Makes it `groups` tables (at least one), table `g` being
    /// `make(g, storage)`: the block storage of a table kept is handed back
    /// for reuse. Allocates only when the number of groups changes.
    pub(super) fn reset(&mut self, groups: usize, mut make: impl FnMut(usize, BlockVec) -> BlockTable) {
        let rest = groups.max(1) - 1;
        if self.rest.len() != rest {
            let mut v = std::mem::take(&mut self.rest).into_vec();
            v.resize_with(rest, || BlockTable::with_storage(BlockVec::new(), 0));
            self.rest = v.into_boxed_slice();
        }
        for (g, t) in self.iter_mut().enumerate() {
            *t = make(g, std::mem::take(&mut t.blocks));
        }
        self.tail1 = 0;
    }
}

impl Index<usize> for Tables {
    type Output = BlockTable;

    #[inline]
    fn index(&self, group: usize) -> &BlockTable {
        match group {
            0 => &self.first,
            g => &self.rest[g - 1],
        }
    }
}

impl IndexMut<usize> for Tables {
    #[inline]
    fn index_mut(&mut self, group: usize) -> &mut BlockTable {
        match group {
            0 => &mut self.first,
            g => &mut self.rest[g - 1],
        }
    }
}

impl<'a> IntoIterator for &'a Tables {
    type Item = &'a BlockTable;
    type IntoIter = Chain<Once<&'a BlockTable>, slice::Iter<'a, BlockTable>>;

    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut Tables {
    type Item = &'a mut BlockTable;
    type IntoIter = Chain<Once<&'a mut BlockTable>, slice::IterMut<'a, BlockTable>>;

    #[inline]
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::BlockId;

    fn table(blocks: &[u32], num_tokens: u32) -> BlockTable {
        let mut t = BlockTable::with_storage(BlockVec::new(), 4);
        t.blocks = blocks.iter().map(|&b| BlockId(b)).collect();
        t.num_tokens.set(num_tokens);
        t
    }

    #[test]
    fn reset_keeps_storage_and_resizes() {
        let mut tables = Tables::default();
        assert_eq!(tables.len(), 1);
        assert!(tables.pair_mut().is_none());
        tables.reset(3, |g, storage| {
            assert!(storage.is_empty());
            table(&[g as u32; 9], 9 * 4)
        });
        assert_eq!(tables.len(), 3);
        assert!(tables.pair_mut().is_none(), "three groups are not a pair");
        let counts: Vec<u32> = tables.iter().map(|t| t.num_tokens.get()).collect();
        assert_eq!(counts, [36, 36, 36]);
        assert_eq!(tables[2].blocks()[0], BlockId(2));
        // Storage comes back (cleared by `with_storage` in the manager), one per group in order.
        let mut seen = Vec::new();
        tables.reset(2, |g, storage| {
            seen.push((g, storage.len(), storage.capacity() >= 9));
            BlockTable::with_storage(storage, 4)
        });
        assert_eq!(seen, [(0, 9, true), (1, 9, true)]);
        let (a, b) = tables.pair_mut().expect("two groups");
        a.num_tokens.set(1);
        b.num_tokens.set(2);
        for t in &mut tables {
            t.num_tokens.set(t.num_tokens.get() + 10);
        }
        assert_eq!(
            tables.iter().map(|t| t.num_tokens.get()).collect::<Vec<_>>(),
            [11, 12]
        );
        tables[1].num_tokens.set(7);
        assert_eq!((&tables).into_iter().nth(1).map(|t| t.num_tokens.get()), Some(7));
    }
}
