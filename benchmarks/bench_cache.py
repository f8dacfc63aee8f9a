"""Decode-once cache: time data.load_tensors cold (decode) vs warm (cache hit) side by side.

Usage: python benchmarks/bench_cache.py [--photos N] [--size PX]
Writes the demo digits (1,797 PNGs) and N generated 640x480 JPEGs into a temporary workspace,
then loads each set twice at the same size. The warm load must be >= 5x faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _write_photos(out: Path, n: int) -> None:
    """n noisy 640x480 JPEGs in two class folders (noise keeps the JPEG decoder honest)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = out / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((640, 480), Image.Resampling.BILINEAR)
        img.save(folder / f"{i:05d}.jpg", quality=90)


def _time(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    """Print cold and warm load times and their ratio per data set; exit 1 if a ratio is < 5."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400, help="generated JPEGs (0 = skip)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CNNLAB_HOME"] = str(Path(tmp) / "home")
        from cnnlab import data, demo  # after CNNLAB_HOME is set

        sets = {"digits (1,797 PNG 32x32)": demo.write_digits(Path(tmp) / "digits")}
        if args.photos:
            _write_photos(Path(tmp) / "photos", args.photos)
            sets[f"photos ({args.photos} JPEG 640x480)"] = Path(tmp) / "photos"
        worst = float("inf")
        print(f"load_tensors at {args.size} px, {os.cpu_count()} CPU(s)")
        for name, folder in sets.items():
            files = data.scan(folder).files
            cold, first = _time(lambda files=files: data.load_tensors(files, args.size))
            warm, second = _time(lambda files=files: data.load_tensors(files, args.size))
            assert first.shape == second.shape and bool((first == second).all())
            ratio = cold / warm
            worst = min(worst, ratio)
            print(
                f"{name:28s} cold {cold * 1000:8.1f} ms ({len(files) / cold:8.0f} img/s)   "
                f"warm {warm * 1000:7.1f} ms   ratio {ratio:6.1f}x"
            )
        print(f"worst ratio {worst:.1f}x (target >= 5x): {'OK' if worst >= 5 else 'TOO SLOW'}")
        return 0 if worst >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
