"""Learning curve on the real digits: nested stratified fractions, val accuracy rises with data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab import cli, data, learning_curve
from cnnlab.errors import ConfigError


def test_subsets_are_nested_and_stratified(digits_dir: Path, workspace: Path, tiny_config):
    prepared = data.prepare(tiny_config(digits_dir).data)
    parts = learning_curve.subsets(prepared, [0.1, 0.5, 1.0])
    assert set(parts[0]) < set(parts[1]) < set(parts[2]) == set(prepared.split.train)
    for part, frac in zip(parts, [0.1, 0.5], strict=False):
        per_class = prepared.split.per_class(prepared.scan)
        for c in range(10):
            n = sum(prepared.scan.labels[i] == c for i in part)
            assert n == max(1, round(frac * per_class[prepared.classes[c]]["train"]))


def test_parse_fractions() -> None:
    assert learning_curve.parse_fractions("1, 0.1,0.25,0.5") == [0.1, 0.25, 0.5, 1.0]
    for bad in ("0", "1.5", "x", ""):
        with pytest.raises(ConfigError):
            learning_curve.parse_fractions(bad)


def test_reading() -> None:
    assert learning_curve.reading([0.5, 0.7, 0.9]) == learning_curve.READ_RISING
    assert learning_curve.reading([0.5, 0.9, 0.905]) == learning_curve.READ_FLAT


def test_learning_curve_on_digits_rises(digits_dir: Path, workspace: Path, tiny_config):
    report = learning_curve.learning_curve(tiny_config(digits_dir, epochs=3), [0.05, 0.25, 1.0])
    val = [p["val_accuracy"] for p in report["points"]]
    assert val[0] < val[-1] and val[-1] > 0.85, val
    per_class = [p["images_per_class"] for p in report["points"]]
    assert per_class == sorted(per_class) and per_class[-1] > 100
    assert report["reading"] in (learning_curve.READ_RISING, learning_curve.READ_FLAT)


@pytest.mark.slow
def test_cli_learning_curve_json(colour_classes: Path, workspace: Path, capsys) -> None:
    argv = ["learning-curve", str(colour_classes), "--fractions", "0.2,1", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fractions"] == [0.2, 1.0] and len(report["points"]) == 2
    assert {"train_accuracy", "val_accuracy", "images_per_class"} <= set(report["points"][0])
    assert report["reading"]
