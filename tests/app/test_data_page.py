"""AppTest of the Data page inside the real app (navigation, sidebar), on the demo digits."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnlab import scan_cache
from cnnlab.config import DataConfig

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    scan_cache.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()
    scan_cache.clear()


def test_sidebar_shows_device_workspace_and_data_set(workspace: Path) -> None:
    # Sidebar elements are read on a first run: AppTest drops the entry script's sidebar
    # deltas on reruns of an st.navigation app (a test-harness quirk; the browser shows them).
    at = AppTest.from_file(APP, default_timeout=60).run()
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("**Device:** CPU") or "CUDA" in c or "MPS" in c for c in captions)
    assert any(str(workspace) in c for c in captions)
    assert any("none chosen" in c for c in captions)
    assert at.title[0].value == "cnnlab"  # Home is the default page

    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["dataset_path"] = str(workspace / "datasets" / "pets-0123")
    at.run()
    assert any("pets-0123" in c.value for c in at.sidebar.caption)


def test_empty_state_then_demo_digits(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/data.py")
    assert not at.exception
    assert at.title[0].value == "Data"
    assert any("No data set loaded yet: press **Use the demo digits**" in i.value for i in at.info)
    assert not at.get("plotly_chart")

    next(b for b in at.button if b.label == "Use the demo digits").click()
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["dataset_path"] == str(workspace / "datasets" / "demo-digits")
    cfg = at.session_state["data_config"]
    assert isinstance(cfg, DataConfig) and cfg.image_size == 32 and cfg.val_fraction == 0.15
    assert [m.value for m in at.metric] == ["10", "1,797", "0"]
    assert len(at.get("plotly_chart")) == 1
    # one row of samples per class, then the first 12 groups of look-alike digits (8x8 originals)
    assert len(at.get("image")) == 10 + 12
    split_table = at.dataframe[-1].value
    assert list(split_table["class"]) == [str(d) for d in range(10)] + ["all"]
    assert split_table.iloc[-1].to_dict() == {
        "class": "all", "train": 1257, "val": 270, "test": 270, "total": 1797,
    }  # fmt: skip

    at.slider(key="data_test").set_value(0.0)
    at.run()
    assert at.dataframe[-1].value.iloc[-1]["test"] == 0
    assert at.session_state["data_config"].test_fraction == 0.0


def test_server_path_with_problems_and_outside_roots(
    workspace: Path, tmp_path: Path, fresh_app
) -> None:
    root = workspace / "mine"
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 10), (i * 50, 0, 0)).save(root / cls / f"{i}.png")
    (root / "bees" / "broken.jpg").write_bytes(b"not a jpeg")
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Path on this server").run()
    at.text_input(key="data_server_path").input(str(root)).run()
    next(b for b in at.button if b.label == "Use this path").click().run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2", "8", "1"]
    problems = at.dataframe[0].value
    assert problems.to_dict("records") == [
        {
            "file": "bees/broken.jpg",
            "reason": "not a readable image (unknown format or corrupt header)",
        }
    ]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    at.text_input(key="data_server_path").input(str(outside)).run()
    next(b for b in at.button if b.label == "Use this path").click().run()
    assert "outside the allowed data folders" in at.error[0].value


def test_unusable_folder_shows_the_reason(workspace: Path, fresh_app) -> None:
    (workspace / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(workspace / "one" / "cats" / "a.png")
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Path on this server").run()
    at.text_input(key="data_server_path").input(str(workspace / "one")).run()
    next(b for b in at.button if b.label == "Use this path").click().run()
    assert not at.exception
    assert "only 'cats'" in at.error[0].value
    assert "dataset_path" not in at.session_state


def _pets_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, color in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))):
            for i in range(4):
                img = io.BytesIO()
                Image.new("RGB", (12, 12), color).save(img, "PNG")
                zf.writestr(f"pets/{cls}/{i}.png", img.getvalue())
    return buf.getvalue()


def test_zip_upload_is_extracted_and_scanned(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Upload a zip").run()
    at.file_uploader[0].set_value(("pets.zip", _pets_zip(), "application/zip")).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2", "8", "0"]
    chosen = Path(at.session_state["dataset_path"])
    assert chosen.name == "pets" and chosen.parent.parent == workspace / "datasets"


def test_a_file_that_is_not_a_zip_is_said_and_its_chip_cleared(workspace: Path, fresh_app) -> None:
    """Issue 28 polish: a .txt on the zip uploader is one message naming it (the uploader is a
    new, empty one: the red chip the browser left said nothing); a zip afterwards is read."""
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Upload a zip").run()
    at.file_uploader[0].set_value(("notes.txt", b"hello", "text/plain")).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["notes.txt is not a .zip file; choose a .zip file here."]
    assert len(at.file_uploader) == 1 and at.file_uploader[0].value is None
    at.file_uploader[0].set_value(("pets.zip", _pets_zip(), "application/zip")).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2", "8", "0"]


def test_zip_with_traversal_is_refused_in_the_page(workspace: Path, fresh_app) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../escape.png", b"x")
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Upload a zip").run()
    at.file_uploader[0].set_value(("evil.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception
    assert "'..'" in at.error[0].value
    assert not (workspace / "escape.png").exists()
    assert "dataset_path" not in at.session_state


def test_directory_upload_is_saved_and_scanned(workspace: Path, fresh_app) -> None:
    files = []
    for cls, color in (("ants", (0, 200, 0)), ("bees", (200, 200, 0))):
        for i in range(3):
            img = io.BytesIO()
            Image.new("RGB", (12, 12), color).save(img, "PNG")
            files.append((f"insects/{cls}/{i}.png", img.getvalue(), "image/png"))
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Upload a folder").run()
    at.file_uploader[0].set_value(files).run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric] == ["2", "6", "0"]
    assert Path(at.session_state["dataset_path"]).name == "insects"


def test_a_bad_zip_names_the_users_file_and_the_source_is_kept(workspace: Path, fresh_app) -> None:
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Upload a zip").run()
    assert any("drop a .zip" in i.value for i in at.info)  # the hint follows the source
    at.file_uploader[0].set_value(("holiday photos.zip", b"not a zip", "application/zip")).run()
    assert not at.exception
    assert "holiday photos.zip is not a readable zip" in at.error[0].value
    assert ".upload-" not in at.error[0].value
    at.switch_page("pages/model.py").run()
    at.switch_page("pages/data.py").run()  # back: the source stays what the user picked
    assert at.radio(key="data_source").value == "Upload a zip"


def test_enter_in_the_path_field_loads_it(workspace: Path, fresh_app) -> None:
    root = workspace / "two"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 12), (60 * i, 90, 9)).save(root / cls / f"{i}.png")
    at = fresh_app("pages/data.py")
    at.radio(key="data_source").set_value("Path on this server").run()
    at.text_input(key="data_server_path").input(str(root)).run()  # Enter, no button click
    assert not at.exception and not at.error
    assert at.session_state["dataset_path"] == str(root)
