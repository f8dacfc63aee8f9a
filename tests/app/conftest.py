"""Fixtures for the dashboard's AppTests: the app on a page, a tiny coloured data set, real runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from cnnlab import jobs, train
from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

APP = str(Path(__file__).resolve().parents[2] / "app.py")
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def fresh_app() -> Callable[..., AppTest]:
    """open(page=None, **state): the dashboard on a page, caches cleared, session state preset."""
    st.cache_data.clear()
    st.cache_resource.clear()

    def open_page(page: str | None = None, **state) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60)
        for key, value in state.items():
            at.session_state[key] = value
        # Two runs: ui.use_app_navigation reruns once per session, on the second AppTest run
        # (AppTest re-arms Streamlit's pages-folder flag after the first), and that rerun would
        # swallow a click made right after a single run.
        at.run()
        if page is not None:
            at.switch_page(page)
        return at.run()

    yield open_page
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def no_leftover_jobs():
    """Stop whatever a test left running, so later tests see only their own jobs."""
    yield
    manager = jobs.get_manager()
    for snap in manager.list(active_only=True):
        manager.stop(snap.job_id)
        manager.wait(snap.job_id, timeout=30)


def write_colours(root: Path, per_class: int = 12, size: int = 16) -> Path:
    """A 3-class folder of small solid-colour PNGs with a little per-image shade variation."""
    for name, (r, g, b) in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shade = (i * 7) % 40
            Image.new("RGB", (size, size), (r - shade, g, b)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture
def colours_dir(workspace: Path) -> Path:
    """The 3-class colour folder inside the test's workspace."""
    return write_colours(workspace / "colours")


def _tiny_config(data_dir: Path, epochs: int = 3, name: str = "") -> RunConfig:
    """A config that trains on the colour folder in about a second."""
    return RunConfig(
        data=DataConfig(path=str(data_dir), image_size=16),
        model=ModelConfig(channels=[8, 16], head_units=0),
        train=TrainConfig(epochs=epochs, batch_size=8, device="cpu", patience=0),
        name=name,
    )


@pytest.fixture
def tiny_config() -> Callable[..., RunConfig]:
    """tiny_config(data_dir, epochs=3, name=""): a RunConfig that trains in about a second."""
    return _tiny_config


@pytest.fixture
def finished_run(colours_dir: Path) -> dict:
    """A completed run (summary dict) trained for real on the colour folder."""
    return train.fit(_tiny_config(colours_dir, name="tiny"))
