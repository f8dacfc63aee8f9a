"""Workspace paths and the data-roots guard for server-side dataset paths."""

import pytest

from cnnlab import workspace
from cnnlab.errors import DataError


def test_home_and_subfolders_follow_cnnlab_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "ws"))
    assert workspace.home() == (tmp_path / "ws").resolve()
    assert workspace.runs_dir().is_dir()
    assert workspace.studies_url().endswith("ws/studies.db")


def test_paths_outside_data_roots_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("CNNLAB_DATA_ROOTS", str(tmp_path / "data"))
    (tmp_path / "data" / "set").mkdir(parents=True)
    assert (
        workspace.check_inside_roots(tmp_path / "data" / "set")
        == (tmp_path / "data" / "set").resolve()
    )
    with pytest.raises(DataError, match="outside the allowed data folders"):
        workspace.check_inside_roots(tmp_path / "data" / ".." / "elsewhere")
    with pytest.raises(DataError):
        workspace.check_inside_roots("/etc")


def test_a_secret_key_is_made_once_private_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(tmp_path))
    key = workspace.secret_key("feed")
    path = tmp_path / "feed.key"
    assert len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert workspace.secret_key("feed") == key  # the next process reads the same key
    assert workspace.secret_key("other") != key
    assert not list(tmp_path.glob(".feed-*"))  # no temp file left behind
    path.write_bytes(b"short")
    with pytest.raises(DataError, match="delete it"):
        workspace.secret_key("feed")
