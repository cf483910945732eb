#!/usr/bin/env bash
# Hand-over: per seed S, 260 steps from fresh:S (156 of warm-up) in normlab and in PyTorch
# float32; then from each tool's state 520 steps at lr 0.1 on one new stream (seed S + 1000) in
# both tools. Appends {"stream", "start" (N: normlab's state, T: PyTorch's), "loss_windows"}.
#   handover.sh OUT S...   (from the repository root; see from-state.sh)
set -euo pipefail
out=$1; shift
for s in "$@"; do
  d1=$(mktemp -d)
  target/release/examples/dump_steps "$d1" resnet8 batch 16 32 260 0.1 "fresh:$s" 0 "$s" 156 > /dev/null
  ~/torch/bin/python tools/torch_twin.py --threads 1 --no-float64 --check-steps "$d1" \
    --save-final "$d1/T.safetensors" > /dev/null
  mv "$d1/after_260.safetensors" "$d1/N.safetensors"
  for who in N T; do
    d2=$(mktemp -d)
    target/release/examples/dump_steps "$d2" resnet8 batch 16 32 520 0.1 "$d1/$who.safetensors" 0 $((s + 1000)) 0 > /dev/null
    ~/torch/bin/python tools/torch_twin.py --threads 1 --no-float64 --check-steps "$d2" | grep loss_windows |
      python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r.update(stream=$s, start='$who'); print(json.dumps(r))" >> "$out"
    rm -rf "$d2"
  done
  rm -rf "$d1"
done
