"""AppTest: with one slot busy, a job started on the Train page waits as "queued, position 1"
and Stop cancels it before it ever starts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cnnlab import jobs
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.fixture
def one_slot(monkeypatch: pytest.MonkeyPatch):
    """The process-wide manager with K=1, its slot held by a blocking job until the test ends."""
    manager = jobs.JobManager(max_running=1)
    monkeypatch.setattr(jobs, "_manager", manager)
    release = threading.Event()
    blocker = manager.start_callable(lambda stop, emit: release.wait(60), kind="tune")
    yield manager
    release.set()
    manager.wait(blocker.job_id, timeout=30)


def test_queued_training_shows_its_position_and_is_cancelled(
    workspace: Path, digits_dir: Path, one_slot: jobs.JobManager, fresh_app
) -> None:
    at = fresh_app(
        "pages/train.py",
        dataset_path=str(digits_dir),
        data_config=DataConfig(path=str(digits_dir), image_size=16),
        run_config=RunConfig(
            model=ModelConfig(channels=[8, 16], head_units=0),
            train=TrainConfig(epochs=1, device="cpu"),
        ),
    )
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception
    (snap,) = one_slot.list(kind="train")
    assert snap.status == "queued" and snap.queue_position == 1
    assert any("Queued, position 1" in i.value for i in at.info), [i.value for i in at.info]
    next(b for b in at.button if b.label == "Stop").click().run()
    after = one_slot.wait(snap.job_id, timeout=30)
    assert after.status == "stopped" and after.started_at is None and after.run_id is None
    at.run()
    assert any("Cancelled while queued" in w.value for w in at.warning)
