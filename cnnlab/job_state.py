"""One job's state: the worker's mutable `Job` record and the readers' immutable `JobSnapshot`.

The worker thread only mutates its own `Job` under the job's lock; readers (the dashboard polling
every second, the CLI, tests) take a `JobSnapshot`. Memory stays bounded: a job keeps only its last
Progress/Preparing event, at most `MAX_EVENTS` other events and `MAX_CURVE` curve points.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import job_queue, runs

STATUSES = ("queued", "running", "completed", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running")
MAX_EVENTS = 1000  # non-progress events kept per job (epoch ends, run started, finished...)
MAX_CURVE = 600  # within-epoch loss points kept per job; beyond it every other one is dropped


def _event_dict(event: Any) -> dict[str, Any]:
    """Events are cnnlab.events dataclasses (with to_dict) or plain dicts from other job kinds."""
    if hasattr(event, "to_dict"):
        return event.to_dict()
    if isinstance(event, dict):
        return {"kind": "Event", **event}
    raise TypeError(f"a job event must be a dict or have to_dict(), got {type(event).__name__}")


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent, read-only copy of a job's state for the UI (taken under the job's lock)."""

    job_id: str
    kind: str
    status: str
    name: str
    run_id: str | None
    run_info: dict[str, Any] | None  # the RunStarted event (epochs, split sizes, device, classes)
    epochs: tuple[dict[str, Any], ...]  # one EpochEnd dict per finished epoch, in order
    progress: dict[str, Any] | None  # the latest Progress event
    preparing: dict[str, Any] | None  # the latest Preparing event (data scan/decode)
    events: tuple[dict[str, Any], ...]  # the kept non-progress events, oldest first
    result: Any  # fit's summary dict (or the callable's return value) once finished
    error: str | None
    started_at: float | None  # time.time() stamps
    finished_at: float | None
    eta_s: float | None  # estimated seconds left, None when unknown
    # (fractional epoch, the epoch's mean train loss so far) from Progress ticks, the live curve within epochs
    curve: tuple[tuple[float, float], ...] = ()
    curve_version: int = 0  # grows with every new point (epoch end or tick): redraw only then
    prior_epochs: int = 0  # epochs the run had finished before this job (a resumed run)
    prior_seconds: float = 0.0  # training seconds the run had spent before this job
    queue_position: int | None = None  # 1 = next to start, while queued; None otherwise
    owner: str = job_queue.DEFAULT_OWNER
    stopped_by: str | None = None  # who asked it to stop

    @property
    def active(self) -> bool:
        """True while queued or running."""
        return self.status in ACTIVE

    @property
    def resumable(self) -> bool:
        """An interrupted job whose run got far enough to continue (it has a run id)."""
        return self.status == "interrupted" and self.run_id is not None

    @property
    def summary(self) -> dict[str, Any] | None:
        """fit's summary when the result is a dict (training jobs), else None."""
        return self.result if isinstance(self.result, dict) else None

    @property
    def elapsed_s(self) -> float:
        """Seconds since the job started (until it finished, once it has)."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at

    @property
    def epochs_planned(self) -> int | None:
        """Epochs the run was configured for, once the run has started."""
        return self.run_info.get("epochs") if self.run_info else None

    @property
    def run_seconds(self) -> float:
        """The run's training time so far, earlier sessions of a resumed run included."""
        return self.prior_seconds + self.elapsed_s

    @property
    def best_epoch(self) -> int:
        """Epoch with the lowest validation loss so far (0 before the first epoch)."""
        return self.epochs[-1]["best_epoch"] if self.epochs else 0


@dataclass
class Job:
    """One background task. The worker thread writes it under `lock`; others call snapshot()."""

    job_id: str
    kind: str
    name: str = ""
    status: str = "queued"
    run_id: str | None = None
    run_info: dict[str, Any] | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    preparing: dict[str, Any] | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    training_started: float | None = None  # monotonic time of RunStarted, for the ETA
    curve: list[tuple[float, float]] = field(default_factory=list)
    curve_version: int = 0
    prior_epochs: int = 0
    prior_seconds: float = 0.0
    thread: threading.Thread | None = None
    slots: int = 1  # how many of the manager's slots it holds while running (GPUs for DDP)
    queue_position: int | None = None
    # who started it (cnnlab.users): only they (and admins) see and stop it
    owner: str = job_queue.DEFAULT_OWNER
    stopped_by: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    durable: bool = False  # a queue row run in its own process (training), not a thread's fn
    home: Path | None = None  # a durable job's workspace (its queue), fixed when it was queued

    @property
    def active(self) -> bool:
        """True while queued or running."""
        return self.status in ACTIVE

    def record(self, event: Any) -> dict[str, Any]:
        """Store one event (called from the worker thread); returns its dict form."""
        d = _event_dict(event)
        kind = d.get("kind")
        with self.lock:
            if kind == "Progress":  # many per epoch: keep the latest, and a point on the curve
                self._add_curve_point(d)
                self.progress = d
                return d
            if kind == "Preparing":
                self.preparing = d
                return d
            self.events.append(d)
            if kind == "RunStarted":
                self.run_id = d["run_id"]
                self.run_info = d
                self.training_started = time.monotonic()
                self._load_history(d["run_dir"])
            elif kind == "EpochEnd":
                # a resumed run redoes an epoch whose row was written but not its last.pt
                self.epochs = [r for r in self.epochs if r["epoch"] < d["epoch"]]
                self.epochs.append(d)
                self.curve_version += 1
        return d

    def _load_history(self, run_dir: str) -> None:
        """A resumed run: its earlier epochs and time, so progress reads 'epoch 5/15' with the
        whole curve (lock held by the caller; a fresh run has no metrics yet)."""
        run = runs.Run(run_id=self.run_id or "", run_dir=Path(run_dir))
        rows = runs.read_metrics(run)
        if not rows:
            return
        self.epochs = [{"kind": "EpochEnd", **r} for r in rows]
        # the earlier epochs' running curve: where each ended, its mean (what it would have read)
        self.curve = [(float(r["epoch"]), r["train_loss"]) for r in rows
                      if isinstance(r.get("train_loss"), (int, float))]  # fmt: skip
        self.prior_epochs = len(rows)
        self.prior_seconds = runs.seconds_so_far(run)
        self.curve_version += 1

    def _add_curve_point(self, p: dict[str, Any]) -> None:
        """The epoch's mean loss over its batches so far, at its fractional epoch: the same
        quantity as the epoch mean, which the curve reaches at the epoch's end."""
        batch, mean = p["batch"], p["loss"]
        if not math.isfinite(mean):
            return
        x = p["epoch"] - 1 + batch / max(p["n_batches"], 1)
        self.curve.append((round(x, 4), mean))
        if len(self.curve) > MAX_CURVE:
            self.curve = self.curve[::2]  # bounded, still spread over the whole run
        self.curve_version += 1

    def snapshot(self) -> JobSnapshot:
        """An immutable copy for readers in other threads."""
        with self.lock:
            return JobSnapshot(
                job_id=self.job_id,
                kind=self.kind,
                status=self.status,
                name=self.name,
                run_id=self.run_id,
                run_info=dict(self.run_info) if self.run_info else None,
                epochs=tuple(dict(r) for r in self.epochs),
                progress=dict(self.progress) if self.progress else None,
                preparing=dict(self.preparing) if self.preparing else None,
                events=tuple(dict(e) for e in self.events),
                result=dict(self.result) if isinstance(self.result, dict) else self.result,
                error=self.error,
                started_at=self.started_at,
                finished_at=self.finished_at,
                eta_s=self._eta(),
                curve=tuple(self.curve),
                curve_version=self.curve_version,
                prior_epochs=self.prior_epochs,
                prior_seconds=self.prior_seconds,
                queue_position=self.queue_position if self.status == "queued" else None,
                owner=self.owner,
                stopped_by=self.stopped_by,
            )

    def _eta(self) -> float | None:
        """Seconds left: time so far over the fraction of batches done (lock held by caller)."""
        if self.status != "running" or self.training_started is None or not self.run_info:
            return None
        planned = (self.run_info.get("epochs") or 0) - self.prior_epochs
        done = len(self.epochs) - self.prior_epochs  # epochs done by this job
        p = self.progress
        if p and p["epoch"] == len(self.epochs) + 1 and p["n_batches"]:
            done += p["batch"] / p["n_batches"]
        if planned <= 0 or done <= 0:
            return None
        elapsed = time.monotonic() - self.training_started
        return max(0.0, elapsed * (planned - done) / done)
