"""predict_api: which run a request reaches, and its answer equals `cnnlab predict --json`.

The HTTP layer is tested for real in tests/test_serve.py; these tests call the core directly.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cnnlab import ownership, predict_api, runs, users
from cnnlab.predict import Predictor


@pytest.fixture
def home(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    monkeypatch.delenv(predict_api.SERVE_ENV, raising=False)
    return trained[1]


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(predict_api.ApiError) as err:
        fn(*args)
    return err.value.status, str(err.value)


def test_find_run_takes_a_workspace_run_id_and_nothing_else(home: Path, trained, tmp_path) -> None:
    run_id = trained[0]["run_id"]
    run = predict_api.find_run(run_id)
    assert run.run_id == run_id and run.run_dir == (home / "runs" / run_id).resolve()
    assert _status(predict_api.find_run, None)[0] == 400
    # a path, a parent step or an absolute folder holding a real run is never followed
    outside = tmp_path / "elsewhere"
    shutil.copytree(run.run_dir, outside / run_id)
    for bad in ("../runs/" + run_id, str(outside / run_id), "..", ".hidden", "a/b", "a\x00b"):
        status, message = _status(predict_api.find_run, bad)
        assert status == 400, bad
        assert str(home) not in message and str(tmp_path) not in message
    status, message = _status(predict_api.find_run, "20990101-000000000-dead")
    assert status == 404 and message == "no run '20990101-000000000-dead' on this server"
    # a link inside runs/ to a run folder elsewhere is refused too
    link = home / "runs" / "linked-run"
    os.symlink(outside / run_id, link)
    try:
        assert _status(predict_api.find_run, "linked-run")[0] == 404
    finally:
        link.unlink()


def test_a_user_reaches_only_their_own_runs(home: Path, trained, monkeypatch) -> None:
    """Issue 27 over the API: another user's run answers like a missing one; admins reach all."""
    run_id = trained[0]["run_id"]
    owner = runs.read_summary(runs.load_run(run_id)).get("owner") or ownership.SINGLE_USER
    monkeypatch.setenv(users.ADMINS_ENV, "root")
    assert predict_api.find_run(run_id, users.make_user(owner)).run_id == run_id
    assert predict_api.find_run(run_id, users.make_user("root")).run_id == run_id
    status, message = _status(predict_api.find_run, run_id, users.make_user("mallory"))
    assert status == 404 and message == f"no run {run_id!r} on this server"


def test_a_served_run_is_the_only_one(home: Path, trained, monkeypatch) -> None:
    run_id = trained[0]["run_id"]
    monkeypatch.setenv(predict_api.SERVE_ENV, str(home / "runs" / run_id))
    assert predict_api.find_run(None).run_id == run_id
    assert predict_api.find_run(run_id).run_id == run_id
    status, message = _status(predict_api.find_run, "another-run")
    assert status == 404 and run_id in message


def test_answer_equals_the_predictors_top_k(home: Path, trained, digits_dir: Path) -> None:
    files = [sorted((digits_dir / d).iterdir())[0] for d in ("1", "4", "7")]
    run = predict_api.find_run(trained[0]["run_id"])
    predictor = predict_api.predictor_for(run)
    assert predict_api.predictor_for(run) is predictor  # loaded once
    answer = predict_api.predict_images(predictor, [(f.name, f.read_bytes()) for f in files], 4)
    # what `cnnlab predict --json` prints for the same files (a fresh Predictor, same batch)
    cli_rows = Predictor.from_run(run).predict_files(files, 4)
    assert answer["run_id"] == run.run_id and answer["seconds"] > 0
    assert [p["file"] for p in answer["predictions"]] == [f.name for f in files]
    for got, want in zip(answer["predictions"], cli_rows, strict=True):
        assert [t["label"] for t in got["top_k"]] == [t["class"] for t in want["top"]]
        assert [t["probability"] for t in got["top_k"]] == pytest.approx(
            [t["probability"] for t in want["top"]], abs=1e-6
        )
    assert answer["top_k"] == answer["predictions"][0]["top_k"]


def test_bad_images_are_one_line_400s(home: Path, trained, digits_dir: Path) -> None:
    predictor = predict_api.predictor_for(predict_api.find_run(trained[0]["run_id"]))
    good = sorted((digits_dir / "0").iterdir())[0].read_bytes()
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]
    cases = {
        "notes.txt": (b"just some text\n", "not a readable image"),
        "half.png": (truncated, "corrupt image data"),
        "empty.png": (b"", "empty file"),
    }
    for name, (payload, reason) in cases.items():
        status, message = _status(
            predict_api.predict_images, predictor, [("ok.png", good), (name, payload)]
        )
        assert status == 400 and message.startswith(f"{name}: ") and reason in message
        assert "\n" not in message and "Traceback" not in message
    assert _status(predict_api.predict_images, predictor, [])[0] == 400
    many = [("ok.png", good)] * (predict_api.MAX_FILES + 1)
    assert _status(predict_api.predict_images, predictor, many)[0] == 413


def test_parameters_names_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    assert predict_api.parse_top_k(None) == 3 and predict_api.parse_top_k("5") == 5
    for bad in ("0", "-1", "x", "101", "2.5"):
        assert _status(predict_api.parse_top_k, bad)[0] == 400
    assert predict_api.safe_name("../../etc/passwd", 0) == "passwd"
    assert predict_api.safe_name("C:\\Users\\me\\cat.jpg", 0) == "cat.jpg"
    assert predict_api.safe_name("", 2) == "image 3"
    assert predict_api.safe_name("a\nb\x1b.png", 0) == "ab.png"
    monkeypatch.delenv(predict_api.MAX_BODY_ENV, raising=False)
    assert predict_api.max_body_bytes() == 16 * 1024 * 1024
    monkeypatch.setenv(predict_api.MAX_BODY_ENV, "0.5")
    assert predict_api.max_body_bytes() == 512 * 1024
    monkeypatch.setenv(predict_api.MAX_BODY_ENV, "lots")
    assert predict_api.max_body_bytes() == 16 * 1024 * 1024


def test_a_run_without_a_model_is_a_404(home: Path, trained, tmp_path) -> None:
    run = runs.load_run(trained[0]["run_id"])
    copy = home / "runs" / "no-model-yet"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("*.pt"))
    try:
        status, message = _status(predict_api.predictor_for, predict_api.find_run("no-model-yet"))
        assert status == 404 and "no trained model" in message
    finally:
        shutil.rmtree(copy)
