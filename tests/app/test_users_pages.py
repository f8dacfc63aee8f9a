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


def test_with_oidc_configured_a_visitor_must_sign_in_first(workspace: Path) -> None:
    from streamlit.testing.v1 import AppTest

    from tests.app.conftest import APP

    at = AppTest.from_file(APP, default_timeout=60)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "x" * 32,
        "client_id": "cnnlab",
        "client_secret": "secret",
        "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration",
    }
    at.run()
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert "Sign in to use this lab." in [i.value for i in at.info]
    assert not at.title  # no page ran
