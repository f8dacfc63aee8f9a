"""One verdict per run from its per-epoch curves: healthy, overfitting, underfitting, unstable,
plateau (val loss flat while train loss falls) or too early to tell, with the evidence quoted and
one suggestion.

Trends are read from lightly smoothed curves, and a change only counts when it is larger than the
curve's own epoch-to-epoch noise (and a few percent of its level), so a +0.3 % wiggle is never
"overfitting". Pure functions of metrics rows (as runs.read_metrics returns them), tested on
synthetic curves of each kind; `evaluate.diagnose_run` applies them to a run on disk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_EPOCHS = 4  # fewer finished epochs than this: too early to tell
LOW_ACCURACY = 0.6  # both accuracies under this at the end: the model has not learnt the task
MIN_RISE_EPOCHS = 2  # val loss must stay up this many epochs after its best to call it overfitting
NOISE_K = 2.0  # a change counts when it is above this many times the epoch-to-epoch noise...
MIN_REL_CHANGE = 0.03  # ...and above this share of the curve's level (a smooth curve has no noise)
GAP = 0.15  # final train - val accuracy above this (with val loss not falling): overfitting
UNSTABLE_NOISE = 0.15  # val-loss noise above this share of its level: the curve jumps around...
# ...if val accuracy jumps too (when recorded). A converged run's loss sits near its floor (label
# smoothing alone keeps it ~0.1), where a ±0.03 jitter is a fifth of its level while accuracy
# holds at 99 %: the demo run was called unstable for that.
UNSTABLE_ACC_NOISE = 0.02
# A val accuracy that drops this much in one epoch jumps too, even when it zigzags too rarely for
# its noise (a median) to show it: SGD at lr 0.08 without BatchNorm on the digits fell 95.6 % ->
# 88.1 % once while its val loss jumped ±44 % of its level, and was called healthy.
UNSTABLE_ACC_DROP = 0.05
PLATEAU_EPOCHS = 4  # val loss within its noise for this many epochs while train loss falls...
PLATEAU_TRAIN_DROP = 0.09  # ...by more than this share of where it was...
PLATEAU_ACCURACY = 0.9  # ...at a val accuracy under this (a converged run levels off up high)

LABELS = {
    "healthy": "Healthy",
    "overfitting": "Overfitting",
    "underfitting": "Underfitting",
    "unstable": "Unstable",
    "too_early": "Too early to tell",
    "plateau": "Plateau",
}

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
        "The validation loss was still falling at the last epoch: train for more epochs."
    ),
    "unstable": (
        "The validation loss jumps around: lower the learning rate (try the LR finder) or raise "
        "the batch size."
    ),
    "too_early": "Train for more epochs (at least 4) before judging the curves.",
    "plateau": (
        "More epochs of this will not help: the training loss falls but validation does not "
        "follow. Check the per-class recall on the Evaluate page (a class never predicted?), "
        "then try a learning-rate schedule or a lower learning rate, more augmentation, class "
        "weights for an imbalanced set, or a pretrained transfer model."
    ),
    "healthy": "Curves look healthy: to gain more, try more data or a pretrained transfer model.",
}


@dataclass
class Finding:
    kind: str  # the verdict: healthy, overfitting, underfitting, unstable, plateau, too_early
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
    status: str  # the verdict: a key of LABELS
    findings: list[Finding]  # exactly one: the verdict with its evidence

    @property
    def label(self) -> str:
        """The verdict in words ("Too early to tell")."""
        return LABELS.get(self.status, self.status)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return {
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
            "gap": self.gap,
            "final_gap": self.final_gap,
            "overfitting_from": self.overfitting_from,
            "status": self.status,
            "label": self.label,
            "findings": [vars(f) for f in self.findings],
        }


def _num(row: dict[str, Any], key: str) -> float:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) else float("nan")


def smooth(y: np.ndarray) -> np.ndarray:
    """Centred 3-epoch moving average (2 at the ends): one noisy epoch cannot make a trend."""
    if len(y) < 3:
        return y.astype(float)
    padded = np.concatenate([[np.nan], y, [np.nan]])
    window = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    return np.nanmean(window, axis=0)


def noise(y: np.ndarray) -> float:
    """Epoch-to-epoch noise (a standard deviation) from the zigzags: how far each local peak or
    dip sits from its neighbours' mean. A smooth curve (even a steeply bending one) has none;
    the median ignores one outlier."""
    y = y[np.isfinite(y)]
    if len(y) < 3:
        return 0.0
    resid = y[1:-1] - (y[:-2] + y[2:]) / 2  # var = 1.5 * sigma^2 for independent noise
    zigzag = (y[1:-1] - y[:-2]) * (y[2:] - y[1:-1]) < 0  # a peak or a dip, not a bend
    return float(1.4826 * np.median(np.abs(resid) * zigzag) / math.sqrt(1.5))


def threshold(y: np.ndarray) -> float:
    """The smallest change of y that counts as a real move, not noise."""
    level = float(np.nanmedian(np.abs(y))) if len(y) else 0.0
    return max(NOISE_K * noise(y), MIN_REL_CHANGE * level, 1e-12)


def trend(y: np.ndarray, last: int = 3) -> tuple[str, float, float]:
    """('falling' | 'rising' | 'flat', first, last) over the last `last` epochs, from a straight
    line fitted to them and judged against the whole curve's noise."""
    window = y[-last:]
    if len(window) < 2 or not np.all(np.isfinite(window)):
        return "flat", float(window[0]), float(window[-1])
    slope = np.polyfit(np.arange(len(window)), window, 1)[0]
    change = slope * (len(window) - 1)
    word = "flat"
    if abs(change) > threshold(y):
        word = "falling" if change < 0 else "rising"
    return word, float(window[0]), float(window[-1])


def _too_early(epochs: list[int], val: np.ndarray, tr: np.ndarray) -> str:
    n = len(epochs)
    if n == 0:
        return "no finished epoch yet."
    if n == 1:
        return f"only 1 epoch (train loss {tr[0]:.3f}, validation loss {val[0]:.3f}): no trend yet."

    def moved(y: np.ndarray) -> str:
        rel = (y[-1] - y[0]) / max(abs(y[0]), 1e-12)
        word = "about flat" if abs(rel) < MIN_REL_CHANGE else ("fell" if rel < 0 else "rose")
        return f"{word} ({y[0]:.3f} -> {y[-1]:.3f})"

    return (
        f"only {n} epochs: validation loss {moved(val)}, train loss {moved(tr)}; a trend needs "
        f"at least {MIN_EPOCHS} epochs."
    )


def _plateau_start(val: np.ndarray, tr: np.ndarray) -> int | None:
    """The first index from which val loss stays within its noise to the end (at least
    PLATEAU_EPOCHS epochs) while the train loss falls by more than PLATEAU_TRAIN_DROP; or None."""
    last = len(val) - 1
    limit = threshold(val)
    for s in range(0, last - PLATEAU_EPOCHS + 2):
        if np.all(np.abs(val[s:] - val[s]) <= limit):
            dropped = (tr[s] - tr[last]) / max(abs(tr[s]), 1e-12)
            return s if dropped > PLATEAU_TRAIN_DROP and dropped * tr[s] > limit else None
    return None


@dataclass(frozen=True)
class _Curves:
    """A run's epochs with a finite val loss, as arrays, and where its lowest val loss is."""

    epochs: list[int]
    val: np.ndarray  # val loss per epoch
    tr: np.ndarray  # train loss
    tr_acc: np.ndarray
    va_acc: np.ndarray
    b: int  # index of the lowest val loss
    last: int  # index of the last epoch

    @property
    def final_gap(self) -> float:
        """Train minus val accuracy at the last epoch (NaN when either is missing)."""
        return float(self.tr_acc[self.last] - self.va_acc[self.last])


Rule = Callable[[_Curves], Finding | None]


def _too_few(c: _Curves) -> Finding | None:
    """Fewer than MIN_EPOCHS epochs: too early to tell."""
    if len(c.epochs) >= MIN_EPOCHS:
        return None
    return Finding("too_early", _too_early(c.epochs, c.val, c.tr), SUGGESTIONS["too_early"])


def _unstable(c: _Curves) -> Finding | None:
    """Val loss jumping by more than UNSTABLE_NOISE of its level, with val accuracy jumping too."""
    level = float(np.median(c.val))
    val_noise = noise(c.val)
    acc_jumps = (
        not np.all(np.isfinite(c.va_acc))
        or noise(c.va_acc) > UNSTABLE_ACC_NOISE
        or float(np.max(-np.diff(c.va_acc))) > UNSTABLE_ACC_DROP
    )
    if not (level > 0 and val_noise > UNSTABLE_NOISE * level and acc_jumps):
        return None
    ups = int(np.sum(np.diff(c.val) > 0))
    return Finding(
        "unstable",
        f"validation loss jumps by about ±{val_noise:.3f} from epoch to epoch "
        f"({val_noise / level:.0%} of its level {level:.3f}) and rose in {ups} of "
        f"{len(c.epochs) - 1} epochs.",
        SUGGESTIONS["unstable"],
    )


def _val_rising(c: _Curves) -> Finding | None:
    """Overfitting: val loss rose beyond its noise after its best epoch, train loss not rising."""
    val, tr, b, last = c.val, c.tr, c.b, c.last
    sval, str_ = smooth(val), smooth(tr)
    rise = float(sval[last] - sval[b])
    after = last - b
    if after < MIN_RISE_EPOCHS or rise <= threshold(val):
        return None
    train_fell = str_[last] < str_[b] - threshold(tr)
    train_rose = str_[last] > str_[b] + threshold(tr)
    if train_rose:
        return None
    from_epoch = c.epochs[b + 1]
    return Finding(
        "overfitting",
        f"validation loss was lowest at epoch {c.epochs[b]} ({val[b]:.3f}), then rose "
        f"over {after} epochs to {val[last]:.3f} (smoothed +{rise:.3f}, more than "
        f"the ±{noise(val):.3f} noise between epochs) while the training loss "
        f"{'kept falling' if train_fell else 'stayed flat'} ({tr[b]:.3f} -> "
        f"{tr[last]:.3f}): the model memorises the training images from epoch "
        f"{from_epoch}.",
        SUGGESTIONS["overfitting"],
        from_epoch,
    )


def _accuracy_gap(c: _Curves) -> Finding | None:
    """Overfitting: train accuracy GAP above val at the end while val loss is not falling."""
    val_word, val_first, val_last = trend(c.val)
    final_gap = c.final_gap
    if not (final_gap > GAP and val_word != "falling"):
        return None
    return Finding(
        "overfitting",
        f"train accuracy {c.tr_acc[c.last]:.1%} vs validation {c.va_acc[c.last]:.1%} at the last "
        f"epoch (a gap of {final_gap:.1%}) while the validation loss is {val_word} "
        f"({val_first:.3f} -> {val_last:.3f}).",
        SUGGESTIONS["gap"],
    )


def _underfitting(c: _Curves) -> Finding | None:
    """Both accuracies under LOW_ACCURACY at the end; what comes first follows the train loss."""
    tr_acc, va_acc, last = c.tr_acc[c.last], c.va_acc[c.last], c.last
    accs = [a for a in (tr_acc, va_acc) if math.isfinite(a)]
    if not accs or max(accs) >= LOW_ACCURACY:
        return None
    train_word, tr_first, tr_last = trend(c.tr)
    more = {
        "falling": f"The training loss is still falling ({tr_first:.3f} -> {tr_last:.3f} "
        "over the last epochs), so more epochs come first.",
        "flat": f"The training loss has levelled off ({tr_first:.3f} -> {tr_last:.3f}): "
        "a bigger model or a higher learning rate comes first.",
        "rising": f"The training loss is rising ({tr_first:.3f} -> {tr_last:.3f}): lower "
        "the learning rate first.",
    }[train_word]
    return Finding(
        "underfitting",
        f"both accuracies are low at the end (train {tr_acc:.1%}, validation "
        f"{va_acc:.1%}; train loss {c.tr[last]:.3f}).",
        f"{SUGGESTIONS['underfitting']} {more}",
    )


def _plateau(c: _Curves) -> Finding | None:
    """Val loss flat within its noise while train loss falls, at a val accuracy under
    PLATEAU_ACCURACY."""
    val, tr, last = c.val, c.tr, c.last
    start = _plateau_start(val, tr)
    if start is None or not math.isfinite(c.va_acc[last]) or c.va_acc[last] >= PLATEAU_ACCURACY:
        return None
    return Finding(
        "plateau",
        f"validation loss has hardly moved since epoch {c.epochs[start]} ({val[start]:.3f} -> "
        f"{val[last]:.3f}, within its ±{threshold(val):.3f} noise) while the training loss "
        f"kept falling ({tr[start]:.3f} -> {tr[last]:.3f}); validation accuracy "
        f"{c.va_acc[last]:.1%} at the end.",
        SUGGESTIONS["plateau"],
    )


def _healthy(c: _Curves) -> Finding:
    """None of the above: healthy, saying so when val loss was still falling at the end."""
    val_word, val_first, val_last = trend(c.val)
    message = (
        f"validation loss fell to its lowest at epoch {c.epochs[c.b]} ({c.val[c.b]:.3f}) and the "
        f"train/validation accuracy gap is {c.final_gap:.1%} at the end."
    )
    if val_word == "falling":
        message += f" It was still falling at the end ({val_first:.3f} -> {val_last:.3f})."
        return Finding("healthy", message, SUGGESTIONS["still_improving"])
    return Finding("healthy", message, SUGGESTIONS["healthy"])


# The ladder: the first rule that finds something is the verdict (_healthy always does).
RULES: tuple[Rule, ...] = (
    _too_few,
    _unstable,
    _val_rising,
    _accuracy_gap,
    _underfitting,
    _plateau,
    _healthy,
)


def _curves(rows: list[dict[str, Any]]) -> _Curves:
    """The rows' metrics as arrays (rows with a finite val loss, at least one)."""
    val = np.array([_num(r, "val_loss") for r in rows])
    return _Curves(
        epochs=[int(r["epoch"]) for r in rows],
        val=val,
        tr=np.array([_num(r, "train_loss") for r in rows]),
        tr_acc=np.array([_num(r, "train_acc") for r in rows]),
        va_acc=np.array([_num(r, "val_acc") for r in rows]),
        b=int(np.argmin(val)),
        last=len(rows) - 1,
    )


def _or_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def diagnose(rows: list[dict[str, Any]]) -> Diagnosis:
    """Read per-epoch metrics rows (runs.read_metrics) and give one verdict with its evidence:
    the first of RULES that finds something."""
    rows = [r for r in rows if math.isfinite(_num(r, "val_loss"))]
    if not rows:
        empty = np.array([])
        return Diagnosis(None, 0, None, None, None, "too_early", [
            Finding("too_early", _too_early([], empty, empty), SUGGESTIONS["too_early"])
        ])  # fmt: skip
    c = _curves(rows)
    finding = next(f for f in (rule(c) for rule in RULES) if f is not None)
    gap = float(c.tr_acc[c.b] - c.va_acc[c.b])
    return Diagnosis(
        c.epochs[c.b],
        c.epochs[c.last],
        _or_none(gap),
        _or_none(c.final_gap),
        finding.from_epoch,
        finding.kind,
        [finding],
    )
