"""AppTest of the Predict page: upload real digits and a corrupt file to a real tiny run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
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


def test_a_long_file_name_is_cut_in_the_heading(page: AppTest, digits_dir: Path) -> None:
    """Issue 28 polish: a long name wrapped mid-word at narrow widths: cut in the middle, whole
    on hover."""
    good = sorted((digits_dir / "7").iterdir())[0]
    long = "IMG_20240101_a_rather_long_camera_file_name_0042.png"
    at = page
    at.file_uploader(key="pr_files").set_value([(long, good.read_bytes(), "image/png")]).run()
    assert not at.exception
    heading = at.subheader[0]
    assert heading.value.startswith("IMG_2024010…ame_0042.png: ")
    assert heading.proto.help == long


def _jpeg(digits_dir: Path, digit: str) -> bytes:
    """A real digit as the JPEG a camera snapshot is."""
    buf = io.BytesIO()
    Image.open(sorted((digits_dir / digit).iterdir())[0]).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_camera_photo_is_predicted_with_grad_cam(page: AppTest, predictor, digits_dir) -> None:
    at = page
    at.number_input(key="pr_k").set_value(4).run()
    at.toggle(key="pr_cam").set_value(True).run()
    assert not at.exception and at.session_state["pr_k"] == 4
    photo = _jpeg(digits_dir, "7")
    at.camera_input(key="pr_shot_0").set_value(("photo.jpg", photo, "image/jpeg")).run()
    assert not at.exception and not at.error
    top = predictor.top_k(predictor.probabilities(predictor.load(photo)[None]), 4)[0]
    assert at.subheader[0].value == f"camera photo: {top[0][0]} ({top[0][1]:.1%})"
    chart = at.get("plotly_chart")[0].proto.spec
    assert len(json.loads(chart)["data"][0]["y"]) == 4  # the top-4 bars
    captions = [i.caption for el in at.get("image") for i in el.proto.imgs]
    assert captions[0] == "model input" and captions[1].startswith("Grad-CAM for ")


def test_keep_predicting_reopens_the_camera_for_each_snapshot(
    page: AppTest, predictor, digits_dir
) -> None:
    at = page
    at.toggle(key="pr_cam").set_value(True).run()
    at.toggle(key="pr_keep").set_value(True).run()
    for n, digit in enumerate(("1", "4", "9")):
        shot = at.camera_input(key=f"pr_shot_{n}")
        shot.set_value((f"{n}.jpg", _jpeg(digits_dir, digit), "image/jpeg")).run()
        assert not at.exception
        # the snapshot was taken in: the camera is a fresh widget, live for the next one
        assert [c.key for c in at.camera_input] == [f"pr_shot_{n + 1}"]
        assert at.camera_input[0].value is None
    # every snapshot predicted, newest first
    names = [h.value.split(":")[0] for h in at.subheader]
    assert names == ["snapshot 3", "snapshot 2", "snapshot 1"]
    top = predictor.top_k(predictor.probabilities(predictor.load(_jpeg(digits_dir, "9"))[None]))
    assert at.subheader[0].value.endswith(f"{top[0][0][0]} ({top[0][0][1]:.1%})")
    at.toggle(key="pr_keep").set_value(False).run()  # back to one photo at a time
    assert not at.subheader and "take a photo" in at.info[0].value
