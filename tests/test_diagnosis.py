"""diagnosis: over/underfitting findings and suggestions on synthetic curves of each kind."""

from __future__ import annotations

import pytest

from cnnlab.diagnosis import diagnose


def _rows(train_loss, val_loss, train_acc, val_acc):
    return [
        {"epoch": i + 1, "train_loss": a, "val_loss": b, "train_acc": c, "val_acc": d}
        for i, (a, b, c, d) in enumerate(zip(train_loss, val_loss, train_acc, val_acc, strict=True))
    ]


def test_diagnose_overfitting() -> None:
    rows = _rows(
        [1.5, 0.9, 0.6, 0.4, 0.25, 0.15, 0.08],
        [1.4, 0.95, 0.8, 0.85, 0.95, 1.1, 1.3],
        [0.5, 0.7, 0.8, 0.88, 0.93, 0.96, 0.99],
        [0.5, 0.68, 0.75, 0.75, 0.74, 0.73, 0.72],
    )
    d = diagnose(rows)
    assert d.status == "overfitting"
    assert d.best_epoch == 3 and d.overfitting_from == 4 and d.last_epoch == 7
    assert d.final_gap == pytest.approx(0.27)
    over = [f for f in d.findings if f.kind == "overfitting"][0]
    assert over.from_epoch == 4 and "epoch 3" in over.message
    assert "augmentation" in over.suggestion and "early stopping" in over.suggestion


def test_diagnose_one_bad_epoch_is_not_overfitting() -> None:
    rows = _rows(
        [1.5, 0.9, 0.6, 0.5, 0.45],
        [1.4, 0.95, 0.8, 0.82, 0.78],
        [0.5, 0.7, 0.8, 0.85, 0.86],
        [0.5, 0.68, 0.75, 0.76, 0.78],
    )
    d = diagnose(rows)
    assert d.status == "healthy" and d.overfitting_from is None and d.best_epoch == 5


def test_diagnose_underfitting() -> None:
    rows = _rows(
        [2.3, 2.2, 2.1, 2.0, 1.9],
        [2.3, 2.25, 2.15, 2.05, 1.95],
        [0.1, 0.15, 0.2, 0.25, 0.3],
        [0.1, 0.14, 0.19, 0.24, 0.28],
    )
    d = diagnose(rows)
    assert d.status == "underfitting"
    kinds = [f.kind for f in d.findings]
    assert "underfitting" in kinds
    under = d.findings[kinds.index("underfitting")]
    assert "bigger model" in under.suggestion and "more epochs" in under.suggestion


def test_diagnose_healthy() -> None:
    rows = _rows(
        [1.2, 0.6, 0.4, 0.35, 0.34, 0.335],
        [1.1, 0.6, 0.45, 0.4, 0.39, 0.389],
        [0.6, 0.82, 0.88, 0.9, 0.9, 0.9],
        [0.6, 0.8, 0.86, 0.88, 0.885, 0.886],
    )
    d = diagnose(rows)
    assert d.status == "healthy"
    assert [f.kind for f in d.findings] == ["healthy"]
    assert d.best_epoch == 6


def test_diagnose_still_improving_and_short_runs() -> None:
    rows = _rows(
        [2.0, 1.2, 0.8, 0.5], [1.9, 1.1, 0.8, 0.6], [0.5, 0.7, 0.8, 0.85], [0.5, 0.7, 0.8, 0.84]
    )
    assert [f.kind for f in diagnose(rows).findings] == ["still_improving"]
    short = diagnose(rows[:2])
    assert short.status == "too_short" and short.best_epoch == 2
    assert diagnose([]).best_epoch is None
