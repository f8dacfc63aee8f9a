"""predict: the Predictor on real images of a real run, bad files, CLI, CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab import cli, evaluate, predict
from cnnlab.errors import DataError


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    """A text file named .png, a truncated PNG and an empty .jpg."""
    good = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(good, format="PNG")
    files = {
        "text": tmp_path / "notes.png",
        "truncated": tmp_path / "cut.png",
        "empty": tmp_path / "empty.jpg",
    }
    files["text"].write_text("this is not an image")
    files["truncated"].write_bytes(good.getvalue()[:60])
    files["empty"].write_bytes(b"")
    return files


def test_predictor_matches_evaluate_on_every_test_image(trained, predictor, digits_dir) -> None:
    result = evaluate.evaluate_run(trained[0]["run_id"])
    tops = predictor.predict([digits_dir / p for p in result.paths], k=3)
    assert len(tops) == result.n
    top1 = np.array([predictor.classes.index(t[0][0]) for t in tops])
    probs = np.array([t[0][1] for t in tops])
    # Same decode + normalisation as training; only the memory layout (channels_last) differs.
    assert np.allclose(probs, result.probs.max(1), atol=1e-4)
    assert (top1 == result.y_pred).mean() == 1.0
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in tops)


def test_bytes_and_paths_give_the_same_answer(predictor, digits_dir: Path) -> None:
    path = sorted((digits_dir / "7").iterdir())[0]
    by_path = predictor.predict([path], k=10)[0]
    by_bytes = predictor.predict([path.read_bytes()], k=10)[0]
    assert by_path == by_bytes
    assert sum(p for _, p in by_path) == pytest.approx(1.0, abs=1e-5)
    assert predictor.predict([path], k=99)[0] == by_path  # k is capped at the class count


@pytest.mark.parametrize("kind", ["text", "truncated", "empty"])
def test_a_bad_file_raises_data_error_naming_it(predictor, bad_files, kind) -> None:
    with pytest.raises(DataError, match=bad_files[kind].name):
        predictor.predict([bad_files[kind]])


def test_predict_files_reports_bad_files_and_missing_ones(predictor, bad_files, digits_dir):
    folder = digits_dir / "5"
    rows = predictor.predict_files([bad_files["text"], folder, "/no/such/file.png"], k=2)
    n_folder = len([f for f in folder.iterdir() if f.suffix == ".png"])
    assert len(rows) == 2 + n_folder
    assert "not a readable image" in rows[0]["error"] and "top" not in rows[0]
    assert "no such file" in rows[-1]["error"]
    good = rows[1:-1]
    assert all(len(r["top"]) == 2 and set(r["top"][0]) == {"class", "probability"} for r in good)
    assert np.mean([r["top"][0]["class"] == "5" for r in good]) > 0.5


def test_cli_predict_json_with_a_corrupt_file(trained, bad_files, digits_dir, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    good = sorted((digits_dir / "1").iterdir())[0]
    code = cli.main(["predict", trained[0]["run_id"], str(bad_files["truncated"]), str(good),
                     "--top-k", "2", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0  # a bad file is reported, not fatal
    rows = json.loads(captured.out)
    assert rows[0]["path"] == str(bad_files["truncated"]) and "cut.png" in rows[0]["error"]
    assert "top" not in rows[0] and len(rows[1]["top"]) == 2
    assert "Traceback" not in captured.err and "1 file(s) could not be read" in captured.err


def test_cli_predict_csv_and_bad_run(trained, digits_dir, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    out = tmp_path / "p.csv"
    assert (
        cli.main(["predict", trained[0]["run_dir"], str(digits_dir / "0"), "--csv", str(out)]) == 0
    )
    assert len(out.read_text().splitlines()) > 100
    capsys.readouterr()
    assert cli.main(["predict", "missing-run", str(out)]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "no run 'missing-run'" in err and "Traceback" not in err


def test_predict_csv_escapes_spreadsheet_formulas(workspace: Path, tmp_path: Path) -> None:
    """Issue 28 item 7: labels, top-k and paths starting with = + - @ (or tab/CR) are written
    with a leading apostrophe (OWASP's advice), so a spreadsheet shows them as text."""
    import numpy as np
    from PIL import Image

    from cnnlab import train
    from cnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig

    root = tmp_path / "data"
    names = ["=HYPERLINK(1)", "+plus", "-minus", "@at"]
    gen = np.random.default_rng(0)
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for j in range(6):
            pixels = np.clip(gen.normal(50 * i, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    summary = train.fit(RunConfig(
        data=DataConfig(path=str(root), image_size=12, val_fraction=0.0, test_fraction=0.0),
        model=ModelConfig(channels=[4], head_units=0),
        train=TrainConfig(epochs=1, batch_size=8, device="cpu"),
    ))  # fmt: skip
    image = root / names[0] / "0.png"
    odd = tmp_path / "=cmd.png"
    odd.write_bytes(image.read_bytes())
    predictor = predict.Predictor.from_run(summary["run_id"])
    rows = predictor.predict_files([str(odd)], 4)
    rows[0]["path"] = "=cmd.png"  # as a relative path the user typed would read
    out = predict.write_csv(rows, tmp_path / "p.csv", 4)
    with out.open(newline="") as f:
        (line,) = list(csv.DictReader(f))
    cells = [line["path"]] + [line[f"top{i}_class"] for i in range(1, 5)] + [line["prediction"]]
    assert line["path"] == "'=cmd.png"
    assert sorted(c for c in cells[1:5]) == sorted("'" + n for n in names)
    assert all(c.startswith("'") for c in cells)
    assert float(line["top1_probability"]) > 0  # numbers stay numbers
