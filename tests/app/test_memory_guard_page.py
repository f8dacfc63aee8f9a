"""AppTest: a config over the memory limit (the issue's 1024 px custom CNN) keeps Start off on
the Train page, with the estimate and what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.config import DataConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


def test_start_stays_off_over_the_memory_limit(workspace: Path, digits_dir: Path, fresh_app):
    at = fresh_app(
        "pages/train.py",
        dataset_path=str(digits_dir),
        data_config=DataConfig(path=str(digits_dir), image_size=1024),
        run_config=RunConfig(train=TrainConfig(device="cpu")),
    )
    assert not at.exception
    start = next(b for b in at.button if b.label == "Start")
    assert start.disabled
    blocked = [w.value for w in at.warning if "Start is off" in w.value]
    assert blocked and "memory" in blocked[0] and "1024 px" in blocked[0], blocked
    assert any("slow and memory-hungry" in w.value for w in at.warning)  # the size warning
