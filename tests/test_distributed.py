"""torch.distributed training on CPU (gloo, 2 processes) on the real digits, through torchrun.

One run via `torchrun -m cnnlab train` is shared by the quality / files / predict tests; the stop
test goes through `cnnlab train --nproc-per-node 2` (torch.distributed.run's API) and resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab import evaluate, models, predict, runs, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# recipe fixed: these tests compare DDP with one process on exactly this small net
TRAIN_ARGS = ["--device", "cpu", "--image-size", "12", "--epochs", "3", "--seed", "0",
              "--recipe", "fixed"]  # fmt: skip


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(CNNLAB_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _cnnlab(args: list[str], home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def ddp_run(digits_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(summary printed on stdout, completed process, home) of one 2-process torchrun run."""
    home = tmp_path_factory.mktemp("ddp-home")
    args = ["torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cnnlab"]
    proc = _cnnlab([*args, "train", str(digits_dir), *TRAIN_ARGS, "--json"], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc, home


def test_two_processes_match_one_process_quality(ddp_run, digits_dir: Path, workspace: Path):
    summary, _, _ = ddp_run
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    assert summary["epochs_run"] == 3
    single = train.fit(
        RunConfig(
            data=DataConfig(path=str(digits_dir), image_size=12),
            model=ModelConfig(),
            train=TrainConfig(epochs=3, device="cpu", seed=0, recipe="fixed"),
        )
    )
    assert single["world_size"] == 1
    assert summary["n_train"] == single["n_train"]  # the same split, however many processes
    # Same global batch and schedule: the same quality band (not bit-equal: other rank shards).
    assert summary["test_accuracy"] > 0.85 and single["test_accuracy"] > 0.85
    assert abs(summary["test_accuracy"] - single["test_accuracy"]) < 0.06
    assert abs(summary["val_loss"] - single["val_loss"]) < 0.25


def test_one_run_folder_written_by_rank_zero_only(ddp_run):
    summary, proc, home = ddp_run
    assert proc.stdout.count('"run_id"') == 1  # one summary printed, by rank 0
    assert [p.name for p in (home / "runs").iterdir()] == [summary["run_id"]]
    run = runs.Run(summary["run_id"], Path(summary["run_dir"]))
    # run.lock is the training lock (flock) rank 0 held; nothing else beside the run's files
    assert sorted(p.name for p in run.run_dir.iterdir() if p.name != "run.lock") == [
        "best.pt", "config.json", "last.pt", "metrics.jsonl", "split.json", "summary.json",
    ]  # fmt: skip
    lines = run.metrics_path.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # one line per epoch, not two
    on_disk = json.loads(run.summary_path.read_text())
    assert on_disk["status"] == "completed" and on_disk["world_size"] == 2
    assert (
        on_disk["n_train"] == summary["n_train"] > 1200
        and on_disk["test_accuracy"] == summary["test_accuracy"]
    )


def test_distributed_checkpoint_predicts_and_evaluates_in_one_process(
    ddp_run, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    summary, _, home = ddp_run
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    _, _, _, ckpt = models.load_trained(summary["run_id"])  # loads into one plain model
    state = ckpt["model_state"]
    assert not any(k.startswith("module.") for k in state)  # DDP's wrapper is not saved
    # Single-process evaluation of the best weights gives the test accuracy the 2 ranks summed:
    # every test image was counted exactly once.
    result = evaluate.evaluate_run(summary["run_id"], "test", device="cpu")
    assert result.n == summary["n_test"] > 250
    assert result.accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    predictor = predict.Predictor.from_run(summary["run_id"])
    files = [next((digits_dir / str(d)).iterdir()) for d in range(10)]
    rows = predictor.predict_files([str(f) for f in files], 1)
    hits = sum(r["top"][0]["class"] == f.parent.name for r, f in zip(rows, files, strict=True))
    assert hits >= 8, rows


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"gave up waiting for {what}: rc={proc.returncode}\n{out[-2000:]}\n{err[-3000:]}")


def test_sigterm_stops_all_ranks_then_resume_under_ddp(digits_dir: Path, workspace: Path):
    args = ["cnnlab", "train", str(digits_dir), "--device", "cpu", "--image-size", "12"]
    args += ["--epochs", "8", "--json", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        env=_env(workspace),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )

    def first_epoch() -> Path | None:
        for m in (workspace / "runs").glob("*/metrics.jsonl"):
            if m.read_text().strip():
                return m.parent
        return None

    run_dir = _wait_for(first_epoch, 240, "the first epoch", proc)
    proc.send_signal(signal.SIGTERM)  # what the dashboard's Stop sends to the launcher
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", summary
    done = summary["epochs_run"]
    assert 1 <= done < 8
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == done
    assert not [p for p in (workspace / "runs").iterdir() if p != run_dir]

    resumed = _cnnlab(
        ["cnnlab", "resume", run_dir.name, "--nproc-per-node", "2", "--json"], workspace
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads(resumed.stdout)
    assert final["status"] == "completed" and final["epochs_run"] == 8
    assert final["resumed"] == 1 and final["world_size"] == 2
    epochs = [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9))
    assert final["test_accuracy"] > 0.85


def test_launch_flag_is_stripped_for_the_workers():
    from cnnlab.distributed import strip_launch_flag

    argv = ["train", "d", "--nproc-per-node", "2", "--json", "--nproc-per-node=3"]
    assert strip_launch_flag(argv) == ["train", "d", "--json"]


def test_resume_under_ddp_when_the_best_epoch_came_before_the_stop(
    colour_classes: Path, workspace: Path
):
    """Issue 28 item 13: every rank knows the history it resumes (rank 0 read it), so the end
    (best weights, test evaluation) runs on all ranks together instead of dying in a broadcast."""
    import threading

    stop = threading.Event()
    config = RunConfig(
        data=DataConfig(path=str(colour_classes), image_size=12),
        model=ModelConfig(channels=[4, 8], head_units=0),
        train=TrainConfig(epochs=4, batch_size=16, device="cpu", patience=0, recipe="fixed"),
    )

    def stop_after_two(epoch: int, _row: dict) -> None:
        if epoch == 2:
            stop.set()

    summary = train.fit(config, stop_event=stop, epoch_hook=stop_after_two)
    assert summary["status"] == "stopped" and summary["epochs_run"] == 2
    run = runs.load_run(summary["run_id"])
    # the best epoch was epoch 1 and nothing after it is better (as when val loss turned up)
    state = runs.read_checkpoint(run.last_path)
    state.update(best_epoch=1, best_loss=0.0, bad_epochs=1)
    runs.save_checkpoint_atomic(run.last_path, state)
    resumed = _cnnlab(
        ["cnnlab", "resume", run.run_id, "--nproc-per-node", "2", "--json"], workspace
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads(resumed.stdout)
    assert final["status"] == "completed" and final["epochs_run"] == 4 and final["best_epoch"] == 1
    assert final["test_accuracy"] is not None
    on_disk = json.loads(run.summary_path.read_text())
    assert on_disk["epochs_run"] == 4 and on_disk["status"] == "completed"
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2, 3, 4]


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the launcher's descendants."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = int(next(ln for ln in status.read_text().splitlines() if ln.startswith("PPid"))
                       .split()[1])  # fmt: skip
            environ = (status.parent / "environ").read_bytes().split(b"\0")
        except (OSError, StopIteration, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(status.parent.name)
    return None


def test_a_dead_worker_is_one_clear_line_and_json(digits_dir: Path, workspace: Path):
    """Issue 28 item 13: a worker killed mid-run: the run records what happened and how to
    resume (not gloo's raw error), and `--json` prints the failed run's summary."""
    args = ["cnnlab", "train", str(digits_dir), "--device", "cpu", "--image-size", "12"]
    args += ["--epochs", "30", "--json", "--nproc-per-node", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], env=_env(workspace), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip

    def first_epoch() -> Path | None:
        for m in (workspace / "runs").glob("*/metrics.jsonl"):
            if m.read_text().strip():
                return m.parent
        return None

    run_dir = _wait_for(first_epoch, 240, "the first epoch", proc)
    worker = _wait_for(lambda: _rank_pid(proc.pid, 1), 30, "rank 1's pid", proc)
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    printed = json.loads(out[out.index("{") :])
    assert printed["status"] == "failed" and printed["run_id"] == run_dir.name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "gloo" not in summary["error"] and f"cnnlab resume {run_dir.name}" in summary["error"]
