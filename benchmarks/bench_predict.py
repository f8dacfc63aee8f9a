"""Answering speed: Predictor latency (p50/p95, batch 1) and throughput (batch 64), CPU or GPU.

Each prediction is end to end, as the Predict page does it: JPEG bytes -> decode + resize ->
normalise -> model -> softmax -> top-k. Models: simple_cnn (64 px) and resnet18 (224 px), random
weights (speed does not depend on the values).

    .venv/bin/python benchmarks/bench_predict.py                 # the CPU
    .venv/bin/python benchmarks/bench_predict.py --device cuda   # a CUDA GPU
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from cnnlab import models
from cnnlab.config import DEVICES, ModelConfig
from cnnlab.device import configure_cpu_threads, describe_device, resolve_device
from cnnlab.predict import Predictor

SETTINGS = [("simple_cnn", 64), ("custom", 32), ("resnet18", 224)]


def _jpeg(seed: int, size: int = 320) -> bytes:
    rng = np.random.default_rng(seed)
    low = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(low).resize((size, size), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench(name: str, size: int, n_latency: int, n_batches: int, device: torch.device) -> dict:
    """Latency percentiles and throughput of one model through the Predictor."""
    torch.manual_seed(0)
    model = models.create_model(ModelConfig(name=name, weights="random"), 10, size)
    model = model.to(device).eval()
    predictor = Predictor(
        model=model,
        classes=[str(i) for i in range(10)],
        image_size=size,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        device=device,
    )
    images = [_jpeg(i) for i in range(64)]
    for img in images[:5]:  # warm-up: allocator, oneDNN/cuDNN kernel selection
        predictor.predict([img])
    predictor.predict(images)  # the batch-64 shapes too
    lat = []
    for i in range(n_latency):
        t0 = time.perf_counter()
        predictor.predict([images[i % 64]])
        lat.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        predictor.predict(images)
    throughput = 64 * n_batches / (time.perf_counter() - t0)
    q = statistics.quantiles(lat, n=20)
    return {"model": name, "size": size, "p50_ms": statistics.median(lat), "p95_ms": q[18],
            "batch64_images_per_s": throughput}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="batch-1 predictions per model")
    parser.add_argument("--batches", type=int, default=5, help="batches of 64 per model")
    parser.add_argument("--device", default="cpu", choices=DEVICES)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        configure_cpu_threads()
    # Probabilities come back to the host (.cpu()) in every call, so the timings include the
    # GPU's work: no extra synchronisation is needed.
    print(f"{describe_device(device)}, torch {torch.__version__}; end to end from JPEG bytes")
    print(f"{'model':<12} {'px':>4} {'p50 ms':>8} {'p95 ms':>8} {'batch-64 img/s':>15}")
    for name, size in SETTINGS:
        r = bench(name, size, args.n, args.batches, device)
        print(f"{r['model']:<12} {r['size']:>4} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
              f"{r['batch64_images_per_s']:15.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
