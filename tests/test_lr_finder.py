"""lr_finder: the sweep on real digits, the suggestion rule on known curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab import data, lr_finder
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.fixture
def config(digits_dir: Path, workspace: Path) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(digits_dir), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=32),
        # recipe fixed: the sweep's mechanics on this small net (auto would sweep the recipe's)
        train=TrainConfig(device="cpu", lr=3e-3, recipe="fixed"),
    )


def test_sweep_on_real_digits(config: RunConfig) -> None:
    result = lr_finder.find_lr(config, steps=60)
    lrs = np.array(result.lrs)
    assert lrs[0] == pytest.approx(lr_finder.START_LR)
    assert np.all(np.diff(lrs) > 0)  # exponentially increasing
    assert np.allclose(np.diff(np.log(lrs)), np.log(lrs[1] / lrs[0]))
    assert len(result.losses) == len(result.raw_losses) == len(lrs) <= 60
    assert lr_finder.START_LR < result.suggestion < lr_finder.END_LR
    # The loss must have come down on the way: the model learns at some lr in the sweep.
    assert min(result.losses) < result.losses[0] - 0.2
    assert config.train.lr == 3e-3  # the config is not modified


def test_sweep_stops_when_the_loss_diverges(config: RunConfig) -> None:
    prepared = data.prepare(config.data)
    config.train.optimizer = "sgd"
    result = lr_finder.find_lr(config, prepared, steps=80, start_lr=1e-3, end_lr=1e4)
    assert result.stopped_early and len(result.lrs) < 80
    assert result.suggestion < result.lrs[-1]


def test_suggestion_is_the_steepest_descent_before_the_minimum() -> None:
    lrs = list(np.logspace(-6, 0, 100))
    x = np.log10(lrs)
    # loss falls fastest at lr 1e-3 (a tanh step), bottoms at 1e-1, then shoots up
    loss = 2 - np.tanh((x + 3) * 2) + np.where(x > -1, (x + 1) * 20, 0)
    suggestion, min_lr = lr_finder.suggest_lr(lrs, list(loss))
    assert 5e-4 < suggestion < 2e-3
    assert 5e-2 < min_lr < 2e-1


def test_suggestion_falls_back_to_min_over_ten() -> None:
    lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    suggestion, min_lr = lr_finder.suggest_lr(lrs, [1.0, 0.9, 1.5, 3.0, 9.0])
    assert min_lr == 1e-4 and suggestion == pytest.approx(1e-5)


def test_valley_rule_sits_past_the_steepest_point_before_the_minimum() -> None:
    """fastai's valley: two thirds along the longest falling stretch, not the cautious steepest."""
    lrs = list(np.logspace(-6, 0, 100))
    x = np.log10(lrs)
    # flat (slightly noisy) up to 1e-4, a steady descent to 1e-2, then divergence
    flat = 2 + 0.001 * np.sin(np.arange(100) * 1.7)
    loss = np.where(x < -4, flat, 2 - 0.5 * (x + 4)) + np.where(x > -2, (x + 2) * 30, 0)
    valley = lr_finder.valley_lr(lrs, list(loss))
    _, min_lr = lr_finder.suggest_lr(lrs, list(loss))
    assert 3e-4 < valley < 3e-3 and min_lr == pytest.approx(1e-2, rel=0.1)


def test_the_sweep_reports_progress(colour_classes: Path, workspace) -> None:
    """Issue 28 item 12: data preparation, then every step, reported as (done, total, stage)."""
    from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    seen: list[tuple[int, int, str]] = []
    config = RunConfig(data=DataConfig(path=str(colour_classes), image_size=12),
                       model=ModelConfig(channels=[4, 8], head_units=0),
                       train=TrainConfig(batch_size=16, device="cpu"))  # fmt: skip
    result = lr_finder.find_lr(config, steps=20, progress=lambda d, t, s: seen.append((d, t, s)))
    sweep = [(d, t) for d, t, s in seen if s == "lr sweep"]
    assert sweep[-1] == (len(result.lrs), 20) and len(sweep) == len(result.lrs)
    assert any(s in ("verify", "decode") for _, _, s in seen)


def test_the_sweep_trains_the_model_fit_would(colours_dir: Path, monkeypatch) -> None:
    """Issue 29: on a small set, auto sweeps the small-data recipe's model, not the plain one."""
    built = []
    real_setup = lr_finder.setup
    monkeypatch.setattr(
        lr_finder, "setup", lambda c, *a, **k: built.append(c) or real_setup(c, *a, **k)
    )
    config = RunConfig(
        data=DataConfig(path=str(colours_dir), image_size=16),
        train=TrainConfig(device="cpu", batch_size=8),
    )
    lr_finder.find_lr(config, steps=30)
    assert built[0].model.residual and built[0].model.global_pool
    assert config.model.residual is False  # the caller's config is not modified
