"""Where cnnlab keeps its files: CNNLAB_HOME (default ~/.cnnlab) and its sub-folders."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from pathlib import Path

from .errors import CnnlabError, DataError

log = logging.getLogger(__name__)


def home() -> Path:
    """The workspace root, created on first use; DataError when it cannot be."""
    root = home_path()
    return _make_dir(root, "the workspace ", "set CNNLAB_HOME to a writable folder")


def home_path() -> Path:
    """Where the workspace is (CNNLAB_HOME, default ~/.cnnlab), without creating it."""
    return Path(os.environ.get("CNNLAB_HOME", "~/.cnnlab")).expanduser().resolve()


def _sub(name: str) -> Path:
    return _make_dir(
        home() / name, "", "free disk space or make the workspace writable (CNNLAB_HOME)"
    )


def _make_dir(path: Path, what: str, advice: str) -> Path:
    """mkdir -p, or a DataError naming the folder, the OS's reason and what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {what}{path} ({exc.strerror or exc}); {advice}") from exc
    return path


def datasets_dir() -> Path:
    """Extracted uploads and demo data sets."""
    return _sub("datasets")


def cache_dir() -> Path:
    """Decoded uint8 tensor caches, keyed by content hash and size."""
    return _sub("cache")


def runs_dir() -> Path:
    """One folder per run."""
    return _sub("runs")


def secret_key(name: str) -> bytes:
    """A 32-byte key kept in the workspace (mode 0600), made on first use: what one server
    signs, the next (after a restart) and the CLI still accept."""
    path = home() / f"{name}.key"
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    with temp_file(path.parent, f".{name}-", ".key") as tmp:
        tmp.write_bytes(os.urandom(32))
        os.chmod(tmp, 0o600)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) < 32:
        raise DataError(f"{path} holds {len(key)} bytes, not a 32-byte key; delete it to make anew")
    return key


def studies_url() -> str:
    """The embedded default Optuna storage: an SQLite file in the workspace."""
    return f"sqlite:///{home() / 'studies.db'}"


def data_roots() -> list[Path]:
    """Folders the dashboard may read server-side datasets from (CNNLAB_DATA_ROOTS, os.pathsep-separated)."""
    raw = os.environ.get("CNNLAB_DATA_ROOTS", "")
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return roots or [home_path()]


def check_inside_roots(path: str | Path) -> Path:
    """Resolve a server-side dataset path and refuse it unless it lies inside an allowed root."""
    resolved = Path(path).expanduser().resolve()
    for root in data_roots():
        if resolved == root or root in resolved.parents:
            return resolved
    allowed = ", ".join(str(r) for r in data_roots())
    raise DataError(
        f"{resolved} is outside the allowed data folders ({allowed}); "
        "move the data there or add its folder to CNNLAB_DATA_ROOTS."
    )


# ---------------------------------------------------------------- best-effort caches
_warned: set[str] = set()
_cleaned: set[Path] = set()
TEMP_PATTERNS = (".verify-*", ".images-*.npy")


def warn_once(key: str, message: str) -> None:
    """Log a warning the first time key is seen in this process (a cache that cannot be written)."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def cache_dir_or_none() -> Path | None:
    """The cache folder, or None (warned once) when the workspace cannot hold one: keep going in RAM.

    The first call per folder removes temp files left by killed processes (see clean_temp).
    """
    try:
        path = cache_dir()
    except (OSError, CnnlabError) as exc:
        warn_once("cache-dir", f"no decode cache ({exc}); continuing in memory")
        return None
    if path not in _cleaned:
        _cleaned.add(path)
        clean_temp(path)
    return path


def clean_temp(folder: Path, patterns: tuple[str, ...] = TEMP_PATTERNS) -> int:
    """Remove temp files no live writer holds (writers flock them); returns how many went."""
    removed = 0
    for pattern in patterns:
        for path in folder.glob(pattern):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink()
                removed += 1
            except OSError:  # a live writer holds it, or it vanished meanwhile
                pass
            finally:
                os.close(fd)
    if removed:
        log.info("removed %d leftover temp file(s) from %s", removed, folder)
    return removed


@contextlib.contextmanager
def temp_file(folder: Path, prefix: str, suffix: str):
    """A new locked temp file in folder: yields its path, removes it unless it was renamed away."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # tells clean_temp in other processes it is in use
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)  # gone already when the caller renamed it into place
        os.close(fd)
