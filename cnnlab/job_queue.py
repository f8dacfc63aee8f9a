"""The durable job queue: one SQLite table in the workspace that the dashboard, `cnnlab jobs` and
`cnnlab worker` all read and write, so a queued or running training outlives the process that
started it.

One row per job: owner, kind, config (JSON), state, run id, timestamps, the stop request and the
result. States: queued -> running -> done | failed | cancelled (stopped by a user, queued or
running) | interrupted (its process died without ending the row: the server stopped, the machine
rebooted; the run is resumable). Which process runs a job is decided by `claim` (an UPDATE that
only one scheduler wins); whether it still runs, by a lock file its processes hold
(`hold_lock`/`is_locked`, the same rule as run folders: the lock, not a pid, decides).

SQLite in WAL mode: readers never block the one writer; each call opens its own short
connection, so any thread or process may call any function. The file lives in CNNLAB_HOME
(`jobs.sqlite`), per-job files (events, logs, lock) in `CNNLAB_HOME/jobs/<id>/`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from . import file_lock, ownership, per_thread, workspace
from .config import RunConfig
from .errors import CnnlabError

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
DEFAULT_OWNER = ownership.SINGLE_USER  # jobs nobody signed in for belong to the single user
DB_NAME = "jobs.sqlite"
RECENT_S = 10.0  # a row claimed this recently may not hold its lock yet: not judged dead
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'train',
    name TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    nproc INTEGER NOT NULL DEFAULT 1,
    resume_run TEXT,
    force INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    run_id TEXT,
    worker TEXT,
    pid INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, seq);
"""


class JobNotFound(CnnlabError):
    """No job with that id in the workspace's queue."""


_local = threading.local()


def using(home: Path | None) -> AbstractContextManager[None]:
    """Within the block, this thread's queue is the one in `home` (a job keeps the workspace it
    was queued in, whatever CNNLAB_HOME says later); None: the current workspace."""
    return per_thread.bound(_local, "home", home)


def home() -> Path:
    """The workspace whose queue this thread uses."""
    return getattr(_local, "home", None) or workspace.home()


def db_path() -> Path:
    """The queue's SQLite file in the current workspace."""
    return home() / DB_NAME


def job_dir(job_id: str) -> Path:
    """The job's own folder (events.jsonl, its process's log, its lock), created on demand."""
    path = home() / "jobs" / job_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def events_path(job_id: str) -> Path:
    """The job's events, one JSON object a line, as the job process emits them."""
    return job_dir(job_id) / "events.jsonl"


@contextlib.contextmanager
def connect() -> Iterator[sqlite3.Connection]:
    """A short-lived connection in WAL mode, committed on success (one per call: thread-safe)."""
    conn = sqlite3.connect(db_path(), timeout=30.0, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        yield conn
    finally:
        conn.close()


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d.pop("seq", None)
    for key in ("config", "result"):
        if d.get(key):
            d[key] = json.loads(d[key])
    d["stop_requested"] = bool(d["stop_requested"])
    d["force"] = bool(d["force"])
    return d


def submit(
    config: RunConfig,
    owner: str = DEFAULT_OWNER,
    nproc: int = 1,
    name: str = "",
    resume_run: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Queue a training job (a new run from config, or resume_run continued); returns its row."""
    config.validate()
    job_id = secrets.token_hex(6)
    now = time.time()
    with connect() as conn:
        conn.execute(
            "INSERT INTO jobs (id, owner, kind, name, config, nproc, resume_run, force, state, "
            "created_at, updated_at) VALUES (?, ?, 'train', ?, ?, ?, ?, ?, 'queued', ?, ?)",
            (job_id, owner, name or config.name, config.to_json(), max(1, nproc), resume_run,
             int(force), now, now),
        )  # fmt: skip
    return get(job_id)


def get(job_id: str) -> dict[str, Any]:
    """The job's row as a dict; JobNotFound when there is none."""
    with connect() as conn:
        row = _row(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())
    if row is None:
        raise JobNotFound(f"no job {job_id!r} in {db_path()}: see `cnnlab jobs list`")
    return row


def find(job_or_run_id: str) -> dict[str, Any] | None:
    """The row with this job id, else the newest with this run id, else None."""
    if not ((getattr(_local, "home", None) or workspace.home_path()) / DB_NAME).is_file():
        return None
    with connect() as conn:
        row = conn.execute(
            "SELECT * FROM jobs WHERE id = ? OR run_id = ? ORDER BY id = ? DESC, seq DESC LIMIT 1",
            (job_or_run_id, job_or_run_id, job_or_run_id),
        ).fetchone()
    return _row(row)


def list_jobs(
    owner: str | None = None, states: tuple[str, ...] | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Rows oldest first (queue order), optionally one owner's and/or in some states."""
    sql, args = "SELECT * FROM jobs WHERE 1=1", []
    if owner is not None:
        sql, args = sql + " AND owner = ?", [*args, owner]
    if states:
        sql += f" AND state IN ({','.join('?' * len(states))})"
        args += list(states)
    sql += " ORDER BY seq DESC LIMIT ?"
    with connect() as conn:
        rows = [_row(r) for r in conn.execute(sql, (*args, limit)).fetchall()]
    return list(reversed(rows))


def queue_position(job_id: str) -> int | None:
    """1 for the next queued job to start, 2 for the one after...; None when not queued."""
    with connect() as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= "
            "(SELECT seq FROM jobs WHERE id = ? AND state = 'queued')",
            (job_id,),
        ).fetchone()
    return row[0] or None


def claim(job_id: str, worker: str) -> bool:
    """Move a queued job to running for `worker`; False when another scheduler got it first or
    it was cancelled meanwhile."""
    now = time.time()
    with connect() as conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'running', worker = ?, started_at = ?, updated_at = ? "
            "WHERE id = ? AND state = 'queued'",
            (worker, now, now, job_id),
        )
        return cur.rowcount == 1


def update(job_id: str, **fields: Any) -> None:
    """Set columns of the job's row (result as a dict; timestamps by the caller)."""
    if not fields:
        return
    if "result" in fields and fields["result"] is not None:
        fields["result"] = json.dumps(fields["result"], default=str)
    fields["updated_at"] = time.time()
    cols = ", ".join(f"{k} = ?" for k in fields)
    with connect() as conn:
        conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))


def finish(
    job_id: str,
    state: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """End a running (or queued) job in `state`; False when the row had already ended."""
    if state not in STATES or state in ACTIVE_STATES:
        raise ValueError(f"not a final state: {state!r}")
    now = time.time()
    with connect() as conn:
        cur = conn.execute(
            "UPDATE jobs SET state = ?, result = ?, error = ?, finished_at = ?, updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'running')",
            (state, json.dumps(result, default=str) if result is not None else None, error,
             now, now, job_id),
        )  # fmt: skip
        return cur.rowcount == 1


def request_stop(job_id: str) -> bool:
    """Cancel a queued job at once, or ask a running one to stop (its process polls the flag);
    False when the job had already ended."""
    now = time.time()
    with connect() as conn:
        cur = conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?, updated_at = ? "
            "WHERE id = ? AND state = 'queued'",
            (now, now, job_id),
        )
        if cur.rowcount:
            return True
        cur = conn.execute(
            "UPDATE jobs SET stop_requested = 1, updated_at = ? WHERE id = ? AND state = 'running'",
            (now, job_id),
        )
        return cur.rowcount == 1


# ---------------------------------------------------------------- is it alive: the lock
def hold_lock(job_id: str) -> int:
    """Take the job's lock (an fd; it stays held while any process that inherited it lives)."""
    fd = file_lock.try_lock(job_dir(job_id) / "lock")
    if fd is None:
        raise CnnlabError(f"job {job_id} is already running in another process")
    return fd


def is_locked(job_id: str) -> bool:
    """True while some process of the job runs (it holds the lock)."""
    return file_lock.held(home() / "jobs" / job_id / "lock")


def recover() -> list[str]:
    """Mark running jobs whose processes are gone as interrupted; returns their ids."""
    if not ((getattr(_local, "home", None) or workspace.home_path()) / DB_NAME).is_file():
        return []
    now, lost = time.time(), []
    for row in list_jobs(states=("running",), limit=10_000):
        if now - (row["updated_at"] or 0) < RECENT_S or is_locked(row["id"]):
            continue
        if finish(row["id"], "interrupted", error="its process ended without finishing (the "
                  "server or worker stopped); resume the run to continue"):  # fmt: skip
            lost.append(row["id"])
    return lost
