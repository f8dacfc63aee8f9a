"""Run folders on disk: config, split, per-epoch metrics, checkpoints, summary.

Layout of `runs/<run_id>/`: config.json, split.json, metrics.jsonl (one line per epoch, flushed),
best.pt (lowest val loss), last.pt (for resuming), summary.json (status and results).
Every write is atomic (temp file + rename) so a killed process never leaves a half-written file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import workspace
from .config import RunConfig
from .errors import RunNotFoundError, TrainingError

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "stopped", "failed", "pruned", "interrupted")


@dataclass(frozen=True)
class Run:
    run_id: str
    run_dir: Path

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.json"

    @property
    def split_path(self) -> Path:
        return self.run_dir / "split.json"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "summary.json"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def exports_dir(self) -> Path:
        return self.run_dir / "exports"


def new_run_id() -> str:
    """Sortable, unique id: date-time plus a short random suffix."""
    now = time.time()
    millis = int(now * 1000) % 1000  # runs started within one second still sort in order
    return (
        time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        + f"{millis:03d}-"
        + secrets.token_hex(2)
    )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file in the same folder and rename, so readers never see half a file."""
    _write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, default=str).encode()))


def save_checkpoint_atomic(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a crash leaves the previous checkpoint intact."""
    _write_atomic(path, lambda f: torch.save(payload, f))


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TrainingError(
            f"could not write {path}: {exc.strerror or exc}. Free disk space or make the workspace "
            f"({workspace.home()}) writable; the previous file was left intact."
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_run(
    config: RunConfig,
    classes: list[str],
    split_files: dict[str, list[str]] | None = None,
    run_id: str | None = None,
) -> Run:
    """Make a new run folder with config.json, split.json and a 'running' summary."""
    run_id = run_id or new_run_id()
    run_dir = workspace.runs_dir() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    run = Run(run_id, run_dir)
    write_json_atomic(run.split_path, {"classes": classes, "files": split_files or {}})
    write_summary(
        run,
        {
            "run_id": run_id,
            "run_dir": str(run_dir),
            "name": config.name,
            "status": "running",
            "model": config.model.name,
            "classes": classes,
            "created": time.time(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
    )
    # config.json last: a folder counts as a run once it exists, so a kill before it leaves none
    write_json_atomic(run.config_path, config.to_dict())
    return run


def write_summary(run: Run, summary: dict[str, Any]) -> None:
    """Replace summary.json atomically."""
    write_json_atomic(run.summary_path, summary)


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
    _write_atomic(run.metrics_path, lambda f: f.write(text.encode()))


def read_metrics(run: Run) -> list[dict[str, Any]]:
    """Every whole line of metrics.jsonl; a torn last line (crash mid-write) is ignored."""
    if not run.metrics_path.exists():
        return []
    rows = []
    for line in run.metrics_path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("ignoring a torn line in %s", run.metrics_path)
    return rows


def read_summary(run: Run) -> dict[str, Any]:
    """summary.json as a dict (empty dict when missing or unreadable)."""
    try:
        return json.loads(run.summary_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def read_config(run: Run) -> RunConfig:
    """The run's config.json as a RunConfig."""
    return RunConfig.load(run.config_path)


def read_split(run: Run) -> dict[str, Any]:
    """split.json: classes and the train/val/test file lists."""
    try:
        return json.loads(run.split_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"classes": [], "files": {}}


def load_run(run: str | Path | Run) -> Run:
    """Find a run by id (in the workspace) or by folder path."""
    if isinstance(run, Run):
        return run
    text = str(run)
    candidates = [Path(text)] if os.sep in text or Path(text).is_dir() else []
    candidates.append(workspace.runs_dir() / text)
    for cand in candidates:
        if (cand / "config.json").is_file():
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


# Runs whose fit() is running in this process: a 'running' summary naming this pid but absent
# here belongs to a fit that died without recording it (e.g. the disk was full).
_ACTIVE: set[str] = set()


def mark_active(run: Run, active: bool) -> None:
    """Record that this process's fit() owns (or no longer owns) the run."""
    (_ACTIVE.add if active else _ACTIVE.discard)(run.run_id)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_status(summary: dict[str, Any]) -> str:
    """A 'running' run whose process on this host is gone was interrupted."""
    status = summary.get("status", "unknown")
    if status == "running" and summary.get("host") == socket.gethostname():
        pid = summary.get("pid")
        if pid == os.getpid():
            return status if summary.get("run_id") in _ACTIVE else "interrupted"
        if isinstance(pid, int) and not _is_alive(pid):
            return "interrupted"
    return status


def iter_runs() -> Iterable[Run]:
    """Every run folder in the workspace, newest first."""
    root = workspace.runs_dir()
    for d in sorted(root.iterdir(), reverse=True):
        if d.is_dir() and (d / "config.json").is_file():
            yield Run(d.name, d)


def list_runs() -> list[dict[str, Any]]:
    """Summaries of every run, newest first, with the status corrected for dead processes."""
    out = []
    for run in iter_runs():
        summary = read_summary(run) or {"run_id": run.run_id, "run_dir": str(run.run_dir)}
        summary["status"] = effective_status(summary)
        out.append(summary)
    return out


def delete_run(run: str | Path | Run) -> None:
    """Remove a run folder (only ever inside the workspace's runs/)."""
    r = load_run(run)
    root = workspace.runs_dir().resolve()
    if root not in r.run_dir.resolve().parents:
        raise RunNotFoundError(f"{r.run_dir} is not inside {root}; refusing to delete it")
    shutil.rmtree(r.run_dir)
