"""AppTest of the Train page: start a real job on tiny digits, poll until done, stop, re-attach.

AppTest never fires `run_every` timers, so the tests poll the page with `at.run()`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cnnlab import jobs, lr_finder
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from cnnlab.errors import TrainingError

PAGE = "pages/train.py"


@pytest.fixture
def open_train(fresh_app):
    """open_train(data_dir=None, epochs=2, batch_size=64): the Train page with a tiny 16 px config."""

    def open_page(
        data_dir: Path | None = None, epochs: int = 2, batch_size: int = 64, recipe: str = "fixed"
    ) -> AppTest:
        state = {}
        if data_dir is not None:
            state = {
                "dataset_path": str(data_dir),
                "data_config": DataConfig(path=str(data_dir), image_size=16),
                "run_config": RunConfig(
                    model=ModelConfig(channels=[8, 16], head_units=0),
                    # recipe fixed: these tests drive the page on exactly this tiny setup
                    train=TrainConfig(
                        epochs=epochs, batch_size=batch_size, device="cpu", recipe=recipe
                    ),  # fmt: skip
                ),
            }
        at = fresh_app(PAGE, **state)
        assert not at.exception
        return at

    return open_page


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def poll_until(at: AppTest, done, timeout: float = 300.0) -> None:
    """Rerun the page every 0.2 s (as the fragment's timer would) until done(at) holds; past the
    (generous: training speed varies) timeout, fail with what the page shows."""
    end = time.monotonic() + timeout
    while not done(at):
        if time.monotonic() > end:
            shown = [
                e.value for kind in ("info", "warning", "error", "caption") for e in at.get(kind)
            ]
            pytest.fail(f"page did not reach the expected state in {timeout} s; it shows {shown}")
        time.sleep(0.2)
        at.run()
        assert not at.exception


def finished(at: AppTest) -> bool:
    return bool(at.metric) or bool(at.error) or bool(at.warning)


pytestmark = pytest.mark.usefixtures("no_leftover_jobs")  # tests/app/conftest.py


def test_without_data_points_to_the_data_page(workspace: Path, open_train) -> None:
    at = open_train(None)
    assert "Choose a data set first." in [i.value for i in at.info]
    assert not [b for b in at.button if b.label == "Start"]


def test_hyperparameters_show_the_config_defaults(
    workspace: Path, digits_dir: Path, open_train
) -> None:
    at = open_train(digits_dir, epochs=2)
    assert at.number_input(key="t_epochs").value == 2  # from the session's run config
    assert at.selectbox(key="t_optimizer").value == TrainConfig().optimizer
    assert at.number_input(key="t_patience").value == TrainConfig().patience
    at.number_input(key="t_epochs").set_value(7).run()
    assert at.session_state["run_config"].train.epochs == 7
    button(at, "Reset to defaults").click().run()
    assert at.number_input(key="t_epochs").value == TrainConfig().epochs


def test_the_recipe_is_said_in_one_line_and_can_be_fixed(
    workspace: Path, colours_dir: Path, open_train
) -> None:
    """Issue 29: auto on a small set from scratch says what the recipe changes; fixed says so."""
    at = open_train(colours_dir, recipe="auto")
    assert at.selectbox(key="t_recipe").value == "auto"
    (line,) = [c.value for c in at.caption if "Small-data recipe (" in c.value]
    assert "training images, model trained from scratch" in line and "MixUp" in line
    at.selectbox(key="t_recipe").set_value("fixed").run()
    assert at.session_state["run_config"].train.recipe == "fixed"
    assert [c.value for c in at.caption if c.value.startswith("Recipe: fixed")]


def test_start_shows_progress_then_curves_and_summary(
    workspace: Path, digits_dir: Path, open_train
) -> None:
    at = open_train(digits_dir, epochs=2)
    button(at, "Start").click().run()
    assert not at.exception
    assert button(at, "Start").disabled and not button(at, "Stop").disabled
    assert at.get("progress")  # the live fragment draws a progress bar straight away

    poll_until(at, finished)
    assert not at.error, at.error
    labels = {m.label: m.value for m in at.metric}
    assert labels["Best epoch"] in ("1", "2")
    assert labels["Test accuracy"].endswith("%")
    assert len(at.get("plotly_chart")) == 2  # loss and accuracy
    links = {link.proto.page for link in at.get("page_link")}
    assert any("evaluate" in p for p in links) and any("predict" in p for p in links)
    run_id = at.session_state["active_run_id"]
    assert jobs.get_manager().snapshot(run_id).status == "completed"
    assert not button(at, "Start").disabled


def _loss_traces(at: AppTest) -> dict[str, list]:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    return {t["name"]: t["x"] for t in spec["data"]}


def test_the_loss_curve_moves_within_the_first_epoch(
    workspace: Path, digits_dir: Path, open_train
) -> None:
    """One long epoch: the running train loss is drawn at fractional epochs before it ends."""
    at = open_train(digits_dir, epochs=1, batch_size=4)
    button(at, "Start").click().run()
    job_id = at.session_state["train_job_id"]
    poll_until(at, lambda a: bool(a.get("plotly_chart")))
    snap = jobs.get_manager().snapshot(job_id)
    xs = _loss_traces(at)["train (running)"]
    if not snap.epochs:  # (on a very fast machine the one epoch may be over already)
        assert all(0 < x < 1 for x in xs), xs
    poll_until(at, lambda a: len(_loss_traces(a).get("train (running)", [])) > len(xs))
    jobs.get_manager().stop(job_id)


def test_stop_button_ends_the_job(workspace: Path, digits_dir: Path, open_train) -> None:
    at = open_train(digits_dir, epochs=200, batch_size=8)
    button(at, "Start").click().run()
    poll_until(at, lambda a: "active_run_id" in a.session_state and a.get("plotly_chart"))
    button(at, "Stop").click().run()
    poll_until(at, finished)
    assert any("Stopped by you" in w.value for w in at.warning)


def test_start_is_off_with_every_reason_listed(workspace: Path, tmp_path: Path, open_train) -> None:
    """A class with 1 image: Start is disabled, the reason is in its tooltip and listed below."""
    from PIL import Image

    root = tmp_path / "bad"
    for name, n in (("many", 6), ("lonely", 1), ("other", 6)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (9 * i, 80, 20)).save(root / name / f"{i}.png")
    at = open_train(root)
    start = button(at, "Start")
    assert start.disabled and "'lonely' (1)" in start.help
    assert any("Start is off" in w.value and "'lonely' (1)" in w.value for w in at.warning)
    assert button(at, "Stop").disabled and button(at, "Stop").help  # says why too
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_failed_job_shows_its_message(workspace: Path, digits_dir: Path, open_train) -> None:
    def crash(stop_event, emit):
        raise TrainingError("the disk is full: free some space")

    job = jobs.get_manager().start_callable(crash, kind="train")
    jobs.get_manager().wait(job.job_id, timeout=10)
    at = open_train(digits_dir)
    at.session_state["train_job_id"] = job.job_id
    at.run()
    assert at.error and "Training failed: the disk is full" in at.error[0].value


def test_a_fresh_session_reattaches_to_a_running_job(
    workspace: Path, digits_dir: Path, open_train
) -> None:
    cfg = RunConfig(
        data=DataConfig(path=str(digits_dir), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=0),
        train=TrainConfig(epochs=200, batch_size=8, device="cpu"),
    )
    job = jobs.get_manager().start(cfg)  # e.g. started in another tab
    at = open_train(digits_dir)
    assert at.selectbox(key="t_attach").value == job.job_id
    button(at, "Attach").click().run()
    assert not at.exception
    assert at.session_state["train_job_id"] == job.job_id
    assert not button(at, "Stop").disabled
    poll_until(at, lambda a: "active_run_id" in a.session_state)
    run_id = at.session_state["active_run_id"]
    assert run_id == job.snapshot().run_id

    # a reload that only knows the run id finds the job too
    again = open_train(digits_dir)
    again.session_state["active_run_id"] = run_id
    again.run()
    assert again.session_state["train_job_id"] == job.job_id
    assert again.get("progress")

    # a reload with no session state at all (no data chosen) still offers the running job
    bare = open_train(None)
    assert bare.selectbox(key="t_attach").value == job.job_id
    button(bare, "Attach").click().run()
    assert not bare.exception and bare.get("progress")
    assert not button(bare, "Stop").disabled and button(bare, "Start").disabled


def test_lr_finder_suggestion_can_be_used(workspace: Path, digits_dir: Path, open_train) -> None:
    at = open_train(digits_dir)
    button(at, "Find a learning rate").click().run()
    assert not at.exception and not at.error
    # issue 28 item 12: the sweep runs in the background with a progress bar
    assert at.get("progress") or "suggested_lr" in at.session_state
    job_id = at.query_params.get("lr")
    assert job_id
    poll_until(at, lambda a: "suggested_lr" in a.session_state)
    suggested = at.session_state["suggested_lr"]
    # the page shows the core's answer (the background sweep's own result; a sweep run again
    # here could draw from torch's global RNG while another test's job thread does), at a point
    # where the loss has fallen below where the sweep started
    cfg = at.session_state["run_config"]
    assert cfg.data.path == str(digits_dir)
    expected = jobs.get_manager().snapshot(job_id).result
    assert isinstance(expected, lr_finder.LRFinderResult)
    assert suggested == expected.suggestion
    nearest = min(range(len(expected.lrs)), key=lambda i: abs(expected.lrs[i] - suggested))
    at_suggestion = expected.losses[nearest]
    assert at_suggestion < expected.losses[0], (at_suggestion, expected.losses[:3])
    button(at, f"Use suggested lr {suggested:.1e}").click().run()
    assert at.number_input(key="t_lr").value == pytest.approx(suggested)
    assert at.session_state["run_config"].train.lr == pytest.approx(suggested)


def test_a_reload_finds_the_lr_sweep_again(workspace: Path, digits_dir: Path, open_train) -> None:
    """Issue 28 item 12: a reload during (or after) the sweep shows it again, not nothing."""
    at = open_train(digits_dir)
    button(at, "Find a learning rate").click().run()
    job_id = at.query_params["lr"]
    again = open_train(digits_dir)  # a fresh session: what a reload is
    again.query_params["lr"] = job_id
    again.run()
    assert not again.exception
    shown = [p.proto.text for p in again.get("progress")]
    assert (
        any("Finding a learning rate" in t for t in shown) or "suggested_lr" in again.session_state
    )
    poll_until(again, lambda a: "suggested_lr" in a.session_state)
    assert any("LR finder" in e.label for e in again.expander)
