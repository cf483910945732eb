# Sourced by the drivers in this folder (run from the repository root, RAYON_NUM_THREADS=1;
# build first: cargo build --release -p norm-train --example dump_steps --bin norm-cli).
# dump DIR ARGS...: normlab's steps of ResNet-8 with BatchNorm over 2 per worker at batch 32
#   (`dump_steps DIR resnet8 batch 16 32 ARGS...`, see its doc for ARGS).
dump() {
  local d=$1
  shift
  target/release/examples/dump_steps "$d" resnet8 batch 16 32 "$@" > /dev/null
}
# twin DIR ARGS...: the same steps in PyTorch on one thread (`torch_twin.py --check-steps DIR
#   ARGS...`); prints its JSON lines.
twin() {
  local d=$1
  shift
  ~/torch/bin/python tools/torch_twin.py --threads 1 --check-steps "$d" "$@"
}
