#!/usr/bin/env python3
"""Loads a norm-cli checkpoint into a plain PyTorch module and checks that PyTorch gets the same
test accuracy as `norm-cli eval`.

    python tools/load_checkpoint.py MODEL.safetensors CIFAR_DIR [--norm-cli target/release/norm-cli]

CIFAR_DIR holds CIFAR-10 binary files (`norm-cli data export --out DIR` writes the synthetic set
in that format). The module is defined here from the checkpoint's `normlab.model` metadata, the
tensors are loaded with `load_state_dict(safetensors.torch.load_file(path))` (strict), the test
images are normalised with the checkpoint's `normlab.input_normalization`, and the accuracy in
eval mode is compared with `norm-cli eval --json` on the same files. Exit code 0 when they agree.
Needs torch, numpy and safetensors; not part of CI.
"""

import argparse
import json
import subprocess
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn


def make_norm(kind, c, hw, groups, eps):
    if kind == "batch":
        return nn.BatchNorm2d(c, eps=eps, momentum=0.1)
    if kind == "layer":
        return nn.LayerNorm([c, hw, hw], eps=eps)
    if kind == "instance":
        return nn.InstanceNorm2d(c, eps=eps, affine=True, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(groups, c, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class Net(nn.Module):
    """conv3x3 -> norm -> ReLU (-> 2x2 max pool after blocks 1 and 2), global average pool,
    linear: norm-train's CNN (docs/training.md)."""

    def __init__(self, widths, norm, groups, eps):
        super().__init__()
        c_in, hw = 3, 32
        for b, c in enumerate(widths, 1):
            setattr(self, f"conv{b}", nn.Conv2d(c_in, c, 3, padding=1))
            setattr(self, f"norm{b}", make_norm(norm, c, hw, groups, eps))
            c_in = c
            if b < 3:
                hw //= 2
        self.fc = nn.Linear(c_in, 10)

    def forward(self, x):
        for b in (1, 2, 3):
            x = torch.relu(getattr(self, f"norm{b}")(getattr(self, f"conv{b}")(x)))
            if b < 3:
                x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("data_dir")
    p.add_argument("--norm-cli", default="target/release/norm-cli")
    a = p.parse_args()

    with safe_open(a.checkpoint, "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["normlab.model"])
    normalization = json.loads(meta["normlab.input_normalization"])
    model = Net(cfg["widths"], cfg["norm"], cfg["groups"], cfg["eps"])
    model.load_state_dict(load_file(a.checkpoint))  # strict: every name and shape must match
    model.eval()

    raw = np.fromfile(f"{a.data_dir}/test_batch.bin", dtype=np.uint8).reshape(-1, 3073)
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    x = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    mean = torch.tensor(normalization["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 250]) for i in range(0, len(x), 250)])
    torch_acc = (logits.argmax(dim=1) == labels).float().mean().item()

    out = subprocess.run(
        [a.norm_cli, "eval", "--checkpoint", a.checkpoint, "--data", "cifar10",
         "--data-dir", a.data_dir, "--json"],
        check=True, capture_output=True, text=True,
    )
    ours = json.loads(out.stdout)["test_acc"]
    n = len(labels)
    print(f"{cfg['norm']} norm, {n} test images: PyTorch {torch_acc:.4f}, norm-cli {ours:.4f}")
    # Same images, same weights: the predictions agree except where two logits are within
    # float rounding of each other, so allow one image in a thousand.
    if abs(torch_acc - ours) * n > max(1, n // 1000):
        print("MISMATCH", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
