"""What real workspaces go through (issue 13, items 5-12): each test reproduces one failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab import app_launcher, cli, data, lr_finder, runs, train, workspace
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.errors import ConfigError, TrainingError

REPO = Path(__file__).resolve().parent.parent


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess costs a torch import): (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _env(home: Path) -> dict:
    env = dict(os.environ, CNNLAB_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("CNNLAB_DATA_ROOTS", None)
    return env


def _config(path: str = "/data") -> RunConfig:
    cfg = RunConfig()
    cfg.data.path = path
    return cfg


def _copy_trained(trained, workspace: Path, name: str) -> Path:
    """A copy of the shared trained run inside this test's workspace, under a new folder name."""
    dest = workspace / "runs" / name
    shutil.copytree(Path(trained[0]["run_dir"]), dest)
    return dest


# ---------------------------------------------------------------- 5: runs text with gaps
def test_runs_text_prints_a_dash_for_missing_values(workspace: Path, capsys) -> None:
    runs.create_run(_config(), ["a", "b"])  # 'running' (interrupted): no epochs, no accuracy
    code, out, err = _main(capsys, "runs")
    assert code == 0, err
    line = out.splitlines()[1].split()
    assert line[1] == "interrupted" and line[-3:] == ["-", "-", "-"]


# ---------------------------------------------------------------- 6/7: the run lock
# another process training the run, reduced to what matters: it holds the flock on run.lock
HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_run_in_progress_is_locked_against_resume_train_and_delete(workspace, capsys) -> None:
    run = runs.create_run(_config(), ["a", "b"])
    runs.update_summary(run, status="stopped")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run.run_dir / runs.LOCK_NAME)], stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        runs.update_summary(run, status="running", pid=os.getpid())  # a pid that lives: no matter
        assert runs.list_runs()[0]["status"] == "running"
        with pytest.raises(TrainingError, match="being trained by another"):
            runs.mark_active(run, True)  # what a second fit/resume of the run does first
        with pytest.raises(TrainingError, match="being trained by another"):
            runs.delete_run(run.run_id)
        assert run.config_path.is_file()
        code, _, err = _main(capsys, "resume", run.run_id)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "is running" in err
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process: the same live pid now reads as interrupted
    assert runs.list_runs()[0]["status"] == "interrupted"
    runs.delete_run(run.run_id)
    assert not run.run_dir.exists()


def test_the_trainer_never_recreates_a_deleted_run_folder(workspace, colour_classes) -> None:
    config = RunConfig(
        data=DataConfig(path=str(colour_classes), image_size=12),
        model=ModelConfig(channels=[4], head_units=0),
        train=TrainConfig(epochs=3, batch_size=16, device="cpu", patience=0),
    )
    seen = {}

    def hook(epoch: int, metrics: dict) -> None:
        run = runs.load_run(runs.list_runs()[0]["run_id"])
        with pytest.raises(TrainingError, match="being trained"):
            runs.delete_run(run)  # the dashboard's Delete while it trains
        seen["dir"] = run.run_dir
        shutil.rmtree(run.run_dir)  # another process removes it anyway

    with pytest.raises(TrainingError, match="folder was deleted"):
        train.fit(config, epoch_hook=hook)
    assert not seen["dir"].exists()
    assert list((workspace / "runs").iterdir()) == []


# ---------------------------------------------------------------- 8/9: damaged and copied runs
def test_damaged_runs_are_listed_with_the_reason_and_the_rest_keeps_working(
    trained, workspace: Path, capsys
) -> None:
    good = _copy_trained(trained, workspace, "20990101-000000000-good")
    bad_summary = _copy_trained(trained, workspace, "20990101-000001000-summ")
    (bad_summary / "summary.json").write_text("[1, 2]")
    bad_metrics = _copy_trained(trained, workspace, "20990101-000002000-metr")
    with open(bad_metrics / "metrics.jsonl", "a") as f:
        f.write("[3]\n" + (bad_metrics / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    bad_config = _copy_trained(trained, workspace, "20990101-000003000-conf")
    (bad_config / "config.json").write_text('{"data": {"image_size": "big"}}')

    listed = {r["run_id"]: r for r in runs.list_runs()}
    assert listed[good.name]["status"] == "completed"
    assert "summary.json holds a list" in listed[bad_summary.name]["damage"]
    assert "metrics.jsonl line" in listed[bad_metrics.name]["damage"]
    assert "config.json" in listed[bad_config.name]["damage"]
    for name in (bad_summary.name, bad_metrics.name, bad_config.name):
        assert listed[name]["status"] == "damaged"

    code, out, err = _main(capsys, "runs")
    assert code == 0 and out.count("damaged") >= 6, err
    code, out, _ = _main(capsys, "runs", "--json")
    assert code == 0 and {r["status"] for r in json.loads(out)} == {"completed", "damaged"}
    code, out, err = _main(capsys, "evaluate", good.name, "--json")
    assert code == 0 and json.loads(out)["run_id"] == good.name, err


def test_a_copied_run_folder_has_its_own_id(trained, workspace: Path) -> None:
    original = _copy_trained(trained, workspace, "20990101-000000000-orig")
    copy = workspace / "runs" / "my-copy"
    shutil.copytree(original, copy)
    ids = {r["run_id"]: r["run_dir"] for r in runs.list_runs()}
    assert ids == {"20990101-000000000-orig": str(original), "my-copy": str(copy)}
    runs.delete_run("my-copy")
    assert original.is_dir() and not copy.exists()


# ---------------------------------------------------------------- 10: full disk, read-only
def _full_disk() -> None:
    import resource

    # every file write past 0 bytes fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_full_disk_keeps_inspect_working_and_fails_train_in_one_line(
    workspace: Path, colour_classes: Path
) -> None:
    # inspect then train in one process (one torch import), on a disk that takes no byte
    script = (
        "from cnnlab import cli; "
        f"a = cli.main(['inspect', {str(colour_classes)!r}]); "
        f"b = cli.main(['train', {str(colour_classes)!r}, '--epochs', '1', '--image-size', '12', "
        "'--device', 'cpu']); print('codes', a, b)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env=_env(workspace), preexec_fn=_full_disk, cwd=REPO,
    )  # fmt: skip
    assert "codes 0 2" in result.stdout, result.stderr
    assert "90 usable images" in result.stdout
    assert result.stderr.count("could not write the cache") == 1  # warned once, kept going
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and "could not write" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    leftovers = [p.name for p in workspace.rglob(".*") if p.is_file()]
    assert leftovers == [] and list((workspace / "runs").iterdir()) == []


def test_an_unusable_workspace_still_inspects(
    tmp_path: Path, colour_classes: Path, monkeypatch, capsys, caplog
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CNNLAB_HOME", str(blocker / "home"))  # cannot be created: read-only
    monkeypatch.setattr(workspace, "_warned", set())
    code, out, err = _main(capsys, "inspect", str(colour_classes))
    assert code == 0 and "90 usable images" in out, err
    assert "continuing in memory" in caplog.text
    code, _, err = _main(capsys, "train", str(colour_classes), "--epochs", "1")
    assert code == 2 and "cannot create the workspace" in err and len(err.splitlines()) == 1


def test_stale_temp_files_are_cleaned_but_not_a_live_writers(workspace, colour_classes) -> None:
    import fcntl

    cache = workspace / "cache"
    cache.mkdir(parents=True)
    stale = [cache / ".verify-dead.json", cache / ".images-dead.npy"]
    for p in stale:
        p.write_bytes(b"half")
    live = cache / ".images-live.npy"
    live.write_bytes(b"being written")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a writer in another process holds
    try:
        workspace_module_reset()
        data.scan(colour_classes)
        assert not any(p.exists() for p in stale) and live.exists()
    finally:
        os.close(fd)


def workspace_module_reset() -> None:
    """Forget which folders this process already cleaned (each test has a new workspace)."""
    workspace._cleaned.clear()


# ---------------------------------------------------------------- 11: links out of the roots
def test_links_leading_outside_the_data_roots_are_problems(tmp_path, monkeypatch) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    gen = np.random.default_rng(0)
    Image.fromarray(gen.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(outside / "secret.png")
    root = tmp_path / "allowed" / "set"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            img = gen.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / c / f"{i}.png")
    (root / "a" / "evil.png").symlink_to(outside / "secret.png")
    (root / "b" / "deeper").symlink_to(outside, target_is_directory=True)
    (root / "stolen").symlink_to(outside, target_is_directory=True)  # a whole class folder
    (root / "b" / "fine.png").symlink_to(root / "a" / "0.png")  # inside: followed
    monkeypatch.setenv("CNNLAB_DATA_ROOTS", str(tmp_path / "allowed"))
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "home"))
    result = data.scan(workspace.check_inside_roots(root))
    reasons = {p.path: p.reason for p in result.problems}
    for rel in ("a/evil.png", "b/deeper", "stolen"):
        assert "outside the allowed data folders" in reasons[rel]
    assert all(outside not in f.resolve().parents for f in result.files)
    assert result.classes == ["a", "b"] and result.n_images == 7


# ---------------------------------------------------------------- 12: predict, lr-find, app
def test_predict_folder_skips_litter_and_fails_when_nothing_is_read(
    trained, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = tmp_path / "in"
    (folder / "__MACOSX").mkdir(parents=True)
    (folder / ".thumbs").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(folder / "good.png")
    for junk in (
        folder / "._good.png",
        folder / "__MACOSX" / "x.png",
        folder / ".thumbs" / "y.png",
    ):
        junk.write_bytes(b"\x00\x05\x16\x07 resource fork")
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    run_id = trained[0]["run_id"]
    code, out, err = _main(capsys, "predict", run_id, str(folder), "--json")
    assert code == 0, err
    assert [Path(r["path"]).name for r in json.loads(out)] == ["good.png"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG broken")
    code, _, err = _main(capsys, "predict", run_id, str(bad))
    assert code == 2 and "could not be read" in err
    for k in ("0", "-1"):
        code, _, err = _main(capsys, "predict", run_id, str(folder), "--top-k", k)
        assert code == 2 and "--top-k must be at least 1" in err


def test_lr_find_refuses_too_few_steps(workspace: Path, colour_classes: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="at least 2 steps"):
        lr_finder.find_lr(_config(str(colour_classes)), steps=0)
    code, _, err = _main(capsys, "lr-find", str(colour_classes), "--steps", "0")
    assert code == 2 and "--steps must be at least 2" in err and "diverged" not in err


def test_app_resolves_relative_workspace_settings_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = app_launcher.app_env(
        {"CNNLAB_HOME": "rel-home", "CNNLAB_DATA_ROOTS": f"d1{os.pathsep}~/d2"}
    )
    assert env["CNNLAB_HOME"] == str(tmp_path / "rel-home")
    assert env["CNNLAB_DATA_ROOTS"].split(os.pathsep) == [
        str(tmp_path / "d1"),
        str(Path("~/d2").expanduser().resolve()),
    ]
    assert os.environ.get("CNNLAB_HOME") != "rel-home"  # the caller's environment is left alone


# ---------------------------------------------------------------- issue 28 item 14
def _stopped_run(colours: Path, epochs: int = 3, stop_at: int = 2) -> runs.Run:
    """A real run stopped by the user after `stop_at` epochs (resumable)."""
    import threading

    stop = threading.Event()
    config = RunConfig(
        data=DataConfig(path=str(colours), image_size=12),
        model=ModelConfig(channels=[4, 8], head_units=0),
        train=TrainConfig(epochs=epochs, batch_size=16, device="cpu", patience=0),
    )
    summary = train.fit(config, stop_event=stop,
                        epoch_hook=lambda e, _r: stop.set() if e == stop_at else None)  # fmt: skip
    assert summary["status"] == "stopped"
    return runs.load_run(summary["run_id"])


def test_a_resumed_copy_is_its_own_run(workspace: Path, colour_classes: Path, capsys) -> None:
    original = _stopped_run(colour_classes)
    copy = workspace / "runs" / "s1"
    shutil.copytree(original.run_dir, copy)
    code, out, err = _main(capsys, "resume", "s1", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed["run_id"] == "s1" and printed["run_dir"] == str(copy)
    written = json.loads((copy / "summary.json").read_text())
    assert written["run_id"] == "s1" and written["run_dir"] == str(copy)
    assert json.loads((original.run_dir / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.parametrize("summary", [None, '{"status": "runn'])
def test_a_missing_or_torn_summary_still_resumes(
    workspace: Path, colour_classes: Path, capsys, summary
) -> None:
    run = _stopped_run(colour_classes)
    if summary is None:
        run.summary_path.unlink()
    else:
        run.summary_path.write_text(summary)
    code, out, err = _main(capsys, "resume", run.run_id, "--json")
    assert code == 0, err
    assert "unknown" not in err
    final = json.loads(out)
    assert final["status"] == "completed" and final["epochs_run"] == 3
    assert runs.list_runs()[0]["status"] == "completed"


def test_a_truncated_metrics_file_is_said_when_resuming(
    workspace: Path, colour_classes: Path, caplog
) -> None:
    import logging

    run = _stopped_run(colour_classes, epochs=4, stop_at=3)
    lines = run.metrics_path.read_text().splitlines()
    run.metrics_path.write_text(lines[-1] + "\n")  # epochs 1-2 lost (a truncated copy)
    caplog.set_level(logging.WARNING)
    train.resume(run.run_id)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "epoch(s) 1-2" in said and "metrics.jsonl" in said


def test_epochs_of_an_interrupted_run_come_from_its_metrics(
    workspace: Path, colour_classes: Path, capsys
) -> None:
    run = _stopped_run(colour_classes)
    summary = json.loads(run.summary_path.read_text())
    for key in ("epochs_run", "best_epoch"):
        summary.pop(key)
    summary["status"] = "running"  # killed: no lock held, so it lists as interrupted
    run.summary_path.write_text(json.dumps(summary))
    (row,) = runs.list_runs()
    assert row["status"] == "interrupted" and row["epochs_run"] == 2
    code, out, _ = _main(capsys, "runs")
    header, *lines = out.splitlines()
    line = next(ln for ln in lines if ln.startswith(run.run_id))
    assert dict(zip(header.split(), line.split(), strict=False))["epochs"] == "2"


def test_leftover_temporaries_go_when_the_run_resumes(workspace: Path, colour_classes: Path):
    run = _stopped_run(colour_classes)
    left = run.run_dir / ".last.pt.abc123.tmp"  # what a SIGKILL during torch.save leaves
    left.write_bytes(b"half a checkpoint")
    train.resume(run.run_id)
    assert not left.exists()


def test_a_bad_local_weights_file_leaves_no_run(workspace: Path, colour_classes, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    config = RunConfig(
        data=DataConfig(path=str(colour_classes), image_size=32),
        model=ModelConfig(name="resnet18", weights=str(bad)),
        train=TrainConfig(epochs=1, device="cpu"),
    )
    with pytest.raises(Exception, match="bad.pth"):
        train.fit(config)
    assert runs.list_runs() == []
