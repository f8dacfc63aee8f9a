"""The dashboard with users configured (issue 27): a request without a trusted user header gets
nothing. AppTest sends no headers, like a visitor reaching the port past the proxy."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_without_a_trusted_user_header_the_pages_show_nothing(
    workspace: Path, fresh_app, monkeypatch: pytest.MonkeyPatch, finished_run: dict
) -> None:
    monkeypatch.setenv("CNNLAB_USER_HEADER", "X-Forwarded-User")
    for page in ("pages/runs.py", "pages/home.py", "pages/predict.py"):
        at = fresh_app(page)
        assert not at.exception
        assert any("carries none" in e.value for e in at.error), page
        shown = " ".join(str(getattr(e, "value", "")) for e in at.main)
        assert finished_run["run_id"] not in shown
