#!/usr/bin/env bash
# Hand-over: per seed S, 260 steps from fresh:S (156 of warm-up) in normlab and in PyTorch
# float32; then from each tool's state 520 steps at lr 0.1 on one new stream (seed S + 1000) in
# both tools. Appends {"stream", "start" (N: normlab's state, T: PyTorch's), "loss_windows"}.
#   handover.sh OUT S...   (from the repository root; see from-state.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
out=$1; shift
for s in "$@"; do
  d1=$(mktemp -d)
  dump "$d1" 260 0.1 "fresh:$s" 0 "$s" 156
  twin "$d1" --no-float64 --save-final "$d1/T.safetensors" > /dev/null
  mv "$d1/after_260.safetensors" "$d1/N.safetensors"
  for who in N T; do
    d2=$(mktemp -d)
    dump "$d2" 520 0.1 "$d1/$who.safetensors" 0 $((s + 1000)) 0
    twin "$d2" --no-float64 | grep loss_windows |
      python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(stream=$s, start='$who'); print(json.dumps(r))" >> "$out"
    rm -rf "$d2"
  done
  rm -rf "$d1"
done
