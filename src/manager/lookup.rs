//! Reading sequences on the device: which are allocated, their block tables,
//! token counts and slot mappings (the batch's inputs to the attention kernel).
//! The methods on [`KvCacheManager`] read KV cache group 0; [`GroupView`]
//! (from [`KvCacheManager::group`]) reads any group.

use std::ops::Range;

use super::{KvCacheManager, Seq};
use crate::error::KvError;
use crate::ids::{BlockId, SeqHandle, SeqId, Slot};
use crate::sizing::AttentionKind;
use crate::table::BlockTable;

impl KvCacheManager {
    /// Whether the sequence is allocated.
    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    /// The dense handle of a sequence on the device, for the hot calls that
    /// take one ([`Self::append_decode_into`]). It stays valid until the
    /// sequence is freed or swapped out (see [`SeqHandle`]).
    ///
    /// Errors: `UnknownSequence`, `SequenceSwapped`.
    #[inline]
    pub fn handle(&self, seq: SeqId) -> Result<SeqHandle, KvError> {
        self.seqs.handle(&seq).ok_or_else(|| self.absent(seq))
    }

    /// The sequence a handle names.
    ///
    /// Errors: [`KvError::StaleHandle`] when its sequence left the device
    /// (freed or swapped out) or the handle belongs to another manager.
    #[inline]
    pub fn seq_of(&self, handle: SeqHandle) -> Result<SeqId, KvError> {
        match self.seqs.by_handle(handle) {
            Some((seq, _)) => Ok(seq),
            None => Err(KvError::StaleHandle { handle }),
        }
    }

    /// Allocated sequences.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Iterates allocated sequence ids (in no particular order).
    pub fn seq_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.seqs.keys().copied()
    }

    /// One KV cache group's view of the sequences: tables, slots.
    ///
    /// Errors: [`KvError::UnknownGroup`] for a group index past the last.
    ///
    /// ```
    /// use pagedkv::{AttentionKind, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 8, block_size: 4,
    ///     groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 4 }],
    ///     ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5]).unwrap();
    /// let window = kv.group(1).unwrap();
    /// assert_eq!(window.kind(), AttentionKind::SlidingWindow { window: 4 });
    /// assert_eq!(window.block_table(SeqId(1)).unwrap().len(), 2);
    /// assert!(kv.group(2).is_err());
    /// ```
    pub fn group(&self, group: usize) -> Result<GroupView<'_>, KvError> {
        if group >= self.num_groups() {
            return Err(KvError::UnknownGroup {
                group: group.min(u32::MAX as usize) as u32,
                num_groups: self.num_groups() as u32,
            });
        }
        Ok(GroupView { kv: self, group })
    }

    #[inline]
    fn seq(&self, seq: SeqId) -> Result<&Seq, KvError> {
        match self.seqs.get(&seq) {
            Some(s) => Ok(s),
            None => Err(self.absent(seq)),
        }
    }

    /// The sequence's table in group 0.
    #[inline]
    pub fn table(&self, seq: SeqId) -> Result<&BlockTable, KvError> {
        self.seq(seq).map(|s| &s.tables[0])
    }

    /// The sequence's blocks in group 0, in logical order, for the attention kernel.
    #[inline]
    pub fn block_table(&self, seq: SeqId) -> Result<&[BlockId], KvError> {
        self.table(seq).map(BlockTable::blocks)
    }

    /// Tokens the sequence holds (the same in every group).
    #[inline]
    pub fn num_tokens(&self, seq: SeqId) -> Result<u64, KvError> {
        self.table(seq).map(|t| t.num_tokens.get() as u64)
    }

    /// Device blocks the sequence holds over every group (shared ones included).
    pub fn num_blocks_held(&self, seq: SeqId) -> Result<u64, KvError> {
        self.seq(seq)
            .map(|s| s.tables.iter().map(|t| t.live_blocks().len() as u64).sum())
    }

    /// Device blocks `free(seq)` would return to the pool now: those no other
    /// sequence shares (what preempting it by recompute frees). Pure.
    ///
    /// ```
    /// use pagedkv::{BlockOps, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig { num_blocks: 8, block_size: 4, ..Default::default() }).unwrap();
    /// kv.allocate(SeqId(1), &[1, 2, 3, 4, 5]).unwrap();
    /// kv.drain_ops(&mut BlockOps::default());
    /// kv.fork(SeqId(1), SeqId(2)).unwrap();
    /// kv.append(SeqId(2), &[6]).unwrap();               // copies the shared partial block
    /// assert_eq!(kv.blocks_freed_by_free(SeqId(2)).unwrap(), 1);
    /// ```
    pub fn blocks_freed_by_free(&self, seq: SeqId) -> Result<u64, KvError> {
        self.seq(seq).map(|s| {
            s.tables
                .iter()
                .flat_map(|t| t.live_blocks())
                .filter(|&&b| self.pool.ref_count(b) == Ok(1))
                .count() as u64
        })
    }

    /// The slot of position `pos` of the sequence in group 0.
    pub fn slot(&self, seq: SeqId, pos: u64) -> Result<Slot, KvError> {
        table_slot(seq, self.table(seq)?, pos)
    }

    /// Appends the slots of positions `range` of the sequence in group 0 to
    /// `out` (a batch's slot mapping, built in the caller's reusable buffer).
    pub fn slots_into(&self, seq: SeqId, range: Range<u64>, out: &mut Vec<Slot>) -> Result<(), KvError> {
        table_slots_into(seq, self.table(seq)?, range, out)
    }

    /// Appends the slots of the sequence's last `n` tokens in group 0 to
    /// `out`: where the engine writes the keys and values of the tokens just
    /// appended.
    pub fn new_slots_into(&self, seq: SeqId, n: u64, out: &mut Vec<Slot>) -> Result<(), KvError> {
        table_new_slots_into(seq, self.table(seq)?, n, out)
    }
}

/// One KV cache group's view of a manager's sequences (see
/// [`KvCacheManager::group`]): the group's tables and slot mappings.
#[derive(Clone, Copy, Debug)]
pub struct GroupView<'a> {
    kv: &'a KvCacheManager,
    group: usize,
}

impl<'a> GroupView<'a> {
    /// The group's index.
    pub fn index(&self) -> usize {
        self.group
    }

    /// The group's attention kind.
    pub fn kind(&self) -> AttentionKind {
        self.kv.config.groups[self.group]
    }

    /// The sequence's table in this group.
    pub fn table(&self, seq: SeqId) -> Result<&'a BlockTable, KvError> {
        let kv: &'a KvCacheManager = self.kv;
        kv.seq(seq).map(|s| &s.tables[self.group])
    }

    /// The sequence's blocks in this group ([`BlockId::NULL`] where released).
    pub fn block_table(&self, seq: SeqId) -> Result<&'a [BlockId], KvError> {
        self.table(seq).map(BlockTable::blocks)
    }

    /// The slot of position `pos` of the sequence in this group
    /// (`PositionOutOfRange` past the end or in a released block).
    pub fn slot(&self, seq: SeqId, pos: u64) -> Result<Slot, KvError> {
        table_slot(seq, self.table(seq)?, pos)
    }

    /// Appends the slots of positions `range` of the sequence in this group to `out`.
    pub fn slots_into(&self, seq: SeqId, range: Range<u64>, out: &mut Vec<Slot>) -> Result<(), KvError> {
        table_slots_into(seq, self.table(seq)?, range, out)
    }

    /// Appends the slots of the sequence's last `n` tokens in this group to `out`.
    pub fn new_slots_into(&self, seq: SeqId, n: u64, out: &mut Vec<Slot>) -> Result<(), KvError> {
        table_new_slots_into(seq, self.table(seq)?, n, out)
    }

    /// A swapped-out sequence's table in this group: its **host** blocks.
    pub fn swapped_table(&self, seq: SeqId) -> Result<&'a BlockTable, KvError> {
        let kv: &'a KvCacheManager = self.kv;
        kv.swapped_seq(seq).map(|s| &s.tables[self.group])
    }
}

fn table_slot(seq: SeqId, t: &BlockTable, pos: u64) -> Result<Slot, KvError> {
    u32::try_from(pos)
        .ok()
        .and_then(|p| t.slot(p))
        .ok_or(KvError::PositionOutOfRange {
            seq,
            pos,
            num_tokens: t.num_tokens.get() as u64,
        })
}

fn table_slots_into(
    seq: SeqId,
    t: &BlockTable,
    range: Range<u64>,
    out: &mut Vec<Slot>,
) -> Result<(), KvError> {
    let n = t.num_tokens.get() as u64;
    // Both ends are checked against num_tokens (a u32) before the casts.
    if range.start > range.end || range.end > n || !t.slots_into(range.start as u32..range.end as u32, out) {
        return Err(KvError::PositionOutOfRange {
            seq,
            pos: if range.end > n { range.end } else { range.start },
            num_tokens: n,
        });
    }
    Ok(())
}

fn table_new_slots_into(seq: SeqId, t: &BlockTable, n: u64, out: &mut Vec<Slot>) -> Result<(), KvError> {
    let len = t.num_tokens.get() as u64;
    if n > len {
        return Err(KvError::PositionOutOfRange {
            seq,
            pos: n,
            num_tokens: len,
        });
    }
    table_slots_into(seq, t, len - n..len, out)
}
