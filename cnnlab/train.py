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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import augment, baseline, distributed, models, preflight, reach, recipe, runs, weights
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
    "Setup",
    "build_optimizer",
    "build_scheduler",
    "class_weights",
    "evaluate",
    "fit",
    "predict_logits",
    "resume",
    "setup",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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

    device = resolve_device(config.train.device)
    if device.type == "cpu":
        configure_cpu_threads()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last), so autotuning pays off
    world, device = distributed.init(device)  # under torchrun: this rank's device and group
    main = world.is_main  # rank 0 alone writes the run folder and reports events

    def emit(event: Event) -> None:
        for cb in callbacks if main else ():
            cb(event)

    with distributed.main_first(world):  # one download per machine
        models.fetch_weights(config.model, lambda d, t, what: emit(Preparing(d, t, what)))
    if data is None:

        def on_progress(done: int, total: int, stage: str) -> None:
            emit(Preparing(done, total, stage))
            # (a lone rank leaving here would hang the others: distributed runs prepare to the end)
            if stop_event is not None and stop_event.is_set() and not world.active:
                raise StopRequested  # scanning/decoding a big folder can take a while

        try:
            with distributed.main_first(world):  # one decode per machine, then cache hits
                data = prepare(config.data, progress=on_progress)
        except StopRequested:
            log.info("stopped while preparing %s; no run was created", config.data.path)
            return {"status": "stopped", "run_id": None, "epochs_run": 0, "stopped_early": False}
    n_train, n_val, n_test = (len(getattr(data.split, s)) for s in ("train", "val", "test"))
    if n_train == 0:
        raise TrainingError("the training split is empty: add images or lower val/test fractions")
    plan = None
    if resume_state is None:  # a resumed run's config.json already holds what the recipe set
        config, plan = recipe.resolve(config, n_train)
        if plan.applies:
            log.info("%s", plan.line())

    if run is None and not models.weights_are_remote(config.model):
        # a local weights file or run checkpoint that cannot load fails here, before a run folder
        # exists (a bad download fails in fetch_weights above, also before)
        models.create_model(config.model, len(data.classes), config.data.image_size)
    if run is None:
        # CNNLAB_RUN_ID: the id a parent (the dashboard's job) chose, to follow the run folder.
        run_id = os.environ.pop("CNNLAB_RUN_ID", None)
        run = runs.create_run(config, data.classes, _split_files(data), run_id) if main else None
        run = distributed.shared_run(world, run)
    if main:
        runs.mark_active(run, True)
        runs.remove_temporaries(run)  # a kill mid-save left them; we hold the lock now
    t_start = time.perf_counter()
    if resume_state is not None:  # the run's total time adds up across its sessions
        t_start -= runs.seconds_so_far(run)
    summary: dict[str, Any] = runs.read_summary(run) if main else {}
    signal_stop = threading.Event()  # set by SIGTERM / Ctrl-C under torchrun
    if world.active:
        stop_event = distributed.CollectiveStop(world, [e for e in (stop_event, signal_stop) if e])
    try:
        summary.update(
            run_id=run.run_id,  # the folder's: a copied run folder is its own run
            run_dir=str(run.run_dir),
            status="running",
            pid=os.getpid(),
            host=socket.gethostname(),
            device=describe_device(device),
            epochs_planned=config.train.epochs,
            n_train=n_train,
            n_val=n_val,
            n_test=n_test,
            world_size=world.world_size,
        )
        if plan is not None:
            summary["recipe"] = recipe.summary_entry(plan)
        used = data.scan.overrides
        if used:  # the label fixes this run trained with: evaluate/resume re-apply these
            summary["overrides"] = {"relabelled": len(used.relabel), "excluded": len(used.exclude)}
        if main:
            if used:
                runs.write_overrides(run, used)
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
        with distributed.stop_on_signals(world, signal_stop):
            result = _fit_loop(
                config,
                data,
                run,
                device,
                emit,
                stop_event=stop_event,
                epoch_hook=epoch_hook,
                t_start=t_start,
                resume_state=resume_state,
                world=world,
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
        if distributed.peer_lost(world, exc):  # not the backend's words: what happened, what to do
            msg = (
                f"one of the {world.world_size} training processes stopped (killed, or out of "
                f"memory), so the others could not go on; the epochs so far are kept: resume with "
                f"`cnnlab resume {run.run_id} --nproc-per-node {world.world_size}`"
            )
            _fail(run, summary, msg, t_start, emit)
            raise TrainingError(msg) from exc
        _fail(run, summary, f"{type(exc).__name__}: {exc}", t_start, emit)
        raise
    finally:
        if main:
            runs.mark_active(run, False)
    emit(Finished(result))
    return result


def _fail(
    run: runs.Run, summary: dict[str, Any], message: str, t_start: float, emit: Callback
) -> None:
    if not distributed.is_main_process():
        return  # rank 0 records the failure (every rank meets the same error)
    try:
        runs.update_summary(
            run, status="failed", error=message, seconds=time.perf_counter() - t_start
        )
    except CnnlabError as exc:  # e.g. the same full disk: one line, the cause is raised anyway
        log.error("could not record the failure of run %s: %s", run.run_id, exc)
    emit(Failed(message))


# ---------------------------------------------------------------- the loop, phase by phase
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


@dataclass
class LoopState:
    """What changes from epoch to epoch (and what last.pt saves to resume)."""

    epoch: int = 0  # the last completed epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    stopped_by_user: bool = False


def setup(
    config: RunConfig,
    data: PreparedData,
    device: torch.device,
    world: distributed.World = distributed.SINGLE,
) -> Setup:
    """Seed, then build the model, normalisation, batch context, loss, optimizer and schedule."""
    tc = config.train
    _seed_everything(tc.seed)
    n_classes = len(data.classes)
    rows = {s: torch.as_tensor(getattr(data.split, s), dtype=torch.long) for s in SPLITS}

    model = models.create_model(config.model, n_classes, config.data.image_size)
    model = distributed.sync_batchnorm(model, world, device)
    channels_last = tc.channels_last and device.type != "mps"
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    # Stats from (at most) 5k training images: exact for small sets, cheap for huge memory maps.
    train_rows = rows["train"]
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
    images = _to_device_if_fits(data.images, device)  # the whole uint8 cache, gathered by rows
    labels = data.labels.to(images.device)
    rows = {s: r.to(images.device) for s, r in rows.items()}

    weight = (
        class_weights(labels[rows["train"]].cpu(), n_classes).to(device)
        if tc.class_weights
        else None
    )
    loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)
    groups = models.param_groups(model, config.model, tc)
    base_lrs = [g.get("lr", tc.lr) for g in groups]
    optimizer = build_optimizer(groups, tc)
    bs = min(tc.batch_size, len(train_rows))
    for note in (preflight.batch_warning(tc.batch_size, len(train_rows)),
                 models.random_backbone_warning(config.model)):  # fmt: skip
        if note:
            log.warning("%s", note)
    scheduler = build_scheduler(optimizer, tc, len(train_rows) // bs)
    ckpt_meta = {
        "config": reach.redact_config(config.to_dict()),
        "classes": list(data.classes),
        "image_size": config.data.image_size,
        "mean": list(mean),
        "std": list(std),
    }
    return Setup(
        config=config,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=loss_fn,
        ctx=ctx,
        images=images,
        labels=labels,
        rows=rows,
        batch_size=bs,
        base_lrs=base_lrs,
        ckpt_meta=ckpt_meta,
        net=distributed.ddp(model, world, device),
        world=world,
    )


def _restore(s: Setup, run: runs.Run, state: dict[str, Any] | None) -> LoopState:
    """A fresh LoopState, or the one saved in last.pt (weights, optimizer, schedule, RNG too)."""
    if state is None:
        return LoopState()
    s.model.load_state_dict(state["model_state"])
    s.optimizer.load_state_dict(state["optimizer_state"])
    s.scheduler.load_state_dict(state["scheduler_state"])
    torch.set_rng_state(state["torch_rng"])
    s.ctx.generator.set_state(state["generator_rng"])
    loop = LoopState(
        epoch=state["epoch"],
        best_loss=state["best_loss"],
        best_epoch=state["best_epoch"],
        bad_epochs=state["bad_epochs"],
    )
    # A kill between the metrics line and last.pt leaves one epoch too many: drop it, redo it.
    if s.world.is_main:
        loop.history = [r for r in runs.read_metrics(run) if r["epoch"] <= loop.epoch]
        runs.rewrite_metrics(run, loop.history)
    missing = sorted(set(range(1, loop.epoch + 1)) - {r["epoch"] for r in loop.history})
    if s.world.is_main and missing:
        log.warning(
            "metrics.jsonl of run %s lacks epoch(s) %s (truncated or damaged): they are missing "
            "from its curves; training continues from last.pt after epoch %d",
            run.run_id, _spans(missing), loop.epoch,
        )  # fmt: skip
    # every rank needs the history: _finish decides on it (best epoch, test) in collectives
    loop.history = distributed.broadcast(s.world, loop.history)
    log.info("resuming run %s at epoch %d", run.run_id, loop.epoch + 1)
    return loop


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out: list[str] = []
    for n in numbers:
        if out and int(out[-1].split("-")[-1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def _train_epoch(
    s: Setup, epoch: int, emit: Callback, stop_event: threading.Event | None
) -> dict[str, Any] | None:
    """Train one epoch and evaluate on val: the epoch's metrics row, or None when stopped."""
    if s.world.active:
        # Per-epoch seeds: one permutation on every rank, each rank its own augmentation draws;
        # a resume needs no per-rank generator state.
        s.ctx.perm_generator.manual_seed(s.config.train.seed * 100_003 + epoch)
        s.ctx.generator.manual_seed(s.config.train.seed + 1_000_003 * epoch + s.world.rank)
    t0 = time.perf_counter()
    try:
        tr_loss, tr_acc, seen = train_one_epoch(
            s.net,
            s.images,
            s.labels,
            s.optimizer,
            s.scheduler,
            s.loss_fn,
            s.ctx,
            s.batch_size,
            epoch,
            emit,
            stop_event,
            rows=s.rows["train"],
        )
    except StopRequested:
        return None
    if s.ctx.device.type == "cuda":
        torch.cuda.synchronize()
    if s.world.active:  # every rank saw its share: the epoch's numbers are the sums over ranks
        loss_sum, correct, seen = distributed.sum_all(
            s.world, [tr_loss * seen, tr_acc * seen, float(seen)]
        )
        tr_loss, tr_acc, seen = loss_sum / seen, correct / seen, int(seen)
        if not math.isfinite(tr_loss):  # the same sums on every rank: all raise together
            raise nan_error(epoch, s.optimizer)
    train_secs = time.perf_counter() - t0
    va_loss, va_acc = _evaluate(s, "val")
    if not math.isfinite(va_loss) and len(s.rows["val"]):
        raise nan_error(epoch, s.optimizer)
    return {
        "epoch": epoch,
        "train_loss": tr_loss,
        "train_acc": tr_acc,
        "val_loss": va_loss,
        "val_acc": va_acc,
        "lr": max(g["lr"] for g in s.optimizer.param_groups),
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_secs,
        "images_per_s": seen / max(train_secs, 1e-9),
    }


def _evaluate(s: Setup, split: str) -> tuple[float, float]:
    """(plain cross-entropy, accuracy) of the current weights on one split."""
    if s.world.active:  # each rank scores its shard: every image counted exactly once
        return distributed.evaluate(s.model, s.images, s.labels, s.ctx, s.rows[split], s.world)
    return evaluate(s.model, s.images, s.labels, s.ctx, rows=s.rows[split])


def _track_best(s: Setup, loop: LoopState, row: dict[str, Any]) -> bool:
    """Update best/patience counters from the epoch's row (val loss, or train loss without val)."""
    monitor = row["val_loss"] if len(s.rows["val"]) else row["train_loss"]
    improved = monitor < loop.best_loss
    if improved:
        loop.best_loss, loop.bad_epochs = monitor, 0
    else:
        loop.bad_epochs += 1
    # select "last": the kept weights are the latest epoch's (a schedule annealed to zero on a
    # small val split, where the lowest val loss is mostly noise); patience still reads val loss
    is_best = improved or s.config.train.select == "last"
    if is_best:
        loop.best_epoch = row["epoch"]
    row.update(best_epoch=loop.best_epoch, is_best=is_best)
    return is_best


def _checkpoint(s: Setup, run: runs.Run, loop: LoopState, row: dict[str, Any]) -> None:
    """best.pt when the epoch is the best so far, then the metrics line, then last.pt (resume)."""
    epoch = row["epoch"]
    loop.history.append(row)
    if not s.world.is_main:
        return  # rank 0 alone writes the run folder
    if row["is_best"]:
        best_state = {k: v.detach().to("cpu", copy=True) for k, v in s.model.state_dict().items()}
        runs.save_checkpoint_atomic(
            run.best_path,
            {
                **s.ckpt_meta,
                "model_state": best_state,
                "epoch": epoch,
                "val_loss": row["val_loss"],
                "val_acc": row["val_acc"],
            },
        )
    runs.append_metrics(run, row)
    runs.save_checkpoint_atomic(
        run.last_path,
        {
            **s.ckpt_meta,
            "model_state": s.model.state_dict(),
            "optimizer_state": s.optimizer.state_dict(),
            "scheduler_state": s.scheduler.state_dict(),
            "epoch": epoch,
            "best_loss": loop.best_loss,
            "best_epoch": loop.best_epoch,
            "bad_epochs": loop.bad_epochs,
            "torch_rng": torch.get_rng_state(),
            "generator_rng": s.ctx.generator.get_state(),
        },
    )


def _decide(s: Setup, loop: LoopState, stop_event: threading.Event | None) -> bool:
    """True when the loop ends after this epoch: patience ran out, or a stop was requested."""
    tc = s.config.train
    patience_out = tc.patience and loop.bad_epochs >= tc.patience and loop.epoch < tc.epochs
    if distributed.broadcast(s.world, bool(patience_out)):  # rank 0 decides for all
        loop.stopped_early = True
        log.info(
            "early stop at epoch %d: no better val loss for %d epochs", loop.epoch, loop.bad_epochs
        )
        return True
    if stop_event is not None and stop_event.is_set():
        loop.stopped_by_user = True
        return True
    return False


def _finish(s: Setup, run: runs.Run, loop: LoopState, t_start: float) -> dict[str, Any]:
    """Restore the best weights, evaluate val and test once, write and return summary.json."""
    main = s.world.is_main
    summary = runs.read_summary(run) if main else {}
    summary.update(
        status="stopped" if loop.stopped_by_user else "completed",
        epochs_run=loop.epoch,
        stopped_early=loop.stopped_early,
        best_epoch=loop.best_epoch,
        select=s.config.train.select,
        seconds=time.perf_counter() - t_start,
        train_images_per_s=_steady_rate(loop.history),
    )
    by_epoch = {r["epoch"]: r for r in loop.history}
    if loop.best_epoch in by_epoch:
        s.model.load_state_dict(_best_weights(s, run))
        va_loss, va_acc = _evaluate(s, "val")
        te_loss, te_acc = _evaluate(s, "test")
        summary.update(
            best_val_loss=va_loss,
            val_loss=va_loss,
            val_accuracy=va_acc,
            test_loss=te_loss,
            test_accuracy=te_acc,
            best_train_loss=by_epoch[loop.best_epoch]["train_loss"],
            best_train_accuracy=by_epoch[loop.best_epoch]["train_acc"],
        )
    if main and s.config.train.baseline:
        summary.update(_baseline(s))
    summary = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in summary.items()
    }
    if main:
        runs.write_summary(run, summary)
    return summary


def _baseline(s: Setup) -> dict[str, Any]:
    """summary.json's `baseline_accuracy` and `baseline`: the pixel SVM on this run's split."""
    split = "test" if len(s.rows["test"]) else "val"
    rows = s.rows["train"].cpu(), s.rows[split].cpu()
    fitted = baseline.fit_baseline(s.images, s.labels, *rows, split, s.config.train.seed)
    if fitted is None:
        return {"baseline_accuracy": None, "baseline": None}
    return {"baseline_accuracy": fitted.accuracy, "baseline": fitted.to_dict()}


def _best_weights(s: Setup, run: runs.Run) -> dict[str, torch.Tensor]:
    """best.pt's weights; distributed, rank 0 reads the file and every rank gets them."""
    if not s.world.active:
        return runs.read_checkpoint(run.best_path, s.ctx.device)["model_state"]
    best = runs.read_checkpoint(run.best_path, "cpu")["model_state"] if s.world.is_main else None
    return distributed.broadcast(s.world, best)


def _set_phase(s: Setup, epoch: int) -> None:
    """fine_tune: thaw the backbone after the head; DDP is rebuilt when trainable params change
    (it registers them once)."""
    if models.set_phase(s.model, s.config.model, epoch) and s.world.active:
        s.net = distributed.ddp(s.model, s.world, s.ctx.device)


def _fit_loop(
    config: RunConfig,
    data: PreparedData,
    run: runs.Run,
    device: torch.device,
    emit: Callback,
    *,
    stop_event: threading.Event | None,
    epoch_hook: Callable[[int, dict[str, Any]], None] | None,
    t_start: float,
    resume_state: dict[str, Any] | None,
    world: distributed.World = distributed.SINGLE,
) -> dict[str, Any]:
    """Set up, then per epoch: train + evaluate, checkpoint, report, decide; then finish."""
    s = setup(config, data, device, world)
    loop = _restore(s, run, resume_state)
    for epoch in range(loop.epoch + 1, config.train.epochs + 1):
        _set_phase(s, epoch)
        row = _train_epoch(s, epoch, emit, stop_event)
        if row is None:  # stopped mid-epoch: that epoch does not count
            loop.stopped_by_user = True
            break
        loop.epoch = epoch
        _track_best(s, loop, row)
        _checkpoint(s, run, loop, row)
        emit(EpochEnd(**{k: row[k] for k in EpochEnd.__dataclass_fields__}))
        if epoch_hook is not None:
            epoch_hook(epoch, row)
        if _decide(s, loop, stop_event):
            break
    return _finish(s, run, loop, t_start)


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
    summary = runs.read_summary(r)
    if not summary and not runs.is_locked(r):
        # missing or torn (a kill, a truncated copy): config.json and last.pt are what counts
        log.warning("run %s has no readable summary.json: rebuilt from its config", r.run_id)
        summary = runs.rebuild_summary(r)
        runs.write_summary(r, summary)
    status = runs.effective_status(summary, r)
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
    if weights.is_url(config.model.weights):  # stored redacted; last.pt holds every weight anyway
        config.model.weights = "random"
    state = runs.read_checkpoint(r.last_path)
    # Under torchrun every rank reads the run folder (one machine, or a shared file system).
    world, _ = distributed.init(resolve_device(config.train.device))
    if data is None:
        with distributed.main_first(world):
            data = prepare(config.data, overrides=runs.read_overrides(r))
    saved = runs.read_split(r).get("files") or {}
    if saved and saved != _split_files(data):
        raise TrainingError(
            f"the data set at {config.data.path} changed since run {r.run_id} started (its split "
            "differs), so it cannot be resumed faithfully; train a new run instead"
        )
    distributed.barrier(world)  # every rank checked the status before rank 0 marks it running
    if world.is_main:
        runs.update_summary(r, resumed=runs.read_summary(r).get("resumed", 0) + 1, error=None)
    return fit(config, data, callbacks, stop_event, run=r, resume_state=state)
