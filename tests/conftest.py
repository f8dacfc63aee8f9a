"""Shared fixtures: an isolated workspace per test and the demo digits written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab import demo


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CNNLAB_HOME under tmp_path, so no test touches ~/.cnnlab."""
    home = tmp_path / "cnnlab-home"
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    monkeypatch.delenv("CNNLAB_DATA_ROOTS", raising=False)
    return home


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1,797 sklearn digits as PNGs in <digit>/ folders, written once per test session.

    Shared by many tests: treat it as read-only.
    """
    return demo.write_digits(tmp_path_factory.mktemp("digits") / "digits")
