"""A classic baseline on the run's own split: an RBF SVM on downscaled raw pixels (scikit-learn).

It answers one question in seconds: does the CNN earn its keep? A CNN that does not beat a kernel
method on 32 px pixels is memorising or under-trained, and the user should know it at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SIDE = 32  # pixels per side the baseline sees (the yardstick: SVC on raw 32 px pixels)
SMALL_SIDE = 16  # past LARGE training images, 16 px keeps the fit within seconds
LARGE = 1_500
MAX_TRAIN = 3_000  # an RBF SVM is quadratic in rows: more than this adds seconds, not insight
MAX_EVAL = 5_000  # scored rows: enough for +-1.5 points, bounded time on a huge test split
C = 10.0


@dataclass
class Baseline:
    """What the baseline scored on the run's test split (or val, when there is no test split)."""

    accuracy: float
    split: str  # the split scored: "test" or "val"
    model: str  # e.g. "SVC(rbf, C=10) on 32 px pixels"
    n_train: int  # training images it was fitted on (subsampled past MAX_TRAIN)
    n_eval: int  # images it was scored on (subsampled past MAX_EVAL)
    seconds: float

    def to_dict(self) -> dict:
        """JSON-able: summary.json's `baseline` entry."""
        return {
            "accuracy": self.accuracy,
            "split": self.split,
            "model": self.model,
            "n_train": self.n_train,
            "n_eval": self.n_eval,
            "seconds": self.seconds,
        }


def pixels(images: torch.Tensor, side: int) -> np.ndarray:
    """uint8 (N, 3, H, W) -> float32 (N, 3*side*side) in [0, 1], area-downscaled."""
    x = images.float().div_(255.0)
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1).numpy().astype(np.float32, copy=False)


def _subsample(rows: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` rows, each class keeping its share (stratified, seeded)."""
    if len(rows) <= limit:
        return rows
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for cls in np.unique(labels[rows]):
        members = rows[labels[rows] == cls]
        k = max(1, round(limit * len(members) / len(rows)))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(keep))


def fit_baseline(
    images: torch.Tensor,
    labels: torch.Tensor,
    train_rows: torch.Tensor | np.ndarray,
    eval_rows: torch.Tensor | np.ndarray,
    split: str = "test",
    seed: int = 0,
) -> Baseline | None:
    """Fit the SVM on `train_rows` and score `eval_rows`; None when there is nothing to compare."""
    from sklearn.svm import SVC  # imported here: scikit-learn is slow to import, rarely needed

    y = labels.cpu().numpy()
    train = np.asarray(train_rows, dtype=np.int64)
    held = np.asarray(eval_rows, dtype=np.int64)
    if len(held) == 0 or len(np.unique(y[train])) < 2:
        return None
    t0 = time.perf_counter()
    side = SMALL_SIDE if len(train) > LARGE else SIDE
    side = min(side, int(images.shape[-1]))
    train = _subsample(train, y, MAX_TRAIN, seed)
    held = _subsample(held, y, MAX_EVAL, seed)
    clf = SVC(kernel="rbf", C=C, gamma="scale")
    clf.fit(pixels(images[torch.as_tensor(train)].cpu(), side), y[train])
    predicted = clf.predict(pixels(images[torch.as_tensor(held)].cpu(), side))
    accuracy = float((predicted == y[held]).mean())
    seconds = time.perf_counter() - t0
    log.info("baseline %s: %.4f on %s (%.1f s)", side, accuracy, split, seconds)
    model = f"SVC(rbf, C={C:g}) on {side} px pixels"
    return Baseline(accuracy, split, model, len(train), len(held), seconds)


def comparison(summary: dict) -> str | None:
    """'CNN 0.743 vs baseline 0.639 (SVC ... on test)' from a run summary, with what to try when
    the CNN does not win; None when the run has no baseline (switched off, or nothing to score)."""
    base = summary.get("baseline") or {}
    if base.get("accuracy") is None:
        return None
    cnn = summary.get(f"{base.get('split', 'test')}_accuracy")
    if not isinstance(cnn, float):
        return None
    line = (
        f"CNN {cnn:.3f} vs baseline {base['accuracy']:.3f} ({base['model']}, {base['split']} split)"
    )
    if cnn < base["accuracy"] or (cnn == base["accuracy"] < 1.0):
        tried = (summary.get("recipe") or {}).get("applied")
        line += ": the CNN does not beat raw pixels; try " + (
            "a pretrained model, or more data" if tried
            else "the small-data recipe (train.recipe auto), a pretrained model, or more data"
        )  # fmt: skip
    return line


def beaten(summary: dict) -> bool | None:
    """True when the CNN scored above the baseline (or both are perfect), None without one."""
    base = (summary.get("baseline") or {}).get("accuracy")
    cnn = summary.get(f"{(summary.get('baseline') or {}).get('split', 'test')}_accuracy")
    if base is None or not isinstance(cnn, float):
        return None
    return cnn > base or cnn == base == 1.0
