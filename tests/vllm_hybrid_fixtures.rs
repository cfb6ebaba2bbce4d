//! Hybrid prefix caching (KV cache groups) decides as vLLM 0.33.0 does: every
//! scenario of `tests/fixtures/vllm_0.33.0/hybrid_prefix.json` (made by vLLM's
//! own `KVCacheManager`, `HybridKVCacheCoordinator` / `UnitaryKVCacheCoordinator`
//! and `BlockPool` through `tools/vllm_oracle/gen_hybrid_fixtures.py`) is
//! replayed through pagedkv's public API, one engine step per operation
//! (`drain_ops` after each), and after every operation pagedkv must give
//! vLLM's numbers: the hit (`cached_tokens`) of every new request, whether an
//! allocation or a decode is refused, the blocks every live sequence holds in
//! every group (what window groups released), and the pool's free blocks.
//!
//! The one mapping: vLLM's pool keeps block 0 as its null block, so
//! pagedkv's pool is `vllm_num_gpu_blocks - 1` blocks (vLLM's free count never
//! includes the null block either).

use std::collections::BTreeMap;
use std::path::Path;

use pagedkv::{AttentionKind, BlockOps, KvCacheConfig, KvCacheManager, PrefixKeys, SeqId, TokenId};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm_0.33.0/hybrid_prefix.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn kind(g: &Value) -> AttentionKind {
    let n = |k: &str| g[k].as_u64().unwrap_or_else(|| panic!("group {g} lacks {k}")) as u32;
    match g["kind"].as_str().unwrap() {
        "full" => AttentionKind::Full,
        "sliding_window" => AttentionKind::SlidingWindow { window: n("window") },
        "chunked_local" => AttentionKind::ChunkedLocal { chunk: n("chunk") },
        other => panic!("unknown group kind {other} in the fixture: teach this test about it"),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// What one scenario covered, to check that no kind of step went unchecked.
#[derive(Default)]
struct Coverage {
    allocations: usize,
    hits: usize,
    refused_allocations: usize,
    decodes: usize,
    refused_decodes: usize,
    frees: usize,
    held_checks: usize,
    /// Some live sequence held fewer blocks in a window group than in full length.
    releases_seen: bool,
    /// Hits a window group lowered below what the full-attention group has cached.
    lowered_by_window: usize,
    /// Steps compared (all of them unless the scenario parted at a free
    /// redundant copy of vLLM's, see `replay`).
    compared: usize,
    /// Where the scenario parted: the step, the first step vLLM held a free
    /// redundant copy, and what differed first.
    parted: Option<(usize, usize, String)>,
}

/// Replays one scenario; returns the mismatches (empty when pagedkv agrees).
fn replay(s: &Value, block_size: u32, max_model_len: u32, cov: &mut Coverage) -> Vec<String> {
    let name = s["name"].as_str().unwrap();
    let groups: Vec<AttentionKind> = s["groups"].as_array().unwrap().iter().map(kind).collect();
    let vllm_blocks = u(&s["vllm_num_gpu_blocks"]) as u32;
    let mut kv = KvCacheManager::new(KvCacheConfig {
        // vLLM's null block is one of its `num_gpu_blocks`; pagedkv keeps none.
        num_blocks: vllm_blocks - 1,
        block_size,
        max_model_len,
        watermark: 0.0,
        enable_prefix_caching: true,
        groups: groups.clone(),
        ..Default::default()
    })
    .unwrap();
    let keys = PrefixKeys::default();
    let mut ops = BlockOps::default();
    let mut bad = Vec::new();
    let mut live: BTreeMap<u64, ()> = BTreeMap::new();
    // The first step after which vLLM held a free redundant copy: from the
    // next step on, vLLM and pagedkv may part by design (see the README's
    // hybrid section): vLLM keeps every copy of content computed twice
    // cached (its BlockHashToBlockMap does not deduplicate), its hit takes
    // the first copy cached even when it is free and another is in use, and
    // the free copy keeps its place in the eviction order; pagedkv keeps one
    // cached copy and reuses the other first.
    let mut redundant_since: Option<usize> = None;
    let steps = s["steps"].as_array().unwrap();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{name} step {i} ({})", step["op"]);
        let bad_before = bad.len();
        match step["op"].as_str().unwrap() {
            "allocate" => {
                let seq = u(&step["seq"]);
                let prompt: Vec<TokenId> = step["prompt"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| u(t) as TokenId)
                    .collect();
                let (want_hit, want_refused) = (u(&step["hit_tokens"]), step["refused"].as_bool().unwrap());
                let before = kv.cached_prefix_len(&prompt, &keys);
                // Each full-attention group's own hit (the leading run it has cached).
                if let Some(per_group) = step.get("group_hit_tokens") {
                    let per_group: Vec<u64> = per_group.as_array().unwrap().iter().map(u).collect();
                    for (g, kind) in groups.iter().enumerate() {
                        if *kind != AttentionKind::Full {
                            continue;
                        }
                        let got = kv.cached_prefix_len_in_group(&prompt, &keys, g as u32);
                        if got != per_group[g] {
                            bad.push(format!("{at}: group {g} alone hits {got}, vLLM {}", per_group[g]));
                        }
                        cov.lowered_by_window += (u(&step["hit_tokens"]) < per_group[g]) as usize;
                    }
                }
                let got = kv.allocate(SeqId(seq), &prompt);
                let (hit, refused) = match &got {
                    Ok(a) => (a.cached_tokens as u64, false),
                    Err(_) => (before, true),
                };
                if before != hit {
                    bad.push(format!("{at}: cached_prefix_len {before} but allocate hit {hit}"));
                }
                if (hit, refused) != (want_hit, want_refused) {
                    bad.push(format!(
                        "{at}: seq {seq} prompt {} tokens: pagedkv hit {hit} refused {refused} ({got:?}), vLLM hit {want_hit} refused {want_refused}",
                        prompt.len()
                    ));
                }
                cov.allocations += 1;
                cov.hits += (want_hit > 0) as usize;
                cov.refused_allocations += want_refused as usize;
                if got.is_ok() {
                    live.insert(seq, ());
                }
            }
            "decode" => {
                let seq = u(&step["seq"]);
                let token = u(&step["token"]) as TokenId;
                let want_refused = step["refused"].as_bool().unwrap();
                if !live.contains_key(&seq) {
                    bad.push(format!(
                        "{at}: seq {seq} is not live in pagedkv (replay stops here)"
                    ));
                    return bad;
                }
                let got = kv.append(SeqId(seq), &[token]);
                if got.is_err() != want_refused {
                    bad.push(format!(
                        "{at}: seq {seq}: pagedkv {got:?}, vLLM refused {want_refused}"
                    ));
                }
                if got.is_err() {
                    // vLLM's scheduler preempts a sequence it cannot grow (the fixture frees it).
                    kv.free(SeqId(seq)).unwrap();
                    live.remove(&seq);
                }
                cov.decodes += 1;
                cov.refused_decodes += want_refused as usize;
            }
            "free" => {
                let seq = u(&step["seq"]);
                if !live.contains_key(&seq) {
                    bad.push(format!(
                        "{at}: seq {seq} is not live in pagedkv (replay stops here)"
                    ));
                    return bad;
                }
                kv.free(SeqId(seq)).unwrap();
                live.remove(&seq);
                cov.frees += 1;
            }
            other => panic!("{at}: unknown op {other}: teach this test about it"),
        }
        kv.drain_ops(&mut ops); // the step runs: what it computed becomes hittable
        kv.check_invariants().unwrap_or_else(|e| panic!("{at}: {e}"));

        let want_held = step["held"].as_object().unwrap();
        let want_seqs: Vec<u64> = want_held.keys().map(|k| k.parse().unwrap()).collect();
        let got_seqs: Vec<u64> = {
            let mut v: Vec<u64> = kv.seq_ids().map(|s| s.0).collect();
            v.sort_unstable();
            v
        };
        let mut want_sorted = want_seqs.clone();
        want_sorted.sort_unstable();
        if got_seqs != want_sorted {
            bad.push(format!("{at}: live sequences {got_seqs:?}, vLLM {want_sorted:?}"));
        }
        for (seq, want) in want_held.iter().filter(|_| got_seqs == want_sorted) {
            let seq: u64 = seq.parse().unwrap();
            let want: Vec<u64> = want.as_array().unwrap().iter().map(u).collect();
            let got: Vec<u64> = (0..groups.len())
                .map(|g| {
                    let table = kv.group(g).unwrap().block_table(SeqId(seq)).unwrap();
                    table.iter().filter(|b| !b.is_null()).count() as u64
                })
                .collect();
            if got != want {
                bad.push(format!(
                    "{at}: seq {seq} holds {got:?} blocks per group, vLLM {want:?}"
                ));
            }
            let full_len = kv.num_tokens(SeqId(seq)).unwrap().div_ceil(block_size as u64);
            cov.releases_seen |= got.iter().any(|&n| n < full_len);
            cov.held_checks += 1;
        }
        let (got_free, want_free) = (kv.num_free_blocks() as u64, u(&step["free_blocks"]));
        if got_free != want_free {
            bad.push(format!("{at}: {got_free} free blocks, vLLM {want_free}"));
        }
        if bad.len() > bad_before {
            if let Some(k) = redundant_since.filter(|&k| k < i) {
                // The documented difference, not a bug: stop comparing this scenario.
                cov.parted = Some((i, k, bad[bad_before].clone()));
                bad.truncate(bad_before);
                return bad;
            }
        }
        cov.compared += 1;
        if redundant_since.is_none() && u(&step["free_redundant_copies"]) > 0 {
            redundant_since = Some(i);
        }
    }
    bad
}

#[test]
fn hybrid_prefix_caching_equals_vllm_0_33_0_on_every_fixture() {
    let v = fixture();
    assert!(
        v["command"].as_str().unwrap().contains("gen_hybrid_fixtures.py"),
        "the fixture names the command that made it"
    );
    let block_size = u(&v["block_size"]) as u32;
    let max_model_len = u(&v["max_model_len"]) as u32;
    let scenarios = v["scenarios"].as_array().unwrap();
    let mut kinds_seen = std::collections::BTreeSet::new();
    let mut report = Vec::new();
    let mut parted = Vec::new();
    let (mut total, mut num_steps) = (Coverage::default(), 0);
    for s in scenarios {
        let name = s["name"].as_str().unwrap();
        let steps = s["steps"].as_array().unwrap().len();
        let mut cov = Coverage::default();
        let bad = replay(s, block_size, max_model_len, &mut cov);
        if !bad.is_empty() {
            report.extend(bad);
            continue;
        }
        match cov.parted {
            // No step goes unchecked unless the scenario parted by design.
            None => assert_eq!(cov.compared, steps, "{name}: every step compared"),
            Some((at, since, what)) => {
                assert_eq!(cov.compared, at, "{name}: every step before the parting compared");
                parted.push(format!(
                    "{name}: parts at step {at} of {steps} (vLLM has held a free redundant copy since step {since}): {what}"
                ));
            }
        }
        assert!(
            cov.held_checks > 0 && cov.hits > 0,
            "{name}: checks blocks held and hits"
        );
        for g in s["groups"].as_array().unwrap() {
            kinds_seen.insert(g["kind"].as_str().unwrap().to_string());
        }
        num_steps += steps;
        total.compared += cov.compared;
        total.allocations += cov.allocations;
        total.hits += cov.hits;
        total.refused_allocations += cov.refused_allocations;
        total.decodes += cov.decodes;
        total.refused_decodes += cov.refused_decodes;
        total.frees += cov.frees;
        total.held_checks += cov.held_checks;
        total.releases_seen |= cov.releases_seen;
        total.lowered_by_window += cov.lowered_by_window;
    }
    assert!(
        report.is_empty(),
        "{} mismatches with vLLM 0.33.0:\n{}",
        report.len(),
        report.join("\n")
    );
    eprintln!(
        "{} scenarios, {} of {num_steps} steps compared ({} allocations, {} hits, {} lowered by a window, {} decodes, {} frees); {}",
        scenarios.len(),
        total.compared,
        total.allocations,
        total.hits,
        total.lowered_by_window,
        total.decodes,
        total.frees,
        if parted.is_empty() { "none parted".to_string() } else { parted.join("; ") }
    );
    // The fixture exercises what it claims to pin, and the parting stays rare.
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        ["chunked_local", "full", "sliding_window"]
    );
    assert!(
        total.compared * 10 >= num_steps * 9,
        "at least 90% of the steps compared"
    );
    assert!(parted.len() <= 2, "few scenarios part: {parted:?}");
    assert!(
        total.refused_allocations > 0 && total.refused_decodes > 0,
        "pool pressure refuses"
    );
    assert!(total.releases_seen, "window groups release blocks");
    assert!(
        total.lowered_by_window > 0,
        "a window group lowers a hit full attention has cached"
    );
    assert!(total.frees > 0 && total.hits > 20);
}
