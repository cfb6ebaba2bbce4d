#!/bin/bash
# Three runs of every library bench (each with its own criterion settings) for
# BENCHMARKS.md, logs in $OUT/run{1,2,3}.txt (default: target/bench-runs), then
# the medians, runs and spreads via tools/bench_medians.py. Run it on a quiet
# machine (check `uptime` and `top -bn1` first).
set -e
cd "$(dirname "$0")/.."
OUT=${OUT:-target/bench-runs}
mkdir -p "$OUT"
cargo bench --workspace --exclude pagedkv-publisher --no-run -q
for r in 1 2 3; do
  echo "run $r start $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" > "$OUT/run$r.txt"
  cargo bench --bench allocator --bench prefix --bench scheduler --bench hybrid --bench kv_events 2>/dev/null >> "$OUT/run$r.txt"
  echo "run $r end $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/run$r.txt"
done
python3 tools/bench_medians.py "$OUT"/run1.txt "$OUT"/run2.txt "$OUT"/run3.txt
