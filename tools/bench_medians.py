"""Medians, runs and spreads of criterion point estimates over several runs.

Usage: python3 tools/bench_medians.py run1.txt run2.txt run3.txt
(each file: the stdout of one `cargo bench` run; see tools/bench_three_runs.sh).
"""
import re
import statistics
import sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}

runs = []
for path in sys.argv[1:]:
    estimates, name = {}, None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip()
        head = re.match(r"^(\S+/\S+)\s*(time:.*)?$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            line = head.group(2) or ""
        point = re.search(r"^\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if point and name:
            estimates[name] = float(point.group(1)) * UNITS[point.group(2)]
            name = None
    runs.append(estimates)

for name in runs[0]:
    values = [r[name] for r in runs if name in r]
    median = statistics.median(values)
    spread = 100 * (max(values) - min(values)) / median
    shown = " ".join(f"{v:.1f}" for v in values)
    print(f"{name:70s} median {median:10.1f} ns  runs {shown}  spread {spread:.1f}%")
