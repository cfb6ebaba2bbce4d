#!/usr/bin/env bash
# Seeds the fuzz corpora from the project's own data (configs, trace heads).
# Run from fuzz/: ./seed_corpus.sh, then RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET -s none.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/config_json corpus/traces corpus/manager_ops corpus/scheduler_ops
for f in ../data/configs/*.json; do
  for flags in '\x00\x00\x00\x00' '\x01\x01\x81\x01' '\x20\x0b\x02\x03'; do
    { printf "$flags"; cat "$f"; } > "corpus/config_json/$(basename "$f" .json)-$(printf "$flags" | od -An -tx1 | tr -d ' \n')"
  done
done
{ printf '\x00'; head -40 ../data/traces/sharegpt_first_turn.csv; } > corpus/traces/first_turn
{ printf '\x02'; head -60 ../data/traces/sharegpt_multiturn.csv; } > corpus/traces/multiturn
{ printf '\x04'; head -30 ../data/traces/mooncake_synthetic_trace.jsonl; } > corpus/traces/mooncake
