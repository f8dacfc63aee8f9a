"""Would more data help? Train on growing stratified fractions of the training split.

Each fraction is a nested, per-class subset of the run's training split (the same images plus
more at each step); every model is scored on the same val split, with the run's config and the
K-fold engine's quick trainer. The reading compares the last two val accuracies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import kfold
from .config import RunConfig
from .data import PreparedData, prepare
from .errors import ConfigError, DataError
from .events import Callback, FoldEnd, Preparing

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
RISING = 0.01  # a val accuracy gain over the last step above this reads as "still rising"
READ_RISING = "still rising: more data will help"
READ_FLAT = "flat: try a pretrained model or a bigger one"


def parse_fractions(text: str) -> list[float]:
    """'0.1,0.25,0.5,1' -> sorted unique fractions in (0, 1]; ConfigError naming a bad one."""
    out = set()
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError as exc:
            raise ConfigError(f"--fractions: {part.strip()!r} is not a number") from exc
        if not 0 < value <= 1:
            raise ConfigError(f"--fractions: {value} is outside (0, 1]")
        out.add(value)
    if not out:
        raise ConfigError("--fractions needs at least one fraction, e.g. 0.1,0.25,0.5,1")
    return sorted(out)


def subsets(data: PreparedData, fractions: Sequence[float], seed: int = 0) -> list[list[int]]:
    """Nested stratified subsets of the training split: each class keeps round(f * n) >= 1."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in data.split.train:
        by_class.setdefault(data.scan.labels[i], []).append(i)
    order = {c: [rows[j] for j in rng.permutation(len(rows))] for c, rows in by_class.items()}
    return [sorted(i for rows in order.values() for i in rows[: max(1, round(f * len(rows)))])
            for f in fractions]  # fmt: skip


def reading(val_accuracy: Sequence[float]) -> str:
    """One line: is val accuracy still rising at the largest fraction?"""
    if len(val_accuracy) < 2:
        return "one point only: give several fractions to see a trend"
    return READ_RISING if val_accuracy[-1] - val_accuracy[-2] > RISING else READ_FLAT


def learning_curve(
    config: RunConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
) -> dict[str, Any]:
    """`cnnlab learning-curve --json`: per fraction, train/val accuracy vs images per class."""
    t0 = time.perf_counter()

    def emit(event) -> None:
        for cb in callbacks:
            cb(event)

    config.validate()
    data = prepare(config.data, progress=lambda d, t, s: emit(Preparing(d, t, s)))
    if not data.split.val:
        raise DataError("a learning curve scores every model on the val split, and it is empty: "
                        "set data.val_fraction above 0")  # fmt: skip
    points = []
    n_classes = len(data.classes)
    for step, rows in enumerate(subsets(data, fractions, config.data.seed)):
        t = time.perf_counter()
        s = kfold.train_quick(config, data, rows, data.split.val, emit, stop_event)
        train_acc = _accuracy(s, data, rows)
        val_acc = _accuracy(s, data, data.split.val)
        points.append({
            "fraction": fractions[step], "n_train": len(rows),
            "images_per_class": round(len(rows) / n_classes, 1),
            "train_accuracy": train_acc, "val_accuracy": val_acc,
            "seconds": time.perf_counter() - t,
        })  # fmt: skip
        emit(FoldEnd("learning-curve", step + 1, len(fractions), val_acc, points[-1]["seconds"]))
    return {
        "fractions": list(fractions),
        "points": points,
        "n_val": len(data.split.val),
        "reading": reading([p["val_accuracy"] for p in points]),
        "seconds": time.perf_counter() - t0,
    }


def _accuracy(s, data: PreparedData, rows: Sequence[int]) -> float:
    probs = kfold.probabilities(s, rows)
    y = np.asarray([data.scan.labels[i] for i in rows])
    return float((probs.argmax(1) == y).mean())
