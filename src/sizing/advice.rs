//! The numbers behind the planner's refusals and advice, and their messages.

use std::fmt;

use super::{DeviceMemory, GIB};

/// A byte count that displays in GiB with two decimals (`7.87 GiB`).
///
/// ```
/// assert_eq!(pagedkv::ByteSize(3 * pagedkv::GIB / 2).to_string(), "1.50 GiB");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.0 as f64 / GIB as f64)
    }
}

/// The lowest `gpu_memory_utilization` (in steps of 0.01) whose budget holds
/// `needed_kv_bytes`, or what 1.0 would hold when none does.
pub(super) fn utilization_to_fit(d: &DeviceMemory, needed_kv_bytes: u64) -> UtilizationAdvice {
    let required = d.non_kv_bytes() as f64 + needed_kv_bytes as f64;
    let mut hundredths = ((required / d.device_bytes as f64) * 100.0).ceil().max(1.0) as u64;
    // Float rounding can land one step short; walk up until the budget really holds it.
    while hundredths <= 100 {
        let u = hundredths as f64 / 100.0;
        let candidate = DeviceMemory {
            gpu_memory_utilization: u,
            ..*d
        };
        if candidate.kv_bytes() >= needed_kv_bytes as i128 {
            return UtilizationAdvice::Fits(u);
        }
        hundredths += 1;
    }
    let full = DeviceMemory {
        gpu_memory_utilization: 1.0,
        ..*d
    };
    UtilizationAdvice::CannotFit {
        kv_bytes_at_full: full.kv_bytes().max(0) as u64,
    }
}

/// What raising `gpu_memory_utilization` can do for a `max_model_len`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UtilizationAdvice {
    /// This utilization (two decimals) holds one full-length sequence.
    Fits(f64),
    /// Even 1.0 is not enough; at 1.0 the cache would get this many bytes.
    CannotFit {
        /// KV bytes at utilization 1.0.
        kv_bytes_at_full: u64,
    },
}

/// The numbers behind a "max seq len is larger than the KV cache" refusal.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityAdvice {
    /// The requested `max_model_len`.
    pub max_model_len: u64,
    /// Tokens the KV cache holds.
    pub token_capacity: u64,
    /// The largest `max_model_len` that fits as configured.
    pub largest_max_model_len: u64,
    /// KV bytes one `max_model_len` sequence needs.
    pub needed_kv_bytes: u64,
    /// KV bytes available now.
    pub kv_bytes: u64,
    /// Raising `gpu_memory_utilization` (None for a direct KV budget).
    pub utilization: Option<UtilizationAdvice>,
    /// Token capacity with an fp8 cache (None when already 8-bit).
    pub fp8_capacity: Option<u64>,
    /// Token capacity per GPU with twice the tensor-parallel size: (size, capacity).
    pub tensor_parallel: Option<(u32, u64)>,
}

impl fmt::Display for CapacityAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fits = |c: u64| {
            if c >= self.max_model_len {
                "enough"
            } else {
                "still too few"
            }
        };
        write!(
            f,
            "The model's max seq len ({}) is larger than the maximum number of tokens that can be stored in KV cache ({}). \
             One sequence of {} tokens needs {} of KV cache, {} is available. Ways to fit:",
            self.max_model_len,
            self.token_capacity,
            self.max_model_len,
            ByteSize(self.needed_kv_bytes),
            ByteSize(self.kv_bytes),
        )?;
        write!(
            f,
            "\n  - set max_model_len to at most {}",
            self.largest_max_model_len
        )?;
        match self.utilization {
            Some(UtilizationAdvice::Fits(u)) => {
                write!(f, "\n  - raise gpu_memory_utilization to {u:.2}")?
            }
            Some(UtilizationAdvice::CannotFit { kv_bytes_at_full }) => write!(
                f,
                "\n  - gpu_memory_utilization cannot fix it: even 1.00 leaves only {} for the KV cache on this device",
                ByteSize(kv_bytes_at_full)
            )?,
            None => write!(
                f,
                "\n  - give the KV cache at least {} bytes ({}) (kv_cache_memory_bytes)",
                self.needed_kv_bytes,
                ByteSize(self.needed_kv_bytes)
            )?,
        }
        if let Some(c) = self.fp8_capacity {
            write!(
                f,
                "\n  - an fp8 KV cache (kv_cache_dtype=fp8) would hold {c} tokens ({})",
                fits(c)
            )?;
        }
        if let Some((tp, c)) = self.tensor_parallel {
            // A device budget (utilization advice present) frees half the weights per GPU;
            // a direct KV budget is taken as the same per GPU.
            let assumption = if self.utilization.is_some() {
                "weights split across GPUs, activation and non-torch memory per GPU unchanged"
            } else {
                "the same KV cache budget on each GPU"
            };
            write!(
                f,
                "\n  - tensor_parallel_size={tp} would hold {c} tokens per GPU ({}; {assumption})",
                fits(c)
            )?;
        }
        Ok(())
    }
}

/// Why nothing is left for the KV cache: the device breakdown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoKvMemory {
    /// The device profile that left nothing.
    pub device: DeviceMemory,
    /// The utilization that would leave room for one block (None above 1.0).
    pub utilization_for_one_block: Option<f64>,
}

impl NoKvMemory {
    pub(super) fn new(device: DeviceMemory, bytes_per_block: u64) -> Self {
        let utilization_for_one_block = match utilization_to_fit(&device, bytes_per_block) {
            UtilizationAdvice::Fits(u) => Some(u),
            UtilizationAdvice::CannotFit { .. } => None,
        };
        NoKvMemory {
            device,
            utilization_for_one_block,
        }
    }
}

impl fmt::Display for NoKvMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.device;
        write!(
            f,
            "No memory is left for the KV cache: weights {} + activations {} + non-torch {} = {} exceed {:.2} × {} = {}.",
            ByteSize(d.weights_bytes),
            ByteSize(d.activation_peak_bytes),
            ByteSize(d.non_torch_bytes),
            ByteSize(d.non_kv_bytes()),
            d.gpu_memory_utilization,
            ByteSize(d.device_bytes),
            ByteSize(d.usable_bytes()),
        )?;
        match self.utilization_for_one_block {
            Some(u) => write!(f, " Raise gpu_memory_utilization to at least {u:.2}, or lower the activation peak (max_num_batched_tokens) or the weights (quantization, tensor parallelism)."),
            None => write!(f, " Even gpu_memory_utilization 1.00 is not enough on this device: lower the activation peak (max_num_batched_tokens), quantize the weights, or split the model over more GPUs (tensor parallelism)."),
        }
    }
}

/// How many sequences fit at once, and what that means for `max_num_seqs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcurrencyAdvice {
    /// The sequence length the advice is for.
    pub max_model_len: u64,
    /// Full-length sequences that fit at once: a `max_num_seqs` that never preempts.
    pub full_length_seqs: u64,
    /// The average sequence length given, if any.
    pub avg_seq_len: Option<u64>,
    /// Sequences of the average length that fit at once.
    pub avg_length_seqs: Option<u64>,
    /// The configured `max_num_seqs`, if any.
    pub max_num_seqs: Option<u64>,
}

impl fmt::Display for ConcurrencyAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, noun, verb) = match self.full_length_seqs {
            1 => (1, "sequence", "fits"),
            n => (n, "sequences", "fit"),
        };
        write!(
            f,
            "{n} {noun} of the full {} tokens {verb} at once",
            self.max_model_len
        )?;
        if let (Some(l), Some(n)) = (self.avg_seq_len, self.avg_length_seqs) {
            write!(f, "; {n} of {l} tokens")?;
        }
        match self.max_num_seqs {
            Some(m) if m > self.full_length_seqs => write!(
                f,
                ". max_num_seqs={m} can run out of blocks when sequences grow long (preemption); max_num_seqs={} never does",
                self.full_length_seqs
            ),
            Some(m) => write!(f, ". max_num_seqs={m} fits even when every sequence is full length"),
            None => write!(f, ". Suggested max_num_seqs for no preemption: {}", self.full_length_seqs),
        }
    }
}
