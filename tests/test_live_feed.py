"""The live feed a watching page polls: progress, caption and figures of a job, sent only when the
page lacks them and rebuilt at most every REDRAW_S while the job runs."""

from __future__ import annotations

import json
import math
import queue
import threading
from pathlib import Path

import plotly.utils
import pytest

from cnnlab import jobs, live_feed, runs
from cnnlab.config import DataConfig, RunConfig, TrainConfig
from cnnlab.events import EpochEnd, Progress, RunStarted


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class SteppedJob:
    """A job whose thread records exactly the events the test hands it, then ends when told."""

    def __init__(self, manager: jobs.JobManager) -> None:
        self._events: queue.Queue = queue.Queue()

        def run(stop_event: threading.Event, emit) -> dict:
            while (event := self._events.get()) is not None:
                emit(event)
                self._events.task_done()
            self._events.task_done()
            return {"status": "completed"}

        self.job = manager.start_callable(run, kind="train")
        self.manager = manager

    def send(self, *events) -> None:
        for event in events:
            self._events.put(event)
        self._events.join()  # recorded by the job before the test reads it

    def end(self) -> None:
        self._events.put(None)
        self.manager.wait(self.job.job_id, timeout=60)


def _epoch(n: int, val_loss: float = 0.5) -> EpochEnd:
    return EpochEnd(n, 0.6, 0.7, val_loss, 0.8, 0.01, 1.0, 100.0, n, True)


@pytest.fixture
def stepped(workspace: Path, tmp_path: Path):
    """(manager, job, clock, feed, run) with a real run folder named 'mine' on the record."""
    manager = jobs.JobManager()
    cfg = RunConfig(
        data=DataConfig(path=str(tmp_path / "my_images"), image_size=24),
        train=TrainConfig(epochs=5, lr=0.002),
        name="mine",
    )
    run = runs.create_run(cfg, ["a", "b"])
    clock = Clock()
    feed = live_feed.LiveFeed(manager, clock=clock)
    job = SteppedJob(manager)
    job.send(RunStarted(run.run_id, str(run.run_dir), 5, 10, 2, 2, "CPU", ["a", "b"]))
    yield manager, job, clock, feed, run
    job.end()


def _trace(fig: dict, name: str) -> dict:
    return next(t for t in fig["data"] if t.get("name") == name)


def test_an_unknown_job_has_no_payload() -> None:
    assert live_feed.LiveFeed(jobs.JobManager()).payload("no-such-job") is None


def test_a_running_job_reads_as_progress_caption_and_a_moving_curve(stepped) -> None:
    _, job, _, feed, run = stepped
    job.send(Progress(1, 3, 10, 0.9, 120.0))
    out = feed.payload(job.job.job_id)
    assert out["active"] and out["status"] == "running"
    assert out["phase"] == f"running:{run.run_id}"
    assert out["progress"]["text"].startswith("Epoch 1/5 · batch 3/10 · 120 images/s")
    assert out["progress"]["fraction"] == pytest.approx(3 / 10 / 5)
    assert out["caption"] == (
        f"Run {run.run_id} (mine): model custom · 24 px · 5 epochs · lr 2.0e-03 · data my_images"
    )
    assert out["queued"] is None
    loss = out["figures"]["loss"]
    assert _trace(loss, "train (running)")["x"] == [pytest.approx(0.3)]
    assert out["figures"]["acc"] is None  # no epoch yet: the page says so instead
    assert out["empty"]["acc"] == live_feed.NO_ACC_YET
    # drawn on the page's own look: no Plotly template (grey, ~7 KB) inside the figure
    assert "template" not in loss["layout"] and loss["layout"]["title"]["text"] == "Loss"
    assert loss["layout"]["paper_bgcolor"] == "rgba(0,0,0,0)"


def test_figures_travel_only_when_the_page_lacks_them(stepped) -> None:
    _, job, clock, feed, _ = stepped
    job.send(Progress(1, 3, 10, 0.9, 120.0), _epoch(1))
    first = feed.payload(job.job.job_id)
    assert set(first["figures"]) == {"loss", "acc"}
    held = first["revs"]
    assert feed.payload(job.job.job_id, held)["figures"] == {}  # nothing new: nothing resent
    assert set(feed.payload(job.job.job_id, {"acc": held["acc"]})["figures"]) == {"loss"}

    # the running curve moves: the loss figure is rebuilt, but not before REDRAW_S has passed
    job.send(Progress(2, 5, 10, 0.5, 120.0))
    assert feed.payload(job.job.job_id, held)["figures"] == {}
    clock.now += live_feed.REDRAW_S
    moved = feed.payload(job.job.job_id, held)
    assert set(moved["figures"]) == {"loss"}  # accuracy has no new point
    assert _trace(moved["figures"]["loss"], "train (running)")["x"][-1] == pytest.approx(1.5)
    held = moved["revs"]

    # a new epoch: both figures, after REDRAW_S again
    job.send(_epoch(2, val_loss=0.4))
    clock.now += live_feed.REDRAW_S
    both = feed.payload(job.job.job_id, held)
    assert set(both["figures"]) == {"loss", "acc"}
    assert _trace(both["figures"]["acc"], "validation")["x"] == [1, 2]
    assert _trace(both["figures"]["loss"], "validation")["y"] == [0.5, 0.4]


def test_the_job_s_end_is_drawn_at_once_and_changes_the_phase(stepped) -> None:
    _, job, _, feed, run = stepped
    job.send(_epoch(1))
    held = feed.payload(job.job.job_id)["revs"]
    job.send(_epoch(2))  # within REDRAW_S of the last drawing: no rebuild yet
    assert feed.payload(job.job.job_id, held)["figures"] == {}
    job.end()
    out = feed.payload(job.job.job_id, held)
    assert not out["active"] and out["phase"] == f"completed:{run.run_id}"
    assert _trace(out["figures"]["acc"], "train")["x"] == [1, 2]


def test_a_diverged_loss_travels_as_strict_json(stepped) -> None:
    """NaN/inf are not JSON: the page's JSON.parse would throw and the live view stop."""
    _, job, _, feed, _ = stepped
    job.send(Progress(1, 2, 10, math.nan, 50.0), _epoch(1, val_loss=math.inf))
    body = json.dumps(feed.payload(job.job.job_id), cls=plotly.utils.PlotlyJSONEncoder)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the feed")

    loss = json.loads(body, parse_constant=refuse)["figures"]["loss"]
    assert _trace(loss, "validation")["y"] == [None]


def test_a_queued_job_says_where_it_waits(workspace: Path) -> None:
    manager = jobs.JobManager(max_running=1)
    blocker = SteppedJob(manager)
    waiting = manager.start_callable(lambda stop_event, emit: None, kind="train")
    try:
        out = live_feed.LiveFeed(manager).payload(waiting.job_id)
        assert out["status"] == "queued" and out["active"]
        assert out["queued"].startswith("Queued, position 1:")
        assert out["figures"] == {"loss": None, "acc": None}
    finally:
        blocker.end()
        manager.wait(waiting.job_id, timeout=60)


def test_a_real_training_run_feeds_its_own_metrics(
    workspace: Path, digits_dir: Path, tiny_config
) -> None:
    manager = jobs.JobManager()
    snap = manager.wait(manager.start(tiny_config(digits_dir, epochs=2)).job_id, timeout=300)
    assert snap.status == "completed"
    out = live_feed.LiveFeed(manager).payload(snap.job_id)
    val = _trace(out["figures"]["acc"], "validation")
    assert val["x"] == [1, 2]
    assert val["y"] == [pytest.approx(r["val_acc"]) for r in snap.epochs]
    assert out["progress"]["text"].startswith("Epoch 2/2 done")
    assert out["caption"].startswith(f"Run {snap.run_id}")
