//! The simulator's error enum: unusable traces, workloads, scenarios and policies.

use std::path::PathBuf;

use thiserror::Error;

use crate::error::{KvError, PlanError, SchedulerError};

/// Why a simulation cannot run. Every message names what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SimError {
    /// A trace file cannot be read.
    #[error("cannot read trace {file}: {reason}")]
    TraceIo {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A malformed trace line; `line` is 1-based, the header being line 1.
    #[error("{file}:{line}: {reason}")]
    Trace {
        /// The file (or a name such as `<embedded sharegpt_first_turn.csv>`).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line and what the format expects.
        reason: String,
    },
    /// A workload or scenario setting is unusable; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The setting (`rate`, `max_num_seqs`, `block_size`, ...).
        field: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// A policy name that does not parse, or a policy this runner cannot run.
    #[error("policy {policy:?}: {reason}")]
    Policy {
        /// The policy as written or named.
        policy: String,
        /// What is wrong and what is supported.
        reason: String,
    },
    /// The KV memory cannot be sized for a policy.
    #[error("sizing the KV cache: {0}")]
    Plan(#[from] PlanError),
    /// The KV cache manager refused a call the runner relies on (a bug in the runner).
    #[error("KV cache manager: {0}")]
    Kv(#[from] KvError),
    /// The scheduler refused its configuration or a call the runner relies on.
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
}
