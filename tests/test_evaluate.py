"""evaluate: metrics of a real trained run, data-change detection, folders, a run's diagnosis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cnnlab import cli, evaluate, runs
from cnnlab.errors import DataError


@pytest.fixture
def home(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    return trained[1]


def test_test_accuracy_equals_the_run_summary(trained, home: Path) -> None:
    summary, _ = trained
    result = evaluate.evaluate_run(summary["run_id"])
    assert result.split == "test"
    assert result.n == summary["n_test"]
    assert result.accuracy == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert result.confusion.sum() == summary["n_test"]
    assert result.confusion.trace() == round(result.accuracy * result.n)
    assert sum(m["support"] for m in result.per_class.values()) == summary["n_test"]
    assert result.classes == [str(d) for d in range(10)]


def test_result_details_are_consistent(trained, home: Path) -> None:
    result = evaluate.evaluate_run(trained[0]["run_dir"])  # a run folder works like an id
    worst = result.worst(5)
    assert [w["loss"] for w in worst] == sorted((w["loss"] for w in worst), reverse=True)
    assert worst[0]["loss"] == pytest.approx(float(result.losses.max()))
    for pair in result.most_confused():
        assert pair["true"] != pair["predicted"]
        cell = result.cell_indices(pair["true"], pair["predicted"])
        assert len(cell) == pair["count"]
        assert all(result.classes[result.y_pred[i]] == pair["predicted"] for i in cell)
    assert result.images.shape == (result.n, 3, 16, 16)
    payload = json.loads(json.dumps(result.to_dict()))  # JSON-able as is
    assert payload["confusion_matrix"] == result.confusion.tolist()


def test_val_and_train_splits(trained, home: Path) -> None:
    summary, _ = trained
    val = evaluate.evaluate_run(summary["run_id"], split="val")
    assert val.n == summary["n_val"]
    assert val.accuracy == pytest.approx(summary["val_accuracy"], abs=1e-6)
    with pytest.raises(DataError, match="split must be one of"):
        evaluate.evaluate_run(summary["run_id"], split="holdout")


def test_a_changed_data_set_is_refused(trained, tmp_path: Path, monkeypatch) -> None:
    summary, home = trained
    monkeypatch.setenv("CNNLAB_HOME", str(home))
    copy = tmp_path / "run-copy"
    shutil.copytree(summary["run_dir"], copy)
    split_file = copy / "split.json"
    recorded = json.loads(split_file.read_text())
    recorded["files"]["test"] = recorded["files"]["test"][1:]  # as if a test image vanished
    split_file.write_text(json.dumps(recorded))
    with pytest.raises(DataError, match="changed since run .* its test split differs"):
        evaluate.evaluate_run(copy)


def test_evaluate_on_a_folder(trained, home: Path, digits_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "labelled"
    for digit in ("3", "7"):
        (folder / digit).mkdir(parents=True)
        for f in sorted((digits_dir / digit).iterdir())[:6]:
            shutil.copy(f, folder / digit / f.name)
    result = evaluate.evaluate_folder(trained[0]["run_id"], folder)
    assert result.split == "folder" and result.n == 12
    assert set(result.y_true.tolist()) == {3, 7}  # labels mapped to the run's class order
    assert result.per_class["3"]["support"] == 6 and result.per_class["0"]["support"] == 0

    (folder / "cat").mkdir()
    shutil.copy(next((digits_dir / "1").iterdir()), folder / "cat" / "x.png")
    with pytest.raises(DataError, match=r"\['cat'\]"):
        evaluate.evaluate_folder(trained[0]["run_id"], folder)


def test_cli_evaluate_json(trained, home: Path, capsys) -> None:
    summary, _ = trained
    assert cli.main(["evaluate", summary["run_id"], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-6)
    assert sum(map(sum, out["confusion_matrix"])) == summary["n_test"]
    assert len(out["confusion_matrix"]) == len(out["classes"]) == 10
    assert set(out["per_class"]["0"]) == {"precision", "recall", "f1", "support"}
    assert {"n", "loss", "most_confused", "worst", "diagnosis"} <= set(out)


def test_cli_evaluate_unknown_run_is_one_line(home: Path, capsys) -> None:
    assert cli.main(["evaluate", "no-such-run"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "no run 'no-such-run'" in err and "Traceback" not in err


def test_diagnose_a_real_run(trained, home: Path) -> None:
    d = evaluate.diagnose_run(trained[0]["run_id"])
    assert d.best_epoch == trained[0]["best_epoch"]
    assert d.last_epoch == len(runs.read_metrics(runs.load_run(trained[0]["run_id"])))
