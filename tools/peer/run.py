#!/usr/bin/env python3
"""Ours against PyTorch on this machine, alternating: one command that builds our timing example
(benches/examples/peer.rs), then for each of --rounds rounds runs every group of cases with ours
and then PyTorch (tools/peer/torch_peer.py) -- A B A B -- and writes a markdown report of the
medians and ratios, headed by the CPU model, caches, thread count, load average and the copy
floor measured in the same rounds; the training table adds the compute floor, each step's
convolution and linear FLOPs (counted by PyTorch's flop counter) over the cores' multiply-add
throughput (measured in the same rounds by peer.rs's `fma` cases).

One-time set-up (not in CI; see docs/performance.md):
    python3 -m venv ~/torch && ~/torch/bin/pip install torch numpy safetensors

Usage (from the repository root):
    python3 tools/peer/run.py --out docs/peer-$(hostname).md
    python3 tools/peer/run.py --only train --models cnn --rounds 5
Options: --python (default ~/torch/bin/python), --threads (default: all cores), --rounds (3),
--only kernels|train, --models (cnn; further models once peer.rs and torch_peer.py know them),
--no-build, --torch-omp-passive (for a loaded machine; see docs/performance.md).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TORCH_PEER = os.path.join(ROOT, "tools", "peer", "torch_peer.py")
NORMS = ["batch", "layer", "instance", "group", "renorm"]
# PyTorch has no BatchRenorm: its row is ours against the copy floor only.
OURS_ONLY = {"renorm"}
NORM_LABEL = {"batch": "BatchNorm (train)", "layer": "LayerNorm [C,H,W]",
              "instance": "InstanceNorm (train)", "group": "GroupNorm (G=32)",
              "renorm": "BatchRenorm (train, r_max 3, d_max 5)"}
TRAIN_NORMS = ["batch", "layer", "instance", "group", "none"]
FIXED_SHAPES = ["8x64x120x120", "2x64x32x32", "32x64x32x32"]
BATCHES = [2, 32]


def sh(cmd, env=None):
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"run.py: {' '.join(cmd[:2])} failed ({out.returncode}):\n{out.stderr.strip()}")
    return out.stdout


def results(stdout):
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in rows}


def cpu_model():
    """The model name plus family/model/stepping: guests often report only "AMD EPYC"
    (family 25 model 1 is Zen3 Milan)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU's block is enough
                k, _, v = line.partition(":")
                fields[k.strip()] = v.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(ids)})" if ids else name


def load():
    return "%.2f / %.2f / %.2f" % os.getloadavg()


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="markdown file to write (default: stdout only)")
    ap.add_argument("--python", default=os.path.expanduser("~/torch/bin/python"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["kernels", "train"])
    ap.add_argument("--models", default="cnn")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--torch-omp-passive", action="store_true",
                    help="run PyTorch with OMP_WAIT_POLICY=PASSIVE: on a loaded machine its OpenMP"
                         " threads otherwise spin at barriers while the other is descheduled")
    args = ap.parse_args()
    if args.rounds < 1:
        sys.exit("run.py: --rounds must be at least 1")
    if not os.path.exists(args.python):
        sys.exit(f"run.py: no Python at {args.python}; set up the venv (see --help) or pass --python")

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), PEER_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads))
    torch_env = dict(env, OMP_WAIT_POLICY="PASSIVE") if args.torch_omp_passive else env
    if not args.no_build:
        print("building benches/examples/peer.rs ...", file=sys.stderr)
        sh(["cargo", "build", "--release", "-q", "-p", "normlab-benches", "--example", "peer"])
    peer = os.path.join(ROOT, "target", "release", "examples", "peer")
    ours_info = results(sh([peer, "info"], env))["info"]
    torch_info = results(sh([args.python, TORCH_PEER, "info"], torch_env))["info"]
    shapes = FIXED_SHAPES + [ours_info["dram_shape"]]

    groups = []  # (name, cases, run_torch)
    if args.only != "train":
        groups.append(("floor", [f"{f}:{s}" for s in shapes for f in ("floor", "floor-stream")],
                       False))
        for n in NORMS:
            groups.append((n, [f"kernel:{n}:{s}:{m}" for s in shapes for m in ("fwd", "fwdbwd")],
                           n not in OURS_ONLY))
    flops = {}  # (model, batch) -> FLOPs of one step; the norm does not change them
    if args.only != "kernels":
        groups.append(("fma", [f"fma:{w}" for w in ours_info["fma_widths"]], False))
        for model in args.models.split(","):
            groups.append((model, [f"train:{model}:{n}:{b}" for n in TRAIN_NORMS
                                   for b in BATCHES], True))
            for b in BATCHES:
                case = f"flops:{model}:group:{b}"
                flops[(model, b)] = results(sh([args.python, TORCH_PEER, case], torch_env))[case]["flops"]

    started = datetime.now(timezone.utc)
    load_start = load()
    ours, torch = {}, {}  # case -> [median per round]
    for r in range(args.rounds):
        for name, cases, run_torch in groups:
            print(f"round {r + 1}/{args.rounds}: {name} ours", file=sys.stderr)
            for c, v in results(sh([peer] + cases, env)).items():
                ours.setdefault(c, []).append(v.get("gflops", v["median_ms"]))
            if run_torch:
                print(f"round {r + 1}/{args.rounds}: {name} PyTorch", file=sys.stderr)
                for c, v in results(sh([args.python, TORCH_PEER] + cases, torch_env)).items():
                    torch.setdefault(c, []).append(v["median_ms"])
    load_end = load()
    minutes = (datetime.now(timezone.utc) - started).total_seconds() / 60

    md = statistics.median
    out = []
    out.append(f"# Ours vs PyTorch on `{platform.node()}`")
    out.append("")
    out.append(f"- date: {started:%Y-%m-%d %H:%M} UTC, {minutes:.1f} min; build {git_rev()}")
    out.append(f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; caches (cpu0): {ours_info['caches']}")
    out.append(f"- threads: {args.threads} (rayon: {ours_info['threads']}, PyTorch: {torch_info['threads']});"
               f" our SIMD level {ours_info['simd']}; PyTorch {torch_info['torch']}"
               + (" with OMP_WAIT_POLICY=PASSIVE" if args.torch_omp_passive else ""))
    out.append(f"- load average (1/5/15 min) at start {load_start}, at end {load_end}")
    out.append(f"- {args.rounds} rounds, each group of cases run with ours then PyTorch (A B A B);"
               " each cell is the median over rounds of each round's median;"
               " the ratio's range is over the rounds")
    out.append(f"- command: `python3 tools/peer/run.py {' '.join(sys.argv[1:])}`")
    out.append("")

    def ratio_cell(case):
        if case not in torch:
            return "—"
        per = [t / o for o, t in zip(ours[case], torch[case])]
        r = md(torch[case]) / md(ours[case])
        return f"**{r:.2f}×** ({min(per):.2f}–{max(per):.2f})"

    if args.only != "train":
        floor = {s: md(ours[f"floor:{s}"]) for s in shapes}
        stream = {s: md(ours[f"floor-stream:{s}"]) for s in shapes}
        out.append("## Copy floor (`y = a·x + b` on the rayon pool, 8 bytes/element)")
        out.append("")
        out.append("`floor` writes through the caches (each written line is read first: 12 bytes/element"
                   " from DRAM); `streamed` writes past them, as the kernels do for an output larger"
                   " than three quarters of the last-level cache. The ratios below are to `floor`.")
        out.append("")
        out.append("| shape | working set | floor ms | GB/s | per round | streamed ms | per round |")
        out.append("|---|---:|---:|---:|---|---:|---|")
        for s in shapes:
            n, c, h, w = map(int, s.split("x"))
            b = 8 * n * c * h * w
            per = ", ".join(f"{v:.3f}" for v in ours[f"floor:{s}"])
            per_s = ", ".join(f"{v:.3f}" for v in ours[f"floor-stream:{s}"])
            tag = " (DRAM-resident)" if s == ours_info["dram_shape"] else ""
            out.append(f"| {s}{tag} | {b / 2**20:.1f} MiB | {floor[s]:.3f} | "
                       f"{b / floor[s] / 1e6:.1f} | {per} | {stream[s]:.3f} | {per_s} |")
        out.append("")
        out.append("## Kernels (ms, medians)")
        out.append("")
        out.append("`fwd / floor` is our forward over the copy floor; `fwd+bwd / 2.5·floor` our"
                   " forward + backward over 2.5× the floor (20 of the 8 bytes/element).")
        out.append("")
        out.append("| norm | shape | ours fwd | PyTorch fwd | speed-up fwd | ours fwd+bwd |"
                   " PyTorch fwd+bwd | speed-up fwd+bwd | fwd / floor | fwd+bwd / 2.5·floor |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in NORMS:
            for s in shapes:
                f, fb = f"kernel:{n}:{s}:fwd", f"kernel:{n}:{s}:fwdbwd"
                tf, tfb = (f"{md(torch[c]):.3f}" if c in torch else "—" for c in (f, fb))
                out.append(f"| {NORM_LABEL[n]} | {s} | {md(ours[f]):.3f} | {tf} | "
                           f"{ratio_cell(f)} | {md(ours[fb]):.3f} | {tfb} | "
                           f"{ratio_cell(fb)} | {md(ours[f]) / floor[s]:.2f} | "
                           f"{md(ours[fb]) / (2.5 * floor[s]):.2f} |")
        out.append("")
    if args.only != "kernels":
        peak = {w: md(ours[f"fma:{w}"]) for w in ours_info["fma_widths"]}
        best = max(peak.values())
        out.append("## Compute floor (multiply-adds on every core at once)")
        out.append("")
        out.append(f"{args.rounds} rounds of `peer fma:<lanes>`"
                   f" ({ours_info['threads']} threads, independent multiply-add chains in"
                   " registers): the most FLOP/s any convolution can reach here.")
        out.append("")
        out.append("| lanes | GFLOP/s | per round |")
        out.append("|---:|---:|---|")
        for w, g in peak.items():
            per = ", ".join(f"{v:.1f}" for v in ours[f"fma:{w}"])
            out.append(f"| {w} | {g:.1f} | {per} |")
        out.append("")
        out.append("## Training step (ms per step: forward + backward + SGD update; images/s)")
        out.append("")
        out.append(f"`GFLOP` is the step's convolutions and linear layer, forward and backward"
                   f" (PyTorch's flop counter; the same for every norm); `floor ms` that work at the"
                   f" measured {best:.0f} GFLOP/s. `PyTorch / floor` is the largest speed-up over"
                   " PyTorch that these multiply-adds allow on this machine.")
        out.append("")
        out.append("| model | norm | batch | ours ms | PyTorch ms | speed-up | ours img/s |"
                   " PyTorch img/s | GFLOP | floor ms | ours / floor | PyTorch / floor |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model in args.models.split(","):
            for n in TRAIN_NORMS:
                for b in BATCHES:
                    c = f"train:{model}:{n}:{b}"
                    o, t = md(ours[c]), md(torch[c])
                    fl = flops[(model, b)] / 1e9
                    fms = 1e3 * fl / best
                    out.append(f"| {model} | {n} | {b} | {o:.3f} | {t:.3f} | {ratio_cell(c)} | "
                               f"{1e3 * b / o:,.0f} | {1e3 * b / t:,.0f} | {fl:.3f} | "
                               f"{fms:.3f} | {o / fms:.2f} | {t / fms:.2f} |")
        out.append("")
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(os.path.join(ROOT, args.out) if not os.path.isabs(args.out) else args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
