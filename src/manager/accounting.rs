//! Accounting over the whole manager: usage (stored tokens vs internal
//! fragmentation, shared slots counted once) and the invariant check.

use super::{KvCacheManager, KvUsage};
use crate::error::InvariantViolation;
use crate::ids::BlockId;

impl KvCacheManager {
    /// Block and token accounting now. O(sequences).
    ///
    /// `stored_tokens` counts the slots that hold some live sequence's token
    /// (a shared block counts once); the rest of the used blocks' slots is
    /// internal fragmentation.
    pub fn usage(&self) -> KvUsage {
        let bs = self.config.block_size as u64;
        let used_blocks = self.pool.num_used() as u64;
        let mut logical_tokens = 0u64;
        let mut unfilled = 0u64;
        // Shared partial last blocks: (block, filled) of each holder that ends in it.
        let mut shared_tails: Vec<(BlockId, u32)> = Vec::new();
        for t in self.seqs.values().map(|s| &s.table) {
            logical_tokens += t.num_tokens as u64;
            let filled = t.num_tokens % self.config.block_size;
            let Some(&last) = t.blocks.last() else { continue };
            if filled == 0 {
                continue;
            }
            if self.pool.ref_count(last).unwrap_or(1) == 1 {
                unfilled += bs - filled as u64;
            } else {
                shared_tails.push((last, filled));
            }
        }
        // A shared block is only partially filled if every holder ends in it;
        // then its filled slots are the most any holder filled.
        shared_tails.sort_unstable();
        for group in shared_tails.chunk_by(|a, b| a.0 == b.0) {
            let holders = self.pool.ref_count(group[0].0).unwrap_or(0) as usize;
            if group.len() == holders {
                let most = group.iter().map(|&(_, f)| f).max().unwrap_or(0);
                unfilled += bs - most as u64;
            }
        }
        let allocated_slots = used_blocks * bs;
        KvUsage {
            num_blocks: self.pool.num_blocks() as u64,
            free_blocks: self.pool.num_free() as u64,
            used_blocks,
            num_seqs: self.seqs.len() as u64,
            logical_tokens,
            stored_tokens: allocated_slots - unfilled,
            internal_fragmentation: unfilled,
        }
    }

    /// Checks every invariant listed in the module docs. O(blocks + table
    /// entries); for tests and debugging, not for the hot path.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.pool.check_invariants()?;
        let n = self.pool.num_blocks() as usize;
        let mut refs = vec![0u32; n];
        // The ordinal (from 1) of the last table seen holding each block; 0: none yet.
        let mut last_seen = vec![0u32; n];
        for (ordinal, (&seq, s)) in (1u32..).zip(&self.seqs) {
            let t = &s.table;
            let tokens = t.num_tokens as u64;
            if t.block_size != self.config.block_size {
                return Err(InvariantViolation::new(format!(
                    "{seq:?}: table block size {}",
                    t.block_size
                )));
            }
            if t.blocks.len() as u64 != self.blocks_for(tokens) {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} holds {} blocks for {tokens} tokens; it must hold exactly {}",
                    t.blocks.len(),
                    self.blocks_for(tokens)
                )));
            }
            if tokens > self.config.max_model_len as u64 {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} holds {tokens} tokens, more than max_model_len"
                )));
            }
            if let Some(&last) = t.blocks.last() {
                let shared = self.pool.ref_count(last).is_ok_and(|r| r > 1);
                if shared && !t.tail_maybe_shared && t.num_tokens % t.block_size != 0 {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?}'s partially filled last block {last:?} is shared but not marked so: a write would skip copy-on-write"
                    )));
                }
            }
            for &b in &t.blocks {
                if b.index() >= n {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?} holds unknown block {b:?}"
                    )));
                }
                if last_seen[b.index()] == ordinal {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?} holds block {b:?} twice"
                    )));
                }
                last_seen[b.index()] = ordinal;
                refs[b.index()] += 1;
            }
        }
        for (i, &r) in refs.iter().enumerate() {
            let rc = self.pool.ref_count(BlockId(i as u32)).expect("index is in range");
            if rc != r {
                return Err(InvariantViolation::new(format!(
                    "block {i} has ref count {rc} but {r} tables hold it"
                )));
            }
        }
        if let Some(c) = self
            .copies
            .iter()
            .find(|c| c.src.index() >= n || c.dst.index() >= n)
        {
            return Err(InvariantViolation::new(format!(
                "queued copy {c:?} names an unknown block"
            )));
        }
        self.check_host_invariants()?;
        self.check_prefix_invariants()
    }
}
