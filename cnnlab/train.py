"""The one training loop: fit() = train_one_epoch + evaluate + events, used by CLI, UI and tuning.

fit() keeps the best-val-loss checkpoint, stops on patience or on request, restores the best
weights and evaluates the test split once; resume() continues an interrupted run from last.pt.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import augment, models, runs
from .config import RunConfig
from .data import PreparedData, prepare
from .device import configure_cpu_threads, describe_device, resolve_device
from .epoch import (
    BatchContext,
    StopRequested,
    build_optimizer,
    build_scheduler,
    class_weights,
    evaluate,
    nan_error,
    predict_logits,
    train_one_epoch,
)
from .errors import CnnlabError, TrainingError
from .events import (
    Callback,
    EpochEnd,
    Event,
    Failed,
    Finished,
    Preparing,
    Progress,
    RunStarted,
)

__all__ = [  # events and loop pieces are re-exported: callers listen via `train.EpochEnd` etc.
    "BatchContext",
    "Callback",
    "EpochEnd",
    "Event",
    "Failed",
    "Finished",
    "Preparing",
    "Progress",
    "RunStarted",
    "build_optimizer",
    "build_scheduler",
    "class_weights",
    "evaluate",
    "fit",
    "predict_logits",
    "resume",
    "train_one_epoch",
]

log = logging.getLogger(__name__)


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
    models.fetch_weights(config.model, lambda d, t, what: emit(Preparing(d, t, what)))
    if data is None:

        def on_progress(done: int, total: int, stage: str) -> None:
            emit(Preparing(done, total, stage))
            if stop_event is not None and stop_event.is_set():
                raise StopRequested  # scanning/decoding a big folder can take a while

        try:
            data = prepare(config.data, progress=on_progress)
        except StopRequested:
            log.info("stopped while preparing %s; no run was created", config.data.path)
            return {"status": "stopped", "run_id": None, "epochs_run": 0, "stopped_early": False}
    n_train, n_val, n_test = (len(getattr(data.split, s)) for s in ("train", "val", "test"))
    if n_train == 0:
        raise TrainingError("the training split is empty: add images or lower val/test fractions")

    if run is None:
        run = runs.create_run(config, data.classes, _split_files(data))
    runs.mark_active(run, True)
    t_start = time.perf_counter()
    summary: dict[str, Any] = runs.read_summary(run)
    try:
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
    except Exception as exc:  # anything else is recorded in the run's summary, then re-raised
        if type(exc).__name__ == "TrialPruned":  # optuna's; imported lazily by tune only
            runs.update_summary(run, status="pruned", seconds=time.perf_counter() - t_start)
            raise
        _fail(run, summary, f"{type(exc).__name__}: {exc}", t_start, emit)
        raise
    finally:
        runs.mark_active(run, False)
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
    val_rows = torch.as_tensor(data.split.val, dtype=torch.long)
    test_rows = torch.as_tensor(data.split.test, dtype=torch.long)

    model = models.create_model(config.model, n_classes, config.data.image_size)
    channels_last = tc.channels_last and device.type != "mps"
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    # Stats from (at most) 5k training images: exact for small sets, cheap for huge memory maps.
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
    )
    images = _to_device_if_fits(data.images, device)  # the whole uint8 cache, gathered by rows
    labels = data.labels.to(images.device)
    train_rows, val_rows, test_rows = (
        r.to(images.device) for r in (train_rows, val_rows, test_rows)
    )

    weight = (
        class_weights(labels[train_rows].cpu(), n_classes).to(device) if tc.class_weights else None
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
        models.set_phase(model, config.model, epoch)  # fine_tune: thaw the backbone after the head
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
        except StopRequested:
            stopped_by_user = True
            epoch -= 1
            break
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_secs = time.perf_counter() - t0
        va_loss, va_acc = evaluate(model, images, labels, ctx, rows=val_rows)
        if not math.isfinite(va_loss) and len(val_rows):
            raise nan_error(epoch, optimizer)
        monitor = va_loss if len(val_rows) else tr_loss
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
        best = runs.read_checkpoint(run.best_path, device)
        model.load_state_dict(best["model_state"])
        va_loss, va_acc = evaluate(model, images, labels, ctx, rows=val_rows)
        te_loss, te_acc = evaluate(model, images, labels, ctx, rows=test_rows)
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
    state = runs.read_checkpoint(r.last_path)
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
