"""preflight: every blocking problem listed before a run exists; the CLI refuses with all of them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from cnnlab import cli, data, preflight, runs
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
    (note,) = preflight.warnings(cfg)
    assert "224 px" in note and "4.0x" in note
    assert preflight.warnings(RunConfig(data=DataConfig(path="x", image_size=64))) == []
