//! The numbers behind the planner's refusals and advice, and their messages.

use std::fmt;

use super::{DeviceMemory, EngineRules, MemoryBudget, GIB};

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

/// vLLM's `format_gib`: bytes in GiB as Python prints `round(b / 2**30, 2)`
/// (two decimals at most, at least one: `2.09`, `2.1`, `2.0`), rounding half
/// to even on the exact value as Python's `round` does.
///
/// ```
/// use pagedkv::format_gib;
/// assert_eq!(format_gib(2_245_591_040), "2.09");
/// assert_eq!(format_gib(2 << 30), "2.0");
/// assert_eq!(format_gib(3_670_016_000), "3.42");
/// assert_eq!(format_gib(1 << 27), "0.12"); // 0.125: half to even
/// ```
pub fn format_gib(bytes: u64) -> String {
    // hundredths = round_half_even(bytes × 100 / 2^30), exactly.
    let scaled = bytes as u128 * 100;
    let (q, r) = (scaled >> 30, scaled & (GIB as u128 - 1));
    let half = GIB as u128 / 2;
    let h = if r > half || (r == half && q % 2 == 1) {
        q + 1
    } else {
        q
    };
    let (units, cents) = (h / 100, h % 100);
    if cents % 10 == 0 {
        format!("{units}.{}", cents / 10)
    } else {
        format!("{units}.{cents:02}")
    }
}

/// The lowest `gpu_memory_utilization` (in steps of 0.01) whose budget, as the
/// engine's `rules` compute it, holds `needed_kv_bytes`, or what 1.0 would hold
/// when none does.
pub(super) fn utilization_to_fit(
    d: &DeviceMemory,
    needed_kv_bytes: u64,
    rules: EngineRules,
) -> UtilizationAdvice {
    let kv_at = |u: f64| {
        rules.kv_bytes(&MemoryBudget::device(DeviceMemory {
            gpu_memory_utilization: u,
            ..*d
        }))
    };
    let required = d.non_kv_bytes() as f64 + needed_kv_bytes as f64;
    // Start one step below the estimate: float rounding can land either side of it.
    let mut hundredths = ((required / d.device_bytes as f64) * 100.0).ceil().max(2.0) as u64 - 1;
    while hundredths <= 100 {
        let u = hundredths as f64 / 100.0;
        if kv_at(u) >= needed_kv_bytes as i128 {
            return UtilizationAdvice::Fits(u);
        }
        hundredths += 1;
    }
    UtilizationAdvice::CannotFit {
        kv_bytes_at_full: kv_at(1.0).max(0) as u64,
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

/// The same model and budget with one setting changed (another KV dtype,
/// twice the tensor parallelism), planned under the same rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alternative {
    /// Whether one `max_model_len` sequence fits.
    pub fits: bool,
    /// The largest `max_model_len` (up to the one asked for) that fits.
    pub largest_max_model_len: u64,
    /// `num_blocks × block_size` of that plan.
    pub token_capacity: u64,
}

/// The numbers behind a "max seq len does not fit" refusal, and the fixes.
#[derive(Clone, Debug, PartialEq)]
pub struct CapacityAdvice {
    /// The rules that refused (they choose the message).
    pub rules: EngineRules,
    /// The requested `max_model_len`.
    pub max_model_len: u64,
    /// `num_blocks × block_size` (the V0 message's "maximum number of tokens").
    pub token_capacity: u64,
    /// vLLM V1's "estimated maximum model length" (the first failing GPU's; 0: none fits).
    pub estimated_max_model_len: u64,
    /// The largest `max_model_len` that fits on every GPU as configured (0: none).
    pub largest_max_model_len: u64,
    /// KV bytes one `max_model_len` sequence needs (on the first GPU that refuses).
    pub needed_kv_bytes: u64,
    /// KV bytes it may use there (V1: after the null block).
    pub kv_bytes: u64,
    /// The smallest KV budget per GPU that fits (`kv_cache_memory_bytes`).
    pub min_kv_bytes: u64,
    /// Raising `gpu_memory_utilization` (None for a direct KV budget).
    pub utilization: Option<UtilizationAdvice>,
    /// An fp8 KV cache (None when already 8-bit or when that plan fails).
    pub fp8: Option<Alternative>,
    /// Twice the tensor-parallel size: (size, plan), None when the model cannot be split so.
    pub tensor_parallel: Option<(u32, Alternative)>,
}

impl CapacityAdvice {
    /// vLLM 0.33.0's refusal (`_check_enough_kv_cache_memory`), then the fixes
    /// that pass its check.
    fn fmt_v1(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "To serve at least one request with the model's max seq len ({}), ({} GiB KV cache is needed, \
             which is larger than the available KV cache memory ({} GiB). ",
            self.max_model_len,
            format_gib(self.needed_kv_bytes),
            format_gib(self.kv_bytes),
        )?;
        if self.estimated_max_model_len > 0 {
            write!(
                f,
                "Based on the available memory, the estimated maximum model length is {}. ",
                self.estimated_max_model_len
            )?;
        }
        write!(
            f,
            "Try increasing `gpu_memory_utilization` (which also controls CPU memory on the CPU backend) \
             or decreasing `max_model_len` when initializing the engine. \
             See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
        )?;
        let fp8 = self.fp8.is_some_and(|a| a.fits);
        let tp = self.tensor_parallel.filter(|(_, a)| a.fits).map(|(tp, _)| tp);
        let any = self.largest_max_model_len > 0
            || !matches!(self.utilization, Some(UtilizationAdvice::CannotFit { .. }))
            || fp8
            || tp.is_some();
        if any {
            write!(f, "\nWays to fit (each passes vLLM 0.33.0's check):")?;
        } else {
            write!(f, "\nNo single setting fits; combine them or use a larger GPU.")?;
        }
        if self.largest_max_model_len > 0 {
            write!(
                f,
                "\n  - set max_model_len to at most {}",
                self.largest_max_model_len
            )?;
        }
        match self.utilization {
            Some(UtilizationAdvice::Fits(u)) => write!(f, "\n  - raise gpu_memory_utilization to {u:.2}")?,
            Some(UtilizationAdvice::CannotFit { .. }) => {}
            None => write!(
                f,
                "\n  - give the KV cache at least {} bytes ({}) (kv_cache_memory_bytes)",
                self.min_kv_bytes,
                ByteSize(self.min_kv_bytes)
            )?,
        }
        if fp8 {
            write!(f, "\n  - an fp8 KV cache (kv_cache_dtype=fp8)")?;
        }
        if let Some(tp) = tp {
            let assumption = if self.utilization.is_some() {
                "weights split across GPUs, activation and non-torch memory per GPU unchanged"
            } else {
                "the same KV cache budget on each GPU"
            };
            write!(f, "\n  - tensor_parallel_size={tp} ({assumption})")?;
        }
        if let Some(UtilizationAdvice::CannotFit { kv_bytes_at_full }) = self.utilization {
            write!(
                f,
                "\n  (gpu_memory_utilization cannot fix it: even 1.00 leaves only {} for the KV cache on this device)",
                ByteSize(kv_bytes_at_full)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for CapacityAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let EngineRules::VllmV1(_) = self.rules {
            return self.fmt_v1(f);
        }
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
                self.min_kv_bytes,
                ByteSize(self.min_kv_bytes)
            )?,
        }
        if let Some(a) = self.fp8 {
            let c = a.token_capacity;
            write!(
                f,
                "\n  - an fp8 KV cache (kv_cache_dtype=fp8) would hold {c} tokens ({})",
                fits(c)
            )?;
        }
        if let Some((tp, a)) = self.tensor_parallel {
            let c = a.token_capacity;
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
    /// `blocks_bytes`: what the engine needs for its first usable block
    /// (one block; two under vLLM V1, whose first block is its null block).
    pub(super) fn new(device: DeviceMemory, blocks_bytes: u64, rules: EngineRules) -> Self {
        let utilization_for_one_block = match utilization_to_fit(&device, blocks_bytes, rules) {
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
        let graphs = if d.cudagraph_bytes > 0 {
            format!(" + CUDA graphs {}", ByteSize(d.cudagraph_bytes))
        } else {
            String::new()
        };
        write!(
            f,
            "No memory is left for the KV cache: weights {} + activations {} + non-torch {}{graphs} = {} exceed {:.2} × {} = {}.",
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
