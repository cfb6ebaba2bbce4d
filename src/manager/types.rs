//! Plain data exchanged with the manager: configuration, admission answers,
//! block operations, usage and counters.

use std::fmt;

use crate::error::{KvError, PlanError};
use crate::ids::BlockId;
use crate::pool::MAX_BLOCKS;
use crate::prefix::HashAlgorithm;
use crate::sizing::{AttentionKind, CachePlan, MAX_BLOCK_SIZE};

/// Most KV cache groups a manager takes (Gemma 3 needs 6, Llama 4 4).
pub const MAX_GROUPS: usize = 64;

/// Configuration of a [`super::KvCacheManager`]; plain fields, checked by `validate()`.
///
/// ```
/// use pagedkv::KvCacheConfig;
/// let config = KvCacheConfig { num_blocks: 4_896, max_model_len: 60_000, ..Default::default() };
/// assert_eq!(config.block_size, 16);
/// config.validate().unwrap();
/// assert!(KvCacheConfig { block_size: 0, ..config }.validate().is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct KvCacheConfig {
    /// Device blocks in the pool (from [`crate::CachePlan::num_blocks`]). No default: 0 is refused.
    pub num_blocks: u32,
    /// Tokens per block (16).
    pub block_size: u32,
    /// Longest sequence, prompt and output together (32768).
    pub max_model_len: u32,
    /// Fraction of the pool kept free for running sequences to grow, floored
    /// to whole blocks (0.01, as vLLM): admission, `allocate` and `swap_in`
    /// leave it free while other sequences are on the device; `append` and a
    /// copy-on-write may use it.
    pub watermark: f64,
    /// Reuse the KV blocks of cached prompt prefixes (false). Off, the manager
    /// keeps no tokens and behaves exactly as a plain paged allocator.
    pub enable_prefix_caching: bool,
    /// The block hash function ([`HashAlgorithm::Xxh3_128`]).
    pub hash_algorithm: HashAlgorithm,
    /// Queue [`crate::KvEvent`]s for a cache-aware router (false; needs prefix caching).
    pub enable_kv_events: bool,
    /// Host (CPU) blocks of the swap tier, like vLLM's `swap_space` (0: no host
    /// tier, and `swap_out` is refused). Size it with
    /// [`crate::CachePlan::num_host_blocks`] (what [`Self::from_plan`] does).
    pub num_host_blocks: u32,
    /// The KV cache groups, one per attention kind and layer set, in group
    /// order (`[Full]`: every layer attends to every earlier token). Every
    /// group draws blocks from the one pool; a sequence holds a table per group.
    pub groups: Vec<AttentionKind>,
    /// The largest prefill chunk: admission assumes a longer prompt is
    /// prefilled this many tokens per step (allocate the first chunk, append
    /// the rest, as the reference scheduler does), so a sliding-window or
    /// chunked local group needs only its window and one chunk at once.
    /// `None` (the default): prompts are allocated whole.
    pub prefill_chunk_tokens: Option<u32>,
    /// Whether cached device blocks are offloaded to the host tier, so that a
    /// later prompt reloads them instead of recomputing them
    /// ([`PrefixOffload::Off`]; needs prefix caching and a host tier).
    pub prefix_offload: PrefixOffload,
    /// The eviction order of cached blocks ([`crate::Eviction::Lru`]).
    pub eviction: crate::Eviction,
}

/// When cached device blocks are copied to the host tier (the tiered prefix
/// cache). The host tier is one pool for swap and offload: swapped-out
/// sequences hold their host blocks, and every other host block may hold an
/// offloaded prefix block, evicted least recently used first when a swap or
/// a newer offload needs the room (a swap always gets it).
///
/// A prompt whose cached prefix continues in the host tier gets those blocks
/// back: fresh device blocks, host → device copies queued in
/// [`BlockOps::swap_in`], and the tokens counted as cached.
///
/// ```
/// use pagedkv::{KvCacheConfig, PrefixOffload};
/// let config = KvCacheConfig {
///     num_blocks: 64, num_host_blocks: 256, enable_prefix_caching: true,
///     prefix_offload: PrefixOffload::OnEvict, ..Default::default()
/// };
/// config.validate().unwrap();
/// assert!(KvCacheConfig { num_host_blocks: 0, ..config }.validate().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PrefixOffload {
    /// An evicted cached block is lost (the default).
    #[default]
    Off,
    /// A cached free block taken for new content is first copied to the host
    /// tier (the copy runs before the step that overwrites it): bytes move
    /// only for blocks the device would lose.
    OnEvict,
    /// A cached block is copied to the host tier when it becomes free (write
    /// through): eviction then costs no copy on the step that needs the
    /// block, at the price of copying blocks that a hit takes back anyway.
    OnFree,
}

impl KvCacheConfig {
    /// A configuration sized by a capacity plan: its block count, block size,
    /// host (swap) blocks and KV cache groups, with `max_model_len` checked
    /// against the plan's capacity (the error then carries the planner's
    /// advice). pagedkv keeps no null block: every block of the plan is usable.
    ///
    /// ```
    /// use pagedkv::{CachePlan, CacheSpec, KvCacheConfig, KvDtype, MemoryBudget};
    /// let plan = CachePlan::new(&CacheSpec::new(28, 2, 128, KvDtype::Bf16), 16,
    ///                           &MemoryBudget::direct(2_246_049_792)).unwrap();
    /// let config = KvCacheConfig::from_plan(&plan, 32_768).unwrap();
    /// assert_eq!((config.num_blocks, config.block_size), (4_896, 16));
    /// assert!(KvCacheConfig::from_plan(&plan, 128_000).is_err());
    /// ```
    pub fn from_plan(plan: &CachePlan, max_model_len: u32) -> Result<Self, PlanError> {
        plan.check_max_model_len(max_model_len as u64)?;
        let num_blocks = u32::try_from(plan.num_blocks())
            .ok()
            .filter(|&n| n <= MAX_BLOCKS)
            .ok_or_else(|| PlanError::InvalidConfig {
                field: "num_blocks",
                reason: format!(
                    "the plan gives {} blocks, more than a pool holds ({MAX_BLOCKS}); use a larger block_size",
                    plan.num_blocks()
                ),
            })?;
        Ok(KvCacheConfig {
            num_blocks,
            block_size: plan.block_size(),
            max_model_len,
            // A host tier larger than a pool holds is capped, not refused: it is only swap room.
            num_host_blocks: plan.num_host_blocks().min(MAX_BLOCKS as u64) as u32,
            groups: plan.groups().iter().map(|g| g.kind).collect(),
            ..Default::default()
        })
    }
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        KvCacheConfig {
            num_blocks: 0,
            block_size: 16,
            max_model_len: 32_768,
            watermark: 0.01,
            enable_prefix_caching: false,
            hash_algorithm: HashAlgorithm::default(),
            enable_kv_events: false,
            num_host_blocks: 0,
            groups: vec![AttentionKind::Full],
            prefill_chunk_tokens: None,
            prefix_offload: PrefixOffload::Off,
            eviction: crate::Eviction::Lru,
        }
    }
}

/// Admission control's answer for a request. Complete by design (the
/// refusal reasons are what may grow), so a match needs no wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Its prompt fits now, keeping the watermark free.
    Now,
    /// It fits once running sequences release blocks: keep it waiting.
    Later,
    /// It can never run to completion: reject it with the reason.
    Never(AdmissionRefusal),
}

/// Why a request can never run. Display gives a message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmissionRefusal {
    /// No prompt tokens.
    EmptyPrompt,
    /// Prompt + max new tokens is longer than `max_model_len`.
    ExceedsMaxModelLen {
        /// Prompt + max new tokens.
        tokens: u64,
        /// The limit.
        max_model_len: u32,
    },
    /// At its peak the sequence needs more blocks than the pool has.
    ExceedsPool {
        /// Tokens whose KV is stored at the peak: the prompt and every
        /// generated token but the last (the last sampled token is never stored).
        tokens: u64,
        /// Blocks that takes.
        blocks_needed: u64,
        /// Blocks in the pool.
        num_blocks: u64,
        /// Tokens per block.
        block_size: u32,
    },
}

impl fmt::Display for AdmissionRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AdmissionRefusal::EmptyPrompt => write!(f, "the prompt is empty; send at least one token"),
            AdmissionRefusal::ExceedsMaxModelLen {
                tokens,
                max_model_len,
            } => write!(
                f,
                "prompt + max_tokens is {tokens} tokens, more than max_model_len ({max_model_len}); \
                 shorten the prompt or lower max_tokens to at most {max_model_len} in total"
            ),
            AdmissionRefusal::ExceedsPool {
                tokens,
                blocks_needed,
                num_blocks,
                block_size,
            } => write!(
                f,
                "the prompt and max_tokens need {tokens} tokens of KV cache at the peak (the last sampled token \
                 is never stored) = {blocks_needed} blocks, but the KV cache has only {num_blocks} blocks \
                 ({} tokens) in all; lower max_tokens or give the cache more memory",
                num_blocks * block_size as u64
            ),
        }
    }
}

/// What [`super::KvCacheManager::allocate`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Blocks taken from the free queue.
    pub num_blocks: u32,
    /// Leading prompt tokens whose KV is already cached (skip their prefill).
    pub cached_tokens: u32,
}

/// Copy the first `num_slots` slots of block `src` into block `dst`.
///
/// In [`BlockOps::swap_out`] `src` is a device block and `dst` a host block; in
/// [`BlockOps::swap_in`] the reverse. Swap copies always carry the whole block
/// (`num_slots == block_size`): a transfer moves whole blocks anyway.
///
/// `#[repr(C)]` so a slice of copies can be uploaded as an `[n, 4]` u32 tensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockCopy {
    /// Block read.
    pub src: BlockId,
    /// Block written; no step reads it before the copy ran.
    pub dst: BlockId,
    /// Leading slots to copy (an engine may copy the whole block instead).
    pub num_slots: u32,
    /// The KV cache group both blocks belong to. With the usual layout (every
    /// group's layer `i` shares one tensor of `num_blocks` pages) a copy moves
    /// page `src` to page `dst` in every layer tensor whatever the group; an
    /// engine that keeps groups apart copies in the group's layers only.
    pub group: u32,
}

/// The block operations the engine must run before a step's kernels, in
/// order. Reuse one value across steps: draining into it allocates nothing
/// once its vectors have grown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockOps {
    /// Device → host copies (`src` device block, `dst` host block): run first.
    pub swap_out: Vec<BlockCopy>,
    /// Host → device copies (`src` host block, `dst` device block): run second.
    pub swap_in: Vec<BlockCopy>,
    /// Device → device copies (copy-on-write), to run in order, after the swaps.
    pub copies: Vec<BlockCopy>,
}

impl BlockOps {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.swap_out.clear();
        self.swap_in.clear();
        self.copies.clear();
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.swap_out.is_empty() && self.swap_in.is_empty() && self.copies.is_empty()
    }
}

/// Block and token accounting at one moment (see [`super::KvCacheManager::usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks in the pool.
    pub num_blocks: u64,
    /// Blocks in the free queue.
    pub free_blocks: u64,
    /// Blocks held by sequences.
    pub used_blocks: u64,
    /// Allocated sequences.
    pub num_seqs: u64,
    /// Tokens summed over sequences (a shared token counts once per sequence).
    pub logical_tokens: u64,
    /// Slots of used blocks holding some sequence's token (shared slots count once).
    pub stored_tokens: u64,
    /// Slots of used blocks holding nothing: `used_blocks × block_size − stored_tokens`.
    pub internal_fragmentation: u64,
}

/// Counters since the manager was created. A refused call changes none of
/// them except `out_of_blocks`, which counts exactly those refusals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Successful `allocate` calls.
    pub sequences_allocated: u64,
    /// Successful `free` calls.
    pub sequences_freed: u64,
    /// Successful `fork` calls.
    pub forks: u64,
    /// Copy-on-write copies queued.
    pub cow_copies: u64,
    /// Calls refused with `OutOfBlocks` (the one counter a refusal changes).
    pub out_of_blocks: u64,
    /// Prompts allocated with prefix caching on (each one lookup).
    pub prefix_lookups: u64,
    /// Prompt tokens of those lookups.
    pub prefix_queried_tokens: u64,
    /// Prompt tokens found cached (their prefill skipped).
    pub prefix_hit_tokens: u64,
    /// Cached free blocks evicted to hold new content.
    pub prefix_evictions: u64,
    /// Successful `swap_out` calls.
    pub swap_outs: u64,
    /// Successful `swap_in` calls.
    pub swap_ins: u64,
    /// Device → host block copies queued (a shared block counts once).
    pub swap_out_copies: u64,
    /// Host → device block copies queued (a shared block counts once).
    pub swap_in_copies: u64,
    /// Blocks sliding-window and chunked local groups released as their
    /// sequences grew past them (freed for other sequences, or shared on).
    pub window_released_blocks: u64,
    /// Device blocks taken from the free queue (fresh, or a free cached block hit).
    pub blocks_taken: u64,
    /// Device blocks returned to the free queue (their last reference dropped).
    pub blocks_returned: u64,
    /// Of `prefix_hit_tokens`, those served from the host tier (a block of
    /// their position reloaded in some group).
    pub prefix_host_hit_tokens: u64,
    /// Cached device blocks copied to the host tier (device → host copies
    /// queued in [`BlockOps::swap_out`] by [`KvCacheConfig::prefix_offload`]).
    pub offload_copies: u64,
    /// Host blocks reloaded to the device for prefix hits (host → device
    /// copies queued in [`BlockOps::swap_in`]).
    pub reload_copies: u64,
    /// Offloaded blocks dropped from the host tier for a swap or a newer offload.
    pub host_evictions: u64,
    /// Evicted device blocks not offloaded because every host block was held
    /// by swapped-out sequences or reloads.
    pub offloads_dropped: u64,
}

impl KvStats {
    /// Share of queried prompt tokens found cached (0 before any lookup).
    ///
    /// ```
    /// let stats = pagedkv::KvStats { prefix_queried_tokens: 200, prefix_hit_tokens: 150, ..Default::default() };
    /// assert_eq!(stats.prefix_hit_rate(), 0.75);
    /// ```
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_queried_tokens as f64
        }
    }
}

impl KvCacheConfig {
    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), KvError> {
        let bad = |field: &'static str, reason: String| Err(KvError::InvalidConfig { field, reason });
        if self.num_blocks == 0 || self.num_blocks > MAX_BLOCKS {
            return bad(
                "num_blocks",
                format!(
                    "{} is outside 1..={MAX_BLOCKS}; size the pool with CachePlan::num_blocks()",
                    self.num_blocks
                ),
            );
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return bad(
                "block_size",
                format!(
                    "{} is outside 1..={MAX_BLOCK_SIZE}; 16 is the usual choice",
                    self.block_size
                ),
            );
        }
        if self.max_model_len == 0 {
            return bad("max_model_len", "must be at least 1 token".into());
        }
        if self.enable_kv_events && !self.enable_prefix_caching {
            return bad(
                "enable_kv_events",
                "KV events describe the prefix cache; set enable_prefix_caching = true as well".into(),
            );
        }
        if self.num_host_blocks > MAX_BLOCKS {
            return bad(
                "num_host_blocks",
                format!(
                    "{} is more than a pool holds ({MAX_BLOCKS}); size the host tier with CachePlan::num_host_blocks()",
                    self.num_host_blocks
                ),
            );
        }
        if self.groups.is_empty() || self.groups.len() > MAX_GROUPS {
            return bad(
                "groups",
                format!(
                    "{} KV cache groups; use 1..={MAX_GROUPS} (one per attention kind and layer set, e.g. [Full])",
                    self.groups.len()
                ),
            );
        }
        for (g, kind) in self.groups.iter().enumerate() {
            if let Err(crate::error::PlanError::InvalidConfig { field, reason }) = kind.validate() {
                return bad("groups", format!("group {g}: {field}: {reason}"));
            }
        }
        if self.prefix_offload != PrefixOffload::Off
            && !(self.enable_prefix_caching && self.num_host_blocks > 0)
        {
            return bad(
                "prefix_offload",
                format!(
                    "{:?} offloads cached blocks to the host tier; set enable_prefix_caching = true and num_host_blocks > 0 (or PrefixOffload::Off)",
                    self.prefix_offload
                ),
            );
        }
        if self.prefill_chunk_tokens == Some(0) {
            return bad(
                "prefill_chunk_tokens",
                "a prefill chunk of 0 tokens computes nothing; use the scheduler's max_num_batched_tokens (e.g. 2048), or None for whole prompts".into(),
            );
        }
        if !(self.watermark >= 0.0 && self.watermark < 1.0) {
            return bad(
                "watermark",
                format!(
                    "{} is outside [0, 1); it is the fraction of blocks kept free for growth, e.g. 0.01",
                    self.watermark
                ),
            );
        }
        Ok(())
    }
}
