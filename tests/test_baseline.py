"""The pixel baseline: an RBF SVM on the run's own split, in summary.json and the CLI's summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import baseline, cli, runs, train
from cnnlab.config import DataConfig
from cnnlab.data import prepare


@pytest.fixture(scope="module")
def digits(digits_dir: Path):
    return prepare(DataConfig(path=str(digits_dir), image_size=16))


def test_the_svm_reads_the_real_digits_well_in_seconds(digits) -> None:
    split = digits.split
    fitted = baseline.fit_baseline(digits.images, digits.labels, split.train, split.test)
    assert fitted is not None
    assert fitted.accuracy > 0.9  # scikit-learn's SVC on 8x8 digits scores ~0.98
    assert fitted.split == "test" and fitted.n_train == len(split.train)
    assert fitted.n_eval == len(split.test)
    assert fitted.model == "SVC(rbf, C=10) on 16 px pixels"  # never upscaled past the cache


def test_training_and_scored_rows_are_capped_per_class(digits, monkeypatch) -> None:
    monkeypatch.setattr(baseline, "MAX_TRAIN", 100)
    monkeypatch.setattr(baseline, "MAX_EVAL", 50)
    split = digits.split
    fitted = baseline.fit_baseline(digits.images, digits.labels, split.train, split.test)
    assert fitted.n_train == 100 and fitted.n_eval == 50
    kept = baseline._subsample(np.asarray(split.train), digits.labels.numpy(), 100, 0)
    assert set(digits.labels.numpy()[kept]) == set(range(10))  # every class keeps its share


def test_nothing_to_compare_gives_none(digits) -> None:
    one_class = [i for i in digits.split.train if int(digits.labels[i]) == 0]
    assert baseline.fit_baseline(digits.images, digits.labels, one_class, digits.split.test) is None
    assert baseline.fit_baseline(digits.images, digits.labels, digits.split.train, []) is None


def test_a_run_scores_the_baseline_on_its_own_split(
    digits_dir: Path, workspace: Path, tiny_config
) -> None:
    config = tiny_config(digits_dir, epochs=1, recipe="fixed")
    summary = train.fit(config)
    data = prepare(config.data)
    again = baseline.fit_baseline(data.images, data.labels, data.split.train, data.split.test)
    assert summary["baseline_accuracy"] == pytest.approx(again.accuracy)
    assert summary["baseline"]["split"] == "test"
    saved = runs.read_summary(runs.load_run(summary["run_id"]))
    assert saved["baseline_accuracy"] == summary["baseline_accuracy"]


def test_switched_off_it_is_not_fitted(digits_dir: Path, workspace: Path, tiny_config) -> None:
    summary = train.fit(tiny_config(digits_dir, epochs=1, recipe="fixed", baseline=False))
    assert "baseline_accuracy" not in summary


def test_the_cli_prints_the_comparison_and_json_carries_it(
    digits_dir: Path, workspace: Path, capsys
) -> None:
    argv = ["train", str(digits_dir), "--epochs", "1", "--image-size", "16", "--recipe", "fixed"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "baseline_accuracy:" in out and "vs baseline" in out
    assert cli.main([*argv, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0.0 < printed["baseline_accuracy"] <= 1.0
    assert cli.main([*argv, "--no-baseline", "--json"]) == 0
    assert "baseline_accuracy" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("cnn", "base", "recipe", "warned", "says"),
    [
        (0.9, 0.6, None, False, "CNN 0.900 vs baseline 0.600"),
        (0.5, 0.6, None, True, "the small-data recipe"),
        (0.5, 0.6, {"applied": True}, True, "a pretrained model, or more data"),
        (0.6, 0.6, None, True, "does not beat raw pixels"),
        (1.0, 1.0, None, False, "CNN 1.000 vs baseline 1.000"),
    ],
)
def test_the_comparison_line(cnn, base, recipe, warned, says) -> None:
    entry = {"accuracy": base, "split": "test", "model": "SVC(rbf, C=10) on 32 px pixels"}
    summary = {"test_accuracy": cnn, "baseline": entry, "recipe": recipe}
    line = baseline.comparison(summary)
    assert says in line
    assert ("does not beat" in line) is warned
    assert baseline.beaten(summary) is not warned


def test_no_baseline_no_line() -> None:
    assert baseline.comparison({"test_accuracy": 0.9}) is None
    assert baseline.beaten({"test_accuracy": 0.9}) is None


def test_pixels_are_area_downscaled_into_unit_range() -> None:
    images = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    images[1, :, :4] = 0
    x = baseline.pixels(images, 4)
    assert x.shape == (2, 48) and x.dtype == np.float32
    assert x[0].min() == 1.0 and sorted(set(x[1].round(3))) == [0.0, 1.0]
