"""Every page on a fresh workspace with no session state: renders, and says what is missing.

Also bad state left in the session (a data set folder deleted since, an empty folder): the page
shows a message, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PAGES = {
    "home": "cnnlab",
    "data": "Data",
    "augment": "Augment",
    "model": "Model",
    "train": "Train",
    "tune": "Tune",
    "evaluate": "Evaluate",
    "predict": "Predict",
    "runs": "Runs",
}
# pages that cannot work without something chosen elsewhere
NEEDS_SOMETHING = ("train", "tune", "evaluate", "predict", "runs")


def _open(fresh_app, name: str, **state):
    return fresh_app(None if name == "home" else f"pages/{name}.py", **state)


@pytest.mark.parametrize("name", list(PAGES))
def test_fresh_workspace_renders_every_page(workspace: Path, fresh_app, name: str) -> None:
    at = _open(fresh_app, name)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value == PAGES[name]
    if name in NEEDS_SOMETHING:
        hints = [m.value for m in (*at.info, *at.warning)]
        assert hints, f"the {name} page does not say what is missing"
        if not any("Coming soon" in h for h in hints):  # placeholder pages have nothing to link
            assert at.get("page_link"), f"the {name} page does not link to where to get it"


@pytest.mark.parametrize("name", list(PAGES))
def test_a_deleted_data_set_is_not_a_crash(workspace: Path, fresh_app, name: str) -> None:
    gone = workspace / "datasets" / "gone"
    at = _open(fresh_app, name, dataset_path=str(gone), active_run_id="20200101-000000-dead")
    assert not at.exception, at.exception
    assert at.title[0].value == PAGES[name]


def test_an_unusable_folder_shows_what_to_do_on_augment(workspace: Path, fresh_app) -> None:
    empty = workspace / "empty"
    (empty / "just-one-class").mkdir(parents=True)
    at = _open(fresh_app, "augment", dataset_path=str(empty))
    assert not at.exception
    assert at.error and str(empty) in at.error[0].value or "class" in at.error[0].value
