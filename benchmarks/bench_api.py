"""The predict API's speed on this machine: latency p50/p95 and requests/s, beside the Predictor.

Trains a small run on the demo digits (or takes --run from CNNLAB_HOME), starts `cnnlab serve` on
it, and sends 320 px JPEGs as multipart uploads over real HTTP (`requests`, one connection per
client thread): one client at a time (latency), then 8 and 50 clients at once (throughput). The
same images through `Predictor.predict` in this process are the floor: what HTTP, multipart and
the server add is the ratio printed beside it.

    .venv/bin/python benchmarks/bench_api.py                  # trains its own run (~1 min)
    CNNLAB_HOME=~/.cnnlab .venv/bin/python benchmarks/bench_api.py --run RUN_ID
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.servers: the same server start the tests use

from cnnlab import demo, predict, train  # noqa: E402
from cnnlab.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from tests.servers import serve_run  # noqa: E402


def _jpeg(seed: int, size: int = 320) -> bytes:
    rng = np.random.default_rng(seed)
    low = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(low).resize((size, size), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _train(home: Path) -> str:
    digits = demo.write_digits(home / "digits")
    config = RunConfig(
        data=DataConfig(path=str(digits), image_size=32),
        train=TrainConfig(epochs=2, device="cpu"),
    )
    return train.fit(config)["run_id"]


def in_process(run_id: str, images: list[bytes], n: int) -> list[float]:
    """Milliseconds per image through the Predictor in this process (decode + model + top-k)."""
    predictor = predict.Predictor.from_run(run_id)
    for img in images[:5]:
        predictor.predict([img])
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        predictor.predict([images[i % len(images)]])
        out.append((time.perf_counter() - t0) * 1000)
    return out


def over_http(url: str, images: list[bytes], n: int, clients: int) -> tuple[list[float], float]:
    """(milliseconds per request, requests/s) with `clients` threads sending n requests in all."""
    api = f"{url}/api/cnnlab/predict"
    sessions = [requests.Session() for _ in range(clients)]

    def one(i: int) -> float:
        t0 = time.perf_counter()
        reply = sessions[i % clients].post(
            api, files={"image": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}, timeout=300
        )
        reply.raise_for_status()
        return (time.perf_counter() - t0) * 1000

    for i in range(min(10, n)):  # warm-up: the server loads the run on its first request
        one(i)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(one, range(n)))
    return lat, n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run id in CNNLAB_HOME (default: train one on the digits)")
    ap.add_argument("--requests", type=int, default=300, help="requests per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            home, run_id = Path(os.environ.get("CNNLAB_HOME", "~/.cnnlab")).expanduser(), args.run
        else:
            home = Path(tmp) / "home"
            os.environ["CNNLAB_HOME"] = str(home)
            print("training a run on the demo digits (32 px, 2 epochs)...", flush=True)
            run_id = _train(home)
        images = [_jpeg(i) for i in range(32)]
        n = args.requests
        floor = in_process(run_id, images, n)
        rows = [("Predictor in process (floor)", floor, None)]
        with serve_run(home, run_id, Path(tmp) / "logs") as url:
            for clients in (1, 8, 50):
                lat, rate = over_http(url, images, n, clients)
                rows.append((f"POST /api/cnnlab/predict, {clients} client(s)", lat, rate))
    print(
        f"\nrun {run_id}, {len(images)} JPEGs of 320 px, {n} requests each, {os.cpu_count()} CPUs"
    )
    print(f"{'path':<42} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>8} {'p50 vs floor':>13}")
    base = statistics.median(floor)
    for name, lat, rate in rows:
        rate_text = f"{rate:8.1f}" if rate is not None else f"{1000 / base:8.1f}"
        print(
            f"{name:<42} {_pct(lat, 50):8.2f} {_pct(lat, 95):8.2f} {rate_text} "
            f"{_pct(lat, 50) / base:12.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
