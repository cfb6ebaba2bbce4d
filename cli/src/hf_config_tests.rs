//! Reading the shipped configs and malformed ones (`hf_config.rs`).

use super::*;

fn fixture(name: &str) -> ModelConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data/configs")
        .join(format!("{name}.json"));
    ModelConfig::from_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn qwen2_vl_2b() {
    let c = fixture("Qwen2-VL-2B-Instruct");
    assert_eq!(c.section, None);
    assert_eq!((c.num_layers, c.num_attention_heads, c.num_kv_heads), (28, 12, 2));
    assert_eq!((c.head_dim, c.head_dim_derived), (128, true)); // 1536 / 12
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
    assert_eq!(c.max_position_embeddings, Some(32_768));
    assert_eq!(c.mla, None);
    // sliding_window is 32768 but use_sliding_window is false.
    assert_eq!(c.sliding_window, None);
    assert!(c.tie_word_embeddings);
    assert!(c.has_vision);
    assert_eq!((c.intermediate_size, c.vocab_size), (Some(8_960), Some(151_936)));
}

#[test]
fn qwen2_5_7b() {
    let c = fixture("Qwen2.5-7B-Instruct");
    assert_eq!((c.num_layers, c.num_attention_heads, c.num_kv_heads), (28, 28, 4));
    assert_eq!(c.head_dim, 128); // 3584 / 28
    assert_eq!(c.hidden_size, Some(3_584));
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
    assert_eq!(c.sliding_window, None);
    assert!(!c.tie_word_embeddings);
    assert!(!c.has_vision);
}

#[test]
fn llama_3_1_8b() {
    let c = fixture("Llama-3.1-8B-Instruct");
    assert_eq!((c.num_layers, c.num_attention_heads, c.num_kv_heads), (32, 32, 8));
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.max_position_embeddings, Some(131_072));
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
    assert_eq!((c.mla, c.sliding_window, c.moe), (None, None, None));
}

#[test]
fn mistral_7b_reports_its_sliding_window() {
    let c = fixture("Mistral-7B-v0.1");
    assert_eq!((c.num_layers, c.num_attention_heads, c.num_kv_heads), (32, 32, 8));
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.sliding_window, Some(4_096));
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
}

#[test]
fn deepseek_v2_lite_is_mla_and_moe() {
    let c = fixture("DeepSeek-V2-Lite");
    assert_eq!(c.num_layers, 27);
    assert_eq!(
        c.mla,
        Some(MlaSpec {
            kv_lora_rank: 512,
            qk_rope_head_dim: 64
        })
    );
    let p = c.mla_projections.unwrap();
    assert_eq!(
        (p.q_lora_rank, p.qk_nope_head_dim, p.v_head_dim),
        (None, 128, 128)
    );
    let moe = c.moe.unwrap();
    assert_eq!((moe.num_experts, moe.expert_intermediate_size), (64, 1_408));
    assert_eq!((moe.shared_intermediate_size, moe.dense_layers), (2 * 1_408, 1));
    assert_eq!(c.max_position_embeddings, Some(163_840));
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
}

#[test]
fn nested_text_config_with_top_level_dtype() {
    let json = r#"{
        "model_type": "llava",
        "torch_dtype": "float16",
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24},
        "text_config": {
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": null,
            "hidden_size": 4096, "max_position_embeddings": 4096, "head_dim": null
        }
    }"#;
    let c = ModelConfig::from_json(json, "llava.json").unwrap();
    assert_eq!(c.section, Some("text_config"));
    assert_eq!(
        (c.num_layers, c.num_kv_heads, c.kv_heads_defaulted),
        (32, 32, true)
    );
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::F16));
    assert_eq!(c.max_position_embeddings, Some(4_096));
    assert!(c.has_vision);
}

#[test]
fn nested_llm_config_and_new_dtype_key() {
    let json = r#"{
        "llm_config": {
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
            "head_dim": 64, "dtype": "bfloat16", "sliding_window": 2048
        }
    }"#;
    let c = ModelConfig::from_json(json, "internvl.json").unwrap();
    assert_eq!(c.section, Some("llm_config"));
    assert_eq!((c.num_layers, c.num_kv_heads, c.head_dim), (24, 8, 64));
    assert_eq!(c.model_dtype().unwrap(), Some(KvDtype::Bf16));
    assert_eq!(c.sliding_window, Some(2_048));
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"num_attention_heads": 8}"#, "num_hidden_layers"),
        (
            r#"{"text_config": {"num_attention_heads": 8}}"#,
            "text_config.num_hidden_layers",
        ),
        (
            r#"{"num_hidden_layers": "28", "num_attention_heads": 8}"#,
            "num_hidden_layers",
        ),
        (
            r#"{"num_hidden_layers": 28, "num_attention_heads": 8}"#,
            "head_dim",
        ),
        (
            r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 64, "kv_lora_rank": 512}"#,
            "qk_rope_head_dim",
        ),
        (
            r#"{"num_hidden_layers": -2, "num_attention_heads": 8}"#,
            "num_hidden_layers",
        ),
        (r#"[1, 2]"#, "--config"),
        (r#"{"num_hidden_layers": 2,"#, "--config"),
    ];
    for (json, field) in cases {
        let err = ModelConfig::from_json(json, "c.json").unwrap_err();
        assert_eq!(err.field, field, "{json}: {err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
    let odd = ModelConfig::from_json(
        r#"{"num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 64, "torch_dtype": "float4"}"#,
        "c.json",
    )
    .unwrap();
    assert_eq!(odd.model_dtype().unwrap_err().field, "torch_dtype");
}

#[test]
fn missing_file_is_an_input_error() {
    let err = ModelConfig::from_file(Path::new("/nonexistent/config.json")).unwrap_err();
    assert_eq!(err.field, "--config");
    assert!(err.reason.contains("/nonexistent/config.json"));
}

#[test]
fn hybrid_fields_of_the_new_configs() {
    let gpt = fixture("gpt-oss-20b");
    assert_eq!(gpt.layer_types.as_ref().map(Vec::len), Some(24));
    assert_eq!(gpt.sliding_window, Some(128));
    assert_eq!(gpt.rope.as_ref().map(|r| r.rope_type.as_str()), Some("yarn"));
    let scout = fixture("Llama-4-Scout-17B-16E-Instruct");
    assert_eq!(scout.section, Some("text_config"));
    assert_eq!(scout.model_type.as_deref(), Some("llama4"));
    assert_eq!(scout.text_model_type.as_deref(), Some("llama4_text"));
    assert_eq!(scout.attention_chunk_size, Some(8192));
    // An empty no_rope_layers means transformers' default pattern.
    assert_eq!(scout.no_rope_layers, None);
    assert_eq!(
        (scout.num_layers, scout.num_attention_heads, scout.num_kv_heads),
        (48, 40, 8)
    );
    let gemma = fixture("gemma-2-9b");
    assert_eq!(gemma.torch_dtype.as_deref(), Some("float32"));
    assert_eq!(
        (gemma.head_dim, gemma.sliding_window, gemma.layer_types.clone()),
        (256, Some(4096), None)
    );
    let qwen3 = fixture("Qwen3-32B");
    assert_eq!(
        (qwen3.num_layers, qwen3.num_kv_heads, qwen3.head_dim),
        (64, 8, 128)
    );
    assert_eq!(qwen3.sliding_window, None);
    assert_eq!(qwen3.max_len_keys, [("max_position_embeddings", 40_960)]);
}

#[test]
fn malformed_hybrid_fields_name_the_field() {
    let base = r#""num_hidden_layers": 2, "num_attention_heads": 8, "head_dim": 64"#;
    for (extra, field) in [
        (r#""layer_types": "sliding_attention""#, "layer_types"),
        (r#""layer_types": [1, 2]"#, "layer_types"),
        (r#""no_rope_layers": [1, -1]"#, "no_rope_layers"),
        (r#""rope_scaling": 8"#, "rope_scaling"),
        (r#""sliding_window": "4k""#, "sliding_window"),
    ] {
        let json = format!("{{{base}, {extra}}}");
        let err = ModelConfig::from_json(&json, "c.json").unwrap_err();
        assert_eq!(err.field, field, "{json}: {err}");
    }
    // vLLM reads a sliding window of 0 as none.
    let c = ModelConfig::from_json(&format!("{{{base}, \"sliding_window\": 0}}"), "c.json").unwrap();
    assert_eq!(c.sliding_window, None);
}
