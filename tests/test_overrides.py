"""Label overrides on real images: relabel / exclude / undo round-trip, applied by scan, inspect,
train and evaluate (a run keeps the ones it used), exported as a corrected CSV; files untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from cnnlab import cli, data, evaluate, overrides, reports, runs, train
from cnnlab.errors import DataError


@pytest.fixture
def colours(workspace: Path, colour_classes: Path) -> Path:
    """A private copy of the 3 x 30 colour set (its overrides belong to this test)."""
    return Path(shutil.copytree(colour_classes, workspace.parent / "colours"))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_relabel_exclude_undo_round_trip(colours: Path) -> None:
    before = _digest(colours)
    plain = data.scan(colours)
    assert plain.counts == {"blue": 30, "green": 30, "red": 30} and not plain.overrides

    overrides.relabel(colours, "red/00.png", "blue")
    overrides.exclude(colours, "green/03.png")
    scan = data.scan(colours)
    assert scan.counts == {"blue": 31, "green": 29, "red": 29}
    assert scan.classes[scan.labels[[scan.rel(i) for i in range(scan.n_images)].index(
        "red/00.png")]] == "blue"  # fmt: skip
    assert "green/03.png" not in {scan.rel(i) for i in range(scan.n_images)}
    assert scan.overrides.relabel == {"red/00.png": "blue"}
    assert scan.overrides.exclude == ["green/03.png"]
    # files stay grouped by class, as a plain scan's
    assert scan.labels == sorted(scan.labels)

    report = reports.inspect_report(str(colours))
    assert report["overrides"]["relabelled"] == 1 and report["overrides"]["excluded"] == 1
    assert report["overrides"]["relabel"] == {"red/00.png": "blue"}
    assert report["n_images"] == 89
    assert Path(report["overrides"]["file"]).is_file()

    assert overrides.undo(colours)["action"] == "exclude"
    assert data.scan(colours).counts == {"blue": 31, "green": 30, "red": 29}
    assert overrides.undo(colours)["action"] == "relabel"
    assert data.scan(colours).counts == plain.counts
    assert overrides.undo(colours) is None  # nothing left to undo
    assert _digest(colours) == before  # the user's files never changed


def test_undo_restores_an_earlier_relabel(colours: Path) -> None:
    overrides.relabel(colours, "red/01.png", "blue")
    overrides.relabel(colours, "red/01.png", "green")
    overrides.undo(colours)
    assert overrides.load(colours).relabel == {"red/01.png": "blue"}


def test_bad_overrides_are_clear_errors(colours: Path) -> None:
    with pytest.raises(DataError, match="not a path inside"):
        overrides.relabel(colours, "../outside.png", "red")
    overrides.relabel(colours, "red/02.png", "purple")  # a class the data set lacks
    scan = data.scan(colours)
    assert scan.counts["red"] == 30
    assert any("purple" in w for w in scan.warnings)
    overrides.file_for(colours).write_text("[1, 2]")
    with pytest.raises(DataError, match="not a JSON object"):
        data.scan(colours)


def test_corrected_csv_reads_back_with_the_same_labels(colours: Path, tmp_path: Path) -> None:
    overrides.relabel(colours, "red/00.png", "green")
    overrides.exclude(colours, "blue/05.png")
    scan = data.scan(colours)
    csv_file = tmp_path / "corrected.csv"
    csv_file.write_text(overrides.corrected_csv(scan))
    again = data.scan(csv_file, images=str(colours))
    got = {again.rel(i): again.classes[again.labels[i]] for i in range(again.n_images)}
    want = {scan.rel(i): scan.classes[scan.labels[i]] for i in range(scan.n_images)}
    assert got == want and got["red/00.png"] == "green" and "blue/05.png" not in got


def test_cli_overrides_command(colours: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["overrides", str(colours), "--relabel", "red/00.png", "blue", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["relabel"] == {"red/00.png": "blue"}
    out = tmp_path / "fixed.csv"
    assert cli.main(["overrides", str(colours), "--exclude", "red/01.png", "--export-csv",
                     str(out), "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["excluded"] == 1 and report["can_undo"]
    assert "red/00.png,blue" in out.read_text() and "red/01.png" not in out.read_text()
    assert cli.main(["overrides", str(colours), "--clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["relabelled"] == 0


def test_a_run_records_and_keeps_its_overrides(colours: Path, tiny_config) -> None:
    overrides.relabel(colours, "red/00.png", "blue")
    overrides.exclude(colours, "green/00.png")
    summary = train.fit(tiny_config(colours, epochs=1, batch_size=8))
    run = runs.load_run(summary["run_id"])
    assert summary["overrides"] == {"relabelled": 1, "excluded": 1}
    assert runs.read_overrides(run).relabel == {"red/00.png": "blue"}
    # later fixes do not change what the run is evaluated on: it re-applies its own overrides
    overrides.exclude(colours, "blue/00.png")
    overrides.relabel(colours, "red/03.png", "green")
    result = evaluate.evaluate_run(run, "test")
    assert result.n == summary["n_test"]


def test_a_class_left_empty_by_the_overrides_is_dropped(colours: Path) -> None:
    for i in range(30):
        overrides.exclude(colours, f"green/{i:02d}.png")
    scan = data.scan(colours)
    assert scan.classes == ["blue", "red"] and scan.counts == {"blue": 30, "red": 30}
    assert set(scan.labels) == {0, 1}
    assert any("no images in class(es) green" in w for w in scan.warnings)
