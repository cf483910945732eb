#!/usr/bin/env bash
# From one saved state: per stream seed S, STEPS steps at lr 0.1 on the same batches in normlab,
# PyTorch float32 and float64 (`dump_steps`, then `torch_twin.py --check-steps`); appends each
# run's mean train loss over sixths of the steps to OUT.
#   from-state.sh START.safetensors STEPS OUT S...   (from the repository root, one thread:
#   RAYON_NUM_THREADS=1; build first: see lib.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
start=$1; steps=$2; out=$3; shift 3
for s in "$@"; do
  d=$(mktemp -d)
  dump "$d" "$steps" 0.1 "$start" 0 "$s"
  twin "$d" | grep loss_windows >> "$out"
  rm -rf "$d"
done
