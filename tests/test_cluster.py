"""Jobs on a real Dask cluster on 127.0.0.1 (`dask scheduler` and `dask worker` processes): a
queued job runs end to end on the worker against the shared workspace, and Stop reaches it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import cluster, job_queue, jobs, runs
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
DASK = [sys.executable, "-m", "distributed.cli"]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo += children.get(p, [])
    return found


@pytest.fixture
def dask_cluster(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A scheduler and one worker (own processes) on free 127.0.0.1 ports; yields the worker's
    Popen with CNNLAB_SCHEDULER pointing at the scheduler."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "CNNLAB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    logs = tmp_path / "dask"
    logs.mkdir()
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", ":0"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(logs / "scheduler.log").open("wb"),
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
         "--nthreads", "1", "--host", "127.0.0.1", "--dashboard-address", ":0",
         "--local-directory", str(tmp_path / "dask-worker")],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(logs / "worker.log").open("wb"),
    )  # fmt: skip
    monkeypatch.setenv("CNNLAB_SCHEDULER", address)
    try:
        client = cluster.client(address)
        client.wait_for_workers(1, timeout=120)
        yield worker
    finally:
        cluster.close()
        for proc in (worker, scheduler):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_queued_job_runs_on_the_dask_worker_and_stops(
    dask_cluster: subprocess.Popen, workspace: Path, digits_dir: Path, tiny_config
) -> None:
    manager = jobs.JobManager(max_running=1)
    job = manager.start(tiny_config(digits_dir, epochs=2))
    snap = manager.wait(job.job_id, timeout=300)
    assert snap.status == "completed", snap.error
    assert [r["epoch"] for r in snap.epochs] == [1, 2] and snap.curve  # events came through
    row = job_queue.get(job.job_id)
    assert row["state"] == "done" and row["worker"].startswith("dask:")
    worker_pid = int(row["worker"].rsplit(":", 1)[1])
    assert worker_pid in _descendants(dask_cluster.pid)  # it ran in the worker's process tree
    assert runs.read_summary(runs.load_run(snap.run_id))["status"] == "completed"

    long = manager.start(tiny_config(digits_dir, epochs=200, batch_size=8))
    end = time.monotonic() + 300
    while not long.snapshot().epochs:
        assert time.monotonic() < end and long.snapshot().active, long.snapshot().error
        time.sleep(0.3)
    assert manager.stop(long.job_id)
    snap = manager.wait(long.job_id, timeout=300)
    assert snap.status == "stopped", snap.error
    assert snap.summary["epochs_run"] < 200
    assert runs.read_summary(runs.load_run(snap.run_id))["status"] == "stopped"
