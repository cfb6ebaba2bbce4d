//! The memory budget: what the device spends before the KV cache, or a KV
//! budget given directly.

use crate::error::PlanError;

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
    /// CUDA graph memory the engine sets aside before the KV cache, bytes (vLLM
    /// ≥ 0.21 profiles it and subtracts it; 0 when graphs are off or not counted).
    pub cudagraph_bytes: u64,
}

impl DeviceMemory {
    /// Bytes the engine may use: `device_bytes × gpu_memory_utilization`, floored
    /// (vLLM's V0 engine).
    pub fn usable_bytes(&self) -> u64 {
        (self.device_bytes as f64 * self.gpu_memory_utilization).floor() as u64
    }

    /// Bytes the engine may use, rounded up: vLLM 0.33.0 requests
    /// `ceil(total × gpu_memory_utilization)` (`request_memory` in `vllm/v1/worker/utils.py`).
    ///
    /// ```
    /// # use pagedkv::DeviceMemory;
    /// let d = DeviceMemory { device_bytes: 1001, gpu_memory_utilization: 0.5, weights_bytes: 0,
    ///     non_torch_bytes: 0, activation_peak_bytes: 0, cudagraph_bytes: 0 };
    /// assert_eq!((d.usable_bytes(), d.usable_bytes_rounded_up()), (500, 501));
    /// ```
    pub fn usable_bytes_rounded_up(&self) -> u64 {
        (self.device_bytes as f64 * self.gpu_memory_utilization).ceil() as u64
    }

    /// Bytes spent before the KV cache: weights + non-torch + activation peak + CUDA graphs.
    pub fn non_kv_bytes(&self) -> u64 {
        self.weights_bytes
            .saturating_add(self.non_torch_bytes)
            .saturating_add(self.activation_peak_bytes)
            .saturating_add(self.cudagraph_bytes)
    }

    /// Bytes left for the KV cache (usable bytes floored); negative when the rest does not fit.
    pub fn kv_bytes(&self) -> i128 {
        self.usable_bytes() as i128 - self.non_kv_bytes() as i128
    }

    /// Bytes left for the KV cache with the usable bytes rounded up (vLLM 0.33.0).
    pub fn kv_bytes_rounded_up(&self) -> i128 {
        self.usable_bytes_rounded_up() as i128 - self.non_kv_bytes() as i128
    }
}

/// Where the KV budget comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum KvMemory {
    /// Device memory × utilization − weights − non-torch − activation peak − CUDA graphs.
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
///     cudagraph_bytes: 0,
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
