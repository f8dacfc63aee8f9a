"""Learning-rate range test (Smith 2015, fastai's lr_find): a short sweep that suggests a good lr.

A fresh model (the run's own weights are never touched) is trained for ~100 steps on the training
split while the learning rate grows exponentially from 1e-6 to 1; the loss is smoothed and the
suggestion is fastai's "valley" rule: two thirds down the longest stretch where the loss keeps
falling (less cautious than the steepest point, which is reported too). Batches, augmentation, normalisation, loss and
parameter groups are the ones `train.fit` uses, so the suggestion transfers to the real run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from . import models, recipe
from .config import RunConfig
from .data import PreparedData, prepare
from .device import configure_cpu_threads, resolve_device
from .epoch import train_batch
from .errors import ConfigError, TrainingError
from .fit_setup import Setup, setup

log = logging.getLogger(__name__)

START_LR = 1e-6
END_LR = 1.0
STEPS = 100
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
BETA = 0.98  # exponential smoothing of the loss (with bias correction, as fastai)


@dataclass
class LRFinderResult:
    lrs: list[float]  # learning rate of each step (the head/main group's)
    losses: list[float]  # smoothed loss of each step
    raw_losses: list[float]  # the batch loss as measured
    suggestion: float  # the valley rule's lr (see valley_lr)
    min_loss_lr: float  # lr at the lowest smoothed loss
    stopped_early: bool  # True when the loss diverged before END_LR
    steepest: float | None = None  # lr at the steepest descent of the smoothed loss

    def to_dict(self) -> dict:
        """Plain dict (for JSON)."""
        return asdict(self)


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """(steepest-descent lr, lowest-loss lr) of a smoothed loss curve.

    The steepest point is searched only before the minimum (after it the loss is diverging); with
    too few points the fallback is the lowest-loss lr / 10, the classic rule of thumb.
    """
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    i_min = int(np.argmin(loss))
    min_lr = float(lr[i_min])
    if i_min < 3:
        return min_lr / 10, min_lr
    slope = np.gradient(loss[: i_min + 1], np.log10(lr[: i_min + 1]))
    skip = max(1, i_min // 10)  # the first steps are noisy (smoothing still warming up)
    i_steep = skip + int(np.argmin(slope[skip:]))
    return float(lr[i_steep]), min_lr


def valley_lr(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley rule: the longest run of falling loss (longest decreasing subsequence),
    and the lr two thirds of the way along it, where the loss still falls well."""
    loss = list(losses)
    n = len(loss)
    run = [1] * n  # run[i]: length of the longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if loss[i] < loss[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return float(lrs[min(n - 1, start + int(third) + int(third / 2))])


def find_lr(
    config: RunConfig,
    data: PreparedData | None = None,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    progress: Callable[[int, int, str], None] | None = None,
) -> LRFinderResult:
    """Sweep the learning rate on the training split of `config`'s data; see the module docstring.

    `progress(done, total, stage)` hears the data preparation, then each step ("lr sweep")."""
    config.validate()
    if steps < 2:
        raise ConfigError(f"lr-find needs at least 2 steps to compare losses, got {steps}")
    tc = config.train  # the lr and seed as given: group ratios and batch order follow them
    device = resolve_device(tc.device)
    if device.type == "cpu":
        configure_cpu_threads()
    data = data if data is not None else prepare(config.data, progress)
    if len(data.split.train) == 0:
        raise TrainingError("the training split is empty: the LR finder needs training images")
    config = recipe.resolve(config, len(data.split.train))[0]  # the model fit() would train
    s = setup(config, data, device)  # fit's own model, batches, loss and groups
    # Keep each group's ratio to train.lr (e.g. a fine-tuned backbone at backbone_lr).
    ratios = [lr / tc.lr for lr in s.base_lrs]
    lrs, smooth, raw, stopped = _sweep(s, ratios, tc.seed, steps, start_lr, end_lr, progress)
    if len(lrs) < 5:
        raise TrainingError(
            f"the loss diverged after {len(lrs)} LR-finder steps even at lr {start_lr:g}: check the "
            "data and the model (or lower the start lr)"
        )
    steepest, min_lr = suggest_lr(lrs, smooth)
    suggestion = valley_lr(lrs, smooth)
    log.info(
        "LR finder: %d steps, valley %.3g, steepest %.3g, min loss at %.3g",
        len(lrs),
        suggestion,
        steepest,
        min_lr,
    )
    return LRFinderResult(lrs, smooth, raw, suggestion, min_lr, stopped, steepest)


def _sweep(
    s: Setup,
    ratios: list[float],
    seed: int,
    steps: int,
    start_lr: float,
    end_lr: float,
    progress: Callable[[int, int, str], None] | None,
) -> tuple[list[float], list[float], list[float], bool]:
    """One batch per step at an lr growing geometrically from start_lr to end_lr, until the
    loss diverges: (lrs, smoothed losses, raw losses, stopped early)."""
    factor = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    batches = _batches(s.rows["train"], s.batch_size, seed)
    lrs: list[float] = []
    smooth: list[float] = []
    raw: list[float] = []
    avg, best = 0.0, math.inf
    s.model.train()
    models.freeze_bn_stats(s.model)
    for step in range(steps):
        lr = start_lr * factor**step
        for g, ratio in zip(s.optimizer.param_groups, ratios, strict=True):
            g["lr"] = lr * ratio
        value = _train_step(s, next(batches))
        if not math.isfinite(value):
            return lrs, smooth, raw, True
        avg = BETA * avg + (1 - BETA) * value
        smoothed = avg / (1 - BETA ** (step + 1))
        lrs.append(lr)
        raw.append(value)
        smooth.append(smoothed)
        best = min(best, smoothed)
        if progress is not None:
            progress(step + 1, steps, "lr sweep")
        if step > 10 and smoothed > DIVERGE * best:
            return lrs, smooth, raw, True
    return lrs, smooth, raw, False


def _batches(rows: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Row indices of one batch after another; a new permutation when one runs out, as fit does."""
    generator = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(rows), generator=generator), 0
    while True:
        if pos + batch_size > perm.numel():
            perm, pos = torch.randperm(len(rows), generator=generator), 0
        yield rows[perm[pos : pos + batch_size].to(rows.device)]
        pos += batch_size


def _train_step(s: Setup, idx: torch.Tensor) -> float:
    """One optimizer step on the batch idx of fit's images; its loss."""
    x = train_batch(s.images, idx, s.ctx)
    y = s.labels[idx].to(s.ctx.device)
    loss = s.loss_fn(s.model(x), y)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    s.optimizer.step()
    return loss.item()  # one host sync per step is fine for a 100-step sweep
