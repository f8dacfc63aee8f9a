"""The one training loop: fit() = train_one_epoch + evaluate + events, used by CLI, UI and tuning.

Speed comes from the data path (see /shared/notes/performance.md): the decoded uint8 cache is
indexed with a random permutation (no DataLoader), moved to the device once, augmented there per
image in one batched op, and metrics are summed on the device and read once per progress tick.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import augment, models, runs
from .config import RunConfig
from .data import PreparedData, prepare
from .device import configure_cpu_threads, describe_device, resolve_device
from .errors import CnnlabError, TrainingError

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5  # how often a Progress event (and its one host sync) is sent
EVAL_BATCH = 512  # evaluation needs no gradients, so bigger batches are cheaper per image


# ---------------------------------------------------------------- events
@dataclass
class Event:
    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with a 'kind' key."""
        return {"kind": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    run_id: str
    run_dir: str
    epochs: int
    n_train: int
    n_val: int
    n_test: int
    device: str
    classes: list[str] = field(default_factory=list)


@dataclass
class Preparing(Event):
    done: int
    total: int
    stage: str


@dataclass
class Progress(Event):
    epoch: int
    batch: int
    n_batches: int
    loss: float
    images_per_s: float


@dataclass
class EpochEnd(Event):
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    best_epoch: int
    is_best: bool


@dataclass
class Finished(Event):
    summary: dict[str, Any]


@dataclass
class Failed(Event):
    message: str


Callback = Callable[[Event], None]


class _Stop(Exception):
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
            pct_start=0.25,
            # Adam-family momentum cycling fights the adaptive betas; keep it for SGD only.
            cycle_momentum=cfg.optimizer == "sgd",
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1, so the loss scale stays comparable."""
    counts = torch.bincount(labels, minlength=n_classes).float().clamp(min=1)
    w = counts.sum() / (n_classes * counts)
    return w / w.mean()


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


@dataclass
class _Ctx:
    """What train_one_epoch and evaluate need besides the model; built once per fit."""

    device: torch.device
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    aug: Any
    channels_last: bool
    amp: bool
    generator: torch.Generator | None = None
    scaler: torch.amp.GradScaler | None = None


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: nn.Module,
    ctx: _Ctx,
    batch_size: int,
    epoch: int = 1,
    emit: Callback | None = None,
    stop_event: threading.Event | None = None,
    rows: torch.Tensor | None = None,
) -> tuple[float, float, int]:
    """One pass over the training images (uint8). Returns (loss, accuracy, n_seen).

    With `rows`, batches are gathered from `images[rows]` lazily, so a memory-mapped cache larger
    than RAM streams from disk instead of being copied whole.
    """
    model.train()
    models.freeze_bn_stats(model)
    n = images.shape[0] if rows is None else rows.shape[0]
    bs = min(batch_size, n)
    n_batches = n // bs  # drop_last: fixed shapes keep cudnn.benchmark and BatchNorm happy
    perm = torch.randperm(
        n, device=ctx.generator.device if ctx.generator else "cpu", generator=ctx.generator
    )
    perm = perm.to(images.device)
    if rows is not None:
        perm = rows.to(images.device)[perm]
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    t0 = last_tick = time.perf_counter()
    for b in range(n_batches):
        if stop_event is not None and stop_event.is_set():
            raise _Stop
        idx = perm[b * bs : (b + 1) * bs]
        x = augment.prepare_batch(
            images[idx].to(ctx.device, non_blocking=True),
            ctx.mean,
            ctx.std,
            cfg=ctx.aug,
            train=True,
            generator=ctx.generator,
            channels_last=ctx.channels_last,
        )
        y = labels[idx].to(ctx.device, non_blocking=True)
        with _autocast(ctx.device, ctx.amp):
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            ctx.scaler.step(optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        loss_sum += loss.detach() * bs
        correct += (logits.detach().argmax(1) == y).sum()
        now = time.perf_counter()
        if emit is not None and (now - last_tick >= PROGRESS_EVERY_S or b == n_batches - 1):
            last_tick = now
            seen = (b + 1) * bs
            mean_loss = loss_sum.item() / seen  # the one host sync per tick
            if not math.isfinite(mean_loss):
                raise _nan_error(epoch, optimizer)
            emit(Progress(epoch, b + 1, n_batches, mean_loss, seen / max(now - t0, 1e-9)))
    seen = n_batches * bs
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):
        raise _nan_error(epoch, optimizer)
    return mean_loss, correct.item() / seen, seen


def _nan_error(epoch: int, optimizer: torch.optim.Optimizer) -> TrainingError:
    lr = max(g["lr"] for g in optimizer.param_groups)
    return TrainingError(
        f"the training loss became NaN/Inf in epoch {epoch} (learning rate {lr:.3g}). The learning "
        "rate is most likely too high: lower it (e.g. 10x), or use gradient-friendlier settings "
        "(BatchNorm on, AdamW, one-cycle). The best checkpoint so far was kept."
    )


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, ctx: _Ctx, batch_size: int = EVAL_BATCH
) -> torch.Tensor:
    """Logits (N, classes) in float32 for uint8 images, validation preprocessing only."""
    model.eval()
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = augment.prepare_batch(
            images[i : i + batch_size].to(ctx.device, non_blocking=True),
            ctx.mean,
            ctx.std,
            channels_last=ctx.channels_last,
        )
        with _autocast(ctx.device, ctx.amp):
            out.append(model(x).float())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: _Ctx,
    loss_fn: nn.Module | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) on a split; plain cross-entropy unless a loss is given."""
    if images.shape[0] == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, images, ctx)
    y = labels.to(logits.device)
    loss = loss_fn(logits, y) if loss_fn is not None else F.cross_entropy(logits, y)
    acc = (logits.argmax(1) == y).float().mean()
    return float(loss), float(acc)


def _split_files(data: PreparedData) -> dict[str, list[str]]:
    """File lists per split, relative to the dataset root, saved in the run for reproducibility."""
    root = data.scan.root
    return {
        name: [os.path.relpath(data.scan.files[i], root) for i in getattr(data.split, name)]
        for name in ("train", "val", "test")
    }


def _seed_everything(seed: int) -> None:
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


# ---------------------------------------------------------------- fit
def fit(
    config: RunConfig,
    data: PreparedData | None = None,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    run: runs.Run | None = None,
    epoch_hook: Callable[[int, dict[str, Any]], None] | None = None,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train per config, keep the best-val-loss checkpoint, test once; returns summary.json's content.

    `epoch_hook(epoch, metrics)` runs after each epoch (tuning reports/prunes there; an exception
    it raises ends the run with status 'pruned' if it is optuna's TrialPruned, else propagates).
    `resume_state` (a last.pt checkpoint, with `run`) continues that run; see resume().
    """
    config.validate()
    models.is_transfer(config.model.name)  # an unknown model name fails before any data work

    def emit(event: Event) -> None:
        for cb in callbacks:
            cb(event)

    device = resolve_device(config.train.device)
    if device.type == "cpu":
        configure_cpu_threads()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last), so autotuning pays off
    if data is None:
        data = prepare(config.data, progress=lambda d, t, s: emit(Preparing(d, t, s)))
    n_train, n_val, n_test = (len(getattr(data.split, s)) for s in ("train", "val", "test"))
    if n_train == 0:
        raise TrainingError("the training split is empty: add images or lower val/test fractions")

    if run is None:
        run = runs.create_run(config, data.classes, _split_files(data))
    t_start = time.perf_counter()
    summary: dict[str, Any] = runs.read_summary(run)
    summary.update(
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        device=describe_device(device),
        epochs_planned=config.train.epochs,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
    )
    runs.write_summary(run, summary)
    emit(
        RunStarted(
            run.run_id,
            str(run.run_dir),
            config.train.epochs,
            n_train,
            n_val,
            n_test,
            describe_device(device),
            list(data.classes),
        )
    )
    try:
        result = _fit_loop(
            config, data, run, device, emit, stop_event, epoch_hook, t_start, resume_state
        )
    except CnnlabError as exc:
        _fail(run, summary, str(exc), t_start, emit)
        raise
    except torch.OutOfMemoryError as exc:
        msg = (
            f"out of memory on {describe_device(device)}: lower the batch size "
            f"({config.train.batch_size}) or the image size ({config.data.image_size})."
        )
        _fail(run, summary, msg, t_start, emit)
        raise TrainingError(msg) from exc
    except Exception as exc:
        if type(exc).__name__ == "TrialPruned":  # optuna's; imported lazily by tune only
            runs.update_summary(run, status="pruned", seconds=time.perf_counter() - t_start)
            raise
        _fail(run, summary, f"{type(exc).__name__}: {exc}", t_start, emit)
        raise
    emit(Finished(result))
    return result


def _fail(
    run: runs.Run, summary: dict[str, Any], message: str, t_start: float, emit: Callback
) -> None:
    try:
        runs.update_summary(
            run, status="failed", error=message, seconds=time.perf_counter() - t_start
        )
    except CnnlabError:
        log.exception("could not record the failure of run %s", run.run_id)
    emit(Failed(message))


def _fit_loop(
    config: RunConfig,
    data: PreparedData,
    run: runs.Run,
    device: torch.device,
    emit: Callback,
    stop_event: threading.Event | None,
    epoch_hook,
    t_start: float,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    tc = config.train
    _seed_everything(tc.seed)
    n_classes = len(data.classes)
    train_rows = torch.as_tensor(data.split.train, dtype=torch.long)
    val_x, val_y = data.subset("val")
    test_x, test_y = data.subset("test")

    model = models.create_model(config.model, n_classes, config.data.image_size)
    channels_last = tc.channels_last and device.type != "mps"
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    # Stats from (at most) 5k training images: exact for small sets, cheap for huge memory maps.
    sample = train_rows[torch.randperm(len(train_rows))[:5_000]].sort().values
    mean, std = augment.normalization(config.augment, config.model.name, data.images[sample])
    generator = torch.Generator(device=device)
    generator.manual_seed(tc.seed)
    amp = tc.amp and device.type == "cuda"
    use_scaler = amp and not torch.cuda.is_bf16_supported()
    ctx = _Ctx(
        device=device,
        mean=mean,
        std=std,
        aug=config.augment,
        channels_last=channels_last,
        amp=amp,
        generator=generator,
        scaler=torch.amp.GradScaler("cuda") if use_scaler else None,
    )
    images = _to_device_if_fits(data.images, device)  # the whole uint8 cache, gathered by rows
    labels = data.labels.to(images.device)
    val_x, test_x = _to_device_if_fits(val_x, device), _to_device_if_fits(test_x, device)

    weight = (
        class_weights(data.labels[train_rows], n_classes).to(device) if tc.class_weights else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)
    optimizer = build_optimizer(models.param_groups(model, config.model, tc), tc)
    bs = min(tc.batch_size, len(train_rows))
    steps_per_epoch = len(train_rows) // bs
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch)

    best_loss, best_epoch, bad_epochs = math.inf, 0, 0
    stopped_early = stopped_by_user = False
    history: list[dict[str, Any]] = []
    ckpt_meta = {
        "config": config.to_dict(),
        "classes": list(data.classes),
        "image_size": config.data.image_size,
        "mean": list(mean),
        "std": list(std),
    }
    start_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state["model_state"])
        optimizer.load_state_dict(resume_state["optimizer_state"])
        scheduler.load_state_dict(resume_state["scheduler_state"])
        torch.set_rng_state(resume_state["torch_rng"])
        generator.set_state(resume_state["generator_rng"])
        best_loss = resume_state["best_loss"]
        best_epoch, bad_epochs = resume_state["best_epoch"], resume_state["bad_epochs"]
        start_epoch = resume_state["epoch"] + 1
        # A kill between the metrics line and last.pt leaves one epoch too many: drop it, redo it.
        history = [r for r in runs.read_metrics(run) if r["epoch"] < start_epoch]
        runs.rewrite_metrics(run, history)
        log.info("resuming run %s at epoch %d", run.run_id, start_epoch)
    epoch = start_epoch - 1
    for epoch in range(start_epoch, tc.epochs + 1):
        t0 = time.perf_counter()
        try:
            tr_loss, tr_acc, seen = train_one_epoch(
                model,
                images,
                labels,
                optimizer,
                scheduler,
                loss_fn,
                ctx,
                bs,
                epoch,
                emit,
                stop_event,
                rows=train_rows,
            )
        except _Stop:
            stopped_by_user = True
            epoch -= 1
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_secs = time.perf_counter() - t0
        va_loss, va_acc = evaluate(model, val_x, val_y, ctx)
        if not math.isfinite(va_loss) and val_x.shape[0]:
            raise _nan_error(epoch, optimizer)
        monitor = va_loss if val_x.shape[0] else tr_loss
        is_best = monitor < best_loss
        if is_best:
            best_loss, best_epoch, bad_epochs = monitor, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            runs.save_checkpoint_atomic(
                run.best_path,
                {
                    **ckpt_meta,
                    "model_state": best_state,
                    "epoch": epoch,
                    "val_loss": va_loss,
                    "val_acc": va_acc,
                },
            )
        else:
            bad_epochs += 1
        row = {
            "epoch": epoch,
            "train_loss": tr_loss,
            "train_acc": tr_acc,
            "val_loss": va_loss,
            "val_acc": va_acc,
            "lr": max(g["lr"] for g in optimizer.param_groups),
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_secs,
            "images_per_s": seen / max(train_secs, 1e-9),
            "best_epoch": best_epoch,
            "is_best": is_best,
        }
        history.append(row)
        runs.append_metrics(run, row)
        runs.save_checkpoint_atomic(
            run.last_path,
            {
                **ckpt_meta,
                "model_state": model.state_dict(),
                "optimizer_state": optimizer.state_dict(),
                "scheduler_state": scheduler.state_dict(),
                "epoch": epoch,
                "best_loss": best_loss,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "torch_rng": torch.get_rng_state(),
                "generator_rng": generator.get_state(),
            },
        )
        emit(EpochEnd(**{k: row[k] for k in EpochEnd.__dataclass_fields__}))
        if epoch_hook is not None:
            epoch_hook(epoch, row)
        if tc.patience and bad_epochs >= tc.patience and epoch < tc.epochs:
            stopped_early = True
            log.info("early stop at epoch %d: no better val loss for %d epochs", epoch, bad_epochs)
            break
        if stop_event is not None and stop_event.is_set():
            stopped_by_user = True
            break

    summary = runs.read_summary(run)
    summary.update(
        status="stopped" if stopped_by_user else "completed",
        epochs_run=epoch,
        stopped_early=stopped_early,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - t_start,
        train_images_per_s=_steady_rate(history),
    )
    by_epoch = {r["epoch"]: r for r in history}
    if best_epoch in by_epoch:
        # Restore the best weights (lowest val loss) and evaluate the held-out test split once.
        best = torch.load(run.best_path, map_location=device, weights_only=True)
        model.load_state_dict(best["model_state"])
        va_loss, va_acc = evaluate(model, val_x, val_y, ctx)
        te_loss, te_acc = evaluate(model, test_x, test_y, ctx)
        summary.update(
            best_val_loss=va_loss,
            val_loss=va_loss,
            val_accuracy=va_acc,
            test_loss=te_loss,
            test_accuracy=te_acc,
            best_train_loss=by_epoch[best_epoch]["train_loss"],
            best_train_accuracy=by_epoch[best_epoch]["train_acc"],
        )
    summary = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }
    runs.write_summary(run, summary)
    return summary


def _steady_rate(history: list[dict[str, Any]]) -> float | None:
    """Training images/s over epochs after the first (warm-up excluded when there is more than one)."""
    rows = history[1:] or history
    if not rows:
        return None
    seconds = sum(r["train_seconds"] for r in rows)
    images = sum(r["images_per_s"] * r["train_seconds"] for r in rows)
    return images / max(seconds, 1e-9)


RESUMABLE = ("interrupted", "stopped", "failed")


def resume(
    run: str | runs.Run,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    data: PreparedData | None = None,
) -> dict[str, Any]:
    """Continue an interrupted/stopped run from last.pt: weights, optimizer, schedule, RNG, patience."""
    r = runs.load_run(run)
    status = runs.effective_status(runs.read_summary(r))
    if status not in RESUMABLE:
        raise TrainingError(
            f"run {r.run_id} is {status}; only {', '.join(RESUMABLE)} runs can be resumed"
        )
    if not r.last_path.is_file():
        raise TrainingError(
            f"run {r.run_id} has no last.pt (it stopped before finishing an epoch): start it again "
            f"with `cnnlab train DATA --config {r.config_path}`"
        )
    config = runs.read_config(r)
    state = torch.load(r.last_path, map_location="cpu", weights_only=True)
    if data is None:
        data = prepare(config.data)
    saved = runs.read_split(r).get("files") or {}
    if saved and saved != _split_files(data):
        raise TrainingError(
            f"the data set at {config.data.path} changed since run {r.run_id} started (its split "
            "differs), so it cannot be resumed faithfully; train a new run instead"
        )
    runs.update_summary(r, resumed=runs.read_summary(r).get("resumed", 0) + 1, error=None)
    return fit(config, data, callbacks, stop_event, run=r, resume_state=state)
