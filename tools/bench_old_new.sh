#!/usr/bin/env bash
# Criterion benches of an older build against this one, interleaved (old, new; per norm; 3 rounds):
#   tools/bench_old_new.sh OLD_CHECKOUT [FILTER [NORMS]]   (FILTER: a criterion bench filter,
#   default simd_rayon, e.g. 'x32x32/simd_' for the small shapes on 1 thread and the pool; NORMS:
#   default "batch_norm group_norm instance_norm layer_norm". Both checkouts built with
#   `cargo bench -p normlab-benches --no-run`.)
# Prints "round build bench median unit" lines; docs/performance.md tabulates their medians.
set -euo pipefail
old=${1:?usage: tools/bench_old_new.sh OLD_CHECKOUT [FILTER [NORMS]]}
filter=${2:-simd_rayon}
norms=${3:-batch_norm group_norm instance_norm layer_norm}
new=$(cd "$(dirname "$0")/.." && pwd)
# The bench binary cargo names for checkout $1 and bench $2 (`ls -t` would also find the
# test-profile builds of the same bench that `cargo test` leaves beside it).
bin() {
  (cd "$1" && cargo bench -q -p normlab-benches --no-run --message-format=json 2>/dev/null) |
    grep -o "\"executable\":\"[^\"]*/$2-[0-9a-f]*\"" | cut -d'"' -f4 | head -1
}
for round in 1 2 3; do
  for n in $norms; do
    for v in old new; do
      if [ $v = old ]; then b=$(bin "$old" $n); else b=$(bin "$new" $n); fi
      (cd /tmp && "$b" --bench "$filter" --warm-up-time 0.5 --measurement-time 1.5 --noplot 2>/dev/null) |
        awk -v v=$v -v r=$round '/^[a-z_0-9]+\/[a-z_]+\/[0-9x]+\/[a-z_0-9]+/ {id=$1}
                                 /time:/ && id != "" {print r, v, id, $4, $5; id=""}'
    done
  done
done
