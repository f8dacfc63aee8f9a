"""A labels CSV of a million rows through `cnnlab inspect --json`: time and peak memory.

Usage: python benchmarks/bench_csv.py [--rows 1000000] [--against GIT_REV]
Writes 2,000 tiny PNGs and two CSVs of --rows rows (~32 MB at a million): "missing", where each
row names its own file and almost all are absent (a million problems), and "copies", where the
rows cycle over the 2,000 files (a million repeated rows). Each runs in a fresh `cnnlab inspect
--json` process, beside a 100-row CSV of the same files (the import floor: torch and friends), and
prints wall and CPU seconds, peak RSS and RSS over the floor. With --against, the same runs use
that git revision's `cnnlab` package too (e.g. the commit before the CSV was streamed), side by side.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_data(folder: Path, rows: int) -> dict[str, Path]:
    """2,000 8x8 PNGs under folder/images and the three CSVs naming them."""
    import numpy as np
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2000):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i:06d}.png")
    csvs = {}
    for name, n, cycle in (
        ("100 rows", 100, 2000),
        ("missing", rows, rows),
        ("copies", rows, 2000),
    ):
        path = folder / f"{name.replace(' ', '-')}.csv"
        with path.open("w") as f:
            f.write("path,label,split\n")
            f.writelines(f"images/{i % cycle:06d}.png,class_{i % 5},train\n" for i in range(n))
        csvs[name] = path
    return csvs


def measure(csv_path: Path, code: Path, home: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one `cnnlab inspect --json` process on csv_path."""
    env = {**os.environ, "PYTHONPATH": str(code), "CNNLAB_HOME": str(home)}
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "inspect", str(csv_path), "--json"],
        env=env, stdout=subprocess.DEVNULL, cwd=home.parent,  # not the repo: -m imports from cwd
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"cnnlab inspect {csv_path.name} failed (exit {child.returncode})")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    """Print one line per (code, CSV): wall and CPU seconds, peak RSS and RSS over the floor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--against", help="a git revision to measure side by side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-csv-") as tmp:
        csvs = write_data(Path(tmp) / "data", args.rows)
        codes = {"this tree": REPO}
        if args.against:
            old = Path(tmp) / "against"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.against, "cnnlab"],
                                     check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            codes[args.against] = old
        size = csvs["missing"].stat().st_size / 1e6
        print(f"{args.rows:,} rows ({size:.1f} MB) per CSV, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(
            f"{'code':>12} {'csv':>9} {'wall s':>7} {'cpu s':>7} {'peak MB':>8} {'over floor':>10}"
        )
        for label, code in codes.items():
            floor = 0.0
            for name, path in csvs.items():
                wall, cpu, peak = measure(path, code, Path(tmp) / f"home-{len(label)}-{name}")
                floor = floor or peak
                print(f"{label:>12} {name:>9} {wall:>7.1f} {cpu:>7.1f} {peak:>8.0f} "
                      f"{peak - floor:>10.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
