"""Safe unpacking of uploaded data: zip extraction and browser directory uploads.

Every member name is untrusted. Nothing may land outside the target folder (absolute paths, `..`,
drive letters, symlinks are refused), and size, compression ratio, member count and nesting depth
are capped so a zip bomb fails fast with UnsafeArchiveError naming the member. Extraction goes to
a temporary folder next to the target and is renamed into place at the end, so a failure never
leaves a half-extracted dataset behind.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from . import workspace
from .errors import DataError, UnsafeArchiveError

log = logging.getLogger(__name__)

MAX_TOTAL_BYTES = 2 * 1024**3  # uncompressed size of all members together
MAX_RATIO = 200.0  # uncompressed/compressed size above which a big member counts as a bomb
RATIO_MIN_BYTES = 1024**2  # members smaller than this may compress as well as they like
MAX_MEMBERS = 100_000  # files + folders in one archive or upload
MAX_DEPTH = 32  # path components of one member name
_CHUNK = 1024**2
_DRIVE = re.compile(r"^[A-Za-z]:")

Progress = Callable[[int, int, str], None]


def _check_member_name(name: str, max_depth: int) -> PurePosixPath:
    """Refuse names that could escape the target; return the name as a relative POSIX path."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"member {name!r} has an empty or NUL-containing name; refused")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise UnsafeArchiveError(f"member {name!r} has an absolute path; refused")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"member {name!r} points outside the archive ('..'); refused")
    if len(parts) > max_depth:
        raise UnsafeArchiveError(
            f"member {name!r} is nested {len(parts)} folders deep (limit {max_depth}); refused"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(base: Path, rel: PurePosixPath) -> Path:
    """The destination of rel under base, after checking its resolved form stays inside base."""
    dest = (base / rel).resolve()
    if dest != base and base not in dest.parents:
        raise UnsafeArchiveError(f"member {str(rel)!r} resolves outside the target folder; refused")
    return dest


def _check_zip_members(
    infos: list[zipfile.ZipInfo],
    max_total_bytes: int,
    max_ratio: float,
    max_members: int,
    max_depth: int,
) -> None:
    """Check every limit before a single byte is written."""
    if len(infos) > max_members:
        raise UnsafeArchiveError(
            f"the zip holds {len(infos):,} members, more than the limit of {max_members:,}"
        )
    total = 0
    for info in infos:
        name = info.filename
        _check_member_name(name, max_depth)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"member {name!r} is a symbolic link; links are refused")
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"member {name!r} is encrypted; upload an unencrypted zip")
        if info.file_size > RATIO_MIN_BYTES:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise UnsafeArchiveError(
                    f"member {name!r} expands {ratio:.0f}x ({info.file_size:,} bytes); "
                    f"more than {max_ratio:.0f}x looks like a zip bomb"
                )
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"the zip expands to more than {max_total_bytes:,} bytes (limit reached at member "
                f"{name!r}); split the data or raise the limit"
            )


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> None:
    """Stream one member, never writing more than its declared size (the header could lie)."""
    written = 0
    with zf.open(info) as src, open(dest, "wb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UnsafeArchiveError(f"member {info.filename!r} is larger than it declares")
            out.write(chunk)


def _write_member(dest: Path, name: str, write) -> None:
    """Create dest's folder and write it; what the file system refuses becomes a clear error."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        write(dest)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno in (
            errno.ENAMETOOLONG,
            errno.EEXIST,
            errno.EISDIR,
            errno.ENOTDIR,
            errno.EINVAL,
        ):
            raise UnsafeArchiveError(
                f"member {name!r} cannot be written ({reason}): a name too long, or a file and a "
                "folder with the same name; rename it and try again"
            ) from exc
        raise DataError(
            f"could not write {name!r} into {workspace.datasets_dir()} ({reason}); free disk "
            "space or make the workspace writable, then upload again"
        ) from exc


def _move_into_place(tmp: Path, target: Path) -> Path:
    """Rename the finished temp folder to target; if another session won the race, keep theirs."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# Damaged members fail inside zipfile/zlib with many types (bad offsets, unknown compression,
# corrupt deflate streams, undecodable names): each one means "this zip cannot be used".
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,
    zlib.error,
)


def safe_extract_zip(
    zip_path: str | Path,
    target: str | Path,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
    max_members: int = MAX_MEMBERS,
    max_depth: int = MAX_DEPTH,
    progress: Progress | None = None,
) -> Path:
    """Extract zip_path into the new folder target, all or nothing; UnsafeArchiveError on a breach."""
    zip_path, target = Path(zip_path), Path(target)
    if target.exists():
        raise DataError(f"{target} already exists; remove it or extract somewhere else")
    target.parent.mkdir(parents=True, exist_ok=True)
    zf = _open_zip(zip_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with zf:
            infos = zf.infolist()
            _check_zip_members(infos, max_total_bytes, max_ratio, max_members, max_depth)
            _extract_members(zf, infos, tmp.resolve(), max_depth, progress)
    except UnsafeArchiveError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except _DAMAGED as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{zip_path.name} is damaged and cannot be extracted ({exc})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %d members of %s into %s", len(infos), zip_path.name, target)
    return _move_into_place(tmp, target)


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    """zip_path opened as a zip holding at least one file (DataError otherwise)."""
    try:
        zf = zipfile.ZipFile(zip_path)
    # a mangled central directory surfaces as any of these, depending on which field is bad
    except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{zip_path.name} is not a readable zip file ({exc})") from exc
    if not any(not info.is_dir() for info in zf.infolist()):
        zf.close()
        raise DataError(
            f"{zip_path.name} holds no files: zip the folder that holds one sub-folder of images "
            "per class (or the train/val/test folders)"
        )
    return zf


def _extract_members(
    zf: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    base: Path,
    max_depth: int,
    progress: Progress | None,
) -> None:
    """Write every (already checked) member under base, each name checked again on the way."""
    for i, info in enumerate(infos):
        dest = _inside(base, _check_member_name(info.filename, max_depth))
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            _write_member(dest, info.filename, lambda d, i=info: _copy_member(zf, i, d))
        if progress is not None:
            progress(i + 1, len(infos), "extract")


_COPY_SUFFIX = re.compile(r"-[0-9a-f]{12}$")  # what the workspace adds to an upload's copy


def dataset_name(path: str | Path) -> str:
    """The name a user knows a data set by: its folder or CSV's name, without the '-<hash>' the
    workspace adds to an uploaded or extracted copy ('labels-69aafff379f0.csv' -> 'labels')."""
    p = Path(str(path).rstrip("/\\"))
    stem = p.stem if p.suffix.lower() in (".csv", ".zip") else p.name
    return _COPY_SUFFIX.sub("", stem) or stem or str(path)


def _safe_stem(name: str) -> str:
    """A folder-name-safe version of a user-given name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.replace("\\", "/")).stem).strip("._")
    return stem[:60] or "dataset"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def extract_zip_cached(zip_path: str | Path, progress: Progress | None = None) -> Path:
    """Extract a zip under workspace datasets/<stem>-<hash>, reusing an earlier extraction of it."""
    zip_path = Path(zip_path)
    target = workspace.datasets_dir() / f"{_safe_stem(zip_path.name)}-{_file_sha256(zip_path)[:12]}"
    if target.is_dir():
        log.info("reusing %s (extracted earlier)", target)
        return target
    return safe_extract_zip(zip_path, target, progress=progress)


def save_uploaded_zip(data: bytes, filename: str, progress: Progress | None = None) -> Path:
    """Store an uploaded zip's bytes and extract them safely; returns the extracted folder."""
    target_dir = workspace.datasets_dir()
    target = target_dir / f"{_safe_stem(filename)}-{hashlib.sha256(data).hexdigest()[:12]}"
    if target.is_dir():
        return target
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".zip", dir=target_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return safe_extract_zip(tmp_name, target, progress=progress)
    except DataError as exc:  # name the user's file, not the temporary copy
        raise type(exc)(str(exc).replace(Path(tmp_name).name, filename)) from exc
    finally:
        os.unlink(tmp_name)


def save_uploaded_files(
    files: list[tuple[str, bytes]],
    name: str,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
    max_depth: int = MAX_DEPTH,
) -> Path:
    """Write a directory upload ((relative path, bytes) pairs) into a new dataset folder, safely."""
    if not files:
        raise DataError("the upload holds no files; choose a folder with one sub-folder per class")
    if len(files) > max_members:
        raise UnsafeArchiveError(f"the upload holds {len(files):,} files, limit {max_members:,}")
    total = sum(len(data) for _, data in files)
    if total > max_total_bytes:
        raise UnsafeArchiveError(f"the upload holds {total:,} bytes, limit {max_total_bytes:,}")
    # Check every name before writing anything: browser-supplied names are not sanitised.
    rels = [_check_member_name(rel, max_depth) for rel, _ in files]
    digest = hashlib.sha256()
    for rel, (_, data) in sorted(zip(rels, files, strict=True), key=lambda pair: str(pair[0])):
        digest.update(str(rel).encode() + b"\x00" + hashlib.sha256(data).digest())
    target_dir = workspace.datasets_dir()
    target = target_dir / f"{_safe_stem(name)}-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target_dir))
    try:
        base = tmp.resolve()
        for rel, (_, data) in zip(rels, files, strict=True):
            dest = _inside(base, rel)
            if dest == base:
                raise UnsafeArchiveError(f"upload member {str(rel)!r} names the folder itself")
            _write_member(dest, str(rel), lambda d, b=data: d.write_bytes(b))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _move_into_place(tmp, target)


def save_uploaded_csv(data: bytes, filename: str) -> Path:
    """Store an uploaded labels CSV under workspace/datasets/ with a safe, content-hashed name."""
    if not data:
        raise DataError(f"{filename!r} is empty; upload the labels CSV again")
    folder = workspace.datasets_dir()
    target = folder / f"{_safe_stem(filename)}-{hashlib.sha256(data).hexdigest()[:12]}.csv"
    if target.is_file():
        return target
    return _write_upload(data, filename, target, prefix=".upload-")


def _write_upload(data: bytes, filename: str, target: Path, prefix: str) -> Path:
    """Write an upload to a temporary file beside target, then rename: never a half-written file."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise DataError(
            f"could not save {filename!r} in {folder} ({exc.strerror or exc}); free disk space or "
            "make the workspace writable"
        ) from exc
    return target


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin")


def save_uploaded_weights(data: bytes, filename: str) -> Path:
    """Store an uploaded weights file under workspace/weights/ with a safe, content-hashed name."""
    suffix = Path(filename).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise DataError(
            f"{filename!r} is not a PyTorch weights file; upload a {', '.join(WEIGHT_SUFFIXES)} file"
        )
    if not data:
        raise DataError(f"{filename!r} is empty; upload the weights file again")
    folder = workspace.home() / "weights"
    target = folder / f"{_safe_stem(filename)}-{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
    if target.is_file():
        return target
    return _write_upload(data, filename, target, prefix=".weights-")
