"""The label check on the demo digits: time of a K-fold check, precision/recall of planted errors.

Usage: python benchmarks/bench_labels.py [--planted 20] [--folds 5] [--seed 0]
Writes the 1,797 demo digits into a temporary workspace, moves --planted images into a wrong class
folder, runs `cnnlab check-labels`' core (quick models: 16 px, 5 epochs, two-block CNN, CPU) and
prints, side by side: seconds per fold and in all, how many planted errors are in the first 40
suspects (the issue's bar: >= 15 of 20), precision and recall over the whole suspect list, and the
same for cleanlab's confident learning alone (prune_by_noise_rate) to show what the union adds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    """Print timing and precision/recall; exit 1 when fewer than 15 planted errors are in the top 40."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        os.environ["CNNLAB_HOME"] = str(Path(tmp) / "home")
        import numpy as np
        from cleanlab.filter import find_label_issues

        from cnnlab import demo, kfold, label_check
        from cnnlab.config import DataConfig, RunConfig, TrainConfig

        root = demo.write_digits(Path(tmp) / "digits")
        rng = random.Random(args.seed)
        planted = set()
        for p in rng.sample(sorted(root.glob("*/*.png")), args.planted):
            wrong = rng.choice([c for c in map(str, range(10)) if c != p.parent.name])
            shutil.move(p, root / wrong / p.name)
            planted.add(f"{wrong}/{p.name}")
        config = kfold.quick(
            RunConfig(data=DataConfig(path=str(root)), train=TrainConfig(device="cpu"))
        )
        folds: list[float] = []
        t0 = time.perf_counter()
        report = label_check.check_labels(
            config,
            args.folds,
            callbacks=[lambda e: e.kind == "FoldEnd" and folds.append(e.seconds)],
        )
        total = time.perf_counter() - t0
        found = [s["path"] for s in report["suspects"]]
        top40 = len(planted & set(found[:40]))
        hits = len(planted & set(found))
        # confident learning alone, on the same out-of-fold probabilities (read back: no training)
        result = kfold.cross_validate(config, args.folds)
        alone = find_label_issues(result.labels, result.probs, filter_by="prune_by_noise_rate")
        alone_paths = {result.data.scan.rel(result.indices[j]) for j in np.flatnonzero(alone)}
        hits_alone = len(planted & alone_paths)
    print(f"{args.folds}-fold check on {report['n_images']} digits, {args.planted} planted errors, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(f"  seconds: {total:.1f} in all, per fold {', '.join(f'{s:.1f}' for s in folds)}; "
          f"out-of-fold accuracy {report['oof_accuracy']:.4f}")  # fmt: skip
    print(f"{'':>24} {'suspects':>8} {'in top 40':>9} {'precision':>9} {'recall':>6}")
    for name, n, h, t in (("check-labels (union)", len(found), hits, top40),
                          ("confident learning only", len(alone_paths), hits_alone, None)):  # fmt: skip
        top = "-" if t is None else f"{t}/{args.planted}"
        print(f"{name:>24} {n:>8} {top:>9} {h / max(n, 1):>9.2f} {h / args.planted:>6.2f}")
    return 0 if top40 >= min(15, args.planted) else 1


if __name__ == "__main__":
    sys.exit(main())
