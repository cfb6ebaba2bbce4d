#!/usr/bin/env bash
# Regenerates the vLLM 0.33.0 fixtures in tests/fixtures/vllm_0.33.0/: one JSON per
# row of cases.csv, produced by vLLM's own v1 scheduler (drive_vllm.py, which replays
# a first-turn CSV trace through vLLM's Scheduler, KVCacheManager and BlockPool on a
# CPU, playing the model runner). tests/sim_matches_vllm.rs checks that
# `paged16-vllm` reproduces them. CI never runs this: it needs vLLM's source and a
# Python venv (see the README next to this script).
#
#   VLLM_SRC=/work/vllm-ref/src PYTHON=/work/vllm-ref/venv/bin/python \
#   DRIVER=/work/shared/vllm_oracle/drive_vllm.py tools/vllm_oracle/gen_scheduler_fixtures.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${VLLM_SRC:=/work/vllm-ref/src}"
: "${PYTHON:=/work/vllm-ref/venv/bin/python}"
: "${DRIVER:=/work/shared/vllm_oracle/drive_vllm.py}"
out=tests/fixtures/vllm_0.33.0
trace=data/traces/sharegpt_first_turn.csv
tail -n +2 "$out/cases.csv" | while IFS=, read -r name blocks limit budget seqs max_len; do
  echo "== $name: --num-blocks $blocks --limit $limit --max-num-batched-tokens $budget --max-num-seqs $seqs --max-model-len $max_len"
  VLLM_SRC="$VLLM_SRC" TRACE="$trace" "$PYTHON" "$DRIVER" \
    --num-blocks "$blocks" --limit "$limit" --max-num-batched-tokens "$budget" \
    --max-num-seqs "$seqs" --max-model-len "$max_len" --prefix-caching --admit-overlong \
    --json "$out/$name.json" > /dev/null
done
