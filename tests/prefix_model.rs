//! Property-based state-machine test of prefix caching.
//!
//! proptest generates a small cache with prefix caching on (one full-attention
//! group, or hybrid: full + a sliding window, full + chunked local attention, a
//! sliding window alone; each group caches its own blocks and a hit must agree
//! across groups) and a sequence of operations (allocate with a tenant salt, append, fork, truncate, free,
//! reset the cache, admission queries) over prompts drawn from a tiny alphabet
//! around shared stems, so prefixes repeat, hits, evictions and duplicate
//! content are frequent. After every step:
//!
//! - `check_invariants()` (which includes the prefix invariants: each cached
//!   hash names a block that carries it, each sequence's hashes match its
//!   tokens, no cached block is written in place);
//! - a refused call changed nothing observable (tables, free queue order,
//!   cached block count, usage);
//! - admission agrees with allocation: with no watermark,
//!   `check_admission(prompt) == Now` exactly when `allocate_with` of that
//!   prompt succeeds;
//! - the results that do not depend on eviction order match a naive model
//!   (which sequences exist and their tokens; unknown, duplicate, empty and
//!   too-long refusals; `cached_tokens` is whole blocks below the prompt length
//!   and within the longest prefix this tenant ever stored);
//! - content: a simulated device memory where the "KV" of position `p` is a
//!   hash of the tokens `0..=p` (as real keys and values depend on the whole
//!   prefix, and tagged with the group: groups hold different layers). The
//!   engine runs the drained copies, then writes only the tokens it computes
//!   (`cached_tokens..` after an allocation) in every group, and every live
//!   sequence must read back the right value at every position each group
//!   still holds through that group's table. A prefix hit on a wrong, stale,
//!   overwritten or other group's block shows up as a wrong value;
//! - aborts: some prompts are allocated and freed before their step is handed
//!   to the engine (nothing is written); no later prompt may hit them (the
//!   model does not count them as stored, and their blocks hold stale values).
//!
//! - the tiered cache: with a host tier (0 to 8 host blocks) and prefix
//!   offload on evict or on free, evicted cached blocks are copied to a
//!   simulated host memory by the drained swap-out copies and reloaded by the
//!   swap-in copies, so every reloaded block must read back exactly what was
//!   written before its offload. Sequences are also swapped out and in,
//!   contending with offloaded blocks for the one host pool (full, empty,
//!   shared); a swapped sequence reads its own tokens once back.
//!
//! Half the cases record KV events and half do not (the manager takes
//! event-free shortcuts on some paths, such as reloads).
//!
//! At the end everything is freed: the pool is all free, and after
//! `reset_prefix_cache()` nothing is cached in either tier. The run also
//! asserts that the cases exercised offload, reload, host evictions and
//! swaps beside offloaded blocks.
//!
//! Default: 768 cases of 30..=70 operations (about 38k operations, under a second). `PAGEDKV_PROPTEST_CASES` raises it.

mod proptest_cases;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pagedkv::{
    Admission, AttentionKind, BlockOps, Eviction, KvCacheConfig, KvCacheManager, KvError, KvStats,
    PrefixKeys, PrefixOffload, SeqId, TokenId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const NUM_IDS: u64 = 6;

fn cases() -> u32 {
    proptest_cases::from_env(768)
}

#[derive(Clone, Debug)]
enum Op {
    Allocate {
        seq: u64,
        tenant: u8,
        prompt: Vec<TokenId>,
    },
    Append {
        seq: u64,
        tokens: Vec<TokenId>,
    },
    Fork {
        parent: u64,
        child: u64,
    },
    Truncate {
        seq: u64,
        back: u32,
    },
    Free {
        seq: u64,
    },
    /// Allocate, then free before the step is handed over (an aborted request).
    Abort {
        seq: u64,
        tenant: u8,
        prompt: Vec<TokenId>,
    },
    Reset,
    SwapOut {
        seq: u64,
    },
    SwapIn {
        seq: u64,
    },
    /// Free `seq` if it exists, then allocate a prompt allocated before (its
    /// blocks may have been evicted, and offloaded to the host tier, since).
    Revisit {
        seq: u64,
        pick: usize,
    },
}

fn tokens(max: usize) -> impl Strategy<Value = Vec<TokenId>> {
    prop::collection::vec(0..3u32, 0..max)
}

/// Prompts: one of three stems (cut at a random length) plus a short random tail.
fn prompt() -> impl Strategy<Value = Vec<TokenId>> {
    (0..3u32, 0..20usize, tokens(6)).prop_map(|(stem, len, tail)| {
        let mut p: Vec<TokenId> = (0..len as u32).map(|i| 10 + stem * 100 + i).collect();
        p.extend(tail);
        p
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NUM_IDS, 0..2u8, prompt()).prop_map(|(seq, tenant, prompt)| Op::Allocate { seq, tenant, prompt }),
        5 => (0..NUM_IDS, prop_oneof![3 => tokens(2), 1 => tokens(9)]).prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        2 => (0..NUM_IDS, 0..NUM_IDS).prop_map(|(parent, child)| Op::Fork { parent, child }),
        2 => (0..NUM_IDS, 0..6u32).prop_map(|(seq, back)| Op::Truncate { seq, back }),
        2 => (0..NUM_IDS).prop_map(|seq| Op::Free { seq }),
        1 => (0..NUM_IDS, 0..2u8, prompt()).prop_map(|(seq, tenant, prompt)| Op::Abort { seq, tenant, prompt }),
        1 => Just(Op::Reset),
        1 => (0..NUM_IDS).prop_map(|seq| Op::SwapOut { seq }),
        1 => (0..NUM_IDS).prop_map(|seq| Op::SwapIn { seq }),
        2 => (0..NUM_IDS, 0..8usize).prop_map(|(seq, pick)| Op::Revisit { seq, pick }),
    ]
}

fn salt(tenant: u8) -> PrefixKeys {
    if tenant == 0 {
        PrefixKeys::default()
    } else {
        PrefixKeys::salted(format!("t{tenant}"))
    }
}

/// The content of a value in one group's memory (groups hold different layers).
fn tagged(value: u64, group: usize) -> u64 {
    value.rotate_left(3) ^ group as u64
}

fn groups() -> impl Strategy<Value = Vec<AttentionKind>> {
    let swa = (1u32..=9).prop_map(|window| AttentionKind::SlidingWindow { window });
    let local = (2u32..=8).prop_map(|chunk| AttentionKind::ChunkedLocal { chunk });
    prop_oneof![
        2 => Just(vec![AttentionKind::Full]),
        2 => swa.clone().prop_map(|w| vec![AttentionKind::Full, w]),
        1 => local.prop_map(|c| vec![AttentionKind::Full, c]),
        1 => swa.prop_map(|w| vec![w]),
    ]
}

/// The first position a query at `pos` reads, from the definitions.
fn first_read(kind: AttentionKind, pos: u64) -> u64 {
    match kind {
        AttentionKind::SlidingWindow { window } => pos.saturating_sub(window as u64 - 1),
        AttentionKind::ChunkedLocal { chunk } => pos / chunk as u64 * chunk as u64,
        _ => 0,
    }
}

/// The "KV" of position `p`: a function of the whole prefix `tokens[..=p]`.
fn kv_values(tokens: &[TokenId]) -> Vec<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    tokens
        .iter()
        .map(|&t| {
            h = (h ^ (t as u64 + 1)).wrapping_mul(0x100_0000_01b3).rotate_left(17);
            h
        })
        .collect()
}

struct Harness {
    kv: KvCacheManager,
    groups: usize,
    bs: usize,
    max_model_len: usize,
    /// The model: each live sequence's tenant and tokens.
    seqs: BTreeMap<u64, (u8, Vec<TokenId>)>,
    /// Every prefix (in whole blocks) each tenant ever stored, as token vectors.
    stored: HashMap<(u8, Vec<TokenId>), ()>,
    /// Sequences swapped out (in `seqs` too).
    swapped: BTreeSet<u64>,
    /// Prompts allocated so far (the last 8), with their tenant.
    prompts: Vec<(u8, Vec<TokenId>)>,
    device: Vec<Option<u64>>,
    /// The host tier's memory.
    host: Vec<Option<u64>>,
    ops: BlockOps,
    slots: Vec<u64>,
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

impl Harness {
    fn new(
        num_blocks: u32,
        block_size: u32,
        max_model_len: u32,
        groups: Vec<AttentionKind>,
        (num_host_blocks, offload, eviction): (u32, PrefixOffload, Eviction),
        events: bool,
    ) -> Self {
        let kv = KvCacheManager::new(KvCacheConfig {
            num_blocks,
            block_size,
            max_model_len,
            watermark: 0.0,
            enable_prefix_caching: true,
            enable_kv_events: events,
            groups,
            num_host_blocks,
            prefix_offload: if num_host_blocks == 0 {
                PrefixOffload::Off
            } else {
                offload
            },
            eviction,
            ..Default::default()
        })
        .unwrap();
        Harness {
            groups: kv.num_groups(),
            kv,
            bs: block_size as usize,
            max_model_len: max_model_len as usize,
            seqs: BTreeMap::new(),
            stored: HashMap::new(),
            swapped: BTreeSet::new(),
            prompts: Vec::new(),
            device: vec![None; (num_blocks * block_size) as usize],
            host: vec![None; (num_host_blocks * block_size) as usize],
            ops: BlockOps::default(),
            slots: Vec::new(),
        }
    }

    fn snapshot(&self) -> String {
        let tables: Vec<_> = self
            .seqs
            .keys()
            .flat_map(|&s| (0..self.groups).map(move |g| (s, g)))
            .map(|(s, g)| self.kv.group(g).unwrap().table(SeqId(s)).cloned())
            .collect();
        let free: Vec<_> = self.kv.pool().free_blocks().collect();
        let host_free: Option<Vec<_>> = self.kv.host_pool().map(|p| p.free_blocks().collect());
        format!(
            "{tables:?} {free:?} {host_free:?} {} {} {:?}",
            self.kv.num_cached_blocks(),
            self.kv.num_host_cached_blocks(),
            self.kv.usage()
        )
    }

    /// Remembers the full-block prefixes a tenant stored (upper bound for hits).
    fn note_stored(&mut self, tenant: u8, tokens: &[TokenId]) {
        for k in 1..=tokens.len() / self.bs {
            self.stored.insert((tenant, tokens[..k * self.bs].to_vec()), ());
        }
    }

    /// Hands the step over and runs its block operations in the engine's
    /// order: swap-outs (device → host), swap-ins (host → device), copies.
    fn run_ops(&mut self) {
        self.kv.drain_ops(&mut self.ops);
        let bs = self.bs;
        let copy = |from: &[Option<u64>], to: &mut [Option<u64>], src: usize, dst: usize, n: usize| {
            to[dst * bs..dst * bs + n].copy_from_slice(&from[src * bs..src * bs + n]);
        };
        for c in &self.ops.swap_out {
            copy(
                &self.device,
                &mut self.host,
                c.src.index(),
                c.dst.index(),
                c.num_slots as usize,
            );
        }
        for c in &self.ops.swap_in {
            copy(
                &self.host,
                &mut self.device,
                c.src.index(),
                c.dst.index(),
                c.num_slots as usize,
            );
        }
        for c in &self.ops.copies {
            let (src, dst) = (c.src.index() * bs, c.dst.index() * bs);
            for i in 0..c.num_slots as usize {
                self.device[dst + i] = self.device[src + i];
            }
        }
    }

    /// Runs the drained operations, then writes the values of positions `from..` of `seq`.
    fn execute(&mut self, seq: u64, from: usize) -> Result<(), TestCaseError> {
        self.run_ops();
        let tokens = &self.seqs[&seq].1;
        let values = kv_values(tokens);
        for g in 0..self.groups {
            self.slots.clear();
            self.kv
                .group(g)
                .unwrap()
                .slots_into(SeqId(seq), from as u64..tokens.len() as u64, &mut self.slots)
                .map_err(fail)?;
            for (&slot, &v) in self.slots.iter().zip(&values[from..]) {
                self.device[slot as usize] = Some(tagged(v, g));
            }
        }
        Ok(())
    }

    fn check_content(&self) -> Result<(), TestCaseError> {
        for (&seq, (_, tokens)) in &self.seqs {
            if self.swapped.contains(&seq) {
                continue; // checked once swapped back in
            }
            let values = kv_values(tokens);
            for g in 0..self.groups {
                let view = self.kv.group(g).unwrap();
                let from = view.table(SeqId(seq)).map_err(fail)?.num_released() as usize * self.bs;
                for (p, &v) in values.iter().enumerate().skip(from) {
                    let slot = view.slot(SeqId(seq), p as u64).map_err(fail)?;
                    prop_assert_eq!(
                        self.device[slot as usize],
                        Some(tagged(v, g)),
                        "seq {} group {} position {} reads the wrong KV",
                        seq,
                        g,
                        p
                    );
                }
            }
        }
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        if let Op::Revisit { seq, pick } = *op {
            let Some((tenant, prompt)) = self.prompts.get(pick % self.prompts.len().max(1)).cloned() else {
                return Ok(());
            };
            // A new request under this id: the old one finished.
            if self.seqs.contains_key(&seq) {
                self.run(&Op::Free { seq })?;
            }
            return self.run(&Op::Allocate { seq, tenant, prompt });
        }
        if let Op::Allocate { tenant, prompt, .. } = op {
            if self.prompts.len() == 8 {
                self.prompts.remove(0);
            }
            self.prompts.push((*tenant, prompt.clone()));
        }
        let before = self.snapshot();
        let refused = match op.clone() {
            Op::Allocate { seq, tenant, prompt } => {
                let keys = salt(tenant);
                let admission = self.kv.check_admission(&prompt, &keys, 0);
                let r = self.kv.allocate_with(SeqId(seq), &prompt, &keys);
                let expect_err = if self.seqs.contains_key(&seq) {
                    Some(KvError::DuplicateSequence { seq: SeqId(seq) })
                } else if prompt.is_empty() {
                    Some(KvError::EmptyPrompt { seq: SeqId(seq) })
                } else if prompt.len() > self.max_model_len {
                    Some(KvError::ExceedsMaxModelLen {
                        seq: SeqId(seq),
                        tokens: prompt.len() as u64,
                        max_model_len: self.max_model_len as u32,
                    })
                } else {
                    None
                };
                match (&r, expect_err) {
                    (Err(e), Some(x)) => prop_assert_eq!(e, &x),
                    (r, Some(x)) => prop_assert!(false, "expected {:?}, got {:?}", x, r),
                    (Ok(a), None) => {
                        let c = a.cached_tokens as usize;
                        // "Never" is decided from lengths alone (a cached prefix
                        // may be evicted before the request starts): with a
                        // window, a whole-prompt prefill that overflows the pool
                        // is never runnable, though a hit (a shorter prefill)
                        // lets this one allocation through.
                        let hit_beyond_never = c > 0
                            && self.kv.groups().iter().any(|k| *k != AttentionKind::Full)
                            && matches!(admission, Admission::Never(_));
                        prop_assert!(
                            admission == Admission::Now || hit_beyond_never,
                            "allocated but admission said {:?}",
                            admission
                        );
                        prop_assert!(
                            c % self.bs == 0 && c < prompt.len(),
                            "cached {} of {}",
                            c,
                            prompt.len()
                        );
                        if c > 0 {
                            prop_assert!(
                                self.stored.contains_key(&(tenant, prompt[..c].to_vec())),
                                "hit of {} tokens this tenant never stored",
                                c
                            );
                        }
                        self.seqs.insert(seq, (tenant, prompt.clone()));
                        self.note_stored(tenant, &prompt);
                        self.execute(seq, c)?;
                    }
                    (Err(KvError::OutOfBlocks { .. }), None) => {
                        prop_assert_ne!(admission, Admission::Now, "admitted now but allocation ran out");
                    }
                    (Err(e), None) => prop_assert!(false, "unexpected {:?}", e),
                }
                r.is_err()
            }
            Op::Append { seq, tokens } => {
                // Odd sequences decode through the batched call over dense handles.
                let r = match self.kv.handle(SeqId(seq)) {
                    Ok(h) if tokens.len() == 1 && seq % 2 == 1 => {
                        let mut slots = vec![Vec::new(); self.kv.num_groups()];
                        self.kv
                            .append_decode_into(&[(h, tokens[0])], &mut slots)
                            .map_err(|e| e.error)
                    }
                    _ => self.kv.append(SeqId(seq), &tokens),
                };
                match self.seqs.get_mut(&seq) {
                    None => prop_assert_eq!(&r, &Err(KvError::UnknownSequence { seq: SeqId(seq) })),
                    Some(_) if self.swapped.contains(&seq) => {
                        prop_assert_eq!(&r, &Err(KvError::SequenceSwapped { seq: SeqId(seq) }))
                    }
                    Some((tenant, mine)) => {
                        let new_len = mine.len() + tokens.len();
                        if new_len > self.max_model_len {
                            prop_assert!(matches!(r, Err(KvError::ExceedsMaxModelLen { .. })), "{:?}", r);
                        } else if r.is_ok() {
                            let from = mine.len();
                            mine.extend_from_slice(&tokens);
                            let (tenant, all) = (*tenant, mine.clone());
                            self.note_stored(tenant, &all);
                            self.execute(seq, from)?;
                        } else {
                            prop_assert!(matches!(r, Err(KvError::OutOfBlocks { .. })), "{:?}", r);
                        }
                    }
                }
                r.is_err()
            }
            Op::Fork { parent, child } => {
                let r = self.kv.fork(SeqId(parent), SeqId(child));
                if self.seqs.contains_key(&child) {
                    prop_assert_eq!(&r, &Err(KvError::DuplicateSequence { seq: SeqId(child) }));
                } else if self.swapped.contains(&parent) {
                    prop_assert_eq!(&r, &Err(KvError::SequenceSwapped { seq: SeqId(parent) }));
                } else if let Some(p) = self.seqs.get(&parent).cloned() {
                    prop_assert_eq!(&r, &Ok(()));
                    self.seqs.insert(child, p);
                } else {
                    prop_assert_eq!(&r, &Err(KvError::UnknownSequence { seq: SeqId(parent) }));
                }
                r.is_err()
            }
            Op::Truncate { seq, back } if self.swapped.contains(&seq) => {
                let len = self.seqs[&seq].1.len();
                let r = self
                    .kv
                    .truncate(SeqId(seq), len.saturating_sub(back as usize) as u64);
                prop_assert_eq!(&r, &Err(KvError::SequenceSwapped { seq: SeqId(seq) }));
                true
            }
            Op::Truncate { seq, back } => {
                let len = self.seqs.get(&seq).map_or(0, |s| s.1.len());
                let to = len.saturating_sub(back as usize);
                // The next token (at `to`) must not read a block a window released.
                let refused = (0..self.groups).find_map(|g| {
                    let view = self.kv.group(g).unwrap();
                    let released = view.table(SeqId(seq)).ok()?.num_released() as u64 * self.bs as u64;
                    let min_len = (0..=len as u64).find(|&l| first_read(view.kind(), l) >= released)?;
                    (released > 0 && (to as u64) < min_len).then_some(KvError::TruncateIntoReleasedWindow {
                        seq: SeqId(seq),
                        group: g as u32,
                        new_len: to as u64,
                        min_len,
                    })
                });
                let r = self.kv.truncate(SeqId(seq), to as u64);
                match (self.seqs.get_mut(&seq), refused) {
                    (None, _) => prop_assert_eq!(&r, &Err(KvError::UnknownSequence { seq: SeqId(seq) })),
                    (Some(_), Some(e)) => prop_assert_eq!(&r, &Err(e)),
                    (Some((_, mine)), None) => {
                        prop_assert_eq!(&r, &Ok(()));
                        mine.truncate(to);
                    }
                }
                r.is_err()
            }
            Op::Free { seq } => {
                let r = self.kv.free(SeqId(seq));
                prop_assert_eq!(r.is_ok(), self.seqs.remove(&seq).is_some());
                self.swapped.remove(&seq);
                r.is_err()
            }
            Op::SwapOut { seq } => {
                let r = self.kv.swap_out(SeqId(seq));
                match &r {
                    _ if !self.seqs.contains_key(&seq) => {
                        prop_assert_eq!(&r, &Err(KvError::UnknownSequence { seq: SeqId(seq) }))
                    }
                    _ if self.swapped.contains(&seq) => {
                        prop_assert_eq!(&r, &Err(KvError::SequenceSwapped { seq: SeqId(seq) }))
                    }
                    _ if self.host.is_empty() => {
                        prop_assert_eq!(&r, &Err(KvError::NoHostTier { seq: SeqId(seq) }))
                    }
                    Ok(()) => {
                        self.swapped.insert(seq);
                        self.run_ops();
                    }
                    Err(KvError::HostOutOfBlocks { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
                r.is_err()
            }
            Op::SwapIn { seq } => {
                let r = self.kv.swap_in(SeqId(seq));
                match &r {
                    _ if !self.seqs.contains_key(&seq) => {
                        prop_assert_eq!(&r, &Err(KvError::UnknownSequence { seq: SeqId(seq) }))
                    }
                    _ if !self.swapped.contains(&seq) => {
                        prop_assert_eq!(&r, &Err(KvError::NotSwapped { seq: SeqId(seq) }))
                    }
                    Ok(()) => {
                        self.swapped.remove(&seq);
                        self.run_ops();
                    }
                    Err(KvError::OutOfBlocks { .. }) => {}
                    Err(e) => prop_assert!(false, "unexpected {:?}", e),
                }
                r.is_err()
            }
            Op::Abort { seq, tenant, prompt } => {
                let r = self.kv.allocate_with(SeqId(seq), &prompt, &salt(tenant));
                if r.is_ok() {
                    prop_assert!(!self.seqs.contains_key(&seq));
                    prop_assert_eq!(self.kv.free(SeqId(seq)), Ok(()));
                    // Not noted as stored: nobody computed it.
                }
                r.is_err()
            }
            Op::Revisit { .. } => unreachable!("handled above"),
            Op::Reset => {
                let cached_free = self
                    .kv
                    .pool()
                    .free_blocks()
                    .filter(|&b| self.kv.cached_block_hash(b).is_some())
                    .count();
                prop_assert_eq!(self.kv.reset_prefix_cache(), cached_free);
                prop_assert!(self
                    .kv
                    .pool()
                    .free_blocks()
                    .all(|b| self.kv.cached_block_hash(b).is_none()));
                // Blocks in use keep their hash, even one a sequence has since
                // truncated into (its content is still final), so `stored`
                // stays an upper bound as it is.
                false
            }
        };
        if refused {
            prop_assert_eq!(before, self.snapshot(), "a refused {:?} changed the state", op);
        }
        self.kv.check_invariants().map_err(fail)?;
        self.check_content()
    }
}

fn host_tier() -> impl Strategy<Value = (u32, PrefixOffload, Eviction)> {
    (
        prop_oneof![1 => Just(0u32), 1 => 1..4u32, 3 => 4..24u32],
        prop_oneof![
            Just(PrefixOffload::OnEvict),
            Just(PrefixOffload::OnFree),
            Just(PrefixOffload::Off)
        ],
        eviction(),
    )
}

fn eviction() -> impl Strategy<Value = Eviction> {
    prop_oneof![2 => Just(Eviction::Lru), 1 => Just(Eviction::SegmentedLru), 1 => Just(Eviction::Exclusive)]
}

/// Operations for the tiered cache: requests come and go (free, revisit an
/// earlier prompt) more than they grow, so evicted prefixes are asked for again.
fn tiered_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..NUM_IDS, 0..2u8, prompt()).prop_map(|(seq, tenant, prompt)| Op::Allocate { seq, tenant, prompt }),
        2 => (0..NUM_IDS, prop_oneof![3 => tokens(2), 1 => tokens(9)]).prop_map(|(seq, tokens)| Op::Append { seq, tokens }),
        1 => (0..NUM_IDS, 0..NUM_IDS).prop_map(|(parent, child)| Op::Fork { parent, child }),
        1 => (0..NUM_IDS, 0..6u32).prop_map(|(seq, back)| Op::Truncate { seq, back }),
        3 => (0..NUM_IDS).prop_map(|seq| Op::Free { seq }),
        1 => (0..NUM_IDS, 0..2u8, prompt()).prop_map(|(seq, tenant, prompt)| Op::Abort { seq, tenant, prompt }),
        1 => (0..NUM_IDS).prop_map(|seq| Op::SwapOut { seq }),
        1 => (0..NUM_IDS).prop_map(|seq| Op::SwapIn { seq }),
        5 => (0..NUM_IDS, 0..8usize).prop_map(|(seq, pick)| Op::Revisit { seq, pick }),
    ]
}

/// What the cases of one property exercised, summed.
#[derive(Default)]
struct Coverage {
    stats: KvStats,
    swaps_beside_offloads: u64,
}

/// Runs `cases` cases of the state machine over `strategy`'s pools and
/// operations; returns what they exercised.
fn run_cases(
    cases: u32,
    strategy: impl Strategy<
        Value = (
            u32,
            u32,
            u32,
            Vec<AttentionKind>,
            (u32, PrefixOffload, Eviction),
            Vec<Op>,
            bool,
        ),
    >,
) -> Coverage {
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let total = std::cell::RefCell::new(Coverage::default());
    runner
        .run(
            &strategy,
            |(num_blocks, block_size, max_model_len, groups, host, ops, events)| {
                let mut h = Harness::new(num_blocks, block_size, max_model_len, groups, host, events);
                let mut swaps_beside_offloads = 0;
                for op in &ops {
                    let offloaded = h.kv.num_host_cached_blocks();
                    h.run(op)?;
                    swaps_beside_offloads += (matches!(op, Op::SwapOut { .. }) && offloaded > 0) as u64;
                }
                let live: Vec<u64> = h.seqs.keys().copied().collect();
                for s in live {
                    h.kv.free(SeqId(s)).map_err(fail)?;
                }
                h.run_ops();
                prop_assert_eq!(h.kv.num_free_blocks(), num_blocks);
                prop_assert_eq!(h.kv.num_free_host_blocks(), h.kv.num_host_blocks());
                h.kv.reset_prefix_cache();
                prop_assert_eq!(h.kv.num_cached_blocks(), 0);
                prop_assert_eq!(h.kv.num_host_cached_blocks(), 0);
                h.kv.check_invariants().map_err(fail)?;
                let s = h.kv.stats();
                let mut t = total.borrow_mut();
                t.stats.offload_copies += s.offload_copies;
                t.stats.reload_copies += s.reload_copies;
                t.stats.host_evictions += s.host_evictions;
                t.stats.prefix_host_hit_tokens += s.prefix_host_hit_tokens;
                t.stats.swap_ins += s.swap_ins;
                t.swaps_beside_offloads += swaps_beside_offloads;
                Ok(())
            },
        )
        .unwrap();
    total.into_inner()
}

#[test]
fn prefix_caching_keeps_every_sequence_reading_its_own_prefix() {
    run_cases(
        cases(),
        (
            1..24u32,
            prop_oneof![Just(1u32), Just(2), Just(4)],
            8..40u32,
            groups(),
            host_tier(),
            prop::collection::vec(op(), 30..70),
            any::<bool>(),
        ),
    );
}

/// The tiered cache under churn: blocks offloaded, reloaded (reading back
/// what was written before the offload), evicted from a host tier that swap
/// contends for. The run must exercise all of it.
#[test]
fn offloaded_blocks_read_back_what_was_written_before_the_offload() {
    let host = (
        prop_oneof![1 => 1..4u32, 3 => 4..32u32],
        prop_oneof![Just(PrefixOffload::OnEvict), Just(PrefixOffload::OnFree)],
        eviction(),
    );
    let t = run_cases(
        cases() / 2,
        (
            2..16u32,
            prop_oneof![Just(1u32), Just(2), Just(4)],
            8..40u32,
            groups(),
            host,
            prop::collection::vec(tiered_op(), 30..70),
            any::<bool>(),
        ),
    );
    let s = t.stats;
    assert!(
        s.offload_copies > 0 && s.reload_copies > 0 && s.host_evictions > 0 && s.prefix_host_hit_tokens > 0,
        "the cases did not exercise the host tier: {s:?}"
    );
    eprintln!(
        "offloaded {} blocks, reloaded {}, evicted {} from the host, {} swap-outs beside offloaded blocks",
        s.offload_copies, s.reload_copies, s.host_evictions, t.swaps_beside_offloads
    );
    assert!(t.swaps_beside_offloads > 0, "no swap-out met offloaded blocks");
}
