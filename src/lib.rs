#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod ids;
pub mod kv_events;
pub mod manager;
pub mod pool;
pub mod prefix;
pub mod scheduler;
pub mod sim;
pub mod sizing;
pub mod table;

pub use error::{BatchError, InvariantViolation, KvError, PlanError, PoolError, SchedulerError};
pub use ids::{BlockId, SeqHandle, SeqId, Slot, TokenId};
pub use manager::{
    Admission, AdmissionRefusal, Allocation, BlockCopy, BlockOps, BlockUse, Eviction, EvictionPolicy,
    KvCacheConfig, KvCacheManager, KvStats, KvUsage, PrefixOffload, QueueEnd, SharedKvCacheManager,
};
pub use pool::{BlockPool, MAX_BLOCKS};
pub use prefix::{hash_block, BlockHash, CacheTier, ExtraKey, HashAlgorithm, KvEvent, MmSpan, PrefixKeys};
pub use scheduler::{Request, RequestId, SampledToken, Scheduler, SchedulerConfig, StepPlan};
pub use sizing::{
    blocks_for, format_gib, Alternative, AttentionKind, ByteSize, CachePlan, CacheSpec, CapacityAdvice,
    ConcurrencyAdvice, DeviceMemory, EngineRules, KvCacheGroup, KvDtype, KvMemory, LayerSpec, MemoryBudget,
    MlaSpec, ModelLayout, NoKvMemory, PlanBreakdown, UtilizationAdvice, VllmV1Rules, GIB, MAX_BLOCK_SIZE,
    MAX_LAYERS,
};
pub use table::BlockTable;

/// How many cases a unit-test property suite runs: `PAGEDKV_PROPTEST_CASES`
/// when it is set to a number, else `default` (the integration suites share
/// `tests/proptest_cases`).
#[cfg(test)]
pub(crate) fn proptest_cases(default: u32) -> u32 {
    std::env::var("PAGEDKV_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
