#!/usr/bin/env python3
"""PyTorch side of the peer harness (tools/peer/run.py): times the cases named on the command
line and prints one JSON line per case, {"case": ..., "median_ms": ..., "samples": ...}.

Cases (the same strings as benches/examples/peer.rs):
  kernel:<norm>:<N>x<C>x<H>x<W>:<fwd|fwdbwd>  train-mode norm forward (and backward), with the
      eps, affine, groups and momentum of benches/src/kernels.rs (norm: batch, layer, instance,
      group). The forward runs under torch.no_grad() (PyTorch's fastest forward; the train-mode
      statistics are computed all the same); fwdbwd runs y = m(x); y.backward(dy) with x, weight
      and bias requiring grad, their .grad reset to None before each call.
  floor:<shape>  not measured here (the copy floor is ours; see run.py).
  train:<model>:<norm>:<batch>  one training step as norm-train/examples/train_step.rs: forward,
      cross-entropy, backward, SGD (lr 0.01, momentum 0.9, weight decay 5e-4 on conv and linear
      weights only), zero_grad(set_to_none=True); the batch is prepared outside the timing.
      model: cnn (alias plain), resnet8, resnet14, resnet20 (MODELS below).
  flops:<model>:<norm>:<batch>  not timed: the floating-point operations of the convolutions and
      the linear layer in one such step, forward and backward, as torch.utils.flop_counter counts
      them (2 per multiply-add, nominal shapes: what any implementation of these layers without
      a fast transform has to do); printed as {"case": ..., "flops": ...}.

Threads: torch.set_num_threads(PEER_THREADS or RAYON_NUM_THREADS or os.cpu_count()).
Timing: as peer.rs -- warm-up 150 ms, samples of >= 5 ms (several calls if one is shorter)
until 600 ms and >= 7 samples (train: per step, >= 20 steps and 1.2 s); the median per call.
"""

import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SAMPLE_MS = 5.0
CASE_MS = 600.0
MIN_SAMPLES = 7
WARMUP_MS = 150.0

GROUPS = 32
EPS = 1e-5
LAYER_EPS = 1e-8
MOMENTUM = 0.1


def threads():
    for var in ("PEER_THREADS", "RAYON_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return os.cpu_count() or 1


def median(v):
    v = sorted(v)
    m = len(v) // 2
    return v[m] if len(v) % 2 else 0.5 * (v[m - 1] + v[m])


def now_ms():
    return time.perf_counter() * 1e3


def time_calls(f):
    t0 = now_ms()
    calls = 0
    while calls < 3 or now_ms() - t0 < WARMUP_MS:
        f()
        calls += 1
    per_call = (now_ms() - t0) / calls
    reps = max(1, int(-(-SAMPLE_MS // per_call)))
    samples = []
    start = now_ms()
    while len(samples) < MIN_SAMPLES or now_ms() - start < CASE_MS:
        t = now_ms()
        for _ in range(reps):
            f()
        samples.append((now_ms() - t) / reps)
    return median(samples), len(samples)


def norm_module(norm, c, h, w):
    if norm == "batch":
        return nn.BatchNorm2d(c, eps=EPS, momentum=MOMENTUM, affine=True)
    if norm == "layer":
        return nn.LayerNorm([c, h, w], eps=LAYER_EPS, elementwise_affine=True)
    if norm == "instance":
        return nn.InstanceNorm2d(c, eps=EPS, affine=True, track_running_stats=False)
    if norm == "group":
        return nn.GroupNorm(GROUPS, c, eps=EPS, affine=True)
    raise ValueError(f"unknown norm `{norm}`")


def parse_shape(s):
    d = [int(v) for v in s.split("x")]
    if len(d) != 4 or min(d) <= 0:
        raise ValueError(f"shape `{s}` is not NxCxHxW")
    return d


def kernel_case(norm, shape, mode):
    n, c, h, w = parse_shape(shape)
    m = norm_module(norm, c, h, w).train()
    with torch.no_grad():
        # gamma = 1 + 0.25 u for LayerNorm and GroupNorm as in the benches; values do not matter
        # for the speed otherwise.
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-2, 2)
    x = torch.rand(n, c, h, w) * 4 - 2
    if mode == "fwd":
        def f():
            with torch.no_grad():
                m(x)
    elif mode == "fwdbwd":
        x.requires_grad_(True)
        dy = torch.rand(n, c, h, w) * 4 - 2

        def f():
            x.grad = None
            m.weight.grad = None
            m.bias.grad = None
            m(x).backward(dy)
    else:
        raise ValueError(f"mode must be fwd or fwdbwd, not `{mode}`")
    return time_calls(f)


# The models of norm-train, by name: the twin's definitions (tools/torch_twin.py), so the harness
# and the twin time and train the same networks. cnn/plain: widths 16/32/64; GroupNorm with 8
# groups; eps 1e-5; one worker.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch_twin  # noqa: E402

MODELS = {
    "cnn": lambda norm: torch_twin.Plain(norm, (16, 32, 64), 8, 1, False),
    "plain": lambda norm: torch_twin.Plain(norm, (16, 32, 64), 8, 1, False),
    **{m: (lambda norm, d=d: torch_twin.ResNet(d, 1.0, norm, 8, 1, False))
       for m, d in torch_twin.DEPTH.items()},
}


def train_case(model, norm, batch):
    if model not in MODELS:
        raise ValueError(f"unknown model `{model}` (known: {', '.join(MODELS)})")
    torch.manual_seed(0)
    net = MODELS[model](norm).train()
    opt = torch.optim.SGD(torch_twin.param_groups(net, 5e-4), lr=0.01, momentum=0.9)
    xs = torch.randn(512, 3, 32, 32)
    ys = torch.randint(0, 10, (512,))

    def step():
        idx = torch.randint(0, 512, (batch,))
        x, y = xs[idx], ys[idx]
        t = now_ms()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        return now_ms() - t

    t0, warm = now_ms(), 0
    while warm < 5 or now_ms() - t0 < WARMUP_MS:
        step()
        warm += 1
    samples, total = [], 0.0
    while len(samples) < 20 or total < 2 * CASE_MS:
        ms = step()
        total += ms
        samples.append(ms)
    return median(samples), len(samples)


def flops_case(model, norm, batch):
    """The step's convolution and matmul FLOPs, forward and backward (see the module doc)."""
    from torch.utils.flop_counter import FlopCounterMode
    if model not in MODELS:
        raise ValueError(f"unknown model `{model}` (known: {', '.join(MODELS)})")
    net = MODELS[model](norm).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops()


def run(case):
    p = case.split(":")
    if p == ["info"]:
        print(json.dumps({"case": "info", "threads": torch.get_num_threads(),
                          "torch": torch.__version__,
                          "mkldnn": torch.backends.mkldnn.is_available()}), flush=True)
        return
    if len(p) == 4 and p[0] == "kernel":
        med, k = kernel_case(p[1], p[2], p[3])
    elif len(p) == 4 and p[0] == "flops":
        flops = flops_case(p[1], p[2], int(p[3]))
        print(json.dumps({"case": case, "flops": flops}), flush=True)
        return
    elif len(p) == 4 and p[0] == "train":
        med, k = train_case(p[1], p[2], int(p[3]))
    else:
        raise ValueError("not a case (see the module doc)")
    print(json.dumps({"case": case, "median_ms": round(med, 6), "samples": k}), flush=True)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_num_threads(threads())
    for case in sys.argv[1:]:
        try:
            run(case)
        except ValueError as e:
            print(f"torch_peer: {case}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
