"""export: ONNX and .pt2 of a real run reproduce the Predictor's top-1 on every test image."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cnnlab import cli, evaluate, export, predict


@pytest.fixture
def run_id(trained, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    return trained[0]["run_id"]


def _test_split(run_id: str, predictor: predict.Predictor):
    """(normalised float test batch as numpy, the Predictor's top-1 per image)."""
    loaded = evaluate.load_for_eval(run_id, device="cpu")
    images, _ = evaluate.prepare_run_data(loaded).subset("test")
    x = predictor.preprocess(images).contiguous()
    return x.numpy(), predictor.probabilities(images).argmax(1).numpy()


def _check_sidecars(out: Path, predictor: predict.Predictor) -> None:
    assert json.loads((out / "labels.json").read_text()) == predictor.classes
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["size"] == 16
    assert pre["mean"] == pytest.approx(list(predictor.mean))
    assert pre["std"] == pytest.approx(list(predictor.std))
    assert "squash" in pre["resize"] and "RGB" in pre["resize"]


def test_onnx_export_matches_the_predictor_on_every_test_image(trained, run_id, tmp_path) -> None:
    result = export.export_run(run_id, "onnx", tmp_path / "onnx")
    predictor = predict.Predictor.from_run(run_id)
    assert result.model_path == tmp_path / "onnx" / "model.onnx"
    assert result.checked_on == "test split" and result.n_checked == trained[0]["n_test"]
    _check_sidecars(tmp_path / "onnx", predictor)
    x, top1 = _test_split(run_id, predictor)
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]  # the whole split at once
    assert logits.shape == (len(top1), 10)
    assert np.array_equal(logits.argmax(1), top1)
    assert not (tmp_path / "onnx" / export.FAILED_MARKER).exists()


def test_pt2_export_matches_the_predictor_on_every_test_image(trained, run_id) -> None:
    result = export.export_run(run_id)  # default folder: the run's exports/
    assert result.format == "onnx"
    result = export.export_run(run_id, "pt2")
    predictor = predict.Predictor.from_run(run_id)
    assert result.model_path.parent == Path(trained[0]["run_dir"]) / "exports"
    assert result.dynamic_batch
    _check_sidecars(result.model_path.parent, predictor)
    x, top1 = _test_split(run_id, predictor)
    module = torch.export.load(str(result.model_path)).module()
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    assert np.array_equal(logits.argmax(1), top1)


def test_a_mismatching_export_fails_loudly(run_id, tmp_path: Path) -> None:
    result = export.export_run(run_id, "pt2", tmp_path)
    predictor = predict.Predictor.from_run(run_id)
    with torch.no_grad():  # now the run's model no longer matches the file written before
        last = predictor.model.head[-1]
        last.weight.copy_(last.weight.roll(1, dims=0))
        last.bias.copy_(last.bias.roll(1, dims=0))
    images = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(export.ExportError, match="disagrees with the run's Predictor"):
        export._check("pt2", result.model_path, predictor, images, dynamic=True)


def test_export_checks_random_images_when_the_data_set_changed(trained, run_id, tmp_path) -> None:
    copy = tmp_path / "run-copy"
    shutil.copytree(trained[0]["run_dir"], copy)
    split = json.loads((copy / "split.json").read_text())
    split["files"]["test"] = split["files"]["test"][:-1]  # as if a test image had been deleted
    (copy / "split.json").write_text(json.dumps(split))
    result = export.export_run(copy, "pt2")
    assert result.n_checked == export.N_RANDOM_CHECK
    assert "random images" in result.checked_on and "changed since run" in result.checked_on


def test_cli_export_and_bad_format(run_id, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    assert cli.main(["export", run_id, "--format", "pt2", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"model.pt2", "labels.json", "preprocess.json"}
    assert "verified" in capsys.readouterr().err
    with pytest.raises(export.ExportError, match="one of onnx, pt2"):
        export.export_run(run_id, "torchscript")


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_onnx_without_the_export_extra_names_it(
    run_id, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # what an install without the extra looks like
    with pytest.raises(export.ExportError, match=r"pip install 'cnnlab\[export\]'") as info:
        export.export_run(run_id, "onnx", tmp_path / "out")
    assert f"({missing} is missing)" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before writing anything
    assert cli.main(["export", run_id, "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cnnlab[export]" in err
