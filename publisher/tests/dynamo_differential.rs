//! Differential test against NVIDIA Dynamo's KV router (`dynamo-kv-router`
//! 1.6.1): seeded random workloads run on a `KvCacheManager`; after every
//! step its KV events are encoded in vLLM's wire format, decoded by Dynamo's
//! decoder (`decode_event_batch`), normalized (`ZmqEventNormalizer`) and
//! applied to Dynamo's radix tree, as Dynamo's ZMQ listener does. Checked
//! after every step:
//!
//! - no event is filtered or rejected (`ParentBlockNotFound`, `BlockNotFound`, ...);
//! - for every probe prompt (each live or swapped sequence's tokens, each
//!   shared stem, recent prompts, under each tenant's keys), Dynamo's matched
//!   block count equals the blocks of the prompt pagedkv finds cached;
//! - the manager's invariants hold.
//!
//! Workloads: allocate (shared stems with random tails; a plain tenant, two
//! salted tenants and a LoRA adapter), append (tokens from a tiny alphabet, so
//! forks and repeated prompts fill blocks with content cached elsewhere),
//! fork, free, truncate, swap out and in (with a host tier), reset the prefix
//! cache, all in a small pool (eviction pressure).
//!
//! Hybrid models too (full attention beside sliding-window and chunked local
//! groups, each group's events tagged with its kind): Dynamo must apply the
//! full-attention group's events and filter out the others (it indexes main
//! attention only), and its matches are compared with what pagedkv caches in
//! the full-attention group.
//!
//! The tiered prefix cache too (prefix offload on evict or on free): the
//! host tier's events (medium "CPU") go to Dynamo's lower-tier indexer (one
//! per tier, as its `LocalKvIndexer` routes them), and for every probe the
//! blocks Dynamo finds continuing in the host tier after its device match
//! must equal the blocks pagedkv finds there (`cached_prefix_tiers_in_group`).
//! These workloads use the plain and LoRA tenants only: Dynamo 1.6.1's
//! normalizer tracks a salted chain's namespace per block hash across tiers,
//! so a host removal of a hash the device still caches loses the namespace
//! of the device's later children (a Dynamo limitation, not an event error).
//!
//! Dynamo keys salted blocks only under salts tagged `dynamo-cache-salt:`
//! (its vLLM frontend tags them); the salted tenants here use such salts.
//! Default: 6 seeds × 2,500 steps (one per pool shape); `PAGEDKV_DIFF_SEEDS`
//! and `PAGEDKV_DIFF_STEPS` raise them.

use std::collections::{BTreeMap, VecDeque};

use dynamo_kv_router::indexer::{LowerTierContinuation, LowerTierIndexer, ThreadPoolIndexer};
use dynamo_kv_router::protocols::{
    compute_block_hash_for_seq, BlockHashOptions, ExternalSequenceBlockHash, KvCacheEventData,
    WorkerWithDpRank,
};
use dynamo_kv_router::zmq_wire::{
    decode_event_batch, ZmqEventFilterReason, ZmqEventNormalizer, DYNAMO_CACHE_SALT_PREFIX,
};
use dynamo_kv_router::RadixTree;
use pagedkv::kv_events::{external_block_hash, EventSource, KvEventEncoder};
use pagedkv::sim::rng::SplitMix64;
use pagedkv::{
    hash_block, AttentionKind, BlockOps, CacheTier, Eviction, HashAlgorithm, KvCacheConfig, KvCacheManager,
    KvEvent, PrefixKeys, PrefixOffload, SeqId, TokenId,
};

const WORKER: u64 = 1;
const LORA_ID: u64 = 7;
const LORA_NAME: &str = "sql-lora";

/// The tenants: plain, two salted (Dynamo-tagged salts), one LoRA adapter.
const TENANTS: usize = 4;

fn tenant_keys(t: usize) -> PrefixKeys {
    match t {
        0 => PrefixKeys::default(),
        1 | 2 => PrefixKeys::salted(format!("{DYNAMO_CACHE_SALT_PREFIX}tenant-{t}")),
        _ => PrefixKeys {
            adapter: Some(LORA_ID),
            ..Default::default()
        },
    }
}

/// Dynamo's view: its decoder, normalizer, radix tree (device tier) and
/// lower-tier indexer (host tier) for one worker.
struct Router {
    tree: RadixTree,
    host: ThreadPoolIndexer<LowerTierIndexer>,
    runtime: tokio::runtime::Runtime,
    normalizer: ZmqEventNormalizer,
    block_size: u32,
    next_seq: u64,
    host_events: u64,
}

impl Router {
    fn new(block_size: u32) -> Self {
        Router {
            tree: RadixTree::new(),
            host: ThreadPoolIndexer::new(LowerTierIndexer::new(), 1, block_size),
            runtime: tokio::runtime::Builder::new_current_thread().build().unwrap(),
            normalizer: ZmqEventNormalizer::new(block_size),
            block_size,
            next_seq: 0,
            host_events: 0,
        }
    }

    /// Applies one published batch as Dynamo's listener does; `groups` is
    /// the KV cache group of each event. Events of group 0 (full attention)
    /// must be applied; those of a sliding-window or chunked local group must
    /// be filtered out (Dynamo indexes main attention only); anything else is
    /// an error.
    fn apply(&mut self, payload: &[u8], groups: &[u32]) -> Result<(), String> {
        let batch =
            decode_event_batch(payload).map_err(|e| format!("Dynamo cannot decode the batch: {e}"))?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let worker = WorkerWithDpRank::new(WORKER, batch.data_parallel_rank.unwrap_or(0) as u32);
        if batch.events.len() != groups.len() {
            return Err(format!(
                "{} events decoded, {} sent",
                batch.events.len(),
                groups.len()
            ));
        }
        for (raw, &group) in batch.events.into_iter().zip(groups) {
            let shown = format!("{raw:?}");
            let raw = match self.normalizer.preprocess_with_reason(raw, worker) {
                Ok(raw) if group == 0 => raw,
                Ok(_) => return Err(format!("Dynamo kept an event of window group {group}: {shown}")),
                Err(
                    ZmqEventFilterReason::NonMainAttentionKind
                    | ZmqEventFilterReason::NonMainAttentionGroup
                    | ZmqEventFilterReason::UnlearnedGroupIdx,
                ) if group != 0 => continue,
                Err(r) => return Err(format!("Dynamo filtered an event ({r:?}): {shown}")),
            };
            let placement = self
                .normalizer
                .normalize_preprocessed(raw, seq, worker)
                .ok_or_else(|| format!("Dynamo dropped an event: {shown}"))?;
            let event = placement
                .into_router_event()
                .ok_or_else(|| format!("not a worker event: {shown}"))?;
            // As Dynamo's LocalKvIndexer routes events: the device tier to the
            // radix tree, a lower tier to its own indexer, a clear to both.
            let cleared = matches!(event.event.data, KvCacheEventData::Cleared);
            if !event.storage_tier.is_gpu() || cleared {
                self.host_events += !cleared as u64;
                self.runtime
                    .block_on(self.host.apply_event_and_wait(event.clone()))
                    .map_err(|e| format!("Dynamo's lower tier rejected an event ({e:?}): {shown}"))?;
            }
            if event.storage_tier.is_gpu() {
                self.tree
                    .apply_event(event)
                    .map_err(|e| format!("Dynamo rejected an event ({e:?}): {shown}"))?;
            }
        }
        Ok(())
    }

    /// Blocks of `tokens` Dynamo's lower-tier (host) index finds continuing
    /// after the first `device` blocks (the device match, whose last block's
    /// hash is `last`).
    fn matched_on_host(&self, tokens: &[TokenId], tenant: usize, device: u64, last: Option<u64>) -> u64 {
        let hashes = self.local_hashes(tokens, tenant);
        let worker = WorkerWithDpRank::new(WORKER, 0);
        let start = match last {
            Some(h) => LowerTierContinuation::new(device as usize, ExternalSequenceBlockHash(h)),
            None => LowerTierContinuation::from_root(0),
        };
        let continuations = std::collections::HashMap::from([(worker, start)]);
        let hits = self.host.backend().query_contiguous_hits(&hashes, &continuations);
        hits.get(&worker).copied().unwrap_or(0) as u64
    }

    fn local_hashes(
        &self,
        tokens: &[TokenId],
        tenant: usize,
    ) -> Vec<dynamo_kv_router::protocols::LocalBlockHash> {
        let salt = tenant_keys(tenant).cache_salt;
        let options = BlockHashOptions {
            lora_name: (tenant == 3).then_some(LORA_NAME),
            cache_namespace: salt
                .as_deref()
                .and_then(|s| s.strip_prefix(DYNAMO_CACHE_SALT_PREFIX)),
            ..Default::default()
        };
        compute_block_hash_for_seq(tokens, self.block_size, options)
    }

    /// Leading blocks of `tokens` Dynamo finds on the worker.
    fn matched(&self, tokens: &[TokenId], tenant: usize) -> u64 {
        let salt = tenant_keys(tenant).cache_salt;
        let options = BlockHashOptions {
            lora_name: (tenant == 3).then_some(LORA_NAME),
            cache_namespace: salt
                .as_deref()
                .and_then(|s| s.strip_prefix(DYNAMO_CACHE_SALT_PREFIX)),
            ..Default::default()
        };
        let hashes = compute_block_hash_for_seq(tokens, self.block_size, options);
        let scores = self.tree.find_matches(hashes, false);
        scores
            .scores
            .get(&WorkerWithDpRank::new(WORKER, 0))
            .copied()
            .unwrap_or(0) as u64
    }
}

/// A manager, its events on the wire, and Dynamo's view of them.
struct Harness {
    kv: KvCacheManager,
    encoder: KvEventEncoder,
    router: Router,
    events: Vec<KvEvent>,
    /// The KV cache group of each event of the step.
    event_groups: Vec<u32>,
    ops: BlockOps,
    bs: u64,
    /// Each sequence's tenant and tokens (live or swapped out).
    seqs: BTreeMap<u64, (usize, Vec<TokenId>, bool)>,
    recent: VecDeque<(usize, Vec<TokenId>)>,
    /// The shared prompt stems (probed under every tenant's keys).
    stems: Vec<Vec<TokenId>>,
    next_id: u64,
    steps: u64,
    /// What the workload exercised: probes both sides matched at least one
    /// block of, most duplicates at once, events of each kind applied.
    matched_probes: u64,
    max_duplicates: usize,
    stored: u64,
    removed: u64,
    resets: u64,
    host_matched_probes: u64,
}

impl Harness {
    fn new(
        num_blocks: u32,
        block_size: u32,
        num_host_blocks: u32,
        groups: &[AttentionKind],
        (prefix_offload, eviction): (PrefixOffload, Eviction),
    ) -> Self {
        let kv = KvCacheManager::new(KvCacheConfig {
            num_blocks,
            block_size,
            num_host_blocks,
            prefix_offload,
            eviction,
            max_model_len: 4096,
            watermark: 0.0,
            enable_prefix_caching: true,
            enable_kv_events: true,
            groups: groups.to_vec(),
            ..Default::default()
        })
        .unwrap();
        let mut source = EventSource::for_groups(groups);
        source.lora_names.insert(LORA_ID, LORA_NAME.into());
        Harness {
            kv,
            encoder: KvEventEncoder::new(source).unwrap(),
            router: Router::new(block_size),
            events: Vec::new(),
            event_groups: Vec::new(),
            ops: BlockOps::default(),
            bs: block_size as u64,
            seqs: BTreeMap::new(),
            recent: VecDeque::new(),
            stems: Vec::new(),
            next_id: 0,
            steps: 0,
            matched_probes: 0,
            max_duplicates: 0,
            stored: 0,
            removed: 0,
            resets: 0,
            host_matched_probes: 0,
        }
    }

    /// Ends a step: runs the block ops, publishes the events to Dynamo, and compares.
    fn end_step(&mut self, what: &str) {
        self.steps += 1;
        self.kv.drain_ops(&mut self.ops);
        self.kv
            .check_invariants()
            .unwrap_or_else(|e| panic!("step {} ({what}): {e}", self.steps));
        self.kv.drain_events(&mut self.events);
        if std::env::var_os("PAGEDKV_DIFF_TRACE").is_some() {
            eprintln!("step {} {what}: {:?}", self.steps, self.events);
        }
        for e in &self.events {
            match e {
                KvEvent::BlockStored { .. } => self.stored += 1,
                KvEvent::BlockRemoved { .. } => self.removed += 1,
                _ => self.resets += 1,
            }
        }
        self.max_duplicates = self.max_duplicates.max(self.kv.num_duplicate_blocks());
        if !self.events.is_empty() {
            self.event_groups.clear();
            self.event_groups.extend(self.events.iter().map(|e| match e {
                KvEvent::BlockStored { group, .. } | KvEvent::BlockRemoved { group, .. } => *group,
                _ => 0,
            }));
            debug_assert!(self.events.iter().all(|e| !matches!(
                e,
                KvEvent::BlockStored { tier: CacheTier::Host, token_ids, .. } if token_ids.is_empty()
            )));
            let payload = self.encoder.encode(self.steps as f64, &self.events).to_vec();
            if let Err(e) = self.router.apply(&payload, &self.event_groups) {
                panic!("step {} ({what}): {e}\nevents: {:?}", self.steps, self.events);
            }
        }
        self.compare(what);
    }

    /// Blocks of `tokens` pagedkv finds cached in its full-attention group,
    /// the one a router indexes (the whole chain: one more token is appended
    /// so that the "leave one token to compute" cap does not bite). With one
    /// group this is what `cached_prefix_len` finds.
    fn cached_blocks(&self, tokens: &[TokenId], tenant: usize) -> u64 {
        self.cached_blocks_by_tier(tokens, tenant).0
    }

    /// `cached_blocks`, and the blocks continuing in the host tier after them.
    fn cached_blocks_by_tier(&self, tokens: &[TokenId], tenant: usize) -> (u64, u64) {
        let mut probe = tokens.to_vec();
        probe.push(u32::MAX);
        let keys = tenant_keys(tenant);
        let in_group = self.kv.cached_prefix_len_in_group(&probe, &keys, 0);
        let (device, host) = self.kv.cached_prefix_tiers_in_group(&probe, &keys, 0);
        assert_eq!(device, in_group);
        if self.kv.num_groups() == 1 {
            // Both tiers count toward a hit (where a device block follows a host one, more).
            assert!(self.kv.cached_prefix_len(&probe, &keys) >= device + host);
        }
        (in_group / self.bs, host / self.bs)
    }

    /// The external hash of block `n - 1` of `tokens` under the tenant's keys.
    fn last_hash(&self, tokens: &[TokenId], tenant: usize, n: u64) -> Option<u64> {
        let keys = tenant_keys(tenant);
        let bs = self.bs as usize;
        let mut parent = None;
        for i in 0..n as usize {
            let block = &tokens[i * bs..(i + 1) * bs];
            parent = Some(hash_block(
                HashAlgorithm::default(),
                parent,
                block,
                i as u32,
                self.bs as u32,
                &keys,
            ));
        }
        parent.map(external_block_hash)
    }

    fn compare(&mut self, what: &str) {
        let stems = self.stems.iter().flat_map(|s| (0..TENANTS).map(move |t| (t, s)));
        let probes = self
            .seqs
            .values()
            .map(|(t, toks, _)| (*t, toks))
            .chain(self.recent.iter().map(|(t, toks)| (*t, toks)))
            .chain(stems);
        let mut matched = 0;
        let mut host_matched = 0;
        let offload = self.kv.config().prefix_offload != PrefixOffload::Off;
        for (tenant, tokens) in probes {
            let (ours, ours_host) = self.cached_blocks_by_tier(tokens, tenant);
            let theirs = self.router.matched(tokens, tenant);
            assert_eq!(
                ours,
                theirs,
                "step {} ({what}): pagedkv finds {ours} blocks of a prompt of tenant {tenant} cached, Dynamo {theirs}\n{tokens:?}",
                self.steps
            );
            matched += (ours > 0) as u64;
            if offload {
                let last = self.last_hash(tokens, tenant, ours);
                let theirs_host = self.router.matched_on_host(tokens, tenant, ours, last);
                assert_eq!(
                    ours_host,
                    theirs_host,
                    "step {} ({what}): after {ours} device blocks, pagedkv finds {ours_host} blocks of a prompt of tenant {tenant} in the host tier, Dynamo {theirs_host}\n{tokens:?}",
                    self.steps
                );
                host_matched += (ours_host > 0) as u64;
            }
        }
        self.matched_probes += matched;
        self.host_matched_probes += host_matched;
    }

    fn allocate(&mut self, tenant: usize, prompt: Vec<TokenId>) -> Option<u64> {
        let id = self.next_id;
        let r = self.kv.allocate_with(SeqId(id), &prompt, &tenant_keys(tenant));
        self.recent.push_back((tenant, prompt.clone()));
        if self.recent.len() > 12 {
            self.recent.pop_front();
        }
        let ok = r.is_ok();
        if ok {
            self.next_id += 1;
            self.seqs.insert(id, (tenant, prompt, true));
        }
        self.end_step("allocate");
        ok.then_some(id)
    }

    fn append(&mut self, id: u64, tokens: &[TokenId]) -> bool {
        let ok = self.kv.append(SeqId(id), tokens).is_ok();
        if ok {
            self.seqs.get_mut(&id).unwrap().1.extend_from_slice(tokens);
        }
        self.end_step("append");
        ok
    }

    fn free(&mut self, id: u64) {
        self.kv.free(SeqId(id)).unwrap();
        self.seqs.remove(&id);
        self.end_step("free");
    }

    fn fork(&mut self, parent: u64) {
        let id = self.next_id;
        if self.kv.fork(SeqId(parent), SeqId(id)).is_ok() {
            self.next_id += 1;
            let p = self.seqs[&parent].clone();
            self.seqs.insert(id, p);
        }
        self.end_step("fork");
    }

    fn truncate(&mut self, id: u64, back: usize) {
        let toks = &mut self.seqs.get_mut(&id).unwrap().1;
        let new_len = toks.len().saturating_sub(back).max(1);
        // A window group refuses to roll back into blocks it released.
        if self.kv.truncate(SeqId(id), new_len as u64).is_ok() {
            toks.truncate(new_len);
        }
        self.end_step("truncate");
    }

    fn swap_out(&mut self, id: u64) {
        if self.kv.swap_out(SeqId(id)).is_ok() {
            self.seqs.get_mut(&id).unwrap().2 = false;
        }
        self.end_step("swap out");
    }

    fn swap_in(&mut self, id: u64) {
        if self.kv.swap_in(SeqId(id)).is_ok() {
            self.seqs.get_mut(&id).unwrap().2 = true;
        }
        self.end_step("swap in");
    }

    fn reset(&mut self) {
        self.kv.reset_prefix_cache();
        self.end_step("reset_prefix_cache");
    }
}

fn steps() -> u64 {
    std::env::var("PAGEDKV_DIFF_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500)
}

fn pick(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// One seeded workload.
fn run(
    seed: u64,
    (num_blocks, block_size, num_host_blocks, groups, (offload, eviction)): Shape,
) -> Vec<(&'static str, u64)> {
    let mut rng = SplitMix64::new(seed);
    let mut h = Harness::new(
        num_blocks,
        block_size,
        num_host_blocks,
        groups,
        (offload, eviction),
    );
    let stems: Vec<Vec<TokenId>> = (0..3u32)
        .map(|s| (0..6 * block_size).map(|i| 1000 * (s + 1) + i).collect())
        .collect();
    h.stems = stems.clone();
    let tiny = |rng: &mut SplitMix64, n: usize| -> Vec<TokenId> {
        (0..n).map(|_| pick(rng, 3) as TokenId).collect()
    };
    while h.steps < steps() {
        let live: Vec<u64> = h.seqs.iter().filter(|(_, s)| s.2).map(|(&id, _)| id).collect();
        let swapped: Vec<u64> = h.seqs.iter().filter(|(_, s)| !s.2).map(|(&id, _)| id).collect();
        let any = |rng: &mut SplitMix64, v: &[u64]| v[pick(rng, v.len())];
        match pick(&mut rng, 20) {
            0..=4 => {
                let stem = &stems[pick(&mut rng, stems.len())];
                let mut prompt = stem[..pick(&mut rng, stem.len() + 1)].to_vec();
                // Sometimes a prompt repeats a whole earlier one (full hit,
                // recomputed last block), sometimes it extends a stem.
                if pick(&mut rng, 4) == 0 && !h.recent.is_empty() {
                    let (_, p) = &h.recent[pick(&mut rng, h.recent.len())];
                    prompt = p.clone();
                } else {
                    let n = pick(&mut rng, 2 * block_size as usize);
                    prompt.extend(tiny(&mut rng, n));
                }
                if prompt.is_empty() {
                    prompt.push(0);
                }
                // Salted tenants only without offload: Dynamo 1.6.1's
                // normalizer keeps each block hash's salt namespace whatever
                // the tier, so a host-tier removal of a hash the device still
                // caches makes it read the device's next salted child as
                // unsalted (and the reverse); plain and LoRA tenants are exact.
                let tenant = match offload {
                    PrefixOffload::Off => pick(&mut rng, TENANTS),
                    _ => [0, 3][pick(&mut rng, 2)],
                };
                if h.allocate(tenant, prompt).is_none() && !live.is_empty() {
                    // Out of blocks: preempt a running sequence, as a scheduler would.
                    let victim = any(&mut rng, &live);
                    h.free(victim);
                }
            }
            5..=10 if !live.is_empty() => {
                let id = any(&mut rng, &live);
                let n = if pick(&mut rng, 5) == 0 {
                    block_size as usize + 1
                } else {
                    1
                };
                let toks = tiny(&mut rng, n);
                if !h.append(id, &toks) {
                    h.free(id);
                }
            }
            11 | 12 if !live.is_empty() => {
                let id = any(&mut rng, &live);
                h.fork(id);
            }
            13 | 14 if !h.seqs.is_empty() => {
                let ids: Vec<u64> = h.seqs.keys().copied().collect();
                let id = any(&mut rng, &ids);
                h.free(id);
            }
            15 if !live.is_empty() => {
                let id = any(&mut rng, &live);
                let back = pick(&mut rng, 2 * block_size as usize);
                h.truncate(id, back);
            }
            16 if num_host_blocks > 0 && !live.is_empty() => {
                let id = any(&mut rng, &live);
                h.swap_out(id);
            }
            17 if !swapped.is_empty() => {
                let id = any(&mut rng, &swapped);
                h.swap_in(id);
            }
            18 if pick(&mut rng, 10) == 0 => h.reset(),
            _ => {}
        }
    }
    // What the workload went through (checked over all seeds by the caller).
    let st = *h.kv.stats();
    let mut exercised = vec![
        ("probes with a match", h.matched_probes),
        ("stores", h.stored),
        ("removals", h.removed),
        ("duplicates", h.max_duplicates as u64),
        ("evictions", st.prefix_evictions),
        ("prefix hits", st.prefix_hit_tokens),
        ("copy-on-write copies", st.cow_copies),
        ("forks", st.forks),
        ("swap-ins", st.swap_ins),
    ];
    if offload != PrefixOffload::Off {
        exercised.extend([
            ("host-tier events", h.router.host_events),
            ("probes matching in the host tier", h.host_matched_probes),
            ("reloads", st.reload_copies),
            ("host evictions", st.host_evictions),
        ]);
    }
    eprintln!("seed {seed}: {} steps: {exercised:?}", h.steps);
    // Wind down: everything freed, the cache reset; Dynamo agrees to the end.
    let ids: Vec<u64> = h.seqs.keys().copied().collect();
    for id in ids {
        h.free(id);
    }
    h.reset();
    assert_eq!(h.kv.num_cached_blocks(), 0);
    exercised
}

/// A pool shape: blocks, block size, host blocks, KV cache groups, prefix
/// offload and eviction policy.
type Shape = (u32, u32, u32, &'static [AttentionKind], (PrefixOffload, Eviction));

const FULL: &[AttentionKind] = &[AttentionKind::Full];
const OFF: (PrefixOffload, Eviction) = (PrefixOffload::Off, Eviction::Lru);
const SHAPES: [Shape; 9] = [
    (24, 4, 0, FULL, OFF),
    (40, 4, 16, FULL, OFF),
    (16, 2, 8, FULL, OFF),
    (48, 16, 0, FULL, OFF),
    // Hybrid: full attention beside a sliding window (and chunked local).
    (
        64,
        4,
        0,
        &[AttentionKind::Full, AttentionKind::SlidingWindow { window: 8 }],
        OFF,
    ),
    (
        96,
        4,
        24,
        &[
            AttentionKind::Full,
            AttentionKind::SlidingWindow { window: 12 },
            AttentionKind::ChunkedLocal { chunk: 16 },
        ],
        OFF,
    ),
    // The tiered cache: offloaded blocks beside swapped sequences.
    (24, 4, 24, FULL, (PrefixOffload::OnEvict, Eviction::Exclusive)),
    (16, 2, 12, FULL, (PrefixOffload::OnFree, Eviction::SegmentedLru)),
    (
        64,
        4,
        32,
        &[AttentionKind::Full, AttentionKind::SlidingWindow { window: 8 }],
        (PrefixOffload::OnEvict, Eviction::Lru),
    ),
];

#[test]
fn seeded_workloads_agree_with_dynamo() {
    // Tight and roomy pools, tiny and realistic blocks, with and without a
    // host tier, one full-attention group or hybrid groups.
    let seeds: u64 = std::env::var("PAGEDKV_DIFF_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SHAPES.len() as u64);
    let mut total: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in 1..=seeds {
        let shape = SHAPES[(seed as usize - 1) % SHAPES.len()];
        for (what, n) in run(seed, shape) {
            *total.entry(what).or_default() += n;
        }
    }
    // The workloads went through every path that changes the cache.
    for (what, &n) in &total {
        assert!(n > 0, "no {what} in any workload: {total:?}");
    }
}

/// The six steps (blocks of 4, a pool of 8): a block that fills with
/// content cached in another block, then the other copy is freed and evicted.
#[test]
fn a_duplicate_block_keeps_its_hash_when_the_cached_copy_is_evicted() {
    let mut h = Harness::new(8, 4, 0, &[AttentionKind::Full], OFF);
    let p: Vec<TokenId> = (1..=8).collect();
    let first = h.allocate(0, p.clone()).unwrap(); // 1. p cached (2 blocks)
    let second = h.allocate(0, p.clone()).unwrap(); // 2. p again: its last block duplicates p's
    let decoded = [21, 22, 23, 24];
    assert!(h.append(second, &decoded)); // 3. decode 4 tokens on the second copy
    h.free(first); // 4. free the first
    let other: Vec<TokenId> = (100..117).collect();
    let third = h.allocate(0, other).unwrap(); // 5. 17 other tokens: the pool is full
    let mut p_decoded = p.clone();
    p_decoded.extend(decoded);
    // 6. p + the decoded tokens: all three blocks are still cached (the
    // second sequence holds them) and Dynamo sees the same. (Before the fix:
    // pagedkv found 1, and the eviction of the first copy was announced.)
    assert_eq!(
        (h.cached_blocks(&p_decoded, 0), h.router.matched(&p_decoded, 0)),
        (3, 3)
    );
    // The chain grows under the kept block: Dynamo accepts the store (its parent is known).
    h.free(third);
    assert!(h.append(second, &[25, 26, 27, 28]), "a fourth block fills");
    let longer = [p_decoded.clone(), vec![25, 26, 27, 28]].concat();
    assert_eq!(
        (h.cached_blocks(&longer, 0), h.router.matched(&longer, 0)),
        (4, 4)
    );
    // A new request with this prefix hits all of it.
    let mut probe = p_decoded;
    probe.push(99);
    assert_eq!(h.kv.cached_prefix_len(&probe, &PrefixKeys::default()), 12);
}
