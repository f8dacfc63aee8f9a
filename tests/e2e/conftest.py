"""Real-browser fixtures: `streamlit run server.py` on a free local port, Debian's chromium via Playwright.

Never `playwright install` (it downloads a browser): the tests drive /usr/bin/chromium. Without it
they fail under CI (CI set) and skip elsewhere, saying why.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import serve_dashboard

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
    # two sessions train at once (the CPU default queues one)
    with serve_dashboard(
        tmp_path_factory.mktemp("e2e-home"), ARTIFACTS, {"CNNLAB_MAX_JOBS": "2"}
    ) as url:
        yield url


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
