"""Run folders on disk: config, split, per-epoch metrics, checkpoints, summary.

Layout of `runs/<run_id>/`: config.json, split.json, metrics.jsonl (one line per epoch, flushed),
best.pt (lowest val loss), last.pt (for resuming), summary.json (status and results).
Every write is atomic (temp file + rename) so a killed process never leaves a half-written file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import atomic, file_lock, overrides, ownership, reach, workspace
from .archive import dataset_name
from .config import RunConfig
from .errors import ConfigError, RunNotFoundError, TrainingError
from .override_set import Overrides

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "stopped", "failed", "pruned", "interrupted", "damaged")
LOCK_NAME = "run.lock"  # flock'ed by the process training the run; the kernel drops it on death


def _in_run(name: str) -> property:
    """A Run property: the path of `name` inside the run folder."""
    return property(lambda run: run.run_dir / name, doc=f"The run's {name}.")


@dataclass(frozen=True)
class Run:
    """A run folder: its id, its path, and the path of each file it keeps."""

    run_id: str
    run_dir: Path

    config_path = _in_run("config.json")
    split_path = _in_run("split.json")
    metrics_path = _in_run("metrics.jsonl")
    summary_path = _in_run("summary.json")
    best_path = _in_run("best.pt")
    last_path = _in_run("last.pt")
    exports_dir = _in_run("exports")
    lock_path = _in_run(LOCK_NAME)
    overrides_path = _in_run(overrides.FILE_NAME)


def new_run_id() -> str:
    """Sortable, unique id: date-time plus a short random suffix."""
    now = time.time()
    millis = int(now * 1000) % 1000  # runs started within one second still sort in order
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}{millis:03d}-{secrets.token_hex(2)}"


def run_name(config: RunConfig) -> str:
    """The run's label: the name it was given, else its data set's name."""
    return config.name or (dataset_name(config.data.path) if config.data.path else "")


def create_run(
    config: RunConfig,
    classes: list[str],
    split_files: dict[str, list[str]] | None = None,
    run_id: str | None = None,
) -> Run:
    """Make a new run folder with config.json, split.json and a 'running' summary."""
    run_id = run_id or new_run_id()
    try:
        run_dir = workspace.runs_dir() / run_id
        run_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise TrainingError(
            f"could not create a run folder in {workspace.home()}: {exc.strerror or exc}; free "
            "disk space or make the workspace writable (CNNLAB_HOME)"
        ) from exc
    run = Run(run_id, run_dir)
    try:
        atomic.write_json_atomic(run.split_path, {"classes": classes, "files": split_files or {}})
        first = _first_summary(run, config, classes, "running", time.time())
        write_summary(run, {**first, "pid": os.getpid(), "host": socket.gethostname(),
                            "owner": ownership.current_owner()})  # fmt: skip
        # config.json last: a folder counts as a run once it exists, so a kill before it leaves none
        atomic.write_json_atomic(run.config_path, reach.redact_config(config.to_dict()))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # a full disk leaves no half-made run folder
        raise
    return run


def rebuild_summary(run: Run) -> dict[str, Any]:
    """A summary for a run whose summary.json is missing or unreadable, from its config and
    split: an interrupted run (what a kill before the first write leaves)."""
    config = read_config(run)
    try:
        created = run.config_path.stat().st_mtime
    except OSError:
        created = time.time()
    classes = read_split(run).get("classes") or []
    return _first_summary(run, config, classes, "interrupted", created)


def _first_summary(
    run: Run, config: RunConfig, classes: list[str], status: str, created: float
) -> dict[str, Any]:
    """What every summary starts with: the run, its name and model, its classes, its start."""
    return {"run_id": run.run_id, "run_dir": str(run.run_dir), "name": run_name(config),
            "status": status, "model": config.model.name, "classes": classes, "created": created}  # fmt: skip


def remove_temporaries(run: Run) -> None:
    """Delete the temporaries a killed write left in the run folder (call holding its lock)."""
    for tmp in run.run_dir.glob(".*.tmp"):
        try:
            tmp.unlink()
            log.info("removed %s, left by an interrupted write", tmp)
        except OSError as exc:
            log.warning("could not remove %s (%s)", tmp, exc.strerror or exc)


def write_summary(run: Run, summary: dict[str, Any]) -> None:
    """Replace summary.json atomically."""
    atomic.write_json_atomic(run.summary_path, summary)


def update_summary(run: Run, **fields: Any) -> dict[str, Any]:
    """Merge fields into summary.json and return the new summary."""
    summary = read_summary(run)
    summary.update(fields)
    write_summary(run, summary)
    return summary


def append_metrics(run: Run, row: dict[str, Any]) -> None:
    """Append one epoch as a whole JSON line; fsync so a crash never keeps half a line."""
    line = (json.dumps(row, default=float) + "\n").encode()
    try:
        fd = os.open(run.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise TrainingError(
            f"could not write {run.metrics_path}: {exc.strerror or exc}. Free disk space or make "
            f"the workspace ({workspace.home()}) writable; the checkpoints so far were kept."
        ) from exc


def rewrite_metrics(run: Run, rows: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with these rows, atomically (used when resuming)."""
    text = "".join(json.dumps(r, default=float) + "\n" for r in rows)
    atomic.write_atomic(run.metrics_path, lambda f: f.write(text.encode()))


def read_metrics(run: Run) -> list[dict[str, Any]]:
    """Every epoch row of metrics.jsonl; a torn line (crash mid-write) or one that is not an
    epoch's metrics is skipped with a warning (the one reader: every caller goes through here)."""
    if not run.metrics_path.exists():
        return []
    rows = []
    for n, line in enumerate(run.metrics_path.read_text().splitlines(), 1):
        row, problem = _metrics_row(line)
        if row is None:
            log.warning("ignoring line %d of %s: it %s", n, run.metrics_path, problem)
        else:
            rows.append(row)
    return rows


def _metrics_row(line: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the epoch row one metrics.jsonl line holds, None) or (None, what is wrong with it)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None, "is not JSON"
    if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
        return None, "is not an epoch's metrics object"
    return row, None


def seconds_so_far(run: Run) -> float:
    """Training seconds a run has spent: its summary's total, or (killed before writing one) the
    sum of its epochs' times. A resumed run adds its new time to this."""
    seconds = read_summary(run).get("seconds")
    if isinstance(seconds, (int, float)) and math.isfinite(seconds):
        return float(seconds)
    return float(sum(r.get("seconds") or 0.0 for r in read_metrics(run)))


def read_summary(run: Run) -> dict[str, Any]:
    """summary.json as a dict (empty dict when missing, unreadable or not a JSON object)."""
    return _json_object(run.summary_path) or {}


def _json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in path; None when it is missing, unreadable or not an object."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def write_overrides(run: Run, used: Overrides) -> None:
    """Keep the label overrides a run trained with (overrides.json in its folder)."""
    atomic.write_json_atomic(run.overrides_path, used.to_dict())


def read_overrides(run: Run) -> Overrides:
    """The label overrides a run trained with (empty for a run that used none)."""
    return overrides.read_file(run.overrides_path)


def read_config(run: Run) -> RunConfig:
    """The run's config.json as a RunConfig; a damaged one is a ConfigError naming the run."""
    try:
        return RunConfig.load(run.config_path)
    except ConfigError as exc:
        raise ConfigError(f"run {run.run_id} has a damaged config.json ({exc})") from exc
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"run {run.run_id} has an unreadable config.json ({exc})") from exc


def read_split(run: Run) -> dict[str, Any]:
    """split.json: classes and the train/val/test file lists."""
    split = _json_object(run.split_path)
    return split if split is not None else {"classes": [], "files": {}}


def load_run(run: str | Path | Run) -> Run:
    """Find a run by id (in the workspace) or by folder path."""
    if isinstance(run, Run):
        return run
    text = str(run)
    candidates = [Path(text)] if os.sep in text or Path(text).is_dir() else []
    candidates.append(workspace.runs_dir() / text)
    for cand in candidates:
        if Run(cand.name, cand).config_path.is_file():
            cand = cand.resolve()
            return Run(cand.name, cand)
    raise RunNotFoundError(
        f"no run {text!r} in {workspace.runs_dir()}; list runs with `cnnlab runs` "
        "(the workspace comes from CNNLAB_HOME)"
    )


def checkpoint_path(run: str | Path | Run, which: str = "best") -> Path:
    """Path of a run's best.pt or last.pt, checked to exist."""
    r = load_run(run)
    path = r.best_path if which == "best" else r.last_path
    if not path.is_file():
        raise RunNotFoundError(f"run {r.run_id} has no {path.name} yet (did it finish an epoch?)")
    return path


def save_checkpoint_atomic(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a crash leaves the previous checkpoint intact."""
    atomic.write_atomic(path, lambda f: torch.save(payload, f))


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True; a damaged or code-carrying file is a clear CnnlabError."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    # weights_only refuses pickled code with UnpicklingError (whose text suggests turning the
    # safety off: not advice to pass on); truncated files fail with EOFError/RuntimeError.
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise RunNotFoundError(
            f"{path} is damaged or not a cnnlab checkpoint (it may hold code, which cnnlab never "
            "runs); use another run, or retrain"
        ) from exc
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise RunNotFoundError(f"{path} is not a cnnlab checkpoint (no model_state); retrain")
    return ckpt


# Runs this process trains: run_id -> the open lock file descriptor (flock held on it).
_ACTIVE: dict[str, int] = {}
_ACTIVE_GUARD = threading.Lock()
LOCK_WAIT_S = 1.0  # a lock probe (listing runs) holds the lock for microseconds: retry that long


def is_locked(run: Run) -> bool:
    """True while some process (this one included) trains the run: its lock file is held."""
    return run.run_id in _ACTIVE or file_lock.held(run.lock_path)


def _busy(run: Run) -> TrainingError:
    return TrainingError(
        f"run {run.run_id} is being trained by another process or session; wait for it to "
        "finish or stop it first"
    )


def mark_active(run: Run, active: bool) -> None:
    """Take (or release) the run's lock for this process's fit(); TrainingError if another holds it."""
    with _ACTIVE_GUARD:
        if not active:
            fd = _ACTIVE.pop(run.run_id, None)
            if fd is not None:
                os.close(fd)  # closing the descriptor releases the flock
            return
        if run.run_id in _ACTIVE:
            raise _busy(run)
        try:
            fd = file_lock.try_lock(run.lock_path, LOCK_WAIT_S)
        except OSError as exc:
            raise TrainingError(atomic.write_failure(run.lock_path, exc)) from exc
        if fd is None:
            raise _busy(run)
        _ACTIVE[run.run_id] = fd


def effective_status(summary: dict[str, Any], run: Run | None = None) -> str:
    """A 'running' run whose lock nobody holds was interrupted (the lock, not a pid, decides)."""
    status = summary.get("status", "unknown")
    if status != "running":
        return status
    if run is None:
        run_dir = summary.get("run_dir")
        if not run_dir:
            return status
        run = Run(Path(run_dir).name, Path(run_dir))
    return "running" if is_locked(run) else "interrupted"


def iter_runs() -> Iterable[Run]:
    """Every run folder in the workspace, newest first."""
    root = workspace.runs_dir()
    for d in sorted(root.iterdir(), reverse=True):
        if d.is_dir() and Run(d.name, d).config_path.is_file():
            yield Run(d.name, d)


def damage(run: Run) -> str | None:
    """Why a run folder cannot be used (a file that is not what it should be), or None."""
    try:
        raw = json.loads(run.summary_path.read_text())
        if not isinstance(raw, dict):
            return f"summary.json holds a {type(raw).__name__}, not an object"
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        return f"summary.json is unreadable ({exc})"
    try:
        read_config(run)  # parsed, not validated: a rule tightened later must not damage old runs
    except ConfigError as exc:
        return str(exc)
    if run.metrics_path.exists():
        try:
            lines = run.metrics_path.read_text().splitlines()
        except (OSError, ValueError) as exc:
            return f"metrics.jsonl is unreadable ({exc})"
        for n, line in enumerate(lines[:-1], 1):  # a torn last line is a normal crash artefact
            problem = _metrics_row(line)[1]
            if problem:
                return f"metrics.jsonl line {n} {problem}"
    return None


def list_runs() -> list[dict[str, Any]]:
    """Summaries of every run, newest first: status from the run lock; damaged runs say why."""
    out = []
    for run in iter_runs():
        summary = read_summary(run)
        # the folder name is the id: a copied folder's summary still names the original
        summary.update(run_id=run.run_id, run_dir=str(run.run_dir))
        reason = damage(run)
        if reason:
            summary.update(status="damaged", damage=reason)
        else:
            summary["status"] = effective_status(summary, run)
            if summary.get("epochs_run") is None:  # killed or pruned before a final summary
                done = max((r["epoch"] for r in read_metrics(run)), default=None)
                if done is not None:
                    summary["epochs_run"] = done
        out.append(summary)
    return out


def delete_run(run: str | Path | Run) -> None:
    """Remove a run folder (only inside the workspace's runs/); refused while it trains."""
    r = load_run(run)
    root = workspace.runs_dir().resolve()
    if root not in r.run_dir.resolve().parents:
        raise RunNotFoundError(f"{r.run_dir} is not inside {root}; refusing to delete it")
    if r.run_id in _ACTIVE:
        raise _busy(r)
    try:
        fd = file_lock.try_lock(r.lock_path, LOCK_WAIT_S)
    except OSError:
        fd = -1  # a read-only workspace: rmtree below will say so
    if fd is None:
        raise _busy(r)
    try:
        shutil.rmtree(r.run_dir)
    except OSError as exc:
        raise TrainingError(f"could not delete {r.run_dir}: {exc.strerror or exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
