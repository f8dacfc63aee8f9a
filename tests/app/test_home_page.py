"""AppTest of the Home page: workflow steps follow the session, the demo path, recent runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.config import AUGMENT_PRESETS, DataConfig, RunConfig

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


def step_icons(at) -> dict[str, str]:
    """Workflow step label -> its icon (a tick once the step is done)."""
    return {link.proto.label: link.proto.icon for link in at.get("page_link")}


def test_fresh_home_shows_purpose_device_and_open_steps(workspace: Path, fresh_app) -> None:
    at = fresh_app()
    assert not at.exception
    assert at.title[0].value == "cnnlab"
    assert "your own labelled images" in at.markdown[0].value
    assert any(c.value.startswith("Device in use: **CPU") or "CUDA" in c.value for c in at.caption)
    icons = step_icons(at)
    assert icons["1. Data"] == icons["4. Train"] == ":material/radio_button_unchecked:"
    assert "Next: **Data**." in [c.value for c in at.caption]
    assert any("None yet" in c.value for c in at.caption)
    assert not at.dataframe


def test_steps_follow_the_session_and_runs(
    workspace: Path, colours_dir: Path, fresh_app, finished_run
) -> None:
    at = fresh_app(
        dataset_path=str(colours_dir),
        run_config=RunConfig(data=DataConfig(path=str(colours_dir))),
        active_run_id=finished_run["run_id"],
    )
    assert not at.exception
    icons = step_icons(at)
    for label in ("1. Data", "3. Model", "4. Train", "5. Evaluate"):
        assert icons[label] == ":material/check_circle:", label
    assert "`colours`" in [c.value for c in at.caption]
    recent = at.dataframe[0].value
    assert list(recent["run"]) == [finished_run["run_id"]]
    assert recent.iloc[0]["status"] == "completed"
    assert recent.iloc[0]["test acc"].endswith("%")
    assert any("runs" in link.proto.page for link in at.get("page_link"))


def test_demo_button_sets_up_everything_and_opens_train(workspace: Path, fresh_app) -> None:
    # leftovers from earlier visits that must not win over the demo settings
    at = fresh_app(t_epochs=99, train_job_id="gone", dataset_path="/nowhere")
    next(b for b in at.button if b.label == "Try it on the demo digits").click().run()
    assert not at.exception
    assert at.title[0].value == "Train"
    demo_dir = workspace / "datasets" / "demo-digits"
    assert at.session_state["dataset_path"] == str(demo_dir)
    assert sorted(p.name for p in demo_dir.iterdir()) == [str(d) for d in range(10)]
    cfg = at.session_state["run_config"]
    assert cfg.data.path == str(demo_dir) and cfg.data == at.session_state["data_config"]
    assert cfg.augment == AUGMENT_PRESETS["light"]
    assert cfg.train.epochs == at.number_input(key="t_epochs").value == 15  # the defaults
    assert "train_job_id" not in at.session_state
    start = next(b for b in at.button if b.label == "Start")
    assert not start.disabled


def test_demo_time_is_measured_and_steps_agree_after_a_stopped_run(
    workspace: Path, colours_dir: Path, fresh_app, tiny_config
) -> None:
    """A stopped run with a best checkpoint: Train and Evaluate agree, Next points past them."""
    import threading

    from cnnlab import train

    stop = threading.Event()
    summary = train.fit(
        tiny_config(colours_dir, epochs=3),
        callbacks=(lambda e: stop.set() if type(e).__name__ == "EpochEnd" else None,),
        stop_event=stop,
    )
    assert summary["status"] == "stopped"
    at = fresh_app(active_run_id=summary["run_id"])
    intro = next(m.value for m in at.markdown if "New here?" in m.value)
    assert "measured on an idle 2-core CPU" in intro and "ten seconds" not in intro
    icons = step_icons(at)
    assert icons["4. Train"] == icons["5. Evaluate"] == ":material/check_circle:"
    assert "Next: **Data**." in [c.value for c in at.caption]  # the first step not done
    assert any("1 stopped (resume on Runs)" in c.value for c in at.caption)
