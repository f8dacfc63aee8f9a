"""The one training loop: fit() = train_one_epoch + evaluate + events, used by CLI, UI and tuning.

fit() keeps the best-val-loss checkpoint, stops on patience or on request, restores the best
weights and evaluates the test split once; resume() continues an interrupted run from last.pt.
The run folder's life around the loop (running, failed, released) is run_lifecycle's; what the
loop trains with is fit_setup's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import baseline, distributed, models, recipe, runs, weights
from .config import RunConfig
from .data import PreparedData, prepare
from .device import configure_cpu_threads, resolve_device
from .epoch import StopRequested, nan_error, train_one_epoch
from .errors import TrainingError
from .events import Callback, EpochEnd, Event, Finished, Preparing
from .fit_setup import Setup, setup
from .recipe import Plan
from .run_lifecycle import LiveRun, running, split_files

log = logging.getLogger(__name__)

EpochHook = Callable[[int, dict[str, Any]], None]


# ---------------------------------------------------------------- fit
def fit(
    config: RunConfig,
    data: PreparedData | None = None,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    run: runs.Run | None = None,
    epoch_hook: EpochHook | None = None,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train per config, keep the best-val-loss checkpoint, test once; returns summary.json's content.

    `epoch_hook(epoch, metrics)` runs after each epoch (tuning reports/prunes there; an exception
    it raises ends the run with status 'pruned' if it is optuna's TrialPruned, else propagates).
    `resume_state` (a last.pt checkpoint, with `run`) continues that run; see resume().
    """
    config.validate()
    models.is_transfer(config.model.name)  # an unknown model name fails before any data work
    world, device = _world_and_device(config)

    def emit(event: Event) -> None:
        for cb in callbacks if world.is_main else ():  # rank 0 alone reports events
            cb(event)

    if data is None:
        data = _prepare(config, world, emit, stop_event)
        if data is None:
            log.info("stopped while preparing %s; no run was created", config.data.path)
            return {"status": "stopped", "run_id": None, "epochs_run": 0, "stopped_early": False}
    config, plan = _plan(config, data, resumed=resume_state is not None)
    if run is None and not models.weights_are_remote(config.model):
        # a local weights file or run checkpoint that cannot load fails here, before a run folder
        # exists (a bad download fails in _prepare's fetch_weights, also before)
        models.create_model(config.model, len(data.classes), config.data.image_size)
    lifecycle = running(
        config, data, run, world, device, emit,
        plan=plan, stop_event=stop_event, resumed=resume_state is not None,
    )  # fmt: skip
    with lifecycle as live:
        result = _fit_loop(config, data, live, emit, epoch_hook, resume_state)
    emit(Finished(result))
    return result


def _world_and_device(config: RunConfig) -> tuple[distributed.World, torch.device]:
    """This process's place among the training processes and the device it trains on."""
    device = resolve_device(config.train.device)
    if device.type == "cpu":
        configure_cpu_threads()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last), so autotuning pays off
    return distributed.init(device)  # under torchrun: this rank's device and group


def _prepare(
    config: RunConfig,
    world: distributed.World,
    emit: Callback,
    stop_event: threading.Event | None,
) -> PreparedData | None:
    """Fetch the weights, then scan, split and decode the data; None when stopped meanwhile."""
    with distributed.main_first(world):  # one download per machine
        models.fetch_weights(config.model, lambda d, t, what: emit(Preparing(d, t, what)))

    def on_progress(done: int, total: int, stage: str) -> None:
        emit(Preparing(done, total, stage))
        # (a lone rank leaving here would hang the others: distributed runs prepare to the end)
        if stop_event is not None and stop_event.is_set() and not world.active:
            raise StopRequested  # scanning/decoding a big folder can take a while

    try:
        with distributed.main_first(world):  # one decode per machine, then cache hits
            return prepare(config.data, progress=on_progress)
    except StopRequested:
        return None


def _plan(config: RunConfig, data: PreparedData, resumed: bool) -> tuple[RunConfig, Plan | None]:
    """The config the run trains with: the small-data recipe applied (not on resume: the run's
    config.json already holds what the recipe set)."""
    n_train = len(data.split.train)
    if n_train == 0:
        raise TrainingError("the training split is empty: add images or lower val/test fractions")
    if resumed:
        return config, None
    config, plan = recipe.resolve(config, n_train)
    if plan.applies:
        log.info("%s", plan.line())
    return config, plan


# ---------------------------------------------------------------- the loop, phase by phase
def _fit_loop(
    config: RunConfig,
    data: PreparedData,
    live: LiveRun,
    emit: Callback,
    epoch_hook: EpochHook | None,
    resume_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """Set up, then per epoch: train + evaluate, checkpoint, report, decide; then finish."""
    s = setup(config, data, live.device, live.world)
    loop = _restore(s, live.run, resume_state)
    for epoch in range(loop.epoch + 1, config.train.epochs + 1):
        s.start_epoch(epoch)
        row = _train_epoch(s, epoch, emit, live.stop_event)
        if row is None:  # stopped mid-epoch: that epoch does not count
            loop.stopped_by_user = True
            break
        loop.epoch = epoch
        _track_best(s, loop, row)
        _checkpoint(s, live.run, loop, row)
        emit(EpochEnd.from_row(row))
        if epoch_hook is not None:
            epoch_hook(epoch, row)
        if _decide(s, loop, live.stop_event):
            break
    return _finish(s, live.run, loop, live.t_start)


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
    if s.is_main:
        loop.history = [r for r in runs.read_metrics(run) if r["epoch"] <= loop.epoch]
        runs.rewrite_metrics(run, loop.history)
    missing = sorted(set(range(1, loop.epoch + 1)) - {r["epoch"] for r in loop.history})
    if s.is_main and missing:
        log.warning(
            "metrics.jsonl of run %s lacks epoch(s) %s (truncated or damaged): they are missing "
            "from its curves; training continues from last.pt after epoch %d",
            run.run_id, _spans(missing), loop.epoch,
        )  # fmt: skip
    # every rank needs the history: _finish decides on it (best epoch, test) in collectives
    loop.history = s.agree(loop.history)
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
    t0 = time.perf_counter()
    try:
        tr_loss, tr_acc, seen = train_one_epoch(s.epoch_inputs(), epoch, emit, stop_event)
    except StopRequested:
        return None
    # distributed: every rank saw its share, the epoch's numbers are the sums over ranks
    tr_loss, tr_acc, seen = s.epoch_totals(tr_loss, tr_acc, seen, epoch)
    train_secs = time.perf_counter() - t0
    va_loss, va_acc = s.score("val")
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
    if not s.is_main:
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
    if s.agree(bool(patience_out)):  # rank 0 decides for all
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
    main = s.is_main
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
        s.load_best(run.best_path)
        va_loss, va_acc = s.score("val")
        te_loss, te_acc = s.score("test")
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
    if saved and saved != split_files(data):
        raise TrainingError(
            f"the data set at {config.data.path} changed since run {r.run_id} started (its split "
            "differs), so it cannot be resumed faithfully; train a new run instead"
        )
    distributed.barrier(world)  # every rank checked the status before rank 0 marks it running
    if world.is_main:
        runs.update_summary(r, resumed=runs.read_summary(r).get("resumed", 0) + 1, error=None)
    return fit(config, data, callbacks, stop_event, run=r, resume_state=state)
