"""AppTests (issue 28, items 3 and 9): a labels CSV chosen on the Data page works on every page,
before and after a training; a run is named after its own data set, not the demo's."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cnnlab import runs
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


@pytest.fixture
def labels_csv(colours_dir: Path) -> Path:
    """colours_dir's 3 x 12 images listed in a CSV whose columns need naming (fname, kind)."""
    path = colours_dir / "labels.csv"
    rows = [[f"{p.parent.name}/{p.name}", p.parent.name] for p in sorted(colours_dir.glob("*/*"))]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["fname", "kind"], *rows])
    return path


def _csv_state(labels: Path, name: str = "", named_for: str = "") -> dict:
    """The session state the Data page leaves after 'Use this CSV' with named columns; `name`
    (given with the data set `named_for`, as the Home demo does) in the run config."""
    options = {"path_column": "fname", "label_column": "kind", "images": ""}
    data_cfg = DataConfig(path=str(labels), image_size=16, **options)
    return {
        "dataset_path": str(labels),
        "data_csv": options,
        "data_config": data_cfg,
        "run_config": RunConfig(
            data=DataConfig(path=named_for) if named_for else data_cfg,
            model=ModelConfig(channels=[8, 16], head_units=0),
            train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
            name=name,
        ),
    }


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _texts(at: AppTest) -> str:
    return " | ".join(e.value for k in ("info", "warning", "error", "caption") for e in at.get(k))


def test_a_csv_data_set_trains_and_stays_chosen(workspace: Path, labels_csv: Path, fresh_app):
    at = fresh_app("pages/train.py", **_csv_state(labels_csv, "demo digits", "/demo-digits"))
    assert not at.exception
    assert not _button(at, "Start").disabled, _texts(at)
    _button(at, "Start").click().run()
    for _ in range(600):
        if at.metric or at.error:
            break
        at.run()
    assert not at.error and at.metric, _texts(at)
    at.run()
    assert "Choose a data set" not in _texts(at)
    assert at.number_input(key="t_epochs").value == 1  # the hyperparameters are still there
    assert not _button(at, "Start").disabled
    # item 9: the demo's name does not follow the user to another data set
    (row,) = runs.list_runs()
    assert row["name"] == "labels"
    assert runs.read_config(runs.load_run(row["run_id"])).name == ""
    assert "(labels)" in _texts(at)


def test_every_page_knows_a_csv_data_set(workspace: Path, labels_csv: Path, fresh_app):
    state = _csv_state(labels_csv)
    tune = fresh_app("pages/tune.py", **state)
    assert not tune.exception
    assert not _button(tune, "Start").disabled, _texts(tune)
    augment = fresh_app("pages/augment.py", **state)
    assert "no data set chosen" not in _texts(augment)
    model = fresh_app("pages/model.py", **state)
    assert "Head sized for 3 classes" in _texts(model)
    home = fresh_app(**state)
    icons = {link.proto.label: link.proto.icon for link in home.get("page_link")}
    assert icons["1. Data"] == ":material/check_circle:"
    assert "`labels`" in _texts(home)


def test_the_demo_name_stays_with_the_demo(workspace: Path, digits_dir: Path, fresh_app):
    """Item 9: a run on the demo data keeps the demo's name."""
    data_cfg = DataConfig(path=str(digits_dir), image_size=16)
    state = {
        "dataset_path": str(digits_dir),
        "data_config": data_cfg,
        "run_config": RunConfig(data=data_cfg, name="demo digits",
                                train=TrainConfig(epochs=1, device="cpu")),
    }  # fmt: skip
    at = fresh_app("pages/train.py", **state)
    assert at.session_state["run_config"].name == "demo digits"


def test_the_csv_options_survive_a_reload() -> None:
    """Item 3: the Data page's CSV columns are saved with the session (a reload keeps them)."""
    from cnnlab import session

    options = {"path_column": "fname", "label_column": "kind", "images": ""}
    assert session.from_record(session.to_record({"data_csv": options})) == {"data_csv": options}


def test_train_page_says_the_effective_batch(workspace: Path, colours_dir: Path, fresh_app):
    """Item 5: a batch larger than the training split is said before Start."""
    data_cfg = DataConfig(path=str(colours_dir), image_size=16)
    state = {
        "dataset_path": str(colours_dir),
        "data_config": data_cfg,
        "run_config": RunConfig(data=data_cfg, train=TrainConfig(batch_size=512, device="cpu")),
    }
    at = fresh_app("pages/train.py", **state)
    assert not _button(at, "Start").disabled
    assert any("effective batch is" in w.value for w in at.warning), _texts(at)


def test_top_k_stops_at_the_class_count(workspace: Path, fresh_app, finished_run) -> None:
    """Polish: top-k allowed 10 with 3 classes."""
    at = fresh_app("pages/predict.py", active_run_id=finished_run["run_id"])
    assert not at.exception
    assert at.number_input(key="pr_k").max == 3 and at.number_input(key="pr_k").value == 3
