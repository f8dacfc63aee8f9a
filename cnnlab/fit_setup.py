"""What one training needs besides its run folder: model, data on the device, loss, optimisation.

`setup()` builds it once per fit (and for the LR finder and each K-fold fold); `Setup` answers the
loop's questions (evaluate a split, sum an epoch over ranks, load the best weights) so that the
loop never handles the process group itself: single-process and distributed runs read alike.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import augment, distributed, models, preflight, reach, runs
from .config import SPLITS, RunConfig
from .data import PreparedData
from .epoch import (
    BatchContext,
    EpochInputs,
    build_optimizer,
    build_scheduler,
    class_weights,
    evaluate_split,
    nan_error,
)

log = logging.getLogger(__name__)


@dataclass
class Setup:
    """What one training needs besides its run folder; built by setup(), shared with lr_finder."""

    config: RunConfig
    model: nn.Module  # the plain module: state dicts, evaluation, checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    ctx: BatchContext
    images: torch.Tensor  # the whole uint8 cache (on the device when it fits)
    labels: torch.Tensor
    rows: dict[str, torch.Tensor]  # "train" / "val" / "test" row indices into images
    batch_size: int
    base_lrs: list[float]  # each parameter group's lr before the schedule touched it
    ckpt_meta: dict[str, Any]  # saved with every checkpoint: what predict/export need
    net: nn.Module | None = None  # what training calls: DDP around model when distributed
    world: distributed.World = distributed.SINGLE

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (always, unless distributed and not rank 0)."""
        return self.world.is_main

    def epoch_inputs(self) -> EpochInputs:
        """What train_one_epoch reads: the training rows and this setup's optimisation."""
        return EpochInputs(
            self.net,
            self.images,
            self.labels,
            self.optimizer,
            self.scheduler,
            self.loss_fn,
            self.ctx,
            self.batch_size,
            self.rows["train"],
        )

    def start_epoch(self, epoch: int) -> None:
        """Phase the model (fine-tune thaws the backbone) and seed the epoch's draws."""
        # DDP registers trainable parameters once: rebuilt when the phase changes them
        if models.set_phase(self.model, self.config.model, epoch) and self.world.active:
            self.net = distributed.ddp(self.model, self.world, self.ctx.device)
        if self.world.active:
            # Per-epoch seeds: one permutation on every rank, each rank its own augmentation
            # draws; a resume needs no per-rank generator state.
            self.ctx.perm_generator.manual_seed(self.config.train.seed * 100_003 + epoch)
            self.ctx.generator.manual_seed(
                self.config.train.seed + 1_000_003 * epoch + self.world.rank
            )

    def epoch_totals(
        self, loss: float, acc: float, seen: int, epoch: int
    ) -> tuple[float, float, int]:
        """The epoch's (loss, accuracy, images) over every rank (this process's own when single)."""
        if self.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        if not self.world.active:
            return loss, acc, seen
        loss_sum, correct, total = distributed.sum_all(
            self.world, [loss * seen, acc * seen, float(seen)]
        )
        loss, acc = loss_sum / total, correct / total
        if not math.isfinite(loss):
            raise nan_error(epoch, self.optimizer)  # the same sums on every rank: all raise
        return loss, acc, int(total)

    def score(self, split: str) -> tuple[float, float]:
        """(plain cross-entropy, accuracy) of the current weights on one split."""
        if self.world.active:  # each rank scores its shard: every image counted exactly once
            return distributed.evaluate_sharded(
                self.model, self.images, self.labels, self.ctx, self.rows[split], self.world
            )
        return evaluate_split(self.model, self.images, self.labels, self.ctx, rows=self.rows[split])

    def agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (the value itself when single)."""
        return distributed.broadcast(self.world, value)

    def load_best(self, path: Path) -> None:
        """Load best.pt's weights; distributed, rank 0 reads the file and every rank gets them."""
        if not self.world.active:
            state = runs.read_checkpoint(path, self.ctx.device)["model_state"]
        else:
            state = runs.read_checkpoint(path, "cpu")["model_state"] if self.is_main else None
            state = distributed.broadcast(self.world, state)
        self.model.load_state_dict(state)


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _to_device_if_fits(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Keep the uint8 cache on the accelerator when it fits in a quarter of its memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if x.numel() * x.element_size() < free // 4:
            return x.to(device)
        return x.pin_memory() if not x.is_pinned() else x
    if device.type == "mps":
        return x.to(device)
    return x


def setup(
    config: RunConfig,
    data: PreparedData,
    device: torch.device,
    world: distributed.World = distributed.SINGLE,
) -> Setup:
    """Seed, then build the model, normalisation, batch context, loss, optimizer and schedule."""
    tc = config.train
    seed_everything(tc.seed)
    model = models.create_model(config.model, len(data.classes), config.data.image_size)
    model = distributed.sync_batchnorm(model, world, device)
    channels_last = tc.channels_last and device.type != "mps"
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    ctx = _batch_context(config, data, device, world, channels_last)
    images = _to_device_if_fits(data.images, device)  # the whole uint8 cache, gathered by rows
    labels = data.labels.to(images.device)
    rows = {
        s: torch.as_tensor(getattr(data.split, s), dtype=torch.long).to(images.device)
        for s in SPLITS
    }
    n_train = len(rows["train"])
    weight = (
        class_weights(labels[rows["train"]].cpu(), len(data.classes)).to(device)
        if tc.class_weights
        else None
    )
    groups = models.param_groups(model, config.model, tc)
    optimizer = build_optimizer(groups, tc)
    bs = min(tc.batch_size, n_train)
    for note in (preflight.batch_warning(tc.batch_size, n_train),
                 models.random_backbone_warning(config.model)):  # fmt: skip
        if note:
            log.warning("%s", note)
    return Setup(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, tc, n_train // bs),
        loss_fn=nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing),
        ctx=ctx,
        images=images,
        labels=labels,
        rows=rows,
        batch_size=bs,
        base_lrs=[g.get("lr", tc.lr) for g in groups],
        ckpt_meta={
            "config": reach.redact_config(config.to_dict()),
            "classes": list(data.classes),
            "image_size": config.data.image_size,
            "mean": list(ctx.mean),
            "std": list(ctx.std),
        },
        net=distributed.ddp(model, world, device),
        world=world,
    )


def _batch_context(
    config: RunConfig,
    data: PreparedData,
    device: torch.device,
    world: distributed.World,
    channels_last: bool,
) -> BatchContext:
    """Normalisation from the training images, augmentation, AMP and the seeded generators."""
    tc = config.train
    # Stats from (at most) 5k training images: exact for small sets, cheap for huge memory maps.
    train_rows = torch.as_tensor(data.split.train, dtype=torch.long)
    sample = train_rows[torch.randperm(len(train_rows))[:5_000]].sort().values
    mean, std = augment.normalization(
        config.augment, data.images[sample], models.input_stats(config.model.name)
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(tc.seed)
    amp = tc.amp and device.type == "cuda"
    use_scaler = amp and not torch.cuda.is_bf16_supported()
    ctx = BatchContext(
        device=device,
        mean=mean,
        std=std,
        aug=config.augment,
        channels_last=channels_last,
        amp=amp,
        generator=generator,
        scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
        mixup=tc.mixup,
    )
    if world.active:  # same permutation on every rank, each takes its slice of every batch
        ctx.shard = (world.rank, world.world_size)
        ctx.perm_generator = torch.Generator(device=device)
    return ctx
