"""A run's model card: what it recognises, how well, on what data, when; as a dict and as a README.

The served demo (`cnnlab serve`) shows the dict at the top of its page; `cnnlab export RUN
--format card` writes the README (Hugging Face model-card front matter: library, tags, metrics)
beside model.onnx / model.pt2, so an exported run describes itself. Per-class recall comes from
re-scoring the run's own test split (`evaluate.evaluate_run`); when its data set is gone the card
says so instead. The data set appears by folder name only: a card is shown to visitors, who must
not learn server paths.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from . import __version__, evaluate, runs
from .errors import CnnlabError, ExportError

log = logging.getLogger(__name__)

README = "README.md"
MODEL_FILES = ("model.onnx", "model.pt2")


def _when(stamp: Any) -> str | None:
    """A time.time() stamp as 'YYYY-MM-DD HH:MM UTC' (None when missing)."""
    if not isinstance(stamp, (int, float)):
        return None
    return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def build_card(run: str | Path | runs.Run, evaluate_test: bool = True) -> dict[str, Any]:
    """The card of a trained run: classes, accuracies, per-class test recall, input size, when
    it was trained, the data set's name and split sizes."""
    r = runs.load_run(run)
    runs.checkpoint_path(r)  # RunNotFoundError when it never saved a model
    cfg = runs.read_config(r)
    summary = runs.read_summary(r)
    split = runs.read_split(r)
    sizes = {name: len(files) for name, files in (split.get("files") or {}).items()}
    classes = list(split.get("classes") or summary.get("classes") or [])
    recall: dict[str, float] | None = None
    recall_note = None
    if evaluate_test:
        try:
            result = evaluate.evaluate_run(r, "test", device="cpu")
            recall = {c: m["recall"] for c, m in result.per_class.items()}
            classes = result.classes
        except CnnlabError as exc:  # the data set moved or changed: the card says so
            log.warning("model card of %s without per-class recall: %s", r.run_id, exc)
            recall_note = "the run's data set is not available here to re-score its test split"
    created = summary.get("created")
    seconds = summary.get("seconds")
    finished = created + seconds if isinstance(created, (int, float)) and seconds else None
    return {
        "run_id": r.run_id,
        "name": cfg.name or r.run_id,
        "model": cfg.model.name,
        "classes": classes,
        "image_size": cfg.data.image_size,
        "test_accuracy": summary.get("test_accuracy"),
        "val_accuracy": summary.get("val_accuracy"),
        "per_class_recall": recall,
        "per_class_recall_note": recall_note,
        "trained": _when(finished) or _when(created),
        "epochs": summary.get("epochs_run"),
        "dataset": Path(cfg.data.path).name or "-",
        "dataset_size": {"total": sum(sizes.values()), **sizes},
        "status": summary.get("status"),
    }


def front_matter(card: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face model-card metadata of a card (library, tags, pipeline, model-index)."""
    meta: dict[str, Any] = {
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "cnnlab", card["model"]],
    }
    if card["test_accuracy"] is not None:
        meta["metrics"] = ["accuracy"]
        meta["model-index"] = [
            {
                "name": card["name"],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {
                            "name": card["dataset"],
                            "type": "imagefolder",
                            "split": "test",
                        },
                        "metrics": [
                            {
                                "type": "accuracy",
                                "value": round(float(card["test_accuracy"]), 4),
                                "name": "Test accuracy",
                            }
                        ],
                    }
                ],
            }
        ]
    return meta


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "–"


def card_markdown(card: dict[str, Any], files: list[str] | None = None) -> str:
    """The README text: YAML front matter, then the card and how to use the exported files."""
    lines = [
        "---",
        yaml.safe_dump(front_matter(card), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        *_summary_lines(card),
        *_class_lines(card),
        *_file_lines(files or []),
        *_usage_lines(card["run_id"]),
    ]
    return "\n".join(lines)


def _summary_lines(card: dict[str, Any]) -> list[str]:
    """The title and the card's key facts: model, accuracy, when trained, data set, input."""
    size = card["image_size"]
    sizes = card["dataset_size"]
    split_text = ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "total")
    return [
        f"# {card['name']}",
        "",
        f"An image classifier ({card['model']}) trained with cnnlab {__version__}: it sorts "
        f"{size} x {size} px images into {len(card['classes'])} classes.",
        "",
        f"- **Test accuracy:** {_pct(card['test_accuracy'])} "
        f"(validation {_pct(card['val_accuracy'])})",
        f"- **Trained:** {card['trained'] or 'unknown'}, {card['epochs'] or '?'} epochs "
        f"(run `{card['run_id']}`)",
        f"- **Data set:** {card['dataset']}, {sizes['total']} images ({split_text})",
        f"- **Input:** {size} x {size} px RGB, normalised as `preprocess.json` says",
        "",
    ]


def _class_lines(card: dict[str, Any]) -> list[str]:
    """The classes with their test recall (or why it is not shown)."""
    lines = ["## Classes", "", "| class | test recall |", "|---|---|"]
    recall = card["per_class_recall"] or {}
    lines += [f"| {c} | {_pct(recall.get(c))} |" for c in card["classes"]]
    if card["per_class_recall_note"]:
        lines += ["", f"Per-class recall is not shown: {card['per_class_recall_note']}."]
    return lines


def _file_lines(present: list[str]) -> list[str]:
    """The exported files beside the card, and what the two JSON files say."""
    lines = ["", "## Files", ""]
    lines += [f"- `{f}`" for f in present] or ["- (no exported model yet: `cnnlab export RUN`)"]
    return lines + [
        "",
        "`labels.json` lists the classes in output order; `preprocess.json` says how an image "
        "becomes the model's input (resize, mean/std, layout).",
    ]


def _usage_lines(run_id: str) -> list[str]:
    """How to run the exported model (onnxruntime) and how to serve it."""
    return [
        "",
        "## Use",
        "",
        "```python",
        "import json, numpy as np, onnxruntime as ort",
        "from PIL import Image",
        "",
        'pre = json.load(open("preprocess.json")); labels = json.load(open("labels.json"))',
        'img = Image.open("photo.jpg").convert("RGB").resize((pre["size"], pre["size"]), '
        "Image.BILINEAR)",
        "x = (np.asarray(img, np.float32) / 255 - pre['mean']) / pre['std']",
        "x = x.transpose(2, 0, 1)[None].astype(np.float32)",
        'logits = ort.InferenceSession("model.onnx").run(None, {"input": x})[0]',
        "print(labels[int(logits.argmax())])",
        "```",
        "",
        f"Or serve it as a demo with a predict API: `cnnlab serve {run_id}`.",
        "",
    ]


def write_card(run: str | Path | runs.Run, out_dir: str | Path | None = None) -> Path:
    """Write README.md (the model card) into out_dir (default: the run's exports folder)."""
    r = runs.load_run(run)
    out = Path(out_dir) if out_dir is not None else r.exports_dir
    card = build_card(r)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the export folder {out}: {exc.strerror or exc}") from exc
    names = [*MODEL_FILES, "labels.json", "preprocess.json"]
    files = [n for n in names if (out / n).is_file()]
    path = out / README
    try:
        path.write_text(card_markdown(card, files), encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    log.info("model card of run %s written to %s", r.run_id, path)
    return path
