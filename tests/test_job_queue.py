"""The durable job queue (cnnlab.job_queue) and job processes (cnnlab.job_process): rows, claims,
stop requests, dead jobs marked interrupted, a memory-limited job that dies alone, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import job_process, job_queue, jobs, memory, runs
from cnnlab.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_rows_claim_once_and_stop_requests(workspace: Path, digits_dir: Path, tiny_config) -> None:
    a = job_queue.submit(tiny_config(digits_dir), name="a")
    b = job_queue.submit(tiny_config(digits_dir), owner="ann")
    assert a["state"] == b["state"] == "queued" and a["owner"] == job_queue.DEFAULT_OWNER
    assert a["config"]["data"]["path"] == str(digits_dir)
    assert [r["id"] for r in job_queue.list_jobs()] == [a["id"], b["id"]]  # queue order
    assert [r["id"] for r in job_queue.list_jobs(owner="ann")] == [b["id"]]
    assert job_queue.queue_position(b["id"]) == 2
    assert job_queue.claim(a["id"], "w1") and not job_queue.claim(a["id"], "w2")  # one winner
    assert job_queue.queue_position(b["id"]) == 1 and job_queue.queue_position(a["id"]) is None
    assert job_queue.request_stop(b["id"])  # queued: cancelled at once
    assert job_queue.get(b["id"])["state"] == "cancelled" and not job_queue.claim(b["id"], "w1")
    assert job_queue.request_stop(a["id"])  # running: a flag its process polls
    row = job_queue.get(a["id"])
    assert row["state"] == "running" and row["stop_requested"]
    assert job_queue.finish(a["id"], "cancelled") and not job_queue.request_stop(a["id"])
    with pytest.raises(job_queue.JobNotFound, match="cnnlab jobs list"):
        job_queue.get("nope")


def test_a_running_row_without_a_live_process_is_interrupted(
    workspace: Path, digits_dir: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_queue, "RECENT_S", 0.0)
    held = job_queue.submit(tiny_config(digits_dir))
    dead = job_queue.submit(tiny_config(digits_dir))
    for row in (held, dead):
        job_queue.claim(row["id"], "w")
    fd = job_queue.hold_lock(held["id"])  # a live process holds its job's lock
    try:
        assert job_queue.recover() == [dead["id"]]
    finally:
        os.close(fd)
    assert job_queue.get(held["id"])["state"] == "running"
    assert job_queue.get(dead["id"])["state"] == "interrupted"
    # the dashboard's manager reads it back (a page holding its id after a restart)
    snap = jobs.JobManager().snapshot(dead["id"])
    assert snap.status == "interrupted" and "resume" in snap.error


@pytest.mark.slow
def test_a_job_over_its_memory_limit_dies_alone(
    workspace: Path, digits_dir: Path, colours_dir: Path, tiny_config, monkeypatch
) -> None:
    """Two jobs at once under a 1.5 GB limit each: the oversized one (forced past the estimate)
    fails with "out of memory", the other completes, and this process (the server) lives on."""
    monkeypatch.setenv("CNNLAB_JOB_MEMORY", "1.5G")
    manager = jobs.JobManager(max_running=2)
    big = tiny_config(colours_dir, epochs=1, batch_size=64)
    big.data.image_size = 512
    big.model = ModelConfig(channels=[64, 128], head_units=0)
    hog = manager.start(big, force=True)
    ok = manager.start(tiny_config(digits_dir, epochs=2))
    hog_snap, ok_snap = manager.wait(hog.job_id, 300), manager.wait(ok.job_id, 300)
    assert hog_snap.status == "failed" and "out of memory" in hog_snap.error, hog_snap.error
    assert "lower the batch size (64) or the image size (512)" in hog_snap.error
    assert ok_snap.status == "completed", ok_snap.error
    assert job_queue.get(hog.job_id)["state"] == "failed"
    assert job_queue.get(ok.job_id)["state"] == "done"


@pytest.mark.slow
def test_cli_submit_list_cancel_and_a_worker_runs_the_queue(
    workspace: Path, digits_dir: Path
) -> None:
    env = {"CNNLAB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    # over the memory limit: refused with the numbers, exit 2, nothing queued
    big = _cli("jobs", "submit", str(digits_dir), "--image-size", "1024", "--json", env=env)
    assert big.returncode == 2 and "memory" in big.stderr and "1024 px" in big.stderr, big.stderr
    flags = ["--image-size", "16", "--epochs", "1", "--device", "cpu", "--json"]
    done = _cli("jobs", "submit", str(digits_dir), *flags, env=env)
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    second = json.loads(_cli("jobs", "submit", str(digits_dir), *flags, env=env).stdout)
    assert _cli("jobs", "cancel", second["id"], env=env).returncode == 0
    listed = json.loads(_cli("jobs", "list", "--json", env=env).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [
        (first["id"], "queued"),
        (second["id"], "cancelled"),
    ]
    assert _cli("jobs", "cancel", "no-such-job", env=env).returncode == 2

    worker = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "worker"],
        env={**os.environ, **env},
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 300
        while job_queue.get(first["id"])["state"] in job_queue.ACTIVE_STATES:
            assert time.monotonic() < end and worker.poll() is None
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(30)
    row = job_queue.get(first["id"])
    assert row["state"] == "done", row["error"]
    assert runs.read_summary(runs.load_run(row["run_id"]))["status"] == "completed"
    assert row["result"]["run_id"] == row["run_id"]


def test_sizes_and_thread_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    assert memory.parse_size("1.5G") == int(1.5 * 2**30)
    assert memory.parse_size("512M") == 512 * 2**20
    monkeypatch.setenv("CNNLAB_JOB_MEMORY", "2G")
    assert memory.available_memory() == 2 * 2**30
    monkeypatch.setenv("CNNLAB_JOB_THREADS", "3")
    env = job_process.child_env({})
    assert env["CNNLAB_THREADS"] == env["OMP_NUM_THREADS"] == "3"
    assert env["CNNLAB_JOB_PARENT"] == str(os.getpid())
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
