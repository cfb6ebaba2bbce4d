//! The error enums, one per layer. Every message is a full sentence that says
//! what happened and what to change; variants carry the numbers.

use thiserror::Error;

use crate::sizing::{CapacityAdvice, NoKvMemory};

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
    /// One sequence of `max_model_len` tokens does not fit in the cache (vLLM's
    /// start-up error), with the settings that would make it fit.
    #[error("{0}")]
    MaxModelLenTooLarge(Box<CapacityAdvice>),
}
