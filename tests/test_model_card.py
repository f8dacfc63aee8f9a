"""model_card: a real run's card (its own test recall), the README's front matter, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cnnlab import cli, evaluate, model_card, runs, train


@pytest.fixture
def home(trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNLAB_HOME", str(trained[1]))
    return trained[1]


def test_card_of_a_real_run(home: Path, trained, digits_dir: Path) -> None:
    summary = trained[0]
    card = model_card.build_card(summary["run_id"])
    result = evaluate.evaluate_run(summary["run_id"], "test", device="cpu")
    assert card["classes"] == [str(d) for d in range(10)]
    assert card["test_accuracy"] == summary["test_accuracy"]
    assert card["per_class_recall"] == {c: m["recall"] for c, m in result.per_class.items()}
    assert card["image_size"] == 16 and card["model"] == "custom"
    split = runs.read_split(runs.load_run(summary["run_id"]))["files"]
    assert card["dataset_size"] == {
        "total": 1797,
        **{name: len(files) for name, files in split.items()},
    }
    assert card["dataset"] == digits_dir.name  # the folder's name, never the server path
    assert str(digits_dir.parent) not in json.dumps(card)
    assert card["trained"].endswith(" UTC") and card["epochs"] == 2


def test_readme_front_matter_is_hugging_face_style(home: Path, trained) -> None:
    card = model_card.build_card(trained[0]["run_id"])
    text = model_card.card_markdown(card, ["model.onnx", "labels.json"])
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["library_name"] == "pytorch"
    assert meta["pipeline_tag"] == "image-classification"
    assert "cnnlab" in meta["tags"] and "custom" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    (metric,) = result["metrics"]
    assert metric["type"] == "accuracy"
    assert metric["value"] == round(trained[0]["test_accuracy"], 4)
    body = text.split("---\n", 2)[2]
    assert f"# {card['name']}" in body and "- `model.onnx`" in body
    for cls, recall in card["per_class_recall"].items():
        assert f"| {cls} | {recall:.1%} |" in body


def test_a_run_whose_data_is_gone_still_gets_a_card(
    workspace: Path, colours_dir: Path, tiny_config
) -> None:
    summary = train.fit(tiny_config(colours_dir, epochs=1, batch_size=8))
    shutil.rmtree(colours_dir)
    card = model_card.build_card(summary["run_id"])
    assert card["per_class_recall"] is None and "not available" in card["per_class_recall_note"]
    assert card["test_accuracy"] == summary["test_accuracy"]
    assert card["classes"] == ["blue", "green", "red"]
    text = model_card.card_markdown(card)
    assert "Per-class recall is not shown" in text and "| green | – |" in text


def test_cli_export_card_writes_readme_beside_the_model(
    home: Path, trained, tmp_path, capsys
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.pt2").write_bytes(b"stand-in for an exported model")  # listed, never read
    code = cli.main(["export", trained[0]["run_id"], "--format", "card", "--out", str(out),
                     "--json"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"format": "card", "readme": str(out / "README.md"),
                      "files": [str(out / "README.md")]}  # fmt: skip
    text = (out / "README.md").read_text()
    assert "- `model.pt2`" in text and "model.onnx`" not in text.split("## Use")[0]
    assert cli.main(["export", "no-such-run", "--format", "card"]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
