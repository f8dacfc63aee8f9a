"""Turn an image folder or zip into clean, split, decoded tensors — or say precisely why not.

Layout: one sub-folder per class (classes sorted by name, as torchvision's ImageFolder). `scan`
opens and decodes every file in a thread pool (PIL releases the GIL) and lists each bad one as a
Problem instead of crashing; `split` is a seeded per-class shuffle; `load_tensors` decodes once
into a uint8 (N, 3, S, S) array cached on disk, so the next load is a plain file read.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import duplicates, workspace
from . import overrides as overrides_mod
from .archive import safe_extract_zip, save_uploaded_files, save_uploaded_zip
from .config import SPLITS, DataConfig
from .errors import DataError, UnsafeArchiveError
from .labels_csv import read_csv
from .layouts import (
    IMAGE_EXTENSIONS,
    Entry,
    Layout,
    Problem,
    is_ignored,
    read_folders,
    resolve_dataset,
)
from .override_set import Overrides
from .scan_result import ScanResult
from .splits import Split, filter_scan, split, split_warnings

__all__ = [
    "IMAGE_EXTENSIONS", "PreparedData", "Problem", "Split", "UnsafeArchiveError",
    "decode_image", "filter_scan", "is_ignored", "load_tensors", "prepare", "resolve_dataset",
    "safe_extract_zip", "save_uploaded_files", "save_uploaded_zip", "scan", "split",
]  # fmt: skip

log = logging.getLogger(__name__)

MAX_PIXELS = 89_478_485  # width x height above which a file is refused as a decompression bomb
# (PIL's own default, ~90 MP: PIL warns above it and raises above twice it)
RAM_FRACTION = 0.25  # decode into a memory-mapped file instead of RAM above this share of RAM
CACHE_VERSION = 1  # bump when decode_image changes, so old caches are not reused
VERIFY_VERSION = 8  # bump when _verify's results (reasons, fingerprints) change
_WHITE = (255, 255, 255)

Progress = Callable[[int, int, str], None]


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(32, cores or 1))


def _open_image(source: Path | bytes) -> Image.Image:
    """Open lazily and refuse decompression bombs before any pixel is decoded."""
    im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    # PIL only warns between MAX_IMAGE_PIXELS and twice that; our own check makes every image
    # over the limit a refusal. (warnings.catch_warnings would do the same but is not thread-safe.)
    if im.width * im.height > MAX_PIXELS:
        w, h = im.size
        im.close()
        raise Image.DecompressionBombError(
            f"{w} x {h} = {w * h:,} pixels is over the {MAX_PIXELS:,} limit (decompression bomb?)"
        )
    return im


Verified = tuple[str | None, str, str]  # (reason it cannot be used or None, exact key, near key)


def _verify(path: Path) -> str | None:
    """None when path decodes as an image, else the reason it cannot be used."""
    return _check(path)[0]


def _check(path: Path) -> Verified:
    """(None, exact, near) when path decodes as an image, else (the reason it cannot be used, ...)."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)", "", ""
        with _open_image(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (64, 64))  # still reads every byte, so truncation is caught
            im.load()
            exact, near = duplicates.fingerprints(im)
    except PermissionError:
        return "unreadable: permission denied (check the file's permissions)", "", ""
    except FileNotFoundError:
        return "unreadable: the file vanished or is a broken link", "", ""
    except UnidentifiedImageError:
        return "not a readable image (unknown format or corrupt header)", "", ""
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}", "", ""
    # PIL's format plugins raise many exception types on malformed data (OSError, SyntaxError,
    # ValueError, struct.error, ...); any of them means "this file cannot be used", never a crash.
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            return f"truncated image data ({text})", "", ""
        return f"corrupt image data ({text})", "", ""
    return None, exact, near


def scan(
    path: str | Path,
    progress: Progress | None = None,
    *,
    path_column: str = "",
    label_column: str = "",
    images: str = "",
    overrides: Overrides | None = None,
) -> ScanResult:
    """List classes and usable images of a class-folder / split-folder data set, zip or labels CSV.

    Every file is verified (decoded); bad ones become Problems. Given splits (train/ val/ test/
    folders, a CSV split column) are kept per file in `given`. The data set's label overrides
    (the workspace's file, or `overrides` when given, e.g. a run's) are applied last.
    """
    layout = _read_layout(path, progress, path_column, label_column, images)
    checked = _verify_cached([e.path for e in layout.entries], progress)
    good = [(e, checked[e.path]) for e in layout.entries if checked[e.path][0] is None]
    problems = list(layout.problems) + _unreadable(layout, checked)
    classes = _usable_classes(layout, good, problems)
    index = {c: i for i, c in enumerate(classes)}
    good.sort(key=lambda pair: (index[pair[0].label], SPLITS.index(pair[0].split or "train"),
                                str(pair[0].path)))  # fmt: skip
    given = [e.split for e, _ in good] if layout.source != "random" else []
    result = ScanResult(
        layout.root, classes, [e.path for e, _ in good], [index[e.label] for e, _ in good],
        problems, layout.source, given, [v[1] for _, v in good], [v[2] for _, v in good],
        list(layout.warnings),
    )  # fmt: skip
    result.warnings.extend(_given_split_warnings(result))
    # the one hook where label fixes enter: every scan, inspect, train and evaluation sees them
    result = overrides_mod.apply(
        result, overrides_mod.load(path) if overrides is None else overrides
    )
    log.info("scanned %s: %d classes, %d images, %d problems", layout.root, len(classes),
             result.n_images, len(problems))  # fmt: skip
    return result


def _read_layout(
    path: str | Path, progress: Progress | None, path_column: str, label_column: str, images: str
) -> Layout:
    """The entries of a class-folder / split-folder data set, a .zip of one, or a labels .csv."""
    root = resolve_dataset(path, progress)
    if root.is_file():
        return read_csv(root, path_column, label_column, images)
    if path_column or label_column or images:
        raise DataError(
            f"{root} is a folder; --path-column, --label-column and --images only apply to a .csv"
        )
    return read_folders(root)


def _unreadable(layout: Layout, checked: dict[Path, Verified]) -> list[Problem]:
    """A Problem per listed file that failed verification (with its CSV row when it has one)."""
    out = []
    for e in layout.entries:
        reason = checked[e.path][0]
        if reason:
            rel = os.path.relpath(e.path, layout.root).replace(os.sep, "/")
            out.append(Problem(rel, f"row {e.row}: {reason}" if e.row else reason))
    return out


def _usable_classes(
    layout: Layout, good: list[tuple[Entry, Verified]], problems: list[Problem]
) -> list[str]:
    """The sorted classes with at least one usable image; the others become Problems. Fewer
    than two usable classes is a DataError: a classifier needs two."""
    names = sorted({e.label for e in layout.entries})
    usable = {e.label for e, _ in good}
    for name in names:
        if name not in usable:
            log.warning("class %r has no usable images and is left out", name)
            n = sum(e.label == name for e in layout.entries)
            problems.append(Problem(f"{name}/", f"class left out: none of its {n} image "
                                    "files could be used"))  # fmt: skip
    classes = [n for n in names if n in usable]
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(
            f"{layout.root} has {len(classes)} usable class folder(s) ({found}); a classifier "
            "needs at least 2 — add one sub-folder of images per class"
        )
    return classes


def _given_split_warnings(result: ScanResult) -> list[str]:
    """What a layout's own splits lack: a split not given (carved from train), or classes missing."""
    out: list[str] = []
    for name in SPLITS if result.given else ():
        present = {result.labels[i] for i, s in enumerate(result.given) if s == name}
        if not present and name != "train":
            out.append(f"the layout gives no {name} split: it is carved from "
                       f"train with data.{name}_fraction")  # fmt: skip
        if present and len(present) < len(result.classes):
            missing = [c for i, c in enumerate(result.classes) if i not in present]
            out.append(f"the given {name} split has no images of class(es) {', '.join(missing)}")
    return out


def _verify_all(paths: list[Path], progress: Progress | None) -> dict[Path, Verified]:
    checked: dict[Path, Verified] = {}
    step = max(1, len(paths) // 100)
    with ThreadPoolExecutor(_workers()) as pool:
        for i, (path, result) in enumerate(zip(paths, pool.map(_check, paths), strict=True), 1):
            checked[path] = result
            if progress is not None and (i % step == 0 or i == len(paths)):
                progress(i, len(paths), "verify")
    return checked


def _verify_cached(paths: list[Path], progress: Progress | None) -> dict[Path, Verified]:
    """_verify_all, remembered per file fingerprint: re-scanning unchanged data decodes nothing.

    The cache is best-effort: an unwritable workspace warns once and keeps the results in memory.
    """
    folder = workspace.cache_dir_or_none()
    key = _fingerprint(paths, -VERIFY_VERSION)[:32]
    cache = folder / f"verify-{key}.json" if folder is not None else None
    if cache is not None:
        try:
            raw = json.loads(cache.read_text())
            bad, exact, near = raw["bad"], raw["exact"], raw["near"]
            if len(exact) == len(near) == len(paths):
                if progress is not None:
                    progress(len(paths), len(paths), "verify")
                return {p: (bad.get(str(i)), exact[i], near[i]) for i, p in enumerate(paths)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: verify again
            log.warning("ignoring unreadable verification cache %s (%s)", cache, exc)
    checked = _verify_all(paths, progress)
    if cache is not None:
        payload = {
            "bad": {str(i): checked[p][0] for i, p in enumerate(paths) if checked[p][0]},
            "exact": [checked[p][1] for p in paths],
            "near": [checked[p][2] for p in paths],
        }
        _write_cache(cache, ".verify-", ".json", lambda f: f.write(json.dumps(payload).encode()))
    return checked


def _write_cache(cache: Path, prefix: str, suffix: str, write: Callable) -> bool:
    """Write a cache file atomically; a full disk or read-only workspace warns once, never fails."""
    try:
        with workspace.temp_file(cache.parent, prefix, suffix) as tmp:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, cache)  # atomic: a reader sees the whole cache or none
        return True
    except OSError as exc:
        workspace.warn_once(
            f"cache-write-{cache.parent}",
            f"could not write the cache in {cache.parent} ({exc.strerror or exc}); continuing "
            "in memory — free disk space to make the next load fast",
        )
        return False


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: 16-bit scaled (not clipped), transparency composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        else:
            arr = arr / 257.0  # 0..65535 -> 0..255 exactly at both ends
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        return gray.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_image(source: Path | bytes, size: int) -> torch.Tensor:
    """File or bytes -> uint8 (3, size, size): RGB, EXIF-upright, squashed with antialiasing."""
    with _open_image(source) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))  # decode big JPEGs at 1/2..1/8 scale: much faster
        upright = ImageOps.exif_transpose(im)
        rgb = _to_rgb(upright)
    # PIL's BILINEAR resize widens its filter when shrinking, i.e. it is antialiased.
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(resized, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _fingerprint(files: Sequence[Path], size: int) -> str:
    """sha256 over each file's absolute path, size and mtime, plus the image size."""
    digest = hashlib.sha256(f"cnnlab-cache-v{CACHE_VERSION}:{size}\n".encode())
    for f in files:
        # abspath, not resolve(): scan already returns resolved paths, and resolve() costs a
        # syscall per path component (it dominated the warm load); stat() follows links anyway.
        p = os.path.abspath(f)
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\x00{st.st_mtime_ns}"
        except OSError:  # a broken link or vanished file: fingerprinted as such, reported by scan
            stamp = "missing"
        digest.update(f"{p}\x00{stamp}\n".encode())
    return digest.hexdigest()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 1024**3


def _decode_into(out: np.ndarray, files: Sequence[Path], size: int, progress: Progress | None):
    """Fill out[i] (3, size, size) with files[i] using every core."""

    def work(i: int) -> int:
        try:
            out[i] = decode_image(Path(files[i]), size).numpy()
        except Exception as exc:  # same reasoning as _verify: PIL raises many types
            raise DataError(
                f"{files[i]} could not be decoded ({exc}); it changed since the scan — scan again"
            ) from exc
        return i

    step = max(1, len(files) // 100)
    with ThreadPoolExecutor(_workers()) as pool:
        for done, _ in enumerate(pool.map(work, range(len(files))), 1):
            if progress is not None and (done % step == 0 or done == len(files)):
                progress(done, len(files), "decode")


def load_tensors(
    files: Sequence[Path], size: int, progress: Progress | None = None
) -> torch.Tensor:
    """uint8 (N, 3, size, size) of the files, decoded once and cached on disk by content+size."""
    if not files:
        raise DataError("no images to load; scan a folder with usable images first")
    shape = (len(files), 3, size, size)
    nbytes = int(np.prod(shape))
    big = nbytes > RAM_FRACTION * _ram_bytes()
    folder = workspace.cache_dir_or_none()
    name = f"images-{size}px-{_fingerprint(files, size)[:32]}.npy"
    cache = folder / name if folder is not None else None
    if cache is not None and cache.is_file():
        try:
            arr = np.load(cache, mmap_mode="c" if big else None)
            if arr.shape == shape and arr.dtype == np.uint8:
                log.info("cache hit: %s (%d images)", cache.name, len(files))
                if progress is not None:
                    progress(len(files), len(files), "decode")
                return torch.from_numpy(arr)
        except (OSError, ValueError) as exc:  # damaged cache file: decode again and overwrite it
            log.warning("ignoring unreadable cache %s (%s)", cache, exc)
    start = time.perf_counter()
    if big and cache is not None:
        mapped = _decode_mapped(cache, shape, files, size, progress)
        if mapped is not None:
            return mapped
    out = np.empty(shape, dtype=np.uint8)
    _decode_into(out, files, size, progress)
    seconds = time.perf_counter() - start
    log.info("decoded %d images at %d px in %.2fs (%.0f images/s)", len(files), size,
             seconds, len(files) / max(seconds, 1e-9))  # fmt: skip
    if cache is not None:
        _write_cache(cache, ".images-", ".npy", lambda f: np.save(f, out))
    return torch.from_numpy(out)


def _decode_mapped(
    cache: Path, shape: tuple[int, ...], files: Sequence[Path], size: int,
    progress: Progress | None,
) -> torch.Tensor | None:  # fmt: skip
    """Decode straight into the cache file (RAM only holds what is touched); None if it can't."""
    try:
        with workspace.temp_file(cache.parent, ".images-", ".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            # reserve every block now: a full disk then fails here, not as SIGBUS mid-decode
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            _decode_into(out, files, size, progress)
            out.flush()
            del out
            os.replace(tmp, cache)
    except OSError as exc:
        workspace.warn_once(
            f"cache-write-{cache.parent}",
            f"could not write the cache in {cache.parent} ({exc.strerror or exc}); decoding "
            "in memory instead — free disk space to make the next load fast",
        )
        return None
    return torch.from_numpy(np.load(cache, mmap_mode="c"))


@dataclass
class PreparedData:
    scan: ScanResult
    split: Split
    images: torch.Tensor  # uint8 (N, 3, S, S), row i is scan.files[i]
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    image_size: int

    def subset(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the "train", "val" or "test" split."""
        if name not in SPLITS:
            raise ValueError(f"subset must be train, val or test, got {name!r}")
        idx = torch.as_tensor(getattr(self.split, name), dtype=torch.long)
        return self.images[idx], self.labels[idx]


def prepare(
    cfg: DataConfig,
    progress: Progress | None = None,
    overrides: Overrides | None = None,
) -> PreparedData:
    """Scan, filter (excluded classes, dropped copies), split and decode the data set named by cfg.

    `overrides`: the label overrides to apply (default: the data set's current ones).
    """
    cfg.validate()
    result = scan(cfg.path, progress, path_column=cfg.path_column, label_column=cfg.label_column,
                  images=cfg.images, overrides=overrides)  # fmt: skip
    result = filter_scan(result, cfg.exclude_classes, cfg.drop_duplicates, cfg.drop_conflicts)
    parts = split(result, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    for warning in result.warnings + split_warnings(cfg.val_fraction, cfg.test_fraction, result):
        log.warning("%s", warning)
    images = load_tensors(result.files, cfg.image_size, progress)
    labels = torch.tensor(result.labels, dtype=torch.int64)
    return PreparedData(result, parts, images, labels, list(result.classes), cfg.image_size)
