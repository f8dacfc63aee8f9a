"""Scale: decode 50,000 generated JPEGs of varied sizes into the cache, then train streaming from it.

Prints images/s for generation, verification (scan) and decoding (load_tensors), the anonymous
memory (RssAnon: not the file-backed pages of the memory map) before and after, and the training
images/s of one epoch that gathers its batches from the memory-mapped cache.

    .venv/bin/python benchmarks/bench_scale.py                    # 50,000 images, 64 px cache
    .venv/bin/python benchmarks/bench_scale.py --n 5000 --force-mmap
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab import data, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

N_CLASSES = 10


def _write_one(args: tuple[Path, int, int]) -> None:
    folder, i, seed = args
    rng = np.random.default_rng(seed + i)
    cls = i % N_CLASSES
    w, h = (int(v) for v in rng.integers(48, 400, size=2))
    # smooth colour blobs tinted by class: cheap to make, JPEG-friendly, learnable
    low = rng.random((6, 6, 3)) * 0.6
    low[..., cls % 3] += 0.4 * (cls / N_CLASSES)
    img = Image.fromarray((low.clip(0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    img.save(folder / f"c{cls}" / f"{i:06d}.jpg", quality=85)


def generate(root: Path, n: int, seed: int = 0) -> float:
    """Write n JPEGs in N_CLASSES folders with all cores; returns images/s."""
    for c in range(N_CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_one, [(root, i, seed) for i in range(n)], chunksize=256)
    return n / (time.perf_counter() - t0)


def rss_anon_mb() -> float:
    """Anonymous resident memory of this process in MB (heap, not file-backed mmap pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _Printer:
    def __init__(self):
        self.last = 0.0

    def __call__(self, done: int, total: int, stage: str) -> None:
        now = time.perf_counter()
        if now - self.last > 2 or done == total:
            self.last = now
            print(f"  {stage}: {done:,}/{total:,}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64, help="cache image size")
    parser.add_argument("--no-train", action="store_true", help="skip the training epoch")
    parser.add_argument("--force-mmap", action="store_true",
                        help="use the memory-mapped cache even though it would fit in RAM")  # fmt: skip
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnlab-scale-"))
    os.environ["CNNLAB_HOME"] = str(work / "home")
    if args.force_mmap:
        data.RAM_FRACTION = 0.0
    folder = work / "images"
    print(f"generating {args.n:,} JPEGs (48-400 px) in {folder} ...", flush=True)
    gen_rate = generate(folder, args.n)
    print(f"  {gen_rate:,.0f} images/s")

    mem0 = rss_anon_mb()
    t0 = time.perf_counter()
    result = data.scan(folder, progress=_Printer())
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = data.load_tensors(result.files, args.size, progress=_Printer())
    t_decode = time.perf_counter() - t0
    mem1 = rss_anon_mb()
    cache_mb = images.numel() / 1e6
    t0 = time.perf_counter()
    data.load_tensors(result.files, args.size)
    t_warm = time.perf_counter() - t0
    mmap = args.force_mmap or images.numel() > data.RAM_FRACTION * data._ram_bytes()

    print(f"\n{args.n:,} images, cache {args.size} px = {cache_mb:,.0f} MB "
          f"({'memory-mapped' if mmap else 'in RAM'}), {os.cpu_count()} cores")  # fmt: skip
    print(f"  scan (verify every file): {t_scan:6.1f}s  {args.n / t_scan:8,.0f} images/s")
    print(f"  decode into cache:        {t_decode:6.1f}s  {args.n / t_decode:8,.0f} images/s")
    print(
        f"  second load (cache hit):  {t_warm:6.2f}s  ({t_decode / max(t_warm, 1e-9):,.0f}x faster)"
    )
    print(f"  anonymous memory: {mem0:,.0f} MB before, {mem1:,.0f} MB after decoding")

    if not args.no_train:
        cfg = RunConfig(
            data=DataConfig(path=str(folder), image_size=args.size),
            model=ModelConfig(channels=[16, 32, 64]),
            train=TrainConfig(epochs=1, patience=0),
        )
        prepared = data.prepare(cfg.data)
        mem2 = rss_anon_mb()
        summary = train.fit(cfg, data=prepared)
        print(f"  one training epoch streaming from the cache: "
              f"{summary['train_images_per_s']:,.0f} images/s, val acc {summary['val_accuracy']:.3f}, "
              f"anonymous memory {mem2:,.0f} -> {rss_anon_mb():,.0f} MB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
