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
and retried (optuna's RetryFailedTrialCallback). Passwords in storage URLs are never shown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from . import runs, train, workspace
from .config import RunConfig
from .data import PreparedData, prepare
from .errors import CnnlabError, ConfigError
from .search_space import SearchSpace, apply_params, suggest
from .study_storage import (  # re-exported: callers use tune.open_storage, tune.safe_url
    HEARTBEAT_S,
    ask_lock_path,
    open_storage,
    safe_url,
    storage_lock,
    with_retries,
)

log = logging.getLogger(__name__)

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


def list_studies(storage: str | None = None) -> list[str]:
    """Names of the studies in a storage, newest last."""
    return [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))]


# ---------------------------------------------------------------- objective
class TrialStopped(CnnlabError):
    """The user stopped the study while this trial was training."""


def make_objective(
    base: RunConfig,
    space: SearchSpace,
    data: PreparedData,
    stop_event: threading.Event | None = None,
    fit_callbacks: tuple[train.Callback, ...] = (),
) -> Callable[[optuna.Trial], float]:
    """objective(trial) -> best val accuracy, training with train.fit and pruning per epoch."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        config = apply_params(base, space, params)
        config.name = f"{trial.study.study_name} #{trial.number}"
        config.validate()
        trial.set_user_attr("config", config.to_dict())
        best = -math.inf

        def link(event: train.Event) -> None:
            if isinstance(event, train.RunStarted):  # link both ways, before the first epoch
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


# ---------------------------------------------------------------- running a study
@dataclass
class TrialEvent:
    """A trial finished (complete, pruned or fail); what the CLI table and the UI show."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    duration: float
    run_id: str | None = None
    error: str | None = None
    kind: str = field(default="TrialFinished", init=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with a 'kind' key (a jobs.Job event)."""
        return dataclasses.asdict(self)


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WAIT_POLL_S = 1.0  # how often a worker whose budget others are finishing looks again
WAIT_STALL_S = 600.0  # ... and when it gives up if nothing finishes (a trial left RUNNING by an
# old crash has no heartbeat row, so optuna never fails it: do not wait for it forever)


def _next_trial(
    study: optuna.Study,
    n_trials: int | None,
    lock_path: Path | None | str,
    stop_event: threading.Event | None = None,
) -> optuna.Trial | None:
    """Ask for a trial while the study lacks finished ones; None when it has n_trials.

    While other workers' running trials would fill the budget, wait: one of them may die, and its
    trial (failed after the heartbeat grace period, then retried) then needs a worker.
    """
    url = storage_url(study)
    last, since = None, time.monotonic()
    while True:
        with _ask_lock(lock_path, url):
            if _heartbeats_on(study):
                with warnings.catch_warnings():
                    # fail_stale_trials is marked experimental; optuna's own optimize() calls it.
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)  # enqueued: run first
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if n_trials is None or waiting or finished + running < n_trials:
                return _ask(study)
            if finished >= n_trials:
                return None
        if (finished, running) != last:
            last, since = (finished, running), time.monotonic()
        elif time.monotonic() - since > WAIT_STALL_S:
            log.warning(
                "%d trial(s) still running elsewhere and none finished for %.0f s: leaving them",
                running,
                WAIT_STALL_S,
            )
            return None
        if stop_event is not None and stop_event.is_set():
            return None
        time.sleep(WAIT_POLL_S)


def storage_url(study: optuna.Study) -> str | None:
    """The URL of the study's RDB storage, or None for in-memory and other storages."""
    storage = study._storage  # noqa: SLF001 (optuna exposes no public getter)
    # create_study wraps an RDBStorage in a _CachedStorage, which has no `url` of its own:
    # reading only the outer object left PostgreSQL workers asking without the lock.
    backend = getattr(storage, "_backend", storage)
    return getattr(backend, "url", None)


def _ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        # optuna warns that heartbeats are meant for optimize(); run_trials records them itself.
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()


def _heartbeats_on(study: optuna.Study) -> bool:
    return bool(getattr(study._storage, "get_heartbeat_interval", lambda: None)())  # noqa: SLF001


def _ask_lock(lock_path: Path | None | str, url: str | None):
    if isinstance(lock_path, Path):
        return FileLock(lock_path, timeout=60)
    if url and ask_lock_path(url) is None:
        return storage_lock(url)  # server databases: an advisory / named lock
    return contextlib.nullcontext()


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Record the trial's heartbeat while it runs (what study.optimize does; ask/tell must too)."""
    from optuna.storages._heartbeat import get_heartbeat_thread  # optuna's own thread

    with get_heartbeat_thread(trial._trial_id, study._storage):  # noqa: SLF001
        yield


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None = None,
    timeout: float | None = None,
    stop_event: threading.Event | None = None,
    on_trial: Callable[[TrialEvent], None] | None = None,
    lock_path: Path | None = None,
) -> int:
    """Ask/run/tell until the study holds n_trials, timeout passes or stop_event is set.

    `lock_path` (see ask_lock_path) makes processes sharing an SQLite file take turns to ask.
    Returns how many trials this call ran. A trial's CnnlabError marks it FAIL and the study goes
    on; any other exception marks it FAIL and propagates (a bug should not be retried N times).
    """
    if n_trials is None and timeout is None and stop_event is None:
        raise ConfigError("give a trial budget (n_trials) or a timeout, or the study never ends")
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = 0
    while not (stop_event is not None and stop_event.is_set()):
        if deadline is not None and time.monotonic() >= deadline:
            break
        trial = _next_trial(study, n_trials, lock_path, stop_event)
        if trial is None:
            break
        t0 = time.perf_counter()
        value, state, error = None, TrialState.COMPLETE, None
        try:
            with _heartbeat(study, trial):
                value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except CnnlabError as exc:
            state, error = TrialState.FAIL, str(exc)
            log.warning("trial %d failed: %s", trial.number, exc)
        except BaseException as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            study.tell(trial, state=TrialState.FAIL)
            raise
        if error is not None:
            trial.set_user_attr("error", error)
        frozen = study.tell(trial, value, state=None if value is not None else state)
        ran += 1
        if on_trial is not None:
            on_trial(
                TrialEvent(
                    number=frozen.number,
                    state=frozen.state.name.lower(),
                    value=frozen.value,
                    params=dict(frozen.params),
                    duration=time.perf_counter() - t0,
                    run_id=frozen.user_attrs.get("run_id"),
                    error=error,
                )
            )
    return ran


def tune(
    base: RunConfig,
    space: SearchSpace | None = None,
    *,
    study_name: str = "cnnlab",
    storage: str | optuna.storages.BaseStorage | None = None,
    sampler: str = "tpe",
    pruner: str = "median",
    n_trials: int | None = None,
    timeout: float | None = None,
    seed: int | None = 0,
    data: PreparedData | None = None,
    stop_event: threading.Event | None = None,
    on_trial: Callable[[TrialEvent], None] | None = None,
    fit_callbacks: tuple[train.Callback, ...] = (),
    heartbeat: int | None = HEARTBEAT_S,
) -> optuna.Study:
    """Open (or resume) a study and run trials of train.fit on data prepared once; returns it.

    `n_trials` counts finished (complete + pruned) trials; `heartbeat` (seconds) is how often a
    running trial proves its worker alive (a dead worker's trial fails after 3 and is retried).
    """
    base.validate()
    if base.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction must be > 0 for tuning: trials compare val accuracy")
    space = (space or SearchSpace.default_for(base.model.name)).validate(base.model.name)
    study = open_study(study_name, storage, sampler, pruner, seed, heartbeat)
    study.set_user_attr("space", space.to_dict())
    study.set_user_attr("base_config", base.to_dict())
    if data is None:
        data = prepare(base.data)
    objective = make_objective(base, space, data, stop_event, fit_callbacks)
    lock_path = None if isinstance(storage, optuna.storages.BaseStorage) else ask_lock_path(storage)
    run_trials(study, objective, n_trials, timeout, stop_event, on_trial, lock_path)
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
