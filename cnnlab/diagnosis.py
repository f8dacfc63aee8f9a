"""Overfitting / underfitting diagnosis from a run's per-epoch curves, one suggestion per finding.

Pure functions of metrics rows (as runs.read_metrics returns them), so they are tested on
synthetic curves of each kind; `evaluate.diagnose_run` applies them to a run on disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

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
