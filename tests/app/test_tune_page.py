"""AppTest of the Tune page: empty state, then a tiny real study polled until done, best -> Train.

AppTest never fires `run_every` timers, so the test polls the page with `at.run()`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cnnlab.config import RunConfig, TrainConfig


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def test_without_data_points_to_the_data_page(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/tune.py")
    assert not at.exception
    assert at.title[0].value == "Tune"
    assert "Choose a data set first." in [i.value for i in at.info]
    assert not [b for b in at.button if b.label == "Start"]


def test_bad_range_is_reported_with_its_field(workspace, digits_dir, fresh_app) -> None:
    at = fresh_app("pages/tune.py", dataset_path=str(digits_dir))
    at.number_input(key="tn_dropout_lo").set_value(0.9)
    at.number_input(key="tn_dropout_hi").set_value(0.1).run()
    assert any("search.dropout" in e.value for e in at.error)
    assert _button(at, "Start").disabled


def test_image_size_is_the_size_a_run_would_use(workspace, digits_dir, fresh_app) -> None:
    """Issue 28 polish: the Data page's size, else a run's default (it showed tune's CLI 16 px
    while the data was at 32 px)."""
    from cnnlab.config import DataConfig

    at = fresh_app("pages/tune.py", dataset_path=str(digits_dir))
    assert at.number_input(key="tn_size").value == DataConfig().image_size == 32
    chosen = DataConfig(path=str(digits_dir), image_size=24)
    at = fresh_app("pages/tune.py", dataset_path=str(digits_dir), data_config=chosen)
    assert at.number_input(key="tn_size").value == 24


def test_tiny_study_runs_live_and_hands_the_best_to_train(
    workspace: Path, digits_dir: Path, fresh_app, no_leftover_jobs
) -> None:
    at = fresh_app("pages/tune.py", dataset_path=str(digits_dir))
    assert not at.exception and not at.error
    at.number_input(key="tn_epochs").set_value(2)
    at.number_input(key="tn_size").set_value(12)
    at.number_input(key="tn_trials").set_value(3)
    for name in ("batch_size", "optimizer", "weight_decay", "n_blocks", "base_width"):
        at.checkbox(key=f"tn_{name}_on").uncheck()  # fixed values: only lr and dropout searched
    at.run()
    at.selectbox(key="tn_base_width_fix").set_value(8)
    at.number_input(key="tn_n_blocks_fix").set_value(1)
    at.text_input(key="tn_study").input("page-study")
    _button(at, "Start").click().run()
    assert not at.exception and not at.error
    assert _button(at, "Stop").disabled is False  # running

    end = time.monotonic() + 600  # generous: trial speed depends on the machine's load
    while not [b for b in at.button if b.label == "Train the best configuration"]:
        if time.monotonic() > end:
            shown = {m.label: m.value for m in at.metric}
            pytest.fail(f"the study did not finish in 600 s; the page shows {shown}")
        time.sleep(0.3)
        at.run()
        assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Trials"] == "3" and metrics["Failed"] == "0"
    assert len(at.dataframe[0].value) == 3
    assert len(at.get("plotly_chart")) >= 3  # history, per epoch, parallel (+ importance)

    _button(at, "Train the best configuration").click().run()
    assert not at.exception
    cfg = at.session_state["run_config"]
    assert isinstance(cfg, RunConfig) and cfg.data.image_size == 12
    assert cfg.model.channels == [8] and cfg.train.epochs == TrainConfig().epochs  # full budget
    assert at.title[0].value == "Train"
    assert "train_job_id" not in at.session_state  # no old result on the Train page
    assert "best (trial" in cfg.name  # not the trial run's own name
    at.switch_page("pages/train.py").run()  # AppTest forgets a script's switch_page
    assert not at.exception
    loaded = [s.value for s in at.success if "Loaded from trial" in s.value]
    assert loaded and "page-study" in loaded[0] and "instead of the trial's 2" in loaded[0]
    assert at.number_input(key="t_epochs").value == TrainConfig().epochs
    assert not at.metric  # the previous result is gone


def test_storage_is_a_choice_never_a_typed_path(
    workspace: Path, digits_dir: Path, fresh_app, monkeypatch, tmp_path: Path
) -> None:
    """Issue 27: a typed sqlite:////any/path/evil.db made folders and files anywhere."""
    from cnnlab import study_storage
    from cnnlab.errors import ConfigError

    shared = "postgresql://lab:s3cret@db.example/optuna"
    monkeypatch.setenv(study_storage.STORAGES_ENV, shared)
    at = fresh_app("pages/tune.py", dataset_path=str(digits_dir))
    assert not at.exception
    assert not [t for t in at.text_input if "storage" in t.label.lower()]
    box = at.selectbox(key="tn_storage")
    assert box.options == ["SQLite file in the workspace", "postgresql://lab:***@db.example/optuna"]
    evil = tmp_path / "any" / "path" / "evil.db"
    with pytest.raises(ConfigError, match="not one this server offers"):
        study_storage.visitor_storage(f"sqlite:///{evil}")
    assert not (tmp_path / "any").exists()
    assert study_storage.visitor_storage(shared) == shared
    assert study_storage.visitor_storage(None) is None
