#!/usr/bin/env python3
"""PyTorch twin of norm-train: the same models, recipe and worker protocol, on a folder written
by `norm-cli data export` (CIFAR-10 binary files). Not part of CI; needs torch and numpy, and
safetensors for the modes that read or write checkpoints.

Modes
  train (default)  one JSON line per cell on stdout, in the shape of a results.jsonl line
                   (norm, batch, per_worker, seed, recipe, test_acc_per_epoch, ...); the recipe
                   carries "twin": "pytorch", so `norm-cli report` never mixes it with
                   norm-cli's cells.
  --throughput     training images/s per model x batch on random inputs, one JSON line each.
  --replay CKPT    loads trained models (normlab's or the twin's .safetensors, comma-separated)
                   and separates the weights from their running statistics: the test error as
                   saved; with the statistics re-estimated as `norm-cli sweep --recalibrate-bn`
                   does (a cumulative average over the first N train images, augmented, in
                   batches of --per-worker and of --batch); and the spread of the error when
                   the last epoch's running average is replayed --replay-reps times with the
                   weights frozen (train-mode forwards of fresh shuffles, worker 0's share,
                   momentum 0.1, starting from the saved statistics).
  --stream D       trains on normlab's random streams instead of torch's: the initial model
                   D/init.safetensors and the batches and augmentation of D/stream.bin, written
                   by `cargo run --release -p norm-train --example dump_stream -- D SEED`.
  --check-steps D  loads D/start.safetensors and the batches and learning rates written by
                   `cargo run --release -p norm-train --example dump_steps -- D ...`, takes the
                   same SGD steps in float32 and float64, and compares the weights and running
                   statistics with normlab's D/after_K.safetensors; with lr 0 (the weights
                   stay put) it compares every step's gradients instead.
  --check-grads D  loads D/model.safetensors (a normlab checkpoint) and D/batch.bin written by
                   `cargo run --release -p norm-train --example dump_grads -- D ...`, computes
                   the loss and every gradient in PyTorch and compares them with D/grads.bin.

What matches norm-train (norm-train/src/train.rs, data/batch.rs, model.rs, resnet.rs):
  * inputs normalised with the train set's per-channel mean and population std of x/255;
  * augmentation: zero-padded (black) random crop of +-4 pixels and a horizontal flip (p = 0.5);
  * each epoch a fresh permutation cut into floor(len/batch) batches (the rest dropped);
  * SGD momentum 0.9 (PyTorch semantics), weight decay 5e-4 on conv and linear weights only;
  * peak lr = base_lr * batch / lr_ref_batch, linear warm-up over round(warmup*steps) steps
    (peak*(t+1)/W), then half a cosine to 0 at the last step, set per step;
  * PyTorch's default init (conv/linear weights and biases U(-1/sqrt(fan_in), +)), norm weights 1;
  * BatchNorm momentum 0.1, eps 1e-5; LayerNorm over [C, H, W] with a per-element affine;
    InstanceNorm with affine and no running statistics; GroupNorm with --groups;
  * workers: each batch split into W equal shares, BatchNorm's statistics per share, running
    statistics from worker 0's share (or every share in turn), loss = mean over the batch;
  * evaluation in eval mode, batches of 250, after every epoch.
The random streams (init, shuffling, augmentation) are torch's, so cells agree with norm-cli's
within seed noise, not bit for bit.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 10
IMG = 3 * 32 * 32


# ---------------------------------------------------------------- data

def read_cifar_bin(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % (IMG + 1):
        sys.exit(f"error: {path} is not CIFAR-10 binary (size {raw.size})")
    rec = raw.reshape(-1, IMG + 1)
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), rec[:, 0].astype(np.int64)


def load_folder(d):
    xs, ys = [], []
    for k in range(1, 6):
        p = os.path.join(d, f"data_batch_{k}.bin")
        if os.path.exists(p):
            x, y = read_cifar_bin(p)
            xs.append(x)
            ys.append(y)
    if not xs:
        sys.exit(f"error: no data_batch_K.bin in {d}")
    test = read_cifar_bin(os.path.join(d, "test_batch.bin"))
    return (np.concatenate(xs), np.concatenate(ys)), test


def normalizer(train_x):
    x = train_x.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    std[std <= 0] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def augment(xb, gen, pad=4, flip=True):
    """xb: uint8 [n, 3, 32, 32] -> uint8, random crop (zero padding) and flip per image, drawn
    from `gen`: every image's crop offsets, then every image's flip."""
    n = xb.shape[0]
    rec = np.zeros((n, 3), dtype=np.int64)
    if pad > 0:
        rec[:, :2] = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen).numpy() - pad
    if flip:
        rec[:, 2] = (torch.rand(n, generator=gen) < 0.5).numpy()
    return augment_as_given(xb, rec, pad)


def augment_as_given(xb, rec, pad=4):
    """xb: uint8 [n, 3, 32, 32]; rec: [n, 3] of (dy, dx, flip), |dy|, |dx| <= pad, as
    `augment` or normlab drew them (output pixel (y, x) reads source (y + dy, x' + dx),
    x' = 31 - x when flipped, zero outside)."""
    padded = np.zeros((xb.shape[0], 3, 32 + 2 * pad, 32 + 2 * pad), dtype=np.uint8)
    padded[:, :, pad:pad + 32, pad:pad + 32] = xb
    out = np.empty_like(xb)
    for i, (dy, dx, flip) in enumerate(rec):
        out[i] = padded[i, :, pad + dy:pad + dy + 32, pad + dx:pad + dx + 32]
        if flip:
            out[i] = out[i, :, :, ::-1]
    return out


def read_stream(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    raw = np.fromfile(os.path.join(d, "stream.bin"), dtype=np.dtype([("i", "<u2"), ("dy", "i1"), ("dx", "i1"), ("flip", "u1")]))
    n = meta["epochs"] * meta["steps"] * meta["batch"]
    if raw.size != n:
        sys.exit(f"error: {d}/stream.bin holds {raw.size} images, meta.json says {n}")
    idx = raw["i"].astype(np.int64).reshape(meta["epochs"], meta["steps"] * meta["batch"])
    aug = np.stack([raw["dy"], raw["dx"], raw["flip"]], 1).astype(np.int64).reshape(meta["epochs"], -1, 3)
    return meta, idx, aug


def to_input(xb, mean, std):
    x = torch.from_numpy(np.ascontiguousarray(xb)).to(torch.get_default_dtype()) / 255.0
    return (x - torch.from_numpy(mean)[None, :, None, None]) / torch.from_numpy(std)[None, :, None, None]


# ---------------------------------------------------------------- norms

class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose train-mode statistics are computed per share of `workers` equal shares
    (data-parallel workers without synchronised BatchNorm). Running statistics follow worker 0's
    share, as DistributedDataParallel keeps rank 0's buffers, or every share in turn."""

    def __init__(self, c, workers=1, every=False):
        super().__init__(c, eps=1e-5, momentum=0.1)
        self.workers = workers
        self.every = every

    def forward(self, x):
        if not self.training or self.workers == 1:
            return super().forward(x)
        self.num_batches_tracked += 1
        outs = []
        for i, part in enumerate(x.chunk(self.workers, dim=0)):
            track = i == 0 or self.every
            outs.append(F.batch_norm(
                part,
                self.running_mean if track else None,
                self.running_var if track else None,
                self.weight, self.bias, True, self.momentum, self.eps))
        return torch.cat(outs, dim=0)


def make_norm(kind, c, hw, groups, workers, every):
    if kind == "batch":
        return SplitBatchNorm2d(c, workers, every)
    if kind == "layer":
        return nn.LayerNorm([c, hw, hw], eps=1e-5)
    if kind == "instance":
        return nn.InstanceNorm2d(c, eps=1e-5, affine=True, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(groups, c, eps=1e-5)
    if kind == "none":
        return nn.Identity()
    sys.exit(f"error: unknown norm `{kind}`")


# ---------------------------------------------------------------- models

class Plain(nn.Module):
    """norm-train's plain CNN: three conv3x3 (bias) -> norm -> ReLU blocks, 2x2 max pool after
    the first two, global average pool, linear."""

    def __init__(self, norm, widths, groups, workers, every):
        super().__init__()
        c_in, hw = 3, 32
        for b, c in enumerate(widths, 1):
            setattr(self, f"conv{b}", nn.Conv2d(c_in, c, 3, padding=1, bias=True))
            setattr(self, f"norm{b}", make_norm(norm, c, hw, groups, workers, every))
            c_in = c
            if b < 3:
                hw //= 2
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x):
        for b in (1, 2, 3):
            x = F.relu(getattr(self, f"norm{b}")(getattr(self, f"conv{b}")(x)))
            if b < 3:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


class Block(nn.Module):
    def __init__(self, c_in, c, stride, hw, mk):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False)
        self.norm1 = mk(c, hw)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm2 = mk(c, hw)
        if stride != 1 or c_in != c:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=stride, bias=False), mk(c, hw))
        else:
            self.shortcut = None

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """He et al. 2016 section 4.2, as norm-train/src/resnet.rs: 3x3 conv to 16w, three stages of
    n basic blocks at 16w/32w/64w (stride 2 entering stages 2 and 3), norm after every conv and
    in the 1x1 projection shortcuts, GAP, linear; convs without bias."""

    def __init__(self, n, width, norm, groups, workers, every):
        super().__init__()
        widths = [int(round(c * width)) for c in (16, 32, 64)]
        mk = lambda c, hw: make_norm(norm, c, hw, groups, workers, every)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.norm1 = mk(widths[0], 32)
        c_in, hw = widths[0], 32
        for s, c in enumerate(widths, 1):
            blocks = []
            for i in range(n):
                stride = 2 if s > 1 and i == 0 else 1
                hw = (hw - 1) // stride + 1
                blocks.append(Block(c_in, c, stride, hw, mk))
                c_in = c
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c_in, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


DEPTH = {"resnet8": 1, "resnet14": 2, "resnet20": 3}


def build(a, norm, workers):
    every = a.running_from == "every"
    if a.model == "plain":
        return Plain(norm, a.widths, a.groups, workers, every)
    return ResNet(DEPTH[a.model], a.width, norm, a.groups, workers, every)


def param_groups(model, wd):
    decay, rest = [], []
    for name, p in model.named_parameters():
        is_weight = name.endswith("weight")
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        (decay if is_weight and isinstance(owner, (nn.Conv2d, nn.Linear)) else rest).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


# ---------------------------------------------------------------- training

def add_grad_noise(model, size, gen):
    """normlab's --grad-noise: Gaussian noise of `size` times each gradient tensor's RMS added to
    it before the update (from a stream of its own, so the other draws stay the same)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                rms = p.grad.double().pow(2).mean().sqrt().item()
                p.grad.add_(torch.randn(p.grad.shape, generator=gen, dtype=torch.float64).to(p.grad.dtype), alpha=size * rms)


def learning_rate(peak, t, warmup, total, schedule="cosine"):
    if t < warmup:
        return peak * (t + 1) / warmup
    if schedule == "step":  # x0.1 at 50 % and 75 % of the run, as norm-train's Schedule::Step
        return peak * (0.01 if 4 * t >= 3 * total else 0.1 if 2 * t >= total else 1.0)
    span = max(total - warmup, 1)
    return peak * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / span))


def evaluate(model, x, y, mean, std):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), 250):
            logits = model(to_input(x[i:i + 250], mean, std))
            correct += (logits.argmax(1).numpy() == y[i:i + 250]).sum()
    model.train()
    return float(correct) / len(y)


def train_cell(a, data, norm, batch, per_worker, seed):
    (tx, ty), (vx, vy) = data
    workers = batch // per_worker if per_worker else 1
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    noise_gen = torch.Generator().manual_seed(seed + 2_000_003)
    model = build(a, norm, workers)
    mean, std = normalizer(tx)
    if a.stream:
        smeta, s_idx, s_aug = read_stream(a.stream)
        if (smeta["batch"], smeta["epochs"], smeta["train_size"]) != (batch, a.epochs, len(ty)):
            sys.exit(f"error: {a.stream} is a stream of batch {smeta['batch']}, {smeta['epochs']} epochs, "
                     f"{smeta['train_size']} images; this cell has {batch}, {a.epochs}, {len(ty)}")
        model = twin_of(argparse.Namespace(**vars(a)), read_ckpt(os.path.join(a.stream, "init.safetensors")),
                        workers, torch.get_default_dtype())
        x0 = os.path.join(a.stream, "x0.bin")
        if os.path.exists(x0):
            mine = to_input(augment_as_given(tx[s_idx[0][:batch]], s_aug[0][:batch]), mean, std).numpy()
            theirs = np.fromfile(x0, dtype="<f4").reshape(mine.shape)
            err = float(np.abs(mine - theirs).max())
            print(f"stream: first batch read as normlab filled it to {err:.1e}", file=sys.stderr)
            if err > 1e-4:
                sys.exit(f"error: {a.stream}: the first batch does not match normlab's ({err:.1e})")
    model.train()
    opt = torch.optim.SGD(param_groups(model, a.weight_decay), lr=0.0, momentum=a.momentum)
    steps = len(ty) // batch
    total = steps * a.epochs
    warmup = min(int(round(a.warmup * steps)), total)
    peak = a.lr * batch / a.lr_ref_batch
    accs, losses, step_secs = [], [], 0.0
    t_cell = time.time()
    for epoch in range(a.stop_after or a.epochs):
        order = s_idx[epoch] if a.stream else torch.randperm(len(ty), generator=gen).numpy()
        loss_sum = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            if a.stream:
                xb = augment_as_given(tx[idx], s_aug[epoch][s * batch:(s + 1) * batch])
            else:
                xb = tx[idx] if a.no_augment else augment(tx[idx], gen)
            x = to_input(xb, mean, std)
            yb = torch.from_numpy(ty[idx])
            lr = learning_rate(peak, epoch * steps + s, warmup, total, a.schedule)
            for g in opt.param_groups:
                g["lr"] = lr
            t0 = time.time()
            loss = F.cross_entropy(model(x), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if a.grad_noise > 0:
                add_grad_noise(model, a.grad_noise, noise_gen)
            opt.step()
            step_secs += time.time() - t0
            loss_sum += loss.item()
            if not math.isfinite(loss.item()):
                break
        losses.append(loss_sum / steps)
        accs.append(evaluate(model, vx, vy, mean, std))
        print(f"{norm} batch {batch} per-worker {per_worker} seed {seed}: epoch {epoch + 1}/{a.epochs} "
              f"loss {losses[-1]:.4f} test acc {100 * accs[-1]:.1f} %", file=sys.stderr)
    recipe = {
        "twin": "pytorch", "torch": torch.__version__, "model": a.model,
        "width": a.width if a.model != "plain" else None, "widths": a.widths if a.model == "plain" else None,
        "epochs": a.epochs, "base_lr": a.lr, "lr_ref_batch": a.lr_ref_batch, "momentum": a.momentum,
        "weight_decay": a.weight_decay, "warmup_epochs": a.warmup, "schedule": a.schedule,
        "augment": not a.no_augment, "groups": a.groups, "running_from": a.running_from, "dtype": a.dtype,
        "streams": "normlab" if a.stream else "torch",
        "data": {"dir": os.path.abspath(a.data), "train_size": int(len(ty)), "test_size": int(len(vy))},
    }
    if a.grad_noise > 0:
        recipe["grad_noise"] = a.grad_noise
    if per_worker:
        recipe["batch"] = batch
    if a.save_models:
        os.makedirs(a.save_models, exist_ok=True)
        save_model(model, a, norm, os.path.join(a.save_models, f"{norm}-b{batch}-k{per_worker or batch}-s{seed}.safetensors"), mean, std)
    extra = {}
    if a.recalibrate and norm == "batch":
        k = per_worker or batch
        extra["recalibrated"] = {"images": a.recalibrate, "augmented": not a.no_augment,
                                 "per_worker": recalibrated_acc(model, data, mean, std, a.recalibrate, k),
                                 "whole_batch": recalibrated_acc(model, data, mean, std, a.recalibrate, batch)}
    return {**extra,
        "norm": norm, "batch": batch, "per_worker": per_worker, "seed": seed, "recipe": recipe,
        "test_acc_per_epoch": accs, "train_loss_per_epoch": losses, "final_test_acc": accs[-1],
        "images_per_sec": round(steps * batch * a.epochs / max(step_secs, 1e-9)),
        "seconds": round(time.time() - t_cell, 3), "simd": "torch", "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- running statistics

def batch_norms(model):
    return [m for m in model.modules() if isinstance(m, SplitBatchNorm2d)]


def recalibrated_acc(model, data, mean, std, images, batch):
    """Test accuracy with every BatchNorm's running statistics replaced by the cumulative average
    (momentum None) of the batch statistics of train-mode forwards of `batch` images at a time
    over the first `images` training images, augmented from a fixed seed: norm-train's
    `Model::recalibrate_batch_norm` with one worker. The model's own statistics are lost."""
    (tx, _), (vx, vy) = data
    bns = batch_norms(model)
    kept = [(m.workers, m.momentum) for m in bns]
    for m in bns:
        m.workers, m.momentum = 1, None
        m.reset_running_stats()
    gen = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for i in range(0, images // batch * batch, batch):
            model(to_input(augment(tx[i:i + batch], gen), mean, std))
    for m, (w, mom) in zip(bns, kept):
        m.workers, m.momentum = w, mom
    return evaluate(model, vx, vy, mean, std)


def replayed_accs(model, data, mean, std, batch, reps, seed):
    """Test accuracies after the last epoch's running average is redone `reps` times with the
    weights frozen: each time from the model's saved statistics, one epoch of train-mode
    forwards over a fresh shuffle and augmentation (workers as the model was built, statistics
    from worker 0's share, momentum 0.1)."""
    (tx, ty), (vx, vy) = data
    saved = {k: v.clone() for k, v in model.state_dict().items() if ".running_" in k}
    gen = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(reps):
        model.load_state_dict({**model.state_dict(), **saved})
        order = torch.randperm(len(ty), generator=gen).numpy()
        model.train()
        with torch.no_grad():
            for s in range(len(ty) // batch):
                model(to_input(augment(tx[order[s * batch:(s + 1) * batch]], gen), mean, std))
        accs.append(evaluate(model, vx, vy, mean, std))
    model.load_state_dict({**model.state_dict(), **saved})
    return accs


def save_model(model, a, norm, path, mean, std):
    """A checkpoint `norm-cli eval` and normlab's examples load (the twin's own metadata
    besides): normlab's layout version, model (BatchNorm with its settings spelled out) and
    input normalisation."""
    from safetensors.torch import save_file
    spec = {"batch": "batch:eps=0.00001,momentum=0.1,affine=true,track_running_stats=true",
            "group": f"group:groups={a.groups}"}.get(norm, norm)
    model_meta = {"arch": a.model, "width": a.width, "widths": a.widths, "norm": spec}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={
        "format": "pt", "normlab.checkpoint": "1", "normlab.model": json.dumps(model_meta),
        "normlab.input_normalization": json.dumps({"mean": [float(v) for v in mean], "std": [float(v) for v in std]}),
        "twin": "pytorch"})


def replay(a):
    data = load_folder(a.data)
    mean, std = normalizer(data[0][0])
    k = a.per_worker[0] if a.per_worker else a.batch
    for path in a.replay.split(","):
        ckpt = read_ckpt(path)
        m = ckpt[0]
        if m["norm"] != "batch":
            sys.exit(f"error: {path}: --replay needs a BatchNorm model, this one has {m['norm']}")
        model = twin_of(a, ckpt, a.batch // k, torch.get_default_dtype())
        saved = evaluate(model, *data[1], mean, std)
        accs = replayed_accs(model, data, mean, std, a.batch, a.replay_reps, a.first_seed)
        err = 100 * (1 - np.array(accs))
        out = {"checkpoint": path, "twin": m.get("twin", "normlab"), "per_worker": k, "batch": a.batch,
               "saved_acc": saved, "replayed_accs": accs,
               "replayed_error_mean": float(err.mean()), "replayed_error_std": float(err.std(ddof=1)) if len(err) > 1 else None}
        if a.recalibrate:
            out["recalibrated"] = {"images": a.recalibrate,
                                   "per_worker": recalibrated_acc(model, data, mean, std, a.recalibrate, k),
                                   "whole_batch": recalibrated_acc(model, data, mean, std, a.recalibrate, a.batch)}
        print(json.dumps(out))
        sys.stdout.flush()


# ---------------------------------------------------------------- throughput

def throughput(a):
    for model_name in a.models:
        for batch in a.batches:
            a2 = argparse.Namespace(**vars(a))
            a2.model = model_name
            torch.manual_seed(0)
            model = build(a2, a.norms[0], 1)
            opt = torch.optim.SGD(param_groups(model, a.weight_decay), lr=0.01, momentum=a.momentum)
            x = torch.randn(batch, 3, 32, 32)
            y = torch.randint(0, NUM_CLASSES, (batch,))

            def step():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            for _ in range(3):
                step()
            n, t0 = 0, time.time()
            while time.time() - t0 < a.seconds:
                step()
                n += 1
            ips = n * batch / (time.time() - t0)
            print(json.dumps({"model": model_name, "norm": a.norms[0], "batch": batch,
                              "images_per_sec": round(ips, 1), "threads": torch.get_num_threads(),
                              "torch": torch.__version__}))
            sys.stdout.flush()


# ---------------------------------------------------------------- many steps

def twin_of(a, ckpt, workers, dt):
    """The twin model, in dtype `dt` with `workers`, of a checkpoint read by `read_ckpt`
    (`(config, tensors)`); sets `a`'s architecture fields from it. Every tensor must fit and
    every PyTorch tensor but the batch counters must be there."""
    m, tensors = ckpt
    a.model, a.width, a.groups = m.get("arch", "plain"), m.get("width", 1.0), m["groups"]
    a.widths = m.get("widths") or a.widths
    model = build(a, m["norm"], workers).to(dt)
    sd = model.state_dict()
    for name, v in tensors.items():
        if name not in sd or tuple(sd[name].shape) != v.shape:
            sys.exit(f"error: checkpoint tensor {name} {v.shape} does not fit the PyTorch {a.model}")
        sd[name] = torch.from_numpy(v.copy()).to(dt)
    missing = [k for k in sd if k not in tensors and not k.endswith("num_batches_tracked")]
    if missing:
        sys.exit(f"error: PyTorch tensors missing from the checkpoint: {missing}")
    model.load_state_dict(sd)
    return model


def check_steps(a):
    d = a.check_steps
    meta = json.load(open(os.path.join(d, "meta.json")))
    b, steps = meta["batch"], meta["steps"]
    x = np.fromfile(os.path.join(d, "x.bin"), dtype="<f4").reshape(steps, b, 3, 32, 32)
    y = np.fromfile(os.path.join(d, "labels.bin"), dtype="<u8").astype(np.int64).reshape(steps, b)
    a.running_from = meta["running_from"]
    # A segment of a longer run (dump_steps offset=, total=): step t is step offset + t of it.
    offset = meta.get("offset", 0)
    start = read_ckpt(os.path.join(d, "start.safetensors"))
    meta_norm = start[0]["norm"]

    def run(dt):
        model = twin_of(a, start, meta["workers"], dt)
        model.train()
        opt = torch.optim.SGD(param_groups(model, meta["weight_decay"]), lr=meta["lr"], momentum=meta["momentum"])
        states, losses = {}, []
        warmup, schedule = meta.get("warmup", 0), meta.get("schedule", "step")
        total = meta.get("total", steps)
        total = total if schedule == "cosine" else 4 * total  # "step": held, as dump_steps
        for t in range(steps):
            for g in opt.param_groups:
                g["lr"] = learning_rate(meta["lr"], offset + t, warmup, total, schedule)
            loss = F.cross_entropy(model(torch.from_numpy(x[t]).to(dt)), torch.from_numpy(y[t]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if offset + t + 1 in meta["saved_at"]:
                states[offset + t + 1] = {k: v.double().numpy().copy() for k, v in model.state_dict().items()
                                 if not k.endswith("num_batches_tracked")}
        if a.save_final and dt == torch.float32:
            # For a hand-over: normlab (dump_steps START) or the twin continues from here.
            norm_in = start[0]["input_normalization"]
            save_model(model, a, meta_norm, a.save_final, norm_in["mean"], norm_in["std"])
        return states, losses

    if meta["lr"] == 0:
        return check_step_grads(a, d, meta, x, y, start)
    s32, l32 = run(torch.float32)
    s64, l64 = run(torch.float64) if not a.no_float64 else ({}, [float("nan")] * steps)

    # Relative to the tensor's largest value, floored at 1e-3 of the largest weight: a norm's
    # bias starts at 0, and after one step it holds only that step's rounding-sized update.
    def worst(mine, ref, running):
        top = max(np.abs(v).max() for k, v in ref.items() if (".running_" in k) == running)
        rel = {k: float(np.abs(mine[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-3 * top))
               for k in ref if (".running_" in k) == running}
        name = max(rel, key=rel.get)
        return rel[name], name

    for k in sorted(s64):
        _, ours = read_ckpt(os.path.join(d, f"after_{k}.safetensors"))
        ours = {n: v.astype(np.float64) for n, v in ours.items()}
        row = {"step": k}
        for part, running in (("weights", False), ("running_stats", True)):
            row[part] = {}
            for label, mine, ref in (("normlab_vs_torch64", ours, s64[k]), ("torch32_vs_torch64", s32[k], s64[k]),
                                     ("normlab_vs_torch32", ours, s32[k])):
                row[part][label], row[part][label + "_worst_tensor"] = worst(mine, ref, running)
        i = k - offset - 1
        row["loss"] = {"normlab": meta["losses"][i], "torch32": l32[i], "torch64": l64[i]}
        print(json.dumps(row))
        sys.stdout.flush()
    # How far each tool's trajectory has trained: the mean train loss over windows of steps
    # (one batch's loss is too noisy to compare trajectories by).
    size = max(steps // 6, 1)
    means = lambda ls: [float(np.mean(ls[i:i + size])) for i in range(0, steps - size + 1, size)]
    print(json.dumps({"loss_windows": {"steps_per_window": size, "stream_seed": meta.get("stream_seed"),
                                       "normlab": means(meta["losses"]), "torch32": means(l32),
                                       "torch64": means(l64)}}))


def step_grad_measures(mine, ref, w64):
    """One step's measures of one tool's gradients `mine` against PyTorch's float64 `ref` (lists
    of per-tensor arrays in parameter order), each tensor relative to its largest float64
    gradient (floored at 1e-3 of the model's largest): the worst element; the RMS of the
    deviation over the RMS of the gradient (--grad-noise's unit), the median over tensors; a
    bias rather than noise, the whole deviation e projected on the gradient, <e, g>/<g, g>, and
    on the weights, <e, w>/(|w| |g|) (a drift like weight decay's); and the projection per
    tensor, to find a bias confined to one layer (a norm's γ, say)."""
    floor = 1e-3 * max(np.abs(r).max() for r in ref)
    worst, rel, per_tensor = 0.0, [], []
    for v, r in zip(mine, ref):
        worst = max(worst, np.abs(v - r).max() / max(np.abs(r).max(), floor))
        rel.append(np.sqrt(np.mean((v - r) ** 2)) / max(np.sqrt(np.mean(r * r)), floor))
        per_tensor.append(float((v - r) @ r) / max(float(r @ r), 1e-300))
    g = np.concatenate(ref)
    e = np.concatenate(mine) - g
    gg = float(g @ g)
    return {"worst": float(worst), "rms": float(np.median(rel)), "along_grad": float(e @ g) / gg,
            "along_weights": float(e @ w64) / (np.linalg.norm(w64) * np.sqrt(gg)), "per_tensor": per_tensor}


def check_step_grads(a, d, meta, x, y, start):
    """With lr 0 every step of `dump_steps` is at the same weights: compares each step's
    gradients (normlab's grads.bin; PyTorch's in float32) with PyTorch's in float64
    ([`step_grad_measures`]), and summarises the steps."""
    names = meta["params"]
    raw = np.fromfile(os.path.join(d, "grads.bin"), dtype="<f4").astype(np.float64).reshape(meta["steps"], -1)
    models = {dt: twin_of(a, start, meta["workers"], dt) for dt in (torch.float32, torch.float64)}
    w64 = np.concatenate([dict(models[torch.float64].named_parameters())[n].detach().double().numpy().ravel()
                          for n in names])
    steps = {"normlab": [], "torch32": []}
    for t in range(meta["steps"]):
        g = {}
        for dt, m in models.items():
            m.train()
            m.zero_grad()
            F.cross_entropy(m(torch.from_numpy(x[t]).to(dt)), torch.from_numpy(y[t])).backward()
            params = dict(m.named_parameters())
            g[dt] = [params[n].grad.double().numpy().ravel() for n in names]
        ref = g[torch.float64]
        cuts = np.cumsum([r.size for r in ref])[:-1]
        mine = {"normlab": np.split(raw[t], cuts), "torch32": g[torch.float32]}
        for k, v in mine.items():
            steps[k].append(step_grad_measures(v, ref, w64))
    out = {"steps": meta["steps"]}
    for k, ms in steps.items():
        v = np.array([m["worst"] for m in ms])
        rms = [m["rms"] for m in ms]
        out[k + "_vs_torch64"] = {"median": float(np.median(v)), "max": float(v.max()),
                                 "steps_above_1e-4": int((v > 1e-4).sum()),
                                 "rms_relative_median": float(np.median(rms)),
                                 "rms_relative_mean": float(np.mean(rms)),
                                 "rms_relative_max": float(np.max(rms))}
        for part in ("along_grad", "along_weights"):
            b = np.array([m[part] for m in ms])
            out[k + "_vs_torch64"]["bias_" + part] = [float(b.mean()), float(b.std(ddof=1) / np.sqrt(len(b)))]
        # The three tensors whose bias stands out most from their own step-to-step spread.
        ts = []
        for i, name in enumerate(names):
            b = np.array([m["per_tensor"][i] for m in ms])
            se = b.std(ddof=1) / np.sqrt(len(b))
            ts.append((abs(b.mean()) / se if se > 0 else 0.0, name, float(b.mean()), float(se)))
        out[k + "_vs_torch64"]["bias_along_grad_top_tensors"] = [
            {"tensor": n, "mean": m, "se": e} for _, n, m, e in sorted(ts, reverse=True)[:3]]
    print(json.dumps(out))


# ---------------------------------------------------------------- gradient check

def read_ckpt(path):
    """A normlab .safetensors checkpoint: (model config, {name: array})."""
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
        if "normlab.model" not in meta:
            sys.exit(f"error: {path} is not a normlab checkpoint (no normlab.model metadata)")
        out = {k: f.get_tensor(k) for k in f.keys()}
    model = json.loads(meta["normlab.model"])
    model["twin"] = meta.get("twin", model.get("twin", "normlab"))
    # The norm is the kernels' descriptor spec, `name:key=value,...`, or null for none.
    spec = model.get("norm") or "none"
    name, _, settings = spec.partition(":")
    kv = dict(p.split("=", 1) for p in settings.split(",") if "=" in p)
    model["norm"], model["groups"] = name, int(kv.get("groups", 8))
    if "normlab.input_normalization" in meta:
        model["input_normalization"] = json.loads(meta["normlab.input_normalization"])
    return model, out


class _TieRelu(torch.autograd.Function):
    """ReLU whose gradient mask is flipped at `flip` (flat indices): the other side of a tie."""

    @staticmethod
    def forward(ctx, x, flip):
        mask = x > 0
        if flip:
            m = mask.view(-1)
            m[list(flip)] = ~m[list(flip)]
        ctx.save_for_backward(mask)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask, None


def check_grads(a):
    m, tensors = read_ckpt(os.path.join(a.check_grads, "model.safetensors"))
    meta = json.load(open(os.path.join(a.check_grads, "meta.json")))
    a.model, a.width, a.widths, a.groups = m.get("arch", "plain"), m.get("width", 1.0), m["widths"], m["groups"]
    a.running_from = meta.get("running_from", "worker0")
    n = meta["n"]
    x32 = np.fromfile(os.path.join(a.check_grads, "x.bin"), dtype="<f4").reshape(n, 3, 32, 32).copy()
    y = torch.from_numpy(np.fromfile(os.path.join(a.check_grads, "labels.bin"), dtype="<u8").astype(np.int64))
    ours = np.fromfile(os.path.join(a.check_grads, "grads.bin"), dtype="<f4").astype(np.float64)

    def run(dt, flips=None):
        """Loss, gradients and pre-ReLU inputs in dtype `dt`; `flips` maps a ReLU call's index
        to the flat indices whose gradient mask is flipped."""
        flips = flips or {}
        model = twin_of(a, (m, tensors), meta["workers"], dt)
        model.train()
        pre, relu = [], F.relu

        def tie_relu(x, inplace=False):
            pre.append(x.detach().double().numpy().ravel())
            return _TieRelu.apply(x, flips.get(len(pre) - 1, []))

        F.relu = tie_relu
        try:
            loss = F.cross_entropy(model(torch.from_numpy(x32).to(dt)), y)
        finally:
            F.relu = relu
        loss.backward()
        params = dict(model.named_parameters())
        grads = {k: params[k].grad.double().numpy().ravel() for k in meta["params"]}
        running = {k: v.double().numpy().ravel() for k, v in model.state_dict().items() if ".running_" in k}
        return loss.item(), grads, pre, running

    # Relative to the tensor's largest gradient, floored at 1e-3 of the model's largest: a conv
    # bias before BatchNorm has a zero gradient up to rounding.
    def errors(mine_all, ref_all, top):
        at, out = 0, {}
        for name in meta["params"]:
            ref = ref_all[name]
            mine = mine_all[at:at + ref.size] if isinstance(mine_all, np.ndarray) else mine_all[name]
            at += ref.size
            out[name] = np.abs(mine - ref).max() / max(np.abs(ref).max(), 1e-3 * top)
        return out

    # PyTorch in float32 (what the twin trains with) and in float64 (the oracle for both).
    loss32, g32, _, _ = run(torch.float32)
    loss64, g64, pre, run64 = run(torch.float64)
    top = max(np.abs(g).max() for g in g64.values())
    e = {"normlab_vs_torch32": errors(ours, g32, top), "normlab_vs_torch64": errors(ours, g64, top),
         "torch32_vs_torch64": errors(g32, g64, top)}
    # ReLU ties: a pre-ReLU value within float32 rounding of 0 falls on either side in either
    # tool, and moves its channel's gradients by a whole element's share. Each tie is flipped in
    # turn in the float64 model and kept flipped if that brings normlab's gradients closer.
    ties = [(i, int(j)) for i, v in enumerate(pre) for j in np.flatnonzero(np.abs(v) < 1e-6 * max(1.0, np.abs(v).max()))]
    flips, best = {}, max(e["normlab_vs_torch64"].values())
    resolved = e["normlab_vs_torch64"]
    for i, j in ties[:32]:
        trial = {k: list(v) for k, v in flips.items()}
        trial.setdefault(i, []).append(j)
        err = errors(ours, run(torch.float64, trial)[1], top)
        if max(err.values()) < best:
            flips, best, resolved = trial, max(err.values()), err
    if ties:
        e["normlab_vs_torch64_ties_resolved"] = resolved
        print(f"{len(ties)} ReLU tie(s) (|pre-ReLU| < 1e-6 in float64); {sum(map(len, flips.values()))} "
              f"flipped to normlab's side", file=sys.stderr)
    for name in meta["params"]:
        print(f"{name:32s} " + "  ".join(f"{k} {v[name]:.1e}" for k, v in e.items()), file=sys.stderr)
    worst = {k: float(max(v.values())) for k, v in e.items()}
    # The running statistics after the step (normlab's from model_after.safetensors, if written).
    after = os.path.join(a.check_grads, "model_after.safetensors")
    diffs = {}
    if os.path.exists(after) and run64:
        _, ours_after = read_ckpt(after)
        diffs = {k: float(np.abs(ours_after[k].astype(np.float64).ravel() - v).max() / max(np.abs(v).max(), 1e-12))
                 for k, v in run64.items() if k in ours_after}
        for k, d in diffs.items():
            print(f"{k:32s} running statistics normlab_vs_torch64 {d:.1e}", file=sys.stderr)
    print(json.dumps({"model": a.model, "norm": m["norm"], "workers": meta["workers"],
                      "loss_normlab": meta["loss"], "loss_torch32": loss32, "loss_torch64": loss64,
                      "relu_ties": len(ties), "worst_relative_grad_diff": worst,
                      "worst_relative_running_stats_diff": max(diffs.values()) if diffs else None}))


# ---------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder written by `norm-cli data export`")
    p.add_argument("--model", default="plain", choices=["plain", "resnet8", "resnet14", "resnet20"])
    p.add_argument("--models", type=lambda s: s.split(","), default=["resnet8", "resnet20"],
                   help="--throughput: models")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64])
    p.add_argument("--norms", type=lambda s: s.split(","), default=["batch"])
    p.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[32])
    p.add_argument("--per-worker", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="images per worker at the total --batch (BatchNorm only; other norms run once)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", type=int, default=1, help="how many seeds, from --first-seed")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-ref-batch", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step"])
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--running-from", default="worker0", choices=["worker0", "every"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--grad-noise", type=float, default=0.0, metavar="SIZE",
                   help="add Gaussian noise of SIZE times each gradient tensor's RMS (normlab's --grad-noise)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="train in this precision (float64: the twin without float32's rounding)")
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--seconds", type=float, default=5.0, help="--throughput: seconds per measurement")
    p.add_argument("--check-grads", metavar="DIR")
    p.add_argument("--check-steps", metavar="DIR")
    p.add_argument("--save-final", metavar="PATH",
                   help="--check-steps: save PyTorch float32's model after the last step (normlab checkpoint)")
    p.add_argument("--no-float64", action="store_true",
                   help="--check-steps: run PyTorch in float32 only (the loss windows, no weight comparison)")
    p.add_argument("--stop-after", type=int, default=0, metavar="E",
                   help="stop after E epochs of the --epochs schedule (to save a model from mid-training)")
    p.add_argument("--stream", metavar="DIR", help="train on normlab's init and batches (dump_stream)")
    p.add_argument("--save-models", metavar="DIR", help="save each cell's trained model here (.safetensors)")
    p.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="also report BatchNorm's test accuracy with statistics re-estimated over N train images")
    p.add_argument("--replay", metavar="CKPT[,CKPT...]")
    p.add_argument("--replay-reps", type=int, default=10)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_default_dtype(getattr(torch, a.dtype))
    if a.throughput:
        return throughput(a)
    if a.check_grads:
        return check_grads(a)
    if a.check_steps:
        return check_steps(a)
    if a.replay:
        if not a.data:
            sys.exit("error: --replay needs --data DIR (the folder the models were trained on)")
        return replay(a)
    if not a.data:
        sys.exit("error: --data DIR is required (a folder written by `norm-cli data export`)")
    data = load_folder(a.data)
    for norm in a.norms:
        if a.per_worker:
            bad = [k for k in a.per_worker if k <= 0 or a.batch % k]
            if bad:
                sys.exit(f"error: --per-worker {bad[0]} does not divide --batch {a.batch}")
            shapes = [(a.batch, k) for k in (a.per_worker if norm == "batch" else [a.batch])]
        else:
            shapes = [(b, None) for b in a.batches]
        for batch, k in shapes:
            for seed in range(a.first_seed, a.first_seed + a.seeds):
                print(json.dumps(train_cell(a, data, norm, batch, k, seed)))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
