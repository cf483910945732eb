#!/usr/bin/env bash
# One criterion bench in several checkouts, interleaved (in listed order in odd rounds, reversed
# in even ones), to find which commit moved a cell:
#   tools/bench_builds.sh ROUNDS FILTER BENCH CHECKOUT...   (BENCH: group_norm, layer_norm, ...;
#   each checkout built with `cargo bench -p normlab-benches --no-run --bench BENCH`)
# CPU=k pins the runs to core k. Prints "round checkout bench median_us min_us" lines, as
# tools/bench_old_new.sh does.
set -euo pipefail
rounds=$1 filter=$2 bench=$3
shift 3
pin=()
if [ -n "${CPU:-}" ]; then pin=(taskset -c "$CPU"); fi
declare -A exe
for d in "$@"; do
  exe[$d]=$(cd "$d" && cargo bench -q -p normlab-benches --no-run --bench "$bench" --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | head -1)
done
for r in $(seq "$rounds"); do
  list=("$@")
  if ((r % 2 == 0)); then mapfile -t list < <(printf '%s\n' "$@" | tac); fi
  for d in "${list[@]}"; do
    t=$(mktemp -d)
    (cd "$t" && "${pin[@]}" "${exe[$d]}" --bench "$filter" --warm-up-time 0.5 --measurement-time 1.5 --noplot >/dev/null 2>&1)
    python3 - "$t" "$r" "$(basename "$d")" <<'PY'
import json, pathlib, statistics, sys
d, r, v = sys.argv[1:]
for f in sorted(pathlib.Path(d).rglob("new/sample.json")):
    s = json.load(open(f))
    per = [t / i / 1e3 for t, i in zip(s["times"], s["iters"])]
    print(r, v, f.parts[-4] + "/" + f.parts[-3], f"{statistics.median(per):.2f}", f"{min(per):.2f}")
PY
    rm -rf "$t"
  done
done
