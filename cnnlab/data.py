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
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import workspace
from .archive import (
    extract_zip_cached,
    safe_extract_zip,
    save_uploaded_files,
    save_uploaded_zip,
)
from .config import DataConfig
from .errors import DataError, UnsafeArchiveError

__all__ = [
    "IMAGE_EXTENSIONS", "PreparedData", "Problem", "ScanResult", "Split", "UnsafeArchiveError",
    "decode_image", "load_tensors", "prepare", "resolve_dataset", "safe_extract_zip",
    "save_uploaded_files", "save_uploaded_zip", "scan", "split",
]  # fmt: skip

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IGNORED_NAMES = frozenset({"__macosx", ".ds_store", "thumbs.db", "desktop.ini"})
MAX_PIXELS = 89_478_485  # width x height above which a file is refused as a decompression bomb
# (PIL's own default, ~90 MP: PIL warns above it and raises above twice it)
RAM_FRACTION = 0.25  # decode into a memory-mapped file instead of RAM above this share of RAM
CACHE_VERSION = 1  # bump when decode_image changes, so old caches are not reused
_WHITE = (255, 255, 255)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the dataset root (POSIX separators)
    reason: str  # what is wrong with it, in words a user can act on


@dataclass
class ScanResult:
    root: Path  # the folder holding the class folders
    classes: list[str]  # usable classes, sorted by name; label i is classes[i]
    files: list[Path]  # absolute paths of the usable images, grouped by class
    labels: list[int]  # class index of each file
    problems: list[Problem] = field(default_factory=list)  # skipped files/classes and why

    @property
    def counts(self) -> dict[str, int]:
        """Usable images per class, in class order."""
        counts = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            counts[self.classes[label]] += 1
        return counts

    @property
    def n_images(self) -> int:
        """Number of usable images."""
        return len(self.files)


@dataclass
class Split:
    train: list[int]  # indexes into ScanResult.files
    val: list[int]
    test: list[int]

    def sizes(self) -> dict[str, int]:
        """Images in each split."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def per_class(self, scan: ScanResult) -> dict[str, dict[str, int]]:
        """{class: {"train": n, "val": n, "test": n}} for the given scan."""
        table = {c: {"train": 0, "val": 0, "test": 0} for c in scan.classes}
        for name, idx in (("train", self.train), ("val", self.val), ("test", self.test)):
            for i in idx:
                table[scan.classes[scan.labels[i]]][name] += 1
        return table

    def to_dict(self) -> dict[str, list[int]]:
        """Plain dict for split.json."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, raw: dict[str, list[int]]) -> Split:
        """Inverse of to_dict."""
        return cls(list(raw["train"]), list(raw["val"]), list(raw["test"]))


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(32, cores or 1))


def _ignored(name: str) -> bool:
    """Dotfiles and OS litter (macOS resource forks, Windows thumbnails) are skipped silently."""
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _ignored(p.name))


def _descend_single_top(folder: Path) -> Path:
    """Step into a lone top folder (data.zip -> data/ -> classes) while it holds sub-folders."""
    for _ in range(8):
        entries = _visible(folder)
        if len(entries) != 1 or not entries[0].is_dir():
            break
        if not any(p.is_dir() for p in _visible(entries[0])):
            break  # the lone folder holds images: it is a (single) class, not a wrapper
        folder = entries[0]
    return folder


def resolve_dataset(path: str | Path, progress: Progress | None = None) -> Path:
    """The folder holding the class folders: a directory as is, or a .zip extracted safely."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist; give an image folder or a .zip of class folders")
    if p.is_file():
        if p.suffix.lower() != ".zip":
            raise DataError(f"{p} is neither a folder nor a .zip; give an image folder or a .zip")
        p = extract_zip_cached(p, progress)
    elif not p.is_dir():
        raise DataError(f"{p} is neither a folder nor a .zip; give an image folder or a .zip")
    return _descend_single_top(p.resolve())


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


def _verify(path: Path) -> str | None:
    """None when path decodes as an image, else the reason it cannot be used."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with _open_image(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (64, 64))  # still reads every byte, so truncation is caught
            im.load()
    except PermissionError:
        return "unreadable: permission denied (check the file's permissions)"
    except FileNotFoundError:
        return "unreadable: the file vanished or is a broken link"
    except UnidentifiedImageError:
        return "not a readable image (unknown format or corrupt header)"
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}"
    # PIL's format plugins raise many exception types on malformed data (OSError, SyntaxError,
    # ValueError, struct.error, ...); any of them means "this file cannot be used", never a crash.
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            return f"truncated image data ({text})"
        return f"corrupt image data ({text})"
    return None


def _class_files(folder: Path, root: Path, problems: list[Problem]) -> list[Path]:
    """Image files anywhere under a class folder; other visible files become problems."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for name in sorted(filenames):
            if _ignored(name):
                continue
            path = Path(dirpath) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(path)
            else:
                problems.append(
                    Problem(
                        path.relative_to(root).as_posix(),
                        f"not an image file type ({path.suffix or 'no extension'}); "
                        f"cnnlab reads {', '.join(sorted(IMAGE_EXTENSIONS))}",
                    )
                )
    return found


def scan(path: str | Path, progress: Progress | None = None) -> ScanResult:
    """List classes and usable images under path, verifying every file; bad ones become Problems."""
    root = resolve_dataset(path, progress)
    entries = _visible(root)
    if not entries:
        raise DataError(f"{root} is empty; put one sub-folder of images per class in it")
    problems: list[Problem] = []
    class_dirs = [p for p in entries if p.is_dir()]
    for p in entries:
        if not p.is_dir():
            problems.append(Problem(p.name, "not inside a class folder; move it into one"))
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders; put each class's images in its own sub-folder "
            f"(e.g. {root.name}/cat/1.jpg, {root.name}/dog/1.jpg)"
        )
    candidates = {d.name: _class_files(d, root, problems) for d in class_dirs}
    flat = [f for files in candidates.values() for f in files]
    reasons = _verify_cached(flat, progress)
    classes, files, labels = [], [], []
    for name, paths in candidates.items():
        good = [f for f in paths if reasons[f] is None]
        problems.extend(
            Problem(f.relative_to(root).as_posix(), reasons[f]) for f in paths if reasons[f]
        )
        if not good:
            log.warning("class %r has no usable images and is left out", name)
            problems.append(Problem(f"{name}/", f"class left out: none of its {len(paths)} image "
                                    "files could be used"))  # fmt: skip
            continue
        files.extend(good)
        labels.extend([len(classes)] * len(good))
        classes.append(name)
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(
            f"{root} has {len(classes)} usable class folder(s) ({found}); a classifier needs at "
            "least 2 — add one sub-folder of images per class"
        )
    log.info("scanned %s: %d classes, %d images, %d problems", root, len(classes), len(files),
             len(problems))  # fmt: skip
    return ScanResult(root, classes, files, labels, problems)


def _verify_all(paths: list[Path], progress: Progress | None) -> dict[Path, str | None]:
    reasons: dict[Path, str | None] = {}
    step = max(1, len(paths) // 100)
    with ThreadPoolExecutor(_workers()) as pool:
        for i, (path, reason) in enumerate(zip(paths, pool.map(_verify, paths), strict=True), 1):
            reasons[path] = reason
            if progress is not None and (i % step == 0 or i == len(paths)):
                progress(i, len(paths), "verify")
    return reasons


def _verify_cached(paths: list[Path], progress: Progress | None) -> dict[Path, str | None]:
    """_verify_all, remembered per file fingerprint: re-scanning unchanged data decodes nothing."""
    cache = workspace.cache_dir() / f"verify-{_fingerprint(paths, 0)[:32]}.json"
    try:
        bad = json.loads(cache.read_text())
        if progress is not None:
            progress(len(paths), len(paths), "verify")
        return {p: bad.get(str(i)) for i, p in enumerate(paths)}
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:  # damaged cache: verify again and overwrite it
        log.warning("ignoring unreadable verification cache %s (%s)", cache, exc)
    reasons = _verify_all(paths, progress)
    bad = {str(i): reasons[p] for i, p in enumerate(paths) if reasons[p]}
    fd, tmp = tempfile.mkstemp(prefix=".verify-", suffix=".json", dir=cache.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(bad, f)
    os.replace(tmp, cache)
    return reasons


def _min_per_class(val_fraction: float, test_fraction: float) -> int:
    return 1 + (val_fraction > 0) + (test_fraction > 0)


def split(
    scan: ScanResult, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Split:
    """Stratified, seeded train/val/test split; every class lands in every non-empty split."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            "and leave some images for training"
        )
    need = _min_per_class(val_fraction, test_fraction)
    by_class: dict[int, list[int]] = {i: [] for i in range(len(scan.classes))}
    for i, label in enumerate(scan.labels):
        by_class[label].append(i)
    rng = np.random.default_rng(seed)
    out = Split([], [], [])
    for label, idx in by_class.items():
        n = len(idx)
        if n < need:
            raise DataError(
                f"class {scan.classes[label]!r} has only {n} usable image(s); at least {need} are "
                f"needed to split with val_fraction={val_fraction} and "
                f"test_fraction={test_fraction} — add images or set the fractions to 0"
            )
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
        while n_val + n_test > n - 1:  # keep at least one training image
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        order = [idx[j] for j in rng.permutation(n)]
        out.val += order[:n_val]
        out.test += order[n_val : n_val + n_test]
        out.train += order[n_val + n_test :]
    out.train.sort()
    out.val.sort()
    out.test.sort()
    return out


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
    cache = workspace.cache_dir() / f"images-{size}px-{_fingerprint(files, size)[:32]}.npy"
    if cache.is_file():
        try:
            arr = np.load(cache, mmap_mode="c" if big else None)
            if arr.shape == shape and arr.dtype == np.uint8:
                log.info("cache hit: %s (%d images)", cache.name, len(files))
                if progress is not None:
                    progress(len(files), len(files), "decode")
                return torch.from_numpy(arr)
        except (OSError, ValueError) as exc:  # damaged cache file: decode again and overwrite it
            log.warning("ignoring unreadable cache %s (%s)", cache, exc)
    fd, tmp_name = tempfile.mkstemp(prefix=".images-", suffix=".npy", dir=cache.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        if big:  # decode straight into a file-backed array; RAM only holds what is touched
            out = np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.uint8, shape=shape)
            _decode_into(out, files, size, progress)
            out.flush()
            del out
        else:
            out = np.empty(shape, dtype=np.uint8)
            _decode_into(out, files, size, progress)
            with open(tmp_name, "wb") as f:
                np.save(f, out)
        os.replace(tmp_name, cache)  # atomic: a reader sees the whole cache or none
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - start
    log.info("decoded %d images at %d px in %.2fs (%.0f images/s) -> %s", len(files), size,
             seconds, len(files) / max(seconds, 1e-9), cache.name)  # fmt: skip
    if big:
        return torch.from_numpy(np.load(cache, mmap_mode="c"))
    return torch.from_numpy(out)


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
        if name not in ("train", "val", "test"):
            raise ValueError(f"subset must be train, val or test, got {name!r}")
        idx = torch.as_tensor(getattr(self.split, name), dtype=torch.long)
        return self.images[idx], self.labels[idx]


def prepare(cfg: DataConfig, progress: Progress | None = None) -> PreparedData:
    """Scan, split and decode the data set named by cfg (the cache makes repeats fast)."""
    cfg.validate()
    result = scan(cfg.path, progress)
    parts = split(result, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    images = load_tensors(result.files, cfg.image_size, progress)
    labels = torch.tensor(result.labels, dtype=torch.int64)
    return PreparedData(result, parts, images, labels, list(result.classes), cfg.image_size)
