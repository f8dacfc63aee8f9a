"""Load and leaks: parallel jobs keep apart, many runs in one process leave memory flat.

tests/test_jobs.py checks that two concurrent jobs' in-memory events do not mix; here the run
folders on disk are checked too, and 20 back-to-back runs through one JobManager must not grow
the process (RSS from /proc/self/statm), keep job objects alive, or leave threads behind.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import weakref
from pathlib import Path

import pytest

from cnnlab import job_state, jobs, runs
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RSS_GROWTH_LIMIT_MB = 50


@pytest.fixture(scope="module")
def three_classes(colour_classes: Path) -> Path:
    """3 classes x 30 noisy 12 px PNGs (66 train images: 8 batches of 8), under a second a run."""
    return colour_classes


def _config(root: Path, name: str, epochs: int = 1) -> RunConfig:
    return RunConfig(
        name=name,
        data=DataConfig(path=str(root), image_size=12),
        model=ModelConfig(channels=[4, 8], head_units=0),
        train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", patience=0),
    )


def _rss_mb() -> float:
    """Resident set size of this process, from /proc (psutil is not a dependency)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def test_two_parallel_jobs_write_separate_runs(workspace: Path, three_classes: Path) -> None:
    manager = jobs.JobManager()
    left = manager.start(_config(three_classes, "left", epochs=2))
    right = manager.start(_config(three_classes, "right", epochs=4))
    snaps = {"left": manager.wait(left.job_id, 120), "right": manager.wait(right.job_id, 120)}
    assert snaps["left"].run_id != snaps["right"].run_id
    for name, epochs in (("left", 2), ("right", 4)):
        snap = snaps[name]
        assert snap.status == "completed", snap.error
        assert [e["epoch"] for e in snap.epochs] == list(range(1, epochs + 1))
        assert {e["run_id"] for e in snap.events if "run_id" in e} == {snap.run_id}
        assert snap.summary["run_id"] == snap.run_id
        run = runs.load_run(snap.run_id)
        assert json.loads(run.config_path.read_text())["name"] == name
        assert [r["epoch"] for r in runs.read_metrics(run)] == list(range(1, epochs + 1))
        # the curves on disk are this job's own numbers, not the other job's
        on_disk = [round(r["train_loss"], 6) for r in runs.read_metrics(run)]
        assert on_disk == [round(e["train_loss"], 6) for e in snap.epochs]
        assert runs.read_summary(run)["status"] == "completed"
    assert len(runs.list_runs()) == 2


def test_twenty_runs_in_one_process_leave_memory_flat(workspace: Path, three_classes: Path):
    manager = jobs.JobManager(max_finished=5)
    threads_before = threading.active_count()
    first_job: weakref.ref | None = None
    rss: dict[int, float] = {}
    for i in range(1, 21):
        job = manager.start(_config(three_classes, f"run{i}"))
        snap = manager.wait(job.job_id, 60)
        assert snap.status == "completed", snap.error
        if i == 1:
            first_job = weakref.ref(job)
        del job, snap
        if i in (5, 20):
            gc.collect()
            rss[i] = _rss_mb()
    growth = rss[20] - rss[5]
    print(f"RSS after run 5: {rss[5]:.1f} MB, after run 20: {rss[20]:.1f} MB (+{growth:.1f} MB)")
    assert growth < RSS_GROWTH_LIMIT_MB
    assert len(manager.list()) == 5  # the registry keeps only the newest finished jobs
    gc.collect()
    assert first_job is not None and first_job() is None  # released jobs are really freed
    assert threading.active_count() <= threads_before  # every worker thread ended
    assert len(runs.list_runs()) == 20  # while every run stays on disk


def test_a_chatty_job_keeps_bounded_events() -> None:
    """A job that emits 5,000 events keeps the newest MAX_EVENTS and only the last progress."""
    manager = jobs.JobManager()

    def chatty(stop_event: threading.Event, emit) -> str:
        for i in range(5000):
            emit({"step": i})
            emit({"kind": "Progress", "epoch": 1, "batch": i, "n_batches": 5000, "loss": 1.0})
        return "done"

    snap = manager.wait(manager.start_callable(chatty).job_id, 30)
    assert snap.result == "done"
    assert len(snap.events) == job_state.MAX_EVENTS
    assert snap.events[-1]["step"] == 4999 and snap.events[0]["step"] == 5000 - job_state.MAX_EVENTS
    assert snap.progress == {
        "kind": "Progress",
        "epoch": 1,
        "batch": 4999,
        "n_batches": 5000,
        "loss": 1.0,
    }
