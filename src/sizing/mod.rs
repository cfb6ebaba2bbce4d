//! Capacity planning: model shape and memory budget → number of KV blocks.
//!
//! [`CacheSpec`] gives the bytes one token's keys and values take on one GPU
//! (a uniform model); [`ModelLayout`] gives them layer by layer, each layer with
//! its [`AttentionKind`] (hybrid models); [`MemoryBudget`] gives the bytes left
//! for the KV cache; [`CachePlan`] groups the layers ([`KvCacheGroup`]), divides
//! the budget into whole blocks under an engine's [`EngineRules`] and answers
//! the questions asked at start-up: does `max_model_len` fit (and if not, which
//! settings would), and how many sequences fit at once.
//!
//! Everything is exact integer arithmetic except the one multiplication by
//! `gpu_memory_utilization`, rounded to whole bytes as the engine rounds it
//! (down under vLLM V0, up under V1).

use std::fmt;

use crate::error::PlanError;

mod advice;
mod attention;
mod budget;
mod groups;
#[cfg(test)]
mod hybrid_tests;
mod layout;
mod plan;
mod rules;
#[cfg(test)]
mod tests;

pub use advice::{
    format_gib, Alternative, ByteSize, CapacityAdvice, ConcurrencyAdvice, NoKvMemory, UtilizationAdvice,
};
pub use attention::AttentionKind;
pub use budget::{DeviceMemory, KvMemory, MemoryBudget};
pub use groups::KvCacheGroup;
pub use layout::{LayerSpec, ModelLayout};
pub use plan::{CachePlan, PlanBreakdown};
pub use rules::{EngineRules, VllmV1Rules};

/// Bytes in one GiB (2^30), the unit vLLM and PyTorch report memory in.
pub const GIB: u64 = 1 << 30;

/// Number of blocks needed to hold `num_tokens` tokens in blocks of `block_size`.
///
/// The one place token counts become block counts (a ceiling division). A
/// block size of 0 (refused by every config's validation) holds no token:
/// any tokens need `u64::MAX` blocks, more than any pool has.
///
/// ```
/// assert_eq!(pagedkv::blocks_for(0, 16), 0);
/// assert_eq!(pagedkv::blocks_for(16, 16), 1);
/// assert_eq!(pagedkv::blocks_for(17, 16), 2);
/// assert_eq!(pagedkv::blocks_for(17, 0), u64::MAX);
/// ```
#[inline]
pub const fn blocks_for(num_tokens: u64, block_size: u64) -> u64 {
    if block_size == 0 {
        return if num_tokens == 0 { 0 } else { u64::MAX };
    }
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
        if self.num_layers == 0 || self.num_layers > MAX_LAYERS {
            return bad(
                "num_layers",
                format!("{} is outside 1..={MAX_LAYERS}", self.num_layers),
            );
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

    /// Bytes one token's keys and values take on one GPU, all its layers
    /// together (saturating at `u64::MAX` for a spec `validate` refuses).
    pub const fn bytes_per_token(&self) -> u64 {
        let per_layer_elems = match self.mla {
            Some(m) => m.kv_lora_rank as u64 + m.qk_rope_head_dim as u64,
            None => (self.kv_heads_per_rank() as u64)
                .saturating_mul(self.head_dim_k as u64 + self.head_dim_v as u64),
        };
        (self.layers_per_stage() as u64)
            .saturating_mul(per_layer_elems)
            .saturating_mul(self.dtype.bytes())
    }

    /// Bytes one block of `block_size` tokens takes on one GPU (saturating).
    pub const fn bytes_per_block(&self, block_size: u32) -> u64 {
        self.bytes_per_token().saturating_mul(block_size as u64)
    }
}

/// Most layers accepted (real models have a few hundred at most; the limit
/// keeps a layer-by-layer [`ModelLayout`] of a mistyped count from exhausting memory).
pub const MAX_LAYERS: u32 = 1 << 16;

/// Largest block size accepted (vLLM's largest is 128; larger ones waste memory
/// to internal fragmentation and are almost certainly a mistake).
pub const MAX_BLOCK_SIZE: u32 = 1 << 16;
