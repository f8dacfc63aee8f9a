"""Running an Optuna study trial by trial (ask/run/tell), shared safely between workers.

`n_trials` counts FINISHED (complete + pruned) trials: several workers sharing one storage stop
when the study holds that many between them. "Count, then ask" happens under one lock per storage
(a file lock next to an SQLite file, a PostgreSQL advisory lock, a MySQL named lock), so workers
started at the same instant do not overshoot. Each running trial records heartbeats, so a killed
worker's trial is failed after the grace period and retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from .errors import CnnlabError, ConfigError
from .study_storage import ask_lock_path, storage_lock

log = logging.getLogger(__name__)


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
        """JSON-able dict with a 'kind' key (a job_state.Job event)."""
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
        event = _run_trial(study, trial, objective)
        ran += 1
        if on_trial is not None:
            on_trial(event)
    return ran


def _run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float]
) -> TrialEvent:
    """Run one asked trial and tell the study how it ended (a non-CnnlabError propagates)."""
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
    return TrialEvent(
        number=frozen.number,
        state=frozen.state.name.lower(),
        value=frozen.value,
        params=dict(frozen.params),
        duration=time.perf_counter() - t0,
        run_id=frozen.user_attrs.get("run_id"),
        error=error,
    )
