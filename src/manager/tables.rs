//! A sequence's block tables, one per KV cache group: group 0's inline in
//! the sequence (most models have one group), the others in one boxed
//! slice. A decode step of a two-group model then touches two cache lines
//! per sequence: the slab entry's (its hot word, the step fields, group 0's
//! count and slot base, the pointer to the others) and the start of the
//! boxed slice (group 1's count and slot base); with every table in one
//! spilled vector it was four.

use std::iter::{once, Chain, Once};
use std::ops::{Index, IndexMut};
use std::slice;

use crate::table::{BlockTable, BlockVec};

/// One [`BlockTable`] per KV cache group, in group order.
#[derive(Debug, Clone)]
#[repr(C)]
pub(super) struct Tables {
    /// Groups 1 and up (before `first`, so that the pointer sits in the
    /// slab entry's first cache line).
    rest: Box<[BlockTable]>,
    first: BlockTable,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            rest: Box::default(),
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
        t.num_tokens = num_tokens;
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
        let counts: Vec<u32> = tables.iter().map(|t| t.num_tokens).collect();
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
        a.num_tokens = 1;
        b.num_tokens = 2;
        for t in &mut tables {
            t.num_tokens += 10;
        }
        assert_eq!(tables.iter().map(|t| t.num_tokens).collect::<Vec<_>>(), [11, 12]);
        tables[1].num_tokens = 7;
        assert_eq!((&tables).into_iter().nth(1).map(|t| t.num_tokens), Some(7));
    }
}
