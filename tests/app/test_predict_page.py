"""AppTest of the Predict page: upload real digits and a corrupt file to a real tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def page(trained, monkeypatch: pytest.MonkeyPatch, fresh_app) -> AppTest:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    at = fresh_app("pages/predict.py")
    assert not at.exception
    return at


def test_no_runs_points_to_the_train_page(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/predict.py")
    assert not at.exception
    assert "No trained run yet" in at.info[0].value


def test_upload_good_and_corrupt_images(page: AppTest, trained, digits_dir: Path) -> None:
    at = page
    assert at.selectbox(key="pr_run").value == trained[0]["run_id"]
    assert "Drop one or more images" in at.info[0].value
    good = sorted((digits_dir / "0").iterdir())[0]
    at.file_uploader(key="pr_files").set_value(
        [
            (good.name, good.read_bytes(), "image/png"),
            ("broken.png", b"\x89PNG\r\n\x1a\n definitely not the rest", "image/png"),
        ]
    ).run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.png" in at.error[0].value
    assert "Traceback" not in at.error[0].value
    assert at.subheader[0].value.startswith(f"{good.name}: ")
    assert len(at.get("plotly_chart")) == 1
    captions = [i.caption for el in at.get("image") for i in el.proto.imgs]
    assert captions[0] == "model input" and captions[1].startswith("Grad-CAM for ")


def test_top_k_and_camera_toggle(page: AppTest) -> None:
    at = page
    at.number_input(key="pr_k").set_value(5).run()
    at.toggle(key="pr_cam").set_value(True).run()
    assert not at.exception
    assert at.session_state["pr_k"] == 5
