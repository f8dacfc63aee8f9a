"""Suspected label errors: confident learning on out-of-fold probabilities, plus conflicting copies.

`kfold.cross_validate` gives every image a probability from a model that never saw it; cleanlab's
`find_label_issues` (confident learning, Northcutt et al. 2021; a well-kept implementation, so
not rewritten here) picks the images whose given label those models doubt, ranked by
self-confidence (the out-of-fold probability of the given label, lowest first). Copies of one
picture carrying different labels (see `duplicates`) are suspects too.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import kfold
from .config import RunConfig
from .events import Callback

log = logging.getLogger(__name__)


def rank_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[list[int], set[int]]:
    """(flagged rows, most likely errors first; the rows confident learning itself flags).

    Flagged: cleanlab's confident-learning issues (prune_by_noise_rate, conservative when few
    labels are wrong) plus its predicted_neq_given issues (the out-of-fold model picks another
    class), ranked by cleanlab's self-confidence score (the probability of the given label).
    On the demo digits with 20 planted errors, confident learning alone flagged 15-17 of them;
    the union ranked by self-confidence put all 20 in the first 22.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    present = np.unique(labels)
    if len(present) < 2:
        return [], set()
    if len(present) < probs.shape[1]:  # cleanlab wants every class present: keep those that are
        sub = probs[:, present]
        probs = sub / np.clip(sub.sum(1, keepdims=True), 1e-12, None)
        remap = {int(c): j for j, c in enumerate(present)}
        labels = np.asarray([remap[int(c)] for c in labels])
    confident = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    differs = find_label_issues(labels, probs, filter_by="predicted_neq_given")
    scores = get_label_quality_scores(labels, probs, method="self_confidence")
    rows = np.flatnonzero(confident | differs)
    ranked = sorted(rows.tolist(), key=lambda j: (scores[j], j))
    return ranked, set(np.flatnonzero(confident).tolist())


def _conflicts(result: kfold.KFoldResult) -> dict[int, str]:
    """{image index: reason} for copies whose label differs from their group's majority."""
    scan = result.data.scan
    held = set(result.indices)
    out: dict[int, str] = {}
    for g in scan.duplicate_groups():
        members = [i for i in g.members if i in held]
        labels = [scan.labels[i] for i in members]
        if len(set(labels)) < 2:
            continue
        counts = Counter(labels).most_common()
        top = counts[0][1]
        majority = {c for c, n in counts if n == top}
        for i in members:
            if len(majority) == 1 and scan.labels[i] in majority:
                continue  # the majority's copies keep their label; the odd ones out are suspects
            others = [j for j in members if scan.labels[j] != scan.labels[i]]
            where = ", ".join(f"{scan.rel(j)} [{scan.classes[scan.labels[j]]}]" for j in others[:3])
            out[i] = f"{g.kind} copy of {where} with a different label"
    return out


def suspects(result: kfold.KFoldResult) -> list[dict[str, Any]]:
    """The ranked suspects: cleanlab's issues and conflicting copies, most likely errors first."""
    scan = result.data.scan
    labels, probs = result.labels, result.probs
    ranked, confident = rank_issues(labels, probs)
    flagged = {
        j: "confident learning: the label is unlikely given the out-of-fold models"
        if j in confident
        else "the out-of-fold model predicts another class"
        for j in ranked
    }
    pos = {i: j for j, i in enumerate(result.indices)}
    for i, reason in _conflicts(result).items():
        j = pos[i]
        flagged[j] = f"{flagged[j]}; {reason}" if j in flagged else reason
    out = []
    for j in sorted(flagged, key=lambda j: (probs[j, labels[j]], j)):
        i = result.indices[j]
        given = int(labels[j])
        ranked = np.argsort(-probs[j])
        suggested = int(ranked[0]) if ranked[0] != given else int(ranked[1])
        out.append(
            {
                "path": scan.rel(i),
                "given": scan.classes[given],
                "suggested": scan.classes[suggested],
                "confidence": round(float(probs[j, suggested]), 4),
                "given_probability": round(float(probs[j, given]), 4),
                "reason": flagged[j],
            }
        )
    return out


def check_labels(
    config: RunConfig,
    folds: int = 5,
    *,
    callbacks: Sequence[Callback] = (),
    stop_event: threading.Event | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """`cnnlab check-labels --json`: suspects (most likely label errors first), folds, seconds,
    oof_accuracy. Stoppable (StopRequested) and resumable per fold (see kfold.cross_validate)."""
    result = kfold.cross_validate(config, folds, scope="all", stage="check-labels",
                                  callbacks=callbacks, stop_event=stop_event, resume=resume)  # fmt: skip
    found = suspects(result)
    log.info("label check: %d suspects among %d images", len(found), len(result.indices))
    return {
        "suspects": found,
        "folds": folds,
        "seconds": result.seconds,
        "oof_accuracy": result.oof_accuracy,
        "fold_accuracies": result.fold_accuracy,
        "n_images": len(result.indices),
        "resumed_folds": result.resumed,
        "classes": list(result.data.classes),
    }
