#!/usr/bin/env bash
# From one saved state: per stream seed S, STEPS steps at lr 0.1 on the same batches in normlab,
# PyTorch float32 and float64 (`dump_steps`, then `torch_twin.py --check-steps`); appends each
# run's mean train loss over sixths of the steps to OUT.
#   from-state.sh START.safetensors STEPS OUT S...   (from the repository root, one thread:
#   RAYON_NUM_THREADS=1; build first: cargo build --release -p norm-train --example dump_steps)
set -euo pipefail
start=$1; steps=$2; out=$3; shift 3
for s in "$@"; do
  d=$(mktemp -d)
  target/release/examples/dump_steps "$d" resnet8 batch 16 32 "$steps" 0.1 "$start" 0 "$s" > /dev/null
  ~/torch/bin/python tools/torch_twin.py --threads 1 --check-steps "$d" | grep loss_windows >> "$out"
  rm -rf "$d"
done
