//! Capacity planning: model shape and memory budget → number of KV blocks.
//!
//! [`CacheSpec`] gives the bytes one token's keys and values take on one GPU;
//! [`MemoryBudget`] gives the bytes left for the KV cache; [`CachePlan`] divides
//! one by the other in whole blocks and answers the questions asked at start-up:
//! does `max_model_len` fit (and if not, which settings would), and how many
//! sequences fit at once.
//!
//! Everything is exact integer arithmetic except the one multiplication by
//! `gpu_memory_utilization`, which is floored to whole bytes as vLLM does.

use std::fmt;

use crate::error::PlanError;

mod advice;
mod attention;
#[cfg(test)]
mod tests;

use advice::utilization_to_fit;
pub use advice::{ByteSize, CapacityAdvice, ConcurrencyAdvice, NoKvMemory, UtilizationAdvice};
pub use attention::AttentionKind;

/// Bytes in one GiB (2^30), the unit vLLM and PyTorch report memory in.
pub const GIB: u64 = 1 << 30;

/// Number of blocks needed to hold `num_tokens` tokens in blocks of `block_size`.
///
/// The one place token counts become block counts (a ceiling division).
///
/// ```
/// assert_eq!(pagedkv::blocks_for(0, 16), 0);
/// assert_eq!(pagedkv::blocks_for(16, 16), 1);
/// assert_eq!(pagedkv::blocks_for(17, 16), 2);
/// ```
#[inline]
pub const fn blocks_for(num_tokens: u64, block_size: u64) -> u64 {
    num_tokens.div_ceil(block_size)
}

/// The element type of the stored keys and values.
///
/// ```
/// use pagedkv::KvDtype;
/// assert_eq!(KvDtype::Bf16.bytes(), 2);
/// assert_eq!("fp8".parse::<KvDtype>().unwrap(), KvDtype::Fp8E4m3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KvDtype {
    /// 32-bit float.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit float, 4 exponent bits (vLLM's `fp8` / `fp8_e4m3`).
    Fp8E4m3,
    /// 8-bit float, 5 exponent bits (`fp8_e5m2`).
    Fp8E5m2,
    /// 8-bit integer quantized cache.
    Int8,
}

impl KvDtype {
    /// Bytes per element.
    pub const fn bytes(self) -> u64 {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::Fp8E4m3 | KvDtype::Fp8E5m2 | KvDtype::Int8 => 1,
        }
    }

    /// The canonical lower-case name (`bf16`, `fp8_e4m3`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "fp32",
            KvDtype::F16 => "fp16",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8E4m3 => "fp8_e4m3",
            KvDtype::Fp8E5m2 => "fp8_e5m2",
            KvDtype::Int8 => "int8",
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = PlanError;

    /// Accepts the names used by vLLM flags and Hugging Face `torch_dtype`
    /// values: `fp32`/`float32`/`float`, `fp16`/`float16`/`half`,
    /// `bf16`/`bfloat16`, `fp8`/`fp8_e4m3`/`float8_e4m3fn`, `fp8_e5m2`/`float8_e5m2`, `int8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let name = lower.strip_prefix("torch.").unwrap_or(&lower);
        Ok(match name {
            "fp32" | "f32" | "float32" | "float" => KvDtype::F32,
            "fp16" | "f16" | "float16" | "half" => KvDtype::F16,
            "bf16" | "bfloat16" => KvDtype::Bf16,
            "fp8" | "fp8_e4m3" | "float8_e4m3fn" | "float8_e4m3" => KvDtype::Fp8E4m3,
            "fp8_e5m2" | "float8_e5m2" => KvDtype::Fp8E5m2,
            "int8" | "i8" => KvDtype::Int8,
            _ => {
                return Err(PlanError::InvalidConfig {
                    field: "kv_dtype",
                    reason: format!(
                        "unknown dtype {s:?}; use one of fp32, fp16, bf16, fp8 (fp8_e4m3), fp8_e5m2, int8"
                    ),
                })
            }
        })
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3): each layer stores one latent
/// vector of `kv_lora_rank + qk_rope_head_dim` elements per token instead of a
/// key/value pair per KV head. The latent is replicated on every tensor-parallel rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaSpec {
    /// Rank of the compressed KV latent (`kv_lora_rank`, 512 for DeepSeek-V2).
    pub kv_lora_rank: u32,
    /// Dimension of the decoupled rotary key (`qk_rope_head_dim`, 64 for DeepSeek-V2).
    pub qk_rope_head_dim: u32,
}

/// The attention shape that determines how many bytes one token's KV cache takes.
///
/// Sizes are per GPU: KV heads are divided across tensor-parallel ranks (and
/// replicated when there are fewer KV heads than ranks), layers across
/// pipeline stages (rounded up: the largest stage sets the budget).
///
/// ```
/// use pagedkv::{CacheSpec, KvDtype};
/// // Qwen2-VL-2B: 28 layers, 2 KV heads of 128, bf16.
/// let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
/// assert_eq!(spec.bytes_per_token(), 28_672);
/// assert_eq!(spec.bytes_per_block(16), 458_752);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheSpec {
    /// Transformer layers holding a KV cache (`num_hidden_layers`).
    pub num_layers: u32,
    /// Key/value heads (`num_key_value_heads`); ignored under MLA.
    pub num_kv_heads: u32,
    /// Elements per key head; ignored under MLA.
    pub head_dim_k: u32,
    /// Elements per value head (differs from `head_dim_k` in some models); ignored under MLA.
    pub head_dim_v: u32,
    /// Element type of the cache.
    pub dtype: KvDtype,
    /// Multi-head latent attention, replacing the per-head K/V pair when set.
    pub mla: Option<MlaSpec>,
    /// Tensor-parallel ranks (GPUs sharing every layer).
    pub tensor_parallel_size: u32,
    /// Pipeline-parallel stages (GPUs splitting the layers).
    pub pipeline_parallel_size: u32,
}

impl CacheSpec {
    /// A standard (GQA/MHA) attention shape with equal K and V head dims, on one GPU.
    pub const fn new(num_layers: u32, num_kv_heads: u32, head_dim: u32, dtype: KvDtype) -> Self {
        CacheSpec {
            num_layers,
            num_kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            dtype,
            mla: None,
            tensor_parallel_size: 1,
            pipeline_parallel_size: 1,
        }
    }

    /// An MLA attention shape on one GPU.
    ///
    /// ```
    /// use pagedkv::{CacheSpec, KvDtype};
    /// // DeepSeek-V2-Lite: 27 layers, latent 512 + rope 64, bf16.
    /// let spec = CacheSpec::mla(27, 512, 64, KvDtype::Bf16);
    /// assert_eq!(spec.bytes_per_token(), 27 * 576 * 2);
    /// ```
    pub const fn mla(num_layers: u32, kv_lora_rank: u32, qk_rope_head_dim: u32, dtype: KvDtype) -> Self {
        CacheSpec {
            num_layers,
            num_kv_heads: 1,
            head_dim_k: 0,
            head_dim_v: 0,
            dtype,
            mla: Some(MlaSpec {
                kv_lora_rank,
                qk_rope_head_dim,
            }),
            tensor_parallel_size: 1,
            pipeline_parallel_size: 1,
        }
    }

    /// The same shape with another element type.
    pub const fn with_dtype(mut self, dtype: KvDtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// The same shape split over `tp` tensor-parallel ranks.
    pub const fn with_tensor_parallel(mut self, tp: u32) -> Self {
        self.tensor_parallel_size = tp;
        self
    }

    /// The same shape split over `pp` pipeline stages.
    pub const fn with_pipeline_parallel(mut self, pp: u32) -> Self {
        self.pipeline_parallel_size = pp;
        self
    }

    /// Checks that every field is usable; the error names the field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |field: &'static str, reason: String| Err(PlanError::InvalidConfig { field, reason });
        if self.num_layers == 0 {
            return bad("num_layers", "must be at least 1".into());
        }
        if self.tensor_parallel_size == 0 {
            return bad("tensor_parallel_size", "must be at least 1".into());
        }
        if self.pipeline_parallel_size == 0 {
            return bad("pipeline_parallel_size", "must be at least 1".into());
        }
        if self.pipeline_parallel_size > self.num_layers {
            return bad(
                "pipeline_parallel_size",
                format!(
                    "{} pipeline stages exceed the model's {} layers",
                    self.pipeline_parallel_size, self.num_layers
                ),
            );
        }
        match self.mla {
            Some(m) => {
                if m.kv_lora_rank == 0 {
                    return bad("kv_lora_rank", "must be at least 1 for an MLA model".into());
                }
            }
            None => {
                if self.num_kv_heads == 0 {
                    return bad("num_kv_heads", "must be at least 1".into());
                }
                if self.head_dim_k == 0 || self.head_dim_v == 0 {
                    return bad("head_dim", "must be at least 1".into());
                }
                let (heads, tp) = (self.num_kv_heads, self.tensor_parallel_size);
                let splits = if heads >= tp {
                    heads % tp == 0
                } else {
                    tp % heads == 0
                };
                if !splits {
                    return bad(
                        "tensor_parallel_size",
                        format!(
                            "{tp} ranks cannot split {heads} KV heads evenly; use a tensor-parallel size that divides {heads} or is a multiple of it"
                        ),
                    );
                }
            }
        }
        // bytes_per_token() and bytes_per_block() multiply in u64: refuse shapes
        // whose largest block would overflow instead of panicking (or wrapping) there.
        if self
            .checked_bytes_per_token()
            .and_then(|t| t.checked_mul(MAX_BLOCK_SIZE as u64))
            .is_none()
        {
            return bad(
                "num_layers × num_kv_heads × head_dim",
                "one block's KV cache would exceed 2^64 bytes; check the model shape".into(),
            );
        }
        Ok(())
    }

    /// `bytes_per_token()` computed with overflow checks.
    fn checked_bytes_per_token(&self) -> Option<u64> {
        let per_layer_elems = match self.mla {
            Some(m) => m.kv_lora_rank as u64 + m.qk_rope_head_dim as u64,
            None => (self.kv_heads_per_rank() as u64)
                .checked_mul(self.head_dim_k as u64 + self.head_dim_v as u64)?,
        };
        (self.layers_per_stage() as u64)
            .checked_mul(per_layer_elems)?
            .checked_mul(self.dtype.bytes())
    }

    /// KV heads stored on each tensor-parallel rank (at least one: replicated when
    /// there are fewer KV heads than ranks).
    pub const fn kv_heads_per_rank(&self) -> u32 {
        let tp = if self.tensor_parallel_size == 0 {
            1
        } else {
            self.tensor_parallel_size
        };
        if self.num_kv_heads >= tp {
            self.num_kv_heads / tp
        } else {
            1
        }
    }

    /// Layers held by the largest pipeline stage.
    pub const fn layers_per_stage(&self) -> u32 {
        let pp = if self.pipeline_parallel_size == 0 {
            1
        } else {
            self.pipeline_parallel_size
        };
        self.num_layers.div_ceil(pp)
    }

    /// Bytes one token's keys and values take on one GPU, all its layers together.
    pub const fn bytes_per_token(&self) -> u64 {
        let per_layer_elems = match self.mla {
            Some(m) => m.kv_lora_rank as u64 + m.qk_rope_head_dim as u64,
            None => self.kv_heads_per_rank() as u64 * (self.head_dim_k as u64 + self.head_dim_v as u64),
        };
        self.layers_per_stage() as u64 * per_layer_elems * self.dtype.bytes()
    }

    /// Bytes one block of `block_size` tokens takes on one GPU.
    pub const fn bytes_per_block(&self, block_size: u32) -> u64 {
        self.bytes_per_token() * block_size as u64
    }
}

/// What the device's memory is spent on before the KV cache (vLLM's profile).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceMemory {
    /// Total memory of one GPU, bytes.
    pub device_bytes: u64,
    /// Fraction of `device_bytes` the engine may use, in (0, 1].
    pub gpu_memory_utilization: f64,
    /// Model weights on this GPU, bytes.
    pub weights_bytes: u64,
    /// Memory outside the framework's allocator (CUDA context, NCCL, graphs), bytes.
    pub non_torch_bytes: u64,
    /// Peak activation memory of the profiling forward pass, bytes.
    pub activation_peak_bytes: u64,
}

impl DeviceMemory {
    /// Bytes the engine may use: `device_bytes × gpu_memory_utilization`, floored.
    pub fn usable_bytes(&self) -> u64 {
        (self.device_bytes as f64 * self.gpu_memory_utilization).floor() as u64
    }

    /// Bytes spent before the KV cache: weights + non-torch + activation peak.
    pub fn non_kv_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_add(self.non_torch_bytes)
            .saturating_add(self.activation_peak_bytes)
    }

    /// Bytes left for the KV cache; negative when the rest does not fit.
    pub fn kv_bytes(&self) -> i128 {
        self.usable_bytes() as i128 - self.non_kv_bytes() as i128
    }
}

/// Where the KV budget comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum KvMemory {
    /// Device memory × utilization − weights − non-torch − activation peak.
    Device(DeviceMemory),
    /// A KV byte budget given directly (vLLM's `kv_cache_memory_bytes`).
    Direct {
        /// Bytes for the KV cache on one GPU.
        kv_cache_bytes: u64,
    },
}

/// The memory available to the cache: the device budget and the host (swap) tier.
///
/// ```
/// use pagedkv::{MemoryBudget, DeviceMemory, GIB};
/// let gib = |x: f64| (x * GIB as f64) as u64;
/// let budget = MemoryBudget::device(DeviceMemory {
///     device_bytes: gib(23.64),
///     gpu_memory_utilization: 0.9,
///     weights_bytes: gib(7.87),
///     non_torch_bytes: gib(0.25),
///     activation_peak_bytes: gib(11.06),
/// });
/// assert!((budget.kv_bytes() as f64 / GIB as f64 - 2.096).abs() < 0.01);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBudget {
    /// The device (GPU) KV budget.
    pub kv: KvMemory,
    /// Host memory for swapped-out blocks, bytes (vLLM's `swap_space`); 0 for none.
    pub host_swap_bytes: u64,
}

impl MemoryBudget {
    /// A budget derived from the device's memory profile.
    pub const fn device(memory: DeviceMemory) -> Self {
        MemoryBudget {
            kv: KvMemory::Device(memory),
            host_swap_bytes: 0,
        }
    }

    /// A direct KV budget of `kv_cache_bytes` per GPU.
    pub const fn direct(kv_cache_bytes: u64) -> Self {
        MemoryBudget {
            kv: KvMemory::Direct { kv_cache_bytes },
            host_swap_bytes: 0,
        }
    }

    /// The same budget with a host swap tier of `bytes`.
    pub const fn with_host_swap(mut self, bytes: u64) -> Self {
        self.host_swap_bytes = bytes;
        self
    }

    /// Bytes left for the KV cache on one GPU; negative when nothing is left.
    pub fn kv_bytes(&self) -> i128 {
        match self.kv {
            KvMemory::Device(d) => d.kv_bytes(),
            KvMemory::Direct { kv_cache_bytes } => kv_cache_bytes as i128,
        }
    }

    /// Checks the budget's fields; the error names the field.
    pub fn validate(&self) -> Result<(), PlanError> {
        if let KvMemory::Device(d) = self.kv {
            let u = d.gpu_memory_utilization;
            if !(u > 0.0 && u <= 1.0) {
                return Err(PlanError::InvalidConfig {
                    field: "gpu_memory_utilization",
                    reason: format!("{u} is outside (0, 1]; it is the fraction of GPU memory the engine may use, e.g. 0.9"),
                });
            }
            if d.device_bytes == 0 {
                return Err(PlanError::InvalidConfig {
                    field: "gpu_memory",
                    reason: "device memory must be more than 0 bytes".into(),
                });
            }
        }
        if let KvMemory::Direct { kv_cache_bytes: 0 } = self.kv {
            return Err(PlanError::InvalidConfig {
                field: "kv_cache_memory",
                reason: "a direct KV cache budget must be more than 0 bytes".into(),
            });
        }
        Ok(())
    }
}

/// The sizes a plan was computed from and what they come to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanBreakdown {
    /// Bytes per token on one GPU.
    pub bytes_per_token: u64,
    /// Bytes per block on one GPU.
    pub bytes_per_block: u64,
    /// Bytes given to the KV cache (before rounding down to whole blocks).
    pub kv_bytes: u64,
    /// Bytes of `kv_bytes` left over after the last whole block.
    pub unused_bytes: u64,
}

/// How many blocks fit, how many tokens they hold, and the checks on top.
///
/// ```
/// use pagedkv::{CachePlan, CacheSpec, KvDtype, MemoryBudget};
/// let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
/// let plan = CachePlan::new(&spec, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
/// assert_eq!(plan.num_blocks(), 4_896);
/// assert_eq!(plan.token_capacity(), 78_336);
/// let err = plan.check_max_model_len(128_000).unwrap_err();
/// assert!(err.to_string().starts_with(
///     "The model's max seq len (128000) is larger than the maximum number of tokens \
///      that can be stored in KV cache (78336)."));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CachePlan {
    spec: CacheSpec,
    block_size: u32,
    budget: MemoryBudget,
    num_blocks: u64,
    num_host_blocks: u64,
    breakdown: PlanBreakdown,
}

/// Largest block size accepted (vLLM's largest is 128; larger ones waste memory
/// to internal fragmentation and are almost certainly a mistake).
pub const MAX_BLOCK_SIZE: u32 = 1 << 16;

impl CachePlan {
    /// Sizes the cache: `floor(KV bytes / bytes per block)` blocks.
    ///
    /// Fails with [`PlanError::NoKvMemory`] when weights, activations and
    /// non-torch memory leave nothing for the cache (the message gives the
    /// breakdown), and [`PlanError::BelowOneBlock`] when what is left does not
    /// hold a single block.
    pub fn new(spec: &CacheSpec, block_size: u32, budget: &MemoryBudget) -> Result<Self, PlanError> {
        spec.validate()?;
        budget.validate()?;
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(PlanError::InvalidConfig {
                field: "block_size",
                reason: format!("{block_size} is outside 1..={MAX_BLOCK_SIZE}; 16 is the usual choice"),
            });
        }
        let bytes_per_block = spec.bytes_per_block(block_size);
        let kv = budget.kv_bytes();
        if kv <= 0 {
            let KvMemory::Device(d) = budget.kv else {
                unreachable!("a direct budget is a u64 and only a device budget can go negative or zero")
            };
            return Err(PlanError::NoKvMemory(Box::new(NoKvMemory::new(
                d,
                bytes_per_block,
            ))));
        }
        let kv_bytes = kv as u64;
        let num_blocks = kv_bytes / bytes_per_block;
        if num_blocks == 0 {
            return Err(PlanError::BelowOneBlock {
                kv_bytes,
                bytes_per_block,
            });
        }
        Ok(CachePlan {
            spec: *spec,
            block_size,
            budget: *budget,
            num_blocks,
            num_host_blocks: budget.host_swap_bytes / bytes_per_block,
            breakdown: PlanBreakdown {
                bytes_per_token: spec.bytes_per_token(),
                bytes_per_block,
                kv_bytes,
                unused_bytes: kv_bytes - num_blocks * bytes_per_block,
            },
        })
    }

    /// Device blocks that fit.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    /// Host (swap) blocks that fit in the host budget.
    pub fn num_host_blocks(&self) -> u64 {
        self.num_host_blocks
    }

    /// Tokens the device blocks hold: `num_blocks × block_size`.
    pub fn token_capacity(&self) -> u64 {
        self.num_blocks * self.block_size as u64
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The attention shape the plan was made for.
    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// The budget the plan was made from.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Sizes and leftovers.
    pub fn breakdown(&self) -> &PlanBreakdown {
        &self.breakdown
    }

    /// How many sequences of `tokens_per_seq` tokens fit in the cache at once
    /// (each rounded up to whole blocks). vLLM logs this as "maximum concurrency".
    ///
    /// ```
    /// # use pagedkv::{CachePlan, CacheSpec, KvDtype, MemoryBudget};
    /// # let spec = CacheSpec::new(28, 2, 128, KvDtype::Bf16);
    /// let plan = CachePlan::new(&spec, 16, &MemoryBudget::direct(2_246_049_792)).unwrap();
    /// assert_eq!(plan.max_concurrency(32_768), 2);
    /// ```
    pub fn max_concurrency(&self, tokens_per_seq: u64) -> u64 {
        let per_seq = blocks_for(tokens_per_seq.max(1), self.block_size as u64);
        self.num_blocks / per_seq
    }

    /// Checks that one sequence of `max_model_len` tokens fits; otherwise the
    /// error carries vLLM's message and the settings that would make it fit.
    pub fn check_max_model_len(&self, max_model_len: u64) -> Result<(), PlanError> {
        if max_model_len == 0 {
            return Err(PlanError::InvalidConfig {
                field: "max_model_len",
                reason: "must be at least 1 token".into(),
            });
        }
        if max_model_len <= self.token_capacity() {
            return Ok(());
        }
        Err(PlanError::MaxModelLenTooLarge(Box::new(
            self.advice_for(max_model_len),
        )))
    }

    /// Concurrency advice for a deployment running sequences of up to
    /// `max_model_len` tokens (average `avg_seq_len` when known).
    pub fn concurrency(
        &self,
        max_model_len: u64,
        avg_seq_len: Option<u64>,
        max_num_seqs: Option<u64>,
    ) -> ConcurrencyAdvice {
        ConcurrencyAdvice {
            max_model_len,
            full_length_seqs: self.max_concurrency(max_model_len),
            avg_seq_len,
            avg_length_seqs: avg_seq_len.map(|l| self.max_concurrency(l)),
            max_num_seqs,
        }
    }

    /// The blocks a sequence of `num_tokens` needs.
    fn blocks_needed(&self, num_tokens: u64) -> u64 {
        blocks_for(num_tokens, self.block_size as u64)
    }

    /// Token capacity of this plan with another spec and budget (None when that plan fails).
    fn capacity_with(&self, spec: &CacheSpec, budget: &MemoryBudget) -> Option<u64> {
        CachePlan::new(spec, self.block_size, budget)
            .ok()
            .map(|p| p.token_capacity())
    }

    fn advice_for(&self, max_model_len: u64) -> CapacityAdvice {
        // Saturates for absurd lengths: "needs more than 2^64 bytes" is still a refusal.
        let needed_kv_bytes = self
            .blocks_needed(max_model_len)
            .saturating_mul(self.breakdown.bytes_per_block);
        let utilization = match self.budget.kv {
            KvMemory::Device(d) => Some(utilization_to_fit(&d, needed_kv_bytes)),
            KvMemory::Direct { .. } => None,
        };
        let fp8_capacity = (self.spec.dtype.bytes() > 1)
            .then(|| self.capacity_with(&self.spec.with_dtype(KvDtype::Fp8E4m3), &self.budget))
            .flatten();
        let tp = self.spec.tensor_parallel_size.saturating_mul(2);
        let tp_spec = self.spec.with_tensor_parallel(tp);
        let tp_budget = match self.budget.kv {
            // Weights split across the ranks; activations and non-torch memory are per GPU.
            KvMemory::Device(d) => MemoryBudget {
                kv: KvMemory::Device(DeviceMemory {
                    weights_bytes: d.weights_bytes / 2,
                    ..d
                }),
                ..self.budget
            },
            KvMemory::Direct { .. } => self.budget,
        };
        let tp_capacity = self.capacity_with(&tp_spec, &tp_budget).map(|c| (tp, c));
        CapacityAdvice {
            max_model_len,
            token_capacity: self.token_capacity(),
            largest_max_model_len: self.token_capacity(),
            needed_kv_bytes,
            kv_bytes: self.breakdown.kv_bytes,
            utilization,
            fp8_capacity,
            tensor_parallel: tp_capacity,
        }
    }
}
