"""A real dashboard server (server.py) killed with one running and two queued jobs, then started
again: the queued jobs run to completion, the running one reads "interrupted" and resumes, and no
job process outlives the server or a killed `--nproc-per-node` launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cnnlab import job_queue, jobs, live_feed, runs
from tests.servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _start_server(home: Path, logs: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "CNNLAB_HOME": str(home), "CNNLAB_MAX_JOBS": "1", "PYTHONPATH": str(ROOT)}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"server-{port}.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", "server.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_healthy(proc, port, log)
    return proc, port


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    """pid and every process below it (from /proc's parent links)."""
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


def _wait(predicate, what: str, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.3)


def _feed(port: int, job_id: str) -> dict:
    token = live_feed.sign(job_id)  # what the Train page signs its feed URL with
    url = f"http://127.0.0.1:{port}/api/cnnlab/jobs/{job_id}/live?figures=0&t={token}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_server_killed_with_running_and_queued_jobs(
    sig: int, workspace: Path, digits_dir: Path, tiny_config, tmp_path: Path
) -> None:
    long = job_queue.submit(tiny_config(digits_dir, epochs=4, batch_size=8), name="long")
    queued = [job_queue.submit(tiny_config(digits_dir, epochs=1), name=f"q{i}") for i in (1, 2)]
    server, port = _start_server(workspace, tmp_path / "logs")
    try:
        # the long job runs, with a finished epoch (resumable), while the other two wait
        run_id: list[str] = []

        def one_epoch() -> bool:
            row = job_queue.get(long["id"])
            if row["run_id"] and runs.load_run(row["run_id"]).last_path.is_file():
                run_id.append(row["run_id"])
                return True
            return False

        _wait(one_epoch, "the long job finishing its first epoch")
        assert [job_queue.get(q["id"])["state"] for q in queued] == ["queued", "queued"]
        assert _feed(port, queued[0]["id"])["queued"].startswith("Queued, position 1")
        job_pid = job_queue.get(long["id"])["pid"]
        family = _descendants(job_pid)
        server.send_signal(sig)
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # no job process outlives the server
    _wait(lambda: not any(_alive(p) for p in family), f"job processes {family} ending", 30)

    server, port = _start_server(workspace, tmp_path / "logs")
    try:
        for q in queued:
            _wait(lambda q=q: job_queue.get(q["id"])["state"] == "done", f"queued job {q['id']}")
        row = job_queue.get(long["id"])
        assert row["state"] == "interrupted" and row["run_id"] == run_id[0]
        run = runs.load_run(run_id[0])
        assert runs.effective_status(runs.read_summary(run), run) == "interrupted"
        # a page that was watching it hears so from the feed
        payload = _feed(port, long["id"])
        assert payload["status"] == "interrupted" and not payload["active"]
    finally:
        server.terminate()
        server.wait(60)

    # the Train page of the restarted dashboard says so and resumes it
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["train_job_id"] = long["id"]
    at.run()
    at.run()  # ui.use_app_navigation's one rerun (see tests/app/conftest.py)
    at.switch_page("pages/train.py").run()
    assert any("Interrupted after" in w.value for w in at.warning), [w.value for w in at.warning]
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception
    new_job = at.session_state["train_job_id"]
    assert new_job != long["id"]
    snap = jobs.get_manager().wait(new_job, timeout=300)
    assert snap.status == "completed", snap.error
    assert snap.run_id == run_id[0] and snap.summary["epochs_run"] == 4


def test_a_killed_launcher_leaves_no_worker_behind(
    workspace: Path, digits_dir: Path, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "cnnlab", "train", str(digits_dir), "--image-size", "16",
           "--epochs", "200", "--batch-size", "8", "--device", "cpu", "--nproc-per-node", "2"]  # fmt: skip
    env = {**os.environ, "CNNLAB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    launcher = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / "launcher.log").open("wb"))  # fmt: skip
    try:
        _wait(lambda: len(_descendants(launcher.pid)) >= 3 and runs.list_runs(), "two ranks")
        ranks = _descendants(launcher.pid) - {launcher.pid}
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    _wait(lambda: not any(_alive(p) for p in ranks), f"ranks {ranks} ending", 30)
