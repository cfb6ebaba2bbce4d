#!/bin/bash
# A long correctness run, for before a release or after a change to the
# manager, prefix cache or scheduler (not CI: about an hour with the
# defaults). CI runs the same property suites at modest case counts; the
# cases here are drawn afresh each run, so repeated soaks keep finding new
# ground (a scheduler livelock surfaced at 40,000 cases, about one run in
# three, and never at CI's counts).
#
#   tools/soak.sh                      # defaults below
#   CASES=40000 DIFF_SEEDS=50 FUZZ_SECS=60 tools/soak.sh   # a quick one
#
# 1. the property suites (`tests/model.rs`, `prefix_model.rs`,
#    `prefix_tenant_isolation.rs`, `scheduler_model.rs`, `free_paths_agree.rs`)
#    at $CASES cases;
# 2. the Dynamo differential (`publisher/tests/dynamo_differential.rs`) at
#    $DIFF_SEEDS seeds of $DIFF_STEPS steps;
# 3. each fuzz target for $FUZZ_SECS seconds (needs `cargo install
#    cargo-fuzz`; skipped without it), on the stable toolchain.
#
# A failing property test prints its minimal case (add it to the suite's
# `.proptest-regressions` file or as a named test); a fuzz crash is saved
# under fuzz/artifacts/TARGET/. The script stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-200000}
DIFF_SEEDS=${DIFF_SEEDS:-300}
DIFF_STEPS=${DIFF_STEPS:-5000}
FUZZ_SECS=${FUZZ_SECS:-600}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "property suites, $CASES cases each"
PAGEDKV_PROPTEST_CASES=$CASES cargo test --release -q \
  --test model --test prefix_model --test prefix_tenant_isolation --test scheduler_model \
  --test free_paths_agree

stamp "Dynamo differential, $DIFF_SEEDS seeds x $DIFF_STEPS steps"
PAGEDKV_DIFF_SEEDS=$DIFF_SEEDS PAGEDKV_DIFF_STEPS=$DIFF_STEPS \
  cargo test --release -q -p pagedkv-publisher --test dynamo_differential

if cargo fuzz --version >/dev/null 2>&1; then
  (cd fuzz && ./seed_corpus.sh)
  for target in manager_ops scheduler_ops traces config_json; do
    stamp "fuzz $target, $FUZZ_SECS s"
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -s none -- -max_total_time="$FUZZ_SECS" 2>&1 | tail -5)
  done
else
  stamp "cargo-fuzz not installed: fuzzing skipped (cargo install cargo-fuzz)"
fi
stamp "soak passed"
