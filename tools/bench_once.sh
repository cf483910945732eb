#!/usr/bin/env bash
# One run of a criterion bench binary, for tools/bench_old_new.sh and tools/bench_builds.sh:
#   tools/bench_once.sh BIN FILTER ROUND LABEL
# prints "ROUND LABEL bench median_us min_us" per bench: criterion's median and the fastest of
# its samples (per iteration). CPU=k pins the run to core k; MT sets the measurement time
# (default 1.5 s).
set -euo pipefail
bin=$1 filter=$2 round=$3 label=$4
pin=()
if [ -n "${CPU:-}" ]; then pin=(taskset -c "$CPU"); fi
d=$(mktemp -d) # criterion writes its samples under the working directory
trap 'rm -rf "$d"' EXIT
(cd "$d" && "${pin[@]}" "$bin" --bench "$filter" --warm-up-time 0.5 \
  --measurement-time "${MT:-1.5}" --noplot >/dev/null 2>&1)
python3 - "$d" "$round" "$label" <<'PY'
import json, pathlib, statistics, sys
d, r, v = sys.argv[1:]
for f in sorted(pathlib.Path(d).rglob("new/sample.json")):
    s = json.load(open(f))
    per = [t / i / 1e3 for t, i in zip(s["times"], s["iters"])]
    print(r, v, f.parts[-4] + "/" + f.parts[-3], f"{statistics.median(per):.2f}", f"{min(per):.2f}")
PY
