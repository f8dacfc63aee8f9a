"""Small real data: the default recipe vs the pixel baseline vs the old fixed defaults, per set.

For each real small set (benchmarks/small_sets.py builds them from Debian's icon themes, fonts and
pychess's piece sets) and each seed (which also draws the 70/15/15 split): the pixel SVM baseline,
`fixed` (the settings as they are, the default before the recipe), `auto` (the default now), and
`auto` without one recipe element at a time, and `auto` keeping the last epoch (`select-last`). Prints mean +- sd test accuracy and seconds, and the
margin over the baseline; `--digits` checks the demo digits' mean stays >= 0.99 (exit 1 if not).

    python benchmarks/small_sets.py /tmp/small_sets --pychess /tmp/pychess/usr/share/pychess/pieces
    python benchmarks/bench_small_data.py /tmp/small_sets --sets chess scripts papirus
    python benchmarks/bench_small_data.py /tmp/small_sets --sets chess --variants auto no-mixup
    python benchmarks/bench_small_data.py --digits
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# the runs go to a scratch workspace unless one is given
os.environ.setdefault("CNNLAB_HOME", tempfile.mkdtemp(prefix="cnnlab-bench-small-"))

from cnnlab import baseline, demo, recipe, train  # noqa: E402
from cnnlab.config import RunConfig  # noqa: E402
from cnnlab.data import prepare  # noqa: E402

# variant -> the SMALL_DATA keys it leaves out (one recipe element each)
ELEMENTS = {
    "no-mixup": ("train.mixup",),
    "no-model": tuple(k for k in recipe.SMALL_DATA if k.startswith("model.")),
    "no-augment": tuple(k for k in recipe.SMALL_DATA if k.startswith("augment.")),
}
VARIANTS = ("baseline", "fixed", "auto", *ELEMENTS, "no-schedule", "select-last")


def _config(path: Path, seed: int, variant: str) -> RunConfig:
    config = RunConfig()
    config.data.path = str(path)
    config.data.seed = seed
    config.train.seed = seed
    config.train.baseline = False  # scored once per split below
    if variant == "fixed":
        config.train.recipe = "fixed"
    if variant == "select-last":  # the recipe, keeping the last epoch instead of the best
        config.train.select = "last"
    return config


def _train(path: Path, seed: int, variant: str, data) -> tuple[float, float]:
    """(test accuracy, seconds) of one run; recipe elements are left out for this run only."""
    saved = dict(recipe.SMALL_DATA)
    saved_epochs = recipe.MIN_EPOCHS, recipe.MAX_EPOCHS
    try:
        for key in ELEMENTS.get(variant, ()):
            recipe.SMALL_DATA.pop(key)
        if variant == "no-schedule":  # the old default's 15 epochs
            recipe.MAX_EPOCHS = recipe.MIN_EPOCHS = 15
        t0 = time.perf_counter()
        summary = train.fit(_config(path, seed, variant), data=data)
        return summary["test_accuracy"], time.perf_counter() - t0
    finally:
        recipe.SMALL_DATA.clear()
        recipe.SMALL_DATA.update(saved)
        recipe.MIN_EPOCHS, recipe.MAX_EPOCHS = saved_epochs


def bench_set(path: Path, seeds: list[int], variants: list[str], log_file: Path | None) -> dict:
    """{variant: {"acc": [...], "seconds": [...]}} for one set."""
    out: dict[str, dict[str, list[float]]] = {v: {"acc": [], "seconds": []} for v in variants}
    for seed in seeds:
        config = _config(path, seed, "auto")
        data = prepare(config.data)
        for variant in variants:
            if variant == "baseline":
                t0 = time.perf_counter()
                split = data.split
                fitted = baseline.fit_baseline(data.images, data.labels, split.train, split.test)
                acc, secs = fitted.accuracy, time.perf_counter() - t0
            else:
                acc, secs = _train(path, seed, variant, data)
            out[variant]["acc"].append(acc)
            out[variant]["seconds"].append(secs)
            row = {"set": path.name, "seed": seed, "variant": variant, "acc": acc, "s": secs}
            print(json.dumps(row), file=sys.stderr, flush=True)
            if log_file is not None:
                with log_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return out


def _mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def print_table(results: dict[str, dict], n_images: dict[str, tuple[int, int]]) -> None:
    """One markdown table: per set and variant, accuracy, margin over the baseline, seconds."""
    print("| set (images, classes) | variant | test accuracy (mean ± sd) | vs baseline | seconds |")
    print("|---|---|---|---|---|")
    for name, per in results.items():
        base = statistics.mean(per["baseline"]["acc"]) if "baseline" in per else None
        n, k = n_images[name]
        for variant, r in per.items():
            if not r["acc"]:
                continue
            margin = statistics.mean(r["acc"]) - base if base is not None else None
            shown = "" if margin is None or variant == "baseline" else f"{100 * margin:+.1f} pts"
            print(f"| {name} ({n}, {k}) | {variant} | {_mean_sd(r['acc'])} ({len(r['acc'])}) | "
                  f"{shown} | {statistics.mean(r['seconds']):.0f} |")  # fmt: skip


def digits_check(seeds: list[int]) -> int:
    """The demo digits with the defaults (1,257 training images: past recipe.SMALL, so the plain
    defaults): the mean test accuracy over the seeds must stay >= 0.99."""
    folder = Path(tempfile.mkdtemp(prefix="digits-")) / "digits"
    demo.write_digits(folder)
    accs = []
    for seed in seeds:
        acc, secs = _train(folder, seed, "auto", None)
        accs.append(acc)
        print(f"digits seed {seed}: test accuracy {acc:.4f} ({secs:.0f} s)")
    print(f"digits: {_mean_sd(accs)}")
    return 0 if statistics.mean(accs) >= 0.99 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets_dir", type=Path, nargs="?", help="small_sets.py's output folder")
    parser.add_argument("--sets", nargs="*", help="set names (default: every folder)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=["baseline", "fixed", "auto"],
                        choices=VARIANTS)  # fmt: skip
    parser.add_argument("--log", type=Path, help="append every result as a JSON line here")
    parser.add_argument("--digits", action="store_true", help="check the demo digits instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.digits:
        return digits_check(args.seeds)
    if args.sets_dir is None:
        parser.error("give the folder small_sets.py built, or --digits")
    names = args.sets or sorted(p.name for p in args.sets_dir.iterdir() if p.is_dir())
    results, sizes = {}, {}
    for name in names:
        path = args.sets_dir / name
        classes = [p for p in path.iterdir() if p.is_dir()]
        sizes[name] = (sum(len(list(c.iterdir())) for c in classes), len(classes))
        results[name] = bench_set(path, args.seeds, args.variants, args.log)
    print_table(results, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
