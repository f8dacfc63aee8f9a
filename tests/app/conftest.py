"""Fixtures for the dashboard's AppTests: the app on a page, no leftover jobs, a finished run.

The colour folder, tiny_config and the workspace come from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from cnnlab import jobs, scan_cache, train

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def fresh_app() -> Callable[..., AppTest]:
    """open(page=None, **state): the dashboard on a page, caches cleared, session state preset."""
    st.cache_data.clear()
    st.cache_resource.clear()
    scan_cache.clear()

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
    scan_cache.clear()


@pytest.fixture
def no_leftover_jobs():
    """Stop whatever a test left running, so later tests see only their own jobs."""
    yield
    manager = jobs.get_manager()
    for snap in manager.list(active_only=True):
        manager.stop(snap.job_id)
        manager.wait(snap.job_id, timeout=30)


@pytest.fixture
def finished_run(colours_dir: Path, tiny_config) -> dict:
    """A completed run (summary dict) trained for real on the colour folder."""
    return train.fit(tiny_config(colours_dir, batch_size=8, name="tiny"))
