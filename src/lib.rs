//! # pagedkv
//!
//! A paged KV-cache manager for LLM inference engines, and the capacity planner
//! that sizes it.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod error;
pub mod ids;
pub mod sizing;

pub use error::PlanError;
pub use ids::{BlockId, SeqId, Slot, TokenId};
pub use sizing::{
    blocks_for, ByteSize, CachePlan, CacheSpec, CapacityAdvice, ConcurrencyAdvice, DeviceMemory, KvDtype,
    KvMemory, MemoryBudget, MlaSpec, NoKvMemory, PlanBreakdown, UtilizationAdvice, GIB, MAX_BLOCK_SIZE,
};
