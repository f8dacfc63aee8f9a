"""Run folders: atomic writes, torn metrics lines, listing, interrupted detection, delete."""

import json
import os

import pytest
import torch

from cnnlab import runs
from cnnlab.config import RunConfig
from cnnlab.errors import RunNotFoundError


def _config():
    cfg = RunConfig()
    cfg.data.path = "/data"
    return cfg


def test_create_list_load_delete(workspace):
    run = runs.create_run(_config(), ["a", "b"], {"train": ["a/1.png"], "val": [], "test": []})
    assert json.loads(run.config_path.read_text())["data"]["path"] == "/data"
    assert runs.read_split(run)["classes"] == ["a", "b"]
    runs.mark_active(run, True)  # what fit() does while it trains the run
    listed = runs.list_runs()
    assert listed[0]["run_id"] == run.run_id and listed[0]["status"] == "running"
    runs.mark_active(run, False)
    assert runs.load_run(run.run_id) == runs.load_run(str(run.run_dir))
    runs.delete_run(run.run_id)
    assert not run.run_dir.exists()
    with pytest.raises(RunNotFoundError, match="cnnlab runs"):
        runs.load_run(run.run_id)


def test_metrics_survive_a_torn_last_line(workspace):
    run = runs.create_run(_config(), ["a", "b"])
    runs.append_metrics(run, {"epoch": 1, "val_loss": 0.5})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 2, "val_lo')  # what a kill mid-write would leave without fsync+append
    assert runs.read_metrics(run) == [{"epoch": 1, "val_loss": 0.5}]


def test_a_dead_running_process_reads_as_interrupted(workspace):
    run = runs.create_run(_config(), ["a", "b"])
    runs.update_summary(run, pid=2**22 + 12345)  # no such pid
    assert runs.list_runs()[0]["status"] == "interrupted"
    runs.update_summary(run, pid=os.getpid())
    # this live process did not record the run as its own: its fit died without saying so
    assert runs.list_runs()[0]["status"] == "interrupted"
    runs.mark_active(run, True)
    assert runs.list_runs()[0]["status"] == "running"
    runs.mark_active(run, False)


def test_checkpoint_write_is_atomic_and_weights_only(workspace, tmp_path):
    path = tmp_path / "ck.pt"
    runs.save_checkpoint_atomic(path, {"model_state": {"w": torch.ones(2)}, "epoch": 3})
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left behind


def test_a_weights_url_is_stored_without_its_secrets(workspace):
    cfg = _config()
    cfg.model.weights = "https://bob:pw123@h.example/w.pth?X-Amz-Signature=abc123&X-Amz-Date=1"
    run = runs.create_run(cfg, ["a", "b"])
    text = run.config_path.read_text()
    assert "pw123" not in text and "abc123" not in text
    assert runs.read_config(run).model.weights == (
        "https://bob:***@h.example/w.pth?X-Amz-Signature=***&X-Amz-Date=***"
    )
    assert cfg.model.weights.endswith("abc123&X-Amz-Date=1")  # the caller's config is unchanged
