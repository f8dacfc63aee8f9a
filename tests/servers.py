"""Helpers for tests that start a real dashboard server: free port, health wait, what is left after."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 120  # importing torch + streamlit on a busy 2-core machine takes a while
STOP_TIMEOUT_S = 30

# the Streamlit page between reruns (browser tests, benchmarks and the screenshot script wait on it)
PAGE_IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
# The Train page's charts and progress line: the live view's (pages/live.py) while a job runs
# under server.py, Streamlit's own after it ends (or under a plain `streamlit run app.py`).
CHART = ":is([data-testid='stPlotlyChart'], [data-testid='cnnlab-live-chart'])"
PROGRESS = ":is([data-testid='stProgress'], [data-testid='cnnlab-live-progress'])"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    """Whether Streamlit's health endpoint on the port answers ok."""
    try:
        url = f"http://127.0.0.1:{port}/_stcore/health"
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> str:
    """Wait until the server answers, then return its index page; fail with its log otherwise."""
    end = time.monotonic() + START_TIMEOUT_S
    while not healthy(port):
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > end:
            raise AssertionError(
                f"server not healthy after {START_TIMEOUT_S} s:\n{log.read_text()}"
            )
        time.sleep(0.25)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return r.read().decode(errors="replace")


def streamlit_pids(port: int) -> set[int]:
    """PIDs of processes whose command line runs Streamlit on this port (Linux /proc)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        text = b" ".join(args)
        if b"streamlit" in text and str(port).encode() in args:
            found.add(int(cmdline.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its exit status waits to be collected


def wait_gone(pids: set[int], port: int) -> None:
    """Wait until none of pids is alive and the port refuses connections; fail saying which."""
    end = time.monotonic() + STOP_TIMEOUT_S
    while True:
        alive = {p for p in pids if _alive(p)}
        listening = port_open(port)
        if not alive and not listening:
            return
        if time.monotonic() > end:
            raise AssertionError(
                f"{STOP_TIMEOUT_S} s after the signal: still alive {sorted(alive)} "
                f"({streamlit_pids(port)} run streamlit on {port}), port open: {listening}"
            )
        time.sleep(0.2)


@contextlib.contextmanager
def serve_dashboard(
    home: Path, logs: Path, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """`streamlit run server.py` (this checkout: app.py plus the live feed, as `cnnlab app` runs
    it) on a free port over workspace `home`; yields its URL.

    Its output goes to a log under `logs`, named in the failure when it does not come up.
    """
    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "CNNLAB_HOME": str(home), **(extra_env or {})}
    env.pop("CNNLAB_DATA_ROOTS", None)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"streamlit-{port}.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", "server.py",
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(proc, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def serve_run(home: Path, run_id: str, logs: Path) -> Iterator[str]:
    """`cnnlab serve RUN_ID` (the predict-only demo and its API) on a free port over workspace
    `home`; yields its URL. Its output goes to a log under `logs`."""
    port = free_port()
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    env.pop("CNNLAB_DATA_ROOTS", None)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"cnnlab-serve-{port}.log"
    cmd = [sys.executable, "-m", "cnnlab", "serve", run_id, "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(proc, port, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
