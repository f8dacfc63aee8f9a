"""Pretrained weights: ImageNet (downloaded once into the torch hub cache), an http(s) URL, a local
file, or one of the user's runs: which file a source stands for, and loading it into a model.

Downloads land in `torch.hub.get_dir()/checkpoints` (so `TORCH_HOME` is honoured and torchvision
finds the same files): a model zoo file under its own name (its torch hub `-<sha256 prefix>` is
checked), any other URL under `by-url/<hash of the URL>/` so two URLs with one file name never share
a file. One download per target file at a time (a file lock, not a process lock); the transfer
itself (size cap, stall timeout, deadline, redirects, atomic rename) is cnnlab.weights_download's.
A downloaded file is checked to be a weights-only state dict before it enters the cache, and a
failure under the dashboard's visitor rules (cnnlab.reach) reads the same whatever its cause.
`CNNLAB_WEIGHTS_MIRROR=<base URL>` replaces the public host for ImageNet files. Every file is read
with torch.load(weights_only=True): weights are data, never code.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from filelock import FileLock
from filelock import Timeout as LockTimeout
from torch import nn

from . import reach, runs, weights_download
from .errors import RANDOM_WEIGHTS, WeightsError
from .registry import MODELS, ModelSpec

log = logging.getLogger(__name__)

MIRROR_ENV = "CNNLAB_WEIGHTS_MIRROR"  # base URL of a mirror holding torchvision's file names
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

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
            f"weights URL {reach.redact_url(url)!r} is not http(s); give an http:// or https:// "
            "URL, a local .pth/.pt file, 'imagenet', 'random' or run:<run_id>"
        )
    name = _file_name(url)
    if not name or name.startswith("."):
        raise WeightsError(
            f"weights URL {reach.redact_url(url)} names no file (it must end in e.g. model.pth)"
        )
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


def _zoo_urls() -> set[str]:
    """The registry's ImageNet URLs (public and mirrored): files known by name and hash."""
    out = set()
    for spec in MODELS.values():
        if spec.weights is not None:
            out.add(spec.weights.url)
            out.add(imagenet_url(spec) or "")
    return out


def cached_path(url: str) -> Path:
    """Where the file of `url` is (or will be) in the cache: a zoo file under its name, any other
    URL in a folder named by the URL's hash (two URLs never share a file)."""
    name = _check_url(url)
    if url in _zoo_urls():
        return cache_dir() / name
    return cache_dir() / "by-url" / hashlib.sha256(url.encode()).hexdigest()[:24] / name


# url -> why its last download failed in this process (the Model page's "Download the weights
# now", a run's start); the pre-flight lists it so Start stays off until the file is there
_FAILED: dict[str, WeightsError] = {}


def last_failure(source: str, spec: ModelSpec) -> WeightsError | None:
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
    """The cached file of `url`, downloading it first when missing (capped, checked, atomic)."""
    _check_url(url)
    reach.check_weights_url(url)
    target = cached_path(url)
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        locks = cache_dir() / ".locks"
        locks.mkdir(exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"cannot create the weights cache {target.parent}: {exc.strerror or exc}; set "
            "TORCH_HOME to a writable folder"
        ) from exc
    key = hashlib.sha256(str(target).encode()).hexdigest()[:24]
    # one download per target file across threads and processes; other files go on meanwhile
    lock = FileLock(
        str(locks / f"{key}.lock"),
        timeout=weights_download.env_seconds(
            weights_download.DEADLINE_ENV, weights_download.DEFAULT_DEADLINE_S
        ),
    )
    try:
        with lock:
            if target.is_file():  # another thread or process fetched it while we waited
                return target
            try:
                weights_download.download(url, target, progress, _checker(url, target))
            except weights_download.Failed as failed:
                exc = _failure(url, target, failed.cause, failed.seconds)
                _FAILED[url] = copy.copy(exc)  # a copy holds no traceback (and no frames)
                raise exc from None
            except WeightsError as exc:
                _FAILED[url] = copy.copy(exc)
                raise
            _FAILED.pop(url, None)
    except LockTimeout as exc:
        raise WeightsError(
            f"another download of {target.name} did not finish in time; try again later"
        ) from exc
    return target


PROBE_TIMEOUT_S = 3.0  # a pre-run reachability check must not hold a run up for long
_PROBED: dict[str, tuple[float, str | None]] = {}  # url -> (when, why not reachable)
PROBE_TTL_S = 300.0


def unreachable(url: str) -> str | None:
    """Why `url` cannot be downloaded from here now (None when its first byte comes back): the
    weights host rules, then the network; answers are kept for a few minutes."""
    _check_url(url)
    if reach.visitor_rules() and not reach.host_allowed(url):
        return "its host is not on this server's weights hosts list"
    now = time.monotonic()
    seen = _PROBED.get(url)
    if seen is not None and now - seen[0] < PROBE_TTL_S:
        return seen[1]
    opener = urllib.request.build_opener(weights_download.Redirects(reach.visitor_rules()))
    why: str | None = None
    try:
        # a one-byte GET, not HEAD: plain file servers and mirrors answer GET alike
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        with opener.open(request, timeout=PROBE_TIMEOUT_S) as response:
            response.read(1)
    except urllib.error.HTTPError as exc:
        why = f"the server answered HTTP {exc.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        why = f"{urlparse(url).hostname} cannot be reached ({reason})"
    _PROBED[url] = (now, why)
    return why


def _checker(url: str, target: Path) -> weights_download.Check:
    """What a downloaded file must be: its torch hub sha256 prefix (if named), a state dict."""
    name, shown = target.name, reach.redact_url(url)
    expected = hash_prefix(name)

    def check(tmp: Path, digest: str) -> None:
        if expected and not digest.startswith(expected):
            raise WeightsError(
                f"{name} downloaded from {shown} does not match its sha256 prefix {expected}: "
                f"refused, nothing kept in {target.parent}; the server's copy is damaged or "
                "tampered with"
            )
        _read_state(tmp, "downloaded weights", shown=f"{name} from {shown}")

    return check


def _failure(url: str, target: Path, exc: BaseException, seconds: float) -> WeightsError:
    """The error a failed download raises: why, in words that probe nothing under visitor rules."""
    shown = reach.redact_url(url)
    if reach.visitor_rules() and not isinstance(exc, weights_download.Refused):
        # one text for refused, unreachable, missing, timed out: no probing of ports or paths
        log.info("download of %s failed: %s", shown, reach.redact_text(str(exc), url))
        return WeightsError(
            f"cannot download {target.name} from {shown}: the host did not serve the file; check "
            "the URL, or upload the .pth file, or use ",
            random_tail="",
        )
    if isinstance(exc, weights_download.Refused):
        why = str(exc)
    elif isinstance(exc, urllib.error.HTTPError):
        why = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        why = f"no connection: {exc.reason}"
    elif isinstance(exc, TimeoutError | socket.timeout):
        why = f"timed out after {seconds:.0f} s"
    else:
        why = f"{type(exc).__name__}: {exc}"
    why = reach.redact_text(why, url)
    return WeightsError(
        f"cannot download {target.name} from {shown} ({why}); on a machine with internet download "
        f"that URL and copy the file into {target.parent}/ (or set {MIRROR_ENV} to a mirror "
        "holding it), or use ",
        random_name=f'{RANDOM_WEIGHTS} ("Random (train from scratch)" on the Model page)',
        random_tail=" or a local .pth file",
    )


# ------------------------------------------------------------------ reading and loading


def _read_state(path: Path, what: str, shown: str | None = None) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) a raw state dict or one under model/state_dict/model_state."""
    shown = shown or str(path)
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; give a .pth/.pt file, or use ", random_tail=""
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
