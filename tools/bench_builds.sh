#!/usr/bin/env bash
# One criterion bench in several checkouts, interleaved (in listed order in odd rounds, reversed
# in even ones), to find which commit moved a cell:
#   tools/bench_builds.sh ROUNDS FILTER BENCH CHECKOUT...   (BENCH: group_norm, layer_norm, ...;
#   each checkout built with `cargo bench -p normlab-benches --no-run --bench BENCH`)
# CPU=k pins the runs to core k, MT sets the measurement time. Prints "round checkout bench
# median_us min_us" lines, as tools/bench_old_new.sh does (both through tools/bench_once.sh).
set -euo pipefail
rounds=$1 filter=$2 bench=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
declare -A exe
for d in "$@"; do
  exe[$d]=$(cd "$d" && cargo bench -q -p normlab-benches --no-run --bench "$bench" --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | head -1)
done
for r in $(seq "$rounds"); do
  list=("$@")
  if ((r % 2 == 0)); then mapfile -t list < <(printf '%s\n' "$@" | tac); fi
  for d in "${list[@]}"; do
    "$here/bench_once.sh" "${exe[$d]}" "$filter" "$r" "$(basename "$d")"
  done
done
