"""Shared fixtures: an isolated workspace, the demo digits and colour sets, one tiny config, a run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cnnlab import demo

if TYPE_CHECKING:
    from cnnlab.config import RunConfig


@pytest.fixture(autouse=True)
def _no_visitor_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as the CLI (no visitor rules); an AppTest's app.py turns them on for
    itself, and they are switched off again after the test."""
    from cnnlab import reach

    monkeypatch.delenv(reach.DASHBOARD_ENV, raising=False)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CNNLAB_HOME under tmp_path, so no test touches ~/.cnnlab."""
    home = tmp_path / "cnnlab-home"
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    monkeypatch.delenv("CNNLAB_DATA_ROOTS", raising=False)
    return home


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1,797 sklearn digits as PNGs in <digit>/ folders, written once per test session.

    Shared by many tests: treat it as read-only.
    """
    return demo.write_digits(tmp_path_factory.mktemp("digits") / "digits")


@pytest.fixture(scope="session")
def trained(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One tiny real run on the digits (16 px, 2 epochs, small custom CNN): (summary, home).

    Shared by the evaluate/predict/export tests and pages: treat the run as read-only (copy it
    before changing anything).
    """
    from cnnlab import train
    from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    home = tmp_path_factory.mktemp("trained-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_HOME", str(home))
        config = RunConfig(
            data=DataConfig(path=str(digits_dir), image_size=16),
            model=ModelConfig(channels=[8, 16], head_units=32),
            train=TrainConfig(epochs=2, device="cpu", recipe="fixed"),
        )
        yield train.fit(config), home


@pytest.fixture
def predictor(trained, monkeypatch: pytest.MonkeyPatch):
    """The shared trained run's Predictor (CNNLAB_HOME pointed at its workspace)."""
    from cnnlab import predict

    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    return predict.Predictor.from_run(trained[0]["run_id"])


COLOURS = {"red": (210, 35, 35), "green": (35, 210, 35), "blue": (35, 35, 210)}


def write_colour_classes(root: Path, per_class: int = 30, size: int = 12, seed: int = 0) -> Path:
    """root/red, green, blue: noisy single-colour PNGs, a tiny learnable 3-class data set."""
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = gen.integers(-45, 45, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def colour_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 30 noisy 12 px PNGs (66 train images), written once; treat as read-only."""
    return write_colour_classes(tmp_path_factory.mktemp("colours") / "set")


@pytest.fixture
def colours_dir(workspace: Path) -> Path:
    """3 classes x 12 noisy 16 px PNGs inside the test's workspace (an allowed data root)."""
    return write_colour_classes(workspace / "colours", per_class=12, size=16)


def make_tiny_config(
    data_dir: Path, epochs: int = 3, batch_size: int = 64, name: str = "", **train_kw
) -> RunConfig:
    """16 px images, a two-block CNN on the CPU, patience off: about a second per epoch or less.

    batch_size 64 suits the digits (~20 steps per epoch); use 8 for the 36-image colour folder.
    """
    from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    # recipe "fixed": these tests exercise the plumbing on exactly this tiny setup (the small-data
    # recipe would widen the model and lengthen the schedule; tests/test_recipe.py covers it)
    kw = {"epochs": epochs, "batch_size": batch_size, "device": "cpu", "patience": 0,
          "recipe": "fixed", **train_kw}  # fmt: skip
    return RunConfig(
        data=DataConfig(path=str(data_dir), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=32),
        train=TrainConfig(**kw),
        name=name,
    )


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    """tiny_config(data_dir, epochs=3, batch_size=64, name="", **train): see make_tiny_config."""
    return make_tiny_config
