"""Retake the README screenshots (assets/screenshot-*.png) from a real dashboard and browser.

Serves this checkout's dashboard over a fresh workspace, walks the demo path a new user takes
(Home -> "Try it on the demo digits" -> Start, trained to the end), and saves the Data, Augment,
Train and Evaluate pages. With --narrow DIR it also saves every page at 800 px wide to DIR (the
narrow-window layout check). Run on a quiet machine: the Train page shows the run's speed.

    .venv/bin/python docs/screenshots.py [--narrow /tmp/narrow]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the same server start the e2e tests use

from PIL import Image  # noqa: E402

from tests.servers import PAGE_IDLE, serve_dashboard  # noqa: E402

CHROMIUM = os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium")
PAGES = ["Home", "Data", "Augment", "Model", "Train", "Tune", "Evaluate", "Predict", "Runs"]


def _idle(page) -> None:
    page.wait_for_timeout(400)
    page.wait_for_selector(PAGE_IDLE, timeout=600_000)


def _open(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    heading = "cnnlab" if title == "Home" else title  # Home's heading is the product name
    page.get_by_role("heading", name=heading, exact=True).first.wait_for()
    _idle(page)


def _save(page, path: Path, focus=None, above: int = 120) -> None:
    """The viewport, scrolled so `focus` (a locator) sits `above` px below the top, the mouse
    parked off the charts (no hover labels)."""
    if focus is not None:
        focus.first.evaluate("(e, above) => e.scrollIntoView({block: 'start'})", above)
        page.mouse.move(700, 400)
        page.mouse.wheel(0, -above)  # keep what leads into the focus in view
    page.mouse.move(5, 890)
    page.wait_for_timeout(800)  # plotly's resize after the scroll
    page.screenshot(path=str(path))
    # a palette PNG is a quarter of the size and looks the same for flat UI colours
    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=128).save(path, optimize=True)
    print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def readme_shots(page, out: Path) -> None:
    """Demo digits trained to the end; the four pages the README shows."""
    page.get_by_role("button", name="Try it on the demo digits").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=120_000)
    _idle(page)
    page.get_by_role("button", name="Start").first.click()
    page.get_by_text("Test accuracy").first.wait_for(timeout=600_000)
    _idle(page)
    _save(page, out / "screenshot-train.png", page.get_by_test_id("stPlotlyChart"), above=260)

    _open(page, "Data")
    _save(page, out / "screenshot-data.png", page.get_by_text("Images per class"))
    _open(page, "Augment")
    page.wait_for_timeout(1500)  # the preview images decode
    _save(page, out / "screenshot-augment.png")
    _open(page, "Evaluate")
    _save(page, out / "screenshot-evaluate.png", page.get_by_test_id("stMetric"), above=80)


def narrow_shots(browser, url: str, out: Path) -> None:
    """Every page at 800 px wide, after the demo run (so Runs and Evaluate have content)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 800, "height": 2000})
    page = ctx.new_page()
    page.goto(url)
    _idle(page)
    page.get_by_role("button", name="Try it on the demo digits").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for(timeout=120_000)
    _idle(page)
    for i, title in enumerate(PAGES):
        _open(page, title)
        page.wait_for_timeout(800)
        page.screenshot(path=str(out / f"{i:02d}-{title.lower()}.png"), full_page=True)
    print(f"saved {len(PAGES)} pages at 800 px to {out}")
    ctx.close()


def main() -> None:
    """Serve, shoot, stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "assets")
    parser.add_argument("--narrow", type=Path, help="also save every page at 800 px wide here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="cnnlab-shots-"))
    with serve_dashboard(home, home / "logs") as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(url)
        _idle(page)
        readme_shots(page, args.out)
        ctx.close()
        if args.narrow:
            narrow_shots(browser, url, args.narrow)
        browser.close()


if __name__ == "__main__":
    main()
