//! KV cache groups: how a hybrid model's layers share one block pool.
//!
//! Layers of one attention kind (and storage shape) form groups of equal size;
//! each group keeps one block table per sequence, and every group draws its
//! block ids from the same pool. A block id stands for one page per layer slot
//! of a group, so the pool's bytes per block are the group size × the page
//! size, and all groups need the same page size. This is vLLM 0.33.0's rule
//! (`_get_kv_cache_groups_uniform_page_size` in `vllm/v1/core/kv_cache_planning.py`),
//! written for pagedkv.

use std::collections::HashMap;

use crate::error::PlanError;

use super::{AttentionKind, MlaSpec, ModelLayout};

/// One KV cache group: layers of one attention kind sharing a block table.
///
/// What the engine allocates: one pool of [`CachePlan::num_blocks`](super::CachePlan::num_blocks)
/// block ids, each [`CachePlan::breakdown`](super::CachePlan::breakdown)`().bytes_per_block`
/// bytes on each GPU, cut into `num_padded_layers` slots of one page
/// (`block_size` tokens of one layer). Every group draws ids from that pool;
/// when group `g`'s table gives block id `b`, the `j`-th layer of `g`
/// (`layers[j]`) keeps its keys and values for those tokens in slot `j` of
/// block `b`. Slots from `num_layers()` to `num_padded_layers` are padding:
/// allocated, never written. Under pipeline parallelism each GPU holds only
/// its stage's layers of each group.
///
/// ```
/// use pagedkv::{AttentionKind, CachePlan, CacheSpec, EngineRules, KvDtype, MemoryBudget, ModelLayout, GIB};
/// let spec = CacheSpec::new(24, 8, 64, KvDtype::Bf16);
/// let kinds: Vec<_> = (0..24)
///     .map(|i| if i % 2 == 0 { AttentionKind::SlidingWindow { window: 128 } } else { AttentionKind::Full })
///     .collect();
/// let layout = ModelLayout::from_kinds(&spec, &kinds).unwrap();
/// let plan = CachePlan::for_engine(&layout, 16, &MemoryBudget::direct(2 * GIB), EngineRules::vllm_v1(2048)).unwrap();
/// let groups = plan.groups();
/// assert_eq!(groups.len(), 2);
/// assert_eq!(groups[0].kind, AttentionKind::SlidingWindow { window: 128 });
/// assert_eq!((groups[0].num_layers(), groups[0].num_padded_layers), (12, 12));
/// assert_eq!(groups[0].layers[..3], [0, 2, 4]);
/// // One block id: 12 layer slots of 16 tokens × 8 heads × (64 + 64) × 2 bytes.
/// assert_eq!(plan.breakdown().bytes_per_block, 12 * 16 * 8 * 128 * 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KvCacheGroup {
    /// Which earlier tokens every layer of the group reads.
    pub kind: AttentionKind,
    /// The model's layers in the group (indices into [`ModelLayout::layers`]), in order.
    pub layers: Vec<u32>,
    /// Layer slots per block: the group size every group is padded to (≥ `num_layers()`).
    pub num_padded_layers: u32,
}

impl KvCacheGroup {
    /// Layers really in the group.
    pub fn num_layers(&self) -> u32 {
        self.layers.len() as u32
    }

    /// Slots of a block left unused (padding).
    pub fn num_padding_layers(&self) -> u32 {
        self.num_padded_layers.saturating_sub(self.num_layers())
    }

    /// Checks the group is usable: at least one layer, no more than its slots.
    ///
    /// ```
    /// use pagedkv::{AttentionKind, KvCacheGroup, PlanError};
    /// let empty = KvCacheGroup { kind: AttentionKind::Full, layers: vec![], num_padded_layers: 4 };
    /// assert!(matches!(empty.validate(), Err(PlanError::EmptyGroup { .. })));
    /// ```
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.layers.is_empty() {
            return Err(PlanError::EmptyGroup { kind: self.kind });
        }
        if self.num_layers() > self.num_padded_layers {
            return Err(PlanError::InvalidConfig {
                field: "num_padded_layers",
                reason: format!(
                    "a group of {} layers cannot fit in {} slots per block; give it at least {} slots",
                    self.num_layers(),
                    self.num_padded_layers,
                    self.num_layers()
                ),
            });
        }
        self.kind.validate()
    }
}

/// What makes two layers' caches interchangeable: kind and per-rank storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LayerKey {
    kind: AttentionKind,
    heads_per_rank: u32,
    head_dim_k: u32,
    head_dim_v: u32,
    mla: Option<MlaSpec>,
}

fn key(layout: &ModelLayout, i: usize) -> LayerKey {
    let l = &layout.layers[i];
    let spec = layout.spec_at(i);
    match l.mla {
        Some(m) => LayerKey {
            kind: l.kind,
            heads_per_rank: 1,
            head_dim_k: 0,
            head_dim_v: 0,
            mla: Some(m),
        },
        None => LayerKey {
            kind: l.kind,
            heads_per_rank: spec.kv_heads_per_rank(),
            head_dim_k: l.head_dim_k,
            head_dim_v: l.head_dim_v,
            mla: None,
        },
    }
}

/// Checks that every layer has the same page size: the groups share one pool
/// whose blocks are cut into pages of one size.
pub(super) fn check_page_sizes(layout: &ModelLayout, block_size: u32) -> Result<u64, PlanError> {
    let first = layout.page_bytes_at(0, block_size);
    for i in 1..layout.layers.len() {
        let bytes = layout.page_bytes_at(i, block_size);
        if bytes != first {
            return Err(PlanError::PageSizeMismatch {
                layer_a: 0,
                bytes_a: first,
                layer_b: i as u32,
                bytes_b: bytes,
                block_size,
            });
        }
    }
    Ok(first)
}

/// One group holding every layer (a uniform model, vLLM's V0 engine, or a
/// hybrid model with vLLM's hybrid KV cache manager off).
pub(super) fn single_group(layout: &ModelLayout) -> Vec<KvCacheGroup> {
    let kind = layout.layers.first().map_or(AttentionKind::Full, |l| l.kind);
    let n = layout.layers.len() as u32;
    vec![KvCacheGroup {
        kind,
        layers: (0..n).collect(),
        num_padded_layers: n,
    }]
}

/// vLLM 0.33.0's grouping. Layers all of one kind (even with different
/// storage shapes: vLLM's `UniformTypeKVCacheSpecs`) form one group of every
/// layer. Otherwise layers are bucketed by kind and storage in order of first
/// appearance, and the group
/// size is the smallest bucket's layer count, or the largest's when that is
/// less than 1.5 × the smallest (fewer padding slots); each bucket splits into
/// `ceil(len / size)` groups, group `i` taking every `n`-th layer from the
/// `i`-th (so pipeline stages get balanced groups); the last group of a bucket
/// may be padded.
pub(super) fn vllm_groups(layout: &ModelLayout) -> Vec<KvCacheGroup> {
    if layout.layers.windows(2).all(|w| w[0].kind == w[1].kind) {
        return single_group(layout);
    }
    let mut order: Vec<LayerKey> = Vec::new();
    let mut buckets: HashMap<LayerKey, Vec<u32>> = HashMap::new();
    for i in 0..layout.layers.len() {
        let k = key(layout, i);
        buckets
            .entry(k)
            .or_insert_with(|| {
                order.push(k);
                Vec::new()
            })
            .push(i as u32);
    }
    let sizes = order.iter().map(|k| buckets[k].len());
    let min = sizes.clone().min().expect("at least two buckets");
    let max = sizes.max().expect("at least two buckets");
    // max < 1.5 × min, in integers.
    let group_size = if 2 * max < 3 * min { max } else { min };
    let mut groups = Vec::new();
    for k in &order {
        let layers = &buckets[k];
        let num_groups = layers.len().div_ceil(group_size);
        for g in 0..num_groups {
            groups.push(KvCacheGroup {
                kind: k.kind,
                layers: layers.iter().copied().skip(g).step_by(num_groups).collect(),
                num_padded_layers: group_size as u32,
            });
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizing::{CacheSpec, KvDtype};

    fn layout(kinds: &[AttentionKind]) -> ModelLayout {
        let spec = CacheSpec::new(kinds.len() as u32, 8, 128, KvDtype::Bf16);
        ModelLayout::from_kinds(&spec, kinds).unwrap()
    }

    const SW: AttentionKind = AttentionKind::SlidingWindow { window: 4096 };
    const FULL: AttentionKind = AttentionKind::Full;

    #[test]
    fn uniform_model_is_one_group() {
        let g = vllm_groups(&layout(&[FULL; 5]));
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].num_layers(), g[0].num_padded_layers), (5, 5));
        let g = vllm_groups(&layout(&[SW; 3]));
        assert_eq!((g.len(), g[0].kind), (1, SW));
    }

    #[test]
    fn five_to_one_pattern_pads_nothing() {
        // Gemma 3's 5 sliding : 1 full, twice.
        let mut kinds = Vec::new();
        for _ in 0..2 {
            kinds.extend([SW; 5]);
            kinds.push(FULL);
        }
        let g = vllm_groups(&layout(&kinds));
        assert_eq!(g.len(), 6);
        assert!(g.iter().all(|g| g.num_padded_layers == 2 && g.num_layers() == 2));
        // Sliding layers 0 1 2 3 4 6 7 8 9 10 split in 5 groups, every 5th.
        assert_eq!(g[0].layers, [0, 6]);
        assert_eq!(g[4].layers, [4, 10]);
        assert_eq!((g[5].kind, g[5].layers.as_slice()), (FULL, &[5, 11][..]));
    }

    #[test]
    fn close_counts_use_the_larger_group_size() {
        // vLLM's example: 12 sliding + 13 full pads to (13, 13), not (12, 24).
        let mut kinds = vec![SW; 12];
        kinds.extend([FULL; 13]);
        let g = vllm_groups(&layout(&kinds));
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].num_layers(), g[0].num_padded_layers), (12, 13));
        assert_eq!(g[0].num_padding_layers(), 1);
        assert_eq!((g[1].num_layers(), g[1].num_padded_layers), (13, 13));
    }

    #[test]
    fn uneven_counts_pad_the_last_group_of_a_bucket() {
        // 2 full + 5 sliding: group size 2; sliding splits in 3 groups, the last padded.
        let kinds = [FULL, SW, SW, FULL, SW, SW, SW];
        let g = vllm_groups(&layout(&kinds));
        let shape: Vec<_> = g.iter().map(|g| (g.kind, g.layers.clone())).collect();
        assert_eq!(
            shape,
            [
                (FULL, vec![0, 3]),
                (SW, vec![1, 5]),
                (SW, vec![2, 6]),
                (SW, vec![4])
            ]
        );
        assert!(g.iter().all(|g| g.num_padded_layers == 2));
    }

    #[test]
    fn different_storage_is_a_different_bucket() {
        let spec = CacheSpec::new(4, 8, 128, KvDtype::Bf16);
        let mut l = ModelLayout::uniform(&spec);
        l.layers[1].num_kv_heads = 16;
        l.layers[1].head_dim_k = 64;
        l.layers[1].head_dim_v = 64;
        // One kind: one group whatever the shapes (vLLM's UniformTypeKVCacheSpecs).
        assert_eq!(vllm_groups(&l).len(), 1);
        l.layers[3].kind = SW;
        let g = vllm_groups(&l);
        // Buckets: full 8×128 (layers 0, 2), full 16×64 (1), sliding (3): group size 1.
        let layers: Vec<_> = g.iter().map(|g| g.layers.clone()).collect();
        assert_eq!(layers, [vec![0], vec![2], vec![1], vec![3]]);
        // Same page size (16 × 64 = 8 × 128), so one pool works.
        assert!(check_page_sizes(&l, 16).is_ok());
        l.layers[1].num_kv_heads = 4;
        let err = check_page_sizes(&l, 16).unwrap_err();
        assert!(
            matches!(err, PlanError::PageSizeMismatch { layer_b: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("page size"), "{err}");
    }

    #[test]
    fn tensor_parallel_can_merge_storage() {
        // 8 and 16 KV heads are both one head per rank at tp = 16.
        let spec = CacheSpec::new(3, 8, 128, KvDtype::Bf16).with_tensor_parallel(16);
        let mut l = ModelLayout::uniform(&spec);
        l.layers[1].num_kv_heads = 16;
        l.layers[2].kind = SW;
        let g = vllm_groups(&l);
        // One full bucket of 2 and a sliding one of 1: group size 1.
        let layers: Vec<_> = g.iter().map(|g| (g.kind, g.layers.clone())).collect();
        assert_eq!(layers, [(FULL, vec![0]), (FULL, vec![1]), (SW, vec![2])]);
    }

    #[test]
    fn empty_groups_are_refused() {
        let g = KvCacheGroup {
            kind: SW,
            layers: vec![],
            num_padded_layers: 2,
        };
        let err = g.validate().unwrap_err();
        assert_eq!(err, PlanError::EmptyGroup { kind: SW });
        assert!(err.to_string().contains("sliding_window(4096)"), "{err}");
        let over = KvCacheGroup {
            kind: FULL,
            layers: vec![0, 1, 2],
            num_padded_layers: 2,
        };
        assert!(over
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_padded_layers"));
    }
}
