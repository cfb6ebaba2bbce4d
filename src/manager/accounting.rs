//! Accounting over the whole manager: usage (stored tokens vs internal
//! fragmentation, shared slots counted once) and the invariant check.

use super::{release_at, KvCacheManager, KvUsage};
use crate::error::InvariantViolation;
use crate::ids::BlockId;

impl KvCacheManager {
    /// Block and token accounting now, over every KV cache group. O(sequences).
    ///
    /// `stored_tokens` counts the slots that hold some live sequence's token
    /// (a shared block counts once; with several groups, a token's KV is
    /// stored once per group that still holds its block); the rest of the
    /// used blocks' slots is internal fragmentation.
    pub fn usage(&self) -> KvUsage {
        let bs = self.config.block_size as u64;
        let used_blocks = self.pool.num_used() as u64;
        let mut logical_tokens = 0u64;
        let mut unfilled = 0u64;
        // Shared partial last blocks: (block, filled) of each holder that ends in it.
        let mut shared_tails: Vec<(BlockId, u32)> = Vec::new();
        for s in self.seqs.values() {
            logical_tokens += s.num_tokens() as u64;
            for t in &s.tables {
                let filled = t.num_tokens.get() % self.config.block_size;
                let Some(&last) = t.blocks.last() else { continue };
                if filled == 0 || last.is_null() {
                    continue;
                }
                if self.pool.ref_count(last).unwrap_or(1) == 1 {
                    unfilled += bs - filled as u64;
                } else {
                    shared_tails.push((last, filled));
                }
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

    /// Device blocks held by each KV cache group's tables (a block shared by
    /// several sequences counts once), in group order. O(table entries).
    ///
    /// ```
    /// use pagedkv::{AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, SeqId};
    /// let mut kv = KvCacheManager::new(KvCacheConfig {
    ///     num_blocks: 64, block_size: 4,
    ///     groups: vec![AttentionKind::Full, AttentionKind::SlidingWindow { window: 4 }],
    ///     ..Default::default()
    /// }).unwrap();
    /// kv.allocate(SeqId(1), &[0; 4]).unwrap();
    /// kv.drain_ops(&mut BlockOps::default());
    /// kv.append(SeqId(1), &[0; 16]).unwrap(); // one 16-token chunk: the window keeps 5 blocks of 20 tokens
    /// assert_eq!(kv.blocks_by_group(), [5, 5]);
    /// kv.drain_ops(&mut BlockOps::default());
    /// kv.append(SeqId(1), &[0]).unwrap();     // a decode: the window reads positions 17..=20
    /// assert_eq!(kv.blocks_by_group(), [6, 2]);
    /// ```
    pub fn blocks_by_group(&self) -> Vec<u64> {
        let mut counted = vec![false; self.pool.num_blocks() as usize];
        let mut out = vec![0u64; self.num_groups()];
        for s in self.seqs.values() {
            for (g, t) in s.tables.iter().enumerate() {
                for &b in t.live_blocks() {
                    if !std::mem::replace(&mut counted[b.index()], true) {
                        out[g] += 1;
                    }
                }
            }
        }
        out
    }

    /// Checks every invariant listed in the module docs. O(blocks + table
    /// entries); for tests and debugging, not for the hot path.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.pool.check_invariants()?;
        let n = self.pool.num_blocks() as usize;
        let bs = self.config.block_size;
        let mut refs = vec![0u32; n];
        // The group and the table ordinal (from 1) of the last table seen
        // holding each block; ordinal 0: none yet.
        let mut seen = vec![(0u32, 0u32); n];
        let mut ordinal = 0u32;
        for (&seq, s) in &self.seqs {
            let tokens = s.num_tokens() as u64;
            if tokens > self.config.max_model_len as u64 {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} holds {tokens} tokens, more than max_model_len"
                )));
            }
            if s.tables.len() != self.num_groups() {
                return Err(InvariantViolation::new(format!(
                    "{seq:?} has {} tables for {} KV cache groups",
                    s.tables.len(),
                    self.num_groups()
                )));
            }
            for (g, (t, kind)) in s.tables.iter().zip(&self.config.groups).enumerate() {
                ordinal += 1;
                if t.block_size != bs || t.num_tokens.get() as u64 != tokens {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?} group {g}: table block size {} and {} tokens, not {bs} and {tokens}",
                        t.block_size,
                        t.num_tokens.get()
                    )));
                }
                if t.blocks.len() as u64 != self.blocks_for(tokens) {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?} group {g} holds {} blocks for {tokens} tokens; it must hold exactly {}",
                        t.blocks.len(),
                        self.blocks_for(tokens)
                    )));
                }
                // Placeholders exactly where released, and only where the
                // group's attention reads no more (from the computed length on).
                let released = t.num_released as usize;
                let base = self.release_base(s);
                if t.blocks[..released].iter().any(|b| !b.is_null())
                    || t.live_blocks().iter().any(|b| b.is_null())
                    || released as u64 > kind.first_needed_block(base, bs)
                    || t.release_at != release_at(*kind, t.num_released, bs)
                {
                    return Err(InvariantViolation::new(format!(
                        "{seq:?} group {g} ({kind}): {released} released entries in {:?} (release_at {}) at {base} computed tokens",
                        t.blocks, t.release_at
                    )));
                }
                if let Some(&last) = t.live_blocks().last() {
                    let shared = self.pool.ref_count(last).is_ok_and(|r| r > 1);
                    if shared && !t.tail_maybe_shared && t.num_tokens.get() % bs != 0 {
                        return Err(InvariantViolation::new(format!(
                            "{seq:?}'s partially filled last block {last:?} in group {g} is shared but not marked so: a write would skip copy-on-write"
                        )));
                    }
                }
                for &b in t.live_blocks() {
                    if b.index() >= n {
                        return Err(InvariantViolation::new(format!(
                            "{seq:?} holds unknown block {b:?}"
                        )));
                    }
                    let (last_group, last_table) = seen[b.index()];
                    if last_table == ordinal {
                        return Err(InvariantViolation::new(format!(
                            "{seq:?} holds block {b:?} twice in group {g}"
                        )));
                    }
                    if last_table != 0 && last_group != g as u32 {
                        return Err(InvariantViolation::new(format!(
                            "block {b:?} is held in groups {last_group} and {g}"
                        )));
                    }
                    seen[b.index()] = (g as u32, ordinal);
                    refs[b.index()] += 1;
                }
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
            .find(|c| c.src.index() >= n || c.dst.index() >= n || c.group as usize >= self.num_groups())
        {
            return Err(InvariantViolation::new(format!(
                "queued copy {c:?} names an unknown block or group"
            )));
        }
        self.check_host_invariants()?;
        super::offload::check_offload_invariants(&self.prefix, &self.host, &self.pool)?;
        self.check_prefix_invariants()
    }
}
