"""Use a trained run on new images: the Predictor, top-k classes, a folder to CSV.

The Predictor applies exactly the validation preprocessing of training — `data.decode_image`
(squash to size x size, RGB) then `augment.prepare_batch` with the checkpoint's mean/std and no
augmentation — so a prediction here equals what `evaluate` and the exports compute.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from . import augment, data, models, runs
from .device import resolve_device
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

Source = Path | str | bytes
TopK = list[tuple[str, float]]


def load_image(source: Source, size: int, name: str | None = None) -> torch.Tensor:
    """Decode a file or bytes to uint8 (3, size, size), or raise DataError naming the file."""
    label = name or (str(source) if not isinstance(source, bytes) else "uploaded image")
    src = source if isinstance(source, bytes) else Path(source)
    try:
        return data.decode_image(src, size)
    except FileNotFoundError as exc:
        raise DataError(f"{label}: no such file") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{label}: is a folder, not an image") from exc
    except PermissionError as exc:
        raise DataError(f"{label}: permission denied (check the file's permissions)") from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{label}: not a readable image (unknown format or corrupt header); "
            f"use one of {', '.join(sorted(data.IMAGE_EXTENSIONS))}"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{label}: too large ({exc})") from exc
    # PIL's format plugins raise many types on malformed pixel data (OSError, SyntaxError,
    # ValueError, struct.error...): each means "this file is corrupt", never a crash.
    except Exception as exc:
        raise DataError(f"{label}: corrupt image data ({exc or type(exc).__name__})") from exc


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (recursively, image suffixes only, sorted) and keep files as given.

    Inside a folder, dotfiles, dot-folders, macOS `._*` / `__MACOSX/` litter are skipped as `scan`
    skips them.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not data.is_ignored(d))
                found += [
                    Path(dirpath) / f for f in sorted(filenames)
                    if not data.is_ignored(f) and Path(f).suffix.lower() in data.IMAGE_EXTENSIONS
                ]  # fmt: skip
            if not found:
                log.warning("no image files in folder %s", p)
            out += found
        else:
            out.append(p)  # a missing or bad file is reported per file by predict_files
    return out


@dataclass
class Predictor:
    """A run's best model plus its preprocessing: images in, top-k (class, probability) out."""

    model: nn.Module
    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    run_id: str = ""

    @classmethod
    def from_run(cls, run: str | Path | runs.Run, device: str = "cpu") -> Predictor:
        """Load a run's best checkpoint (CPU by default: predicting a few images needs no GPU)."""
        r = runs.load_run(run)
        dev = resolve_device(device)
        model, config, classes, ckpt = models.load_trained(r, "best", device=dev)
        return cls(
            model=model.eval(),
            classes=classes,
            image_size=int(ckpt.get("image_size", config.data.image_size)),
            mean=tuple(float(v) for v in ckpt["mean"]),
            std=tuple(float(v) for v in ckpt["std"]),
            device=dev,
            run_id=r.run_id,
        )

    def load(self, source: Source, name: str | None = None) -> torch.Tensor:
        """One image as uint8 (3, S, S) at the run's size (DataError if it is not an image)."""
        return load_image(source, self.image_size, name)

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> the normalised float batch the model was validated on."""
        return augment.prepare_batch(images_uint8.to(self.device), self.mean, self.std)

    @torch.inference_mode()
    def probabilities(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C) for uint8 images (N, 3, S, S)."""
        self.model.eval()
        return self.model(self.preprocess(images_uint8)).float().softmax(1).cpu()

    def top_k(self, probs: torch.Tensor, k: int = 3) -> list[TopK]:
        """Per row of probabilities, the k most likely (class, probability), best first."""
        k = max(1, min(k, len(self.classes)))
        values, idx = probs.topk(k, dim=1)
        return [
            [(self.classes[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values, idx, strict=True)
        ]

    def predict(self, images: Sequence[Source], k: int = 3) -> list[TopK]:
        """Top-k for each image (files or bytes); the first bad image raises DataError."""
        if not images:
            return []
        x = torch.stack([self.load(src) for src in images])
        return self.top_k(self.probabilities(x), k)

    def predict_files(self, paths: Sequence[str | Path], k: int = 3) -> list[dict[str, Any]]:
        """`{"path", "top": [{"class", "probability"}]}` per image; a bad file gets `error`."""
        if k < 1:
            raise ConfigError(f"top-k must be at least 1, got {k}")
        rows: list[dict[str, Any]] = []
        good: list[tuple[int, torch.Tensor]] = []
        for p in list_images(paths):
            rows.append({"path": str(p)})
            try:
                good.append((len(rows) - 1, self.load(p)))
            except DataError as exc:
                rows[-1]["error"] = str(exc)
        for start in range(0, len(good), 256):  # bounded memory for big folders
            chunk = good[start : start + 256]
            tops = self.top_k(self.probabilities(torch.stack([x for _, x in chunk])), k)
            for (row_i, _), top in zip(chunk, tops, strict=True):
                rows[row_i]["top"] = [{"class": c, "probability": p} for c, p in top]
        return rows


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula


def csv_safe(text: Any) -> str:
    """A text cell a spreadsheet shows as text: a leading apostrophe before a formula start
    (OWASP's CSV injection advice); the csv module quotes the rest as needed."""
    text = str(text)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_csv(rows: list[dict[str, Any]], csv_path: str | Path, k: int = 3) -> Path:
    """path, prediction, probability, top-k columns and error, one row per file."""
    out = Path(csv_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    k = max([len(r.get("top", [])) for r in rows] + [1]) if rows else k
    header = ["path", "prediction", "probability"]
    for i in range(1, k + 1):
        header += [f"top{i}_class", f"top{i}_probability"]
    header.append("error")
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            top = r.get("top", [])
            line: list[Any] = [csv_safe(r["path"])]
            line += [csv_safe(top[0]["class"]), f"{top[0]['probability']:.6f}"] if top else ["", ""]
            for i in range(k):
                line += (
                    [csv_safe(top[i]["class"]), f"{top[i]['probability']:.6f}"]
                    if i < len(top)
                    else ["", ""]
                )
            line.append(csv_safe(r.get("error", "")))
            writer.writerow(line)
    return out
