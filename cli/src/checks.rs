//! The start-up checks vLLM makes on the inputs `pagedkv plan` takes, so that
//! a plan vLLM would refuse is refused here too (exit 2, naming the flag), and
//! the notes on what the plan cannot know.

use pagedkv::{AttentionKind, ModelLayout};

use crate::args::{Engine, PlanArgs};
use crate::error::InputError;
use crate::vllm_model::DerivedMaxLen;

/// The block size: at least 1, and under vllm-v1 a multiple of 16, the kernel
/// block every CUDA attention backend of vLLM 0.33.0 takes (FlashAttention,
/// FlashInfer, Triton: `get_supported_kernel_block_sizes`), unless the plan is
/// for another backend.
pub fn block_size(args: &PlanArgs) -> Result<(), InputError> {
    let bs = args.model.block_size;
    if bs == 0 {
        return Err(InputError::new(
            "--block-size",
            "must be at least 1 token; 16 is the usual choice",
        ));
    }
    if args.engine == Engine::VllmV1 && bs % 16 != 0 && !args.model.allow_non_cuda_block_size {
        return Err(InputError::new(
            "--block-size",
            format!(
                "{bs} is not a multiple of 16: no CUDA attention backend of vLLM 0.33.0 takes it (FlashAttention, FlashInfer and Triton need multiples of 16); use 16, 32, 64, ..., or pass --allow-non-cuda-block-size to plan for another backend"
            ),
        ));
    }
    Ok(())
}

/// A given `--max-model-len` above what the config allows is refused, as vLLM
/// refuses it (`_get_and_verify_max_len`), unless `--allow-long-max-model-len`.
pub fn max_model_len(n: u64, derived: Option<&DerivedMaxLen>, allow_long: bool) -> Result<(), InputError> {
    match derived {
        Some(d) if n > d.tokens && !allow_long => Err(InputError::new(
            "--max-model-len",
            format!(
                "{n} is greater than the model's derived max_model_len ({}={} in its config.json), which vLLM refuses; use at most {}, or pass --allow-long-max-model-len (vLLM: VLLM_ALLOW_LONG_MAX_MODEL_LEN=1) if the model really handles longer sequences",
                d.source, d.tokens, d.tokens
            ),
        )),
        _ => Ok(()),
    }
}

/// What a vllm-v1 plan assumes that vLLM decides at start-up.
pub fn engine_notes(args: &PlanArgs, layout: &ModelLayout, notes: &mut Vec<String>) {
    if args.engine != Engine::VllmV1 {
        return;
    }
    if layout.layers.iter().any(|l| l.mla.is_some()) {
        notes.push(format!(
            "MLA: vLLM's MLA attention backends may choose their own block size (FlashMLA: 64) when --block-size is not given to vLLM; this plan uses {} (its log says which)",
            args.model.block_size
        ));
    }
    let hybrid = layout.layers.iter().any(|l| l.kind != AttentionKind::Full);
    if hybrid && args.disable_hybrid_kv_cache_manager {
        notes.push("--disable-hybrid-kv-cache-manager: vLLM sizes the sliding-window and chunked layers of a model with full-attention layers as full attention".to_string());
    }
    if hybrid && args.model.pipeline_parallel_size > 1 && !args.no_async_scheduling {
        notes.push(format!(
            "pipeline parallelism with async scheduling: vLLM's V2 model runner keeps {} batches in flight (its V1 runner turns async scheduling off: pass --no-async-scheduling)",
            args.model.pipeline_parallel_size + 1
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{ModelArgs, PlanArgs};

    fn args(engine: Engine, bs: u32, allow: bool) -> PlanArgs {
        PlanArgs {
            engine,
            model: ModelArgs {
                block_size: bs,
                allow_non_cuda_block_size: allow,
                ..ModelArgs::default()
            },
            ..PlanArgs::default()
        }
    }

    #[test]
    fn block_sizes_cuda_backends_take() {
        assert!(block_size(&args(Engine::VllmV1, 16, false)).is_ok());
        assert!(block_size(&args(Engine::VllmV1, 48, false)).is_ok());
        let err = block_size(&args(Engine::VllmV1, 8, false)).unwrap_err();
        assert_eq!(err.field, "--block-size");
        assert!(err.reason.contains("not a multiple of 16"), "{err}");
        assert!(block_size(&args(Engine::VllmV1, 8, true)).is_ok());
        assert!(block_size(&args(Engine::VllmV0, 8, false)).is_ok());
        assert!(block_size(&args(Engine::VllmV0, 0, false)).is_err());
    }

    #[test]
    fn long_max_model_len_needs_the_flag() {
        let d = DerivedMaxLen {
            tokens: 32_768,
            source: "max_position_embeddings".into(),
        };
        assert!(max_model_len(32_768, Some(&d), false).is_ok());
        let err = max_model_len(60_000, Some(&d), false).unwrap_err();
        assert!(err.reason.contains("max_position_embeddings=32768"), "{err}");
        assert!(max_model_len(60_000, Some(&d), true).is_ok());
        assert!(max_model_len(60_000, None, false).is_ok());
    }
}
