"""Hyperparameter search with Optuna around the same `train.fit` used for training.

Each trial builds a RunConfig from `trial.suggest_*` (a SearchSpace over a base config), trains it
with `train.fit` on data prepared ONCE per study, reports every epoch's val accuracy and is pruned
when the pruner says so. Every trial is a normal run folder: the trial carries the run id (user
attr `run_id`) and the run's summary carries the study name and trial number.

`n_trials` is the number of trials the STUDY should hold: rerunning a study continues it up to that
number, and several workers sharing one storage (SQLite file, PostgreSQL URL...) stop when the study
holds n_trials trials between them. Asking for a new trial happens under a lock next to an SQLite
file, so processes on one machine never overshoot; on a server database the check and the ask are
two statements apart (milliseconds) and two workers finishing at the same instant could add one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
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
    return cfg.validate()


def default_study_name(base: RunConfig) -> str:
    """<data folder>-<model>: reruns on the same data and model resume the same study."""
    folder = Path(base.data.path).expanduser().resolve().name or "data"
    return f"{folder}-{base.model.name}"


# ---------------------------------------------------------------- storage and study
@lru_cache(maxsize=8)
def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    # One engine per URL per process: the dashboard re-reads the study every second.
    kwargs: dict[str, Any] = {}
    lock_path = ask_lock_path(url)
    if lock_path is not None:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        # Wait up to 30 s for another worker's write instead of failing with "database is locked".
        kwargs = {"connect_args": {"timeout": 30}}
    # Two workers creating a fresh SQLite file at once race on its schema: take turns.
    with FileLock(lock_path, timeout=60) if lock_path else contextlib.nullcontext():
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def open_storage(url: str | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage for a URL (default: the workspace's SQLite file)."""
    url = url or workspace.studies_url()
    try:
        return _rdb_storage(url)
    except Exception as exc:  # SQLAlchemy raises many kinds (bad URL, driver missing, no server)
        raise ConfigError(f"cannot open the study storage {url!r}: {exc}") from exc


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE (Bayesian) or random search, seeded."""
    if name == "tpe":
        # Few startup trials: studies here are short, and TPE beats random after a handful.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
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
) -> optuna.Study:
    """Create the study or load it when it exists (resuming continues its numbering)."""
    store = storage if isinstance(storage, optuna.storages.BaseStorage) else open_storage(storage)
    pruner_obj = make_pruner(pruner)
    make_sampler(sampler, seed)  # validate the name before touching the storage
    study = optuna.create_study(
        study_name=name, storage=store, direction="maximize", load_if_exists=True
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {name!r} exists but minimises; choose another --study name")
    # Offset the seed by the trials already there, so a resumed study or a second worker does not
    # replay the first worker's random draws; a fresh single-worker study stays reproducible.
    offset = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sampler, None if seed is None else seed + offset)
    study.pruner = pruner_obj
    return study


def load_study(name: str, storage: str | None = None) -> optuna.Study:
    """An existing study, for reading its trials (ConfigError when there is none)."""
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError as exc:
        raise ConfigError(
            f"no study named {name!r} in {storage or workspace.studies_url()}"
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


def ask_lock_path(storage: str | None = None) -> Path | None:
    """The lock file serialising 'count, then ask' for an SQLite storage (None for servers)."""
    url = storage or workspace.studies_url()
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///") + ".lock")
    return None


def _next_trial(
    study: optuna.Study, n_trials: int | None, lock_path: Path | None
) -> optuna.Trial | None:
    lock = FileLock(lock_path, timeout=60) if lock_path else contextlib.nullcontext()
    with lock:
        trials = study.get_trials(deepcopy=False)  # every state: running trials count too
        waiting = any(t.state == TrialState.WAITING for t in trials)  # enqueued: run them first
        if n_trials is not None and len(trials) >= n_trials and not waiting:
            return None
        return study.ask()


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
        trial = _next_trial(study, n_trials, lock_path)
        if trial is None:
            break
        t0 = time.perf_counter()
        value, state, error = None, TrialState.COMPLETE, None
        try:
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
) -> optuna.Study:
    """Open (or resume) a study and run trials of train.fit on data prepared once; returns it."""
    base.validate()
    if base.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction must be > 0 for tuning: trials compare val accuracy")
    space = (space or SearchSpace.default_for(base.model.name)).validate(base.model.name)
    study = open_study(study_name, storage, sampler, pruner, seed)
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
