"""Hyperparameter search with Optuna around the same `train.fit` used for training.

Each trial builds a RunConfig from `trial.suggest_*` (a SearchSpace over a base config), trains it
with `train.fit` on data prepared ONCE per study, reports every epoch's val accuracy and is pruned
when the pruner says so. Every trial is a normal run folder: the trial carries the run id (user
attr `run_id`) and the run's summary carries the study name and trial number.

`n_trials` is the number of FINISHED (complete + pruned) trials the study should hold: rerunning a
study continues it up to that number, and several workers sharing one storage (SQLite file,
PostgreSQL/MySQL URL) stop when the study holds n_trials finished trials between them. Creating the
schema and the study, and "count, then ask", happen under one lock per storage (a file lock next to
an SQLite file, a PostgreSQL advisory lock, a MySQL named lock), so workers started at the same
instant neither crash nor overshoot. Each worker draws from its own sampler seed (the seed plus the
worker's registration number in the study) and TPE uses constant_liar, so workers do not duplicate
each other. A killed worker's trial stops sending heartbeats, is marked failed after the grace period
and retried (optuna's RetryFailedTrialCallback). Passwords in storage URLs are never shown. The
ask/run/tell loop is cnnlab.trial_runner's; `TuneConfig` holds one study's settings.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from . import runs, train, workspace
from .config import RunConfig
from .data import PreparedData, prepare
from .errors import CnnlabError, ConfigError
from .events import Callback, Event, RunStarted
from .search_space import SearchSpace, apply_params, suggest
from .study_storage import (  # re-exported: callers use tune.open_storage, tune.safe_url
    HEARTBEAT_S,
    ask_lock_path,
    open_storage,
    safe_url,
    storage_lock,
    with_retries,
)
from .trial_runner import TrialEvent, run_trials

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
TUNE_IMAGE_SIZE = 16  # tuning compares settings, so small images keep each trial to seconds
TUNE_EPOCHS = 4  # epochs per trial: enough for the pruner to see a trend on small data
TUNE_CHANNELS = [16, 32]  # base custom CNN when the space does not search its shape


def base_config(
    data_path: str | Path,
    model: str = "custom",
    image_size: int = TUNE_IMAGE_SIZE,
    epochs: int = TUNE_EPOCHS,
) -> RunConfig:
    """The tuning defaults: small images, few epochs, a small custom CNN, no early stopping."""
    cfg = RunConfig()
    cfg.data.path = str(data_path)
    cfg.data.image_size = image_size
    cfg.model.name = model
    cfg.model.channels = list(TUNE_CHANNELS)
    cfg.model.head_units = 64
    cfg.train.epochs = epochs
    cfg.train.patience = 0  # the pruner ends hopeless trials; patience would blur its signal
    cfg.train.recipe = "fixed"  # trials compare the searched settings, nothing else changed
    cfg.train.baseline = False  # trials compare CNN settings; the pixel SVM would add seconds each
    return cfg.validate()


def default_study_name(base: RunConfig) -> str:
    """<data folder>-<model>: reruns on the same data and model resume the same study."""
    folder = Path(base.data.path).expanduser().resolve().name or "data"
    return f"{folder}-{base.model.name}"


# ---------------------------------------------------------------- study
def make_sampler(name: str, seed: int | None, shared: bool = False) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian) or random search, seeded; `shared` storage: TPE treats running trials as
    already-seen (constant_liar), so parallel workers spread out instead of sampling one point."""
    if name == "tpe":
        # Few startup trials: studies here are short, and TPE beats random after a handful.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4, constant_liar=shared)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Median pruning once 2 trials finished (from epoch 1 on: trials are short), or no pruning."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def open_study(
    name: str,
    storage: str | optuna.storages.BaseStorage | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    seed: int | None = 0,
    heartbeat: int | None = HEARTBEAT_S,
) -> optuna.Study:
    """Create the study or load it when it exists (resuming continues its numbering)."""
    shared = not isinstance(storage, optuna.storages.BaseStorage)
    store = storage if not shared else open_storage(storage, heartbeat)
    url = getattr(store, "url", None)
    pruner_obj = make_pruner(pruner)
    make_sampler(sampler, seed)  # validate the name before touching the storage
    with storage_lock(url) if url else contextlib.nullcontext():

        def create() -> optuna.Study:
            return optuna.create_study(
                study_name=name, storage=store, direction="maximize", load_if_exists=True
            )

        study = with_retries(create, url) if url else create()
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ConfigError(f"study {name!r} exists but minimises; choose another --study name")
        # Each opening registers a worker number (under the lock, so two never share one): the
        # sampler seed is seed + it, so concurrent or resumed workers never replay each other's
        # draws, and a fresh single-worker study stays reproducible (worker 0).
        worker = int(study.user_attrs.get("workers_started", 0))
        study.set_user_attr("workers_started", worker + 1)
    study.sampler = make_sampler(sampler, None if seed is None else seed + 7919 * worker, shared)
    study.pruner = pruner_obj
    return study


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """An existing study, for reading its trials (ConfigError when there is none)."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError as exc:
        raise ConfigError(
            f"no study named {name!r} in {safe_url(storage or workspace.studies_url())}"
        ) from exc


# ---------------------------------------------------------------- objective
class TrialStopped(CnnlabError):
    """The user stopped the study while this trial was training."""


def make_objective(
    base: RunConfig,
    space: SearchSpace,
    data: PreparedData,
    stop_event: threading.Event | None = None,
    fit_callbacks: tuple[Callback, ...] = (),
) -> Callable[[optuna.Trial], float]:
    """objective(trial) -> best val accuracy, training with train.fit and pruning per epoch."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        config = apply_params(base, space, params)
        config.name = f"{trial.study.study_name} #{trial.number}"
        config.validate()
        trial.set_user_attr("config", config.to_dict())
        best = -math.inf

        def link(event: Event) -> None:
            if isinstance(event, RunStarted):  # link both ways, before the first epoch
                trial.set_user_attr("run_id", event.run_id)
                run = runs.Run(event.run_id, Path(event.run_dir))
                runs.update_summary(run, study=trial.study.study_name, trial=trial.number)

        def report(epoch: int, row: dict[str, Any]) -> None:
            nonlocal best
            best = max(best, row["val_acc"])
            trial.report(row["val_acc"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned after epoch {epoch}: val acc {row['val_acc']:.4f}"
                )

        summary = train.fit(
            config,
            data=data,
            callbacks=(link, *fit_callbacks),
            stop_event=stop_event,
            epoch_hook=report,
        )
        if summary.get("status") == "stopped":
            raise TrialStopped(f"trial {trial.number} was stopped by the user")
        if not math.isfinite(best):
            raise CnnlabError(f"trial {trial.number} finished no epoch (empty validation split?)")
        return best

    return objective


@dataclass
class TuneConfig:
    """One study's settings: the base config, the search space and how the study searches.

    `n_trials` counts finished (complete + pruned) trials; `heartbeat` (seconds) is how often a
    running trial proves its worker alive (a dead worker's trial fails after 3 and is retried).
    """

    base: RunConfig
    space: SearchSpace | None = None
    study_name: str = "cnnlab"
    storage: str | optuna.storages.BaseStorage | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = None
    timeout: float | None = None
    seed: int | None = 0
    heartbeat: int | None = HEARTBEAT_S


def tune(
    config: TuneConfig,
    *,
    data: PreparedData | None = None,
    stop_event: threading.Event | None = None,
    on_trial: Callable[[TrialEvent], None] | None = None,
    fit_callbacks: tuple[Callback, ...] = (),
) -> optuna.Study:
    """Open (or resume) the study `config` names and run trials of train.fit on data prepared
    once (`data`, else prepared here); returns the study."""
    base, storage = config.base, config.storage
    base.validate()
    if base.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction must be > 0 for tuning: trials compare val accuracy")
    space = (config.space or SearchSpace.default_for(base.model.name)).validate(base.model.name)
    study = open_study(
        config.study_name, storage, config.sampler, config.pruner, config.seed, config.heartbeat
    )
    study.set_user_attr("space", space.to_dict())
    study.set_user_attr("base_config", base.to_dict())
    if data is None:
        data = prepare(base.data)
    objective = make_objective(base, space, data, stop_event, fit_callbacks)
    lock_path = None if isinstance(storage, optuna.storages.BaseStorage) else ask_lock_path(storage)
    run_trials(study, objective, config.n_trials, config.timeout, stop_event, on_trial, lock_path)
    return study


# ---------------------------------------------------------------- reading a study
def _duration(t: optuna.trial.FrozenTrial) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or datetime.now(t.datetime_start.tzinfo)
    return (end - t.datetime_start).total_seconds()


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a plain dict (number, state, value, params, duration, run_id, epochs, error)."""
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "value": t.value,
            "params": dict(t.params),
            "duration": _duration(t),
            "run_id": t.user_attrs.get("run_id"),
            "epochs": len(t.intermediate_values),
            "error": t.user_attrs.get("error"),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def best_config(study: optuna.Study) -> RunConfig:
    """The full RunConfig of the best complete trial (ConfigError when none completed)."""
    try:
        best = study.best_trial
    except ValueError as exc:
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet") from exc
    return RunConfig.from_dict(best.user_attrs["config"])


def tune_summary(study: optuna.Study) -> dict[str, Any]:
    """What `cnnlab tune --json` prints: best trial, counts per state, every trial."""
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["value"], default=None)
    values = [r["value"] for r in complete]
    return {
        "study": study.study_name,
        "direction": "maximize",
        "metric": "val_accuracy",
        "best_value": best["value"] if best else None,
        "best_params": best["params"] if best else {},
        "best_trial": best["number"] if best else None,
        "best_run_id": best["run_id"] if best else None,
        "median_value": statistics.median(values) if values else None,
        "n_trials": len(rows),
        "n_complete": len(complete),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "n_failed": sum(r["state"] == "fail" for r in rows),
        "n_running": sum(r["state"] == "running" for r in rows),
        "trials": rows,
    }
