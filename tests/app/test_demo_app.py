"""AppTest of `cnnlab serve`'s page (demo_app/app.py): the model card, a drop, the camera."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cnnlab import predict_api

DEMO = str(Path(__file__).resolve().parents[2] / "demo_app" / "app.py")


@pytest.fixture
def demo(trained, monkeypatch: pytest.MonkeyPatch, fresh_app) -> AppTest:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    monkeypatch.setenv(predict_api.SERVE_ENV, str(trained[1] / "runs" / trained[0]["run_id"]))
    return AppTest.from_file(DEMO, default_timeout=120).run()


def test_model_card_then_prediction(demo: AppTest, trained, predictor, digits_dir) -> None:
    at = demo
    assert not at.exception and not at.error
    summary = trained[0]
    assert at.title[0].value == summary["run_id"]  # an unnamed run goes by its id
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"] == f"{summary['test_accuracy']:.1%}"
    assert metrics["Classes"] == "10" and metrics["Input size"] == "16 px"
    assert metrics["Data set"] == "1797 images" and metrics["Trained"].endswith("UTC")
    recall = at.dataframe[0].value
    assert list(recall["class"]) == [str(d) for d in range(10)]
    assert recall["test recall"].between(0, 1).all()
    assert str(digits_dir.parent) not in str([c.value for c in at.caption])  # no server path
    # nothing of the lab: no run picker, no links to other pages
    assert not at.selectbox and not at.get("page_link")
    good = sorted((digits_dir / "6").iterdir())[0]
    at.file_uploader(key="demo_files").set_value([(good.name, good.read_bytes(), "image/png")])
    at.run()
    assert not at.exception and not at.error
    top = predictor.top_k(predictor.probabilities(predictor.load(good)[None]))[0]
    assert at.subheader[0].value == f"{good.name}: {top[0][0]} ({top[0][1]:.1%})"
    assert len(at.get("plotly_chart")) == 1
    at.toggle(key="demo_cam").set_value(True).run()
    assert [c.key for c in at.camera_input] == ["demo_shot_0"]


def test_without_a_served_run_it_says_how_to_start(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, fresh_app
) -> None:
    monkeypatch.delenv(predict_api.SERVE_ENV, raising=False)
    at = AppTest.from_file(DEMO, default_timeout=60).run()
    assert not at.exception
    assert "cnnlab serve RUN_ID" in at.error[0].value


def test_a_served_run_that_vanished_names_no_path(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, fresh_app
) -> None:
    monkeypatch.setenv(predict_api.SERVE_ENV, str(workspace / "runs" / "gone"))
    at = AppTest.from_file(DEMO, default_timeout=60).run()
    assert not at.exception
    assert at.error[0].value == "This demo's model is not available right now."
