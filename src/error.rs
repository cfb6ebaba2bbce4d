//! The error enums, one per layer. Every message is a full sentence that says
//! what happened and what to change; variants carry the numbers.

use thiserror::Error;

use crate::ids::{BlockId, SeqHandle, SeqId};
use crate::manager::AdmissionRefusal;
use crate::scheduler::RequestId;
use crate::sizing::{AttentionKind, CapacityAdvice, NoKvMemory};

/// Why a capacity plan cannot be made or does not fit.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A configuration value is unusable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The offending setting (`block_size`, `gpu_memory_utilization`, ...).
        field: &'static str,
        /// What is wrong with it and what would work.
        reason: String,
    },
    /// Weights, activations and non-torch memory leave nothing for the KV cache.
    #[error("{0}")]
    NoKvMemory(Box<NoKvMemory>),
    /// The KV budget is positive but smaller than one block.
    #[error("The KV cache budget ({kv_bytes} bytes) is smaller than one block ({bytes_per_block} bytes): give the cache more memory or use a smaller block_size.")]
    BelowOneBlock {
        /// Bytes available for the KV cache.
        kv_bytes: u64,
        /// Bytes one block takes.
        bytes_per_block: u64,
    },
    /// The budget holds one block, which vLLM V1 keeps as its null block: no
    /// block is left for sequences.
    #[error("The KV cache budget ({kv_bytes} bytes) holds one block of {bytes_per_block} bytes, which vLLM keeps as its null block: no block is left for requests. Give the cache at least {} bytes (two blocks), or use a smaller block_size.", 2 * .bytes_per_block)]
    OnlyNullBlock {
        /// Bytes available for the KV cache.
        kv_bytes: u64,
        /// Bytes one block takes.
        bytes_per_block: u64,
    },
    /// One sequence of `max_model_len` tokens does not fit in the cache (the
    /// engine's start-up error), with the settings that would make it fit.
    #[error("{0}")]
    MaxModelLenTooLarge(Box<CapacityAdvice>),
    /// Layers whose pages (one block of one layer) differ in size would have to
    /// share one block pool.
    #[error("layers {layer_a} and {layer_b} keep {bytes_a} and {bytes_b} bytes per block of {block_size} tokens: KV cache groups share one pool and need one page size (vLLM would scale the smaller pages' block size or pad them; pagedkv does not); give every layer the same KV heads × head dim and dtype, or plan the differing layers as a separate model")]
    PageSizeMismatch {
        /// A layer with the first page size.
        layer_a: u32,
        /// Its page, bytes.
        bytes_a: u64,
        /// A layer with another page size.
        layer_b: u32,
        /// Its page, bytes.
        bytes_b: u64,
        /// Tokens per block.
        block_size: u32,
    },
    /// A KV cache group without layers: it would take blocks and hold nothing.
    #[error(
        "a KV cache group of {kind} layers has no layers: drop the group, or give it the layers of that kind"
    )]
    EmptyGroup {
        /// The group's attention kind.
        kind: AttentionKind,
    },
}

/// A caller mistake at the block-pool layer. The pool is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A pool of zero blocks, or of more than [`crate::pool::MAX_BLOCKS`].
    #[error(
        "a block pool needs between 1 and {} blocks, got {num_blocks}; size it with CachePlan::num_blocks()",
        crate::pool::MAX_BLOCKS
    )]
    InvalidSize {
        /// The requested size.
        num_blocks: u32,
    },
    /// The block id is not in this pool.
    #[error("block {block} does not exist: the pool has {num_blocks} blocks")]
    UnknownBlock {
        /// The offending id.
        block: BlockId,
        /// Blocks in the pool.
        num_blocks: u32,
    },
    /// Every block is in use.
    #[error("all {num_blocks} blocks are in use")]
    Exhausted {
        /// Blocks in the pool.
        num_blocks: u32,
    },
    /// A reference was dropped from a block that is already free.
    #[error("double free: block {block} is already free")]
    DoubleFree {
        /// The block.
        block: BlockId,
    },
    /// A reference was added to a block that is free (share only what you hold).
    #[error("block {block} is free: allocate it before sharing it")]
    NotAllocated {
        /// The block.
        block: BlockId,
    },
    /// A specific free block was requested but it is in use.
    #[error("block {block} is in use, not in the free queue")]
    NotFree {
        /// The block.
        block: BlockId,
    },
    /// The reference count would pass u32::MAX.
    #[error("block {block} already has u32::MAX references")]
    RefCountOverflow {
        /// The block.
        block: BlockId,
    },
}

/// A caller mistake or a shortage at the KV-cache-manager layer. A call that
/// returns one of these has changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KvError {
    /// A configuration value is unusable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it and what would work.
        reason: String,
    },
    /// The sequence is not allocated (never allocated, or already freed).
    #[error("sequence {seq} is not allocated (never allocated, or already freed)")]
    UnknownSequence {
        /// The sequence.
        seq: SeqId,
    },
    /// A [`SeqHandle`] that names no sequence on this manager's device: its
    /// sequence was freed or swapped out since, or it comes from another manager.
    #[error("sequence handle {handle} is stale: its sequence was freed or swapped out since it was taken, or it belongs to another manager; take a fresh one with KvCacheManager::handle(seq)")]
    StaleHandle {
        /// The handle.
        handle: SeqHandle,
    },
    /// The sequence id is already in use.
    #[error("sequence {seq} is already allocated: free it first or use another id")]
    DuplicateSequence {
        /// The sequence.
        seq: SeqId,
    },
    /// A sequence must start with at least one prompt token.
    #[error("sequence {seq} has an empty prompt: allocate needs at least one token")]
    EmptyPrompt {
        /// The sequence.
        seq: SeqId,
    },
    /// The sequence would grow past `max_model_len`.
    #[error("sequence {seq} would hold {tokens} tokens, more than max_model_len ({max_model_len}); stop generation at {max_model_len} tokens or raise max_model_len")]
    ExceedsMaxModelLen {
        /// The sequence.
        seq: SeqId,
        /// Its length after the call.
        tokens: u64,
        /// The configured limit.
        max_model_len: u32,
    },
    /// Not enough free blocks for the call.
    #[error("out of KV blocks: the call needs {needed} free blocks but only {free} are free; wait for running sequences to finish, preempt one, or give the cache more blocks")]
    OutOfBlocks {
        /// Blocks the call needs.
        needed: u64,
        /// Blocks free now.
        free: u64,
    },
    /// `allocate` or `swap_in` would dip into the blocks kept free for the
    /// running sequences to grow (the watermark). Admission answers `Later`
    /// for such a request; wait until it says `Now`.
    #[error("sequence {seq} needs {needed} free blocks and {free} are free, but {watermark_blocks} of them are kept for the running sequences to grow (the watermark); wait until check_admission says Now (or can_swap_in is true), or lower the watermark")]
    BelowWatermark {
        /// The sequence.
        seq: SeqId,
        /// Blocks the call needs.
        needed: u64,
        /// Blocks free now.
        free: u64,
        /// Blocks kept free for growth.
        watermark_blocks: u32,
    },
    /// A length-only admission check with prefix caching on.
    #[error("prefix caching is on, so admission depends on which of the prompt's blocks are cached: call check_admission with the prompt's tokens and prefix keys instead of check_admission_len")]
    AdmissionNeedsPrompt,
    /// `fork` or `swap_out` of a sequence whose newest tokens have not been
    /// handed to the engine to compute yet.
    #[error("sequence {seq} was allocated or appended to since the last drain_ops, so its newest tokens are not computed yet: fork or swap it out after drain_ops (once the step that computes them has been handed to the engine)")]
    NotYetComputed {
        /// The sequence.
        seq: SeqId,
    },
    /// A KV cache group index past the manager's groups.
    #[error("KV cache group {group} does not exist: the manager has {num_groups} groups (0..{num_groups}, in the order of KvCacheConfig::groups)")]
    UnknownGroup {
        /// The group asked for.
        group: u32,
        /// Groups the manager has.
        num_groups: u32,
    },
    /// `truncate` below what a sliding-window or chunked local group can still serve.
    #[error("cannot truncate sequence {seq} to {new_len} tokens: KV cache group {group}'s window released blocks the next token would read; truncate to at least {min_len} tokens (roll back only tokens the current window still holds)")]
    TruncateIntoReleasedWindow {
        /// The sequence.
        seq: SeqId,
        /// The group whose released blocks are missing.
        group: u32,
        /// The requested length.
        new_len: u64,
        /// The shortest length the group can still serve.
        min_len: u64,
    },
    /// `truncate` to more tokens than the sequence has.
    #[error("cannot truncate sequence {seq} to {new_len} tokens: it holds only {num_tokens}")]
    TruncateBeyondLength {
        /// The sequence.
        seq: SeqId,
        /// The requested length.
        new_len: u64,
        /// Its current length.
        num_tokens: u64,
    },
    /// The sequence is swapped out to the host tier: swap it in first.
    #[error("sequence {seq} is swapped out to the host tier: call swap_in (when can_swap_in says it fits) before using it, or free it")]
    SequenceSwapped {
        /// The sequence.
        seq: SeqId,
    },
    /// `swap_in` of a sequence that is not swapped out.
    #[error("sequence {seq} is not swapped out (it is on the device or not allocated); only swap_in what swap_out moved")]
    NotSwapped {
        /// The sequence.
        seq: SeqId,
    },
    /// `swap_out` with no host tier configured.
    #[error("cannot swap out sequence {seq}: there is no host tier; set num_host_blocks (e.g. from CachePlan::num_host_blocks with a host swap budget) or preempt by recompute (free it)")]
    NoHostTier {
        /// The sequence.
        seq: SeqId,
    },
    /// Not enough free host blocks to swap the sequence out.
    #[error("out of host blocks: swapping out sequence {seq} needs {needed} free host blocks but only {free} are free; preempt it by recompute (free it) instead, swap in or free swapped sequences, or give the host tier more blocks")]
    HostOutOfBlocks {
        /// The sequence.
        seq: SeqId,
        /// Host blocks the swap-out needs.
        needed: u64,
        /// Host blocks free now.
        free: u64,
    },
    /// A queued copy (copy-on-write or swap-in) still has to write one of the
    /// sequence's blocks, so a swap-out queued now would read it too early.
    #[error("cannot swap out sequence {seq} yet: block {block} is the destination of a copy queued this step; swap it out before appending to or swapping it in this step, or after drain_ops")]
    PendingWrite {
        /// The sequence.
        seq: SeqId,
        /// The block a queued copy writes.
        block: BlockId,
    },
    /// A queued copy-on-write reads a block that has been freed since; a
    /// swap-in now could take it and overwrite it before the copy runs.
    #[error("cannot swap in sequence {seq} yet: freed block {block} is the source of a copy-on-write queued this step; swap in before appending or freeing this step, or after drain_ops")]
    SwapInWouldOverwrite {
        /// The sequence.
        seq: SeqId,
        /// The freed block a queued copy still reads.
        block: BlockId,
    },
    /// A token position or range past the end of the sequence.
    #[error("position {pos} is past the end of sequence {seq} ({num_tokens} tokens)")]
    PositionOutOfRange {
        /// The sequence.
        seq: SeqId,
        /// The first position past the end that was asked for.
        pos: u64,
        /// Its length.
        num_tokens: u64,
    },
}

/// Why a batched call ([`crate::KvCacheManager::append_decode_into`])
/// stopped: entry `done` of the batch was refused with `error` and changed
/// nothing; the `done` entries before it were applied, those after it were
/// not looked at. Retry from `done` once the cause is dealt with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("batch entry {done} was refused ({error}); the {done} entries before it were applied, none after it")]
pub struct BatchError {
    /// Entries applied before the refused one.
    pub done: usize,
    /// Why entry `done` was refused.
    pub error: KvError,
}

/// A caller mistake at the scheduler layer, or a request that can never run.
/// The scheduler is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A budget is unusable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The offending setting.
        field: &'static str,
        /// What is wrong with it and what would work.
        reason: String,
    },
    /// The request can never run to completion in this cache; nothing was enqueued.
    #[error("request {} rejected: {reason}", request.0)]
    Rejected {
        /// The request.
        request: RequestId,
        /// Why, with what to change.
        reason: AdmissionRefusal,
    },
    /// A field of the request is unusable.
    #[error("request {} is invalid: {reason}", request.0)]
    InvalidRequest {
        /// The request.
        request: RequestId,
        /// What is wrong and what would work.
        reason: String,
    },
    /// The request id is still in use.
    #[error("request {} is already queued or running: use a new id per request", request.0)]
    DuplicateRequest {
        /// The request.
        request: RequestId,
    },
    /// `cancel` of a request that is not queued, running or swapped out.
    #[error("request {} is not queued, running or swapped out (never added, finished, rejected or cancelled already)", request.0)]
    UnknownRequest {
        /// The request.
        request: RequestId,
    },
    /// `Scheduler::new` with a manager that already holds sequences.
    #[error("the manager already holds {sequences} sequences (on the device or swapped out), which the scheduler would not know of: free them first or give the scheduler a fresh KvCacheManager")]
    ManagerInUse {
        /// Sequences the manager holds.
        sequences: u64,
    },
    /// A sampled token for a sequence that the last plan did not ask to sample.
    #[error("sequence {seq} was not asked for a sample by the last plan (or was reported twice); report one token per sample of each scheduled sequence with num_samples > 0")]
    UnexpectedOutput {
        /// The sequence.
        seq: SeqId,
    },
    /// Not one sampled token per sample the last plan asked for.
    #[error("the last plan asked for {expected} sampled tokens but {got} were reported; report one per sample (num_samples of each scheduled sequence)")]
    OutputCountMismatch {
        /// Samples the plan asked for.
        expected: u64,
        /// Tokens reported.
        got: u64,
    },
}

/// A broken internal invariant, found by a `check_invariants()` call. Seeing
/// one is a bug in pagedkv (or in a policy built on its pool): please report it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invariant violated: {what}")]
pub struct InvariantViolation {
    /// Which invariant, and the values that broke it.
    pub what: String,
}

impl InvariantViolation {
    /// A violation described by `what`.
    pub fn new(what: impl Into<String>) -> Self {
        InvariantViolation { what: what.into() }
    }
}
