"""How fast the Predict page answers a dropped image (small CNN, top-k and Grad-CAM), p50/p95/max.

Two measurements of the same page on a freshly trained 2-epoch digits run (16 px custom CNN):
- server side: Streamlit's AppTest reruns the page with the image uploaded (decode, predict,
  Grad-CAM, render) — no browser needed;
- in the browser (when chromium is installed): `streamlit run` on a free port, Playwright drops the
  file on the uploader and waits for the answer's heading — upload, rerun and drawing included.

    .venv/bin/python benchmarks/bench_predict_page.py [--repeats 10]

The tests check what the page shows; how fast it shows it is measured here (docs/performance.md).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium"))


def _train(home: Path) -> str:
    from cnnlab import demo, train
    from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    digits = demo.write_digits(home / "digits")
    config = RunConfig(
        data=DataConfig(path=str(digits), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=32),
        train=TrainConfig(epochs=2, device="cpu"),
    )
    return train.fit(config)["run_id"]


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (20 * i % 255, 90, 160)).save(buf, "PNG")
    return buf.getvalue()


def _stats(name: str, seconds: list[float]) -> None:
    s = sorted(seconds)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    print(
        f"{name:<12} n={len(s):>3}  p50 {statistics.median(s) * 1000:7.1f} ms  "
        f"p95 {p95 * 1000:7.1f} ms  max {s[-1] * 1000:7.1f} ms"
    )


def bench_server_side(run_id: str, repeats: int) -> list[float]:
    """AppTest: the page's own work for one uploaded image, per rerun."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["active_run_id"] = run_id
    at.run()
    at.switch_page("pages/predict.py").run()
    times = []
    for i in range(repeats + 1):  # the first rerun loads the model: reported apart
        at.file_uploader(key="pr_files").set_value((f"q{i}.png", _png(i), "image/png"))
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
        assert any(h.value.startswith(f"q{i}.png:") for h in at.subheader), "no answer shown"
    print(f"server side: first rerun (loads the model) {times[0] * 1000:.0f} ms")
    return times[1:]


def bench_browser(home: Path, repeats: int, tmp: Path) -> list[float] | None:
    """Playwright + chromium against `streamlit run`: drop -> answer heading on screen."""
    if not CHROMIUM.is_file():
        print(f"browser: skipped ({CHROMIUM} missing; apt-get install chromium)")
        return None
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
           str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        times = []
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            for i in range(repeats + 1):  # a new session each time: one image on the page
                page.goto(f"{url}/predict")
                page.get_by_role("heading", name="Predict", exact=True).wait_for()
                drop = page.locator("[data-testid='stFileUploaderDropzoneInput']").first
                drop.wait_for(state="attached")
                path = tmp / f"q{i}.png"
                path.write_bytes(_png(i))
                t0 = time.perf_counter()
                drop.set_input_files(str(path))
                page.get_by_role("heading", name=f"q{i}.png:").first.wait_for()
                times.append(time.perf_counter() - t0)
            browser.close()
        return times[1:]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        home = tmp / "home"
        os.environ["CNNLAB_HOME"] = str(home)
        run_id = _train(home)
        _stats("server side", bench_server_side(run_id, args.repeats))
        browser = bench_browser(home, args.repeats, tmp)
        if browser:
            _stats("browser", browser)


if __name__ == "__main__":
    main()
