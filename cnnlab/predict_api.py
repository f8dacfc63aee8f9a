"""The HTTP predict API's core (no web framework here): which run, its Predictor, images -> JSON.

`POST /api/cnnlab/predict` (pages/predict_api.py mounts it on the dashboard and on `cnnlab serve`)
hands this module the request's image bytes; the answer is the same numbers as
`cnnlab predict --json`, because both call `Predictor.probabilities` on images decoded by
`predict.load_image` (the safe loader: size and pixel caps, corrupt data is a DataError).
Every failure is an ApiError carrying its HTTP status and one line that names neither a server
path nor a traceback.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from . import runs, users, workspace
from .errors import CnnlabError, DataError
from .predict import Predictor

log = logging.getLogger(__name__)

SERVE_ENV = "CNNLAB_SERVE_RUN"  # set by `cnnlab serve`: the one run this server predicts with
MAX_BODY_ENV = "CNNLAB_API_MAX_MB"  # the request size cap in MB (default DEFAULT_MAX_MB)
DEFAULT_MAX_MB = 16
MAX_FILES = 32  # images in one request
DEFAULT_TOP_K = 3  # as `cnnlab predict`
MAX_TOP_K = 100
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a run folder's name, never a path
_CACHE_SIZE = 4  # Predictors kept in memory (one per run and checkpoint)


class ApiError(CnnlabError):
    """A request the API refuses: `status` is the HTTP status, the message one line for the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def max_body_bytes() -> int:
    """The largest request body accepted, from CNNLAB_API_MAX_MB (default 16 MB)."""
    raw = os.environ.get(MAX_BODY_ENV, "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_MAX_MB
    except ValueError:
        log.warning("%s=%r is not a number of MB; using %d", MAX_BODY_ENV, raw, DEFAULT_MAX_MB)
        mb = DEFAULT_MAX_MB
    return max(1, int(mb * 1024 * 1024))


def served_run() -> str | None:
    """The run `cnnlab serve` pinned this process to (a run folder), or None for the full lab."""
    return os.environ.get(SERVE_ENV) or None


def find_run(run_id: str | None, caller: users.User | None = None) -> runs.Run:
    """The run a request may predict with: the served run, else a run id of the workspace that
    `caller` may see (None: no users configured, or the CLI).

    The one place that decides which runs a caller reaches (a caller's id is never a path).
    """
    pinned = served_run()
    if pinned:
        run = runs.load_run(pinned)
        if run_id and run_id != run.run_id:
            raise ApiError(404, f"this server serves run {run.run_id} only, not {run_id!r}")
        return run
    if not run_id:
        raise ApiError(400, "say which run: add run_id=<id> (see `cnnlab runs`) to the request")
    if not _RUN_ID.fullmatch(run_id):
        raise ApiError(400, "run_id must be a run's id (letters, digits, '.', '_', '-')")
    root = workspace.runs_dir().resolve()
    folder = (root / run_id).resolve()
    if folder.parent != root or not (folder / "config.json").is_file():
        raise ApiError(404, f"no run {run_id!r} on this server")
    run = runs.Run(folder.name, folder)
    if caller is not None and not users.can_see(caller, _owner(run)):
        raise ApiError(404, f"no run {run_id!r} on this server")  # the same as a missing one
    return run


def _owner(run: runs.Run) -> str | None:
    try:
        return runs.read_summary(run).get("owner")
    except CnnlabError:
        return None  # a damaged run: admins only


_cache: OrderedDict[tuple[str, int], Predictor] = OrderedDict()
_cache_lock = threading.Lock()


def predictor_for(run: runs.Run) -> Predictor:
    """The run's Predictor on the CPU, loaded once per checkpoint (a new best.pt reloads it)."""
    try:
        stamp = run.best_path.stat().st_mtime_ns
    except OSError:
        raise ApiError(404, f"run {run.run_id} has no trained model yet") from None
    key = (str(run.run_dir), stamp)
    with _cache_lock:  # one load per key even when many requests arrive at once
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        try:
            predictor = Predictor.from_run(run, device="cpu")
        except CnnlabError as exc:
            log.warning("predict API: run %s cannot be loaded: %s", run.run_id, exc)
            raise ApiError(409, f"run {run.run_id} cannot be loaded; retrain it") from None
        _cache[key] = predictor
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return predictor


def parse_top_k(raw: str | None) -> int:
    """The top_k parameter (default 3), a whole number from 1 to MAX_TOP_K."""
    if raw is None or raw == "":
        return DEFAULT_TOP_K
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, f"top_k must be a whole number, got {raw[:20]!r}") from None
    if not 1 <= k <= MAX_TOP_K:
        raise ApiError(400, f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
    return k


def safe_name(name: str | None, index: int) -> str:
    """A caller's file name fit to echo back: its last component, printable, at most 100 chars."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:100]
    return base or f"image {index + 1}"


def predict_images(
    predictor: Predictor, images: Sequence[tuple[str, bytes]], k: int = DEFAULT_TOP_K
) -> dict[str, Any]:
    """`{"run_id", "top_k", "predictions", "seconds"}` for (name, bytes) images, in order.

    `top_k` is the first image's [{"label", "probability"}], `predictions` one
    {"file", "top_k"} per image. An unreadable image is a 400 naming it; nothing is predicted.
    """
    if not images:
        raise ApiError(400, "no image in the request: send image files (multipart) or raw bytes")
    if len(images) > MAX_FILES:
        raise ApiError(413, f"{len(images)} images in one request; send at most {MAX_FILES}")
    t0 = time.perf_counter()
    decoded = []
    for name, payload in images:
        if not payload:
            raise ApiError(400, f"{name}: empty file")
        try:
            decoded.append(predictor.load(payload, name))
        except DataError as exc:
            raise ApiError(400, str(exc)) from None
    tops = predictor.top_k(predictor.probabilities(torch.stack(decoded)), k)
    rows = [
        {"file": name, "top_k": [{"label": c, "probability": p} for c, p in top]}
        for (name, _), top in zip(images, tops, strict=True)
    ]
    return {
        "run_id": predictor.run_id,
        "top_k": rows[0]["top_k"],
        "predictions": rows,
        "seconds": time.perf_counter() - t0,
    }


def describe(run: runs.Run) -> dict[str, Any]:
    """What `GET /api/cnnlab/predict` says: the run and how to call the API."""
    predictor = predictor_for(run)
    return {
        "run_id": run.run_id,
        "classes": predictor.classes,
        "image_size": predictor.image_size,
        "max_request_bytes": max_body_bytes(),
        "max_files": MAX_FILES,
        "usage": "POST image files (multipart/form-data) or one image's raw bytes "
        "(Content-Type image/* or application/octet-stream); optional top_k, run_id",
    }
