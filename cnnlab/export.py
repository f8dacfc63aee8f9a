"""Export a run's best model to ONNX or a PyTorch ExportedProgram (.pt2), verified before use.

TorchScript is deprecated in torch 2.14, so the two formats are `torch.onnx.export(dynamo=True)`
(checked with onnxruntime) and `torch.export` (checked by loading it back). Both take the
*normalised* NCHW float32 batch; `preprocess.json` beside the model says exactly how to make it
(the mismatch that broke Lobe's ONNX exports was an undocumented preprocessing step). After
writing, the exported model is run on the run's test images and must give the Predictor's top-1 on
every one, or the export folder is marked bad and ExportError is raised.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import atomic, evaluate, runs
from .errors import CnnlabError, ExportError
from .predict import Predictor

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
FAILED_MARKER = "EXPORT_FAILED.json"  # written into the export folder when verification fails
MAX_BATCH = 4096  # upper bound of the dynamic batch dimension
TIE_TOLERANCE = 1e-4  # logit margin under which two classes count as tied (float round-off)
N_RANDOM_CHECK = 64  # images used for the check when the run's data set is gone


@dataclass
class ExportResult:
    format: str
    model_path: Path
    labels_path: Path
    preprocess_path: Path
    n_checked: int  # images on which the export's top-1 matched the Predictor's
    checked_on: str  # "test split" or why random images were used instead
    max_abs_diff: float  # largest logit difference against PyTorch
    dynamic_batch: bool
    seconds: float
    files: list[Path] = field(default_factory=list)  # every file written

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()} | {
            "files": [str(f) for f in self.files]
        }


def bundle_zip(result: ExportResult) -> bytes:
    """The model, labels.json and preprocess.json in one zip (for a browser download)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in (result.model_path, result.labels_path, result.preprocess_path):
            zf.write(f, arcname=f.name)
    return buf.getvalue()


def preprocess_spec(predictor: Predictor, dynamic_batch: bool) -> dict[str, Any]:
    """What preprocess.json says: how to turn an image file into the model's input."""
    return {
        "size": predictor.image_size,
        "mean": list(predictor.mean),
        "std": list(predictor.std),
        "resize": f"squash to {predictor.image_size} x {predictor.image_size} (bilinear, "
        "antialiased; aspect ratio not kept), RGB (alpha composited on white, EXIF-upright), /255",
        "normalize": "x = (pixel / 255 - mean[c]) / std[c] per RGB channel",
        "layout": "NCHW float32",
        "batch": "dynamic" if dynamic_batch else 1,
        "output": "logits (N, classes) in labels.json order; softmax gives probabilities",
    }


def _test_images(run: runs.Run, predictor: Predictor) -> tuple[torch.Tensor, str]:
    """The run's test split (uint8), or seeded random images when its data set is unavailable."""
    try:
        loaded = evaluate.load_for_eval(run, device="cpu")
        images, _ = evaluate.prepare_run_data(loaded).subset("test")
        if images.shape[0]:
            return images, "test split"
        reason = "the test split is empty"
    except CnnlabError as exc:
        reason = str(exc)
    log.warning("export check on random images: %s", reason)
    gen = torch.Generator().manual_seed(0)
    s = predictor.image_size
    rand = torch.randint(0, 256, (N_RANDOM_CHECK, 3, s, s), dtype=torch.uint8, generator=gen)
    return rand, f"{N_RANDOM_CHECK} random images ({reason})"


def require_onnx() -> None:
    """Raise ExportError naming the `export` extra when onnx, onnxscript or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the optional packages of the `export` extra ({exc.name} is "
            "missing): pip install 'cnnlab[export]', or export with --format pt2"
        ) from exc


def _export_onnx(model: torch.nn.Module, dummy: torch.Tensor, path: Path, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=True,
        dynamic_shapes=shapes,
        input_names=["input"],
        output_names=["logits"],
        external_data=False,  # one self-contained file (these models are far below 2 GB)
        verbose=False,
    )


def _export_pt2(model: torch.nn.Module, dummy: torch.Tensor, path: Path, dynamic: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic else None
    program = torch.export.export(model, (dummy,), dynamic_shapes=shapes)
    torch.export.save(program, str(path))


def _runner(fmt: str, path: Path):
    """A function normalised float (N, 3, S, S) numpy -> logits numpy, from the written file."""
    if fmt == "onnx":
        import onnxruntime as ort  # late import: only export needs it

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    module = torch.export.load(str(path)).module()

    def run_pt2(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run_pt2


def _check(fmt: str, path: Path, predictor: Predictor, images: torch.Tensor, dynamic: bool):
    """(n images checked, max |logit difference|); raises ExportError on a top-1 mismatch."""
    run = _runner(fmt, path)
    n_bad, max_diff, first_bad = 0, 0.0, None
    step = 256 if dynamic else 1
    for i in range(0, images.shape[0], step):
        x = predictor.preprocess(images[i : i + step]).cpu().contiguous()
        with torch.inference_mode():
            ref = predictor.model(x).float().numpy()
        got = np.asarray(run(x.numpy()), dtype=np.float32)
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        ref_top, got_top = ref.argmax(1), got.argmax(1)
        for j in np.flatnonzero(ref_top != got_top):
            # A flip between two classes whose logits are equal to float round-off is not a bug.
            if ref[j, ref_top[j]] - ref[j, got_top[j]] > TIE_TOLERANCE:
                n_bad += 1
                first_bad = first_bad if first_bad is not None else i + int(j)
    if n_bad:
        raise ExportError(
            f"the {fmt} export disagrees with the run's Predictor on {n_bad} of "
            f"{images.shape[0]} check images (first: #{first_bad}; max logit difference "
            f"{max_diff:.3g}). Do not use {path}; please report this with the run's config.json"
        )
    return images.shape[0], max_diff


def export_run(
    run: str | Path | runs.Run, fmt: str = "onnx", out_dir: str | Path | None = None
) -> ExportResult:
    """Write model.onnx or model.pt2 + labels.json + preprocess.json and verify the model."""
    if fmt not in FORMATS:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        require_onnx()
    t0 = time.perf_counter()
    r = runs.load_run(run)
    predictor = Predictor.from_run(r, device="cpu")
    model = predictor.model.eval()
    out = Path(out_dir) if out_dir is not None else r.exports_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the export folder {out}: {exc.strerror or exc}") from exc
    marker = out / FAILED_MARKER
    marker.unlink(missing_ok=True)
    model_path = out / f"model.{fmt}"
    s = predictor.image_size
    dummy = predictor.preprocess(torch.zeros(2, 3, s, s, dtype=torch.uint8)).contiguous()
    writer = _export_onnx if fmt == "onnx" else _export_pt2
    dynamic = True
    try:
        writer(model, dummy, model_path, dynamic)
    except Exception as exc:  # exporters raise many internal types; retry with a fixed batch
        log.warning("%s export with a dynamic batch failed (%s); using batch 1", fmt, exc)
        dynamic = False
        try:
            writer(model, dummy[:1], model_path, dynamic)
        except Exception as exc2:
            raise ExportError(
                f"could not export run {r.run_id} to {fmt}: {type(exc2).__name__}: {exc2}"
            ) from exc2
    labels_path, preprocess_path = out / "labels.json", out / "preprocess.json"
    atomic.write_json_atomic(labels_path, predictor.classes)
    atomic.write_json_atomic(preprocess_path, preprocess_spec(predictor, dynamic))
    images, checked_on = _test_images(r, predictor)
    try:
        n, max_diff = _check(fmt, model_path, predictor, images, dynamic)
    except ExportError as exc:
        atomic.write_json_atomic(marker, {"format": fmt, "error": str(exc)})
        raise
    files = [model_path, labels_path, preprocess_path]
    log.info("exported run %s to %s (checked on %d images)", r.run_id, model_path, n)
    return ExportResult(
        fmt, model_path, labels_path, preprocess_path, n, checked_on, max_diff, dynamic,
        time.perf_counter() - t0, files,
    )  # fmt: skip
