"""Jobs on a Dask distributed cluster (optional: `pip install 'cnnlab[cluster]'`).

With CNNLAB_SCHEDULER=tcp://host:8786 the server hands each claimed job to the cluster instead of
starting its process here: a Dask worker runs `run_job` (the same job process as the local
scheduler, `python -m cnnlab jobs run ID`) against the shared workspace (CNNLAB_HOME on a file
system every machine mounts), and the server follows the job's row and events file as usual. Stop
works the same way: the job process polls the queue's stop flag. GPU jobs ask the cluster for the
"GPU" worker resource (`dask worker ... --resources "GPU=1"`), one per process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from .errors import CnnlabError

log = logging.getLogger(__name__)

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def scheduler_address() -> str:
    """The Dask scheduler to submit jobs to (CNNLAB_SCHEDULER), '' for local processes."""
    return os.environ.get("CNNLAB_SCHEDULER", "").strip()


def client(address: str | None = None):
    """A Dask client for the scheduler (one per address and process)."""
    address = address or scheduler_address()
    try:
        from dask.distributed import Client
    except ImportError:
        raise CnnlabError(
            "CNNLAB_SCHEDULER is set but Dask is not installed: pip install 'cnnlab[cluster]'"
        ) from None
    with _lock:
        if address not in _clients:
            try:
                _clients[address] = Client(address, timeout=10, set_as_default=False)
            except OSError as exc:
                raise CnnlabError(
                    f"cannot reach the Dask scheduler at {address} ({exc}): start it with "
                    "`dask scheduler`, or unset CNNLAB_SCHEDULER to train on this machine"
                ) from None
        return _clients[address]


def close() -> None:
    """Close this process's clients (tests, a server shutting down)."""
    with _lock:
        for c in _clients.values():
            c.close()
        _clients.clear()


def run_job(job_id: str, home: str) -> int:
    """On a Dask worker: run the job's process against the shared workspace; its exit code."""
    from . import job_process, job_queue

    os.environ.setdefault("CNNLAB_HOME", home)
    job_queue.update(job_id, worker=f"dask:{socket.gethostname()}:{os.getpid()}")
    proc = job_process.spawn(job_id)
    code = proc.wait()
    job_process.kill_group(proc.pid)
    row = job_queue.get(job_id)
    if row["state"] == "running":  # died without ending its row (killed, out of memory)
        job_queue.finish(job_id, "failed", error=job_process.death_message(code))
    return code


def submit(job_id: str):
    """Send a claimed job to the cluster; returns its Dask future."""
    from . import job_queue, workspace

    row = job_queue.get(job_id)
    resources = None
    if row["config"].get("train", {}).get("device") in ("cuda", "auto") and _wants_gpu():
        resources = {"GPU": row["nproc"]}
    return client().submit(
        run_job,
        job_id,
        str(workspace.home()),
        key=f"cnnlab-job-{job_id}",
        resources=resources,
        pure=False,
    )


def _wants_gpu() -> bool:
    """GPU jobs ask for the GPU resource only when CNNLAB_CLUSTER_GPU=1 (workers declare it)."""
    return os.environ.get("CNNLAB_CLUSTER_GPU", "") == "1"
