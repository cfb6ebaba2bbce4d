//! Property-based state-machine test of `KvCacheManager` against a reference model.
//!
//! proptest generates a small cache (1..=40 blocks of 1, 2, 4 or 16 tokens, a
//! short `max_model_len`, a watermark) and a sequence of operations over a
//! small id space (so ids collide: duplicate allocations, unknown and double
//! frees, forks onto live ids). Each operation runs on the real manager and on
//! [`Model`], a deliberately naive reference: a map from sequence id to its
//! token values and its list of block handles, nothing else. After every step
//! the test checks:
//!
//! - the result: `Ok` / the exact `KvError` (with its numbers) / the exact `Admission`;
//! - `check_invariants()`;
//! - a refused call (any `Err`, and every `check_admission`) changed nothing
//!   observable: tables, token counts, usage, the free queue, pending copies;
//! - the sharing structure: model handles and real `BlockId`s are in a
//!   bijection that holds across steps (a live block never moves), ref counts
//!   equal the model's holder counts, and the queued copy-on-write copies are
//!   exactly the model's;
//! - fragmentation: each sequence holds `ceil(len / block_size)` blocks and
//!   wastes fewer than `block_size` slots, used blocks equal the distinct blocks
//!   across tables, `usage()` equals the model's (shared slots counted once),
//!   a fork takes no block and queues no copy;
//! - content: a simulated device memory executes the drained copies and then
//!   writes each new token's value at the slot the manager assigns (the engine
//!   contract); every live sequence must read back exactly its own values
//!   through its block table. Every token gets a globally unique value and a
//!   fork shares its parent's values, so a missed or wrong copy-on-write, or a
//!   block handed to two owners, shows up as a wrong value. Free blocks are
//!   poisoned, so reading a freed block also fails.
//!
//! At the end of each case everything is freed (the pool must be all free
//! again) and the recorded calls are replayed on a fresh manager, which must
//! produce the same block ids (runs are reproducible).
//!
//! Default: 256 cases of 40..=88 operations, so at least 10 240 operations per
//! run. Set `PAGEDKV_PROPTEST_CASES` to run more cases.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pagedkv::{
    Admission, AdmissionRefusal, Allocation, BlockCopy, BlockId, BlockOps, KvCacheConfig, KvCacheManager,
    KvError, KvStats, KvUsage, SeqId, Slot,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Sequence ids are drawn from `0..NUM_IDS` so that operations collide.
const NUM_IDS: u64 = 8;
const MIN_OPS: usize = 40;
const MAX_OPS: usize = 88;
const DEFAULT_CASES: u32 = 256;

fn cases() -> u32 {
    std::env::var("PAGEDKV_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
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
    /// The `k % live`-th live sequence in id order (a raw id when none is live).
    Live(usize),
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

#[derive(Clone, Copy, Debug)]
struct Setup {
    num_blocks: u32,
    block_size: u32,
    max_model_len: u32,
    watermark: f64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        1u32..=40,
        prop::sample::select(vec![1u32, 2, 4, 16]),
        1u32..=96,
        prop::sample::select(vec![0.0, 0.01, 0.1, 0.25, 0.5]),
    )
        .prop_map(|(num_blocks, block_size, max_model_len, watermark)| Setup {
            num_blocks,
            block_size,
            max_model_len,
            watermark,
        })
}

fn op(s: Setup) -> impl Strategy<Value = Op> {
    let mml = s.max_model_len as usize;
    let bs = s.block_size as usize;
    let id = (0..NUM_IDS).prop_map(Pick::Id);
    let live = prop_oneof![
        4 => (0..NUM_IDS as usize).prop_map(Pick::Live),
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
        1 => live.prop_map(|seq| Op::Free { seq }),
        1 => admission.prop_map(|(prompt_len, max_new)| Op::Admission { prompt_len, max_new }),
    ]
}

fn scenario() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    setup().prop_flat_map(|s| (Just(s), prop::collection::vec(op(s), MIN_OPS..=MAX_OPS)))
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// A physical block in the model: a number never reused. Which sequences hold
/// it is found by scanning every table; that scan is the reference count.
type Handle = u64;

/// One sequence: the value of each of its tokens (content), and the handle of
/// each of its logical blocks.
#[derive(Clone, Debug, Default)]
struct ModelSeq {
    values: Vec<u64>,
    blocks: Vec<Handle>,
}

/// What a successful model operation expects the engine to do this step.
#[derive(Clone, Debug, Default)]
struct Effect {
    allocation: Option<Allocation>,
    /// The sequence whose last `n` tokens are new this step.
    new_tokens: Option<(SeqId, usize)>,
    /// Copy-on-write copies: (source handle, destination handle, slots).
    copies: Vec<(Handle, Handle, u32)>,
}

#[derive(Debug)]
struct Model {
    block_size: u64,
    num_blocks: u64,
    max_model_len: u64,
    watermark_blocks: u64,
    seqs: BTreeMap<SeqId, ModelSeq>,
    next_handle: Handle,
    stats: KvStats,
}

impl Model {
    fn new(s: Setup) -> Self {
        Model {
            block_size: s.block_size as u64,
            num_blocks: s.num_blocks as u64,
            max_model_len: s.max_model_len as u64,
            // The documented rule: the watermark fraction floored to whole blocks.
            watermark_blocks: (s.watermark * s.num_blocks as f64).floor() as u64,
            seqs: BTreeMap::new(),
            next_handle: 0,
            stats: KvStats::default(),
        }
    }

    fn blocks_needed(&self, tokens: u64) -> u64 {
        tokens.div_ceil(self.block_size)
    }

    fn holders(&self, h: Handle) -> usize {
        self.seqs.values().filter(|s| s.blocks.contains(&h)).count()
    }

    fn distinct_blocks(&self) -> BTreeSet<Handle> {
        self.seqs
            .values()
            .flat_map(|s| s.blocks.iter().copied())
            .collect()
    }

    fn num_free(&self) -> u64 {
        self.num_blocks - self.distinct_blocks().len() as u64
    }

    fn fresh(&mut self) -> Handle {
        self.next_handle += 1;
        self.next_handle
    }

    fn out_of_blocks(&mut self, needed: u64) -> Result<(), KvError> {
        let free = self.num_free();
        if needed > free {
            self.stats.out_of_blocks += 1;
            return Err(KvError::OutOfBlocks { needed, free });
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
        let needed = self.blocks_needed(tokens);
        self.out_of_blocks(needed)?;
        let blocks = (0..needed).map(|_| self.fresh()).collect();
        self.seqs.insert(
            seq,
            ModelSeq {
                values: values.to_vec(),
                blocks,
            },
        );
        self.stats.sequences_allocated += 1;
        Ok(Effect {
            allocation: Some(Allocation {
                num_blocks: needed as u32,
                cached_tokens: 0,
            }),
            new_tokens: Some((seq, values.len())),
            copies: vec![],
        })
    }

    /// Appending into a partially filled last block that another sequence
    /// also holds copies that block first; full shared blocks stay shared.
    fn append(&mut self, seq: SeqId, values: &[u64]) -> Result<Effect, KvError> {
        let s = self.seqs.get(&seq).ok_or(KvError::UnknownSequence { seq })?;
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
        let filled = len % self.block_size;
        let last = s.blocks.last().copied();
        let cow = filled != 0 && self.holders(last.expect("a partial block exists")) > 1;
        let grow = self.blocks_needed(new_len) - s.blocks.len() as u64;
        self.out_of_blocks(grow + cow as u64)?;

        let mut effect = Effect {
            new_tokens: Some((seq, values.len())),
            ..Effect::default()
        };
        if cow {
            let dst = self.fresh();
            let s = self.seqs.get_mut(&seq).expect("checked");
            *s.blocks.last_mut().expect("cow implies a block") = dst;
            effect.copies.push((last.expect("cow"), dst, filled as u32));
            self.stats.cow_copies += 1;
        }
        for _ in 0..grow {
            let h = self.fresh();
            self.seqs.get_mut(&seq).expect("checked").blocks.push(h);
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
        let p = self
            .seqs
            .get(&parent)
            .ok_or(KvError::UnknownSequence { seq: parent })?
            .clone();
        self.seqs.insert(child, p);
        self.stats.forks += 1;
        Ok(Effect::default())
    }

    fn truncate(&mut self, seq: SeqId, new_len: u64) -> Result<Effect, KvError> {
        let keep = self.blocks_needed(new_len) as usize;
        let s = self.seqs.get_mut(&seq).ok_or(KvError::UnknownSequence { seq })?;
        let num_tokens = s.values.len() as u64;
        if new_len > num_tokens {
            return Err(KvError::TruncateBeyondLength {
                seq,
                new_len,
                num_tokens,
            });
        }
        s.values.truncate(new_len as usize);
        s.blocks.truncate(keep);
        Ok(Effect::default())
    }

    fn free(&mut self, seq: SeqId) -> Result<Effect, KvError> {
        self.seqs.remove(&seq).ok_or(KvError::UnknownSequence { seq })?;
        self.stats.sequences_freed += 1;
        Ok(Effect::default())
    }

    /// The rule documented on `KvCacheManager::check_admission`, in its order.
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
        if self.blocks_needed(total) > self.num_blocks {
            return Admission::Never(AdmissionRefusal::ExceedsPool {
                tokens: total,
                blocks_needed: self.blocks_needed(total),
                num_blocks: self.num_blocks,
                block_size: self.block_size as u32,
            });
        }
        let prompt_blocks = self.blocks_needed(prompt_len);
        if prompt_blocks + self.watermark_blocks > self.num_blocks {
            return Admission::Never(AdmissionRefusal::PromptAboveWatermark {
                prompt_tokens: prompt_len,
                blocks_needed: prompt_blocks,
                num_blocks: self.num_blocks,
                watermark_blocks: self.watermark_blocks as u32,
            });
        }
        if prompt_blocks + self.watermark_blocks <= self.num_free() {
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
        for s in self.seqs.values() {
            let len = s.values.len() as u64;
            for (i, &h) in s.blocks.iter().enumerate() {
                let here = (len - i as u64 * bs).min(bs);
                let f = filled.entry(h).or_insert(0);
                *f = (*f).max(here);
            }
        }
        let used = filled.len() as u64;
        let stored: u64 = filled.values().sum();
        KvUsage {
            num_blocks: self.num_blocks,
            free_blocks: self.num_blocks - used,
            used_blocks: used,
            num_seqs: self.seqs.len() as u64,
            logical_tokens: self.seqs.values().map(|s| s.values.len() as u64).sum(),
            stored_tokens: stored,
            internal_fragmentation: used * bs - stored,
        }
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
    free_queue: Vec<BlockId>,
    pending: Vec<BlockCopy>,
}

fn snapshot(kv: &KvCacheManager) -> Snapshot {
    let mut tables: Vec<_> = kv
        .seq_ids()
        .map(|s| (s, kv.block_table(s).unwrap().to_vec(), kv.num_tokens(s).unwrap()))
        .collect();
    tables.sort();
    Snapshot {
        usage: kv.usage(),
        tables,
        free_queue: kv.pool().free_blocks().collect(),
        pending: kv.pending_copies().to_vec(),
    }
}

/// A resolved call and its outcome, for the replay check.
type Call = (Op, String);

struct Harness {
    kv: KvCacheManager,
    model: Model,
    block_size: u64,
    /// The simulated KV cache: one value per slot, `None` when poisoned.
    device: Vec<Option<u64>>,
    /// Model handle -> real block, as of the last step.
    handle_to_block: HashMap<Handle, BlockId>,
    next_value: u64,
    ops: BlockOps,
    slots: Vec<Slot>,
    calls: Vec<Call>,
}

/// The id of a resolved pick.
fn id(p: Pick) -> SeqId {
    match p {
        Pick::Id(id) => SeqId(id),
        Pick::Live(_) => unreachable!("operations are resolved before they run"),
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl Harness {
    fn new(s: Setup) -> Self {
        let kv = KvCacheManager::new(KvCacheConfig {
            num_blocks: s.num_blocks,
            block_size: s.block_size,
            max_model_len: s.max_model_len,
            watermark: s.watermark,
            ..Default::default()
        })
        .expect("the generated config is valid");
        Harness {
            kv,
            model: Model::new(s),
            block_size: s.block_size as u64,
            device: vec![None; s.num_blocks as usize * s.block_size as usize],
            handle_to_block: HashMap::new(),
            next_value: 0,
            ops: BlockOps::default(),
            slots: Vec::new(),
            calls: Vec::new(),
        }
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
        Pick::Id(match p {
            Pick::Id(id) => id,
            Pick::Live(k) => match self.model.seqs.len() {
                0 => k as u64 % NUM_IDS,
                n => self.model.seqs.keys().nth(k % n).expect("k % n < n").0,
            },
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
                (
                    self.kv.append(seq, &tokens).map(|()| None),
                    self.model.append(seq, &values),
                )
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
            Op::Admission { prompt_len, max_new } => {
                let real = self.kv.check_admission(prompt_len, max_new);
                let expected = self.model.admission(prompt_len, max_new);
                prop_assert_eq!(&real, &expected, "check_admission({}, {})", prompt_len, max_new);
                if real == Admission::Now {
                    // `Now` promises the prompt's blocks are free (with the watermark to spare).
                    prop_assert!(self.model.blocks_needed(prompt_len) <= self.kv.num_free_blocks() as u64);
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
        prop_assert_eq!(self.kv.stats(), &self.model.stats);
        self.check_structure()?;
        self.run_engine_step(effect)?;
        self.check_content()
    }

    /// The real tables have the model's shape and sharing structure.
    fn check_structure(&mut self) -> Result<(), TestCaseError> {
        let bs = self.block_size;
        let kv = &self.kv;
        let mut real_ids: Vec<SeqId> = kv.seq_ids().collect();
        real_ids.sort();
        let model_ids: Vec<SeqId> = self.model.seqs.keys().copied().collect();
        prop_assert_eq!(real_ids, model_ids);

        let mut h2b: HashMap<Handle, BlockId> = HashMap::new();
        let mut b2h: HashMap<BlockId, Handle> = HashMap::new();
        let mut table_entries = 0u64;
        for (&seq, m) in &self.model.seqs {
            let len = m.values.len() as u64;
            prop_assert_eq!(kv.num_tokens(seq).map_err(fail)?, len, "{:?} length", seq);
            let table = kv.block_table(seq).map_err(fail)?;
            // Fragmentation: exactly ceil(len / bs) blocks, fewer than bs slots wasted.
            prop_assert_eq!(table.len() as u64, len.div_ceil(bs), "{:?} block count", seq);
            prop_assert!(
                table.len() as u64 * bs - len < bs.max(1),
                "{:?} wastes a block",
                seq
            );
            prop_assert_eq!(table.len(), m.blocks.len());
            table_entries += table.len() as u64;
            for (&h, &b) in m.blocks.iter().zip(table) {
                let b_seen = *h2b.entry(h).or_insert(b);
                let h_seen = *b2h.entry(b).or_insert(h);
                prop_assert!(
                    b_seen == b && h_seen == h,
                    "sharing differs from the model at {:?}: model block {} vs {:?}",
                    seq,
                    h,
                    b
                );
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
        self.handle_to_block = h2b;
        Ok(())
    }

    /// Plays the engine: drain the copies, check them against the model, run
    /// them, then write the new tokens at their slots; poison free blocks.
    fn run_engine_step(&mut self, effect: &Effect) -> Result<(), TestCaseError> {
        let bs = self.block_size as usize;
        self.kv.drain_ops(&mut self.ops);
        let expected: Vec<BlockCopy> = effect
            .copies
            .iter()
            .map(|&(src, dst, num_slots)| BlockCopy {
                src: self.handle_to_block[&src],
                dst: self.handle_to_block[&dst],
                num_slots,
            })
            .collect();
        prop_assert_eq!(&self.ops.copies, &expected, "copy-on-write copies");
        prop_assert!(self.kv.pending_copies().is_empty());
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
            self.slots.clear();
            self.kv
                .new_slots_into(seq, n as u64, &mut self.slots)
                .map_err(fail)?;
            let values = &self.model.seqs[&seq].values;
            prop_assert_eq!(self.slots.len(), n);
            for (&slot, &v) in self.slots.iter().zip(&values[values.len() - n..]) {
                self.device[slot as usize] = Some(v);
            }
        }
        for b in self.kv.pool().free_blocks() {
            self.device[b.index() * bs..(b.index() + 1) * bs].fill(None);
        }
        Ok(())
    }

    /// Every live sequence reads back exactly its own token values.
    fn check_content(&mut self) -> Result<(), TestCaseError> {
        let bs = self.block_size;
        for (&seq, m) in &self.model.seqs {
            let len = m.values.len() as u64;
            let table = self.kv.block_table(seq).map_err(fail)?;
            self.slots.clear();
            self.kv.slots_into(seq, 0..len, &mut self.slots).map_err(fail)?;
            for (pos, &v) in m.values.iter().enumerate() {
                let pos = pos as u64;
                let slot = self.kv.slot(seq, pos).map_err(fail)?;
                prop_assert_eq!(slot, table[(pos / bs) as usize].0 as u64 * bs + pos % bs);
                prop_assert_eq!(self.slots[pos as usize], slot);
                prop_assert_eq!(
                    self.device[slot as usize],
                    Some(v),
                    "{:?} position {} reads the wrong token",
                    seq,
                    pos
                );
            }
            prop_assert!(self.kv.slot(seq, len).is_err());
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
        Ok(())
    }
}

/// Replays the recorded calls on a fresh manager: same outcomes, same block ids.
fn replay(s: Setup, calls: &[Call], final_state: &Snapshot) -> Result<(), TestCaseError> {
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
            Op::Admission { prompt_len, max_new } => {
                format!("{:?}", h.kv.check_admission(prompt_len, max_new))
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
        let mut h = Harness::new(s);
        for &op in &ops {
            h.step(op)?;
        }
        let end = snapshot(&h.kv);
        replay(s, &h.calls, &end)?;
        h.free_everything()?;
    }
}
