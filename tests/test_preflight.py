"""preflight: every blocking problem listed before a run exists; the CLI refuses with all of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from cnnlab import cli, data, preflight, reports, runs
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for i, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (12, 12), (40 * i, 200 - 10 * j, 90)).save(root / name / f"{j}.png")
    return root


def _config(path: Path, **model) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(path), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=0, **model),
        train=TrainConfig(epochs=1, batch_size=4, device="cpu"),
    )


def test_a_good_config_has_no_problems(tmp_path: Path) -> None:
    assert preflight.check(_config(_folder(tmp_path / "d", {"a": 6, "b": 6}))) == []


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d", {"a": 6, "lonely": 1, "pair": 2})
    cfg = _config(folder)
    cfg = dataclasses.replace(
        cfg, model=ModelConfig(name="swin_t", weights=str(tmp_path / "gone.pth"))
    )
    cfg.data.image_size = 16
    problems = preflight.check(cfg)
    text = " | ".join(map(str, problems))
    assert [p.where for p in problems] == ["data.image_size", "model.weights", "data"], text
    assert "'lonely' (1)" in text and "'pair' (2)" in text and "gone.pth" in text
    assert "Random (train from scratch)" in text


def test_bad_field_missing_folder_and_one_class(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "nowhere")
    assert [p.where for p in preflight.check(cfg)] == ["data"]
    bad = dataclasses.replace(cfg, train=TrainConfig(epochs=0))
    assert [p.where for p in preflight.check(bad)] == ["config"]
    one = _config(_folder(tmp_path / "one", {"only": 5}))
    assert "at least 2" in str(preflight.check(one)[0])


def test_cli_train_refuses_before_creating_a_run(workspace: Path, tmp_path: Path, capsys) -> None:
    folder = _folder(tmp_path / "d", {"a": 6, "lonely": 1})
    code = cli.main(["train", str(folder), "--epochs", "1", "--image-size", "16"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR and "'lonely' (1)" in err and len(err.splitlines()) == 1
    assert runs.list_runs() == []


# ---------------------------------------------------------------- issue 28
def test_excluded_classes_do_not_block_the_run(workspace: Path, tmp_path: Path, capsys) -> None:
    """Item 1: `--exclude-class tiny` leaves tiny out of the size rule (preflight, CLI)."""
    folder = _folder(tmp_path / "d", {"a": 6, "b": 6, "tiny": 1})
    cfg = _config(folder)
    assert "'tiny' (1)" in " ".join(map(str, preflight.check(cfg)))
    cfg.data.exclude_classes = ["tiny"]
    assert preflight.check(cfg) == []
    cfg.data.exclude_classes = ["nope"]
    assert "not in the data set" in str(preflight.check(cfg)[0])
    code = cli.main(
        [
            "train",
            str(folder),
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--exclude-class",
            "tiny",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert runs.list_runs()[0]["classes"] == ["a", "b"]


def test_one_rule_for_images_needed_honours_given_splits(tmp_path: Path) -> None:
    """Item 1: the rule sees given splits: a class with 1 train image and a given val/test folder
    needs nothing carved, so it is not too small; the same images in a random layout are."""
    from cnnlab import data, splits

    root = tmp_path / "k"
    for split, n in (("train", 1), ("val", 1), ("test", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(n if cls == "a" else 4):
                Image.new(
                    "RGB", (12, 12), (j * 30, 80 if cls == "a" else 160, hash(split) % 255)
                ).save(root / split / cls / f"{j}.png")
    scan = data.scan(root)
    assert splits.readiness(scan, 0.15, 0.15).too_small == {}
    assert splits.readiness(scan, 0.15, 0.15).need == 1
    assert preflight.check(_config(root)) == []
    flat = _folder(tmp_path / "flat", {"a": 2, "b": 6})
    scan = data.scan(flat)
    assert splits.readiness(scan, 0.15, 0.15).need == 3
    assert splits.readiness(scan, 0.15, 0.15).too_small == {"a": 2}
    assert splits.readiness(scan, 0.15, 0.0).too_small == {}
    report = reports.inspect_report(str(root))
    assert report["min_per_class"] == 1


def test_csv_options_reach_the_preflight(workspace: Path, tmp_path: Path, capsys) -> None:
    """Item 2: a CSV whose columns are named by flag passes preflight and trains."""
    import csv

    folder = _folder(tmp_path / "imgs", {"x": 5, "y": 5})
    rows = [[f"{c}/{j}.png", c] for c in ("x", "y") for j in range(5)]
    labels = tmp_path / "imgs" / "labels.csv"
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows([["fname", "kind"], *rows])
    cfg = _config(labels)
    cfg.data.path_column, cfg.data.label_column = "fname", "kind"
    assert preflight.check(cfg) == []
    code = cli.main(
        [
            "train",
            str(labels),
            "--path-column",
            "fname",
            "--label-column",
            "kind",
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert folder.is_dir()


def test_a_batch_larger_than_the_training_split_is_said(
    workspace: Path, tmp_path: Path, capsys
) -> None:
    """Item 5: not blocking, but said before the run, with the effective batch."""
    folder = _folder(tmp_path / "d", {"a": 6, "b": 6})
    cfg = _config(folder)
    assert preflight.run_warnings(cfg) == []
    cfg.train.batch_size = 64
    (text,) = preflight.run_warnings(cfg)
    n_train = 8  # 6 per class, one val and one test image each
    assert f"batch size 64 is larger than the {n_train} training images" in text
    assert f"effective batch is {n_train}" in text
    code = cli.main(
        [
            "train",
            str(folder),
            "--epochs",
            "1",
            "--image-size",
            "16",
            "--batch-size",
            "64",
            "--device",
            "cpu",
            "--json",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and "warning: batch size 64 is larger" in err


def test_a_run_over_the_memory_limit_is_refused_with_numbers(digits_dir: Path) -> None:
    """The issue's 1024 px custom CNN (268 M parameters) never starts; 16 px does; force skips."""

    scan = data.scan(str(digits_dir))
    big = RunConfig(data=DataConfig(path=str(digits_dir), image_size=1024),
                    train=TrainConfig(device="cpu"))  # fmt: skip
    est = preflight.estimate_memory(big, len(scan.classes), scan.n_images)
    assert est is not None and est.parameters > 200e6 and not est.fits
    assert est.cache == scan.n_images * 3 * 1024 * 1024
    problems = preflight.check(big, scan)
    assert [p.where for p in problems] == ["memory"]
    assert "1024 px" in problems[0].message and "lower the image size" in problems[0].message
    with pytest.raises(preflight.PreflightError, match="memory"):
        preflight.ensure(big, scan)
    assert preflight.check(big, scan, force=True) == []
    small = RunConfig(data=DataConfig(path=str(digits_dir), image_size=16),
                      train=TrainConfig(device="cpu"))  # fmt: skip
    assert preflight.estimate_memory(small, 10, scan.n_images).fits
    assert preflight.check(small, scan) == []


def test_the_memory_limit_comes_from_the_setting(
    digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    scan = data.scan(str(digits_dir))
    cfg = RunConfig(data=DataConfig(path=str(digits_dir), image_size=64),
                    train=TrainConfig(device="cpu"))  # fmt: skip
    assert preflight.check(cfg, scan) == []
    monkeypatch.setenv("CNNLAB_JOB_MEMORY", "100M")
    (problem,) = preflight.check(cfg, scan)
    assert "0.1 GB is memory available to a job" in problem.message


def test_an_input_larger_than_the_model_needs_warns() -> None:

    cfg = RunConfig(data=DataConfig(path="x", image_size=448), model=ModelConfig(name="resnet18"))
    (note,) = preflight.run_warnings(cfg)
    assert "224 px" in note and "4.0x" in note
    assert preflight.run_warnings(RunConfig(data=DataConfig(path="x", image_size=64))) == []
