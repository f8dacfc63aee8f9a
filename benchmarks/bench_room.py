"""A room on one server: does training keep its speed while many browser sessions use the
dashboard, and do the pages stay quick while a job trains?

One `streamlit run server.py` (as `cnnlab app`), one headless Chromium. Each round queues the same
demo-digits job (`cnnlab.job_queue.submit`, what Start and `cnnlab jobs submit` do) and measures
its training speed (images/s over its epochs, from metrics.jsonl) in one of three settings,
alternated so machine-load drift hits all of them:

- alone: nothing else happens;
- pages: N browser contexts load dashboard pages (Home, Data, Model, Train, Runs) at once, over
  and over;
- busy core: one process spins on a core beside the job.

Prints per round, then medians: job images/s and its ratio to alone (goals: pages >= 0.5x, busy
core >= 0.4x), page-ready time (goto -> the script idle) while the job trains, time in the queue
(created -> started), Start-to-first-point (created -> first Progress event), and the server's
RSS.

    .venv/bin/python benchmarks/bench_room.py [--sessions 10] [--repeats 3] [--epochs 6]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the same server start the e2e tests use

from tests.servers import PAGE_IDLE, serve_dashboard, streamlit_pids  # noqa: E402

CHROMIUM = os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium")
PAGES = ("", "data", "model", "train", "runs")


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _rss_mb(port: int) -> float:
    total = 0
    for pid in streamlit_pids(port):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _job_numbers(job_id: str) -> dict:
    """images/s over the job's epochs (mean of metrics.jsonl's) and its time in the queue."""
    from cnnlab import job_queue, runs

    row = job_queue.get(job_id)
    rows = runs.read_metrics(runs.load_run(row["run_id"]))
    return {
        "images_per_s": statistics.mean(r["images_per_s"] for r in rows),
        "queued_s": row["started_at"] - row["created_at"],
    }


def _first_point_s(job_id: str, created: float) -> float | None:
    from cnnlab import job_queue

    path = job_queue.events_path(job_id)
    end = time.time() + 600
    while time.time() < end:
        if path.is_file() and '"Progress"' in path.read_text():
            return time.time() - created
        time.sleep(0.05)
    return None


def one_round(url: str, digits: Path, epochs: int, mode: str, browser, sessions: int) -> dict:
    """Queue the job; load pages or spin a core while it trains; its numbers."""
    from cnnlab import job_queue
    from cnnlab.config import DataConfig, RunConfig, TrainConfig

    cfg = RunConfig(data=DataConfig(path=str(digits), image_size=28),
                    train=TrainConfig(epochs=epochs, device="cpu", patience=0))  # fmt: skip
    ready: list[float] = []
    helpers: list = []
    if mode == "busy core":
        flag = multiprocessing.Event()
        proc = multiprocessing.Process(target=_spin, args=(flag,), daemon=True)
        proc.start()
        helpers.append((proc, flag))
    contexts = []
    if mode == "pages":
        contexts = [browser.new_context(viewport={"width": 1280, "height": 900})
                    for _ in range(sessions)]  # fmt: skip
    row = job_queue.submit(cfg, name=f"room-{mode}")
    first = _first_point_s(row["id"], row["created_at"])
    if mode == "pages":
        # every session (re)loads a page at once, the browser loading them side by side
        pages = [c.new_page() for c in contexts]
        n = 0
        while job_queue.get(row["id"])["state"] in job_queue.ACTIVE_STATES:
            t0 = time.perf_counter()
            for k, page in enumerate(pages):
                page.goto(f"{url}/{PAGES[(n + k) % len(PAGES)]}", wait_until="commit")
            for page in pages:
                page.wait_for_selector(PAGE_IDLE, timeout=120_000)
                ready.append(time.perf_counter() - t0)
            n += 1
        for c in contexts:
            c.close()
    while job_queue.get(row["id"])["state"] in job_queue.ACTIVE_STATES:
        time.sleep(0.2)
    for proc, flag in helpers:
        flag.set()
        proc.join(5)
    final = job_queue.get(row["id"])
    assert final["state"] == "done", final
    numbers = _job_numbers(row["id"])
    numbers["first_point_s"] = first
    numbers["page_ready_s"] = statistics.median(ready) if ready else None
    return numbers


def main() -> None:
    """Alternate alone / pages / busy-core rounds; print each and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from cnnlab import demo

    home = Path(tempfile.mkdtemp(prefix="cnnlab-bench-room-"))
    os.environ["CNNLAB_HOME"] = str(home)
    digits = demo.write_digits(home / "digits")
    modes = ("alone", "pages", "busy core")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with serve_dashboard(home, home / "logs") as url, sync_playwright() as p:
        port = int(url.rsplit(":", 1)[1])
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        one_round(url, digits, 1, "alone", browser, 0)  # warm-up: decode cache, imports
        for i in range(args.repeats):
            order = modes[i % 3 :] + modes[: i % 3]
            for mode in order:
                r = one_round(url, digits, args.epochs, mode, browser, args.sessions)
                r["rss_mb"] = _rss_mb(port)
                results[mode].append(r)
                print(f"{mode:<9} {r['images_per_s']:8.0f} images/s  queue {r['queued_s']:.2f} s"
                      f"  first point {r['first_point_s'] or 0:.2f} s  page ready "
                      f"{r['page_ready_s'] or 0:.2f} s  server RSS {r['rss_mb']:.0f} MB",
                      flush=True)  # fmt: skip
        browser.close()
    alone = statistics.median(r["images_per_s"] for r in results["alone"])
    for mode in modes:
        speed = statistics.median(r["images_per_s"] for r in results[mode])
        print(f"median {mode:<9}: {speed:8.0f} images/s = {speed / alone:.2f}x alone")
    ready = [r["page_ready_s"] for r in results["pages"] if r["page_ready_s"]]
    if ready:
        print(f"median page ready with a job training: {statistics.median(ready):.2f} s "
              f"({args.sessions} sessions loading at once)")  # fmt: skip
    first = [r["first_point_s"] for m in modes for r in results[m] if r["first_point_s"]]
    print(f"median submit-to-first-point: {statistics.median(first):.2f} s")


if __name__ == "__main__":
    main()
