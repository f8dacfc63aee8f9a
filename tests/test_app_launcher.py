"""`cnnlab app`: the dashboard it finds, and stopping it leaves no Streamlit process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import app_launcher
from tests.servers import free_port, streamlit_pids, wait_gone, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_serves_its_own_app_py_and_pages() -> None:
    where = app_launcher.dashboard_dir()
    assert where == ROOT
    assert (where / "app.py").is_file() and (where / "pages" / "train.py").is_file()
    cmd = app_launcher.streamlit_command(where, 8765, "127.0.0.1")
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"]
    assert cmd[4] == str(ROOT / "server.py")  # app.py's pages plus the live feed (st.App)
    assert cmd[5:] == ["--server.port", "8765", "--server.address", "127.0.0.1"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_cnnlab_app_stops_streamlit(sig: int, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "CNNLAB_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    log = tmp_path / "app.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnlab.cli", "app", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_healthy(proc, port, log)
            pids = streamlit_pids(port)
            assert pids, f"no process runs streamlit on {port}"
            proc.send_signal(sig)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wait_gone(pids, port)  # no orphaned Streamlit still serving the port
    # uvicorn (st.App) shuts down gracefully, then re-raises the signal: SIGTERM ends the process
    # by it, SIGINT becomes a KeyboardInterrupt that Streamlit's click CLI reports as exit 1
    assert code in (0, -sig, 1 if sig == signal.SIGINT else 0), log.read_text()


def test_the_dashboard_config_turns_off_streamlits_gc_after_every_rerun() -> None:
    """Streamlit's default gc.collect(2) after each script run (every live-chart tick) held the GIL
    ~0.3 s per tick beside the training thread: watching the demo cost +134 % (bench_watch.py)."""
    probe = (
        "from streamlit import config; "
        "print(config.get_config_options(force_reparse=True)['runner.postScriptGC'].value)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=app_launcher.dashboard_dir(),  # Streamlit reads .streamlit/config.toml from here
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
