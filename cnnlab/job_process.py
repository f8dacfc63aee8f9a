"""One queued job in its own process: how it is started, what it does, how it is followed.

`spawn(job_id)` starts `python -m cnnlab jobs run ID` in a new session (its own process group),
at lower priority and with fewer threads than the cores (so the web process stays responsive),
holding the job's lock for the queue. The child (`run(job_id)`) dies with its parent
(PR_SET_PDEATHSIG on Linux, and a watchdog on the parent pid everywhere), caps its own address
space (RLIMIT_AS, so an allocation past the limit fails as "out of memory" in the job, never
takes the machine), stops on SIGTERM or on the queue's stop flag with the usual "stopped"
semantics, and writes every event to the job's events.jsonl. `follow()` turns that file back
into events for a JobManager in any process, and the row's end into the job's result.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import job_queue, memory, ownership
from .errors import CnnlabError

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often a follower reads the events file and the row
STOP_POLL_S = 0.5  # how often a job process checks the queue's stop flag
EXIT_GRACE_S = 60.0  # a job process that ended its row has this long to exit (e.g. flush logs)
JOB_NICE = 10  # niceness added to job processes: the server's pages come first
_PR_SET_PDEATHSIG = 1


class JobInterrupted(CnnlabError):
    """The job's process ended without finishing its row (server stopped, killed)."""


# ---------------------------------------------------------------- machine budget
def cores() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def job_threads() -> int:
    """Intra-op threads for a job: CNNLAB_JOB_THREADS, else all cores on a 1-2 core machine
    (a lone job would lose half its speed with one thread; niceness keeps pages first), else
    one core left to the web process."""
    env = os.environ.get("CNNLAB_JOB_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    n = cores()
    return n if n <= 2 else n - 1


# ---------------------------------------------------------------- the parent side
def worker_name() -> str:
    """Who runs a job: host:pid of the scheduler (server or `cnnlab worker`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def command(job_id: str) -> list[str]:
    """The job process's command line."""
    return [sys.executable, "-m", "cnnlab", "jobs", "run", job_id]


def child_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: this one, with the thread count and the parent to die with."""
    env = dict(os.environ if environ is None else environ)
    threads = str(job_threads())
    env.update(
        CNNLAB_HOME=str(job_queue.home()),
        CNNLAB_JOB_PARENT=str(os.getpid()),
        CNNLAB_THREADS=threads,
        OMP_NUM_THREADS=threads,
        # spinning OpenMP threads would take the cores the web process needs between batches
        OMP_WAIT_POLICY=env.get("OMP_WAIT_POLICY", "PASSIVE"),
    )
    return env


def spawn(job_id: str) -> subprocess.Popen:
    """Start the job's process (its own session and group) holding the job's lock."""
    fd = job_queue.hold_lock(job_id)
    folder = job_queue.job_dir(job_id)
    try:
        with (folder / "stdout.log").open("ab") as out, (folder / "stderr.log").open("ab") as err:
            proc = subprocess.Popen(
                command(job_id),
                env=child_env(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: Stop and cleanup reach all of it
                pass_fds=(fd,),  # the lock lives as long as the job's processes
            )
    finally:
        os.close(fd)
    job_queue.update(job_id, pid=proc.pid)
    return proc


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a job's whole process group (it leads its own session); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class EventReader:
    """New complete lines of a job's events.jsonl, as dicts, from where it was last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        """Events appended since the last call (a line still being written waits)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in chunk[:end].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping an unreadable event line in %s", self.path)
        return out


def follow(
    job_id: str,
    stop_event: threading.Event,
    emit: Callable[[Any], None],
    proc: subprocess.Popen | None = None,
) -> dict[str, Any]:
    """Emit the job's events until its row ends (or, with proc, its process exits); returns the
    run's summary. Stop: the queue's stop flag, plus SIGTERM to proc when it is ours."""
    reader = EventReader(job_queue.events_path(job_id))
    signalled = False
    while True:
        for event in reader.read():
            emit(event)
        if stop_event.is_set() and not signalled:
            job_queue.request_stop(job_id)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # fit stops after the batch; torchrun forwards it
            signalled = True
        if proc is not None and proc.poll() is not None:
            break
        row = job_queue.get(job_id)
        if row["state"] not in job_queue.ACTIVE_STATES:
            break
        stale = time.time() - (row["updated_at"] or 0) > job_queue.RECENT_S
        if proc is None and row["state"] == "running" and stale:
            job_queue.recover()  # its process may be gone (a worker killed): say interrupted
        time.sleep(POLL_S)
    if proc is not None:  # the row ended first: let the process exit, and reap it
        try:
            proc.wait(timeout=EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
    for event in reader.read():
        emit(event)
    row = job_queue.get(job_id)
    if row["state"] == "running" and proc is not None:
        message = death_message(proc.returncode)
        job_queue.finish(job_id, "failed", error=message)
        row = job_queue.get(job_id)
    return outcome(row)


def death_message(code: int | None) -> str:
    """Why a job process ended without writing its result."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory: the system killed it)" if -code == signal.SIGKILL else ""
        return f"the job process was killed by {name}{hint}"
    return f"the job process exited with code {code} without a result (see its stderr.log)"


def outcome(row: dict[str, Any]) -> dict[str, Any]:
    """A finished row as a JobManager result: the summary (status completed/stopped), or the
    error raised."""
    state, result = row["state"], row.get("result") or {}
    if state == "done":
        return {**result, "status": result.get("status", "completed")}
    if state == "cancelled":
        return {**result, "status": "stopped"}
    if state == "interrupted":
        raise JobInterrupted(row.get("error") or "the job's process ended without finishing")
    raise CnnlabError(row.get("error") or f"job {row['id']} {state}")


# ---------------------------------------------------------------- the child side
def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies: the kernel's PDEATHSIG where there is one,
    and a watchdog thread on the parent pid (other systems, and the race before prctl)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(137)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                kill_group(os.getpgrp())
                os._exit(137)

    threading.Thread(target=watch, name="cnnlab-parent-watchdog", daemon=True).start()


def guard_from_env(variable: str = "CNNLAB_JOB_PARENT") -> None:
    """Die with the parent named in the environment (set by spawn / distributed.launch)."""
    parent = os.environ.get(variable, "")
    if parent.isdigit():
        _die_with_parent(int(parent))


def vm_size() -> int:
    """This process's address space in bytes (0 where /proc is not there)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmSize:")[1].split()[0]) * 1024
    return 0


def limit_memory(budget: int) -> int | None:
    """Cap the address space at what the process maps now (torch loaded) plus budget; the
    limit in bytes, or None where it cannot be set."""
    try:
        import resource
    except ImportError:  # not on this system: the estimate before Start is all there is
        return None
    base = vm_size()
    if not base:
        return None
    limit = base + budget
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        return limit
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError, torch's OOM or its CPU allocator."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


class _EventWriter:
    """The job's events to its events.jsonl, one flushed line each; the run id to the row."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.file = job_queue.events_path(job_id).open("a", encoding="utf-8")

    def __call__(self, event: Any) -> None:
        d = event.to_dict() if hasattr(event, "to_dict") else dict(event)
        self.file.write(json.dumps(d, default=str) + "\n")
        self.file.flush()
        if d.get("kind") == "RunStarted":
            job_queue.update(self.job_id, run_id=d["run_id"])


def run(job_id: str) -> int:
    """The job process: train the row's config (or resume its run), end the row; exit code."""
    guard_from_env()
    with contextlib.suppress(OSError):
        os.nice(int(os.environ.get("CNNLAB_JOB_NICE", JOB_NICE)))
    row = job_queue.get(job_id)
    # the runs this job makes are its owner's (cnnlab.ownership reads it; child_run passes it on)
    os.environ[ownership.OWNER_ENV] = row["owner"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def poll_stop() -> None:
        while not stop.is_set():
            time.sleep(STOP_POLL_S)
            with contextlib.suppress(CnnlabError, OSError):
                if job_queue.get(job_id)["stop_requested"]:
                    stop.set()

    threading.Thread(target=poll_stop, name="cnnlab-stop-poll", daemon=True).start()
    emit = _EventWriter(job_id)
    try:
        summary = _train(row, stop, emit)
    except CnnlabError as exc:
        job_queue.finish(job_id, "failed", error=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure must end the row, not leave it running
        if is_out_of_memory(exc):
            limit = os.environ.get("CNNLAB_JOB_MEMORY") or "the memory available"
            msg = (
                f"out of memory (this job's limit: {limit}): lower the batch size "
                f"({row['config']['train']['batch_size']}) or the image size "
                f"({row['config']['data']['image_size']})"
            )
            job_queue.finish(job_id, "failed", error=msg)
            return 1
        log.exception("job %s crashed", job_id)
        job_queue.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    state = "cancelled" if summary.get("status") == "stopped" else "done"
    job_queue.finish(job_id, state, result=summary)
    return 0


def _train(row: dict[str, Any], stop: threading.Event, emit: _EventWriter) -> dict[str, Any]:
    from . import child_run, train
    from .config import RunConfig

    config = RunConfig.from_dict(row["config"]).validate()
    if row["nproc"] > 1:  # the launcher's ranks die with it (distributed.launch guards them)
        return child_run.follow(config, row["nproc"], stop, emit)
    if config.train.device in ("cpu", "auto") and not _uses_cuda(config):
        limit_memory(memory.available_memory())
    if row["resume_run"]:
        return train.resume(row["resume_run"], callbacks=(emit,), stop_event=stop)
    return train.fit(config, callbacks=(emit,), stop_event=stop)


def _uses_cuda(config) -> bool:
    """CUDA maps a huge address space at start: RLIMIT_AS would break it, so GPU jobs rely on
    the estimate and on CUDA's own out-of-memory error instead."""
    import torch

    return config.train.device != "cpu" and torch.cuda.is_available()
