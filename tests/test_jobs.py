"""Background jobs: real fit runs on tiny digits in threads, stop, failure, re-attach, release."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cnnlab import evaluate, job_state, jobs, runs
from cnnlab.config import RunConfig
from cnnlab.errors import ConfigError, DataError


def wait_until(predicate, seen=lambda: "-", timeout: float = 300.0) -> None:
    """Poll predicate every 20 ms; past timeout (generous: training speed varies) fail with seen()."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"condition not met within {timeout} s; last seen: {seen()}")
        time.sleep(0.02)


def test_fit_job_records_events_and_summary(workspace: Path, digits_dir: Path, tiny_config) -> None:
    manager = jobs.JobManager()
    job = manager.start(tiny_config(digits_dir, epochs=2))
    snap = manager.wait(job.job_id, timeout=300)

    assert snap.status == "completed", snap.error
    assert [r["epoch"] for r in snap.epochs] == [1, 2]
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "best_epoch"} <= set(snap.epochs[0])
    kinds = [e["kind"] for e in snap.events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "Finished"
    assert "Progress" not in kinds  # only the latest Progress is kept, outside the event log
    assert snap.progress["epoch"] == 2 and snap.progress["batch"] == snap.progress["n_batches"]
    assert snap.summary["status"] == "completed"
    # the job reports the run's real result: the restored best model, re-evaluated from disk
    result = evaluate.evaluate_run(snap.run_id, "test", device="cpu")
    assert snap.summary["test_accuracy"] == pytest.approx(result.accuracy, abs=1e-6)
    assert snap.summary["test_accuracy"] > 0.5  # learned (chance is 0.1)
    assert snap.epochs_planned == 2 and snap.best_epoch in (1, 2)
    assert snap.eta_s is None and snap.finished_at >= snap.started_at
    # the run folder on disk is the same run the job reports
    assert runs.read_summary(runs.load_run(snap.run_id))["status"] == "completed"


def test_snapshot_is_a_copy(workspace: Path, digits_dir: Path, tiny_config) -> None:
    manager = jobs.JobManager()
    snap = manager.wait(manager.start(tiny_config(digits_dir, epochs=1)).job_id, timeout=300)
    snap.epochs[0]["val_loss"] = -1.0
    assert manager.snapshot(snap.job_id).epochs[0]["val_loss"] != -1.0


def test_stop_ends_the_job_within_about_a_batch(
    workspace: Path, digits_dir: Path, tiny_config
) -> None:
    manager = jobs.JobManager()
    # batch 8 -> ~157 batches per epoch, 200 epochs: minutes if the stop were ignored
    job = manager.start(tiny_config(digits_dir, epochs=200, batch_size=8))
    wait_until(lambda: job.snapshot().epochs, job.snapshot)
    snap = job.snapshot()
    assert snap.status == "running" and snap.eta_s is not None and snap.eta_s > 0

    epochs_at_stop = len(snap.epochs)
    assert manager.stop(job.job_id)
    snap = manager.wait(job.job_id, timeout=300)
    assert snap.status == "stopped", snap
    # it ends inside the epoch it was in (at most one more finishes): not after 200 epochs
    assert snap.summary["status"] == "stopped"
    assert epochs_at_stop <= snap.summary["epochs_run"] <= epochs_at_stop + 1
    assert not manager.stop(job.job_id)  # a finished job cannot be stopped again


def test_failure_keeps_the_message(workspace: Path, tmp_path: Path) -> None:
    manager = jobs.JobManager()
    cfg = RunConfig.from_dict({"data": {"path": str(tmp_path / "missing"), "image_size": 16}})
    snap = manager.wait(manager.start(cfg).job_id, timeout=300)
    assert snap.status == "failed"
    assert "missing" in snap.error  # the DataError names the path
    assert snap.run_id is None and snap.epochs == ()


def test_bad_config_is_refused_before_a_thread_starts(workspace: Path) -> None:
    manager = jobs.JobManager()
    with pytest.raises(ConfigError, match="data.path"):
        manager.start(RunConfig())
    assert manager.list() == []


def test_crash_of_any_callable_is_captured_with_its_type() -> None:
    manager = jobs.JobManager()

    def boom(stop_event: threading.Event, emit) -> None:
        emit({"step": 1})
        raise ValueError("boom at step 1")

    snap = manager.wait(manager.start_callable(boom, kind="tune").job_id, timeout=300)
    assert snap.status == "failed" and snap.kind == "tune"
    assert snap.error == "ValueError: boom at step 1"
    assert snap.events == ({"kind": "Event", "step": 1},)


def test_domain_error_message_is_kept_as_is() -> None:
    manager = jobs.JobManager()

    def bad(stop_event: threading.Event, emit) -> None:
        raise DataError("folder x has no class folders")

    snap = manager.wait(manager.start_callable(bad).job_id, timeout=300)
    assert snap.error == "folder x has no class folders"


def test_reattach_by_run_id(workspace: Path, digits_dir: Path, tiny_config) -> None:
    manager = jobs.get_manager()
    assert jobs.get_manager() is manager  # process-wide: every page/tab sees the same registry
    job = manager.start(tiny_config(digits_dir, epochs=2))
    wait_until(lambda: job.snapshot().run_id is not None, job.snapshot)
    run_id = job.snapshot().run_id

    # a reloaded page only knows the run id (from the URL or the runs list)
    assert manager.get(run_id) is job
    assert any(s.job_id == job.job_id for s in manager.list(kind="train"))
    snap = manager.wait(run_id, timeout=300)
    assert snap.job_id == job.job_id and snap.status == "completed"
    assert manager.get("no-such-id") is None and manager.snapshot("no-such-id") is None


def test_old_finished_jobs_are_released_but_running_ones_kept() -> None:
    manager = jobs.JobManager(max_finished=2, max_running=2)  # the blocker holds one slot
    release = threading.Event()

    def blocker(stop_event: threading.Event, emit) -> str:
        release.wait(300)  # released by the test; long enough for a busy machine
        return "done"

    def quick(stop_event: threading.Event, emit) -> str:
        return "ok"

    running = manager.start_callable(blocker)
    finished = []
    for _ in range(4):
        job = manager.start_callable(quick)
        manager.wait(job.job_id, timeout=300)
        finished.append(job.job_id)
    kept = {s.job_id for s in manager.list()}
    assert kept == {running.job_id, *finished[-2:]}  # the two oldest finished were dropped
    assert manager.get(finished[0]) is None
    assert [s.job_id for s in manager.list(active_only=True)] == [running.job_id]
    release.set()
    assert manager.wait(running.job_id, timeout=300).result == "done"


def test_concurrent_jobs_do_not_mix_events(workspace: Path, digits_dir: Path, tiny_config) -> None:
    manager = jobs.JobManager(max_running=2)
    a = manager.start(tiny_config(digits_dir, epochs=1))
    b = manager.start(tiny_config(digits_dir, epochs=3))
    sa, sb = manager.wait(a.job_id, 300), manager.wait(b.job_id, 300)
    assert sa.status == sb.status == "completed", (sa.error, sb.error)
    assert sa.run_id != sb.run_id
    assert [r["epoch"] for r in sa.epochs] == [1]
    assert [r["epoch"] for r in sb.epochs] == [1, 2, 3]
    assert {e.get("run_id") for e in sa.events if e["kind"] == "RunStarted"} == {sa.run_id}
    assert manager.get(sa.run_id) is a and manager.get(sb.run_id) is b


def test_a_resumed_run_keeps_its_history_and_the_curve_moves_within_epochs(
    workspace: Path,
) -> None:
    """Recorded events only (no training): what the Train page reads of a resumed run."""
    from cnnlab import progress
    from cnnlab.events import EpochEnd, Progress, RunStarted

    run = runs.create_run(RunConfig(), ["a", "b"])
    for epoch in (1, 2):
        runs.append_metrics(run, {"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5,
                                  "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1, "seconds": 4.0,
                                  "images_per_s": 10.0, "best_epoch": epoch, "is_best": True})  # fmt: skip
    job = job_state.Job(job_id="j", kind="train", status="running")
    job.record(RunStarted(run.run_id, str(run.run_dir), 5, 10, 2, 2, "CPU", ["a", "b"]))
    snap = job.snapshot()
    assert [r["epoch"] for r in snap.epochs] == [1, 2] and snap.prior_epochs == 2
    assert snap.prior_seconds == 8.0 and snap.run_seconds >= 8.0
    assert progress.progress_line(snap)[1] == "Epoch 3/5 starting…"
    job.record(Progress(3, 2, 10, 0.8, 50.0))  # mean of batches 1-2
    job.record(Progress(3, 4, 10, 0.7, 50.0))  # mean of 1-4: batches 3-4 averaged 0.6
    snap = job.snapshot()
    # the earlier epochs' curve is kept (each at its end: its mean), then this epoch's ticks
    assert [x for x, _ in snap.curve] == [1.0, 2.0, 2.2, 2.4]
    assert snap.curve[2][1] == pytest.approx(0.8)
    assert snap.curve[3][1] == pytest.approx(0.7)  # the epoch's mean so far (issue 28 item 5)
    assert progress.progress_line(snap)[1].startswith("Epoch 3/5 · batch 4/10")
    version = snap.curve_version
    job.record(EpochEnd(3, 0.7, 0.6, 0.9, 0.6, 0.1, 4.0, 10.0, 3, True))
    snap = job.snapshot()
    assert [r["epoch"] for r in snap.epochs] == [1, 2, 3] and snap.curve_version > version
    for i in range(2 * job_state.MAX_CURVE):
        job.record(Progress(4, i + 1, 10**6, 0.5, 50.0))
    assert len(job.snapshot().curve) <= job_state.MAX_CURVE


def test_queue_runs_k_at_a_time_and_a_cancelled_queued_job_never_starts(
    workspace: Path, digits_dir: Path
) -> None:
    manager = jobs.JobManager(max_running=1)
    log: list[tuple[str, str]] = []
    gate = threading.Event()

    def task(name: str):
        def fn(stop_event: threading.Event, emit) -> dict:
            log.append(("start", name))
            if name == "a":
                gate.wait(300)  # hold the only slot until the test has looked at the queue
            log.append(("end", name))
            return {"name": name}

        return fn

    a, b, c = (manager.start_callable(task(n), kind="train", name=n) for n in "abc")
    wait_until(lambda: manager.snapshot(a.job_id).status == "running")
    snaps = [manager.snapshot(j.job_id) for j in (a, b, c)]
    assert [s.status for s in snaps] == ["running", "queued", "queued"]
    assert [s.queue_position for s in snaps] == [None, 1, 2]
    assert manager.stop(b.job_id)  # cancel the first queued job
    wait_until(lambda: manager.snapshot(b.job_id).status == "stopped")
    assert manager.snapshot(c.job_id).queue_position == 1  # c moved up
    assert manager.snapshot(c.job_id).status == "queued"  # still waits: a holds the slot
    gate.set()
    assert manager.wait(c.job_id, timeout=300).status == "completed"
    assert log == [("start", "a"), ("end", "a"), ("start", "c"), ("end", "c")]  # one at a time
    b_snap = manager.snapshot(b.job_id)
    assert b_snap.started_at is None and b_snap.result is None  # b never ran


def test_queued_real_trainings_run_one_after_another(
    workspace: Path, digits_dir: Path, tiny_config
) -> None:
    manager = jobs.JobManager(max_running=1)
    started = [manager.start(tiny_config(digits_dir, epochs=1)) for _ in range(3)]
    snaps = [manager.wait(j.job_id, timeout=600) for j in started]
    assert [s.status for s in snaps] == ["completed"] * 3
    for before, after in zip(snaps, snaps[1:], strict=False):
        assert after.started_at >= before.finished_at  # never two at once


def test_default_slots_come_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_MAX_JOBS", "3")
    assert jobs.JobManager().max_running == 3
    monkeypatch.delenv("CNNLAB_MAX_JOBS")
    import torch

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 1
    assert jobs.default_slots() == max(1, expected)


@pytest.mark.slow
def test_a_multi_process_job_is_followed_through_its_run_folder_and_stops(
    workspace: Path, digits_dir: Path, tiny_config
) -> None:
    """What the Train page's "use all N GPUs" starts, on CPU: 2 gloo processes in a child."""
    manager = jobs.JobManager(max_running=2)
    job = manager.start_distributed(tiny_config(digits_dir, epochs=40), nproc=2)
    wait_until(
        lambda: job.snapshot().epochs or not job.snapshot().active, job.snapshot, timeout=600
    )
    snap = job.snapshot()
    assert snap.status == "running", snap.error
    assert snap.run_info["n_train"] > 1200 and snap.run_id  # ~70 % of the 1,797 digits
    assert manager.get(snap.run_id) is not None  # found by run id, like a fit job
    assert manager.stop(job.job_id)  # SIGTERM to the launcher, forwarded to both ranks
    snap = manager.wait(job.job_id, timeout=300)
    assert snap.status == "stopped", snap.error
    assert snap.summary["world_size"] == 2 and snap.summary["epochs_run"] < 40
    on_disk = runs.read_summary(runs.load_run(snap.run_id))
    assert on_disk["status"] == "stopped"
    assert [r["epoch"] for r in snap.epochs] == list(range(1, on_disk["epochs_run"] + 1))


def test_the_running_loss_is_the_epoch_mean_at_each_epoch_end(
    workspace: Path, colours_dir: Path, tiny_config
) -> None:
    """Issue 28 item 5: a batch larger than the training split (one step per epoch): the running
    curve and the epoch means are one quantity, and a resumed run keeps the earlier curve."""
    from cnnlab import train
    from cnnlab.events import RunStarted

    job = job_state.Job(job_id="j", kind="train", status="running")
    summary = train.fit(tiny_config(colours_dir, epochs=3, batch_size=64), callbacks=[job.record])
    snap = job.snapshot()
    means = {r["epoch"]: r["train_loss"] for r in snap.epochs}
    assert len(means) == 3
    at_ends = {round(x): y for x, y in snap.curve if x == round(x)}
    assert at_ends == pytest.approx(means)
    resumed = job_state.Job(job_id="k", kind="train", status="running")
    run = runs.load_run(summary["run_id"])
    resumed.record(RunStarted(run.run_id, str(run.run_dir), 5, 1, 1, 1, "CPU", ["a"]))
    assert dict(resumed.snapshot().curve) == pytest.approx({float(e): m for e, m in means.items()})
