//! A model as a list of layers, each with its attention kind and the shape it
//! stores a token in: what a hybrid model (sliding-window, chunked-local and
//! full layers side by side) needs beyond a [`CacheSpec`].

use std::ops::Range;

use crate::error::PlanError;

use super::{AttentionKind, CacheSpec, KvDtype, MlaSpec};

/// One transformer layer's KV cache: which tokens it reads and how it stores one.
///
/// ```
/// use pagedkv::{AttentionKind, LayerSpec};
/// let layer = LayerSpec::heads(AttentionKind::SlidingWindow { window: 128 }, 8, 64);
/// assert_eq!((layer.num_kv_heads, layer.head_dim_k, layer.head_dim_v), (8, 64, 64));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerSpec {
    /// Which earlier tokens the layer reads.
    pub kind: AttentionKind,
    /// Key/value heads; ignored under MLA.
    pub num_kv_heads: u32,
    /// Elements per key head; ignored under MLA.
    pub head_dim_k: u32,
    /// Elements per value head; ignored under MLA.
    pub head_dim_v: u32,
    /// Multi-head latent attention, replacing the per-head K/V pair when set.
    pub mla: Option<MlaSpec>,
}

impl LayerSpec {
    /// A layer of `num_kv_heads` heads of `head_dim` (keys and values alike).
    pub const fn heads(kind: AttentionKind, num_kv_heads: u32, head_dim: u32) -> Self {
        LayerSpec {
            kind,
            num_kv_heads,
            head_dim_k: head_dim,
            head_dim_v: head_dim,
            mla: None,
        }
    }
}

/// A model's layers in order, with the element type and parallelism they
/// share: the input of a hybrid [`CachePlan`](super::CachePlan).
///
/// ```
/// use pagedkv::{AttentionKind, CacheSpec, KvDtype, ModelLayout};
/// // gpt-oss-20b: 24 layers of 8 KV heads × 64, sliding (128 tokens) and full alternating.
/// let kinds: Vec<_> = (0..24)
///     .map(|i| if i % 2 == 0 { AttentionKind::SlidingWindow { window: 128 } } else { AttentionKind::Full })
///     .collect();
/// let layout = ModelLayout::from_kinds(&CacheSpec::new(24, 8, 64, KvDtype::Bf16), &kinds).unwrap();
/// assert_eq!(layout.layers.len(), 24);
/// assert_eq!(layout.bytes_per_token(), 24 * 8 * 128 * 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelLayout {
    /// The layers holding a KV cache, in model order.
    pub layers: Vec<LayerSpec>,
    /// Element type of the cache.
    pub dtype: KvDtype,
    /// Attention (query) heads, when known: tensor parallelism must divide them.
    pub num_attention_heads: Option<u32>,
    /// Tensor-parallel ranks (GPUs sharing every layer).
    pub tensor_parallel_size: u32,
    /// Pipeline-parallel stages (GPUs splitting the layers).
    pub pipeline_parallel_size: u32,
}

impl ModelLayout {
    /// Every layer of `spec` with full attention (a uniform model).
    pub fn uniform(spec: &CacheSpec) -> Self {
        let layer = LayerSpec {
            kind: AttentionKind::Full,
            num_kv_heads: spec.num_kv_heads,
            head_dim_k: spec.head_dim_k,
            head_dim_v: spec.head_dim_v,
            mla: spec.mla,
        };
        ModelLayout {
            layers: vec![layer; spec.num_layers as usize],
            dtype: spec.dtype,
            num_attention_heads: None,
            tensor_parallel_size: spec.tensor_parallel_size,
            pipeline_parallel_size: spec.pipeline_parallel_size,
        }
    }

    /// The layers of `spec`, layer `i` reading as `kinds[i]`; the lists must be
    /// as long as `spec.num_layers`.
    pub fn from_kinds(spec: &CacheSpec, kinds: &[AttentionKind]) -> Result<Self, PlanError> {
        if kinds.len() != spec.num_layers as usize {
            return Err(PlanError::InvalidConfig {
                field: "layer kinds",
                reason: format!(
                    "{} attention kinds given for {} layers; give one kind per layer",
                    kinds.len(),
                    spec.num_layers
                ),
            });
        }
        let mut layout = Self::uniform(spec);
        for (layer, &kind) in layout.layers.iter_mut().zip(kinds) {
            layer.kind = kind;
        }
        Ok(layout)
    }

    /// The same layout with every layer read as full attention (what vLLM does
    /// with `--disable-sliding-window`, and how its V0 engine sized every model).
    pub fn all_full(&self) -> Self {
        let mut out = self.clone();
        for layer in &mut out.layers {
            layer.kind = AttentionKind::Full;
        }
        out
    }

    /// The same layout with another element type.
    pub fn with_dtype(&self, dtype: KvDtype) -> Self {
        ModelLayout {
            dtype,
            ..self.clone()
        }
    }

    /// The same layout split over `tp` tensor-parallel ranks.
    pub fn with_tensor_parallel(&self, tp: u32) -> Self {
        ModelLayout {
            tensor_parallel_size: tp,
            ..self.clone()
        }
    }

    /// Layer `i`'s storage as a one-layer [`CacheSpec`] (its per-token arithmetic
    /// and checks), on one pipeline stage; `None` past the last layer.
    pub fn layer_spec(&self, i: usize) -> Option<CacheSpec> {
        self.layers.get(i).map(|l| self.spec_of(l))
    }

    /// [`Self::layer_spec`] of a layer known to exist.
    pub(crate) fn spec_at(&self, i: usize) -> CacheSpec {
        self.spec_of(&self.layers[i])
    }

    fn spec_of(&self, l: &LayerSpec) -> CacheSpec {
        CacheSpec {
            num_layers: 1,
            num_kv_heads: l.num_kv_heads,
            head_dim_k: l.head_dim_k,
            head_dim_v: l.head_dim_v,
            dtype: self.dtype,
            mla: l.mla,
            tensor_parallel_size: self.tensor_parallel_size,
            pipeline_parallel_size: 1,
        }
    }

    /// The first layer's storage with every layer counted: the [`CacheSpec`] of
    /// a uniform model (exact when all layers store tokens alike).
    pub fn representative_spec(&self) -> CacheSpec {
        let first = self
            .layers
            .first()
            .copied()
            .unwrap_or(LayerSpec::heads(AttentionKind::Full, 0, 0));
        CacheSpec {
            num_layers: self.layers.len() as u32,
            num_kv_heads: first.num_kv_heads,
            head_dim_k: first.head_dim_k,
            head_dim_v: first.head_dim_v,
            dtype: self.dtype,
            mla: first.mla,
            tensor_parallel_size: self.tensor_parallel_size,
            pipeline_parallel_size: self.pipeline_parallel_size,
        }
    }

    /// Bytes one block of `block_size` tokens of layer `i` takes on one GPU
    /// (its page); `None` past the last layer.
    pub fn page_bytes(&self, i: usize, block_size: u32) -> Option<u64> {
        self.layer_spec(i).map(|spec| spec.bytes_per_block(block_size))
    }

    /// [`Self::page_bytes`] of a layer known to exist.
    pub(crate) fn page_bytes_at(&self, i: usize, block_size: u32) -> u64 {
        self.spec_at(i).bytes_per_block(block_size)
    }

    /// The layers pipeline stage `stage` holds, split as vLLM's `get_pp_indices`
    /// does: equal parts, the remainder spread one layer each over the stages
    /// before the last (so the largest stage has `ceil(layers / stages)`).
    ///
    /// ```
    /// # use pagedkv::{CacheSpec, KvDtype, ModelLayout};
    /// let layout = ModelLayout::uniform(&CacheSpec::new(28, 2, 128, KvDtype::Bf16).with_pipeline_parallel(3));
    /// assert_eq!([layout.stage_layers(0), layout.stage_layers(1), layout.stage_layers(2)], [0..9, 9..19, 19..28]);
    /// ```
    pub fn stage_layers(&self, stage: u32) -> Range<usize> {
        let n = self.layers.len();
        let pp = self.pipeline_parallel_size.max(1) as usize;
        if stage as usize >= pp {
            return n..n; // (no such stage: no layers)
        }
        let (stage, base, remaining) = (stage as usize, n / pp, n % pp);
        // Stages pp-1-remaining .. pp-2 (the last excepted) get one more layer
        // each: the stages before this one hold `stage × base` layers and one
        // more per such stage among them.
        let first_extra = (pp - 1).saturating_sub(remaining);
        let extra = |s: usize| usize::from(remaining > 0 && s + 1 < pp && s >= first_extra);
        let start = stage * base
            + if remaining > 0 {
                stage.saturating_sub(first_extra)
            } else {
                0
            };
        start..start + base + extra(stage)
    }

    /// Bytes one token takes in every layer of the largest pipeline stage, on
    /// one GPU (saturating; in time linear in the layers, whatever the stages).
    pub fn bytes_per_token(&self) -> u64 {
        let pp = self.pipeline_parallel_size.max(1);
        let layer = |i: usize| self.spec_at(i).bytes_per_token();
        if pp as usize > self.layers.len() {
            // One layer per stage at most.
            return (0..self.layers.len()).map(layer).max().unwrap_or(0);
        }
        (0..pp)
            .map(|s| self.stage_layers(s).map(layer).fold(0u64, u64::saturating_add))
            .max()
            .unwrap_or(0)
    }

    /// Checks every layer and the parallelism; the error names the field.
    pub fn validate(&self) -> Result<(), PlanError> {
        let bad = |field: &'static str, reason: String| Err(PlanError::InvalidConfig { field, reason });
        if self.layers.is_empty() || self.layers.len() > super::MAX_LAYERS as usize {
            return bad(
                "num_layers",
                format!("{} is outside 1..={}", self.layers.len(), super::MAX_LAYERS),
            );
        }
        if self.pipeline_parallel_size == 0 {
            return bad("pipeline_parallel_size", "must be at least 1".into());
        }
        if self.pipeline_parallel_size as usize > self.layers.len() {
            return bad(
                "pipeline_parallel_size",
                format!(
                    "{} pipeline stages exceed the model's {} layers",
                    self.pipeline_parallel_size,
                    self.layers.len()
                ),
            );
        }
        if let Some(heads) = self.num_attention_heads {
            let tp = self.tensor_parallel_size;
            if tp > 0 && heads % tp != 0 {
                return bad(
                    "tensor_parallel_size",
                    format!(
                        "{tp} ranks cannot split the model's {heads} attention heads; use a tensor-parallel size that divides {heads}"
                    ),
                );
            }
        }
        for (i, layer) in self.layers.iter().enumerate() {
            layer.kind.validate()?;
            self.spec_at(i).validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_vllms_partition() {
        // vLLM: 28 layers over 3 stages -> [9, 10, 9]; 30 over 4 -> [7, 8, 8, 7].
        let layout = |n, pp| {
            ModelLayout::uniform(&CacheSpec::new(n, 2, 128, KvDtype::Bf16).with_pipeline_parallel(pp))
        };
        let sizes = |l: &ModelLayout| {
            (0..l.pipeline_parallel_size)
                .map(|s| l.stage_layers(s).len())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(&layout(28, 3)), [9, 10, 9]);
        assert_eq!(sizes(&layout(30, 4)), [7, 8, 8, 7]);
        assert_eq!(sizes(&layout(32, 4)), [8, 8, 8, 8]);
        assert_eq!(sizes(&layout(5, 1)), [5]);
        for (n, pp) in [(7, 2), (9, 4), (61, 8), (3, 3)] {
            let l = layout(n, pp);
            let ranges: Vec<_> = (0..pp).map(|s| l.stage_layers(s)).collect();
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().unwrap().end, n as usize);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert_eq!(
                ranges.iter().map(|r| r.len()).max().unwrap(),
                (n as usize).div_ceil(pp as usize)
            );
        }
    }

    #[test]
    fn bytes_per_token_matches_the_uniform_spec() {
        for pp in [1, 2, 3] {
            let spec = CacheSpec::new(28, 8, 128, KvDtype::Bf16).with_pipeline_parallel(pp);
            assert_eq!(
                ModelLayout::uniform(&spec).bytes_per_token(),
                spec.bytes_per_token()
            );
        }
    }

    #[test]
    fn kinds_must_cover_every_layer() {
        let spec = CacheSpec::new(4, 2, 64, KvDtype::Bf16);
        let err = ModelLayout::from_kinds(&spec, &[AttentionKind::Full; 3]).unwrap_err();
        assert!(
            err.to_string().contains("3 attention kinds given for 4 layers"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let spec = CacheSpec::new(4, 8, 64, KvDtype::Bf16);
        let mut l = ModelLayout::uniform(&spec);
        l.num_attention_heads = Some(12);
        assert!(l.with_tensor_parallel(4).validate().is_ok());
        let err = l.with_tensor_parallel(8).validate().unwrap_err();
        assert!(err.to_string().contains("12 attention heads"), "{err}");
        let mut empty = l.clone();
        empty.layers.clear();
        assert!(empty.validate().unwrap_err().to_string().contains("num_layers"));
        let mut zero = l.clone();
        zero.layers[2].kind = AttentionKind::SlidingWindow { window: 0 };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sliding_window"));
    }
}
