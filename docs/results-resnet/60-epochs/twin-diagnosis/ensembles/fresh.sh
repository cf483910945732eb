#!/usr/bin/env bash
# From fresh models: per seed S (the model's and the batches'), STEPS steps with 156 of linear
# warm-up to lr 0.1 and then 0.1 held (the plateau protocol), the same batches in normlab and
# PyTorch float32; appends the mean train loss over sixths of the steps to OUT. `STREAM=train`
# draws the batches as `norm-cli train --seed S` does (normlab's side is its run); the default
# draws them from the generator the model's weights came from.
#   [STREAM=train] fresh.sh STEPS OUT S...   (from the repository root; see from-state.sh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
steps=$1; out=$2; shift 2
for s in "$@"; do
  d=$(mktemp -d)
  dump "$d" "$steps" 0.1 "fresh:$s" 0 "${STREAM:+$STREAM:}$s" 156
  twin "$d" --no-float64 | grep loss_windows >> "$out"
  rm -rf "$d"
done
