"""AppTest of the Runs page on real runs: table, overlay, detail, delete, re-attach, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cnnlab import jobs, plots, runs, train
from cnnlab.config import RunConfig
from cnnlab.progress import format_seconds

PAGE = "pages/runs.py"
pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


def test_overlay_figure_draws_one_line_per_run() -> None:
    rows = {
        "a": [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}],
        "b": [{"epoch": 1, "val_acc": 0.4}, {"epoch": 2, "val_acc": None}],
    }
    fig = plots.overlay_figure(rows, "val_acc")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[1].y) == [0.4, None]  # a missing value is a gap, not a zero
    assert fig.layout.title.text == "Validation accuracy"
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)


def test_no_runs_says_so_and_links_onwards(workspace: Path, fresh_app) -> None:
    at = fresh_app(PAGE)
    assert not at.exception
    assert "No runs yet" in at.info[0].value
    links = {link.proto.label: link.proto.page for link in at.get("page_link")}
    assert links == {"Go to the Train page": "train", "Or try the demo digits from Home": ""}


def test_table_overlay_and_detail(
    workspace: Path, colours_dir: Path, fresh_app, tiny_config
) -> None:
    first = train.fit(tiny_config(colours_dir, epochs=2, batch_size=8, name="first"))
    second = train.fit(tiny_config(colours_dir, epochs=3, batch_size=8, name="second"))
    at = fresh_app(PAGE)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["run"]) == [second["run_id"], first["run_id"]]  # newest first
    row = table.iloc[0].to_dict()
    assert row["status"] == "completed" and row["model"] == "custom"
    assert (row["batch"], row["optimizer"], row["epochs"]) == (8, "adamw", "3/3")
    assert row["test acc %"] == pytest.approx(100 * second["test_accuracy"], abs=0.06)
    assert row["duration s"] > 0

    assert at.multiselect(key="runs_compare").value == [second["run_id"], first["run_id"]]
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # overlay loss + accuracy, then the opened run's loss + accuracy
    overlay = json.loads(charts[0].proto.spec)
    names = [t["name"] for t in overlay["data"]]  # names and a short id, in distinct colours
    assert names == [f"second · {second['run_id'][-4:]}", f"first · {first['run_id'][-4:]}"]
    assert len({t["line"]["color"] for t in overlay["data"]}) == 2
    assert [len(t["x"]) for t in overlay["data"]] == [3, 2]

    at.multiselect(key="runs_compare").unselect(first["run_id"]).run()
    assert len(json.loads(at.get("plotly_chart")[0].proto.spec)["data"]) == 1

    # the opened run: metrics, diagnosis, config to download, the CLI line to repeat it
    assert at.selectbox(key="runs_open").value == second["run_id"]
    assert {m.label: m.value for m in at.metric}["Status"] == "completed"
    assert any(m.value.startswith("**") for m in at.markdown if "→" in m.value)
    download = at.get("download_button")[0]
    assert download.proto.label == "Download config.json"
    codes = [c.value for c in at.code]
    assert codes == [
        f"cnnlab serve {second['run_id']} --port 8502",  # "Share as a demo"
        f"cnnlab train {colours_dir} --config config.json",
    ]

    button(at, "Show it on Evaluate and Predict").click().run()
    assert at.session_state["active_run_id"] == second["run_id"]


def test_delete_asks_first(workspace: Path, colours_dir: Path, fresh_app, finished_run) -> None:
    run_id = finished_run["run_id"]
    at = fresh_app(PAGE, active_run_id=run_id)
    button(at, "Delete run…").click().run()
    assert "cannot be undone" in at.warning[0].value
    button(at, "Cancel").click().run()
    assert not at.warning and (workspace / "runs" / run_id).is_dir()

    button(at, "Delete run…").click().run()
    button(at, "Yes, delete it").click().run()
    assert not at.exception
    assert not (workspace / "runs" / run_id).exists()
    assert "active_run_id" not in at.session_state
    assert "No runs yet" in at.info[0].value


def test_watch_a_running_job_on_the_train_page(
    workspace: Path, colours_dir: Path, fresh_app, tiny_config
) -> None:
    cfg = tiny_config(colours_dir, epochs=10_000, batch_size=8)
    job = jobs.get_manager().start(cfg)
    end = time.monotonic() + 300
    while job.snapshot().run_id is None:
        assert time.monotonic() < end, f"the job never started its run: {job.snapshot()}"
        time.sleep(0.1)
    run_id = job.snapshot().run_id
    at = fresh_app(PAGE)
    assert at.dataframe[0].value.iloc[0]["status"] == "running"
    # deleting a run that is still training is refused
    button(at, "Delete run…").click().run()
    assert "still training" in at.error[0].value and (workspace / "runs" / run_id).is_dir()

    button(at, "Watch it train").click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    assert at.session_state["train_job_id"] == job.job_id
    assert at.session_state["active_run_id"] == run_id
    assert at.session_state["dataset_path"] == str(colours_dir)  # so the Train page can show it
    assert not button(at, "Stop").disabled


def _interrupted_run(colours_dir: Path, tiny_config) -> str:
    """A run stopped after epoch 1 of 3, rewritten as 'running' under a process that is gone."""
    stop = threading.Event()

    def stop_after_first_epoch(event) -> None:
        if type(event).__name__ == "EpochEnd":
            stop.set()

    summary = train.fit(
        tiny_config(colours_dir, epochs=3, batch_size=8),
        callbacks=(stop_after_first_epoch,),
        stop_event=stop,
    )
    assert summary["epochs_run"] == 1
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    run = runs.load_run(summary["run_id"])
    runs.update_summary(run, status="running", pid=int(dead.stdout), seconds=None)
    assert runs.list_runs()[0]["status"] == "interrupted"
    return summary["run_id"]


def test_interrupted_run_resumes_on_the_train_page(
    workspace: Path, colours_dir: Path, fresh_app, tiny_config
) -> None:
    run_id = _interrupted_run(colours_dir, tiny_config)
    at = fresh_app(PAGE)
    assert at.dataframe[0].value.iloc[0]["status"] == "interrupted"
    resume = [b for b in at.button if b.label == "Resume training"]
    resume[0].click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    assert at.session_state["active_run_id"] == run_id
    at.switch_page("pages/train.py")  # AppTest forgets a script's switch_page on the next run
    # watch it as the fragment would: the progress continues at the run's own epoch
    texts, captions, end = [], set(), time.monotonic() + 300
    while not at.metric:
        assert time.monotonic() < end, texts
        texts += [p.proto.text for p in at.get("progress")]
        captions |= {c.value for c in at.caption}
        time.sleep(0.1)
        at.run()
        assert not at.exception
    captions |= {c.value for c in at.caption}
    # the run's own settings (16 px, 3 epochs), not the session's defaults
    assert any(f"Run {run_id}" in c and "16 px" in c and "3 epochs" in c for c in captions)
    assert texts and not [t for t in texts if t.startswith("Epoch 1/")], texts
    assert all(t.startswith(("Epoch 2/3", "Epoch 3/3", "Starting", "Preparing")) for t in texts)
    snap = jobs.get_manager().snapshot(at.session_state["train_job_id"])
    assert snap.status == "completed", snap.error
    run = runs.load_run(run_id)
    rows = runs.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # went on from epoch 2
    assert runs.read_summary(run)["status"] == "completed"
    # the whole history is drawn, and the time adds up over both sessions
    acc = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert acc["data"][0]["x"] == [1, 2, 3]
    total = runs.read_summary(run)["seconds"]
    assert total >= sum(r["seconds"] for r in rows)
    shown = {m.label: m.value for m in at.metric}["Time"]
    assert shown == format_seconds(total)


def test_a_run_without_a_checkpoint_cannot_be_resumed(
    workspace: Path, colours_dir: Path, fresh_app, finished_run
) -> None:
    run = runs.load_run(finished_run["run_id"])
    runs.update_summary(run, status="stopped")
    run.last_path.unlink()
    at = fresh_app(PAGE)
    assert not [b for b in at.button if b.label == "Resume training"]
    assert any("no last.pt" in c.value for c in at.caption)


def test_unreadable_config_does_not_break_the_page(
    workspace: Path, colours_dir: Path, fresh_app, finished_run, tiny_config
) -> None:
    run = runs.load_run(finished_run["run_id"])
    run.config_path.write_text("{ not json")
    assert os.path.getsize(run.config_path) > 0
    at = fresh_app(PAGE)
    assert not at.exception
    row = at.dataframe[0].value.iloc[0]
    assert row["optimizer"] == "" and row["epochs"].endswith("/?")
    assert any("cannot be read" in c.value for c in at.caption)
    # a good config still round-trips (what the download button offers)
    assert RunConfig.from_json(tiny_config(colours_dir).to_json()).data.path == str(colours_dir)
