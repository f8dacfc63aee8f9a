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

from cnnlab import cli, data, lr_finder, runs, train, workspace
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.errors import ConfigError, TrainingError

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnlab.cli", *args],
        capture_output=True, text=True, timeout=300, env=env, preexec_fn=preexec,
        cwd=REPO,
    )  # fmt: skip


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
def test_runs_text_prints_a_dash_for_missing_values(workspace: Path) -> None:
    runs.create_run(_config(), ["a", "b"])  # 'running' (interrupted): no epochs, no accuracy
    result = _cli("runs", env=_env(workspace))
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[1].split()
    assert line[1] == "interrupted" and line[-3:] == ["-", "-", "-"]


# ---------------------------------------------------------------- 6/7: the run lock
HOLDER = textwrap.dedent(
    """
    import sys, time
    from cnnlab import runs
    runs.mark_active(runs.load_run(sys.argv[1]), True)
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_run_in_progress_is_locked_against_resume_train_and_delete(workspace: Path) -> None:
    run = runs.create_run(_config(), ["a", "b"])
    runs.update_summary(run, status="stopped")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run.run_id], stdout=subprocess.PIPE, text=True,
        env=_env(workspace), cwd=REPO,
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
        result = _cli("resume", run.run_id, env=_env(workspace))
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "is running" in result.stderr
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
    trained, workspace: Path
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

    env = _env(workspace)
    text = _cli("runs", env=env)
    assert text.returncode == 0 and text.stdout.count("damaged") >= 6, text.stderr
    as_json = _cli("runs", "--json", env=env)
    assert as_json.returncode == 0
    assert {r["status"] for r in json.loads(as_json.stdout)} == {"completed", "damaged"}
    evaluated = _cli("evaluate", good.name, "--json", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["run_id"] == good.name


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
    env = _env(workspace)
    inspected = _cli("inspect", str(colour_classes), "--json", env=env, preexec=_full_disk)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["n_images"] == 90
    assert inspected.stderr.count("could not write the cache") == 1  # warned once
    trained_ = _cli(
        "train", str(colour_classes), "--epochs", "1", "--image-size", "12", "--device", "cpu",
        env=env, preexec=_full_disk,
    )  # fmt: skip
    assert trained_.returncode == 2
    errors = [ln for ln in trained_.stderr.splitlines() if "error" in ln]
    assert (
        len(errors) == 1 and "could not write" in errors[0] and "Traceback" not in trained_.stderr
    )
    leftovers = [p.name for p in workspace.rglob(".*") if p.is_file()]
    assert leftovers == [] and list((workspace / "runs").iterdir()) == []


def test_an_unusable_workspace_still_inspects(tmp_path: Path, colour_classes: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = _env(blocker / "home")  # cannot be created: as good as read-only
    inspected = _cli("inspect", str(colour_classes), env=env)
    assert inspected.returncode == 0 and "continuing in memory" in inspected.stderr
    trained_ = _cli("train", str(colour_classes), "--epochs", "1", env=env)
    assert trained_.returncode == 2 and "cannot create the workspace" in trained_.stderr
    assert "Traceback" not in trained_.stderr


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
    trained, tmp_path: Path
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
    env = _env(trained[1])
    run_id = trained[0]["run_id"]
    ok = _cli("predict", run_id, str(folder), "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert [Path(r["path"]).name for r in json.loads(ok.stdout)] == ["good.png"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG broken")
    failed = _cli("predict", run_id, str(bad), env=env)
    assert failed.returncode == 2 and "could not be read" in failed.stderr
    for k in ("0", "-1"):
        refused = _cli("predict", run_id, str(folder), "--top-k", k, env=env)
        assert refused.returncode == 2 and "--top-k must be at least 1" in refused.stderr


def test_lr_find_refuses_too_few_steps(workspace: Path, colour_classes: Path) -> None:
    with pytest.raises(ConfigError, match="at least 2 steps"):
        lr_finder.find_lr(_config(str(colour_classes)), steps=0)
    result = _cli("lr-find", str(colour_classes), "--steps", "0", env=_env(workspace))
    assert result.returncode == 2 and "--steps must be at least 2" in result.stderr
    assert "diverged" not in result.stderr


def test_app_resolves_relative_workspace_settings_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = cli.app_env({"CNNLAB_HOME": "rel-home", "CNNLAB_DATA_ROOTS": f"d1{os.pathsep}~/d2"})
    assert env["CNNLAB_HOME"] == str(tmp_path / "rel-home")
    assert env["CNNLAB_DATA_ROOTS"].split(os.pathsep) == [
        str(tmp_path / "d1"),
        str(Path("~/d2").expanduser().resolve()),
    ]
    assert os.environ.get("CNNLAB_HOME") != "rel-home"  # the caller's environment is left alone
