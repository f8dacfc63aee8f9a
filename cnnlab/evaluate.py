"""How good is a trained run, and why: test metrics, confusion, worst predictions, curve diagnosis.

`evaluate_run` rebuilds the run's data exactly as training did (same config, same seed -> same
split; checked against split.json) and scores the best checkpoint with the same validation
preprocessing as `train.evaluate`, so its accuracy equals the summary's test_accuracy.
`diagnose` reads the per-epoch metrics and says whether the run overfits, underfits or is healthy,
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
from . import runs, train
from .config import RunConfig
from .device import resolve_device
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
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
    ctx: train._Ctx  # validation preprocessing: device, mean/std, channels_last, amp


def _device(device: str | None, config: RunConfig) -> torch.device:
    """The asked-for device; else the run's own (same numerics as its test pass) if present here."""
    if device:
        return resolve_device(device)
    try:
        return resolve_device(config.train.device)
    except ConfigError:  # e.g. trained with device="cuda", evaluated on a laptop
        return resolve_device("auto")


def eval_context(config: RunConfig, ckpt: dict[str, Any], device: str | None = None) -> train._Ctx:
    """The evaluation-only context (no augmentation) from a checkpoint's mean/std and config."""
    dev = _device(device, config)
    return train._Ctx(
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
    model, config, classes, ckpt = runs.load_checkpoint(r, "best", device=dev)
    ctx = eval_context(config, ckpt, str(dev.type))
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(r, model, config, classes, ctx)


def prepare_run_data(loaded: LoadedRun) -> data_mod.PreparedData:
    """Rebuild the run's data set and check it still splits into the files recorded in split.json."""
    prepared = data_mod.prepare(loaded.config.data)
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
        if r.get("run_dir") and (Path(r["run_dir"]) / "best.pt").is_file()
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

    def confusion_normalized(self) -> np.ndarray:
        """Row-normalised confusion (each true class sums to 1; empty rows stay 0)."""
        rows = self.confusion.sum(axis=1, keepdims=True)
        return np.divide(self.confusion, rows, out=np.zeros(self.confusion.shape), where=rows > 0)

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
    ctx: train._Ctx,
    classes: list[str],
    paths: list[str],
    split: str,
) -> EvalResult:
    """Score uint8 images (N, 3, S, S) with validation preprocessing; the core of every evaluate."""
    if images.shape[0] == 0:
        raise DataError(f"the {split} split is empty: there is nothing to evaluate")
    logits = train.predict_logits(model, images, ctx).float().cpu()
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
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
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


# ---------------------------------------------------------------- overfitting diagnosis
LOW_ACCURACY = 0.6  # both accuracies under this at the end: the model has not learnt the task
MIN_RISE_EPOCHS = 2  # val loss must rise this many epochs after its best to call it overfitting
GAP_GROWTH = 0.05  # train/val accuracy gap growth (absolute) that also signals overfitting
STILL_FALLING = 0.03  # mean relative train-loss drop per epoch (last 3) that means "not converged"

SUGGESTIONS = {
    "overfitting": (
        "Regularise: stronger augmentation (the 'standard' or 'strong' preset), more dropout or "
        "weight decay, and early stopping (patience 3-5) so the best epoch is kept; more training "
        "data helps most."
    ),
    "gap": (
        "Train accuracy is well above validation accuracy: add augmentation or dropout, or collect "
        "more images per class."
    ),
    "underfitting": (
        "The model has not fitted the training data: train longer, use a bigger model (more "
        "channels or blocks, or a pretrained transfer model), or lower regularisation "
        "(dropout, weight decay, augmentation)."
    ),
    "still_improving": (
        "The training loss was still falling at the last epoch: train for more epochs."
    ),
    "unstable": (
        "The validation loss jumps around: lower the learning rate (try the LR finder) or raise "
        "the batch size."
    ),
    "healthy": "Curves look healthy: to gain more, try more data or a pretrained transfer model.",
}


@dataclass
class Finding:
    kind: str  # overfitting, gap, underfitting, still_improving, unstable, healthy
    message: str  # what the curves show, with epochs and numbers
    suggestion: str  # one concrete thing to try
    from_epoch: int | None = None  # where it starts (overfitting: the first epoch after the best)


@dataclass
class Diagnosis:
    best_epoch: int | None  # epoch with the lowest val loss (None without epochs)
    last_epoch: int
    gap: float | None  # train accuracy - val accuracy at the best epoch
    final_gap: float | None  # ... at the last epoch
    overfitting_from: int | None  # first epoch of the overfitting region, if any
    status: str  # "overfitting", "underfitting", "healthy" or "too_short"
    findings: list[Finding]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return {
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
            "gap": self.gap,
            "final_gap": self.final_gap,
            "overfitting_from": self.overfitting_from,
            "status": self.status,
            "findings": [vars(f) for f in self.findings],
        }


def _num(row: dict[str, Any], key: str) -> float:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and v is not None else float("nan")


def diagnose(rows: list[dict[str, Any]]) -> Diagnosis:
    """Read per-epoch metrics rows (runs.read_metrics) and say what the curves mean."""
    rows = [r for r in rows if math.isfinite(_num(r, "val_loss"))]
    if not rows:
        return Diagnosis(None, 0, None, None, None, "too_short", [])
    epochs = [int(r["epoch"]) for r in rows]
    val = np.array([_num(r, "val_loss") for r in rows])
    tr = np.array([_num(r, "train_loss") for r in rows])
    tr_acc = np.array([_num(r, "train_acc") for r in rows])
    va_acc = np.array([_num(r, "val_acc") for r in rows])
    b = int(np.argmin(val))
    best_epoch, last = epochs[b], len(rows) - 1
    gap, final_gap = float(tr_acc[b] - va_acc[b]), float(tr_acc[last] - va_acc[last])
    findings: list[Finding] = []
    over_from = None
    if len(rows) < 3:
        return Diagnosis(best_epoch, epochs[last], gap, final_gap, None, "too_short", [
            Finding("too_short", f"only {len(rows)} epoch(s): too few to judge the curves",
                    SUGGESTIONS["still_improving"])
        ])  # fmt: skip

    after = last - b  # epochs after the best
    if after >= MIN_RISE_EPOCHS:
        train_fell = tr[last] < tr[b]
        gap_grew = final_gap - gap >= GAP_GROWTH
        if train_fell or gap_grew:
            over_from = epochs[b + 1]
            findings.append(
                Finding(
                    "overfitting",
                    f"validation loss was lowest at epoch {best_epoch} ({val[b]:.3f}) and rose "
                    f"for {after} epochs to {val[last]:.3f} while the training loss "
                    f"{'kept falling' if train_fell else 'stalled'} ({tr[b]:.3f} -> "
                    f"{tr[last]:.3f}): the model memorises the training images from epoch "
                    f"{over_from}.",
                    SUGGESTIONS["overfitting"],
                    over_from,
                )
            )
    if not findings and final_gap > 0.15:
        findings.append(
            Finding(
                "gap",
                f"train accuracy {tr_acc[last]:.1%} vs validation {va_acc[last]:.1%} at the last "
                f"epoch (gap {final_gap:.1%}).",
                SUGGESTIONS["gap"],
            )
        )
    underfit = max(tr_acc[last], va_acc[last]) < LOW_ACCURACY
    window = tr[max(0, last - 2) :]
    drop_per_epoch = (window[0] - window[-1]) / max(abs(window[0]), 1e-9) / max(len(window) - 1, 1)
    still_falling = drop_per_epoch > STILL_FALLING
    if underfit:
        findings.append(
            Finding(
                "underfitting",
                f"both accuracies are low at the end (train {tr_acc[last]:.1%}, validation "
                f"{va_acc[last]:.1%}; train loss {tr[last]:.3f}).",
                SUGGESTIONS["underfitting"]
                if not still_falling
                else SUGGESTIONS["underfitting"]
                + " The training loss is still falling, so more epochs come first.",
            )
        )
    elif still_falling and over_from is None and b == last:
        findings.append(
            Finding(
                "still_improving",
                f"train loss still fell over the last epochs ({window[0]:.3f} -> "
                f"{window[-1]:.3f}) and the best epoch is the last one.",
                SUGGESTIONS["still_improving"],
            )
        )
    ups = int(np.sum(np.diff(val) > 0))
    if over_from is None and len(rows) >= 5 and ups >= (len(rows) - 1) / 2:
        findings.append(
            Finding(
                "unstable",
                f"validation loss rose in {ups} of {len(rows) - 1} epochs without a clear trend.",
                SUGGESTIONS["unstable"],
            )
        )
    if over_from is not None:
        status = "overfitting"
    elif underfit:
        status = "underfitting"
    else:
        status = "healthy"
    if not findings:
        findings.append(
            Finding(
                "healthy",
                f"validation loss fell to its lowest at epoch {best_epoch} ({val[b]:.3f}) and "
                f"train/validation accuracy gap is {final_gap:.1%}.",
                SUGGESTIONS["healthy"],
            )
        )
    return Diagnosis(best_epoch, epochs[last], gap, final_gap, over_from, status, findings)


def diagnose_run(run: str | Path | runs.Run) -> Diagnosis:
    """diagnose() on a run's metrics.jsonl."""
    return diagnose(runs.read_metrics(runs.load_run(run)))
