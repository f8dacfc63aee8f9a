"""One epoch of training and one pass of evaluation, plus the optimizer and schedule they use.

Speed comes from the data path (see docs/performance.md): the decoded uint8 cache is
indexed with a random permutation (no DataLoader), augmented on the device per image in one batched
op, and metrics are summed on the device and read once per progress tick.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment, models
from .errors import TrainingError
from .events import Callback, Progress

PROGRESS_EVERY_S = 0.5  # how often a Progress event (and its one host sync) is sent
EVAL_BATCH = 512  # evaluation needs no gradients, so bigger batches are cheaper per image


class StopRequested(Exception):
    """Raised inside the loop when a stop was requested; caught by fit (fastai's cancel-fit)."""


# ---------------------------------------------------------------- building blocks
def build_optimizer(groups: list[dict[str, Any]], cfg) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD+momentum over parameter groups (each may carry its own lr)."""
    common = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, **common)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, **common)
    return torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=cfg.momentum > 0, **common)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int):
    """Per-step schedule: constant, cosine decay or one-cycle (warm-up then anneal)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=0.3,  # PyTorch's default; 0.25 divides by zero at 4 total steps
            # Adam-family momentum cycling fights the adaptive betas; keep it for SGD only.
            cycle_momentum=cfg.optimizer == "sgd",
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1, so the loss scale stays comparable."""
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    w = counts.sum() / (n_classes * counts)
    return w / w.mean()


def autocast(device: torch.device, enabled: bool):
    """bf16 (or fp16) autocast on CUDA when enabled; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@dataclass
class BatchContext:
    """What train_one_epoch and evaluate_split need besides the model; built once per fit."""

    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    aug: Any
    channels_last: bool
    amp: bool
    generator: torch.Generator | None = None
    scaler: torch.amp.GradScaler | None = None
    # Distributed training: (rank, world_size) slices each step's batch; the epoch's permutation
    # then comes from perm_generator, seeded alike on every rank (augmentation stays per rank).
    shard: tuple[int, int] = (0, 1)
    perm_generator: torch.Generator | None = None
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off


def mix(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MixUp (Zhang et al. 2018): blend each image with another of the batch; returns the mixed
    batch, the partners' labels and the blend weight (lam for y, 1 - lam for the partners')."""
    gen_device = generator.device if generator is not None else x.device
    # torch's Beta takes no generator: numpy's, seeded from the run's generator, keeps runs
    # reproducible (same seed, same draws)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=gen_device))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = torch.randperm(x.shape[0], generator=generator, device=gen_device).to(x.device)
    return x.mul(lam).add_(x[partner], alpha=1.0 - lam), y[partner], lam


@dataclass
class EpochInputs:
    """What one epoch of training reads: the module it calls, the uint8 images and labels, the
    rows to train on (all when None), and the optimisation (optimizer, schedule, loss, batch)."""

    net: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    ctx: BatchContext
    batch_size: int
    rows: torch.Tensor | None = None


def train_one_epoch(
    inputs: EpochInputs,
    epoch: int = 1,
    emit: Callback | None = None,
    stop_event: threading.Event | None = None,
) -> tuple[float, float, int]:
    """One pass over the training images (uint8). Returns (plain cross-entropy, accuracy, n_seen).

    With `inputs.rows`, batches are gathered from `images[rows]` lazily, so a memory-mapped cache
    larger than RAM streams from disk instead of being copied whole.
    """
    inputs.net.train()
    models.freeze_bn_stats(inputs.net)
    perm, bs = _epoch_order(inputs)
    n_batches = perm.shape[0] // bs  # drop_last: fixed shapes keep cudnn.benchmark and BN happy
    rank, world = inputs.ctx.shard
    local = bs if world == 1 else len(torch.arange(bs)[rank::world])  # this rank's share
    loss_sum = torch.zeros((), device=inputs.ctx.device)
    correct = torch.zeros((), device=inputs.ctx.device, dtype=torch.long)
    # Report plain cross-entropy so train and val curves are comparable (label smoothing and
    # class weights change the optimised loss's scale, not what the user wants to compare).
    plain = (
        not getattr(inputs.loss_fn, "label_smoothing", 0.0)
        and getattr(inputs.loss_fn, "weight", None) is None
        and not inputs.ctx.mixup
    )
    t0 = last_tick = time.perf_counter()
    for b in range(n_batches):
        if stop_event is not None and stop_event.is_set():
            raise StopRequested
        idx = perm[b * bs : (b + 1) * bs]
        shown, hits = _train_step(inputs, idx[rank::world] if world > 1 else idx, plain)
        loss_sum += shown * local
        correct += hits
        now = time.perf_counter()
        if emit is not None and (now - last_tick >= PROGRESS_EVERY_S or b == n_batches - 1):
            last_tick = now
            seen = (b + 1) * local
            mean_loss = loss_sum.item() / seen  # the one host sync per tick
            # Distributed: the caller decides on NaN for all ranks at once (a lone raise hangs).
            if not math.isfinite(mean_loss) and world == 1:
                raise nan_error(epoch, inputs.optimizer)
            emit(Progress(epoch, b + 1, n_batches, mean_loss, seen * world / max(now - t0, 1e-9)))
    seen = n_batches * local
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss) and world == 1:
        raise nan_error(epoch, inputs.optimizer)
    return mean_loss, correct.item() / seen, seen


def _epoch_order(inputs: EpochInputs) -> tuple[torch.Tensor, int]:
    """The epoch's shuffled image indices (into images, honouring rows) and the batch size."""
    images, rows, ctx = inputs.images, inputs.rows, inputs.ctx
    n = images.shape[0] if rows is None else rows.shape[0]
    perm_gen = ctx.perm_generator or ctx.generator
    perm = torch.randperm(n, device=perm_gen.device if perm_gen else "cpu", generator=perm_gen)
    perm = perm.to(images.device)
    if rows is not None:
        perm = rows.to(images.device)[perm]
    return perm, min(inputs.batch_size, n)


def _train_step(
    inputs: EpochInputs, idx: torch.Tensor, plain: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on images[idx]: (the loss to report, on the device; correct count);
    `plain`: the optimised loss is plain cross-entropy, so it is reported as it is."""
    ctx, loss_fn, optimizer = inputs.ctx, inputs.loss_fn, inputs.optimizer
    x = train_batch(inputs.images, idx, ctx)
    y = inputs.labels[idx].to(ctx.device, non_blocking=True)
    if ctx.mixup > 0:
        x, y_partner, lam = mix(x, y, ctx.mixup, ctx.generator)
    with autocast(ctx.device, ctx.amp):
        logits = inputs.net(x)
        loss = loss_fn(logits, y)
        if ctx.mixup > 0:
            loss = lam * loss + (1.0 - lam) * loss_fn(logits, y_partner)
    optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    inputs.scheduler.step()
    shown = loss.detach() if plain else F.cross_entropy(logits.detach().float(), y)
    return shown, (logits.detach().argmax(1) == y).sum()


def nan_error(epoch: int, optimizer: torch.optim.Optimizer) -> TrainingError:
    """The error for a NaN/Inf loss, naming the learning rate as the likely cause."""
    lr = max(g["lr"] for g in optimizer.param_groups)
    return TrainingError(
        f"the training loss became NaN/Inf in epoch {epoch} (learning rate {lr:.3g}). The learning "
        "rate is most likely too high: lower it (e.g. 10x), or use gradient-friendlier settings "
        "(BatchNorm on, AdamW, one-cycle). The best checkpoint so far was kept."
    )


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    ctx: BatchContext,
    batch_size: int = EVAL_BATCH,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (N, classes) in float32 for uint8 images (or images[rows]), validation preprocessing."""
    model.eval()
    out = []
    n = images.shape[0] if rows is None else rows.shape[0]
    for i in range(0, n, batch_size):
        chunk = images[i : i + batch_size] if rows is None else images[rows[i : i + batch_size]]
        x = augment.prepare_batch(
            chunk.to(ctx.device, non_blocking=True),
            ctx.mean,
            ctx.std,
            channels_last=ctx.channels_last,
        )
        with autocast(ctx.device, ctx.amp):
            out.append(model(x).float())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def evaluate_split(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: BatchContext,
    loss_fn: nn.Module | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) on a split (all images, or images[rows] gathered batch by batch, so
    a memory-mapped cache is never copied whole); plain cross-entropy unless a loss is given."""
    if (images.shape[0] if rows is None else rows.shape[0]) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, images, ctx, rows=rows)
    y = (labels if rows is None else labels[rows]).to(logits.device)
    loss = loss_fn(logits, y) if loss_fn is not None else F.cross_entropy(logits, y)
    acc = (logits.argmax(1) == y).float().mean()
    return float(loss), float(acc)


def train_batch(images: torch.Tensor, idx: torch.Tensor, ctx: BatchContext) -> torch.Tensor:
    """images[idx] on ctx's device, augmented and normalised as a training step takes them."""
    return augment.prepare_batch(
        images[idx].to(ctx.device, non_blocking=True),
        ctx.mean,
        ctx.std,
        cfg=ctx.aug,
        train=True,
        generator=ctx.generator,
        channels_last=ctx.channels_last,
    )
