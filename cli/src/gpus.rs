//! Preset GPUs: the memory each card reports to the engine.
//!
//! The sizes are the total capacity PyTorch reports for the card
//! (`torch.cuda.mem_get_info()[1]`, the figure in CUDA out-of-memory messages),
//! which is what vLLM multiplies by `gpu_memory_utilization`. It is below the
//! marketing size (an RTX 4090 "24 GB" reports 23.64 GiB) and varies a little
//! with the driver and ECC settings: pass `--gpu-memory` with your card's exact
//! figure when it matters.

/// One preset: its `--gpu` name, a readable name, and its memory in hundredths of a GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuPreset {
    /// The name accepted by `--gpu` (lower-case).
    pub name: &'static str,
    /// The card's product name.
    pub product: &'static str,
    /// Memory the card reports, in hundredths of a GiB (2364 = 23.64 GiB).
    pub centi_gib: u64,
}

impl GpuPreset {
    /// The card's memory in bytes (hundredths of a GiB, rounded down to whole bytes).
    pub fn bytes(&self) -> u64 {
        self.centi_gib * (1 << 30) / 100
    }
}

/// The known cards, smallest first.
pub const GPUS: [GpuPreset; 6] = [
    GpuPreset {
        name: "rtx4090",
        product: "GeForce RTX 4090 24 GB",
        centi_gib: 2364,
    },
    GpuPreset {
        name: "a100-40gb",
        product: "A100 40 GB",
        centi_gib: 3939,
    },
    GpuPreset {
        name: "l40s",
        product: "L40S 48 GB",
        centi_gib: 4453,
    },
    GpuPreset {
        name: "h100-80gb",
        product: "H100 80 GB",
        centi_gib: 7911,
    },
    GpuPreset {
        name: "a100-80gb",
        product: "A100 80 GB",
        centi_gib: 7915,
    },
    GpuPreset {
        name: "h200",
        product: "H200 141 GB",
        centi_gib: 13981,
    },
];

/// The preset called `name` (case-insensitive; `_` and ` ` count as `-`).
/// The error lists the known names.
pub fn find_gpu(name: &str) -> Result<GpuPreset, String> {
    let wanted = name.trim().to_ascii_lowercase().replace(['_', ' '], "-");
    GPUS.iter().copied().find(|g| g.name == wanted).ok_or_else(|| {
        format!(
            "unknown GPU {name:?}; known: {}; or give the memory with --gpu-memory SIZE",
            known_names()
        )
    })
}

/// The preset names, comma-separated.
pub fn known_names() -> String {
    GPUS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtx4090_is_the_seed_figure() {
        let g = find_gpu("rtx4090").unwrap();
        assert_eq!(g.bytes(), 25_383_256_719); // 23.64 × 2^30, floored
        assert_eq!(g.bytes(), (23.64 * (1u64 << 30) as f64) as u64);
    }

    #[test]
    fn names_are_forgiving_but_unknown_ones_list_the_known() {
        assert_eq!(find_gpu("A100_80GB").unwrap().name, "a100-80gb");
        assert_eq!(find_gpu(" H200 ").unwrap().name, "h200");
        let err = find_gpu("rtx9090").unwrap_err();
        for g in GPUS {
            assert!(err.contains(g.name), "{err}");
        }
    }

    #[test]
    fn presets_are_unique_and_plausible() {
        for (i, g) in GPUS.iter().enumerate() {
            assert!(GPUS[i + 1..].iter().all(|o| o.name != g.name), "{}", g.name);
            assert!((1_000..=20_000).contains(&g.centi_gib), "{}", g.name);
        }
    }
}
