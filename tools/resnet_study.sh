#!/usr/bin/env bash
# The ResNet study of docs/results.md (issue 11), resumable: run it again after an interruption
# and only the missing cells run. Two shards of one thread each, seed by seed (every norm's seed
# 0 first), so a partial run already has whole rows; the folders are committed every 10 minutes
# and at the end.
#   tools/resnet_study.sh [NORM_CLI]     (default: target/release/norm-cli; build it first)
# EPOCHS (default 30) and OUT (default docs/results-resnet) select another schedule and folder,
# e.g. EPOCHS=60 OUT=docs/results-resnet/60-epochs for the rerun at a schedule that converges every norm.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cli=${1:-$root/target/release/norm-cli}
rel=${OUT:-docs/results-resnet}
out=$root/$rel
# One recipe for every cell (lr tuned on BatchNorm at 32 per worker, docs/results.md). The ramp
# only acts on BatchRenorm; it is in every cell's recipe so that the folders merge.
R=(--model resnet8 --batch 32 --epochs "${EPOCHS:-30}" --lr 0.1 --train-size 5000 --test-size 1000
   --norm-ramp 0.25 --recalibrate-bn 5000 --threads 1)
commit() {
  (cd "$root" && git add "$rel" &&
     git commit -qm "$rel: cells so far" -- "$rel") || true
}
shard() { # shard I of 2 into folders F and renorm-F, one seed
  local i=$1 seeds=$2..$(($2 + 1)) f=$3
  "$cli" sweep "${R[@]}" --seeds "$seeds" --per-worker 2,4,8,16,32 \
    --norms batch,group,layer,instance --cells "$i/2" --out "$out/$f"
  "$cli" sweep "${R[@]}" --seeds "$seeds" --per-worker 2,4 --norms renorm \
    --cells "$i/2" --out "$out/renorm-$f"
}
(while sleep 600; do commit; done) &
ticker=$!
trap 'kill $ticker 2>/dev/null; commit' EXIT
mkdir -p "$out" "$root/target"
for seed in 0 1 2; do
  shard 1 "$seed" a >> "$root/target/resnet-study-a.log" 2>&1 & a=$!
  shard 2 "$seed" b >> "$root/target/resnet-study-b.log" 2>&1 & b=$!
  wait $a $b
done
"$cli" report "$out"/a "$out"/b "$out"/renorm-a "$out"/renorm-b --out "$out"
