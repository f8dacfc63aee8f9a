"""Atomic file writes: a temp file in the same folder, fsync, rename, so a reader (or a crash)
never sees half a file; a failed write is a TrainingError saying why and what to do."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import workspace
from .errors import TrainingError


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file in the same folder and rename, so readers never see half a file."""
    write_atomic(path, lambda f: f.write(json.dumps(payload, indent=2, default=str).encode()))


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call write(f) on a temp file beside path, fsync it, rename it over path."""
    # No mkdir here: a run folder deleted while its trainer runs must stay deleted.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TrainingError(write_failure(path, exc)) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise TrainingError(write_failure(path, exc)) from exc
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save's writer turns the file's OSError (a full disk) into "[enforce fail at
        # inline_container.cc] unexpected pos ...", keeping the OSError only as the context
        cause = _os_error_in(exc)
        if cause is None:
            raise
        raise TrainingError(write_failure(path, cause)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError an exception was raised from or while handling, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def write_failure(path: Path, exc: OSError) -> str:
    """One line saying why path could not be written and what to do."""
    if exc.errno == errno.ENOENT and not path.parent.exists():
        return f"could not write {path}: its folder was deleted (the run was removed)"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            left = f", {shutil.disk_usage(path.parent).free / 1e6:,.1f} MB free"
        except OSError:
            left = ""
        in_run = path.parent.parent.name == "runs"
        then = f", then `cnnlab resume {path.parent.name}`" if in_run else ""
        return (
            f"could not write {path}: {exc.strerror or exc} (the disk holding {path.parent}"
            f"{left}). Free disk space there (old runs: `cnnlab runs delete ID`; the decoded-image "
            f"cache: {workspace.home() / 'cache'}){then}; the previous file was left intact."
        )
    return (
        f"could not write {path}: {exc.strerror or exc}. Free disk space or make the workspace "
        f"({path.parent.parent}) writable; the previous file was left intact."
    )
