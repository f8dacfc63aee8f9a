"""Pretrained weights: ImageNet (downloaded once into the torch hub cache), an http(s) URL, a local
file, or one of the user's runs.

Downloads go through torch's own `torch.hub.download_url_to_file` into `torch.hub.get_dir()/
checkpoints` (so `TORCH_HOME` is honoured and torchvision finds the same files), hash-checked when
the file name carries torch hub's `-<sha256 prefix>`; each file is fetched to a temporary name,
checked to be a weights-only state dict, then renamed: the cache never holds a partial or tampered
file. `CNNLAB_WEIGHTS_MIRROR=<base URL>` replaces the public host for ImageNet files. Offline, the
download fails within the socket timeout with one line saying where to copy the file by hand.
Every file is read with torch.load(weights_only=True): weights are data, never code.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from torch import nn

from . import runs
from .errors import WeightsError
from .registry import ModelSpec

log = logging.getLogger(__name__)

MIRROR_ENV = "CNNLAB_WEIGHTS_MIRROR"  # base URL of a mirror holding torchvision's file names
TIMEOUT_ENV = "CNNLAB_WEIGHTS_TIMEOUT"  # seconds a connect or a read may stall (default 20)
DEFAULT_TIMEOUT_S = 20.0
STALE_S = 3600.0  # a download temporary untouched this long was left by a killed process
PROGRESS_EVERY_S = 0.2  # at most this often a progress callback is called while downloading
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# One download at a time in this process: two jobs asking for the same file wait for one copy, and
# the temporary swaps below (torch.hub's progress class, the socket timeout) are not re-entrant.
_LOCK = threading.Lock()

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total or 0, what) as data.Progress


def cache_dir() -> Path:
    """Where downloaded weights live: torch.hub.get_dir()/checkpoints (TORCH_HOME honoured)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_url(source: str) -> bool:
    """True when `source` looks like a URL (any scheme)."""
    return bool(_SCHEME.match(source))


def imagenet_url(spec: ModelSpec) -> str | None:
    """The ImageNet file's URL for this model, on CNNLAB_WEIGHTS_MIRROR when that is set."""
    if spec.weights is None:
        return None
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return spec.weights.url
    return mirror.rstrip("/") + "/" + _file_name(spec.weights.url)


def _file_name(url: str) -> str:
    return Path(urlparse(url).path).name


def _check_url(url: str) -> str:
    """The URL's file name; anything but http(s) with a file name is refused."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise WeightsError(
            f"weights URL {url!r} is not http(s); give an http:// or https:// URL, a local "
            ".pth/.pt file, 'imagenet', 'random' or run:<run_id>"
        )
    name = _file_name(url)
    if not name:
        raise WeightsError(f"weights URL {url} names no file (it must end in e.g. model.pth)")
    return name


def hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torch hub file names carry (`name-<hex>.pth`), None when absent."""
    match = torch.hub.HASH_REGEX.search(file_name)
    return match.group(1) or None if match else None


def remote_url(source: str, spec: ModelSpec) -> str | None:
    """The URL a source downloads from (imagenet or an http(s) URL), None for local sources."""
    if source == "imagenet":
        return None if spec.builtin_pretrained else imagenet_url(spec)
    if is_url(source):
        _check_url(source)
        return source
    return None


def cached_path(url: str) -> Path:
    """Where the file of `url` is (or will be) in the cache."""
    return cache_dir() / _check_url(url)


# url -> why its last download failed in this process (the Model page's "Download the weights
# now", a run's start); the pre-flight lists it so Start stays off until the file is there
_FAILED: dict[str, str] = {}


def last_failure(source: str, spec: ModelSpec) -> str | None:
    """Why the last download of `source` failed in this process, while its file is still missing."""
    url = remote_url(source, spec)
    if url is None or cached_path(url).is_file():
        return None
    return _FAILED.get(url)


def needs_download(source: str, spec: ModelSpec) -> bool:
    """True when `source` is a download whose file is not in the cache yet."""
    url = remote_url(source, spec)
    return url is not None and not cached_path(url).is_file()


def fetch(url: str, progress: Progress | None = None) -> Path:
    """The cached file of `url`, downloading it first when missing (hash-checked, atomic)."""
    name = _check_url(url)
    target = cache_dir() / name
    if target.is_file():
        return target
    with _LOCK:
        if target.is_file():  # another thread fetched it while we waited
            return target
        try:
            _download(url, target, progress)
        except WeightsError as exc:
            _FAILED[url] = str(exc)
            raise
        _FAILED.pop(url, None)
    return target


def _download(url: str, target: Path, progress: Progress | None) -> None:
    name = target.name
    expected = hash_prefix(name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"cannot create the weights cache {target.parent}: {exc.strerror or exc}; set "
            "TORCH_HOME to a writable folder"
        ) from exc
    _remove_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".download", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    log.info("downloading %s from %s into %s", name, url, target.parent)
    t0 = time.perf_counter()
    old_timeout, old_tqdm = socket.getdefaulttimeout(), getattr(torch.hub, "tqdm", None)
    try:
        # download_url_to_file opens the URL without a timeout argument, so the socket default is
        # the only way to bound a stalled connection; restored right after (we hold _LOCK).
        socket.setdefaulttimeout(timeout)
        if progress is not None and old_tqdm is not None:
            torch.hub.tqdm = _reporter(progress, f"downloading {name}")  # type: ignore[attr-defined]
        torch.hub.download_url_to_file(url, str(tmp), expected, progress=progress is not None)
        _read_state(tmp, "downloaded weights", shown=f"{name} from {url}")
        os.replace(tmp, target)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise WeightsError(
            f"{name} downloaded from {url} does not match its sha256 prefix {expected}: refused, "
            f"nothing kept in {target.parent}; the server's copy is damaged or tampered with"
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise WeightsError(_offline_message(url, target, exc, time.perf_counter() - t0)) from exc
    finally:
        socket.setdefaulttimeout(old_timeout)
        if old_tqdm is not None:
            torch.hub.tqdm = old_tqdm  # type: ignore[attr-defined]
        tmp.unlink(missing_ok=True)
    log.info("saved %s (%.1f MB)", target, target.stat().st_size / 1e6)


def _remove_stale(target: Path) -> None:
    """Delete temporaries of `target` that a killed process left (untouched for STALE_S): a live
    download in another process keeps writing to its own, so it is never old."""
    now = time.time()
    for tmp in target.parent.glob(f".{target.name}.*.download*"):
        try:
            if now - tmp.stat().st_mtime > STALE_S:
                tmp.unlink()
                log.info("removed %s, left by an interrupted download", tmp)
        except OSError:  # gone already (another process cleaned it) or not ours to delete
            continue


def _offline_message(url: str, target: Path, exc: BaseException, seconds: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"no connection: {exc.reason}"
    elif isinstance(exc, TimeoutError | socket.timeout):
        why = f"timed out after {seconds:.0f} s"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return (
        f"cannot download {target.name} from {url} ({why}); on a machine with internet download "
        f"that URL and copy the file into {target.parent}/ (or set {MIRROR_ENV} to a mirror "
        "holding it), or use weights 'random' (\"Random (train from scratch)\" on the Model page) "
        "or a local .pth file"
    )


def _reporter(progress: Progress, what: str) -> type:
    """A stand-in for tqdm that torch.hub.download_url_to_file drives: calls `progress` instead."""

    class Reporter:
        def __init__(self, total: int | None = None, disable: bool = False, **_kw: object):
            self.total, self.done, self.last = int(total or 0), 0, 0.0
            progress(0, self.total, what)

        def __enter__(self) -> Reporter:
            return self

        def __exit__(self, *_exc: object) -> None:
            progress(self.done, self.total or self.done, what)

        def update(self, n: int) -> None:
            self.done += n
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY_S:
                self.last = now
                progress(self.done, self.total, what)

    return Reporter


# ------------------------------------------------------------------ reading and loading


def _read_state(path: Path, what: str, shown: str | None = None) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a raw state dict or one under model/state_dict/model_state."""
    shown = shown or str(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give a .pth/.pt file, or use weights 'random'"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types; all mean "not a plain state dict"
        raise WeightsError(
            f"cannot read {what} {shown} as a weights-only state dict "
            f"({type(exc).__name__}); give a .pth/.pt state dict"
        ) from exc
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{what} {shown} holds no state dict (a mapping of names to tensors)")
    # DataParallel / torch.compile prefixes would hide every key
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}


def resolve(source: str, spec: ModelSpec, progress: Progress | None = None) -> Path | None:
    """The local file `source` stands for (downloading it if needed); None: nothing to load."""
    if source == "random":
        return None
    if source == "imagenet":
        if spec.builtin_pretrained:
            return None  # the builder loads them (timm)
        url = imagenet_url(spec)
        if url is None:
            log.info("model %s has no ImageNet weights; starting from random init", spec.name)
            return None
        return fetch(url, progress)
    if source.startswith("run:"):
        return Path(runs.checkpoint_path(source.removeprefix("run:")))
    if is_url(source):
        return fetch(source, progress)
    return Path(source).expanduser()


def load_weights(
    model: nn.Module,
    source: str,
    spec: ModelSpec,
    heads: tuple[str, ...],
    progress: Progress | None = None,
) -> None:
    """Load `source` (imagenet, random, a file, an http(s) URL, run:<id>) into model; `heads`
    (state-dict prefixes of the new classifier) may stay fresh."""
    path = resolve(source, spec, progress)
    if path is None:
        return
    what = {"imagenet": "ImageNet weights"}.get(source, "weights file")
    if source.startswith("run:"):
        what = "run checkpoint"
    _load_state(
        model, _read_state(path, what), source if source.startswith("run:") else str(path), heads
    )


def _load_state(
    model: nn.Module, state: dict[str, torch.Tensor], origin: str, heads: tuple[str, ...]
) -> None:
    """Load every backbone tensor (all must fit) and the head tensors whose shapes fit."""
    own = model.state_dict()
    # num_batches_tracked is absent from older checkpoints and harmless to leave at 0
    backbone = [k for k in own if not k.startswith(heads) and not k.endswith("num_batches_tracked")]
    fits = {k for k in own if k in state and state[k].shape == own[k].shape}
    misfits = [k for k in backbone if k not in fits]
    extra = [k for k in state if k not in own and not k.startswith(heads)]
    if misfits or extra:
        hint = ", ".join((misfits or extra)[:3])
        raise WeightsError(
            f"{origin} does not fit model {type(model).__name__}: "
            f"{len(backbone) - len(misfits)} of {len(backbone)} backbone tensors match and "
            f"{len(extra)} are unknown (e.g. {hint}); pick the architecture these weights were saved from"
        )
    model.load_state_dict({k: state[k] for k in fits}, strict=False)
    fresh = [k for k in own if k.startswith(heads) and k not in fits]
    log.info("loaded %d tensors from %s; %d head tensors kept fresh", len(fits), origin, len(fresh))
