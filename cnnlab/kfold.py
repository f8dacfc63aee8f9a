"""K-fold quick models: one engine for the label check, cross-validation and learning curves.

`assign_folds` makes stratified folds that keep duplicate groups whole (a copy in the training
folds would vouch for its twin's label). `cross_validate` trains one model per fold with the run's
config (fixed epochs, no run folder) and gathers each held-out image's out-of-fold probabilities;
each fold is saved in the workspace as soon as it ends, so a stopped or killed check resumes at
the next fold. `train_quick` + `probabilities` are the single-model pieces the learning curve uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import models, recipe, train, workspace
from .config import RunConfig
from .data import PreparedData, prepare
from .device import configure_cpu_threads, resolve_device
from .epoch import StopRequested, nan_error, predict_logits, train_one_epoch
from .errors import ConfigError, DataError
from .events import Callback, FoldEnd, Preparing
from .fit_setup import Setup, setup
from .scan_result import ScanResult
from .splits import Split

log = logging.getLogger(__name__)

# Quick models (check-labels, learning-curve, the dashboard's label check): the 1,797 demo digits
# at 16 px, 5 epochs, a two-block CNN: ~1.5 s per fold on 2 idle cores; the default 3-block CNN
# at 8 epochs was 60x slower and found fewer planted errors (15 vs 20 of 20 in the first 40).
QUICK_IMAGE_SIZE = 16
QUICK_EPOCHS = 5
QUICK_CHANNELS, QUICK_HEAD = (16, 32), 64
STATE_VERSION = 1  # bump when a saved fold's meaning changes, so old folds are not reused
SCOPES = ("all", "trainval")  # every image held out once / the train+val splits (test kept apart)


def quick(config: RunConfig) -> RunConfig:
    """A copy of config for quick K-fold models: 16 px, 5 epochs, a small custom CNN."""
    out = RunConfig.from_dict(config.to_dict())
    out.data.image_size = QUICK_IMAGE_SIZE
    out.train.epochs = min(out.train.epochs, QUICK_EPOCHS)
    if out.model.name == "custom":
        out.model.channels, out.model.head_units = list(QUICK_CHANNELS), QUICK_HEAD
    return out.validate()


def assign_folds(
    scan: ScanResult, k: int, seed: int = 0, indices: Sequence[int] | None = None
) -> list[list[int]]:
    """k stratified folds of indices (default: every image); copies of one picture share a fold.

    Within each class, units (single images or duplicate groups) are dealt, largest first, to the
    fold holding the fewest of that class, so class counts per fold differ by at most one unit.
    """
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    pool = sorted(range(scan.n_images) if indices is None else set(indices))
    if k > len(pool):
        raise DataError(f"{k} folds need at least {k} images, the data set has {len(pool)}")
    member = set(pool)
    units: list[list[int]] = []
    grouped: set[int] = set()
    for g in scan.duplicate_groups():
        unit = [i for i in g.members if i in member]
        if len(unit) > 1:
            units.append(unit)
            grouped.update(unit)
    units += [[i] for i in pool if i not in grouped]
    n_classes = len(scan.classes)
    by_class: dict[int, list[list[int]]] = {c: [] for c in range(n_classes)}
    for unit in units:
        by_class[scan.labels[unit[0]]].append(unit)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    counts = np.zeros((k, n_classes), dtype=np.int64)
    for label in range(n_classes):
        group = by_class[label]
        shuffled = [group[j] for j in rng.permutation(len(group))]
        for unit in sorted(shuffled, key=len, reverse=True):  # stable: ties keep the shuffle
            f = min(range(k), key=lambda j: (counts[j, label], len(folds[j]), j))
            folds[f] += unit
            for i in unit:
                counts[f, scan.labels[i]] += 1
    return [sorted(f) for f in folds]


def train_quick(
    config: RunConfig,
    data: PreparedData,
    train_rows: Sequence[int],
    held_rows: Sequence[int] = (),
    emit: Callback | None = None,
    stop_event: threading.Event | None = None,
) -> Setup:
    """Train config's model on train_rows for config.train.epochs (no early stopping, no run folder).

    Raises StopRequested when stop_event is set. held_rows only serve as the Setup's "val" rows.
    """
    sub = dataclasses.replace(data, split=Split(sorted(train_rows), sorted(held_rows), []))
    device = resolve_device(config.train.device)
    if device.type == "cpu":
        configure_cpu_threads()
    s = setup(config, sub, device)
    for epoch in range(1, config.train.epochs + 1):
        models.set_phase(s.model, config.model, epoch)
        loss, _, _ = train_one_epoch(s.epoch_inputs(), epoch, emit, stop_event)
        if not math.isfinite(loss):
            raise nan_error(epoch, s.optimizer)
    return s


def probabilities(s: Setup, rows: Sequence[int]) -> np.ndarray:
    """Softmax probabilities (len(rows), classes) of the trained model on images[rows]."""
    index = torch.as_tensor(list(rows), dtype=torch.long, device=s.images.device)
    logits = predict_logits(s.model, s.images, s.ctx, rows=index)
    return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)


@dataclass
class KFoldResult:
    data: PreparedData
    folds: list[list[int]]  # image indexes held out by each fold
    indices: list[int]  # every held-out image, sorted
    probs: np.ndarray  # (len(indices), classes): out-of-fold probabilities, row j is indices[j]
    fold_accuracy: list[float]  # accuracy of each fold's model on the images it held out
    seconds: float
    resumed: int = 0  # folds read back from an interrupted check
    state_dir: Path | None = None

    @property
    def labels(self) -> np.ndarray:
        """Given labels of indices."""
        return np.asarray([self.data.scan.labels[i] for i in self.indices], dtype=np.int64)

    @property
    def oof_accuracy(self) -> float:
        """Accuracy of the out-of-fold predictions over every held-out image."""
        return float((self.probs.argmax(1) == self.labels).mean())

    def per_class(self) -> dict[str, dict[str, float]]:
        """Per class: mean, sd, min and max over folds of its held-out recall."""
        pos = {i: j for j, i in enumerate(self.indices)}
        out: dict[str, dict[str, float]] = {}
        for c, name in enumerate(self.data.classes):
            recalls = []
            for fold in self.folds:
                rows = [pos[i] for i in fold if self.data.scan.labels[i] == c]
                if rows:
                    recalls.append(float((self.probs[rows].argmax(1) == c).mean()))
            out[name] = _spread(recalls)
        return out

    def report(self) -> dict[str, Any]:
        """`train --folds`' cross-validation report: mean +- sd accuracy, the spread per class."""
        acc = _spread(self.fold_accuracy)
        return {
            "folds": len(self.folds),
            "n_images": len(self.indices),
            "val_accuracy_mean": acc["mean"],
            "val_accuracy_sd": acc["sd"],
            "fold_accuracies": list(self.fold_accuracy),
            "per_class": self.per_class(),
            "oof_accuracy": self.oof_accuracy,
            "seconds": self.seconds,
        }


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "sd": float("nan"), "min": float("nan"),
                "max": float("nan")}  # fmt: skip
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "min": float(arr.min()), "max": float(arr.max())}


def _state_dir(config: RunConfig, data: PreparedData, folds: list[list[int]], scope: str) -> Path:
    """Where this exact check keeps its finished folds: keyed by config, files, labels and folds."""
    cfg = config.to_dict()
    cfg.pop("name", None)
    key = hashlib.sha256()
    key.update(json.dumps([STATE_VERSION, scope, cfg, folds], sort_keys=True).encode())
    for i in range(data.scan.n_images):
        key.update(f"{data.scan.files[i]}\x00{data.scan.labels[i]}\n".encode())
    return workspace.home_path() / "kfold" / key.hexdigest()[:24]


def _load_fold(folder: Path | None, f: int, rows: list[int]) -> tuple[np.ndarray, float] | None:
    if folder is None:
        return None
    path = folder / f"fold-{f}.npz"
    try:
        with np.load(path) as saved:
            if saved["rows"].tolist() != rows:
                return None
            return saved["probs"].astype(np.float64), float(saved["seconds"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:  # damaged: train that fold again
        log.warning("ignoring unreadable saved fold %s (%s)", path, exc)
        return None


def _save_fold(folder: Path | None, f: int, rows: list[int], probs: np.ndarray, secs: float):
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with workspace.temp_file(folder, ".fold-", ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rows=np.asarray(rows), probs=probs, seconds=secs)
            os.replace(tmp, folder / f"fold-{f}.npz")
    except OSError as exc:  # best-effort, like the decode cache: the check itself goes on
        workspace.warn_once(f"kfold-{folder}", f"could not save fold results in {folder} "
                            f"({exc.strerror or exc}); a stopped check will start over")  # fmt: skip


def cross_validate(
    config: RunConfig,
    k: int = 5,
    *,
    scope: str = "all",
    stage: str = "check-labels",
    data: PreparedData | None = None,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    resume: bool = True,
) -> KFoldResult:
    """Train k quick models (each on the other folds) and collect out-of-fold probabilities.

    scope "all" holds every image out once (the label check); "trainval" only the train and val
    splits (cross-validation before a final model, the test split kept apart). Finished folds are
    saved in the workspace and reused by the same check (`resume=False` starts over). Raises
    StopRequested when stop_event is set.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    config.validate()
    models.is_transfer(config.model.name)  # an unknown model fails before any data work
    t0 = time.perf_counter()

    def emit(event) -> None:
        for cb in callbacks:
            cb(event)

    if data is None:
        data = prepare(config.data, progress=lambda d, t, s: emit(Preparing(d, t, s)))
    models.fetch_weights(config.model, lambda d, t, what: emit(Preparing(d, t, what)))
    pool = None if scope == "all" else data.split.train + data.split.val
    folds = assign_folds(data.scan, k, config.data.seed, pool)
    folder = _fold_folder(config, data, folds, scope, resume)
    indices = sorted(i for f in folds for i in f)
    pos = {i: j for j, i in enumerate(indices)}
    probs = np.zeros((len(indices), len(data.classes)), dtype=np.float64)
    accuracy: list[float] = []
    resumed = 0
    for f, held in enumerate(folds):
        p, secs, reused = _fold(config, data, folds, f, scope, folder, emit, stop_event)
        resumed += reused
        probs[[pos[i] for i in held]] = p
        y = np.asarray([data.scan.labels[i] for i in held])
        accuracy.append(float((p.argmax(1) == y).mean()))
        emit(FoldEnd(stage, f + 1, k, accuracy[-1], secs, reused))
        log.info("fold %d/%d: held-out accuracy %.4f", f + 1, k, accuracy[-1])
    return KFoldResult(data, folds, indices, probs, accuracy, time.perf_counter() - t0, resumed,
                       folder)  # fmt: skip


def _fold_folder(
    config: RunConfig, data: PreparedData, folds: list[list[int]], scope: str, resume: bool
) -> Path | None:
    """The folder keeping this check's finished folds (emptied unless resuming); None when the
    workspace cannot hold them (the folds are then trained, not saved)."""
    folder = _state_dir(config, data, folds, scope)
    try:
        if not resume and folder.is_dir():
            for old in folder.glob("fold-*.npz"):
                old.unlink()
    except OSError:
        return None
    return folder


def _fold(
    config: RunConfig,
    data: PreparedData,
    folds: list[list[int]],
    f: int,
    scope: str,
    folder: Path | None,
    emit: Callback,
    stop_event: threading.Event | None,
) -> tuple[np.ndarray, float, bool]:
    """Fold f's held-out probabilities, its seconds, and whether they were saved ones (else a
    quick model is trained on the other folds and its probabilities saved)."""
    t_fold = time.perf_counter()
    held = folds[f]
    saved = _load_fold(folder, f, held)
    if saved is not None:
        return saved[0], saved[1], True
    rest = [i for g, other in enumerate(folds) if g != f for i in other]
    # cross-validation estimates the final run's model, so the folds get its recipe too
    fold_config = recipe.resolve(config, len(rest))[0] if scope == "trainval" else config
    s = train_quick(fold_config, data, rest, held, emit, stop_event)
    p = probabilities(s, held)
    secs = time.perf_counter() - t_fold
    _save_fold(folder, f, held, p, secs)
    return p, secs, False


def train_with_folds(
    config: RunConfig,
    k: int,
    *,
    final: bool = True,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
) -> dict[str, Any]:
    """`train --folds K` (CLI and Train page): cross-validate over train+val, then (final=True)
    train the run as usual; returns its summary with "cross_validation" added (the run's
    summary.json keeps it too), or {"cross_validation": ...} alone when final is False."""
    from . import runs

    def quiet(event) -> None:  # fold models' batch ticks would read as the final run's
        if event.kind in ("FoldEnd", "Preparing"):
            for cb in callbacks:
                cb(event)

    try:
        cv = cross_validate(config, k, scope="trainval", stage="cross-validation",
                            callbacks=[quiet], stop_event=stop_event).report()  # fmt: skip
    except StopRequested:  # as fit() stopped before its run exists: the finished folds are kept
        log.info("stopped during cross-validation; no run was created")
        return {"status": "stopped", "run_id": None, "epochs_run": 0, "stopped_early": False}
    if not final:
        return {"cross_validation": cv}
    summary = train.fit(config, callbacks=callbacks, stop_event=stop_event)
    if summary.get("run_id"):
        summary = runs.update_summary(runs.load_run(summary["run_id"]), cross_validation=cv)
    return summary


def small_data(counts: dict[str, int], per_class: int = 50) -> bool:
    """True when the data set is small enough that one split's accuracy is noise (the Train page
    then offers cross-validation): fewer than per_class images in its median class."""
    return bool(counts) and float(np.median(list(counts.values()))) < per_class


__all__ = [
    "KFoldResult", "StopRequested", "assign_folds", "cross_validate", "probabilities",
    "quick", "small_data", "train_quick", "train_with_folds",
]  # fmt: skip
