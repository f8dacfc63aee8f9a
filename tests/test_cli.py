"""The `cnnlab` command line as outside scripts use it: real subprocesses, JSON contracts, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

TRAIN_KEYS = {
    "run_id",
    "run_dir",
    "status",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "val_accuracy",
    "test_accuracy",
    "train_images_per_s",
    "seconds",
    "device",
}


def cnnlab(*args: str, home, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CNNLAB_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_train_json_then_runs_json(digits_dir, workspace):
    proc = cnnlab(
        "train", str(digits_dir), "--epochs", "2", "--image-size", "16", "--json", home=workspace
    )
    summary = json.loads(proc.stdout)  # stdout holds only the JSON object
    assert set(summary) >= TRAIN_KEYS
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert summary["test_accuracy"] > 0.5
    listed = json.loads(cnnlab("runs", "--json", home=workspace).stdout)
    assert [r["run_id"] for r in listed] == [summary["run_id"]]
    text = cnnlab("runs", home=workspace).stdout
    assert summary["run_id"] in text and "completed" in text


@pytest.mark.slow
def test_train_config_file_and_flag_override(digits_dir, workspace, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps({"model": {"name": "custom", "channels": [8]}, "train": {"epochs": 5}})
    )
    proc = cnnlab(
        "train",
        str(digits_dir),
        "--config",
        str(cfg),
        "--epochs",
        "1",
        "--image-size",
        "12",
        "--json",
        home=workspace,
    )
    summary = json.loads(proc.stdout)
    saved = json.loads((workspace / "runs" / summary["run_id"] / "config.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["model"]["channels"] == [8]
    assert saved["data"]["image_size"] == 12


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "{missing}", "--epochs", "1"], "does not exist"),
        (["train", "{digits}", "--lr", "99"], "train.lr must be between"),
        (["train", "{digits}", "--model", "vgg99"], "registered models"),
        (["inspect", "{onefolder}"], "needs at least 2"),
        (["serve", "no-such-run"], "no run 'no-such-run'"),
        (["export", "no-such-run", "--format", "card"], "no run 'no-such-run'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, needle, digits_dir, workspace, tmp_path):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "cats" / "a.png")
    fill = {
        "{missing}": str(tmp_path / "nope"),
        "{digits}": str(digits_dir),
        "{onefolder}": str(tmp_path / "one"),
    }
    proc = cnnlab(*[fill.get(a, a) for a in args], home=workspace, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_demo_and_inspect_json(workspace, tmp_path):
    out = tmp_path / "digits"
    cnnlab("demo", "digits", str(out), home=workspace)
    report = json.loads(cnnlab("inspect", str(out), "--json", home=workspace).stdout)
    assert report["n_images"] == 1797 and len(report["classes"]) == 10
    assert sum(report["split"].values()) == 1797 and report["problems"] == []


@pytest.mark.slow
def test_inspect_lists_every_bad_file_and_counts_the_good(workspace, tmp_path):
    root = tmp_path / "mixed"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (i * 40, 90, 10)).save(root / cls / f"{i}.png")
    good_png = (root / "cats" / "0.png").read_bytes()
    bad = {
        "cats/empty.jpg": b"",
        "cats/text.png": b"just some words",
        "dogs/truncated.png": good_png[: len(good_png) // 2],
        "dogs/notes.txt": b"a note",
    }
    for rel, payload in bad.items():
        (root / rel).write_bytes(payload)
    (root / ".DS_Store").write_bytes(b"\0")  # OS litter: ignored silently
    Image.new("RGB", (8, 8)).save(root / "loose.png")  # not inside a class folder
    report = json.loads(cnnlab("inspect", str(root), "--json", home=workspace).stdout)
    assert report["counts"] == {"cats": 4, "dogs": 4} and report["n_images"] == 8
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    assert set(reasons) == {*bad, "loose.png"}
    assert (
        "empty" in reasons["cats/empty.jpg"]
        and "not an image file type" in reasons["dogs/notes.txt"]
    )
    assert sum(report["split"].values()) == 8
    text = cnnlab("inspect", str(root), home=workspace).stdout
    assert "5 file(s) skipped" in text and "dogs/truncated.png" in text


def test_version_names_the_package_version(workspace):
    import cnnlab as package

    assert cnnlab("--version", home=workspace).stdout.strip() == f"cnnlab {package.__version__}"


@pytest.mark.slow
def test_explain_writes_gradcam_and_feature_map_pngs(trained, digits_dir, tmp_path):
    summary, home = trained
    image = next((digits_dir / "7").iterdir())
    out = tmp_path / "explained"
    proc = cnnlab("explain", summary["run_id"], str(image), "--out", str(out), "--json", home=home)
    report = json.loads(proc.stdout)
    assert report["run_id"] == summary["run_id"] and report["predicted"] in [
        str(d) for d in range(10)
    ]
    assert 0.0 < report["probability"] <= 1.0
    names = set(report["files"])
    assert {"input.png", "gradcam.png"} <= names
    assert {f"features-{layer.replace('.', '_')}.png" for layer in report["layers"]} <= names
    assert len(report["layers"]) >= 2  # every conv layer of the two-block CNN, by default
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    with Image.open(out / "gradcam.png") as cam:
        assert cam.size == (224, 224) and cam.mode == "RGB"
    with Image.open(out / f"features-{report['layers'][0].replace('.', '_')}.png") as maps:
        assert maps.mode == "L" and maps.size[0] > 64  # a grid of maps, not one map
    # one chosen layer; a bad layer name is a one-line user error naming the real ones
    one = tmp_path / "one"
    cnnlab("explain", summary["run_id"], str(image), "--out", str(one),
           "--layer", report["layers"][0], home=home)  # fmt: skip
    assert len(list(one.glob("features-*.png"))) == 1
    bad = cnnlab("explain", summary["run_id"], str(image), "--out", str(one),
                 "--layer", "nope", home=home, check=False)  # fmt: skip
    assert bad.returncode == 2 and "no layer 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_runs_delete_removes_the_run_folder(trained, workspace):
    import shutil

    summary, home = trained
    run_id = summary["run_id"]
    shutil.copytree(home / "runs" / run_id, workspace / "runs" / run_id)
    assert (
        cnnlab("runs", "delete", run_id, home=workspace).stdout.strip() == f"deleted run {run_id}"
    )
    assert not (workspace / "runs" / run_id).exists()
    assert json.loads(cnnlab("runs", "--json", home=workspace).stdout) == []
    again = cnnlab("runs", "delete", run_id, home=workspace, check=False)
    assert again.returncode == 2 and f"no run '{run_id}'" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_reader_that_closes_early_is_no_traceback(workspace, tmp_path) -> None:
    """Issue 28 item 16: `cnnlab runs --json | head -1` ends quietly (no BrokenPipeError)."""
    from cnnlab import runs
    from cnnlab.config import RunConfig

    for _ in range(300):  # more JSON than a pipe buffer holds (CNNLAB_HOME is the workspace)
        runs.create_run(RunConfig(), ["a", "b"], {"train": ["x" * 40] * 5})
    env = {**os.environ, "CNNLAB_HOME": str(workspace)}
    proc = subprocess.run(
        f"{sys.executable} -m cnnlab.cli runs --json | head -1",
        shell=True, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.stdout == "[\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "made_run", "needle"),
    [
        # recipe fixed: the plain net diverges at lr 10 (the recipe's residual net need not)
        (["train", "{tiny}", "--lr", "10", "--optimizer", "sgd", "--schedule", "constant",
          "--recipe", "fixed"], True, "NaN/Inf"),
        (["train", "{onesmall}"], False, "'b'"),
        (["train", "{onesmall}", "--nproc-per-node", "2"], False, "training processes failed"),
        (["resume", "no-such-run"], False, "no run 'no-such-run'"),
    ],
)  # fmt: skip
def test_a_failing_train_or_resume_json_prints_one_json_object(
    args, made_run, needle, workspace, tmp_path
):
    """Issue 28 item 13: `--json` prints one JSON object with the error on every failure: the
    failed run's summary when a run folder was made, else status, error and run_id null."""
    rng = np.random.default_rng(0)
    for folder, sizes in (("tiny", {"a": 12, "b": 12}), ("onesmall", {"a": 12, "b": 1})):
        for c, n in sizes.items():
            (tmp_path / folder / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / folder / c / f"{i}.png")
    fill = {"{tiny}": str(tmp_path / "tiny"), "{onesmall}": str(tmp_path / "onesmall")}
    small = ["--image-size", "8", "--epochs", "2", "--batch-size", "4", "--device", "cpu"]
    argv = [fill.get(a, a) for a in args] + (small if args[0] == "train" else []) + ["--json"]
    proc = cnnlab(*argv, home=workspace, check=False)
    assert proc.returncode == 2, proc.stderr
    printed = json.loads(proc.stdout)  # the whole of stdout: one object
    assert printed["status"] == "failed" and needle in printed["error"]
    run_dirs = sorted((workspace / "runs").glob("*/summary.json"))
    if made_run:
        assert [p.parent.name for p in run_dirs] == [printed["run_id"]]
        assert printed["n_train"] == 16  # the run's own summary
    else:
        assert printed["run_id"] is None and not run_dirs
