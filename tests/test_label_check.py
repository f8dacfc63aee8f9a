"""The label check on real images: digits with planted label errors (images moved into a wrong
class folder) must come out near the top; copies with conflicting labels are suspects too."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from cnnlab import cli, label_check
from tests.conftest import make_tiny_config

CLASSES = ("0", "1", "3", "4", "7")


def plant_errors(digits_dir: Path, out: Path, n: int, classes=CLASSES, seed: int = 0) -> set[str]:
    """Copy some digit classes to out and move n images into a wrong class folder: their paths."""
    for c in classes:
        shutil.copytree(digits_dir / c, out / c)
    rng = random.Random(seed)
    planted = set()
    for p in rng.sample(sorted(out.glob("*/*.png")), n):
        wrong = rng.choice([c for c in classes if c != p.parent.name])
        shutil.move(p, out / wrong / p.name)
        planted.add(f"{wrong}/{p.name}")
    return planted


@pytest.fixture(scope="module")
def planted_digits(digits_dir: Path, tmp_path_factory) -> tuple[Path, set[str]]:
    out = tmp_path_factory.mktemp("planted") / "digits"
    return out, plant_errors(digits_dir, out, 10)


def test_planted_errors_are_found_near_the_top(planted_digits, workspace: Path) -> None:
    root, planted = planted_digits
    config = make_tiny_config(root, epochs=4)
    report = label_check.check_labels(config, folds=3)
    assert report["folds"] == 3 and report["n_images"] == sum(1 for _ in root.glob("*/*.png"))
    assert 0.85 < report["oof_accuracy"] < 1.0
    top = [s["path"] for s in report["suspects"][:20]]
    assert len(planted & set(top)) >= 8, (planted, top)
    for s in report["suspects"]:
        assert set(s) >= {"path", "given", "suggested", "confidence", "reason"}
        assert s["given"] != s["suggested"] and 0 <= s["confidence"] <= 1
        assert s["given"] == s["path"].split("/")[0]  # the class folder it sits in


def test_conflicting_copies_are_suspects(tmp_path: Path, workspace: Path, colour_classes: Path):
    root = Path(shutil.copytree(colour_classes, tmp_path / "set"))
    shutil.copy(root / "red" / "00.png", root / "blue" / "red-copy.png")  # a copy, wrongly filed
    report = label_check.check_labels(make_tiny_config(root, epochs=2, batch_size=8), folds=3)
    by_path = {s["path"]: s for s in report["suspects"]}
    assert "blue/red-copy.png" in by_path
    assert "copy of red/00.png [red]" in by_path["blue/red-copy.png"]["reason"]
    assert by_path["blue/red-copy.png"]["suggested"] == "red"


@pytest.mark.slow
def test_cli_check_labels_json(colour_classes: Path, workspace: Path, capsys) -> None:
    argv = ["check-labels", str(colour_classes), "--folds", "3", "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"suspects", "folds", "seconds", "oof_accuracy"} <= set(report)
    assert report["folds"] == 3 and report["resumed_folds"] == 0
    assert cli.main(argv) == 0  # the same check again: every fold is read back
    assert json.loads(capsys.readouterr().out)["resumed_folds"] == 3
