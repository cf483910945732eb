#!/usr/bin/env bash
# The study's 60-epoch recipe (BatchNorm over 2 per worker, batch 32, lr 0.1, 156 steps of
# warm-up, cosine to 0 over 9,360 steps) from the same fresh model on the same batches in
# normlab (`dump_steps`) and PyTorch float32 (`torch_twin.py --check-steps`); both final models
# evaluated by `norm-cli eval` (as trained, and re-estimated over 5,000 images).
# Appends {"seed", "stream", "normlab", "torch32", "loss_windows"} to OUT. The batches come from
# the stream seed S (`STREAM=train`: seed S as `norm-cli train --seed S` draws them, so normlab's
# side is that run bit for bit; the default draws them from the generator the model's weights
# came from).
#   [STREAM=train] paired-60.sh OUT S...   (from the repository root; see from-state.sh; needs ~8 GB of disk
#   and of memory per run for the 9,360 batches)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out=$1; shift
for s in "$@"; do
  d=$(mktemp -d)
  dump "$d" 9360 0.1 "fresh:$s" 0 "${STREAM:+$STREAM:}$s" 156 cosine
  twin "$d" --no-float64 --save-final "$d/T.safetensors" | grep loss_windows > "$d/windows.json"
  ev() { target/release/norm-cli eval --checkpoint "$1" --train-size 5000 --test-size 1000 --recalibrate-bn 5000 --json; }
  python3 - "$s" "${STREAM:+$STREAM:}$s" "$(ev "$d/after_9360.safetensors")" "$(ev "$d/T.safetensors")" "$d/windows.json" >> "$out" <<'PY'
import json, sys
s, stream, n, t, w = sys.argv[1:]
print(json.dumps({"seed": int(s), "stream": stream, "normlab": json.loads(n), "torch32": json.loads(t),
                  "loss_windows": json.load(open(w))["loss_windows"]}))
PY
  rm -rf "$d"
done
