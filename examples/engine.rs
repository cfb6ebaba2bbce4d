//! An inference engine loop over pagedkv, end to end, on the CPU: a tiny
//! hybrid decoder (full-attention layers alternating with sliding-window
//! layers, as Gemma 2 and gpt-oss do) whose KV cache lives in paged slabs,
//! driven by the reference [`Scheduler`], and verified against the same
//! model with a dense cache.
//!
//! The two attention kinds form two KV cache groups that share one pool
//! (vLLM's layout): the cache is `GROUP_SIZE` layer tensors of `num_blocks`
//! pages, layer `j` of every group using tensor `j`; a block id names a page
//! of one group. Each sequence has a block table per group; the
//! sliding-window group's table releases the blocks the window has passed
//! (they become `BlockId::NULL`, which the attention below never reads) and
//! other sequences reuse them.
//!
//! Every step the engine
//! 1. asks the scheduler for a plan ([`Scheduler::step`]);
//! 2. runs the plan's block operations on its KV memory, in order: swap-out
//!    (device → host), swap-in (host → device), copy-on-write copies
//!    (device → device);
//! 3. runs the model on the batch, layer by layer: first it writes every new
//!    token's keys and values at the token's slot in the layer's group, then
//!    each token attends to positions `0..=pos` of its own sequence (the last
//!    `WINDOW` of them in a sliding-window layer), reading them through the
//!    sequence's block table in that group
//!    (`slot = table[p / block_size] * block_size + p % block_size`);
//! 4. samples a token for every sequence that finished its prompt or decoded,
//!    and reports them back ([`Scheduler::on_step_output`]);
//! 5. publishes the step's KV events (`plan.events`) as one batch in vLLM's
//!    wire format ([`pagedkv::kv_events::KvEventEncoder`]; the package
//!    `pagedkv-publisher` would send it over ZeroMQ), and follows them as a
//!    cache-aware router would: every removed block was stored before, and
//!    in the full-attention group every stored block's parent is known.
//!
//! The workload forces everything the cache manager can do to real data:
//! parallel sampling (`n = 4`: the samples share the prompt's blocks and
//! copy-on-write the partial last one), a shared system prompt (prefix-cache
//! hits; never on blocks the same step computes, which the engine checks), and a pool small enough
//! that sequences are preempted both by swap (their blocks go through host
//! memory and back) and by recompute (prefilled again, partly from the prefix
//! cache), and that cached prefix blocks are evicted: they are offloaded to
//! the host tier (`PrefixOffload::OnEvict`, the same host memory as swap) and
//! reloaded when a later prompt hits them, their K/V copied back instead of
//! recomputed. Every sampled token and its logits must equal those of a reference
//! run with a plain `Vec` per sequence as its KV cache (and the window as an
//! attention mask).
//!
//! Sampling is greedy (argmax) for every sequence except samples 1.. of an
//! `n`-sample request: those would all repeat sample 0 under greedy decoding,
//! which would leave copy-on-write untested, so they use Gumbel-max sampling
//! (argmax of logits + Gumbel noise, an exact draw from the softmax) with the
//! noise seeded by (request, sample, position), which the reference reproduces.
//!
//! Run: `cargo run --release --example engine`. The integration test
//! `tests/engine_matches_dense_reference.rs` runs the same code.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt;
use std::ops::Range;

use std::collections::HashMap;

use pagedkv::kv_events::{EventSource, KvEventEncoder};
use pagedkv::scheduler::Automatic;
use pagedkv::{
    AttentionKind, BlockCopy, BlockId, CachePlan, CacheSpec, CacheTier, EngineRules, KvCacheConfig,
    KvCacheManager, KvDtype, KvEvent, MemoryBudget, ModelLayout, PrefixOffload, Request, RequestId,
    SampledToken, Scheduler, SchedulerConfig, SeqId, StepPlan, TokenId,
};

// ---------------------------------------------------------------------------
// 1. The model: a 4-layer decoder with grouped-query attention and RoPE, its
//    odd layers attending to a sliding window of `WINDOW` tokens.
// ---------------------------------------------------------------------------

const VOCAB: usize = 96;
const D_MODEL: usize = 32;
const N_LAYERS: usize = 4;
/// Tokens a sliding-window layer attends to (itself included).
const WINDOW: usize = 8;
/// Query heads; every `N_HEADS / N_KV_HEADS` of them share one key/value head (GQA).
const N_HEADS: usize = 4;
const N_KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const D_FF: usize = 64;
/// f32s of one token's keys (or values) in one layer: one row of a KV slab.
const KV_WIDTH: usize = N_KV_HEADS * HEAD_DIM;
const ROPE_THETA: f32 = 10_000.0;
/// Sampling this token ends a sequence.
const EOS: TokenId = 0;
const SEED: u64 = 0x5EED_CAFE;

/// How layer `l` attends: even layers to every earlier token, odd ones to a window.
fn layer_kind(l: usize) -> AttentionKind {
    if l % 2 == 0 {
        AttentionKind::Full
    } else {
        AttentionKind::SlidingWindow {
            window: WINDOW as u32,
        }
    }
}

/// The first position a query at `pos` of layer `l` attends to.
fn first_attended(l: usize, pos: usize) -> usize {
    match layer_kind(l) {
        AttentionKind::Full => 0,
        _ => (pos + 1).saturating_sub(WINDOW),
    }
}

/// The splitmix64 generator: fixed-seed weights and sampling noise without dependencies.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in [-scale, scale).
    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| (2.0 * self.unit() - 1.0) * scale).collect()
    }
}

/// One transformer layer; matrices are `[out][in]`, row-major.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    mlp_norm: Vec<f32>,
    w_up: Vec<f32>,
    w_down: Vec<f32>,
}

struct Model {
    /// `[VOCAB][D_MODEL]`, also the output head (tied).
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
}

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rms_norm(x: &[f32], gain: &[f32]) -> Vec<f32> {
    let inv = 1.0 / (dot(x, x) / x.len() as f32 + 1e-6).sqrt();
    x.iter().zip(gain).map(|(v, g)| v * inv * g).collect()
}

/// Rotary position embedding, applied to every head of `v` in place.
fn rope(v: &mut [f32], pos: usize) {
    for head in v.chunks_exact_mut(HEAD_DIM) {
        for i in 0..HEAD_DIM / 2 {
            let freq = ROPE_THETA.powf(-((2 * i) as f32) / HEAD_DIM as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos - b * sin;
            head[2 * i + 1] = a * sin + b * cos;
        }
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

impl Model {
    fn new(seed: u64) -> Model {
        let mut rng = SplitMix64(seed);
        let scaled =
            |rng: &mut SplitMix64, out: usize, inp: usize| rng.fill(out * inp, 1.0 / (inp as f32).sqrt());
        let gain = |rng: &mut SplitMix64| rng.fill(D_MODEL, 0.1).iter().map(|g| 1.0 + g).collect();
        let embed = rng.fill(VOCAB * D_MODEL, 1.0);
        let layers = (0..N_LAYERS)
            .map(|_| Layer {
                attn_norm: gain(&mut rng),
                wq: scaled(&mut rng, N_HEADS * HEAD_DIM, D_MODEL),
                wk: scaled(&mut rng, KV_WIDTH, D_MODEL),
                wv: scaled(&mut rng, KV_WIDTH, D_MODEL),
                wo: scaled(&mut rng, D_MODEL, N_HEADS * HEAD_DIM),
                mlp_norm: gain(&mut rng),
                w_up: scaled(&mut rng, D_FF, D_MODEL),
                w_down: scaled(&mut rng, D_MODEL, D_FF),
            })
            .collect();
        let final_norm = gain(&mut rng);
        Model {
            embed,
            layers,
            final_norm,
        }
    }

    /// The residual stream of a token entering layer 0.
    fn embed(&self, token: TokenId) -> Vec<f32> {
        self.embed[token as usize * D_MODEL..][..D_MODEL].to_vec()
    }

    /// First half of layer `l` for one token at `pos`: its query, key and value (rotated by RoPE).
    fn qkv(&self, l: usize, x: &[f32], pos: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let layer = &self.layers[l];
        let h = rms_norm(x, &layer.attn_norm);
        let (mut q, mut k, v) = (
            matvec(&layer.wq, &h),
            matvec(&layer.wk, &h),
            matvec(&layer.wv, &h),
        );
        rope(&mut q, pos);
        rope(&mut k, pos);
        (q, k, v)
    }

    /// Second half of layer `l`: the attention output into the residual stream, then the MLP.
    fn finish_layer(&self, l: usize, x: &mut [f32], attn: &[f32]) {
        let layer = &self.layers[l];
        for (xi, o) in x.iter_mut().zip(matvec(&layer.wo, attn)) {
            *xi += o;
        }
        let h = rms_norm(x, &layer.mlp_norm);
        let up: Vec<f32> = matvec(&layer.w_up, &h)
            .iter()
            .map(|u| u / (1.0 + (-u).exp()))
            .collect(); // SiLU
        for (xi, d) in x.iter_mut().zip(matvec(&layer.w_down, &up)) {
            *xi += d;
        }
    }

    fn logits(&self, x: &[f32]) -> Vec<f32> {
        matvec(&self.embed, &rms_norm(x, &self.final_norm))
    }
}

/// Attention of one token's query heads over positions `ctx` of its
/// sequence. `keys` and `values` are rows of `KV_WIDTH` f32s; `row(p)` says
/// which row holds position `p`. The paged engine and the dense reference call
/// this same function, so only where the rows come from differs.
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    ctx: Range<usize>,
    row: impl Fn(usize) -> usize,
) -> Vec<f32> {
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let mut out = vec![0.0; N_HEADS * HEAD_DIM];
    let mut weights = vec![0.0; ctx.len()];
    for h in 0..N_HEADS {
        let kv_head = h / (N_HEADS / N_KV_HEADS);
        let at = |p: usize| row(p) * KV_WIDTH + kv_head * HEAD_DIM;
        let q_h = &q[h * HEAD_DIM..][..HEAD_DIM];
        for (p, w) in ctx.clone().zip(weights.iter_mut()) {
            *w = dot(q_h, &keys[at(p)..][..HEAD_DIM]) * scale;
        }
        softmax(&mut weights);
        let out_h = &mut out[h * HEAD_DIM..][..HEAD_DIM];
        for (p, w) in ctx.clone().zip(weights.iter()) {
            for (o, v) in out_h.iter_mut().zip(&values[at(p)..][..HEAD_DIM]) {
                *o += w * v;
            }
        }
    }
    out
}

/// The token sample `sample` of request `request` draws at position `pos`:
/// greedy for sample 0, seeded Gumbel-max for the others (see the module docs).
fn sample(logits: &[f32], request: RequestId, sample: u32, pos: usize) -> TokenId {
    let mut noise = SplitMix64(SEED ^ (request.0 << 40) ^ ((sample as u64) << 32) ^ pos as u64);
    let score = |(t, &l): (usize, &f32)| {
        let gumbel = if sample == 0 {
            0.0
        } else {
            -(-(noise.unit() + 1e-9).ln()).ln()
        };
        (t, l + gumbel)
    };
    let best = logits
        .iter()
        .enumerate()
        .map(score)
        .fold(
            (0, f32::NEG_INFINITY),
            |best, c| {
                if c.1 > best.1 {
                    c
                } else {
                    best
                }
            },
        );
    best.0 as TokenId
}

// ---------------------------------------------------------------------------
// 2. KV memory: `GROUP_SIZE` layer tensors of `num_blocks` pages shaped
//    [block_size, N_KV_HEADS, HEAD_DIM], for keys and for values; layer `j` of
//    every KV cache group uses tensor `j` (vLLM's layout). One on the device,
//    one on the host.
// ---------------------------------------------------------------------------

/// Layers per KV cache group: the pages of one block id.
const GROUP_SIZE: usize = N_LAYERS / 2;

struct KvSlab {
    block_size: usize,
    /// Per layer tensor, `num_blocks * block_size` rows of `KV_WIDTH` f32s; row = slot.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

impl KvSlab {
    fn new(num_blocks: usize, block_size: usize) -> KvSlab {
        // NaN, so that reading a slot nobody wrote poisons the logits.
        let tensor = vec![f32::NAN; num_blocks * block_size * KV_WIDTH];
        KvSlab {
            block_size,
            keys: vec![tensor.clone(); GROUP_SIZE],
            values: vec![tensor; GROUP_SIZE],
        }
    }

    /// The f32s of the first `num_slots` slots of `block`, in one tensor.
    fn span(&self, block: BlockId, num_slots: u32) -> Range<usize> {
        let start = block.index() * self.block_size * KV_WIDTH;
        start..start + num_slots as usize * KV_WIDTH
    }

    fn write(&mut self, tensor: usize, slot: usize, k: &[f32], v: &[f32]) {
        self.keys[tensor][slot * KV_WIDTH..][..KV_WIDTH].copy_from_slice(k);
        self.values[tensor][slot * KV_WIDTH..][..KV_WIDTH].copy_from_slice(v);
    }

    /// A swap: `c.src` of `from` into `c.dst` of `to`, every tensor, keys and
    /// values (a block is one page in each tensor, whatever its group).
    fn transfer(from: &KvSlab, to: &mut KvSlab, c: &BlockCopy) {
        let (src, dst) = (from.span(c.src, c.num_slots), to.span(c.dst, c.num_slots));
        for t in 0..GROUP_SIZE {
            to.keys[t][dst.clone()].copy_from_slice(&from.keys[t][src.clone()]);
            to.values[t][dst.clone()].copy_from_slice(&from.values[t][src.clone()]);
        }
    }

    /// A copy-on-write copy inside this slab.
    fn copy(&mut self, c: &BlockCopy) {
        let (src, dst) = (self.span(c.src, c.num_slots), self.span(c.dst, c.num_slots).start);
        for t in 0..GROUP_SIZE {
            self.keys[t].copy_within(src.clone(), dst);
            self.values[t].copy_within(src.clone(), dst);
        }
    }
}

// ---------------------------------------------------------------------------
// 3. The engine loop.
// ---------------------------------------------------------------------------

/// What to run: the pool, the budgets and the requests.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Tokens per block.
    pub block_size: u32,
    /// Device blocks.
    pub num_blocks: u64,
    /// Host (swap) blocks.
    pub num_host_blocks: u64,
    /// Tokens per step (prompts longer than this are prefilled in chunks).
    pub max_num_batched_tokens: u32,
    /// Whether evicted prefix blocks go to the host tier (and come back on a hit).
    pub prefix_offload: PrefixOffload,
    /// Requests; each is added at the step numbered by its `arrival`.
    pub requests: Vec<Request>,
}

impl Workload {
    /// Ten requests, six sharing an 18-token system prompt, three with `n = 4`
    /// (19 sequences), two arriving per step, on a pool of 36 device blocks of
    /// 4 tokens and 12 host blocks: small enough to preempt both ways.
    pub fn demo() -> Workload {
        let mut rng = SplitMix64(SEED + 1);
        let mut tokens = |n: usize| -> Vec<TokenId> {
            (0..n)
                .map(|_| 1 + (rng.next_u64() % (VOCAB as u64 - 1)) as TokenId)
                .collect()
        };
        let system = tokens(18);
        let requests = (0..10u64)
            .map(|i| {
                let user = tokens(3 + (i as usize * 5) % 9);
                let prompt = if i % 5 < 3 {
                    [&system[..], &user[..]].concat()
                } else {
                    [tokens(8), user].concat()
                };
                Request {
                    id: RequestId(i),
                    prompt,
                    max_new_tokens: 14 + (i as u32 * 7) % 11,
                    priority: 0,
                    arrival: i / 2,
                    n: if i % 3 == 1 { 4 } else { 1 },
                    ..Default::default()
                }
            })
            .collect();
        Workload {
            block_size: 4,
            num_blocks: 36,
            num_host_blocks: 12,
            max_num_batched_tokens: 32,
            prefix_offload: PrefixOffload::OnEvict,
            requests,
        }
    }
}

/// What happened, and what the verification found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Scheduler steps.
    pub steps: u64,
    /// Tokens whose K/V the engine computed (prefill chunks, re-prefills and decodes).
    pub computed_tokens: u64,
    /// Preemptions by swap.
    pub preempted_swap: u64,
    /// Preemptions by recompute.
    pub preempted_recompute: u64,
    /// Computed tokens recompute preemptions dropped.
    pub recomputed_tokens: u64,
    /// Device → host block copies run.
    pub swap_out_copies: u64,
    /// Host → device block copies run.
    pub swap_in_copies: u64,
    /// Copy-on-write block copies run.
    pub cow_copies: u64,
    /// Of the device → host copies, evicted prefix blocks offloaded.
    pub offload_copies: u64,
    /// Of the host → device copies, offloaded blocks reloaded for a prefix hit.
    pub reload_copies: u64,
    /// Prompt tokens of prefix hits served from the host tier.
    pub host_hit_tokens: u64,
    /// Prompt tokens found in the prefix cache (their prefill skipped).
    pub prefix_hit_tokens: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queried_tokens: u64,
    /// Parallel samples forked.
    pub forks: u64,
    /// Blocks the sliding-window group released as its sequences grew.
    pub window_released_blocks: u64,
    /// Of those, the blocks another sequence took afterwards (in either group).
    pub window_blocks_reused: u64,
    /// Scheduled sequences whose context (before their new tokens) lies partly
    /// in a block another sequence of the same batch fills. pagedkv makes a
    /// block hittable only once the step computing it was handed over, so this
    /// must stay 0: no sequence reads KV that the same step writes.
    pub same_step_reads: u64,
    /// Sequences (samples) checked against the dense reference.
    pub verified_sequences: u64,
    /// Sampled tokens checked (each with its logits).
    pub verified_tokens: u64,
    /// KV event batches published (one per step that had events).
    pub event_batches: u64,
    /// Blocks announced stored and removed by those events.
    pub events_stored_blocks: u64,
    /// Blocks announced removed.
    pub events_removed_blocks: u64,
    /// Bytes of the batches in vLLM's wire format.
    pub event_bytes: u64,
    /// Events a router following them would reject: a removal of a block it
    /// never saw stored, or a full-attention store whose parent it does not
    /// hold. Must stay 0.
    pub events_rejected: u64,
    /// Largest |engine logit − reference logit|.
    pub max_abs_dlogit: f32,
    /// Whether every logit was bitwise equal to the reference's.
    pub bitwise_equal: bool,
}

/// One sampled position of a sequence: the token and the logits it came from.
#[derive(Clone, Debug)]
struct Sampled {
    pos: usize,
    token: TokenId,
    logits: Vec<f32>,
}

/// A token of the step's batch.
struct BatchToken {
    /// Index in `plan.scheduled`.
    entry: usize,
    pos: usize,
    token: TokenId,
    /// Its slot in each KV cache group.
    slots: Vec<usize>,
}

const MAX_MODEL_LEN: u32 = 96;

/// Runs the workload through the scheduler and the paged engine, then checks
/// every sampled token and its logits against the dense reference.
pub fn run(w: &Workload) -> Result<Report, Box<dyn Error>> {
    let model = Model::new(SEED);

    // Group the layers as vLLM does (one group per attention kind, equal
    // layer counts), and size the pool: exactly `num_blocks` and
    // `num_host_blocks` blocks of the plan's bytes per block.
    let spec = CacheSpec::new(N_LAYERS as u32, N_KV_HEADS as u32, HEAD_DIM as u32, KvDtype::F32);
    let kinds: Vec<AttentionKind> = (0..N_LAYERS).map(layer_kind).collect();
    let layout = ModelLayout::from_kinds(&spec, &kinds)?;
    let per_block = GROUP_SIZE as u64 * layout.page_bytes(0, w.block_size).expect("the model has layers");
    let budget = MemoryBudget::direct(w.num_blocks * per_block).with_host_swap(w.num_host_blocks * per_block);
    let rules = EngineRules::vllm_v1(w.max_num_batched_tokens as u64);
    let cache_plan = CachePlan::for_engine(&layout, w.block_size, &budget, rules)?;
    assert_eq!(cache_plan.breakdown().bytes_per_block, per_block);
    // Which KV cache group each layer belongs to, and its page slot (tensor) in a block.
    let mut layer_group = [(0, 0); N_LAYERS];
    for (g, group) in cache_plan.groups().iter().enumerate() {
        for (j, &layer) in group.layers.iter().enumerate() {
            layer_group[layer as usize] = (g, j);
        }
    }
    // The demo's pool is deliberately tiny: `from_plan` would refuse its
    // max_model_len; the scheduler's admission refuses what never fits.
    let config = KvCacheConfig {
        num_blocks: cache_plan.num_blocks() as u32,
        block_size: w.block_size,
        max_model_len: MAX_MODEL_LEN,
        num_host_blocks: cache_plan.num_host_blocks() as u32,
        groups: cache_plan.groups().iter().map(|g| g.kind).collect(),
        enable_prefix_caching: true,
        enable_kv_events: true,
        prefix_offload: w.prefix_offload,
        ..KvCacheConfig::default()
    };
    let encoder = KvEventEncoder::new(EventSource::for_groups(&config.groups))?;
    let groups = config.groups.clone();
    let mut batch_bytes: Vec<u8> = Vec::new();
    // What a router following the events holds: (group, block hash, tier).
    let mut router: Router = std::collections::HashSet::new();
    let window_group = config
        .groups
        .iter()
        .position(|k| *k != AttentionKind::Full)
        .ok_or("the model has a sliding-window group")?;
    let bs = config.block_size as usize;
    let mut device = KvSlab::new(config.num_blocks as usize, bs);
    let mut host = KvSlab::new(config.num_host_blocks as usize, bs);

    let scheduler_config = SchedulerConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: w.max_num_batched_tokens,
        ..Default::default()
    };
    // Swap a victim when recomputing it would cost more than moving its blocks
    // (cached prefix tokens are free to recompute), recompute otherwise or when
    // the host tier is full.
    let mut sched =
        Scheduler::new(KvCacheManager::new(config)?, scheduler_config)?.with_preemption_mode(Automatic {
            transfer_cost_per_token: 0.1,
        });
    // The window group's tables as of the last step, and who released each
    // released block (to see other sequences reuse it).
    let mut window_tables: HashMap<SeqId, Vec<BlockId>> = HashMap::new();
    let mut released_by: HashMap<BlockId, SeqId> = HashMap::new();

    let mut pending: Vec<&Request> = w.requests.iter().collect();
    let mut plan = StepPlan::default();
    let mut outputs: Vec<SampledToken> = Vec::new();
    let mut sampled: BTreeMap<SeqId, Vec<Sampled>> = BTreeMap::new();
    let mut report = Report::default();

    loop {
        let step = report.steps;
        for r in pending.iter().filter(|r| r.arrival == step) {
            sched.add_request((*r).clone())?;
        }
        pending.retain(|r| r.arrival > step);
        if sched.is_idle() && pending.is_empty() {
            break;
        }

        // (1) The plan.
        sched.step(&mut plan);
        report.steps += 1;
        track_window_reuse(
            &sched,
            &plan,
            window_group,
            &mut window_tables,
            &mut released_by,
            &mut report,
        )?;

        // (1b) The step's KV events: one batch on the wire, and a router's view.
        if !plan.events.is_empty() {
            let ts = report.steps as f64; // a real engine: seconds since the epoch
            encoder.encode_into(ts, &plan.events, &mut batch_bytes);
            report.event_batches += 1;
            report.event_bytes += batch_bytes.len() as u64;
            follow_events(&plan.events, &groups, &mut router, &mut report);
        }

        // (2) Block operations, in this order, before anything reads the cache.
        for c in &plan.ops.swap_out {
            KvSlab::transfer(&device, &mut host, c);
        }
        for c in &plan.ops.swap_in {
            KvSlab::transfer(&host, &mut device, c);
        }
        for c in &plan.ops.copies {
            device.copy(c);
        }
        report.swap_out_copies += plan.ops.swap_out.len() as u64;
        report.swap_in_copies += plan.ops.swap_in.len() as u64;
        report.cow_copies += plan.ops.copies.len() as u64;

        // (3) The forward pass over every new token of the batch: prefill
        // chunks (possibly a re-prefill after recompute) and decodes alike.
        let mut batch = Vec::new();
        for (i, e) in plan.scheduled.iter().enumerate() {
            let tokens = sched
                .tokens(e.seq)
                .ok_or("the scheduler has no tokens for a scheduled sequence")?;
            for k in 0..e.num_new_tokens as usize {
                let pos = e.start as usize + k;
                batch.push(BatchToken {
                    entry: i,
                    pos,
                    token: tokens[pos],
                    slots: (0..plan.num_groups as usize)
                        .map(|g| plan.group_slots_of(g, i)[k] as usize)
                        .collect(),
                });
            }
        }
        report.computed_tokens += batch.len() as u64;
        report.same_step_reads += reads_of_blocks_filled_this_step(&sched, &plan, &batch, bs)?;
        let mut xs: Vec<Vec<f32>> = batch.iter().map(|t| model.embed(t.token)).collect();
        for (l, &(g, tensor)) in layer_group.iter().enumerate() {
            // (3a) Write the layer's keys and values of every new token first
            // (a prefill chunk attends to its own new tokens), at the token's
            // slot in the layer's group.
            let mut queries = Vec::with_capacity(batch.len());
            for (t, x) in batch.iter().zip(&xs) {
                let (q, k, v) = model.qkv(l, x, t.pos);
                device.write(tensor, t.slots[g], &k, &v);
                queries.push(q);
            }
            // (3b) Paged attention: each token reads positions 0..=pos of its
            // sequence (its window, in a sliding layer) through the sequence's
            // block table in the layer's group; released entries are never read.
            for ((t, x), q) in batch.iter().zip(&mut xs).zip(&queries) {
                let table = sched.kv().group(g)?.block_table(plan.scheduled[t.entry].seq)?;
                let ctx = first_attended(l, t.pos)..t.pos + 1;
                if table[ctx.start / bs..=t.pos / bs].iter().any(|b| b.is_null()) {
                    return Err(format!("layer {l} would read a released block of {:?}", table).into());
                }
                let row = |p: usize| table[p / bs].index() * bs + p % bs;
                debug_assert_eq!(
                    row(t.pos),
                    t.slots[g],
                    "the plan's slot is where the block table maps the position"
                );
                let attn = attend(q, &device.keys[tensor], &device.values[tensor], ctx, row);
                model.finish_layer(l, x, &attn);
            }
        }

        // (4) Sample from the last token of every sequence that asked for it:
        // one token per decode, `n` when an `n`-sample request finishes its
        // prompt (the samples are forked by `on_step_output`).
        outputs.clear();
        for (i, e) in plan.scheduled.iter().enumerate() {
            if e.num_samples == 0 {
                continue; // a prefill chunk that does not finish the prompt
            }
            let last = batch
                .iter()
                .rposition(|t| t.entry == i)
                .ok_or("the scheduler has no tokens for a scheduled sequence")?;
            let logits = model.logits(&xs[last]);
            let pos = e.sampled_pos() as usize; // the position the token takes
            for k in 0..e.num_samples {
                // Sample 0 finishing an n-sample prompt samples once per sample.
                let seq = e.sample_seq(k);
                let (request, index) = RequestId::of(seq);
                let token = sample(&logits, request, index, pos);
                outputs.push(SampledToken {
                    seq,
                    token,
                    stop: token == EOS,
                });
                let logits = logits.clone();
                sampled
                    .entry(seq)
                    .or_default()
                    .push(Sampled { pos, token, logits });
            }
        }
        sched.on_step_output(&mut plan, &outputs)?;
        sched.check_invariants()?;
    }

    let stats = sched.stats();
    report.preempted_swap = stats.preempted_swap;
    report.preempted_recompute = stats.preempted_recompute;
    report.recomputed_tokens = stats.recomputed_tokens;
    let kv = sched.kv().stats();
    report.prefix_hit_tokens = kv.prefix_hit_tokens;
    report.prefix_queried_tokens = kv.prefix_queried_tokens;
    report.forks = kv.forks;
    report.window_released_blocks = kv.window_released_blocks;
    report.offload_copies = kv.offload_copies;
    report.reload_copies = kv.reload_copies;
    report.host_hit_tokens = kv.prefix_host_hit_tokens;
    if sched.kv().num_free_blocks() as u64 != w.num_blocks {
        return Err(format!(
            "{} blocks leaked",
            w.num_blocks - sched.kv().num_free_blocks() as u64
        )
        .into());
    }

    verify(&model, w, &sampled, &mut report)?;
    Ok(report)
}

/// Notes the window group's blocks released since the last step (entries that
/// became placeholders), and counts those another sequence now holds.
/// Applies `events` to `router` as a cache-aware router would, counting what
/// it would reject.
/// What a router following the events holds: (group, block hash, tier).
type Router = std::collections::HashSet<(u32, pagedkv::BlockHash, CacheTier)>;

fn follow_events(events: &[KvEvent], groups: &[AttentionKind], router: &mut Router, report: &mut Report) {
    for e in events {
        match e {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                group,
                tier,
                ..
            } => {
                // Window groups release blocks behind the window by design, so
                // only a full-attention group's device cache is closed under
                // prefixes (the host tier holds continuations of it).
                let full = groups[*group as usize] == AttentionKind::Full;
                if let (true, CacheTier::Device, Some(p)) = (full, tier, parent_block_hash) {
                    if !router.contains(&(*group, *p, CacheTier::Device)) {
                        report.events_rejected += 1;
                    }
                }
                for h in block_hashes {
                    router.insert((*group, *h, *tier));
                }
                report.events_stored_blocks += block_hashes.len() as u64;
            }
            KvEvent::BlockRemoved {
                block_hashes,
                group,
                tier,
            } => {
                for h in block_hashes {
                    if !router.remove(&(*group, *h, *tier)) {
                        report.events_rejected += 1;
                    }
                }
                report.events_removed_blocks += block_hashes.len() as u64;
            }
            KvEvent::AllCleared => router.clear(),
            _ => report.events_rejected += 1, // an event kind a router does not know
        }
    }
}

fn track_window_reuse(
    sched: &Scheduler,
    plan: &StepPlan,
    window_group: usize,
    tables: &mut HashMap<SeqId, Vec<BlockId>>,
    released_by: &mut HashMap<BlockId, SeqId>,
    report: &mut Report,
) -> Result<(), Box<dyn Error>> {
    let window = sched.kv().group(window_group)?;
    for e in &plan.scheduled {
        let now = window.block_table(e.seq)?;
        if let Some(before) = tables.get(&e.seq) {
            for (&was, &is) in before.iter().zip(now) {
                if !was.is_null() && is.is_null() {
                    released_by.insert(was, e.seq);
                }
            }
        }
        tables.insert(e.seq, now.to_vec());
        for g in 0..sched.kv().num_groups() {
            for b in sched.kv().group(g)?.block_table(e.seq)? {
                if released_by.get(b).is_some_and(|&owner| owner != e.seq) {
                    released_by.remove(b);
                    report.window_blocks_reused += 1;
                }
            }
        }
    }
    Ok(())
}

/// How many scheduled sequences read, before their new tokens, a block that
/// another sequence of the batch writes this step (see [`Report::same_step_reads`]).
fn reads_of_blocks_filled_this_step(
    sched: &Scheduler,
    plan: &StepPlan,
    batch: &[BatchToken],
    bs: usize,
) -> Result<u64, Box<dyn Error>> {
    let mut count = 0;
    for (i, e) in plan.scheduled.iter().enumerate() {
        for g in 0..plan.num_groups as usize {
            let table = sched.kv().group(g)?.block_table(e.seq)?;
            let context = &table[..(e.start as usize).div_ceil(bs)];
            let filled_by_other = |t: &BatchToken| {
                t.entry != i
                    && context
                        .iter()
                        .any(|b| !b.is_null() && b.index() == t.slots[g] / bs)
            };
            count += batch.iter().any(filled_by_other) as u64;
        }
    }
    Ok(count)
}

// ---------------------------------------------------------------------------
// 4. The dense reference and the comparison.
// ---------------------------------------------------------------------------

/// Generates sample `index` of request `r` alone, with a plain `Vec` of K/V
/// rows per layer as its cache: the prompt one token at a time, then each
/// sampled token, until EOS or `max_new_tokens`.
fn reference(model: &Model, r: &Request, index: u32) -> Vec<Sampled> {
    let mut keys = vec![Vec::new(); N_LAYERS];
    let mut values = vec![Vec::new(); N_LAYERS];
    let mut tokens = r.prompt.clone();
    let mut out = Vec::new();
    for pos in 0.. {
        let mut x = model.embed(tokens[pos]);
        for l in 0..N_LAYERS {
            let (q, k, v) = model.qkv(l, &x, pos);
            keys[l].extend_from_slice(&k);
            values[l].extend_from_slice(&v);
            let attn = attend(&q, &keys[l], &values[l], first_attended(l, pos)..pos + 1, |p| p);
            model.finish_layer(l, &mut x, &attn);
        }
        if pos + 1 < tokens.len() {
            continue; // still in the prompt
        }
        let logits = model.logits(&x);
        let token = sample(&logits, r.id, index, pos + 1);
        out.push(Sampled {
            pos: pos + 1,
            token,
            logits,
        });
        tokens.push(token);
        if token == EOS || out.len() == r.max_new_tokens as usize {
            return out;
        }
    }
    unreachable!("generation ends at EOS or max_new_tokens")
}

/// Every sample of every request: the same tokens as the reference, at the
/// same positions, with logits within 1e-5.
fn verify(
    model: &Model,
    w: &Workload,
    sampled: &BTreeMap<SeqId, Vec<Sampled>>,
    report: &mut Report,
) -> Result<(), Box<dyn Error>> {
    report.bitwise_equal = true;
    for r in &w.requests {
        for index in 0..r.n {
            let seq = r.id.seq(index);
            let got = sampled.get(&seq).map_or(&[][..], |v| &v[..]);
            let want = reference(model, r, index);
            let tokens = |s: &[Sampled]| s.iter().map(|s| s.token).collect::<Vec<_>>();
            if tokens(got) != tokens(&want) || got.iter().zip(&want).any(|(g, w)| g.pos != w.pos) {
                return Err(format!(
                    "{seq:?}: engine sampled {:?}, the dense reference {:?}",
                    tokens(got),
                    tokens(&want)
                )
                .into());
            }
            for (g, w) in got.iter().zip(&want) {
                for (a, b) in g.logits.iter().zip(&w.logits) {
                    let d = (a - b).abs();
                    if d.is_nan() || d > 1e-5 {
                        return Err(format!("{seq:?} position {}: logit {a} vs reference {b}", g.pos).into());
                    }
                    report.max_abs_dlogit = report.max_abs_dlogit.max(d);
                    report.bitwise_equal &= a.to_bits() == b.to_bits();
                }
            }
            report.verified_sequences += 1;
            report.verified_tokens += got.len() as u64;
        }
    }
    Ok(())
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "steps                   {}", self.steps)?;
        writeln!(f, "tokens computed         {}", self.computed_tokens)?;
        writeln!(
            f,
            "preempted by swap       {} ({} blocks out, {} blocks in)",
            self.preempted_swap,
            self.swap_out_copies - self.offload_copies,
            self.swap_in_copies - self.reload_copies
        )?;
        writeln!(
            f,
            "preempted by recompute  {} ({} computed tokens dropped)",
            self.preempted_recompute, self.recomputed_tokens
        )?;
        writeln!(
            f,
            "prefix-cache hits       {} of {} prompt tokens ({} reads of blocks the same step fills)",
            self.prefix_hit_tokens, self.prefix_queried_tokens, self.same_step_reads
        )?;
        writeln!(
            f,
            "prefix offload          {} evicted blocks to the host, {} reloaded ({} prompt tokens hit in the host tier)",
            self.offload_copies, self.reload_copies, self.host_hit_tokens
        )?;
        writeln!(
            f,
            "parallel samples        {} forks, {} copy-on-write copies",
            self.forks, self.cow_copies
        )?;
        writeln!(
            f,
            "sliding window          {} blocks released ({} then held by other sequences)",
            self.window_released_blocks, self.window_blocks_reused
        )?;
        writeln!(
            f,
            "KV events               {} batches, {} blocks stored, {} removed, {} bytes on vLLM's wire ({} a router rejects)",
            self.event_batches,
            self.events_stored_blocks,
            self.events_removed_blocks,
            self.event_bytes,
            self.events_rejected
        )?;
        let max = if self.max_abs_dlogit == 0.0 {
            "0".to_string()
        } else {
            format!("{:.1e}", self.max_abs_dlogit)
        };
        write!(
            f,
            "verified: {} sequences, {} tokens, max |Δlogit| = {max}{}",
            self.verified_sequences,
            self.verified_tokens,
            if self.bitwise_equal {
                " (bitwise equal to the dense reference)"
            } else {
                ""
            }
        )
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let w = Workload::demo();
    let sequences: u32 = w.requests.iter().map(|r| r.n).sum();
    println!(
        "pagedkv engine: {N_LAYERS}-layer decoder, {N_HEADS} query heads over {N_KV_HEADS} KV heads of {HEAD_DIM}, f32 KV cache"
    );
    println!(
        "layers: full attention and a {WINDOW}-token sliding window alternating: 2 KV cache groups of {GROUP_SIZE} layers sharing one pool"
    );
    println!(
        "pool: {} device + {} host blocks of {} tokens, prefix caching on; {} requests, {} sequences",
        w.num_blocks,
        w.num_host_blocks,
        w.block_size,
        w.requests.len(),
        sequences
    );
    let report = run(&w)?;
    println!("{report}");
    Ok(())
}
