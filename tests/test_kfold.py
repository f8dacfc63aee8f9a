"""K-fold engine on real images: stratified folds keeping copies together, out-of-fold
probabilities, per-fold resume, cross-validation summary; `train --folds` on the CLI."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cnnlab import cli, data, kfold
from cnnlab.epoch import StopRequested


def test_folds_are_stratified_disjoint_and_keep_copies_together(digits_dir: Path, workspace):
    scan = data.scan(digits_dir)
    folds = kfold.assign_folds(scan, 5, seed=0)
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(scan.n_images))  # every image held out exactly once
    for c in range(len(scan.classes)):
        per_fold = [sum(scan.labels[i] == c for i in f) for f in folds]
        assert max(per_fold) - min(per_fold) <= 2, per_fold  # ~ n_class / 5 each
    fold_of = {i: k for k, f in enumerate(folds) for i in f}
    groups = scan.duplicate_groups()
    assert groups  # the 8x8 digits have look-alikes: the rule is exercised
    for g in groups:
        assert len({fold_of[i] for i in g.members}) == 1
    assert kfold.assign_folds(scan, 5, seed=0) == folds  # seeded
    assert kfold.assign_folds(scan, 5, seed=1) != folds


def test_folds_of_a_subset_and_bad_k(colour_classes: Path, workspace):
    scan = data.scan(colour_classes)
    pool = list(range(0, scan.n_images, 2))
    folds = kfold.assign_folds(scan, 3, indices=pool)
    assert sorted(i for f in folds for i in f) == pool
    assert [Counter(scan.labels[i] for i in f) for f in folds][0] == Counter({0: 5, 1: 5, 2: 5})
    with pytest.raises(Exception, match="at least 2"):
        kfold.assign_folds(scan, 1)


def test_cross_validate_resumes_finished_folds(colour_classes: Path, workspace, tiny_config):
    config = tiny_config(colour_classes, epochs=2, batch_size=8)
    seen = []
    stop = threading.Event()

    def stop_after_first(event):
        seen.append(event)
        if event.kind == "FoldEnd":
            stop.set()  # stop inside the second fold's training

    with pytest.raises(StopRequested):
        kfold.cross_validate(config, 3, callbacks=[stop_after_first], stop_event=stop)
    assert [e.fold for e in seen if e.kind == "FoldEnd"] == [1]
    events = []
    result = kfold.cross_validate(config, 3, callbacks=[events.append])
    ends = [e for e in events if e.kind == "FoldEnd"]
    assert [(e.fold, e.resumed) for e in ends] == [(1, True), (2, False), (3, False)]
    assert result.resumed == 1
    assert result.probs.shape == (90, 3)
    np.testing.assert_allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert result.oof_accuracy > 0.9  # noisy but clearly separable colours
    cv = result.report()
    assert cv["folds"] == 3 and len(cv["fold_accuracies"]) == 3
    assert set(cv["per_class"]) == {"blue", "green", "red"}
    assert 0 <= cv["val_accuracy_sd"] < 0.5


@pytest.mark.slow
def test_cli_train_folds_reports_cross_validation_then_final_run(
    colour_classes: Path, workspace, capsys
):
    argv = ["train", str(colour_classes), "--folds", "3", "--epochs", "2", "--image-size", "16",
            "--batch-size", "8", "--device", "cpu", "--json"]  # fmt: skip
    assert cli.main([*argv, "--no-final"]) == 0
    only = json.loads(capsys.readouterr().out)
    assert set(only) == {"cross_validation"}
    cv = only["cross_validation"]
    assert cv["n_images"] == 66 + 12  # train + val; the test split is kept apart
    assert 0.5 < cv["val_accuracy_mean"] <= 1
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["cross_validation"]["folds"] == 3


def test_train_with_folds_stopped_creates_no_run(colour_classes: Path, workspace, tiny_config):
    from cnnlab import runs

    stop = threading.Event()
    stop.set()
    out = kfold.train_with_folds(tiny_config(colour_classes, batch_size=8), 3, stop_event=stop)
    assert out["status"] == "stopped" and out["run_id"] is None
    assert runs.list_runs() == []


def test_small_data() -> None:
    assert kfold.small_data({"a": 30, "b": 40, "c": 400})
    assert not kfold.small_data({"a": 60, "b": 70})
    assert not kfold.small_data({})
