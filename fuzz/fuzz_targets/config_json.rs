//! Fuzzes `pagedkv plan`'s reading of a Hugging Face `config.json`
//! (`ModelConfig::from_json`) and everything the plan does with what it read:
//! flag resolution against the config (`plan::resolve_with`), the plan
//! (`plan::compute`, both engines, hybrid groups, tensor and pipeline
//! parallelism, `--max-model-len auto`'s search) and its text and JSON reports.
//!
//! The first four bytes choose the flags; the rest is the config's text.
//! Checks: nothing panics; an error names a flag or config field and says
//! why (a one-line message).
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run config_json -s none` (in `fuzz/`;
//! seed the corpus from `data/configs/`, see the README's Fuzzing section).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pagedkv::KvDtype;
use pagedkv_cli::args::{DtypeChoice, Engine, MaxModelLen, MemoryArgs, ModelArgs, PlanArgs};
use pagedkv_cli::error::InputError;
use pagedkv_cli::gpus::GPUS;
use pagedkv_cli::hf_config::ModelConfig;
use pagedkv_cli::{plan, report};

fn check(e: &InputError) {
    let message = e.to_string();
    assert!(!e.field.is_empty() && !e.reason.is_empty(), "{e:?}");
    assert!(!message.contains('\n'), "one line: {message}");
}

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let config = match ModelConfig::from_json(text, "fuzz.json") {
        Ok(c) => c,
        Err(e) => return check(&e),
    };
    let [a, b, c, d] = *flags;
    let args = PlanArgs {
        engine: if a & 1 == 0 {
            Engine::VllmV1
        } else {
            Engine::VllmV0
        },
        model: ModelArgs {
            config: Some("fuzz.json".into()),
            kv_dtype: match (a >> 1) & 3 {
                0 => DtypeChoice::Auto,
                1 => DtypeChoice::Dtype(KvDtype::Fp8E4m3),
                2 => DtypeChoice::Dtype(KvDtype::F32),
                _ => DtypeChoice::Dtype(KvDtype::Bf16),
            },
            block_size: [16, 32, 1, 7][((a >> 3) & 3) as usize],
            allow_non_cuda_block_size: a & 0x20 != 0,
            tensor_parallel_size: [1, 2, 4, 8, 3][(b % 5) as usize],
            pipeline_parallel_size: [1, 2, 3][((b / 5) % 3) as usize],
            disable_sliding_window: a & 0x40 != 0,
            ..ModelArgs::default()
        },
        memory: MemoryArgs {
            gpu: Some(GPUS[(c % GPUS.len() as u8) as usize]),
            kv_cache_memory: (c & 0x80 != 0).then_some((d as u64 + 1) << 26),
            ..MemoryArgs::default()
        },
        max_model_len: match d % 4 {
            0 => None,
            1 => Some(MaxModelLen::Auto),
            2 => Some(MaxModelLen::Tokens((d as u64) << 8)),
            _ => Some(MaxModelLen::Tokens(1 << 20)),
        },
        allow_long_max_model_len: a & 0x80 != 0,
        max_num_seqs: (b & 0x80 != 0).then_some(b as u64 & 0x3f),
        no_async_scheduling: d & 0x10 != 0,
        disable_hybrid_kv_cache_manager: d & 0x20 != 0,
        ..PlanArgs::default()
    };
    match plan::resolve_with(&args, Some(&config)).and_then(plan::compute) {
        Ok(r) => {
            let _ = report::render_text(&r);
            let _ = report::render_json(&r);
        }
        Err(e) => check(&e),
    }
});
