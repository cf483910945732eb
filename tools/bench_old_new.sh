#!/usr/bin/env bash
# Criterion benches of an older build against this one, interleaved (per norm, old then new in odd
# rounds and new then old in even ones; ROUNDS rounds, default 3):
#   tools/bench_old_new.sh OLD_CHECKOUT [FILTER [NORMS]]   (FILTER: a criterion bench filter,
#   default simd_rayon, e.g. '/2x64x32x32/simd_1t' for the small shape on 1 thread; NORMS:
#   default "batch_norm group_norm instance_norm layer_norm". Both checkouts built with
#   `cargo bench -p normlab-benches --no-run`.)
# CPU=k pins every bench run to core k (taskset); MT sets the measurement time (default 1.5 s).
# Prints "round build bench median_us min_us" lines: criterion's median and the fastest of its
# samples (per iteration). `tools/old_new_summary.py FILE` pairs the rounds into a table.
set -euo pipefail
old=${1:?usage: tools/bench_old_new.sh OLD_CHECKOUT [FILTER [NORMS]]}
filter=${2:-simd_rayon}
norms=${3:-batch_norm group_norm instance_norm layer_norm}
here=$(cd "$(dirname "$0")" && pwd)
new=$(dirname "$here")
# The bench binaries cargo names for checkout $1, asked once (`ls -t` would also find the
# test-profile builds of the same benches that `cargo test` leaves beside them).
benches() {
  (cd "$1" && cargo bench -q -p normlab-benches --no-run --message-format=json 2>/dev/null) |
    grep -o '"executable":"[^"]*"' | cut -d'"' -f4
}
declare -A exe # build:norm -> bench binary
for v in old new; do
  if [ $v = old ]; then list=$(benches "$old"); else list=$(benches "$new"); fi
  for n in $norms; do exe[$v:$n]=$(grep -m1 "/$n-[0-9a-f]*\$" <<<"$list"); done
done
for round in $(seq "${ROUNDS:-3}"); do
  # Old first in odd rounds, new first in even ones (A B B A ...): a disturbance that comes and
  # goes with the period of two runs would otherwise always land on the same build.
  order="old new"
  if ((round % 2 == 0)); then order="new old"; fi
  for n in $norms; do
    for v in $order; do
      "$here/bench_once.sh" "${exe[$v:$n]}" "$filter" "$round" "$v"
    done
  done
done
