"""Real-browser fixtures: `streamlit run app.py` on a free local port, Debian's chromium via Playwright.

Never `playwright install` (it downloads a browser): the tests drive /usr/bin/chromium. Without it
they fail under CI (CI set) and skip elsewhere, saying why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium; missing: a failure under CI, a skip with the reason elsewhere."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    reason = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
    if os.environ.get("CI"):
        pytest.fail(f"browser tests need chromium under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, chromium: Path) -> Iterator[str]:
    """The dashboard served by `streamlit run` with its own CNNLAB_HOME; yields its base URL."""
    home = tmp_path_factory.mktemp("e2e-home")
    port = _free_port()
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    env.pop("CNNLAB_DATA_ROOTS", None)
    env["CNNLAB_MAX_JOBS"] = "2"  # two sessions train at once (the CPU default queues one)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / f"streamlit-{port}.log", "wb")  # noqa: SIM115 (closed in teardown)
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true", "--server.port", str(port),
        "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}; see {log.name}")
            if time.monotonic() > end:
                pytest.fail(f"streamlit not healthy after {START_TIMEOUT_S} s; see {log.name}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium: Path):
    """A headless chromium shared by the module's tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: str):
    """A fresh browser session (its own Streamlit session state) on the app's home page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(120_000)  # pages rerun slowly on a busy machine
    pg = context.new_page()
    pg.goto(server)
    yield pg
    context.close()


@pytest.fixture
def shot():
    """shot(page, name, focus=None): save the viewport (scrolled to focus, a locator) as a PNG
    in test-artifacts/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(pg, name: str, focus=None) -> None:
        if focus is not None:
            focus.scroll_into_view_if_needed()
            pg.wait_for_timeout(300)  # let plotly finish its resize after the scroll
        pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

    return save
