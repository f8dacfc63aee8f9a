"""Crash consistency and faults: SIGKILL a real `cnnlab train`, resume it, OOM, a full disk.

The kill test drives the real CLI in a subprocess and kills it at four moments (data preparation,
the instant the run folder appears, mid-epoch, a random moment later); after each kill every run
folder must read back whole, and `cnnlab resume` must finish the run like an uninterrupted one.
NaN loss is covered by tests/test_train.py::test_nan_loss_stops_with_a_clear_error.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import data, jobs, models, runs, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.errors import CnnlabError, TrainingError

EPOCHS = 8
TINY = {  # a two-block CNN at 16 px: about half a second per digits epoch on two cores
    "model": {"channels": [8, 16], "head_units": 0},
    "train": {"device": "cpu", "batch_size": 64, "seed": 0},
}
TEMP_FILE = re.compile(r"^\.(best\.pt|last\.pt|summary\.json|config\.json|split\.json|"
                       r"metrics\.jsonl)\..+\.tmp$")  # fmt: skip


# ---------------------------------------------------------------- helpers for the kill test
def _cli(home: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    env.pop("CNNLAB_DATA_ROOTS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab.cli", *args],
        env=env,
        stdout=kw.get("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        text=True,
    )


def _json_of(proc: subprocess.Popen, timeout: float = 400) -> dict | list:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def _wait_for(proc: subprocess.Popen, cond: Callable[[], bool], timeout: float = 200) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill moment: {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"kill moment not reached within {timeout} s")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    if proc.stdout:
        proc.stdout.close()


def _run_dirs(home: Path) -> list[Path]:
    root = home / "runs"
    return sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def _metrics_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def _check_run_folder(run_dir: Path) -> dict:
    """Everything a reader opens parses; returns {"epochs": [...], "last": epoch or None}."""
    names = {p.name for p in run_dir.iterdir()}
    for name in names:
        if name.startswith("."):  # a temp file from a write the kill cut short
            assert TEMP_FILE.match(name), f"unexpected leftover {name} in {run_dir}"
    for name in ("config.json", "split.json", "summary.json"):
        if name in names:
            json.loads((run_dir / name).read_text())  # whole, or the rename never happened
    if "config.json" in names:
        assert runs.read_config(runs.Run(run_dir.name, run_dir)).train.epochs == EPOCHS
    raw = (run_dir / "metrics.jsonl").read_bytes() if "metrics.jsonl" in names else b""
    assert raw == b"" or raw.endswith(b"\n"), "metrics.jsonl ends in a torn line"
    epochs = [json.loads(line)["epoch"] for line in raw.splitlines()]
    assert epochs == list(range(1, len(epochs) + 1))
    last = None
    for name in ("best.pt", "last.pt"):
        if name in names:
            ckpt = torch.load(run_dir / name, map_location="cpu", weights_only=True)
            assert ckpt["model_state"] and ckpt["epoch"] >= 1
            if name == "last.pt":
                last = ckpt["epoch"]
                # the kill may land between the metrics line and the last.pt rename, never more
                assert last in (len(epochs), len(epochs) - 1)
            else:
                assert ckpt["epoch"] <= len(epochs)
    return {"epochs": epochs, "last": last}


def _check_cache(home: Path) -> None:
    """A decode killed midway leaves no cache a reader would trust (only an ignored temp)."""
    for npy in (home / "cache").glob("*.npy"):
        if npy.name.startswith("."):
            continue  # load_tensors only ever opens its exact, renamed-into-place name
        arr = np.load(npy)
        assert arr.dtype == np.uint8 and arr.shape[1:] == (3, 16, 16)


def _statuses(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    return {r["run_id"]: r["status"] for r in runs.list_runs()}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_any_moment_leaves_readable_runs_that_resume(
    tmp_path: Path, digits_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    train_args = ("train", str(digits_dir), "--config", str(config), "--epochs", str(EPOCHS),
                  "--image-size", "16")  # fmt: skip
    rng = random.Random(9)
    # each moment is a predicate over the run folders this process created (`new`)
    moments: dict[str, Callable[[list[Path]], bool]] = {
        # cold cache: the scan is over and the decode into the cache is under way, no run yet
        "preparing data": lambda new: (home / "cache").is_dir(),
        "run folder just created": lambda new: bool(new),
        "first epoch written": lambda new: any(_metrics_lines(d) >= 1 for d in new),
        "a random moment later": lambda new: any(_metrics_lines(d) >= 2 for d in new),
    }
    killed: dict[str, str] = {}  # moment -> run id (when a run folder existed)
    for moment, reached in moments.items():
        before = set(_run_dirs(home))
        proc = _cli(home, *train_args, stdout=subprocess.DEVNULL)
        _wait_for(proc, lambda: reached([d for d in _run_dirs(home) if d not in before]))  # noqa: B023
        if moment in ("first epoch written", "a random moment later"):
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the next epoch
        _kill(proc)

        for d in _run_dirs(home):
            _check_run_folder(d)
        _check_cache(home)
        fresh = [d for d in _run_dirs(home) if d not in before]
        if moment == "preparing data":
            assert fresh == []  # nothing of a run exists before the data is ready
            continue
        assert len(fresh) == 1
        killed[moment] = fresh[0].name
        if (fresh[0] / "config.json").is_file():  # written last: the folder is a run from then on
            assert _statuses(home, monkeypatch)[fresh[0].name] == "interrupted"

    # the CLI agrees: every killed run with a summary lists as interrupted
    listed = {r["run_id"]: r["status"] for r in _json_of(_cli(home, "runs", "--json"))}
    for run_id in killed.values():
        if (home / "runs" / run_id / "config.json").is_file():
            assert listed[run_id] == "interrupted"

    # a run killed before its first epoch has nothing to resume: a clear error. (Killed before
    # config.json landed, its folder is not a run at all: invisible to `runs` and to resume.)
    early = home / "runs" / killed["run folder just created"]
    expected = "no last.pt" if (early / "config.json").is_file() else "no run"
    with pytest.raises(CnnlabError, match=expected):
        train.resume(early.name)

    # resume the mid-training kill (killed once more while resuming), and train a reference
    # run with the same seed side by side
    victim = killed["a random moment later"]
    done_before = len(_check_run_folder(home / "runs" / victim)["epochs"])
    reference = _cli(home, *train_args, "--json")
    again = _cli(home, "resume", victim, "--json", stdout=subprocess.DEVNULL)
    _wait_for(again, lambda: _metrics_lines(home / "runs" / victim) >= done_before + 1)
    _kill(again)
    _check_run_folder(home / "runs" / victim)
    resumed = _json_of(_cli(home, "resume", victim, "--json"))
    uninterrupted = _json_of(reference)

    assert resumed["run_id"] == victim and resumed["status"] == "completed"
    assert resumed["resumed"] == 2
    assert resumed["epochs_run"] == uninterrupted["epochs_run"]
    diff = abs(resumed["test_accuracy"] - uninterrupted["test_accuracy"])
    print(
        f"resumed {victim}: epochs {resumed['epochs_run']} vs {uninterrupted['epochs_run']}, "
        f"test accuracy {resumed['test_accuracy']:.4f} vs {uninterrupted['test_accuracy']:.4f}"
    )
    assert diff <= 0.03
    folder = _check_run_folder(home / "runs" / victim)
    assert folder["epochs"] == list(range(1, resumed["epochs_run"] + 1))  # curves continue
    assert folder["last"] == resumed["epochs_run"]
    assert _statuses(home, monkeypatch)[victim] == "completed"


# ---------------------------------------------------------------- faults
@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory, colour_classes: Path) -> data.PreparedData:
    """3 classes x 30 noisy 12 px images, decoded once: data for the fault tests."""
    root = colour_classes
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNLAB_HOME", str(tmp_path_factory.mktemp("small-home")))
    yield data.prepare(DataConfig(path=str(root), image_size=12))
    mp.undo()


def _config(prepared: data.PreparedData, model: str = "custom", epochs: int = 2) -> RunConfig:
    return RunConfig(
        data=DataConfig(path=str(prepared.scan.root), image_size=12),
        model=ModelConfig(name=model, channels=[4, 8], head_units=0),
        train=TrainConfig(epochs=epochs, batch_size=16, device="cpu", patience=0),
    )


class _OutOfMemory(torch.nn.Module):
    """Fails like a GPU that ran out of memory on the first forward pass."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.fc = torch.nn.Linear(3, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB (simulated by the test)"
        )


@pytest.fixture
def oom_model():
    models.register_model("test_oom")(lambda cfg, n, size: _OutOfMemory(n))
    yield "test_oom"
    models.MODELS.pop("test_oom")


OOM_ADVICE = r"out of memory on .*: lower the batch size \(16\) or the image size \(12\)"


def test_out_of_memory_fails_with_advice(workspace: Path, small_data, oom_model) -> None:
    events = []
    with pytest.raises(TrainingError, match=OOM_ADVICE):
        train.fit(_config(small_data, oom_model), data=small_data, callbacks=[events.append])
    assert events[-1].kind == "Failed" and "lower the batch size" in events[-1].message
    [summary] = runs.list_runs()
    assert summary["status"] == "failed" and re.search(OOM_ADVICE, summary["error"])


def test_out_of_memory_job_is_failed_and_the_dashboard_keeps_serving(
    workspace: Path, small_data, oom_model
) -> None:
    from streamlit.testing.v1 import AppTest

    manager = jobs.get_manager()  # the registry the dashboard pages use
    # data given: trained in a thread here, where the test's model is registered (a queued job's
    # process would not know it; tests/test_job_queue.py runs a real memory-limited job process)
    job = manager.start(_config(small_data, oom_model), data=small_data)
    snap = manager.wait(job.job_id, timeout=60)
    assert snap.status == "failed" and re.search(OOM_ADVICE, snap.error)
    ok = manager.wait(manager.start(_config(small_data)).job_id, timeout=60)
    assert ok.status == "completed"  # the next job in the same process is unaffected

    app = Path(__file__).resolve().parents[1] / "app.py"
    at = AppTest.from_file(str(app), default_timeout=60)
    at.run()
    assert not at.exception
    for page in ("train", "runs", "evaluate", "predict", "data", "model", "home"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, at.exception)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real 2 MB file system as the workspace, and fill(): use up its free space (ENOSPC).

    Falls back to a read-only run folder (EACCES) where mounting is not permitted (non-root);
    root without mount rights ignores permissions, so the test is skipped there.
    """
    mount = tmp_path / "small-disk"
    mounted = _mount_tmpfs(mount, "2m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("cannot mount a tmpfs and root ignores read-only folders")
    monkeypatch.setenv("CNNLAB_HOME", str(mount))
    filler = mount / "filler"

    def fill(run_dir: Path) -> None:
        if not mounted:
            run_dir.chmod(0o500)
            return
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: exactly the state under test

    def free(run_dir: Path) -> None:
        run_dir.chmod(0o700)
        filler.unlink(missing_ok=True)

    yield fill, free
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoints(small_data, small_disk):
    fill, free = small_disk
    state = {}

    def after_epoch(epoch: int, row: dict) -> None:
        if epoch == 1:
            state["run"] = runs.list_runs()[0]["run_dir"]
            fill(Path(state["run"]))

    with pytest.raises(TrainingError, match=r"could not write .*(Free disk space|writable)"):
        train.fit(_config(small_data, epochs=3), data=small_data, epoch_hook=after_epoch)
    run_dir = Path(state["run"])
    free(run_dir)
    for name in ("best.pt", "last.pt"):  # epoch 1's checkpoints survived the failed writes
        assert torch.load(run_dir / name, weights_only=True)["epoch"] == 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in runs.read_metrics(runs.load_run(run_dir))] in ([1], [1, 2])


def test_run_that_failed_on_a_full_disk_does_not_list_as_running(small_data, small_disk):
    fill, free = small_disk
    state = {}

    def after_epoch(epoch: int, row: dict) -> None:
        state["run"] = runs.list_runs()[0]["run_dir"]
        fill(Path(state["run"]))

    with pytest.raises(TrainingError):
        train.fit(_config(small_data, epochs=3), data=small_data, epoch_hook=after_epoch)
    free(Path(state["run"]))
    assert runs.list_runs()[0]["status"] != "running"


def test_metrics_append_on_a_full_disk_is_a_training_error(small_data, small_disk):
    fill, _free = small_disk
    run = runs.create_run(_config(small_data), small_data.classes)
    fill(run.run_dir)
    with pytest.raises(TrainingError, match="could not write"):
        runs.append_metrics(run, {"epoch": 1, "train_loss": 1.0})


def test_one_cycle_schedule_with_four_steps_in_all_trains(workspace: Path, small_data) -> None:
    config = _config(small_data, epochs=1)  # 66 training images // batch 16 = 4 steps
    assert config.train.schedule == "onecycle" and len(small_data.split.train) // 16 == 4
    assert train.fit(config, data=small_data)["status"] == "completed"


def test_a_checkpoint_save_on_a_full_disk_is_one_line_and_the_run_resumes(
    small_data, small_disk, caplog
):
    """Issue 28 item 15: torch.save on a full disk raises RuntimeError ('unexpected pos'), not
    OSError: it is the same one-line TrainingError naming the disk, no traceback is logged while
    recording the failure, and once space is freed the run resumes to the end."""
    import logging

    fill, free = small_disk
    filler = Path(os.environ["CNNLAB_HOME"]) / "filler"
    state = {}

    def after_epoch(epoch: int, row: dict) -> None:
        if epoch == 1:
            state["run"] = Path(runs.list_runs()[0]["run_dir"])
            fill(state["run"])
            if filler.exists():  # leave a few pages: the metrics line fits, a checkpoint not
                os.truncate(filler, max(0, filler.stat().st_size - 12_288))

    caplog.set_level(logging.WARNING)
    config = _config(small_data, epochs=3)
    config.model.channels = [
        32,
        64,
    ]  # checkpoints of ~100 KB: torch.save itself meets the full disk
    with pytest.raises(TrainingError) as info:
        train.fit(config, data=small_data, epoch_hook=after_epoch)
    message = str(info.value)
    assert "\n" not in message and "enforce fail" not in message and "unexpected pos" not in message
    assert "could not write" in message and ("free" in message or "writable" in message)
    assert not [r for r in caplog.records if r.exc_info], "no traceback while recording it"
    run_dir = state["run"]
    free(run_dir)
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    summary = train.resume(str(run_dir))
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
