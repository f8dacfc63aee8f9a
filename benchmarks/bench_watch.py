"""Does watching slow training? The same demo run started from the Train page, with the page left
open (the live view polling its feed every second in headless Chromium) or closed right after
Start.

Each run is the Home page's demo (digits, defaults) started with the Start button; its time is
summary.json's `seconds` (fit's own clock, data preparation excluded). Runs alternate watched /
unwatched so a change in machine load hits both. Prints each run and the ratio of the medians
(goal: watched / unwatched <= 1.10).

    .venv/bin/python benchmarks/bench_watch.py [--repeats 5] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the same server start the e2e tests use

from tests.servers import PAGE_IDLE, serve_dashboard  # noqa: E402

CHROMIUM = os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium")


def _newest_summary(home: Path) -> dict:
    """The newest run's summary ({} while its folder is still being written)."""
    runs = sorted((home / "runs").iterdir())
    try:
        return json.loads((runs[-1] / "summary.json").read_text()) if runs else {}
    except (OSError, json.JSONDecodeError):
        return {}


def one_run(browser, url: str, home: Path, epochs: int, watch: bool) -> float:
    """Start the demo from the Train page; watch it to the end or close the page at once."""
    before = len(list((home / "runs").iterdir())) if (home / "runs").is_dir() else 0
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector(PAGE_IDLE)
    page.get_by_role("button", name="Try it on the demo digits").click()
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    page.wait_for_timeout(300)
    page.wait_for_selector(PAGE_IDLE)
    box = page.get_by_label("Epochs", exact=True)
    box.fill(str(epochs))
    box.press("Enter")
    page.wait_for_timeout(300)
    page.wait_for_selector(PAGE_IDLE)
    # the Train page loads the live view's chart library while it waits for Start (as it does
    # while a person reads it); clicking within that second would parse 4.8 MB beside training
    page.wait_for_function("() => window.Plotly !== undefined", timeout=30_000)
    page.get_by_role("button", name="Start").first.click()
    while len(list((home / "runs").iterdir())) <= before:  # the run folder exists: it started
        time.sleep(0.05)
    if not watch:
        ctx.close()  # nobody watches: the job goes on in the server alone
    while _newest_summary(home).get("status") in (None, "running"):
        time.sleep(0.2)
    if watch:
        ctx.close()
    summary = _newest_summary(home)
    assert summary["status"] == "completed", summary
    return float(summary["seconds"])


def main() -> None:
    """Alternate watched and unwatched runs; print the times and the ratio of the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)  # this VM varies ±15 % run to run
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="cnnlab-bench-watch-"))
    times: dict[bool, list[float]] = {True: [], False: []}
    with serve_dashboard(home, home / "logs") as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        one_run(browser, url, home, 2, watch=False)  # warm-up: demo data, decode cache
        for i in range(args.repeats):
            for watch in (i % 2 == 0, i % 2 == 1):
                t = one_run(browser, url, home, args.epochs, watch)
                times[watch].append(t)
                print(f"{'watched  ' if watch else 'unwatched'} {t:6.2f} s", flush=True)
        browser.close()
    w, u = statistics.median(times[True]), statistics.median(times[False])
    print(f"median watched {w:.2f} s, unwatched {u:.2f} s: watching costs {w / u - 1:+.1%}")


if __name__ == "__main__":
    main()
