//! Reading sequences on the device: which are allocated, their block tables,
//! token counts and slot mappings (the batch's inputs to the attention kernel).

use std::ops::Range;

use super::KvCacheManager;
use crate::error::KvError;
use crate::ids::{BlockId, SeqId, Slot};
use crate::table::BlockTable;

impl KvCacheManager {
    /// Whether the sequence is allocated.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    /// Allocated sequences.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Iterates allocated sequence ids (in no particular order).
    pub fn seq_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// The sequence's table.
    #[inline]
    pub fn table(&self, seq: SeqId) -> Result<&BlockTable, KvError> {
        match self.seqs.get(&seq) {
            Some(s) => Ok(&s.table),
            None => Err(self.absent(seq)),
        }
    }

    /// The sequence's blocks, in logical order, for the attention kernel.
    #[inline]
    pub fn block_table(&self, seq: SeqId) -> Result<&[BlockId], KvError> {
        self.table(seq).map(BlockTable::blocks)
    }

    /// Tokens the sequence holds.
    #[inline]
    pub fn num_tokens(&self, seq: SeqId) -> Result<u64, KvError> {
        self.table(seq).map(|t| t.num_tokens as u64)
    }

    /// The slot of position `pos` of the sequence.
    pub fn slot(&self, seq: SeqId, pos: u64) -> Result<Slot, KvError> {
        let t = self.table(seq)?;
        u32::try_from(pos)
            .ok()
            .and_then(|p| t.slot(p))
            .ok_or(KvError::PositionOutOfRange {
                seq,
                pos,
                num_tokens: t.num_tokens as u64,
            })
    }

    /// Appends the slots of positions `range` of the sequence to `out` (a
    /// batch's slot mapping, built in the caller's reusable buffer).
    pub fn slots_into(&self, seq: SeqId, range: Range<u64>, out: &mut Vec<Slot>) -> Result<(), KvError> {
        let t = self.table(seq)?;
        let n = t.num_tokens as u64;
        let bad = KvError::PositionOutOfRange {
            seq,
            pos: range.end,
            num_tokens: n,
        };
        if range.start > range.end || range.end > n {
            return Err(bad);
        }
        // Both ends are <= num_tokens, which is a u32.
        let ok = t.slots_into(range.start as u32..range.end as u32, out);
        debug_assert!(ok);
        Ok(())
    }

    /// Appends the slots of the sequence's last `n` tokens to `out`: where the
    /// engine writes the keys and values of the tokens just appended.
    pub fn new_slots_into(&self, seq: SeqId, n: u64, out: &mut Vec<Slot>) -> Result<(), KvError> {
        let len = self.num_tokens(seq)?;
        if n > len {
            return Err(KvError::PositionOutOfRange {
                seq,
                pos: n,
                num_tokens: len,
            });
        }
        self.slots_into(seq, len - n..len, out)
    }
}
