"""pages/ui.py: the helpers every page shares, run inside real Streamlit script runs (AppTest)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnlab.config import DataConfig, RunConfig, TrainConfig
from cnnlab.errors import DataError
from pages import ui


def _config_script() -> None:
    import streamlit as st

    from pages import ui

    ui.seed_widget("epochs_box", 7)
    st.number_input("Epochs", key="epochs_box")
    cfg = ui.session_run_config()
    st.write(f"{cfg.data.path}|{cfg.data.image_size}|{cfg.train.epochs}")


def test_session_run_config_takes_the_data_pages_section() -> None:
    at = AppTest.from_function(_config_script, default_timeout=60)
    at.session_state[ui.RUN_CONFIG] = RunConfig(train=TrainConfig(epochs=4))
    at.session_state[ui.DATA_CONFIG] = DataConfig(path="/data/x", image_size=48)
    at.run()
    assert not at.exception
    assert at.markdown[0].value == "/data/x|48|4"
    assert at.number_input(key="epochs_box").value == 7  # seeded on first use


def test_seed_widget_keeps_what_the_user_set() -> None:
    at = AppTest.from_function(_config_script, default_timeout=60)
    at.run()
    assert at.markdown[0].value.endswith(f"|{TrainConfig().epochs}")  # defaults without a config
    at.number_input(key="epochs_box").set_value(12).run()
    assert at.number_input(key="epochs_box").value == 12  # not reset to the seed


def _picker_script() -> None:
    import streamlit as st

    from pages import ui

    st.write(ui.choose_trained_run(st, "pick"))


def test_choose_trained_run_prefers_the_active_run(
    workspace: Path, colours_dir: Path, tiny_config
) -> None:
    from cnnlab import train

    older = train.fit(tiny_config(colours_dir, epochs=1, batch_size=8))["run_id"]
    newer = train.fit(tiny_config(colours_dir, epochs=1, batch_size=8))["run_id"]
    at = AppTest.from_function(_picker_script, default_timeout=60).run()
    assert at.selectbox(key="pick").options == [newer, older]
    assert at.markdown[0].value == newer  # newest by default
    again = AppTest.from_function(_picker_script, default_timeout=60)
    again.session_state[ui.ACTIVE_RUN_ID] = older
    again.run()
    assert again.markdown[0].value == older


def test_scan_dataset_is_cached_until_a_class_folder_changes(colours_dir: Path) -> None:
    first = ui.scan_dataset(str(colours_dir))
    assert first.n_images == 36
    assert ui.scan_dataset(str(colours_dir)) is first  # served from the shared cache
    time.sleep(0.01)  # a later mtime for the class folder (ns resolution)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(colours_dir / "red" / "extra.png")
    again = ui.scan_dataset(str(colours_dir))
    assert again is not first and again.n_images == 37
    with pytest.raises(DataError, match="choose the data set again"):
        ui.scan_dataset(str(colours_dir / "gone"))


def test_thumbnail_is_the_training_preprocessing(colours_dir: Path) -> None:
    path = colours_dir / "blue" / "00.png"
    thumb = ui.thumbnail(str(path), path.stat().st_mtime_ns, size=24)
    assert thumb.shape == (24, 24, 3) and thumb.dtype.name == "uint8"
    assert thumb[..., 2].mean() > thumb[..., 0].mean() + 100  # still blue
