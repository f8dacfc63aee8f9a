"""Background jobs: run `train.fit` (or any callable, e.g. a tuning study) in a daemon thread.

The worker thread only mutates its own `Job` under the job's lock; readers (the dashboard polling
every second, the CLI, tests) take an immutable `JobSnapshot`. `JobManager` is the process-wide
registry (the UI holds it with `st.cache_resource`), so a page reload or a second browser tab finds a
running job again by its job id or by its run id. Memory stays bounded: a job keeps only its last
Progress/Preparing event and at most `max_events` other events, and only the newest `max_finished`
finished jobs are kept (running ones are never dropped).

A shared server queues: at most `max_running` slots are busy at once (default one per visible GPU,
one on a CPU-only machine; `CNNLAB_MAX_JOBS` overrides), each job taking `slots` of them (a run on
all N GPUs takes N). Others wait first-in first-out as "queued" with a 1-based `queue_position`;
stopping a queued job cancels it before it ever starts.

Training jobs (`start`, `start_distributed`, `resume`) are durable: each is a row in the workspace's
queue (cnnlab.job_queue) and runs in its own process (cnnlab.job_process), which this manager
follows through the job's events file, so an out-of-memory job or a crash ends only that job and a
restarted server finds its jobs again (queued ones run, dead ones read "interrupted"). Other
callables (a tuning study) still run in a thread of this process.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import job_process, job_queue, ownership, runs, train, users
from .config import RunConfig
from .data import PreparedData
from .errors import CnnlabError

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "completed", "stopped", "failed", "interrupted")
ACTIVE = ("queued", "running")
MAX_EVENTS = 1000  # non-progress events kept per job (epoch ends, run started, finished...)
MAX_FINISHED = 20  # finished jobs kept for the UI; older ones are released
ADOPT_EVERY_S = 1.0  # how often a serving manager looks for jobs queued by others (CLI, restart)
# the queue's states as a snapshot's status (done -> completed, cancelled -> stopped)
ROW_STATUS = {"done": "completed", "cancelled": "stopped"}
MAX_CURVE = 600  # within-epoch loss points kept per job; beyond it every other one is dropped

Emit = Callable[[Any], None]
JobFn = Callable[[threading.Event, Emit], Any]


def _event_dict(event: Any) -> dict[str, Any]:
    """Events are train.Event dataclasses (with to_dict) or plain dicts from other job kinds."""
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


def default_slots() -> int:
    """Jobs run at once: CNNLAB_MAX_JOBS, else one per visible CUDA GPU, else one."""
    env = os.environ.get("CNNLAB_MAX_JOBS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("CNNLAB_MAX_JOBS=%r is not a number: using the default", env)
    import torch

    return max(1, torch.cuda.device_count() if torch.cuda.is_available() else 1)


class JobManager:
    """Process-wide, thread-safe registry of jobs keyed by job id (and by run id once known)."""

    def __init__(self, max_finished: int = MAX_FINISHED, max_running: int | None = None):
        self.max_finished = max_finished
        self.max_running = max_running or default_slots()
        self._jobs: dict[str, Job] = {}
        self._by_run: dict[str, str] = {}  # run id -> job id
        self._lock = threading.Lock()
        self._slots = threading.Condition()  # guards _queue and _busy
        self._queue: list[Job] = []  # queued jobs, first in first out
        self._busy = 0  # slots held by running jobs
        self._procs: dict[str, Any] = {}  # job id -> the Popen of a job process this one started
        self._serving: threading.Thread | None = None
        self._running_by: dict[str, int] = {}  # owner -> running jobs (per-user quota)
        atexit.register(self._kill_children)

    # ------------------------------------------------------------------ starting
    def start(
        self,
        config: RunConfig,
        data: PreparedData | None = None,
        name: str = "",
        owner: str = job_queue.DEFAULT_OWNER,
        force: bool = False,
    ) -> Job:
        """Validate config and queue it as a training job in its own process; returns the Job.
        With `data` (already prepared in this process) it trains in a thread here instead."""
        config.validate()  # fail in the caller's thread on a bad form, before anything starts
        if data is not None:

            def run_fit(stop_event: threading.Event, emit: Emit) -> dict[str, Any]:
                return train.fit(config, data=data, callbacks=(emit,), stop_event=stop_event)

            return self.start_callable(run_fit, kind="train", name=name or config.name, owner=owner)
        row = job_queue.submit(config, owner=owner, name=name, force=force)
        return self._enqueue_row(row)

    def start_distributed(
        self, config: RunConfig, nproc: int, name: str = "", owner: str = job_queue.DEFAULT_OWNER
    ) -> Job:
        """Train on nproc GPUs (or CPU processes): the job process runs `cnnlab train
        --nproc-per-node` and follows its run folder; stop() is a collective stop. Takes nproc
        slots."""
        config.validate()
        row = job_queue.submit(config, owner=owner, nproc=nproc, name=name)
        return self._enqueue_row(row)

    def resume(self, run_id: str, owner: str = job_queue.DEFAULT_OWNER) -> Job:
        """Queue a job that continues run_id (interrupted, stopped or failed) from its last epoch."""
        run = runs.load_run(run_id)
        row = job_queue.submit(runs.read_config(run), owner=owner, resume_run=run.run_id)
        return self._enqueue_row(row)

    def _enqueue_row(self, row: dict[str, Any]) -> Job:
        """A queued row as a Job waiting for this manager's slots."""
        job = Job(job_id=row["id"], kind=row["kind"], name=row["name"], slots=row["nproc"],
                  durable=True, owner=row["owner"], created_at=row["created_at"],
                  home=job_queue.home())  # fmt: skip
        return self._enqueue(job, None)

    def start_callable(
        self, fn: JobFn, kind: str = "task", name: str = "", slots: int = 1, owner: str = ""
    ) -> Job:
        """Run fn(stop_event, emit) in a daemon thread once a slot is free (queued until then);
        emit takes train events or plain dicts. The runs it makes belong to owner."""
        job = Job(
            job_id=uuid.uuid4().hex[:12],
            kind=kind,
            name=name,
            slots=max(1, slots),
            owner=owner or ownership.SINGLE_USER,
        )
        return self._enqueue(job, fn)

    def _enqueue(self, job: Job, fn: JobFn | None) -> Job:
        thread = threading.Thread(
            target=self._in_home, args=(job, self._work, job, fn),
            name=f"cnnlab-{job.kind}-{job.job_id}", daemon=True,
        )  # fmt: skip
        job.thread = thread
        with self._lock:
            self._jobs[job.job_id] = job
            self._release_finished()
        with self._slots:
            self._queue.append(job)
            self._renumber()
        thread.start()
        return job

    def _renumber(self) -> None:
        """Queue positions after the queue changed (self._slots held by the caller)."""
        for i, queued in enumerate(self._queue, start=1):
            with queued.lock:
                queued.queue_position = i

    def _acquire(self, job: Job) -> bool:
        """Wait for the job's turn and slots; False when it was cancelled while queued."""
        with self._slots:
            while not job.stop_event.is_set():
                head = self._next() is job
                # A job wider than the whole machine still runs, alone.
                fits = self._busy + job.slots <= self.max_running or self._busy == 0
                if head and fits:
                    break
                self._slots.wait(timeout=1.0)
            self._queue.remove(job)
            self._renumber()
            self._slots.notify_all()
            if job.stop_event.is_set():
                return False
            self._busy += job.slots
            self._running_by[job.owner] = self._running_by.get(job.owner, 0) + 1
            return True

    def _next(self) -> Job | None:
        """The first queued job whose owner may run one more (self._slots held by the caller):
        a user at their running quota (users.running_limit) waits without holding others up."""
        for queued in self._queue:
            limit = users.running_limit(queued.owner)
            if not limit or self._running_by.get(queued.owner, 0) < limit:
                return queued
        return None

    def _release(self, job: Job) -> None:
        with self._slots:
            self._busy -= job.slots
            self._running_by[job.owner] -= 1
            self._slots.notify_all()

    @staticmethod
    def _in_home(job: Job, target: Callable[..., None], *args: Any) -> None:
        """Run target in the job's workspace (a durable job's queue stays where it was)."""
        with job_queue.using(job.home):
            target(*args)

    def _work(self, job: Job, fn: JobFn | None) -> None:
        if not self._acquire(job):
            if job.durable:
                job_queue.request_stop(job.job_id)
            with job.lock:  # cancelled in the queue: fn never ran
                job.status, job.finished_at = "stopped", time.time()
                job.queue_position = None
            with self._lock:
                self._release_finished()
            return
        if fn is not None:
            try:
                self._run(job, fn)
            finally:
                self._release(job)
            return
        # a durable job: this manager runs it only if it wins the row, else it follows it
        with job.lock:  # it has its slot: running from now (the process takes a moment)
            job.status, job.started_at, job.queue_position = "running", time.time(), None
        claimed = job_queue.claim(job.job_id, job_process.worker_name())
        if not claimed:
            self._release(job)
            self._run(job, lambda stop, emit: job_process.follow(job.job_id, stop, emit))
            return
        try:
            self._run(job, lambda stop, emit: self._run_process(job.job_id, stop, emit))
        finally:
            self._release(job)

    def _run_process(self, job_id: str, stop: threading.Event, emit: Emit) -> dict[str, Any]:
        """Start the job's process here (or on the Dask cluster) and follow it to its end."""
        from . import cluster

        if cluster.scheduler_address():
            future = cluster.submit(job_id)
            try:
                return job_process.follow(job_id, stop, emit)
            finally:
                future.release()
        proc = job_process.spawn(job_id)
        with self._lock:
            self._procs[job_id] = proc
        try:
            return job_process.follow(job_id, stop, emit, proc=proc)
        finally:
            with self._lock:
                self._procs.pop(job_id, None)
            job_process.kill_group(proc.pid)  # whatever the job left behind in its group

    def _kill_children(self) -> None:
        """At exit (the server stops): end our job processes and mark their jobs interrupted."""
        with self._lock:
            procs = dict(self._procs)
        for job_id, proc in procs.items():
            job_process.kill_group(proc.pid)
            try:
                job_queue.finish(job_id, "interrupted", error="the server stopped while it ran; "
                                 "resume the run to continue")  # fmt: skip
            except (CnnlabError, OSError) as exc:
                log.warning("could not mark job %s interrupted: %s", job_id, exc)

    def _run(self, job: Job, fn: JobFn) -> None:
        with job.lock:
            job.status = "running"
            job.started_at = job.started_at or time.time()
            job.queue_position = None

        def emit(event: Any) -> None:
            d = job.record(event)
            if d.get("kind") == "RunStarted":
                with self._lock:
                    self._by_run[d["run_id"]] = job.job_id

        status, result, error = "completed", None, None
        try:
            with ownership.acting_as(job.owner):  # the runs it makes are the job owner's
                result = fn(job.stop_event, emit)
        except job_process.JobInterrupted as exc:
            status, error = "interrupted", str(exc)
        except CnnlabError as exc:
            status, error = "failed", str(exc)
            log.warning("job %s (%s) failed: %s", job.job_id, job.kind, exc)
        except Exception as exc:  # a bug: keep the job's message and the traceback in the log
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("job %s (%s) crashed", job.job_id, job.kind)
        else:
            if isinstance(result, dict) and result.get("status") in STATUSES:
                status = result["status"]  # fit reports 'stopped' when asked to stop
            elif job.stop_event.is_set():
                status = "stopped"
        with job.lock:
            job.status, job.result, job.error = status, result, error
            job.finished_at = time.time()
        with self._lock:
            self._release_finished()

    # ------------------------------------------------------------------ reading
    def get(self, job_or_run_id: str, stored: bool = True) -> Job | None:
        """The job with this job id or run id, else (stored) the queue's job read back, else
        None."""
        with self._lock:
            job_id = self._by_run.get(job_or_run_id, job_or_run_id)
            job = self._jobs.get(job_id)
        if job is not None or not job_or_run_id or not stored:
            return job
        try:  # not in memory: a job of the queue (another process's, or before a restart)
            row = job_queue.find(job_or_run_id)
        except (CnnlabError, OSError) as exc:
            log.warning("cannot read the job queue: %s", exc)
            return None
        return self._adopt(row) if row is not None else None

    def snapshot(self, job_or_run_id: str) -> JobSnapshot | None:
        """Immutable copy of the job's state, or None when unknown."""
        job = self.get(job_or_run_id)
        return job.snapshot() if job else None

    def list(
        self, kind: str | None = None, active_only: bool = False, owner: str | None = None
    ) -> list[JobSnapshot]:
        """Snapshots of the kept jobs, newest first (optionally one kind / running ones only /
        one owner's)."""
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
        snaps = [
            j.snapshot()
            for j in jobs
            if (kind is None or j.kind == kind) and (owner is None or j.owner == owner)
        ]
        return [s for s in snaps if s.active] if active_only else snaps

    # ------------------------------------------------------------------ control
    def stop(self, job_or_run_id: str, by: str = "") -> bool:
        """Ask the job to stop (fit checks before every batch) or cancel it while it is queued,
        noting who asked (`by`); False when unknown or finished."""
        job = self.get(job_or_run_id)
        if job is None or not job.active:
            return False
        with job.lock:
            job.stopped_by = by or job.owner
        job.stop_event.set()
        if job.durable and job.status == "queued":
            with job_queue.using(job.home):  # the row too, before another scheduler takes it
                job_queue.request_stop(job.job_id)
        with self._slots:
            self._slots.notify_all()  # a queued job leaves the queue at once
        return True

    def wait(self, job_or_run_id: str, timeout: float | None = None) -> JobSnapshot | None:
        """Block until the job ends or timeout seconds pass; returns its snapshot (None if unknown)."""
        job = self.get(job_or_run_id)
        if job is None:
            return None
        if job.thread is not None:
            job.thread.join(timeout)
        return job.snapshot()

    # ------------------------------------------------------------------ the durable queue
    def _adopt(self, row: dict[str, Any]) -> Job:
        """A queue row this manager did not start, as a Job: a queued one waits for a slot here
        (when serving) or is watched; a running one is followed; a finished one is read back."""
        with self._lock:
            known = self._jobs.get(row["id"])
        if known is not None:
            return known
        job = Job(job_id=row["id"], kind=row["kind"], name=row["name"], slots=row["nproc"],
                  durable=True, owner=row["owner"], created_at=row["created_at"],
                  home=job_queue.home())  # fmt: skip
        if row["state"] == "queued" and self._serving is not None:
            return self._enqueue(job, None)
        if row["state"] in job_queue.ACTIVE_STATES:
            with job.lock:
                job.status, job.started_at = row["state"], row["started_at"]
            follow = lambda stop, emit: job_process.follow(job.job_id, stop, emit)  # noqa: E731
            job.thread = threading.Thread(
                target=self._in_home,
                args=(job, self._run, job, follow),
                name=f"cnnlab-follow-{job.job_id}",
                daemon=True,
            )
            with self._lock:
                self._jobs[job.job_id] = job
            job.thread.start()
            return job
        for event in job_process.EventReader(job_queue.events_path(job.job_id)).read():
            job.record(event)
        with job.lock:
            job.status = ROW_STATUS.get(row["state"], row["state"])
            job.result = row.get("result")
            job.error = row.get("error")
            job.run_id = job.run_id or row.get("run_id")
            job.started_at, job.finished_at = row["started_at"], row["finished_at"]
        with self._lock:
            self._jobs[job.job_id] = job
            if job.run_id:
                self._by_run.setdefault(job.run_id, job.job_id)
            self._release_finished()
        return job

    def serve(self) -> None:
        """Run the workspace's queue from this process (the server, `cnnlab worker`): mark dead
        jobs interrupted, then pick up queued ones in order, now and whenever others add some."""
        with self._lock:
            if self._serving is not None:
                return
            self._serving = threading.Thread(target=self._serve_loop, name="cnnlab-queue",
                                             daemon=True)  # fmt: skip
        self.adopt_queue()
        self._serving.start()

    def adopt_queue(self) -> None:
        """One pass over the queue: interrupted jobs marked, unknown active jobs taken in."""
        job_queue.recover()
        for row in job_queue.list_jobs(states=job_queue.ACTIVE_STATES, limit=10_000):
            with self._lock:
                known = row["id"] in self._jobs
            if not known:
                self._adopt(row)

    def _serve_loop(self) -> None:
        while True:
            time.sleep(ADOPT_EVERY_S)
            try:
                self.adopt_queue()
            except (CnnlabError, OSError) as exc:
                log.warning("job queue: %s", exc)

    def _release_finished(self) -> None:
        """Drop the oldest finished jobs beyond max_finished (self._lock held by the caller)."""
        done = [j for j in self._jobs.values() if not j.active]
        excess = len(done) - self.max_finished
        if excess <= 0:
            return
        done.sort(key=lambda j: j.finished_at or j.created_at)
        for job in done[:excess]:
            del self._jobs[job.job_id]
            if job.run_id is not None:
                self._by_run.pop(job.run_id, None)


_manager: JobManager | None = None
_manager_lock = threading.Lock()


def get_manager() -> JobManager:
    """The process-wide JobManager (created on first use)."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = JobManager()
        return _manager
