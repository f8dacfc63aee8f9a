"""How good is a trained run, and why: test metrics, confusion, worst predictions, curve diagnosis.

`evaluate_run` rebuilds the run's data exactly as training did (same config, same seed -> same
split; checked against split.json) and scores the best checkpoint with the same validation
preprocessing as `epoch.evaluate_split`, so its accuracy equals the summary's test_accuracy.
`diagnose` (in cnnlab.diagnosis, re-exported here) reads the per-epoch metrics and says whether the run overfits, underfits or is healthy,
with one concrete thing to try per finding.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from torch import nn

from . import data as data_mod
from . import models, runs
from .config import EVAL_SPLITS, RunConfig
from .device import resolve_device
from .diagnosis import SUGGESTIONS, Diagnosis, Finding, diagnose
from .epoch import BatchContext, predict_logits
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

# The diagnosis names are re-exported: pages and tests call evaluate.diagnose.
__all__ = [
    "SUGGESTIONS",
    "Diagnosis",
    "EvalResult",
    "Finding",
    "LoadedRun",
    "default_run",
    "diagnose",
    "diagnose_run",
    "eval_context",
    "evaluate_folder",
    "evaluate_run",
    "load_for_eval",
    "prepare_run_data",
    "score",
    "usable_runs",
]  # fmt: skip  (diagnosis names re-exported: pages use evaluate.diagnose)

N_WORST = 12  # worst predictions kept for the gallery (highest per-image loss)
N_CONFUSED = 10  # most-confused (true, predicted) pairs reported


# ---------------------------------------------------------------- loading a run's model and data
@dataclass
class LoadedRun:
    """A run's best model with everything needed to score images the way training did."""

    run: runs.Run
    model: nn.Module
    config: RunConfig
    classes: list[str]
    ctx: BatchContext  # validation preprocessing: device, mean/std, channels_last, amp


def _device(device: str | None, config: RunConfig) -> torch.device:
    """The asked-for device; else the run's own (same numerics as its test pass) if present here."""
    if device:
        return resolve_device(device)
    try:
        return resolve_device(config.train.device)
    except ConfigError:  # e.g. trained with device="cuda", evaluated on a laptop
        return resolve_device("auto")


def eval_context(
    config: RunConfig, ckpt: dict[str, Any], device: str | None = None
) -> BatchContext:
    """The evaluation-only context (no augmentation) from a checkpoint's mean/std and config."""
    dev = _device(device, config)
    return BatchContext(
        device=dev,
        mean=tuple(float(v) for v in ckpt["mean"]),
        std=tuple(float(v) for v in ckpt["std"]),
        aug=None,
        # The same layout and precision as fit's final test pass, so the argmax agrees with it.
        channels_last=config.train.channels_last and dev.type != "mps",
        amp=config.train.amp and dev.type == "cuda",
    )


def load_for_eval(run: str | Path | runs.Run, device: str | None = None) -> LoadedRun:
    """Best checkpoint of a run, on the device, with its evaluation context."""
    r = runs.load_run(run)
    dev = _device(device, runs.read_config(r))
    model, config, classes, ckpt = models.load_trained(r, "best", device=dev)
    ctx = eval_context(config, ckpt, str(dev.type))
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(r, model, config, classes, ctx)


def prepare_run_data(loaded: LoadedRun) -> data_mod.PreparedData:
    """Rebuild the run's data set and check it still splits into the files recorded in split.json."""
    prepared = data_mod.prepare(loaded.config.data, overrides=runs.read_overrides(loaded.run))
    recorded = runs.read_split(loaded.run)
    if prepared.classes != loaded.classes:
        raise DataError(
            f"the data set at {loaded.config.data.path} now has classes {prepared.classes}, but run "
            f"{loaded.run.run_id} was trained on {loaded.classes}; restore the data set or "
            "evaluate on a folder with `cnnlab evaluate RUN --folder PATH`"
        )
    root = prepared.scan.root
    for name, files in (recorded.get("files") or {}).items():
        now = [os.path.relpath(prepared.scan.files[i], root) for i in getattr(prepared.split, name)]
        if now != files:
            changed = sorted(set(now) ^ set(files))
            raise DataError(
                f"the data set at {loaded.config.data.path} changed since run "
                f"{loaded.run.run_id} was trained: its {name} split differs "
                f"({len(changed)} file(s) added/removed, e.g. {changed[:3]}). The scores would not "
                "be comparable; restore the files or evaluate on a folder instead"
            )
    return prepared


def usable_runs() -> list[dict[str, Any]]:
    """Summaries of runs that have a best checkpoint (so can be evaluated), newest first."""
    return [
        r
        for r in runs.list_runs()
        if r.get("run_dir") and runs.Run(r["run_id"], Path(r["run_dir"])).best_path.is_file()
    ]


def default_run(summaries: list[dict[str, Any]], active: str | None = None) -> str | None:
    """The run to show first: the active one if usable, else the newest completed, else newest."""
    ids = [r["run_id"] for r in summaries]
    if active in ids:
        return active
    done = [r["run_id"] for r in summaries if r.get("status") == "completed"]
    return (done or ids or [None])[0]


# ---------------------------------------------------------------- results
@dataclass
class EvalResult:
    """Scores of one model on one set of labelled images."""

    classes: list[str]
    split: str  # "test", "val", "train" or "folder"
    y_true: np.ndarray  # int (N,)
    y_pred: np.ndarray  # int (N,)
    probs: np.ndarray  # float32 (N, C) softmax
    losses: np.ndarray  # float32 (N,) per-image cross-entropy
    paths: list[str]  # file of each image (relative to the data set root when known)
    images: torch.Tensor | None = None  # uint8 (N, 3, S, S), for galleries; not in to_dict
    confusion: np.ndarray = field(init=False)  # int (C, C): rows true, columns predicted
    per_class: dict[str, dict[str, float]] = field(init=False)

    def __post_init__(self) -> None:
        labels = list(range(len(self.classes)))
        self.confusion = confusion_matrix(self.y_true, self.y_pred, labels=labels)
        p, r, f1, s = precision_recall_fscore_support(
            self.y_true, self.y_pred, labels=labels, zero_division=0
        )
        self.per_class = {
            c: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f1[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(self.classes)
        }

    @property
    def n(self) -> int:
        """Number of images scored."""
        return int(self.y_true.shape[0])

    @property
    def accuracy(self) -> float:
        """Share of images whose top-1 class is right."""
        return float((self.y_true == self.y_pred).sum() / max(self.n, 1))

    @property
    def loss(self) -> float:
        """Mean cross-entropy (no label smoothing)."""
        return float(self.losses.mean()) if self.n else float("nan")

    def most_confused(self, n: int = N_CONFUSED) -> list[dict[str, Any]]:
        """The off-diagonal cells with the most images, largest first."""
        cm = self.confusion.copy()
        np.fill_diagonal(cm, 0)
        order = np.argsort(cm, axis=None)[::-1]
        out = []
        for flat in order[:n]:
            t, p = np.unravel_index(flat, cm.shape)
            if cm[t, p] == 0:
                break
            out.append(
                {"true": self.classes[t], "predicted": self.classes[p], "count": int(cm[t, p])}
            )
        return out

    def worst(self, n: int = N_WORST) -> list[dict[str, Any]]:
        """Images with the highest loss: confidently wrong first."""
        out = []
        for i in np.argsort(self.losses)[::-1][:n]:
            out.append(
                {
                    "index": int(i),
                    "path": self.paths[i],
                    "true": self.classes[self.y_true[i]],
                    "predicted": self.classes[self.y_pred[i]],
                    "confidence": float(self.probs[i, self.y_pred[i]]),
                    "loss": float(self.losses[i]),
                }
            )
        return out

    def cell_indices(self, true_class: str, predicted_class: str) -> list[int]:
        """Indices of the images in one confusion cell (true row, predicted column)."""
        t, p = self.classes.index(true_class), self.classes.index(predicted_class)
        return [int(i) for i in np.flatnonzero((self.y_true == t) & (self.y_pred == p))]

    def to_dict(self) -> dict[str, Any]:
        """What `cnnlab evaluate --json` prints (keys are only ever added)."""
        loss = self.loss
        return {
            "split": self.split,
            "n": self.n,
            "classes": self.classes,
            "accuracy": self.accuracy,
            "loss": loss if math.isfinite(loss) else None,
            "per_class": self.per_class,
            "confusion_matrix": self.confusion.tolist(),
            "most_confused": self.most_confused(),
            "worst": self.worst(),
        }


def score(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ctx: BatchContext,
    classes: list[str],
    paths: list[str],
    split: str,
) -> EvalResult:
    """Score uint8 images (N, 3, S, S) with validation preprocessing; the core of every evaluate."""
    if images.shape[0] == 0:
        raise DataError(f"the {split} split is empty: there is nothing to evaluate")
    logits = predict_logits(model, images, ctx).float().cpu()
    y = labels.cpu().long()
    losses = F.cross_entropy(logits, y, reduction="none")
    return EvalResult(
        classes=list(classes),
        split=split,
        y_true=y.numpy(),
        y_pred=logits.argmax(1).numpy(),
        probs=logits.softmax(1).numpy(),
        losses=losses.numpy(),
        paths=paths,
        images=images,
    )


def evaluate_run(
    run: str | Path | runs.Run, split: str = "test", device: str | None = None
) -> EvalResult:
    """Score a run's best checkpoint on one of its own splits (default: the held-out test split)."""
    if split not in EVAL_SPLITS:
        raise DataError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    loaded = load_for_eval(run, device)
    prepared = prepare_run_data(loaded)
    images, labels = prepared.subset(split)
    root = prepared.scan.root
    paths = [os.path.relpath(prepared.scan.files[i], root) for i in getattr(prepared.split, split)]
    return score(loaded.model, images, labels, loaded.ctx, loaded.classes, paths, split)


def evaluate_folder(
    run: str | Path | runs.Run, folder: str | Path, device: str | None = None
) -> EvalResult:
    """Score a run on any labelled folder whose class folders are among the run's classes."""
    loaded = load_for_eval(run, device)
    scanned = data_mod.scan(folder)
    unknown = [c for c in scanned.classes if c not in loaded.classes]
    if unknown:
        raise DataError(
            f"{folder} has class folder(s) {unknown} that run {loaded.run.run_id} does not know "
            f"(its classes: {loaded.classes}); remove or rename them"
        )
    if scanned.problems:
        log.warning("%d unusable file(s) in %s were skipped", len(scanned.problems), folder)
    remap = torch.tensor([loaded.classes.index(c) for c in scanned.classes])
    labels = remap[torch.tensor(scanned.labels, dtype=torch.long)]
    images = data_mod.load_tensors(scanned.files, loaded.config.data.image_size)
    paths = [os.path.relpath(f, scanned.root) for f in scanned.files]
    return score(loaded.model, images, labels, loaded.ctx, loaded.classes, paths, "folder")


def diagnose_run(run: str | Path | runs.Run) -> Diagnosis:
    """diagnose() on a run's metrics.jsonl."""
    return diagnose(runs.read_metrics(runs.load_run(run)))
