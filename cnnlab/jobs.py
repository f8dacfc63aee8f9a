"""Background jobs: run `train.fit` (or any callable, e.g. a tuning study) in a daemon thread.

`JobManager` is the process-wide registry (the UI holds it with `st.cache_resource`), so a page
reload or a second browser tab finds a running job again by its job id or by its run id. Each job's
state is a `job_state.Job` (readers take its `JobSnapshot`); only the newest `max_finished`
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
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import job_process, job_queue, ownership, runs, train
from .config import RunConfig
from .data import PreparedData
from .errors import CnnlabError
from .job_slots import SlotQueue
from .job_state import STATUSES, Job, JobSnapshot

log = logging.getLogger(__name__)

MAX_FINISHED = 20  # finished jobs kept for the UI; older ones are released
ADOPT_EVERY_S = 1.0  # how often a serving manager looks for jobs queued by others (CLI, restart)
# the queue's states as a snapshot's status (done -> completed, cancelled -> stopped)
ROW_STATUS = {"done": "completed", "cancelled": "stopped"}

Emit = Callable[[Any], None]
JobFn = Callable[[threading.Event, Emit], Any]


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


def _row_job(row: dict[str, Any]) -> Job:
    """A queue row as a durable Job of the current workspace, not yet started or followed."""
    return Job(job_id=row["id"], kind=row["kind"], name=row["name"], slots=row["nproc"],
               durable=True, owner=row["owner"], created_at=row["created_at"],
               home=job_queue.home())  # fmt: skip


class JobManager:
    """Process-wide, thread-safe registry of jobs keyed by job id (and by run id once known)."""

    def __init__(self, max_finished: int = MAX_FINISHED, max_running: int | None = None):
        self.max_finished = max_finished
        self.max_running = max_running or default_slots()
        self._jobs: dict[str, Job] = {}
        self._by_run: dict[str, str] = {}  # run id -> job id
        self._lock = threading.Lock()
        self._slots = SlotQueue(self.max_running)
        self._procs: dict[str, Any] = {}  # job id -> the Popen of a job process this one started
        self._serving: threading.Thread | None = None
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
        return self._enqueue(_row_job(row), None)

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
        self._slots.add(job)
        thread.start()
        return job

    @staticmethod
    def _in_home(job: Job, target: Callable[..., None], *args: Any) -> None:
        """Run target in the job's workspace (a durable job's queue stays where it was)."""
        with job_queue.using(job.home):
            target(*args)

    def _work(self, job: Job, fn: JobFn | None) -> None:
        if not self._slots.acquire(job):
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
                self._slots.release(job)
            return
        # a durable job: this manager runs it only if it wins the row, else it follows it
        with job.lock:  # it has its slot: running from now (the process takes a moment)
            job.status, job.started_at, job.queue_position = "running", time.time(), None
        claimed = job_queue.claim(job.job_id, job_process.worker_name())
        if not claimed:
            self._slots.release(job)
            self._run(job, lambda stop, emit: job_process.follow(job.job_id, stop, emit))
            return
        try:
            self._run(job, lambda stop, emit: self._run_process(job.job_id, stop, emit))
        finally:
            self._slots.release(job)

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
        self._slots.wake()  # a queued job leaves the queue at once
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
        job = _row_job(row)
        if row["state"] == "queued" and self._serving is not None:
            return self._enqueue(job, None)
        if row["state"] in job_queue.ACTIVE_STATES:
            return self._follow_row(job, row)
        return self._read_back_row(job, row)

    def _follow_row(self, job: Job, row: dict[str, Any]) -> Job:
        """An active row run elsewhere: a thread follows its events file to its end."""
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

    def _read_back_row(self, job: Job, row: dict[str, Any]) -> Job:
        """A finished row: its recorded events and its end state, kept like a finished job."""
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
