"""A run's life around its training loop, in one place: create or reopen the run folder, mark it
active and running, announce it (RunStarted), and on the way out record how it ended.

Every way a training can fail ends here as one line in summary.json (`status: failed`, `error`)
and a Failed event; the run folder is released (not active) whatever happened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import distributed, recipe, runs
from .config import SPLITS, RunConfig
from .data import PreparedData
from .device import describe_device
from .errors import CnnlabError, TrainingError
from .events import Callback, Failed, RunStarted

log = logging.getLogger(__name__)


@dataclass
class LiveRun:
    """The run being trained: its folder, where it trains, what stops it, when its clock started."""

    run: runs.Run
    world: distributed.World
    device: torch.device
    stop_event: threading.Event | None
    t_start: float  # perf_counter origin: a resumed run's total time adds up across sessions


def split_files(data: PreparedData) -> dict[str, list[str]]:
    """File lists per split, relative to the dataset root, saved in the run for reproducibility."""
    root = data.scan.root
    return {
        name: [os.path.relpath(data.scan.files[i], root) for i in getattr(data.split, name)]
        for name in SPLITS
    }


@contextlib.contextmanager
def running(
    config: RunConfig,
    data: PreparedData,
    run: runs.Run | None,
    world: distributed.World,
    device: torch.device,
    emit: Callback,
    *,
    plan: recipe.Plan | None,
    stop_event: threading.Event | None,
    resumed: bool,
) -> Iterator[LiveRun]:
    """The run folder (created when `run` is None), marked running and announced, for the loop."""
    if run is None:
        # CNNLAB_RUN_ID: the id a parent (the dashboard's job) chose, to follow the run folder.
        run_id = os.environ.pop("CNNLAB_RUN_ID", None)
        made = (
            runs.create_run(config, data.classes, split_files(data), run_id)
            if world.is_main
            else None
        )
        run = distributed.shared_run(world, made)
    if world.is_main:
        runs.mark_active(run, True)
        runs.remove_temporaries(run)  # a kill mid-save left them; we hold the lock now
    t_start = time.perf_counter()
    if resumed:
        t_start -= runs.seconds_so_far(run)
    signal_stop = threading.Event()  # set by SIGTERM / Ctrl-C under torchrun
    if world.active:
        stop_event = distributed.CollectiveStop(world, [e for e in (stop_event, signal_stop) if e])
    live = LiveRun(run, world, device, stop_event, t_start)
    try:
        _announce(live, config, data, plan, emit)
        with distributed.stop_on_signals(world, signal_stop):
            yield live
    except CnnlabError as exc:
        _fail(live, str(exc), emit)
        raise
    except Exception as exc:  # anything else is recorded in the run's summary, then re-raised
        if type(exc).__name__ == "TrialPruned":  # optuna's; imported lazily by tune only
            runs.update_summary(run, status="pruned", seconds=time.perf_counter() - t_start)
            raise
        plain = _plain_words(exc, config, live)
        _fail(live, plain or f"{type(exc).__name__}: {exc}", emit)
        if plain:
            raise TrainingError(plain) from exc
        raise
    finally:
        if world.is_main:
            runs.mark_active(run, False)


def _plain_words(exc: Exception, config: RunConfig, live: LiveRun) -> str | None:
    """What happened and what to do, for the failures whose own words would not say it."""
    if isinstance(exc, torch.OutOfMemoryError):
        return (
            f"out of memory on {describe_device(live.device)}: lower the batch size "
            f"({config.train.batch_size}) or the image size ({config.data.image_size})."
        )
    world = live.world
    if distributed.peer_lost(world, exc):
        return (
            f"one of the {world.world_size} training processes stopped (killed, or out of "
            f"memory), so the others could not go on; the epochs so far are kept: resume with "
            f"`cnnlab resume {live.run.run_id} --nproc-per-node {world.world_size}`"
        )
    return None


def _announce(
    live: LiveRun,
    config: RunConfig,
    data: PreparedData,
    plan: recipe.Plan | None,
    emit: Callback,
) -> None:
    """summary.json says `running` (where, on what, with which label fixes); then RunStarted."""
    run = live.run
    n_train, n_val, n_test = (len(getattr(data.split, s)) for s in SPLITS)
    summary: dict[str, Any] = runs.read_summary(run) if live.world.is_main else {}
    summary.update(
        run_id=run.run_id,  # the folder's: a copied run folder is its own run
        run_dir=str(run.run_dir),
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
        device=describe_device(live.device),
        epochs_planned=config.train.epochs,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        world_size=live.world.world_size,
    )
    if plan is not None:
        summary["recipe"] = recipe.summary_entry(plan)
    used = data.scan.overrides
    if used:  # the label fixes this run trained with: evaluate/resume re-apply these
        summary["overrides"] = {"relabelled": len(used.relabel), "excluded": len(used.exclude)}
    if live.world.is_main:
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
            describe_device(live.device),
            list(data.classes),
        )
    )


def _fail(live: LiveRun, message: str, emit: Callback) -> None:
    """Record the failure in summary.json (rank 0: every rank meets the same error), emit Failed."""
    if not live.world.is_main:
        return
    try:
        runs.update_summary(
            live.run, status="failed", error=message, seconds=time.perf_counter() - live.t_start
        )
    except CnnlabError as exc:  # e.g. the same full disk: one line, the cause is raised anyway
        log.error("could not record the failure of run %s: %s", live.run.run_id, exc)
    emit(Failed(message))
