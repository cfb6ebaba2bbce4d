//! Property-based state-machine test of `KvCacheManager` against a reference model.
//!
//! proptest generates a small cache (1..=40 blocks of 1, 2, 4 or 16 tokens, a
//! short `max_model_len`, a watermark, a host tier of 0..=48 blocks, and the
//! KV cache groups: full attention alone, or hybrid: full + a sliding window
//! of 1..=9 tokens, full + chunked local attention of 2..=8 tokens, a sliding
//! window alone, or all three) and a
//! sequence of operations (allocate, append, fork, truncate, free, swap out,
//! swap in, check admission) over a
//! small id space (so ids collide: duplicate allocations, unknown and double
//! frees, forks onto live ids). Each operation runs on the real manager and on
//! [`Model`], a deliberately naive reference: a map from sequence id to its
//! token values, its list of block handles in each group (a released window
//! block is the null handle) and whether it is swapped out (its handles are
//! then host blocks), plus the documented device ↔ host association of blocks
//! with identical content (so that shared blocks move once). A window releases
//! what the first new token of an append no longer reads, computed here from
//! the attention kind's definition (positions `p - window + 1 ..= p`, or `p`'s
//! chunk). After every step the test checks:
//!
//! - the result: `Ok` / the exact `KvError` (with its numbers) / the exact `Admission`;
//! - `check_invariants()`;
//! - a refused call (any `Err`, and every `check_admission`) changed nothing
//!   observable: tables, token counts, usage, the free queue, pending copies;
//! - the sharing structure: model handles and real `BlockId`s are in a
//!   bijection that holds across steps (a live block never moves), ref counts
//!   equal the model's holder counts, and the queued copy-on-write copies are
//!   exactly the model's;
//! - fragmentation: each sequence holds `ceil(len / block_size)` entries per
//!   group (placeholders where a window released) and wastes fewer than
//!   `block_size` slots per group, used blocks equal the distinct blocks
//!   across tables, `usage()` and `blocks_by_group()` equal the model's
//!   (shared slots counted once), a fork takes no block and queues no copy;
//! - swaps: a swapped-out sequence keeps its tokens, cannot be appended to,
//!   forked, truncated or read (`SequenceSwapped`), can be freed; swap-out and
//!   swap-in queue exactly the model's copies; `HostOutOfBlocks` and a
//!   swap-in's `OutOfBlocks` carry the model's numbers;
//! - content: simulated device and host memories execute the drained
//!   operations in the engine contract's order (swap-out device → host,
//!   swap-in host → device, then the copy-on-write copies) and then write each
//!   new token's value at the slot the manager assigns in every group (the
//!   value tagged with its group); every live sequence on the device must read
//!   back exactly its own values through each group's table, at every position
//!   the group still holds, and every swapped-out one through its host tables. Every token gets a
//!   globally unique value and a fork shares its parent's values, so a missed
//!   or wrong copy-on-write or swap copy, or a block handed to two owners,
//!   shows up as a wrong value. Free blocks (device and host) are poisoned, so
//!   reading a freed block also fails.
//!
//! At the end of each case everything is freed (the pool must be all free
//! again) and the recorded calls are replayed on a fresh manager, which must
//! produce the same block ids (runs are reproducible).
//!
//! Default: 320 cases of 40..=88 operations, so at least 12 800 operations per
//! run, five sixths of the cases hybrid (at least 10 000 operations on average
//! over several groups). Set `PAGEDKV_PROPTEST_CASES` to run more cases.

mod proptest_cases;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pagedkv::{
    Admission, AdmissionRefusal, Allocation, AttentionKind, BlockCopy, BlockId, BlockOps, KvCacheConfig,
    KvCacheManager, KvError, KvStats, KvUsage, SeqHandle, SeqId, Slot,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Sequence ids are drawn from `0..NUM_IDS` so that operations collide.
const NUM_IDS: u64 = 8;
const MIN_OPS: usize = 40;
const MAX_OPS: usize = 88;
const DEFAULT_CASES: u32 = 320;

fn cases() -> u32 {
    proptest_cases::from_env(DEFAULT_CASES)
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Op {
    Allocate {
        seq: Pick,
        len: usize,
    },
    /// `n` tokens: mostly 1 (decode), sometimes 0 or many (chunked prefill, speculative).
    Append {
        seq: Pick,
        n: usize,
    },
    Fork {
        parent: Pick,
        child: Pick,
    },
    Truncate {
        seq: Pick,
        to: TruncateTo,
    },
    Free {
        seq: Pick,
    },
    SwapOut {
        seq: Pick,
    },
    SwapIn {
        seq: Pick,
    },
    Admission {
        prompt_len: u64,
        max_new: u64,
    },
}

/// Which sequence an operation names. Picking among live sequences keeps most
/// operations meaningful; raw ids (live or not) exercise the refusals. Resolved
/// against the model when the operation runs, so every run is reproducible.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pick {
    /// The `k % n`-th of the `n` sequences on the device, in id order (a raw id when there is none).
    Live(usize),
    /// The `k % n`-th of the `n` swapped-out sequences, in id order (a raw id when there is none).
    Swapped(usize),
    /// This id, whether allocated or not.
    Id(u64),
}

/// The truncation target, relative to the sequence's length when the op runs
/// (0 for an unknown sequence).
#[derive(Clone, Copy, Debug)]
enum TruncateTo {
    /// `len - k`, floored at 0.
    Back(u64),
    /// An absolute length (may exceed `len`).
    Exactly(u64),
    /// `len + k` with k >= 1: always refused.
    Beyond(u64),
}

#[derive(Clone, Debug)]
struct Setup {
    num_blocks: u32,
    block_size: u32,
    max_model_len: u32,
    watermark: f64,
    /// 0: no host tier.
    num_host_blocks: u32,
    groups: Vec<AttentionKind>,
}

fn groups() -> impl Strategy<Value = Vec<AttentionKind>> {
    let swa = (1u32..=9).prop_map(|window| AttentionKind::SlidingWindow { window });
    let local = (2u32..=8).prop_map(|chunk| AttentionKind::ChunkedLocal { chunk });
    prop_oneof![
        1 => Just(vec![AttentionKind::Full]),
        2 => swa.clone().prop_map(|w| vec![AttentionKind::Full, w]),
        1 => local.clone().prop_map(|c| vec![AttentionKind::Full, c]),
        1 => swa.clone().prop_map(|w| vec![w]),
        1 => (swa, local).prop_map(|(w, c)| vec![AttentionKind::Full, w, c]),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..=40,
        prop::sample::select(vec![1u32, 2, 4, 16]),
        1u32..=96,
        prop::sample::select(vec![0.0, 0.01, 0.1, 0.25, 0.5]),
        prop_oneof![1 => Just(0u32), 3 => 1u32..=12, 1 => Just(48u32)],
        groups(),
    )
        .prop_map(
            |(num_blocks, block_size, max_model_len, watermark, num_host_blocks, groups)| Setup {
                num_blocks,
                block_size,
                max_model_len,
                watermark,
                num_host_blocks,
                groups,
            },
        )
}

fn op(s: &Setup) -> impl Strategy<Value = Op> {
    let mml = s.max_model_len as usize;
    let bs = s.block_size as usize;
    let id = (0..NUM_IDS).prop_map(Pick::Id);
    let live = prop_oneof![
        8 => (0..NUM_IDS as usize).prop_map(Pick::Live),
        1 => (0..NUM_IDS as usize).prop_map(Pick::Swapped),
        2 => (0..NUM_IDS).prop_map(Pick::Id),
    ];
    let swapped = prop_oneof![
        4 => (0..NUM_IDS as usize).prop_map(Pick::Swapped),
        1 => (0..NUM_IDS as usize).prop_map(Pick::Live),
        1 => (0..NUM_IDS).prop_map(Pick::Id),
    ];
    let prompt_len = prop_oneof![
        1 => Just(0usize),
        6 => 1..=(mml / 4).max(1),
        3 => 1..=mml,
        1 => mml + 1..=mml + 3,
    ];
    let append_n = prop_oneof![
        12 => Just(1usize),
        1 => Just(0usize),
        3 => 2..=2 * bs + 1,
    ];
    let truncate_to = prop_oneof![
        3 => (0..=2 * bs as u64).prop_map(TruncateTo::Back),
        1 => (0..=mml as u64 + 2).prop_map(TruncateTo::Exactly),
        1 => (1..=3u64).prop_map(TruncateTo::Beyond),
    ];
    let admission = prop_oneof![
        8 => (0..=mml as u64 + 1, 0..=mml as u64 / 2 + 1),
        1 => (0..=mml as u64 + 1, prop_oneof![Just(u64::MAX), any::<u64>()]),
        1 => (prop_oneof![Just(u64::MAX), any::<u64>()], 0..=mml as u64),
    ];
    prop_oneof![
        4 => (id.clone(), prompt_len).prop_map(|(seq, len)| Op::Allocate { seq, len }),
        10 => (live.clone(), append_n).prop_map(|(seq, n)| Op::Append { seq, n }),
        3 => (live.clone(), id).prop_map(|(parent, child)| Op::Fork { parent, child }),
        2 => (live.clone(), truncate_to).prop_map(|(seq, to)| Op::Truncate { seq, to }),
        1 => live.clone().prop_map(|seq| Op::Free { seq }),
        2 => live.prop_map(|seq| Op::SwapOut { seq }),
        2 => swapped.prop_map(|seq| Op::SwapIn { seq }),
        1 => admission.prop_map(|(prompt_len, max_new)| Op::Admission { prompt_len, max_new }),
    ]
}

fn scenario() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    setup().prop_flat_map(|s| {
        let ops = prop::collection::vec(op(&s), MIN_OPS..=MAX_OPS);
        (Just(s), ops)
    })
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// A physical block in the model: a number never reused. Which sequences hold
/// it is found by scanning every table; that scan is the reference count.
type Handle = u64;

/// The handle of a released window block (handles count from 1).
const NULL: Handle = 0;

/// One sequence: the value of each of its tokens (content), and, in each
/// group, the handle of each of its logical blocks: device blocks, or host
/// blocks when swapped out, `NULL` where the group's window released it.
/// Device and host handles come from one counter, so they never collide.
#[derive(Clone, Debug, Default)]
struct ModelSeq {
    values: Vec<u64>,
    blocks: Vec<Vec<Handle>>,
    swapped: bool,
}

impl ModelSeq {
    fn live(&self) -> impl Iterator<Item = Handle> + '_ {
        self.blocks.iter().flatten().copied().filter(|&h| h != NULL)
    }
}

/// Leading `NULL` entries of a group's table.
fn released(blocks: &[Handle]) -> usize {
    blocks.iter().take_while(|&&h| h == NULL).count()
}

/// The first position a query at `pos` reads, from the definitions.
fn first_read(kind: AttentionKind, pos: u64) -> u64 {
    match kind {
        AttentionKind::SlidingWindow { window } => pos.saturating_sub(window as u64 - 1),
        AttentionKind::ChunkedLocal { chunk } => pos / chunk as u64 * chunk as u64,
        _ => 0,
    }
}

/// What a successful model operation expects the engine to do this step.
#[derive(Clone, Debug, Default)]
struct Effect {
    allocation: Option<Allocation>,
    /// The sequence whose last `n` tokens are new this step.
    new_tokens: Option<(SeqId, usize)>,
    /// Copy-on-write copies: (source handle, destination handle, slots, group).
    copies: Vec<(Handle, Handle, u32, u32)>,
    /// Swap-out copies: (device handle, host handle, group).
    swap_out: Vec<(Handle, Handle, u32)>,
    /// Swap-in copies: (host handle, device handle, group).
    swap_in: Vec<(Handle, Handle, u32)>,
}

#[derive(Debug)]
struct Model {
    block_size: u64,
    num_blocks: u64,
    max_model_len: u64,
    watermark_blocks: u64,
    /// 0: no host tier.
    num_host_blocks: u64,
    groups: Vec<AttentionKind>,
    seqs: BTreeMap<SeqId, ModelSeq>,
    /// The association documented in `swap.rs`: a device block and a host
    /// block holding the same content, while both are held and the device
    /// block was not written in place since. Shared blocks move once through it.
    host_of: BTreeMap<Handle, Handle>,
    next_handle: Handle,
    stats: KvStats,
}

impl Model {
    fn new(s: &Setup) -> Self {
        Model {
            block_size: s.block_size as u64,
            num_blocks: s.num_blocks as u64,
            max_model_len: s.max_model_len as u64,
            // The documented rule: the watermark fraction floored to whole blocks.
            watermark_blocks: (s.watermark * s.num_blocks as f64).floor() as u64,
            num_host_blocks: s.num_host_blocks as u64,
            groups: s.groups.clone(),
            seqs: BTreeMap::new(),
            host_of: BTreeMap::new(),
            next_handle: 0,
            stats: KvStats::default(),
        }
    }

    fn blocks_needed(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.block_size)
    }

    fn holders(&self, h: Handle) -> usize {
        self.seqs.values().filter(|s| s.live().any(|x| x == h)).count()
    }

    /// Distinct blocks of one tier (`swapped`: host blocks).
    fn distinct_blocks(&self, swapped: bool) -> BTreeSet<Handle> {
        self.seqs
            .values()
            .filter(|s| s.swapped == swapped)
            .flat_map(|s| s.live())
            .collect()
    }

    fn num_free(&self) -> u64 {
        self.num_blocks - self.distinct_blocks(false).len() as u64
    }

    fn num_free_host(&self) -> u64 {
        self.num_host_blocks - self.distinct_blocks(true).len() as u64
    }

    /// The device block associated with host block `h`.
    fn dev_of(&self, h: Handle) -> Option<Handle> {
        self.host_of.iter().find(|&(_, &v)| v == h).map(|(&d, _)| d)
    }

    /// Drops the associations of blocks nobody holds any more.
    fn forget_unheld(&mut self) {
        let held: BTreeSet<Handle> = self.seqs.values().flat_map(|s| s.live()).collect();
        self.host_of.retain(|d, h| held.contains(d) && held.contains(h));
    }

    /// The sequence, on the device.
    fn on_device(&self, seq: SeqId) -> Result<&ModelSeq, KvError> {
        match self.seqs.get(&seq) {
            None => Err(KvError::UnknownSequence { seq }),
            Some(s) if s.swapped => Err(KvError::SequenceSwapped { seq }),
            Some(s) => Ok(s),
        }
    }

    fn fresh(&mut self) -> Handle {
        self.next_handle += 1;
        self.next_handle
    }

    /// A fresh device block: taken from the free queue.
    fn fresh_device(&mut self) -> Handle {
        self.stats.blocks_taken += 1;
        self.fresh()
    }

    /// The counters, `blocks_returned` derived: every device block taken and
    /// no longer held went back (handles are never reused).
    fn stats(&self) -> KvStats {
        let held = self.distinct_blocks(false).len() as u64;
        KvStats {
            blocks_returned: self.stats.blocks_taken - held,
            ..self.stats
        }
    }

    fn out_of_blocks(&mut self, needed: u64) -> Result<(), KvError> {
        let free = self.num_free();
        if needed > free {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks { needed, free });
        }
        Ok(())
    }

    /// Blocks a starting sequence leaves free: the watermark while any
    /// sequence is on the device.
    fn reserve(&self) -> u64 {
        if self.seqs.values().any(|s| !s.swapped) {
            self.watermark_blocks
        } else {
            0
        }
    }

    /// `allocate` and `swap_in` take free blocks and keep the watermark.
    fn check_start(&mut self, seq: SeqId, needed: u64) -> Result<(), KvError> {
        self.out_of_blocks(needed)?;
        let free = self.num_free();
        if needed + self.reserve() > free {
            return Err(KvError::BelowWatermark {
                seq,
                needed,
                free,
                watermark_blocks: self.watermark_blocks as u32,
            });
        }
        Ok(())
    }

    fn allocate(&mut self, seq: SeqId, values: &[u64]) -> Result<Effect, KvError> {
        if self.seqs.contains_key(&seq) {
            return Err(KvError::DuplicateSequence { seq });
        }
        if values.is_empty() {
            return Err(KvError::EmptyPrompt { seq });
        }
        let tokens = values.len() as u64;
        if tokens > self.max_model_len {
            return Err(KvError::ExceedsMaxModelLen {
                seq,
                tokens,
                max_model_len: self.max_model_len as u32,
            });
        }
        let per_group = self.blocks_needed(tokens);
        let needed = per_group * self.groups.len() as u64;
        self.check_start(seq, needed)?;
        let blocks = (0..self.groups.len())
            .map(|_| (0..per_group).map(|_| self.fresh_device()).collect())
            .collect();
        self.seqs.insert(
            seq,
            ModelSeq {
                values: values.to_vec(),
                blocks,
                swapped: false,
            },
        );
        self.stats.sequences_allocated += 1;
        Ok(Effect {
            allocation: Some(Allocation {
                num_blocks: needed as u32,
                cached_tokens: 0,
            }),
            new_tokens: Some((seq, values.len())),
            ..Effect::default()
        })
    }

    /// Appending into a partially filled last block that another sequence
    /// also holds copies that block first; full shared blocks stay shared.
    /// A write into a partially filled last block held alone changes its
    /// content in place: its host copy, if any, is no longer associated.
    /// In a windowed group, the blocks wholly before what the first new
    /// token reads are released first (and count as free for the call).
    fn append(&mut self, seq: SeqId, values: &[u64]) -> Result<Effect, KvError> {
        let s = self.on_device(seq)?;
        let len = s.values.len() as u64;
        let new_len = len + values.len() as u64;
        if new_len > self.max_model_len {
            return Err(KvError::ExceedsMaxModelLen {
                seq,
                tokens: new_len,
                max_model_len: self.max_model_len as u32,
            });
        }
        if values.is_empty() {
            return Ok(Effect::default());
        }
        let bs = self.block_size;
        let filled = len % bs;
        // Per group: the blocks released, and whether the last block is copied.
        let mut plan = Vec::new();
        let (mut needed, mut freed) = (0u64, 0u64);
        for (g, &kind) in self.groups.iter().enumerate() {
            let blocks = &s.blocks[g];
            let release_to = (first_read(kind, len) / bs) as usize;
            let release_from = released(blocks);
            let release: Vec<Handle> = blocks[release_from..release_to.max(release_from)].to_vec();
            freed += release.iter().filter(|&&h| self.holders(h) == 1).count() as u64;
            let last = blocks.last().copied();
            let cow = filled != 0 && self.holders(last.expect("a partial block exists")) > 1;
            let grow = self.blocks_needed(new_len) - blocks.len() as u64;
            needed += grow + cow as u64;
            plan.push((release_from..release_to.max(release_from), cow, grow));
        }
        if needed > self.num_free() + freed {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks {
                needed: needed - freed,
                free: self.num_free(),
            });
        }

        let mut effect = Effect {
            new_tokens: Some((seq, values.len())),
            ..Effect::default()
        };
        for (g, (release, _, _)) in plan.iter().enumerate() {
            let s = self.seqs.get_mut(&seq).expect("checked");
            for i in release.clone() {
                s.blocks[g][i] = NULL;
                self.stats.window_released_blocks += 1;
            }
        }
        self.forget_unheld();
        for (g, (_, cow, grow)) in plan.into_iter().enumerate() {
            let s = self.seqs.get_mut(&seq).expect("checked");
            let last = s.blocks[g].last().copied().unwrap_or(NULL);
            if filled != 0 && !cow {
                self.host_of.remove(&last);
            }
            if cow {
                let dst = self.fresh_device();
                let s = self.seqs.get_mut(&seq).expect("checked");
                *s.blocks[g].last_mut().expect("cow implies a block") = dst;
                effect.copies.push((last, dst, filled as u32, g as u32));
                self.stats.cow_copies += 1;
            }
            for _ in 0..grow {
                let h = self.fresh_device();
                self.seqs.get_mut(&seq).expect("checked").blocks[g].push(h);
            }
        }
        self.seqs
            .get_mut(&seq)
            .expect("checked")
            .values
            .extend_from_slice(values);
        Ok(effect)
    }

    fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<Effect, KvError> {
        if self.seqs.contains_key(&child) {
            return Err(KvError::DuplicateSequence { seq: child });
        }
        let p = self.on_device(parent)?.clone();
        self.seqs.insert(child, p);
        self.stats.forks += 1;
        Ok(Effect::default())
    }

    fn truncate(&mut self, seq: SeqId, new_len: u64) -> Result<Effect, KvError> {
        let keep = self.blocks_needed(new_len) as usize;
        let bs = self.block_size;
        let s = self.on_device(seq)?;
        let num_tokens = s.values.len() as u64;
        if new_len > num_tokens {
            return Err(KvError::TruncateBeyondLength {
                seq,
                new_len,
                num_tokens,
            });
        }
        // The next token (at position new_len) must not read a released block.
        for (g, &kind) in self.groups.iter().enumerate() {
            let r = released(&s.blocks[g]) as u64;
            if r > 0 && first_read(kind, new_len) < r * bs {
                let min_len = (new_len..=num_tokens)
                    .find(|&l| first_read(kind, l) >= r * bs)
                    .expect("the current length reads no released block");
                return Err(KvError::TruncateIntoReleasedWindow {
                    seq,
                    group: g as u32,
                    new_len,
                    min_len,
                });
            }
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.values.truncate(new_len as usize);
        for blocks in &mut s.blocks {
            blocks.truncate(keep);
        }
        // A new partially filled tail may be written in place.
        if new_len % bs != 0 {
            let tails: Vec<Handle> = s.blocks.iter().filter_map(|b| b.last().copied()).collect();
            for last in tails {
                self.host_of.remove(&last);
            }
        }
        self.forget_unheld();
        Ok(Effect::default())
    }

    /// Frees a sequence on either tier.
    fn free(&mut self, seq: SeqId) -> Result<Effect, KvError> {
        self.seqs.remove(&seq).ok_or(KvError::UnknownSequence { seq })?;
        self.forget_unheld();
        self.stats.sequences_freed += 1;
        Ok(Effect::default())
    }

    /// Each device block moves to a host block: the one associated with it
    /// (a sharer copied it already) or a fresh one, copied, and associated
    /// when other device holders remain. Group by group, last block first;
    /// released entries stay placeholders.
    fn swap_out(&mut self, seq: SeqId) -> Result<Effect, KvError> {
        let s = self.on_device(seq)?;
        if self.num_host_blocks == 0 {
            return Err(KvError::NoHostTier { seq });
        }
        // Blocks a window no longer reads (its next token at `len`) are
        // released instead of copied.
        let len = s.values.len() as u64;
        let mut tables = s.blocks.clone();
        let mut released_now = 0;
        for (g, &kind) in self.groups.iter().enumerate() {
            let to = (first_read(kind, len) / self.block_size) as usize;
            for h in tables[g].iter_mut().take(to).filter(|h| **h != NULL) {
                *h = NULL;
                released_now += 1;
            }
        }
        let needed = tables
            .iter()
            .flatten()
            .filter(|&&d| d != NULL && !self.host_of.contains_key(&d))
            .count() as u64;
        let free = self.num_free_host();
        if needed > free {
            return Err(KvError::HostOutOfBlocks { seq, needed, free });
        }
        self.seqs.get_mut(&seq).expect("checked").blocks = tables.clone();
        self.stats.window_released_blocks += released_now;
        self.forget_unheld();
        let mut effect = Effect::default();
        let mut host_tables = tables.clone();
        for (g, blocks) in tables.iter().enumerate() {
            for (i, &d) in blocks.iter().enumerate().rev() {
                if d == NULL {
                    continue;
                }
                host_tables[g][i] = match self.host_of.get(&d) {
                    Some(&h) => h,
                    None => {
                        let h = self.fresh();
                        effect.swap_out.push((d, h, g as u32));
                        self.stats.swap_out_copies += 1;
                        if self.holders(d) > 1 {
                            self.host_of.insert(d, h);
                        }
                        h
                    }
                };
            }
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.blocks = host_tables;
        s.swapped = true;
        self.forget_unheld();
        self.stats.swap_outs += 1;
        Ok(effect)
    }

    /// Each host block comes back to the device block associated with it (a
    /// sharer brought it back or still holds the original) or to a fresh one,
    /// copied, and associated when other swapped holders remain.
    fn swap_in(&mut self, seq: SeqId) -> Result<Effect, KvError> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSequence { seq })?;
        if !s.swapped {
            return Err(KvError::NotSwapped { seq });
        }
        let tables = s.blocks.clone();
        let needed = s.live().filter(|&h| self.dev_of(h).is_none()).count() as u64;
        self.check_start(seq, needed)?;
        let mut effect = Effect::default();
        let mut device = tables.clone();
        for (g, blocks) in tables.iter().enumerate() {
            for (i, &h) in blocks.iter().enumerate() {
                if h == NULL {
                    continue;
                }
                let others_hold = self.holders(h) > 1;
                device[g][i] = match self.dev_of(h) {
                    Some(d) => d,
                    None => {
                        let d = self.fresh_device();
                        effect.swap_in.push((h, d, g as u32));
                        self.stats.swap_in_copies += 1;
                        if others_hold {
                            self.host_of.insert(d, h);
                        }
                        d
                    }
                };
            }
        }
        let s = self.seqs.get_mut(&seq).expect("checked");
        s.blocks = device;
        s.swapped = false;
        self.forget_unheld();
        self.stats.swap_ins += 1;
        Ok(effect)
    }

    /// The rule documented on `KvCacheManager::check_admission`, in its order:
    /// never when empty, longer than max_model_len, or more blocks at the peak
    /// (prompt + every generated token but the last, in every group, a window
    /// holding at most its span and a step's tokens) than the pool; now when
    /// the prompt's blocks in every group are free with the watermark to
    /// spare (kept only while a sequence is on the device). Prompts are
    /// allocated whole (no prefill chunk is configured).
    fn admission(&self, prompt_len: u64, max_new: u64) -> Admission {
        let total = prompt_len.saturating_add(max_new);
        if prompt_len == 0 {
            return Admission::Never(AdmissionRefusal::EmptyPrompt);
        }
        if total > self.max_model_len {
            return Admission::Never(AdmissionRefusal::ExceedsMaxModelLen {
                tokens: total,
                max_model_len: self.max_model_len as u32,
            });
        }
        let stored = prompt_len + max_new.saturating_sub(1);
        let bs = self.block_size;
        let peak: u64 = self
            .groups
            .iter()
            .map(|&kind| {
                let all = stored.div_ceil(bs);
                let (window, aligned) = match kind {
                    AttentionKind::SlidingWindow { window } => (window as u64, false),
                    AttentionKind::ChunkedLocal { chunk } => (chunk as u64, chunk as u64 % bs == 0),
                    _ => return all,
                };
                // The span a step keeps: the window before its first token and
                // its tokens (all of a context prefilled again after a recompute).
                let span = window - 1 + stored;
                let blocks = if aligned {
                    span.div_ceil(bs)
                } else {
                    (span + bs - 1).div_ceil(bs)
                };
                blocks.min(all)
            })
            .sum();
        if peak > self.num_blocks {
            return Admission::Never(AdmissionRefusal::ExceedsPool {
                tokens: stored,
                blocks_needed: peak,
                num_blocks: self.num_blocks,
                block_size: self.block_size as u32,
            });
        }
        if self.blocks_needed(prompt_len) * self.groups.len() as u64 + self.reserve() <= self.num_free() {
            Admission::Now
        } else {
            Admission::Later
        }
    }

    /// Usage as defined on `KvUsage`: a block's stored slots are the most any
    /// holder fills of it (holders fill a prefix of each block), counted once.
    fn usage(&self) -> KvUsage {
        let bs = self.block_size;
        let mut filled: BTreeMap<Handle, u64> = BTreeMap::new();
        for s in self.seqs.values().filter(|s| !s.swapped) {
            let len = s.values.len() as u64;
            for blocks in &s.blocks {
                for (i, &h) in blocks.iter().enumerate().filter(|&(_, &h)| h != NULL) {
                    let here = (len - i as u64 * bs).min(bs);
                    let f = filled.entry(h).or_insert(0);
                    *f = (*f).max(here);
                }
            }
        }
        let used = filled.len() as u64;
        let stored: u64 = filled.values().sum();
        KvUsage {
            num_blocks: self.num_blocks,
            free_blocks: self.num_blocks - used,
            used_blocks: used,
            num_seqs: self.seqs.values().filter(|s| !s.swapped).count() as u64,
            logical_tokens: self
                .seqs
                .values()
                .filter(|s| !s.swapped)
                .map(|s| s.values.len() as u64)
                .sum(),
            stored_tokens: stored,
            internal_fragmentation: used * bs - stored,
        }
    }

    /// Distinct device blocks each group's tables hold.
    fn blocks_by_group(&self) -> Vec<u64> {
        (0..self.groups.len())
            .map(|g| {
                self.seqs
                    .values()
                    .filter(|s| !s.swapped)
                    .flat_map(|s| s.blocks[g].iter().copied().filter(|&h| h != NULL))
                    .collect::<BTreeSet<Handle>>()
                    .len() as u64
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The harness: real manager + model + simulated device memory
// ---------------------------------------------------------------------------

/// Everything observable about the manager's state except its counters.
#[derive(Debug, PartialEq)]
struct Snapshot {
    usage: KvUsage,
    tables: Vec<(SeqId, Vec<BlockId>, u64)>,
    /// Swapped-out sequences' host tables.
    swapped: Vec<(SeqId, Vec<BlockId>, u32)>,
    free_queue: Vec<BlockId>,
    host_free_queue: Vec<BlockId>,
    pending: Vec<BlockCopy>,
    pending_swaps: (Vec<BlockCopy>, Vec<BlockCopy>),
}

fn snapshot(kv: &KvCacheManager) -> Snapshot {
    let groups = || (0..kv.num_groups()).map(|g| kv.group(g).unwrap());
    let mut tables: Vec<_> = kv
        .seq_ids()
        .map(|s| {
            let blocks = groups()
                .flat_map(|g| g.block_table(s).unwrap().to_vec())
                .collect();
            (s, blocks, kv.num_tokens(s).unwrap())
        })
        .collect();
    tables.sort();
    let mut swapped: Vec<_> = kv
        .swapped_ids()
        .map(|s| {
            let blocks = groups()
                .flat_map(|g| g.swapped_table(s).unwrap().blocks().to_vec())
                .collect();
            (s, blocks, kv.swapped_table(s).unwrap().num_tokens())
        })
        .collect();
    swapped.sort();
    let (swap_out, swap_in) = kv.pending_swaps();
    Snapshot {
        usage: kv.usage(),
        tables,
        swapped,
        free_queue: kv.pool().free_blocks().collect(),
        host_free_queue: kv
            .host_pool()
            .map(|p| p.free_blocks().collect())
            .unwrap_or_default(),
        pending: kv.pending_copies().to_vec(),
        pending_swaps: (swap_out.to_vec(), swap_in.to_vec()),
    }
}

/// The content a token's KV has in one group's memory (groups hold different layers).
fn tagged(value: u64, group: usize) -> u64 {
    value * 8 + group as u64
}

/// A resolved call and its outcome, for the replay check.
type Call = (Op, String);

struct Harness {
    kv: KvCacheManager,
    model: Model,
    block_size: u64,
    /// The simulated KV cache: one value per slot, `None` when poisoned.
    device: Vec<Option<u64>>,
    /// The simulated host (swap) memory, likewise.
    host: Vec<Option<u64>>,
    /// Model handle -> real device block, for every handle seen so far
    /// (handles are never reused, so a freed one keeps its last block).
    handle_to_block: HashMap<Handle, BlockId>,
    /// Model handle -> real host block, likewise.
    handle_to_host: HashMap<Handle, BlockId>,
    next_value: u64,
    ops: BlockOps,
    slots: Vec<Slot>,
    calls: Vec<Call>,
    /// The last handle taken for each sequence (kept after it goes stale).
    handles: HashMap<SeqId, SeqHandle>,
}

/// The id of a resolved pick.
fn id(p: Pick) -> SeqId {
    match p {
        Pick::Id(id) => SeqId(id),
        Pick::Live(_) | Pick::Swapped(_) => unreachable!("operations are resolved before they run"),
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl Harness {
    fn new(s: &Setup) -> Self {
        let kv = KvCacheManager::new(KvCacheConfig {
            num_blocks: s.num_blocks,
            block_size: s.block_size,
            max_model_len: s.max_model_len,
            watermark: s.watermark,
            num_host_blocks: s.num_host_blocks,
            groups: s.groups.clone(),
            ..Default::default()
        })
        .expect("the generated config is valid");
        Harness {
            kv,
            model: Model::new(s),
            block_size: s.block_size as u64,
            device: vec![None; s.num_blocks as usize * s.block_size as usize],
            host: vec![None; s.num_host_blocks as usize * s.block_size as usize],
            handle_to_block: HashMap::new(),
            handle_to_host: HashMap::new(),
            next_value: 0,
            ops: BlockOps::default(),
            slots: Vec::new(),
            calls: Vec::new(),
            handles: HashMap::new(),
        }
    }

    /// One decode through `append_decode_into` over the sequence's handle,
    /// checking that an old handle either still names this sequence or is
    /// refused as stale (never resolves to another sequence), and that the
    /// slots pushed are the tables' slots of the new token.
    fn decode_by_handle(&mut self, seq: SeqId, token: u32) -> Result<(), KvError> {
        if let Some(&old) = self.handles.get(&seq) {
            match self.kv.seq_of(old) {
                Ok(s) => assert_eq!(s, seq, "a handle resolved to another sequence"),
                Err(e) => assert!(matches!(e, KvError::StaleHandle { .. }), "{e}"),
            }
        }
        let h = self.kv.handle(seq)?;
        self.handles.insert(seq, h);
        let len = self.kv.num_tokens(seq)?;
        let mut slots = vec![Vec::new(); self.kv.num_groups()];
        self.kv
            .append_decode_into(&[(h, token)], &mut slots)
            .map_err(|e| {
                assert_eq!(e.done, 0);
                e.error
            })?;
        for (g, out) in slots.iter().enumerate() {
            assert_eq!(
                out[..],
                [self.kv.group(g).unwrap().slot(seq, len).unwrap()],
                "group {g}"
            );
        }
        Ok(())
    }

    /// Fresh, globally unique token values (the content the oracle checks).
    fn values(&mut self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                self.next_value += 1;
                self.next_value
            })
            .collect()
    }

    fn len(&self, seq: SeqId) -> u64 {
        self.model.seqs.get(&seq).map_or(0, |s| s.values.len() as u64)
    }

    fn pick(&self, p: Pick) -> Pick {
        let nth = |k: usize, swapped: bool| {
            let ids: Vec<SeqId> = self
                .model
                .seqs
                .iter()
                .filter(|(_, s)| s.swapped == swapped)
                .map(|(&id, _)| id)
                .collect();
            match ids.len() {
                0 => k as u64 % NUM_IDS,
                n => ids[k % n].0,
            }
        };
        Pick::Id(match p {
            Pick::Id(id) => id,
            Pick::Live(k) => nth(k, false),
            Pick::Swapped(k) => nth(k, true),
        })
    }

    /// The operation with concrete ids and an absolute truncation length.
    fn resolve(&self, op: Op) -> Op {
        match op {
            Op::Allocate { seq, len } => Op::Allocate {
                seq: self.pick(seq),
                len,
            },
            Op::Append { seq, n } => Op::Append {
                seq: self.pick(seq),
                n,
            },
            Op::Fork { parent, child } => Op::Fork {
                parent: self.pick(parent),
                child: self.pick(child),
            },
            Op::Truncate { seq, to } => {
                let seq = self.pick(seq);
                let len = self.len(id(seq));
                let new_len = match to {
                    TruncateTo::Back(k) => len.saturating_sub(k),
                    TruncateTo::Exactly(n) => n,
                    TruncateTo::Beyond(k) => len + k,
                };
                Op::Truncate {
                    seq,
                    to: TruncateTo::Exactly(new_len),
                }
            }
            Op::Free { seq } => Op::Free { seq: self.pick(seq) },
            Op::SwapOut { seq } => Op::SwapOut { seq: self.pick(seq) },
            Op::SwapIn { seq } => Op::SwapIn { seq: self.pick(seq) },
            op @ Op::Admission { .. } => op,
        }
    }

    /// Runs one operation as one engine step and checks everything.
    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        let op = self.resolve(op);
        let before = snapshot(&self.kv);
        let used_before = before.usage.used_blocks;
        let (real, expected): (Result<Option<Allocation>, KvError>, Result<Effect, KvError>) = match op {
            Op::Allocate { seq, len } => {
                let seq = id(seq);
                let values = self.values(len);
                let tokens: Vec<u32> = values.iter().map(|&v| v as u32).collect();
                (
                    self.kv.allocate(seq, &tokens).map(Some),
                    self.model.allocate(seq, &values),
                )
            }
            Op::Append { seq, n } => {
                let seq = id(seq);
                let values = self.values(n);
                let tokens: Vec<u32> = values.iter().map(|&v| v as u32).collect();
                // Half the decodes go through the batched call over dense
                // handles; the slots it pushes must be the table's.
                let real = if tokens.len() == 1 && seq.0 % 2 == 0 {
                    self.decode_by_handle(seq, tokens[0])
                } else {
                    self.kv.append(seq, &tokens)
                };
                (real.map(|()| None), self.model.append(seq, &values))
            }
            Op::Fork { parent, child } => {
                let (parent, child) = (id(parent), id(child));
                (
                    self.kv.fork(parent, child).map(|()| None),
                    self.model.fork(parent, child),
                )
            }
            Op::Truncate { seq, to } => {
                let seq = id(seq);
                let TruncateTo::Exactly(new_len) = to else {
                    unreachable!("resolved")
                };
                (
                    self.kv.truncate(seq, new_len).map(|()| None),
                    self.model.truncate(seq, new_len),
                )
            }
            Op::Free { seq } => {
                let seq = id(seq);
                (self.kv.free(seq).map(|()| None), self.model.free(seq))
            }
            Op::SwapOut { seq } => {
                let seq = id(seq);
                (self.kv.swap_out(seq).map(|()| None), self.model.swap_out(seq))
            }
            Op::SwapIn { seq } => {
                let seq = id(seq);
                (self.kv.swap_in(seq).map(|()| None), self.model.swap_in(seq))
            }
            Op::Admission { prompt_len, max_new } => {
                let real = self.kv.check_admission_len(prompt_len, max_new).map_err(fail)?;
                let expected = self.model.admission(prompt_len, max_new);
                prop_assert_eq!(&real, &expected, "check_admission({}, {})", prompt_len, max_new);
                if real == Admission::Now {
                    // `Now` promises the prompt's blocks are free (with the watermark to
                    // spare): an allocation of that prompt succeeds.
                    prop_assert!(self.model.blocks_needed(prompt_len) <= self.kv.num_free_blocks() as u64);
                    let mut probe = self.kv.clone();
                    let fresh = (0..)
                        .map(SeqId)
                        .find(|s| !self.model.seqs.contains_key(s))
                        .unwrap();
                    prop_assert!(probe.allocate(fresh, &vec![0; prompt_len as usize]).is_ok());
                }
                prop_assert_eq!(snapshot(&self.kv), before, "check_admission changed the state");
                self.calls.push((op, format!("{real:?}")));
                return self.check_all(&Effect::default());
            }
        };
        self.calls.push((op, format!("{real:?}")));
        prop_assert_eq!(
            &real,
            &expected.as_ref().map(|e| e.allocation).map_err(Clone::clone),
            "{:?}",
            op
        );
        if real.is_err() {
            prop_assert_eq!(snapshot(&self.kv), before, "refused {:?} changed the state", op);
        }
        if matches!(op, Op::Fork { .. }) && real.is_ok() {
            // Sharing takes no block and copies nothing until a divergent write.
            prop_assert_eq!(self.kv.usage().used_blocks, used_before, "fork took blocks");
            prop_assert!(self.kv.pending_copies().is_empty(), "fork queued a copy");
        }
        self.check_all(&expected.unwrap_or_default())
    }

    fn check_all(&mut self, effect: &Effect) -> Result<(), TestCaseError> {
        self.kv.check_invariants().map_err(fail)?;
        prop_assert_eq!(self.kv.stats(), &self.model.stats());
        self.check_structure()?;
        self.run_engine_step(effect)?;
        self.check_content()
    }

    /// The real tables have the model's shape and sharing structure, group by group.
    fn check_structure(&mut self) -> Result<(), TestCaseError> {
        let bs = self.block_size;
        let kv = &self.kv;
        let num_groups = self.model.groups.len();
        let mut real_ids: Vec<SeqId> = kv.seq_ids().collect();
        real_ids.sort();
        let model_ids: Vec<SeqId> = self
            .model
            .seqs
            .iter()
            .filter(|(_, m)| !m.swapped)
            .map(|(&id, _)| id)
            .collect();
        prop_assert_eq!(real_ids, model_ids);
        let mut real_swapped: Vec<SeqId> = kv.swapped_ids().collect();
        real_swapped.sort();
        let model_swapped: Vec<SeqId> = self
            .model
            .seqs
            .iter()
            .filter(|(_, m)| m.swapped)
            .map(|(&id, _)| id)
            .collect();
        prop_assert_eq!(real_swapped, model_swapped);

        /// Checks one table against the model's handles, extending the
        /// handle <-> block bijection; NULL must meet the placeholder.
        fn pair(
            what: &str,
            model: &[Handle],
            real: &[BlockId],
            h2b: &mut HashMap<Handle, BlockId>,
            b2h: &mut HashMap<BlockId, Handle>,
        ) -> Result<(), TestCaseError> {
            prop_assert_eq!(model.len(), real.len(), "{} entries", what);
            for (&h, &b) in model.iter().zip(real) {
                prop_assert_eq!(
                    h == NULL,
                    b.is_null(),
                    "{}: placeholders differ: {:?} vs {:?}",
                    what,
                    model,
                    real
                );
                if h == NULL {
                    continue;
                }
                let b_seen = *h2b.entry(h).or_insert(b);
                let h_seen = *b2h.entry(b).or_insert(h);
                prop_assert!(
                    b_seen == b && h_seen == h,
                    "{}: sharing differs from the model: model block {} vs {:?}",
                    what,
                    h,
                    b
                );
            }
            Ok(())
        }

        // The host tier: the same shape, sharing and ref counts.
        let mut h2h: HashMap<Handle, BlockId> = HashMap::new();
        let mut hb2h: HashMap<BlockId, Handle> = HashMap::new();
        for (&seq, m) in self.model.seqs.iter().filter(|(_, m)| m.swapped) {
            let len = m.values.len() as u64;
            prop_assert!(kv.is_swapped(seq));
            prop_assert_eq!(kv.block_table(seq), Err(KvError::SequenceSwapped { seq }));
            for g in 0..num_groups {
                let t = kv.group(g).unwrap().swapped_table(seq).map_err(fail)?;
                prop_assert_eq!(t.num_tokens() as u64, len, "swapped {:?} length", seq);
                pair(
                    &format!("swapped {seq:?} group {g}"),
                    &m.blocks[g],
                    t.blocks(),
                    &mut h2h,
                    &mut hb2h,
                )?;
            }
        }
        for (h, b) in &h2h {
            if let Some(old) = self.handle_to_host.get(h) {
                prop_assert_eq!(old, b, "model host block {} moved", h);
            }
            let host_pool = kv.host_pool().expect("swapped sequences imply a host tier");
            prop_assert_eq!(
                host_pool.ref_count(*b).map_err(fail)? as usize,
                self.model.holders(*h),
                "ref count of host {:?}",
                b
            );
        }
        self.handle_to_host.extend(h2h);

        let mut h2b: HashMap<Handle, BlockId> = HashMap::new();
        let mut b2h: HashMap<BlockId, Handle> = HashMap::new();
        let mut table_entries = 0u64;
        for (&seq, m) in self.model.seqs.iter().filter(|(_, m)| !m.swapped) {
            let len = m.values.len() as u64;
            prop_assert_eq!(kv.num_tokens(seq).map_err(fail)?, len, "{:?} length", seq);
            for g in 0..num_groups {
                let table = kv.group(g).unwrap().block_table(seq).map_err(fail)?;
                // Fragmentation: exactly ceil(len / bs) entries, fewer than bs slots wasted.
                prop_assert_eq!(table.len() as u64, len.div_ceil(bs), "{:?} block count", seq);
                prop_assert!(
                    table.len() as u64 * bs - len < bs.max(1),
                    "{:?} wastes a block",
                    seq
                );
                table_entries += table.iter().filter(|b| !b.is_null()).count() as u64;
                pair(
                    &format!("{seq:?} group {g}"),
                    &m.blocks[g],
                    table,
                    &mut h2b,
                    &mut b2h,
                )?;
            }
        }
        // A live block never moves.
        for (h, b) in &h2b {
            if let Some(old) = self.handle_to_block.get(h) {
                prop_assert_eq!(old, b, "model block {} moved", h);
            }
            prop_assert_eq!(
                kv.pool().ref_count(*b).map_err(fail)? as usize,
                self.model.holders(*h),
                "ref count of {:?}",
                b
            );
        }
        let usage = kv.usage();
        prop_assert_eq!(
            usage.used_blocks,
            h2b.len() as u64,
            "used blocks != distinct blocks in tables"
        );
        prop_assert_eq!(kv.pool().num_used() as u64, h2b.len() as u64);
        prop_assert_eq!(kv.num_free_blocks() as u64, self.model.num_free());
        prop_assert!(usage.used_blocks <= table_entries);
        prop_assert_eq!(usage, self.model.usage());
        prop_assert_eq!(kv.blocks_by_group(), self.model.blocks_by_group());
        self.handle_to_block.extend(h2b);
        Ok(())
    }

    /// Plays the engine: drain the operations, check them against the model,
    /// run them in the contract's order (swap-out, swap-in, copies), then
    /// write the new tokens at their slots in every group (tagged with the
    /// group); poison free blocks of both tiers.
    fn run_engine_step(&mut self, effect: &Effect) -> Result<(), TestCaseError> {
        let bs = self.block_size as usize;
        self.kv.drain_ops(&mut self.ops);
        let dev = |h: &Handle| self.handle_to_block[h];
        let host = |h: &Handle| self.handle_to_host[h];
        let expected: Vec<BlockCopy> = effect
            .copies
            .iter()
            .map(|&(src, dst, num_slots, group)| BlockCopy {
                src: dev(&src),
                dst: dev(&dst),
                num_slots,
                group,
            })
            .collect();
        let swap_out: Vec<BlockCopy> = effect
            .swap_out
            .iter()
            .map(|&(d, h, group)| BlockCopy {
                src: dev(&d),
                dst: host(&h),
                num_slots: bs as u32,
                group,
            })
            .collect();
        let swap_in: Vec<BlockCopy> = effect
            .swap_in
            .iter()
            .map(|&(h, d, group)| BlockCopy {
                src: host(&h),
                dst: dev(&d),
                num_slots: bs as u32,
                group,
            })
            .collect();
        prop_assert_eq!(&self.ops.swap_out, &swap_out, "swap-out copies");
        prop_assert_eq!(&self.ops.swap_in, &swap_in, "swap-in copies");
        prop_assert_eq!(&self.ops.copies, &expected, "copy-on-write copies");
        prop_assert!(self.kv.pending_copies().is_empty());
        prop_assert_eq!(self.kv.pending_swaps(), (&[][..], &[][..]));
        for c in &self.ops.swap_out {
            let (d, h) = (c.src.index() * bs, c.dst.index() * bs);
            self.host[h..h + bs].copy_from_slice(&self.device[d..d + bs]);
        }
        for c in &self.ops.swap_in {
            let (h, d) = (c.src.index() * bs, c.dst.index() * bs);
            self.device[d..d + bs].copy_from_slice(&self.host[h..h + bs]);
        }
        for c in &self.ops.copies {
            let (src, dst) = (c.src.index() * bs, c.dst.index() * bs);
            for i in 0..c.num_slots as usize {
                prop_assert!(
                    self.device[src + i].is_some(),
                    "{:?} copies a slot never written",
                    c
                );
                self.device[dst + i] = self.device[src + i];
            }
        }
        if let Some((seq, n)) = effect.new_tokens {
            for g in 0..self.model.groups.len() {
                self.slots.clear();
                self.kv
                    .group(g)
                    .unwrap()
                    .new_slots_into(seq, n as u64, &mut self.slots)
                    .map_err(fail)?;
                let values = &self.model.seqs[&seq].values;
                prop_assert_eq!(self.slots.len(), n);
                for (&slot, &v) in self.slots.iter().zip(&values[values.len() - n..]) {
                    self.device[slot as usize] = Some(tagged(v, g));
                }
            }
        }
        for b in self.kv.pool().free_blocks() {
            self.device[b.index() * bs..(b.index() + 1) * bs].fill(None);
        }
        // Host blocks released this step are free once drained.
        prop_assert_eq!(self.kv.num_free_host_blocks() as u64, self.model.num_free_host());
        if let Some(p) = self.kv.host_pool() {
            prop_assert_eq!(p.num_free() as u64, self.model.num_free_host());
            for b in p.free_blocks() {
                self.host[b.index() * bs..(b.index() + 1) * bs].fill(None);
            }
        }
        Ok(())
    }

    /// Every live sequence reads back exactly its own token values, in every
    /// group, at every position the group still holds (and nothing of the
    /// positions a window released).
    fn check_content(&mut self) -> Result<(), TestCaseError> {
        let bs = self.block_size;
        for (&seq, m) in self.model.seqs.iter().filter(|(_, m)| m.swapped) {
            for g in 0..self.model.groups.len() {
                let t = self.kv.group(g).unwrap().swapped_table(seq).map_err(fail)?;
                let from = released(&m.blocks[g]) * bs as usize;
                for (pos, &v) in m.values.iter().enumerate().skip(from) {
                    let slot = t.blocks()[pos / bs as usize].index() * bs as usize + pos % bs as usize;
                    prop_assert_eq!(
                        self.host[slot],
                        Some(tagged(v, g)),
                        "swapped {:?} group {} position {} holds the wrong token in host memory",
                        seq,
                        g,
                        pos
                    );
                }
            }
        }
        for (&seq, m) in self.model.seqs.iter().filter(|(_, m)| !m.swapped) {
            let len = m.values.len() as u64;
            for g in 0..self.model.groups.len() {
                let view = self.kv.group(g).unwrap();
                let table = view.block_table(seq).map_err(fail)?;
                let from = (released(&m.blocks[g]) as u64 * bs).min(len);
                if from > 0 {
                    prop_assert!(
                        view.slot(seq, from - 1).is_err(),
                        "a released position has a slot"
                    );
                    prop_assert!(view.slots_into(seq, from - 1..len, &mut self.slots).is_err());
                }
                self.slots.clear();
                view.slots_into(seq, from..len, &mut self.slots).map_err(fail)?;
                for (k, pos) in (from..len).enumerate() {
                    let v = m.values[pos as usize];
                    let slot = view.slot(seq, pos).map_err(fail)?;
                    prop_assert_eq!(slot, table[(pos / bs) as usize].0 as u64 * bs + pos % bs);
                    prop_assert_eq!(self.slots[k], slot);
                    prop_assert_eq!(
                        self.device[slot as usize],
                        Some(tagged(v, g)),
                        "{:?} group {} position {} reads the wrong token",
                        seq,
                        g,
                        pos
                    );
                }
                prop_assert!(view.slot(seq, len).is_err());
            }
        }
        Ok(())
    }

    /// Frees every sequence (checked like any step); the pool is all free again.
    fn free_everything(&mut self) -> Result<(), TestCaseError> {
        let live: Vec<SeqId> = self.model.seqs.keys().copied().collect();
        for seq in live {
            self.step(Op::Free { seq: Pick::Id(seq.0) })?;
        }
        let u = self.kv.usage();
        prop_assert_eq!(u.free_blocks, u.num_blocks);
        prop_assert_eq!(u.stored_tokens, 0);
        prop_assert_eq!(self.kv.num_free_blocks() as u64, u.num_blocks);
        prop_assert_eq!(self.kv.pool().free_blocks().count() as u64, u.num_blocks);
        prop_assert!(self.device.iter().all(Option::is_none));
        prop_assert_eq!(self.kv.num_swapped(), 0);
        prop_assert_eq!(self.kv.num_free_host_blocks(), self.kv.num_host_blocks());
        prop_assert!(self.host.iter().all(Option::is_none));
        Ok(())
    }
}

/// Replays the recorded calls on a fresh manager: same outcomes, same block ids.
fn replay(s: &Setup, calls: &[Call], final_state: &Snapshot) -> Result<(), TestCaseError> {
    let mut h = Harness::new(s);
    for (op, outcome) in calls {
        // Token values do not matter to the manager; lengths do.
        let again = match *op {
            Op::Allocate { seq, len } => format!("{:?}", h.kv.allocate(id(seq), &vec![0; len]).map(Some)),
            Op::Append { seq, n } => format!(
                "{:?}",
                h.kv.append(id(seq), &vec![0; n]).map(|()| None::<Allocation>)
            ),
            Op::Fork { parent, child } => {
                format!(
                    "{:?}",
                    h.kv.fork(id(parent), id(child)).map(|()| None::<Allocation>)
                )
            }
            Op::Truncate { seq, to } => {
                let TruncateTo::Exactly(new_len) = to else {
                    unreachable!("recorded calls are resolved")
                };
                format!(
                    "{:?}",
                    h.kv.truncate(id(seq), new_len).map(|()| None::<Allocation>)
                )
            }
            Op::Free { seq } => format!("{:?}", h.kv.free(id(seq)).map(|()| None::<Allocation>)),
            Op::SwapOut { seq } => format!("{:?}", h.kv.swap_out(id(seq)).map(|()| None::<Allocation>)),
            Op::SwapIn { seq } => format!("{:?}", h.kv.swap_in(id(seq)).map(|()| None::<Allocation>)),
            Op::Admission { prompt_len, max_new } => {
                format!(
                    "{:?}",
                    h.kv.check_admission_len(prompt_len, max_new).map_err(fail)?
                )
            }
        };
        prop_assert_eq!(&again, outcome, "replay of {:?} differs", op);
        h.kv.drain_ops(&mut h.ops);
    }
    prop_assert_eq!(&snapshot(&h.kv), final_state, "replay ended in a different state");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn manager_matches_reference_model((s, ops) in scenario()) {
        let mut h = Harness::new(&s);
        for &op in &ops {
            h.step(op)?;
        }
        let end = snapshot(&h.kv);
        replay(&s, &h.calls, &end)?;
        h.free_everything()?;
    }
}
