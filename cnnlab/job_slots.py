"""The manager's slots: at most `max_running` busy at once, jobs waiting first-in first-out.

Each job takes `slots` of them (a run on all N GPUs takes N); a job wider than the whole machine
still runs, alone. A user at their running quota (users.running_limit) waits without holding others
up. Queued jobs carry a 1-based `queue_position`; a stopped queued job leaves at once.
"""

from __future__ import annotations

import threading

from . import users
from .job_state import Job


class SlotQueue:
    """A FIFO of jobs waiting for slots, and the slots held by running ones (thread-safe)."""

    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self._cond = threading.Condition()  # guards _queue, _busy and _running_by
        self._queue: list[Job] = []  # queued jobs, first in first out
        self._busy = 0  # slots held by running jobs
        self._running_by: dict[str, int] = {}  # owner -> running jobs (per-user quota)

    def add(self, job: Job) -> None:
        """Put job at the end of the queue."""
        with self._cond:
            self._queue.append(job)
            self._renumber()

    def acquire(self, job: Job) -> bool:
        """Wait for the job's turn and slots; False when it was cancelled while queued."""
        with self._cond:
            while not job.stop_event.is_set():
                head = self._next() is job
                # A job wider than the whole machine still runs, alone.
                fits = self._busy + job.slots <= self.max_running or self._busy == 0
                if head and fits:
                    break
                self._cond.wait(timeout=1.0)
            self._queue.remove(job)
            self._renumber()
            self._cond.notify_all()
            if job.stop_event.is_set():
                return False
            self._busy += job.slots
            self._running_by[job.owner] = self._running_by.get(job.owner, 0) + 1
            return True

    def release(self, job: Job) -> None:
        """Give back the slots of a job that acquired them."""
        with self._cond:
            self._busy -= job.slots
            self._running_by[job.owner] -= 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiting jobs look again (a queued job was stopped: it leaves the queue at once)."""
        with self._cond:
            self._cond.notify_all()

    def _renumber(self) -> None:
        """Queue positions after the queue changed (self._cond held by the caller)."""
        for i, queued in enumerate(self._queue, start=1):
            with queued.lock:
                queued.queue_position = i

    def _next(self) -> Job | None:
        """The first queued job whose owner may run one more (self._cond held by the caller)."""
        for queued in self._queue:
            limit = users.running_limit(queued.owner)
            if not limit or self._running_by.get(queued.owner, 0) < limit:
                return queued
        return None
