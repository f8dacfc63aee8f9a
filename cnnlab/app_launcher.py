"""`cnnlab app`: find the dashboard (installed or in a checkout) and hand the process to Streamlit.

The dashboard lives at the top of the repository (server.py, app.py, pages/, .streamlit/config.toml)
and ships inside the wheel as cnnlab/dashboard/ (see pyproject.toml). Streamlit runs server.py, an
`st.App` serving app.py's pages plus the Train page's live feed, and reads the config.toml beside
it (a script-level config), so the settings apply from any working folder.
This module never imports Streamlit: it starts `python -m streamlit run`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from .errors import CnnlabError

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


def dashboard_dir() -> Path:
    """The folder holding server.py, app.py and pages/: the installed copy, else the checkout."""
    for candidate in (_PACKAGE_DIR / "dashboard", _PACKAGE_DIR.parent):
        if all((candidate / name).exists() for name in ("server.py", "app.py", "pages")):
            return candidate
    raise CnnlabError(
        f"the dashboard (server.py, app.py, pages/) is missing from {_PACKAGE_DIR}: reinstall cnnlab "
        "(`pip install --force-reinstall cnnlab`) or run from a source checkout"
    )


def streamlit_command(
    app_dir: Path, port: int, address: str, script: str = "server.py"
) -> list[str]:
    """The `python -m streamlit run` command line serving app_dir's server.py (and so app.py), or
    another server script of the dashboard (demo_server.py: `cnnlab serve`)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_dir / script),
        "--server.port",
        str(port),
        "--server.address",
        address,
    ]


def serve_command(run_id: str, port: int = 8502, address: str = "127.0.0.1") -> str:
    """The `cnnlab serve` line that shares a run as a demo (what the Runs page shows)."""
    extra = f" --address {shlex.quote(address)}" if address != "127.0.0.1" else ""
    return f"cnnlab serve {shlex.quote(run_id)} --port {port}{extra}"


def app_env(environ) -> dict[str, str]:
    """A copy of environ with CNNLAB_HOME and CNNLAB_DATA_ROOTS made absolute (from this cwd), so
    they keep their meaning whatever folder Streamlit resolves from."""
    env = dict(environ)
    if env.get("CNNLAB_HOME"):
        env["CNNLAB_HOME"] = str(Path(env["CNNLAB_HOME"]).expanduser().resolve())
    if env.get("CNNLAB_DATA_ROOTS"):
        env["CNNLAB_DATA_ROOTS"] = os.pathsep.join(
            str(Path(p).expanduser().resolve())
            for p in env["CNNLAB_DATA_ROOTS"].split(os.pathsep)
            if p.strip()
        )
    return env


def serve(port: int, address: str, script: str = "server.py") -> int:
    """Serve the dashboard (or `script`, e.g. demo_server.py) until Streamlit exits; returns its
    exit status.

    On POSIX the process becomes Streamlit (exec), so SIGTERM/SIGINT/SIGKILL sent to `cnnlab app`
    reach the server itself and nothing is left behind. Elsewhere Streamlit runs as a child that
    receives the signals this process gets.
    """
    cmd = streamlit_command(dashboard_dir(), port, address, script)
    log.debug("starting %s", " ".join(cmd))
    sys.stdout.flush()  # exec discards Python's buffers
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(sys.executable, cmd)  # does not return
    return _run_child(cmd)


def _run_child(cmd: list[str]) -> int:
    """Run cmd, forwarding termination signals to it, and wait for it (non-POSIX systems)."""
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame) -> None:
        child.send_signal(signum)

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), forward)
    try:
        return child.wait()
    finally:
        if child.poll() is None:  # we are leaving for another reason: do not orphan it
            child.terminate()
            child.wait()
